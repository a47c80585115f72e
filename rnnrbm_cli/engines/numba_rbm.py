"""The RNN-RBM on the compiled CPU kernels of ``cpu_kernels`` (numba): CD-k gradients,
generation, Gibbs chains and annealing, the same mathematics as the torch path and several
times faster on a CPU. Only the engine seam (``engines/__init__.py``) chooses these classes.
"""

from __future__ import annotations

import contextlib
import os
import sys
import weakref

import numpy as np
import torch
from torch import Tensor

from rnnrbm_cli.chunks import ChunkedData
from rnnrbm_cli.models.base import CostResult

COMPILE_MESSAGE = "Compiling the CPU kernels (once per machine, about a minute)..."


def _kernels():
    """The cpu_kernels module, or None when numba is missing (the torch path still works)."""
    try:
        from rnnrbm_cli.engines import cpu_kernels
    except ImportError:
        return None
    return cpu_kernels


def _compiled_before(*functions) -> bool | None:
    """Whether numba's cache already holds every one of these kernels (False: the next call
    compiles them, up to a minute); None when that cannot be told (numba internals changed)."""
    try:
        return all(os.path.exists(f._cache._cache_file._index_path) for f in functions)
    except AttributeError:
        return None


def problem(model: torch.nn.Module, binary: bool, training: bool = False) -> str | None:
    """Why the kernels cannot compute this RNN-RBM on data that is (or is not) 0/1 (its
    recurrence, the data, its size, the platform); None if they can. Training changes
    nothing: they apply the model's dropout as torch does."""
    if getattr(model, "rnn_kind", "tanh") != "tanh":
        return f"they compute the tanh recurrence only, not {model.rnn_kind}"
    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        return f"they run float32 models on the CPU only, not {first.dtype} on {first.device}"
    if not binary:
        return "the data has values other than 0 and 1"
    cpu = _kernels()
    if cpu is None:
        return "numba is not installed (pip install numba)"
    if sys.byteorder != "little":
        return "they read 0/1 bytes as bits in little-endian order"
    size = cpu.table_bytes(model.config.n_visible, model.config.n_hidden)
    if size > cpu.TABLE_LIMIT:
        return (f"their table of W's subset sums would take {size / 2**20:.1f} MiB for {model.config.n_hidden} hidden "
                f"units (at most {cpu.TABLE_LIMIT / 2**20:.0f} MiB)")
    return None


# numpy views of a model's parameters and of their .grad tensors, made once per model and
# reused while the tensors stay the same objects with the same storage (making them costs
# ~30 us, 2% of a tutorial-sized update).
_views: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _seed(generator: torch.Generator | None) -> np.uint64:
    # One draw per call: the kernels' streams follow the torch generator's state.
    return np.uint64(int(torch.randint(0, 2**63 - 1, (), generator=generator)))


def _arrays(model, grads: bool = False) -> list[np.ndarray]:
    """The parameters as numpy views, in RNNRBM.PARAMETERS order; with grads=True, then the
    views of their .grad tensors (created when missing; u0's when it is a fixed buffer is scratch)."""
    tensors = model.parameter_list()
    n = len(tensors)
    cached = _views.get(model)
    if cached is not None:
        old_tensors, ptrs, old_grads, arrays = cached
        if all(t is o and t.data_ptr() == q for t, o, q in zip(tensors, old_tensors, ptrs)) and (
            not grads or all(t.grad is g for t, g in zip(tensors, old_grads) if t.requires_grad)
        ):
            return arrays if grads else arrays[:n]
    if not grads:
        return [t.detach().numpy() for t in tensors]
    grad_tensors = []
    for t in tensors:
        if t.requires_grad:
            if t.grad is None or t.grad.shape != t.shape:
                t.grad = torch.empty_like(t)
            grad_tensors.append(t.grad)
        else:  # u0 when not learned: the kernels still write its gradient somewhere
            grad_tensors.append(torch.empty_like(t))
    arrays = [t.detach().numpy() for t in tensors] + [g.numpy() for g in grad_tensors]
    _views[model] = (tensors, [t.data_ptr() for t in tensors], grad_tensors, arrays)
    return arrays


