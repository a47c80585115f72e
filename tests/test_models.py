"""The model records: what the rest of the tool asks of a model type, and the proof that
moving the models into records changed nothing a user can see."""

from __future__ import annotations

import hashlib

import pytest
import torch

from conftest import make_trainer

# sha256 (first 16 hex digits) of the model_state of checkpoint.pt after a short training run,
# taken with the code as it was before the models became records (commit d734955), on this CPU
# type. Floating-point results depend on the instruction set torch's and numba's kernels were
# built for, so the pin holds only on the CPU it was taken on; elsewhere the test says so.
PINNED_ON = {"torch_cpu": "AVX512", "numba_cpu": "znver5"}
PINNED = {
    # RNN-RBM, one epoch of each pretraining stage then two of fine-tuning, CD-1.
    "rbm-torch": "272fd88f13881e35",
    "rbm-numba": "feae52b549dae76b",
    # RNN-NADE, two epochs of exact maximum likelihood with Adam.
    "nade-torch": "8e9c51866a503f2d",
}
RUNS = {
    "rbm-torch": dict(backend="torch", pretrain_rbm_epochs=1, pretrain_rnn_epochs=1),
    "rbm-numba": dict(backend="numba", pretrain_rbm_epochs=1, pretrain_rnn_epochs=1),
    "nade-torch": dict(model_type="rnn-nade", backend="torch", optimizer="adam", lr=0.01),
}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def this_cpu() -> dict[str, str]:
    import llvmlite.binding

    return {"torch_cpu": torch.backends.cpu.get_cpu_capability(), "numba_cpu": llvmlite.binding.get_host_cpu_name()}


@pytest.mark.parametrize("run", sorted(PINNED))
def test_a_short_run_reproduces_the_checkpoint_pinned_before_the_move(toy_npz, tmp_path, run):
    if this_cpu() != PINNED_ON:
        pytest.skip(f"the digests were pinned on {PINNED_ON}; this machine is {this_cpu()}")
    make_trainer(toy_npz, tmp_path / run, epochs=2, **RUNS[run]).train()
    payload = torch.load(tmp_path / run / "checkpoint.pt", weights_only=True)
    assert state_digest(payload["model_state"]) == PINNED[run]


# -- a model defined here, outside the package: one record, and every command runs it ----------

import json  # noqa: E402

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from rnnrbm_cli import models  # noqa: E402
from rnnrbm_cli.models.base import CostResult, ModelConfig, masked_mean  # noqa: E402
from rnnrbm_cli.models.record import EXACT, ModelRecord  # noqa: E402

from conftest import run  # noqa: E402


