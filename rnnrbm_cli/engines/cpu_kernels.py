"""Numba-compiled CPU kernels for the RNN-RBM: one CD-k gradient pass, and generation.

The same mathematics as :meth:`RNNRBM.cd_cost` followed by ``backward()``, and as
:meth:`RNNRBM.generate`, written for a CPU with no torch op in the hot loop:

- binary frames are sparse (about 4 of 88 keys), so ``v W`` is the sum of the rows of W
  for the keys that are on; ``h W^T`` is read from a table of the sums of every subset of
  8 consecutive rows of W^T, one row per byte of the hidden sample (:func:`_subset_sums`);
- the Gibbs chains of different frames are independent for all k steps (their biases
  bv(t), bh(t) are fixed during the chain), so frames run in parallel with no
  synchronisation between steps;
- the CD gradient is written in closed form (see :func:`_cd_gradients`), then
  back-propagated through time into the RNN, so no autograd graph is built; the products
  with every frame's RNN state are matrix products, which numba_rbm.py hands to torch;
- random numbers come from a counter-based generator (SplitMix64: a 64-bit counter
  through a bijective mixer), one stream per frame (training), per row (Gibbs chains) or
  per sequence (generation), keyed by a 64-bit seed that each call draws from the
  caller's ``torch.Generator``. Results therefore depend only on that generator's state,
  not on the number of threads, and a run resumed from a checkpoint (which stores the
  generator's state) continues exactly.

The streams differ from the torch path's ``torch.rand`` draws, so the two backends give
different samples from the same distributions; the tests compare them where that is
deterministic (gradients with given negative samples, the monitor with a certain hidden
sample, strongly biased generation) and by sampling statistics elsewhere.

Everything is float32, as the torch model is. exp, tanh and softplus are written out as
range reduction plus polynomial (within 3 ulp of the float64 result) so that LLVM
vectorises them; ``math.exp`` would be a scalar library call per element. Inputs are
0/1 frames; the wrappers and the trainer check that once, not per update.

Functions are compiled with ``cache=True``: the first call on a machine compiles (about
a minute on two cores) and stores the machine code in ``__pycache__`` next to this file
(or in numba's user cache, or ``$NUMBA_CACHE_DIR``); later processes load it in ~0.3 s.
Parallel loops run on numba's OpenMP layer (the libgomp that torch loads, so one thread
pool serves both), falling back to numba's own "workqueue" pool where libgomp is missing.
Measured on the 2-core machine of 2026-12-01: an empty parallel region costs 1-2 us on
OpenMP and ~100 us on the workqueue; with the CLI's OMP_WAIT_POLICY=PASSIVE and another
busy process on the machine, OpenMP is still the faster (5.2 against 6.3 s per tutorial
epoch). NUMBA_THREADING_LAYER chooses otherwise. The workqueue must not be entered from
two Python threads at once. With PASSIVE, a region whose other thread sleeps costs ~0.1 ms
to wake it on a 2-core VM: engines.numba_cd runs updates of few frames (the tutorial's)
in the calling thread (engines.SERIAL_FRAMES).
"""

from __future__ import annotations

import functools
import os

import numpy as np
from llvmlite import ir
import numba
from numba import njit, prange, types
from numba.extending import intrinsic

# OpenMP first (see the module's docstring), then TBB, then the workqueue; the environment
# (NUMBA_THREADING_LAYER, NUMBA_THREADING_LAYER_PRIORITY) decides where it says.
if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

# fastmath without "reassoc": the Cody-Waite reduction in _exp needs its order of operations.
_ELEMENTWISE = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}

_f32 = np.float32
_u64 = np.uint64

_LOG2E = _f32(1.4426950408889634)
_LN2_HI = _f32(0.693359375)
_LN2_LO = _f32(-2.12194440e-4)
_EXP_LO = _f32(-87.0)  # exp(-87) is still a normal float32
_EXP_HI = _f32(88.0)
_E1, _E2, _E3 = _f32(1.9875691500e-4), _f32(1.3981999507e-3), _f32(8.3334519073e-3)
_E4, _E5, _E6 = _f32(4.1665795894e-2), _f32(1.6666665459e-1), _f32(5.0000001201e-1)
_ZERO, _HALF, _ONE, _TWO = _f32(0.0), _f32(0.5), _f32(1.0), _f32(2.0)
_TANH_SMALL = _f32(0.125)
_T3, _T5, _T7 = _f32(-1.0 / 3.0), _f32(2.0 / 15.0), _f32(-17.0 / 315.0)
_L3, _L5, _L7, _L9 = _f32(1 / 3), _f32(1 / 5), _f32(1 / 7), _f32(1 / 9)
_L11, _L13, _L15 = _f32(1 / 11), _f32(1 / 13), _f32(1 / 15)


# -- how functions are compiled -----------------------------------------------------------
#
# error_model="numpy": a division by zero gives inf instead of raising, which removes the
# checks that would stop loops from vectorising. cache=True: compiled once per machine.

_inline = functools.partial(njit, inline="always", fastmath=_ELEMENTWISE, error_model="numpy", cache=True)
_serial = functools.partial(njit, fastmath=_ELEMENTWISE, error_model="numpy", cache=True)
_parallel = functools.partial(njit, parallel=True, fastmath=_ELEMENTWISE, error_model="numpy", cache=True)


# -- elementwise functions ---------------------------------------------------------------


@intrinsic
def _f32_from_bits(typingctx, bits):
    """Reinterpret the 32 bits of an int32 as a float32 (a free register move)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@_inline
def _exp(x):
    """exp(x) for float32 x, clamped to [-87, 88]; Cephes expf's polynomial, ~1 ulp."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    n = np.floor(x * _LOG2E + _HALF)
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    p = ((((_E1 * r + _E2) * r + _E3) * r + _E4) * r + _E5) * r + _E6
    p = p * (r * r) + r + _ONE
    return p * _f32_from_bits(np.int32((np.int32(n) + 127) << 23))  # times 2**n


