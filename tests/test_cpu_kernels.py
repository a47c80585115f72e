"""The compiled CPU kernels against the torch reference: same gradients, same sampler,
same generation semantics, and training through them still resumes exactly.

The first run on a machine compiles the kernels (about a minute on two cores); numba
caches the machine code, so later runs load it in about a second.
"""

from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
import torch

from rnnrbm_cli import engines
from rnnrbm_cli.engines import cpu_kernels, numba_rbm
from rnnrbm_cli.engines.numba_rbm import NumbaSampler, numba_cd
from rnnrbm_cli.models.rbm import RNNRBM, free_energy, log_partition_exact

from conftest import make_trainer
from test_model import make_model
from test_train import params

# Every test here runs compiled code; the first run on a machine compiles it.
pytestmark = pytest.mark.slow




def binary(shape, p, seed) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p).float()


def padded(seqs: list[torch.Tensor], fill: float = 1.0) -> torch.Tensor:
    """Sequences (T_b, n_v) as one (B, T, n_v) batch; garbage in the padding must not leak."""
    out = torch.full((len(seqs), max(len(s) for s in seqs), seqs[0].shape[1]), fill)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = s
    return out


def spans(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return starts, np.array(lengths, np.int64)


def autograd_reference(m: RNNRBM, seqs, negs):
    """cost and gradients of model.cd_cost (torch, autograd) with fixed negative samples."""
    m.zero_grad(set_to_none=True)
    lengths = torch.tensor([len(s) for s in seqs])
    res = m.cd_cost(padded(seqs), lengths if len(seqs) > 1 else None, v_neg=padded(negs))
    res.cost.backward()
    return res.cost.item(), {name: p.grad.clone() for name, p in m.named_parameters()}


def assert_grads_close(m: RNNRBM, expected: dict[str, torch.Tensor]) -> None:
    for name, p in m.named_parameters():
        scale = expected[name].abs().max().item()
        assert scale > 0, f"{name} gets no gradient in this test"
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


# -- elementwise functions -----------------------------------------------------------------


@numba.njit(error_model="numpy")
def _elementwise(x, which):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        if which == 0:
            out[i] = cpu_kernels._exp(x[i])
        elif which == 1:
            out[i] = cpu_kernels._tanh(x[i])
        else:
            out[i] = cpu_kernels._softplus(x[i])
    return out


def test_vectorisable_exp_tanh_softplus_are_float32_accurate():
    ulp = np.finfo(np.float32).eps
    x = np.linspace(-87, 88, 1_000_001, dtype=np.float32)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(_elementwise(x, 0) - ref) / ref) < 2 * ulp
    tiny = np.geomspace(1e-8, 1, 10_001)
    x = np.concatenate([np.linspace(-12, 12, 1_000_000), tiny, -tiny]).astype(np.float32)  # no 0: relative errors
    ref = np.tanh(x.astype(np.float64))
    assert np.max(np.abs(_elementwise(x, 1) - ref) / np.abs(ref)) < 3 * ulp
    x = np.linspace(-86, 100, 1_000_001, dtype=np.float32)
    ref = np.logaddexp(0, x.astype(np.float64))
    assert np.max(np.abs(_elementwise(x, 2) - ref) / ref) < 3 * ulp
    x = np.array([-1000, -200, -87.5], np.float32)  # exp(x) clamped at exp(-87): absolute error only
    assert np.max(np.abs(_elementwise(x, 2))) < 2e-38


@numba.njit(error_model="numpy")
def _uniform_draws(n, counter):
    out = np.full(cpu_kernels._n_uniforms(n), -1.0, np.float32)
    after = cpu_kernels._uniforms(out, n, counter)
    return out, after


