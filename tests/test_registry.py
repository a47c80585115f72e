"""The registry (datasets.toml -> records), the cache, and `rnnrbm fetch` / `rnnrbm datasets`.

Downloads go to HTTP servers on 127.0.0.1 (see conftest.py) or to local folders; no test
reaches the internet: every registry a failing test uses points only at local servers.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from rnnrbm_cli import cli as cli_module
from rnnrbm_cli import registry
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError

from conftest import run

REPO = Path(__file__).resolve().parents[1]

# dataset -> file -> (form, bytes, sha256), copied by hand from ../shared/datasets/SOURCES.md.
EXPECTED = {
    "nottingham": {
        "Nottingham.mat": ("rolls", 371688, "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea"),
        "Nottingham.zip": ("midi", 692283, "fd4eb21b656002790cb8429c3482518876c48881ce58270f5296fe5aad50075f"),
    },
    "jsb-chorales": {
        "JSB Chorales.pickle": ("pickle", 2051809, "69dc4c3e52800959ac0ab3b82aa3e5f55285ce64f1705acb3e3a8ef77a5c051c"),
        "JSB_Chorales.mat": ("rolls", 96095, "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4"),
        "JSB Chorales.zip": ("midi", 215242, "69924294546a71620c06374085cd6b0300665ea215e2f854f65a11929f1e723c"),
    },
    "musedata": {
        "MuseData.mat": ("rolls", 947219, "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff"),
    },
    "piano-midi.de": {
        "Piano_midi.mat": ("rolls", 223732, "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34"),
        "Piano-midi.de.pickle": ("pickle", 7413484, "273d593b13d9a348410d261c0223d47523e2a9b41702137aaab5922242518296"),
        "Piano-midi.de.zip": ("midi", 973498, "631b148fd1022cb73d28684382446f1a36e1e7f0d131ed81121a999c9f23fed1"),
    },
}
NOTTINGHAM_MAT_SHA = EXPECTED["nottingham"]["Nottingham.mat"][2]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> list[Path]:
    """Every file (hidden .part files included) below ``folder``."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder that the library and the CLI use by default."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("RNNRBM_CACHE_DIR", str(folder))
    monkeypatch.delenv("RNNRBM_MIRROR", raising=False)
    return folder


def use_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, urls: dict[str, list[str]]) -> Path:
    """Point the library and CLI at a registry holding only the real files named in ``urls``.

    Each file keeps its real size and sha256 but gets the given URLs instead of the public
    ones, so that a test whose sources all fail never falls through to the internet.
    """
    real = registry.load_registry(REPO / "datasets.toml")
    lines = ['[defaults]\ncitation = "A paper."\n']
    for d in real.values():
        chosen = [f for f in d.files if f.name in urls]
        if not chosen:
            continue
        lines.append(
            f'[datasets."{d.name}"]\ntitle = {json.dumps(d.title)}\ndescription = "-"\n'
            f'grid = "-"\nbeat_division = {d.beat_division}\nterms = "-"\n'
        )
        for f in chosen:
            lines.append(
                f'[[datasets."{d.name}".files]]\nname = {json.dumps(f.name)}\nform = "{f.form}"\n'
                f'size = {f.size}\nsha256 = "{f.sha256}"\nurls = {json.dumps(urls[f.name])}\n'
            )
    path = tmp_path / "registry.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    monkeypatch.setattr(registry, "registry_path", lambda: path)
    return path


@pytest.fixture
def tampered(tmp_path: Path, shared_datasets: Path) -> Path:
    """A folder holding Nottingham.mat with one byte changed: right size, wrong sha256."""
    folder = tmp_path / "tampered"
    folder.mkdir()
    data = bytearray((shared_datasets / "Nottingham.mat").read_bytes())
    data[1000] ^= 0xFF
    (folder / "Nottingham.mat").write_bytes(bytes(data))
    return folder


