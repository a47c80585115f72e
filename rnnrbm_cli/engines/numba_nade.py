"""The RNN-NADE on the compiled CPU kernels of ``nade_kernels`` (numba): its frames' exact
log-likelihood and gradient, exact evaluation and exact sampling, the same mathematics as
``models/nade.py`` without its (frames, n_visible, n_hidden) working tensors. Only the
engine seam (``engines/__init__.py``) chooses these classes.

The recurrence is any of torch's four. A training step is torch's autograd with one custom
node, :class:`FrameLogProb`: ``conditional_biases`` gives b(t), c(t) through the RNN (tanh,
sigmoid, GRU, LSTM, with their torch kernels and BPTT), the kernel gives each frame's log p
and, in backward, the gradients of b(t), c(t) (handed back to autograd for the RNN's
backward) and of W and V. A custom node rather than a closed-form objective like
``numba_rbm.NumbaCD``: BPTT is not re-derived for four recurrences, and the torch model's
own code conditions the frames. The tanh recurrence (the tutorial's and the paper preset's) is
the exception, because with the NADE compiled torch's autograd of a 100-step RNN became
most of an update: its step is in closed form (:meth:`NumbaNADE._tanh_gradients`, the RNN
and its BPTT by ``cpu_kernels``, as the RNN-RBM's are), which the test suite checks against
autograd like the others.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor

from rnnrbm_cli.chunks import ChunkedData
from rnnrbm_cli.engines.numba_rbm import (
    COMPILE_MESSAGE,
    SERIAL_FRAMES,
    _calling_thread_only,
    _compiled_before,
    _seed,
)
from rnnrbm_cli.engines.torch_path import TorchObjective
from rnnrbm_cli.models.base import CostResult, length_mask


def _kernels():
    """The nade_kernels module, or None when numba is missing (the torch path still works)."""
    try:
        from rnnrbm_cli.engines import nade_kernels
    except ImportError:
        return None
    return nade_kernels


def problem(model: torch.nn.Module, binary: bool, training: bool = False) -> str | None:
    """Why the kernels cannot compute this RNN-NADE on data that is (or is not) 0/1, and when
    ``training``, with its dropout; None if they can. The recurrence does not matter: it stays
    torch's."""
    if training and getattr(model, "dropout", 0.0) > 0:
        return "the NADE's compiled kernels do not apply dropout (--dropout 0 turns it off)"
    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        return f"they run float32 models on the CPU only, not {first.dtype} on {first.device}"
    if not binary:
        return "the data has values other than 0 and 1"
    if _kernels() is None:
        return "numba is not installed (pip install numba)"
    return None


def _np(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().numpy(), np.float32)


def _blocks(n: int) -> int:
    """Ranges of frames per parallel loop: a few per thread (results do not depend on it)."""
    return max(1, min(n, 4 * _kernels().numba.get_num_threads()))


class FrameLogProb(torch.autograd.Function):
    """log p(v) (N,) of frames v (N, n_visible) with biases b (N, n_visible), c (N, n_hidden)
    and the NADE's W, V (n_visible, n_hidden), by the kernels: ``RNNNADE.frame_log_prob``'s
    value, and in backward the gradients of b, c, W and V (v gets none). float32 on the CPU."""

    @staticmethod
    def forward(ctx, v: Tensor, b: Tensor, c: Tensor, W: Tensor, V: Tensor) -> Tensor:
        kernels = _kernels()
        arrays = [_np(x) for x in (v, b, c, W, V)]
        n, n_v = arrays[0].shape
        logp = np.empty(n, np.float32)
        logits = np.empty((n, n_v), np.float32)
        kernels.log_probs(*arrays, _blocks(n), logp, logits)
        ctx.arrays = arrays
        ctx.logits = logits
        return torch.from_numpy(logp)

    @staticmethod
    def backward(ctx, g: Tensor):
        v, b, c, W, V = ctx.arrays
        db, dc = np.empty_like(b), np.empty_like(c)
        dW, dV = np.empty_like(W), np.empty_like(V)
        _kernels().gradients(v, c, W, V, ctx.logits, _np(g), db, dc, dW, dV)
        return None, torch.from_numpy(db), torch.from_numpy(dc), torch.from_numpy(dW), torch.from_numpy(dV)


