"""The paper's training method: pretraining stages, per-part learning rates, schedules,
clipping, early stopping, and resume in the middle of any stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rnnrbm_cli.datasets import load_prepared
from rnnrbm_cli.models.rbm import RNNRBM, ModelConfig, free_energy
from rnnrbm_cli.api import resume_training
from rnnrbm_cli.train import Callbacks, StopFlag, TrainingInterrupted

from conftest import make_trainer
from test_train import StopAt, params


def metrics_of(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_rnn_prediction_gradient_equals_autograd_of_a_plain_loop():
    m = RNNRBM(ModelConfig(n_visible=6, n_hidden=5, n_recurrent=4, learn_u0=True), torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    v = (torch.rand(2, 7, 6, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    lengths = torch.tensor([7, 4])
    m.zero_grad()
    m.rnn_prediction_cost(v, lengths).cost.backward()
    fast = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in m.named_parameters()}

    # the same cost, written as a loop over sequences and frames, through plain autograd
    m.zero_grad(set_to_none=True)
    total, frames = 0.0, 0
    for b in range(2):
        u = m.u0
        for t in range(int(lengths[b])):
            y = torch.sigmoid(m.bv + u @ m.Wuv)  # the prediction of frame t from u(t-1)
            total = total - (v[b, t] * torch.log(y) + (1 - v[b, t]) * torch.log(1 - y)).sum()
            u = torch.tanh(m.bu + u @ m.Wuu + v[b, t] @ m.Wvu)
            frames += 1
    (total / frames).backward()
    for n, p in m.named_parameters():
        if n in ("W", "bh", "Wuh"):  # the RBM's own parameters play no part
            assert not fast[n].any(), n
        else:
            torch.testing.assert_close(fast[n], p.grad, rtol=1e-10, atol=1e-12, msg=n)


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_rbm_pretraining_on_shuffled_frames_makes_data_frames_more_probable(toy_npz, tmp_path, backend):
    t = make_trainer(toy_npz, tmp_path / "run", epochs=0, pretrain_rbm_epochs=6, pretrain_rbm_lr=0.1, k=1,
                     backend=backend, chunk=12)
    before = params(t)
    t.train()
    lines = metrics_of(tmp_path / "run")
    assert [m["stage"] for m in lines] == ["rbm"] * 6
    after = params(t)
    for name in ("Wuh", "Wuv", "Wvu", "Wuu", "bu"):  # only the RBM moves
        assert torch.equal(before[name], after[name]), name
    m = t.model
    test = torch.from_numpy(np.concatenate(load_prepared(toy_npz).splits["test"])).float()
    g = torch.Generator().manual_seed(0)
    random = torch.zeros_like(test)
    for i in range(len(test)):
        random[i, torch.randperm(48, generator=g)[:3] + 20] = 1.0
    with torch.no_grad():
        f_true, f_rand = free_energy(test, m.W, m.bv, m.bh), free_energy(random, m.W, m.bv, m.bh)
    assert (f_true < f_rand).float().mean() > 0.9


def test_rnn_pretraining_moves_the_rnn_and_bv_only_and_its_monitor_is_the_rnns_likelihood(toy_npz, tmp_path):
    t = make_trainer(toy_npz, tmp_path / "run", epochs=0, pretrain_rnn_epochs=8, pretrain_rnn_lr=0.01, learn_u0=True, n_recurrent=16)
    before = params(t)
    t.train()
    after = params(t)
    for name in ("W", "bh", "Wuh"):
        assert torch.equal(before[name], after[name]), name
    for name in ("bv", "Wuv", "Wvu", "Wuu", "bu", "u0"):
        assert not torch.equal(before[name], after[name]), name
    lines = metrics_of(tmp_path / "run")
    assert [m["stage"] for m in lines] == ["rnn"] * 8
    # a real log-likelihood: above 88 independent fair coins, and improving
    assert -88 * np.log(2) < lines[0]["valid_monitor"] < lines[-1]["valid_monitor"] < 0


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_parameter_groups_get_their_own_learning_rates(toy_npz, tmp_path, backend):
    t = make_trainer(toy_npz, tmp_path / "run", epochs=1, lr=0.05, lr_rbm=1e-30, lr_rnn=0.05, backend=backend)
    assert [g["lr"] for g in t.optimizer.param_groups] == [1e-30, 0.05]
    before = params(t)
    t.train()
    after = params(t)
    for name in ("W", "bv", "bh"):
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-20)
    for name in ("Wuh", "Wuv", "Wvu", "Wuu", "bu"):
        assert not torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_the_exponential_schedule_decays_the_step_on_every_engine(toy_npz, tmp_path, backend):
    t = make_trainer(toy_npz, tmp_path / "run", epochs=3, lr=0.04, lr_schedule="exp", lr_decay=0.5, backend=backend)
    t.train()
    assert [m["lr"] for m in metrics_of(tmp_path / "run")] == [0.04, 0.02, 0.01]
    assert t.optimizer.param_groups[0]["lr"] == 0.005


def test_gradient_clipping_bounds_every_step(toy_npz, tmp_path):
    norms = []

    class Watch(Callbacks):
        def on_update(self, epoch, update, n_updates):
            norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in t.model.parameters()]))))

    t = make_trainer(toy_npz, tmp_path / "run", epochs=1, clip_grad=0.01, callbacks=Watch())
    t.train()
    assert norms and max(norms) <= 0.01 * (1 + 1e-5)


def scripted_validation(monkeypatch, values):
    """Replace the validation LL estimate by a scripted sequence (the mechanism is tested
    elsewhere; here what the loop does with it)."""
    from rnnrbm_cli import train

    it = iter(values)
    monkeypatch.setattr(train.Trainer, "valid_log_likelihood", lambda self: {"valid_ll": next(it), "valid_ll_stderr": 0.1})


def test_early_stopping_stops_and_keeps_the_best(toy_npz, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [-9.0, -7.0, -7.5, -8.0, -6.0, -5.0])
    t = make_trainer(toy_npz, tmp_path / "run", epochs=6, eval_every=1, patience=2)
    t.train()
    lines = metrics_of(tmp_path / "run")
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4] and lines[-1]["stopped_early"]
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["epoch"] == 2 and best["metrics"]["best"]["value"] == -7.0


def test_a_run_that_stopped_early_goes_on_when_resumed_with_more_patience(toy_npz, tmp_path, monkeypatch):
    from rnnrbm_cli import train

    script = [-9.0, -7.0, -7.5, -8.0, -6.0, -5.0, -5.5]  # by epoch (self.epoch counts the finished ones): a patience of 2 stops at 4, of 3 goes on
    monkeypatch.setattr(train.Trainer, "valid_log_likelihood",
                        lambda self: {"valid_ll": script[self.epoch], "valid_ll_stderr": 0.1})
    make_trainer(toy_npz, tmp_path / "whole", epochs=7, eval_every=1, patience=3).train()
    make_trainer(toy_npz, tmp_path / "part", epochs=7, eval_every=1, patience=2).train()
    assert [m["epoch"] for m in metrics_of(tmp_path / "part")] == [1, 2, 3, 4]

    again = resume_training(tmp_path / "part", torch.device("cpu"))  # its own patience: stays stopped
    again.train()
    assert again.epoch == 4
    resumed = resume_training(tmp_path / "part", torch.device("cpu"), patience=3)
    resumed.train()
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    def learned(run):  # what each epoch learned, not when or how fast, nor the old stop
        return [{k: v for k, v in m.items() if k not in ("seconds", "frames_per_second", "time", "stopped_early")}
                for m in metrics_of(tmp_path / run)]

    assert resumed.epoch == 7 and learned("part") == learned("whole")
    for k, v in whole["model_state"].items():
        assert torch.equal(params(resumed)[k], v), k
    best = torch.load(tmp_path / "part" / "best.pt", weights_only=True)
    assert best["epoch"] == 6 and json.loads((tmp_path / "part" / "config.json").read_text())["optim"]["patience"] == 3
    # fewer estimates of patience than it has waited: it stops again at once
    assert resume_training(tmp_path / "part", torch.device("cpu"), epochs=9, patience=1).train() is not None
    assert [m["epoch"] for m in metrics_of(tmp_path / "part")][-1] == 7


def test_the_plateau_schedule_decays_when_validation_stalls(toy_npz, tmp_path, monkeypatch):
    scripted_validation(monkeypatch, [-9.0, -8.0, -8.5, -8.5, -8.5, -8.5])
    t = make_trainer(toy_npz, tmp_path / "run", epochs=6, eval_every=1, patience=0, lr=0.04, lr_schedule="plateau",
                     lr_decay=0.5, lr_patience=1)
    t.train()
    lrs = [m["lr"] for m in metrics_of(tmp_path / "run")]
    # decayed once more than lr_patience estimates have not improved: after epochs 4 and 6
    assert lrs == [0.04, 0.04, 0.04, 0.04, 0.02, 0.02] and t.optimizer.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("where", [(1, 3), (3, 5), (5, 2)])  # inside the rbm, rnn and fine stages
def test_resume_in_the_middle_of_any_stage_equals_an_uninterrupted_run(toy_npz, tmp_path, backend, where):
    kw = dict(epochs=2, pretrain_rbm_epochs=2, pretrain_rnn_epochs=2, backend=backend, lr_schedule="exp", lr_decay=0.9,
              optimizer="sgd", momentum=0.5, clip_grad=5.0, learn_u0=True, ema=0.7)
    full = make_trainer(toy_npz, tmp_path / "full", **kw)
    full.train()
    stop = StopFlag()
    part = make_trainer(toy_npz, tmp_path / "part", callbacks=StopAt(stop, *where), stop=stop, **kw)
    with pytest.raises(TrainingInterrupted):
        part.train()
    resumed = resume_training(tmp_path / "part", torch.device("cpu"))
    resumed.train()
    for k, v in params(full).items():
        assert torch.equal(params(resumed)[k], v), k
    assert all(torch.equal(a, b) for a, b in zip(full.average.values, resumed.average.values))
    assert [m["stage"] for m in metrics_of(tmp_path / "part")] == ["rbm", "rbm", "rnn", "rnn", "fine", "fine"]


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_the_parameter_average_is_the_plain_recurrence_and_what_validation_and_best_pt_see(
        toy_npz, tmp_path, backend, monkeypatch):
    from rnnrbm_cli import evaluate

    decay, seen, trace = 0.8, [], []

    class Record(Callbacks):
        def on_epoch_start(self, epoch, n_updates, first_update):
            if epoch == 2:  # pretraining (epoch 1) leaves the average alone
                trace.append([p.detach().clone() for p in t.model.parameters()])

        def on_update(self, epoch, update, n_updates):
            if epoch >= 2:
                trace.append([p.detach().clone() for p in t.model.parameters()])

    real = evaluate.log_likelihood

    def watched(model, *a, **kw):
        seen.append(all(torch.equal(p, e) for p, e in zip(model.parameters(), t.average.values)))
        return real(model, *a, **kw)

    monkeypatch.setattr(evaluate, "log_likelihood", watched)
    t = make_trainer(toy_npz, tmp_path / "run", pretrain_rnn_epochs=1, epochs=2, eval_every=1, eval_chains=4,
                     eval_betas=3, eval_frames=20, ema=decay, backend=backend, callbacks=Record())
    t.train()
    # a(0) = the parameters where fine-tuning starts; a <- decay a + (1 - decay) p after each update
    average = trace[0]
    for step in trace[1:]:
        average = [decay * a + (1 - decay) * p for a, p in zip(average, step)]
    for a, e in zip(average, t.average.values):
        torch.testing.assert_close(e, a, rtol=1e-5, atol=1e-6)
    assert seen == [True, True]  # both validation estimates measured the average ...
    raw = [p.detach() for p in t.model.parameters()]
    assert not all(torch.equal(p, e) for p, e in zip(raw, t.average.values))  # ... and the model got its own back
    names = [name for name, _ in t.model.named_parameters()]
    last = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(last["model_state"][n], p) for n, p in zip(names, raw))
    assert all(torch.equal(last["ema_state"][n], e) for n, e in zip(names, t.average.values))
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert all(torch.equal(best["model_state"][n], best["ema_state"][n]) for n in names)
    if best["epoch"] == 3:  # the last epoch: the average it holds is the trainer's
        assert all(torch.equal(best["model_state"][n], e) for n, e in zip(names, t.average.values))


def test_a_run_without_an_average_keeps_none(toy_npz, tmp_path):
    t = make_trainer(toy_npz, tmp_path / "run", epochs=1)
    t.train()
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert t.average.values is None and best["ema_state"] is None
    assert all(torch.equal(best["model_state"][n], p) for n, p in t.model.named_parameters())


def test_settings_of_the_method_are_checked():
    from rnnrbm_cli.config import resolve_settings
    from rnnrbm_cli.errors import RnnrbmUsageError

    for bad in ({"lr_schedule": "cosine"}, {"lr_decay": 0}, {"lr_rbm": -1.0}, {"clip_grad": -1.0},
                {"pretrain_rnn_epochs": -1}, {"lr_rnn": "fast"}, {"eval_method": "exact"}, {"ema": 1.0},
                {"ema": -0.1}):
        with pytest.raises(RnnrbmUsageError):
            resolve_settings(bad)
    assert resolve_settings({"lr_rbm": 1}).optim.lr_rbm == 1.0


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_validation_by_reverse_annealing_errs_below_forward_and_picks_best(toy_npz, tmp_path, backend):
    # The same model, the same validation frames: RAISE errs low where AIS errs high, so at
    # very few betas RAISE's estimate is below AIS's.
    kw = dict(epochs=2, eval_every=1, eval_chains=8, eval_betas=3, eval_frames=40, backend=backend, n_hidden=30)
    runs = {m: make_trainer(toy_npz, tmp_path / m, eval_method=m, **kw) for m in ("ais", "raise")}
    for t in runs.values():
        t.train()
    lls = {m: [r["valid_ll"] for r in metrics_of(tmp_path / m)] for m in runs}
    assert all(len(v) == 2 for v in lls.values())
    assert all(r < a for r, a in zip(lls["raise"], lls["ais"])), lls
    assert json.loads((tmp_path / "raise" / "config.json").read_text())["eval"]["eval_method"] == "raise"


def test_the_paper_preset_adapts_to_the_data_and_flags_still_win():
    from rnnrbm_cli.config import merge_settings

    jsb = merge_settings("paper", None, {"data": "jsb-chorales"})
    notts = merge_settings("paper", None, {"data": "nottingham"})
    piano = merge_settings("paper", None, {"data": "piano-midi.de"})
    muse = merge_settings("paper", None, {"data": "musedata"})
    assert (jsb.optim.lr, jsb.optim.epochs, jsb.eval.eval_method) == (0.003, 600, "ais")
    assert (notts.optim.lr, notts.optim.epochs, notts.eval.eval_method, notts.eval.eval_betas) == (0.0003, 300, "raise", 1000)
    assert (notts.optim.ema, jsb.optim.ema, jsb.optim.dropout) == (0.99995, 0.9995, 0.2)
    assert notts.optim.dropout == piano.optim.dropout == muse.optim.dropout == 0.0  # JSB's alone overfits early
    assert (notts.optim.lr_schedule, jsb.optim.lr_schedule) == ("constant", "plateau")
    assert (notts.model.n_hidden, jsb.model.n_hidden) == (200, 150)
    assert notts.optim.pretrain_rnn_epochs == jsb.optim.pretrain_rnn_epochs == 40  # the same pretraining
    assert merge_settings("paper", None, {"data": "nottingham", "lr": 0.001}).optim.lr == 0.001
    def recipe(s):
        return (s.model.n_hidden, s.optim.lr, s.optim.epochs, s.optim.ema, s.eval.eval_method, s.optim.augment_transpose,
                s.optim.weight_decay)

    # One recipe for the large datasets: MuseData's with more epochs, Piano-midi.de's with 300
    # units and shifted pieces, Nottingham's and MuseData's with weight decay (Piano-midi.de's untried)
    assert recipe(muse) == (200, 0.0003, 500, 0.99995, "raise", 0, 0.03)
    assert recipe(piano) == (300, 0.0003, 1000, 0.99995, "raise", 3, 0.0)
    assert recipe(notts) == (200, 0.0003, 300, 0.99995, "raise", 0, 0.05)
    assert jsb.optim.weight_decay == 0.0


def test_the_tutorials_plain_sgd_on_small_data_says_so(toy_npz, tmp_path):
    messages = []

    class Say(Callbacks):
        def on_message(self, text):
            messages.append(text)

    make_trainer(toy_npz, tmp_path / "a", epochs=1, optimizer="sgd", lr=0.001, callbacks=Say()).train()
    assert any("too few" in m and "--preset paper" in m for m in messages)
    messages.clear()
    make_trainer(toy_npz, tmp_path / "b", epochs=1, optimizer="adam", lr=0.001, callbacks=Say()).train()
    assert not any("too few" in m for m in messages)


def test_resume_refuses_an_average_that_does_not_fit_the_model(toy_npz, tmp_path):
    from rnnrbm_cli.checkpoint import save_checkpoint
    from rnnrbm_cli.errors import RnnrbmError

    make_trainer(toy_npz, tmp_path / "run", epochs=1, ema=0.9).train()
    path = tmp_path / "run" / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    payload["ema_state"]["W"] = torch.zeros(3, 3)
    save_checkpoint(path, payload)
    with pytest.raises(RnnrbmError, match="ema_state does not fit the model: W is"):
        resume_training(tmp_path / "run", torch.device("cpu"), epochs=2)


def test_train_ema_from_the_command_line_writes_the_average_into_best_pt(toy_npz, tmp_path):
    from conftest import run

    run_dir = tmp_path / "run"
    r = run("train", "--data", toy_npz, "--epochs", "2", "--ema", "0.5", "--run-dir", run_dir, "--n-hidden", "8",
            "--n-recurrent", "4", "--k", "1", "--chunk", "12", "--eval-every", "0", "--device", "cpu", "--seed", "1")
    assert r.exit_code == 0, r.stderr
    assert json.loads((run_dir / "config.json").read_text())["optim"]["ema"] == 0.5
    best = torch.load(run_dir / "best.pt", weights_only=True)
    last = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(best["model_state"][n], a) for n, a in best["ema_state"].items())
    assert not torch.equal(last["model_state"]["W"], last["ema_state"]["W"])
    r = run("sample", run_dir / "best.pt", tmp_path / "out.mid", "--steps", "8", "--device", "cpu")
    assert r.exit_code == 0, r.stderr


def test_the_rnn_nade_preset_averages_everywhere_steps_larger_on_nottingham_and_shifts_all_but_nottingham():
    from rnnrbm_cli.config import merge_settings

    def paper(data, **flags):
        return merge_settings("paper", None, {"data": data, "model_type": "rnn-nade", **flags}).optim

    assert all(paper(d).ema == 0.9995 for d in ("jsb-chorales", "nottingham", "piano-midi.de", "musedata"))
    assert (paper("nottingham").batch, paper("nottingham").lr) == (4, 0.002)
    assert (paper("jsb-chorales").batch, paper("jsb-chorales").lr) == (1, 0.001)
    assert paper("nottingham", ema=0.0).ema == 0.0
    shifts = {d: (paper(d).augment_transpose, paper(d).patience, paper(d).epochs)
              for d in ("jsb-chorales", "nottingham", "piano-midi.de", "musedata")}
    assert shifts == {"jsb-chorales": (3, 20, 300), "nottingham": (0, 10, 150), "piano-midi.de": (3, 20, 300),
                      "musedata": (3, 20, 300)}


def test_the_rnn_preset_knows_every_dataset():
    from rnnrbm_cli.config import merge_settings

    notts = merge_settings("paper", None, {"data": "nottingham", "model_type": "rnn"}).optim
    assert (notts.batch, notts.lr, notts.dropout) == (4, 0.003, 0.0)
    jsb = merge_settings("paper", None, {"data": "jsb-chorales", "model_type": "rnn"}).optim
    assert (jsb.batch, jsb.lr, jsb.dropout) == (1, 0.003, 0.3)
    muse_settings = merge_settings("paper", None, {"data": "musedata", "model_type": "rnn"})
    muse = muse_settings.optim
    assert (muse.batch, muse.lr, muse.dropout, muse.augment_transpose, muse.ema, muse.clip_grad) == (1, 0.003, 0.1, 3, 0.9995, 1.0)
    assert muse_settings.model.n_recurrent == 150
    assert merge_settings("paper", None, {"data": "jsb-chorales", "model_type": "rnn"}).model.n_recurrent == 100
    piano = merge_settings("paper", None, {"data": "piano-midi.de", "model_type": "rnn"}).optim
    assert (piano.lr, piano.dropout, piano.augment_transpose, piano.ema, piano.clip_grad) == (0.003, 0.3, 3, 0.9995, 1.0)
    assert (piano.patience, piano.epochs, muse.patience, muse.epochs) == (20, 300, 20, 300)
    assert (muse.chunk, piano.chunk, jsb.chunk, notts.chunk) == (300, 100, 100, 100)
    assert jsb.augment_transpose == notts.augment_transpose == jsb.ema == notts.ema == jsb.clip_grad == notts.clip_grad == 0
    assert merge_settings("paper", None, {"data": "nottingham", "model_type": "rnn", "batch": 2}).optim.batch == 2
