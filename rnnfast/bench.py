"""Benchmark harness: `python -m rnnfast.bench` (see benchmarks/README.md for how to read the numbers).

For each cell (rnn, gru, lstm), configuration (T, B, I, H) and mode (inference = forward only; training =
forward + backward of sum(output)), every selected implementation runs on the same random weights in this one
process. Timing is interleaved round by round (round k times each implementation once, the order rotated
each round), so drift on a shared machine hits every implementation alike; the table reports medians.

Implementations live in one registry, IMPLS: rnnfast (rnnfast.ops), numpy (rnnfast.reference), and the peers
torch and onnxruntime when installed. Each has `setup(cell, data, threads)` -> {mode: callable}; the
inference callable returns the output y (T, B, H) as a numpy array, which the harness compares once per
row against rnnfast's, so a wrong weight conversion shows up as a MISMATCH (and a non-zero exit status).

FLOPs counted: forward 2*T*B*(I+H)*G*H (the two GEMMs per gate), training 3x that.
The benchmarks/ pytest-benchmark suite reuses IMPLS, make_inputs, flops and environment from here.
"""
import argparse
import dataclasses
import datetime
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
CELLS = tuple(GATES)
CONFIGS = {                 # (T, B, I, H)
    "lat": (100, 1, 128, 128),
    "mid": (100, 32, 256, 256),
    "big": (50, 64, 512, 512),
    "wide": (25, 16, 1024, 1024),
}
QUICK_CONFIGS = ("lat", "mid")
MODES = ("inference", "training")
DTYPES = ("float32", "float64")
# Loose: implementations sum in different orders over T steps; a wrong gate order gives errors ~0.1-1.
AGREEMENT_ATOL = {"float32": 2e-3, "float64": 1e-8}
# Environment variables that change which kernels or how many threads run; reported in the header.
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "RNNFAST_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# Per row and implementation: seconds of timed calls, the cap on timed calls, and the number of interleaved
# rounds they are spread over; --quick uses the second values.
BUDGET_S = {"full": 2.5, "quick": 0.25}
MAX_REPEATS = {"full": 100, "quick": 15}
ROUNDS = {"full": 5, "quick": 2}
PEAK_REPS = {"full": 5, "quick": 3}
# Pause before each implementation's turn in a round. Idle worker threads of a thread pool keep spinning for a
# while after a call (OpenBLAS ~0.1 s by default, OpenMP and ONNX Runtime less): on 2 cores, timing one
# library right after another puts it next to the other's spinning threads, measured here to slow an OpenMP
# team 2-5x. 0.15 s lets them all go to sleep first.
COOLDOWN_S = 0.15
# Calls cheaper than this get SETTLE_S seconds of untimed calls after the pause (at least one): the first wakes
# the implementation's own threads, the rest bring the call to the speed it keeps in a loop, so that the
# timed calls that follow, back-to-back, measure that loop. After a pause a call stays slower for a while,
# by how much and how long depending on the implementation: measured 2026-11-25 (this machine, fast state,
# float32, T = 100, B = 1, I = H = 128, medians over 6 pauses of 0.15 s) rnnfast's GRU 0.142 ms the 2nd call
# after the pause, 0.130 the 3rd-5th, 0.116 the 11th-20th, 0.105 from the 50th (~6 ms) on; its LSTM 0.157,
# 0.150, 0.143, 0.134; ONNX Runtime's GRU 0.247, 0.248, 0.232, 0.229 and LSTM 0.236, 0.230, 0.214, 0.212;
# torch's LSTM 0.376, 0.323, 0.309, 0.306. One untimed call then left most of a turn's 20 timed calls on the
# way (rnnfast's most: two threads at batch 1 run up to speed over ~50 calls; on one thread, none after the
# first). SETTLE_S calls get every one of them there.
SETTLE_CALL_MAX_S = 0.1
SETTLE_S = 0.02
# A bound on the settling calls, for a clock that does not move (a call faster than its resolution).
SETTLE_MAX_CALLS = 100000
# Share of all CPUs' time used by other processes, sampled just before the run, above which the header warns.
BUSY_SHARE = 0.2