# An update of at most this many frames (the tutorial's: one chunk of 100) runs in the
# calling thread, numba's kernels and torch's products alike. Each parallel region of an
# update (the table, the chains, three products, the sparse gradients: six) must wake the
# other thread, ~0.1 ms on a 2-core VM where it sleeps (OMP_WAIT_POLICY=PASSIVE, the CLI's
# setting), which is more than the second core gives on 100 frames. Measured on the 2-core
# machine of 2026-12-02, per tutorial update (B=1, 100 frames, CD-15), two threads against
# one: 2.3-2.8 ms against 1.9-2.1 idle, 2.0-2.9 against 1.8-2.3 beside a busy process;
# at 200 frames the two are even and from 400 on two threads win (6.1-6.4 against 6.6-8.2).
# The results do not depend on it: every kernel's output is the same whatever the thread
# count (tests/test_cpu_kernels.py).
SERIAL_FRAMES = 128


@contextlib.contextmanager
def _calling_thread_only(numba_module):
    """numba's and torch's thread counts set to 1 inside, restored after."""
    saved = numba_module.get_num_threads(), torch.get_num_threads()
    numba_module.set_num_threads(1)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        numba_module.set_num_threads(saved[0])
        torch.set_num_threads(saved[1])


def numba_cd(model, frames, starts, lengths, k, generator=None, v_neg=None, want_grads=True, dropout=0.0):
    """The CD-k cost of chunks of ``frames`` and the tutorial's monitor, by the kernels; the
    cost's gradient goes into the parameters' ``.grad`` (overwritten, not accumulated).

    The same quantities as ``model.cd_cost`` on the padded batch of those chunks followed
    by ``cost.backward()``; with ``dropout``, as the model in training mode computes them
    with that rate (the same masks, drawn from ``model.dropout_generator`` in the same
    order). model : an RNNRBM with float32 parameters on the CPU.
    frames : np.ndarray, shape=(N, n_visible), float32, values 0/1. starts, lengths :
    np.ndarray, shape=(B,), int64: chunk b is frames[starts[b] : starts[b] + lengths[b]].
    k : Gibbs steps. generator : the torch.Generator that one 64-bit seed is drawn from.
    v_neg : negative samples, shape=(n, n_visible), the chunks' frames in order, to use
    instead of the chain's (tests). want_grads : False skips the gradient.
    Returns (cost, monitor, n_frames): cost and monitor are means over the n real frames.
    """
    kernels = _kernels()
    small = int(np.sum(lengths)) <= SERIAL_FRAMES
    with _calling_thread_only(kernels.numba) if small else contextlib.nullcontext():
        return _numba_cd(kernels, model, frames, starts, lengths, k, generator, v_neg, want_grads, dropout)


def _dropout_keeps(model, lengths, rate) -> tuple[np.ndarray, np.ndarray]:
    """The masks ``model.previous_outputs`` draws in training for the padded batch of chunks
    of these lengths (its generator, its order: the recurrence's inputs, then its outputs),
    for the real frames laid end to end: (n, n_visible) 0/1 and (n, n_recurrent) 0 or
    1 / (1 - rate), float32."""
    B, T, gen = len(lengths), int(np.max(lengths)), model.dropout_generator
    n_v, n_u = model.W.shape[0], model.Wuu.shape[0]
    real = np.arange(T)[None, :] < np.asarray(lengths)[:, None]  # (B, T), row-major = the chunks end to end
    keep_v = (torch.rand((B, T, n_v), generator=gen) >= rate).numpy()[real]
    keep_u = (torch.rand((B, T, n_u), generator=gen) >= rate).numpy()[real]
    return keep_v.astype(np.float32), keep_u.astype(np.float32) / np.float32(1 - rate)


