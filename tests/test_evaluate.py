"""LL and ACC against closed forms and brute-force enumeration; `rnnrbm evaluate` end to end."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnrbm_cli import evaluate as ev
from rnnrbm_cli.checkpoint import save_checkpoint
from rnnrbm_cli.models.rbm import RNNRBM, ModelConfig, free_energy

from conftest import run

RANDOM_LL = 88 * math.log(0.5)  # -60.997: every one of the 2**88 frames equally likely


def zero_model(n_hidden: int, n_recurrent: int = 8) -> RNNRBM:
    model = RNNRBM(ModelConfig(n_hidden=n_hidden, n_recurrent=n_recurrent))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval()


def random_rolls(seed: int, lengths=(7, 1, 12), density: float = 0.05, n_v: int = 88) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((t, n_v)) < density).astype(np.uint8) for t in lengths]


# --- LL: closed form, enumeration -----------------------------------------------------------


@pytest.mark.parametrize("n_hidden, method", [(10, "exact"), (150, "ais")])
def test_a_model_of_zeros_gives_the_random_ll_exactly(n_hidden, method):
    # W = 0 and all biases 0: P(v) = 2**-88 for every frame. AIS is exact here too: every
    # intermediate model equals the base, so every importance weight is 1.
    res = ev.log_likelihood(zero_model(n_hidden), random_rolls(0), chains=7, betas=5,
                            generator=torch.Generator().manual_seed(0))
    assert res.method == method
    assert res.frames == 20
    assert res.mean == pytest.approx(RANDOM_LL, abs=1e-4)
    assert res.stderr == pytest.approx(0.0, abs=1e-5)


def small_rbm(n_hidden: int, frames: int, seed: int):
    """An RBM over 88 keys with sparse, music-like visible biases and strong weights."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(88, n_hidden, generator=g) * 0.6
    bv = torch.randn(frames, 88, generator=g) - 3.0
    bh = torch.randn(frames, n_hidden, generator=g) - 1.0
    return W, bv, bh


@pytest.mark.parametrize("n_hidden", [8, 12])
def test_ais_log_z_approaches_the_exact_value_as_betas_grows(n_hidden):
    W, bv, bh = small_rbm(n_hidden, frames=24, seed=n_hidden)
    exact = ev.exact_log_partition(W, bv, bh)
    errors = {}
    for betas in (3, 100):
        base = ev.ais_base(ev.note_marginals(W, bv, bh, generator=torch.Generator().manual_seed(0)))
        log_z, _ = ev.ais_log_partition(W, bv, bh, chains=100, betas=betas, base=base,
                                        generator=torch.Generator().manual_seed(1))
        errors[betas] = (log_z - exact).abs().mean().item()
    # Measured: 0.008 and 0.012 nats at 100 betas, 0.05 and 0.07 at 3.
    assert errors[100] < 0.03  # nats, mean absolute error over frames
    assert errors[100] < errors[3] / 2


def _samplers():
    from rnnrbm_cli.engines import TorchSampler
    from rnnrbm_cli.engines.numba_rbm import NumbaSampler

    return {"torch": TorchSampler(None), "numba": NumbaSampler(None)}


