"""Shared fixtures.

== registry fixtures: the real dataset mirror, and throwaway HTTP servers ==================
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest


# Read once, before any test's monkeypatch removes it from the environment.
_MIRROR_ENV = os.environ.get("RNNRBM_MIRROR")

# Tests never write to the user's cache (~/.cache/rnnrbm): without RNNRBM_CACHE_DIR, the whole
# session shares a cache of its own, removed at exit.
if not os.environ.get("RNNRBM_CACHE_DIR"):
    import atexit as _atexit
    import shutil as _shutil
    import tempfile as _tempfile

    _SESSION_CACHE = _tempfile.mkdtemp(prefix="rnnrbm-test-cache-")
    os.environ["RNNRBM_CACHE_DIR"] = _SESSION_CACHE
    _atexit.register(_shutil.rmtree, _SESSION_CACHE, True)
_BESIDE_THE_CHECKOUT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def find_mirror() -> tuple[Path | None, str]:
    """The local folder of real dataset files the tests read, found as the tool finds its
    mirror: ``$RNNRBM_MIRROR`` when it is a folder, else ``../shared/datasets`` beside the
    checkout. Returns the folder (None if there is none) and, if none, why."""
    if _MIRROR_ENV and "://" not in _MIRROR_ENV:
        path = Path(_MIRROR_ENV).expanduser()
        if path.is_dir():
            return path, ""
        return None, f"RNNRBM_MIRROR={_MIRROR_ENV} is not a folder"
    if _BESIDE_THE_CHECKOUT.is_dir():
        return _BESIDE_THE_CHECKOUT, ""
    said = f"RNNRBM_MIRROR={_MIRROR_ENV} is a URL, not a folder, and " if _MIRROR_ENV else "RNNRBM_MIRROR is not set and "
    return None, f"{said}{_BESIDE_THE_CHECKOUT} does not exist"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The read-only mirror of the real dataset files (see ``find_mirror``).

    Tests that use it read the real Nottingham and JSB Chorales files; they skip, saying
    why, when there is no such folder, as in a fresh clone without the data.
    """
    path, why = find_mirror()
    if path is None:
        pytest.skip(
            f"needs the real dataset files: {why}; set RNNRBM_MIRROR to a folder holding "
            "Nottingham.mat, Nottingham.zip, JSB_Chorales.mat and 'JSB Chorales.pickle' (see the README)"
        )
    return path


