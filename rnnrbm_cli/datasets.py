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

The prepared file (prepared.py writes and reads it; ``np.load(path, allow_pickle=False)``
reads it too) holds, for each split s in train, valid, test, ``s_rolls`` (uint8, shape (total frames, 88): the split's
sequences one after another) and ``s_lengths`` (int64, shape (n sequences,)), and ``meta``,
a 0-d unicode array holding a JSON object that says where the data came from and how it
was gridded (see ``prepare``), with ``content_sha256``, the digest of the rolls themselves
(see ``content_sha256``): the same data written again has the same one.

A default output name is keyed by its source: a registry dataset's is its name
(``nottingham-rolls-beat2-c.npz``), anything else's adds a digest of the source's resolved
path and content (``songs-1f0c9a2e-midi-dt0.3-none.npz``), so that two folders called
``songs`` never share a file. A checkpoint records the sha256 of the file it was trained
on; ``checkpoint_data`` refuses a file that no longer holds that data.

    >>> from rnnrbm_cli.datasets import load_prepared, resolve_data
    >>> data = load_prepared(resolve_data("nottingham"))  # doctest: +SKIP
    >>> data.summary()["train"]  # doctest: +SKIP
    {'sequences': 694, 'frames': 176561}
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


from rnnrbm_cli import __version__, readers, registry
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.pianoroll import DEFAULT_DT, MAX_FRAMES, MAX_MIDI_BYTES, TRANSPOSE_MODES
from rnnrbm_cli.readers import SPLITS, read_mat, read_pickle  # noqa: F401  (re-exported)
from rnnrbm_cli.prepared import (  # noqa: F401  (re-exported: the prepared file is prepared.py's)
    FORMAT, FORMATS, MMAP_BYTES, MMAP_SUFFIX, FrameTable, PreparedData, _summary, _write_prepared, choose_format,
    content_sha256, is_prepared_path, load_prepared, load_sequence, prepared_sha256, rolls_bytes, write_prepared,
)

SOURCE_KINDS = registry.FORMS  # "rolls", "pickle", "midi"


