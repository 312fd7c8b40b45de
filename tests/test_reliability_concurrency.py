"""Concurrency: Python threads calling rnnfast at once (the kernels release the GIL) get the bits of serial
calls; layer results do not depend on the thread count; a process that used rnnfast can start workers with
multiprocessing's spawn / forkserver methods and use rnnfast there; fork after an OpenMP parallel region
(GNU libgomp) is checked with a timeout.
"""
import concurrent.futures
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import rnnfast
from rnnfast import ops
from test_ops import CASES, backward, d_outputs_for, forward, make_problem
from test_reliability_input import LAYERS, as_tuple, nonzero, states_for


def _ops_job(case, seed, dtype):
    """Forward (training) and backward of a problem big enough for the kernels to use 2 threads when asked
    (B*G*H*K >= 2 * 2**14), with lengths and reverse; returns every result array."""
    rng = np.random.default_rng(seed)
    T, B = 6, 8
    cell, a, kw = make_problem(rng, case, T, B, 4, 72, 71, dtype=dtype)
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    out, saved = forward(ops, cell, a, kw, lengths=lengths, reverse=bool(seed % 2), training=True)
    d = d_outputs_for(rng, out)
    grads = backward(ops, cell, d, saved, a)
    return [np.array(o) for o in out] + [None if g is None else np.array(g) for g in grads]


def _same_bits(got, expected, what):
    assert len(got) == len(expected), what
    for i, (g, e) in enumerate(zip(got, expected)):
        assert (g is None) == (e is None), f"{what}: result {i}"
        if g is not None:
            assert g.dtype == e.dtype and g.shape == e.shape and np.array_equal(g, e), f"{what}: result {i} differs"


JOBS = [(case, seed, dtype) for case in CASES for seed, dtype in ((1, np.float32), (2, np.float64))]


@pytest.mark.parametrize("n_threads", [1, 2], ids=["omp1", "omp2"])
def test_python_threads_at_once_get_the_serial_bits(n_threads):
    """Six Python threads run every cell (forward + backward, both dtypes) at once, three rounds, each job
    several times; with 2 kernel threads every call opens its own OpenMP team, concurrently."""
    rnnfast.set_num_threads(n_threads)
    serial = {job: _ops_job(*job) for job in JOBS}
    work = JOBS * 3
    start = threading.Barrier(6)

    def run(job):
        try:
            start.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass
        return job, _ops_job(*job)

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        for job, result in pool.map(run, work):
            _same_bits(result, serial[job], f"{job} in a thread")


def test_changing_the_thread_count_while_other_threads_compute():
    """set_num_threads from one thread while others are inside the kernels: every result still has the
    serial bits (results do not depend on the thread count) and nothing crashes."""
    serial = {job: _ops_job(*job) for job in JOBS[:6]}
    stop = threading.Event()

    def flip():
        n = 0
        while not stop.is_set():
            rnnfast.set_num_threads(1 + n % 3)
            n += 1
        return n

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        flipper = pool.submit(flip)
        try:
            results = list(pool.map(lambda job: (job, _ops_job(*job)), JOBS[:6] * 4))
        finally:
            stop.set()
        assert flipper.result() > 0
    for job, result in results:
        _same_bits(result, serial[job], f"{job} while the thread count changes")


LAYER_CONFIGS = [("rnn", dict(nonlinearity="relu", bidirectional=True)),
                 ("lstm", dict(proj_size=17, bidirectional=True, peephole=True)),
                 ("gru", dict(reset_after=False, bidirectional=True, dropout=0.3, num_layers=3)),
                 ("gru", dict(batch_first=True)), ("lstm", dict(batch_first=True, dropout=0.5, num_layers=3))]


def _layer_job(i, dtype=np.float64):
    """A training step of a layer (forward, backward) sized for 2 kernel threads; every result and gradient."""
    kind, kw = LAYER_CONFIGS[i % len(LAYER_CONFIGS)]
    kw = dict({"num_layers": 2}, **kw)
    layer = LAYERS[kind](6, 72, dtype=dtype, seed=i, **kw)
    rng = np.random.default_rng(i)
    T, B = 5, 9
    x = nonzero(rng, (B, T, 6) if layer.batch_first else (T, B, 6), dtype)
    hx = states_for(layer, rng, B)
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    out, states = layer.forward(x, hx, lengths=lengths, train=True)
    d_hx = tuple(nonzero(rng, s.shape, dtype) for s in as_tuple(states))
    dx, dhx0 = layer.backward(nonzero(rng, out.shape, dtype), d_hx if kind == "lstm" else d_hx[0])
    inference, _ = layer(x, hx, lengths=lengths)
    return [out, *as_tuple(states), dx, *as_tuple(dhx0), inference, *layer.grads.values()]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_layer_results_identical_for_1_and_2_threads(dtype):
    for i in range(len(LAYER_CONFIGS)):
        rnnfast.set_num_threads(1)
        one = _layer_job(i, dtype)
        rnnfast.set_num_threads(2)
        two = _layer_job(i, dtype)
        _same_bits(two, one, f"layer config {i}: 2 threads vs 1")


