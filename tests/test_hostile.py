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
import shutil
import subprocess
import tracemalloc
import wave
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

from conftest import midi_bytes, one_sentence_error, run, run_measured

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
    return run_measured(tmp_path, *args, address_space=ADDRESS_SPACE)


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
    assert "if it is real); skipped. Warning: the valid split is empty" in warning  # 1/0/0 sequences
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

    assert run() == ([], "Warning: the valid split is empty (train/valid/test: 2/0/1 sequences), so training on "
                         f"{tmp_path / 'o.npz'} selects no model (best.pt is the latest epoch) and never stops early; "
                         "give more files, or a larger valid share with --split-ratios.")
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


def tiny_checkpoint(path: Path, n_visible: int = 88, nan: bool = False, dt: float = 0.3) -> Path:
    config = ModelConfig(n_visible=n_visible, n_hidden=4, n_recurrent=3)
    model = RNNRBM(config)
    if nan:
        with torch.no_grad():
            model.W[0, 0] = float("nan")
    data = {"dataset": "toy", "grid": "seconds", "dt": dt, "beat_division": None}
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
    ckpt = tiny_checkpoint(tmp_path / "c.pt", dt=0.25)  # toy.npz's grid
    message = one_sentence_error(run("evaluate", ckpt, "--data", toy_npz, "--chains", 10_000))
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


# == every value bounded before work starts ===============================================

NAN, INF, HUGE = "nan", "inf", str(10**30)


def beat_checkpoint(path: Path) -> Path:
    """A tiny model trained (as far as its checkpoint says) on 4 frames per beat."""
    config = ModelConfig(n_hidden=4, n_recurrent=3)
    data = {"dataset": "toy", "grid": "beats", "dt": None, "beat_division": 4}
    save_checkpoint(path, {"model_config": asdict(config), "model_state": RNNRBM(config).state_dict(), "data": data})
    return path


# Every numeric option of every command (fetch and datasets have none), each with the hostile
# values that apply: below its range, nan and inf for floats, 10**30.
NUMERIC_OPTIONS = {
    "prepare": {"--dt": ["0", "-1", NAN, INF], "--beat-division": ["0", "-1", HUGE], "--seed": ["-1", HUGE],
                "--max-frames": ["0", "-1"], "--max-member-mb": ["0", NAN, INF], "--workers": ["0", "-1"]},
    "sample": {"--steps": ["0", HUGE], "--seconds": ["0", NAN, INF, "1e300"], "--temperature": ["0", NAN, INF, "1e30"],
               "--k": ["0", HUGE], "--num": ["0", HUGE], "--seed": ["-1", HUGE], "--primer-steps": ["0", HUGE],
               "--index": ["-1"], "--dt": ["0", NAN, INF, "1e-7", "1000"], "--tempo": ["0", NAN, INF],
               "--program": ["-1", "128"], "--velocity": ["0", "128"]},
    "plot": {"--index": ["-1"], "--dt": ["0", NAN, INF], "--width": ["0", HUGE], "--height": ["0", HUGE],
             "--dpi": ["0", HUGE]},
    "evaluate": {"--chains": ["0", HUGE], "--betas": ["0", HUGE], "--samples": ["0", HUGE], "--gibbs": ["0", HUGE],
                 "--max-frames": ["0"], "--seed": ["-1", HUGE]},
    "train": {"--dt": ["0", NAN, INF], "--epochs": ["-1", HUGE], "--seed": ["-1", HUGE], "--n-hidden": ["0", HUGE, "2000000000"],
              "--n-recurrent": ["0", HUGE], "--k": ["0", HUGE], "--lr": ["0", NAN, INF], "--lr-rbm": ["0", NAN, INF],
              "--lr-rnn": ["0", NAN, INF], "--lr-decay": ["0", NAN, "2"], "--lr-patience": ["-1", HUGE],
              "--clip-grad": ["-1", NAN, INF], "--ema": ["1", NAN, "-1"], "--patience": ["-1", HUGE],
              "--pretrain-rbm-epochs": ["-1", HUGE], "--pretrain-rbm-lr": ["0", NAN, INF],
              "--pretrain-rnn-epochs": ["-1", HUGE], "--pretrain-rnn-lr": ["0", NAN, INF], "--momentum": ["1", NAN, "-1"],
              "--chunk": ["0", HUGE], "--batch": ["0", HUGE], "--eval-every": ["-1", HUGE], "--eval-frames": ["0", HUGE],
              "--eval-chains": ["0", HUGE], "--eval-betas": ["0", HUGE]},
    "tune": {"--trials": ["0", HUGE], "--timeout": ["0", NAN, INF], "--epochs": ["0", HUGE], "--eval-every": ["0", HUGE],
             "--seed": ["-1", HUGE], "--heartbeat": ["0", HUGE]},
}


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [(c, o, v) for c, options in NUMERIC_OPTIONS.items() for o, values in options.items() for v in values],
)
def test_every_numeric_option_refuses_a_hostile_value_in_one_sentence(tmp_path, toy_npz, monkeypatch, command, option, value):
    from rnnrbm_cli import api, datasets, evaluate, tune

    def no_work(*args, **kwargs):
        raise AssertionError("work started")

    for module, name in ((datasets, "prepare"), (api, "data_for_settings"), (evaluate, "evaluate_split"), (tune, "run_study")):
        monkeypatch.setattr(module, name, no_work)
    monkeypatch.chdir(tmp_path)
    ckpt = beat_checkpoint(tmp_path / "b.pt") if option == "--tempo" else tiny_checkpoint(tmp_path / "c.pt")
    args = {
        "prepare": ["prepare", tmp_path],
        "sample": ["sample", ckpt, tmp_path / "x.mid", "--k", "1", "--backend", "torch"],
        "plot": ["plot", tmp_path / "x.mid"],
        "evaluate": ["evaluate", ckpt, "--data", toy_npz],
        "train": ["train", "--data", toy_npz, "--run-dir", tmp_path / "run"],
        "tune": ["tune", "--data", toy_npz],
    }[command]
    if option == "--primer-steps":
        args += ["--primer", toy_npz]
    message = one_sentence_error(run(*args, option, value), code=2)
    # named by the option, or (sizes) by what it would make
    assert option.lstrip("-") in message.replace("_", "-") or " cells" in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"toy.npz", ckpt.name}), "something was written"