def _numba_cd(kernels, model, frames, starts, lengths, k, generator, v_neg, want_grads, dropout):
    keeps = _dropout_keeps(model, lengths, dropout) if dropout else None  # before the chains, as in torch
    seed = _seed(generator)
    arrays = _arrays(model, grads=want_grads)
    W, bv, bh, Wuh, Wuv, Wvu, Wuu, bu, u0 = arrays[:9]
    given = kernels.NO_SAMPLES if v_neg is None else np.ascontiguousarray(v_neg, np.float32)
    threads = kernels.numba.get_num_threads()
    if keeps is None:
        rows, offsets, u_prev, u_cur = kernels.cd_recurrence(Wvu, Wuu, bu, u0, frames, starts, lengths)
        u_out, v_in = u_prev, kernels.NO_KEYS
    else:
        # Dropout: the recurrence reads v(t) with keys dropped and the rest scaled by
        # 1 / (1 - rate), i.e. 0/1 frames through Wvu / (1 - rate); the frame models read
        # u(t-1) with units dropped (u_out); the RBMs still model the whole v(t).
        keep_v, keep_u = keeps
        n = int(np.sum(lengths))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        rows = np.repeat(np.asarray(starts, np.int64) - offsets[:-1], lengths) + np.arange(n)
        v_read = frames[rows] * keep_v
        scale = np.float32(1 / (1 - dropout))
        _, _, u_prev, u_cur = kernels.cd_recurrence(Wvu * scale, Wuu, bu, u0, v_read, offsets[:-1],
                                                    np.asarray(lengths, np.int64))
        u_out, v_in = u_prev * keep_u, v_read > 0.5
    # The products with every frame's u(t-1) go to torch (MKL; see cpu_kernels' training
    # section): [bv(t) | bh(t)] = [bv | bh] + u(t-1) [Wuv | Wuh], the hidden part padded.
    W_cat = torch.from_numpy(np.concatenate([Wuv, kernels.pad_hidden(Wuh)], axis=1))
    b_cat = torch.from_numpy(np.concatenate([bv, kernels.pad_hidden(bh.reshape(1, -1))[0]]))
    u_out_t = torch.from_numpy(u_out)
    bias = torch.addmm(b_cat, u_out_t, W_cat).numpy()
    dbias, ph_data, ph_neg, on_data, on_neg, gap, monitor = kernels.cd_chains(W, bias, frames, rows, k, seed, given,
                                                                              threads)
    n = len(rows)
    if want_grads:
        gW, gbv, gbh, gWuh, gWuv, gWvu, gWuu, gbu, gu0 = arrays[9:]
        du_bias = torch.mm(torch.from_numpy(dbias), W_cat.T).numpy()  # dcost/du(t-1) through bv(t), bh(t)
        if keeps is not None:
            du_bias *= keeps[1]
        dense = kernels.cd_gradients(Wuu, u_out, u_cur, offsets, dbias, du_bias, ph_data, ph_neg, on_data, on_neg,
                                     v_in, threads, gW, gbv, gbh, gWuv, gWvu, gbu, gu0)
        n_h = gWuh.shape[1]
        if keeps is None:
            sums = _frame_sums(u_out_t, torch.from_numpy(dense)).numpy()  # [dWuh | dWuu]
            gWuh[...] = sums[:, :n_h]
            gWuu[...] = sums[:, n_h:]
        else:  # Wuh reads the dropped u(t-1), Wuu the whole
            dense_t = torch.from_numpy(dense)
            gWuh[...] = _frame_sums(u_out_t, dense_t[:, :n_h]).numpy()
            gWuu[...] = _frame_sums(torch.from_numpy(u_prev), dense_t[:, n_h:]).numpy()
            gWvu *= scale
    return gap / n, monitor / n, n


_FRAME_TILE = 128  # frames per product in _frame_sums


def _frame_sums(a: Tensor, b: Tensor) -> Tensor:
    """a^T b = sum over frames g of a[g]^T b[g], for a (n, p) and b (n, q): one matrix product
    per tile of _FRAME_TILE frames, then the tiles' products summed (torch's sum splits its
    work over the output's elements, not over tiles). One product over all n frames lets MKL
    split the sum between threads, and its result then depends on the thread count (seen
    from 1,000 frames on: 1 and 2 threads differ in the last bits)."""
    n = a.shape[0]
    if n <= _FRAME_TILE:
        return a.T @ b
    full = n - n % _FRAME_TILE
    total = torch.zeros(a.shape[1], b.shape[1], dtype=a.dtype)
    if full:
        tiles = full // _FRAME_TILE
        a_t = a[:full].reshape(tiles, _FRAME_TILE, -1)
        b_t = b[:full].reshape(tiles, _FRAME_TILE, -1)
        total += torch.bmm(a_t.transpose(1, 2), b_t).sum(0)
    if full < n:
        total += a[full:].T @ b[full:]
    return total