@dataclass
class FileServer:
    """A static HTTP server on 127.0.0.1 serving the files of ``root``."""

    root: Path
    url: str  # base URL, without a trailing slash
    requests: list[str] = field(default_factory=list)  # request paths, in arrival order
    # File names (relative to root, unquoted) answered with the full Content-Length but
    # only the first half of the bytes, then a closed connection: a download cut off.
    truncate: set[str] = field(default_factory=set)
    # File names answered with the full Content-Length and then one byte every ``trickle_s``
    # seconds: a server that stalls without ever going silent long enough to time out.
    trickle: set[str] = field(default_factory=set)
    trickle_s: float = 0.2


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        served: FileServer = self.server.served  # type: ignore[attr-defined]
        served.requests.append(self.path)
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path.lstrip("/"))
        if name in served.truncate:
            data = (served.root / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if name in served.trickle:
            data = (served.root / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            deadline = time.monotonic() + 60  # never outlive a test by much, whoever gives up
            try:
                for i in range(len(data)):
                    if time.monotonic() > deadline:
                        break
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(served.trickle_s)
            except OSError:  # the client gave up: what it should do
                pass
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # keep test output clean


@pytest.fixture
def http_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], FileServer]]:
    """A factory: ``http_server(folder)`` starts a server for ``folder`` on a free port.

    Every server started is shut down when the test ends.
    """
    # A proxy from the environment would swallow requests to 127.0.0.1.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    running: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    def start(root: Path) -> FileServer:
        handler = functools.partial(_Handler, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        host, port = server.server_address[:2]
        served = FileServer(root=Path(root), url=f"http://{host}:{port}")
        server.served = served  # type: ignore[attr-defined]
        # A short poll interval makes shutdown() quick at the end of each test.
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        running.append((server, thread))
        return served

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def mirror_server(http_server: Callable[[Path], FileServer], shared_datasets: Path) -> FileServer:
    """An HTTP server serving the real dataset mirror."""
    return http_server(shared_datasets)


# == end of registry fixtures ===============================================================


# == shared helpers: the CLI, clean failures, PNG sizes, a toy dataset ======================

import json as _json  # noqa: E402
import struct as _struct  # noqa: E402

import numpy as _np  # noqa: E402
from click.testing import CliRunner as _CliRunner, Result as _Result  # noqa: E402


def run(*args) -> _Result:
    """``rnnrbm ARGS...`` through click's CliRunner (stdout and stderr apart)."""
    from rnnrbm_cli.cli import cli

    return _CliRunner().invoke(cli, [str(a) for a in args], prog_name="rnnrbm")


def one_sentence_error(result: _Result, code: int = 1) -> str:
    """Assert a clean failure: the exit code, no traceback, one line on stderr; return it."""
    assert result.exit_code == code, (result.output, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in result.stderr
    return lines[0]


def png_size(path: Path) -> tuple[int, int]:
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return _struct.unpack(">II", head[16:24])


def midi_bytes(*notes: tuple[int, float, float]) -> bytes:
    """A small valid MIDI file at 120 bpm: one piano playing (pitch, start s, end s)."""
    import io

    import pretty_midi

    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(90, p, s, e) for p, s, e in notes]
    midi.instruments.append(piano)
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


# Three-chord progressions (C, F, G, Am), each chord held for two frames.
CHORDS = [[48, 52, 55], [53, 57, 60], [55, 59, 62], [57, 60, 64]]


def chord_sequence(rng: _np.random.Generator, length: int) -> _np.ndarray:
    roll = _np.zeros((length, 88), _np.uint8)
    start = rng.integers(len(CHORDS))
    for t in range(length):
        for pitch in CHORDS[(start + t // 2) % len(CHORDS)]:
            roll[t, pitch - 21] = 1
    return roll


def write_npz(path: Path, splits: dict, meta: dict) -> Path:
    """A prepared-data file in the layout datasets.py writes (checked by load_prepared)."""
    arrays = {}
    for name, seqs in splits.items():
        arrays[f"{name}_rolls"] = _np.concatenate(seqs).astype(_np.uint8)
        arrays[f"{name}_lengths"] = _np.array([len(s) for s in seqs], _np.int64)
    full_meta = {"format": 1, "dataset": "toy", "source_file": None, "source_sha256": None, "source_kind": "rolls",
                 "grid": "seconds", "dt": 0.25, "beat_division": None, "transpose": "none", "skipped_files": [],
                 "dropped_notes": 0, "created_by": "tests"}
    full_meta.update(meta)
    _np.savez(path, meta=_np.array(_json.dumps(full_meta)), **arrays)
    return path


def write_toy_npz(path: Path) -> Path:
    """Chord progressions: 24 training sequences of 10-40 frames, 4 valid, 4 test."""
    rng = _np.random.default_rng(0)
    splits = {
        "train": [chord_sequence(rng, int(n)) for n in rng.integers(10, 40, size=24)],
        "valid": [chord_sequence(rng, 24) for _ in range(4)],
        "test": [chord_sequence(rng, 24) for _ in range(4)],
    }
    return write_npz(path, splits, {})


@pytest.fixture
def toy_npz(tmp_path) -> Path:
    """Chord progressions (``write_toy_npz``) in the test's own folder."""
    return write_toy_npz(tmp_path / "toy.npz")


def small_settings(toy_npz: Path, run_dir: Path, **kw):
    """Settings of a small, fast run on the toy data."""
    from rnnrbm_cli.config import resolve_settings

    values = {"data": str(toy_npz), "n_hidden": 16, "n_recurrent": 8, "k": 1, "lr": 0.05, "chunk": 12,
              "batch": 1, "epochs": 4, "seed": 3, "run_dir": str(run_dir), "device": "cpu", "eval_every": 0}
    values.update(kw)
    return resolve_settings(values)


def make_trainer(toy_npz, run_dir, callbacks=None, stop=None, **kw):
    """A Trainer of a small run on the toy data, its run directory started."""
    import torch

    from rnnrbm_cli.datasets import load_prepared
    from rnnrbm_cli.train import Trainer

    trainer = Trainer(small_settings(toy_npz, run_dir, **kw), torch.device("cpu"), load_prepared(toy_npz), toy_npz,
                      callbacks, stop)
    trainer.start_run_dir("test")
    return trainer


def run_measured(tmp_path: Path, *args: str, address_space: int | None = None, timeout: float = 120):
    """``rnnrbm ARGS`` in a child process (its address space capped at ``address_space``
    bytes if given: a regression dies of MemoryError, not the machine); returns (the
    CompletedProcess, the child's peak RSS in MB)."""
    import resource
    import subprocess
    import sys

    peak_file = tmp_path / "peak-rss-kb"
    # The peak of this process's own memory: VmHWM (ru_maxrss also counts the pytest parent's
    # resident size at the fork, which grows with the tests run before).
    child = (
        "import resource, sys\n"
        "from rnnrbm_cli.cli import cli\n"
        "def peak_kb():\n"
        "    try:\n"
        "        for line in open('/proc/self/status'):\n"
        "            if line.startswith('VmHWM:'):\n"
        "                return int(line.split()[1])\n"
        "    except OSError:\n"
        "        pass\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    cli(sys.argv[1:], prog_name='rnnrbm')\n"
        "finally:\n"
        f"    open({str(peak_file)!r}, 'w').write(str(peak_kb()))\n"
    )

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), RNNRBM_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "-c", child, *args],
        env=env, preexec_fn=cap if address_space is not None else None, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    return result, int(peak_file.read_text()) / 1024  # KiB
