"""Atomic file writes: a reader never sees a half-written file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder as ``path``; on success move it into place.

    On any exception (KeyboardInterrupt included) the temporary file is removed and
    ``path`` is left exactly as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file 0600; give it the mode an ordinary open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def staged_paths(paths: list[Path], *, replace: bool) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of ``paths`` to write; on success move each into
    place, in the order given, and remove the temporaries in any case.

    With ``replace`` a move replaces what is there (os.replace). Without it a move only
    creates: os.link never replaces, so of two writers racing for the same names the later
    one gets FileExistsError (raised), having removed what it had already moved into place,
    and the earlier one's files stay whole. (Where the file system has no hard links, an
    O_EXCL create claims the name first.)
    """
    paths = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            os.close(fd)
            tmps.append(Path(tmp))
        yield tmps
        placed: list[Path] = []
        try:
            for tmp, path in zip(tmps, paths):
                if replace:
                    os.replace(tmp, path)
                else:
                    _create_from(tmp, path)
                placed.append(path)
        except BaseException:
            if not replace:
                for path in placed:  # ours: nobody else can have replaced a file link created
                    with contextlib.suppress(OSError):
                        path.unlink()
            raise
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _create_from(tmp: Path, path: Path) -> None:
    """Give the written file ``tmp`` the name ``path`` only if no file has it (FileExistsError)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (e.g. FAT, some network file systems): claim the name first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.replace(tmp, path)