def test_uniforms_are_the_splitmix64_sequence_written_as_a_plain_loop():
    # Python integers mod 2**64 against the vectorised kernel: high 24 bits of each output
    # fill the first half, bits 8..31 the second, and the counter moves on by the outputs used
    mask = 2**64 - 1
    gamma, m1, m2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB

    def mix(z):
        z = ((z ^ (z >> 30)) * m1) & mask
        z = ((z ^ (z >> 27)) * m2) & mask
        return z ^ (z >> 31)

    for n, counter in ((1, 0), (88, 12345), (240, 2**64 - 3), (1000, 0xDEADBEEF)):
        got, after = _uniform_draws(n, np.uint64(counter))
        half = len(got) // 2
        z = [mix((counter + q * gamma) & mask) for q in range(half)]
        expected = [(x >> 40) / 2**24 for x in z] + [((x >> 8) & 0xFFFFFF) / 2**24 for x in z]
        assert len(got) == 16 * ((n + 15) // 16) and got.tolist() == expected
        assert int(after) == (counter + half * gamma) & mask


@numba.njit(error_model="numpy")
def _table_product(out, T, on):
    idx = np.empty(T.shape[0] >> cpu_kernels._TABLE_BITS, np.int64)
    cpu_kernels._add_subset_sums(out, T, on, idx)


def test_hidden_products_by_subset_table_equal_the_rows_of_the_units_on():
    # h W^T by the table of subset sums (one row per 8 hidden units) against a plain sum of
    # the rows, for sizes that do not fill the last byte: the padding units may be on in the
    # sample and must add nothing
    rng = np.random.default_rng(0)
    for n_h in (1, 8, 13, 150):
        Wt = rng.standard_normal((n_h, 88)).astype(np.float32)
        T = cpu_kernels.subset_sums(Wt)
        n_hp = 8 * ((n_h + 7) // 8)
        assert T.shape == (256 * (n_hp // 8), 88)
        for p in (0.0, 0.1, 0.5, 1.0):
            on = rng.random(n_hp) < p
            expected = 0.25 + Wt[on[:n_h]].astype(np.float64).sum(0)
            on.view(np.uint8)[n_h:] = rng.choice([0, 1, 2, 0xFF], n_hp - n_h)  # padding: any bytes
            out = np.full(88, 0.25, np.float32)
            _table_product(out, T, on)
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# -- gradients -----------------------------------------------------------------------------


@pytest.mark.parametrize("learn_u0", [False, True])
@pytest.mark.parametrize("lengths", [[9], [7, 3, 5, 1]])
def test_compiled_gradient_equals_autograd_with_the_same_negative_samples(learn_u0, lengths):
    m = make_model(n_visible=7, n_hidden=5, n_recurrent=4, learn_u0=learn_u0)
    seqs = [binary((L, 7), 0.4, seed=i) for i, L in enumerate(lengths)]
    negs = [binary((L, 7), 0.4, seed=100 + i) for i, L in enumerate(lengths)]
    cost_ref, grads_ref = autograd_reference(m, seqs, negs)

    m.zero_grad(set_to_none=True)
    starts, lens = spans(lengths)
    cost, _, n = numba_cd(
        m, torch.cat(seqs).numpy(), starts, lens, k=3, generator=torch.Generator().manual_seed(0),
        v_neg=torch.cat(negs).numpy(),
    )
    assert n == sum(lengths)
    assert cost == pytest.approx(cost_ref, rel=1e-5, abs=1e-6)
    assert_grads_close(m, grads_ref)
    if not learn_u0:
        assert m.u0.grad is None and not m.u0.any(), "a fixed u(0) stays a zero buffer"


def test_compiled_gradient_equals_autograd_at_the_tutorial_size():
    # 88 keys with ~4 notes on, 150 hidden, 100 recurrent: the sizes the kernels are tuned for
    # (hidden rows padded to whole vectors, several rows summed at a time).
    m = make_model(scale=0.05)
    lengths = [100, 37]
    seqs = [binary((L, 88), 4 / 88, seed=i) for i, L in enumerate(lengths)]
    negs = [binary((L, 88), 8 / 88, seed=50 + i) for i, L in enumerate(lengths)]
    cost_ref, grads_ref = autograd_reference(m, seqs, negs)
    m.zero_grad(set_to_none=True)
    starts, lens = spans(lengths)
    cost, _, _ = numba_cd(m, torch.cat(seqs).numpy(), starts, lens, 15, v_neg=torch.cat(negs).numpy())
    assert cost == pytest.approx(cost_ref, rel=1e-4, abs=1e-5)
    assert_grads_close(m, grads_ref)


def _with_dropout(m: RNNRBM, rate: float, seed: int) -> RNNRBM:
    m.set_dropout(rate, torch.Generator().manual_seed(seed))
    return m.train()


@pytest.mark.parametrize("lengths", [[9], [7, 3, 5, 1]])
def test_compiled_gradient_with_dropout_equals_autograd_with_the_same_masks(lengths):
    # The kernels draw the torch model's masks (same generator, same order, the padded batch's
    # layout), so with the same negative samples the cost and every gradient agree.
    m = make_model(n_visible=7, n_hidden=5, n_recurrent=4, learn_u0=True)
    seqs = [binary((L, 7), 0.4, seed=i) for i, L in enumerate(lengths)]
    negs = [binary((L, 7), 0.4, seed=100 + i) for i, L in enumerate(lengths)]
    cost_ref, grads_ref = autograd_reference(_with_dropout(m, 0.3, seed=5), seqs, negs)
    _, grads_kept = autograd_reference(_with_dropout(m, 0.0, seed=5), seqs, negs)
    assert not torch.allclose(grads_kept["Wvu"], grads_ref["Wvu"]), "the masks change the gradient"

    m.zero_grad(set_to_none=True)
    _with_dropout(m, 0.3, seed=5)
    starts, lens = spans(lengths)
    cost, _, _ = numba_cd(m, torch.cat(seqs).numpy(), starts, lens, 3, torch.Generator().manual_seed(0),
                          v_neg=torch.cat(negs).numpy(), dropout=0.3)
    assert cost == pytest.approx(cost_ref, rel=1e-5, abs=1e-6)
    assert_grads_close(m, grads_ref)


def test_compiled_gradient_with_dropout_at_the_tutorial_size():
    m = make_model(scale=0.05)
    lengths = [100, 37]
    seqs = [binary((L, 88), 4 / 88, seed=i) for i, L in enumerate(lengths)]
    negs = [binary((L, 88), 8 / 88, seed=50 + i) for i, L in enumerate(lengths)]
    cost_ref, grads_ref = autograd_reference(_with_dropout(m, 0.2, seed=3), seqs, negs)
    m.zero_grad(set_to_none=True)
    _with_dropout(m, 0.2, seed=3)
    cost, _, _ = numba_cd(m, torch.cat(seqs).numpy(), *spans(lengths), 15, v_neg=torch.cat(negs).numpy(), dropout=0.2)
    assert cost == pytest.approx(cost_ref, rel=1e-4, abs=1e-5)
    assert_grads_close(m, grads_ref)


def test_the_compiled_objective_drops_units_in_training_mode_only(toy_npz):
    from rnnrbm_cli.chunks import ChunkedData
    from rnnrbm_cli.datasets import load_prepared

    data = ChunkedData(load_prepared(toy_npz).splits["train"], 12, torch.device("cpu"))
    m = make_model(n_visible=data.frames.shape[1], n_hidden=8, n_recurrent=6)
    objective = engines.objective_for(m, data, k=1, backend="auto", generator=torch.Generator().manual_seed(0))
    assert objective.backend == "numba"

    def monitor():
        return objective.monitor(data, torch.Generator().manual_seed(1))

    m.eval()
    plain = monitor()
    _with_dropout(m, 0.5, seed=2)
    dropped = monitor()
    m.eval()
    assert monitor() == plain != dropped  # eval mode drops nothing; training mode does


def test_chunks_are_read_where_they_lie_in_the_frame_table():
    # The same two chunks, at other places in a larger table, give the same gradient.
    m = make_model(n_visible=7, n_hidden=5, n_recurrent=4)
    a, b = binary((6, 7), 0.4, seed=1), binary((4, 7), 0.4, seed=2)
    na, nb = binary((6, 7), 0.4, seed=3), binary((4, 7), 0.4, seed=4)
    v_neg = torch.cat([na, nb]).numpy()
    g = torch.Generator()
    numba_cd(m, torch.cat([a, b]).numpy(), *spans([6, 4]), 1, g, v_neg=v_neg)
    first = {k: p.grad.clone() for k, p in m.named_parameters()}
    table = torch.cat([binary((3, 7), 0.5, seed=9), b, binary((2, 7), 0.5, seed=8), a]).numpy()
    numba_cd(m, table, np.array([9, 3]), np.array([6, 4]), 1, g, v_neg=v_neg)
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.grad, first[k], rtol=1e-6, atol=1e-7)


def test_monitor_equals_the_torch_formula_when_the_hidden_sample_is_certain():
    # bh(t) = +-30 makes h the same for every v~ (to float precision), so the tutorial's
    # monitor log p(v | h) is deterministic and must equal the torch path's.
    m = make_model(n_visible=7, n_hidden=5, n_recurrent=4, learn_u0=True)
    with torch.no_grad():
        m.bh.copy_(torch.tensor([30.0, -30.0, 30.0, 30.0, -30.0]))
        m.W.mul_(3.0)  # large enough that h W^T matters, small next to 30
        m.Wuh.zero_()
    seqs = [binary((8, 7), 0.4, seed=1), binary((5, 7), 0.4, seed=2)]
    negs = [binary((8, 7), 0.4, seed=3), binary((5, 7), 0.4, seed=4)]
    res = m.cd_cost(padded(seqs), torch.tensor([8, 5]), v_neg=padded(negs), generator=torch.Generator().manual_seed(0))
    _, monitor, _ = numba_cd(
        m, torch.cat(seqs).numpy(), *spans([8, 5]), 1, torch.Generator().manual_seed(1), v_neg=torch.cat(negs).numpy()
    )
    assert monitor == pytest.approx(res.monitor.item(), rel=1e-5)


def test_monitor_is_finite_when_the_reconstruction_is_certain():
    m = make_model(n_visible=6, n_hidden=4, n_recurrent=3, scale=0.0)
    with torch.no_grad():
        m.bv.fill_(-200.0)  # p(v_i = 1) = sigmoid(-200): log 0 in the tutorial's formula
    _, monitor, _ = numba_cd(m, np.ones((4, 6), np.float32), *spans([4]), 1, torch.Generator())
    assert np.isfinite(monitor) and monitor == pytest.approx(-200.0 * 6, rel=1e-5)


@pytest.mark.parametrize("lengths", [[100], [128, 128], [100] * 10 + [60]])
def test_results_follow_the_torch_generator_and_not_the_thread_count(lengths):
    # numba's threads run the chains, torch's the matrix products, whose sums over frames
    # are tiled (one product over 1,000 frames or more differs between 1 and 2 threads):
    # one chunk of the tutorial's size, whole tiles only, and tiles with a rest
    m = make_model(scale=0.05)
    v = binary((sum(lengths), 88), 4 / 88, seed=0).numpy()
    starts, lens = spans(lengths)

    def run(seed, threads):
        old, old_torch = numba.get_num_threads(), torch.get_num_threads()
        numba.set_num_threads(threads)
        torch.set_num_threads(threads)
        try:
            cost, monitor, _ = numba_cd(m, v, starts, lens, 5, torch.Generator().manual_seed(seed))
        finally:
            numba.set_num_threads(old)
            torch.set_num_threads(old_torch)
        return cost, monitor, {k: p.grad.clone() for k, p in m.named_parameters()}

    a, b, c = run(7, numba.config.NUMBA_NUM_THREADS), run(7, 1), run(8, 1)
    assert a[:2] == b[:2] and all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    assert a[1] != c[1] and not torch.equal(a[2]["W"], c[2]["W"])


def test_a_small_update_in_the_calling_thread_equals_it_on_every_thread(monkeypatch):
    # updates of at most SERIAL_FRAMES frames run with numba and torch on one thread; with
    # the limit lowered the same update runs on all threads, and nothing may change
    m = make_model(scale=0.05)
    v = binary((100, 88), 4 / 88, seed=3).numpy()
    starts, lens = spans([100])
    assert 100 <= numba_rbm.SERIAL_FRAMES

    def run():
        cost, monitor, _ = numba_cd(m, v, starts, lens, 5, torch.Generator().manual_seed(11))
        return cost, monitor, {k: p.grad.clone() for k, p in m.named_parameters()}

    threads = numba.get_num_threads(), torch.get_num_threads()
    calling = run()
    assert (numba.get_num_threads(), torch.get_num_threads()) == threads  # restored
    monkeypatch.setattr(numba_rbm, "SERIAL_FRAMES", 0)
    every = run()
    assert calling[:2] == every[:2] and all(torch.equal(calling[2][k], every[2][k]) for k in calling[2])


# -- the sampler ---------------------------------------------------------------------------


def all_binary(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


def exact_distribution(W, bv, bh) -> torch.Tensor:
    vs = all_binary(W.shape[0]).double()
    logp = -free_energy(vs, W.double(), bv.double(), bh.double()) - log_partition_exact(W.double(), bv.double(), bh.double())
    return logp.exp()


def frequencies(samples: torch.Tensor) -> torch.Tensor:
    n_v = samples.shape[1]
    codes = (samples.double() * 2.0 ** torch.arange(n_v - 1, -1, -1)).sum(1).long()
    return torch.bincount(codes, minlength=2**n_v).double() / samples.shape[0]


def test_compiled_gibbs_chain_samples_the_rbm_distribution():
    g = torch.Generator().manual_seed(4)
    W, bv, bh = torch.randn(3, 2, generator=g), torch.randn(3, generator=g), torch.randn(2, generator=g)
    samples = NumbaSampler(None).gibbs_chain(torch.zeros(40000, 3), W, bv, bh, 30, torch.Generator().manual_seed(5))
    torch.testing.assert_close(frequencies(samples), exact_distribution(W, bv, bh), atol=0.012, rtol=0)


def test_compiled_gibbs_chain_gives_every_row_its_own_biases():
    # Two groups of rows with different biases, interleaved: each group samples its own RBM.
    g = torch.Generator().manual_seed(6)
    W = torch.randn(3, 10, generator=g)  # 10 hidden units: padded to 16 inside
    bvs, bhs = torch.randn(2, 3, generator=g) * 2, torch.randn(2, 10, generator=g)
    group = torch.arange(40000) % 2
    samples = NumbaSampler(None).gibbs_chain(torch.ones(40000, 3), W, bvs[group], bhs[group], 30, torch.Generator().manual_seed(7))
    for c in range(2):
        torch.testing.assert_close(frequencies(samples[group == c]), exact_distribution(W, bvs[c], bhs[c]), atol=0.015, rtol=0)


def test_compiled_gibbs_chain_with_zero_steps_returns_its_start():
    v = binary((5, 88), 0.1, seed=3)
    W = torch.randn(88, 150)
    assert torch.equal(NumbaSampler(None).gibbs_chain(v, W, torch.zeros(88), torch.zeros(150), 0), v)


# -- generation ----------------------------------------------------------------------------


def deterministic_model() -> RNNRBM:
    # With W = 0 and |bv(t)| >= 20 every Gibbs step gives the same v, (bv(t) > 0), so
    # generation is deterministic and comparable across backends. Even keys push u down,
    # odd keys push it up: the frames alternate, so each one depends on the history.
    m = make_model(n_visible=6, n_hidden=4, n_recurrent=3, scale=0.0)
    with torch.no_grad():
        m.Wuv.copy_(torch.tensor([[40.0, -40, 40, -40, 40, -40]] * 3))
        m.Wvu.copy_(torch.tensor([[-1.5] * 3, [1.0] * 3] * 3))
        m.bu.fill_(0.5)
        m.bv.fill_(-20.0)
    return m


def test_compiled_generate_conditions_on_history_like_the_step_by_step_definition():
    m = deterministic_model()
    out = NumbaSampler(m).generate(2, 6, 2, None, torch.Generator().manual_seed(0))
    bv_t, _ = m.conditional_biases(out)
    assert (bv_t.abs() > 10).all(), "the test needs a deterministic sampler"
    torch.testing.assert_close(out, (bv_t > 0).float())
    assert not torch.equal(out[0, 1], out[0, 2]), "the frames must depend on the history"


def test_compiled_generate_matches_the_torch_path_with_a_primer():
    m = deterministic_model()
    primer = binary((5, 6), 0.5, seed=0)
    fast = NumbaSampler(m).generate(3, 8, 2, primer, torch.Generator().manual_seed(0))
    reference = m.generate(3, 8, k=2, primer=primer, generator=torch.Generator().manual_seed(0))
    assert fast.shape == reference.shape == (3, 13, 6)
    assert torch.equal(fast[:, :5], primer.expand(3, -1, -1))
    torch.testing.assert_close(fast, reference)


def test_the_compile_message_looks_at_the_kernels_of_its_job(monkeypatch):
    # evaluate once said "Compiling" because generation's kernel was not cached yet
    cached = {cpu_kernels.gibbs_rows, cpu_kernels.ais, cpu_kernels.subset_sums}
    monkeypatch.setattr(numba_rbm, "_compiled_before", lambda *functions: all(f in cached for f in functions))
    sampler = NumbaSampler(None)
    assert sampler.compile_message("evaluate") is None
    assert sampler.compile_message() == sampler.compile_message("sample") == engines.COMPILE_MESSAGE
    cached = {cpu_kernels.generate_rows, cpu_kernels.rnn_serial, cpu_kernels.subset_sums}
    assert sampler.compile_message() is None and sampler.compile_message("evaluate") == engines.COMPILE_MESSAGE


def test_sampler_for_chooses_the_kernels_on_the_cpu_and_is_reproducible(monkeypatch):
    m = make_model(n_visible=6, n_hidden=4, n_recurrent=3)
    calls = []
    real = cpu_kernels.generate_rows
    monkeypatch.setattr(cpu_kernels, "generate_rows", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    sampler = engines.sampler_for(m)
    a = sampler.generate(4, 10, 3, None, torch.Generator().manual_seed(7))
    b = sampler.generate(4, 10, 3, None, torch.Generator().manual_seed(7))
    c = sampler.generate(4, 10, 3, None, torch.Generator().manual_seed(8))
    assert len(calls) == 3 and sampler.backend == "numba"
    assert a.shape == (4, 10, 6) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    monkeypatch.setenv("RNNRBM_NO_NUMBA", "1")
    engines.sampler_for(m).generate(4, 10, 3, None, torch.Generator().manual_seed(7))
    assert len(calls) == 3, "RNNRBM_NO_NUMBA=1 makes auto the torch path"


def test_compiled_generate_samples_the_rbm_when_the_rnn_is_silent():
    # With Wuv = Wuh = 0 every frame comes from the same RBM: n x steps independent draws.
    g = torch.Generator().manual_seed(4)
    m = make_model(n_visible=3, n_hidden=2, n_recurrent=2, scale=0.0)
    with torch.no_grad():
        m.W.copy_(torch.randn(3, 2, generator=g))
        m.bv.copy_(torch.randn(3, generator=g))
        m.bh.copy_(torch.randn(2, generator=g))
    out = NumbaSampler(m).generate(2000, 20, 30, None, torch.Generator().manual_seed(1))
    torch.testing.assert_close(frequencies(out.reshape(-1, 3)), exact_distribution(m.W, m.bv, m.bh), atol=0.012, rtol=0)


# -- training ------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer, momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0)])
def test_both_backends_learn_the_toy_data(toy_npz, tmp_path, optimizer, momentum):
    # Different random numbers, same mathematics: the monitors end up close.
    monitors = {}
    for backend in ("torch", "numba"):
        t = make_trainer(toy_npz, tmp_path / backend, backend=backend, epochs=6, optimizer=optimizer, momentum=momentum,
                    lr=0.01 if optimizer == "adam" else 0.05)
        t.train()
        monitors[backend] = t.last_metrics["valid_monitor"]
        first = t.last_metrics
    assert monitors["numba"] > -10.0, "the compiled path learns (a random model scores about -61)"
    assert monitors["numba"] == pytest.approx(monitors["torch"], abs=1.0)
    assert np.isfinite(first["train_cost"])


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_compiled_training_resumes_exactly(toy_npz, tmp_path, dropout):
    from rnnrbm_cli.api import resume_training

    full = make_trainer(toy_npz, tmp_path / "full", epochs=3, backend="numba", dropout=dropout)
    full.train()
    part = make_trainer(toy_npz, tmp_path / "part", epochs=2, backend="numba", dropout=dropout)
    part.train()
    resumed = resume_training(tmp_path / "part", torch.device("cpu"), epochs=3)
    assert resumed.objective.backend == "numba"
    resumed.train()
    for k, v in params(full).items():
        assert torch.equal(params(resumed)[k], v), k


# -- annealed importance sampling ---------------------------------------------------------


def ais_problem(n_hidden: int, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(88, n_hidden, generator=g) * (0.3 if n_hidden <= 12 else 0.05)
    bv = torch.randn(frames, 88, generator=g) - 2.5
    bh = torch.randn(frames, n_hidden, generator=g) * 0.5
    return W, bv, bh


def test_compiled_ais_equals_exact_log_z_within_its_error():
    from rnnrbm_cli.evaluate import ais_log_partition

    W, bv, bh = ais_problem(12, 40)
    exact = log_partition_exact(W.double(), bv.double(), bh.double())
    log_z, var = ais_log_partition(W, bv, bh, chains=100, betas=300, generator=torch.Generator().manual_seed(1),
                                   sampler=NumbaSampler(None))
    z = (log_z.double() - exact) / var.double().sqrt()
    assert z.abs().max() < 5 and abs(float(z.mean())) < 4 / np.sqrt(40)


def test_compiled_and_torch_ais_agree_statistically_at_the_trained_size():
    from rnnrbm_cli.engines import TorchSampler
    from rnnrbm_cli.evaluate import ais_log_partition

    W, bv, bh = ais_problem(150, 60)
    runs = {}
    for name, sampler in (("torch", TorchSampler(None)), ("numba", NumbaSampler(None))):
        runs[name] = ais_log_partition(W, bv, bh, chains=100, betas=200, generator=torch.Generator().manual_seed(2),
                                       sampler=sampler)
    diff = runs["torch"][0].double() - runs["numba"][0].double()
    sd = (runs["torch"][1] + runs["numba"][1]).double().sqrt()
    assert (diff.abs() / sd).max() < 5
    assert abs(float(diff.mean())) < 4 * float(sd.mean()) / np.sqrt(60)


@pytest.mark.parametrize("n_hidden", [150, 1200])
def test_compiled_ais_increment_equals_the_free_energy_difference(n_hidden):
    # one annealing step (betas 0, 1) from a base that fixes v: the log-weight is
    # f_1(v) - f_0(v) = v.(bv - base) + sum_j softplus((v W + bh)_j) - n_hidden log 2, exactly.
    # 1200 units at large pre-activations: prod_j (1 + e_j) would overflow a float64 unchunked
    g = torch.Generator().manual_seed(5)
    W = torch.randn(88, n_hidden, generator=g) * 3
    bv = torch.randn(4, 88, generator=g) - 2
    bh = torch.randn(4, n_hidden, generator=g) * 4
    schedule = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for sign in (-1, 1):  # v = all off, all on
        base = torch.full((4, 88), 30.0 * sign)
        v = torch.full((4, 88), float(sign > 0)).double()
        log_w = NumbaSampler(None).ais_log_weights(W, base, bv, bh, schedule, 3, torch.Generator().manual_seed(0))
        pre = v @ W.double() + bh.double()
        expected = (v * (bv.double() - base.double())).sum(1) + torch.nn.functional.softplus(pre).sum(1)
        expected -= n_hidden * np.log(2)
        torch.testing.assert_close(log_w, expected[:, None].expand(4, 3), rtol=1e-6, atol=1e-3)


def test_compiled_ais_follows_the_generator_and_not_the_thread_count():
    W, bv, bh = ais_problem(150, 16)
    schedule = torch.linspace(0, 1, 31, dtype=torch.float64)

    def run(seed, threads):
        old = numba.get_num_threads()
        numba.set_num_threads(threads)
        try:
            return NumbaSampler(None).ais_log_weights(W, bv, bv, bh, schedule, 20, torch.Generator().manual_seed(seed))
        finally:
            numba.set_num_threads(old)

    a, b, c = run(3, numba.config.NUMBA_NUM_THREADS), run(3, 1), run(4, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_compiled_note_marginals_match_exact_enumeration():
    # the Gibbs chains evaluate uses for ACC and the AIS base, on the compiled sampler
    from rnnrbm_cli.evaluate import note_marginals

    g = torch.Generator().manual_seed(8)
    W = torch.randn(4, 3, generator=g)
    bv, bh = torch.randn(2, 4, generator=g), torch.randn(2, 3, generator=g)
    p = note_marginals(W, bv, bh, samples=20000, gibbs=30, generator=torch.Generator().manual_seed(9),
                       sampler=NumbaSampler(None))
    vs = all_binary(4)
    for f in range(2):
        exact = (exact_distribution(W, bv[f], bh[f])[:, None] * vs).sum(0)
        torch.testing.assert_close(p[f].double(), exact.double(), atol=0.01, rtol=0)
