"""The RNN-NADE's compiled kernels against the torch reference: the same log-likelihood and
gradients (float64 autograd), exact sampling and note marginals against enumeration, the
same training result, and results that do not depend on the thread count.

The first run on a machine compiles the kernels (about half a minute on two cores); numba
caches the machine code, so later runs load it in about a second.
"""

from __future__ import annotations

import itertools
import json

import numba
import numpy as np
import pytest
import torch
from conftest import make_trainer

from rnnrbm_cli import engines
from rnnrbm_cli.chunks import ChunkedData
from rnnrbm_cli.engines import numba_nade
from rnnrbm_cli.engines.torch_path import TorchObjective
from rnnrbm_cli.evaluate import evaluate
from rnnrbm_cli.models.base import ModelConfig
from rnnrbm_cli.models.nade import RNNNADE

RNNS = ("tanh", "sigmoid", "lstm", "gru")


def nade(n_visible=88, n_hidden=37, n_recurrent=6, rnn="tanh", scale=0.5, seed=0) -> RNNNADE:
    """A float32 RNN-NADE with weights large enough that every part of the gradient matters."""
    m = RNNNADE(ModelConfig(n_visible=n_visible, n_hidden=n_hidden, n_recurrent=n_recurrent, rnn=rnn,
                            learn_u0=True, model_type="rnn-nade"), torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return m


def frames(n, n_visible, p, seed) -> torch.Tensor:
    """n frames, ~p of their notes on; the first silent, the second with every note on."""
    v = (torch.rand(n, n_visible, generator=torch.Generator().manual_seed(seed)) < p).float()
    v[0], v[1] = 0.0, 1.0
    return v


def all_frames(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def reference(m: RNNNADE, v, b, c):
    """log p and the gradients of sum_f g_f log p_f (b, c, W, V) by float64 autograd."""
    md = RNNNADE(m.config).double()
    md.load_state_dict(m.state_dict())
    b64, c64 = b.double().requires_grad_(), c.double().requires_grad_()
    logp = md.frame_log_prob(v.double(), b64, c64)
    g = torch.linspace(-1.0, 2.0, len(v), dtype=torch.float64)
    (logp * g).sum().backward()
    return logp.detach(), g.float(), {"b": b64.grad, "c": c64.grad, "W": md.W.grad, "V": md.V.grad}


def compiled(m: RNNNADE, v, b, c, g):
    b, c = b.clone().requires_grad_(), c.clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    logp = numba_nade.frame_log_prob(m, v, b, c)
    (logp * g).sum().backward()
    return logp.detach(), {"b": b.grad, "c": c.grad, "W": m.W.grad, "V": m.V.grad}


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, name: str, rtol=1e-4) -> None:
    scale = expected.abs().max().item()
    assert scale > 0, f"{name} gets no gradient in this test"
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("n_visible, n_hidden, p", [(88, 150, 0.05), (88, 37, 0.3), (6, 5, 0.5), (88, 1, 0.05)])
def test_log_likelihood_and_gradients_equal_float64_autograd(n_visible, n_hidden, p):
    m = nade(n_visible, n_hidden)
    v = frames(45, n_visible, p, seed=n_hidden)
    gen = torch.Generator().manual_seed(7)
    b, c = torch.randn(45, n_visible, generator=gen), torch.randn(45, n_hidden, generator=gen)
    logp_ref, g, grads_ref = reference(m, v, b, c)
    logp, grads = compiled(m, v, b, c, g)
    torch.testing.assert_close(logp.double(), logp_ref, rtol=1e-5, atol=1e-4)
    for name in ("b", "c", "W", "V"):
        assert_close_scaled(grads[name], grads_ref[name], name)


def test_a_frame_with_no_note_on_gives_w_no_gradient_and_all_on_gives_every_row_but_the_last():
    m = nade(8, 5)
    b, c = torch.randn(1, 8), torch.randn(1, 5)
    _, grads = compiled(m, torch.zeros(1, 8), b, c, torch.ones(1))
    assert torch.equal(grads["W"], torch.zeros(8, 5))
    _, grads = compiled(m, torch.ones(1, 8), b, c, torch.ones(1))
    assert (grads["W"][:-1].abs().sum(1) > 0).all() and torch.equal(grads["W"][-1], torch.zeros(5))


@pytest.mark.parametrize("rnn, learn_u0, lengths", [*((rnn, True, (9, 5)) for rnn in RNNS), ("tanh", False, (9, 5)),
                                                    ("tanh", True, (14,)), ("tanh", False, (3, 1, 10))])
def test_a_training_step_equals_the_torch_path_for_every_recurrence(rnn, learn_u0, lengths):
    # Chunks of different lengths: the padding of the shorter must not count. tanh is the
    # closed form (compiled RNN and BPTT), the others autograd through the kernels.
    m = nade(n_hidden=13, rnn=rnn, scale=0.3)
    if not learn_u0:
        m = RNNNADE(ModelConfig(n_visible=88, n_hidden=13, n_recurrent=6, rnn=rnn, model_type="rnn-nade"))
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    rng = np.random.default_rng(0)
    data = ChunkedData([(rng.random((n, 88)) < 0.06).astype(np.float32) for n in lengths], 12, torch.device("cpu"))
    ids = torch.arange(len(data.chunks))
    results = {}
    for name, objective in (("torch", TorchObjective(m, data, 0, None)), ("numba", numba_nade.NumbaNADE(m, data, 0, None))):
        m.zero_grad(set_to_none=True)
        res = objective.gradients(ids)
        results[name] = res, {k: p.grad.clone() for k, p in m.named_parameters()}
    (ref, ref_grads), (res, grads) = results["torch"], results["numba"]
    assert res.n_frames == ref.n_frames == sum(lengths)
    assert float(res.cost) == pytest.approx(float(ref.cost), rel=1e-5)
    for name, grad in ref_grads.items():
        assert_close_scaled(grads[name], grad.double(), name, rtol=1e-3)


def test_exact_evaluation_equals_the_torch_path():
    m = nade(n_hidden=20, scale=0.3).eval()
    rng = np.random.default_rng(1)
    seqs = [(rng.random((n, 88)) < 0.05).astype(np.float32) for n in (30, 17)]
    ours = evaluate(m, seqs, samples=200, generator=torch.Generator().manual_seed(0), backend="numba")
    ref = evaluate(m, seqs, samples=200, generator=torch.Generator().manual_seed(0), backend="torch")
    assert ours["backend"] == "numba" and ref["backend"] == "torch" and ours["method"] == "exact"
    assert ours["log_likelihood"] == pytest.approx(ref["log_likelihood"], abs=1e-4)
    assert ours["frame_accuracy"] == pytest.approx(ref["frame_accuracy"], abs=1.0)  # 200 samples each


def test_note_marginals_equal_enumeration():
    # marginal of note i = sum over all 16 frames of p(v) v_i
    m = nade(n_visible=4, n_hidden=3, scale=1.0)
    gen = torch.Generator().manual_seed(2)
    b, c = torch.randn(3, 4, generator=gen), torch.randn(3, 3, generator=gen)
    vs = all_frames(4)
    exact = torch.stack([(m.frame_log_prob(vs, b[f].expand(16, -1), c[f].expand(16, -1)).detach().double().exp()[:, None]
                          * vs.double()).sum(0) for f in range(3)])
    p = engines.exact_for(m, "numba").marginals(b, c, 20000, torch.Generator().manual_seed(3))
    torch.testing.assert_close(p.double(), exact, atol=0.005, rtol=0)


def test_ancestral_samples_follow_the_exact_probabilities():
    m = nade(n_visible=4, n_hidden=3, scale=1.0)
    gen = torch.Generator().manual_seed(5)
    b, c = torch.randn(4, generator=gen), torch.randn(3, generator=gen)
    n = 40000
    v = np.empty((n, 4), np.float32)
    numba_nade._kernels().sample(np.tile(b.numpy(), (n, 1)), np.tile(c.numpy(), (n, 1)), m.W.detach().numpy(),
                                 m.V.detach().numpy(), 1, np.uint64(11), 0, 8, v, np.empty_like(v))
    codes = (torch.from_numpy(v) * 2.0 ** torch.arange(3, -1, -1)).sum(1).long()
    freq = torch.bincount(codes, minlength=16).double() / n
    exact = m.frame_log_prob(all_frames(4), b.expand(16, -1), c.expand(16, -1)).detach().double().exp()
    torch.testing.assert_close(freq, exact, atol=0.01, rtol=0)


def test_generate_samples_each_frame_given_its_history():
    # The second frame's distribution given a fixed first frame (the primer), by enumeration.
    m = nade(n_visible=4, n_hidden=3, n_recurrent=3, scale=1.0)
    primer = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    sampler = engines.sampler_for(m, "numba")
    assert sampler.backend == "numba"
    out = sampler.generate(30000, 2, 0, primer, torch.Generator().manual_seed(4))
    assert out.shape == (30000, 3, 4) and torch.equal(out[:, 0], primer.expand(30000, -1))
    u = m.run_recurrence(primer[None])[1][0]
    b, c = (m.bv + u @ m.Wuv).detach(), (m.bh + u @ m.Wuh).detach()
    codes = (out[:, 1] * 2.0 ** torch.arange(3, -1, -1)).sum(1).long()
    freq = torch.bincount(codes, minlength=16).double() / 30000
    exact = m.frame_log_prob(all_frames(4), b.expand(16, -1), c.expand(16, -1)).detach().double().exp()
    torch.testing.assert_close(freq, exact, atol=0.012, rtol=0)
    again = sampler.generate(5, 7, 0, None, torch.Generator().manual_seed(4))
    assert torch.equal(again, sampler.generate(5, 7, 0, None, torch.Generator().manual_seed(4)))


def test_results_do_not_depend_on_the_thread_count():
    m = nade(n_hidden=150, scale=0.2)
    v = frames(300, 88, 0.05, seed=1)  # ten blocks of gradient sums
    gen = torch.Generator().manual_seed(8)
    b, c = torch.randn(300, 88, generator=gen), torch.randn(300, 150, generator=gen)
    rng = np.random.default_rng(0)  # four chunks of 100: more than an update on the calling thread
    data = ChunkedData([(rng.random((100, 88)) < 0.05).astype(np.float32) for _ in range(4)], 100, torch.device("cpu"))
    objective = numba_nade.NumbaNADE(m, data, 0, None)
    old = numba.get_num_threads(), torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2) if numba.config.NUMBA_NUM_THREADS >= 2 else (1,):
            numba.set_num_threads(threads)
            torch.set_num_threads(threads)
            logp, grads = compiled(m, v, b, c, torch.linspace(-1, 1, 300))
            p = engines.exact_for(m, "numba").marginals(b, c, 3, torch.Generator().manual_seed(1))
            cost = objective.gradients(torch.arange(4)).cost
            step = {name: t.grad.clone() for name, t in m.named_parameters()}
            runs.append((logp, grads, p, cost, step))
    finally:
        numba.set_num_threads(old[0])
        torch.set_num_threads(old[1])
    if len(runs) < 2:
        pytest.skip("numba has a single thread here")
    (logp1, grads1, p1, cost1, step1), (logp2, grads2, p2, cost2, step2) = runs
    assert torch.equal(logp1, logp2) and torch.equal(p1, p2) and torch.equal(cost1, cost2)
    for name in grads1:
        assert torch.equal(grads1[name], grads2[name]), name
    for name in step1:
        assert torch.equal(step1[name], step2[name]), name


