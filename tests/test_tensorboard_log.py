"""`rnnrbm train --tensorboard` and rnnrbm_cli.tensorboard_log: event files read back with
TensorBoard's own reader, and a run that is the same with them as without."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import one_sentence_error, run

HAS_TENSORBOARD = True
try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:
    HAS_TENSORBOARD = False
needs_tensorboard = pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed (pip install 'rnnrbm[tensorboard]')")


def train(toy_npz, run_dir: Path, *extra):
    """A small run on the toy data through the command line: one RBM pretraining epoch, five
    of fine-tuning, validation LL every two (and the last)."""
    r = run("train", "--data", toy_npz, "--run-dir", run_dir, "--n-hidden", 16, "--n-recurrent", 8, "--k", 1,
            "--chunk", 12, "--epochs", 5, "--pretrain-rbm-epochs", 1, "--eval-every", 2, "--eval-chains", 4,
            "--eval-betas", 10, "--eval-frames", 40, "--seed", 3, "--device", "cpu", "--backend", "torch", *extra)
    assert r.exit_code == 0, r.stderr
    return r


def test_without_tensorboard_the_flag_is_one_sentence_before_any_work(toy_npz, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard raises ImportError, as when it is absent
    r = run("train", "--data", toy_npz, "--run-dir", tmp_path / "run", "--epochs", 1, "--tensorboard")
    line = one_sentence_error(r, 2)
    assert "pip install 'rnnrbm[tensorboard]'" in line
    assert not (tmp_path / "run").exists()


@needs_tensorboard
def test_scalars_by_stage_and_sample_pictures_are_read_back(toy_npz, tmp_path):
    run_dir = tmp_path / "run"
    train(toy_npz, run_dir, "--tensorboard")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    # every scalar of every epoch, under its stage, equal to metrics.jsonl's
    for stage in ("rbm", "fine"):
        lines = [m for m in metrics if m["stage"] == stage]
        for key in ("train_monitor", "valid_monitor", "lr", "seconds"):
            got = [(e.step, e.value) for e in events.Scalars(f"{stage}/{key}")]
            assert got == [(m["epoch"], pytest.approx(m[key], rel=1e-6)) for m in lines]
    got = [(e.step, e.value) for e in events.Scalars("fine/valid_ll")]
    assert got == [(m["epoch"], pytest.approx(m["valid_ll"], rel=1e-6)) for m in metrics if m.get("valid_ll") is not None]
    assert [e.step for e in events.Scalars("fine/valid_ll")] == [3, 5, 6]  # fine-tuning epochs 2, 4 and the last
    assert "rbm/valid_ll" not in tags["scalars"]

    # a piano-roll at the first epoch, every 5th and the last
    pictures = events.Images("samples/piano_roll")
    assert [p.step for p in pictures] == [1, 5, 6]
    assert all((p.width, p.height) == (800, 300) and p.encoded_image_string.startswith(b"\x89PNG") for p in pictures)


@needs_tensorboard
def test_the_flag_changes_neither_the_settings_nor_the_checkpoints(toy_npz, tmp_path):
    plain, watched = tmp_path / "plain", tmp_path / "watched"
    train(toy_npz, plain)
    train(toy_npz, watched, "--tensorboard", tmp_path / "board")
    assert (tmp_path / "board").is_dir() and not (watched / "tensorboard").exists()

    assert (plain / "config.json").read_bytes() == (watched / "config.json").read_bytes()
    assert "tensorboard" not in (watched / "config.json").read_text()

    def learnt(run_dir):
        return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "frames_per_second", "time", "valid_ll_seconds")}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert learnt(plain) == learnt(watched)
    for name in ("best.pt", "checkpoint.pt"):
        a = torch.load(plain / name, weights_only=True)["model_state"]
        b = torch.load(watched / name, weights_only=True)["model_state"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@needs_tensorboard
def test_a_resumed_run_writes_on_from_its_checkpoint(toy_npz, tmp_path):
    run_dir = tmp_path / "run"
    train(toy_npz, run_dir, "--tensorboard")
    r = run("train", "--resume", run_dir, "--epochs", 7, "--tensorboard")
    assert r.exit_code == 0, r.stderr
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("fine/train_monitor")] == [2, 3, 4, 5, 6, 7, 8]