@_inline
def _log1p_unit(e):
    """log(1 + e) for e in [0, 1], as 2 atanh(e / (2 + e)): no cancellation for small e."""
    w = e / (_TWO + e)
    w2 = w * w
    s = _L13 + w2 * _L15
    s = _L11 + w2 * s
    s = _L9 + w2 * s
    s = _L7 + w2 * s
    s = _L5 + w2 * s
    s = _L3 + w2 * s
    return _TWO * w * (_ONE + w2 * s)


@_inline
def _softplus(x):
    """log(1 + exp(x)) without overflow."""
    return max(x, _ZERO) + _log1p_unit(_exp(-abs(x)))


@_inline
def _tanh(x):
    ax = abs(x)
    e = _exp(-_TWO * ax)
    big = (_ONE - e) / (_ONE + e)
    x2 = ax * ax
    small = ax * (_ONE + x2 * (_T3 + x2 * (_T5 + x2 * _T7)))  # Taylor: 1 - e cancels for small x
    t = small if ax < _TANH_SMALL else big
    return t if x >= _ZERO else -t


@njit(fastmath=True, error_model="numpy", cache=True)  # not inlined: keeps "reassoc" away from _exp
def _sum(x):
    """Sum of a float32 vector, reassociated so that it vectorises."""
    total = _ZERO
    for j in range(x.shape[0]):
        total += x[j]
    return total


# -- random numbers ----------------------------------------------------------------------

_GAMMA = _u64(0x9E3779B97F4A7C15)  # SplitMix64's increment
_STREAM = _u64(0xD1B54A32D192ED03)  # spreads stream numbers before mixing
_M1, _M2 = _u64(0xBF58476D1CE4E5B9), _u64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40, _S8 = _u64(30), _u64(27), _u64(31), _u64(40), _u64(8)
_MASK24 = _u64(0xFFFFFF)
_TWO_M24 = _f32(2.0**-24)


