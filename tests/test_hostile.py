"""Hostile input: tiny files that ask for huge arrays, zip bombs, lying and damaged archives.

Every file is built here, in ``tmp_path``. The commands that would have allocated tens of
gigabytes run in a child process whose address space is capped, so that a regression fails
the test with a MemoryError instead of taking the machine down; the child reports its own
peak resident memory.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import resource
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import mido
import pretty_midi
import pytest
from click.testing import CliRunner

from rnnrbm_cli.cli import cli
from rnnrbm_cli.datasets import load_prepared, prepare
from rnnrbm_cli.errors import RnnrbmError
from rnnrbm_cli.pianoroll import MAX_FRAMES, MAX_MIDI_BYTES, midi_to_roll, read_midi
from rnnrbm_cli.readers import read_pickle

REPO = Path(__file__).resolve().parents[1]
PEAK_LIMIT_MB = 500  # what preparing any of these files may cost, at most
ADDRESS_SPACE = 3 * 2**30  # the child's cap: a regression dies of MemoryError, not the machine


def hostile_midi() -> bytes:
    """44 bytes of valid MIDI: 1 tick per beat, the slowest tempo (16.8 s a beat), one
    note at tick 9,000,000. That is 1,748 days: 503 million frames at 0.3 s (44 GB as a
    roll), 36 million at 4 frames per beat."""
    midi = mido.MidiFile(ticks_per_beat=1)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=0xFFFFFF, time=0))
    track.append(mido.Message("note_on", note=60, velocity=64, time=9_000_000))
    track.append(mido.Message("note_off", note=60, velocity=0, time=1))
    midi.tracks.append(track)
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def midi_bytes(*notes: tuple[int, float, float]) -> bytes:
    """A small valid MIDI file at 120 bpm: one piano playing (pitch, start s, end s)."""
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(90, p, s, e) for p, s, e in notes]
    midi.instruments.append(piano)
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


GOOD = midi_bytes((60, 0.0, 0.6), (64, 0.3, 0.9))  # 3 frames at dt = 0.3, 8 at 4 a beat


def run_capped(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """``rnnrbm ARGS`` in a child process with a capped address space; (result, peak RSS in MB)."""
    peak_file = tmp_path / "peak-rss-kb"
    child = (
        "import resource, sys\n"
        "from rnnrbm_cli.cli import cli\n"
        "try:\n"
        "    cli(sys.argv[1:], prog_name='rnnrbm')\n"
        "finally:\n"
        f"    open({str(peak_file)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n"
    )

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = dict(os.environ, PYTHONPATH=str(REPO), RNNRBM_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "-c", child, *args],
        env=env, preexec_fn=cap, capture_output=True, text=True, timeout=120, check=False,
    )
    return result, int(peak_file.read_text()) / 1024  # ru_maxrss is in KiB on Linux


def zip_of(path: Path, members: dict[str, bytes], big: tuple[str, int] | None = None) -> Path:
    """A zip of ``members``, plus ``big = (name, MiB)``: a member of that many MiB of zeros,
    streamed in so that the test itself never holds it (deflate shrinks it 1000-fold)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, data in members.items():
            z.writestr(name, data)
        if big is not None:
            name, mib = big
            chunk = bytes(2**20)
            with z.open(name, "w") as w:
                for _ in range(mib):
                    w.write(chunk)
    return path


