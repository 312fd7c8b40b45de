"""Memory: training steps, inference calls and rejected calls do not leak; an allocation that cannot succeed
raises MemoryError (or a ValueError naming the size) instead of crashing. Each check runs in a fresh
interpreter: its resident memory is not disturbed by the rest of the suite, and a crash there is a failed test,
not a dead test runner."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import rnnfast

REPO = os.path.dirname(os.path.dirname(os.path.abspath(rnnfast.__file__)))


# On a busy 2-CPU machine, libgomp's default wait policy makes a 2-thread hidden split (a barrier per phase)
# ~100x slower than 1 thread (see docs/SANITIZERS.md, "Notes"); passive waiting and a single BLAS thread keep
# these 1,000-step loops at a few seconds. Memory is what is measured here, not speed.
QUICK_OMP = {"OMP_WAIT_POLICY": "passive", "OPENBLAS_NUM_THREADS": "1"}


def run_python(prelude, body, timeout=300, env=None):
    """Run prelude + body (each dedented) in a fresh interpreter (the repository on sys.path); fail on a crash
    or a non-zero exit; return the last line of stdout parsed as JSON."""
    code = textwrap.dedent(prelude) + "\n" + textwrap.dedent(body)
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    full_env.update(env or {})
    p = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"child exited with {p.returncode} (negative = killed by that signal):\n" \
                              f"{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


_RSS = """
import gc, json, os
import numpy as np
import rnnfast
from rnnfast import ops

PAGE = os.sysconf("SC_PAGE_SIZE")

def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

def rss_around(step, warm_up=100, n=1000):
    # resident memory before and after n calls of step, after warm_up calls
    for _ in range(warm_up):
        step()
    before = rss()
    for _ in range(n):
        step()
    return before, rss()
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")
def test_1000_training_steps_do_not_grow_resident_memory():
    """A 2-layer bidirectional LSTM (with dropout and lengths), 1,000 training steps (forward + backward +
    zero_grad + clip), after 100 warm-up steps: resident memory grows by less than 30 MB. Each step allocates
    ~1 MB of buffers (the saved state of 4 units), so a leak of anything per step would show ~1 GB."""
    out = run_python(_RSS, """
    rnnfast.set_num_threads(2)
    layer = rnnfast.LSTM(16, 32, num_layers=2, bidirectional=True, dropout=0.2, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 8, 16))
    lengths = np.array([20, 19, 17, 12, 20, 5, 1, 20])
    d_out = rng.standard_normal((20, 8, 64))

    def step():
        layer.zero_grad()
        out, (h, c) = layer.forward(x, lengths=lengths, train=True)
        layer.backward(d_out, (h, c))
        rnnfast.clip_grad_norm(layer, 1.0)

    before, after = rss_around(step)
    saved_bytes = 20 * 8 * (4 * 32 + 3 * 32 + 32) * 8 * 4
    print(json.dumps(dict(before=before, after=after, saved_bytes=saved_bytes)))
    """, env=QUICK_OMP)
    growth = out["after"] - out["before"]
    assert out["saved_bytes"] * 1000 > 100 * 2**20, "the step must be big enough for a leak to show"
    assert growth < 30 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MB over 1,000 training steps"


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")
def test_ops_calls_and_rejected_calls_do_not_leak():
    """1,000 rounds of: every cell's forward (training) + backward with float32 data, an inference call, and
    calls rejected by validation (bad shape, bad dtype, bad lengths, bad saved) — resident memory grows by
    less than 30 MB after a warm-up."""
    out = run_python(_RSS, """
    rnnfast.set_num_threads(2)
    rng = np.random.default_rng(0)
    f32 = np.float32
    T, B, I, H = 16, 8, 12, 40
    x = rng.standard_normal((T, B, I)).astype(f32)
    lengths = np.array([16, 3, 0, 16, 9, 1, 16, 2])
    w = {G: (rng.uniform(-.2, .2, (G * H, I)).astype(f32), rng.uniform(-.2, .2, (G * H, H)).astype(f32))
         for G in (1, 3, 4)}
    b = {G: rng.uniform(-.2, .2, G * H).astype(f32) for G in (1, 3, 4)}
    w_hr = rng.uniform(-.2, .2, (7, H)).astype(f32)
    w_hh_p = rng.uniform(-.2, .2, (4 * H, 7)).astype(f32)
    rejected = 0

    def round_():
        global rejected
        y, h, s = ops.rnn_forward(x, None, *w[1], b[1], b[1], lengths=lengths, training=True)
        ops.rnn_backward(y, h, s)
        y, h, s = ops.gru_forward(x, None, *w[3], b[3], b[3], reset_after=False, lengths=lengths, reverse=True,
                                  training=True)
        ops.gru_backward(y, None, s)
        y, h, c, s = ops.lstm_forward(x, None, None, w[4][0], w_hh_p, b[4], None, w_hr=w_hr, lengths=lengths,
                                      training=True)
        ops.lstm_backward(y, h, c, s)
        ops.lstm_forward(x, None, None, *w[4])
        for bad in (lambda: ops.rnn_forward(x[..., :-1], None, *w[1]),
                    lambda: ops.gru_forward(x.astype(np.float64), None, *w[3]),
                    lambda: ops.lstm_forward(x, None, None, *w[4], lengths=[99] * B),
                    lambda: ops.rnn_backward(None, None, "saved")):
            try:
                bad()
            except (TypeError, ValueError):
                rejected += 1

    before, after = rss_around(round_)
    print(json.dumps(dict(before=before, after=after, rejected=rejected)))
    """, env=QUICK_OMP)
    assert out["rejected"] == 4 * 1100
    growth = out["after"] - out["before"]
    assert growth < 30 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MB over 1,000 rounds"