@pytest.mark.parametrize(("args", "said"), [
    (["--dt", "1e-7"], "--dt 1e-07 makes frames of 1e-07 s, but a MIDI file holds frames of 1e-06 to 16.777215 s"),
    (["--dt", "1000"], "--dt 1000 makes frames of 1000 s, but a MIDI file holds frames of 1e-06 to 16.777215 s"),
])
def test_a_frame_length_midi_cannot_hold_is_refused(tmp_path, args, said):
    message = one_sentence_error(run("sample", tiny_checkpoint(tmp_path / "c.pt"), tmp_path / "x.mid", *args), code=2)
    assert said in message and "give --dt in that range" in message
    message = one_sentence_error(run("sample", beat_checkpoint(tmp_path / "b.pt"), tmp_path / "x.mid", "--tempo", "0.001"), code=2)
    assert message.startswith("Error: --tempo 0.001 at 4 frames per beat makes frames of 15000 s") and "give --tempo in 0.894" in message
    assert not (tmp_path / "x.mid").exists()
    # the ends of the range are written and read back
    for dt in ("1e-6", "16.777215"):
        r = run("sample", tiny_checkpoint(tmp_path / "c.pt"), tmp_path / f"e{dt}.mid", "--dt", dt, "--steps", 2, "--k", 1, "--backend", "torch")
        assert r.exit_code == 0, r.stderr
        assert mido.MidiFile(tmp_path / f"e{dt}.mid").tracks[0][0].tempo == round(float(dt) * 1e6)


