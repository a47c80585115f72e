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
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from dataclasses import asdict
from pathlib import Path

import mido
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rnnrbm_cli.checkpoint import load_checkpoint, load_model, save_checkpoint
from rnnrbm_cli.cli import cli
from rnnrbm_cli.datasets import load_prepared, prepare
from rnnrbm_cli.errors import RnnrbmError
from rnnrbm_cli.models.rbm import RNNRBM, ModelConfig
from rnnrbm_cli.pianoroll import MAX_FRAMES, MAX_MIDI_BYTES, midi_to_roll, read_midi
from rnnrbm_cli.readers import read_pickle

from conftest import midi_bytes, one_sentence_error, run

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


GOOD = midi_bytes((60, 0.0, 0.6), (64, 0.3, 0.9))  # 3 frames at dt = 0.3, 8 at 4 a beat


def run_capped(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """``rnnrbm ARGS`` in a child process with a capped address space; (result, peak RSS in MB)."""
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
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = dict(os.environ, PYTHONPATH=str(REPO), RNNRBM_CACHE_DIR=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "-c", child, *args],
        env=env, preexec_fn=cap, capture_output=True, text=True, timeout=120, check=False,
    )
    return result, int(peak_file.read_text()) / 1024  # KiB


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


# == nothing lost, nothing false: the data a checkpoint names, failed writes, sizes ================

TINY = ["--n-hidden", "8", "--n-recurrent", "4", "--k", "1", "--chunk", "12", "--eval-every", "0",
        "--device", "cpu", "--backend", "torch", "--seed", "1"]


def songs_folder(root: Path, pitches: list[int]) -> Path:
    """``root/songs`` with train/ and test/ subfolders: one 3-frame tune per pitch."""
    for i, pitch in enumerate(pitches):
        folder = root / "songs" / ("test" if i == len(pitches) - 1 else "train")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"tune{i}.mid").write_bytes(midi_bytes((pitch, 0.0, 0.6), (pitch + 4, 0.3, 0.9)))
    return root / "songs"


def last_line_error(result, code: int = 1) -> str:
    """A clean failure after progress lines: the exit code, no traceback, and one sentence,
    the last line on stderr; return it."""
    assert result.exit_code == code, (result.output, result.stderr)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and [line.startswith("Error: ") for line in lines].count(True) == 1
    assert lines[-1].startswith("Error: "), result.stderr
    return lines[-1]


