"""Thread count and build facts: the one place that decides how many threads the kernels use."""
import os
import time
import warnings

from . import _kernels

_ENV = "RNNFAST_NUM_THREADS"


# The CPU count as last read, and when. Every kernel call caps its threads at it; reading the affinity mask
# costs ~0.8 us (a system call and a set), ~10% of a small call's ~9 us, so it is read again only after
# _CPUS_MAX_AGE_S: a changed affinity takes effect within that time.
_CPUS_MAX_AGE_S = 0.5
_cpus_seen = (0, float("-inf"))


def _cpus():
    """CPUs this process may run on."""
    global _cpus_seen
    n, when = _cpus_seen
    now = time.monotonic()
    if now - when < _CPUS_MAX_AGE_S:
        return n
    try:
        n = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without sched_getaffinity
        n = os.cpu_count() or 1
    _cpus_seen = (n, now)
    return n


def _default_threads():
    env = os.environ.get(_ENV, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"{_ENV}: expected a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"{_ENV}: expected a positive integer, got {n}")
        return n
    return _cpus()


_num_threads = _default_threads() if _kernels.openmp_enabled() else 1


_forked_child = False


def _after_fork_in_child():
    # A forked child inherits the parent's OpenMP thread pool in a state GNU libgomp cannot use (a parallel
    # region there hangs for ever): the child runs the kernels on one thread.
    global _num_threads, _forked_child
    _num_threads = 1
    _forked_child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def set_num_threads(n):
    """Set the number of threads rnnfast's kernels use (results do not depend on it, bitwise)."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"n: expected a positive integer, got {type(n).__name__}")
    n = int(n.__index__()) if not isinstance(n, int) else n
    if n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    if _forked_child and n > 1:
        warnings.warn("rnnfast.set_num_threads: this process was forked from one that may have used OpenMP "
                      "threads, which GNU libgomp cannot start again after fork; the kernels stay on 1 thread "
                      "(use the 'spawn' or 'forkserver' start method for threaded workers)", RuntimeWarning,
                      stacklevel=2)
        n = 1
    _num_threads = n if _kernels.openmp_enabled() else 1


def get_num_threads():
    """Number of threads rnnfast's kernels use."""
    return _num_threads


def openmp_enabled():
    return _kernels.openmp_enabled()


def simd_path():
    return _kernels.simd_path()


def blas_info():
    """threadpoolctl's view of the BLAS libraries loaded in this process (numpy's is the one rnnfast uses)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    import numpy  # noqa: F401  (make sure numpy's BLAS is loaded)
    return [i for i in threadpool_info() if i.get("user_api") == "blas"]


def show_config(file=None):
    """Print the version, OpenMP, thread count, SIMD path and the BLAS in use."""
    import numpy
    from . import __version__
    lines = [
        f"rnnfast {__version__}",
        f"  OpenMP:        {'on' if openmp_enabled() else 'off (serial build)'}",
        f"  threads:       {get_num_threads()} (set_num_threads / {_ENV})",
        f"  SIMD path:     {simd_path()}",
        f"  numpy:         {numpy.__version__}",
    ]
    infos = blas_info()
    if not infos:
        lines.append("  BLAS:          unknown (threadpoolctl not installed)")
    for i in infos:
        lines.append(f"  BLAS:          {i.get('internal_api')} {i.get('version')} "
                     f"arch={i.get('architecture')} threads={i.get('num_threads')} ({i.get('filepath')})")
    core = os.environ.get("OPENBLAS_CORETYPE")
    if core:
        lines.append(f"  note:          OPENBLAS_CORETYPE={core} is set: OpenBLAS uses {core} kernels")
    print("\n".join(lines), file=file)
