"""Readers of raw dataset files: split -> sequences of (T, 88) uint8 0/1 piano-rolls.

- ``read_mat``: a MATLAB ``.mat`` (``traindata``/``validdata``/``testdata``, 1 x N cells of
  T x 88 0/1 arrays), already on the dataset's beat grid and transposed by its authors.
- ``read_pickle``: the authors' original Python 2 pickle, ``{"train": [...], ...}``, each
  sequence a list of frames, each frame a tuple of MIDI pitches, read by an unpickler that
  builds numpy integer scalars and nothing else.
- ``zip_midi_files`` / ``folder_midi_files`` + ``read_midi_collection``: a ``.zip`` of
  ``<Name>/{train,valid,test}/*.mid`` or a folder of MIDI files, sampled by
  ``pianoroll.midi_to_roll``; a folder without train/valid/test subfolders is split by a
  seeded shuffle. ``workers`` > 1 samples the files in a pool of processes, with the same
  result as one.

``datasets`` turns what these return into the prepared ``.npz``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import multiprocessing
import operator
import os
import pickle
import sys
import zipfile
import zlib
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.pianoroll import (
    HIGHEST_PITCH,
    LOWEST_PITCH,
    MAX_FRAMES,
    MAX_MIDI_BYTES,
    N_KEYS,
    midi_to_roll,
    too_large_message,
)

SPLITS = ("train", "valid", "test")
DEFAULT_SPLIT_RATIOS = (0.8, 0.1, 0.1)  # train/valid/test shares of an unsplit MIDI folder
MIDI_SUFFIXES = (".mid", ".midi")

_MAT_KEYS = {"train": "traindata", "valid": "validdata", "test": "testdata"}


def read_mat(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read a dataset ``.mat``: split -> sequences, each (T, 88) uint8 0/1."""
    import scipy.io  # slow to import; only this reader needs it

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path))
    except FileNotFoundError as e:
        raise RnnrbmError(f"{path}: no such file.") from e
    except Exception as e:  # scipy raises many types on a foreign or damaged file
        raise RnnrbmError(f"{path} is not a readable MATLAB .mat file ({e}).") from e
    splits = {}
    for split, key in _MAT_KEYS.items():
        cells = mat.get(key)
        if not isinstance(cells, np.ndarray) or cells.dtype != object:
            raise RnnrbmError(
                f"{path} has no cell array {key!r}; a dataset .mat holds traindata, validdata and testdata."
            )
        splits[split] = [_as_roll(cell, f"{path}: {key} sequence {i + 1}") for i, cell in enumerate(cells.ravel())]
    return splits


def _as_roll(cell, where: str) -> np.ndarray:
    roll = np.asarray(cell)
    if roll.size == 0:
        return np.zeros((0, N_KEYS), np.uint8)
    if roll.ndim != 2 or roll.shape[1] != N_KEYS:
        raise RnnrbmError(f"{where} has shape {roll.shape}, not (T, {N_KEYS}).")
    if roll.dtype == object or not np.isin(roll, (0, 1)).all():
        raise RnnrbmError(f"{where} holds values other than 0 and 1.")
    return roll.astype(np.uint8)


def _numpy_scalar():
    try:  # numpy >= 2 moved it; the old name still works but warns
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


# What the original pickles ask for, and nothing more: each pitch is
# numpy.core.multiarray.scalar(numpy.dtype("i8"), <8 bytes>).
_PICKLE_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _DatasetUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy scalars and refuses every other global.

    Unpickling calls whatever callable the file names; a downloaded pickle is untrusted,
    so only the numpy constructors a dataset of pitches needs are resolved.
    """

    def __init__(self, file, name: str):
        super().__init__(file, encoding="latin1")  # Python 2 str -> bytes-preserving text
        self._name = name

    def find_class(self, module: str, name: str):
        allowed = _PICKLE_GLOBALS.get((module, name))
        if allowed is None:
            raise RnnrbmError(
                f"refusing to load {self._name}: the pickle asks for {module}.{name}, "
                "which a dataset never needs."
            )
        return allowed()

    def persistent_load(self, pid):
        raise RnnrbmError(f"refusing to load {self._name}: the pickle refers to an external object.")


def read_pickle(
    path: str | os.PathLike, *, max_frames: int | None = MAX_FRAMES
) -> tuple[dict[str, list[np.ndarray]], int]:
    """Read an original dataset pickle safely: split -> sequences (T, 88) uint8, and dropped notes.

    Pitches outside 21..108 are left out and counted. Raises RnnrbmError if the pickle asks
    for anything but numpy scalars, is not a dict of train/valid/test pitch lists, or has
    a sequence of more than ``max_frames`` frames (None: no limit).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            doc = _DatasetUnpickler(f, path.name).load()
    except RnnrbmError:
        raise
    except FileNotFoundError as e:
        raise RnnrbmError(f"{path}: no such file.") from e
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... on a damaged file
        raise RnnrbmError(f"{path} is not a readable pickle ({str(e) or type(e).__name__}).") from e
    if not isinstance(doc, dict) or not set(SPLITS) <= doc.keys():
        raise RnnrbmError(f"{path} is not a dataset pickle: it must be a dict with train, valid and test.")
    splits, dropped = {}, 0
    for split in SPLITS:
        if not isinstance(doc[split], list):
            raise RnnrbmError(f"{path} is not a dataset pickle: {split!r} is not a list of sequences.")
        splits[split] = []
        for i, sequence in enumerate(doc[split]):
            roll, n = _pitch_lists_to_roll(sequence, f"{path}: {split} sequence {i + 1}", max_frames)
            splits[split].append(roll)
            dropped += n
    return splits, dropped


