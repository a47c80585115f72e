"""The RNN-RBM (Boulanger-Lewandowski, Bengio & Vincent, ICML 2012) as a torch module.

At each time step t a conditional RBM over the frame v(t) has biases that depend on the
previous state u(t-1) of a deterministic RNN::

    bv(t) = bv + u(t-1) Wuv        bh(t) = bh + u(t-1) Wuh
    u(t)  = tanh(bu + u(t-1) Wuu + v(t) Wvu)

Shapes follow one orientation everywhere: a batch of frames is ``(B, T, n_visible)`` with
values in {0, 1} (float), and ``lengths`` ``(B,)`` says how many leading frames of each
row are real; the rest is padding, which never reaches a cost, gradient or monitor.

This module knows tensors only: no files, no loop over epochs. Its ``RECORD`` says what the
rest of the tool needs to know of it (``models/record.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnrbm_cli.models.base import PAPER_COMMON, CostResult, ModelConfig, Recurrent, masked_mean, normal_init
from rnnrbm_cli.models.record import ANNEALED, ModelRecord


# --- RBM pieces, for any leading batch shape -----------------------------------------


def free_energy(v: Tensor, W: Tensor, bv: Tensor, bh: Tensor) -> Tensor:
    """F(v) = -v.bv - sum_j softplus((v W + bh)_j), in nats.

    v : (..., n_visible); W : (n_visible, n_hidden); bv : (..., n_visible);
    bh : (..., n_hidden). Returns (...).
    """
    return -(v * bv).sum(-1) - F.softplus(v @ W + bh).sum(-1)


def _bernoulli(p: Tensor, uniform: Tensor) -> Tensor:
    # Comparing with pre-drawn uniforms is ~3x faster than torch.bernoulli on CPU.
    return (uniform < p).to(p.dtype)


def gibbs_chain(
    v: Tensor,
    W: Tensor,
    bv: Tensor,
    bh: Tensor,
    k: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Run k steps of block Gibbs sampling v -> h -> v from ``v``; return the last v.

    Shapes as in :func:`free_energy`. Every frame of the batch runs its own chain in
    parallel, each with its own biases. All random numbers are drawn in one call.
    """
    n_v, n_h = W.shape
    lead = v.shape[:-1]
    uniform = torch.rand((k, *lead, n_h + n_v), generator=generator, device=v.device, dtype=v.dtype)
    Wt = W.t()
    for step in range(k):
        h = _bernoulli(torch.sigmoid(v @ W + bh), uniform[step, ..., :n_h])
        v = _bernoulli(torch.sigmoid(h @ Wt + bv), uniform[step, ..., n_h:])
    return v


# The most hidden units whose 2**n_hidden states are ever enumerated.
EXACT_LIMIT = 24


def log_partition_exact(W: Tensor, bv: Tensor, bh: Tensor) -> Tensor:
    """log Z of an RBM by enumerating every hidden state: feasible for n_hidden <= ~20.

    log Z = logsumexp_h [ bh.h + sum_i softplus(bv_i + (W h)_i) ].
    W : (n_visible, n_hidden); bv : (..., n_visible); bh : (..., n_hidden). Returns (...).
    """
    n_h = W.shape[1]
    if n_h > EXACT_LIMIT:
        raise ValueError(f"exact log Z enumerates 2**n_hidden states; n_hidden={n_h} is too many")
    codes = torch.arange(2**n_h, device=W.device)
    hs = ((codes[:, None] >> torch.arange(n_h, device=W.device)) & 1).to(W.dtype)  # (2^n_h, n_h)
    # (..., 2^n_h): bh.h and softplus(bv + W h) summed over visibles
    terms = bh @ hs.t() + F.softplus(bv.unsqueeze(-2) + hs @ W.t()).sum(-1)
    return torch.logsumexp(terms, dim=-1)


