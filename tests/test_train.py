"""The training loop and `rnnrbm train`: learning, checkpoints, resume, signals, divergence."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from rnnrbm_cli.checkpoint import load_checkpoint, load_model
from rnnrbm_cli.cli import cli
from rnnrbm_cli.datasets import load_prepared
from rnnrbm_cli.models.rbm import free_energy
from rnnrbm_cli.api import resume_training
from rnnrbm_cli.train import (
    Callbacks,
    StopFlag,
    TrainingDiverged,
    TrainingInterrupted,
)

from conftest import make_trainer, one_sentence_error, run as run_cli

def test_training_makes_structured_frames_more_probable_than_random_ones(toy_npz, tmp_path):
    trainer = make_trainer(toy_npz, tmp_path / "run", epochs=10, batch=4, lr=0.05, k=1, optimizer="adam", n_hidden=24)
    before = params(trainer)
    trainer.train()
    model = trainer.model.eval()
    test = torch.from_numpy(np.stack(load_prepared(toy_npz).splits["test"])).float()
    g = torch.Generator().manual_seed(0)
    # random frames with the same number of notes (three) in the same range of keys
    random = torch.zeros_like(test)
    for b in range(test.shape[0]):
        for t in range(test.shape[1]):
            random[b, t, torch.randperm(48, generator=g)[:3] + 20] = 1.0
    with torch.no_grad():
        bv_t, bh_t = model.conditional_biases(test)
        f_true = free_energy(test, model.W, bv_t, bh_t)
        f_rand = free_energy(random, model.W, bv_t, bh_t)
    # lower free energy = more probable under the same conditional RBM (same log Z)
    assert (f_true < f_rand).float().mean() > 0.95
    assert (f_rand - f_true).mean() > 10.0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_run_directory_and_checkpoint_round_trip(toy_npz, tmp_path):
    trainer = make_trainer(toy_npz, tmp_path / "run", epochs=2)
    result = trainer.train()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "checkpoint.pt", "command.txt", "config.json", "metrics.jsonl"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for m in lines:
        assert np.isfinite(m["train_monitor"]) and np.isfinite(m["valid_monitor"]) and m["seconds"] > 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["n_hidden"] == 16 and config["optim"]["k"] == 1
    payload = torch.load(result.checkpoint, weights_only=True)  # plain tensors and values only
    assert payload["epoch"] == 2
    model, _ = load_model(result.checkpoint)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def params(trainer_or_model) -> dict[str, torch.Tensor]:
    m = getattr(trainer_or_model, "model", trainer_or_model)
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("batch", [1, 3])
def test_resume_after_epoch_two_gives_the_same_parameters(toy_npz, tmp_path, batch):
    full = make_trainer(toy_npz, tmp_path / "full", epochs=4, batch=batch)
    full.train()

    part = make_trainer(toy_npz, tmp_path / "part", epochs=2, batch=batch)
    part.train()
    resumed = resume_training(tmp_path / "part", torch.device("cpu"), epochs=4)
    resumed.train()
    for k, v in params(full).items():
        assert torch.equal(params(resumed)[k], v), k
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


class StopAt(Callbacks):
    def __init__(self, stop: StopFlag, epoch: int, update: int) -> None:
        self.stop, self.epoch, self.update = stop, epoch, update

    def on_update(self, epoch, update, n_updates):
        if (epoch, update) == (self.epoch, self.update):
            self.stop.set(signal.SIGINT)


def test_interrupt_mid_epoch_checkpoints_and_resumes_exactly(toy_npz, tmp_path):
    full = make_trainer(toy_npz, tmp_path / "full", epochs=3)
    full.train()

    stop = StopFlag()
    part = make_trainer(toy_npz, tmp_path / "part", callbacks=StopAt(stop, 2, 5), stop=stop, epochs=3)
    with pytest.raises(TrainingInterrupted) as info:
        part.train()
    assert (info.value.epoch, info.value.update) == (2, 5)
    payload = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert payload["epoch"] == 1 and payload["progress"]["update"] == 5
    resumed = resume_training(tmp_path / "part", torch.device("cpu"))
    resumed.train()
    for k, v in params(full).items():
        assert torch.equal(params(resumed)[k], v), k


class InjectNaN(Callbacks):
    def __init__(self, trainer_ref: list) -> None:
        self.ref = trainer_ref

    def on_update(self, epoch, update, n_updates):
        if (epoch, update) == (2, 3):
            with torch.no_grad():
                self.ref[0].model.W[0, 0] = float("nan")


def test_a_nan_parameter_stops_the_run_and_keeps_the_last_good_checkpoint(toy_npz, tmp_path):
    ref: list = []
    trainer = make_trainer(toy_npz, tmp_path / "run", callbacks=InjectNaN(ref), epochs=4)
    ref.append(trainer)
    with pytest.raises(TrainingDiverged, match="diverged in epoch 2"):
        trainer.train()
    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert payload["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in payload["model_state"].values())


def test_config_precedence_and_validation(tmp_path, toy_npz):
    cfg = tmp_path / "c.toml"
    cfg.write_text('n_hidden = 32\nlr = 0.01\nk = 2\n')
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "--data", str(toy_npz), "--config", str(cfg), "--k", "1", "--epochs", "1",
                            "--n-recurrent", "4", "--chunk", "12", "--device", "cpu", "--run-dir", str(tmp_path / "r"), "--json"])
    assert r.exit_code == 0, r.output + r.stderr
    out = json.loads(r.stdout)
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model"]["n_hidden"] == 32 and config["optim"]["lr"] == 0.01 and config["optim"]["k"] == 1
    assert out["epochs"] == 1 and Path(out["checkpoint"]).is_file() and Path(out["best_checkpoint"]).is_file()
    assert set(out["metrics"]) >= {"epoch", "train_monitor", "valid_monitor", "seconds", "frames_per_second"}

    cfg.write_text('n_hiden = 32\n')
    r = runner.invoke(cli, ["train", "--data", str(toy_npz), "--config", str(cfg)])
    assert r.exit_code == 2 and "n_hiden" in r.stderr
    cfg.write_text('n_hidden = "many"\n')
    r = runner.invoke(cli, ["train", "--data", str(toy_npz), "--config", str(cfg)])
    assert r.exit_code == 2 and "n_hidden" in r.stderr


def test_cuda_without_cuda_is_a_usage_error(toy_npz, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = CliRunner().invoke(cli, ["train", "--data", str(toy_npz), "--device", "cuda", "--run-dir", str(tmp_path / "r")])
    assert r.exit_code == 2 and "no CUDA" in r.stderr
    assert not (tmp_path / "r").exists()


def test_resume_refuses_changed_settings(toy_npz, tmp_path):
    r = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path), "--lr", "0.1"])
    assert r.exit_code == 2 and "--lr" in r.stderr and "only --epochs, --patience, --device" in r.stderr


def test_resume_takes_a_new_patience_and_config_json_says_it(toy_npz, tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli("train", "--data", toy_npz, "--epochs", "2", "--n-hidden", "16", "--n-recurrent", "8", "--chunk", "12",
                "--eval-every", "1", "--eval-frames", "20", "--patience", "1", "--device", "cpu", "--run-dir", run_dir)
    assert r.exit_code == 0, r.output
    r = run_cli("train", "--resume", run_dir, "--epochs", "3", "--patience", "4", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads((run_dir / "config.json").read_text())["optim"]["patience"] == 4
    assert run_cli("train", "--resume", run_dir).exit_code == 0  # config.json agrees with the checkpoint


@pytest.mark.parametrize("flags, engine", [([], "compiled kernels"), (["--dropout", "0.2"], "compiled kernels"),
                                           (["--backend", "torch"], "torch engine"),
                                           (["--model", "rnn-nade", "--dropout", "0.2"], "torch engine")])
def test_the_first_line_names_the_engine_that_fine_tunes(toy_npz, tmp_path, monkeypatch, flags, engine):
    """The NADE's kernels drop no units: its --dropout run fine-tunes on torch, and says so up front."""
    pytest.importorskip("numba")
    monkeypatch.delenv("RNNRBM_NO_NUMBA", raising=False)
    r = run_cli("train", "--data", toy_npz, "--epochs", "1", "--n-hidden", "16", "--n-recurrent", "8", "--chunk", "12",
                "--eval-every", "0", "--device", "cpu", "--run-dir", tmp_path / "run", *flags)
    assert r.exit_code == 0, r.output
    first = r.stderr.splitlines()[0]
    assert first.startswith("Run directory:") and f"(device cpu, {engine}," in first, first


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_a_real_train_process_leaves_a_loadable_checkpoint(toy_npz, tmp_path, signum, code):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "rnnrbm_cli", "train", "--data", str(toy_npz), "--epochs", "100000",
           "--n-hidden", "16", "--n-recurrent", "8", "--k", "1", "--chunk", "12", "--device", "cpu",
           "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "training never finished an epoch"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "rnnrbm train --resume" in err and "Traceback" not in err
    model, payload = load_model(run / "checkpoint.pt")
    assert payload["epoch"] >= 1
    # and the run resumes from it
    r = CliRunner().invoke(cli, ["train", "--resume", str(run), "--epochs", str(payload["epoch"] + 1), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["epochs"] == payload["epoch"] + 1


def test_eval_every_records_validation_ll_and_picks_best_by_it(toy_npz, tmp_path):
    trainer = make_trainer(toy_npz, tmp_path / "run", epochs=3, eval_every=2, eval_frames=40, eval_chains=5)
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "valid_ll" not in lines[0] and "valid_ll" in lines[2], "every eval_every epochs, and after the last"
    ll = max(lines[1]["valid_ll"], lines[2]["valid_ll"])
    best_epoch = 2 if lines[1]["valid_ll"] >= lines[2]["valid_ll"] else 3
    # 16 hidden units: log Z is exact, so this is a real log-likelihood, above the random model's
    assert -88 * np.log(2) < ll < 0 and lines[1]["valid_ll_stderr"] > 0
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == best_epoch and best["metrics"]["best"] == {"metric": "valid_ll", "value": ll, "epoch": best_epoch}


# -- run directories: settings round trip, ownership, names --------------------------------


def test_a_runs_config_json_reproduces_its_first_epoch(toy_npz, tmp_path):
    first = run_cli("train", "--data", toy_npz, "--epochs", "1", "--n-hidden", "16", "--n-recurrent", "8", "--k", "1",
                    "--chunk", "12", "--lr", "0.05", "--seed", "5", "--device", "cpu", "--run-dir", tmp_path / "a", "--json")
    assert first.exit_code == 0, first.stderr
    again = run_cli("train", "--config", tmp_path / "a" / "config.json", "--run-dir", tmp_path / "b", "--json")
    assert again.exit_code == 0, again.stderr
    a, b = (json.loads(r.stdout)["metrics"] for r in (first, again))
    assert (a["train_monitor"], a["train_cost"], a["valid_monitor"]) == (b["train_monitor"], b["train_cost"], b["valid_monitor"])
    wa, wb = (load_model(tmp_path / d / "checkpoint.pt")[0].state_dict() for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_config_files_may_name_sections_and_refuse_keys_in_the_wrong_one(tmp_path):
    from rnnrbm_cli.config import merge_settings
    from rnnrbm_cli.errors import RnnrbmUsageError

    cfg = tmp_path / "c.toml"
    cfg.write_text("[optim]\nlr = 0.01\n[model]\nn_hidden = 40\n")
    s = merge_settings("tutorial", cfg, {"k": 3, "lr": None})
    assert (s.optim.lr, s.model.n_hidden, s.optim.k, s.data.dt) == (0.01, 40, 3, 0.3)
    cfg.write_text("[optim]\nn_hidden = 40\n")
    with pytest.raises(RnnrbmUsageError, match="optim.n_hidden"):
        merge_settings(None, cfg, {})


def test_a_second_process_on_a_run_directory_is_refused_naming_the_holder(toy_npz, tmp_path):
    from rnnrbm_cli.rundir import RunLock

    with RunLock(tmp_path / "run", "rnnrbm train --the-first-one"):
        r = run_cli("train", "--data", toy_npz, "--epochs", "1", "--device", "cpu", "--run-dir", tmp_path / "run")
        line = one_sentence_error(r, 1)
        assert "in use by another training process" in line and f"pid {os.getpid()}" in line and "--the-first-one" in line
        assert not (tmp_path / "run" / "config.json").exists(), "the refused run wrote nothing"
    r = run_cli("train", "--data", toy_npz, "--epochs", "1", "--n-hidden", "8", "--n-recurrent", "4", "--device", "cpu",
                "--run-dir", tmp_path / "run")
    assert r.exit_code == 0, r.stderr
    with RunLock(tmp_path / "run"):
        r = run_cli("train", "--resume", tmp_path / "run", "--epochs", "2")
        assert "in use by another training process" in one_sentence_error(r, 1)


@pytest.mark.slow
def test_the_lock_dies_with_its_process_even_on_kill_9(tmp_path):
    from rnnrbm_cli.rundir import RunLock

    code = f"from rnnrbm_cli.rundir import RunLock; import time; l = RunLock({str(tmp_path / 'run')!r}); print('held', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        from rnnrbm_cli.errors import RnnrbmError

        with pytest.raises(RnnrbmError, match=f"pid {proc.pid}"):
            RunLock(tmp_path / "run")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    RunLock(tmp_path / "run").release()  # free again


def test_default_run_directories_started_in_the_same_second_differ(tmp_path):
    from rnnrbm_cli.rundir import new_run_dir

    made = {new_run_dir(tmp_path, "toy") for _ in range(3)}
    assert len(made) == 3 and all(p.is_dir() and not any(p.iterdir()) for p in made)


def test_zero_epochs_writes_the_initial_model_it_prints(toy_npz, tmp_path):
    r = run_cli("train", "--data", toy_npz, "--epochs", "0", "--n-hidden", "8", "--n-recurrent", "4", "--device", "cpu",
                "--run-dir", tmp_path / "r")
    assert r.exit_code == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path == tmp_path / "r" / "checkpoint.pt" and load_model(path)[1]["epoch"] == 0


def test_divergence_in_the_first_epoch_does_not_claim_a_checkpoint(toy_npz, tmp_path):
    ref: list = []

    class NaNAtOnce(Callbacks):
        def on_update(self, epoch, update, n_updates):
            with torch.no_grad():
                ref[0].model.W[0, 0] = float("nan")

    trainer = make_trainer(toy_npz, tmp_path / "run", callbacks=NaNAtOnce(), epochs=2)
    ref.append(trainer)
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        trainer.train()


def test_every_epoch_line_says_the_time_the_whole_run_has_left(toy_npz, tmp_path):
    result = run_cli("train", "--data", toy_npz, "--run-dir", tmp_path / "run", "--n-hidden", 8, "--n-recurrent", 4,
                     "--k", 1, "--chunk", 12, "--eval-every", 0, "--device", "cpu", "--backend", "torch",
                     "--pretrain-rbm-epochs", 1, "--pretrain-rnn-epochs", 1, "--epochs", 2)
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "train monitor" in line]  # CliRunner: no terminal
    assert [line.split("epoch")[1].split()[0] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(re.search(r"  ETA \d+ (s|min)$", line) for line in lines[:3]), lines
    assert "ETA" not in lines[3]  # nothing is left


def test_the_run_eta_counts_every_stage_left_at_its_own_pace():
    from rnnrbm_cli.cli_train import RunEta, _short_duration

    eta = RunEta([["rbm", 2], ["rnn", 3], ["fine", 10]])
    assert eta.left(0) is None  # nothing timed yet
    eta.done("rbm", 1, 4.0)
    assert eta.left(1) == 4.0 * (1 + 3 + 10)  # the stages to come at the pace of the epochs so far
    eta.done("rbm", 2, 2.0)
    eta.done("rnn", 3, 9.0)
    # rnn: 2 more at its own 9 s; fine: 10 at the mean of every epoch so far, (4 + 2 + 9) / 3
    assert eta.left(3) == 2 * 9.0 + 10 * 5.0
    for epoch in range(4, 16):
        eta.done("rnn" if epoch <= 5 else "fine", epoch, 60.0)
    assert eta.left(15) is None
    assert [_short_duration(s) for s in (44.6, 720, 3900)] == ["45 s", "12 min", "1 h 05 min"]


# -- data prepared in the mmap format (a .rnnrbm folder) -----------------------------------


def mmap_copy(npz: Path, folder: Path) -> Path:
    """The same data as ``npz``, written in the mmap format."""
    from rnnrbm_cli.prepared import write_prepared

    data = load_prepared(npz)
    meta = {k: v for k, v in data.meta.items() if k != "content_sha256"}
    return write_prepared(folder, data.splits, meta, format="mmap")


@pytest.mark.parametrize("options", [["--backend", "numba"], ["--backend", "torch"],
                                     ["--pretrain-rbm-epochs", "1", "--backend", "numba"],
                                     ["--model", "rnn-nade", "--backend", "numba"]])
def test_training_on_mmap_data_is_training_on_the_npz(toy_npz, tmp_path, options):
    folder = mmap_copy(toy_npz, tmp_path / "toy.rnnrbm")
    metrics = []
    for data in (toy_npz, folder):
        result = run_cli("train", "--data", data, "--epochs", "2", "--n-hidden", "16", "--n-recurrent", "8",
                         "--chunk", "12", "--batch", "4", "--eval-every", "0", "--device", "cpu",
                         "--run-dir", tmp_path / f"run-{data.suffix[1:]}", "--json", *options)
        assert result.exit_code == 0, result.output
        metrics.append(json.loads(result.stdout)["metrics"])
    for key in ("train_monitor", "train_cost", "valid_monitor"):
        assert metrics[0][key] == metrics[1][key], key
    # resume and evaluate find the folder again from the checkpoint
    run_dir = tmp_path / "run-rnnrbm"
    assert run_cli("train", "--resume", run_dir, "--epochs", "3", "--json").exit_code == 0
    result = run_cli("evaluate", run_dir / "best.pt", "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data"] == str(folder)


# About 290 MB of rolls: 1,650 training sequences of 2,000 frames.
BIG_SEQUENCES, BIG_FRAMES = 1650, 2000


def write_big_mmap(folder: Path) -> Path:
    """Chord progressions on disk in the mmap format, written a sequence at a time: the
    test holds one 2,008-frame roll, of which every sequence is a view."""
    from rnnrbm_cli.prepared import write_prepared

    from conftest import chord_sequence

    pattern = chord_sequence(np.random.default_rng(0), BIG_FRAMES + 8)
    sequences = [pattern[i % 8 : i % 8 + BIG_FRAMES] for i in range(BIG_SEQUENCES + 20)]
    splits = {"train": sequences[:BIG_SEQUENCES], "valid": sequences[-20:-10], "test": sequences[-10:]}
    meta = {"format": 1, "dataset": "big", "grid": "seconds", "dt": 0.25, "beat_division": None, "transpose": "none"}
    return write_prepared(folder, splits, meta, format="mmap")


@pytest.mark.slow
def test_training_on_mmap_data_holds_a_small_part_of_it(toy_npz, tmp_path):
    """An epoch over 290 MB of rolls (1.16 GB as the float32 frames an .npz is trained from)
    raises the child's peak RSS by less than a quarter of the rolls' size over the same run
    on the toy data; measured: about 60 MB (README)."""
    from conftest import run_measured

    big = write_big_mmap(tmp_path / "big.rnnrbm")
    size_mb = sum(f.stat().st_size for f in big.iterdir()) / 2**20
    assert size_mb > 280
    small = mmap_copy(toy_npz, tmp_path / "toy.rnnrbm")
    peaks = {}
    for name, data in (("toy", small), ("big", big)):
        result, peaks[name] = run_measured(
            tmp_path, "train", "--data", str(data), "--epochs", "1", "--n-hidden", "16", "--n-recurrent", "8",
            "--chunk", "100", "--batch", "64", "--eval-every", "0", "--device", "cpu", "--backend", "numba",
            "--run-dir", str(tmp_path / f"run-{name}"), "--json", timeout=180)
        assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["epochs"] == 1
    assert peaks["big"] - peaks["toy"] < size_mb / 4, (peaks, size_mb)
