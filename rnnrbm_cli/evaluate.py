"""The paper's two numbers for an RNN-RBM on held-out piano-rolls: LL and ACC.

**LL** is the average log-likelihood per time step in nats, every frame of the split
weighted equally, the first frame included (Boulanger-Lewandowski et al. 2012, Table 1).
The RNN reads the true frames; frame t's conditional RBM (biases bv(t), bh(t), shared W)
gives ``log P(v_t | v_<t) = -F_t(v_t) - log Z_t``. ``log Z_t`` is exact (enumerating the
hidden states) when ``n_hidden <= EXACT_MAX_HIDDEN``, else estimated by annealed importance
sampling (Salakhutdinov & Murray 2008), batched over frames x chains.

**ACC** is the expected frame-level accuracy in % (Bay et al. 2009):
``sum_t E[TP_t] / sum_t (E[TP_t] + E[FP_t] + E[FN_t])`` with each frame's note marginals
p_t estimated from independent Gibbs chains in the conditional RBM at t.

Frames are a flat batch ``(N, n_visible)`` with their conditional biases ``(N, n_visible)``
and ``(N, n_hidden)``; no Python loop runs over frames. No printing here: long work reports
through a ``progress(stage, done, total)`` callback, in frames.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnrbm_cli.choices import LL_METHODS
from rnnrbm_cli.engines import AnnealingSampler, TorchSampler, exact_for, sampler_for
from rnnrbm_cli.errors import RnnrbmError, RnnrbmUsageError
from rnnrbm_cli.models import record_of
from rnnrbm_cli.models.rbm import EXACT_LIMIT, free_energy, log_partition_exact

# Exact log Z enumerates 2**n_hidden states per frame: at n_hidden = 20 that is still
# cheaper than 100 AIS chains x 1000 betas, and it has no error at all.
EXACT_MAX_HIDDEN = 20
# The paper's "100 AIS runs".
DEFAULT_CHAINS = 100
# Inverse temperatures per AIS run. Measured against exact log Z (n_hidden = 12) and a
# 20,000-beta AIS run (n_hidden = 150, trained on Nottingham): at 1000 the mean log Z
# error is below 0.002 nats and its per-frame sd about 0.02; at 300 about -0.003 / 0.03,
# at 100 about -0.02 / 0.06 (the error grew as the model trained, so keep a margin).
DEFAULT_BETAS = 1000
# Gibbs chains per frame for the note probabilities (ACC and the AIS base). The estimate is
# Rao-Blackwellised, so 20 already gives ACC an sd of 0.03 points on 2,000 frames.
DEFAULT_SAMPLES = 20
# Gibbs steps per chain (the default); see the README for the mixing bias measured.
DEFAULT_GIBBS = 50

# How log Z is found: "auto" is exact when n_hidden <= EXACT_MAX_HIDDEN, else "ais".
METHODS = LL_METHODS

# Keeps the AIS base's note probabilities off 0 and 1 (measured: 1e-3 to 1e-2 are alike).
BASE_FLOOR = 1e-3

# Working-set bounds in tensor elements (float32: x4 bytes). They bound memory, not results.
_EXACT_BUDGET = 1 << 24  # frames x 2**n_hidden x n_visible per exact log Z chunk
_RNN_FRAMES = 1 << 15  # padded frames per RNN batch

Progress = Callable[[str, int, int], None]


def _rows_budget(device: torch.device) -> int:
    """Sampling rows (frames x chains) in flight at once: ~0.25 GB per (rows, n_hidden) tensor
    on a GPU, where big batches keep it busy; on a CPU, more stays in cache."""
    return 1 << 18 if device.type == "cuda" else 1 << 14


@dataclass(frozen=True)
class Frames:
    """Every frame to evaluate, flattened across sequences, with its conditional RBM.

    v : (N, n_visible) float 0/1, the true frames; bv : (N, n_visible) and
    bh : (N, n_hidden), the biases bv(t), bh(t) the RNN gives from the true history;
    prev : (N, n_visible), the true frame before (silence before a sequence's first);
    index : (N,) int64, each frame's position among all frames of the split, in order.
    """

    v: Tensor
    bv: Tensor
    bh: Tensor
    prev: Tensor
    index: Tensor

    def __len__(self) -> int:
        return self.v.shape[0]


@dataclass(frozen=True)
class LLResult:
    """The log-likelihood of a split.

    mean : average log P(v_t | history) over frames, nats per frame.
    stderr : standard error of ``mean`` over frames; with AIS it includes the AIS noise,
        since each frame's log Z comes from its own independent chains.
    frames : how many frames were averaged.
    method : "exact" or "ais".
    ais_stderr : with AIS, the part of ``stderr`` due to AIS noise alone (delta-method
        estimate from the importance weights); None when exact.
    """

    mean: float
    stderr: float
    frames: int
    method: str
    ais_stderr: float | None = None


# --- frames and their conditional RBMs -------------------------------------------------


@torch.no_grad()
def conditional_frames(
    model,
    sequences: Sequence[np.ndarray | Tensor],
    *,
    max_frames: int | None = None,
    generator: torch.Generator | None = None,
) -> Frames:
    """Run the RNN over the true frames of every sequence; return the frames and biases.

    sequences : piano-rolls, each (T, n_visible) with values in {0, 1}. With
    ``max_frames``, a random subset of that many frames (drawn with ``generator``, kept in
    split order) is returned; the RNN still reads each full history.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, not {max_frames}.")
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    n_v = model.config.n_visible
    # a read-only roll (a view of an mmap prepared folder) is copied: torch warns of any other
    rolls = [s if isinstance(s, Tensor) else torch.as_tensor(np.asarray(s) if np.asarray(s).flags.writeable else np.array(s))
             for s in sequences]
    for i, r in enumerate(rolls):
        if r.ndim != 2 or r.shape[1] != n_v:
            raise ValueError(f"sequence {i} has shape {tuple(r.shape)}; the model expects (T, {n_v}).")
    rolls = [r for r in rolls if r.shape[0] > 0]
    total = sum(r.shape[0] for r in rolls)
    if total == 0:
        raise ValueError("there are no frames to evaluate.")
    # Batch sequences of similar length so that padding stays small; keep split order.
    order = sorted(range(len(rolls)), key=lambda i: rolls[i].shape[0])
    parts: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
    batch: list[int] = []

    def flush() -> None:
        T = max(rolls[i].shape[0] for i in batch)
        v = torch.zeros(len(batch), T, n_v, device=device, dtype=dtype)
        for b, i in enumerate(batch):
            v[b, : rolls[i].shape[0]] = rolls[i].to(device=device, dtype=dtype)
        # Padding after a sequence's end cannot reach its real frames: the RNN is causal.
        bv_t, bh_t = model.conditional_biases(v)
        prev = torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], dim=1)
        for b, i in enumerate(batch):
            n = rolls[i].shape[0]
            parts[i] = (v[b, :n], bv_t[b, :n], bh_t[b, :n], prev[b, :n])
        batch.clear()

    for i in order:
        if batch and (len(batch) + 1) * rolls[i].shape[0] > _RNN_FRAMES:
            flush()
        batch.append(i)
    flush()
    v, bv, bh, prev = (torch.cat(x) for x in zip(*(parts[i] for i in range(len(rolls)))))
    if max_frames is None or max_frames >= total:
        return Frames(v, bv, bh, prev, torch.arange(total, device=device))
    gen_device = generator.device if generator is not None else torch.device("cpu")
    pick = torch.randperm(total, generator=generator, device=gen_device)[:max_frames].sort().values.to(device)
    return Frames(v[pick], bv[pick], bh[pick], prev[pick], pick)


