"""The RNN-RBM against independent calculations: enumeration, closed forms, plain loops."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rnnrbm_cli.models.rbm import (
    ModelConfig,
    RNNRBM,
    free_energy,
    gibbs_chain,
    log_partition_exact,
)


@pytest.fixture(autouse=True)
def float64():
    # Exact comparisons need double precision; restore the default for other modules.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def all_binary(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def random_rbm(n_v: int, n_h: int, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n_v, n_h, generator=g) * scale
    bv = torch.randn(n_v, generator=g) * scale
    bh = torch.randn(n_h, generator=g) * scale
    return W, bv, bh


def energy(v, h, W, bv, bh):
    # E(v, h) = -v.bv - h.bh - v W h, written out term by term.
    return -(v @ bv) - (h @ bh) - (v @ W @ h)


def test_free_energy_matches_enumeration_over_hidden_states():
    W, bv, bh = random_rbm(5, 4)
    for v in all_binary(5):
        brute = -torch.logsumexp(torch.stack([-energy(v, h, W, bv, bh) for h in all_binary(4)]), 0)
        assert free_energy(v, W, bv, bh).item() == pytest.approx(brute.item(), abs=1e-10)


def test_log_partition_exact_matches_enumeration_over_all_states():
    W, bv, bh = random_rbm(6, 5, seed=1)
    brute = torch.logsumexp(
        torch.stack([-energy(v, h, W, bv, bh) for v in all_binary(6) for h in all_binary(5)]), 0
    )
    assert log_partition_exact(W, bv, bh).item() == pytest.approx(brute.item(), abs=1e-10)
    # and batched over per-frame biases
    bvs = torch.stack([bv, bv + 1.0])
    bhs = torch.stack([bh, bh - 0.5])
    batched = log_partition_exact(W, bvs, bhs)
    assert batched[0].item() == pytest.approx(brute.item(), abs=1e-10)
    assert batched[1].item() == pytest.approx(log_partition_exact(W, bv + 1.0, bh - 0.5).item(), abs=1e-12)


def test_log_partition_of_zero_rbm_is_n_visible_plus_n_hidden_log_2():
    W = torch.zeros(88, 10)
    assert log_partition_exact(W, torch.zeros(88), torch.zeros(10)).item() == pytest.approx(98 * math.log(2))


def test_cd_cost_gradient_with_fixed_negatives_is_data_minus_sample_statistics():
    n_v, n_h, T = 7, 5, 6
    W, bv, bh = random_rbm(n_v, n_h, seed=2)
    W.requires_grad_(True)
    bv.requires_grad_(True)
    bh.requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    v = (torch.rand(T, n_v, generator=g) < 0.4).double()
    v_neg = (torch.rand(T, n_v, generator=g) < 0.4).double()
    cost = (free_energy(v, W, bv, bh) - free_energy(v_neg, W, bv, bh)).mean()
    cost.backward()
    with torch.no_grad():
        ph, ph_neg = torch.sigmoid(v @ W + bh), torch.sigmoid(v_neg @ W + bh)
        dW = -(v.t() @ ph - v_neg.t() @ ph_neg) / T
        dbv = -(v - v_neg).sum(0) / T
        dbh = -(ph - ph_neg).sum(0) / T
    torch.testing.assert_close(W.grad, dW)
    torch.testing.assert_close(bv.grad, dbv)
    torch.testing.assert_close(bh.grad, dbh)


def test_gibbs_chain_samples_the_rbm_distribution():
    # A 3x2 RBM: the empirical distribution of long chains matches exact p(v).
    W, bv, bh = random_rbm(3, 2, seed=4)
    vs = all_binary(3)
    logp = -free_energy(vs, W, bv, bh) - log_partition_exact(W, bv, bh)
    g = torch.Generator().manual_seed(5)
    n = 40000
    samples = gibbs_chain(torch.zeros(n, 3), W, bv, bh, k=30, generator=g)
    codes = (samples * torch.tensor([4.0, 2.0, 1.0])).sum(1).long()
    freq = torch.bincount(codes, minlength=8).double() / n
    torch.testing.assert_close(freq, logp.exp(), atol=0.012, rtol=0)


def make_model(seed=0, scale=0.3, **kw) -> RNNRBM:
    torch.manual_seed(seed)
    m = RNNRBM(ModelConfig(**kw))
    with torch.no_grad():  # non-trivial weights so that the RNN actually matters
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return m


def test_recurrence_matches_a_plain_python_loop():
    m = make_model(n_visible=6, n_hidden=4, n_recurrent=3, learn_u0=True)
    g = torch.Generator().manual_seed(0)
    v = (torch.rand(2, 9, 6, generator=g) < 0.5).double()
    u = m.recurrence(v)
    bv_t, bh_t = m.conditional_biases(v)
    for b in range(2):
        u_prev = m.u0.detach()
        for t in range(9):
            bv_expect = m.bv + u_prev @ m.Wuv
            bh_expect = m.bh + u_prev @ m.Wuh
            u_t = torch.tanh(m.bu + u_prev @ m.Wuu + v[b, t] @ m.Wvu)
            torch.testing.assert_close(u[b, t], u_t)
            torch.testing.assert_close(bv_t[b, t], bv_expect)
            torch.testing.assert_close(bh_t[b, t], bh_expect)
            u_prev = u_t


def test_rbm_at_t_depends_only_on_frames_before_t():
    m = make_model(n_visible=6, n_hidden=4, n_recurrent=3)
    v = torch.zeros(1, 5, 6)
    v2 = v.clone()
    v2[0, 3] = 1.0  # change frame 3
    a, b = m.conditional_biases(v)[0], m.conditional_biases(v2)[0]
    torch.testing.assert_close(a[0, :4], b[0, :4])  # bv(0..3) unchanged
    assert not torch.allclose(a[0, 4], b[0, 4])


def test_padded_batch_gives_same_cost_and_gradients_as_sequences_one_by_one():
    m = make_model(n_visible=6, n_hidden=4, n_recurrent=3, learn_u0=True)
    g = torch.Generator().manual_seed(1)
    lengths = [7, 3, 5]
    seqs = [(torch.rand(L, 6, generator=g) < 0.4).double() for L in lengths]
    negs = [(torch.rand(L, 6, generator=g) < 0.4).double() for L in lengths]
    T = max(lengths)
    # Garbage in the padding must not leak anywhere.
    v = torch.ones(3, T, 6)
    v_neg = torch.ones(3, T, 6)
    for i, (s, n) in enumerate(zip(seqs, negs)):
        v[i, : len(s)] = s
        v_neg[i, : len(n)] = n
    res = m.cd_cost(v, torch.tensor(lengths), v_neg=v_neg)
    res.cost.backward()
    batched_grads = {name: p.grad.clone() for name, p in m.named_parameters()}

    m.zero_grad()
    total = 0.0
    for s, n in zip(seqs, negs):
        r = m.cd_cost(s[None], v_neg=n[None])
        # cd_cost averages over frames; weight each sequence by its frames.
        (r.cost * r.n_frames / sum(lengths)).backward()
        total += r.cost.item() * r.n_frames / sum(lengths)
    assert res.cost.item() == pytest.approx(total, abs=1e-12)
    assert res.n_frames == sum(lengths)
    for name, p in m.named_parameters():
        torch.testing.assert_close(batched_grads[name], p.grad, msg=name)
    assert all(p.grad.abs().sum() > 0 for p in m.parameters()), "every parameter gets a gradient"


def test_monitor_is_finite_even_when_the_reconstruction_is_certain():
    m = make_model(n_visible=6, n_hidden=4, n_recurrent=3, scale=0.0)
    with torch.no_grad():
        m.bv.fill_(-200.0)  # p(v_i = 1) = sigmoid(-200): log 0 in the tutorial's formula
    v = torch.ones(1, 4, 6)
    res = m.cd_cost(v, k=1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.monitor)
    assert res.monitor.item() == pytest.approx(-200.0 * 6, rel=1e-6)


def test_generate_is_reproducible_and_starts_with_the_primer():
    m = make_model(n_visible=6, n_hidden=4, n_recurrent=3)
    a = m.generate(4, 10, k=3, generator=torch.Generator().manual_seed(7))
    b = m.generate(4, 10, k=3, generator=torch.Generator().manual_seed(7))
    c = m.generate(4, 10, k=3, generator=torch.Generator().manual_seed(8))
    assert a.shape == (4, 10, 6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    primer = (torch.rand(5, 6, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    p = m.generate(2, 10, k=3, primer=primer, generator=torch.Generator().manual_seed(7))
    assert p.shape == (2, 15, 6)
    assert torch.equal(p[0, :5], primer) and torch.equal(p[1, :5], primer)


def test_generate_conditions_on_history_like_the_step_by_step_definition():
    # With k large and a strongly biased RBM, the sampled frame is deterministic, so the
    # batched generator must equal a hand-written loop using conditional_biases.
    m = make_model(n_visible=6, n_hidden=4, n_recurrent=3, scale=0.0)
    with torch.no_grad():
        m.W.zero_()
        m.Wuv.copy_(torch.tensor([[40.0, -40, 40, -40, 40, -40]] * 3))
        m.Wvu.copy_(torch.randn(6, 3))
        m.bu.fill_(0.5)
        m.bv.fill_(-20.0)
    out = m.generate(1, 6, k=2, generator=torch.Generator().manual_seed(0))
    bv_t, _ = m.conditional_biases(out)
    expected = (bv_t > 0).double()
    torch.testing.assert_close(out, expected)
