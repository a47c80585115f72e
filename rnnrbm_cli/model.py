"""The RNN-RBM (Boulanger-Lewandowski, Bengio & Vincent, ICML 2012) as a torch module.

At each time step t a conditional RBM over the frame v(t) has biases that depend on the
previous state u(t-1) of a deterministic RNN::

    bv(t) = bv + u(t-1) Wuv        bh(t) = bh + u(t-1) Wuh
    u(t)  = tanh(bu + u(t-1) Wuu + v(t) Wvu)

Shapes follow one orientation everywhere: a batch of frames is ``(B, T, n_visible)`` with
values in {0, 1} (float), and ``lengths`` ``(B,)`` says how many leading frames of each
row are real; the rest is padding, which never reaches a cost, gradient or monitor.

This module knows tensors only: no files, no loop over epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnrbm_cli.recurrence import Recurrent, normal_init


@dataclass(frozen=True)
class ModelConfig:
    # 88 piano keys, MIDI 21..108: the tutorial's r = (21, 109).
    n_visible: int = 88
    # RBM hidden units; the tutorial's n_hidden = 150.
    n_hidden: int = 150
    # RNN units; the tutorial's n_hidden_recurrent = 100.
    n_recurrent: int = 100
    # Learn the initial state u(0), as the paper does; the tutorial fixes u(0) = 0.
    learn_u0: bool = False
    # Which model: "rnn-rbm" (this module) or "rnn-nade" (nade.py); checkpoint.MODELS maps it.
    model_type: str = "rnn-rbm"
    # The recurrence: "tanh" (the tutorial), "sigmoid" (the paper), "lstm" or "gru".
    rnn: str = "tanh"

    def __post_init__(self) -> None:
        from rnnrbm_cli.recurrence import RNN_KINDS

        for name in ("n_visible", "n_hidden", "n_recurrent"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(self.learn_u0, bool):
            raise ValueError(f"learn_u0 must be true or false, not {self.learn_u0!r}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, not {self.model_type!r}")
        if self.rnn not in RNN_KINDS:
            raise ValueError(f"rnn must be one of {', '.join(RNN_KINDS)}, not {self.rnn!r}")


MODEL_TYPES = ("rnn-rbm", "rnn-nade")


@dataclass
class CDResult:
    """What one contrastive-divergence pass over a batch returns.

    cost : scalar tensor, mean over real frames of F(v) - F(v~); its gradient (v~ held
        constant) is the CD-k estimate of minus the log-likelihood gradient.
    monitor : scalar tensor (no grad), the tutorial's reconstruction pseudo-log-likelihood,
        summed over keys and averaged over real frames, in nats.
    n_frames : number of real (unpadded) frames in the batch.
    """

    cost: Tensor
    monitor: Tensor
    n_frames: int


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


def length_mask(lengths: Tensor, T: int) -> Tensor:
    """(B, T) float mask, 1 where t < lengths[b]."""
    return (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]).float()


# --- the model -------------------------------------------------------------------------


class RNNRBM(Recurrent):
    """The RNN-RBM: parameters W, bv, bh, Wuh, Wuv and the recurrence's (Wvu, Wuu, bu, and
    u0 if learned, for tanh and sigmoid; torch's cell for lstm and gru).

    ``generator`` seeds the initialisation (a local ``torch.Generator``: building a model
    never touches the global seed); default: torch's global generator.
    """

    # The checkpoint's model_type; checkpoint.MODELS maps it back to this class.
    model_type = "rnn-rbm"
    # The one documented list of the parameters in the order compiled code takes them
    # (engines.py hands them over as arrays, for the tanh recurrence; nothing else reads them by name):
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

    # -- the deterministic RNN ----------------------------------------------------------

    # -- training -----------------------------------------------------------------------

    def cd_cost(
        self,
        v: Tensor,
        lengths: Tensor | None = None,
        k: int = 15,
        generator: torch.Generator | None = None,
        v_neg: Tensor | None = None,
    ) -> CDResult:
        """The CD-k cost of a padded batch and the tutorial's monitor.

        v : (B, T, n_visible) float 0/1; lengths : (B,) int64, default all T. Negative
        samples come from a k-step Gibbs chain started at the data frames, every time
        step in parallel; they are held constant, so ``cost.backward()`` gives the CD
        gradient for all parameters, through bv(t), bh(t) into the RNN. Tests may pass
        their own negative samples ``v_neg`` (B, T, n_visible) instead of the chain's.
        """
        B, T, _ = v.shape
        bv_t, bh_t = self.conditional_biases(v)
        with torch.no_grad():
            if v_neg is None:
                v_neg = gibbs_chain(v, self.W, bv_t, bh_t, k, generator)
            monitor_logits = self._reconstruction_logits(v_neg, bv_t, bh_t, generator)
        fe_gap = free_energy(v, self.W, bv_t, bh_t) - free_energy(v_neg, self.W, bv_t, bh_t)  # (B, T)
        # The monitor: log p(v | h) with h sampled from the chain's last v, as the tutorial
        # computes it, but through log-sigmoid so that it is never -inf.
        log_rec = -F.binary_cross_entropy_with_logits(monitor_logits, v, reduction="none").sum(-1)
        if lengths is None:
            n_frames = B * T
            cost = fe_gap.sum() / n_frames
            monitor = log_rec.sum() / n_frames
        else:
            mask = length_mask(lengths, T)
            n_frames = int(lengths.sum())
            cost = (fe_gap * mask).sum() / n_frames
            monitor = (log_rec * mask).sum() / n_frames
        return CDResult(cost=cost, monitor=monitor.detach(), n_frames=n_frames)

    def _reconstruction_logits(self, v_neg: Tensor, bv_t: Tensor, bh_t: Tensor, generator) -> Tensor:
        n_h = self.config.n_hidden
        uniform = torch.rand((*v_neg.shape[:-1], n_h), generator=generator, device=v_neg.device, dtype=v_neg.dtype)
        h = _bernoulli(torch.sigmoid(v_neg @ self.W + bh_t), uniform)
        return h @ self.W.t() + bv_t

    # -- generation ---------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        n: int,
        steps: int,
        k: int = 25,
        primer: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Sample n sequences in parallel, one frame at a time.

        Each new frame comes from a fresh k-step Gibbs chain started from zeros (the
        tutorial's way) in the conditional RBM given the history, and is fed back into
        the RNN. With a ``primer`` (T0, n_visible), the model first reads the primer and
        the result begins with it. Returns (n, T0 + steps, n_visible) float 0/1 on the
        model's device.

        This is the reference sampler; ``engines.sampler_for`` may choose the compiled CPU
        kernels instead (the same sampler, with their own random streams).
        """
        device = self.W.device
        n_v = self.config.n_visible
        state = self.initial_state(n)
        frames = []
        if primer is not None and primer.shape[0] > 0:
            p = primer.to(device=device, dtype=self.W.dtype).expand(n, -1, -1)
            state = self.run_recurrence(p)[1]
            frames.append(p)
        out = torch.empty((n, steps, n_v), device=device, dtype=self.W.dtype)
        for t in range(steps):
            u = state[0]
            bv_t = self.bv + u @ self.Wuv
            bh_t = self.bh + u @ self.Wuh
            v = gibbs_chain(torch.zeros(n, n_v, device=device), self.W, bv_t, bh_t, k, generator)
            out[:, t] = v
            state = self.step(v, state)
        frames.append(out)
        return torch.cat(frames, dim=1)