# --- log Z: exact and AIS --------------------------------------------------------------


@torch.no_grad()
def exact_log_partition(W: Tensor, bv: Tensor, bh: Tensor, progress: Callable[[int], None] | None = None) -> Tensor:
    """log Z of N RBMs sharing W, by enumeration, in chunks of frames to bound memory.

    W : (n_visible, n_hidden) with n_hidden <= EXACT_MAX_HIDDEN; bv : (N, n_visible);
    bh : (N, n_hidden). Returns (N,).
    """
    n_v, n_h = W.shape
    chunk = max(1, _EXACT_BUDGET // (2**n_h * n_v))
    out = torch.empty(bv.shape[0], device=W.device, dtype=W.dtype)
    for start in range(0, bv.shape[0], chunk):
        stop = min(start + chunk, bv.shape[0])
        out[start:stop] = log_partition_exact(W, bv[start:stop], bh[start:stop])
        if progress is not None:
            progress(stop - start)
    return out


def ais_base(marginals: Tensor) -> Tensor:
    """Visible biases (N, n_visible) of each frame's factorial AIS base: logit(p_t).

    A base that matches each frame's note marginals covers all the target's modes (a
    mean-field base, which picks one, was worse on trained models). p is kept within
    [BASE_FLOOR, 1 - BASE_FLOOR] so that no note the model might play is impossible.
    """
    p = marginals.clamp(BASE_FLOOR, 1.0 - BASE_FLOOR)
    return torch.log(p) - torch.log1p(-p)


def beta_schedule(n: int, device: torch.device | str = "cpu") -> Tensor:
    """The n + 1 inverse temperatures 0 = beta_0 < ... < beta_n = 1 of an AIS run (float64)."""
    if n < 1:
        raise ValueError(f"betas must be at least 1, not {n}.")
    return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64, device=device)