def no_part_files(folder: Path) -> bool:
    return not any(p.name.endswith(".part") for p in folder.rglob("*"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RNNRBM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RNNRBM_MIRROR", raising=False)
    return tmp_path / "cache"


def test_two_folders_of_one_name_never_share_prepared_data(tmp_path, cache):
    a = songs_folder(tmp_path / "a", [60, 64])
    b = songs_folder(tmp_path / "b", [48, 52])
    run_dir = tmp_path / "run"
    r = run("train", "--data", a, "--epochs", "1", "--run-dir", run_dir, *TINY)
    assert r.exit_code == 0, r.stderr
    assert "1 sequence, 3 frames, 1 chunk)" in r.stderr  # in the singular
    trained_on = Path(load_checkpoint(run_dir / "checkpoint.pt")["data"]["path"])
    assert trained_on.parent == cache / "prepared" and trained_on.name.startswith("songs-")

    r = run("prepare", b, "--json")
    assert r.exit_code == 0, r.stderr
    other = Path(json.loads(r.stdout)["path"])
    assert other != trained_on and other.parent == trained_on.parent
    # preparing a/songs again finds the same file name, and the checkpoint still evaluates
    assert Path(json.loads(run("prepare", a, "--json").stdout)["path"]) == trained_on
    r = run("evaluate", run_dir / "checkpoint.pt", "--split", "train", "--json", "--chains", 2, "--betas", 2,
            "--samples", 2, "--gibbs", 1)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["data"] == str(trained_on)

    # What the old single name did: b's data in the file the checkpoint was trained on.
    before = (run_dir / "checkpoint.pt").read_bytes()
    shutil.copyfile(other, trained_on)
    for args in (
        ["evaluate", run_dir / "checkpoint.pt", "--split", "train"],
        ["sample", run_dir / "checkpoint.pt", tmp_path / "x.mid", "--primer", trained_on, "--split", "train"],
        ["train", "--resume", run_dir, "--epochs", "2"],
    ):
        message = one_sentence_error(run(*args))
        assert f"trained on {trained_on} (sha256 " in message and "holds other data" in message, message
    assert not (tmp_path / "x.mid").exists()
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    # Other data on purpose is still fine: evaluate --data, or a primer that is not the training file.
    r = run("evaluate", run_dir / "checkpoint.pt", "--data", other, "--split", "train", "--chains", 2, "--betas", 2,
            "--samples", 2, "--gibbs", 1)
    assert r.exit_code == 0, r.stderr
    r = run("sample", run_dir / "checkpoint.pt", tmp_path / "y.mid", "--primer", other, "--split", "train",
            "--steps", 3, "--k", 1)
    assert r.exit_code == 0, r.stderr


def test_a_full_disk_while_checkpointing_is_one_sentence_and_the_old_checkpoint_stays(toy_npz, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    assert run("train", "--data", toy_npz, "--epochs", "1", "--run-dir", run_dir, *TINY).exit_code == 0
    before = (run_dir / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4544 vs 4432")

    monkeypatch.setattr(torch, "save", full_disk)
    message = last_line_error(run("train", "--resume", run_dir, "--epochs", "2"))
    assert message.startswith(f"Error: cannot write checkpoint {run_dir / 'checkpoint.pt'} (unexpected pos 4544 vs 4432; ")
    assert "free on that disk); the previous checkpoint.pt is kept unchanged." in message
    monkeypatch.setattr(torch, "save", real_save)
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert load_model(run_dir / "checkpoint.pt")[1]["epoch"] == 1
    assert no_part_files(run_dir)
    # and the run resumes once the disk has room again
    assert run("train", "--resume", run_dir, "--epochs", "2").exit_code == 0


def test_a_checkpoint_that_cannot_be_written_where_asked_is_one_sentence(tmp_path):
    config = ModelConfig(n_hidden=4, n_recurrent=3)
    payload = {"model_config": asdict(config), "model_state": RNNRBM(config).state_dict()}
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(RnnrbmError, match=r"cannot write checkpoint .*a-file/run/checkpoint.pt \(.*\); nothing was written\.$"):
        save_checkpoint(tmp_path / "a-file" / "run" / "checkpoint.pt", payload)
    if os.geteuid() == 0:
        return  # root writes into read-only folders: the variant below cannot fail for it
    folder = tmp_path / "read-only"
    folder.mkdir()
    save_checkpoint(folder / "checkpoint.pt", payload)
    before = (folder / "checkpoint.pt").read_bytes()
    folder.chmod(0o500)
    try:
        with pytest.raises(RnnrbmError, match=r"\(Permission denied\); the previous checkpoint.pt is kept unchanged\.$"):
            save_checkpoint(folder / "checkpoint.pt", payload)
    finally:
        folder.chmod(0o700)
    assert (folder / "checkpoint.pt").read_bytes() == before and no_part_files(folder)


def tiny_checkpoint(path: Path, n_visible: int = 88, nan: bool = False) -> Path:
    config = ModelConfig(n_visible=n_visible, n_hidden=4, n_recurrent=3)
    model = RNNRBM(config)
    if nan:
        with torch.no_grad():
            model.W[0, 0] = float("nan")
    data = {"dataset": "toy", "grid": "seconds", "dt": 0.3, "beat_division": None}
    save_checkpoint(path, {"model_config": asdict(config), "model_state": model.state_dict(), "data": data})
    return path


def test_a_model_of_87_keys_is_refused_before_sampling(tmp_path, monkeypatch):
    from rnnrbm_cli import engines

    def never(*args, **kwargs):
        raise AssertionError("sampled")

    monkeypatch.setattr(engines.TorchSampler, "generate", never)
    ckpt = tiny_checkpoint(tmp_path / "k87.pt", n_visible=87)
    message = one_sentence_error(run("sample", ckpt, tmp_path / "x.mid", "--backend", "torch"))
    assert message == (f"Error: {ckpt} holds a model of 87 visible units, not one per piano key (88), "
                       "so what it samples cannot be written as MIDI.")
    assert not (tmp_path / "x.mid").exists()


def test_nan_weights_are_refused_by_evaluate_and_sample(toy_npz, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "nan.pt", nan=True)
    for args in (["evaluate", ckpt, "--data", toy_npz], ["sample", ckpt, tmp_path / "x.mid"]):
        assert "holds NaN or infinite weights (W)" in one_sentence_error(run(*args))
    assert not (tmp_path / "x.mid").exists()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--steps", "100000000"], "1 piece of 100,000,000 frames is 8,800,000,000 cells, more than the 268,435,456"),
        (["--num", "10000000"], "--num 10,000,000 asks for more pieces than the 10,000 one run may write"),
        (["--num", "5000", "--steps", "1000"], "5,000 pieces of 1,000 frames is 440,000,000 cells"),
    ],
)
def test_sizes_are_checked_before_any_work(tmp_path, args, said):
    # In a capped child: a regression tries to allocate tens of GB, and must not get them.
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    result, peak_mb = run_capped(tmp_path, "sample", str(ckpt), str(tmp_path / "x.mid"), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())
    assert said in message and ("lower --num or --steps" in message or "several runs" in message), message
    assert peak_mb < PEAK_LIMIT_MB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "peak-rss-kb"]


def test_running_out_of_memory_while_sampling_is_one_sentence(tmp_path, monkeypatch):
    from rnnrbm_cli import engines

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(engines.TorchSampler, "generate", no_memory)
    message = last_line_error(run("sample", tiny_checkpoint(tmp_path / "c.pt"), tmp_path / "x.mid",
                                  "--num", 3, "--backend", "torch"))
    assert message == "Error: ran out of memory sampling 3 pieces of 200 frames on cpu; lower --num or --steps, or sample in several runs."
    assert not (tmp_path / "x.mid").exists() and not (tmp_path / "x-001.mid").exists()


def test_running_out_of_memory_while_evaluating_is_one_sentence(toy_npz, tmp_path, monkeypatch):
    from rnnrbm_cli import evaluate

    def no_memory(*args, **kwargs):
        np.zeros(2**62, np.uint8)  # numpy's own ArrayMemoryError

    monkeypatch.setattr(evaluate, "evaluate", no_memory)
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    message = one_sentence_error(run("evaluate", ckpt, "--data", toy_npz, "--chains", 10**9))
    assert message == f"Error: ran out of memory evaluating {ckpt}; lower --chains or --samples, or use --max-frames."


def test_an_empty_split_is_named_not_indexed(tmp_path):
    from rnnrbm_cli.datasets import write_prepared

    seq = np.zeros((4, 88), np.uint8)
    empty = write_prepared(tmp_path / "e.npz", {"train": [seq], "valid": [], "test": [seq, seq]},
                           {"format": 1, "dataset": "toy", "grid": "seconds", "dt": 0.3, "beat_division": None})
    for args in (["plot", empty, "--split", "valid", "-o", tmp_path / "p.png"],
                 ["sample", tiny_checkpoint(tmp_path / "c.pt"), tmp_path / "x.mid", "--primer", empty, "--split", "valid"]):
        message = one_sentence_error(run(*args), code=2)
        assert message == f"Error: {empty} has no valid sequences (it has train 1, test 2); choose another --split."


def test_a_state_dict_error_shows_its_useful_part(tmp_path):
    config = ModelConfig(n_hidden=20, n_recurrent=10)
    state = RNNRBM(ModelConfig(n_hidden=30, n_recurrent=10)).state_dict()
    del state["bv"]
    state["W_extra"] = torch.zeros(2)
    save_checkpoint(tmp_path / "c.pt", {"model_config": asdict(config), "model_state": state})
    message = one_sentence_error(run("sample", tmp_path / "c.pt", tmp_path / "x.mid"))
    assert message == (
        f"Error: {tmp_path / 'c.pt'}: the stored weights do not fit the stored model config (missing bv; "
        "unexpected W_extra; W is (88, 30) where the config needs (88, 20), bh is (30,) where the config needs (20,), "
        "Wuh is (10, 30) where the config needs (10, 20))."
    )