# -- the registry ------------------------------------------------------------------------


def test_registry_has_the_four_datasets_with_every_file_and_checksum():
    datasets = registry.load_registry()
    assert list(datasets) == list(EXPECTED)
    for name, dataset in datasets.items():
        assert dataset.name == name
        assert {f.name: (f.form, f.size, f.sha256) for f in dataset.files} == EXPECTED[name]
        assert "Boulanger-Lewandowski" in dataset.citation
        for f in dataset.files:
            assert f.urls and all(u.startswith(("https://", "http://")) for u in f.urls)
        assert dataset.file("rolls") is not None and dataset.file("rolls").name.endswith(".mat")
    assert datasets["nottingham"].file("midi").name == "Nottingham.zip"
    assert datasets["musedata"].file("pickle") is None
    # Frames per quarter note: eighth-note grid for Nottingham, quarter notes for JSB.
    assert datasets["nottingham"].beat_division == 2
    assert datasets["jsb-chorales"].beat_division == 1


def test_registry_agrees_with_the_mirror_and_sources_md(shared_datasets: Path):
    datasets = registry.load_registry()
    by_name = {f.name: (d.name, f) for d in datasets.values() for f in d.files}

    sums = (shared_datasets / "SHA256SUMS").read_text().splitlines()
    # The list names every data file the mirror holds, no more and no fewer (the mirror grows:
    # MuseData and Piano-midi.de joined it, so no fixed count), and each is in the registry.
    listed = sorted(line.split(None, 1)[1] for line in sums)
    present = sorted(
        p.name for p in shared_datasets.iterdir() if p.name not in {"SHA256SUMS", "SOURCES.md"}
    )
    assert listed == present
    assert len(set(listed)) == len(listed) >= 4
    for line in sums:
        digest, name = line.split(None, 1)
        _, datafile = by_name[name]
        assert datafile.sha256 == digest
        # The mirror's bytes themselves, not only its list, must match the registry.
        assert (shared_datasets / name).stat().st_size == datafile.size
        assert sha256_of(shared_datasets / name) == datafile.sha256

    rows = re.findall(
        r"^\| (\S+) \| `([^`]+)` \| [^|]+ \| ([\d,]+) \| `([0-9a-f]{64})` \|",
        (shared_datasets / "SOURCES.md").read_text(),
        flags=re.M,
    )
    assert len(rows) == len(by_name) == 9
    for dataset, name, size, digest in rows:
        assert by_name[name][0] == dataset
        assert (by_name[name][1].size, by_name[name][1].sha256) == (int(size.replace(",", "")), digest)


def test_registry_is_found_in_the_checkout():
    assert registry.registry_path() == REPO / "datasets.toml"


def test_registry_inside_the_package_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # A wheel carries the registry as rnnrbm_cli/datasets.toml; it must be preferred.
    (tmp_path / "datasets.toml").write_text((REPO / "datasets.toml").read_text())
    monkeypatch.setattr(registry.importlib.resources, "files", lambda package: tmp_path)
    assert registry.registry_path() == tmp_path / "datasets.toml"
    assert set(registry.load_registry()) == set(EXPECTED)


GOOD_TOML = f"""
[defaults]
citation = "A paper."

[datasets.tiny]
title = "Tiny"
description = "Two files."
grid = "quarter note"
beat_division = 1
terms = "None stated."

[[datasets.tiny.files]]
name = "a.mat"
form = "rolls"
size = 10
sha256 = "{'A' * 64}"
urls = ["https://example.org/a.mat"]

[[datasets.tiny.files]]
name = "b.zip"
form = "midi"
size = 20
sha256 = "{'b' * 64}"
urls = ["https://example.org/b.zip"]
"""