def _pitch_lists_to_roll(sequence, where: str, max_frames: int | None) -> tuple[np.ndarray, int]:
    if not isinstance(sequence, (list, tuple)):
        raise RnnrbmError(f"{where} is not a list of frames.")
    # A pickle can repeat one empty frame at 2 bytes a time; its roll costs 88 bytes a frame.
    if max_frames is not None and len(sequence) > max_frames:
        raise RnnrbmError(
            f"{where} has {len(sequence):,} frames, more than the {max_frames:,} a piece may have "
            "(raise the limit, --max-frames, if it is real)."
        )
    roll = np.zeros((len(sequence), N_KEYS), np.uint8)
    dropped = 0
    for t, frame in enumerate(sequence):
        if not isinstance(frame, (list, tuple)):
            raise RnnrbmError(f"{where}, frame {t + 1} is not a tuple of pitches.")
        for pitch in frame:
            try:
                pitch = operator.index(pitch)
            except TypeError:
                raise RnnrbmError(f"{where}, frame {t + 1} holds {pitch!r}, not a MIDI pitch.") from None
            if LOWEST_PITCH <= pitch <= HIGHEST_PITCH:
                roll[t, pitch - LOWEST_PITCH] = 1
            else:
                dropped += 1
    return roll, dropped


@dataclass(frozen=True)
class MidiFile:
    """One MIDI file of a zip or folder, not yet read."""

    name: str  # as shown to the user
    parts: tuple[str, ...]  # folders above it, relative to the zip or folder root
    read: Callable[[], bytes]


@dataclass
class MidiRolls:
    splits: dict[str, list[np.ndarray]]
    skipped: list[str]
    warnings: list[str]
    dropped_notes: int
    split: dict | None  # {"ratios": [...], "seed": n} for a seeded split, else None


def zip_midi_files(
    path: Path, stack: contextlib.ExitStack, *, max_bytes: int | None = MAX_MIDI_BYTES
) -> list[MidiFile]:
    """The MIDI members of a zip, sorted by name; ``stack`` closes the archive.

    Reading a member raises RnnrbmError naming it if it is damaged or inflates to more
    than ``max_bytes`` (None: no limit); at most ``max_bytes + 1`` bytes are inflated.
    """
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = sorted(archive.infolist(), key=lambda m: m.filename)
    except FileNotFoundError as e:
        raise RnnrbmError(f"{path}: no such file.") from e
    except (zipfile.BadZipFile, OSError) as e:
        raise RnnrbmError(f"{path} is not a readable zip file ({e}).") from e
    # Members are read in memory, never extracted: a member name cannot write anywhere.
    files = []
    for m in members:
        if m.is_dir() or not _is_midi_name(PurePosixPath(m.filename)):
            continue
        name = f"{path.name}:{m.filename}"
        read = functools.partial(_read_bounded, functools.partial(archive.open, m), name, max_bytes)
        files.append(MidiFile(name, PurePosixPath(m.filename).parts[:-1], read))
    return files


