"""rnnfast.ops: the functional kernel API, one layer and one direction (the backend for other projects).

    rnn_forward (x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", lengths=None,
                 reverse=False, training=False)                  -> (y, h_n, saved)
    lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, w_hr=None, w_peep=None, lengths=None,
                 reverse=False, training=False)                  -> (y, h_n, c_n, saved)
    gru_forward (x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, lengths=None,
                 reverse=False, training=False)                  -> (y, h_n, saved)
    rnn_backward (dy, dh_n, saved)        -> (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)
    lstm_backward(dy, dh_n, dc_n, saved)  -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr[, dw_peep])
    gru_backward (dy, dh_n, saved)        -> (dx, dh0, dw_ih, dw_hh, db_ih, db_hh)

Time-major: x (T, B, I), y (T, B, H) (or (T, B, P) with projection), h0/h_n (B, H) (or (B, P)), c0/c_n (B, H).
Semantics are PyTorch's (see rnnfast.reference, the numpy oracle these functions are tested against).
Every argument is validated here, before any compiled code runs; inputs are never modified. T = 0 or
B = 0 is allowed: outputs are empty, final states equal the initial ones, gradients are zeros.

Subnormal numbers (below 1.2e-38 in float32, 2.2e-308 in float64) are flushed to zero inside the
compiled time loops (read and written as 0, as torch.set_flush_denormal(True) does): a state or gradient
that underflows would otherwise slow every step that reads it ~50-90x. The caller's floating-point mode
is not changed, and the whole-sequence GEMMs (numpy's BLAS) keep gradual underflow.

Extension beyond the contract: `w_peep` (3, H) gives a peephole LSTM (i, f see c_{t-1}, o sees c_t, as
ONNX defines it); lstm_backward then returns dw_peep as a 9th element.
"""

import math
import os
import sys
import threading
from time import perf_counter as _clock

import numpy as np

from . import _kernels
from ._config import _cpus, get_num_threads

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


# ---------------------------------------------------------------------------------------------------
# validation: every message names the argument, the expected and the actual shape or dtype