class NumbaCD:
    """CD-k by the compiled kernels: no padded batch, no autograd graph."""

    backend = "numba"

    def __init__(self, model, data: ChunkedData, k: int, generator: torch.Generator | None) -> None:
        self.model, self.data, self.k, self.generator = model, data, k, generator

    def _dropout(self) -> float:
        """The rate the model drops units at now: its own in training mode, else none."""
        return getattr(self.model, "dropout", 0.0) if self.model.training else 0.0

    def gradients(self, chunk_ids: Tensor) -> CostResult:
        frames, starts, lengths = self.data.frame_spans(chunk_ids)
        cost, monitor, n = numba_cd(self.model, frames, starts, lengths, self.k, self.generator,
                                    dropout=self._dropout())
        return CostResult(torch.tensor(cost), torch.tensor(monitor), n)

    def monitor(self, data: ChunkedData, generator: torch.Generator) -> float:
        # one block for data in memory; data on disk in blocks, their means weighted by frames
        results = [numba_cd(self.model, frames, starts, lengths, self.k, generator, want_grads=False,
                            dropout=self._dropout())
                   for frames, starts, lengths in data.frame_blocks(torch.arange(len(data.chunks)))]
        if len(results) == 1:
            return float(results[0][1])
        return sum(float(monitor) * n for _, monitor, n in results) / sum(n for _, _, n in results)

    def compile_message(self) -> str | None:
        kernels = _kernels()
        compiled = _compiled_before(kernels.cd_recurrence, kernels.cd_chains, kernels.cd_gradients)
        return COMPILE_MESSAGE if compiled is False else None

    def warm_up(self) -> None:
        """Compile (or load) the kernels on one chunk, with a throwaway generator: the run's
        random streams and parameters are untouched (only .grad is written)."""
        frames, starts, lengths = self.data.frame_spans(torch.arange(1))
        numba_cd(self.model, frames, starts, lengths, 1, torch.Generator().manual_seed(0))