@torch.no_grad()
def ais_log_partition(
    W: Tensor,
    bv: Tensor,
    bh: Tensor,
    *,
    chains: int = DEFAULT_CHAINS,
    betas: int | Tensor = DEFAULT_BETAS,
    base: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    sampler: AnnealingSampler | None = None,
    observed: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Estimate log Z of N RBMs sharing W by annealed importance sampling.

    W : (n_visible, n_hidden); bv : (N, n_visible); bh : (N, n_hidden). ``base`` (N,
    n_visible) are the visible biases of each frame's tractable base model
    p_0(v) ~ exp(v . base) (hidden units uniform); default ``bv``. The intermediate
    models, with the hidden units summed out, are

        f_beta(v) = (1 - beta) v.base + beta v.bv + sum_j softplus(beta (v W + bh)_j),

    so f_0 is the base and f_1 = -F, and each transition is one block Gibbs step at beta.
    ``betas`` is the number of steps n (schedule :func:`beta_schedule`) or an explicit
    increasing float tensor from 0 to 1.

    With ``observed`` (N, n_visible), the frames themselves, the runs go the other way
    (RAISE, ``model.raise_log_weights``): the log Z returned is then the one that makes
    ``-F(v) - log Z`` the log of an unbiased estimate of v's probability under the
    annealing model, so the log-likelihoods it gives err low where forward AIS errs high;
    the two bracket the truth, and meet when the annealing is long enough.

    Returns (log_z, var) each (N,): the estimate log Z_0 + log mean_c exp(log w_c)
    (forward) or log Z_0 - log mean_c exp(-log w_c) (reverse), and the delta-method variance
    of that estimate. ``sampler`` runs the chains (``engines.sampler_for``; default the
    torch reference).
    """
    n_v, n_h = W.shape
    N = bv.shape[0]
    device, dtype = W.device, W.dtype
    schedule = (betas if isinstance(betas, Tensor) else beta_schedule(betas)).tolist()
    if schedule[0] != 0.0 or schedule[-1] != 1.0 or any(b1 <= b0 for b0, b1 in zip(schedule, schedule[1:])):
        raise ValueError("an AIS schedule must increase strictly from 0 to 1.")
    if base is None:
        base = bv
    schedule_t = torch.tensor(schedule, dtype=torch.float64)
    sampler = sampler or TorchSampler(None)
    sign = 1.0 if observed is None else -1.0
    log_z = torch.empty(N, device=device, dtype=dtype)
    var = torch.empty(N, device=device, dtype=dtype)
    nb = max(1, _rows_budget(device) // chains)
    for start in range(0, N, nb):
        stop = min(start + nb, N)
        rows = slice(start, stop)
        if observed is None:
            log_w = sampler.ais_log_weights(W, base[rows], bv[rows], bh[rows], schedule_t, chains, generator)
        else:  # the log of each run's estimate of 1 / Z, up to Z_0
            log_w = -sampler.raise_log_weights(W, base[rows], bv[rows], bh[rows], schedule_t, chains, observed[rows],
                                               generator)
        log_mean_w = torch.logsumexp(log_w, dim=1) - math.log(chains)
        log_z[rows] = F.softplus(base[rows]).sum(-1) + n_h * math.log(2.0) + sign * log_mean_w
        # Relative variance of the weights over chains, divided by chains: var of log Z-hat.
        r = torch.exp(log_w - log_w.max(dim=1, keepdim=True).values)
        var[rows] = ((r * r).mean(1) / r.mean(1) ** 2 - 1.0) / chains
        if progress is not None:
            progress(stop - start)
    return log_z, var


# --- LL ------------------------------------------------------------------------------------


def _stage(progress: Progress | None, stage: str, total: int) -> Callable[[int], None] | None:
    """Adapt ``progress(stage, done, total)`` to a per-batch ``advance(n)``."""
    if progress is None:
        return None
    done = 0
    progress(stage, 0, total)

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(stage, done, total)

    return advance


@torch.no_grad()
def frame_log_likelihoods(
    model,
    frames: Frames,
    *,
    chains: int = DEFAULT_CHAINS,
    betas: int = DEFAULT_BETAS,
    method: str = "auto",
    samples: int = DEFAULT_SAMPLES,
    gibbs: int = DEFAULT_GIBBS,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    sampler: AnnealingSampler | None = None,
    base: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, str]:
    """log P(v_t | history) of every frame.

    ``method``: "exact", "ais", "raise" (reverse annealing from the frame itself: a
    conservative estimate, see :func:`ais_log_partition`), or "auto" (exact when
    n_hidden <= EXACT_MAX_HIDDEN, else "ais"). The annealing starts from ``base``, default
    :func:`annealing_base` with ``samples`` chains of ``gibbs`` steps. Returns the per-frame
    log-likelihoods (N,) in nats, the annealing's variance of each (None when exact), and
    the method used. For a model with an exact likelihood, ``sampler``'s backend computes it
    (``engines.exact_for``; torch when None).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    rec = record_of(model)
    if rec.exact:  # a model with a tractable likelihood
        stage = _stage(progress, "exact log-likelihood", len(frames))
        exact = exact_for(model, sampler.backend if sampler is not None else "torch")
        return exact.log_likelihoods(frames.v, frames.bv, frames.bh, stage), None, "exact"
    if method == "auto":
        method = "exact" if model.config.n_hidden <= EXACT_MAX_HIDDEN else "ais"
    W = model.W
    neg_f = -free_energy(frames.v, W, frames.bv, frames.bh)
    if method == "exact":
        log_z = exact_log_partition(W, frames.bv, frames.bh, _stage(progress, "exact log Z", len(frames)))
        return neg_f - log_z, None, "exact"
    if base is None:
        base = annealing_base(model, frames, samples=samples, gibbs=gibbs, generator=generator, progress=progress,
                              sampler=sampler)
    log_z, var = ais_log_partition(
        W, frames.bv, frames.bh, chains=chains, betas=betas, base=base,
        generator=generator, progress=_stage(progress, f"{method.upper()} log Z", len(frames)), sampler=sampler,
        observed=frames.v if method == "raise" else None,
    )
    return neg_f - log_z, var, method


def annealing_base(model, frames: Frames, *, samples: int = DEFAULT_SAMPLES, gibbs: int = DEFAULT_GIBBS,
                   generator: torch.Generator | None = None, progress: Progress | None = None,
                   sampler: AnnealingSampler | None = None) -> Tensor:
    """Each frame's factorial AIS / RAISE base (:func:`ais_base`) from its note marginals.

    The marginals come from chains started at silence, not at the previous frame (as for
    ACC): those are less peaked and covered the target better (measured).
    """
    marginals = note_marginals(model.W, frames.bv, frames.bh, samples=samples, gibbs=gibbs, generator=generator,
                               progress=_stage(progress, "AIS base", len(frames)), sampler=sampler)
    return ais_base(marginals)


def summarise_ll(ll: Tensor, var: Tensor | None, method: str) -> LLResult:
    """Mean and standard error over frames of per-frame log-likelihoods ``ll`` (N,)."""
    n = ll.numel()
    ll64 = ll.double()
    stderr = float(ll64.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    ais_stderr = None if var is None else float(var.double().clamp_min(0).sum().sqrt() / n)
    return LLResult(mean=float(ll64.mean()), stderr=stderr, frames=n, method=method, ais_stderr=ais_stderr)


def log_likelihood(
    model,
    sequences: Sequence[np.ndarray | Tensor],
    *,
    chains: int = DEFAULT_CHAINS,
    betas: int = DEFAULT_BETAS,
    samples: int = DEFAULT_SAMPLES,
    gibbs: int = DEFAULT_GIBBS,
    max_frames: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    backend: str = "auto",
    method: str = "auto",
) -> LLResult:
    """Average log-likelihood per frame of ``sequences`` (each (T, n_visible) 0/1), in nats.

    Exact when ``n_hidden <= EXACT_MAX_HIDDEN``, else AIS with ``chains`` runs of ``betas``
    steps per frame (base from ``samples`` x ``gibbs``, see :func:`frame_log_likelihoods`).
    ``max_frames`` evaluates a random subset of frames drawn with ``generator`` (which
    also drives the sampling; it must live on the model's device). ``backend`` runs the
    base's Gibbs chains (``engines``); ``method`` as in :func:`frame_log_likelihoods`.
    """
    frames = conditional_frames(model, sequences, max_frames=max_frames, generator=generator)
    ll, var, method = frame_log_likelihoods(model, frames, chains=chains, betas=betas, method=method, samples=samples,
                                            gibbs=gibbs, generator=generator, progress=progress,
                                            sampler=sampler_for(model, backend))
    return summarise_ll(ll, var, method)


# --- ACC -----------------------------------------------------------------------------------


def expected_counts(v: Tensor, p: Tensor) -> tuple[float, float, float]:
    """E[TP], E[FP], E[FN] summed over frames, for true frames v and note marginals p.

    v, p : (N, n_visible); E[TP_t] = sum_i v_ti p_ti, E[FP_t] = sum_i (1 - v_ti) p_ti,
    E[FN_t] = sum_i v_ti (1 - p_ti).
    """
    v, p = v.double(), p.double()
    tp = float((v * p).sum())
    fp = float(((1 - v) * p).sum())
    fn = float((v * (1 - p)).sum())
    return tp, fp, fn


def accuracy_from_marginals(v: Tensor, p: Tensor) -> float:
    """Expected frame-level accuracy in %: sum E[TP] / sum (E[TP] + E[FP] + E[FN]).

    NaN when the denominator is 0 (no true notes and none predicted: nothing to score).
    """
    tp, fp, fn = expected_counts(v, p)
    denom = tp + fp + fn
    return 100.0 * tp / denom if denom > 0 else float("nan")


@torch.no_grad()
def note_marginals(
    W: Tensor,
    bv: Tensor,
    bh: Tensor,
    *,
    samples: int = DEFAULT_SAMPLES,
    gibbs: int = DEFAULT_GIBBS,
    start: Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    sampler: AnnealingSampler | None = None,
) -> Tensor:
    """Each frame's note probabilities p_t (N, n_visible) in its conditional RBM.

    ``samples`` independent chains per frame, each run for ``gibbs`` block Gibbs steps
    from ``start`` (N, n_visible), default silence. Pass the previous true frame: it is
    part of the history the model conditions on (the chains never see frame t), and
    chains from there mix much faster than from silence. The last step's visible sample
    is replaced by its probability sigmoid(h W' + bv(t)), which has the same mean and
    less noise (Rao-Blackwellisation); p_t is the mean over chains. ``sampler`` runs the
    chains (``engines.sampler_for``); default the torch reference.
    """
    chains = sampler or TorchSampler(None)
    n_v, n_h = W.shape
    N = bv.shape[0]
    nb = max(1, _rows_budget(W.device) // samples)
    p = torch.empty_like(bv)
    for first in range(0, N, nb):
        stop = min(first + nb, N)
        bv_b, bh_b = bv[first:stop].unsqueeze(1), bh[first:stop].unsqueeze(1)
        if start is None:
            v = torch.zeros((stop - first, samples, n_v), device=W.device, dtype=W.dtype)
        else:
            v = start[first:stop].unsqueeze(1).expand(-1, samples, -1).contiguous()
        v = chains.gibbs_chain(v, W, bv_b, bh_b, gibbs - 1, generator)
        u = torch.rand(v.shape[:-1] + (n_h,), generator=generator, device=W.device, dtype=W.dtype)
        h = (u < torch.sigmoid(v @ W + bh_b)).to(W.dtype)
        p[first:stop] = torch.sigmoid(h @ W.t() + bv_b).mean(1)
        if progress is not None:
            progress(stop - first)
    return p


def frame_marginals(
    model,
    frames: Frames,
    *,
    samples: int = DEFAULT_SAMPLES,
    gibbs: int = DEFAULT_GIBBS,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    sampler: AnnealingSampler | None = None,
) -> Tensor:
    """Each frame's note probabilities given its true history (N, n_visible): Gibbs chains
    from the previous true frame for an RNN-RBM (:func:`note_marginals`), exact ancestral
    samples for a model that has them (on ``sampler``'s backend, ``engines.exact_for``)."""
    stage = _stage(progress, "note probabilities", len(frames))
    rec = record_of(model)
    if rec.exact:
        return exact_for(model, sampler.backend if sampler is not None else "torch").marginals(
            frames.bv, frames.bh, samples, generator, stage)
    return note_marginals(model.W, frames.bv, frames.bh, samples=samples, gibbs=gibbs, start=frames.prev,
                          generator=generator, progress=stage, sampler=sampler)


def frame_accuracy(
    model,
    sequences: Sequence[np.ndarray | Tensor],
    *,
    samples: int = DEFAULT_SAMPLES,
    gibbs: int = DEFAULT_GIBBS,
    max_frames: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    backend: str = "auto",
) -> float:
    """Expected frame-level accuracy (%) of ``sequences``, each frame predicted from its
    true history; marginals from :func:`note_marginals` (chains on ``backend``)."""
    frames = conditional_frames(model, sequences, max_frames=max_frames, generator=generator)
    p = frame_marginals(model, frames, samples=samples, gibbs=gibbs, generator=generator, progress=progress,
                        sampler=sampler_for(model, backend))
    return accuracy_from_marginals(frames.v, p)


# --- both ----------------------------------------------------------------------------------


def evaluate(
    model,
    sequences: Sequence[np.ndarray | Tensor],
    *,
    chains: int = DEFAULT_CHAINS,
    betas: int = DEFAULT_BETAS,
    samples: int = DEFAULT_SAMPLES,
    gibbs: int = DEFAULT_GIBBS,
    max_frames: int | None = None,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    backend: str = "auto",
    method: str = "auto",
) -> dict:
    """LL and ACC on the same frames; returns a plain dict (JSON-ready).

    ``backend`` runs the Gibbs chains and the annealing, or an exact model's frames
    (``engines``). ``method`` as in
    :func:`frame_log_likelihoods`, or "both": forward AIS for log_likelihood and, on the same
    frames, RAISE's conservative estimate as raise_log_likelihood (with its _stderr and
    raise_stderr, the annealing's part). Keys: log_likelihood, log_likelihood_stderr,
    frame_accuracy (%), frames, method, chains and betas (None when exact), ais_stderr,
    samples, gibbs, backend, seconds.
    """
    if method not in (*METHODS, "both"):
        raise ValueError(f"method must be one of {', '.join(METHODS)} or both, not {method!r}.")
    sampler = sampler_for(model, backend)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        frames = conditional_frames(model, sequences, max_frames=max_frames, generator=generator)
        both = method == "both" and not exact_likelihood(model)
        # both: one base for the two directions, drawn where "ais" draws its own
        base = annealing_base(model, frames, samples=samples, gibbs=gibbs, generator=generator, progress=progress,
                              sampler=sampler) if both else None
        ll, var, used = frame_log_likelihoods(model, frames, chains=chains, betas=betas,
                                              method="ais" if method == "both" else method, samples=samples,
                                              gibbs=gibbs, generator=generator, progress=progress, sampler=sampler,
                                              base=base)
        p = frame_marginals(model, frames, samples=samples, gibbs=gibbs, generator=generator, progress=progress,
                            sampler=sampler)
        lower = None  # last, so that LL and ACC are the same numbers as method "ais" gives
        if both:
            lower = summarise_ll(*frame_log_likelihoods(model, frames, chains=chains, betas=betas, method="raise",
                                                        generator=generator, progress=progress, sampler=sampler,
                                                        base=base))
    finally:
        model.train(was_training)
    res = summarise_ll(ll, var, used)
    annealed = used in ("ais", "raise")
    out = {
        "log_likelihood": res.mean,
        "log_likelihood_stderr": res.stderr,
        "frame_accuracy": accuracy_from_marginals(frames.v, p),
        "frames": res.frames,
        "method": used if lower is None else "ais+raise",
        "chains": chains if annealed else None,
        "betas": betas if annealed else None,
        "ais_stderr": res.ais_stderr,
        "samples": samples,
        "gibbs": gibbs if record_of(model).uses_gibbs else None,
        "model_type": model.config.model_type,
        "backend": sampler.backend,
    }
    if lower is not None:
        out.update(raise_log_likelihood=lower.mean, raise_log_likelihood_stderr=lower.stderr,
                   raise_stderr=lower.ais_stderr)
    out["seconds"] = time.perf_counter() - t0
    return out


def exact_likelihood(model) -> bool:
    """Whether the model's log-likelihood is computed exactly (no AIS), whatever its size."""
    return record_of(model).exact


def evaluate_split(
    model,
    sequences: Sequence[np.ndarray],
    *,
    where: str,
    split: str = "test",
    chains: int = DEFAULT_CHAINS,
    betas: int = DEFAULT_BETAS,
    samples: int = DEFAULT_SAMPLES,
    gibbs: int = DEFAULT_GIBBS,
    max_frames: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    progress: Progress | None = None,
    on_message: Callable[[str], None] | None = None,
    method: str = "auto",
) -> dict:
    """:func:`evaluate` of a loaded model on the ``split`` sequences of the prepared data at
    ``where`` (named in messages), after the checks that make the figure meaningful; what
    ``rnnrbm evaluate`` prints (``api.evaluate_model`` loads the model and the data).

    Returns :func:`evaluate`'s dict.
    """
    if method in ("ais", "raise", "both") and exact_likelihood(model) and on_message is not None:
        # said, not printed as if used: a tractable likelihood has no partition function to anneal
        on_message(f"the {model.config.model_type} model's likelihood is exact; --method {method} is not used.")
    if method == "exact" and not exact_likelihood(model) and model.config.n_hidden > EXACT_LIMIT:
        raise RnnrbmUsageError(f"method exact enumerates 2**n_hidden states, and this model has n_hidden = "
                               f"{model.config.n_hidden} (at most {EXACT_LIMIT}); use ais, raise or both.")
    if not any(len(s) for s in sequences):
        raise RnnrbmError(f"{where} has no frames in its {split!r} split; choose another --split.")
    width = {s.shape[1] for s in sequences}
    if width != {model.config.n_visible}:
        raise RnnrbmError(
            f"{where} has frames of {sorted(width)} keys but the model has {model.config.n_visible} visible units; "
            "evaluate it on data prepared like its training data."
        )
    message = sampler_for(model, backend).compile_message("evaluate")
    if message and on_message is not None:
        on_message(message)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    return evaluate(model, sequences, chains=chains, betas=betas, samples=samples, gibbs=gibbs,
                    max_frames=max_frames, generator=generator, progress=progress, backend=backend, method=method)