def _ais_increment(v: Tensor, W: Tensor, c: Tensor, d: Tensor, b0: float, b1: float) -> tuple[Tensor, Tensor]:
    """f_b1(v) - f_b0(v) for states v (n, chains, n_v) on the AIS path (see
    :func:`ais_log_weights`), and x1 = b1 (v W + bh), the hidden pre-activations at b1."""
    n, chains, n_v = v.shape
    x1 = (v.reshape(-1, n_v) @ W).view(n, chains, -1).add_(c).mul_(b1)  # b1 (v W + bh(t))
    # elementwise first: the two softplus sums are large and close.
    step = (F.softplus(x1) - F.softplus(x1 * (b0 / b1))).sum(-1)
    return step.add_((b1 - b0) * (v @ d).squeeze(-1)), x1


def _tempered_gibbs(x1: Tensor, W: Tensor, a: Tensor, b: Tensor, b1: float, generator) -> Tensor:
    """One block Gibbs step at inverse temperature b1 from the state whose hidden
    pre-activations at b1 are x1: h ~ p_b1(h | v), then v ~ p_b1(v | h)."""
    n, chains, n_h = x1.shape
    # (torch.bernoulli draws and compares in one pass: faster than rand + compare.)
    h = torch.bernoulli(torch.sigmoid(x1), generator=generator)
    x = (h.view(-1, n_h) @ (b1 * W.t())).view(n, chains, -1).add_((1.0 - b1) * a + b1 * b)
    return torch.bernoulli(x.sigmoid_(), generator=generator)