def flops(cell, shape, mode):
    """FLOPs of one call: forward 2*T*B*(I+H)*G*H, training (forward + backward) 3x that."""
    T, B, I, H = shape
    forward = 2 * T * B * (I + H) * GATES[cell] * H
    return 3 * forward if mode == "training" else forward


@dataclasses.dataclass
class Inputs:
    """One row's data, in rnnfast's layout: x (T, B, I), h0/c0 (B, H), w_ih (G*H, I), w_hh (G*H, H), b (G*H,)."""
    x: np.ndarray
    h0: np.ndarray
    c0: np.ndarray  # None except for the LSTM
    w_ih: np.ndarray
    w_hh: np.ndarray
    b_ih: np.ndarray
    b_hh: np.ndarray

    @property
    def states(self):
        return (self.h0, self.c0) if self.c0 is not None else (self.h0,)


def make_inputs(cell, shape, dtype="float32", seed=0):
    """Random inputs and weights (torch's init range for weights), the same for every implementation."""
    T, B, I, H = shape
    gh = GATES[cell] * H
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)

    def uniform(bound, *dims):
        return rng.uniform(-bound, bound, dims).astype(dtype)

    return Inputs(x=rng.standard_normal((T, B, I)).astype(dtype), h0=uniform(0.5, B, H),
                  c0=uniform(0.5, B, H) if cell == "lstm" else None,
                  w_ih=uniform(k, gh, I), w_hh=uniform(k, gh, H), b_ih=uniform(k, gh), b_hh=uniform(k, gh))


# ---------------------------------------------------------------------------------------------------------
# The registry of implementations

class Impl:
    """One implementation. `detect()` returns its version or raises ImportError when it is not installed."""
    name = ""
    modes = MODES
    dtypes = DTYPES

    def detect(self):
        raise NotImplementedError

    def set_num_threads(self, n):
        """Called once, before any setup, when --threads is given."""

    def threads(self):
        """The thread count this implementation will use, or None when unknown."""
        return None

    def setup(self, cell, data, threads=None):
        """Return {mode: callable} for the modes supported; the inference callable returns y (T, B, H)."""
        raise NotImplementedError


class KernelImpl(Impl):
    """rnnfast.ops or rnnfast.reference: the same six functions, called the same way."""

    def __init__(self, name, module_name):
        self.name = name
        self.module_name = module_name

    def detect(self):
        import rnnfast
        importlib.import_module(self.module_name)
        return rnnfast.__version__

    def set_num_threads(self, n):
        import rnnfast
        if self.module_name == "rnnfast.ops":
            rnnfast.set_num_threads(n)

    def threads(self):
        import rnnfast
        return rnnfast.get_num_threads() if self.module_name == "rnnfast.ops" else "BLAS's"

    def setup(self, cell, data, threads=None):
        module = importlib.import_module(self.module_name)
        forward = getattr(module, f"{cell}_forward")
        backward = getattr(module, f"{cell}_backward")
        args = (data.x, *data.states, data.w_ih, data.w_hh, data.b_ih, data.b_hh)
        T, B, _ = data.x.shape
        dy = np.ones((T, B, data.w_hh.shape[1]), data.x.dtype)
        no_state_grads = (None,) * len(data.states)

        def inference():
            return forward(*args)[0]

        def training():
            # dx and the parameters' gradients, what torch's autograd computes here: its initial states do
            # not require grad, so neither it nor rnnfast (state_grads=False) computes theirs
            saved = forward(*args, training=True)[-1]
            backward(dy, *no_state_grads, saved, state_grads=False)

        return {"inference": inference, "training": training}


