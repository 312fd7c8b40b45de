/* What bounds a batch-1 step at H = 256 (benchmarks/RESULTS.md, section "Batch 1"): the loops of one thread's
 * share of a step, alone, on data of the sizes the kernel has there.
 *
 *   gcc -O3 -march=native -o /tmp/batch1_bounds benchmarks/batch1_bounds.c && /tmp/batch1_bounds [K] [groups]
 *
 * 1. row:          the recurrent row, h @ panels (k-major, 4 vectors of units a k), 2 groups at a time;
 * 2. row + tiles:  the row, then the input projection's 6-row tiles (1/6 of every group's tile a step);
 * 3. interleaved:  the same work in one loop: one k step of the tile every few k steps of the row;
 * 4. in place:     the row as dot products along w_hh's own rows (no pack), 16 rows at a time;
 * 5. pack:         the transposing pack of one thread's half of a gate-major weight matrix into panels,
 *                  sources in L3 (cycling through 8 matrices) and in L2 (one matrix). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define V 16
typedef float vec __attribute__((vector_size(64)));
typedef int32_t ivec __attribute__((vector_size(64)));

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define NV 4 /* vectors of units a panel row */
__attribute__((noinline)) static void row2(const float *h, const float *p, long gs, int K, float *out) {
    vec c[2][NV] = {{{0}}};
    for (int k = 0; k < K; k++)
        for (int g = 0; g < 2; g++)
            for (int v = 0; v < NV; v++) c[g][v] += h[k] * ((const vec *)(p + g * gs + (long)k * NV * V))[v];
    for (int g = 0; g < 2; g++)
        for (int v = 0; v < NV; v++) ((vec *)out)[g * NV + v] = c[g][v];
}

__attribute__((noinline)) static void tile6(const float *x, int ldx, const float *p, int k0, int k1, float *acc) {
    vec c[6][NV];
    for (int r = 0; r < 6; r++)
        for (int v = 0; v < NV; v++) c[r][v] = ((vec *)acc)[r * NV + v];
    for (int k = k0; k < k1; k++) {
        const vec *w = (const vec *)(p + (long)k * NV * V);
        for (int r = 0; r < 6; r++)
            for (int v = 0; v < NV; v++) c[r][v] += x[r * ldx + k] * w[v];
    }
    for (int r = 0; r < 6; r++)
        for (int v = 0; v < NV; v++) ((vec *)acc)[r * NV + v] = c[r][v];
}

/* one group's row over all K, with tile k steps [t0, t1) spread evenly over it */
__attribute__((noinline)) static void row_tile(const float *h, const float *p, int K, float *out, const float *x,
                                               int ldx, const float *pi, int t0, int t1, float *acc) {
    vec c[6][NV], d[NV] = {0};
    for (int r = 0; r < 6; r++)
        for (int v = 0; v < NV; v++) c[r][v] = ((vec *)acc)[r * NV + v];
    const int every = t1 > t0 ? K / (t1 - t0) : K + 1;
    int kt = t0;
    for (int k = 0; k < K; k++) {
        for (int v = 0; v < NV; v++) d[v] += h[k] * ((const vec *)(p + (long)k * NV * V))[v];
        if ((k + 1) % every == 0 && kt < t1) {
            const vec *w = (const vec *)(pi + (long)kt * NV * V);
            for (int r = 0; r < 6; r++)
                for (int v = 0; v < NV; v++) c[r][v] += x[r * ldx + kt] * w[v];
            kt++;
        }
    }
    for (; kt < t1; kt++) {
        const vec *w = (const vec *)(pi + (long)kt * NV * V);
        for (int r = 0; r < 6; r++)
            for (int v = 0; v < NV; v++) c[r][v] += x[r * ldx + kt] * w[v];
    }
    for (int r = 0; r < 6; r++)
        for (int v = 0; v < NV; v++) ((vec *)acc)[r * NV + v] = c[r][v];
    for (int v = 0; v < NV; v++) ((vec *)out)[v] = d[v];
}