class HistoryFree(nn.Module):
    """Every frame's notes independent Bernoullis with one learned probability each, whatever
    came before: the "history-free" baseline, as small as a model can be."""

    def __init__(self, config: ModelConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.bv = nn.Parameter(torch.zeros(config.n_visible))

    def conditional_biases(self, v):
        return self.bv.expand_as(v), v.new_zeros(*v.shape[:-1], 0)

    def training_cost(self, v, lengths, k, generator) -> CostResult:
        nll = nn.functional.binary_cross_entropy_with_logits(self.bv.expand_as(v), v, reduction="none").sum(-1)
        cost, n = masked_mean(nll, lengths)
        return CostResult(cost, (-cost).detach(), n)

    rnn_prediction_cost = None  # no RNN: the toy cannot be RNN-pretrained

    def parameter_parts(self):
        return {"frame": [self.bv], "rnn": []}

    @torch.no_grad()
    def generate(self, n, steps, k=0, primer=None, generator=None):
        p = torch.sigmoid(self.bv).expand(n, steps, -1)
        out = (torch.rand(p.shape, generator=generator) < p).float()
        return out if primer is None else torch.cat([primer.float().expand(n, -1, -1), out], 1)


def _toy_log_likelihoods(model, v, bv, bh, progress=None):
    return -nn.functional.binary_cross_entropy_with_logits(bv, v, reduction="none").sum(-1)


TOY = ModelRecord(
    name="toy-history-free", summary="a test's model", model_class=HistoryFree, config_class=ModelConfig,
    likelihood=EXACT, uses_gibbs=False, frame_parameters=("bv",), paper_preset={}, pretraining=("rbm",),
    exact_log_likelihoods=_toy_log_likelihoods,
    exact_marginals=lambda model, bv, bh, samples, generator=None, progress=None: torch.sigmoid(bv),
)


@pytest.fixture
def toy_model():
    models.register(TOY)
    yield TOY
    models.unregister(TOY.name)


def test_a_model_registered_outside_the_package_trains_evaluates_and_samples(toy_model, toy_npz, tmp_path):
    assert toy_model.name in models.model_types()
    r = run("train", "--model", toy_model.name, "--data", toy_npz, "--epochs", "3", "--lr", "0.1", "--optimizer",
            "adam", "--eval-every", "1", "--run-dir", tmp_path / "run", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["model_type"] == toy_model.name

    r = run("evaluate", tmp_path / "run" / "best.pt", "--split", "test", "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["method"] == "exact" and result["model_type"] == toy_model.name and result["gibbs"] is None
    # the exact LL, independently: each note's Bernoulli log-probability under the trained bv
    from rnnrbm_cli.checkpoint import load_model
    from rnnrbm_cli.datasets import load_prepared

    model, _ = load_model(tmp_path / "run" / "best.pt")
    frames = torch.from_numpy(np.concatenate(load_prepared(toy_npz).splits["test"])).double()
    p = torch.sigmoid(model.bv.detach().double())
    expected = (frames * p.log() + (1 - frames) * (1 - p).log()).sum(1).mean()
    assert result["log_likelihood"] == pytest.approx(float(expected), abs=1e-4)

    r = run("sample", tmp_path / "run" / "best.pt", tmp_path / "song.mid", "--steps", "16", "--seed", "1")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "song.mid").stat().st_size > 0


def test_preset_paper_for_a_model_without_one_is_one_sentence(toy_model, toy_npz, tmp_path):
    from conftest import one_sentence_error

    r = run("train", "--model", toy_model.name, "--preset", "paper", "--data", toy_npz, "--run-dir", tmp_path / "r")
    assert "has no paper preset" in one_sentence_error(r, 2)


# -- the third model: Table 1's RNN --------------------------------------------------------------

from rnnrbm_cli.models.rnn import RNN  # noqa: E402


def tiny_rnn(rnn="tanh", n_visible=3, seed=0) -> RNN:
    m = RNN(ModelConfig(n_visible=n_visible, n_hidden=1, n_recurrent=4, rnn=rnn, learn_u0=True, model_type="rnn"),
            torch.Generator().manual_seed(seed)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)) * 0.8)
    return m


@pytest.mark.parametrize("rnn", ["tanh", "lstm"])
def test_rnn_log_likelihood_equals_a_plain_loop_over_frames_and_notes(rnn):
    import math

    m = tiny_rnn(rnn).requires_grad_(False)
    v = (torch.rand(2, 6, 3, generator=torch.Generator().manual_seed(3)) < 0.5).double()
    lengths = torch.tensor([6, 4])
    res = m.training_cost(v, lengths, 1, None)
    total, frames = 0.0, 0
    for b in range(2):
        state = m.initial_state(1)
        for t in range(int(lengths[b])):
            logits = m.bv + state[0][0] @ m.Wuv  # u(t-1): the frame is predicted from the past only
            for i in range(3):
                p = 1 / (1 + math.exp(-float(logits[i])))
                total += math.log(p) if v[b, t, i] == 1 else math.log(1 - p)
            frames += 1
            state = m.step(v[b, t : t + 1], state)
    assert res.n_frames == frames
    assert float(res.monitor) == pytest.approx(total / frames, rel=1e-12)
    assert float(res.cost) == pytest.approx(-total / frames, rel=1e-12)