class TorchImpl(Impl):
    """torch.nn.RNN / GRU / LSTM: inference under torch.no_grad(), training with autograd."""
    name = "torch"

    def detect(self):
        import torch
        return torch.__version__

    def set_num_threads(self, n):
        import torch
        torch.set_num_threads(n)

    def threads(self):
        import torch
        return torch.get_num_threads()

    def setup(self, cell, data, threads=None):
        import torch
        _, _, input_size = data.x.shape
        hidden_size = data.w_hh.shape[1]
        layer_class = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
        layer = layer_class(input_size, hidden_size, dtype=torch.from_numpy(data.x).dtype)
        with torch.no_grad():
            for name, value in (("weight_ih_l0", data.w_ih), ("weight_hh_l0", data.w_hh),
                                ("bias_ih_l0", data.b_ih), ("bias_hh_l0", data.b_hh)):
                getattr(layer, name).copy_(torch.from_numpy(value))
        x = torch.from_numpy(data.x)
        x_train = x.clone().requires_grad_(True)
        states = tuple(torch.from_numpy(s)[None] for s in data.states)   # (1, B, H): L*D = 1
        hx = states if cell == "lstm" else states[0]

        def inference():
            with torch.no_grad():
                return layer(x, hx)[0].numpy()

        def training():
            layer.zero_grad(set_to_none=True)
            x_train.grad = None
            layer(x_train, hx)[0].sum().backward()

        return {"inference": inference, "training": training}


class OnnxRuntimeImpl(Impl):
    """ONNX Runtime on a graph with one RNN / GRU / LSTM node (rnnfast._onnx_models); inference only.

    Its CPU RNN kernels exist for float32 only.
    """
    name = "onnxruntime"
    modes = ("inference",)
    dtypes = ("float32",)

    def detect(self):
        import onnx  # noqa: F401  (builds the graph)
        import onnxruntime
        return onnxruntime.__version__

    def set_num_threads(self, n):
        self._threads = n

    def threads(self):
        return getattr(self, "_threads", None)

    def setup(self, cell, data, threads=None):
        from . import _onnx_models
        model = _onnx_models.build_model(cell, data.w_ih, data.w_hh, data.b_ih, data.b_hh)
        session = _onnx_models.make_session(model, threads)
        feeds = _onnx_models.state_feeds(cell, data.x, *data.states)

        def inference():
            return session.run(["Y"], feeds)[0][:, 0]       # Y is (T, D=1, B, H)

        return {"inference": inference}


IMPLS = {impl.name: impl for impl in (
    KernelImpl("rnnfast", "rnnfast.ops"),
    KernelImpl("numpy", "rnnfast.reference"),
    TorchImpl(),
    OnnxRuntimeImpl(),
)}


def detect_impls(names):
    """{name: {"available": True, "version": ...} or {"available": False, "reason": ...}}; never raises."""
    found = {}
    for name in names:
        try:
            found[name] = {"available": True, "version": IMPLS[name].detect()}
        except ImportError as exc:
            found[name] = {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    return found


def prepare(impl_name, cell, shape, dtype="float32", threads=None, seed=0):
    """{mode: callable} for one implementation on one row's data (what the pytest-benchmark suite times)."""
    return IMPLS[impl_name].setup(cell, make_inputs(cell, shape, dtype, seed), threads)


# ---------------------------------------------------------------------------------------------------------
# Environment and machine peak

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags(wanted=("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return None


def _load_average():
    """The 1-minute load average (None where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _cpu_busy_share(seconds=0.5):
    """Share of all CPUs' time spent busy over `seconds` while this process sleeps (Linux /proc/stat; None
    elsewhere): other processes' load right now, which the lagging load average does not tell."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)     # idle + iowait
        return sum(values), idle
    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def _dist_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _config_fact(name):
    """rnnfast._config.<name>() (e.g. openmp_enabled, simd_path) where the build can tell, else None."""
    try:
        config = importlib.import_module("rnnfast._config")
    except ImportError:
        return None
    probe = getattr(config, name, None)
    return probe() if callable(probe) else probe


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keys = ("user_api", "internal_api", "version", "architecture", "num_threads", "prefix", "filepath")
    return [{key: pool.get(key) for key in keys} for pool in threadpool_info()]


def environment(impls=None, threads=None):
    """What decides the numbers on this machine, as a JSON-able dict (call after the peers are imported)."""
    import rnnfast
    env = {var: os.environ[var] for var in ENV_VARS if var in os.environ}
    warnings = []
    if "OPENBLAS_CORETYPE" in env:
        warnings.append(f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} is set: OpenBLAS is pinned to that "
                        "(older) kernel set. Unset it for benchmarks: "
                        "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m rnnfast.bench")
    ops_module = getattr(rnnfast.ops.lstm_forward, "__module__", None)
    if ops_module == "rnnfast.reference":
        warnings.append("rnnfast.ops forwards to the numpy reference (compiled kernels not built)")
    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    busy = _cpu_busy_share()
    if busy is not None and busy >= BUSY_SHARE:
        warnings.append(f"the cpus were {100 * busy:.0f}% busy before the run: other processes compete for "
                        f"the {usable_cpus} cpus, and multi-threaded runs (OpenMP teams above all) suffer most "
                        "from that; rerun on a quiet machine before quoting numbers")
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "load_average": _load_average(),
        "cpu_busy_share": busy,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads_requested": threads,
        "threads": {name: IMPLS[name].threads() for name in (impls or {}) if impls[name]["available"]},
        "openmp": None if _config_fact("openmp_enabled") is None else bool(_config_fact("openmp_enabled")),
        "simd": _config_fact("simd_path"),
        "rnnfast_ops": ops_module,
        "blas": _blas_info(),
        "versions": {"rnnfast": rnnfast.__version__,
                     **{name: _dist_version(name)
                        for name in ("numpy", "scipy", "threadpoolctl", "torch", "onnxruntime", "onnx")}},
        "impls": impls or {},
        "env": env,
        "warnings": warnings,
    }


