"""Shared fixtures.

== registry fixtures: the real dataset mirror, and throwaway HTTP servers ==================
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The read-only mirror of the real dataset files: ../shared/datasets, or $RNNRBM_TEST_MIRROR.

    Tests that use it skip when it is absent, as in a fresh clone.
    """
    env = os.environ.get("RNNRBM_TEST_MIRROR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    if not path.is_dir():
        pytest.skip(
            f"the real dataset mirror is not at {path}; set RNNRBM_TEST_MIRROR to a folder "
            "holding the files listed in its SHA256SUMS"
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