def folder_midi_files(root: Path, *, max_bytes: int | None = MAX_MIDI_BYTES) -> list[MidiFile]:
    """The MIDI files below ``root``, sorted by path; reading one is bounded as for a zip."""
    paths = sorted(
        (p for p in root.rglob("*") if p.is_file() and _is_midi_name(p.relative_to(root))),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    return [
        MidiFile(str(p), p.relative_to(root).parts[:-1], functools.partial(_read_bounded, functools.partial(p.open, "rb"), str(p), max_bytes))
        for p in paths
    ]


def _read_bounded(open_: Callable[[], IO[bytes]], name: str, max_bytes: int | None) -> bytes:
    """The bytes of a zip member or file, reading no more than ``max_bytes + 1`` of them.

    A zip's declared sizes can lie, so the limit is on what inflates, not on what the
    archive says; a member that is too large is never held in memory whole.
    """
    try:
        with open_() as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    # RuntimeError: an encrypted member; NotImplementedError: a compression zipfile lacks.
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as e:
        raise RnnrbmError(f"cannot read {name} ({str(e).rstrip('.') or type(e).__name__}).") from e
    if max_bytes is not None and len(data) > max_bytes:
        raise RnnrbmError(too_large_message(name, max_bytes))
    return data


def _is_midi_name(rel: PurePosixPath | Path) -> bool:
    # macOS archives carry "__MACOSX/._x.mid" resource forks: not music, and not worth a warning.
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in rel.parts)
    return not hidden and rel.suffix.lower() in MIDI_SUFFIXES


def _split_of(parts: tuple[str, ...]) -> str | None:
    """The split folder a file sits in (the deepest train/valid/test above it), if any."""
    for part in reversed(parts):
        if part.lower() in SPLITS:
            return part.lower()
    return None


def read_midi_collection(
    label: str,
    files: list[MidiFile],
    *,
    dt: float | None,
    beat_division: int | None,
    transpose: str,
    split_ratios: Sequence[float] | None,
    seed: int | None,
    progress: bool,
    on_warning: Callable[[str], None] | None,
    pedal: bool = False,
    max_frames: int | None = MAX_FRAMES,
    workers: int = 1,
) -> MidiRolls:
    """Sample each file with ``pianoroll.midi_to_roll`` and sort the rolls into splits.

    A file that cannot be read, is too large, would be longer than ``max_frames`` or has
    no note on the 88 keys is skipped with a warning naming it and why; the rest go on.
    ``workers`` (a whole number, 1 or more) processes sample the files, at most
    ``pool_size`` of them; whatever their number, the rolls, their order, the warnings and
    the skipped files are those of one.
    """
    if not files:
        raise RnnrbmError(f"{label} holds no .mid or .midi file.")
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        if on_warning is not None:
            with tqdm.external_write_mode(file=sys.stderr):  # not through a progress bar
                on_warning(message)

    by_folder = [_split_of(f.parts) for f in files]
    if any(by_folder):
        if split_ratios is not None or seed is not None:
            raise RnnrbmUsageError(
                f"{label} is already split into train/valid/test folders; --split-ratios and "
                "--seed apply only to MIDI files that are not."
            )
        outside = by_folder.count(None)
        if outside:
            warn(f"{outside} MIDI files of {label} outside its train/valid/test folders were left out.")
        assigned = [(s, f) for s, f in zip(by_folder, files) if s is not None]
        split_record = None
    else:
        ratios = _check_ratios(split_ratios if split_ratios is not None else DEFAULT_SPLIT_RATIOS)
        seed = 0 if seed is None else seed
        assigned = [(None, f) for f in files]  # split below, among the files that can be read
        split_record = {"ratios": list(ratios), "seed": seed}

    rolls: list[tuple[str | None, np.ndarray]] = []
    skipped: list[str] = []
    dropped = 0
    grid = {"dt": dt, "beat_division": beat_division, "transpose": transpose, "pedal": pedal, "max_frames": max_frames}
    sampled = _sampled([f for _, f in assigned], grid, pool_size(workers, len(assigned)))
    bar = tqdm(sampled, total=len(assigned), desc=label, unit="file", file=sys.stderr, leave=False,
               disable=None if progress else True)
    for (split, f), (roll, notes_dropped, problem) in zip(assigned, bar):
        dropped += notes_dropped
        if problem is not None:
            skipped.append(f.name)
            warn(problem)
            continue
        rolls.append((split, roll))
    if not rolls:
        shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        raise RnnrbmError(f"{label} has no usable MIDI file ({len(skipped)} skipped: {shown}).")
    if split_record is not None:
        names = _seeded_split(len(rolls), ratios, seed)
        rolls = [(name, roll) for name, (_, roll) in zip(names, rolls)]
    splits: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for split, roll in rolls:
        splits[split].append(roll)
    return MidiRolls(splits, skipped, warnings, dropped, split_record)


