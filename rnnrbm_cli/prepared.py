"""The prepared data file: train/valid/test piano-rolls in one ``.npz``, and its reader.

The file (``np.load(path, allow_pickle=False)`` reads it) holds, for each split s in train,
valid, test, ``s_rolls`` (uint8, shape (total frames, 88), row-major: the split's sequences
one after another) and ``s_lengths`` (int64, shape (n sequences,)), and ``meta``, a 0-d
unicode array holding a JSON object that says where the data came from and how it was
gridded (see ``datasets.prepare``), with ``content_sha256``, the digest of the rolls.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnrbm_cli._io import atomic_open
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.pianoroll import N_KEYS
from rnnrbm_cli.readers import SPLITS

FORMAT = 1  # version of the prepared .npz layout; load_prepared refuses any other


@dataclass
class PreparedData:
    """The content of a prepared ``.npz``."""

    splits: dict[str, list[np.ndarray]]  # split -> sequences, each (T, 88) uint8
    meta: dict  # provenance and grid, as written by prepare

    def summary(self) -> dict[str, dict[str, int]]:
        """``{"train": {"sequences": N, "frames": N}, ...}``."""
        return _summary(self.splits)


def write_prepared(path: str | os.PathLike, splits: dict[str, list[np.ndarray]], meta: dict) -> Path:
    """Write splits (split -> sequences of (T, 88) 0/1 rolls) and meta to ``path`` atomically.

    The meta written is ``meta`` with ``content_sha256`` set to the digest of these rolls.
    """
    return _write_prepared(path, splits, meta)[0]


def _write_prepared(path: str | os.PathLike, splits: dict[str, list[np.ndarray]], meta: dict) -> tuple[Path, dict]:
    """write_prepared, returning the path and the meta as written."""
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


def load_prepared(path: str | os.PathLike) -> PreparedData:
    """Read a prepared ``.npz``; RnnrbmError in one sentence if it is not one.

    ``meta["content_sha256"]`` is always the digest of the rolls as read (computed here,
    so that files written before it existed have one too, and a stored one cannot lie).
    """
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
    meta["content_sha256"] = content_sha256(arrays)
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
