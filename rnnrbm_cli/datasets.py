"""Raw dataset files -> prepared train/valid/test piano-rolls in one ``.npz``.

Sources, and how each is read:

- ``rolls``: a MATLAB ``.mat`` (``traindata``/``validdata``/``testdata``, 1 x N cells of
  T x 88 0/1 arrays), already on the dataset's beat grid and transposed by its authors.
- ``pickle``: the authors' original Python 2 pickle, ``{"train": [...], ...}``, each
  sequence a list of frames, each frame a tuple of MIDI pitches. Read by an unpickler
  that builds numpy integer scalars and nothing else.
- ``midi``: a ``.zip`` of ``<Name>/{train,valid,test}/*.mid`` or a folder of MIDI files,
  sampled by ``pianoroll.midi_to_roll``. A folder without train/valid/test subfolders is
  split by a seeded shuffle.

The prepared file (``np.load(path, allow_pickle=False)`` reads it) holds, for each split
s in train, valid, test, ``s_rolls`` (uint8, shape (total frames, 88): the split's
sequences one after another) and ``s_lengths`` (int64, shape (n sequences,)), and ``meta``,
a 0-d unicode array holding a JSON object that says where the data came from and how it
was gridded (see ``prepare``).

    >>> from rnnrbm_cli.datasets import load_prepared, resolve_data
    >>> data = load_prepared(resolve_data("nottingham"))  # doctest: +SKIP
    >>> data.summary()["train"]  # doctest: +SKIP
    {'sequences': 694, 'frames': 176561}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import operator
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from rnnrbm_cli import __version__, registry
from rnnrbm_cli._io import atomic_open
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.pianoroll import HIGHEST_PITCH, LOWEST_PITCH, N_KEYS, TRANSPOSE_MODES, midi_to_roll, read_midi

SPLITS = ("train", "valid", "test")
SOURCE_KINDS = registry.FORMS  # "rolls", "pickle", "midi"
FORMAT = 1  # version of the prepared .npz layout; load_prepared refuses any other
DEFAULT_DT = 0.3  # seconds per frame for MIDI sources when no grid is given: the tutorial's
DEFAULT_SPLIT_RATIOS = (0.8, 0.1, 0.1)  # train/valid/test shares of an unsplit MIDI folder
MIDI_SUFFIXES = (".mid", ".midi")

_MAT_KEYS = {"train": "traindata", "valid": "validdata", "test": "testdata"}


@dataclass
class PreparedData:
    """The content of a prepared ``.npz``."""

    splits: dict[str, list[np.ndarray]]  # split -> sequences, each (T, 88) uint8
    meta: dict  # provenance and grid, as written by prepare

    def summary(self) -> dict[str, dict[str, int]]:
        """``{"train": {"sequences": N, "frames": N}, ...}``."""
        return _summary(self.splits)


@dataclass(frozen=True)
class PrepareResult:
    """What prepare wrote, and what it had to leave out."""

    path: Path  # the prepared .npz
    splits: dict[str, dict[str, int]]  # split -> {"sequences": N, "frames": N}
    meta: dict  # as stored in the file
    skipped_files: list[str] = field(default_factory=list)  # unreadable inputs, by name
    warnings: list[str] = field(default_factory=list)  # one sentence per problem, for stderr

    def as_json(self) -> dict:
        """The object ``rnnrbm prepare --json`` prints."""
        return {
            "path": str(self.path),
            "splits": self.splits,
            "meta": self.meta,
            "skipped_files": self.skipped_files,
        }


# -- readers -----------------------------------------------------------------------------


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


def read_pickle(path: str | os.PathLike) -> tuple[dict[str, list[np.ndarray]], int]:
    """Read an original dataset pickle safely: split -> sequences (T, 88) uint8, and dropped notes.

    Pitches outside 21..108 are left out and counted. Raises RnnrbmError if the pickle asks
    for anything but numpy scalars, or is not a dict of train/valid/test pitch lists.
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
            roll, n = _pitch_lists_to_roll(sequence, f"{path}: {split} sequence {i + 1}")
            splits[split].append(roll)
            dropped += n
    return splits, dropped