_ABSURD = """
import json
import numpy as np
import rnnfast
from rnnfast import ops
f32 = np.float32
results = {}

def attempt(name, f):
    try:
        f()
        results[name] = "returned"
    except MemoryError as e:
        results[name] = "MemoryError: " + str(e)
    except Exception as e:
        results[name] = f"{type(e).__name__}: {e}"
"""


def test_absurd_sizes_raise_memory_error():
    """T = 10**7, B = 10**5 (x a zero-stride view, so that the caller allocated nothing): every level raises
    MemoryError (numpy's, naming the size) in the child; nothing is killed."""
    out = run_python(_ABSURD, """
    x = np.broadcast_to(f32(0.5), (10**7, 10**5, 1))   # 4 TB as a contiguous array
    x0 = np.empty((2**20, 2**20, 0), f32)              # I = 0: nothing to copy, xw is (T, B, G*H): 16 TB
    H = 4
    attempt("rnn_forward", lambda: ops.rnn_forward(x, None, np.ones((H, 1), f32), np.ones((H, H), f32)))
    attempt("lstm_forward_training", lambda: ops.lstm_forward(x, None, None, np.ones((4 * H, 1), f32),
                                                              np.ones((4 * H, H), f32), training=True))
    attempt("gru_forward_I0", lambda: ops.gru_forward(x0, None, np.ones((3 * H, 0), f32), np.ones((3 * H, H), f32)))
    attempt("GRU_layer", lambda: rnnfast.GRU(1, H)(x))
    attempt("LSTM_layer_training", lambda: rnnfast.LSTM(1, H, bidirectional=True).forward(x, train=True))
    attempt("huge_hidden_size", lambda: rnnfast.LSTM(3, 10**6))
    attempt("huge_batch_T0", lambda: ops.rnn_forward(np.broadcast_to(f32(1), (0, 2**40, 1)), None,
                                                     np.ones((H, 1), f32), np.ones((H, H), f32)))
    # Still alive and working afterwards:
    attempt("small_after", lambda: ops.rnn_forward(np.ones((2, 2, 1), f32), None, np.ones((H, 1), f32),
                                                   np.ones((H, H), f32)))
    print(json.dumps(results))
    """)
    assert out.pop("small_after") == "returned"
    for name, result in out.items():
        assert result.startswith("MemoryError: Unable to allocate"), f"{name}: {result}"


def test_sizes_beyond_the_address_space_name_the_size():
    out = run_python(_ABSURD, """
    x0 = np.empty((2**30, 2**30, 0), f32)   # valid; y would be (2**30, 2**30, 4) float32 = 2**64 bytes
    attempt("gru", lambda: ops.gru_forward(x0, None, np.ones((12, 0), f32), np.ones((12, 4), f32)))
    print(json.dumps(results))
    """)
    result = out["gru"]
    assert result.startswith("MemoryError") or (result.startswith("ValueError") and "1073741824" in result), result


# ------------------------------------------------------------------------------------------------------
# The pool behind `saved` (ops._pooled / ops._release): a training loop reuses its buffers, and nothing a
# caller still references is ever handed out again.

def _lstm_problem(seed=0, T=6, B=3, I=5, H=7, dtype=None):
    import numpy as np
    rng = np.random.default_rng(seed)
    dtype = dtype or np.float64
    a = lambda *s: rng.uniform(-0.5, 0.5, s).astype(dtype)  # noqa: E731
    return a(T, B, I), a(B, H), a(B, H), a(4 * H, I), a(4 * H, H), a(4 * H), a(4 * H)


def test_training_loop_reuses_the_saved_buffers():
    import numpy as np
    from rnnfast import ops
    args = _lstm_problem()
    first = ops.lstm_forward(*args, training=True)[-1]
    bases = {id(b) for b in first._owners}
    want = ops.lstm_backward(np.ones((6, 3, 7)), None, None, first)
    del first
    second = ops.lstm_forward(*args, training=True)[-1]
    assert {id(b) for b in second._owners} == bases, "a freed saved state's buffers were not reused"
    got = ops.lstm_backward(np.ones((6, 3, 7)), None, None, second)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(w, g)


