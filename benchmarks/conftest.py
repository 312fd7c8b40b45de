"""pytest-benchmark suite over the harness's matrix: `pytest benchmarks/ --benchmark-only`.

Everything about an implementation (weights, conversion, the inference and training callables) comes from
rnnfast.bench, so this suite times exactly what `python -m rnnfast.bench` times; only the scheduling differs
(pytest-benchmark times one implementation at a time; the harness interleaves them).
Options: --rnnfast-dtype float32|float64, --rnnfast-threads N.
"""
import functools

import pytest

from rnnfast import bench


def pytest_addoption(parser):
    group = parser.getgroup("rnnfast benchmarks")
    group.addoption("--rnnfast-dtype", choices=bench.DTYPES, default="float32",
                    help="dtype of the benchmarked data (default float32)")
    group.addoption("--rnnfast-threads", type=int, default=None,
                    help="threads for rnnfast, torch, onnxruntime and the BLAS (default: each one's own)")


class Session:
    """The detected implementations, the thread setting and a small cache of set-up rows."""

    def __init__(self, dtype, threads):
        self.dtype = dtype
        self.threads = threads
        self.impls = bench.detect_impls(list(bench.IMPLS))
        if threads is not None:
            for name, info in self.impls.items():
                if info["available"]:
                    bench.IMPLS[name].set_num_threads(threads)
        self.setup = functools.lru_cache(maxsize=8)(self._setup)

    def _setup(self, impl, cell, config):
        return bench.prepare(impl, cell, bench.CONFIGS[config], self.dtype, self.threads)

    def calls(self, impl, cell, config, mode):
        """The callable to time, or a pytest.skip naming why there is none."""
        info = self.impls[impl]
        if not info["available"]:
            pytest.skip(f"{impl} missing: {info['reason']}")
        if mode not in bench.IMPLS[impl].modes:
            pytest.skip(f"{impl} has no {mode} mode")
        if self.dtype not in bench.IMPLS[impl].dtypes:
            pytest.skip(f"{impl} has no {self.dtype} kernels")
        return self.setup(impl, cell, config)[mode]


@pytest.fixture(scope="session")
def bench_session(request):
    dtype = request.config.getoption("--rnnfast-dtype")
    threads = request.config.getoption("--rnnfast-threads")
    if threads is None:
        yield Session(dtype, threads)
        return
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=threads):
        yield Session(dtype, threads)


@pytest.fixture(scope="session")
def bench_env(bench_session):
    """The harness's environment header, plus the GEMM peak for the session's dtype."""
    header = bench.environment(bench_session.impls, bench_session.threads)
    header["gemm_peak_gflops"] = bench.measure_gemm_peak(bench_session.dtype)
    return header


def pytest_benchmark_update_machine_info(config, machine_info):
    """Also keep the BLAS kernels and library versions in the saved file's machine_info."""
    header = bench.environment()
    machine_info["rnnfast"] = {key: header[key] for key in ("cpu", "cpu_flags", "blas", "versions", "env")}
