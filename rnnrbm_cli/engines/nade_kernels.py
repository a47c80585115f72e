"""Numba-compiled CPU kernels for the RNN-NADE's frames: exact log-likelihood, its gradient,
exact ancestral samples and their note probabilities.

The same mathematics as :meth:`RNNNADE.frame_log_prob` (and its autograd) and
:meth:`RNNNADE.sample_frames`, one frame at a time, with nothing of size
(frames, n_visible, n_hidden) ever built. For a frame v with biases b (n_visible,), c
(n_hidden,) the NADE's hidden pre-activation a = c + sum_{j<i} v_j W[j] changes only at
the notes that are on (about 4 of 88), so h = sigmoid(a) is computed once per *segment* of
notes between two notes on, not once per note::

    a = c; h = sigmoid(a)
    for i in 0..n_visible-1:
        logit_i = b_i + V[i] . h
        log p  += v_i logit_i - softplus(logit_i)
        if v_i != 0: a += v_i W[i]; h = sigmoid(a)        (a new segment begins)

Backward by reverse accumulation, for an upstream gradient g of log p:
d logit_i = g (v_i - sigmoid(logit_i)) is the gradient of b_i and dV[i] += d logit_i h; within
a segment s, the notes' da_i = (d logit_i V[i]) * h(1 - h) share h, so
da_s = (sum_{i in s} d logit_i V[i]) * h_s(1 - h_s); dc = sum_s da_s; and the note j that
opened segment s' gets dW[j] += v_j sum_{s >= s'} da_s, a running sum from the last segment
down (only notes that are on get a dW row). The segments' h are recomputed in backward
into one frame's scratch ((segments, n_hidden) floats, in cache) from the logits that
forward kept (n_visible floats per frame).

Frames run in parallel. dW and dV are summed per fixed block of _GRAD_BLOCK frames (block
boundaries do not depend on the thread count) and the blocks then added in order, so
that every result is the same whatever the number of threads. Random numbers are
``cpu_kernels``' counter-based streams, one per frame, keyed by a seed drawn from the
caller's torch.Generator.

The elementwise functions, random streams and compile flags are ``cpu_kernels``' (one
copy of the float32 exp and of SplitMix64): this module only adds the NADE's loops.
numba's cache does not notice a change in an imported module's inlined function; after
editing ``cpu_kernels``' helpers, clear the ``__pycache__`` entries of this module too.
"""

from __future__ import annotations

import numba  # noqa: F401  (numba_nade sets its thread count through this module)
import numpy as np
from numba import njit, prange

from rnnrbm_cli.engines.cpu_kernels import (
    _ONE,
    _ZERO,
    _block_range,
    _bptt_parallel,
    _bptt_serial,
    _cd_recurrence,
    _exp,
    _inline,
    _n_uniforms,
    _parallel,
    _softplus,
    _stream_start,
    _sum,
    _uniforms,
)

# Frames whose dW and dV are summed together before the blocks are added in order: fixed,
# so that the sums do not depend on how many threads share the blocks. A block's partial
# sums (2 x 88 x 150 floats, zeroed, then added) cost about as much as 10 frames' work
# (measured 4.1 us per frame with blocks of 32 frames, 2.6 with blocks of 512, 1 thread);
# 128 is one block for the presets' batch-1 update (100 frames), four at batch 4.
_GRAD_BLOCK = 128


@_inline
def _sigmoid(h, a):
    """h = sigmoid(a), elementwise."""
    for j in range(a.shape[0]):
        h[j] = _ONE / (_ONE + _exp(-a[j]))


@njit(fastmath=True, error_model="numpy", cache=True)  # not inlined: keeps "reassoc" away from _exp
def _dot(x, y):
    """x . y of two float32 vectors, reassociated so that it vectorises."""
    total = _ZERO
    for j in range(x.shape[0]):
        total += x[j] * y[j]
    return total