def test_buffers_still_referenced_are_never_reused():
    """A caller holding a view of a saved array (or the saved object itself) keeps it out of the pool: the
    next forward, on other data, must not overwrite what the caller holds."""
    import numpy as np
    from rnnfast import ops
    saved = ops.lstm_forward(*_lstm_problem(1), training=True)[-1]
    held_gates = saved.buffers["gates_tb"]
    held_x = saved.x[1:]
    keep_gates, keep_x = held_gates.copy(), held_x.copy()
    kept_saved = ops.lstm_forward(*_lstm_problem(2), training=True)[-1]
    keep_saved_gates = kept_saved.buffers["gates_tb"].copy()
    del saved
    for seed in range(3, 6):  # fresh forwards on other data, each freed straight away
        ops.lstm_forward(*_lstm_problem(seed), training=True)
    np.testing.assert_array_equal(held_gates, keep_gates)
    np.testing.assert_array_equal(held_x, keep_x)
    np.testing.assert_array_equal(kept_saved.buffers["gates_tb"], keep_saved_gates)


def test_pool_is_bounded(monkeypatch):
    import numpy as np
    from rnnfast import ops
    monkeypatch.setattr(ops, "_POOL_MAX_BYTES", 10_000)
    monkeypatch.setattr(ops, "_pool", {})
    monkeypatch.setattr(ops, "_pool_bytes", 0)
    for seed in range(4):
        ops.lstm_forward(*_lstm_problem(seed, T=20, B=8, H=16), training=True)
    assert ops._pool_bytes <= 10_000
    assert sum(b.nbytes for free in ops._pool.values() for b in free) == ops._pool_bytes


def test_kept_workspaces_are_bounded(monkeypatch):
    """Each thread keeps its call-internal workspaces for the next call, at most _SCRATCH_TOTAL_BYTES in all
    and none above _SCRATCH_MAX_BYTES; what is not kept is allocated per call, with the same results."""
    import numpy as np
    from rnnfast import ops
    args = _lstm_problem(7, T=30, B=8, I=20, H=40)
    want = ops.lstm_forward(*args)[0]
    monkeypatch.setattr(ops._scratch_tls, "pool", {})
    monkeypatch.setattr(ops, "_SCRATCH_TOTAL_BYTES", 33_000)
    monkeypatch.setattr(ops, "_SCRATCH_MAX_BYTES", 40_000)
    for _ in range(2):
        np.testing.assert_array_equal(ops.lstm_forward(*args)[0], want)
        kept = [b.nbytes for b in ops._scratch_tls.pool.values()]
        assert 0 < sum(kept) <= 33_000 and max(kept) <= 40_000, kept


def test_kept_call_plans_view_only_the_kept_workspaces(monkeypatch):
    """An inference call's plan (workspaces, panel layout) is kept for the next call of the same shapes: calls
    of shapes that alternate, with larger calls in between that replace the scratch buffers, give the bits
    of a first call, and every kept plan views only buffers the scratch pool holds."""
    import numpy as np
    from rnnfast import ops
    monkeypatch.setattr(ops._scratch_tls, "pool", {})
    problems = [_lstm_problem(s, T=T, B=B, I=I, H=H, dtype=np.float32)
                for s, (T, B, I, H) in enumerate([(9, 1, 6, 40), (5, 3, 17, 8), (30, 4, 50, 70)])]
    first = [ops.lstm_forward(*p) for p in problems]
    for order in ([0, 1, 0, 1], [2, 0, 1, 2, 1, 0], [0, 0, 2, 2, 0]):
        for i in order:
            for got, want in zip(ops.lstm_forward(*problems[i])[:3], first[i][:3]):
                np.testing.assert_array_equal(got, want)
            pool, plans = ops._scratch_tls.pool, ops._scratch_tls.plans
            assert plans is not None and plans[0] is pool and plans[1]
            bases = {id(b.base) for b in pool.values()}
            for plan in plans[1].values():
                assert all(a is None or id(a.base) in bases for a in plan[5].values())


def test_workspaces_saved_arrays_and_outputs_start_on_64_byte_boundaries(monkeypatch):
    """The kernels' vector loads and stores straddle two cache lines on any other start (numpy gives 16):
    every workspace, pooled array and kernel-written output starts on a 64-byte boundary, for every size
    (the padding differs per size), dtype, new or reused."""
    import numpy as np
    from rnnfast import ops
    made = []
    real_scratch = ops._scratch
    monkeypatch.setattr(ops, "_scratch", lambda *a, **k: made.append(real_scratch(*a, **k)) or made[-1])
    for dtype in (np.float32, np.float64):
        for T, B, I, H in ((1, 1, 1, 1), (3, 2, 5, 7), (6, 3, 17, 33)):
            for _ in range(2):  # new, then reused
                args = _lstm_problem(T=T, B=B, I=I, H=H, dtype=dtype)
                y, h_n, c_n, saved = ops.lstm_forward(*args, training=True)
                grads = ops.lstm_backward(np.ones_like(y), None, None, saved)
                arrays = [y, *grads[:1], *grads[3:5], *saved.buffers.values(),
                          *(p for p, _ in saved.wpacks.values()), *made]
                for a in arrays:
                    assert a.ctypes.data % 64 == 0, (dtype, T, B, I, H, a.shape)
                made.clear()
