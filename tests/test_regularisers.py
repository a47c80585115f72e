"""Transposition augmentation, dropout and weight decay (the levers of issue 26), checked
against plain loops and by what a run does with them."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_trainer, write_npz

from rnnrbm_cli.chunks import ChunkedData, shift_rows
from rnnrbm_cli.cli import cli
from rnnrbm_cli.datasets import load_prepared
from rnnrbm_cli.engines import objective_for
from rnnrbm_cli.engines.torch_path import TorchObjective
from rnnrbm_cli.errors import RnnrbmUsageError
from rnnrbm_cli.prepared import write_prepared
from rnnrbm_cli.api import resume_training
from rnnrbm_cli.train import Callbacks, StopFlag, TrainingInterrupted


def shifted_by_loop(rolls: np.ndarray, per_row: np.ndarray) -> tuple[np.ndarray, int]:
    """The shift one note at a time: note j of row r goes to j + per_row[r] if that is a key."""
    out = np.zeros_like(rolls)
    dropped = 0
    for r in range(rolls.shape[0]):
        for j in range(rolls.shape[1]):
            if rolls[r, j]:
                to = j + int(per_row[r])
                if 0 <= to < rolls.shape[1]:
                    out[r, to] = rolls[r, j]
                else:
                    dropped += 1
    return out, dropped


def test_shifting_rows_equals_moving_each_note_on_its_own():
    rng = np.random.default_rng(0)
    rolls = (rng.random((60, 88)) < 0.1).astype(np.float32)
    rolls[:, :3] = 1  # notes at both ends, so that shifts either way drop some
    rolls[:, -3:] = 1
    per_row = rng.integers(-90, 91, size=60)  # beyond the keyboard too: every note dropped
    per_row[:5] = 0
    got, dropped = shift_rows(rolls, per_row)
    want, want_dropped = shifted_by_loop(rolls, per_row)
    assert np.array_equal(got, want)
    assert dropped == want_dropped > 0


def sequences(rng, n):
    out = []
    for length in rng.integers(3, 30, size=n):
        roll = np.zeros((int(length), 88), np.uint8)
        roll[rng.random(roll.shape) < 0.08] = 1
        roll[:, 0] = roll[:, 87] = 1  # the lowest and highest keys: any shift drops notes
        out.append(roll)
    return out


def test_in_memory_and_on_disk_data_shift_alike_and_count_the_same_dropped_notes(tmp_path):
    rng = np.random.default_rng(1)
    train = sequences(rng, 9)
    path = write_prepared(tmp_path / "d.rnnrbm", {"train": train, "valid": train[:1], "test": train[:1]},
                          {"format": 1, "dataset": "t"},
                          format="mmap")
    prepared = load_prepared(path)
    memory = ChunkedData(train, 7, torch.device("cpu"))
    disk = ChunkedData(None, 7, torch.device("cpu"), prepared.on_disk["train"])
    shifts = rng.integers(-5, 6, size=9)
    shifts[0] = 0
    memory.transpose(shifts)
    disk.transpose(shifts)
    every = torch.arange(len(memory.chunks))
    for ids in (every[:1], every[3:4], every[[2, 5, 1]]):
        vm, lm = memory.batch(ids)
        vd, ld = disk.batch(ids)
        assert torch.equal(vm, vd)
    # what the compiled kernels read: whole split, one pass (the on-disk count is of what was read)
    disk.transpose(shifts)
    frames_m, starts_m, lengths_m = memory.frame_spans(every)
    frames_d, starts_d, lengths_d = disk.frame_spans(every)
    for sm, sd, n in zip(starts_m, starts_d, lengths_m):
        assert np.array_equal(frames_m[sm : sm + n], frames_d[sd : sd + n])
    want_rows, want_dropped = shifted_by_loop(np.concatenate(train).astype(np.float32),
                                              np.repeat(shifts, [len(s) for s in train]))
    assert memory.notes_dropped == disk.notes_dropped == want_dropped > 0
    assert np.array_equal(memory.frames[:-1].numpy(), want_rows)
    # and back: no shift gives the data as it was
    memory.transpose(None)
    assert np.array_equal(memory.frames[:-1].numpy(), np.concatenate(train)) and memory.notes_dropped == 0


class StopAt(Callbacks):
    def __init__(self, stop, epoch, update):
        self.stop, self.epoch, self.update = stop, epoch, update

    def on_update(self, epoch, update, n_updates):
        if (epoch, update) == (self.epoch, self.update):
            self.stop.set(signal.SIGINT)


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("model_type", ["rnn-rbm", "rnn"])
def test_augmented_dropout_runs_resume_mid_epoch_exactly(toy_npz, tmp_path, model_type):
    kw = dict(epochs=3, augment_transpose=4, dropout=0.3, weight_decay=0.01, model_type=model_type, optimizer="adam")
    full = make_trainer(toy_npz, tmp_path / "full", **kw)
    full.train()
    stop = StopFlag()
    part = make_trainer(toy_npz, tmp_path / "part", callbacks=StopAt(stop, 2, 5), stop=stop, **kw)
    with pytest.raises(TrainingInterrupted):
        part.train()
    resumed = resume_training(tmp_path / "part", torch.device("cpu"))
    resumed.train()
    for k, v in params(full).items():
        assert torch.equal(params(resumed)[k], v), k
    lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(line["transpose_notes_dropped"] >= 0 for line in lines)
    # the levers change the run: without them the parameters differ
    plain = make_trainer(toy_npz, tmp_path / "plain", epochs=3, model_type=model_type, optimizer="adam")
    plain.train()
    assert any(not torch.equal(params(plain)[k], v) for k, v in params(full).items())


def test_augmentation_shifts_every_epoch_and_validation_never(toy_npz, tmp_path):
    seen = []

    class Watch(Callbacks):
        def on_epoch_start(self, epoch, n_updates, first_update):
            seen.append(ref[0].stage.data.frames.clone())

    ref = []
    trainer = make_trainer(toy_npz, tmp_path / "r", callbacks=Watch(), epochs=3, augment_transpose=12, eval_every=1,
                           model_type="rnn", optimizer="adam")
    ref.append(trainer)
    valid_before = trainer.valid_data.frames.clone()
    trainer.train()
    plain = ChunkedData(load_prepared(toy_npz).splits["train"], 12, torch.device("cpu")).frames
    assert all(f.shape == plain.shape for f in seen)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], plain)
    # a shift moves notes and never adds any
    assert all(float(f.sum()) <= float(plain.sum()) for f in seen)
    assert torch.equal(trainer.valid_data.frames, valid_before)


def test_dropout_acts_in_training_mode_only():
    from rnnrbm_cli.checkpoint import build_model
    from rnnrbm_cli.models.base import ModelConfig

    model = build_model(ModelConfig(model_type="rnn", rnn="gru", n_recurrent=16), torch.Generator().manual_seed(0))
    v = (torch.rand(2, 10, 88, generator=torch.Generator().manual_seed(1)) < 0.1).float()
    model.eval()
    before = model.rnn_logits(v)
    model.set_dropout(0.5, torch.Generator().manual_seed(2))
    assert torch.equal(model.rnn_logits(v), before)  # evaluation sees the whole network
    model.train()
    a, b = model.rnn_logits(v), model.rnn_logits(v)
    assert not torch.equal(a, before) and not torch.equal(a, b)
    # the mask: about half the entries zeroed, the rest scaled by 2
    x = torch.ones(20_000)
    dropped = model._dropped(x)
    assert set(dropped.unique().tolist()) == {0.0, 2.0}
    assert abs(float((dropped == 0).float().mean()) - 0.5) < 0.02
    with pytest.raises(ValueError, match="0 to below 1"):
        model.set_dropout(1.0)


def test_dropout_trains_on_torch_and_says_why_the_kernels_cannot(toy_npz):
    from rnnrbm_cli.checkpoint import build_model
    from rnnrbm_cli.models.base import ModelConfig

    data = ChunkedData(load_prepared(toy_npz).splits["train"], 12, torch.device("cpu"))
    model = build_model(ModelConfig(model_type="rnn-nade", n_hidden=8, n_recurrent=8), torch.Generator().manual_seed(0))
    assert type(objective_for(model, data, k=1, backend="auto")) is not TorchObjective  # the kernels
    model.set_dropout(0.2)
    assert type(objective_for(model, data, k=1, backend="auto")) is TorchObjective
    with pytest.raises(RnnrbmUsageError, match="do not apply dropout"):
        objective_for(model, data, k=1, backend="numba")


def test_weight_decay_is_l2_with_sgd_and_decoupled_with_adam(toy_npz, tmp_path):
    from rnnrbm_cli.config import OptimConfig
    from rnnrbm_cli.stages import fine_tuning_optimizer

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.5, 0.5])
    model = torch.nn.Module()
    model.p = p
    opt = fine_tuning_optimizer(model, {"frame": [], "rnn": [p]}, OptimConfig(optimizer="sgd", lr=0.1, weight_decay=0.2))
    opt.step()
    assert torch.allclose(p.detach(), torch.tensor([1.0 - 0.1 * (0.5 + 0.2), -2.0 - 0.1 * (0.5 - 0.4)]))
    q = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    q.grad = torch.tensor([0.5, -0.5])
    model.q = q
    opt = fine_tuning_optimizer(model, {"frame": [], "rnn": [q]}, OptimConfig(optimizer="adam", lr=0.1, weight_decay=0.2))
    opt.step()
    # AdamW's first step: p (1 - lr wd) - lr sign(g) (bias-corrected moments of one gradient)
    assert torch.allclose(q.detach(), torch.tensor([1.0 * 0.98 - 0.1, -2.0 * 0.98 + 0.1]), atol=1e-6)


@pytest.mark.parametrize("flag, value", [("--dropout", "1"), ("--weight-decay", "-1"), ("--augment-transpose", "128")])
def test_out_of_range_levers_are_usage_errors(toy_npz, tmp_path, flag, value):
    r = CliRunner().invoke(cli, ["train", "--data", str(toy_npz), flag, value, "--run-dir", str(tmp_path / "r")])
    assert r.exit_code == 2 and not (tmp_path / "r").exists()


def test_numba_backend_with_dropout_is_one_sentence_and_exit_2(toy_npz, tmp_path):
    r = CliRunner().invoke(cli, ["train", "--data", str(toy_npz), "--model", "rnn-nade", "--dropout", "0.2", "--backend",
                                 "numba", "--epochs", "1", "--n-hidden", "8", "--n-recurrent", "8", "--chunk", "12",
                                 "--device", "cpu", "--run-dir", str(tmp_path / "r")])
    assert r.exit_code == 2, r.output
    said = r.output + (r.stderr if r.stderr_bytes else "")
    assert "do not apply dropout" in said and "--dropout 0 turns it off" in said, said