@_inline
def _axpy(y, alpha, x):
    """y += alpha x."""
    for j in range(y.shape[0]):
        y[j] += alpha * x[j]


@_inline
def _frame_log_prob(v, b, c, W, V, a, h, work, logits):
    """log p(v) of one frame with biases b, c; logits[i] = logit p(v_i = 1 | v_<i).
    a, h: scratch (n_hidden,); work: scratch (n_visible,)."""
    for j in range(c.shape[0]):
        a[j] = c[j]
    _sigmoid(h, a)
    n_v = v.shape[0]
    for i in range(n_v):
        logits[i] = b[i] + _dot(V[i], h)
        if v[i] != _ZERO:
            _axpy(a, v[i], W[i])
            _sigmoid(h, a)
    for i in range(n_v):  # apart from the loop above, so that softplus vectorises
        work[i] = v[i] * logits[i] - _softplus(logits[i])
    return _sum(work)


@_parallel
def _log_probs(v, b, c, W, V, blocks, logp, logits):
    """logp[f] = log p(v[f]) (N,) and logits (N, n_visible) of frames v (N, n_visible) with
    biases b (N, n_visible), c (N, n_hidden); ``blocks`` ranges of frames in parallel."""
    N = v.shape[0]
    n_h = c.shape[1]
    for block in prange(blocks):
        first, stop = _block_range(block, blocks, N)
        a = np.empty(n_h, np.float32)
        h = np.empty(n_h, np.float32)
        work = np.empty(v.shape[1], np.float32)
        for f in range(first, stop):
            logp[f] = _frame_log_prob(v[f], b[f], c[f], W, V, a, h, work, logits[f])


@_inline
def _frame_gradients(v, c, W, V, logits, g, a, H, gsum, on, db, dc, dW, dV):
    """The gradients of g log p(v) of one frame (logits from forward): db (n_visible,) and
    dc (n_hidden,) written, dW and dV (n_visible, n_hidden) added to.

    H (n_visible + 1, n_hidden): segment s's h, then its da; gsum (n_hidden,), a: scratch;
    on (n_visible,): the note that opened each segment.
    """
    n_v, n_h = V.shape
    for j in range(n_h):
        a[j] = c[j]
        gsum[j] = _ZERO
    _sigmoid(H[0], a)
    for i in range(n_v):  # apart from the loop below, so that the sigmoid vectorises
        db[i] = g * (v[i] - _ONE / (_ONE + _exp(-logits[i])))
    s = 0
    for i in range(n_v):
        d = db[i]
        h = H[s]
        for j in range(n_h):  # indexed, not _axpy on row views: a view per note costs more
            gsum[j] += d * V[i, j]
            dV[i, j] += d * H[s, j]
        if v[i] != _ZERO:  # segment s ends here: its da replaces its h
            for j in range(n_h):
                h[j] = gsum[j] * h[j] * (_ONE - h[j])
                gsum[j] = _ZERO
            _axpy(a, v[i], W[i])
            s += 1
            on[s] = i
            _sigmoid(H[s], a)
    h = H[s]
    for j in range(n_h):
        h[j] = gsum[j] * h[j] * (_ONE - h[j])
    # dW[on[s']] += v_on sum_{s >= s'} da_s, from the last segment down; dc = all of them
    for j in range(n_h):
        gsum[j] = _ZERO
    while s > 0:
        _axpy(gsum, _ONE, H[s])
        _axpy(dW[on[s]], v[on[s]], gsum)
        s -= 1
    for j in range(n_h):
        dc[j] = gsum[j] + H[0, j]