@_inline
def _mix64(z):
    """SplitMix64's output function: a bijection of 64-bit integers."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@_inline
def _stream_start(seed, stream):
    """The counter where stream number ``stream`` of a call seeded with ``seed`` begins."""
    return _mix64(seed ^ (_u64(stream) * _STREAM))


@_inline
def _n_uniforms(n):
    """How many places _uniforms fills for n numbers: whole vectors of 16, no scalar tail."""
    return 16 * ((n + 15) // 16)


@_inline
def _uniforms(out, n, counter):
    """Fill out[:n] with uniform float32 in [0, 1), 24 random bits each (as torch.rand).

    The SplitMix64 sequence from ``counter``: each 64-bit output gives two numbers. Fills
    _n_uniforms(n) places (rounding up keeps the loop free of a scalar tail). Returns the
    counter after the outputs used.
    """
    half = _n_uniforms(n) // 2
    lo, hi = out[:half], out[half:]  # two views: stores to out[q] and out[half + q] do not vectorise
    for q in range(half):
        z = _mix64(counter + _u64(q) * _GAMMA)
        lo[q] = _f32(np.int64(z >> _S40)) * _TWO_M24
        hi[q] = _f32(np.int64((z >> _S8) & _MASK24)) * _TWO_M24
    return counter + _u64(half) * _GAMMA


# -- vector-matrix products --------------------------------------------------------------
#
# Rows are added several at a time: adding one row at a time into ``out`` would make each
# row wait for the previous row's store to ``out`` (a latency chain through memory).


@_inline
def _add_rows(out, M, idx, n_idx):
    """out += sum of the rows M[idx[:n_idx]]: x M for a binary x with those units on."""
    n = out.shape[0]
    a = 0
    while a + 8 <= n_idx:
        m0, m1, m2, m3 = M[idx[a]], M[idx[a + 1]], M[idx[a + 2]], M[idx[a + 3]]
        m4, m5, m6, m7 = M[idx[a + 4]], M[idx[a + 5]], M[idx[a + 6]], M[idx[a + 7]]
        for j in range(n):
            out[j] += ((m0[j] + m1[j]) + (m2[j] + m3[j])) + ((m4[j] + m5[j]) + (m6[j] + m7[j]))
        a += 8
    if a + 4 <= n_idx:
        m0, m1, m2, m3 = M[idx[a]], M[idx[a + 1]], M[idx[a + 2]], M[idx[a + 3]]
        for j in range(n):
            out[j] += (m0[j] + m1[j]) + (m2[j] + m3[j])
        a += 4
    while a < n_idx:
        m0 = M[idx[a]]
        for j in range(n):
            out[j] += m0[j]
        a += 1


@_inline
def _bias_plus_rows(out, bias, M, idx, n_idx):
    """out = bias + x M for a binary x whose units idx[:n_idx] are on."""
    for j in range(out.shape[0]):
        out[j] = bias[j]
    _add_rows(out, M, idx, n_idx)


@_inline
def _add_vec_mat(out, x, M):
    """out += x M for a dense vector x; M has shape (len(x), len(out))."""
    n = out.shape[0]
    R = x.shape[0]
    r = 0
    while r + 8 <= R:
        c0, c1, c2, c3, c4, c5, c6, c7 = x[r], x[r + 1], x[r + 2], x[r + 3], x[r + 4], x[r + 5], x[r + 6], x[r + 7]
        m0, m1, m2, m3 = M[r], M[r + 1], M[r + 2], M[r + 3]
        m4, m5, m6, m7 = M[r + 4], M[r + 5], M[r + 6], M[r + 7]
        for j in range(n):
            out[j] += ((c0 * m0[j] + c1 * m1[j]) + (c2 * m2[j] + c3 * m3[j])) + (
                (c4 * m4[j] + c5 * m5[j]) + (c6 * m6[j] + c7 * m7[j])
            )
        r += 8
    while r < R:
        c0 = x[r]
        m0 = M[r]
        for j in range(n):
            out[j] += c0 * m0[j]
        r += 1


@_inline
def _column_sums(out, M):
    """out = the sum of the rows of M."""
    for j in range(out.shape[0]):
        out[j] = _ZERO
    for g in range(M.shape[0]):
        for j in range(out.shape[0]):
            out[j] += M[g, j]


# -- sampling ----------------------------------------------------------------------------


@_inline
def _active(frame, idx):
    """idx[:count] = the keys that are on in a 0/1 frame; returns count."""
    count = 0
    for i in range(frame.shape[0]):
        idx[count] = i
        count += frame[i] > _HALF
    return count


@_inline
def _compact(on, idx):
    """idx[:count] = the positions where ``on`` is true; returns count."""
    count = 0
    for j in range(on.shape[0]):
        idx[count] = j
        count += on[j]
    return count


@_inline
def _sample(x, u, on, idx):
    """A Bernoulli(sigmoid(x)) sample drawn with the uniforms u: on[j], and idx[:count]
    the units on; returns count.

    u < sigmoid(x) is tested as u (1 + exp(-x)) < 1, which needs no division. That loop
    vectorises; the compaction after it cannot.
    """
    _draw(x, u, on)
    return _compact(on, idx)


@_inline
def _draw(x, u, on):
    """on = a Bernoulli(sigmoid(x)) sample drawn with the uniforms u, as _sample (no compaction)."""
    for j in range(x.shape[0]):
        on[j] = u[j] * (_ONE + _exp(-x[j])) < _ONE


# -- h W^T by table ------------------------------------------------------------------------
#
# A hidden sample has about 40% of its units on, so h W^T summed row by row reads ~60 of
# 150 rows of W^T after a compaction that cannot vectorise. With the sums of every subset
# of 8 consecutive rows precomputed (256 per byte of the sample, 32 floats per weight: 1.7 MB
# for 150 x 88, built in ~50 us), it is one row per 8 hidden units, indexed by the sample's bytes read as
# bits: 19 rows for 150 units, and no compaction. Measured on one frame's chain: 740 -> 530
# ns per Gibbs step at 150 hidden units, 1430 -> 920 at 200.

_TABLE_BITS = 8  # hidden units per table row group: one 64-bit word of 0/1 bytes
_BYTE_LOW_BITS = _u64(0x0101010101010101)
_GATHER_BITS = _u64(0x0102040810204080)  # times the low bits above: byte l's bit to bit 56 + l
_S56 = _u64(56)


@_parallel
def _subset_sums(Wt):
    """The table of W^T's subset sums: T[256 q + m] = the sum of the rows 8 q + l of Wt
    (n_hidden, n_visible) for the bits l set in m (rows past n_hidden count as zero), built
    by doubling: the subsets with bit b set are those without it plus row 8 q + b.
    Returns (256 ceil(n_hidden / 8), n_visible) float32."""
    n_h, n_v = Wt.shape
    size = 1 << _TABLE_BITS
    groups = (n_h + _TABLE_BITS - 1) // _TABLE_BITS
    T = np.empty((groups * size, n_v), np.float32)
    for q in prange(groups):
        base = q * size
        for i in range(n_v):
            T[base, i] = _ZERO
        for b in range(_TABLE_BITS):
            j = q * _TABLE_BITS + b
            half = 1 << b
            for m in range(half):
                dst, src = T[base + half + m], T[base + m]
                if j < n_h:
                    row = Wt[j]
                    for i in range(n_v):
                        dst[i] = src[i] + row[i]
                else:
                    for i in range(n_v):
                        dst[i] = src[i]
    return T


def table_bytes(n_visible: int, n_hidden: int) -> int:
    """The size of _subset_sums' table for W (n_visible, n_hidden): 32 floats per weight."""
    return 4 * n_visible * (1 << _TABLE_BITS) * ((n_hidden + _TABLE_BITS - 1) // _TABLE_BITS)


TABLE_LIMIT = 64 << 20  # larger models (n_hidden > ~5,900 for 88 keys) are left to the torch path


@_inline
def _add_subset_sums(out, T, on, idx):
    """out += h W^T for the 0/1 sample h given by ``on`` (bool, the padded hidden axis:
    exactly 8 units per group of T), with T = _subset_sums(W^T). idx: scratch, one place
    per group. Only the low bit of each byte is read (a little-endian CPU: byte l of a
    64-bit word is unit l of its group), and the padding units' bits select equal rows of
    T, so the padding's bytes may hold anything."""
    words = on.view(np.uint64)
    groups = T.shape[0] >> _TABLE_BITS
    for q in range(groups):
        bits = ((words[q] & _BYTE_LOW_BITS) * _GATHER_BITS) >> _S56
        idx[q] = (q << _TABLE_BITS) + np.int64(bits)
    _add_rows(out, T, idx, groups)


@_inline
def _sigmoid_softplus_sum(x, p, work):
    """p = sigmoid(x); returns sum softplus(x). work: scratch at least as long as x."""
    n = x.shape[0]
    for j in range(n):
        p[j] = _ONE / (_ONE + _exp(-x[j]))
        work[j] = _softplus(x[j])
    return _sum(work[:n])


@_inline
def _gibbs(k, W, T, bv_t, bh_t, v_idx, n_v_on, xh, xv, h_on, v_on, h_idx, rand, counter):
    """k steps of block Gibbs sampling v -> h -> v in the RBM with biases bv_t, bh_t,
    from the binary v whose keys v_idx[:n_v_on] are on.

    W (n_visible, n_hidden padded) and bh_t, xh, h_on (n_hidden padded) have their hidden
    axis padded (_pad_hidden); T = _subset_sums(W^T); h_idx has a place per group of T.
    Leaves the last v in v_on and v_idx; returns (keys on, counter).
    """
    n_v, n_hp = W.shape
    for step in range(k):
        _bias_plus_rows(xh, bh_t, W, v_idx, n_v_on)
        counter = _uniforms(rand, n_hp + n_v, counter)
        _draw(xh, rand[:n_hp], h_on)
        for i in range(n_v):
            xv[i] = bv_t[i]
        _add_subset_sums(xv, T, h_on, h_idx)
        n_v_on = _sample(xv, rand[n_hp : n_hp + n_v], v_on, v_idx)
    return n_v_on, counter


@_serial
def _pad_hidden(M):
    """M (R, n_hidden) with its columns padded by zeros to a whole number of 8-float vectors:
    loops over a padded row have no scalar tail (~20% faster for 150 hidden units)."""
    R, C = M.shape
    out = np.zeros((R, 8 * ((C + 7) // 8)), np.float32)
    out[:, :C] = M
    return out


# -- the RNN -----------------------------------------------------------------------------


@_inline
def _rnn_step(u_next, u, bu, Wuu, Wvu, v_idx, n_on):
    """u_next = tanh(bu + u Wuu + v Wvu), v given by the indices of its keys on."""
    _bias_plus_rows(u_next, bu, Wvu, v_idx, n_on)
    _add_vec_mat(u_next, u, Wuu)
    for c in range(u_next.shape[0]):
        u_next[c] = _tanh(u_next[c])


@_inline
def _rnn_chunk(b, Wvu, Wuu, bu, u0, frames, rows, offsets, u_prev, u_cur):
    """u_prev[g] = u(t-1) and u_cur[g] = u(t) for the frames g of chunk b.

    Frame g is frames[rows[g]]; chunk b holds frames offsets[b] .. offsets[b+1]-1.
    """
    idx = np.empty(frames.shape[1], np.int64)
    u = u0
    for g in range(offsets[b], offsets[b + 1]):
        for c in range(u.shape[0]):
            u_prev[g, c] = u[c]
        n_on = _active(frames[rows[g]], idx)
        _rnn_step(u_cur[g], u, bu, Wuu, Wvu, idx, n_on)
        u = u_cur[g]


@_inline
def _bptt_chunk(b, WuuT, u_cur, du_bias, offsets, da, du0):
    """da[g] = dcost/d(bu + u(t-1) Wuu + v(t) Wvu) for the frames of chunk b, and du0[b] =
    dcost/du(0).

    du_bias[g] is dcost/du(t-1) through bv(t), bh(t). u(t) feeds bv(t+1), bh(t+1) and
    u(t+1); the last u of a chunk feeds nothing.
    """
    n_u = WuuT.shape[0]
    carry = np.zeros(n_u, np.float32)  # dcost/du(t) through u(t+1)
    first, last = offsets[b], offsets[b + 1] - 1
    for c in range(n_u):
        da[last, c] = _ZERO
    for g in range(last - 1, first - 1, -1):
        delta = da[g]
        for c in range(n_u):
            delta[c] = (du_bias[g + 1, c] + carry[c]) * (_ONE - u_cur[g, c] * u_cur[g, c])
            carry[c] = _ZERO
        _add_vec_mat(carry, delta, WuuT)
    for c in range(n_u):
        du0[b, c] = du_bias[first, c] + carry[c]


# Chunks are sequential inside; several chunks run in parallel. One chunk runs in the
# calling thread: waking a second thread costs more than it gives, and on a busy machine
# much more (~0.1 ms per parallel region).


@_serial
def _rnn_serial(Wvu, Wuu, bu, u0, frames, rows, offsets, u_prev, u_cur):
    for b in range(offsets.shape[0] - 1):
        _rnn_chunk(b, Wvu, Wuu, bu, u0, frames, rows, offsets, u_prev, u_cur)


@_parallel
def _rnn_parallel(Wvu, Wuu, bu, u0, frames, rows, offsets, u_prev, u_cur):
    for b in prange(offsets.shape[0] - 1):
        _rnn_chunk(b, Wvu, Wuu, bu, u0, frames, rows, offsets, u_prev, u_cur)


@_serial
def _bptt_serial(WuuT, u_cur, du_bias, offsets, da, du0):
    for b in range(offsets.shape[0] - 1):
        _bptt_chunk(b, WuuT, u_cur, du_bias, offsets, da, du0)


@_parallel
def _bptt_parallel(WuuT, u_cur, du_bias, offsets, da, du0):
    for b in prange(offsets.shape[0] - 1):
        _bptt_chunk(b, WuuT, u_cur, du_bias, offsets, da, du0)


# -- training: CD-k over a set of chunks -------------------------------------------------
#
# One CD update is three kernels with the dense products between them in torch (MKL on
# both cores; engines.numba_cd): every frame's biases [bv(t) | bh(t)] = [bv | bh] +
# u(t-1) [Wuv | Wuh], what they send back to u(t-1), [dbv(t) | dbh(t)] [Wuv | Wuh]^T, and
# the sums over frames u(t-1)^T [dbh(t) | da(t)] for Wuh and Wuu. Done one frame at a time
# here, each streamed its matrix from L2 for every frame (2.5 us of thread time per frame
# for the first two, against 0.3 as matrix products). The first two sum over a layer's
# width, which MKL does not split between threads; the third is summed over fixed tiles of
# frames, so that no result depends on the thread count.
#
# Parallel loops run over ``blocks`` contiguous ranges of frames or tasks (a few per
# thread), each allocating its scratch once: allocating per frame or per task costs more
# than some of the work, and numba.get_thread_id() would make the functions uncachable.


@_inline
def _block_range(block, blocks, n):
    return block * n // blocks, (block + 1) * n // blocks


@_serial
def _cd_recurrence(Wvu, Wuu, bu, u0, frames, starts, lengths):
    """The RNN over the chunks frames[starts[b] : starts[b] + lengths[b]], b = 0..B-1.

    Returns (rows, offsets, u_prev, u_cur): frame g of the chunks laid end to end is
    frames[rows[g]], chunk b holds frames offsets[b] .. offsets[b+1]-1, and u_prev[g],
    u_cur[g] are u(t-1), u(t) there, (n, n_recurrent) float32.
    """
    n_u = Wuu.shape[0]
    B = starts.shape[0]
    offsets = np.zeros(B + 1, np.int64)
    for b in range(B):
        offsets[b + 1] = offsets[b] + lengths[b]
    n = offsets[B]
    rows = np.empty(n, np.int64)
    for b in range(B):
        for t in range(lengths[b]):
            rows[offsets[b] + t] = starts[b] + t
    u_prev = np.empty((n, n_u), np.float32)
    u_cur = np.empty((n, n_u), np.float32)
    if B > 1:
        _rnn_parallel(Wvu, Wuu, bu, u0, frames, rows, offsets, u_prev, u_cur)
    else:
        _rnn_serial(Wvu, Wuu, bu, u0, frames, rows, offsets, u_prev, u_cur)
    return rows, offsets, u_prev, u_cur


@_parallel
def _chains(W, T, bias, frames, rows, k, seed, v_neg_given, blocks,
            dbias, ph_data, ph_neg, v_data, v_neg, gap, monitor):
    """Every frame's CD-k chain and what the gradient needs from it; frames are independent.

    Frame g has data v = frames[rows[g]] and biases bias[g] = [bv(t) | bh(t)] (the hidden
    part padded, as W's hidden axis is: _pad_hidden; T = _subset_sums(W^T)); its chain
    starts at v and ends at v~ (or v~ = v_neg_given[g]). With n frames in all,
    ph = sigmoid(v W + bh(t)) and ph~ = sigmoid(v~ W + bh(t)), writes:
    gap[g] = F(v) - F(v~); monitor[g] = log p(v | h) with h ~ p(h | v~), the tutorial's
    monitor; v_data[g], v_neg[g] = v, v~ as booleans; ph_data[g] = ph / n,
    ph_neg[g] = ph~ / n; and dbias[g] = [dcost/dbv(t) | dcost/dbh(t)]
    = [(v~ - v) / n | (ph~ - ph) / n], zero on the padding.
    """
    n = rows.shape[0]
    n_v, n_hp = W.shape
    n_h = ph_data.shape[1]
    inv_n = _ONE / _f32(n)
    given = v_neg_given.shape[0] > 0
    for block in prange(blocks):
        bv_t = np.empty(n_v, np.float32)
        bh_t = np.empty(n_hp, np.float32)
        xh = np.empty(n_hp, np.float32)
        xv = np.empty(n_v, np.float32)
        ph = np.empty(n_h, np.float32)
        work = np.empty(max(n_h, n_v), np.float32)
        h_on = np.empty(n_hp, np.bool_)
        v_on = np.empty(n_v, np.bool_)
        h_idx = np.empty(T.shape[0] >> _TABLE_BITS, np.int64)
        v_idx = np.empty(n_v, np.int64)
        rand = np.empty(_n_uniforms(n_hp + n_v), np.float32)
        lo, hi = _block_range(block, blocks, n)
        for g in range(lo, hi):
            frame = frames[rows[g]]
            for i in range(n_v):
                bv_t[i] = bias[g, i]
            for j in range(n_hp):
                bh_t[j] = bias[g, n_v + j]
            counter = _stream_start(seed, g)

            # F(v) and ph for the data
            n_v_on = _active(frame, v_idx)
            _bias_plus_rows(xh, bh_t, W, v_idx, n_v_on)
            energy = -_sigmoid_softplus_sum(xh[:n_h], ph, work)
            for a in range(n_v_on):
                energy -= bv_t[v_idx[a]]
            for j in range(n_h):
                ph_data[g, j] = ph[j] * inv_n

            if given:
                n_v_on = _active(v_neg_given[g], v_idx)
                for i in range(n_v):
                    v_on[i] = v_neg_given[g, i] > _HALF
            else:
                n_v_on, counter = _gibbs(k, W, T, bv_t, bh_t, v_idx, n_v_on, xh, xv, h_on, v_on, h_idx, rand, counter)

            # F(v~) and ph~ for the chain's last v
            _bias_plus_rows(xh, bh_t, W, v_idx, n_v_on)
            energy += _sigmoid_softplus_sum(xh[:n_h], ph, work)
            for a in range(n_v_on):
                energy += bv_t[v_idx[a]]
            gap[g] = energy
            d = dbias[g]
            for i in range(n_v):
                v_data[g, i] = frame[i] > _HALF
                v_neg[g, i] = v_on[i]
                d[i] = (_f32(v_on[i]) - frame[i]) * inv_n
            for j in range(n_h):
                ph_neg[g, j] = ph[j] * inv_n
                d[n_v + j] = ph_neg[g, j] - ph_data[g, j]
            for j in range(n_v + n_h, d.shape[0]):
                d[j] = _ZERO

            # the monitor: h ~ p(h | v~), then log p(v | h) summed over keys
            counter = _uniforms(rand, n_h, counter)
            for j in range(n_h):
                h_on[j] = rand[j] < ph[j]
            for i in range(n_v):
                xv[i] = bv_t[i]
            _add_subset_sums(xv, T, h_on, h_idx)  # h_on's padding: any bytes (see _add_subset_sums)
            for i in range(n_v):
                work[i] = frame[i] * xv[i] - _softplus(xv[i])
            monitor[g] = _sum(work[:n_v])


@_serial
def _cd_chains(W, bias, frames, rows, k, seed, v_neg_given, threads):
    """_chains with its outputs allocated; W unpadded. Returns (dbias, ph_data, ph_neg,
    v_data, v_neg, sum over frames of F(v) - F(v~), sum over frames of the monitor)."""
    n = rows.shape[0]
    n_v, n_h = W.shape
    dbias = np.empty((n, bias.shape[1]), np.float32)
    ph_data = np.empty((n, n_h), np.float32)
    ph_neg = np.empty((n, n_h), np.float32)
    v_data = np.empty((n, n_v), np.bool_)
    v_neg = np.empty((n, n_v), np.bool_)
    gap = np.empty(n, np.float64)
    monitor = np.empty(n, np.float64)
    _chains(_pad_hidden(W), _subset_sums(np.ascontiguousarray(W.T)), bias, frames, rows, k, seed, v_neg_given,
            max(1, min(n, 4 * threads)),
            dbias, ph_data, ph_neg, v_data, v_neg, gap, monitor)
    return dbias, ph_data, ph_neg, v_data, v_neg, gap.sum(), monitor.sum()


@_serial
def _frames_by_key(on):
    """For a (n, n_v) boolean matrix, the frames where each key is on, as CSR: key i's
    frames are index[start[i] : start[i + 1]], in increasing order. One pass over the rows
    (scanning a column of a large matrix per key would miss the cache at every frame)."""
    n, n_v = on.shape
    count = np.zeros(n_v, np.int64)
    for g in range(n):
        for i in range(n_v):
            count[i] += on[g, i]
    start = np.zeros(n_v + 1, np.int64)
    for i in range(n_v):
        start[i + 1] = start[i] + count[i]
    fill = start[:n_v].copy()
    index = np.empty(start[n_v], np.int64)
    for g in range(n):
        for i in range(n_v):
            if on[g, i]:
                index[fill[i]] = g
                fill[i] += 1
    return start, index


@_parallel
def _sparse_gradients(u_out, dbias, dense, ph_data, ph_neg, v_data, v_neg, v_in, du0, blocks,
                      gW, gbv, gbh, gWuv, gWvu, gbu, gu0):
    """The parameter gradients that are sums over the keys on, and the bias gradients.

    Per frame g (see _chains and _bptt_chunk): u_out[g] = u(t-1) as bv(t) reads it, dbias[g] =
    [dcost/dbv(t) | dcost/dbh(t)] (dbv(t) nonzero where v~ and v differ), dense[g] =
    [dcost/dbh(t) | da(t)], v_data[g] and v_neg[g] the keys on in v and v~, v_in[g] the keys
    the recurrence read (no rows: v_data's). Block b of the parallel loop takes every
    blocks-th key. (dWuh, dWuu = sum_t u(t-1)^T dense(t): numba_rbm.py.)
    """
    n = u_out.shape[0]
    n_v, n_h = gW.shape
    n_u = u_out.shape[1]
    inv_n = _ONE / _f32(n)
    da = dense[:, n_h:]
    data_start, data_frames = _frames_by_key(v_data)
    neg_start, neg_frames = _frames_by_key(v_neg)
    if v_in.shape[0] == 0:
        in_start, in_frames = data_start, data_frames
    else:
        in_start, in_frames = _frames_by_key(v_in)
    for block in prange(blocks):
        # W through both free energies, Wvu through u(t), Wuv through bv(t)
        pos = np.empty(max(n_h, n_u), np.float32)
        neg = np.empty(n_u, np.float32)
        for i in range(block, n_v, blocks):
            on = data_frames[data_start[i] : data_start[i + 1]]
            on_neg = neg_frames[neg_start[i] : neg_start[i + 1]]
            for j in range(n_h):
                gW[i, j] = _ZERO
                pos[j] = _ZERO
            _add_rows(gW[i], ph_neg, on_neg, on_neg.shape[0])  # dW = (v~^T ph~ - v^T ph) / n
            _add_rows(pos[:n_h], ph_data, on, on.shape[0])
            for j in range(n_h):
                gW[i, j] -= pos[j]
            for q in range(n_u):
                gWvu[i, q] = _ZERO
            on_in = in_frames[in_start[i] : in_start[i + 1]]
            _add_rows(gWvu[i], da, on_in, on_in.shape[0])
            # dWuv[:, i] = sum_t u(t-1) dbv(t)_i, and dbv(t)_i = (v~_i - v_i) / n
            for r in range(n_u):
                pos[r] = _ZERO
                neg[r] = _ZERO
            _add_rows(neg, u_out, on_neg, on_neg.shape[0])
            _add_rows(pos[:n_u], u_out, on, on.shape[0])
            for r in range(n_u):
                gWuv[r, i] = (neg[r] - pos[r]) * inv_n

        if block == blocks - 1:  # the biases: sums over frames, and over chunks for u(0)
            _column_sums(gbv, dbias[:, :n_v])
            _column_sums(gbh, dense[:, :n_h])
            _column_sums(gbu, da)
            _column_sums(gu0, du0)


@_serial
def _cd_gradients(Wuu, u_out, u_cur, offsets, dbias, du_bias, ph_data, ph_neg, v_data, v_neg, v_in, threads,
                  gW, gbv, gbh, gWuv, gWvu, gbu, gu0):
    """Back-propagation through time from du_bias[g] = dcost/du(t-1) through bv(t), bh(t)
    (= dbias[g] [Wuv | Wuh]^T), then the gradients into g*, all but dWuh and dWuu.
    u_out[g]: u(t-1) as bv(t) and bh(t) read it; v_in: the keys on that u(t) read, as
    booleans (no rows: v_data). Both differ from u(t-1) and v(t) only under dropout.

    u(t) = tanh(bu + u(t-1) Wuu + v(t) Wvu) carries du_bias into Wuu, Wvu, bu and u(0);
    bv(t) = bv + u(t-1) Wuv and bh(t) = bh + u(t-1) Wuh carry dbias into bv, bh, Wuv, Wuh.
    Returns dense (n, n_hidden + n_recurrent) = [dcost/dbh(t) | da(t)], da(t) = dcost/d(bu +
    u(t-1) Wuu + v(t) Wvu): [dWuh | dWuu] = sum_t u(t-1)^T dense(t).
    """
    n, n_u = u_out.shape
    n_v, n_h = gW.shape
    B = offsets.shape[0] - 1
    dense = np.empty((n, n_h + n_u), np.float32)
    for g in range(n):
        for j in range(n_h):
            dense[g, j] = dbias[g, n_v + j]
    da = dense[:, n_h:]
    du0 = np.empty((B, n_u), np.float32)
    WuuT = np.ascontiguousarray(Wuu.T)
    if B > 1:
        _bptt_parallel(WuuT, u_cur, du_bias, offsets, da, du0)
    else:
        _bptt_serial(WuuT, u_cur, du_bias, offsets, da, du0)
    _sparse_gradients(u_out, dbias, dense, ph_data, ph_neg, v_data, v_neg, v_in, du0, 4 * threads,
                      gW, gbv, gbh, gWuv, gWvu, gbu, gu0)
    return dense


# -- Gibbs chains alone -------------------------------------------------------------------


@_parallel
def _gibbs_rows(W, T, bv, bh, v, k, seed, blocks, out):
    """out[r] = the last v of a k-step Gibbs chain from v[r] in the RBM with biases bv[r],
    bh[r]; rows are independent. W and bh have their hidden axis padded (_pad_hidden);
    T = _subset_sums(W^T)."""
    n, n_v = v.shape
    n_hp = W.shape[1]
    for block in prange(blocks):
        xh = np.empty(n_hp, np.float32)
        xv = np.empty(n_v, np.float32)
        h_on = np.empty(n_hp, np.bool_)
        v_on = np.empty(n_v, np.bool_)
        h_idx = np.empty(T.shape[0] >> _TABLE_BITS, np.int64)
        v_idx = np.empty(n_v, np.int64)
        rand = np.empty(_n_uniforms(n_hp + n_v), np.float32)
        lo, hi = _block_range(block, blocks, n)
        for r in range(lo, hi):
            n_v_on = _active(v[r], v_idx)
            for i in range(n_v):
                v_on[i] = v[r, i] > _HALF
            n_v_on, _ = _gibbs(k, W, T, bv[r], bh[r], v_idx, n_v_on, xh, xv, h_on, v_on, h_idx, rand, _stream_start(seed, r))
            for i in range(n_v):
                out[r, i] = v_on[i]


# -- annealed importance sampling --------------------------------------------------------


@_inline
def _tempered(x, e, beta, pre):
    """x = beta pre and e = exp(-|x|): what both softplus(x) and a Bernoulli(sigmoid(x))
    draw need, so that one exp serves both."""
    for j in range(pre.shape[0]):
        x[j] = beta * pre[j]
        e[j] = _exp(-abs(x[j]))


_PRODUCT_CHUNK = 512  # prod (1 + e) over a chunk is at most 2**512: no overflow in float64


@njit(fastmath=True, error_model="numpy", cache=True)  # not inlined: keeps "reassoc" away from _exp
def _log_ratio(e1, e0):
    """log prod_j (1 + e1[j]) / (1 + e0[j]) for e1, e0 in [0, 1], in float64, reassociated so
    that it vectorises: one log per chunk of units instead of two per unit."""
    total = 0.0
    n = e1.shape[0]
    for lo in range(0, n, _PRODUCT_CHUNK):
        c1, c0 = e1[lo : lo + _PRODUCT_CHUNK], e0[lo : lo + _PRODUCT_CHUNK]
        p1 = 1.0
        p0 = 1.0
        for j in range(c1.shape[0]):
            p1 *= 1.0 + np.float64(c1[j])
            p0 *= 1.0 + np.float64(c0[j])
        total += np.log(p1 / p0)
    return total


@_inline
def _ais_increment(pre, x1, e1, x0, e0, work, c, W, a, b, v_idx, n_v_on, n_h, schedule, k):
    """f_k(v) - f_{k-1}(v) (float64) at the binary v whose keys v_idx[:n_v_on] are on; leaves
    pre = v W + bh, x1 = schedule[k] pre, x0 = schedule[k-1] pre and e1, e0 = exp(-|x1|),
    exp(-|x0|) (padding stays 0).

    softplus(x) = max(x, 0) + log(1 + exp(-|x|)), and max(beta p, 0) = beta max(p, 0), so
    the softplus sums differ by (beta_k - beta_{k-1}) sum_j max(p_j, 0) plus the log of a
    product of ratios (_log_ratio): no difference of two large sums, one log per step."""
    _bias_plus_rows(pre, c, W, v_idx, n_v_on)
    _tempered(x1, e1, _f32(schedule[k]), pre)
    _tempered(x0, e0, _f32(schedule[k - 1]), pre)
    for j in range(pre.shape[0]):
        work[j] = max(pre[j], _ZERO)
    gap = _ZERO
    for q in range(n_v_on):
        i = v_idx[q]
        gap += b[i] - a[i]
    relu = np.float64(_sum(work[:n_h]))
    return _log_ratio(e1[:n_h], e0[:n_h]) + (schedule[k] - schedule[k - 1]) * (relu + np.float64(gap))


@_inline
def _tempered_gibbs(x, e, beta, a, b, T, xv, h_on, v_on, h_idx, v_idx, rand, counter):
    """One block Gibbs step at inverse temperature beta from the v whose hidden
    pre-activations at beta are x, with e = exp(-|x|) (_tempered). Leaves the new v in
    v_on, v_idx; returns (keys on, counter). T = _subset_sums(W^T)."""
    n_hp = x.shape[0]
    n_v = xv.shape[0]
    counter = _uniforms(rand, n_hp + n_v, counter)
    # u < sigmoid(x) as u (1 + e) < 1 for x >= 0 and < e for x < 0: no division, no new exp
    for j in range(n_hp):
        h_on[j] = rand[j] * (_ONE + e[j]) < (e[j] if x[j] < _ZERO else _ONE)
    for i in range(n_v):
        xv[i] = _ZERO
    _add_subset_sums(xv, T, h_on, h_idx)
    for i in range(n_v):
        xv[i] = (_ONE - beta) * a[i] + beta * (b[i] + xv[i])
    return _sample(xv, rand[n_hp : n_hp + n_v], v_on, v_idx), counter


@_parallel
def _ais(W, T, n_h, base, bv, bh, schedule, chains, seed, blocks, start, log_w):
    """log_w[f, c] = the log-weight of annealing run c of frame f, on the path of
    evaluate.ais_log_partition: with the hidden units summed out,

        f_b(v) = (1 - b) v.base + b v.bv + sum_j softplus(b (v W + bh)_j).

    Forward AIS (start has no rows): the run starts from v ~ Bernoulli(sigmoid(base[f])) and,
    for k = 1 ... K, adds f_k(v) - f_{k-1}(v), then takes one block Gibbs step at
    schedule[k] (none after the last). Reverse (RAISE, start (N, n_v) the observed frames):
    the run starts at start[f] and, for k = K ... 1, takes one Gibbs step at schedule[k],
    then adds f_k(v) - f_{k-1}(v) at the new v (model.raise_log_weights).
    Runs are independent: frames in parallel, each run its own random stream
    (f * chains + c), so results do not depend on the thread count.
    W and bh have their hidden axis padded (_pad_hidden) from n_h units; T = _subset_sums(W^T).
    schedule is float64; log_w is float64 (N, chains).
    """
    N, n_v = bv.shape
    n_hp = W.shape[1]
    K = schedule.shape[0] - 1
    reverse = start.shape[0] > 0
    for block in prange(blocks):
        pre = np.empty(n_hp, np.float32)
        x1 = np.empty(n_hp, np.float32)
        e1 = np.empty(n_hp, np.float32)
        x0 = np.empty(n_hp, np.float32)
        e0 = np.empty(n_hp, np.float32)
        xv = np.empty(n_v, np.float32)
        work = np.empty(n_hp, np.float32)
        h_on = np.empty(n_hp, np.bool_)
        v_on = np.empty(n_v, np.bool_)
        h_idx = np.empty(T.shape[0] >> _TABLE_BITS, np.int64)
        v_idx = np.empty(n_v, np.int64)
        rand = np.empty(_n_uniforms(n_hp + n_v), np.float32)
        lo, hi = _block_range(block, blocks, N)
        for f in range(lo, hi):
            a, b, c = base[f], bv[f], bh[f]
            for run in range(chains):
                counter = _stream_start(seed, f * chains + run)
                lw = 0.0
                if reverse:  # each Gibbs step is at the lower beta of the increment before it
                    n_v_on = _active(start[f], v_idx)
                    _bias_plus_rows(pre, c, W, v_idx, n_v_on)
                    _tempered(x0, e0, _f32(schedule[K]), pre)
                    for k in range(K, 0, -1):
                        n_v_on, counter = _tempered_gibbs(x0, e0, _f32(schedule[k]), a, b, T, xv, h_on, v_on, h_idx,
                                                          v_idx, rand, counter)
                        lw += _ais_increment(pre, x1, e1, x0, e0, work, c, W, a, b, v_idx, n_v_on, n_h, schedule, k)
                else:
                    counter = _uniforms(rand, n_v, counter)
                    n_v_on = _sample(a, rand[:n_v], v_on, v_idx)
                    for k in range(1, K + 1):
                        lw += _ais_increment(pre, x1, e1, x0, e0, work, c, W, a, b, v_idx, n_v_on, n_h, schedule, k)
                        if k < K:
                            n_v_on, counter = _tempered_gibbs(x1, e1, _f32(schedule[k]), a, b, T, xv, h_on, v_on,
                                                              h_idx, v_idx, rand, counter)
                log_w[f, run] = lw


# -- generation --------------------------------------------------------------------------


@_parallel
def _generate(W, T, bv, bh, Wuh, Wuv, Wvu, Wuu, bu, u_start, k, seed, out):
    """Sample out[s] (steps, n_v) for every sequence s, one frame at a time, from the
    RNN state u_start[s]: each frame from a fresh k-step Gibbs chain started at zeros in
    the RBM given the history, then fed back into the RNN. Sequences run in parallel.
    W, bh and Wuh have their hidden axis padded (_pad_hidden); T = _subset_sums(W^T).
    """
    n, steps, n_v = out.shape
    n_hp = W.shape[1]
    n_u = Wuu.shape[0]
    for s in prange(n):
        u = u_start[s].copy()
        u_next = np.empty(n_u, np.float32)
        bv_t = np.empty(n_v, np.float32)
        bh_t = np.empty(n_hp, np.float32)
        xh = np.empty(n_hp, np.float32)
        xv = np.empty(n_v, np.float32)
        h_on = np.empty(n_hp, np.bool_)
        v_on = np.empty(n_v, np.bool_)
        h_idx = np.empty(T.shape[0] >> _TABLE_BITS, np.int64)
        v_idx = np.empty(n_v, np.int64)
        rand = np.empty(_n_uniforms(n_hp + n_v), np.float32)
        counter = _stream_start(seed, s)
        for t in range(steps):
            bv_t[:] = bv
            bh_t[:] = bh
            _add_vec_mat(bv_t, u, Wuv)
            _add_vec_mat(bh_t, u, Wuh)
            v_on[:] = False
            n_v_on, counter = _gibbs(k, W, T, bv_t, bh_t, v_idx, 0, xh, xv, h_on, v_on, h_idx, rand, counter)
            for i in range(n_v):
                out[s, t, i] = v_on[i]
            _rnn_step(u_next, u, bu, Wuu, Wvu, v_idx, n_v_on)
            u, u_next = u_next, u


# -- the names numba_rbm.py calls ----------------------------------------------------------
#
# The kernels take numpy arrays only; the parameters come in the order of
# RNNRBM.PARAMETERS (W, bv, bh, Wuh, Wuv, Wvu, Wuu, bu, u0), then their gradients.

cd_recurrence = _cd_recurrence
cd_chains = _cd_chains
cd_gradients = _cd_gradients
ais = _ais
rnn_serial = _rnn_serial
generate_rows = _generate
gibbs_rows = _gibbs_rows
pad_hidden = _pad_hidden
subset_sums = _subset_sums
NO_SAMPLES = np.zeros((0, 1), np.float32)  # "no negative samples given" for cd_chains, "no start frames" for ais
NO_KEYS = np.zeros((0, 1), np.bool_)  # "the recurrence read the data" for cd_gradients