def _pitch_lists_to_roll(sequence, where: str) -> tuple[np.ndarray, int]:
    if not isinstance(sequence, (list, tuple)):
        raise RnnrbmError(f"{where} is not a list of frames.")
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
class _MidiFile:
    """One MIDI file of a zip or folder, not yet read."""

    name: str  # as shown to the user
    parts: tuple[str, ...]  # folders above it, relative to the zip or folder root
    read: Callable[[], bytes]


@dataclass
class _MidiRolls:
    splits: dict[str, list[np.ndarray]]
    skipped: list[str]
    warnings: list[str]
    dropped_notes: int
    split: dict | None  # {"ratios": [...], "seed": n} for a seeded split, else None


def _zip_midi_files(path: Path, stack: contextlib.ExitStack) -> list[_MidiFile]:
    """The MIDI members of a zip, sorted by name; ``stack`` closes the archive."""
    try:
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = sorted(archive.infolist(), key=lambda m: m.filename)
    except FileNotFoundError as e:
        raise RnnrbmError(f"{path}: no such file.") from e
    except (zipfile.BadZipFile, OSError) as e:
        raise RnnrbmError(f"{path} is not a readable zip file ({e}).") from e
    # Members are read in memory, never extracted: a member name cannot write anywhere.
    return [
        _MidiFile(f"{path.name}:{m.filename}", PurePosixPath(m.filename).parts[:-1], lambda m=m: archive.read(m))
        for m in members
        if not m.is_dir() and _is_midi_name(PurePosixPath(m.filename))
    ]