def _every_frame_problem(scale: float):
    """A 6-key, 4-hidden RBM with weights of size ``scale``, every frame, and its exact LLs."""
    g = torch.Generator().manual_seed(5)
    n_v, n_h = 6, 4
    W = torch.randn(n_v, n_h, generator=g) * scale
    bv, bh, base = torch.randn(n_v, generator=g), torch.randn(n_h, generator=g), torch.randn(n_v, generator=g) * 0.5
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n_v)))
    N = len(every)
    bv, bh, base = bv.expand(N, -1), bh.expand(N, -1), base.expand(N, -1)
    neg_f = -free_energy(every, W, bv, bh).double()
    return W, bv, bh, base, every, neg_f, neg_f - ev.exact_log_partition(W, bv, bh).double()


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_raise_estimates_a_normalised_distribution(backend):
    # RAISE's p-hat(v) is unbiased for the annealing model p_ann, a proper distribution:
    # summed over all 2**6 frames it is 1 whatever the number of betas.
    W, bv, bh, base, every, neg_f, _ = _every_frame_problem(1.5)
    sampler = _samplers()[backend]
    for betas, chains in ((1, 4000), (30, 1000)):
        log_w = -sampler.raise_log_weights(W, base, bv, bh, ev.beta_schedule(betas), chains, every,
                                           torch.Generator().manual_seed(betas)).double()
        log_z0 = F.softplus(base[0]).sum() + W.shape[1] * math.log(2.0)
        p_runs = (neg_f[:, None] - log_z0 + log_w).exp()  # each run's estimate of each frame's probability
        total, se = float(p_runs.mean(1).sum()), float((p_runs.var(1) / chains).sum().sqrt())
        assert abs(total - 1.0) < 5 * se + 1e-3, (betas, total, se)
        # and through ais_log_partition, which turns such runs into log Z
        log_z, _ = ev.ais_log_partition(W, bv, bh, chains=chains, betas=betas, base=base, observed=every,
                                        generator=torch.Generator().manual_seed(betas + 1), sampler=sampler)
        assert abs(float((neg_f - log_z.double()).exp().sum()) - 1.0) < 5 * se + 1e-3


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_raise_errs_low_when_short_and_meets_the_enumeration_when_long(backend):
    # Each run's log p-hat is a lower bound in expectation (Jensen); averaged over runs and
    # over the model's own frames it is far below the truth after one beta and meets it
    # after many. (Means of p-hat itself are heavy-tailed at one beta: not a stable test.)
    W, bv, bh, base, every, neg_f, exact = _every_frame_problem(3.0)
    sampler = _samplers()[backend]
    log_z0 = F.softplus(base[0]).sum() + W.shape[1] * math.log(2.0)
    gap = {}
    for betas in (1, 300):
        log_w = -sampler.raise_log_weights(W, base, bv, bh, ev.beta_schedule(betas), 500, every,
                                           torch.Generator().manual_seed(betas)).double()
        log_p_runs = neg_f[:, None] - log_z0 + log_w
        gap[betas] = float((exact.exp() * (log_p_runs.mean(1) - exact)).sum())
    assert gap[1] < -1.0  # measured -3.5
    assert -0.06 < gap[300] < 0.01  # measured -0.015 to -0.036: still below, by Jensen's gap
    log_z, _ = ev.ais_log_partition(W, bv, bh, chains=200, betas=300, base=base, observed=every,
                                    generator=torch.Generator().manual_seed(0), sampler=sampler)
    assert float((exact.exp() * (neg_f - log_z.double() - exact).abs()).sum()) < 0.04  # measured 0.02


def test_raise_and_ais_agree_where_the_annealing_is_long_enough():
    model = tiny_model()
    rolls = random_rolls(3, lengths=(6, 1, 9), density=0.4, n_v=5)
    direct = np.array([ll for r in rolls for ll in direct_frame_lls(model, torch.from_numpy(r))])
    frames = ev.conditional_frames(model, rolls)
    for backend, sampler in _samplers().items():
        ll, var, method = ev.frame_log_likelihoods(model, frames, chains=200, betas=200, method="raise",
                                                   generator=torch.Generator().manual_seed(0), sampler=sampler)
        assert method == "raise" and var is not None and (var >= 0).all()
        assert np.abs(ll.numpy() - direct).max() < 0.03, backend


def test_compiled_and_torch_raise_agree_statistically():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(88, 150, generator=g) * 0.05
    bv, bh = torch.randn(40, 88, generator=g) - 2.5, torch.randn(40, 150, generator=g) * 0.5
    v = (torch.rand(40, 88, generator=g) < 0.05).float()
    runs = {name: ev.ais_log_partition(W, bv, bh, chains=100, betas=100, observed=v, sampler=sampler,
                                       generator=torch.Generator().manual_seed(2))
            for name, sampler in _samplers().items()}
    diff = runs["torch"][0].double() - runs["numba"][0].double()
    sd = (runs["torch"][1] + runs["numba"][1]).double().sqrt()
    assert (diff.abs() / sd).max() < 5
    assert abs(float(diff.mean())) < 4 * float(sd.mean()) / np.sqrt(40)
    assert not torch.equal(runs["torch"][0], runs["numba"][0])  # two engines, two random streams