class NumbaSampler:
    """Generation and Gibbs chains by the compiled kernels (their own random streams)."""

    backend = "numba"

    def __init__(self, model) -> None:
        self.model = model

    def compile_message(self, job: str = "sample") -> str | None:
        """The message to show before ``job`` ("sample" or "evaluate") compiles its kernels; None
        when numba's cache holds them (or cannot tell)."""
        kernels = _kernels()
        used = (kernels.generate_rows, kernels.rnn_serial) if job == "sample" else (kernels.gibbs_rows, kernels.ais)
        used += (kernels.subset_sums,)
        return COMPILE_MESSAGE if _compiled_before(*used) is False else None

    def generate(self, n, steps, k, primer=None, generator=None) -> Tensor:
        """:meth:`RNNRBM.generate` on the CPU: n sequences of ``steps`` new frames, each from
        a fresh k-step Gibbs chain started at zeros, after the 0/1 ``primer`` (T0, n_visible)
        when given. Returns (n, T0 + steps, n_visible) float32 0/1, beginning with the primer.
        A primer that is not 0/1 goes to the reference sampler."""
        if primer is not None and not bool(((primer == 0) | (primer == 1)).all()):
            return self.model.generate(n, steps, k, primer, generator)
        kernels = _kernels()
        seed = _seed(generator)
        W, bv, bh, Wuh, Wuv, Wvu, Wuu, bu, u0 = _arrays(self.model)
        n_v, n_u = W.shape[0], Wuu.shape[0]
        u = u0
        p = None
        if primer is not None and primer.shape[0] > 0:
            p = np.ascontiguousarray(primer.detach().cpu().numpy(), np.float32)
            T0 = p.shape[0]
            u_prev = np.empty((T0, n_u), np.float32)
            u_cur = np.empty((T0, n_u), np.float32)
            kernels.rnn_serial(Wvu, Wuu, bu, u0, p, np.arange(T0), np.array([0, T0]), u_prev, u_cur)
            u = u_cur[-1]
        out = np.empty((n, steps, n_v), np.float32)
        u_start = np.ascontiguousarray(np.broadcast_to(u, (n, n_u)))
        pad = kernels.pad_hidden
        kernels.generate_rows(
            pad(W), kernels.subset_sums(np.ascontiguousarray(W.T)), bv, pad(bh.reshape(1, -1))[0], pad(Wuh), Wuv, Wvu, Wuu,
            bu, u_start, k, seed, out,
        )
        result = torch.from_numpy(out)
        if p is not None:
            result = torch.cat([torch.from_numpy(p).expand(n, -1, -1), result], dim=1)
        return result

    def gibbs_chain(self, v, W, bv, bh, k, generator=None) -> Tensor:
        """k steps of :func:`rnnrbm_cli.models.rbm.gibbs_chain` on the CPU from 0/1 ``v``
        (..., n_visible), biases bv (..., n_visible) and bh (..., n_hidden) broadcast
        against it (each row its own, or shared). Returns the last v, shaped like ``v``, float32."""
        kernels = _kernels()
        shape = v.shape
        n_v, n_h = W.shape
        v_np = np.ascontiguousarray(v.detach().cpu().reshape(-1, n_v).numpy(), np.float32)
        n = v_np.shape[0]
        W_np = np.ascontiguousarray(W.detach().cpu().numpy(), np.float32)
        bv_np = np.ascontiguousarray(bv.detach().cpu().expand(*shape[:-1], n_v).reshape(n, n_v).numpy(), np.float32)
        bh_np = np.ascontiguousarray(bh.detach().cpu().expand(*shape[:-1], n_h).reshape(n, n_h).numpy(), np.float32)
        out = np.empty((n, n_v), np.float32)
        blocks = max(1, min(n, 4 * kernels.numba.get_num_threads()))
        kernels.gibbs_rows(
            kernels.pad_hidden(W_np), kernels.subset_sums(np.ascontiguousarray(W_np.T)), bv_np, kernels.pad_hidden(bh_np),
            v_np, k, _seed(generator), blocks, out,
        )
        return torch.from_numpy(out).reshape(shape)

    def ais_log_weights(self, W, base, bv, bh, schedule, chains, generator=None) -> Tensor:
        """:func:`rnnrbm_cli.models.rbm.ais_log_weights` by the kernels: the same path, a random
        stream per run (so the thread count changes nothing), frames in parallel.
        Returns (n, chains) float64."""
        return self._annealing(W, base, bv, bh, schedule, chains, None, generator)

    def raise_log_weights(self, W, base, bv, bh, schedule, chains, v, generator=None) -> Tensor:
        """:func:`rnnrbm_cli.models.rbm.raise_log_weights` by the kernels, as ais_log_weights."""
        return self._annealing(W, base, bv, bh, schedule, chains, v, generator)

    def _annealing(self, W, base, bv, bh, schedule, chains, v, generator) -> Tensor:
        kernels = _kernels()
        W_np = np.ascontiguousarray(W.detach().cpu().numpy(), np.float32)
        arrays = [np.ascontiguousarray(x.detach().cpu().numpy(), np.float32) for x in (base, bv, bh)]
        start = kernels.NO_SAMPLES if v is None else np.ascontiguousarray(v.detach().cpu().numpy(), np.float32)
        n = arrays[0].shape[0]
        log_w = np.empty((n, chains), np.float64)
        blocks = max(1, min(n, 4 * kernels.numba.get_num_threads()))
        kernels.ais(
            kernels.pad_hidden(W_np), kernels.subset_sums(np.ascontiguousarray(W_np.T)), W_np.shape[1], arrays[0],
            arrays[1], kernels.pad_hidden(arrays[2]), np.ascontiguousarray(schedule.cpu().numpy(), np.float64), chains,
            _seed(generator), blocks, start, log_w,
        )
        return torch.from_numpy(log_w)