def frame_log_prob(model, v: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """:meth:`RNNNADE.frame_log_prob` of frames (N, n_visible) by the kernels (autograd-aware)."""
    return FrameLogProb.apply(v, b, c, model.W, model.V)


@contextlib.contextmanager
def _torch_on_calling_thread():
    """torch's thread count set to 1 inside, restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _real_frames(x: Tensor, lengths: Tensor | None) -> Tensor:
    """The frames of a padded batch (B, T, d) that are real, in order: (n, d)."""
    if lengths is None:
        return x.reshape(-1, x.shape[-1])
    return x[length_mask(lengths, x.shape[1]).bool()]


class NumbaNADE(TorchObjective):
    """Exact maximum likelihood with the frames' NADE on the kernels: the cost of a padded
    batch is minus the mean log p over its real frames (padding is never computed).

    With the tanh recurrence (the tutorial's and the paper preset's), a training step is written in
    closed form like ``numba_rbm.NumbaCD``'s: the RNN and its BPTT by ``cpu_kernels``, the
    products with every frame's u(t-1) by torch, no autograd graph (torch's autograd of a
    100-step RNN cost more than the NADE's kernels: benchmarks/README.md). Any other
    recurrence stays torch's, with autograd through :class:`FrameLogProb`. The monitor is
    the latter under no_grad, for every recurrence.
    """

    backend = "numba"

    def __init__(self, model, data: ChunkedData, k: int, generator: torch.Generator | None) -> None:
        super().__init__(model, data, k, generator)

    def cost(self, v: Tensor, lengths: Tensor | None, generator) -> CostResult:
        b, c = self.model.conditional_biases(v)
        logp = frame_log_prob(self.model, _real_frames(v, lengths), _real_frames(b, lengths), _real_frames(c, lengths))
        n = logp.shape[0]
        mean = logp.sum() / n
        return CostResult(cost=-mean, monitor=mean.detach(), n_frames=n)

    def gradients(self, chunk_ids: Tensor) -> CostResult:
        # torch's part (the recurrence: ~100 steps of small products, each a parallel region
        # whose sleeping thread costs ~0.1 ms to wake under OMP_WAIT_POLICY=PASSIVE) always
        # runs on the calling thread; the kernels too for a small update
        # (numba_rbm.SERIAL_FRAMES). The results are the same either way.
        small = int(self.data.chunks[chunk_ids, 1].sum()) <= SERIAL_FRAMES
        with _calling_thread_only(_kernels().numba) if small else _torch_on_calling_thread():
            if self.model.rnn_kind == "tanh":
                return self._tanh_gradients(*self.data.frame_spans(chunk_ids))
            return super().gradients(chunk_ids)

    def _tanh_gradients(self, frames: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> CostResult:
        """The cost of chunks frames[starts[b] : starts[b] + lengths[b]] and its gradient in
        each parameter's ``.grad`` (overwritten), for the tanh recurrence
        u(t) = tanh(bu + u(t-1) Wuu + v(t) Wvu), without autograd."""
        kernels, m = _kernels(), self.model
        p = dict(m.named_parameters())
        Wvu, Wuu, bu, u0 = (_np(x) for x in (m.Wvu, m.Wuu, m.bu, m.u0))
        rows, offsets, u_prev, u_cur = kernels.recurrence(Wvu, Wuu, bu, u0, frames, starts, lengths)
        n, n_v = len(rows), m.config.n_visible
        v = frames[rows]
        # [b(t) | c(t)] = [bv | bh] + u(t-1) [Wuv | Wuh] for every frame at once
        W_cat = torch.cat([m.Wuv, m.Wuh], 1).detach()
        u_prev_t = torch.from_numpy(u_prev)
        bias = torch.addmm(torch.cat([m.bv, m.bh]).detach(), u_prev_t, W_cat).numpy()
        b, c = np.ascontiguousarray(bias[:, :n_v]), np.ascontiguousarray(bias[:, n_v:])
        W, V = _np(m.W), _np(m.V)
        logp, logits = np.empty(n, np.float32), np.empty((n, n_v), np.float32)
        kernels.log_probs(v, b, c, W, V, _blocks(n), logp, logits)
        dbias = torch.empty(n, bias.shape[1])  # [db(t) | dc(t)] of cost = -mean log p
        db, dc = np.empty_like(b), np.empty_like(c)
        grads = {name: (t.grad if t.grad is not None and t.grad.shape == t.shape else torch.empty_like(t))
                 for name, t in p.items()}
        kernels.gradients(v, c, W, V, logits, np.full(n, -1.0 / n, np.float32), db, dc, grads["W"].numpy(),
                          grads["V"].numpy())
        dbias[:, :n_v], dbias[:, n_v:] = torch.from_numpy(db), torch.from_numpy(dc)
        sums = u_prev_t.T @ dbias  # [dWuv | dWuh]
        grads["Wuv"].copy_(sums[:, :n_v])
        grads["Wuh"].copy_(sums[:, n_v:])
        total = dbias.sum(0)
        grads["bv"].copy_(total[:n_v])
        grads["bh"].copy_(total[n_v:])
        du_bias = (dbias @ W_cat.T).numpy()  # dcost/du(t-1) through b(t), c(t)
        da = np.empty_like(u_prev)
        du0 = np.empty((len(starts), u_prev.shape[1]), np.float32)
        kernels.bptt(np.ascontiguousarray(Wuu.T), u_cur, du_bias, offsets, da, du0)
        da_t = torch.from_numpy(da)
        grads["Wvu"].copy_(torch.from_numpy(v).T @ da_t)
        grads["Wuu"].copy_(u_prev_t.T @ da_t)
        grads["bu"].copy_(da_t.sum(0))
        if "u0" in grads:
            grads["u0"].copy_(torch.from_numpy(du0).sum(0))
        for name, t in p.items():
            t.grad = grads[name]
        mean = float(logp.astype(np.float64).sum()) / n
        return CostResult(torch.tensor(-mean), torch.tensor(mean), n)

    def compile_message(self) -> str | None:
        kernels = _kernels()
        compiled = _compiled_before(kernels.log_probs, kernels.gradients, kernels.recurrence)
        return COMPILE_MESSAGE if compiled is False else None

    def warm_up(self) -> None:
        """Compile (or load) the kernels on one chunk: only .grad is written."""
        self.gradients(torch.arange(1))


# Frames per kernel call in evaluation: a progress report per piece; results do not depend on it.
_EVAL_PIECE = 8192


class NumbaNADEExact:
    """Exact evaluation by the kernels: what ``engines.exact_for`` returns for an RNN-NADE
    on the CPU (the record's ``exact_log_likelihoods`` / ``exact_marginals`` by the kernels)."""

    backend = "numba"

    def __init__(self, model) -> None:
        self.model = model

    @torch.no_grad()
    def log_likelihoods(self, v: Tensor, bv: Tensor, bh: Tensor, progress=None) -> Tensor:
        """Exact log p(v_t | history) (N,) of frames v (N, n_visible) given their biases."""
        out = []
        for first in range(0, v.shape[0], _EVAL_PIECE):
            sl = slice(first, first + _EVAL_PIECE)
            out.append(frame_log_prob(self.model, v[sl], bv[sl], bh[sl]))
            if progress is not None:
                progress(len(out[-1]))
        return torch.cat(out) if out else v.new_zeros(0)

    @torch.no_grad()
    def marginals(self, bv: Tensor, bh: Tensor, samples: int, generator=None, progress=None) -> Tensor:
        """Note marginals (N, n_visible) from ``samples`` exact ancestral samples of each frame,
        each contributing its notes' conditional probabilities (Rao-Blackwellised), as
        ``models.nade.exact_marginals``; one random stream per frame, from one seed."""
        kernels = _kernels()
        seed = _seed(generator)
        W, V = _np(self.model.W), _np(self.model.V)
        p = np.empty(tuple(bv.shape), np.float32)
        for first in range(0, bv.shape[0], _EVAL_PIECE):
            stop = min(first + _EVAL_PIECE, bv.shape[0])
            b, c = _np(bv[first:stop]), _np(bh[first:stop])
            kernels.sample(b, c, W, V, samples, seed, first, _blocks(stop - first), np.empty_like(b), p[first:stop])
            if progress is not None:
                progress(stop - first)
        return torch.from_numpy(p)


class NumbaNADESampler:
    """Generation by the kernels: each frame an exact ancestral sample given the history,
    the recurrence stepped in torch between frames (any ``--rnn``)."""

    backend = "numba"

    def __init__(self, model) -> None:
        self.model = model

    def compile_message(self, job: str = "sample") -> str | None:
        kernels = _kernels()
        used = (kernels.sample,) if job == "sample" else (kernels.log_probs, kernels.sample)
        return COMPILE_MESSAGE if _compiled_before(*used) is False else None

    @torch.no_grad()
    def generate(self, n, steps, k=0, primer=None, generator=None) -> Tensor:
        """:meth:`RNNNADE.generate` on the CPU (``k`` is unused). With a ``primer`` (T0,
        n_visible) the result begins with it. Returns (n, T0 + steps, n_visible) float32 0/1;
        frame t of sequence s draws from random stream t n + s of one seed."""
        kernels = _kernels()
        m = self.model
        seed = _seed(generator)
        W, V = _np(m.W), _np(m.V)
        state = m.initial_state(n)
        frames = []
        if primer is not None and primer.shape[0] > 0:
            p = primer.to(dtype=m.W.dtype).expand(n, -1, -1)
            state = m.run_recurrence(p)[1]
            frames.append(p)
        n_v = m.config.n_visible
        out = np.empty((n, steps, n_v), np.float32)
        v, probs = np.empty((n, n_v), np.float32), np.empty((n, n_v), np.float32)
        blocks = _blocks(n)
        for t in range(steps):
            u = state[0]
            b, c = _np(m.bv + u @ m.Wuv), _np(m.bh + u @ m.Wuh)
            kernels.sample(b, c, W, V, 1, seed, t * n, blocks, v, probs)
            out[:, t] = v
            state = m.step(torch.from_numpy(v), state)
        frames.append(torch.from_numpy(out))
        return torch.cat(frames, dim=1)

