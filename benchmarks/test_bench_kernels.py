"""One benchmark per (cell, config, mode, implementation) of the harness's matrix.

Ids read e.g. `test_kernel[lstm-mid-training-torch]`; groups are "cell config mode", so
`pytest-benchmark compare` lines up rnnfast and its peers row by row, and one implementation across commits.
"""
import pytest

from rnnfast import bench


@pytest.mark.parametrize("impl", list(bench.IMPLS))
@pytest.mark.parametrize("mode", bench.MODES)
@pytest.mark.parametrize("config", list(bench.CONFIGS))
@pytest.mark.parametrize("cell", bench.CELLS)
def test_kernel(benchmark, bench_session, bench_env, cell, config, mode, impl):
    call = bench_session.calls(impl, cell, config, mode)
    shape = bench.CONFIGS[config]
    n_flops = bench.flops(cell, shape, mode)
    T, B, I, H = shape
    benchmark.group = f"{cell} {config} {mode}"
    benchmark.extra_info.update(
        impl=impl, cell=cell, config=config, mode=mode, dtype=bench_session.dtype,
        T=T, B=B, I=I, H=H, G=bench.GATES[cell], flops=n_flops,
        env={key: bench_env[key] for key in ("cpu", "usable_cpus", "threads", "threads_requested", "openmp",
                                             "rnnfast_ops", "blas", "versions", "env", "cpu_busy_share",
                                             "warnings", "gemm_peak_gflops")})
    benchmark(call)
    stats = getattr(benchmark.stats, "stats", None) if benchmark.stats else None
    if stats is not None:
        gflops = n_flops / stats.median / 1e9
        benchmark.extra_info.update(gflops_median=gflops, peak_share=gflops / bench_env["gemm_peak_gflops"])