def _folder_midi_files(root: Path) -> list[_MidiFile]:
    paths = sorted(
        (p for p in root.rglob("*") if p.is_file() and _is_midi_name(p.relative_to(root))),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    return [_MidiFile(str(p), p.relative_to(root).parts[:-1], p.read_bytes) for p in paths]


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


def _read_midi_collection(
    label: str,
    files: list[_MidiFile],
    *,
    dt: float | None,
    beat_division: int | None,
    transpose: str,
    split_ratios: Sequence[float] | None,
    seed: int | None,
    progress: bool,
    on_warning: Callable[[str], None] | None,
) -> _MidiRolls:
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
    bar = tqdm(assigned, desc=label, unit="file", file=sys.stderr, leave=False, disable=None if progress else True)
    for split, f in bar:
        try:
            midi = read_midi(f.read(), name=f.name)
        except RnnrbmError as e:
            skipped.append(f.name)
            warn(f"{str(e).rstrip('.')}; skipped.")
            continue
        except (OSError, zipfile.BadZipFile) as e:  # a damaged zip member, an unreadable file
            skipped.append(f.name)
            warn(f"cannot read {f.name} ({e}); skipped.")
            continue
        roll, info = midi_to_roll(midi, dt=dt, beat_division=beat_division, transpose=transpose)
        dropped += info.dropped_notes
        if not roll.any():
            skipped.append(f.name)
            warn(f"{f.name} has no note on the 88 keys outside drum tracks; skipped.")
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
    return _MidiRolls(splits, skipped, warnings, dropped, split_record)


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


# -- prepare -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    kind: str  # one of SOURCE_KINDS
    path: Path  # the file or folder to read
    label: str  # dataset name or the file's stem: names the output and the messages
    dataset: registry.Dataset | None  # the registry entry the file belongs to, if any
    source_file: str  # for meta: registry file name, or the user's path
    sha256: str | None  # of the file; None for a folder
    shown: str  # how messages name it


def prepare(
    source: str | os.PathLike,
    *,
    source_kind: str | None = None,
    dt: float | None = None,
    beat_division: int | None = None,
    transpose: str | None = None,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    split_ratios: Sequence[float] | None = None,
    seed: int | None = None,
    progress: bool = True,
    on_warning: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Turn a dataset or a MIDI collection into a prepared ``.npz``; return where it is.

    Parameters
    ----------
    source : str or path
        A path that exists (a ``.mat``, ``.pickle``, ``.zip`` or folder of MIDI files), else
        a registry dataset name, whose file is fetched (verified, cached) first.
    source_kind : {"rolls", "pickle", "midi"}, optional
        Which file of a registry dataset to use (default its rolls), or how to read a path
        (default from its suffix; a folder is MIDI).
    dt : float, optional
        MIDI only: seconds per frame. Default 0.3 (the tutorial's) unless beat_division is given.
    beat_division : int, optional
        MIDI only: frames per beat (quarter note), following the tempo map.
    transpose : {"none", "c"}, optional
        MIDI only: "c" transposes each file to C major / C minor. Default "none".
    out : path, optional
        Where to write; default ``<cache>/prepared/<dataset>-<kind>-<grid>-<transpose>.npz``.
    cache_dir, mirror : optional
        As for ``registry.fetch``.
    split_ratios : three floats, optional
        A MIDI folder without train/valid/test subfolders only: train/valid/test shares
        of a seeded shuffle of its files (sorted by path). Default 0.8, 0.1, 0.1.
    seed : int, optional
        Seed of that shuffle; default 0.
    progress : bool
        Progress bars on stderr (when it is a terminal).
    on_warning : callable, optional
        Called with each warning (one sentence) as it arises; all are also returned.

    Rolls and pickles are already on their dataset's beat grid and transposed to C by its
    authors; dt, beat_division and transpose raise RnnrbmUsageError for them, as do
    split_ratios and seed for a source that has its own split. Unreadable MIDI files are
    skipped, named in ``warnings`` and ``skipped_files``; a collection with no usable file,
    or an unreadable rolls or pickle file, raises RnnrbmError. The output appears only
    once completely written.

    ``meta`` records: format, dataset, source_file, source_sha256, source_kind, grid
    ("seconds" or "beats"), dt (seconds per frame or None), beat_division (frames per beat
    or None), transpose ("none", "c", or None when unknown), split (ratios and seed of a
    seeded split, else None), skipped_files, dropped_notes (notes outside 21..108, left
    out) and created_by.
    """
    if transpose is not None and transpose not in TRANSPOSE_MODES:
        raise RnnrbmUsageError(f"transpose must be one of {', '.join(TRANSPOSE_MODES)}, not {transpose!r}.")
    if dt is not None and beat_division is not None:
        raise RnnrbmUsageError("give a time grid in seconds (dt) or in beats (beat_division), not both.")
    if dt is not None and not (dt > 0 and math.isfinite(dt)):
        raise RnnrbmUsageError(f"dt must be a positive number of seconds, not {dt}.")
    if beat_division is not None and beat_division < 1:
        raise RnnrbmUsageError(f"beat_division must be a positive number of frames per beat, not {beat_division}.")

    def check(kind: str, shown: str, hint: str = "") -> None:
        """Refuse MIDI-only options for gridded rolls, before anything is fetched."""
        if kind == "midi":
            return
        options = (("--dt", dt), ("--beat-division", beat_division), ("--transpose", transpose))
        given = [flag for flag, value in options if value is not None]
        if given:
            raise RnnrbmUsageError(
                f"{shown} holds piano-rolls already on a beat grid and transposed by the dataset's authors, "
                f"so {' and '.join(given)} cannot apply: they are for MIDI sources{hint}."
            )
        if split_ratios is not None or seed is not None:
            raise RnnrbmUsageError(
                f"{shown} comes split into train/valid/test; "
                "--split-ratios and --seed are for a folder of MIDI files."
            )

    src = _find_source(source, source_kind, check, cache_dir=cache_dir, mirror=mirror, progress=progress)
    skipped: list[str] = []
    warnings: list[str] = []
    split_record = None
    if src.kind in ("rolls", "pickle"):
        if src.kind == "rolls":
            splits, dropped = read_mat(src.path), 0
        else:
            splits, dropped = read_pickle(src.path)
        known = src.dataset is not None
        grid = {"grid": "beats", "dt": None, "beat_division": src.dataset.beat_division if known else None}
        transpose = "c" if known else None
    else:
        if dt is None and beat_division is None:
            dt = DEFAULT_DT
        transpose = transpose or "none"
        with contextlib.ExitStack() as stack:
            files = _folder_midi_files(src.path) if src.path.is_dir() else _zip_midi_files(src.path, stack)
            rolls = _read_midi_collection(
                src.shown,
                files,
                dt=dt,
                beat_division=beat_division,
                transpose=transpose,
                split_ratios=split_ratios,
                seed=seed,
                progress=progress,
                on_warning=on_warning,
            )
        splits, dropped = rolls.splits, rolls.dropped_notes
        skipped, warnings, split_record = rolls.skipped, rolls.warnings, rolls.split
        grid = {"grid": "seconds" if dt is not None else "beats", "dt": dt, "beat_division": beat_division}

    meta = {
        "format": FORMAT,
        "dataset": src.label,
        "source_file": src.source_file,
        "source_sha256": src.sha256,
        "source_kind": src.kind,
        **grid,
        "transpose": transpose,
        "split": split_record,
        "skipped_files": skipped,
        "dropped_notes": int(dropped),
        "created_by": f"rnnrbm {__version__}",
    }
    if out is None:
        out = prepared_path(
            src.label, src.kind, dt=grid["dt"], beat_division=grid["beat_division"],
            transpose=transpose, cache_dir=cache_dir,
        )
    out = write_prepared(out, splits, meta)
    return PrepareResult(Path(out), _summary(splits), meta, skipped, warnings)


def _find_source(
    source: str | os.PathLike,
    kind: str | None,
    check: Callable[..., None],
    *,
    cache_dir: str | os.PathLike | None,
    mirror: str | os.PathLike | None,
    progress: bool,
) -> _Source:
    """Where the data is: an existing path, else a registry dataset's file (fetched).

    ``check(kind, shown, hint)`` vets the options against the kind of source before any work.
    """
    if kind is not None and kind not in SOURCE_KINDS:
        raise RnnrbmUsageError(f"source kind must be one of {', '.join(SOURCE_KINDS)}, not {kind!r}.")
    path = Path(source).expanduser()
    if path.exists():
        if kind is None:
            kind = _kind_of_path(path)
        if path.is_dir():
            if kind != "midi":
                raise RnnrbmUsageError(f"{path} is a folder: only MIDI files can be read from a folder.")
            check(kind, str(path))
            return _Source(kind, path, _safe_label(path.resolve().name), None, str(path.resolve()), None, str(path))
        check(kind, str(path))
        sha256 = _sha256(path)
        dataset = _registry_dataset_of(sha256)
        label = dataset.name if dataset is not None else _safe_label(path.stem)
        return _Source(kind, path, label, dataset, str(path.resolve()), sha256, str(path))

    name = str(source)
    if os.sep in name or "/" in name or Path(name).suffix.lower() in (".mat", ".pickle", ".pkl", ".zip", ".npz"):
        raise RnnrbmError(f"{name}: no such file or folder.")
    dataset = registry.get_dataset(name)  # RnnrbmError naming the known datasets
    kind = kind or _default_kind(dataset)
    datafile = dataset.file(kind)
    if datafile is None:
        have = ", ".join(dict.fromkeys(f.form for f in dataset.files))
        raise RnnrbmError(f"dataset {dataset.name!r} has no {kind} file; it has {have}.")
    midi = dataset.file("midi")
    check(kind, datafile.name, f" such as {midi.name} (--source midi)" if midi is not None else "")
    results = registry.fetch(dataset, forms=[kind], mirror=mirror, cache_dir=cache_dir, progress=progress)
    fetched = next(r for r in results if r.name == datafile.name)
    return _Source(kind, fetched.path, dataset.name, dataset, datafile.name, fetched.sha256, datafile.name)


def _kind_of_path(path: Path) -> str:
    if path.is_dir():
        return "midi"
    suffix = path.suffix.lower()
    kinds = {".mat": "rolls", ".pickle": "pickle", ".pkl": "pickle", ".zip": "midi"}
    if suffix not in kinds:
        raise RnnrbmError(
            f"cannot tell what {path} holds from its name: expected a .mat, .pickle, .zip or a folder "
            "of MIDI files (or say which with --source rolls|pickle|midi)."
        )
    return kinds[suffix]


def _default_kind(dataset: registry.Dataset) -> str:
    """Rolls when the dataset has them: the gridded, transposed benchmark data."""
    return next(kind for kind in SOURCE_KINDS if dataset.file(kind) is not None)


def _registry_dataset_of(sha256: str) -> registry.Dataset | None:
    """The registry dataset a file belongs to, recognised by its sha256."""
    for dataset in registry.load_registry().values():
        if any(f.sha256 == sha256 for f in dataset.files):
            return dataset
    return None


def _sha256(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise RnnrbmError(f"cannot read {path}: {e.strerror or e}.") from e


def _safe_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "data"


def prepared_path(
    label: str,
    kind: str,
    *,
    dt: float | None = None,
    beat_division: int | None = None,
    transpose: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """``<cache>/prepared/<label>-<kind>-<grid>-<transpose>.npz``, e.g. ``nottingham-rolls-beat2-c.npz``.

    grid is ``dt0.3`` or ``beat2`` (``native`` when unknown); transpose is none or c
    (``native`` when unknown).
    """
    root = Path(cache_dir) if cache_dir is not None else registry.default_cache_dir()
    grid = f"dt{dt:g}" if dt is not None else f"beat{beat_division}" if beat_division is not None else "native"
    return root / "prepared" / f"{label}-{kind}-{grid}-{transpose or 'native'}.npz"


def resolve_data(
    name_or_npz: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """A prepared ``.npz`` to train on: the path itself, or a registry dataset's default one.

    For a dataset name the default is its rolls as ``prepare(name)`` writes them; they are
    fetched and prepared first if the cache lacks them.
    """
    path = Path(name_or_npz).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise RnnrbmError(
                f"{path} is not a prepared .npz; run `rnnrbm prepare {path}` first and use its output."
            )
        return path
    name = str(name_or_npz)
    if path.suffix.lower() == ".npz" or os.sep in name or "/" in name:
        raise RnnrbmError(f"{name}: no such file.")
    dataset = registry.get_dataset(name)
    kind = _default_kind(dataset)
    if kind == "midi":
        default = prepared_path(dataset.name, kind, dt=DEFAULT_DT, transpose="none", cache_dir=cache_dir)
    else:
        default = prepared_path(
            dataset.name, kind, beat_division=dataset.beat_division, transpose="c", cache_dir=cache_dir
        )
    if default.is_file():
        return default
    return prepare(dataset.name, source_kind=kind, cache_dir=cache_dir, mirror=mirror, progress=progress).path


# -- the prepared file -------------------------------------------------------------------


def write_prepared(path: str | os.PathLike, splits: dict[str, list[np.ndarray]], meta: dict) -> Path:
    """Write splits (split -> sequences of (T, 88) 0/1 rolls) and meta to ``path`` atomically."""
    arrays = {}
    for split in SPLITS:
        sequences = splits.get(split, [])
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        rolls = np.concatenate(sequences) if sequences else np.zeros((0, N_KEYS))
        arrays[f"{split}_rolls"] = rolls.astype(np.uint8).reshape(-1, N_KEYS)
        arrays[f"{split}_lengths"] = lengths
    arrays["meta"] = np.array(json.dumps(meta))
    path = Path(path)
    try:
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, **arrays)
    except OSError as e:
        raise RnnrbmError(f"cannot write {path}: {e.strerror or e}.") from e
    return path


def load_prepared(path: str | os.PathLike) -> PreparedData:
    """Read a prepared ``.npz``; RnnrbmError in one sentence if it is not one."""
    path = Path(path)
    hint = "make one with `rnnrbm prepare`"

    def bad(why: str) -> RnnrbmError:
        return RnnrbmError(f"{path} is not a prepared dataset: {why}; {hint}.")

    if not path.is_file():
        raise RnnrbmError(f"{path}: no such file.")
    if not zipfile.is_zipfile(path):
        raise bad("it is not a NumPy .npz archive")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise bad("it holds Python objects, which a prepared dataset never does") from e
        raise bad(f"an array in it cannot be read ({str(e).splitlines()[0].rstrip('.')})") from e
    except Exception as e:  # a damaged member: zlib, zipfile and OS errors
        raise bad(f"it is damaged ({str(e).splitlines()[0].rstrip('.') if str(e) else type(e).__name__})") from e

    meta_array = arrays.get("meta")
    if meta_array is None or meta_array.shape != () or meta_array.dtype.kind != "U":
        raise bad("it has no meta string")
    try:
        meta = json.loads(str(meta_array))
    except json.JSONDecodeError:
        raise bad("its meta is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"its format is {meta.get('format') if isinstance(meta, dict) else None!r}, not {FORMAT}")
    splits = {}
    for split in SPLITS:
        rolls, lengths = arrays.get(f"{split}_rolls"), arrays.get(f"{split}_lengths")
        if rolls is None or lengths is None:
            raise bad(f"it lacks {split}_rolls or {split}_lengths")
        if rolls.dtype != np.uint8 or rolls.ndim != 2 or rolls.shape[1] != N_KEYS:
            raise bad(f"{split}_rolls is {rolls.dtype} {rolls.shape}, not uint8 (frames, {N_KEYS})")
        if lengths.dtype != np.int64 or lengths.ndim != 1 or (lengths < 0).any() or lengths.sum() != len(rolls):
            raise bad(f"{split}_lengths does not add up to the {len(rolls)} frames of {split}_rolls")
        if rolls.size and rolls.max() > 1:
            raise bad(f"{split}_rolls holds values other than 0 and 1")
        splits[split] = np.split(rolls, np.cumsum(lengths)[:-1]) if len(lengths) else []
    return PreparedData(splits, meta)


def _summary(splits: dict[str, list[np.ndarray]]) -> dict[str, dict[str, int]]:
    return {
        split: {"sequences": len(splits.get(split, [])), "frames": int(sum(len(s) for s in splits.get(split, [])))}
        for split in SPLITS
    }


def load_sequence(
    path: str | os.PathLike, split: str | None = None, index: int | None = None
) -> tuple[np.ndarray, str, int, dict[str, Any]]:
    """One sequence of a prepared ``.npz``: the roll, its split and index, and the data's metadata.

    Default: the first sequence of the test split (or of the first split that has one).
    An unknown split or an index out of range is a usage error naming what there is.
    """
    prepared = load_prepared(path)
    splits = prepared.splits
    if split is None:
        candidates = ["test", *[s for s in splits if s != "test"]]
        split = next((s for s in candidates if splits.get(s)), None)
        if split is None:
            raise RnnrbmError(f"{path} holds no sequences.")
    elif split not in splits:
        raise RnnrbmUsageError(f"{path} has no split {split!r}; it has {', '.join(sorted(splits))}.")
    sequences = splits[split]
    if index is None:
        index = 0
    if not 0 <= index < len(sequences):
        raise RnnrbmUsageError(f"{path} has {len(sequences)} {split} sequences; --index must be 0..{len(sequences) - 1}, not {index}.")
    return np.asarray(sequences[index]), split, index, dict(prepared.meta)