/* 16 rows of W (row length K) dotted with h: 16 partial sums, then a transposing horizontal sum (lane order
 * of the result permuted: it does not matter for the time) */
__attribute__((noinline)) static void dot16(const float *W, int K, const float *h, float *out) {
    static const ivec lo8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
                      hi8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
                      lo4 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
                      hi4 = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
                      lo2 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
                      hi2 = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
                      lo1 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
                      hi1 = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
    vec a[16] = {0};
    for (int k = 0; k < K; k += V)
        for (int r = 0; r < 16; r++) a[r] += *(const vec *)(W + (long)r * K + k) * *(const vec *)(h + k);
    for (int r = 0; r < 8; r++) a[r] = __builtin_shuffle(a[r], a[r + 8], lo8) + __builtin_shuffle(a[r], a[r + 8], hi8);
    for (int r = 0; r < 4; r++) a[r] = __builtin_shuffle(a[r], a[r + 4], lo4) + __builtin_shuffle(a[r], a[r + 4], hi4);
    for (int r = 0; r < 2; r++) a[r] = __builtin_shuffle(a[r], a[r + 2], lo2) + __builtin_shuffle(a[r], a[r + 2], hi2);
    *(vec *)out = __builtin_shuffle(a[0], a[1], lo1) + __builtin_shuffle(a[0], a[1], hi1);
}

/* as the kernel's (common.h): unpacks within the 128-bit lanes, then a 4 x 4 transpose of the lanes */
static void transpose(vec r[V]) {
    const ivec ulo = {0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29};
    const ivec uhi = {2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31};
    const ivec dlo = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    const ivec dhi = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
    const ivec q1 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const ivec q2 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const ivec q3 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const ivec q4 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
    static const int col[4] = {0, 2, 1, 3};
    vec u[V], t[V];
    for (int i = 0; i < V; i += 2) u[i] = __builtin_shuffle(r[i], r[i + 1], ulo), u[i + 1] = __builtin_shuffle(r[i], r[i + 1], uhi);
    for (int i = 0; i < V; i += 4)
        for (int j = 0; j < 2; j++)
            t[i + j] = __builtin_shuffle(u[i + j], u[i + j + 2], dlo), t[i + j + 2] = __builtin_shuffle(u[i + j], u[i + j + 2], dhi);
    for (int b = 0; b < 4; b++) {
        const vec w1 = __builtin_shuffle(t[b], t[4 + b], q1), w2 = __builtin_shuffle(t[b], t[4 + b], q2);
        const vec w3 = __builtin_shuffle(t[8 + b], t[12 + b], q1), w4 = __builtin_shuffle(t[8 + b], t[12 + b], q2);
        r[col[b]] = __builtin_shuffle(w1, w3, q3), r[4 + col[b]] = __builtin_shuffle(w1, w3, q4);
        r[8 + col[b]] = __builtin_shuffle(w2, w4, q3), r[12 + col[b]] = __builtin_shuffle(w2, w4, q4);
    }
}

/* groups [0, ng) of a (G*H, K) gate-major matrix into panels of G vectors a k */
__attribute__((noinline)) static void pack(const float *src, int G, long H, long K, long ng, float *dst) {
    for (long grp = 0; grp < ng; grp++)
        for (long k = 0; k + V <= K; k += V)
            for (int g = 0; g < G; g++) {
                vec r[V];
                const float *p = src + ((long)g * H + grp * V) * K + k;
                for (int l = 0; l < V; l++, p += K) r[l] = *(const vec *)p;
                transpose(r);
                float *d = dst + (grp * K * G + g) * V + k * G * V;
                for (int i = 0; i < V; i++, d += G * V) *(vec *)d = r[i];
            }
}