def measure_gemm_peak(dtype="float32", n=2048, reps=5):
    """Best GFLOP/s of an n x n x n numpy matmul (SGEMM for float32, DGEMM for float64) in this process."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    np.matmul(a, b, out=c)   # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best / 1e9


# ---------------------------------------------------------------------------------------------------------
# Timing

class Progress:
    """One \\r-updated status line on stderr, rate-limited so it never costs measurable time."""

    def __init__(self, enabled=True, min_interval=0.2):
        self.enabled = enabled
        self.min_interval = min_interval
        self._last = 0.0
        self._width = 0

    def update(self, text, force=False):
        now = time.perf_counter()
        if not self.enabled or (not force and now - self._last < self.min_interval):
            return
        self._last = now
        sys.stderr.write("\r" + text.ljust(self._width))
        sys.stderr.flush()
        self._width = len(text)

    def clear(self):
        if self.enabled and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()
            self._width = 0


def time_interleaved(calls, budget_s, max_repeats, rounds, cooldown_s=COOLDOWN_S, repeats=None,
                     status=lambda text, force=False: None, settle_s=SETTLE_S):
    """Time each callable of `calls` ({name: fn}); return {name: [seconds of one call, ...]}.

    One timed warm-up call per implementation estimates its cost; each then gets
    min(max_repeats, budget_s / cost) timed calls (at least 1), or exactly `repeats`. So a slow implementation
    (the numpy reference on big training) is bounded by time while fast ones get many samples.
    The timed calls are spread over `rounds` interleaved rounds: round k visits every implementation once,
    starting at a rotated position, so drift of a shared machine hits all alike. A visit is a pause of
    `cooldown_s` (other libraries' spinning threads go to sleep), untimed calls for `settle_s` (at least one)
    if the call is cheap (SETTLE_CALL_MAX_S), then that implementation's share of timed calls back to back.
    """
    names = list(calls)
    cost, wanted = {}, {}
    for name in names:
        status(f"{name} warm-up", force=True)
        start = time.perf_counter()
        calls[name]()
        cost[name] = time.perf_counter() - start
        wanted[name] = repeats or max(1, min(max_repeats, int(budget_s / max(cost[name], 1e-9))))
    n_rounds = max(1, min(rounds, max(wanted.values())))
    per_visit = {name: -(-wanted[name] // n_rounds) for name in names}
    samples = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for k in range(n_rounds):
            for name in names[k % len(names):] + names[:k % len(names)]:
                todo = min(per_visit[name], wanted[name] - len(samples[name]))
                if todo <= 0:
                    continue
                status(f"{name} round {k + 1}/{n_rounds}")
                time.sleep(cooldown_s)
                if cost[name] < SETTLE_CALL_MAX_S:
                    settled = time.perf_counter() + settle_s
                    for _ in range(SETTLE_MAX_CALLS):
                        calls[name]()
                        if time.perf_counter() >= settled:
                            break
                for _ in range(todo):
                    start = time.perf_counter()
                    calls[name]()
                    samples[name].append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def compare_outputs(outputs):
    """{name: max |y - y_baseline|} against the first entry of `outputs` (rnnfast when it runs); inf when
    the shapes differ, nan when an output has NaNs."""
    baseline = np.asarray(next(iter(outputs.values())), dtype=np.float64)

    def max_abs_diff(y):
        y = np.asarray(y, dtype=np.float64)
        if y.shape != baseline.shape:
            return float("inf")
        return float(np.max(np.abs(y - baseline))) if y.size else 0.0

    return {name: max_abs_diff(y) for name, y in outputs.items()}


# ---------------------------------------------------------------------------------------------------------
# Output

class Table:
    """Fixed-width columns [(title, width, format(row) -> str)]: the first n_text left-aligned, the rest
    (numbers) right-aligned."""

    def __init__(self, columns, n_text):
        self.columns = columns
        self.n_text = n_text

    def header(self):
        return "  ".join(self._align(title, width, i) for i, (title, width, _) in enumerate(self.columns))

    def line(self, row):
        return "  ".join(self._align(fmt(row), width, i) for i, (_, width, fmt) in enumerate(self.columns))

    def _align(self, text, width, index):
        return text.ljust(width) if index < self.n_text else text.rjust(width)


def _num(value, fmt):
    return "-" if value is None else format(value, fmt)


def _check_text(row):
    if row["max_abs_diff"] is None:
        return "-"
    return ("ok " if row["agrees"] else "MISMATCH ") + format(row["max_abs_diff"], ".1e")


ROW_TABLE = Table([
    ("cell", 4, lambda r: r["cell"]),
    ("config", 6, lambda r: r["config"]),
    ("mode", 9, lambda r: r["mode"]),
    ("impl", 11, lambda r: r["impl"]),
    ("median ms", 10, lambda r: _num(r["ms"], ".3f")),
    ("GFLOP/s", 8, lambda r: _num(r["gflops"], ".2f")),
    ("peak %", 6, lambda r: _num(100 * r["peak_share"], ".1f")),
    ("calls", 5, lambda r: str(r["repeats"])),
    ("spread %", 8, lambda r: _num(r["spread"] and 100 * r["spread"], ".1f")),
    ("rnnfast x", 9, lambda r: _num(r["speedup_of_rnnfast"], ".2f")),
    ("check (max|dy|)", 16, lambda r: _check_text(r)),
], n_text=4)


def format_header(header):
    """The environment block printed above the table."""
    gemm = header["gemm"]
    lines = ["rnnfast benchmark  " + header["date"],
             f"cpu        {header['cpu']}  ({header['usable_cpus']} usable of {header['logical_cpus']} logical "
             f"cpus; flags: {' '.join(header['cpu_flags'] or ['?'])})",
             f"python     {header['python']}  {header['platform']}",
             f"load       cpus {_num(header['cpu_busy_share'] and 100 * header['cpu_busy_share'], '.0f')}% busy "
             f"just before the run; 1-minute load average {_num(header['load_average'], '.2f')}",
             "versions   " + "  ".join(f"{k} {v}" for k, v in header["versions"].items() if v),
             "threads    " + "  ".join(f"{k}={'default' if v is None else v}"
                                     for k, v in header["threads"].items())
             + f"  (requested: {header['threads_requested'] or 'none'})",
             "openmp     " + {True: "on", False: "off", None: "unknown"}[header["openmp"]],
             f"rnnfast    ops from {header['rnnfast_ops']}; simd path {header['simd'] or 'unknown'}"]
    for pool in header["blas"] or []:
        lines.append(f"threadpool {pool['internal_api']} {pool['version'] or ''} ({pool['user_api']}) "
                     f"architecture={pool['architecture']} threads={pool['num_threads']}  {pool['filepath']}")
    if header["blas"] is None:
        lines.append("threadpool unknown (threadpoolctl not installed)")
    if header["env"]:
        lines.append("env        " + "  ".join(f"{k}={v}" for k, v in header["env"].items()))
    for name, info in header["impls"].items():
        if not info["available"]:
            lines.append(f"missing    {name}: {info['reason']}")
        elif "skipped" in info:
            lines.append(f"skipped    {name}: {info['skipped']}")
    lines.append(f"peak       {gemm['name']} {gemm['gflops']:.1f} GFLOP/s (numpy matmul n={gemm['n']}, "
                 f"best of {gemm['reps']})")
    timing = header["timing"]
    lines.append(f"timing     {timing['rounds']} interleaved rounds, {timing['cooldown_s']} s pause and "
                 f"{timing['settle_s']} s of untimed calls before each turn, up to {timing['max_repeats']} "
                 f"calls or {timing['budget_s']} s per implementation and row"
                 + (f", exactly {timing['repeats']} calls" if timing["repeats"] else ""))
    lines.append("columns    median of the timed calls; GFLOP/s with forward 2*T*B*(I+H)*G*H, training 3x; "
                 f"peak % of the {gemm['name']} peak; spread = (p75-p25)/median; "
                 "rnnfast x = this impl's ms / rnnfast's ms (>1: rnnfast faster); check vs rnnfast's output")
    for warning in header["warnings"]:
        lines.append("WARNING    " + warning)
    return "\n".join(lines)


def summary_table(rows, peers):
    """Speed-up of rnnfast over each peer per row, as a second Table."""
    by_row = {}
    for row in rows:
        by_row.setdefault((row["cell"], row["config"], row["mode"]), {})[row["impl"]] = row
    table = Table([("cell", 4, lambda k: k[0]), ("config", 6, lambda k: k[1]), ("mode", 9, lambda k: k[2])]
                  + [(f"vs {peer}", max(8, len(peer) + 3),
                      lambda k, p=peer: _num(by_row[k].get(p, {}).get("speedup_of_rnnfast"), ".2f"))
                     for peer in peers], n_text=3)
    return "\n".join([table.header()] + [table.line(key) for key in by_row])


def plot_rows(rows, path, peak_gflops, gemm_name):
    """Bar chart of GFLOP/s per implementation, grouped by cell/config/mode (matplotlib imported here)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["cell"], r["config"], r["mode"]) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    value = {(r["cell"], r["config"], r["mode"], r["impl"]): r["gflops"] for r in rows}
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(groups) * max(1, len(impls)) / 2), 5))
    for j, impl in enumerate(impls):
        xs = [i + (j - (len(impls) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [value.get((*g, impl), 0.0) for g in groups], width, label=impl)
    ax.axhline(peak_gflops, color="k", linestyle="--", linewidth=1, label=f"{gemm_name} peak")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{c}\n{cfg}\n{'train' if m == 'training' else 'infer'}" for c, cfg, m in groups],
                       fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("GFLOP/s (log scale)")
    ax.set_title("rnnfast benchmark: GFLOP/s per implementation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# Command line

def _csv(choices):
    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (got {text!r})")
        return items
    return parse


def _shape(text):
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,I,H as four positive integers, got {text!r}")
    return shape


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m rnnfast.bench",
        description="Time rnnfast, its numpy reference and the installed peers side by side (interleaved "
                    "rounds, medians), as ms, GFLOP/s and share of this machine's GEMM peak. For numbers worth "
                    "quoting: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m rnnfast.bench")
    parser.add_argument("--cells", type=_csv(CELLS), default=list(CELLS),
                        help=f"comma list of {','.join(CELLS)} (default: all)")
    parser.add_argument("--configs", type=_csv(tuple(CONFIGS)), default=None,
                        help=f"comma list of {', '.join(f'{k}{v}' for k, v in CONFIGS.items())} as (T,B,I,H) "
                             "(default: all; --quick: lat,mid)")
    parser.add_argument("--shape", type=_shape, default=None,
                        help="a custom T,B,I,H, run as config 'custom' (alone unless --configs is given too)")
    parser.add_argument("--modes", type=_csv(MODES), default=list(MODES),
                        help=f"comma list of {','.join(MODES)} (default: both)")
    parser.add_argument("--impls", type=_csv(tuple(IMPLS)), default=list(IMPLS),
                        help=f"comma list of {','.join(IMPLS)} (default: all; peers not installed are reported "
                             "missing)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for rnnfast, torch, onnxruntime (intra-op; inter-op 1) and the BLAS")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--quick", action="store_true", help="configs lat,mid and fewer calls: under a minute")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timing per implementation per row (default: 2.5; --quick: 0.25)")
    parser.add_argument("--max-repeats", type=int, default=None,
                        help="cap on timed calls per implementation per row (default: 100; --quick: 15)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="exactly this many timed calls per implementation per row (no adaptation)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds the timed calls are spread over (default: 5; --quick: 2)")
    parser.add_argument("--cooldown", type=float, default=COOLDOWN_S,
                        help=f"seconds of pause before each implementation's turn (default: {COOLDOWN_S})")
    parser.add_argument("--settle", type=float, default=SETTLE_S,
                        help="seconds of untimed calls after the pause, for calls under "
                             f"{SETTLE_CALL_MAX_S} s; at least one (default: {SETTLE_S})")
    parser.add_argument("--peak-size", type=int, default=2048, help="n of the n x n x n GEMM peak measurement")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs and weights")
    parser.add_argument("--json", metavar="PATH", help="write {'header': ..., 'rows': [...]} to PATH")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of GFLOP/s (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    for option in ("repeats", "rounds", "max_repeats"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1")
    for option in ("cooldown", "settle"):
        if getattr(args, option) < 0:
            parser.error(f"--{option} must be >= 0")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    configs = {}
    if args.configs or not args.shape:
        names = args.configs or (QUICK_CONFIGS if args.quick else tuple(CONFIGS))
        configs.update((name, CONFIGS[name]) for name in names)
    if args.shape:
        configs["custom"] = args.shape
    args.config_shapes = configs
    speed = "quick" if args.quick else "full"
    args.budget = BUDGET_S[speed] if args.budget is None else args.budget
    args.max_repeats = MAX_REPEATS[speed] if args.max_repeats is None else args.max_repeats
    args.rounds = ROUNDS[speed] if args.rounds is None else args.rounds
    args.peak_reps = PEAK_REPS[speed]
    return args


def run(args, out=None):
    """Run the benchmark described by parsed `args`; print the table to `out` (stdout); return the document
    {"header": {...}, "rows": [...]}."""
    out = out or sys.stdout
    impls = detect_impls(args.impls)
    # Registry order, so rnnfast (when selected) is the baseline of the output check and comes first.
    running = [name for name in IMPLS if name in impls and impls[name]["available"]]
    for name in running:
        if args.dtype not in IMPLS[name].dtypes:
            impls[name]["skipped"] = f"no {args.dtype} kernels"
        elif not set(IMPLS[name].modes) & set(args.modes):
            impls[name]["skipped"] = f"no {' or '.join(args.modes)} mode"
    running = [name for name in running if "skipped" not in impls[name]]
    if args.threads is not None:
        for name in running:
            IMPLS[name].set_num_threads(args.threads)
    header = environment(impls, args.threads)
    gemm_name = "SGEMM" if args.dtype == "float32" else "DGEMM"
    progress = Progress(enabled=not args.quiet)
    progress.update(f"measuring the {gemm_name} peak ...", force=True)
    peak = measure_gemm_peak(args.dtype, args.peak_size, args.peak_reps)
    progress.clear()
    header.update(dtype=args.dtype, gemm={"name": gemm_name, "n": args.peak_size, "reps": args.peak_reps,
                                          "gflops": peak},
                  timing={"budget_s": args.budget, "max_repeats": args.max_repeats, "repeats": args.repeats,
                          "rounds": args.rounds, "cooldown_s": args.cooldown, "settle_s": args.settle})
    print(format_header(header), file=out)
    print("", file=out)
    rows = []
    if not running:
        print("nothing to run: none of the selected implementations is available for these options", file=out)
        return {"header": header, "rows": rows}
    print(ROW_TABLE.header(), file=out, flush=True)
    jobs = [(cell, config, mode) for cell in args.cells for config in args.config_shapes for mode in args.modes]
    job_index = 0
    for cell in args.cells:
        for config, shape in args.config_shapes.items():
            progress.update(f"[{job_index + 1}/{len(jobs)}] {cell} {config} setup ...", force=True)
            data = make_inputs(cell, shape, args.dtype, args.seed)
            setups = {name: IMPLS[name].setup(cell, data, args.threads) for name in running}
            diffs = compare_outputs({name: setups[name]["inference"]() for name in running})
            del data
            for mode in args.modes:
                job_index += 1
                calls = {name: setups[name][mode] for name in running if mode in setups[name]}
                if not calls:
                    continue
                label = f"[{job_index}/{len(jobs)}] {cell} {config} {mode}"
                samples = time_interleaved(
                    calls, args.budget, args.max_repeats, args.rounds, args.cooldown, args.repeats,
                    status=lambda text, force=False: progress.update(f"{label} {text}", force),
                    settle_s=args.settle)
                new_rows = make_rows(cell, config, shape, mode, args.dtype, samples, diffs, peak)
                progress.clear()
                for row in new_rows:
                    print(ROW_TABLE.line(row), file=out, flush=True)
                rows.extend(new_rows)
            del setups
            print("", file=out, flush=True)
    progress.clear()

    peers = [name for name in running if name != "rnnfast"]
    header["load_average_end"] = _load_average()
    if "rnnfast" in running and peers and rows:
        print("rnnfast speed-up over each implementation (its median ms / rnnfast's; > 1: rnnfast faster)",
              file=out)
        print(summary_table(rows, peers), file=out, flush=True)
    return {"header": header, "rows": rows}


def make_rows(cell, config, shape, mode, dtype, samples, diffs, peak_gflops):
    """One JSON-able row per implementation; required keys: impl, cell, config, mode, dtype, ms, gflops,
    peak_share (a fraction of the GEMM peak)."""
    T, B, I, H = shape
    n_flops = flops(cell, shape, mode)
    medians = {name: statistics.median(times) for name, times in samples.items()}
    rnnfast_s = medians.get("rnnfast")
    rows = []
    for name, times in samples.items():
        seconds = medians[name]
        quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [seconds] * 3
        diff = diffs.get(name) if len(diffs) > 1 else None
        row = {"impl": name, "cell": cell, "config": config, "mode": mode, "dtype": dtype,
               "ms": seconds * 1e3, "gflops": n_flops / seconds / 1e9,
               "peak_share": n_flops / seconds / 1e9 / peak_gflops,
               "T": T, "B": B, "I": I, "H": H, "G": GATES[cell], "flops": n_flops,
               "repeats": len(times), "min_ms": min(times) * 1e3,
               "spread": (quartiles[2] - quartiles[0]) / seconds if len(times) > 1 else None,
               "times_ms": [t * 1e3 for t in times],
               "speedup_of_rnnfast": seconds / rnnfast_s if rnnfast_s else None,
               "max_abs_diff": diff,
               "agrees": None if diff is None else bool(diff <= AGREEMENT_ATOL[dtype])}
        if name == "rnnfast":
            row["speedup_vs"] = {other: medians[other] / seconds for other in medians if other != name}
        rows.append(row)
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=args.threads):
            result = run(args)
    else:
        result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot and result["rows"]:
        plot_rows(result["rows"], args.plot, result["header"]["gemm"]["gflops"], result["header"]["gemm"]["name"])
        print(f"wrote {args.plot}")
    bad = sorted({(r["cell"], r["config"], r["impl"]) for r in result["rows"] if r["agrees"] is False})
    if bad:
        print("ERROR: outputs disagree with rnnfast's beyond a loose tolerance "
              f"({AGREEMENT_ATOL[args.dtype]:g}) for: " + ", ".join(" ".join(b) for b in bad)
              + ". A conversion or a kernel is wrong; these timings mean nothing.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