@torch.no_grad()
def ais_log_weights(
    W: Tensor, base: Tensor, bv: Tensor, bh: Tensor, schedule: Tensor, chains: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Log-weights of ``chains`` AIS runs for each of n RBMs sharing W (the reference path).

    base, bv : (n, n_visible); bh : (n, n_hidden); schedule : (K + 1,) float64 inverse
    temperatures from 0 to 1. With the hidden units summed out the intermediate models are
    f_b(v) = (1 - b) v.base + b v.bv + sum_j softplus(b (v W + bh)_j); a run starts from
    v ~ Bernoulli(sigmoid(base)), adds f_k(v) - f_(k-1)(v) at each step and takes one block
    Gibbs step at beta_k (none after the last). Returns (n, chains) in W's dtype.
    """
    n_v = W.shape[0]
    n = bv.shape[0]
    steps = schedule.tolist()
    a, b, c = base.unsqueeze(1), bv.unsqueeze(1), bh.unsqueeze(1)  # (n, 1, .)
    d = (bv - base).unsqueeze(-1)  # (n, n_v, 1)
    v = torch.bernoulli(torch.sigmoid(a).expand(n, chains, n_v), generator=generator)
    log_w = torch.zeros((n, chains), device=W.device, dtype=W.dtype)
    last = len(steps) - 1
    for k in range(1, last + 1):
        step, x1 = _ais_increment(v, W, c, d, steps[k - 1], steps[k])
        log_w += step
        if k < last:
            v = _tempered_gibbs(x1, W, a, b, steps[k], generator)
    return log_w


@torch.no_grad()
def raise_log_weights(
    W: Tensor, base: Tensor, bv: Tensor, bh: Tensor, schedule: Tensor, chains: int, v: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Log-weights of ``chains`` reverse annealing runs (RAISE, Burda, Grosse &
    Salakhutdinov 2015) from the observed frames ``v`` (n, n_visible), on the path of
    :func:`ais_log_weights`.

    A run starts at v and, for k = K ... 1, takes one block Gibbs step at beta_k and adds
    f_k(y) - f_(k-1)(y) at the new state y. With w_c = those sums,
    p-hat(v) = exp(-F(v) - log Z_0 - w_c) is an unbiased estimate of the probability of v
    under the annealing model (a base sample carried through the Gibbs steps at beta_1 ...
    beta_K), so its log is a stochastic lower bound there: unlike forward AIS, whose
    failures make LL look better, RAISE's make it look worse. Returns (n, chains).
    """
    n_v = W.shape[0]
    n = bv.shape[0]
    steps = schedule.tolist()
    a, b, c = base.unsqueeze(1), bv.unsqueeze(1), bh.unsqueeze(1)
    d = (bv - base).unsqueeze(-1)
    y = v.unsqueeze(1).expand(n, chains, n_v).to(W.dtype)
    K = len(steps) - 1
    x1 = (y.reshape(-1, n_v) @ W).view(n, chains, -1).add_(c).mul_(steps[K])
    log_w = torch.zeros((n, chains), device=W.device, dtype=W.dtype)
    for k in range(K, 0, -1):
        y = _tempered_gibbs(x1, W, a, b, steps[k], generator)
        step, x1 = _ais_increment(y, W, c, d, steps[k - 1], steps[k])
        log_w += step
        if k > 1:
            x1.mul_(steps[k - 1] / steps[k])  # the next Gibbs step is at beta_(k-1)
    return log_w


# --- the model -------------------------------------------------------------------------


class RNNRBM(Recurrent):
    """The RNN-RBM: parameters W, bv, bh, Wuh, Wuv and the recurrence's (Wvu, Wuu, bu, and
    u0 if learned, for tanh and sigmoid; torch's cell for lstm and gru).

    ``generator`` seeds the initialisation (a local ``torch.Generator``: building a model
    never touches the global seed); default: torch's global generator.
    """

    # The one documented list of the parameters in the order compiled code takes them
    # (engines/numba_rbm.py hands them over as arrays, for the tanh recurrence; nothing else reads them by name):
    # W (n_visible, n_hidden), bv (n_visible,), bh (n_hidden,), Wuh (n_recurrent, n_hidden),
    # Wuv (n_recurrent, n_visible), Wvu (n_visible, n_recurrent), Wuu (n_recurrent,
    # n_recurrent), bu (n_recurrent,), u0 (n_recurrent,) (a fixed zero buffer unless learned).
    PARAMETERS = ("W", "bv", "bh", "Wuh", "Wuv", "Wvu", "Wuu", "bu", "u0")

    def __init__(self, config: ModelConfig = ModelConfig(), generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        n_v, n_h, n_u = config.n_visible, config.n_hidden, config.n_recurrent

        normal = normal_init(generator)
        # The tutorial's initialisation: W ~ N(0, 0.01), RNN weights ~ N(0, 0.0001), biases 0.
        self.W = nn.Parameter(normal(n_v, n_h, sd=0.01))
        self._init_conditioning(n_v, n_h, n_u, normal)
        self._init_recurrence(config.rnn, n_v, n_u, config.learn_u0, normal, generator)

    def parameter_list(self) -> list[Tensor]:
        """The tensors named by ``PARAMETERS``, in that order (u0 may be a buffer)."""
        return [getattr(self, name) for name in self.PARAMETERS]

    # -- training -----------------------------------------------------------------------

    def cd_cost(
        self,
        v: Tensor,
        lengths: Tensor | None = None,
        k: int = 15,
        generator: torch.Generator | None = None,
        v_neg: Tensor | None = None,
    ) -> CostResult:
        """The CD-k cost of a padded batch and the tutorial's monitor.

        v : (B, T, n_visible) float 0/1; lengths : (B,) int64, default all T. Negative
        samples come from a k-step Gibbs chain started at the data frames, every time
        step in parallel; they are held constant, so ``cost.backward()`` gives the CD
        gradient for all parameters, through bv(t), bh(t) into the RNN. Tests may pass
        their own negative samples ``v_neg`` (B, T, n_visible) instead of the chain's.
        """
        bv_t, bh_t = self.conditional_biases(v)
        with torch.no_grad():
            if v_neg is None:
                v_neg = gibbs_chain(v, self.W, bv_t, bh_t, k, generator)
            monitor_logits = self._reconstruction_logits(v_neg, bv_t, bh_t, generator)
        fe_gap = free_energy(v, self.W, bv_t, bh_t) - free_energy(v_neg, self.W, bv_t, bh_t)  # (B, T)
        # The monitor: log p(v | h) with h sampled from the chain's last v, as the tutorial
        # computes it, but through log-sigmoid so that it is never -inf.
        log_rec = -F.binary_cross_entropy_with_logits(monitor_logits, v, reduction="none").sum(-1)
        cost, n_frames = masked_mean(fe_gap, lengths)
        monitor, _ = masked_mean(log_rec, lengths)
        return CostResult(cost=cost, monitor=monitor.detach(), n_frames=n_frames)

    def training_cost(self, v, lengths, k, generator) -> CostResult:
        """CD-k (:meth:`cd_cost`)."""
        return self.cd_cost(v, lengths, k, generator)

    def _reconstruction_logits(self, v_neg: Tensor, bv_t: Tensor, bh_t: Tensor, generator) -> Tensor:
        n_h = self.config.n_hidden
        uniform = torch.rand((*v_neg.shape[:-1], n_h), generator=generator, device=v_neg.device, dtype=v_neg.dtype)
        h = _bernoulli(torch.sigmoid(v_neg @ self.W + bh_t), uniform)
        return h @ self.W.t() + bv_t

    # -- generation ---------------------------------------------------------------------

    def sample_frame(self, state, k: int, generator: torch.Generator | None) -> Tensor:
        """A fresh k-step Gibbs chain started from zeros (the tutorial's way) in the conditional
        RBM given the history u(t-1) = state[0]; its last visible state (n, n_visible)."""
        u = state[0]
        zeros = torch.zeros(u.shape[0], self.config.n_visible, device=self.W.device)
        return gibbs_chain(zeros, self.W, self.bv + u @ self.Wuv, self.bh + u @ self.Wuh, k, generator)

# The recipe of the large datasets (paper_by_data below says how each was chosen): 200 hidden
# units, Adam 0.0003 constant, averaged parameters, best.pt by RAISE at 25 x 1000.
_LARGE = {"n_hidden": 200, "lr": 0.0003, "lr_schedule": "constant", "epochs": 120,
          "ema": 0.99995, "eval_method": "raise", "eval_betas": 1000, "eval_chains": 25}

RECORD = ModelRecord(
    name="rnn-rbm",
    summary="RNN-RBM: a conditional RBM per frame, trained by CD-k (the paper's and the tutorial's model)",
    model_class=RNNRBM,
    config_class=ModelConfig,
    likelihood=ANNEALED,
    uses_gibbs=True,
    frame_parameters=("W", "bv", "bh"),
    # E(v, h) / T: W, bv(t) = bv + u Wuv and bh(t) = bh + u Wuh, all divided by T
    temperature_parameters=("W", "bv", "bh", "Wuv", "Wuh"),
    kernels="rbm",
    # The paper's pretraining of the RBM (CD-15 on shuffled frames) and of the RNN
    # (cross-entropy), then Adam on the whole model, halving the rate when validation LL stalls,
    # best.pt and early stopping by validation LL. (On JSB: -6.73 valid against -7.26 without
    # pretraining and -6.70 at a constant 0.001 in 40 more epochs; README, Results.)
    paper_preset={
        **PAPER_COMMON, "model_type": "rnn-rbm", "k": 15,
        "pretrain_rbm_epochs": 20, "pretrain_rbm_lr": 0.01, "pretrain_rnn_epochs": 40, "pretrain_rnn_lr": 0.003,
        "optimizer": "adam", "lr": 0.003, "lr_schedule": "plateau", "lr_decay": 0.5, "lr_patience": 1, "epochs": 150,
        "eval_every": 5, "patience": 6,
    },
    paper_by_data={
        # Nottingham has 8.7x JSB's updates per epoch: at JSB's Adam 0.003 its RBMs sharpen until
        # forward AIS fails (a 100-beta validation "LL" of an impossible -0.94 chose best.pt) and
        # reverse annealing falls (-3.79 after 5 epochs, then worse); at 0.0003 the validation
        # estimate is flat from epoch 10 to 40 of fine-tuning (-3.29), but with the parameters
        # averaged it keeps rising (ema 0.9999: -3.06; 0.99995: -3.04), and every halving of the
        # rate lowered it, so the rate stays constant; 200 hidden units instead of 150 gave -2.84
        # (fine-tuning epoch 90; early stopping ends the run at 120). README, Results. Reverse
        # annealing errs low, so it cannot reward a model for being hard to anneal. Decoupled
        # weight decay (AdamW) 0.03 then gave -2.465 (epoch 145, stopped early at 175; 0.01:
        # -2.629; 0.1 behind both), and on the fixed 2,000-frame validation subset forward AIS /
        # RAISE at 100 x 1000 -2.346 / -2.434 against -2.465 / -2.846 without. 0.05 was level
        # with 0.03 to epoch 45 and kept rising after 0.03 stopped: -2.384 at 190 (0.03's best:
        # -2.465), -2.344 at 300 (flat from 240); on the subset -2.335 / -2.366 at 200 epochs and
        # -2.280 / -2.314 at 300 (seeds 1235, 1236: -2.290 / -2.329, -2.305 / -2.353; each at the
        # cap, flat for its last 60). 300 hidden units with 0.03: -2.307 / -2.452 (a wider bracket).
        "nottingham": {**_LARGE, "weight_decay": 0.05, "epochs": 300},
        # JSB chorales: averaged parameters (as the RNN-NADE's), on a fixed 2,000-frame validation
        # subset (forward AIS and RAISE at 100 x 1000): -6.160 against -6.216 without (0.9999:
        # -6.463), still rising at the last of 150 epochs; with up to 300, -5.914 (best at 245,
        # stopped early at 275). Nottingham's weight decay 0.03 here: -6.269, so none. Its seeds
        # spread (-5.914 / -6.414 / -6.418 / -6.204 / -6.427, seeds 1234-1238): most overfit 229
        # pieces early. Dropping a fifth of the recurrence's inputs and outputs (the torch engine)
        # lifted every seed: -5.550 / -5.593 / -5.581 / -5.548 / -5.717 (mean -5.598 against
        # -6.275; RAISE within 0.02 of each), best at 145-300, so up to 600 epochs; a third
        # dropped: mean -5.697 over the same seeds; a tenth: 0.23-0.26 behind on seeds 1234-1235.
        "jsb-chorales": {"ema": 0.9995, "dropout": 0.2, "epochs": 600},
        # Piano-midi.de (5.5x JSB's updates per epoch) sharpens the same way at JSB's recipe: the
        # training loop's estimate peaked at fine-tuning epoch 15 and the run stopped at 45. On a
        # fixed 2,000-frame validation subset (forward AIS and RAISE at 100 x 1000, which agree
        # there to 0.002): JSB's recipe -8.567, Nottingham's -8.174 (still rising at its 120
        # epochs), the same at Adam 0.001 -8.176 (best at 80, stopped at 110), and Nottingham's
        # with up to 400 epochs -8.138 (best at 180, stopped early at 210). With 300 hidden units
        # -8.056 (best at 170, stopped at 200; 450: -8.180, best at 125). Shifting each training
        # piece by up to 3 semitones every epoch (as the RNN's preset here) keeps the 300-unit
        # model rising long after the unshifted one stops: -7.483 at 400 epochs (still rising),
        # -7.218 at 600 (still rising), -7.151 (RAISE -7.186) with up to 1000 (best at 710,
        # stopped early at 740; the one run, resumed twice, which trains as a run started so).
        "piano-midi.de": {**_LARGE, "n_hidden": 300, "augment_transpose": 3, "epochs": 1000},
        # MuseData (7.6x JSB's updates per epoch) the same: Nottingham's recipe as is -6.469 (RAISE
        # -6.472) on the fixed 2,000-frame validation subset, still rising at its 120 epochs; with
        # up to 400, -6.438 (RAISE -6.448; best at 180, stopped early at 210). Nottingham's weight
        # decay 0.03 then lifted every seed tried: -5.961 / -5.961 (seed 1234, best at 390, stopped
        # early at 420), -6.049 (1235), -5.989 / -5.991 (1236, against -6.393 without), so the cap
        # moves to 500 and early stopping ends each run.
        "musedata": {**_LARGE, "weight_decay": 0.03, "epochs": 500},
    },
    search_space={
        "optimizer": {"choices": ["sgd", "adam"]},
        "lr": {"low": 1e-4, "high": 1e-2, "log": True},
        "momentum": {"low": 0.0, "high": 0.95},
        "lr_schedule": {"choices": ["constant", "plateau"]},
        "batch": {"choices": [1, 4, 16]},
        "k": {"low": 1, "high": 25},
        "n_hidden": {"low": 50, "high": 300, "step": 25},
        "n_recurrent": {"low": 50, "high": 200, "step": 25},
        "learn_u0": True,
        "pretrain_rbm_epochs": {"choices": [0, 10, 20]},
        "pretrain_rnn_epochs": {"choices": [0, 20, 40]},
    },
)
