"""The RNN-NADE and the four recurrences, against enumeration and plain loops; every
model x recurrence through train, checkpoint, sample and evaluate."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from rnnrbm_cli import models
from rnnrbm_cli.models.rbm import ModelConfig
from rnnrbm_cli.models.nade import RNNNADE

from conftest import run

RNNS = ("tanh", "sigmoid", "lstm", "gru")


def nade(n_visible=6, n_hidden=5, n_recurrent=4, rnn="tanh", scale=0.7, seed=0) -> RNNNADE:
    m = RNNNADE(ModelConfig(n_visible=n_visible, n_hidden=n_hidden, n_recurrent=n_recurrent, rnn=rnn,
                            learn_u0=True, model_type="rnn-nade"), torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # weights large enough that every part matters
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return m.double()


def all_frames(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


def loop_log_prob(m: RNNNADE, v: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> float:
    """log p(v) of one frame, note by note, written out as in Larochelle & Murray (2011)."""
    a = c.clone()
    total = 0.0
    for i in range(v.shape[0]):
        p = torch.sigmoid(b[i] + torch.sigmoid(a) @ m.V[i]).item()
        total += math.log(p) if v[i] == 1 else math.log(1 - p)
        a = a + v[i] * m.W[i]
    return total


def test_nade_probabilities_sum_to_one_over_every_frame():
    m = nade()
    b, c = torch.randn(6, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    vs = all_frames(6)
    logp = m.frame_log_prob(vs, b.expand(64, -1), c.expand(64, -1))
    assert float(logp.detach().exp().sum()) == pytest.approx(1.0, abs=1e-12)


def test_the_vectorised_conditional_equals_a_loop_over_notes():
    m = nade()
    g = torch.Generator().manual_seed(3)
    v = (torch.rand(10, 6, generator=g) < 0.5).double()
    b, c = torch.randn(10, 6, generator=g).double(), torch.randn(10, 5, generator=g).double()
    fast = m.frame_log_prob(v, b, c)
    for n in range(10):
        assert float(fast[n].detach()) == pytest.approx(loop_log_prob(m, v[n], b[n], c[n]), abs=1e-12)


@pytest.mark.parametrize("rnn", RNNS)
def test_the_exact_log_likelihood_of_a_sequence_equals_brute_force(rnn):
    # log p(v(1..T)) = sum_t log p(v(t) | v(<t)), each conditional normalised over all 2^6 frames.
    m = nade(rnn=rnn)
    g = torch.Generator().manual_seed(4)
    seq = (torch.rand(1, 5, 6, generator=g) < 0.4).double()
    res = m.nll_cost(seq)
    brute = 0.0
    for t in range(5):
        history = seq[:, :t]
        u = m.initial_state(1)
        for s in range(t):
            u = m.step(history[:, s], u)
        b, c = m.bv + u[0] @ m.Wuv, m.bh + u[0] @ m.Wuh
        scores = torch.tensor([loop_log_prob(m, f, b[0], c[0]) for f in all_frames(6)], dtype=torch.float64)
        own = loop_log_prob(m, seq[0, t], b[0], c[0])
        brute += own - float(torch.logsumexp(scores, 0))
    assert -float(res.cost.detach()) * 5 == pytest.approx(brute, abs=1e-9)


def test_ancestral_samples_follow_the_exact_probabilities():
    m = nade(n_visible=4, n_hidden=3, scale=1.0).float()
    b, c = torch.randn(4), torch.randn(3)
    v, _ = m.sample_frames(b.expand(40000, -1), c.expand(40000, -1), torch.Generator().manual_seed(5))
    codes = (v * 2.0 ** torch.arange(3, -1, -1)).sum(1).long()
    freq = torch.bincount(codes, minlength=16).double() / 40000
    exact = m.frame_log_prob(all_frames(4).float(), b.expand(16, -1), c.expand(16, -1)).double().exp()
    torch.testing.assert_close(freq, exact, atol=0.01, rtol=0)


@pytest.mark.parametrize("rnn", RNNS)
@pytest.mark.parametrize("model_type", models.model_types())
def test_each_recurrence_equals_a_plain_loop_and_its_step(model_type, rnn):
    cls = models.record(model_type).model_class
    m = cls(ModelConfig(n_visible=6, n_hidden=5, n_recurrent=4, rnn=rnn, learn_u0=True,
                        model_type=model_type), torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    v = (torch.rand(2, 7, 6, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    out = m.recurrence(v)
    act = {"tanh": torch.tanh, "sigmoid": torch.sigmoid}
    state = m.initial_state(2)
    for t in range(7):
        if rnn in act:  # the formula itself, not the module's step
            expected = act[rnn](m.bu + state[0] @ m.Wuu + v[:, t] @ m.Wvu)
            state = (expected,)
        else:
            state = m.step(v[:, t], state)
            expected = state[0]
        torch.testing.assert_close(out[:, t], expected, rtol=1e-10, atol=1e-12)
    if rnn in ("lstm", "gru"):  # torch's cell, one step at a time, from its own weights
        cellcls = torch.nn.LSTMCell if rnn == "lstm" else torch.nn.GRUCell
        cell = cellcls(6, 4).double()
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(cell, name).copy_(getattr(m.rnn, name + "_l0"))
        h = m.u0.expand(2, -1)
        hc = (h, torch.zeros_like(h))
        for t in range(7):
            if rnn == "lstm":
                hc = cell(v[:, t], hc)
                h = hc[0]
            else:
                h = cell(v[:, t], h)
            torch.testing.assert_close(out[:, t], h, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("model, rnn", [("rnn-nade", "tanh"), ("rnn-nade", "gru"), ("rnn-nade", "lstm"),
                                        ("rnn-nade", "sigmoid"), ("rnn-rbm", "sigmoid"), ("rnn-rbm", "lstm"),
                                        ("rnn-rbm", "gru")])
def test_every_model_and_recurrence_trains_resumes_samples_and_evaluates(toy_npz, tmp_path, model, rnn):
    common = ["--data", toy_npz, "--model", model, "--rnn", rnn, "--n-hidden", "12", "--n-recurrent", "6",
              "--chunk", "12", "--batch", "4", "--optimizer", "adam", "--lr", "0.01", "--device", "cpu"]
    r = run("train", *common, "--epochs", "2", "--run-dir", tmp_path / "run", "--json")
    assert r.exit_code == 0, r.stderr
    r = run("train", "--resume", tmp_path / "run", "--epochs", "3", "--json")
    assert r.exit_code == 0, r.stderr
    ckpt = json.loads(r.stdout)["best_checkpoint"]
    payload = torch.load(ckpt, weights_only=True)
    assert payload["model_type"] == model and payload["model_config"]["rnn"] == rnn
    r = run("sample", ckpt, tmp_path / "s.mid", "--num", "2", "--steps", "8", "--k", "2", "--seed", "1", "--json")
    assert r.exit_code == 0, r.stderr
    assert len(json.loads(r.stdout)["files"]) == 2
    r = run("evaluate", ckpt, "--split", "test", "--samples", "4", "--gibbs", "3", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert -61.0 < res["log_likelihood"] < 0 and 0 <= res["frame_accuracy"] <= 100
    assert res["method"] == "exact"  # NADE: always; RBM: 12 hidden units are enumerated


def test_nade_learns_the_toy_data_exactly(toy_npz, tmp_path):
    from conftest import make_trainer

    t = make_trainer(toy_npz, tmp_path / "run", model_type="rnn-nade", epochs=8, batch=4, optimizer="adam", lr=0.02,
                     n_hidden=24, n_recurrent=16)
    t.train()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # the monitor is the exact validation LL; chords repeat, so it must beat independent notes by far
    assert lines[-1]["valid_monitor"] > -4.0 > lines[0]["valid_monitor"] - 10
    assert lines[-1]["valid_monitor"] > lines[0]["valid_monitor"]
    assert np.isfinite(lines[-1]["train_cost"])