def test_a_well_formed_registry_loads(tmp_path: Path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD_TOML)
    (tiny,) = registry.load_registry(path).values()
    assert tiny == registry.Dataset(
        name="tiny",
        title="Tiny",
        description="Two files.",
        grid="quarter note",
        beat_division=1,
        terms="None stated.",
        citation="A paper.",
        files=(
            registry.DataFile("a.mat", "rolls", 10, "a" * 64, ("https://example.org/a.mat",)),
            registry.DataFile("b.zip", "midi", 20, "b" * 64, ("https://example.org/b.zip",)),
        ),
    )


URLS_B = 'urls = ["https://example.org/b.zip"]'


@pytest.mark.parametrize(
    "old, new, message",
    [
        (f'"{"b" * 64}"', '"b0b0"', "dataset 'tiny', file 2: 'sha256' must be 64 hex digits."),
        (f'"{"b" * 64}"', f'"{"g" * 64}"', "dataset 'tiny', file 2: 'sha256' must be 64 hex digits."),
        ('form = "midi"', 'form = "mp3"', "file 2: 'form' must be one of rolls, pickle, midi"),
        ("size = 20", "size = 0", "dataset 'tiny', file 2: 'size' must be a positive number of bytes."),
        ("size = 20", "size = -5", "dataset 'tiny', file 2: 'size' must be a positive number of bytes."),
        ("size = 20", 'size = "20"', "dataset 'tiny', file 2: 'size' must be an integer."),
        ("size = 20", "size = true", "dataset 'tiny', file 2: 'size' must be an integer."),
        ("size = 20", "", "dataset 'tiny', file 2: missing key 'size'."),
        (URLS_B, "", "dataset 'tiny', file 2: missing key 'urls'."),
        (URLS_B, 'urls = "https://example.org/b.zip"', "dataset 'tiny', file 2: 'urls' must be a list."),
        (URLS_B, "urls = []", "dataset 'tiny', file 2: 'urls' must list at least one URL."),
        (URLS_B, 'urls = ["ftp://x/b.zip"]', "dataset 'tiny', file 2: 'urls' must hold http(s) URLs"),
        (URLS_B, URLS_B + '\nmd5 = "x"', "dataset 'tiny', file 2: unknown key 'md5'."),
        ('name = "b.zip"', 'name = "../b.zip"', "dataset 'tiny', file 2: 'name' must be a plain file name"),
        ('name = "b.zip"', 'name = "a.mat"', "dataset 'tiny', file 2: the name 'a.mat' is used twice."),
        ("beat_division = 1", "beat_division = 0", "dataset 'tiny': 'beat_division' must be a positive"),
        ("beat_division = 1", "", "dataset 'tiny': missing key 'beat_division'."),
        ('terms = "None stated."', 'terms = "x"\nlicence = "MIT"', "dataset 'tiny': unknown key 'licence'."),
        ("datasets.tiny", 'datasets."Tiny Set"', "dataset 'Tiny Set': the name must be lowercase"),
        ('[defaults]\ncitation = "A paper."', "", "dataset 'tiny': no 'citation', and [defaults] gives"),
        ("[defaults]", "[default]", "unknown key 'default'."),
        ("size = 20", "size = ", "not valid TOML"),
    ],
)
def test_a_malformed_registry_names_the_entry(tmp_path: Path, old: str, new: str, message: str):
    assert old in GOOD_TOML
    path = tmp_path / "bad.toml"
    path.write_text(GOOD_TOML.replace(old, new))
    with pytest.raises(RnnrbmError) as excinfo:
        registry.load_registry(path)
    assert str(excinfo.value).startswith(f"{path}: ")
    assert message in str(excinfo.value)


def test_a_missing_registry_is_a_clear_error(tmp_path: Path):
    with pytest.raises(RnnrbmError, match="cannot read the dataset registry"):
        registry.load_registry(tmp_path / "nope.toml")


def test_unknown_dataset_lists_the_known_names():
    with pytest.raises(RnnrbmUsageError) as excinfo:
        registry.get_dataset("notingham")
    assert str(excinfo.value) == (
        "unknown dataset 'notingham'; known datasets: nottingham, jsb-chorales, musedata, piano-midi.de."
    )


