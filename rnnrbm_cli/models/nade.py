"""The RNN-NADE (Boulanger-Lewandowski et al. 2012, Sec. 4; NADE: Larochelle & Murray 2011).

The conditional RBM of the RNN-RBM is replaced by a NADE over the 88 notes of frame t,
whose biases come from the RNN's previous state u(t-1) as the RBM's do::

    b(t) = bv + u(t-1) Wuv           c(t) = bh + u(t-1) Wuh
    h_i(t) = sigmoid(c(t) + sum_{j<i} v_j(t) W[j])                  (n_hidden,)
    p(v_i(t) = 1 | v_<i(t), past) = sigmoid(b_i(t) + V[i] . h_i(t))

W and V, shape (n_visible, n_hidden), are shared across time. The likelihood is exact, so
training is exact maximum likelihood (BPTT through the RNN, no CD), evaluation needs no
AIS and sampling is exact, note by note. All notes of all frames are computed at once by
an exclusive cumulative sum over notes; no Python loop runs over notes or frames except in
sampling, which is sequential by nature.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from rnnrbm_cli.models.base import PAPER_COMMON, SHIFTED, CostResult, ModelConfig, Recurrent, masked_mean, normal_init
from rnnrbm_cli.models.record import EXACT, ModelRecord

# Frames of a (frames, n_visible, n_hidden) working tensor at once: ~0.5 GB in float32
# at the default sizes, bounding memory of evaluation and sampling, not the results.
_FRAMES_BUDGET = 1 << 25
# Frames per block in training: the (block, n_visible, n_hidden) tensors of a block stay in
# the CPU's cache; measured 2x (batch 1) to 8x (batch 8) faster per frame than one block.
_TRAIN_BLOCK = 32


class RNNNADE(Recurrent):
    """The RNN-NADE: W, V, bv, bh, Wuh, Wuv and the recurrence (see base.py)."""

    def __init__(self, config: ModelConfig = ModelConfig(model_type="rnn-nade"), generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        n_v, n_h, n_u = config.n_visible, config.n_hidden, config.n_recurrent

        normal = normal_init(generator)
        self.W = nn.Parameter(normal(n_v, n_h, sd=0.01))
        self.V = nn.Parameter(normal(n_v, n_h, sd=0.01))
        self._init_conditioning(n_v, n_h, n_u, normal)
        self._init_recurrence(config.rnn, n_v, n_u, config.learn_u0, normal, generator)

    # -- the NADE of one frame ------------------------------------------------------------

    def note_logits(self, v: Tensor, b: Tensor, c: Tensor) -> Tensor:
        """logit p(v_i = 1 | v_<i) for every note of frames v (..., n_visible) with biases
        b (..., n_visible), c (..., n_hidden). Returns (..., n_visible)."""
        contrib = v.unsqueeze(-1) * self.W  # (..., n_v, n_h): v_j W[j]
        # exclusive cumulative sum over notes: note i sees v_<i only
        a = c.unsqueeze(-2) + contrib.cumsum(-2) - contrib
        return b + (torch.sigmoid(a) * self.V).sum(-1)

    def frame_log_prob(self, v: Tensor, b: Tensor, c: Tensor) -> Tensor:
        """Exact log p(v | biases) of frames v (..., n_visible), in nats: (...)."""
        return -F.binary_cross_entropy_with_logits(self.note_logits(v, b, c), v, reduction="none").sum(-1)

    def blocked_log_prob(self, v: Tensor, b: Tensor, c: Tensor) -> Tensor:
        """:meth:`frame_log_prob` of frames (N, n_visible) in blocks of _TRAIN_BLOCK frames; with
        gradients, each block's working tensors are recomputed in backward instead of kept."""
        if v.shape[0] <= _TRAIN_BLOCK:
            return self.frame_log_prob(v, b, c)
        grad = torch.is_grad_enabled() and (b.requires_grad or c.requires_grad or self.W.requires_grad)
        parts = []
        for i in range(0, v.shape[0], _TRAIN_BLOCK):
            args = (v[i : i + _TRAIN_BLOCK], b[i : i + _TRAIN_BLOCK], c[i : i + _TRAIN_BLOCK])
            parts.append(checkpoint(self.frame_log_prob, *args, use_reentrant=False) if grad else self.frame_log_prob(*args))
        return torch.cat(parts)

    @torch.no_grad()
    def sample_frames(self, b: Tensor, c: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Exact ancestral samples of frames with biases b (N, n_visible), c (N, n_hidden).

        Returns the samples (N, n_visible) 0/1 and each note's probability given the notes
        sampled before it (N, n_visible): its mean over samples is the note's marginal.
        """
        N, n_v = b.shape
        a = c.clone()
        v = torch.empty_like(b)
        p = torch.empty_like(b)
        uniform = torch.rand((N, n_v), generator=generator, device=b.device, dtype=b.dtype)
        for i in range(n_v):
            p[:, i] = torch.sigmoid(b[:, i] + torch.sigmoid(a) @ self.V[i])
            v[:, i] = (uniform[:, i] < p[:, i]).to(b.dtype)
            a = a + v[:, i : i + 1] * self.W[i]
        return v, p

    # -- training -----------------------------------------------------------------------

    def nll_cost(self, v: Tensor, lengths: Tensor | None = None) -> CostResult:
        """Mean negative log-likelihood per real frame of a padded batch v (B, T, n_visible);
        ``cost.backward()`` gives the exact gradient. The monitor is the mean log-likelihood."""
        B, T, n_v = v.shape
        b, c = self.conditional_biases(v)
        logp = self.blocked_log_prob(v.reshape(-1, n_v), b.reshape(-1, n_v), c.reshape(-1, c.shape[-1])).view(B, T)
        mean, n_frames = masked_mean(logp, lengths)
        cost = -mean
        return CostResult(cost=cost, monitor=(-cost).detach(), n_frames=n_frames)

    def training_cost(self, v, lengths, k, generator) -> CostResult:
        """Exact maximum likelihood (:meth:`nll_cost`; no Gibbs steps, so ``k`` is unused)."""
        return self.nll_cost(v, lengths)

    # -- generation ---------------------------------------------------------------------

    def sample_frame(self, state, k: int, generator: torch.Generator | None) -> Tensor:
        """An exact ancestral sample of each sequence's next frame (``k`` unused: no chain)."""
        u = state[0]
        return self.sample_frames(self.bv + u @ self.Wuv, self.bh + u @ self.Wuh, generator)[0]


def frames_per_batch(model: RNNNADE) -> int:
    """Frames whose (n_visible, n_hidden) working tensors fit the memory budget at once."""
    return max(1, _FRAMES_BUDGET // (model.config.n_visible * model.config.n_hidden))


@torch.no_grad()
def exact_log_likelihoods(model: RNNNADE, v: Tensor, bv: Tensor, bh: Tensor, progress=None) -> Tensor:
    """Exact log p(v_t | history) (N,) of frames v (N, n_visible) given their biases, in
    batches that fit the memory budget; ``progress(n)`` after each."""
    per = frames_per_batch(model)
    out = []
    for first in range(0, v.shape[0], per):
        sl = slice(first, first + per)
        out.append(model.frame_log_prob(v[sl], bv[sl], bh[sl]))
        if progress is not None:
            progress(len(out[-1]))
    return torch.cat(out) if out else v.new_zeros(0)


@torch.no_grad()
def exact_marginals(model: RNNNADE, bv: Tensor, bh: Tensor, samples: int, generator=None, progress=None) -> Tensor:
    """Note marginals (N, n_visible) from ``samples`` exact ancestral samples of each frame
    given its biases; each sample contributes its notes' conditional probabilities
    (Rao-Blackwellised: their mean is the marginal, with less noise than the 0/1 notes)."""
    per = max(1, frames_per_batch(model) // samples)
    p = torch.empty_like(bv)
    for first in range(0, bv.shape[0], per):
        stop = min(first + per, bv.shape[0])
        b = bv[first:stop].repeat_interleave(samples, 0)
        c = bh[first:stop].repeat_interleave(samples, 0)
        _, probs = model.sample_frames(b, c, generator)
        p[first:stop] = probs.view(stop - first, samples, -1).mean(1)
        if progress is not None:
            progress(stop - first)
    return p


RECORD = ModelRecord(
    name="rnn-nade",
    summary="RNN-NADE: a NADE per frame, exact likelihood and sampling (the paper's best model)",
    model_class=RNNNADE,
    config_class=ModelConfig,
    likelihood=EXACT,
    uses_gibbs=False,
    frame_parameters=("W", "V", "bv", "bh"),
    # each note's logit b_i(t) + V[i] . h_i over T: b(t) = bv + u Wuv, and V (h itself unchanged)
    temperature_parameters=("V", "bv", "Wuv"),
    exact_log_likelihoods=exact_log_likelihoods,
    exact_marginals=exact_marginals,
    frames_per_batch=frames_per_batch,
    kernels="nade",
    # Exact maximum likelihood with Adam, one chunk per update; the exact validation LL on
    # every validation frame every epoch picks best.pt and stops the run. Averaged parameters
    # (ema 0.9995) were the best setting on validation on all four datasets (README, Results):
    # JSB -5.253 against -5.323 without (0.999: -5.255; --augment-transpose 3: -5.330, 1: -5.520;
    # --weight-decay 0.05: -5.423), Nottingham -2.109 against -2.174 (0.999: -2.110),
    # Piano-midi.de -7.49 against -7.62 (0.999 -7.50, n_recurrent 200 -7.55, lr 0.0005 -7.57,
    # 100 hidden units -7.67), MuseData -5.64 against -5.81 (200 recurrent units -5.73).
    paper_preset={
        **PAPER_COMMON, "model_type": "rnn-nade", "pretrain_rbm_epochs": 0, "pretrain_rnn_epochs": 0,
        "optimizer": "adam", "lr": 0.001, "lr_schedule": "constant", "epochs": 150, "eval_every": 1, "patience": 10,
        "ema": 0.9995,
    },
    paper_by_data={
        # Nottingham has 8x the updates per epoch of JSB chorales: fewer, larger steps.
        "nottingham": {"lr": 0.002, "batch": 4},
        # Piano-midi.de overfits (87 training pieces): shifting each training piece by up to 3
        # semitones every epoch, as the RNN's and RNN-RBM's presets there, -6.981 (epoch 102, ten
        # estimates without a new best) against -7.49; waiting 20, up to 300 epochs, -6.853 (163).
        "piano-midi.de": SHIFTED,
        # JSB chorales the same: shifted pieces stopped at patience 10 (-5.330, see above), but
        # waiting 20 estimates, up to 300 epochs, they reach -5.083 (epoch 282) against -5.253.
        "jsb-chorales": SHIFTED,
        # MuseData too, though its training split is the largest (245,202 frames): behind the
        # unshifted preset to epoch 50 (by 0.3 at epoch 10), ahead after; -5.555 (epoch 104)
        # against -5.640 (41, stopped early at 51).
        "musedata": SHIFTED,
    },
    search_space={
        "optimizer": "adam",
        "lr": {"low": 2e-4, "high": 5e-3, "log": True},
        "lr_schedule": {"choices": ["constant", "plateau"]},
        "batch": {"choices": [1, 2, 4]},
        "n_hidden": {"low": 50, "high": 300, "step": 25},
        "n_recurrent": {"low": 50, "high": 200, "step": 25},
        "rnn": {"choices": ["tanh", "gru", "lstm"]},
        "learn_u0": True,
    },
)