def pool_size(workers: int, n_files: int) -> int:
    """How many processes sample ``n_files`` MIDI files when ``workers`` are asked for.

    No more than the CPUs (``os.cpu_count()``) nor the files: a process more would only
    wait. 1 means no pool: the files are sampled in this process.
    """
    return max(1, min(workers, os.cpu_count() or 1, n_files))


# A file's outcome: (roll (T, 88) uint8, notes dropped, None), or (None, notes dropped, the
# warning saying why it is skipped).
_Outcome = tuple[np.ndarray | None, int, str | None]


def _sample_midi(data: bytes, name: str, grid: dict) -> _Outcome:
    """One MIDI file's bytes sampled by ``midi_to_roll`` with the options ``grid``.

    At module level and given only bytes and plain values, so that a worker process can
    run it; one process and a pool share it, and with it every message and limit.
    """
    try:
        # Bytes, not a parsed file: midi_to_roll measures them before pretty_midi does.
        roll, info = midi_to_roll(data, name=name, **grid)
    except RnnrbmError as e:  # unreadable or too long
        return None, 0, _skip_message(e)
    if not roll.any():
        return None, info.dropped_notes, f"{name} has no note on the 88 keys outside drum tracks; skipped."
    return roll, info.dropped_notes, None


def _skip_message(error: RnnrbmError) -> str:
    return f"{str(error).rstrip('.')}; skipped."


def _read(f: MidiFile) -> bytes | _Outcome:
    """A file's bytes, or the outcome of a file that cannot be read or is too large."""
    try:
        return f.read()
    except RnnrbmError as e:
        return None, 0, _skip_message(e)


def _sampled(files: list[MidiFile], grid: dict, workers: int) -> Iterator[_Outcome]:
    """Each file's ``_sample_midi`` outcome, in the order of ``files``, from ``workers`` processes.

    The files are read here (a zip stays open in one process, and the ``max_bytes`` limit
    is checked where it always was); only their bytes go to a worker, one file at a time,
    and at most two files a worker are in flight, so that memory stays bounded whatever
    the size of the collection.
    """
    if workers == 1:  # no pool: nothing to start, nothing to copy
        for f in files:
            data = _read(f)
            yield data if isinstance(data, tuple) else _sample_midi(data, f.name, grid)
        return
    # "spawn", not "fork": the caller may hold torch's or numba's threads (prepare runs
    # inside train and the Python API), and a forked child inherits their locks in
    # whatever state they were; a spawned worker is a fresh interpreter that imports this
    # module (not torch). It also behaves the same on Linux, macOS and Windows
    # ("forkserver" exists only on Unix); its start-up, a few tenths of a second, is paid
    # once a worker.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    pending: deque[tuple[MidiFile, Future | _Outcome]] = deque()  # in the files' order
    try:
        for f in files:
            data = _read(f)
            pending.append((f, data if isinstance(data, tuple) else pool.submit(_sample_midi, data, f.name, grid)))
            while len(pending) > 2 * workers:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(f: MidiFile, job: Future | _Outcome) -> _Outcome:
    if not isinstance(job, Future):
        return job
    try:
        return job.result()
    except BrokenProcessPool as e:  # a worker killed (out of memory?) or unable to start
        raise RnnrbmError(
            f"a worker process stopped abruptly while sampling {f.name}; "
            "prepare again with fewer --workers, or --workers 1."
        ) from e


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    ratios = tuple(float(r) for r in ratios)
    if (
        len(ratios) != 3
        or not all(math.isfinite(r) and r >= 0 for r in ratios)
        or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6)
        or ratios[0] == 0
    ):
        raise RnnrbmUsageError(
            f"split ratios must be three non-negative shares for train, valid and test that add up to 1, "
            f"train above 0 (e.g. 0.8,0.1,0.1), not {','.join(f'{r:g}' for r in ratios)}."
        )
    return ratios  # type: ignore[return-value]


def _seeded_split(n: int, ratios: tuple[float, float, float], seed: int) -> list[str]:
    """Split names for n files in sorted order: a seeded shuffle, cut by the ratios."""
    n_train = round(ratios[0] * n)
    n_valid = min(round(ratios[1] * n), n - n_train)
    order = np.random.default_rng(seed).permutation(n)
    names = [""] * n
    for rank, i in enumerate(order):
        names[i] = "train" if rank < n_train else "valid" if rank < n_train + n_valid else "test"
    return names