@pytest.mark.parametrize(
    "args",
    [["fetch", "notingham"], ["prepare", "notingham"], ["train", "--data", "notingham", "--epochs", "1"]],
)
def test_an_unknown_dataset_is_a_usage_error_in_every_command(cache: Path, tmp_path: Path, args: list[str]):
    result = run(*args, "--cache-dir", str(cache))
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        "Error: unknown dataset 'notingham'; known datasets: nottingham, jsb-chorales, musedata, piano-midi.de.\n"
    )
    assert not cache.exists()


def test_the_default_form_is_what_prepare_reads():
    assert {d.name: d.default_form for d in registry.load_registry().values()} == {
        "nottingham": "rolls", "jsb-chorales": "rolls", "musedata": "rolls", "piano-midi.de": "rolls",
    }


# -- the cache ---------------------------------------------------------------------------


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RNNRBM_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("RNNRBM_CACHE_DIR")
    assert registry.default_cache_dir() == tmp_path / "xdg" / "rnnrbm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.default_cache_dir() == tmp_path / "home" / ".cache" / "rnnrbm"


def test_cached_file_checks_size_and_sha256(cache: Path, shared_datasets: Path, tampered: Path):
    dataset = registry.get_dataset("nottingham")
    datafile = dataset.file("rolls")
    assert registry.cached_file(datafile, dataset) is None
    path = cache / "nottingham" / "Nottingham.mat"
    path.parent.mkdir(parents=True)
    shutil.copyfile(tampered / "Nottingham.mat", path)  # right size, wrong sha256
    assert registry.cached_file(datafile, dataset) is None
    shutil.copyfile(shared_datasets / "Nottingham.mat", path)
    assert registry.cached_file(datafile, dataset) == path
    path.write_bytes(path.read_bytes()[:-1])
    assert registry.cached_file(datafile, dataset) is None


# -- fetch -------------------------------------------------------------------------------


