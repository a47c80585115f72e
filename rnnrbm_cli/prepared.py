"""The prepared data: train/valid/test piano-rolls in one ``.npz`` or one ``.rnnrbm``
folder, their writer and their reader.

The ``.npz`` (``np.load(path, allow_pickle=False)`` reads it) holds, for each split s in
train, valid, test, ``s_rolls`` (uint8, shape (total frames, 88), row-major: the split's
sequences one after another) and ``s_lengths`` (int64, shape (n sequences,)), and ``meta``,
a 0-d unicode array holding a JSON object that says where the data came from and how it was
gridded (see ``datasets.prepare``), with ``content_sha256``, the digest of the rolls.

The ``.rnnrbm`` folder (the "mmap" format, for data larger than memory) holds the same
arrays uncompressed, one ``.npy`` file each (``s_rolls.npy``, ``s_lengths.npy``: what
``np.load(path, mmap_mode="r")`` reads), and the same meta in ``meta.json``. It is read
memory-mapped: its rolls stay on disk and the sequences ``load_prepared`` returns are views
into the mapping. Its meta's ``content_sha256`` is checked against the rolls when read (the
check reads the files in blocks, never all at once), so a damaged or altered folder is
refused; it is written as a hidden temporary folder renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rnnrbm_cli._io import atomic_open
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.pianoroll import N_KEYS
from rnnrbm_cli.readers import SPLITS

FORMAT = 1  # version of the prepared layout (the meta's "format"); load_prepared refuses any other
FORMATS = ("auto", "npz", "mmap")  # prepare --format; auto: mmap from MMAP_BYTES of rolls up
MMAP_SUFFIX = ".rnnrbm"  # the mmap format's folder; a .npz is the other format
# From 1 GiB of uint8 rolls up, "auto" writes the mmap format: in memory, training would hold
# them 4 times over as float32 frames (chunks.ChunkedData), 4 GiB, more than a laptop spares.
MMAP_BYTES = 2**30
_BLOCK_FRAMES = 1 << 16  # frames per read when checking an mmap folder (5.8 MB of rolls)
_MAX_META_BYTES = 16 * 2**20  # a meta.json larger than this is not one


class FrameTable(NamedTuple):
    """A split of the mmap format as it lies on disk."""

    rolls: np.ndarray  # (total frames, 88) uint8, read-only, a view of ``mapping``
    lengths: np.ndarray  # (n sequences,) int64, in memory
    mapping: mmap.mmap | None  # the file's mapping: chunks.ChunkedData drops its pages once read


@dataclass
class PreparedData:
    """The content of a prepared ``.npz`` or ``.rnnrbm`` folder."""

    splits: dict[str, list[np.ndarray]]  # split -> sequences, each (T, 88) uint8
    meta: dict  # provenance and grid, as written by prepare
    # split -> its rolls on disk, for the mmap format only (empty for a .npz): what lets
    # training read chunks as it uses them instead of holding the split in memory
    on_disk: dict[str, FrameTable] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, int]]:
        """``{"train": {"sequences": N, "frames": N}, ...}``."""
        return _summary(self.splits)


def write_prepared(
    path: str | os.PathLike, splits: dict[str, list[np.ndarray]], meta: dict, format: str = "auto"
) -> Path:
    """Write splits (split -> sequences of (T, 88) 0/1 rolls) and meta to ``path`` atomically.

    The meta written is ``meta`` with ``content_sha256`` set to the digest of these rolls.
    format : "npz", "mmap" (a ``.rnnrbm`` folder) or "auto" (``choose_format``).
    """
    return _write_prepared(path, splits, meta, format)[0]


def choose_format(format: str, path: str | os.PathLike | None, n_bytes: int) -> str:
    """"npz" or "mmap" for data of ``n_bytes`` bytes of rolls written to ``path``.

    "auto": a path ending ``.rnnrbm`` means mmap, any other path npz (what --out always
    meant); no path, mmap from MMAP_BYTES up. A format that contradicts the path's suffix
    is a usage error.
    """
    if format not in FORMATS:
        raise RnnrbmUsageError(f"the prepared format must be one of {', '.join(FORMATS)}, not {format!r}.")
    suffix = Path(path).suffix.lower() if path is not None else None
    if format == "auto":
        if suffix is None:
            return "mmap" if n_bytes >= MMAP_BYTES else "npz"
        return "mmap" if suffix == MMAP_SUFFIX else "npz"
    if path is not None and (suffix == MMAP_SUFFIX) != (format == "mmap"):
        want = f"a folder ending {MMAP_SUFFIX}" if format == "mmap" else f"a file not ending {MMAP_SUFFIX} (.npz)"
        raise RnnrbmUsageError(f"the {format} format is written to {want}, not {path}; change --out or --format.")
    return format


def rolls_bytes(splits: dict[str, list[np.ndarray]]) -> int:
    """Bytes of uint8 rolls that ``splits`` make: what choose_format weighs."""
    return sum(len(s) for split in SPLITS for s in splits.get(split, [])) * N_KEYS


def _write_prepared(
    path: str | os.PathLike, splits: dict[str, list[np.ndarray]], meta: dict, format: str = "auto"
) -> tuple[Path, dict]:
    """write_prepared, returning the path and the meta as written."""
    if choose_format(format, path, rolls_bytes(splits)) == "mmap":
        return _write_mmap(Path(path), splits, meta)
    arrays = {}
    for split in SPLITS:
        sequences = splits.get(split, [])
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        rolls = np.concatenate(sequences) if sequences else np.zeros((0, N_KEYS))
        # row-major whatever the source's order (the .mat rolls are column-major)
        arrays[f"{split}_rolls"] = np.ascontiguousarray(rolls.astype(np.uint8).reshape(-1, N_KEYS))
        arrays[f"{split}_lengths"] = lengths
    meta = {**meta, "content_sha256": content_sha256(arrays)}
    arrays["meta"] = np.array(json.dumps(meta))
    path = Path(path)
    try:
        with atomic_open(path, "wb") as f:
            np.savez_compressed(f, **arrays)
    except OSError as e:
        raise RnnrbmError(f"cannot write {path}: {e.strerror or e}.") from e
    return path, meta


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """The digest of a prepared file's data, whatever the file's bytes (zip timestamps,
    compression, meta): sha256 over, for each split in train, valid, test, its name, a NUL,
    ``{split}_lengths`` as little-endian int64 and ``{split}_rolls`` as row-major uint8.

    arrays : ``{split}_rolls`` (frames, 88) uint8 and ``{split}_lengths`` (n,) int64 per split.
    """
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(split.encode() + b"\0")
        h.update(np.ascontiguousarray(arrays[f"{split}_lengths"], dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(arrays[f"{split}_rolls"], dtype=np.uint8).reshape(-1))  # no copy
    return h.hexdigest()


def _write_mmap(path: Path, splits: dict[str, list[np.ndarray]], meta: dict) -> tuple[Path, dict]:
    """The mmap format: each split's rolls streamed, sequence by sequence, into an ``.npy``
    of a hidden temporary folder beside ``path``, hashed on the way; meta.json last; then
    the folder renamed into place (an existing prepared folder there is replaced)."""
    if path.suffix.lower() != MMAP_SUFFIX:
        raise RnnrbmUsageError(f"an mmap prepared dataset is a folder ending {MMAP_SUFFIX}, not {path}.")
    if path.exists() and not (path.is_dir() and (path / "meta.json").is_file()):
        raise RnnrbmError(f"cannot write {path}: something that is not a prepared folder is there; remove it first.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's is 0700; the folder is shared like any file
    except OSError as e:
        raise RnnrbmError(f"cannot write {path}: {e.strerror or e}.") from e
    try:
        h = hashlib.sha256()
        for split in SPLITS:
            sequences = splits.get(split, [])
            lengths = np.array([len(s) for s in sequences], dtype=np.int64)
            h.update(split.encode() + b"\0")
            h.update(lengths.astype("<i8").tobytes())
            np.save(tmp / f"{split}_lengths.npy", lengths)
            with open(tmp / f"{split}_rolls.npy", "wb") as f:
                header = {"descr": "|u1", "fortran_order": False, "shape": (int(lengths.sum()), N_KEYS)}
                np.lib.format.write_array_header_1_0(f, header)
                for s in sequences:
                    # row-major whatever the source's order (the .mat rolls are column-major)
                    block = np.ascontiguousarray(np.asarray(s).astype(np.uint8).reshape(-1, N_KEYS))
                    h.update(block.reshape(-1))
                    f.write(block.data)
                f.flush()
                os.fsync(f.fileno())
        meta = {**meta, "content_sha256": h.hexdigest()}
        with open(tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():  # a directory cannot replace a non-empty one: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        raise RnnrbmError(f"cannot write {path}: {e.strerror or e}.") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once renamed
    return path, meta


def is_prepared_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names prepared data by its name: a ``.npz`` or a ``.rnnrbm`` folder."""
    return Path(path).suffix.lower() in (".npz", MMAP_SUFFIX)