@_parallel
def _gradients(v, c, W, V, logits, g, db, dc, dW, dV):
    """The gradients of sum_f g[f] log p(v[f]) with respect to b (db, (N, n_visible)), c
    (dc, (N, n_hidden)), W and V (dW, dV, (n_visible, n_hidden), overwritten), from the
    logits that :func:`_log_probs` returned. Frames in fixed blocks of _GRAD_BLOCK, each
    block's dW, dV summed apart, then the blocks added in order: the same result on any
    number of threads."""
    N = v.shape[0]
    n_v, n_h = V.shape
    blocks = (N + _GRAD_BLOCK - 1) // _GRAD_BLOCK
    if blocks <= 1:  # one block: its sums are the result
        dW[...] = _ZERO
        dV[...] = _ZERO
        part_W, part_V = dW.reshape((1, n_v, n_h)), dV.reshape((1, n_v, n_h))
    else:
        part_W = np.zeros((blocks, n_v, n_h), np.float32)
        part_V = np.zeros((blocks, n_v, n_h), np.float32)
    for block in prange(blocks):
        a = np.empty(n_h, np.float32)
        gsum = np.empty(n_h, np.float32)
        H = np.empty((n_v + 1, n_h), np.float32)
        on = np.empty(n_v + 1, np.int64)
        for f in range(block * _GRAD_BLOCK, min(N, (block + 1) * _GRAD_BLOCK)):
            _frame_gradients(v[f], c[f], W, V, logits[f], g[f], a, H, gsum, on, db[f], dc[f], part_W[block],
                             part_V[block])
    if blocks <= 1:
        return
    for i in prange(n_v):
        for j in range(n_h):
            dW[i, j] = _ZERO
            dV[i, j] = _ZERO
        for block in range(blocks):
            for j in range(n_h):
                dW[i, j] += part_W[block, i, j]
                dV[i, j] += part_V[block, i, j]


@_parallel
def _sample(b, c, W, V, samples, seed, stream0, blocks, v_out, p_mean):
    """Exact ancestral samples of frames with biases b (N, n_visible), c (N, n_hidden):
    ``samples`` draws per frame from random stream stream0 + f. v_out[f] (N, n_visible):
    the last draw, 0/1; p_mean[f]: the mean over draws of each note's probability given
    the notes drawn before it (its mean is the note's marginal, Rao-Blackwellised)."""
    N, n_v = b.shape
    n_h = c.shape[1]
    for block in prange(blocks):
        first, stop = _block_range(block, blocks, N)
        a = np.empty(n_h, np.float32)
        h = np.empty(n_h, np.float32)
        rand = np.empty(_n_uniforms(n_v), np.float32)
        for f in range(first, stop):
            counter = _stream_start(seed, stream0 + f)
            for i in range(n_v):
                p_mean[f, i] = _ZERO
            for _ in range(samples):
                counter = _uniforms(rand, n_v, counter)
                for j in range(n_h):
                    a[j] = c[f, j]
                _sigmoid(h, a)
                for i in range(n_v):
                    p = _ONE / (_ONE + _exp(-(b[f, i] + _dot(V[i], h))))
                    p_mean[f, i] += p
                    on = rand[i] < p
                    v_out[f, i] = _ONE if on else _ZERO
                    if on:
                        _axpy(a, _ONE, W[i])
                        _sigmoid(h, a)
            for i in range(n_v):
                p_mean[f, i] /= samples


# -- the names numba_nade.py calls ----------------------------------------------------------

log_probs = _log_probs
gradients = _gradients
sample = _sample
# The tanh recurrence and its BPTT are the RNN-RBM's (cpu_kernels): u(t-1), u(t) of every
# frame of a set of chunks, and the pre-activations' gradient from what u(t-1) sends back.
recurrence = _cd_recurrence


def bptt(WuuT, u_cur, du_bias, offsets, da, du0):
    """da (n, n_recurrent) = dcost/d(bu + u(t-1) Wuu + v(t) Wvu) of every frame and du0 (B,
    n_recurrent) of every chunk, from du_bias = dcost/du(t-1) through the frame's biases;
    chunks in parallel when there are several."""
    (_bptt_parallel if offsets.shape[0] > 2 else _bptt_serial)(WuuT, u_cur, du_bias, offsets, da, du0)