@pytest.mark.parametrize(("toml", "said"), [
    ("n_hidden = 2000000000", "n_hidden = 2000000000 and n_recurrent = 100 give the rnn-rbm model 378,000,027,788 parameters"),
    ("eval_frames = 0", "eval_frames = 0 is out of range (1..10,000,000)"),
    ("lr = inf", "lr = inf is not a finite number"),
    ("clip_grad = nan", "clip_grad = nan is not a finite number"),
    ("seed = -1", "seed = -1 is out of range"),
    ("[optim]\nbatch = 10000\nchunk = 1000", "880,000,000 cells per update"),
])
def test_a_settings_file_is_bounded_before_any_work(tmp_path, toy_npz, monkeypatch, toml, said):
    from rnnrbm_cli import api

    monkeypatch.setattr(api, "data_for_settings", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "c.toml").write_text(toml + "\n")
    message = one_sentence_error(run("train", "--data", toy_npz, "--config", tmp_path / "c.toml"), code=2)
    assert said in message, message
    # a run's config.json (by section) is checked the same way
    (tmp_path / "config.json").write_text(json.dumps({"model": {"n_hidden": 2_000_000_000}, "eval": {"eval_frames": 0}}))
    message = one_sentence_error(run("train", "--data", toy_npz, "--config", tmp_path / "config.json"), code=2)
    assert "378,000,027,788 parameters" in message or "eval_frames = 0 is out of range" in message, message


def test_a_search_space_end_beyond_the_bounds_fails_before_any_trial(tmp_path, toy_npz):
    from rnnrbm_cli.errors import RnnrbmUsageError
    from rnnrbm_cli.tune import base_settings
    from rnnrbm_cli.tune_space import read_space

    (tmp_path / "space.toml").write_text('[rnn-rbm]\nn_hidden = {low = 50, high = 2000000000}\n')
    space = read_space(tmp_path / "space.toml", "rnn-rbm")
    with pytest.raises(RnnrbmUsageError, match=r"allows n_hidden = 2000000000, which is not a valid setting .*378,000,027,788 parameters"):
        base_settings(None, {"data": str(toy_npz)}, space)


# == what you asked for, or a clear no ===================================================


def test_resume_refuses_a_hand_edited_config_json_naming_the_keys(toy_npz, tmp_path):
    run_dir = tmp_path / "run"
    assert run("train", "--data", toy_npz, "--epochs", "1", "--run-dir", run_dir, *TINY).exit_code == 0
    config = json.loads((run_dir / "config.json").read_text())
    before_ckpt = (run_dir / "checkpoint.pt").read_bytes()
    edited = json.loads(json.dumps(config))
    edited["optim"]["lr"] = 0.5
    edited["model"]["n_hidden"] = 9
    (run_dir / "config.json").write_text(json.dumps(edited))
    message = one_sentence_error(run("train", "--resume", run_dir, "--epochs", "2"), code=2)
    assert "differs from the run's checkpoint in n_hidden (9 there, 8 in checkpoint.pt), lr (0.5 there," in message, message
    assert (run_dir / "checkpoint.pt").read_bytes() == before_ckpt
    # undone, it resumes; the new --epochs is written to config.json, which keeps describing the run
    (run_dir / "config.json").write_text(json.dumps(config))
    assert run("train", "--resume", run_dir, "--epochs", "2").exit_code == 0
    assert json.loads((run_dir / "config.json").read_text())["optim"]["epochs"] == 2
    assert run("train", "--resume", run_dir).exit_code == 0  # and agrees with the checkpoint after


def test_an_empty_validation_split_is_said_at_prepare_and_at_train(tmp_path, cache):
    songs = songs_folder(tmp_path, [60, 62, 64, 65, 67])  # 4 train, 0 valid, 1 test
    r = run("prepare", songs, "--json")
    assert r.exit_code == 0, r.stderr
    warning = [line for line in r.stderr.splitlines() if "valid split is empty" in line]
    assert len(warning) == 1 and "train/valid/test: 4/0/1 sequences" in warning[0] and warning[0].startswith("Warning:")
    path = json.loads(r.stdout)["path"]
    r = run("train", "--data", path, "--epochs", "2", "--run-dir", tmp_path / "run", *TINY)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("has no validation sequences, so no model is selected") == 1, r.stderr


def test_evaluate_refuses_data_on_another_grid_as_sample_does(tmp_path, toy_npz):
    ckpt = tiny_checkpoint(tmp_path / "c.pt")  # 0.3 s per frame; toy.npz is 0.25 s
    message = one_sentence_error(run("evaluate", ckpt, "--data", toy_npz), code=2)
    assert message == (f"Error: {toy_npz} is on a grid of 0.25 s per frame but the model was trained on one of 0.3 s per "
                       "frame; evaluate on data prepared like the training data (the same --dt or --beat-division).")
    message = one_sentence_error(run("sample", ckpt, tmp_path / "x.mid", "--primer", toy_npz), code=2)
    assert "is on a grid of 0.25 s per frame but the model was trained on one of 0.3 s per frame" in message