@dataclass(frozen=True)
class PrepareResult:
    """What prepare wrote, and what it had to leave out."""

    path: Path  # the prepared .npz or .rnnrbm folder
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
    pedal: bool = False,
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    split_ratios: Sequence[float] | None = None,
    seed: int | None = None,
    max_frames: int | None = MAX_FRAMES,
    max_member_bytes: int | None = MAX_MIDI_BYTES,
    progress: bool = True,
    on_warning: Callable[[str], None] | None = None,
    workers: int = 1,
    format: str = "auto",
) -> PrepareResult:
    """Turn a dataset or a MIDI collection into a prepared ``.npz`` or ``.rnnrbm`` folder;
    return where it is.

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
    pedal : bool
        MIDI only: hold notes while the sustain pedal (CC 64) is down, as pretty_midi's
        piano-roll does. Default False: notes end at their note-off, as in the tutorial
        and the benchmark rolls.
    out : path, optional
        Where to write; default ``<cache>/prepared/<dataset>-<kind>-<grid>-<transpose>.npz``
        (``...-pedal.npz`` with pedal) for a registry dataset (or a file recognised as one
        of its files by its sha256), ``<name>-<digest>-<kind>-...`` for anything else, where
        digest is 8 hex digits of the sha256 of the source's resolved path and its content
        (a file's sha256; a folder's MIDI files' names, sizes and modification times).
    cache_dir, mirror : optional
        As for ``registry.fetch``.
    split_ratios : three floats, optional
        A MIDI folder without train/valid/test subfolders only: train/valid/test shares
        of a seeded shuffle of its files (sorted by path). Default 0.8, 0.1, 0.1.
    seed : int, optional
        Seed of that shuffle; default 0.
    max_frames : int or None
        The most frames one sequence may have (default ``pianoroll.MAX_FRAMES``, 100,000):
        a MIDI file that would be longer is skipped with a warning; a pickle sequence
        that is longer is an error. None: no limit.
    max_member_bytes : int or None
        The largest MIDI file or zip member read, in bytes (default
        ``pianoroll.MAX_MIDI_BYTES``, 2 MiB); at most this many bytes are ever inflated,
        and a larger file is skipped with a warning. None: no limit.
    progress : bool
        Progress bars on stderr (when it is a terminal).
    on_warning : callable, optional
        Called with each warning (one sentence) as it arises; all are also returned.
    workers : int
        MIDI only: how many processes sample the files (default 1: this one, no pool),
        capped at the CPUs (``os.cpu_count()``) and the files. The output, its name and
        its meta are the same whatever the number: it is not recorded. Rolls and pickles
        are read in one go and ignore it. With more than 1, a script that calls prepare
        must do so under ``if __name__ == "__main__":`` (the workers are spawned).
    format : {"auto", "npz", "mmap"}
        "npz": one compressed file, read into memory. "mmap": a ``.rnnrbm`` folder of
        uncompressed arrays that training and evaluation read memory-mapped, for data larger
        than memory (the default name ends ``.rnnrbm`` instead of ``.npz``). "auto" (the
        default): by ``out``'s suffix if given, else mmap from ``MMAP_BYTES`` (1 GiB) of
        rolls up. The rolls are still gathered in memory as uint8 before they are written.

    Rolls and pickles are already on their dataset's beat grid and transposed to C by its
    authors; dt, beat_division, transpose and pedal raise RnnrbmUsageError for them, as do
    split_ratios and seed for a source that has its own split. Unreadable MIDI files are
    skipped, named in ``warnings`` and ``skipped_files``; a collection with no usable file,
    or an unreadable rolls or pickle file, raises RnnrbmError. The output appears only
    once completely written.

    ``meta`` records: format, dataset, source_file, source_sha256, source_kind, grid
    ("seconds" or "beats"), dt (seconds per frame or None), beat_division (frames per beat
    or None), transpose ("none", "c", or None when unknown), split (ratios and seed of a
    seeded split, else None), pedal (True or False for MIDI, None for rolls and pickles,
    whose authors do not say), skipped_files, dropped_notes (notes outside 21..108, left
    out), created_by and content_sha256 (of the rolls written, see ``content_sha256``).
    """
    choose_format(format, out, 0)  # a format or --out that cannot be, refused before any work
    if transpose is not None and transpose not in TRANSPOSE_MODES:
        raise RnnrbmUsageError(f"transpose must be one of {', '.join(TRANSPOSE_MODES)}, not {transpose!r}.")
    if dt is not None and beat_division is not None:
        raise RnnrbmUsageError("give a time grid in seconds (dt) or in beats (beat_division), not both.")
    if dt is not None and not (dt > 0 and math.isfinite(dt)):
        raise RnnrbmUsageError(f"dt must be a positive number of seconds, not {dt}.")
    if beat_division is not None and beat_division < 1:
        raise RnnrbmUsageError(f"beat_division must be a positive number of frames per beat, not {beat_division}.")
    for option, limit in (("max_frames", max_frames), ("max_member_bytes", max_member_bytes)):
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise RnnrbmUsageError(f"{option} must be a positive whole number (or None for no limit), not {limit!r}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise RnnrbmUsageError(f"workers must be a whole number of processes, 1 or more, not {workers!r}.")

    def check(kind: str, shown: str, hint: str = "") -> None:
        """Refuse MIDI-only options for gridded rolls, before anything is fetched."""
        if kind == "midi":
            return
        options = (
            ("--dt", dt), ("--beat-division", beat_division), ("--transpose", transpose), ("--pedal", pedal or None),
        )
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
            splits, dropped = readers.read_mat(src.path), 0
        else:
            splits, dropped = readers.read_pickle(src.path, max_frames=max_frames)
        known = src.dataset is not None
        grid = {"grid": "beats", "dt": None, "beat_division": src.dataset.beat_division if known else None}
        transpose = "c" if known else None
        pedal = None
    else:
        if dt is None and beat_division is None:
            dt = DEFAULT_DT
        transpose = transpose or "none"
        with contextlib.ExitStack() as stack:
            if src.path.is_dir():
                files = readers.folder_midi_files(src.path, max_bytes=max_member_bytes)
            else:
                files = readers.zip_midi_files(src.path, stack, max_bytes=max_member_bytes)
            rolls = readers.read_midi_collection(
                src.shown,
                files,
                dt=dt,
                beat_division=beat_division,
                transpose=transpose,
                split_ratios=split_ratios,
                seed=seed,
                progress=progress,
                on_warning=on_warning,
                pedal=pedal,
                max_frames=max_frames,
                workers=workers,
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
        "pedal": pedal,
        "split": split_record,
        "skipped_files": skipped,
        "dropped_notes": int(dropped),
        "created_by": f"rnnrbm {__version__}",
    }
    if out is None:
        label = src.label if src.dataset is not None else f"{src.label}-{_source_digest(src)}"
        out = prepared_path(
            label, src.kind, dt=grid["dt"], beat_division=grid["beat_division"],
            transpose=transpose, pedal=bool(pedal), cache_dir=cache_dir,
        )
        if choose_format(format, None, rolls_bytes(splits)) == "mmap":
            out = out.with_suffix(MMAP_SUFFIX)
    out, meta = _write_prepared(out, splits, meta, format)
    if not splits.get("valid"):
        counts = "/".join(str(len(splits.get(name) or [])) for name in ("train", "valid", "test"))
        message = (f"the valid split is empty (train/valid/test: {counts} sequences), so training on {out} selects no "
                   "model (best.pt is the latest epoch) and never stops early; give more files, or a larger valid "
                   "share with --split-ratios.")
        warnings = [*warnings, message]
        if on_warning is not None:
            on_warning(message)
    return PrepareResult(out, _summary(splits), meta, skipped, warnings)


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


def _source_digest(src: _Source) -> str:
    """8 hex digits naming a source that is not a registry dataset: the sha256 of its
    resolved path and its content (a file's sha256; for a folder, the names, sizes and
    modification times of the MIDI files prepare reads, as ``make`` would judge them)."""
    h = hashlib.sha256(str(src.path.resolve()).encode())
    if src.sha256 is not None:
        h.update(b"\0" + src.sha256.encode())
    else:
        for f in readers.folder_midi_files(src.path, max_bytes=None):
            try:
                st = os.stat(f.name)
            except OSError as e:
                raise RnnrbmError(f"cannot read {f.name}: {e.strerror or e}.") from e
            h.update(f"\0{Path(f.name).relative_to(src.path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:8]


def _safe_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "data"


def prepared_path(
    label: str,
    kind: str,
    *,
    dt: float | None = None,
    beat_division: int | None = None,
    transpose: str | None = None,
    pedal: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """``<cache>/prepared/<label>-<kind>-<grid>-<transpose>.npz``, e.g. ``nottingham-rolls-beat2-c.npz``.

    label is a registry dataset's name, or a user source's name and digest (``songs-1f0c9a2e``).

    grid is ``dt0.3`` or ``beat2`` (``native`` when unknown); transpose is none or c
    (``native`` when unknown). With pedal the name ends ``-pedal.npz``; without, it is
    the name files had before pedal existed.
    """
    root = Path(cache_dir) if cache_dir is not None else registry.default_cache_dir()
    grid = f"dt{dt:g}" if dt is not None else f"beat{beat_division}" if beat_division is not None else "native"
    return root / "prepared" / f"{label}-{kind}-{grid}-{transpose or 'native'}{'-pedal' if pedal else ''}.npz"


def resolve_data(
    data: str | os.PathLike,
    *,
    source: str | None = None,
    dt: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """The one resolver: the prepared ``.npz`` (or ``.rnnrbm`` folder) that ``data`` means,
    made if need be.

    - a prepared ``.npz`` or ``.rnnrbm`` folder: itself;
    - a raw file or folder (``.mat``, ``.pickle``, a ``.zip`` or folder of MIDI files):
      prepared with the defaults (``dt`` if given) into the cache, as ``rnnrbm prepare`` would;
    - a registry name: its benchmark rolls, or with ``source = "midi"`` its source MIDI
      sampled every ``dt`` seconds (default 0.3, the tutorial's); fetched and prepared into
      the cache once, then reused.
    """
    path = Path(data).expanduser()
    if (path.is_file() and path.suffix.lower() == ".npz") or (path.is_dir() and path.suffix.lower() == MMAP_SUFFIX):
        return path
    if path.exists():
        return prepare(path, dt=dt, cache_dir=cache_dir, mirror=mirror, progress=progress).path
    name = str(data)
    if is_prepared_path(path) or os.sep in name or "/" in name:
        raise RnnrbmError(f"{name}: no such file or folder.")
    dataset = registry.get_dataset(name)
    if source == "midi" or dt is not None:
        dt = DEFAULT_DT if dt is None else dt
        default = prepared_path(dataset.name, "midi", dt=dt, transpose="none", cache_dir=cache_dir)
        if _made(default):
            return _made(default)
        return prepare(dataset.name, source_kind="midi", dt=dt, transpose="none", out=default, cache_dir=cache_dir,
                       mirror=mirror, progress=progress).path
    kind = _default_kind(dataset)
    if kind == "midi":
        default = prepared_path(dataset.name, kind, dt=DEFAULT_DT, transpose="none", cache_dir=cache_dir)
    else:
        default = prepared_path(
            dataset.name, kind, beat_division=dataset.beat_division, transpose="c", cache_dir=cache_dir
        )
    if _made(default):
        return _made(default)
    return prepare(dataset.name, source_kind=kind, cache_dir=cache_dir, mirror=mirror, progress=progress).path


def _made(default: Path) -> Path | None:
    """The prepared data at ``default`` (a .npz name), or beside it as a ``.rnnrbm`` folder."""
    if default.is_file():
        return default
    folder = default.with_suffix(MMAP_SUFFIX)
    return folder if folder.is_dir() else None


def checkpoint_data(
    payload: dict[str, Any],
    data: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    mirror: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """The prepared data for a checkpoint: ``data`` if given, else the file it was trained on
    (when still there), else what its settings name (prepared again the same way).

    Without ``data`` the file found must hold the data the checkpoint was trained on
    (``check_checkpoint_data``), or it is an RnnrbmError; ``data`` given is other data on
    purpose (evaluate --data) and is not checked.
    """
    if data is not None:
        return resolve_data(data, cache_dir=cache_dir, mirror=mirror, progress=progress)
    meta = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    path = meta.get("path")
    if isinstance(path, str) and Path(path).exists():
        check_checkpoint_data(payload, path)
        return Path(path)
    settings = payload.get("settings") if isinstance(payload.get("settings"), dict) else {}
    spec = settings.get("data") if isinstance(settings.get("data"), dict) else {}
    name = spec.get("data") if isinstance(spec, dict) else None
    if not isinstance(name, str) or not name:
        name = meta.get("dataset")
    if not isinstance(name, str) or not name:
        raise RnnrbmUsageError("the checkpoint does not say which data it was trained on; pass --data.")
    found = resolve_data(name, source=spec.get("source"), dt=spec.get("dt"), cache_dir=cache_dir, mirror=mirror,
                         progress=progress)
    check_checkpoint_data(payload, found)
    return found


def check_checkpoint_data(payload: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse, in one sentence, a prepared file that is not the data a checkpoint was trained on.

    The checkpoint's ``data`` records ``sha256``, of the file it was trained on, and
    ``content_sha256``, of that file's rolls (``content_sha256``). ``path`` passes when its
    sha256 is the recorded one, or when its rolls' digest is: the same data written again
    (prepared anew, with another zip timestamp) is the same data. A checkpoint that records
    neither (it predates them) is not checked. Otherwise RnnrbmError naming both files.
    """
    meta = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    file_sha, rolls_sha = meta.get("sha256"), meta.get("content_sha256")
    if not isinstance(file_sha, str) and not isinstance(rolls_sha, str):
        return
    path = Path(path)
    file_now = prepared_sha256(path)
    if file_now == file_sha:
        return
    rolls_now = load_prepared(path).meta["content_sha256"]
    if rolls_now == rolls_sha:
        return
    then, now = (file_sha, file_now) if isinstance(file_sha, str) else (rolls_sha, rolls_now)
    recorded = meta.get("path")
    trained_on = f"{recorded} (sha256 {then[:12]})" if isinstance(recorded, str) else f"data of sha256 {then[:12]}"
    raise RnnrbmError(
        f"the checkpoint was trained on {trained_on}, but {path} holds other data (sha256 {now[:12]}); "
        "prepare that data again from the same source with the same options, or evaluate other data on purpose "
        "with --data."
    )