def test_auto_picks_the_kernels_on_the_cpu_and_torch_when_switched_off(monkeypatch):
    m = nade(n_hidden=8, rnn="gru")  # the recurrence does not matter: it stays torch's
    rng = np.random.default_rng(0)
    data = ChunkedData([(rng.random((20, 88)) < 0.05).astype(np.float32)], 8, torch.device("cpu"))
    assert engines.resolve_backend("auto", m) == "numba"
    assert engines.objective_for(m, data, k=0).backend == "numba"
    assert engines.sampler_for(m).backend == "numba"
    assert engines.exact_for(m).backend == "numba"
    assert engines.exact_for(m, "torch").backend == "torch"
    assert engines.resolve_backend("auto", m.double()) == "torch"
    monkeypatch.setenv("RNNRBM_NO_NUMBA", "1")
    m.float()
    assert engines.resolve_backend("auto", m) == "torch"
    assert engines.objective_for(m, data, k=0).backend == "torch"
    assert engines.exact_for(m).backend == "torch"


@pytest.mark.slow
def test_two_epochs_on_each_engine_end_at_the_same_validation_likelihood(toy_npz, tmp_path):
    ends = {}
    for backend in ("torch", "numba"):
        t = make_trainer(toy_npz, tmp_path / backend, model_type="rnn-nade", backend=backend, optimizer="adam",
                         epochs=2, eval_every=1, lr=0.01)
        t.train()
        assert t.objective.backend == backend
        lines = [json.loads(x) for x in (tmp_path / backend / "metrics.jsonl").read_text().splitlines()]
        ends[backend] = lines[-1]["valid_ll"]
    assert ends["numba"] == pytest.approx(ends["torch"], abs=0.02)
    assert ends["numba"] > -30