def tiny_model(seed: int = 0) -> RNNRBM:
    """5 keys, 3 hidden units, 4 RNN units, every parameter random and of order one."""
    torch.manual_seed(seed)
    model = RNNRBM(ModelConfig(n_visible=5, n_hidden=3, n_recurrent=4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    return model.eval()


def direct_frame_lls(model: RNNRBM, roll: torch.Tensor) -> list[float]:
    """log P(v_t | v_<t) frame by frame: a plain loop over t, log Z by summing all 2**5 frames."""
    every_frame = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=torch.float64)
    p = {name: t.detach().double() for name, t in model.named_parameters()}
    u = torch.zeros(4, dtype=torch.float64)
    out = []
    for v in roll.double():
        bv_t, bh_t = p["bv"] + u @ p["Wuv"], p["bh"] + u @ p["Wuh"]
        log_z = torch.logsumexp(-free_energy(every_frame, p["W"], bv_t, bh_t), 0)
        out.append(float(-free_energy(v, p["W"], bv_t, bh_t) - log_z))
        u = torch.tanh(p["bu"] + u @ p["Wuu"] + v @ p["Wvu"])
    return out


def test_ll_equals_a_direct_per_frame_computation():
    model = tiny_model()
    rolls = random_rolls(3, lengths=(6, 1, 9), density=0.4, n_v=5)
    direct = [ll for r in rolls for ll in direct_frame_lls(model, torch.from_numpy(r))]
    res = ev.log_likelihood(model, rolls)
    assert res.method == "exact"
    assert res.frames == len(direct) == 16
    assert res.mean == pytest.approx(np.mean(direct), abs=1e-5)
    assert res.stderr == pytest.approx(np.std(direct, ddof=1) / 4, abs=1e-5)
    # The same frames through AIS: close to the enumeration, frame by frame.
    frames = ev.conditional_frames(model, rolls)
    ll, var, method = ev.frame_log_likelihoods(model, frames, chains=200, betas=200, method="ais",
                                               generator=torch.Generator().manual_seed(0))
    assert method == "ais"
    assert np.abs(ll.numpy() - np.array(direct)).max() < 0.02
    assert var is not None and (var >= 0).all()


def test_max_frames_draws_a_seeded_subset_in_split_order():
    model = tiny_model()
    rolls = random_rolls(4, lengths=(6, 1, 9), density=0.4, n_v=5)
    every = ev.conditional_frames(model, rolls)
    a = ev.conditional_frames(model, rolls, max_frames=5, generator=torch.Generator().manual_seed(2))
    b = ev.conditional_frames(model, rolls, max_frames=5, generator=torch.Generator().manual_seed(2))
    assert len(a) == 5
    assert torch.equal(a.bv, b.bv)
    rows = a.index.tolist()
    assert rows == sorted(set(rows)) and len(rows) == 5
    assert torch.equal(every.bv[a.index], a.bv) and torch.equal(every.v[a.index], a.v)
    assert len(ev.conditional_frames(model, rolls, max_frames=100)) == 16


# --- ACC ------------------------------------------------------------------------------------


def test_accuracy_from_marginals_by_hand():
    v = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert ev.accuracy_from_marginals(v, v) == 100.0
    p = torch.tensor([[0.5, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 0.25]])
    # TP = 0.5 + 1 = 1.5; FP = 0.5 + 0.25 = 0.75; FN = 0.5 + 1 = 1.5
    assert ev.expected_counts(v, p) == pytest.approx((1.5, 0.75, 1.5))
    assert ev.accuracy_from_marginals(v, p) == pytest.approx(100 * 1.5 / 3.75)
    assert math.isnan(ev.accuracy_from_marginals(torch.zeros(2, 4), torch.zeros(2, 4)))


def biased_model(bv: torch.Tensor) -> RNNRBM:
    model = zero_model(n_hidden=6)
    with torch.no_grad():
        model.bv.copy_(bv)
    return model


def test_a_model_certain_of_the_true_frame_scores_100_percent():
    chord = torch.zeros(88)
    chord[[39, 43, 46]] = 1  # C major around middle C, held for every frame
    model = biased_model(torch.where(chord > 0, 40.0, -40.0))
    rolls = [np.tile(chord.numpy().astype(np.uint8), (t, 1)) for t in (5, 3)]
    acc = ev.frame_accuracy(model, rolls, samples=3, gibbs=2, generator=torch.Generator().manual_seed(0))
    assert acc == pytest.approx(100.0, abs=1e-9)  # p = sigmoid(+-40): 1 - 4e-18 away from certain


def test_a_model_that_never_plays_a_note_scores_0_percent():
    model = biased_model(torch.full((88,), -40.0))
    acc = ev.frame_accuracy(model, random_rolls(1, density=0.1), samples=3, gibbs=2,
                            generator=torch.Generator().manual_seed(0))
    assert acc == pytest.approx(0.0, abs=1e-9)


def test_the_random_row_on_nottingham_test(shared_datasets, tmp_path, monkeypatch):
    from rnnrbm_cli.datasets import load_prepared, resolve_data

    monkeypatch.setenv("RNNRBM_MIRROR", str(shared_datasets))
    test = load_prepared(resolve_data("nottingham", cache_dir=tmp_path, progress=False)).splits["test"]
    notes, frames = sum(int(r.sum()) for r in test), sum(len(r) for r in test)
    assert frames == 44_463
    # With p = 1/2 for every key: E[TP] = S/2, E[FP] = (88 T - S)/2, E[FN] = S/2 over
    # S true notes in T frames, so ACC = S / (88 T + S).
    expected = 100 * notes / (88 * frames + notes)
    assert expected == pytest.approx(4.34, abs=0.01)
    # The paper's Random row (4.53) is the note density S / (88 T) instead.
    assert 100 * notes / (88 * frames) == pytest.approx(4.53, abs=0.01)
    model = zero_model(n_hidden=150)
    # One Gibbs step of a model of zeros already gives exact samples.
    res = ev.evaluate(model, test, chains=2, betas=2, samples=2, gibbs=1, generator=torch.Generator().manual_seed(0))
    assert res["frames"] == 44_463
    assert res["log_likelihood"] == pytest.approx(RANDOM_LL, abs=1e-4)
    # sd of this estimate ~0.007 points (44,463 x 88 keys x 2 samples); 0.05 is 7 sd.
    assert res["frame_accuracy"] == pytest.approx(expected, abs=0.05)


# --- the command line -----------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path) -> Path:
    from rnnrbm_cli.datasets import FORMAT, write_prepared

    splits = {"train": random_rolls(5), "valid": random_rolls(6), "test": random_rolls(7, lengths=(9, 4))}
    return write_prepared(tmp_path / "toy.npz", splits, {"format": FORMAT, "dataset": "toy"})


def save_fresh(path: Path, n_hidden: int, data: dict) -> Path:
    config = ModelConfig(n_hidden=n_hidden, n_recurrent=10)
    model = RNNRBM(config)
    save_checkpoint(path, {"model_config": asdict(config), "model_state": model.state_dict(), "data": data})
    return path


@pytest.mark.parametrize("n_hidden, method", [(8, "exact"), (30, "ais")])
def test_cli_json(tmp_path, prepared, n_hidden, method):
    ckpt = save_fresh(tmp_path / "model.pt", n_hidden, {"dataset": "toy", "path": str(prepared)})
    result = run("evaluate", ckpt, "--json", "--device", "cpu", "--chains", 4, "--betas", 6,
                 "--samples", 2, "--gibbs", 3, "--seed", 1)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    for key in ("log_likelihood", "log_likelihood_stderr", "frame_accuracy", "frames", "split", "method",
                "seconds", "checkpoint", "data"):
        assert key in out
    assert out["frames"] == 13 and out["split"] == "test" and out["method"] == method
    assert out["data"] == str(prepared)  # the checkpoint's own data when --data is not given
    assert out["chains"] == (4 if method == "ais" else None)
    # A fresh model is nearly uniform: LL close to the random row, ACC a valid percentage.
    assert -62 < out["log_likelihood"] < -60
    assert 0 <= out["frame_accuracy"] <= 100
    again = json.loads(run("evaluate", ckpt, "--json", "--device", "cpu", "--chains", 4, "--betas", 6,
                           "--samples", 2, "--gibbs", 3, "--seed", 1).stdout)
    assert again["log_likelihood"] == out["log_likelihood"]
    assert again["frame_accuracy"] == out["frame_accuracy"]


def test_cli_both_methods_bracket_on_the_same_frames(tmp_path, prepared):
    ckpt = save_fresh(tmp_path / "model.pt", 30, {"dataset": "toy", "path": str(prepared)})
    args = ("evaluate", ckpt, "--device", "cpu", "--chains", 4, "--betas", 20, "--samples", 2, "--gibbs", 3)
    out = json.loads(run(*args, "--json", "--method", "both").stdout)
    assert out["method"] == "ais+raise" and out["frames"] == 13 and out["betas"] == 20
    # a fresh model is nearly uniform, so both are close to the random row, and to each other
    assert out["raise_log_likelihood"] == pytest.approx(out["log_likelihood"], abs=0.05)
    assert out["raise_stderr"] >= 0 and out["raise_log_likelihood_stderr"] > 0
    forward = json.loads(run(*args, "--json", "--method", "ais").stdout)
    for key in ("log_likelihood", "log_likelihood_stderr", "frame_accuracy", "ais_stderr"):
        assert forward[key] == out[key], key  # "both" adds RAISE after the same numbers
    alone = json.loads(run(*args, "--json", "--method", "raise").stdout)
    assert alone["method"] == "raise" and "raise_log_likelihood" not in alone
    table = run(*args, "--method", "both")
    assert table.exit_code == 0, table.output
    assert "LL (RAISE, conservative)" in table.stdout and "AIS and RAISE, 4 chains x 20 betas" in table.stdout
    refused = run(*args, "--method", "exact")
    assert refused.exit_code == 2 and "at most 24" in refused.stderr


def test_cli_table_and_max_frames(tmp_path, prepared):
    ckpt = save_fresh(tmp_path / "model.pt", 8, {})
    result = run("evaluate", ckpt, "--data", prepared, "--split", "train", "--max-frames", 5, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "LL (nats per frame)" in result.stdout and "ACC (%)" in result.stdout
    assert "exact, by enumeration" in result.stdout and prepared.name in result.stdout


def test_cli_bad_checkpoint_exits_1(tmp_path, prepared):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = run("evaluate", bad, "--data", prepared, "--device", "cpu")
    assert result.exit_code == 1
    assert "bad.pt" in result.stderr and "Traceback" not in result.output


def test_cli_checkpoint_without_data_needs_data(tmp_path):
    ckpt = save_fresh(tmp_path / "model.pt", 8, {})
    result = run("evaluate", ckpt, "--device", "cpu")
    assert result.exit_code == 2
    assert "--data" in result.stderr


def test_cli_model_and_data_of_different_widths_exit_1(tmp_path, prepared):
    config = ModelConfig(n_visible=5, n_hidden=3, n_recurrent=4)
    save_checkpoint(tmp_path / "m.pt", {"model_config": asdict(config), "model_state": RNNRBM(config).state_dict()})
    result = run("evaluate", tmp_path / "m.pt", "--data", prepared, "--device", "cpu")
    assert result.exit_code == 1
    assert "visible units" in result.stderr


# --- progress where stderr is not a terminal -------------------------------------------------


def test_plain_progress_lines_per_stage_at_most_every_interval(capsys):
    from rnnrbm_cli.cli_output import _EvalProgress

    now = [100.0]
    progress = _EvalProgress(interval=10, clock=lambda: now[0], terminal=False)
    for t, done in ((0, 0), (4, 400), (12, 1_200), (15, 1_500), (23, 2_300), (30, 3_000)):
        now[0] = 100.0 + t
        progress("AIS log Z", done, 3_000)
    now[0] = 131.0
    progress("note probabilities", 0, 50)
    progress("note probabilities", 50, 50)
    progress.close()
    assert capsys.readouterr().err.splitlines() == [
        "AIS log Z: 3,000 frames",
        "AIS log Z: 1,200/3,000 frames (40%), 100 frames/s, about 18 s left",  # 12 s after the start
        "AIS log Z: 2,300/3,000 frames (77%), 100 frames/s, about 7 s left",  # 11 s after the last line
        "AIS log Z: 3,000 frames in 30 s, 100 frames/s",
        "note probabilities: 50 frames",
        "note probabilities: 50 frames in 0 s",
    ]


def test_cli_evaluate_is_not_silent_in_a_log(tmp_path, prepared):
    ckpt = save_fresh(tmp_path / "model.pt", 30, {})
    result = run("evaluate", ckpt, "--data", prepared, "--json", "--device", "cpu", "--chains", 2, "--betas", 3,
                 "--samples", 2, "--gibbs", 1)
    assert result.exit_code == 0, result.stderr
    json.loads(result.stdout)
    lines = result.stderr.splitlines()
    for stage in ("note probabilities", "AIS base", "AIS log Z"):
        assert f"{stage}: 13 frames" in lines
        assert any(line.startswith(f"{stage}: 13 frames in ") for line in lines), lines