def patch_member(path: Path, name: str, *, declared_size: int | None = None, first_data_byte: int | None = None):
    """Rewrite one member of a zip in place: lie about its uncompressed size in both
    headers, or replace the first byte of its compressed data."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    local = info.header_offset
    assert data[local : local + 4] == b"PK\x03\x04"
    if declared_size is not None:
        data[local + 22 : local + 26] = declared_size.to_bytes(4, "little")
        central = data.index(b"PK\x01\x02")
        while data[central + 46 : central + 46 + len(name)] != name.encode():
            central = data.index(b"PK\x01\x02", central + 4)
        data[central + 24 : central + 28] = declared_size.to_bytes(4, "little")
    if first_data_byte is not None:
        name_len = int.from_bytes(data[local + 26 : local + 28], "little")
        extra_len = int.from_bytes(data[local + 28 : local + 30], "little")
        data[local + 30 + name_len + extra_len] = first_data_byte
    path.write_bytes(bytes(data))


# -- a tiny file that asks for a huge roll ---------------------------------------------------


def test_the_hostile_file_is_tiny_valid_midi():
    data = hostile_midi()
    assert len(data) == 44
    midi = mido.MidiFile(file=io.BytesIO(data))
    assert midi.ticks_per_beat == 1 and sum(m.time for m in midi.tracks[0]) == 9_000_001


def test_midi_to_roll_measures_the_file_before_building_anything():
    # The beat grid only: at 0.3 s a regression here would allocate 44 GB in the test
    # process itself (that grid is tested below, in a capped child).
    tracemalloc.start()
    try:
        with pytest.raises(RnnrbmError) as e:
            midi_to_roll(hostile_midi(), name="hostile.mid", beat_division=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(e.value) == (
        "hostile.mid lasts 1,748 days, 36,000,004 frames at 4 frames per beat: more than the 100,000 "
        "a piece may have (raise the limit, --max-frames, if it is real)."
    )
    # Refused from its events alone: not even pretty_midi's 72 MB tick table was built.
    assert peak < 5 * 2**20


def test_a_parsed_file_is_refused_before_its_roll_is_allocated():
    midi = read_midi(hostile_midi(), name="hostile.mid")  # pretty_midi's table: 9 million ticks
    tracemalloc.start()
    try:
        with pytest.raises(RnnrbmError, match="36,000,004 frames at 4 frames per beat"):
            midi_to_roll(midi, beat_division=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20  # the roll would have been 3.2 GB


@pytest.mark.parametrize(
    ("grid", "frames"),
    [(["--dt", "0.3"], "503,316,506 frames at 0.3 s per frame"), (["--beat-division", "4"], "36,000,004 frames at 4 frames per beat")],
)
def test_prepare_skips_the_hostile_file_names_it_and_keeps_going(tmp_path, grid, frames):
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "good.mid").write_bytes(GOOD)
    (songs / "hostile.mid").write_bytes(hostile_midi())
    out = tmp_path / "songs.npz"
    result, peak_mb = run_capped(tmp_path, "prepare", str(songs), *grid, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warning = " ".join(result.stderr.split())
    assert f"Warning: {songs / 'hostile.mid'} lasts 1,748 days, {frames}: more than the 100,000" in warning
    assert warning.endswith("if it is real); skipped.")
    doc = json.loads(result.stdout)
    assert doc["skipped_files"] == [str(songs / "hostile.mid")]
    assert doc["splits"]["train"]["sequences"] == 1
    assert load_prepared(out).splits["train"][0].shape == ((3, 88) if grid[0] == "--dt" else (8, 88))
    assert peak_mb < PEAK_LIMIT_MB, f"prepare peaked at {peak_mb:.0f} MB"


# -- zips that inflate, lie or are damaged -------------------------------------------------------


def test_a_zip_bomb_member_is_skipped_without_being_inflated(tmp_path):
    # 600 MiB of zeros in a 3 MB zip: reading the member whole alone would pass the limit.
    bomb = zip_of(
        tmp_path / "Bomb.zip",
        {"Bomb/train/good.mid": GOOD, "Bomb/test/good.mid": GOOD},
        big=("Bomb/train/big.mid", 600),
    )
    assert bomb.stat().st_size < 3 * 2**20
    result, peak_mb = run_capped(tmp_path, "prepare", str(bomb), "--out", str(tmp_path / "b.npz"), "--json")
    assert result.returncode == 0, result.stderr
    warning = " ".join(result.stderr.split())
    assert f"Warning: Bomb.zip:Bomb/train/big.mid is larger than {MAX_MIDI_BYTES / 2**20:g} MiB" in warning
    doc = json.loads(result.stdout)
    assert doc["skipped_files"] == ["Bomb.zip:Bomb/train/big.mid"]
    assert (doc["splits"]["train"]["sequences"], doc["splits"]["test"]["sequences"]) == (1, 1)
    assert peak_mb < PEAK_LIMIT_MB, f"prepare peaked at {peak_mb:.0f} MB"


def test_no_more_than_the_limit_is_ever_inflated(tmp_path):
    path = zip_of(tmp_path / "Mem.zip", {"Mem/train/good.mid": GOOD}, big=("Mem/train/big.mid", 64))
    tracemalloc.start()
    try:
        result = prepare(path, max_member_bytes=2**20, out=tmp_path / "m.npz", progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.skipped_files == ["Mem.zip:Mem/train/big.mid"]
    assert "is larger than 1 MiB" in result.warnings[0]
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB traced: the 64 MiB member was read whole"


def test_declared_sizes_are_not_trusted(tmp_path):
    path = zip_of(
        tmp_path / "Lie.zip",
        {"Lie/train/good.mid": GOOD, "Lie/train/small.mid": GOOD, "Lie/valid/big.mid": GOOD},
        big=("Lie/train/liar.mid", 4),
    )
    patch_member(path, "Lie/train/liar.mid", declared_size=100)  # 4 MiB said to be 100 bytes
    patch_member(path, "Lie/valid/big.mid", declared_size=2**31)  # 2 GiB said, a few bytes inside
    result = prepare(path, out=tmp_path / "l.npz", progress=False)
    # The liar stops at its declared size and fails its CRC; the file that claims to be
    # huge is read for what it is.
    assert result.skipped_files == ["Lie.zip:Lie/train/liar.mid"]
    assert result.warnings[0].startswith("cannot read Lie.zip:Lie/train/liar.mid (")
    assert result.warnings[0].endswith("); skipped.")
    assert {s: v["sequences"] for s, v in result.splits.items()} == {"train": 2, "valid": 1, "test": 0}


def test_a_damaged_deflate_stream_is_skipped_with_a_warning(tmp_path):
    path = zip_of(tmp_path / "Bad.zip", {"Bad/train/good.mid": GOOD, "Bad/train/broken.mid": GOOD})
    patch_member(path, "Bad/train/broken.mid", first_data_byte=0x07)  # deflate block type 3: invalid
    result = CliRunner().invoke(cli, ["prepare", str(path), "--out", str(tmp_path / "d.npz"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["skipped_files"] == ["Bad.zip:Bad/train/broken.mid"]
    message = " ".join(result.stderr.split())
    assert "Warning: cannot read Bad.zip:Bad/train/broken.mid (Error -3 while decompressing data" in message


# -- the limits, as flags ------------------------------------------------------------------------


def test_max_frames_and_max_member_mb_flags(tmp_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    (songs / "short.mid").write_bytes(GOOD)  # 3 frames at 0.3 s
    (songs / "long.mid").write_bytes(midi_bytes((60, 0.0, 3.0)))  # 10 frames
    many = midi_bytes(*[(48 + i % 24, i * 0.05, i * 0.05 + 0.05) for i in range(120)])  # 20 frames
    (songs / "many.mid").write_bytes(many)

    def run(*flags):
        result = CliRunner().invoke(cli, ["prepare", str(songs), "--out", str(tmp_path / "o.npz"), "--json", *flags])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["skipped_files"], " ".join(result.stderr.split())

    assert run() == ([], "")
    skipped, stderr = run("--max-frames", "10")
    assert skipped == [str(songs / "many.mid")]
    assert "many.mid lasts 6.0 s, 20 frames at 0.3 s per frame: more than the 10 a piece may have" in stderr
    limit_mb = 0.0005  # 524 bytes
    assert len(GOOD) < limit_mb * 2**20 < len(many)
    skipped, stderr = run("--max-member-mb", str(limit_mb))
    assert skipped == [str(songs / "many.mid")]
    assert "many.mid is larger than 524 bytes" in stderr
    for bad in (["--max-frames", "0"], ["--max-member-mb", "0"], ["--max-member-mb", "-1"]):
        assert CliRunner().invoke(cli, ["prepare", str(songs), *bad]).exit_code == 2


def test_a_pickle_sequence_longer_than_a_piece_is_refused(tmp_path):
    # 200,001 empty frames pickle to 400 KB (one memoised tuple); as a roll they are 17.6 MB.
    path = tmp_path / "long.pickle"
    path.write_bytes(pickle.dumps({"train": [[()] * 200_001], "valid": [], "test": []}, protocol=4))
    with pytest.raises(RnnrbmError, match=r"train sequence 1 has 200,001 frames, more than the 100,000"):
        read_pickle(path)
    splits, _ = read_pickle(path, max_frames=None)
    assert splits["train"][0].shape == (200_001, 88)


# -- real files are measured exactly ----------------------------------------------------------


@pytest.mark.parametrize("grid", [{"dt": 0.3}, {"beat_division": 4}])
def test_real_files_are_measured_exactly_before_reading(shared_datasets, grid):
    """Measured from its events, a real file is as long as its roll: a limit of exactly
    its length accepts it, one frame less refuses it (so no real piece is lost early)."""
    with zipfile.ZipFile(shared_datasets / "Nottingham.zip") as z:
        names = sorted(n for n in z.namelist() if n.endswith(".mid") and "__MACOSX" not in n)[::20]
        for name in names:
            data = z.read(name)
            n = len(midi_to_roll(data, max_frames=None, **grid)[0])
            assert len(midi_to_roll(data, max_frames=n, **grid)[0]) == n
            with pytest.raises(RnnrbmError, match=f"{n:,} frames"):
                midi_to_roll(data, max_frames=n - 1, **grid)
    assert MAX_FRAMES > 25 * 3588  # the longest Nottingham tune at 4 frames per beat
