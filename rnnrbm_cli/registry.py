"""The dataset registry (``datasets.toml``) as typed records; ``fetch`` downloads and verifies.

``datasets.toml`` declares each dataset and its files (name, form, size, sha256, URLs); this
module is the one place that reads it. ``fetch`` tries a mirror first (a local folder or a
URL base), then each registry URL in order, and accepts a file only when its size and sha256
match the registry. Files are written to a temporary file in the cache folder and moved into
place only once verified, so the cache never holds a partial or unverified file.

    >>> from rnnrbm_cli.registry import fetch
    >>> [r.path.name for r in fetch("nottingham", forms=["rolls"])]  # doctest: +SKIP
    ['Nottingham.mat']
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib.resources
import os
import re
import socket
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterable

from tqdm import tqdm

from rnnrbm_cli import __version__, choices
from rnnrbm_cli._io import atomic_open
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError

#: What a file holds: piano-rolls in a MATLAB .mat, the authors' original pickle, or a
#: .zip of source MIDI files. ``datasets.py`` knows how to read each.
FORMS = choices.FORMS

#: Seconds a connection attempt or a single read may stall before the source is abandoned.
TIMEOUT_S = 30.0

#: A download that moves fewer than STALL_BYTES in STALL_SECONDS is abandoned as stalled, and
#: the next source tried. The socket timeout bounds one read only: a server that sends a byte
#: every few seconds never trips it, and would keep a fetch waiting for ever.
STALL_BYTES = 1024
STALL_SECONDS = 30.0

#: Off a terminal (a log, CI, nohup), where there is no progress bar, a download says how far
#: it has got at most this often, in seconds.
PROGRESS_SECONDS = 10.0

# Bytes read per step while downloading and hashing: small enough for a smooth progress bar.
_CHUNK = 64 * 1024

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
# Dataset names become cache folder names and CLI arguments: keep them plain.
_DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class DataFile:
    """One downloadable file of a dataset."""

    name: str  # file name in the cache and on a mirror, e.g. "Nottingham.mat"
    form: str  # one of FORMS
    size: int  # bytes
    sha256: str  # 64 lowercase hex digits
    urls: tuple[str, ...]  # public locations, tried in this order after the mirror


@dataclass(frozen=True)
class Dataset:
    """A dataset of the registry and the files it can be built from."""

    name: str  # registry key, e.g. "nottingham"; also the cache sub-folder
    title: str  # human name, e.g. "Nottingham"
    description: str
    grid: str  # time grid of the piano-rolls, e.g. "eighth note, transposed to C major / C minor"
    beat_division: int  # roll frames per beat (quarter note): 2 = eighth notes
    terms: str  # terms of use, as the authors state them
    citation: str  # the paper to cite
    files: tuple[DataFile, ...]

    def file(self, form: str) -> DataFile | None:
        """The first file of the given form (see FORMS), or None if the dataset has none."""
        return next((f for f in self.files if f.form == form), None)

    @property
    def default_form(self) -> str:
        """The form prepare reads by default: rolls when the dataset has them, the gridded,
        transposed benchmark data; else the first of FORMS it has."""
        return next(form for form in FORMS if self.file(form) is not None)


@dataclass(frozen=True)
class FetchResult:
    """Where one fetched file is and where it came from."""

    name: str  # file name, as in the registry
    path: Path  # the verified file in the cache
    sha256: str  # its sha256, equal to the registry's
    source: str  # mirror path or URL it was copied from, or "cache"
    cached: bool  # True if it was already in the cache and nothing was downloaded


class FetchError(RnnrbmError):
    """Some files of a dataset could not be fetched from any source.

    ``results`` holds the files that were fetched; the message names every file that was
    not, each source tried for it and why that source failed.
    """

    # What a user without a network (or behind a firewall) can do, said wherever a fetch fails:
    # train, prepare and evaluate fetch too, not only `rnnrbm fetch`.
    HINT = ("Without a network, point --mirror (or RNNRBM_MIRROR) at a folder or URL that holds the files "
            "(README, Without internet).")

    def __init__(self, failures: list[str], results: list[FetchResult]):
        super().__init__("\n".join(failures) + " " + self.HINT)
        self.failures = failures
        self.results = results


# -- the registry ------------------------------------------------------------------------


def registry_path() -> Path:
    """Where ``datasets.toml`` is: inside the package when installed, else the repository root."""
    # A wheel carries a copy inside the package (pyproject force-include); an editable
    # install or a checkout has only the top-level file.
    packaged = importlib.resources.files(__package__) / "datasets.toml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "datasets.toml"


def load_registry(path: str | os.PathLike | None = None) -> dict[str, Dataset]:
    """Read and validate the registry; map dataset name -> Dataset, in file order.

    Raises RnnrbmError naming the offending entry if the file is unreadable, not TOML, or
    has a missing, unknown or wrong-typed key.
    """
    path = Path(path) if path is not None else registry_path()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise RnnrbmError(f"cannot read the dataset registry {path}: {e.strerror or e}.") from e
    except tomllib.TOMLDecodeError as e:
        raise RnnrbmError(f"{path}: not valid TOML ({e}).") from e
    return _parse_registry(doc, str(path))


def get_dataset(name: str, path: str | os.PathLike | None = None) -> Dataset:
    """The registry entry called ``name``; RnnrbmUsageError listing the known names if there is none.

    A name that is not in the registry is a usage error (exit 2) wherever it is given.
    """
    datasets = load_registry(path)
    if name not in datasets:
        raise RnnrbmUsageError(
            f"unknown dataset {name!r}; known datasets: {', '.join(datasets)}."
        )
    return datasets[name]


def _parse_registry(doc: dict[str, Any], where: str) -> dict[str, Dataset]:
    _check_keys(doc, required={"datasets"}, optional={"defaults"}, where=where)
    defaults = doc.get("defaults", {})
    _check_table(defaults, f"{where}: [defaults]")
    _check_keys(defaults, required=set(), optional={"citation"}, where=f"{where}: [defaults]")
    default_citation = _get(defaults, "citation", str, f"{where}: [defaults]", default="")

    entries = doc["datasets"]
    _check_table(entries, f"{where}: 'datasets'")
    if not entries:
        raise RnnrbmError(f"{where}: 'datasets' declares no dataset.")
    return {
        name: _parse_dataset(name, entry, default_citation, where)
        for name, entry in entries.items()
    }


def _parse_dataset(name: str, entry: Any, default_citation: str, where: str) -> Dataset:
    here = f"{where}: dataset {name!r}"
    if not _DATASET_NAME.fullmatch(name):
        raise RnnrbmError(
            f"{here}: the name must be lowercase letters, digits, '.', '_' or '-'."
        )
    _check_table(entry, here)
    _check_keys(
        entry,
        required={"title", "description", "grid", "beat_division", "terms", "files"},
        optional={"citation"},
        where=here,
    )
    beat_division = _get(entry, "beat_division", int, here)
    if beat_division <= 0:
        raise RnnrbmError(f"{here}: 'beat_division' must be a positive integer.")
    raw_files = _get(entry, "files", list, here)
    if not raw_files:
        raise RnnrbmError(f"{here}: 'files' lists no file.")
    files = tuple(_parse_file(f, f"{here}, file {i}") for i, f in enumerate(raw_files, 1))
    seen: set[str] = set()
    for i, f in enumerate(files, 1):
        if f.name in seen:
            raise RnnrbmError(f"{here}, file {i}: the name {f.name!r} is used twice.")
        seen.add(f.name)
    citation = _get(entry, "citation", str, here, default=default_citation)
    if not citation:
        raise RnnrbmError(f"{here}: no 'citation', and [defaults] gives none.")
    return Dataset(
        name=name,
        title=_get(entry, "title", str, here),
        description=_get(entry, "description", str, here),
        grid=_get(entry, "grid", str, here),
        beat_division=beat_division,
        terms=_get(entry, "terms", str, here),
        citation=citation,
        files=files,
    )


def _parse_file(entry: Any, here: str) -> DataFile:
    _check_table(entry, here)
    required = {"name", "form", "size", "sha256", "urls"}
    _check_keys(entry, required=required, optional=set(), where=here)
    name = _get(entry, "name", str, here)
    # The name becomes a path inside the cache folder: it must not be able to leave it.
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise RnnrbmError(f"{here}: 'name' must be a plain file name, not {name!r}.")
    form = _get(entry, "form", str, here)
    if form not in FORMS:
        raise RnnrbmError(f"{here}: 'form' must be one of {', '.join(FORMS)}, not {form!r}.")
    size = _get(entry, "size", int, here)
    if size <= 0:
        raise RnnrbmError(f"{here}: 'size' must be a positive number of bytes.")
    sha256 = _get(entry, "sha256", str, here)
    if not _HEX64.fullmatch(sha256):
        raise RnnrbmError(f"{here}: 'sha256' must be 64 hex digits.")
    urls = _get(entry, "urls", list, here)
    if not urls:
        raise RnnrbmError(f"{here}: 'urls' must list at least one URL.")
    for url in urls:
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise RnnrbmError(f"{here}: 'urls' must hold http(s) URLs, not {url!r}.")
    return DataFile(name=name, form=form, size=size, sha256=sha256.lower(), urls=tuple(urls))


def _check_table(value: Any, here: str) -> None:
    if not isinstance(value, dict):
        raise RnnrbmError(f"{here} must be a table.")


def _check_keys(table: dict, *, required: set[str], optional: set[str], where: str) -> None:
    missing = sorted(required - table.keys())
    if missing:
        raise RnnrbmError(f"{where}: missing key {missing[0]!r}.")
    unknown = sorted(table.keys() - required - optional)
    if unknown:
        raise RnnrbmError(f"{where}: unknown key {unknown[0]!r}.")


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list"}


def _get(table: dict, key: str, kind: type, here: str, default: Any = None) -> Any:
    if key not in table:
        return default
    value = table[key]
    # bool is a subclass of int, but `size = true` is a mistake, not 1 byte.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RnnrbmError(f"{here}: {key!r} must be {_TYPE_NAMES[kind]}.")
    return value


# -- the cache ---------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$RNNRBM_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/rnnrbm``."""
    if env := os.environ.get("RNNRBM_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "rnnrbm"


def cache_path(
    datafile: DataFile, dataset: Dataset, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Where ``datafile`` lives in the cache: ``<cache_dir>/<dataset name>/<file name>``."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / dataset.name / datafile.name


def cached_file(
    datafile: DataFile, dataset: Dataset, cache_dir: str | os.PathLike | None = None
) -> Path | None:
    """The cached copy of ``datafile`` if it is there with the right size and sha256, else None.

    The file is hashed on every call (a few milliseconds per megabyte): a memo keyed on
    mtime could miss a same-size rewrite within one timestamp tick.
    """
    path = cache_path(datafile, dataset, cache_dir)
    try:
        if not path.is_file() or path.stat().st_size != datafile.size:
            return None
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None
    return path if digest == datafile.sha256 else None


# -- fetching ----------------------------------------------------------------------------


class _SourceFailed(Exception):
    """One source could not supply a verified file; the message says why, in a few words."""


def fetch(
    dataset: Dataset | str,
    *,
    forms: Iterable[str] | None = None,
    mirror: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[FetchResult]:
    """Make sure the files of ``dataset`` are in the cache, verified; return where they are.

    Parameters
    ----------
    dataset : Dataset or str
        A registry entry or its name.
    forms : iterable of str, optional
        Fetch only the files of these forms (see FORMS); default every file of the dataset.
    mirror : str or path, optional
        Tried before the registry URLs: a local folder holding ``<file name>``, or an
        http(s)/file URL base under which ``<base>/<file name>`` lives. Default
        ``$RNNRBM_MIRROR``, if set.
    cache_dir : str or path, optional
        Default ``default_cache_dir()``.
    force : bool
        Download again even if a verified copy is cached.
    progress : bool
        Show a progress bar on stderr (only when stderr is a terminal).

    Every file is tried, from every source in turn, before anything is raised. A source's
    bytes are accepted only if their size and sha256 match the registry.

    Raises
    ------
    FetchError (a RnnrbmError)
        If some files could not be fetched from any source; it carries the results of
        the files that were, and names each source tried for the others and why it failed.
    """
    if isinstance(dataset, str):
        dataset = get_dataset(dataset)
    files = list(dataset.files)
    if forms is not None:
        forms = list(forms)
        for form in forms:
            if form not in FORMS:
                raise ValueError(f"unknown form {form!r}; forms are {', '.join(FORMS)}")
        files = [f for f in files if f.form in forms]
        if not files:
            have = ", ".join(dict.fromkeys(f.form for f in dataset.files))
            raise RnnrbmError(
                f"dataset {dataset.name!r} has no file of form {' or '.join(forms)}; it has {have}."
            )
    if mirror is None:
        mirror = os.environ.get("RNNRBM_MIRROR") or None
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / dataset.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RnnrbmError(f"cannot create the cache folder {folder}: {e.strerror or e}.") from e

    results: list[FetchResult] = []
    failures: list[str] = []
    for datafile in files:
        path = cache_path(datafile, dataset, cache_dir)
        if not force and cached_file(datafile, dataset, cache_dir) is not None:
            results.append(FetchResult(datafile.name, path, datafile.sha256, "cache", True))
            continue
        reasons: list[str] = []
        sources = _sources(datafile, mirror)
        for i, source in enumerate(sources):
            try:
                _download(source, datafile, path, progress)
            except _SourceFailed as e:
                reasons.append(f"{source}: {e}")
                if _plain_lines(progress) and i + 1 < len(sources):
                    _say(f"{datafile.name}: {source} failed ({e}); trying the next source")
                continue
            results.append(FetchResult(datafile.name, path, datafile.sha256, source, False))
            break
        else:
            failures.append(f"could not fetch {datafile.name}: {'; '.join(reasons)}.")
    if failures:
        if not results:
            # Leave no trace of a dataset nothing could be fetched for; rmdir only
            # succeeds on an empty folder.
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise FetchError(failures, results)
    return results


def _sources(datafile: DataFile, mirror: str | os.PathLike | None) -> list[str]:
    """Where to look for ``datafile``, in order: the mirror, then the registry URLs."""
    sources: list[str] = []
    if mirror is not None:
        if isinstance(mirror, str) and _URL.match(mirror):
            sources.append(f"{mirror.rstrip('/')}/{urllib.parse.quote(datafile.name)}")
        else:
            sources.append(str(Path(mirror).expanduser() / datafile.name))
    sources.extend(datafile.urls)
    return sources


def _download(source: str, datafile: DataFile, dest: Path, progress: bool) -> None:
    """Copy ``source`` to ``dest`` if its bytes match ``datafile``; else raise _SourceFailed.

    The bytes go to a temporary file next to ``dest`` that replaces it only once verified;
    on any failure or interrupt the temporary file is removed and ``dest`` is untouched.
    """
    try:
        stream, reported = _open(source)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise _SourceFailed(_describe(e)) from e
    with stream:
        if reported is not None and reported != datafile.size:
            # Refuse early: no point downloading bytes that cannot be the right file.
            raise _SourceFailed(f"size mismatch ({reported} bytes, expected {datafile.size})")
        try:
            with atomic_open(dest, "wb") as out:
                digest, got = _copy(stream, out, datafile, progress, source)
                if got < datafile.size:
                    raise _SourceFailed(f"incomplete: got {got} of {datafile.size} bytes")
                if got > datafile.size:
                    raise _SourceFailed(f"size mismatch (over the expected {datafile.size} bytes)")
                if digest != datafile.sha256:
                    raise _SourceFailed(
                        f"sha256 mismatch (got {digest[:12]}…, "
                        f"expected {datafile.sha256[:12]}…)"
                    )
        except (http.client.HTTPException, OSError) as e:
            raise _SourceFailed(_describe(e)) from e


def _open(source: str) -> tuple[IO[bytes], int | None]:
    """Open a mirror path or URL for reading; return the stream and its announced size in bytes."""
    if not _URL.match(source):
        path = Path(source)
        if not path.is_file():
            raise _SourceFailed("not found")
        return open(path, "rb"), path.stat().st_size
    request = urllib.request.Request(source, headers={"User-Agent": f"rnnrbm/{__version__}"})
    response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    length = response.headers.get("Content-Length")
    return response, int(length) if length and length.isdigit() else None


def _plain_lines(progress: bool) -> bool:
    """Whether progress is said in plain lines: asked for, and stderr is no terminal (where tqdm draws a bar)."""
    try:
        return progress and not sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return progress


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _copy(stream: IO[bytes], out: IO[bytes], datafile: DataFile, progress: bool,
          source: str = "") -> tuple[str, int]:
    """Stream into ``out`` while hashing; stop one byte past the expected size.

    Raises _SourceFailed when fewer than STALL_BYTES arrive in STALL_SECONDS. Off a terminal
    it says, at most every PROGRESS_SECONDS, how far it has got.
    Returns the sha256 hex digest and the number of bytes copied.
    """
    sha = hashlib.sha256()
    got = 0
    # read1 returns what has arrived (at least a byte) instead of waiting for a whole chunk,
    # so that a trickle is seen as one; a plain file or a test double may only have read.
    read = getattr(stream, "read1", None) or stream.read
    lines = _plain_lines(progress)
    started = window_start = said = time.monotonic()
    window_bytes = 0
    if lines:
        _say(f"{datafile.name}: downloading {_mib(datafile.size)}" + (f" from {source}" if source else ""))
    with tqdm(
        total=datafile.size,
        desc=datafile.name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        disable=None if progress else True,  # None: only when stderr is a terminal
    ) as bar:
        while got <= datafile.size:
            chunk = read(min(_CHUNK, datafile.size + 1 - got))
            if not chunk:
                break
            sha.update(chunk)
            out.write(chunk)
            got += len(chunk)
            bar.update(len(chunk))
            now = time.monotonic()
            window_bytes += len(chunk)
            if now - window_start >= STALL_SECONDS:
                if window_bytes < STALL_BYTES:
                    raise _SourceFailed(f"stalled: {window_bytes} bytes in the last {STALL_SECONDS:g} s")
                window_start, window_bytes = now, 0
            if lines and now - said >= PROGRESS_SECONDS and got < datafile.size:
                said = now
                rate = got / (now - started) if now > started else 0.0
                _say(f"{datafile.name}: {_mib(got)} of {_mib(datafile.size)} ({got / datafile.size:.0%}), "
                     f"{rate / 1024:,.0f} KiB/s")
    return sha.hexdigest(), got


def _describe(e: BaseException) -> str:
    """A few words on why a source failed, for the one-line error message."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code}"
    if isinstance(e, urllib.error.URLError):
        reason = e.reason
        if isinstance(reason, FileNotFoundError):
            return "not found"
        if isinstance(reason, socket.gaierror):
            return "cannot resolve host (no network?)"
        if isinstance(reason, BaseException):
            return _describe(reason)
        return str(reason)
    if isinstance(e, TimeoutError):
        return f"timed out after {TIMEOUT_S:g} s"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, http.client.IncompleteRead):
        return "incomplete: the connection closed before the end of the file"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return str(e) or type(e).__name__