def _as_float_array(name, a, dtype=None):
    """numpy array of a float dtype (float32/float64); array-likes are converted, nothing is copied
    unless needed."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        try:
            a = np.asarray(a)
        except Exception as e:  # ragged lists, objects numpy cannot take
            raise TypeError(f"{name}: expected a float32 or float64 array, got {type(a).__name__} ({e})") from None
    if a.dtype.kind == "f" and a.dtype.itemsize in (4, 8) and not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the dtype of x), got {a.dtype}")
    return a


def _check_shape(name, a, shape):
    if a is not None and a.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {a.shape}")


def _c(a):
    return None if a is None else np.ascontiguousarray(a)


def _check_flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return bool(value)


def _check_lengths(lengths, T, B):
    if lengths is None:
        return None
    try:
        arr = np.asarray(lengths)
    except (ValueError, TypeError) as e:
        raise TypeError(f"lengths: expected an integer array of shape ({B},), got {type(lengths).__name__} ({e})") from None
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"lengths: expected an integer array of shape ({B},), got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},) (one length per batch row), got {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise TypeError("lengths: expected integers, got non-integral values")
    if B and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"lengths: expected values in [0, {T}] (T = {T}), got min {arr.min()} max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _validate(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr=None, w_peep=None):
    """Check every array of a forward call; return (arrays..., sizes) all C-contiguous."""
    G = _GATES[cell]
    x = _as_float_array("x", x)
    if x is None:
        raise TypeError("x: expected a float32 or float64 array of shape (T, B, I), got None")
    if x.ndim != 3:
        raise ValueError(f"x: expected 3 dimensions (T, B, I), got shape {x.shape}")
    dtype = x.dtype
    T, B, I = x.shape
    w_ih = _as_float_array("w_ih", w_ih, dtype)
    w_hh = _as_float_array("w_hh", w_hh, dtype)
    if w_ih is None or w_hh is None:
        raise TypeError(f"{'w_ih' if w_ih is None else 'w_hh'}: expected an array, got None")
    w_hr = _as_float_array("w_hr", w_hr, dtype)
    if w_hh.ndim != 2:
        raise ValueError(f"w_hh: expected 2 dimensions ({'G*H, P' if w_hr is not None else 'G*H, H'}), "
                         f"got shape {w_hh.shape}")
    if w_hr is None:
        H = K = w_hh.shape[1]
        if H < 1:
            raise ValueError(f"w_hh: expected shape (G*H, H) with hidden size >= 1, got {w_hh.shape}")
        _check_shape("w_hh", w_hh, (G * H, H))
    else:
        if w_hr.ndim != 2:
            raise ValueError(f"w_hr: expected 2 dimensions (P, H), got shape {w_hr.shape}")
        K, H = w_hr.shape
        if not 0 < K < H:
            raise ValueError(f"w_hr: expected shape (P, H) with 0 < P < H, got {w_hr.shape}")
        if w_hh.shape != (G * H, K):
            # Two witnesses against one: when w_hh agrees with w_ih, the odd one out is w_hr.
            rows, P2 = w_hh.shape
            if rows % G == 0 and rows == w_ih.shape[0] and 0 < P2 < rows // G:
                raise ValueError(f"w_hr: expected shape {(P2, rows // G)} (P from w_hh, H from w_hh and "
                                 f"w_ih), got {w_hr.shape}")
            raise ValueError(f"w_hh: expected shape {(G * H, K)}, got {w_hh.shape}")
    _check_shape("w_ih", w_ih, (G * H, I))
    b_ih = _as_float_array("b_ih", b_ih, dtype)
    b_hh = _as_float_array("b_hh", b_hh, dtype)
    _check_shape("b_ih", b_ih, (G * H,))
    _check_shape("b_hh", b_hh, (G * H,))
    h0 = _as_float_array("h0", h0, dtype)
    _check_shape("h0", h0, (B, K))
    if cell == "lstm":
        c0 = _as_float_array("c0", c0, dtype)
        _check_shape("c0", c0, (B, H))
        w_peep = _as_float_array("w_peep", w_peep, dtype)
        _check_shape("w_peep", w_peep, (3, H))
    # Every (T, B, .) array rnnfast allocates must be addressable (reachable only with I = 0, where x is empty).
    biggest = T * B * max(G * H, K, I, 1) * dtype.itemsize
    if biggest > _INTP_MAX:
        raise MemoryError(f"x: T = {T}, B = {B} with G*H = {G * H} need {biggest} bytes per (T, B, G*H) array, "
                          f"beyond the address space")
    return (dtype, T, B, I, H, K, _c(x), _c(h0), _c(c0), _c(w_ih), _c(w_hh), _c(b_ih), _c(b_hh),
            _c(w_hr), _c(w_peep))


# ---------------------------------------------------------------------------------------------------
# panels


# Workspaces that never leave a call (panels, the xw chunks, state buffers, gate gradients) are kept per
# thread from one call to the next: fresh pages cost a page fault and a zeroing by the kernel each, ~10% of
# a call that packs 32 MB of weights. Outputs and what `saved` holds are always fresh arrays.
_SCRATCH_MAX_BYTES = 256 << 20     # a larger workspace is allocated per call and not kept
_SCRATCH_TOTAL_BYTES = 512 << 20   # what one thread keeps in all
_scratch_tls = threading.local()


# Every workspace and pooled array starts on a 64-byte boundary (numpy gives 16): a vector load or store
# of the kernels that straddles two cache lines costs two.
_ALIGN = 64


def _aligned(raw, n):
    """The n elements of raw (a 1-D array of n + _ALIGN // itemsize) that start on an _ALIGN boundary: a
    view whose base is raw."""
    off = _kernels.align_offset(raw, _ALIGN)
    return raw[off:off + n]


def _new(shape, dtype, fill=None):
    """A new array (an output, or kept by the caller) that starts on an _ALIGN boundary."""
    a = _kernels.aligned_empty(tuple(shape), dtype)
    if fill is not None:
        a.fill(fill)
    return a


_INTP_MAX = int(np.iinfo(np.intp).max)


def _scratch(name, shape, dtype, fill=None):
    """An array of `shape` for use within one call only, reusing this thread's buffer called `name` (kept
    as its aligned view: a call only slices it)."""
    if not isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype)
    n = math.prod(shape)
    try:
        pool = _scratch_tls.pool
    except AttributeError:
        pool = _scratch_tls.pool = {}
    key = (name, dtype.char)
    buf = pool.get(key)
    if buf is None or buf.size < n:
        kept = sum(b.nbytes for k, b in pool.items() if k != key)
        pad = _ALIGN // dtype.itemsize
        if n * dtype.itemsize > _SCRATCH_MAX_BYTES or kept + n * dtype.itemsize > _SCRATCH_TOTAL_BYTES:
            a = _aligned(np.empty(n + pad, dtype), n)  # not kept
        else:
            buf = pool[key] = _aligned(np.empty(n + pad, dtype), n)
            a = buf
            _scratch_tls.plans = None  # a kept plan may view the buffer replaced
    else:
        a = buf[:n]
    a = a.reshape(shape)
    if fill is not None:
        a.fill(fill)
    return a


def _unit_blocks(Gs, N, V):
    """Unit blocks per panel group: a tile row holds Gs * ub <= 4 vectors."""
    return max(1, min(4 // Gs, -(-N // V)))


def _backward_weight_panels(cell, mode, proj, H, K, I, G, w_ih=None, w_hh=None, w_hr=None):
    """The panels of the weights backward multiplies by, name -> (source, flat offset, outputs, reduction):
    w_hh^T for dh (GRU reset before: its r, z rows), w_hr for a projection or GRU's w_hn apart, w_ih^T for
    dx. Each source row is one reduction index (row length = outputs). Packed by the training forward,
    checked by _Saved.consistent."""
    before = cell == "gru" and mode == 0
    panels = {"wq": (w_hh, 0, K, 2 * H if before else G * H), "wihq": (w_ih, 0, I, G * H)}
    if proj:
        panels["wq2"] = (w_hr, 0, H, K)
    elif before:
        panels["wq2"] = (w_hh, 2 * H * H, H, H)
    return panels


def _pack(specs, src, offset, s_g, s_j, s_k, Gs, N, K, dtype, owners=None):
    """Room for the panels of src (element (g, j, k) = src.flat[offset + g*s_g + j*s_j + k*s_k]) used by the
    compiled GEMM tiles, with ub unit blocks per group so that a tile holds <= 4 vectors. The packing itself
    happens inside the kernel's parallel region: the spec is appended to `specs`. The panels live in this
    thread's workspace, or with `owners` in a pooled array that outlives the call (kept for backward)."""
    ub = _unit_blocks(Gs, N, _kernels.lanes(dtype))
    size = _kernels.pack_size(Gs, N, K, ub, dtype)
    dst = _scratch(f"pack{len(specs)}", (size,), dtype) if owners is None else _pooled((size,), dtype, owners)
    specs.append((src, offset, s_g, s_j, s_k, Gs, N, K, ub, dst))
    return dst, ub


# Below this many multiply-adds per recurrent step a second thread costs more in per-step
# synchronisation than it saves (and on a loaded machine a barrier can wait a whole time slice).
# Measured 2026-11-23 (2 threads, float32, batch 1, T = 100, in-process A/B of 1 and 2 threads, with the
# batch-1 step summing its own half of the state before the barrier): GRU H = 64 (12288 multiply-adds a
# step) 74 -> 58.5 us on 2 threads, LSTM H = 64 (16384) 108 -> 74 us; LSTM H = 48 (9216) 59.6 -> 62.0 us
# and RNN H = 64 (4096) 28 -> 35 us (both stay on 1), GRU H = 56 (9408) 80.8 / 79.7 us either way.
_MIN_STEP_WORK_PER_THREAD = 6144


# The weight-gradient GEMM reads x, hprev, m in place (rows this long at most) rather than packing them
# first. Measured 2026-11-23 (2 threads, float32, backward alone, ABBA against packing): rows of 1 KiB
# (mid, 256 units) RNN -7.5%, GRU -1.2%, LSTM 0%; 2 KiB (big) RNN -3%, GRU -1.7%, LSTM +0.7%; 4 KiB (wide,
# a new page every row) GRU +3.8%, LSTM +1.5%.
_IN_PLACE_MAX_ROW_BYTES = 2048