def prepared_sha256(path: str | os.PathLike) -> str:
    """The sha256 that names a prepared dataset's bytes, as a checkpoint records it: the
    file's, or for a ``.rnnrbm`` folder its meta.json's (which holds the digest of the
    rolls, checked against them whenever the folder is read)."""
    path = Path(path)
    target = path / "meta.json" if path.is_dir() else path
    try:
        with open(target, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise RnnrbmError(f"cannot read {target}: {e.strerror or e}.") from e


def load_prepared(path: str | os.PathLike) -> PreparedData:
    """Read a prepared ``.npz`` or ``.rnnrbm`` folder; RnnrbmError in one sentence if it is not one.

    ``meta["content_sha256"]`` is always the digest of the rolls as read (computed here,
    so that files written before it existed have one too, and a stored one cannot lie).
    A ``.rnnrbm`` folder's rolls are memory-mapped, not read in: ``splits`` are views of
    them and ``on_disk`` has each split's table.
    """
    path = Path(path)
    hint = "make one with `rnnrbm prepare`"

    def bad(why: str) -> RnnrbmError:
        return RnnrbmError(f"{path} is not a prepared dataset: {why}; {hint}.")

    if path.is_dir():
        return _load_mmap(path, bad)
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
    meta["content_sha256"] = content_sha256(arrays)
    return PreparedData(splits, meta)


def _load_mmap(path: Path, bad) -> PreparedData:
    """load_prepared of a ``.rnnrbm`` folder: headers, sizes and lengths checked, then the
    rolls read once in blocks (by read(), not through the mapping, so that the check leaves
    nothing resident) for their values and their digest, then mapped."""
    meta_path = path / "meta.json"
    try:
        if meta_path.stat().st_size > _MAX_META_BYTES:
            raise bad("its meta.json is too large to be one")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise bad("it has no meta.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise bad("its meta.json is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"its format is {meta.get('format') if isinstance(meta, dict) else None!r}, not {FORMAT}")
    stored = meta.get("content_sha256")
    if not isinstance(stored, str):
        raise bad("its meta.json has no content_sha256")
    h = hashlib.sha256()
    splits, on_disk = {}, {}
    for split in SPLITS:
        lengths_file, rolls_file = path / f"{split}_lengths.npy", path / f"{split}_rolls.npy"
        lengths_shape, lengths_offset = _npy_header(lengths_file, "<i8", 1, bad)
        rolls_shape, rolls_offset = _npy_header(rolls_file, "|u1", 2, bad)
        if rolls_shape[1] != N_KEYS:
            raise bad(f"{split}_rolls.npy is of shape {rolls_shape}, not (frames, {N_KEYS})")
        try:
            lengths = np.fromfile(lengths_file, dtype="<i8", offset=lengths_offset).astype(np.int64)
        except (OSError, ValueError) as e:
            raise bad(f"{split}_lengths.npy cannot be read ({e})") from e
        n_frames = rolls_shape[0]
        if len(lengths) != lengths_shape[0] or (lengths < 0).any() or lengths.sum() != n_frames:
            raise bad(f"{split}_lengths does not add up to the {n_frames} frames of {split}_rolls")
        h.update(split.encode() + b"\0")
        h.update(lengths.tobytes())
        _check_rolls(rolls_file, rolls_offset, n_frames, h, split, bad)
        if n_frames:
            try:
                with open(rolls_file, "rb") as f:
                    mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as e:
                raise bad(f"{split}_rolls.npy cannot be mapped ({e.strerror or e})") from e
            rolls = np.frombuffer(mapping, np.uint8, count=n_frames * N_KEYS, offset=rolls_offset).reshape(-1, N_KEYS)
        else:
            mapping, rolls = None, np.zeros((0, N_KEYS), np.uint8)
        on_disk[split] = FrameTable(rolls, lengths, mapping)
        splits[split] = np.split(rolls, np.cumsum(lengths)[:-1]) if len(lengths) else []
    if h.hexdigest() != stored:
        raise bad("its rolls do not match the content_sha256 of its meta.json (damaged or altered)")
    return PreparedData(splits, meta, on_disk)


def _npy_header(file: Path, descr: str, ndim: int, bad) -> tuple[tuple[int, ...], int]:
    """The shape and data offset of an ``.npy`` file, checked: dtype ``descr``, ``ndim``
    dimensions, C order, and a file exactly as long as its header says (so a truncated or
    extended one is refused before anything maps it)."""
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise bad(f"it lacks {file.name}") from None
    except (OSError, ValueError) as e:
        raise bad(f"{file.name} is not a NumPy .npy file ({str(e).splitlines()[0].rstrip('.') if str(e) else e})") from e
    if dtype != np.dtype(descr) or len(shape) != ndim or fortran:
        raise bad(f"{file.name} is {dtype} {shape}, not {np.dtype(descr)} of {ndim} dimension{'s' if ndim > 1 else ''}")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise bad(f"{file.name} is {size} bytes where its header says {expected} (truncated or damaged)")
    return shape, offset


def _check_rolls(file: Path, offset: int, n_frames: int, h, split: str, bad) -> None:
    """Read ``n_frames`` rows of rolls from ``file`` in blocks: each value 0 or 1, each
    block into the digest ``h``."""
    buffer = np.empty(_BLOCK_FRAMES * N_KEYS, np.uint8)
    try:
        with open(file, "rb") as f:
            f.seek(offset)
            left = n_frames * N_KEYS
            while left:
                view = memoryview(buffer)[: min(left, len(buffer))]
                got = f.readinto(view)
                if not got:
                    raise bad(f"{split}_rolls.npy ends early")
                block = buffer[:got]
                if block.max() > 1:
                    raise bad(f"{split}_rolls holds values other than 0 and 1")
                h.update(block)
                left -= got
    except OSError as e:
        raise bad(f"{split}_rolls.npy cannot be read ({e.strerror or e})") from e


def _summary(splits: dict[str, list[np.ndarray]]) -> dict[str, dict[str, int]]:
    return {
        split: {"sequences": len(splits.get(split, [])), "frames": int(sum(len(s) for s in splits.get(split, [])))}
        for split in SPLITS
    }


def load_sequence(
    path: str | os.PathLike, split: str | None = None, index: int | None = None
) -> tuple[np.ndarray, str, int, dict[str, Any]]:
    """One sequence of a prepared ``.npz`` or ``.rnnrbm`` folder: the roll, its split and index, and the data's metadata.

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
    if not sequences:
        others = [f"{s} {len(splits[s])}" for s in splits if splits[s]]
        if not others:
            raise RnnrbmError(f"{path} holds no sequences.")
        raise RnnrbmUsageError(f"{path} has no {split} sequences (it has {', '.join(others)}); choose another --split.")
    if index is None:
        index = 0
    if not 0 <= index < len(sequences):
        raise RnnrbmUsageError(f"{path} has {len(sequences)} {split} sequences; --index must be 0..{len(sequences) - 1}, not {index}.")
    return np.asarray(sequences[index]), split, index, dict(prepared.meta)