def test_layers_in_python_threads_at_once_get_the_serial_bits():
    rnnfast.set_num_threads(2)
    serial = [_layer_job(i) for i in range(len(LAYER_CONFIGS))]
    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
        for i, result in zip(list(range(len(LAYER_CONFIGS))) * 2,
                             pool.map(_layer_job, list(range(len(LAYER_CONFIGS))) * 2)):
            _same_bits(result, serial[i], f"layer config {i} in a thread")


def test_one_layer_shared_by_threads_for_inference(rng):
    """Inference keeps no state: one layer object called from several threads at once."""
    layer = rnnfast.LSTM(6, 72, num_layers=2, bidirectional=True, dtype=np.float32, seed=0)
    xs = [nonzero(rng, (5, 9, 6), np.float32) for _ in range(6)]
    serial = [layer(x, lengths=[5, 1, 0, 2, 3, 5, 4, 4, 5]) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda x: layer(x, lengths=[5, 1, 0, 2, 3, 5, 4, 4, 5]), xs * 3))
    for k, (out, (h, c)) in enumerate(results):
        e_out, (e_h, e_c) = serial[k % len(xs)]
        assert np.array_equal(out, e_out) and np.array_equal(h, e_h) and np.array_equal(c, e_c)


# ---------------------------------------------------------------------------------- processes

def _worker(job):
    """Run in a child process: set 2 kernel threads and compute an ops job and a layer job."""
    import rnnfast as rf
    rf.set_num_threads(2)
    kind, index = job
    return _ops_job(*JOBS[index]) if kind == "ops" else _layer_job(index)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_started_after_rnnfast_was_used(method):
    """This process has used rnnfast with 2 threads (OpenMP teams exist): spawn / forkserver workers import
    rnnfast afresh, run it with 2 threads, and return the same bits as this process (same machine)."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available here")
    rnnfast.set_num_threads(2)
    jobs = [("ops", 0), ("ops", 9), ("layer", 1), ("layer", 2)]
    expected = [_ops_job(*JOBS[i]) if k == "ops" else _layer_job(i) for k, i in jobs]
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map_async(_worker, jobs).get(timeout=120)
    for job, got, e in zip(jobs, results, expected):
        _same_bits(got, e, f"{job} in a {method} worker")


_FORK_SCRIPT = """
import os, signal, sys
import numpy as np
import rnnfast
from rnnfast import ops

def call():
    rng = np.random.default_rng(0)
    B, H = 64, 64   # B*G*H*H = 2**20: ops gives this step 2 threads
    x = rng.standard_normal((5, B, 3))
    y = ops.lstm_forward(x, None, None, rng.uniform(-.1, .1, (4 * H, 3)), rng.uniform(-.1, .1, (4 * H, H)))[0]
    return float(y.sum())

rnnfast.set_num_threads({parent})
expected = call()
pid = os.fork()
if pid == 0:
    signal.alarm(5)  # a hung child dies of SIGALRM instead of hanging the test
    if {child}:  # 0: keep what the fork left (rnnfast puts a forked child on 1 thread)
        rnnfast.set_num_threads({child})
    os._exit(0 if call() == expected else 3)
_, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    print("child killed by signal", os.WTERMSIG(status), "(SIGALRM = hung)" if os.WTERMSIG(status) == signal.SIGALRM else "")
    sys.exit(1)
print("child exit", os.WEXITSTATUS(status))
sys.exit(os.WEXITSTATUS(status))
"""


def _run_fork_script(parent, child):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(rnnfast.__file__)))]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(_FORK_SCRIPT.format(parent=parent, child=child))],
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("parent, child", [(1, 1), (1, 2), (2, 1), (2, 0)])
def test_fork_works_unless_both_sides_run_parallel_regions(parent, child):
    """fork is fine when the parent never opened an OpenMP team (1 thread) or the child stays on 1 thread."""
    p = _run_fork_script(parent, child)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_after_a_parallel_region_and_parallel_child():
    """A forked child asking for threads again stays on one (with a RuntimeWarning) instead of hanging in
    libgomp, and computes the same numbers."""
    p = _run_fork_script(2, 2)
    assert p.returncode == 0, p.stdout + p.stderr


_FORK_POOL_SCRIPT = """
import os, signal, sys
import numpy as np
import rnnfast
from rnnfast import ops
rnnfast.set_num_threads(1)
rng = np.random.default_rng(0)
args = (rng.standard_normal((4, 3, 5)), None, None, rng.uniform(-.3, .3, (8, 5)), rng.uniform(-.3, .3, (8, 2)))
saved = ops.lstm_forward(*args, training=True)[-1]
del saved                       # its arrays are now in the pool
ops._pool_lock.acquire()        # as if another thread were inside the pool when the fork happens
pid = os.fork()
if pid == 0:
    signal.alarm(5)             # a child stuck on the inherited lock dies of SIGALRM
    y, _, _, saved = ops.lstm_forward(*args, training=True)
    g = ops.lstm_backward(np.ones_like(y), None, None, saved)
    del saved
    os._exit(0 if np.isfinite(g[0]).all() else 3)
ops._pool_lock.release()
_, status = os.waitpid(pid, 0)
sys.exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_while_the_saved_state_pool_is_locked():
    """The pool behind `saved` is shared by threads under a lock; a child forked while another thread held it
    gets a fresh pool instead of a lock nobody will release."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(rnnfast.__file__)))]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    p = subprocess.run([sys.executable, "-c", _FORK_POOL_SCRIPT], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, (p.returncode, p.stdout + p.stderr)