def _threads(B, G, H, K, forward_dtype=None):
    # More threads than CPUs only adds waiting at the per-step barrier (and asking the OpenMP runtime for
    # thousands of threads can abort the process): cap at the CPUs this process may use.
    n = min(get_num_threads(), _cpus())
    per = _MIN_STEP_WORK_PER_THREAD
    # A batch-1 forward: measured 2026-11-24 (2 threads, T = 100, in-process ABBA of one thread against two).
    f32 = forward_dtype is not None and B == 1 and forward_dtype.itemsize == 4
    f64 = forward_dtype is not None and B == 1 and forward_dtype.itemsize == 8
    if f32 and G != 4:
        # float32 GRU and RNN: one thread (with the projection helper, below, taking x @ w_ih^T off its
        # steps) up to 4/3 of the work. One thread GRU H = 64 -4 to -6% (T = 1000 -21%), H = 68 -14%, RNN
        # H = 112 -9 to -20%, H = 120 -22%; the same at GRU H = 64, T = 20 and GRU H = 72; +20% at GRU
        # H = 80 and +0 to +3.5% at RNN H = 128, which stay on 2. LSTM keeps the rule: one thread +31% at
        # H = 64 (T = 1000 +17%), +3 to +8% at H = 56 and 60.
        per = per * 4 // 3
    elif f64 and G != 1:
        # float64 GRU and LSTM (twice the bytes of w_hh a step, and costlier activations): two threads from
        # half the work. Two threads GRU H = 48 -14 to -17%, H = 64 -24%, LSTM H = 40 -10%, H = 48 -17%;
        # +2% at GRU H = 40, +5% at LSTM H = 32 and +29% at GRU H = 32, which stay on 1. RNN keeps the rule:
        # two threads +2% at H = 80, +/-2% at H = 96, +77% at H = 64.
        per = max(1, per // 2)
    return max(1, min(n, (B * G * H * K) // per))


# A batch-1 inference forward whose step work (G*H*K multiply-adds) lies in this band runs the way its own
# recent calls measured fastest, not by the rule above alone: one thread, or two with the input projection
# in the barrier's shadow, or two with it up front (common.h, xwq_init). There a second thread gains or
# loses by how long a cache line takes between the two cores, and that changes while a process runs. On
# this machine (2 vCPUs) a round trip of one line measured ~105-130 ns for minutes and ~500-550 ns for
# minutes after, and with it (2026-11-24, float32, T = 100, I = H, in-process, interleaved) two threads
# against one went from 0.75 to 1.33x at LSTM H = 64, from 0.72 to 0.96x at LSTM H = 128 and from 0.95 to
# 1.87x at GRU H = 64. The shadow turns with it: projecting while waiting for the other thread pays where
# the wait is long, and where it is short the 4-row tiles cost more than projecting every row up front in
# large blocks. Two threads with the projection up front against the shadow, measured 2026-11-25 (float32,
# T = 100, I = H, in-process ABBA): at ~120 ns LSTM H = 64 -11%, H = 96 -5%, H = 128 -1%, GRU H = 96 -6%,
# H = 128 -7%, RNN H = 128 -3.5%, but GRU H = 64 +2% and RNN H = 256 +3.5%; at ~500 ns GRU and LSTM
# H = 128 +13%. No choice changes a bit: a batch-1 step's sums do not depend on the thread count (row1_k1),
# and an element of x @ w_ih^T is the same chain over k in any tile.
_TUNE_MIN_WORK = 8192
_TUNE_MAX_WORK = 98304
# The calls of a shape: the first _TUNE_WARM run as the rule says and are not counted (they fault in their
# workspaces), then each way runs until it has _TUNE_KEEP timings; from then on the way with the lowest
# median of its last _TUNE_KEEP timings runs, and every _TUNE_PROBE-th call one of the others, in turn, so
# that a change of the machine's state is seen within a few probes (at most ~1/_TUNE_PROBE of the calls
# run a slower way).
_TUNE_WARM = 2
_TUNE_KEEP = 3
_TUNE_PROBE = 64


class _Tune:
    """The ways (threads, shadow) a shape's calls may run, ways[0] the rule's, and their recent timings."""
    __slots__ = ("calls", "ways", "best", "times", "timing", "n", "way")

    def __init__(self, ways, n):
        self.calls = 0
        self.ways, self.n = ways, n
        self.best = self.way = 0
        self.times = [[] for _ in ways]
        self.timing = False

    @property
    def fill(self):
        return _TUNE_WARM + len(self.ways) * _TUNE_KEEP

    def choose(self):
        # cheap on purpose (a batch-1 call in the band takes ~30-200 us): only the fill, the probes and the
        # calls just before each probe (the current way's fresh timings) are timed
        c = self.calls = self.calls + 1
        if c <= self.fill:
            self.timing = c > _TUNE_WARM
            self.way = 0 if c <= _TUNE_WARM else (c - _TUNE_WARM - 1) // _TUNE_KEEP
        else:
            phase = c % _TUNE_PROBE
            self.timing = phase == 0 or phase > _TUNE_PROBE - _TUNE_KEEP
            if phase == 0:
                others = [i for i in range(len(self.ways)) if i != self.best]
                self.way = others[(c // _TUNE_PROBE) % len(others)]
            else:
                self.way = self.best
        return self.ways[self.way]

    def record(self, seconds):
        kept = self.times[self.way]
        kept.append(seconds)
        if len(kept) > _TUNE_KEEP:
            del kept[0]
        c = self.calls

        def median(i):
            return sorted(self.times[i])[len(self.times[i]) // 2]
        if c == self.fill:
            self.best = min(range(len(self.ways)), key=median)  # ties: the first, the rule's
        elif c > self.fill and c % _TUNE_PROBE == 0 and median(self.way) < median(self.best):
            self.best = self.way


# A training forward stores the saves of its steps past the caches (non-temporal stores, LSTM and GRU
# reset_after without lengths), except the last _SAVES_KEEP_BYTES of them: backward reads the steps in
# reverse, so it finds those in L3, while the earlier ones would be pushed out by the later ones anyway (the
# lines are then neither fetched for the stores nor kept). Measured 2026-11-24 (2 threads, float32,
# in-process ABBA against plain stores, same bits): GRU big training -0.8 to -0.9% (its forward -2%),
# with 0, 8 or 16 MiB kept alike; LSTM big -0.5%. At 16 MiB the mid and wide rows keep (nearly) all their
# saves in the caches, as before.
_SAVES_KEEP_BYTES = 16 << 20


# A batch-1 forward whose steps stay on one thread (above) but whose input projection x @ w_ih^T has at
# least this many multiply-adds gets a second thread that only projects, while the first runs the steps
# (common.h, fwd_begin; the bits are one thread's). The second thread costs ~2 us a call (waking it, and
# the first step waits for its first rows). Measured 2026-11-24 (float32, I = H, in-process ABBA against
# one thread, medians of 40 rounds): RNN H = 64, T = 100 (409600 multiply-adds) -4.4% and -5%, T = 1000
# -23%; GRU H = 32, T = 100 (307200) -5%; LSTM H = 32, T = 100 (409600) -5%; RNN H = 32, T = 300 (307200)
# +2.5%; RNN H = 48, T = 100 (230400, below) +2.5%; T = 1 calls +2 to +3 us.
_HELPER_MIN_WORK = 1 << 18


# The input projection x @ w_ih^T runs in chunks of loop steps, each just before its steps, into a buffer
# that stays in cache: written and read back once, a whole-sequence buffer larger than the caches costs a
# round trip through memory. A chunk holds at least 128 rows (enough to reuse each w_ih panel well) and
# about _XW_CHUNK_BYTES; a sequence whose whole projection is under _XW_WHOLE_BYTES runs in one chunk.
_XW_CHUNK_BYTES = 1 << 20
_XW_WHOLE_BYTES = 8 << 20


# LSTM, RNN and GRU reset_after with this many batch rows or more fuse the input projection into the steps
# (kernels.h, fuse_x; common.h, fused_gemm): each step tile sums x_t @ w_ih^T and then h @ w_hh^T in the same
# accumulators (GRU's n gate keeps its x term apart), and no xw buffer is written and read back. A rule on
# the shapes alone, so that the bits do not depend on the thread count (they do depend on B: a row run alone
# projects in chunks). Measured 2026-11-24 (2 threads, float32, in-process ABBA against chunks; mid B = 32,
# big B = 64): inference LSTM mid -2.3%, big -5.3%; GRU mid -4.4%, big -3.9%; RNN mid -8%, big -3.6%;
# training (forward + backward) LSTM big -2.7%, GRU big -2.8%, RNN big -2.1%, mid -2.6%. At B = 16 (wide:
# the hidden split, few rows for each panel read from L3 every step) LSTM inference was +8%: wide keeps chunks.
_FUSE_X_MIN_ROWS = 32


def _xw_steps(T, B, GH, itemsize):
    step = B * GH * itemsize
    if T * step <= _XW_WHOLE_BYTES:
        return T
    return max(1, min(T, max(-(-128 // B), _XW_CHUNK_BYTES // step)))


# How the threads share a call: 1 = batch rows per thread (no synchronisation), 2 = hidden units per thread
# (a barrier per phase), 0 = the compiled rule (batch rows when every thread gets >= 16 of them).
def _split(cell, B, H, K, training, backward):
    return 0


def _round_up(n, V):
    return -(-n // V) * V


# What a training forward keeps for backward (the saved gates and states, a private copy of x, the weights
# packed for backward) lives as long as the `saved` object, then returns here for the next forward: a
# training loop that frees `saved` after its backward allocates these once, not a fresh set of pages per
# step (page faults were a third of a training forward). Shared between threads; at most _POOL_MAX_BYTES kept.
_POOL_MAX_BYTES = 512 << 20
_pool_lock = threading.Lock()
_pool = {}
_pool_bytes = 0


def _pool_after_fork():
    # a fork while another thread held the lock would leave it locked forever in the child
    global _pool_lock, _pool, _pool_bytes
    _pool_lock, _pool, _pool_bytes = threading.Lock(), {}, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pool_after_fork)


def _pooled(shape, dtype, owners):
    """An uninitialised array of `shape` from the pool (or new); its base is appended to `owners`."""
    global _pool_bytes
    dtype = np.dtype(dtype)
    n = math.prod(shape)
    key = (n, dtype.char)
    base = None
    with _pool_lock:
        free = _pool.get(key)
        if free:
            base = free.pop()
            _pool_bytes -= base.nbytes
    if base is None:
        base = np.empty(n + _ALIGN // dtype.itemsize, dtype)
    owners.append(base)
    # views of base (this one and any a caller takes from it) all have base as their .base: its reference
    # count tells _release whether anyone still holds it
    return _aligned(base, n).reshape(shape)


def _release(owners):
    """Back to the pool: every base in `owners` that nothing else references any more."""
    global _pool_bytes
    while owners:
        base = owners.pop()
        # references: `base` here and getrefcount's argument; anything more is a view or a name elsewhere
        if sys.getrefcount(base) > 2:
            continue
        with _pool_lock:
            if _pool_bytes + base.nbytes <= _POOL_MAX_BYTES:
                _pool.setdefault((base.size - _ALIGN // base.itemsize, base.dtype.char), []).append(base)
                _pool_bytes += base.nbytes


class _Saved:
    """What backward needs; opaque to users. Holds a private copy of x and the weights already packed for
    backward's GEMMs, so changing the caller's arrays between forward and backward cannot change the
    gradients."""
    __slots__ = ("cell", "dtype", "T", "B", "I", "H", "K", "G", "mode", "reverse", "lengths", "x", "proj",
                 "w_peep", "wpacks", "has_bias", "buffers", "_owners")

    def __del__(self):
        owners = getattr(self, "_owners", None)
        if owners:
            # drop this object's views first, so that only arrays nobody else holds go back to the pool
            self.buffers = self.x = self.w_peep = self.wpacks = None
            try:
                _release(owners)
            except Exception:  # interpreter shutdown: the module's globals may be gone; nothing to keep
                pass

    def consistent(self):
        """True when every array still has the shape and dtype the sizes say (a guard for the compiled
        code against a saved object altered after the forward)."""
        T, B, I, H, K, G = self.T, self.B, self.I, self.H, self.K, self.G
        want = {"x": (T, B, I)}
        if self.w_peep is not None:
            want["w_peep"] = (3, H)
        arrays = [(getattr(self, n), shape) for n, shape in want.items()]
        widths = {"gates_tb": G * H, "hprev_tb": K, "c_tb": H, "cprev_tb": H, "m_tb": H}
        arrays += [(self.buffers.get(n), (T, B, widths[n])) for n in self.buffers]
        for a, shape in arrays:
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != self.dtype \
                    or not a.flags.c_contiguous:
                return False
        # the weight panels backward reads (made by a forward with T * B > 0)
        if T * B:
            V = _kernels.lanes(self.dtype)
            sizes = _backward_weight_panels(self.cell, self.mode, self.proj, H, K, I, G)
            if not isinstance(self.wpacks, dict) or set(self.wpacks) != set(sizes):
                return False
            for n, (_, _, n_out, n_red) in sizes.items():
                pk = self.wpacks[n]
                if not (isinstance(pk, tuple) and len(pk) == 2 and isinstance(pk[0], np.ndarray)
                        and isinstance(pk[1], int)):
                    return False
                p, ub = pk
                if p.ndim != 1 or p.dtype != self.dtype or not p.flags.c_contiguous \
                        or ub != _unit_blocks(1, n_out, V) \
                        or p.size < _kernels.pack_size(1, n_out, n_red, ub, self.dtype):
                    return False
        if self.lengths is not None and (not isinstance(self.lengths, np.ndarray) or self.lengths.shape != (B,)
                                         or self.lengths.dtype != np.int64
                                         or (B and (self.lengths.min() < 0 or self.lengths.max() > T))):
            return False
        return True

    def __repr__(self):
        return f"<rnnfast saved state for {self.cell} backward, T={self.T} B={self.B} H={self.H}>"


# ---------------------------------------------------------------------------------------------------
# forward


def _may_be_users(a, user):
    """Whether a may be (or view) the memory of what the user passed: a itself, a view of it, or the
    buffer of a non-numpy object a was made from."""
    return a is user or not isinstance(user, np.ndarray) or np.may_share_memory(a, user)


def _private(a, user, owners):
    """a itself if it is already a private copy of the user's array, else a copy (in a pooled array)."""
    if a is None or not _may_be_users(a, user):
        return a
    p = _pooled(a.shape, a.dtype, owners)
    np.copyto(p, a)
    return p


def _make_plan(cell, dtype, T, B, I, H, K, G, after, proj, no_bias):
    """What a forward's kernel call needs besides the caller's arrays: xw_steps, the panels' unit blocks
    (ub, ub2, uih), whether the steps fuse the input projection (fuse_x), the workspaces by operand name, and
    the pack specs (source name, then the _pack spec without its source)."""
    GH, V = G * H, _kernels.lanes(dtype)
    xw_steps = _xw_steps(T, B, GH, dtype.itemsize)
    # (its w_ih and w_hh panels then have the same groups: the same gates and units, ub == uih)
    fuse_x = (cell in ("lstm", "rnn") or after) and B >= _FUSE_X_MIN_ROWS
    specs = []
    names = ["w_ih", "w_hh"]
    wih_pack, uih = _pack(specs, None, 0, H * I, I, 1, G, H, I, dtype)
    Gs = 2 if cell == "gru" and not after else G
    w_pack, ub = _pack(specs, None, 0, H * K, K, 1, Gs, H, K, dtype)
    w2_pack, ub2 = None, 1
    if proj:
        w2_pack, ub2 = _pack(specs, None, 0, 0, H, 1, 1, K, H, dtype)
        names.append("w_hr")
    elif cell == "gru" and not after:
        w2_pack, ub2 = _pack(specs, None, 2 * H * H, 0, H, 1, 1, H, H, dtype)
        names.append("w_hh")
    work = dict(wih_pack=wih_pack, w_pack=w_pack, w2_pack=w2_pack,
                # filled chunk by chunk inside the kernel's parallel region
                xw=None if fuse_x else _scratch("xw", (xw_steps, B, GH), dtype),
                bias=None if no_bias else _scratch("bias", (GH,), dtype),
                hbuf=_scratch("hbuf", (2, B, K), dtype), cbuf=_scratch("cbuf", (B, _round_up(H, V)), dtype),
                mbuf=_scratch("mbuf", (B, H), dtype) if (proj or (cell == "gru" and not after)) else None)
    return xw_steps, ub, ub2, uih, fuse_x, work, [(n, spec[1:]) for n, spec in zip(names, specs)], _Kept()


class _Kept:
    """What a plan carries from one inference call to the next once kept: the rule's thread count (nt) for
    the threads allowed and the work per thread it was worked out for (rule), the batch-1 timed choice
    (tune, _Tune), and the kernel context of its plain calls (prepared, _kernels.Prepared)."""
    __slots__ = ("rule", "nt", "tune", "prepared")

    def __init__(self):
        self.rule = self.nt = self.tune = self.prepared = None


def _thread_choice(kept, T, B, I, H, K, G, dtype, fuse_x, xw_steps):
    """(threads, helper, shadow, tune) of a forward: the rule's count (_threads), or for a kept inference plan
    (kept) in the band of batch-1 step work the way its own timings favour (tune, to be told the call's time
    when tune.timing); helper: the steps stay on one thread and a second one projects (_HELPER_MIN_WORK);
    shadow: two threads may project in the barrier's shadow (common.h, xwq_init), or else up front."""
    n = min(get_num_threads(), _cpus())
    rule = (n, _MIN_STEP_WORK_PER_THREAD)
    if kept is not None and kept.rule == rule:
        nt = kept.nt
    else:
        nt = _threads(B, G, H, K, forward_dtype=dtype)
        if kept is not None:
            kept.rule, kept.nt = rule, nt
    tune, shadow = None, True
    if kept is not None and B == 1 and _TUNE_MIN_WORK <= G * H * K <= _TUNE_MAX_WORK and n >= 2:
        tune = kept.tune
        if tune is None or tune.n != n:
            # the rule's way, then one thread against the rule's count (or two when the rule says one), then
            # that many threads projecting up front; that last differs from the shadow only where the whole
            # projection is one chunk (and where the kernel's condition on the panels' size holds), else the
            # two run alike
            multi = nt if nt > 1 else 2
            ways = [(nt, True), (1, True) if nt > 1 else (multi, True)]
            if xw_steps == T:
                ways.append((multi, False))
            tune = kept.tune = _Tune(ways, n)
        nt, shadow = tune.choose()
    helper = (nt == 1 and B == 1 and not fuse_x and xw_steps == T and T * I * G * H >= _HELPER_MIN_WORK
              and n >= 2)
    return nt, helper, shadow, tune


def _kept_call(plan, cell, dtype, T, B, I, H, G, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, mode):
    """An inference forward of a kept plan's shapes without lengths, projection or peepholes: the plan's
    prepared kernel context with this call's arrays in a copy of it (Prepared.bind, which also makes the
    outputs), run as any other call."""
    xw_steps, ub, ub2, uih, fuse_x, _, _, kept = plan
    call = kept.prepared.bind(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    nt, helper, shadow, tune = _thread_choice(kept, T, B, I, H, H, G, dtype, fuse_x, xw_steps)
    _timed_run(tune, cell, False, dtype, call, T, B, I, H, H, G, reverse, mode, False, False,
               2 if helper else nt, ub=ub, ub2=ub2, uih=uih, xw_steps=xw_steps,
               split=_split(cell, B, H, H, False, False), fuse_x=fuse_x, xw_helper=helper, shadow=shadow)
    return call.y, call.h_n, call.c_n, None


def _timed_run(tune, *args, **kwargs):
    """_kernels.run(*args, **kwargs), its time told to tune when it asks for it (tune.timing)."""
    started = _clock() if tune is not None and tune.timing else None
    _kernels.run(*args, **kwargs)
    if started is not None:
        tune.record(_clock() - started)


# An inference call's plan (its workspaces, panel layout and pack specs, _make_plan) is kept per thread for
# the next call of the same shapes: setting it up again was a third of the fixed cost of a small call
# (~6 us of the ~26 us of a batch-1 GRU call with H = 128). A plan is kept only when all its workspaces are
# views of this thread's kept scratch buffers (rewritten by every call that uses them), and the plans are
# dropped whenever a scratch buffer is replaced: they never hold memory the scratch pool does not. A kept
# plan's calls without lengths, projection or peepholes then skip the general path: the plan keeps the
# kernel context of its first such call with the workspaces filled in (_kernels.Prepared), and each call
# puts its own arrays into a copy of it (_kept_call). Measured 2026-11-24 (float32, in-process, interleaved
# with the general path): a call with T = 1, B = 1, H = 16 5.3-5.9 -> 2.3-2.5 us; the lat rows (B = 1,
# H = 128, T = 100) GRU -3.7%, LSTM -2.2%, RNN -5%.
_PLANS_KEPT = 8


def _plan_get(key):
    # the plans belong to the scratch pool they view (_scratch_tls.plans = (pool, {key: plan}))
    kept = getattr(_scratch_tls, "plans", None)
    if key is None or kept is None or kept[0] is not getattr(_scratch_tls, "pool", None):
        return None
    return kept[1].get(key)


def _plan_put(key, plan):
    pool = getattr(_scratch_tls, "pool", None)
    if key is None or pool is None:
        return
    bases = {id(b.base) for b in pool.values()}
    if any(a is not None and id(a.base) not in bases for a in plan[5].values()):
        return
    kept = getattr(_scratch_tls, "plans", None)
    if kept is None or kept[0] is not pool:
        kept = _scratch_tls.plans = (pool, {})
    plans = kept[1]
    if len(plans) >= _PLANS_KEPT:
        del plans[next(iter(plans))]
    plans[key] = plan


def _forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_peep, lengths, reverse, training, mode):
    user = (x, w_ih, w_hh, w_hr, w_peep)
    G = _GATES[cell]
    sizes = None
    if lengths is None and w_hr is None and w_peep is None and (reverse is False or reverse is True) \
            and (training is False or training is True):
        # the common call: arrays that need no conversion, checked in one compiled pass
        sizes = _kernels.plain_sizes(G, x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    if sizes is not None:
        T, B, I, H = sizes
        K, dtype = H, x.dtype
        if training is False:
            plan = _plan_get((cell, dtype.char, T, B, I, H, K, mode, False, b_ih is None and b_hh is None))
            if plan is not None and plan[7].prepared is not None:
                return _kept_call(plan, cell, dtype, T, B, I, H, G, x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse,
                                  mode)
    else:
        dtype, T, B, I, H, K, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_peep = _validate(
            cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_peep)
        reverse = _check_flag("reverse", reverse)
        training = _check_flag("training", training)
        lengths = _check_lengths(lengths, T, B)
    GH = G * H
    proj = w_hr is not None
    V = _kernels.lanes(dtype)
    after = cell == "gru" and mode == 1

    y = _new((T, B, K), dtype)
    x_copy = None
    hp_shared = False
    bufs = {}
    wpacks = {}
    owners = []  # pooled arrays that `saved` will hold
    if not (T and B):
        h_n = np.zeros((B, K), dtype) if h0 is None else h0.copy()
        c_n = (np.zeros((B, H), dtype) if c0 is None else c0.copy()) if cell == "lstm" else None
    else:
        # The kernel call seeds its state buffers from h0, c0 (or zeros), folds the biases into `bias`
        # (0 + b_ih + b_hh; GRU reset_after keeps b_hn apart, since it sits inside r * (W_hn h + b_hn)) and
        # writes the final state to h_n, c_n.
        h_n = np.empty((B, K), dtype)
        c_n = np.empty((B, H), dtype) if cell == "lstm" else None
        key = None if training else (cell, dtype.char, T, B, I, H, K, mode, proj, b_ih is None and b_hh is None)
        plan = _plan_get(key)
        if plan is None:
            plan = _make_plan(cell, dtype, T, B, I, H, K, G, after, proj, b_ih is None and b_hh is None)
            _plan_put(key, plan)
        xw_steps, ub, ub2, uih, fuse_x, work, pack_specs, kept = plan
        srcs = {"w_ih": w_ih, "w_hh": w_hh, "w_hr": w_hr}
        packs = [(srcs[name],) + spec for name, spec in pack_specs]
        a = dict(work, packs=packs, x=x, b_ih=b_ih, b_hh=b_hh, peep=w_peep, y=y, h0=h0, c0=c0, h_n=h_n, c_n=c_n,
                 lengths=lengths)
        if training:
            # The panels backward multiplies by, packed here from the caller's weights as they are now:
            # backward never reads the caller's weights again, and no copy of them is made.
            for name, (src, off, n_out, n_red) in _backward_weight_panels(
                    cell, mode, proj, H, K, I, G, w_ih, w_hh, w_hr).items():
                wpacks[name] = _pack(packs, src, off, 0, 1, n_out, 1, n_out, n_red, dtype, owners)
            hp_shared = cell == "rnn" and lengths is None
            if hp_shared:
                # An RNN's saved gates are its states h_t and hprev_tb holds h_{t-1}: one buffer of the T + 1
                # states in processing order, h0 first, serves both (one stream of stores fewer)
                states = _pooled((T + 1, B, K), dtype, owners)
                first = states[T] if reverse else states[0]
                bufs["gates_tb"] = states[:T] if reverse else states[1:]
                bufs["hprev_tb"] = states[1:] if reverse else states[:T]
                if h0 is None:
                    first.fill(0)
                else:
                    np.copyto(first, h0)
            else:
                bufs["gates_tb"] = _pooled((T, B, GH), dtype, owners)
                bufs["hprev_tb"] = _pooled((T, B, K), dtype, owners)
            if cell == "lstm":
                bufs["c_tb"] = _pooled((T, B, H), dtype, owners)
                bufs["cprev_tb"] = _pooled((T, B, H), dtype, owners)
            if proj or cell == "gru":
                bufs["m_tb"] = _pooled((T, B, H), dtype, owners)
            a.update(bufs)
            if _may_be_users(x, user[0]):
                # backward's private copy of x (see _private), made by the kernel's threads on their way in
                a["x_copy"] = x_copy = _pooled(x.shape, dtype, owners)
        nt, helper, shadow, tune = _thread_choice(kept if key is not None else None, T, B, I, H, K, G, dtype,
                                                  fuse_x, xw_steps)
        _timed_run(tune, cell, False, dtype, a, T, B, I, H, K, G, reverse, mode, training, proj,
                   2 if helper else nt, ub=ub, ub2=ub2, uih=uih, xw_steps=xw_steps,
                   split=_split(cell, B, H, K, training, False), hp_shared=hp_shared, fuse_x=fuse_x,
                   xw_helper=helper, saves_keep=_SAVES_KEEP_BYTES, shadow=shadow)
        if sizes is not None and key is not None and kept.prepared is None and _plan_get(key) is plan:
            # a plain call of a kept plan: the next ones of its shapes take _kept_call
            kept.prepared = _kernels.Prepared(cell, dtype, a, tuple(name for name, _ in pack_specs), T, B, I, H,
                                              G, mode, ub, ub2, uih, xw_steps, fuse_x)
    saved = None
    if training:
        saved = _Saved()
        saved.cell, saved.dtype, saved.mode, saved.reverse, saved.lengths = cell, dtype, mode, reverse, lengths
        saved.T, saved.B, saved.I, saved.H, saved.K, saved.G = T, B, I, H, K, G
        saved.x = x_copy if x_copy is not None else _private(x, user[0], owners)
        saved.w_peep = _private(w_peep, user[4], owners)
        saved.proj = proj
        saved.wpacks = wpacks
        saved.has_bias = (b_ih is not None, b_hh is not None)
        saved.buffers = bufs
        saved._owners = owners
    return y, h_n, c_n, saved


def rnn_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", lengths=None,
                reverse=False, training=False):
    """Elman RNN over a sequence: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act tanh or relu.

    x (T, B, I); h0 (B, H) or None; w_ih (H, I); w_hh (H, H); b_ih, b_hh (H,) or None;
    lengths (B,) ints in [0, T] or None. Returns y (T, B, H), h_n (B, H), saved (None unless training)."""
    if not isinstance(nonlinearity, str) or nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
    y, h_n, _, saved = _forward("rnn", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, None, lengths, reverse,
                                training, 1 if nonlinearity == "relu" else 0)
    return y, h_n, saved


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, w_hr=None, w_peep=None, lengths=None,
                 reverse=False, training=False):
    """LSTM over a sequence, gates i, f, g, o; with w_hr (P, H) the state is projected, h = w_hr (o*tanh c).

    x (T, B, I); h0 (B, P or H); c0 (B, H); w_ih (4H, I); w_hh (4H, P or H); b_ih, b_hh (4H,);
    w_peep (3, H) peephole weights or None. Returns y (T, B, P or H), h_n, c_n (B, H), saved."""
    return _forward("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_peep, lengths, reverse, training, 0)


def gru_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, lengths=None,
                reverse=False, training=False):
    """GRU over a sequence, gates r, z, n. reset_after=True is torch's form n = tanh(W_in x + b_in +
    r*(W_hn h + b_hn)); False applies r before the matrix: n = tanh(W_in x + b_in + W_hn (r*h) + b_hn).

    x (T, B, I); h0 (B, H); w_ih (3H, I); w_hh (3H, H); b_ih, b_hh (3H,). Returns y (T, B, H), h_n, saved."""
    reset_after = _check_flag("reset_after", reset_after)
    y, h_n, _, saved = _forward("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, None, None, lengths, reverse,
                                training, 1 if reset_after else 0)
    return y, h_n, saved


# ---------------------------------------------------------------------------------------------------
# backward


def _check_saved(saved, cell):
    if saved is None:
        raise ValueError("saved is None: call the forward with training=True")
    if not isinstance(saved, _Saved):
        raise TypeError(f"saved: expected the object returned by rnnfast.ops.{cell}_forward(..., training=True), "
                        f"got {type(saved).__name__}")
    if saved.cell != cell:
        raise ValueError(f"saved: expected the state of a {cell} forward, got that of a {saved.cell} forward")
    if not saved.consistent():
        raise ValueError("saved: its arrays no longer match the forward call that made it (was it modified?)")


def _backward(cell, dy, dh_n, dc_n, saved, state_grads):
    _check_saved(saved, cell)
    state_grads = _check_flag("state_grads", state_grads)
    s = saved
    dtype, T, B, I, H, K, G = s.dtype, s.T, s.B, s.I, s.H, s.K, s.G
    GH, N = G * H, s.T * s.B
    dy = _c(_as_float_array("dy", dy, dtype))
    _check_shape("dy", dy, (T, B, K))
    dh_n = _c(_as_float_array("dh_n", dh_n, dtype))
    _check_shape("dh_n", dh_n, (B, K))
    if cell == "lstm":
        dc_n = _c(_as_float_array("dc_n", dc_n, dtype))
        _check_shape("dc_n", dc_n, (B, H))
    proj = s.proj
    after = cell == "gru" and s.mode == 1
    before = cell == "gru" and not after
    # state_grads=False: no dh0, dc0, and no last step (s = -1) whose GEMM would give dh0
    dh0 = dc0 = None
    if state_grads:
        dh0 = np.zeros((B, K), dtype) if dh_n is None else dh_n.copy()
    if cell == "lstm" and state_grads:
        dc0 = np.zeros((B, H), dtype) if dc_n is None else dc_n.copy()
    # The kernel writes every element of dx and the weight gradients (no zeroing first); with T * B = 0
    # there is no kernel call and they are zeros.
    zero = None if N else 0
    dx = _new((T, B, I), dtype, fill=zero)
    dw_ih = _new((GH, I), dtype, fill=zero)
    dw_hh = _new((GH, K), dtype, fill=zero)
    dw_hr = _new((K, H), dtype, fill=zero) if proj else None
    dg_tb = dgh_tb = None
    a = s.buffers
    if N:
        V = _kernels.lanes(dtype)
        # GRU reset_after: the hidden side's gate gradients (dgh_tb) differ from the input side's only in
        # the n part, so dg_tb keeps just that part; the kernel reads dg's r and z parts from dgh_tb
        dg_tb = _scratch("dg_tb", (T, B, H if after else GH), dtype)
        dgh_tb = _scratch("dgh_tb", (T, B, GH), dtype) if after else None
        # Panels: w_hh^T for the recurrent GEMM (GRU reset before: its r, z rows; w_hn^T apart), w_hr for
        # dm = dh @ w_hr, w_ih^T for dx (all three packed by the training forward), and the columns of x,
        # hprev, m for the weight gradients.
        packs = []
        wq_pack, uq = s.wpacks["wq"]
        wq2_pack, uq2 = s.wpacks.get("wq2", (None, 1))
        wihq_pack, uihq = s.wpacks["wihq"]
        # The weight gradients read x, hprev and m in place where their rows are whole panel groups of at
        # most _IN_PLACE_MAX_ROW_BYTES (no copy), otherwise as panels. x with padding is always packed: the
        # padding of x is never read (as with torch's PackedSequence), not even multiplied by 0.
        padded = s.lengths is not None and s.lengths.min() < T

        def operand(src, n, lengths=None):
            """(panels or None, unit blocks, row stride read in place or 0) of an (N, n) operand; with
            lengths it is packed, its padding as zeros."""
            ub = _unit_blocks(1, n, V)
            if lengths is None and n % (ub * V) == 0 and n * dtype.itemsize <= _IN_PLACE_MAX_ROW_BYTES:
                return None, ub, n
            pack, ub = _pack(packs, src, 0, 0, 1, n, 1, n, N, dtype)
            if lengths is not None:
                packs[-1] += (lengths,)
            return pack, ub, 0

        xp_pack, uxp, xp_ld = operand(s.x, I, s.lengths if padded else None)
        hp_pack, uhp, hp_ld = operand(a["hprev_tb"], K)
        mp_pack, ump, mp_ld = operand(a["m_tb"], H) if proj or before else (None, 1, 0)
        # Bias gradients: column sums of the gate gradients, taken by the weight-gradient pass as it reads
        # them. The hidden side's are the input side's unless GRU reset_after keeps its own (dgh_tb).
        db_ih = np.empty(GH, dtype) if s.has_bias[0] else None
        db_hh = np.empty(GH, dtype) if s.has_bias[1] else None
        db_hh_kernel = db_hh if after or db_ih is None else None
        cbuf = _scratch("cbuf", (B, _round_up(H, V)), dtype, fill=0)
        run_args = dict(a, packs=packs, dy=dy, dh_n=dh_n, dc_n=dc_n, peep=s.w_peep, lengths=s.lengths,
                        wq_pack=wq_pack, wq2_pack=wq2_pack, wihq_pack=wihq_pack, xp_pack=xp_pack,
                        hp_pack=hp_pack, mp_pack=mp_pack, dg_tb=dg_tb, dgh_tb=dgh_tb, dh0=dh0, dx=dx,
                        dw_ih=dw_ih, dw_hh=dw_hh, dw_hr=dw_hr, cbuf=cbuf, db_ih=db_ih, db_hh=db_hh_kernel,
                        x=s.x if xp_ld else None,
                        dhp_tb=_scratch("dhp_tb", (T, B, K), dtype) if proj else None,
                        zero=_scratch("zero", (max(GH, K, H) + V,), dtype, fill=0))
        _kernels.run(cell, True, dtype, run_args, T, B, I, H, K, G, s.reverse, s.mode, True, proj,
                     _threads(B, G, H, K), uq=uq, uq2=uq2, uihq=uihq, uxp=uxp, uhp=uhp, ump=ump,
                     split=_split(cell, B, H, K, True, True), xp_ld=xp_ld, hp_ld=hp_ld, mp_ld=mp_ld)
        if db_hh is not None and db_hh_kernel is None:
            db_hh[:] = db_ih
        if dc0 is not None:
            keep = slice(None) if s.lengths is None else s.lengths > 0
            dc0[keep] = cbuf[keep, :H]
    else:  # T*B == 0: the bias gradients sum over nothing
        db_ih = np.zeros(GH, dtype) if s.has_bias[0] else None
        db_hh = np.zeros(GH, dtype) if s.has_bias[1] else None
    if cell != "lstm":
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh
    out = (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr)
    if s.w_peep is None:
        return out
    dw_peep = np.zeros((3, H), dtype)
    if N:
        dg4 = dg_tb.reshape(N, 4, H)
        cprev = a["cprev_tb"].reshape(N, H)
        dw_peep[0] = np.einsum("nh,nh->h", dg4[:, 0], cprev)
        dw_peep[1] = np.einsum("nh,nh->h", dg4[:, 1], cprev)
        dw_peep[2] = np.einsum("nh,nh->h", dg4[:, 3], a["c_tb"].reshape(N, H))
    return out + (dw_peep,)


def rnn_backward(dy, dh_n, saved, *, state_grads=True):
    """Gradients of an rnn_forward(..., training=True): dy (T, B, H) and dh_n (B, H) (None = zeros)
    -> (dx, dh0, dw_ih, dw_hh, db_ih, db_hh); gradients of absent biases are None.
    state_grads=False: dh0 is None and not computed (one step's GEMM fewer), for a caller whose initial
    state needs no gradient (as torch's autograd skips it for an hx that does not require grad)."""
    return _backward("rnn", dy, dh_n, None, saved, state_grads)


def lstm_backward(dy, dh_n, dc_n, saved, *, state_grads=True):
    """Gradients of an lstm_forward(..., training=True): dy (T, B, P or H), dh_n, dc_n (None = zeros)
    -> (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr), plus dw_peep when the forward had w_peep.
    state_grads=False: dh0 and dc0 are None and not computed (see rnn_backward)."""
    return _backward("lstm", dy, dh_n, dc_n, saved, state_grads)


def gru_backward(dy, dh_n, saved, *, state_grads=True):
    """Gradients of a gru_forward(..., training=True): dy (T, B, H), dh_n (B, H) (None = zeros)
    -> (dx, dh0, dw_ih, dw_hh, db_ih, db_hh).
    state_grads=False: dh0 is None and not computed (see rnn_backward)."""
    return _backward("gru", dy, dh_n, None, saved, state_grads)