# == interrupts and races =================================================================


@pytest.mark.parametrize("command", ["prepare", "evaluate", "sample", "fetch"])
def test_ctrl_c_exits_130_with_one_line(tmp_path, toy_npz, monkeypatch, command):
    from rnnrbm_cli import api, datasets, registry, sample

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    target = {"prepare": (datasets, "prepare"), "evaluate": (api, "evaluate_model"),
              "sample": (sample, "generate_rolls"), "fetch": (registry, "fetch")}[command]
    monkeypatch.setattr(*target, interrupted)
    args = {"prepare": ["prepare", toy_npz], "evaluate": ["evaluate", tiny_checkpoint(tmp_path / "c.pt")],
            "sample": ["sample", tiny_checkpoint(tmp_path / "c.pt"), tmp_path / "x.mid"],
            "fetch": ["fetch", "nottingham", "--cache-dir", tmp_path / "cache"]}[command]
    r = run(*args)
    assert r.exit_code == 130, (r.stderr, r.exception)
    assert r.stderr.strip().splitlines()[-1] == "Interrupted; nothing was left half written."
    assert "Traceback" not in r.stderr and "Aborted" not in r.stderr
    assert not (tmp_path / "x.mid").exists() and no_part_files(tmp_path)


def test_two_samples_racing_for_one_name_cannot_both_win(tmp_path, monkeypatch):
    import threading

    from rnnrbm_cli import pianoroll
    from rnnrbm_cli.sample import sample

    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    out = tmp_path / "x.mid"
    both_checked = threading.Barrier(2)
    real_write = pianoroll.write_midi

    def write_after_both_checked(*args, **kwargs):  # each has found x.mid free before either writes
        both_checked.wait(timeout=60)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(pianoroll, "write_midi", write_after_both_checked)
    results: dict[int, object] = {}

    def one(seed: int) -> None:
        try:
            results[seed] = sample(ckpt, out, steps=8, k=1, seed=seed, backend="torch")
        except Exception as e:  # noqa: BLE001
            results[seed] = e

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    failed = [r for r in results.values() if isinstance(r, Exception)]
    won = [r for r in results.values() if not isinstance(r, Exception)]
    assert len(failed) == 1 and len(won) == 1, results
    assert isinstance(failed[0], RnnrbmError) and str(failed[0]) == (
        f"{out} was written by another process while this one sampled; nothing was written (pass --force to replace it).")
    assert np.array_equal(midi_to_roll(out, dt=0.3)[0], won[0].rolls[0])  # the winner's file, whole
    assert no_part_files(tmp_path)


# -- audio of a long piece ---------------------------------------------------------------


def test_the_audio_of_a_long_piece_is_written_in_bounded_memory(tmp_path):
    # Half an hour of a random model (dense: every key about half the time) at 44.1 kHz is
    # 159 MB of WAV, and took 1.6 GB more memory rendered whole; two hours took 6.8 GB.
    from rnnrbm_cli.synth import SAMPLE_RATE, builtin_length

    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    args = ("--seconds", "1800", "--k", "1", "--seed", "0", "--backend", "torch")
    result, without_audio_mb = run_capped(tmp_path, "sample", str(ckpt), str(tmp_path / "silent.mid"), *args)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "long.mid"
    result, peak_mb = run_capped(tmp_path, "sample", str(ckpt), str(out), *args, "--wav")
    assert result.returncode == 0, result.stderr
    assert "built-in synthesiser" in result.stderr  # FluidSynth renders a piece whole: not one this long
    with wave.open(str(out.with_suffix(".wav"))) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (SAMPLE_RATE, 2, 1)
        assert builtin_length(1800 - 0.3, SAMPLE_RATE) <= w.getnframes() <= builtin_length(1800, SAMPLE_RATE)
        w.setpos(w.getnframes() // 2)
        assert np.abs(np.frombuffer(w.readframes(SAMPLE_RATE), "<i2")).max() > 1000  # music, not silence
    # one tone per key and a block of audio, never the piece: the tones of 88 keys are at most ~150 MB
    assert peak_mb - without_audio_mb < 150, (peak_mb, without_audio_mb)