def test_fetch_from_an_http_mirror_then_from_the_cache(cache: Path, mirror_server):
    result = run("fetch", "nottingham", "--all-forms", "--mirror", mirror_server.url, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"] == "nottingham" and report["not_fetched"] == []
    assert [f["name"] for f in report["files"]] == ["Nottingham.mat", "Nottingham.zip"]
    for f in report["files"]:
        assert set(f) == {"name", "path", "sha256", "source", "cached"}
        assert f["path"] == str(cache / "nottingham" / f["name"])
        assert f["sha256"] == sha256_of(Path(f["path"])) == EXPECTED["nottingham"][f["name"]][2]
        assert f["source"] == f"{mirror_server.url}/{f['name']}"
        assert f["cached"] is False
    assert mirror_server.requests == ["/Nottingham.mat", "/Nottingham.zip"]
    assert [p.name for p in files_under(cache)] == ["Nottingham.mat", "Nottingham.zip"]

    again = run("fetch", "nottingham", "--all-forms", "--mirror", mirror_server.url, "--json")
    assert again.exit_code == 0, again.output
    assert [(f["source"], f["cached"]) for f in json.loads(again.stdout)["files"]] == [("cache", True)] * 2
    assert len(mirror_server.requests) == 2  # the server was not asked again

    forced = run("fetch", "nottingham", "--form", "rolls", "--mirror", mirror_server.url, "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["files"][0]["cached"] is False
    assert mirror_server.requests[2:] == ["/Nottingham.mat"]


def test_file_names_are_url_quoted_on_an_http_mirror(cache: Path, mirror_server):
    (result,) = registry.fetch(
        "jsb-chorales", forms=["pickle"], mirror=mirror_server.url + "/", progress=False
    )
    assert result.source == f"{mirror_server.url}/JSB%20Chorales.pickle"
    assert sha256_of(result.path) == EXPECTED["jsb-chorales"]["JSB Chorales.pickle"][2]


def test_the_mirror_comes_from_the_environment(cache: Path, mirror_server, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RNNRBM_MIRROR", mirror_server.url)
    (result,) = registry.fetch("nottingham", forms=["rolls"], progress=False)
    assert result.source == f"{mirror_server.url}/Nottingham.mat"


def test_fetch_from_a_local_mirror_folder_gets_what_prepare_reads(cache: Path, shared_datasets: Path):
    result = run("fetch", "nottingham", "--mirror", str(shared_datasets))
    assert result.exit_code == 0, result.output
    path = cache / "nottingham" / "Nottingham.mat"
    assert result.stdout.splitlines() == [str(path)]
    assert sha256_of(path) == sha256_of(shared_datasets / "Nottingham.mat")
    assert f"✓ Nottingham.mat  from {shared_datasets / 'Nottingham.mat'}" in result.stderr
    message = " ".join(result.stderr.split())
    assert "not fetched: Nottingham.zip (midi)" in message and "--all-forms" in message
    assert files_under(cache) == [path]

    every = run("fetch", "nottingham", "--all-forms", "--mirror", str(shared_datasets))
    assert every.exit_code == 0, every.output
    paths = [path, cache / "nottingham" / "Nottingham.zip"]
    assert every.stdout.splitlines() == [str(p) for p in paths]
    assert "not fetched" not in every.stderr
    for p in paths:
        assert sha256_of(p) == sha256_of(shared_datasets / p.name)


def test_rolls_on_the_mirror_are_enough_without_the_midi_zip(cache: Path, shared_datasets: Path, http_server,
                                                            tmp_path, monkeypatch):
    # The mirror holds the .mat rolls only; the zip's one URL answers 404 (no network).
    rolls_only = tmp_path / "rolls-only"
    rolls_only.mkdir()
    shutil.copyfile(shared_datasets / "Nottingham.mat", rolls_only / "Nottingham.mat")
    server = http_server(tmp_path / "rolls-only")
    use_registry(tmp_path, monkeypatch, {
        "Nottingham.mat": [f"{server.url}/gone/Nottingham.mat"],
        "Nottingham.zip": [f"{server.url}/gone/Nottingham.zip"],
    })
    result = run("fetch", "nottingham", "--mirror", str(rolls_only), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [f["name"] for f in report["files"]] == ["Nottingham.mat"]
    assert report["not_fetched"] == ["Nottingham.zip"]
    assert server.requests == []  # the zip was not even tried

    every = run("fetch", "nottingham", "--mirror", str(rolls_only), "--all-forms")
    assert every.exit_code == 1
    assert "could not fetch Nottingham.zip" in every.stderr and "Nottingham.mat" not in every.stderr.split("Error")[1]
    assert "Traceback" not in every.output


def test_several_datasets_give_one_json_object_listing_them(cache: Path, shared_datasets: Path):
    result = run(
        "fetch", "nottingham", "jsb-chorales", "--form", "rolls",
        "--mirror", str(shared_datasets), "--json",
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert list(doc) == ["datasets"]
    reports = doc["datasets"]
    assert [(r["dataset"], [f["name"] for f in r["files"]]) for r in reports] == [
        ("nottingham", ["Nottingham.mat"]),
        ("jsb-chorales", ["JSB_Chorales.mat"]),
    ]


def test_a_404_falls_through_to_the_next_url(cache: Path, mirror_server, tmp_path, monkeypatch):
    missing, present = f"{mirror_server.url}/missing/Nottingham.mat", f"{mirror_server.url}/Nottingham.mat"
    use_registry(tmp_path, monkeypatch, {"Nottingham.mat": [missing, present]})
    (result,) = registry.fetch("nottingham", progress=False)
    assert (result.source, result.cached) == (present, False)
    assert mirror_server.requests == ["/missing/Nottingham.mat", "/Nottingham.mat"]
    assert sha256_of(result.path) == NOTTINGHAM_MAT_SHA


def test_a_file_missing_from_the_mirror_folder_falls_through_to_the_urls(
    cache: Path, mirror_server, tmp_path, monkeypatch
):
    use_registry(tmp_path, monkeypatch, {"Nottingham.mat": [f"{mirror_server.url}/Nottingham.mat"]})
    empty = tmp_path / "empty"
    empty.mkdir()
    (result,) = registry.fetch("nottingham", mirror=empty, progress=False)
    assert result.source == f"{mirror_server.url}/Nottingham.mat"


def test_a_sha256_mismatch_is_rejected_and_nothing_is_cached(
    cache: Path, tampered: Path, http_server, tmp_path, monkeypatch
):
    server = http_server(tampered)
    urls = [f"{server.url}/missing.mat", f"{server.url}/Nottingham.mat"]
    use_registry(tmp_path, monkeypatch, {"Nottingham.mat": urls})
    result = run("fetch", "nottingham", "--mirror", str(tampered))
    assert result.exit_code == 1
    assert result.stdout == ""
    message = " ".join(result.stderr.split())  # undo the console's line wrapping
    got = sha256_of(tampered / "Nottingham.mat")[:12]
    mismatch = f"sha256 mismatch (got {got}…, expected {NOTTINGHAM_MAT_SHA[:12]}…)"
    assert (
        f"could not fetch Nottingham.mat: {tampered / 'Nottingham.mat'}: {mismatch}; "
        f"{server.url}/missing.mat: HTTP 404; {server.url}/Nottingham.mat: {mismatch}."
    ) in message
    assert files_under(cache) == []


def test_a_download_cut_off_half_way_leaves_nothing(
    cache: Path, http_server, shared_datasets, tmp_path, monkeypatch
):
    server = http_server(shared_datasets)
    server.truncate.add("Nottingham.mat")
    use_registry(tmp_path, monkeypatch, {"Nottingham.mat": [f"{server.url}/Nottingham.mat"]})
    result = run("fetch", "nottingham")
    assert result.exit_code == 1
    assert "could not fetch Nottingham.mat" in result.stderr
    assert "incomplete" in result.stderr
    assert server.requests == ["/Nottingham.mat"]
    assert files_under(cache) == []


def stalled_server(http_server, shared_datasets, monkeypatch):
    """A server that answers for Nottingham.mat and then sends a byte every 0.2 s; the stall
    bound patched down from 1 KiB in 30 s to 100 bytes in 0.5 s."""
    server = http_server(shared_datasets)
    server.trickle.add("Nottingham.mat")
    monkeypatch.setattr(registry, "STALL_BYTES", 100)
    monkeypatch.setattr(registry, "STALL_SECONDS", 0.5)
    return server


def test_a_stalled_download_is_abandoned_and_nothing_is_cached(
    cache: Path, http_server, shared_datasets, tmp_path, monkeypatch
):
    server = stalled_server(http_server, shared_datasets, monkeypatch)
    use_registry(tmp_path, monkeypatch, {"Nottingham.mat": [f"{server.url}/Nottingham.mat"]})
    started = time.monotonic()
    result = run("fetch", "nottingham")
    assert time.monotonic() - started < 10  # the 371,688 bytes would take 20 hours at this rate
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stdout == "" and "Traceback" not in result.stderr
    error = " ".join(result.stderr[result.stderr.index("Error: "):].split())
    assert re.search(rf"could not fetch Nottingham.mat: {re.escape(server.url)}/Nottingham.mat: "
                     r"stalled: [1-5] bytes in the last 0.5 s\.", error), error
    assert server.requests == ["/Nottingham.mat"]
    assert files_under(cache) == []


def test_a_stalled_source_gives_way_to_the_next(cache: Path, http_server, shared_datasets, tmp_path, monkeypatch):
    server = stalled_server(http_server, shared_datasets, monkeypatch)
    good = http_server(shared_datasets)
    urls = [f"{server.url}/Nottingham.mat", f"{good.url}/Nottingham.mat"]
    use_registry(tmp_path, monkeypatch, {"Nottingham.mat": urls})
    result = run("fetch", "nottingham", "--json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["files"]
    assert entry["source"] == urls[1]
    assert sha256_of(Path(entry["path"])) == NOTTINGHAM_MAT_SHA
    # Off a terminal (CliRunner's stderr is none) the fetch says what it does, line by line.
    said = result.stderr
    assert f"Nottingham.mat: downloading 0.4 MiB from {urls[0]}" in said
    assert re.search(rf"Nottingham.mat: {re.escape(urls[0])} failed \(stalled: [1-5] bytes in the last 0.5 s\); "
                     "trying the next source", said), said
    assert f"Nottingham.mat: downloading 0.4 MiB from {urls[1]}" in said
    assert files_under(cache) == [cache / "nottingham" / "Nottingham.mat"]


def test_a_download_off_a_terminal_says_how_far_it_has_got(cache: Path, mirror_server, monkeypatch):
    monkeypatch.setattr(registry, "PROGRESS_SECONDS", 0.0)  # a line for every read but the last
    result = run("fetch", "nottingham", "--mirror", mirror_server.url)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Nottingham.mat: ")]
    assert lines[0] == f"Nottingham.mat: downloading 0.4 MiB from {mirror_server.url}/Nottingham.mat"
    shares = []
    for line in lines[1:]:
        said = re.fullmatch(r"Nottingham.mat: (\d\.\d) MiB of 0.4 MiB \((\d+)%\), [\d,]+ KiB/s", line)
        assert said, line
        shares.append(int(said[2]))
    assert len(shares) >= 2 and shares == sorted(shares) and shares[-1] < 100  # how much reads return varies
    # on a terminal tqdm draws its bar instead, and these lines are not printed
    monkeypatch.setattr(registry, "_plain_lines", lambda progress: False)
    again = run("fetch", "nottingham", "--mirror", mirror_server.url, "--force")
    assert again.exit_code == 0 and "downloading" not in again.stderr


def test_an_interrupted_download_leaves_nothing(cache: Path, shared_datasets: Path, monkeypatch):
    class InterruptedBar:
        """Stands in for tqdm; the user presses Ctrl-C after the first chunk is written."""

        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(registry, "tqdm", InterruptedBar)
    with pytest.raises(KeyboardInterrupt):
        registry.fetch("nottingham", forms=["rolls"], mirror=shared_datasets)
    assert files_under(cache) == []


def test_every_file_is_tried_and_every_failure_reported(cache: Path, mirror_server, tmp_path, monkeypatch):
    use_registry(
        tmp_path,
        monkeypatch,
        {
            "Nottingham.mat": [f"{mirror_server.url}/gone/Nottingham.mat"],
            "Nottingham.zip": [f"{mirror_server.url}/Nottingham.zip"],
            "JSB_Chorales.mat": [f"{mirror_server.url}/gone/JSB_Chorales.mat"],
        },
    )
    result = run("fetch", "nottingham", "jsb-chorales", "--all-forms")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [str(cache / "nottingham" / "Nottingham.zip")]
    assert "could not fetch Nottingham.mat" in result.stderr
    assert "could not fetch JSB_Chorales.mat" in result.stderr
    assert mirror_server.requests == ["/gone/Nottingham.mat", "/Nottingham.zip", "/gone/JSB_Chorales.mat"]

    with pytest.raises(registry.FetchError) as excinfo:
        registry.fetch("nottingham", progress=False)
    assert [r.name for r in excinfo.value.results] == ["Nottingham.zip"]
    assert len(excinfo.value.failures) == 1


def test_a_corrupt_cache_entry_is_replaced(cache: Path, shared_datasets: Path, tampered: Path):
    path = cache / "nottingham" / "Nottingham.mat"
    path.parent.mkdir(parents=True)
    shutil.copyfile(tampered / "Nottingham.mat", path)
    (result,) = registry.fetch("nottingham", forms=["rolls"], mirror=shared_datasets, progress=False)
    assert (result.path, result.cached) == (path, False)
    assert sha256_of(path) == NOTTINGHAM_MAT_SHA


def test_asking_for_a_form_the_dataset_lacks_is_an_error(cache: Path):
    with pytest.raises(RnnrbmError, match="dataset 'musedata' has no file of form pickle; it has rolls."):
        registry.fetch("musedata", forms=["pickle"])


# -- the listing -------------------------------------------------------------------------


def test_datasets_table_lists_all_four(cache: Path):
    result = run("datasets")
    assert result.exit_code == 0, result.output
    for name in [*EXPECTED, "Nottingham.mat", "Piano-midi.de.pickle"]:
        assert name in result.stdout
    listed = run("fetch", "--list")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout == result.stdout


def test_datasets_json_shows_what_is_cached_and_verified(cache: Path, shared_datasets: Path, tampered: Path):
    assert run("fetch", "nottingham", "--form", "rolls", "--mirror", str(shared_datasets)).exit_code == 0
    corrupt = cache / "jsb-chorales" / "JSB_Chorales.mat"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a .mat file")
    result = run("datasets", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["cache_dir"] == str(cache)
    status = {f["name"]: f["status"] for d in listing["datasets"] for f in d["files"]}
    assert status["Nottingham.mat"] == "verified"
    assert status["JSB_Chorales.mat"] == "corrupt"
    assert {s for n, s in status.items() if n not in ("Nottingham.mat", "JSB_Chorales.mat")} == {"missing"}
    assert "✓ verified" in run("datasets").stdout


# -- the command line --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "name a dataset to fetch, or pass --all"),
        (["notingham"], "unknown dataset 'notingham'; known datasets: nottingham, jsb-chorales"),
        (["--all", "nottingham"], "give dataset names or --all, not both"),
        (["musedata", "--form", "pickle"], "dataset 'musedata' has no file of form pickle; it has rolls"),
        (["nottingham", "--form", "mp3"], "'mp3' is not one of"),
        (["nottingham", "--form", "rolls", "--all-forms"], "give --form or --all-forms, not both"),
    ],
)
def test_fetch_usage_errors_exit_2(cache: Path, args: list[str], message: str):
    result = run("fetch", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())
    assert not cache.exists()  # nothing was fetched, not even a folder made


@pytest.mark.parametrize("command", ["fetch", "datasets"])
def test_help_ends_with_an_example(command: str):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example:\n    rnnrbm " + command in result.stdout


def test_cli_forms_match_the_registry():
    assert cli_module._FORMS == registry.FORMS


def test_a_fetch_that_fails_inside_train_says_how_to_work_offline(cache: Path, tmp_path, monkeypatch, http_server):
    """Not only `rnnrbm fetch`: the main command fetches too, and offline it must name the mirror."""
    from conftest import one_sentence_error

    monkeypatch.delenv("RNNRBM_MIRROR", raising=False)
    server = http_server(tmp_path)  # serves an empty folder: every file is a 404
    use_registry(tmp_path, monkeypatch, {"Nottingham.mat": [f"{server.url}/Nottingham.mat"]})
    line = one_sentence_error(run("train", "--data", "nottingham", "--epochs", "1", "--run-dir", str(tmp_path / "r")))
    assert "could not fetch Nottingham.mat" in line and "--mirror" in line and "RNNRBM_MIRROR" in line
    assert not (tmp_path / "r").exists()


def test_the_tests_cache_is_never_the_users():
    users = Path.home() / ".cache" / "rnnrbm"
    assert registry.default_cache_dir().resolve() != users.resolve()