static float *filled(long n) {
    float *a = aligned_alloc(64, (size_t)n * sizeof(float));
    for (long i = 0; i < n; i++) a[i] = 1e-3f * (float)(i % 7);
    return a;
}

int main(int argc, char **argv) {
    /* default LSTM H = 256: a thread's 8 groups of 4 x 16 units; K and the groups from the command line */
    const int K = argc > 1 ? atoi(argv[1]) : 256, G = argc > 2 ? atoi(argv[2]) & ~1 : 8, N = 20000;
    if (K < 16 || K % 16 || G < 2) return fprintf(stderr, "usage: batch1_bounds [K (multiple of 16)] [groups (even)]\n"), 2;
    const long gs = (long)K * NV * V;
    float *wh = filled(gs * G), *wi = filled(gs * G), *x = filled(6L * K), *h = filled(K), *o = filled(64L * G);
    float *acc = filled(24L * V * G);
    double best[4] = {1e9, 1e9, 1e9, 1e9};
    for (int rep = 0; rep < 5; rep++) {
        double t = now();
        for (int n = 0; n < N; n++)
            for (int g = 0; g < G; g += 2) row2(h, wh + g * gs, gs, K, o + g * NV * V);
        if ((t = now() - t) < best[0]) best[0] = t;
        t = now();
        for (int n = 0; n < N; n++) {
            for (int g = 0; g < G; g += 2) row2(h, wh + g * gs, gs, K, o + g * NV * V);
            for (int g = 0; g < G; g++) tile6(x, K, wi + g * gs, K * (n % 6) / 6, K * (n % 6 + 1) / 6, acc + g * 24 * V);
        }
        if ((t = now() - t) < best[1]) best[1] = t;
        t = now();
        for (int n = 0; n < N; n++)
            for (int g = 0; g < G; g++)
                row_tile(h, wh + g * gs, K, o + g * NV * V, x, K, wi + g * gs, K * (n % 6) / 6, K * (n % 6 + 1) / 6,
                         acc + g * 24 * V);
        if ((t = now() - t) < best[2]) best[2] = t;
        t = now();
        for (int n = 0; n < N; n++)
            for (int r = 0; r < G * NV * V; r += 16) dot16(wh + (long)r * K, K, h, o);
        if ((t = now() - t) < best[3]) best[3] = t;
    }
    const double bytes = (double)gs * G * sizeof(float);
    printf("K = %d, %d groups (%.0f KiB of w_hh), us a step (GB/s of w_hh):\n", K, G, bytes / 1024);
    printf("  row %.2f (%.0f)  row + tiles %.2f  interleaved %.2f  in place %.2f (%.0f)\n", best[0] / N * 1e6,
           bytes / (best[0] / N) / 1e9, best[1] / N * 1e6, best[2] / N * 1e6, best[3] / N * 1e6,
           bytes / (best[3] / N) / 1e9);
    /* the pack: LSTM H = 256 (4 gates), half the groups (one thread's share of a 2-thread call) */
    const long H = K, n = 4 * H * K;
    for (int nm = 8; nm >= 1; nm /= 8) {
        float *src[8], *dst[8];
        for (int m = 0; m < nm; m++) src[m] = filled(n), dst[m] = filled(n);
        double bp = 1e9;
        const int R = 400 / nm + 1;
        for (int rep = 0; rep < 5; rep++) {
            double t = now();
            for (int i = 0; i < R; i++)
                for (int m = 0; m < nm; m++) pack(src[m], 4, H, K, H / V / 2, dst[m]);
            if ((t = (now() - t) / R / nm) < bp) bp = t;
        }
        printf("pack of half a 4 x %ld x %d matrix (%ld KiB read, as much written), sources in %s: %.1f us, %.1f GB/s read\n",
               H, K, n * 2 / 1024, nm > 1 ? "L3" : "L2", bp * 1e6, n * 2.0 / bp / 1e9);
        for (int m = 0; m < nm; m++) free(src[m]), free(dst[m]);
    }
    return 0;
}
