/* This machine's FMA peak (benchmarks/RESULTS.md): the float32 multiply-adds a core retires a second when it
 * does nothing else, 16 lanes a 512-bit register, 12 independent chains (more than the FMA latency times
 * the FMA units), on 1 thread and on 2. The harness's "peak" is numpy's SGEMM (OpenBLAS), which reaches a
 * part of this; the kernels' GEMM tiles and the share of peak the harness prints are measured against
 * that, this is the ceiling above both.
 *
 *   gcc -O2 -march=native -fopenmp -o /tmp/fma_peak benchmarks/fma_peak.c && /tmp/fma_peak
 */
#include <omp.h>
#include <stdio.h>

typedef float vec __attribute__((vector_size(64)));

static double run(int threads, long n) {
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        float sink = 0;
        const double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            vec b = {0}, c = {0};
            for (int i = 0; i < 16; i++) {
                b[i] = 0.999f;
                c[i] = 1e-4f;
            }
            vec a0 = b, a1 = b + c, a2 = b + 2 * c, a3 = b + 3 * c, a4 = b + 4 * c, a5 = b + 5 * c;
            vec a6 = b + 6 * c, a7 = b + 7 * c, a8 = b + 8 * c, a9 = b + 9 * c, a10 = b + 10 * c, a11 = b + 11 * c;
            __asm__("" : "+v"(b), "+v"(c)); /* not constants: the chains must run */
            for (long i = 0; i < n; i++) {
                a0 = a0 * b + c; a1 = a1 * b + c; a2 = a2 * b + c; a3 = a3 * b + c;
                a4 = a4 * b + c; a5 = a5 * b + c; a6 = a6 * b + c; a7 = a7 * b + c;
                a8 = a8 * b + c; a9 = a9 * b + c; a10 = a10 * b + c; a11 = a11 * b + c;
            }
            const vec s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
            sink += s[0];
        }
        const double t = omp_get_wtime() - t0, gflops = threads * 2.0 * n * 12 * 16 / t / 1e9;
        if (gflops > best) best = gflops;
        if (sink == 12345.f) printf("%g\n", sink); /* keeps the result live */
    }
    return best;
}

int main(void) {
    const long n = 100000000L;
    for (int threads = 1; threads <= 2; threads++) {
        const double g = run(threads, n);
        printf("%d thread%s: %.1f GFLOP/s float32 FMA (%.2f GHz x 32 FMA lanes x 2 flops a core)\n", threads,
               threads > 1 ? "s" : " ", g, g / threads / 64);
    }
    return 0;
}
