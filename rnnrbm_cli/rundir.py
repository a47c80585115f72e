"""A run directory: who owns it, and the files that describe a run.

    config.json      the run's settings by section (``rnnrbm train --config`` takes it back)
    command.txt      the command line that started the run, and each resume
    metrics.jsonl    one JSON object per completed epoch
    checkpoint.pt    the latest state (written by train.py)
    best.pt          the state with the best validation criterion so far
    .lock            held (an OS file lock) by the one process training in the directory

A run directory belongs to one process at a time: ``RunLock`` takes an exclusive
``flock`` on ``.lock`` for the life of the run; the OS releases it on any exit, ``kill -9``
included, so a stale lock cannot outlive its process. A second process is refused with one
sentence naming the holder. A new default directory is made with an exclusive ``mkdir``,
so two runs started in the same second never share one.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnrbm_cli._io import atomic_open
from rnnrbm_cli.errors import RnnrbmError

CONFIG_FILE = "config.json"
COMMAND_FILE = "command.txt"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"


# -- creating and owning ------------------------------------------------------------------


def new_run_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new, empty directory ``parent/name-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... when taken)."""
    parent = Path(parent)
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = parent / (stem if n == 1 else f"{stem}-{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise RnnrbmError(f"cannot create a run directory in {parent}: {e.strerror or e}.") from None
    raise RnnrbmError(f"{parent} has no free run directory name for {stem}; give one with --run-dir.")


class RunLock:
    """An exclusive lock on a run directory, held until ``release()`` or the process ends."""

    def __init__(self, run_dir: str | os.PathLike, command: str = "") -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RnnrbmError(f"cannot use {self.run_dir} as a run directory: {e.strerror or e}.") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RnnrbmError(
                f"{self.run_dir} is in use by another training process ({holder}); wait for it to end, "
                "or choose another --run-dir."
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": command}
        os.write(fd, (json.dumps(info) + "\n").encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        words = f"pid {info['pid']} on {info['host']} since {info['since']}"
        return words + (f": {info['command']}" if info.get("command") else "")
    except (OSError, ValueError, KeyError, TypeError):
        return "its process id could not be read"


# -- the files ------------------------------------------------------------------------------


def write_config(run_dir: str | os.PathLike, sections: dict[str, Any]) -> None:
    """config.json: the settings by section, written atomically."""
    _write(Path(run_dir) / CONFIG_FILE, json.dumps(sections, indent=2) + "\n")


def append_command(run_dir: str | os.PathLike, command: str) -> None:
    path = Path(run_dir) / COMMAND_FILE
    try:
        with open(path, "a") as f:
            f.write(command.rstrip("\n") + "\n")
    except OSError as e:
        raise RnnrbmError(f"cannot write {path}: {e.strerror or e}.") from None


def append_metrics(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    """One epoch's metrics as one line of metrics.jsonl."""
    path = Path(run_dir) / METRICS_FILE
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise RnnrbmError(f"cannot write {path}: {e.strerror or e}.") from None


def trim_metrics(run_dir: str | os.PathLike, last_epoch: int) -> None:
    """Forget lines of epochs after ``last_epoch`` (written after the checkpoint a run resumes from)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        record = _metrics_record(line)
        if record is not None and record["epoch"] <= last_epoch:
            kept.append(line)
    _write(path, "".join(line + "\n" for line in kept))


def _write(path: Path, text: str) -> None:
    try:
        with atomic_open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise RnnrbmError(f"cannot write {path}: {e.strerror or e}.") from None


# -- reading metrics --------------------------------------------------------------------------


@dataclass
class Metrics:
    """A run's ``metrics.jsonl``, one record per epoch.

    epochs : the records, sorted by epoch; when an epoch appears twice (a resumed run)
        the later line wins.
    skipped : 1-based numbers of lines that are not a JSON object with an integer
        "epoch", other than an unfinished last line.
    partial_last_line : the file ends in an unfinished line (a run writing it right now).
    """

    epochs: list[dict[str, Any]]
    skipped: list[int] = field(default_factory=list)
    partial_last_line: bool = False

    def column(self, key: str) -> np.ndarray:
        """One metric per epoch as floats; missing, null and non-finite values are NaN."""
        return np.array([_finite(r.get(key)) for r in self.epochs], dtype=float)

    def has(self, key: str) -> bool:
        return bool(np.isfinite(self.column(key)).any())


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value) if math.isfinite(value) else math.nan


def read_metrics(path: str | os.PathLike) -> Metrics:
    """Read a run directory's ``metrics.jsonl`` (or the file itself), tolerating a run in progress.

    An unfinished last line (no newline yet, or not yet valid JSON) is left out quietly;
    other unreadable lines are left out and counted in ``skipped``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise RnnrbmError(f"{path} does not exist; is {path.parent} a training run directory?") from None
    except OSError as e:
        raise RnnrbmError(f"cannot read {path} ({e.strerror or e}).") from None
    lines = text.split("\n")
    by_epoch: dict[int, dict[str, Any]] = {}
    skipped: list[int] = []
    partial = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _metrics_record(line)
        if record is None:
            if number == len(lines):  # no newline after it: still being written
                partial = True
            else:
                skipped.append(number)
            continue
        by_epoch[record["epoch"]] = record
    return Metrics([by_epoch[e] for e in sorted(by_epoch)], skipped, partial)


def _metrics_record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    epoch = record.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        return None
    return record