def test_rnn_samples_follow_its_exact_probabilities():
    m = tiny_rnn(n_visible=2)
    n = 40_000
    out = m.generate(n, 2, generator=torch.Generator().manual_seed(5))  # (n, 2 frames, 2 notes)
    codes = (out.reshape(n, 4) * torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=out.dtype)).sum(1).long()
    freq = torch.bincount(codes, minlength=16).double() / n
    # exact: every two-frame sequence's probability, from the model's own log-likelihood
    seqs = ((torch.arange(16)[:, None] >> torch.arange(4)) & 1).double().view(16, 2, 2)
    with torch.no_grad():
        bv, bh = m.conditional_biases(seqs)
        exact = models.record("rnn").exact_log_likelihoods(m, seqs.reshape(32, 2), bv.reshape(32, 2), bh.reshape(32, 0))
    exact = exact.view(16, 2).sum(1).exp()
    assert float(exact.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(freq, exact, atol=0.01, rtol=0)


def test_rnn_accuracy_marginals_are_each_notes_probability_given_the_true_past():
    from rnnrbm_cli.evaluate import conditional_frames, frame_marginals

    m = tiny_rnn().float().requires_grad_(False)
    seqs = [(np.random.default_rng(s).random((n, 3)) < 0.4).astype(np.float32) for s, n in ((0, 5), (1, 3))]
    frames = conditional_frames(m, seqs)
    got = frame_marginals(m, frames, samples=4)
    expected = []
    for seq in seqs:  # a plain loop: the recurrence one true frame at a time, the notes' sigmoids
        state = m.initial_state(1)
        for t in range(len(seq)):
            expected.append(torch.sigmoid(m.bv + state[0][0] @ m.Wuv))
            state = m.step(torch.from_numpy(seq[t : t + 1]), state)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_rnn_through_train_evaluate_and_sample(toy_npz, tmp_path):
    r = run("train", "--model", "rnn", "--rnn", "gru", "--data", toy_npz, "--epochs", "2", "--optimizer", "adam",
            "--lr", "0.01", "--eval-every", "1", "--run-dir", tmp_path / "run", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    r = run("evaluate", tmp_path / "run" / "best.pt", "--json")
    assert r.exit_code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["method"] == "exact" and result["model_type"] == "rnn" and result["gibbs"] is None
    assert -60 < result["log_likelihood"] < 0
    r = run("sample", tmp_path / "run" / "best.pt", tmp_path / "a.mid", "--steps", "20", "--seed", "3")
    assert r.exit_code == 0, r.stderr


def test_a_pretraining_stage_a_model_lacks_is_one_sentence_before_anything_is_written(toy_model, toy_npz, tmp_path):
    from conftest import one_sentence_error

    for model, flag in ((toy_model.name, "--pretrain-rnn-epochs"), ("rnn", "--pretrain-rbm-epochs")):
        r = run("train", "--model", model, "--data", toy_npz, flag, "1", "--epochs", "1",
                "--run-dir", tmp_path / model)
        assert flag in one_sentence_error(r, 2)
        assert not (tmp_path / model).exists()


def test_an_annealing_method_asked_of_an_exact_model_is_said_not_used(toy_npz, tmp_path):
    import json as _json

    r = run("train", "--model", "rnn", "--data", toy_npz, "--epochs", "1", "--run-dir", tmp_path / "r", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    r = run("evaluate", tmp_path / "r" / "best.pt", "--method", "raise", "--json")
    assert r.exit_code == 0, r.stderr
    assert "--method raise is not used" in r.stderr
    assert _json.loads(r.stdout)["method"] == "exact"


def test_k_given_to_a_model_without_gibbs_chains_is_said_not_used(toy_npz, tmp_path):
    r = run("train", "--model", "rnn", "--data", toy_npz, "--epochs", "1", "--k", "5", "--run-dir", tmp_path / "r",
            "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert "--k is not used" in r.stderr
    r = run("sample", tmp_path / "r" / "best.pt", tmp_path / "a.mid", "--k", "3", "--steps", "8", "--seed", "1")
    assert r.exit_code == 0 and "--k is not used" in r.stderr
    r = run("sample", tmp_path / "r" / "best.pt", tmp_path / "b.mid", "--steps", "8", "--seed", "1")
    assert r.exit_code == 0 and "--k" not in r.stderr
