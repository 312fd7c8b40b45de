/* Shared pieces of the kernels, compiled once per dtype: kernels.c defines REAL (float or double),
 * V (lanes per vector: 16 floats or 8 doubles, one 512-bit register) and SFX(name) (the dtype suffix),
 * then includes this file and the cell files. No include guard on purpose. */

typedef REAL SFX(vec) __attribute__((vector_size(V * sizeof(REAL))));
#define VEC SFX(vec)
#if RF_IS_FLOAT
typedef int32_t SFX(ivec) __attribute__((vector_size(V * sizeof(REAL))));
#else
typedef int64_t SFX(ivec) __attribute__((vector_size(V * sizeof(REAL))));
#endif
#define IVEC SFX(ivec)

/* The compute kernels the steps call out of line, each starting on a cache line, so that where their loops
 * fall against the fetch blocks does not move with whatever code precedes them in the library. Measured
 * 2026-11-24 (float32, batch 1, T = 100, in-process ABBA in both orders): after three functions were added
 * ahead of them, GRU H = 64 ran 4-13% slower with no change to its code; aligned, -2% to +5% of before. */
#ifndef RF_KERNEL_FN
#define RF_KERNEL_FN __attribute__((noinline, visibility("hidden"), aligned(64)))
#endif

/* x as computed, rounded: a later a * b + x can then only fuse a * b, never the product that made x. Which
 * of two products GCC fuses into a sum depends on the code around it, so the same expression inlined into
 * two callers could round differently (LSTM's c_t = f c + i g differed by an ulp between the inference and
 * the training epilogue). A memory operand: valid in every target clone, whatever its vector registers. */
#ifndef RF_ROUNDED
#define RF_ROUNDED(x) __asm__("" : "+m"(x))
#endif

/* Row tiles of up to 6 rows for groups of 4 panel vectors (one pass, 24 accumulators), else up to 8 rows
 * (3 vectors in one pass, 24 accumulators; 4 or more in passes of 2): each panel vector loaded feeds 6-8
 * rows, and 24 independent FMA chains keep both FMA pipes busy. */
#define RF_RMAX(nv) ((nv) >= 4 ? 6 : 8)

static RF_INLINE VEC SFX(vload)(const REAL *p) { VEC v; memcpy(&v, p, sizeof v); return v; }
static RF_INLINE void SFX(vstore)(REAL *p, VEC v) { memcpy(p, &v, sizeof v); }
/* A whole-vector store past the caches (a training forward's saves that backward will not find in them):
 * the line is neither fetched for the store nor kept. p must start a cache line (else a plain store). */
static RF_INLINE void SFX(vstore_nt)(REAL *p, VEC v) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    /* 16-byte non-temporal stores exist in every target clone; four of them fill one line */
    if (((uintptr_t)p & 63) == 0) {
        _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) {
#if RF_IS_FLOAT
            typedef float part_t __attribute__((vector_size(16)));
            part_t x;
            memcpy(&x, (const char *)&v + 16 * q, 16);
            __builtin_ia32_movntps((float *)p + 4 * q, x);
#else
            typedef double part_t __attribute__((vector_size(16)));
            part_t x;
            memcpy(&x, (const char *)&v + 16 * q, 16);
            __builtin_ia32_movntpd((double *)p + 2 * q, x);
#endif
        }
        return;
    }
#endif
    SFX(vstore)(p, v);
}
static RF_INLINE void SFX(vstore_save)(REAL *p, VEC v, int nt) {
    if (nt) SFX(vstore_nt)(p, v);
    else SFX(vstore)(p, v);
}
/* Tail blocks (H not a multiple of V) touch only their n valid lanes; the rest read as 0. */
static RF_INLINE VEC SFX(vload_n)(const REAL *p, int n) {
    if (n == V) return SFX(vload)(p);
    REAL tmp[V] = {0};
    for (int i = 0; i < n; i++) tmp[i] = p[i];
    return SFX(vload)(tmp);
}
static RF_INLINE void SFX(vstore_n)(REAL *p, VEC v, int n) {
    if (n == V) { SFX(vstore)(p, v); return; }
    REAL tmp[V];
    SFX(vstore)(tmp, v);
    for (int i = 0; i < n; i++) p[i] = tmp[i];
}
/* One vector (the per-unit-block zeros and copies inside the step loops) as a vector store, not a call to
 * memset / memcpy. */
static RF_INLINE void SFX(zero_n)(REAL *p, rf_index n) {
    if (n == V) {
        SFX(vstore)(p, (VEC){0});
        return;
    }
    memset(p, 0, (size_t)n * sizeof(REAL));
}
static RF_INLINE void SFX(copy_n)(REAL *dst, const REAL *src, rf_index n) {
    if (n == V) {
        SFX(vstore)(dst, SFX(vload)(src));
        return;
    }
    memcpy(dst, src, (size_t)n * sizeof(REAL));
}
/* a - 0, not 0 + a: 0 + (-0) is +0, and vsplat(-0.0) must be the sign mask (vtanh_nd). */
static RF_INLINE VEC SFX(vsplat)(REAL a) { VEC v = {0}; return a - v; }
static RF_INLINE VEC SFX(vselect)(IVEC mask, VEC a, VEC b) {
    return (VEC)(((IVEC)a & mask) | ((IVEC)b & ~mask));
}

/* exp(x) = scale * (1 + q) for both dtypes: |x| clamped to where scale = 2^n is a normal number, range
 * reduction x = n ln2 + r (Cody-Waite, ln2 in two parts, the high part short enough that n * ln2_hi is
 * exact), |r| <= ln2/2, and q = e^r - 1 = r + r^2 P(r). float32: P is the Cephes minimax polynomial (~1 ulp);
 * float64: the Taylor series to r^13 (truncation < 1e-17 relative, ~1 ulp). Both are checked against libm in
 * the tests. NaN stays NaN (comparisons with NaN are false, so the clamp lets it through). */
#if RF_IS_FLOAT
#define RF_EXP_LO -86.0f
#define RF_EXP_HI 88.0f
#define RF_EXP_MAGIC 12583039.0f /* 1.5 * 2^23 + 127: adding it rounds to an integer, see vexp_parts */
#define RF_LOG2E 1.44269504088896341f
#define RF_LN2_HI 0.693359375f
#define RF_LN2_LO -2.12194440e-4f
#define RF_MANT_BITS 23
#define RF_EXP_OVERFLOW -88.72f /* below it exp(-x) overflows: the sigmoid is 0 there, as 1/(1+inf) is */
static RF_INLINE VEC SFX(expm1_poly)(VEC r) {
    VEC p = SFX(vsplat)(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    return p * r + 5.0000001201e-1f;
}
#else
#define RF_EXP_LO -708.0
#define RF_EXP_HI 709.0
#define RF_EXP_MAGIC 6755399441056767.0 /* 1.5 * 2^52 + 1023 */
#define RF_LOG2E 1.4426950408889634074
#define RF_LN2_HI 6.93147180369123816490e-01
#define RF_LN2_LO 1.90821492927058770002e-10
#define RF_MANT_BITS 52
#define RF_EXP_OVERFLOW -709.78
static RF_INLINE VEC SFX(expm1_poly)(VEC r) {
    VEC p = SFX(vsplat)(1.0 / 6227020800.0); /* 1/13!, then 1/12! ... 1/2! */
    const REAL c[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
                      1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5};
    _Pragma("GCC unroll 11") for (int i = 0; i < 11; i++) p = p * r + c[i];
    return p;
}
#endif
/* The magic number is 1.5 * 2^mant + bias: t = x log2e + magic lies in [2^mant, 2^(mant+1)), where the float
 * spacing is 1, so its low mantissa bits hold the integer bias + n (in [2, 2 bias], clamp) and shifting t's bits
 * left by mant puts exactly those in the exponent field: scale = 2^n in one shift (the rest of t shifts out).
 * The odd bias does not move the rounding of x log2e to n where it is one FMA: the exact product is never a
 * half-integer for |x| < 2^22 (2^51 in float64). Without FMA (the baseline build) a product rounded to a
 * half-integer may round to the other neighbour, an n one off: |r| is then ln2/2, still the polynomial's
 * range. upper = 0 for an x known to be <= 0 (or NaN): no upper clamp. */
static RF_INLINE VEC SFX(vexp_parts)(VEC x, VEC *scale, int upper) {
    const VEC lo = SFX(vsplat)(RF_EXP_LO), hi = SFX(vsplat)(RF_EXP_HI), magic = SFX(vsplat)(RF_EXP_MAGIC);
    x = SFX(vselect)(x < lo, lo, x);
    if (upper) x = SFX(vselect)(x > hi, hi, x);
    VEC t = x * (REAL)RF_LOG2E + magic;
    VEC n = t - magic;
    VEC r = x - n * (REAL)RF_LN2_HI;
    r = r - n * (REAL)RF_LN2_LO;
    *scale = (VEC)((IVEC)t << RF_MANT_BITS);
    return SFX(expm1_poly)(r) * (r * r) + r;
}
/* The sigmoid as 1 / d: returns d, for a caller that folds the division into another one (vsigmoid
 * divides). Where exp(-x) overflows the sigmoid is 0: below RF_EXP_OVERFLOW d is inf (a select on the
 * denominator, not on the quotient: selecting the quotient, GCC divided twice), except where the kernel
 * threads flush subnormals (RF_FLUSH_SUBNORMALS, x86): there d stays at 1 + e^hi (the clamp), whose
 * reciprocal (and that of d times the tanh denominators in [1, 2], which stays finite) is subnormal and
 * reads as 0 all the same, without the select. */
static RF_INLINE VEC SFX(vsigmoid_den)(VEC x) {
    VEC scale, q = SFX(vexp_parts)(-x, &scale, 1);
#ifdef RF_FLUSH_SUBNORMALS
    return (REAL)1 + (scale + scale * q);
#else
    return SFX(vselect)(x < (REAL)RF_EXP_OVERFLOW, SFX(vsplat)(__builtin_inf()), (REAL)1 + (scale + scale * q));
#endif
}
static RF_INLINE VEC SFX(vsigmoid)(VEC x) { return (REAL)1 / SFX(vsigmoid_den)(x); }
/* tanh|x| = -expm1(-2|x|) / (2 + expm1(-2|x|)): no cancellation near 0, no overflow for large |x|. As *n / d
 * with d in [1, 2] (returned), for a caller that folds the division into another one (vtanh divides). */
static RF_INLINE VEC SFX(vtanh_nd)(VEC x, VEC *n) {
    IVEC signbit = (IVEC)x & (IVEC)SFX(vsplat)(-0.0);
    VEC a = (VEC)((IVEC)x & ~(IVEC)SFX(vsplat)(-0.0));
    VEC scale, q = SFX(vexp_parts)((REAL)-2 * a, &scale, 0);
    VEC em1 = scale * q + (scale - (REAL)1);
    *n = (VEC)((IVEC)((REAL)0 - em1) | signbit); /* 0 - em1, not -em1: tanh(+0) = +0 */
    return (REAL)2 + em1;
}
static RF_INLINE VEC SFX(vtanh)(VEC x) {
    VEC n, d = SFX(vtanh_nd)(x, &n);
    return n / d;
}
#undef RF_EXP_LO
#undef RF_EXP_HI
#undef RF_EXP_MAGIC
#undef RF_LOG2E
#undef RF_LN2_HI
#undef RF_LN2_LO
#undef RF_MANT_BITS
#undef RF_EXP_OVERFLOW
/* relu that keeps NaN (x < 0 is false for NaN). */
static RF_INLINE VEC SFX(vrelu)(VEC x) { return SFX(vselect)(x < 0, SFX(vsplat)(0), x); }

/* out[r][v*V + lane] (+)= sum_k A[r][k*ak] * panel[k][v][lane] for r < R, v < NV: one register tile.
 * Every accumulator is one FMA chain over k in order, so the result does not depend on R; with `acc_in`
 * the chain continues from the values already in out, so splitting k into blocks changes nothing either. */
#ifndef RF_PREFETCH_ROWS
#define RF_PREFETCH_ROWS 32
#endif
/* The k loop of a tile; AHEAD (a constant) adds the next panel's fetch, one line a k step (see below). */
#define RF_TILE_LOOP(RR, NVV, AHEAD)                                                \
        for (rf_index k = 0; k < K; k++) {                                          \
            const REAL *pk = panel + k * ldp;                                       \
            if (AHEAD) {                                                            \
                __builtin_prefetch(pfp, 0, 2);                                      \
                pfp += pfp < pf_end ? 64 : 0;                                       \
            }                                                                       \
            VEC w[NVV];                                                             \
            _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++) {                 \
                __builtin_prefetch(pk + RF_PREFETCH_ROWS * ldp + v * V);           \
                w[v] = SFX(vload)(pk + v * V);                                      \
            }                                                                       \
            _Pragma("GCC unroll 8") for (int r = 0; r < RR; r++) {                  \
                const REAL a = A[r][k * ak];                                        \
                _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++)               \
                    acc[r][v] += a * w[v];                                          \
            }                                                                       \
        }
/* One case of a tile function's switch: the accumulators (from out with acc_in), then the k loop (written
 * between the two halves, not passed as a macro argument: a _Pragma in an argument is expanded early and
 * may not reach its loop), then the store. */
#define RF_TILE_BEGIN(RR, NVV)                                                      \
    case (RR) * 8 + (NVV): {                                                        \
        VEC acc[RR][NVV];                                                           \
        _Pragma("GCC unroll 8") for (int r = 0; r < RR; r++)                        \
        _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++)                       \
            acc[r][v] = acc_in ? SFX(vload)(out + r * ldo + v * V) : (VEC){0};
#define RF_TILE_END(RR, NVV)                                                        \
        _Pragma("GCC unroll 8") for (int r = 0; r < RR; r++)                        \
        _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++)                       \
            SFX(vstore)(out + r * ldo + v * V, acc[r][v]);                          \
        return;                                                                     \
    }
#define RF_TILE(RR, NVV)                                                            \
    RF_TILE_BEGIN(RR, NVV)                                                          \
    if (pf_n > 0) RF_TILE_LOOP(RR, NVV, 1) else RF_TILE_LOOP(RR, NVV, 0)            \
    RF_TILE_END(RR, NVV)
/* The tile shapes (rows, vectors) the tile functions have: up to 8 rows of 1-3 vectors, 6 of 4. */
#define RF_TILE_SHAPES(X)                                                           \
    X(1, 1) X(2, 1) X(3, 1) X(4, 1) X(5, 1) X(6, 1) X(7, 1) X(8, 1)                 \
    X(1, 2) X(2, 2) X(3, 2) X(4, 2) X(5, 2) X(6, 2) X(7, 2) X(8, 2)                 \
    X(1, 3) X(2, 3) X(3, 3) X(4, 3) X(5, 3) X(6, 3) X(7, 3) X(8, 3)                 \
    X(1, 4) X(2, 4) X(3, 4) X(4, 4) X(5, 4) X(6, 4)

/* Out of line and multi-versioned on its own: inlining its 24 variants into every phase would multiply
 * compile time without changing speed (a tile runs K iterations; the call is noise). The panel has row
 * stride ldp, out row stride ldo (both in elements). Along the way it asks for up to pf_n cache lines at pf
 * (into L2, one a k step), the part of the next panel this tile fetches ahead (see step_gemm). */
RF_CLONES RF_KERNEL_FN void SFX(gemm_tile_k)(
        int R, int NV, const REAL *const *A, rf_index ak, rf_index K, const REAL *panel, rf_index ldp,
        int acc_in, REAL *out, rf_index ldo, const char *pf, rf_index pf_n) {
    const char *pfp = pf, *pf_end = pf_n > 0 ? pf + (pf_n - 1) * 64 : pf;
    switch (R * 8 + NV) {
        RF_TILE_SHAPES(RF_TILE)
        default: break;
    }
}

/* The same tile for an A operand packed k-major: row r of the tile at k is a[k * ak + r] (ak >= R), as the
 * weight gradient's strip block holds it. One pointer walks the block and the rows are constant offsets
 * from it; with eight row pointers and a stride the k loop ran out of registers and reloaded some from
 * the stack every k (measured 1 thread, 8 x 3 tile, K = 248, panel in L1: 152 GFLOP/s against 171 with
 * rows read in order). The FMA chains are the tile's, so are the bits. */
/* Its panel rows are the rows of x or hprev read in place, a row (2 KiB at 512 units) apart: 32 rows ahead,
 * the fetched lines fell into the few L1 sets the stride maps to and were evicted before use. Measured 1
 * thread, K = 256, 6 x 4 tile, rows 2 KiB apart in L2: 32 rows ahead 165, 16: 172, 8: 175 GFLOP/s; backward
 * (2 threads, in-process ABBA, same bits) GRU big -1.5%, RNN big -2%, LSTM big -1.2%, GRU mid -2.2%. */
#ifndef RF_PREFETCH_ROWS_P
#define RF_PREFETCH_ROWS_P 8
#endif
#define RF_TILE_PLOOP(RR, NVV)                                                      \
        for (rf_index k = 0; k < K; k++, a += ak) {                                 \
            const REAL *pk = panel + k * ldp;                                       \
            VEC w[NVV];                                                             \
            _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++) {                 \
                __builtin_prefetch(pk + RF_PREFETCH_ROWS_P * ldp + v * V);         \
                w[v] = SFX(vload)(pk + v * V);                                      \
            }                                                                       \
            _Pragma("GCC unroll 8") for (int r = 0; r < RR; r++) {                  \
                const REAL ar = a[r];                                               \
                _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++)               \
                    acc[r][v] += ar * w[v];                                         \
            }                                                                       \
        }
#define RF_TILE_P(RR, NVV) RF_TILE_BEGIN(RR, NVV) RF_TILE_PLOOP(RR, NVV) RF_TILE_END(RR, NVV)
RF_CLONES RF_KERNEL_FN void SFX(gemm_tile_p)(
        int R, int NV, const REAL *a, rf_index ak, rf_index K, const REAL *panel, rf_index ldp, int acc_in,
        REAL *out, rf_index ldo) {
    switch (R * 8 + NV) {
        RF_TILE_SHAPES(RF_TILE_P)
        default: break;
    }
}

/* One row against MG consecutive panel groups (group stride gs) at once, for a thread whose step has a
 * single row (batch 1): the one-row tile has only NV FMA chains, too few to hide the FMA latency, and MG
 * groups give MG*NV. A lone group (MG = 1: a thread's only or last one) runs here too, not in the one-row tile: the
 * tile's prefetch of the panel rows 32 ahead is one extra instruction per load with a single row, and the
 * whole panel is in L1 or L2 at batch 1 anyway (RNN, H = 128 and 64, one group a thread: -10%). Each
 * accumulator is the same chain over k as in the tile above, so the bits are the tile's. out holds the
 * groups one after another, NV vectors each. */
#define RF_ROW1(MG, NVV)                                                            \
    case (MG) * 8 + (NVV): {                                                        \
        VEC acc[MG][NVV];                                                           \
        _Pragma("GCC unroll 4") for (int g = 0; g < MG; g++)                        \
        _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++) acc[g][v] = (VEC){0}; \
        for (rf_index k = k_lo; k < k_hi; k++) {                                    \
            const REAL a = A[k];                                                    \
            _Pragma("GCC unroll 4") for (int g = 0; g < MG; g++) {                  \
                const REAL *pk = panel + g * gs + k * (NVV * V);                    \
                _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++)               \
                    acc[g][v] += a * SFX(vload)(pk + v * V);                        \
            }                                                                       \
        }                                                                           \
        _Pragma("GCC unroll 4") for (int g = 0; g < MG; g++)                        \
        _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++)                       \
            SFX(vstore)(out + (g * NVV + v) * V, acc[g][v]);                        \
        return;                                                                     \
    }
RF_CLONES RF_KERNEL_FN void SFX(gemm_row1)(
        int MG, int NV, const REAL *A, rf_index k_lo, rf_index k_hi, const REAL *panel, rf_index gs, REAL *out) {
    /* the row was written by the other threads at the end of the last step: ask for all its lines at
     * once, not one miss at a time as the k loop reaches them */
    for (rf_index k = k_lo; k < k_hi; k += 64 / sizeof(REAL)) __builtin_prefetch(A + k);
    switch (MG * 8 + NV) {
        RF_ROW1(1, 1) RF_ROW1(2, 1) RF_ROW1(3, 1) RF_ROW1(4, 1)
        RF_ROW1(1, 2) RF_ROW1(2, 2) RF_ROW1(3, 2) RF_ROW1(4, 2)
        RF_ROW1(1, 3) RF_ROW1(2, 3) RF_ROW1(3, 3) RF_ROW1(4, 3)
        RF_ROW1(1, 4) RF_ROW1(2, 4) RF_ROW1(3, 4) RF_ROW1(4, 4)
        default: break;
    }
}

/* Both blocks of a single row's k split (step_gemm) in one loop: [0, K1) into out, [K1, K) into p. Each block
 * is the same chain over k as in its own gemm_row1 call, so the bits are the same, but with up to 4 vectors a
 * call one block's chains alone leave the FMA units waiting on their latency (RNN H = 64 on one thread: 4
 * chains of 64 FMAs a step); two blocks side by side keep twice as many in flight. With row1_k1 splitting a
 * lone group too (2026-11-24, float32, batch 1, T = 100, in-process ABBA): RNN H = 32, 48, 64 -8%; LSTM and
 * GRU H = 16, 32 (which had two blocks already) within +-3%. */
#define RF_ROW1X2(MG, NVV)                                                                   \
    case (MG) * 8 + (NVV): {                                                                 \
        VEC a0[MG][NVV], a1[MG][NVV];                                                        \
        _Pragma("GCC unroll 4") for (int g = 0; g < MG; g++)                                 \
        _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++) a0[g][v] = a1[g][v] = (VEC){0}; \
        const rf_index n = K1 < K - K1 ? K1 : K - K1;                                        \
        rf_index k = 0;                                                                      \
        for (; k < n; k++) {                                                                 \
            const REAL x0 = A[k], x1 = A[K1 + k];                                            \
            _Pragma("GCC unroll 4") for (int g = 0; g < MG; g++) {                           \
                const REAL *p0 = panel + g * gs + k * (NVV * V), *p1 = p0 + K1 * (NVV * V);  \
                _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++) {                      \
                    a0[g][v] += x0 * SFX(vload)(p0 + v * V);                                 \
                    a1[g][v] += x1 * SFX(vload)(p1 + v * V);                                 \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        for (rf_index k0 = k; k0 < K1; k0++) {                                               \
            const REAL x0 = A[k0];                                                           \
            _Pragma("GCC unroll 4") for (int g = 0; g < MG; g++)                             \
            _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++)                            \
                a0[g][v] += x0 * SFX(vload)(panel + g * gs + k0 * (NVV * V) + v * V);       \
        }                                                                                    \
        for (rf_index k1 = K1 + k; k1 < K; k1++) {                                           \
            const REAL x1 = A[k1];                                                           \
            _Pragma("GCC unroll 4") for (int g = 0; g < MG; g++)                             \
            _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++)                            \
                a1[g][v] += x1 * SFX(vload)(panel + g * gs + k1 * (NVV * V) + v * V);       \
        }                                                                                    \
        _Pragma("GCC unroll 4") for (int g = 0; g < MG; g++)                                 \
        _Pragma("GCC unroll 4") for (int v = 0; v < NVV; v++) {                              \
            SFX(vstore)(out + (g * NVV + v) * V, a0[g][v]);                                  \
            SFX(vstore)(p + (g * NVV + v) * V, a1[g][v]);                                    \
        }                                                                                    \
        return;                                                                              \
    }
RF_CLONES RF_KERNEL_FN void SFX(gemm_row1x2)(
        int MG, int NV, const REAL *A, rf_index K1, rf_index K, const REAL *panel, rf_index gs, REAL *out, REAL *p) {
    for (rf_index k = 0; k < K; k += 64 / sizeof(REAL)) __builtin_prefetch(A + k);
    switch (MG * 8 + NV) {
        RF_ROW1X2(1, 1) RF_ROW1X2(2, 1) RF_ROW1X2(3, 1) RF_ROW1X2(4, 1)
        RF_ROW1X2(1, 2) RF_ROW1X2(2, 2) RF_ROW1X2(1, 3) RF_ROW1X2(1, 4)
        default: break;
    }
}
/* the shapes gemm_row1x2 has */
#define RF_ROW1X2_HAS(MG, NV) ((MG) * (NV) <= 4)

/* out (R x NV vectors, rows NV*V apart) (+)= A rows @ a panel group of NV vectors (rows ldp apart): in one pass when the
 * tile has a variant (up to 4 rows; 6 rows of 4 vectors, 8 of 3), else 2 vectors at a time. */
static RF_INLINE void SFX(gemm_tile_x)(int R, int NV, const REAL *const *A, rf_index ak, rf_index K,
                                       const REAL *panel, rf_index ldp, int acc_in, REAL *out, const char *pf,
                                       rf_index pf_n) {
    if (R <= 4 || (NV == 4 && R <= 6) || (NV == 3 && R <= 8)) {
        SFX(gemm_tile_k)(R, NV, A, ak, K, panel, ldp, acc_in, out, NV * V, pf, pf_n);
        return;
    }
    for (int v0 = 0; v0 < NV; v0 += 2)
        SFX(gemm_tile_k)(R, NV - v0 < 2 ? NV - v0 : 2, A, ak, K, panel + v0 * V, ldp, acc_in, out + v0 * V,
                         NV * V, v0 ? NULL : pf, v0 ? 0 : pf_n);
}

/* In-register transpose of V vectors: r[i][l] becomes r[l][i]. A vector is four 128-bit lanes of E = V / 4
 * elements. First within the lanes, as x86's unpacks do it (one stage for doubles, two for floats): after
 * them vector t[E*a + b] holds, in its lane L, rows E*a .. E*a + E - 1 at column E*L + c(b). Then across
 * the lanes, a 4 x 4 transpose of whole lanes (two stages of lane shuffles) over the four row blocks a.
 * Measured 2026-11-25 against the stages of whole-vector two-source permutes it replaced (largest distance
 * first), packing 128 KiB of an LSTM's w_hh alone in a loop (float32, sources in L2): AVX-512 2.2 us against
 * 4.1, AVX2 23.5 against 112. In whole calls (2 threads, in-process ABBA): T = 1, B = 1, LSTM H = 512 -7%,
 * H = 256 -2.4%, GRU H = 128 -2%; at T = 100 within 1%. The result is the same, element for element. */
static RF_INLINE void SFX(transpose)(VEC r[V]) {
    enum { E = V / 4 };
    VEC t[V];
#if RF_IS_FLOAT
    /* rows i, i+1: unpcklps / unpckhps; then rows i, i+2 of that: unpcklpd / unpckhpd (c(b): 0, 2, 1, 3) */
    const IVEC ulo = {0, 16, 1, 17, 4, 20, 5, 21, 8, 24, 9, 25, 12, 28, 13, 29};
    const IVEC uhi = {2, 18, 3, 19, 6, 22, 7, 23, 10, 26, 11, 27, 14, 30, 15, 31};
    const IVEC dlo = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    const IVEC dhi = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
    VEC u[V];
    for (int i = 0; i < V; i += 2) {
        u[i] = __builtin_shuffle(r[i], r[i + 1], ulo);
        u[i + 1] = __builtin_shuffle(r[i], r[i + 1], uhi);
    }
    for (int i = 0; i < V; i += 4)
        for (int j = 0; j < 2; j++) {
            t[i + j] = __builtin_shuffle(u[i + j], u[i + j + 2], dlo);
            t[i + j + 2] = __builtin_shuffle(u[i + j], u[i + j + 2], dhi);
        }
    static const int col[4] = {0, 2, 1, 3};
    const IVEC q1 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const IVEC q2 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const IVEC q3 = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
    const IVEC q4 = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
#else
    /* rows i, i+1: unpcklpd / unpckhpd (c(b) = b) */
    const IVEC ulo = {0, 8, 2, 10, 4, 12, 6, 14}, uhi = {1, 9, 3, 11, 5, 13, 7, 15};
    for (int i = 0; i < V; i += 2) {
        t[i] = __builtin_shuffle(r[i], r[i + 1], ulo);
        t[i + 1] = __builtin_shuffle(r[i], r[i + 1], uhi);
    }
    static const int col[2] = {0, 1};
    const IVEC q1 = {0, 1, 2, 3, 8, 9, 10, 11}, q2 = {4, 5, 6, 7, 12, 13, 14, 15};
    const IVEC q3 = {0, 1, 4, 5, 8, 9, 12, 13}, q4 = {2, 3, 6, 7, 10, 11, 14, 15};
#endif
    /* q1, q2: lanes 0-1 / 2-3 of x then of y; q3, q4: lanes 0 and 2 / 1 and 3 of x then of y */
    _Pragma("GCC unroll 4") for (int b = 0; b < E; b++) {
        const VEC w1 = __builtin_shuffle(t[b], t[E + b], q1), w2 = __builtin_shuffle(t[b], t[E + b], q2);
        const VEC w3 = __builtin_shuffle(t[2 * E + b], t[3 * E + b], q1);
        const VEC w4 = __builtin_shuffle(t[2 * E + b], t[3 * E + b], q2);
        r[col[b]] = __builtin_shuffle(w1, w3, q3);
        r[E + col[b]] = __builtin_shuffle(w1, w3, q4);
        r[2 * E + col[b]] = __builtin_shuffle(w2, w4, q3);
        r[3 * E + col[b]] = __builtin_shuffle(w2, w4, q4);
    }
}

/* Panels of groups g_lo..g_hi. Units along the source's rows (s_k == 1, the forward's weights): a blocked
 * transpose, V row loads, an in-register transpose and V row stores per V x V block, the reads walking
 * along cache lines. Units along its columns (backward's weights, x, the saved states): row by row, each
 * row read from start to end while every group takes its V units from it (a column walk per group read
 * each line from a new page: GRU wide's training forward -5%). */
static RF_INLINE void SFX(pack_groups)(const REAL *src, rf_index s_g, rf_index s_j, rf_index s_k, rf_index Gs,
                                       rf_index N, rf_index K, rf_index ub, rf_index g_lo, rf_index g_hi,
                                       REAL *dst, const int64_t *row_len, rf_index row_B) {
    const rf_index NV = Gs * ub, ld = NV * V;
    if (s_k == 1 && !row_len) {
        for (rf_index grp = g_lo; grp < g_hi; grp++)
            for (rf_index sb = 0; sb < ub; sb++)
                for (rf_index g = 0; g < Gs; g++) {
                    const rf_index j0 = (grp * ub + sb) * V;
                    const int nl = (int)(j0 >= N ? 0 : (N - j0 < V ? N - j0 : V));
                    REAL *d0 = dst + (grp * K * NV + sb * Gs + g) * V;
                    const REAL *s0 = src + g * s_g + j0 * s_j;
                    rf_index k = 0;
                    /* pointers stepped by the strides, not 16 row addresses kept live: GCC spilled those,
                     * and the loop ran at 1/4 of a plain load-transpose-store loop */
                    for (; nl == V && k + V <= K; k += V) {
                        VEC r[V];
                        const REAL *p = s0 + k;
                        for (int lane = 0; lane < V; lane++, p += s_j) r[lane] = SFX(vload)(p);
                        SFX(transpose)(r);
                        REAL *d = d0 + k * ld;
                        for (int q = 0; q < V; q++, d += ld) SFX(vstore)(d, r[q]);
                    }
                    /* a tail of units or of k: lane by lane */
                    for (; k < K; k++)
                        for (int lane = 0; lane < V; lane++)
                            d0[k * ld + lane] = lane < nl ? s0[lane * s_j + k] : (REAL)0;
                }
        return;
    }
    for (rf_index k = 0; k < K; k++) {
        const int live = !row_len || k / row_B < row_len[k % row_B];
        for (rf_index grp = g_lo; grp < g_hi; grp++)
            for (rf_index sb = 0; sb < ub; sb++)
                for (rf_index g = 0; g < Gs; g++) {
                    const rf_index j0 = (grp * ub + sb) * V;
                    const int nl = (int)(j0 >= N ? 0 : (N - j0 < V ? N - j0 : V));
                    const REAL *sp = src + g * s_g + j0 * s_j + k * s_k;
                    REAL *dp = dst + (grp * K * NV + sb * Gs + g) * V + k * NV * V;
                    if (s_j == 1) {
                        SFX(vstore)(dp, live ? SFX(vload_n)(sp, nl) : SFX(vsplat)(0));
                        continue;
                    }
                    for (int lane = 0; lane < V; lane++)
                        dp[lane] = live && lane < nl ? sp[lane * s_j] : (REAL)0;
                }
    }
}

/* When a thread's panels (groups g_lo..g_hi, gsize elements each) are beyond what its L2 keeps, tile
 * tile_i of the tile_n row tiles that use group g0 also fetches its share of the thread's next group into
 * L2 (the first group after the last: the next step's, or the next row block's): returns where, with
 * *n the lines to fetch (NULL and 0 otherwise). Fetched on first use, each group's first tile waited on the
 * L3 or memory for the whole panel; within L2 the extra requests only cost (measured 1 thread, K = 512:
 * 32 groups 75% -> 82% of the FMA peak, 8 groups 86% -> 83%). */
#define RF_L2_KEEPS_BYTES (1 << 20)
/* `ahead` for one of two panels a tile reads one after the other (fused_gemm): both are fetched ahead when
 * together (gsize_both a group) they would not stay in L2. dir 0: the groups in order, the last followed by
 * the first (the next row block's); dir 1 / -1: a step phase walking up / down (RF_STEP_TILES), whose next
 * step walks back from the group it ended on, so its last group fetches nothing. */
static RF_INLINE const char *SFX(ahead2)(const REAL *panel, rf_index gsize, rf_index gsize_both, rf_index g0,
                                         rf_index g_lo, rf_index g_hi, rf_index tile_i, rf_index tile_n,
                                         int dir, rf_index *n) {
    *n = 0;
    if ((g_hi - g_lo) * gsize_both * (rf_index)sizeof(REAL) <= RF_L2_KEEPS_BYTES) return NULL;
    const rf_index g_next = dir < 0 ? g0 - 1 : g0 + 1 < g_hi ? g0 + 1 : dir ? g_hi : g_lo;
    if (g_next < g_lo || g_next >= g_hi) return NULL;
    const rf_index lines = gsize * (rf_index)sizeof(REAL) / 64;
    const rf_index lo = lines * tile_i / tile_n, hi = lines * (tile_i + 1) / tile_n;
    *n = hi - lo;
    return (const char *)(panel + g_next * gsize) + lo * 64;
}
static RF_INLINE const char *SFX(ahead)(const REAL *panel, rf_index gsize, rf_index g0, rf_index g_lo,
                                        rf_index g_hi, rf_index tile_i, rf_index tile_n, int dir, rf_index *n) {
    return SFX(ahead2)(panel, gsize, gsize, g0, g_lo, g_hi, tile_i, tile_n, dir, n);
}

/* The GEMM of a step phase for groups g0..g0+m-1 (m > 1 only for a single row, which gemm_row1 takes) of the
 * panels starting at `panel`, K rows each. Row i of group g0+q lands at out + (q + i) * NV * V. Row tile
 * tile_i of tile_n fetches its share of the next group ahead (see above). A single row with K1 > 0 sums
 * k in [0, K1) and [K1, K) apart and adds the two (see row1_k1); `done` = 1 or 2 says that block 0 or 1
 * is already summed, in part. */
static RF_INLINE void SFX(step_gemm)(int nr, int m, int NV, const REAL *const *A, rf_index K, const REAL *panel,
                                     rf_index g0, REAL *out, rf_index g_lo, rf_index g_hi, rf_index tile_i,
                                     rf_index tile_n, int rev, rf_index K1, int done, const REAL *part) {
    const rf_index gsize = K * NV * V;
    if (nr == 1) {
        const REAL *pg = panel + g0 * gsize;
        if (K1 <= 0) {
            SFX(gemm_row1)(m, NV, A[0], 0, K, pg, gsize, out);
            return;
        }
        REAL p[RF_ROW1_MAXG * 4 * V] __attribute__((aligned(64)));
        if (!done) {
            if (RF_ROW1X2_HAS(m, NV)) {
                SFX(gemm_row1x2)(m, NV, A[0], K1, K, pg, gsize, out, p);
            } else if (rev) { /* the walk down (RF_STEP_TILES): the block the walk up ended on first */
                SFX(gemm_row1)(m, NV, A[0], K1, K, pg, gsize, p);
                SFX(gemm_row1)(m, NV, A[0], 0, K1, pg, gsize, out);
            } else {
                SFX(gemm_row1)(m, NV, A[0], 0, K1, pg, gsize, out);
                SFX(gemm_row1)(m, NV, A[0], K1, K, pg, gsize, p);
            }
            part = p;
        } else {
            SFX(gemm_row1)(m, NV, A[0], done == 1 ? K1 : 0, done == 1 ? K : K1, pg, gsize, out);
        }
        for (int i = 0; i < m * NV; i++) SFX(vstore)(out + i * V, SFX(vload)(out + i * V) + SFX(vload)(part + i * V));
        return;
    }
    rf_index pf_n;
    const char *pf = SFX(ahead)(panel, gsize, g0, g_lo, g_hi, tile_i, tile_n, rev ? -1 : 1, &pf_n);
    SFX(gemm_tile_x)(nr, NV, A, 1, K, panel + g0 * gsize, NV * V, 0, out, pf, pf_n);
}

/* The arguments of step_gemm after `out`, inside RF_STEP_TILES: the thread's groups, this tile's index and
 * the number of row tiles per group (and for RF_STEP_ROW1 the k split of a single row, see row1_begin). */
#define RF_STEP_AHEAD(g_lo, g_hi) (g_lo), (g_hi), rt_i_, rt_c_, (int)rv_, 0, 0, NULL
#define RF_STEP_ROW1(g_lo, g_hi, K1, done, part) (g_lo), (g_hi), rt_i_, rt_c_, (int)rv_, (K1), (done), (part)

/* The tiles of a step phase: groups g_lo..g_hi outer, row tiles inner (a group's panel stays in L2 while
 * every row tile of the thread uses it), m groups from g_cur at a time (rf_walk_m). The groups go up
 * on even steps s and down on odd ones (rv_): each step starts on the panels the one before ended on, still
 * in L2 (or with a single row, in L1), where the same order every step finds the ones it needs first
 * evicted when the thread's panels outgrow the cache. A single row walks its groups in the chunks of up to
 * RF_ROW1_MAXG that the walk up makes, last chunk first (rf_walk_g, rf_walk_m), and its k blocks in reverse
 * too (step_gemm): measured 2026-11-24 (float32, batch 1, T = 100, I = H, one thread, in-process ABBA, same
 * bits) RNN H = 128 -18%, LSTM H = 64 -17%, GRU H = 128 -7%, H = 64 -4 to -6%. Except a step whose single row
 * sums its own k block first (row1_begin, sp->walk_up): its walk stays up, since the block it starts on is
 * not the one the step before ended on (measured 2026-11-24, when LSTM H = 256 on 2 threads still summed its
 * own block first: 2% slower walking down). The order changes no bit (each group's sums are its own). */
#define RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr)                                           \
    for (rf_index rv_ = ((s) & 1) && !(sp)->walk_up,                                                     \
                  cs_ = (sp)->r_hi - (sp)->r_lo == 1 ? RF_ROW1_MAXG : 1, gk_ = 0,                        \
                  g_cur = rf_walk_g(rv_, cs_, g_lo, g_hi, 0), m = rf_walk_m(rv_, cs_, g_lo, g_hi, 0);    \
         gk_ < (g_hi) - (g_lo);                                                                          \
         gk_ += m, g_cur = rf_walk_g(rv_, cs_, g_lo, g_hi, gk_), m = rf_walk_m(rv_, cs_, g_lo, g_hi, gk_)) \
        RF_TILE_ROWS((sp)->r_lo, (sp)->r_hi, NV, r0, nr)

/* Where row b stands at loop step s: its valid length, the real time index it processes, and whether it
 * is active (s < length). Reverse rows run from length-1 down to 0. */
static RF_INLINE int SFX(row_at)(const rf_ctx *c, rf_index s, rf_index b, rf_index *t, rf_index *len) {
    *len = c->lengths ? c->lengths[b] : c->T;
    *t = c->reverse ? *len - 1 - s : s;
    return s >= 0 && s < *len;
}

/* The A-operand rows and the epilogue differ per phase; the tile walk is the same everywhere. */
/* Rows r_lo..r_hi in tiles of at most RF_RMAX(NV) rows, as even as possible (32 rows of 6-row tiles are
 * 5, 5, 6, 5, 5, 6 rather than five 6s and a 2). */
#define RF_TILE_ROWS(r_lo, r_hi, NV, r0, nr)                                                           \
    for (rf_index rt_n_ = (r_hi) - (r_lo), rt_c_ = (rt_n_ + RF_RMAX(NV) - 1) / RF_RMAX(NV), rt_i_ = 0;  \
         rt_i_ < rt_c_; rt_i_++)                                                                       \
        for (rf_index r0 = (r_lo) + rt_n_ * rt_i_ / rt_c_, rt_e_ = (r_lo) + rt_n_ * (rt_i_ + 1) / rt_c_; \
             r0 < rt_e_; r0 = rt_e_)                                                                   \
            for (int nr = (int)(rt_e_ - r0); nr > 0; nr = 0)

/* Whether any of rows r0..r0+nr-1 is active at step s: a tile of padded rows skips its GEMM, so that
 * variable lengths cost less than full ones, never more. */
static RF_INLINE int SFX(any_active)(const rf_ctx *c, rf_index s, rf_index r0, int nr) {
    if (!c->lengths) return s >= 0 && s < c->T;
    for (int i = 0; i < nr; i++)
        if (s >= 0 && s < c->lengths[r0 + i]) return 1;
    return 0;
}

/* A backward step's recurrent GEMM reads dg of step s+1, or c->zero for a row past its sequence's last step
 * (every row at s = T-1 without lengths). Such a row's dh from the GEMM is 0 whatever w_hh holds, as in
 * torch, which adds nothing to dy there: the epilogue takes 0 for it, and a tile none of whose rows is
 * active at s+1 (any_active) skips its GEMM (1/T of the recurrent GEMMs of a backward). */
static RF_INLINE VEC SFX(bwd_dh)(const REAL *a, const REAL *zero, const REAL *out) {
    return a == zero ? SFX(vsplat)(0) : SFX(vload)(out);
}

/* step_gemm with the input projection fused in (c->fuse_x: LSTM, RNN, GRU reset_after; B >= 2, so one
 * group at a time): the tile sums x_t @ w_ih^T over the w_ih panels (the same group layout, I rows), then
 * continues the same accumulators over h (acc_in), so every pre-activation is one FMA chain over k in the
 * order x, h, whatever the split or the tile, and no xw row is written, kept or read back. GRU's n gate keeps
 * its two terms apart (n = tanh(x_n + r * (h_n + b_hn))): with xn not NULL, gate 2 of each unit block
 * (Gs gates a block) moves from the tile to xn (row i, block sb at xn + (i * ub + sb) * V) and restarts from
 * 0 for h, the same two chains as unfused. A padded row (lengths) reads x row 0; its sums are never used.
 * When (ops._FUSE_X_MIN_ROWS, with the measurements): B >= 32. The panels of w_ih and w_hh are both read
 * every step, so both are fetched ahead (ahead2) once together they outgrow L2; LSTM mid inference (each
 * 1 MiB) was +3% slower with each panel's own rule, -2% with this one. */
static RF_INLINE void SFX(fused_gemm)(const rf_ctx *c, rf_index s, rf_index r0, int nr, int NV,
                                      const REAL *const *A, rf_index K, const REAL *panel, rf_index g0, REAL *out,
                                      rf_index g_lo, rf_index g_hi, rf_index tile_i, rf_index tile_n, int rev,
                                      REAL *xn, int Gs) {
    const rf_index I = c->n_in, gx = I * NV * V, gh = K * NV * V;
    const REAL *Ax[8], *wih = (const REAL *)c->wih_pack;
    for (int i = 0; i < nr; i++) {
        rf_index t, len;
        if (!SFX(row_at)(c, s, r0 + i, &t, &len)) t = 0;
        Ax[i] = (const REAL *)c->x + (t * c->B + r0 + i) * I;
    }
    rf_index pf_n;
    const char *pf = SFX(ahead2)(wih, gx, gx + gh, g0, g_lo, g_hi, tile_i, tile_n, rev ? -1 : 1, &pf_n);
    SFX(gemm_tile_x)(nr, NV, Ax, 1, I, wih + g0 * gx, NV * V, 0, out, pf, pf_n);
    if (xn)
        for (int i = 0; i < nr; i++)
            for (int sb = 0; sb < NV / Gs; sb++) {
                REAL *o = out + (i * NV + sb * Gs + 2) * V;
                SFX(vstore)(xn + (i * (NV / Gs) + sb) * V, SFX(vload)(o));
                SFX(vstore)(o, SFX(vsplat)(0));
            }
    pf = SFX(ahead2)(panel, gh, gx + gh, g0, g_lo, g_hi, tile_i, tile_n, rev ? -1 : 1, &pf_n);
    SFX(gemm_tile_x)(nr, NV, A, 1, K, panel + g0 * gh, NV * V, 1, out, pf, pf_n);
}

/* The GEMM of a forward gate phase (A: the rows of h_{s-1}): with x's projection fused in (fuse_x) or
 * not; the arguments after `out` as step_gemm's (RF_STEP_ROW1), then fused_gemm's xn and Gs. */
static RF_INLINE void SFX(gates_gemm)(const rf_ctx *c, rf_index s, rf_index r0, int nr, int m, int NV,
                                      const REAL *const *A, rf_index K, const REAL *panel, rf_index g0, REAL *out,
                                      rf_index g_lo, rf_index g_hi, rf_index tile_i, rf_index tile_n, int rev,
                                      rf_index K1, int done, const REAL *part, REAL *xn, int Gs) {
    if (c->fuse_x)
        SFX(fused_gemm)(c, s, r0, nr, NV, A, K, panel, g0, out, g_lo, g_hi, tile_i, tile_n, rev, xn, Gs);
    else
        SFX(step_gemm)(nr, m, NV, A, K, panel, g0, out, g_lo, g_hi, tile_i, tile_n, rev, K1, done, part);
}

/* A forward gate phase's out-of-line epilogue (lstm_fwd_epi, gru_fwd_epi), called at group grp of a step tile
 * of nr rows and groups g_cur..g_cur+m-1: for the tile's rows, or, for a single row whose m groups are all
 * whole vectors of units (and `ok`), for the row's groups from grp on as "rows" V units apart: one call then
 * overlaps their dependent chains as it does rows' (same bits), where one call a group ran each as a chain
 * alone. Returns the call's rows, with *rs = V for groups (the caller then leaves the group loop) and 0 for
 * rows (the rows' own strides). */
static RF_INLINE int SFX(epi_rows)(int nr, rf_index g_cur, rf_index m, rf_index grp, rf_index H, int ok,
                                   rf_index *rs) {
    const int groups = ok && nr == 1 && m > 1 && (g_cur + m) * V <= H;
    *rs = groups ? V : 0;
    return groups ? (int)(g_cur + m - grp) : nr;
}

/* What a step phase's epilogue reads or writes for one tile, asked for (into L2) before the tile's GEMM so
 * that it arrives while the GEMM runs: the epilogue otherwise met each of these lines as a miss of its own
 * (the projection xw, dy and the saves of a whole sequence live in L3 or memory), one at a time between
 * the tiles. A stream is ng gate segments gs apart in rows ld apart, row t*B + b (tb) or b (a per-step
 * buffer); NULL streams are skipped, and so are arrays under RF_PF_MIN_BYTES (in L2 already: asking cost
 * RNN mid training 2-5%). The lines a training call writes (saves, dg) are asked for too; an inference's
 * y is not. Measured 2026-11-24 (2 threads, float32, in-process ABBA, same bits): a profile of RNN big
 * inference had 26% of the epilogue's time on the load of xw; reads and writes against reads only:
 * training RNN big -5.5%, GRU big -1.7%, GRU mid -2.2%, LSTM big +1.7%; inference GRU big +1.7% when y is
 * asked for. */
#define RF_PF_MIN_BYTES (4 << 20)
typedef struct {
    const REAL *p;
    rf_index ld, gs;
    int ng, tb;
} SFX(pfs);

static RF_INLINE void SFX(pf_span)(const REAL *p, rf_index n) {
    const char *e = (const char *)(p + n);
    for (const char *a = (const char *)((uintptr_t)p & ~(uintptr_t)63); a < e; a += 64) __builtin_prefetch(a, 0, 2);
}

static RF_INLINE void SFX(pf_tile)(const rf_ctx *c, rf_index s, rf_index r0, int nr, rf_index j0, rf_index n,
                                   const SFX(pfs) *st, int ns) {
    if (nr < 2 || s < 0) return; /* a single row's lines are few and near (batch 1: the latency path) */
    /* only arrays too large to stay in L2 between steps: the rest are there already */
    SFX(pfs) big[8];
    int nb = 0;
    for (int q = 0; q < ns; q++)
        if (st[q].p && (st[q].tb ? c->T : c->xw_steps) * c->B * st[q].ld * (rf_index)sizeof(REAL) >= RF_PF_MIN_BYTES)
            big[nb++] = st[q];
    if (!nb) return;
    for (int i = 0; i < nr; i++) {
        rf_index t, len;
        if (!SFX(row_at)(c, s, r0 + i, &t, &len)) continue;
        for (int q = 0; q < nb; q++) {
            const REAL *row = big[q].p + (big[q].tb ? t * c->B + r0 + i : r0 + i) * big[q].ld + j0;
            for (int g = 0; g < big[q].ng; g++) SFX(pf_span)(row + g * big[q].gs, n);
        }
    }
}

/* Where the rows of a whole-sequence GEMM live. Without a chunk (c == NULL) row n is A + n*lda and
 * out + n*ldo. With one, row n is loop step s0 + n / nb of batch row b0 + n % nb: it reads x at that row's
 * real time step (reverse, lengths; a padded step reads row t = 0, its result is never used) and writes
 * row (s - s0, b) of the chunk buffer. */
typedef struct {
    const rf_ctx *c;
    rf_index s0, b0, nb;
} SFX(rowmap);

static RF_INLINE void SFX(map_row)(const SFX(rowmap) *m, rf_index n, const REAL *A, rf_index lda, REAL *out,
                                   rf_index ldo, const REAL **a_row, REAL **o_row) {
    if (!m->c) {
        *a_row = A + n * lda;
        *o_row = out + n * ldo;
        return;
    }
    const rf_index ds = n / m->nb, b = m->b0 + n % m->nb, B = m->c->B;
    rf_index t, len;
    if (!SFX(row_at)(m->c, m->s0 + ds, b, &t, &len)) t = 0;
    *a_row = A + (t * B + b) * lda;
    *o_row = out + (ds * B + b) * ldo;
}

/* The whole-sequence GEMMs that bracket the time loop run in the same parallel region, on the same tiles:
 * out[n, :] = A[n, :K] @ panels for rows n_lo..n_hi (mapped as above). No BLAS thread pool ever runs
 * between (or, worse, spins beside) the kernel's own threads. Gs gates of N units per row are written to
 * out[n, g*N + j] (the natural torch layout), the tails masked. With K2 > 0 each row goes on in a second
 * operand, the reduction k = K..K+K2-1 read at A2[n, k - K] (rows lda2 apart): each output is the same
 * FMA chain over k as for one row of K + K2. */
static RF_INLINE void SFX(rows_gemm)(rf_index n_lo, rf_index n_hi, rf_index g_lo, rf_index g_hi, rf_index RB,
                                     const SFX(rowmap) *map, const REAL *A, rf_index lda, rf_index K,
                                     const REAL *A2, rf_index lda2, rf_index K2, const REAL *panel, int Gs,
                                     int ub, rf_index N, REAL *out, rf_index ldo) {
    const int NV = Gs * ub;
    const rf_index gsize = (K + K2) * NV * V;
    REAL tile[8 * 4 * V] __attribute__((aligned(64)));
    /* Row blocks outer, groups g_lo..g_hi, then row tiles: each panel group is read once per block of
     * RB rows. */
    for (rf_index b_lo = n_lo; b_lo < n_hi; b_lo += RB) {
        const rf_index b_hi = n_hi - b_lo < RB ? n_hi : b_lo + RB;
        for (rf_index grp = g_lo; grp < g_hi; grp++) {
            RF_TILE_ROWS(b_lo, b_hi, NV, r0, nr) {
                const REAL *Ar[8], *A2r[8];
                REAL *Or[8];
                rf_index pf_n;
                for (int i = 0; i < nr; i++) {
                    SFX(map_row)(map, r0 + i, A, lda, out, ldo, &Ar[i], &Or[i]);
                    if (K2 > 0) SFX(map_row)(map, r0 + i, A2, lda2, out, ldo, &A2r[i], &Or[i]);
                }
                SFX(gemm_tile_x)(nr, NV, Ar, 1, K, panel + grp * gsize, NV * V, 0, tile,
                                 SFX(ahead)(panel, gsize, grp, g_lo, g_hi, rt_i_, rt_c_, 0, &pf_n), pf_n);
                if (K2 > 0)
                    SFX(gemm_tile_x)(nr, NV, A2r, 1, K2, panel + grp * gsize + K * NV * V, NV * V, 1, tile, NULL, 0);
                for (int i = 0; i < nr; i++)
                    for (int sb = 0; sb < ub; sb++) {
                        const rf_index j0 = (grp * ub + sb) * V;
                        if (j0 >= N) break;
                        const int nl = (int)(N - j0 < V ? N - j0 : V);
                        for (int g = 0; g < Gs; g++)
                            SFX(vstore_n)(Or[i] + g * N + j0, SFX(vload)(tile + (i * NV + sb * Gs + g) * V), nl);
                    }
            }
        }
    }
}

/* Groups g_lo..g_hi of one operand's panels. */
static RF_INLINE void SFX(pack_spec)(const rf_pack_spec *p, rf_index g_lo, rf_index g_hi) {
    SFX(pack_groups)((const REAL *)p->src, p->s_g, p->s_j, p->s_k, p->Gs, p->N, p->K, p->ub, g_lo, g_hi,
                     (REAL *)p->dst, p->row_len, p->row_B > 0 ? p->row_B : 1);
}

/* Prologue of every call: the panels, each thread packing its share of every operand's groups (but the
 * operand packed into `skip`, if any). The batch split then waits for all of them (each thread reads every
 * group). The hidden split does not: its share of a panel's groups is the one its step phases and its
 * projection read (rf_groups, project_chunk, the shadow), and what it packs for others (the weight-gradient
 * operands, backward's panels, x's copy) is read only after a barrier of the time loop or after the call.
 * Measured 2026-11-24 (float32, batch 1, T = 100, I = H, 2 threads, in-process ABBA, same bits): LSTM
 * H = 256 -2.4%, H = 128 -0.9%, GRU H = 128 and RNN H = 128 within +-0.5%. */
static RF_INLINE void SFX(pack_panels_but)(const rf_ctx *c, rf_split *sp, const void *skip) {
    if (c->x_copy) { /* a training forward's private copy of x, each thread a share of the rows */
        rf_index lo, hi;
        rf_share(sp, c->T * c->B, &lo, &hi);
        if (hi > lo)
            memcpy((REAL *)c->x_copy + lo * c->n_in, (const REAL *)c->x + lo * c->n_in,
                   (size_t)((hi - lo) * c->n_in) * sizeof(REAL));
    }
    for (int i = 0; i < c->n_packs; i++) {
        const rf_pack_spec *p = &c->packs[i];
        if (skip && p->dst == skip) continue;
        rf_index g_lo, g_hi;
        rf_share(sp, RF_NGRP(p->N, p->ub), &g_lo, &g_hi);
        SFX(pack_spec)(p, g_lo, g_hi);
    }
    if (sp->batch) rf_sync_all(sp);
}
static RF_INLINE void SFX(pack_panels)(const rf_ctx *c, rf_split *sp) { SFX(pack_panels_but)(c, sp, NULL); }

/* xw rows n_lo..n_hi (rows of x as `map` says) of panel groups g_lo..g_hi of w_ih, in blocks of RB rows. */
static RF_INLINE void SFX(project_rows)(const rf_ctx *c, const SFX(rowmap) *map, rf_index n_lo, rf_index n_hi,
                                        rf_index g_lo, rf_index g_hi, rf_index RB) {
    SFX(rows_gemm)(n_lo, n_hi, g_lo, g_hi, RB, map, (const REAL *)c->x, c->n_in, c->n_in, NULL, 0, 0,
                   (const REAL *)c->wih_pack, (int)c->G, c->uih, c->H, (REAL *)c->xw, c->G * c->H);
}

/* Forward, before loop step s0 whenever s0 starts a chunk: xw rows of steps s0..s0+xw_steps-1 (x @ w_ih^T,
 * no bias). Batch split: each thread projects its own rows, which only it reads, with no barrier, in
 * blocks of 64 rows. Hidden split: each thread projects every row for its own panel groups (the ones it
 * packed), so that it reads only its share of the w_ih panels, and from memory only once: blocks of rows
 * as large as fit ~1 MiB of x, each group's panel read once per block. The threads meet before the steps
 * read the rows. The step that ended the previous chunk ended at a barrier, so no thread still reads the
 * buffer being overwritten. */
static RF_INLINE void SFX(project_chunk)(const rf_ctx *c, rf_split *sp, rf_index s0) {
    if (s0 % c->xw_steps) return;
    const rf_index n = c->T - s0 < c->xw_steps ? c->T - s0 : c->xw_steps;
    const rf_index b0 = sp->batch ? sp->r_lo : 0, nb = sp->batch ? sp->r_hi - sp->r_lo : c->B;
    const SFX(rowmap) map = {c, s0, b0, nb};
    const rf_index ngrp = RF_NGRP(c->H, c->uih);
    rf_index g_lo = 0, g_hi = ngrp, RB = 64;
    if (!sp->batch) {
        rf_share(sp, ngrp, &g_lo, &g_hi);
        RB = (rf_index)(1 << 20) / ((c->n_in > 0 ? c->n_in : 1) * (rf_index)sizeof(REAL));
        if (RB < 64) RB = 64;
    }
    if (nb > 0) SFX(project_rows)(c, &map, 0, n * nb, g_lo, g_hi, RB);
    rf_sync(sp);
}

/* Forward, hidden split, when the whole projection fits one chunk and the thread's share of the w_ih panels
 * stays in its L2 (small batch, small H: the steps are short and the per-step barrier is a large part of
 * them): the projection runs in the barrier's shadow instead of up front. A thread that has arrived at
 * the step's barrier projects tiles (RF_SHADOW_ROWS rows of one of its panel groups) until the other
 * threads have arrived, and before a step only what that step still lacks. Each thread projects its own
 * groups, which only it reads (`own`: the step phases read xw by the w_hh panel groups, and those are the
 * projection's, the same units), so the order of the tiles needs no synchronisation; each element is the
 * same FMA chain over k whatever the tile, so the bits do not depend on it either.
 * The shadow's tiles are 4 rows, not the most a tile holds (RF_RMAX: 6 or 8): a tile begun just before the
 * other thread arrives delays the next step by its whole length, and at batch 1 a step is short. Measured
 * 2026-11-24 (2 threads, float32, batch 1, T = 100, in-process ABBA of 4 rows against RF_RMAX, same bits):
 * GRU H = 64 -10.6%, -9% (5 rows), H = 96 -2.4%, H = 128 -2.2%, H = 256 -1.5%; LSTM H = 64 -3.1%, H = 128
 * -0.4%, H = 256 -0.4%; RNN H = 128 -4.2%, H = 256 +1.1%. 2 and 3 rows were 9-17% slower (LSTM, GRU H = 128).
 * Where the wait is short (the cores reach each other's caches fast), projecting every row up front in large
 * blocks is faster than the shadow, and where it is long slower: a batch-1 call in ops.py's tuning band asks
 * for either by its own timings (no_shadow; ops.py, _Tune). */
#define RF_SHADOW_ROWS 4
typedef struct {
    rf_index next, end, g, g_lo, g_hi; /* rows < next done for every group; group g next for the block */
    int R, on;
} SFX(xwq);

static RF_INLINE void SFX(xwq_init)(const rf_ctx *c, const rf_split *sp, int own, SFX(xwq) *q) {
    q->on = 0;
    if (!own || c->no_shadow || c->fuse_x || c->ub != c->uih || sp->batch || sp->nt < 2 || c->xw_steps < c->T)
        return;
    /* the same decision in every thread (project_chunk has a barrier that the shadow has not) */
    const rf_index ngrp = RF_NGRP(c->H, c->uih), NV = c->G * c->uih, most = (ngrp + sp->nt - 1) / sp->nt;
    if (most * c->n_in * NV * V * (rf_index)sizeof(REAL) > RF_L2_KEEPS_BYTES) return;
    rf_share(sp, ngrp, &q->g_lo, &q->g_hi);
    q->on = 1;
    q->end = c->T * c->B;
    q->next = q->g_hi > q->g_lo ? 0 : q->end; /* a thread without groups has nothing to project */
    q->g = q->g_lo;
    q->R = RF_SHADOW_ROWS;
}

static RF_INLINE void SFX(xwq_tile)(const rf_ctx *c, SFX(xwq) *q) {
    const rf_index hi = q->end - q->next < q->R ? q->end : q->next + q->R;
    const SFX(rowmap) map = {c, 0, 0, c->B};
    SFX(project_rows)(c, &map, q->next, hi, q->g, q->g + 1, hi - q->next);
    if (++q->g == q->g_hi) {
        q->g = q->g_lo;
        q->next = hi;
    }
}

/* Finish the barrier this thread arrived at last (if any), with projection tiles while the other threads
 * are still on their way. */
static RF_INLINE void SFX(step_finish)(const rf_ctx *c, rf_split *sp, SFX(xwq) *q) {
    if (!sp->has_pend) return;
    sp->has_pend = 0;
    if (q->on)
        while (q->next < q->end && !rf_barrier_arrived(sp->barrier, sp->tid, sp->pend)) SFX(xwq_tile)(c, q);
    rf_barrier_finish(sp->barrier, sp->tid, sp->nt, sp->pend);
}

/* The xw rows (B, G*H) of loop step s. */
static RF_INLINE const REAL *SFX(xw_step)(const rf_ctx *c, rf_index s) {
    if (c->fuse_x) return NULL; /* no xw: the step tiles sum x's part themselves (fused_gemm) */
    return (const REAL *)c->xw + (s % c->xw_steps) * c->B * c->G * c->H;
}

/* Batch 1 whose steps are too short for two threads to share (ops.py, _threads) but whose input projection
 * is not (RNN H = 64, T = 100: x @ w_ih^T is as many multiply-adds as the steps, ~5 us of a ~30 us call at
 * the FMA peak): the second thread packs w_ih's panels and projects every row, all groups, in blocks of
 * RF_HELPER_ROWS in order, publishing each block; the first packs everything else and runs every step
 * alone, waiting before step s only until s's row is published (project_for). The threads meet nowhere
 * else. The steps and every xw element are the computations one thread makes, so the bits are one
 * thread's. The prologue of a forward worker (instead of pack_panels): returns 1 to the helper, whose work
 * is then done. A call that got one thread runs as one thread (project_for projects up front). */
#define RF_HELPER_ROWS 8
#define RF_HELPER_AHEAD 4
/* the helper's part, out of line: inlined, it grew each worker by a sixth, for calls that mostly never take it */
RF_CLONES __attribute__((noinline, visibility("hidden"))) void SFX(xw_helper)(const rf_ctx *c, const rf_split *sp,
                                                                                const rf_pack_spec *wih) {
    SFX(pack_spec)(wih, 0, RF_NGRP(wih->N, wih->ub));
    const rf_index n = c->T * c->B;
    const SFX(rowmap) map = {c, 0, 0, c->B};
    /* the first blocks 1, 2 and 4 rows: the steps' thread waits for the first row only as long as it takes.
     * Measured 2026-11-25 (float32, T = 100, I = H, one thread's steps, in-process ABBA against 8 rows from
     * the start): GRU H = 128 -1.9%, LSTM H = 128 -1%, RNN H = 64 -1.2%, H = 256 -1.7%. */
    for (rf_index r = 0, rb = 1; r < n; r += rb, rb = rb < RF_HELPER_ROWS ? 2 * rb : RF_HELPER_ROWS) {
        const rf_index hi = n - r < rb ? n : r + rb;
        SFX(project_rows)(c, &map, r, hi, 0, RF_NGRP(c->H, c->uih), hi - r);
        __atomic_store_n(&sp->barrier->progress->epoch, (unsigned)hi, __ATOMIC_RELEASE);
    }
}
static RF_INLINE int SFX(fwd_begin)(const rf_ctx *c, rf_split *sp) {
    const rf_pack_spec *wih = NULL;
    if (c->xw_helper && sp->nt == 2)
        for (int i = 0; i < c->n_packs; i++)
            if (c->packs[i].dst == c->wih_pack) wih = &c->packs[i];
    if (wih && sp->tid == 1) {
        SFX(xw_helper)(c, sp, wih);
        return 1;
    }
    if (wih) { /* the steps' thread: a one-thread split from here on */
        rf_split_init(sp, c, 0, 1, sp->barrier);
        sp->helped = 1;
    }
    SFX(pack_panels_but)(c, sp, wih ? c->wih_pack : NULL);
    return 0;
}

/* project_for of the thread a helper projects for (fwd_begin), out of line like the helper: wait until step
 * s's row is published, then ask for it, and for the row RF_HELPER_AHEAD steps on if published (the
 * helper's rows are in the other core's cache; asked for ahead, they have arrived when their step comes). */
RF_CLONES __attribute__((noinline, visibility("hidden"))) void SFX(helped_for)(const rf_ctx *c, const rf_split *sp,
                                                                                 rf_index s) {
    const unsigned need = (unsigned)((s + 1) * c->B);
    for (int spins = 0; __atomic_load_n(&sp->barrier->progress->epoch, __ATOMIC_ACQUIRE) < need;) rf_spin(&spins);
    const rf_index s2 = s + RF_HELPER_AHEAD;
    const int ahead = s2 < c->T && __atomic_load_n(&sp->barrier->progress->epoch, __ATOMIC_RELAXED) >=
                                       (unsigned)((s2 + 1) * c->B);
    for (int i = 0; i <= ahead; i++) {
        const REAL *row = SFX(xw_step)(c, i ? s2 : s);
        for (rf_index j = 0; j < c->B * c->G * c->H; j += 64 / sizeof(REAL)) __builtin_prefetch(row + j);
    }
}

/* Before loop step s: its xw rows (up front per chunk, what the shadow has not done yet, or the helper's). */
static RF_INLINE void SFX(project_for)(const rf_ctx *c, rf_split *sp, SFX(xwq) *q, rf_index s) {
    if (c->fuse_x) return;
    if (sp->helped) {
        SFX(helped_for)(c, sp, s);
        return;
    }
    if (!q->on) {
        /* a chunk overwrites rows another thread may still read in the last step */
        if (s % c->xw_steps == 0) SFX(step_finish)(c, sp, q);
        SFX(project_chunk)(c, sp, s);
    } else
        while (q->next < (s + 1) * c->B) SFX(xwq_tile)(c, q);
    /* a single row: ask for the step's xw lines of this thread's units now (its epilogue waited on them) */
    if (sp->r_hi - sp->r_lo == 1 && s < c->T) {
        rf_index g_lo, g_hi;
        rf_groups(sp, RF_NGRP(c->H, c->ub), &g_lo, &g_hi);
        const rf_index j_lo = g_lo * c->ub * V, j_hi = g_hi * c->ub * V < c->H ? g_hi * c->ub * V : c->H;
        const REAL *row = SFX(xw_step)(c, s) + sp->r_lo * c->G * c->H;
        for (rf_index g = 0; g < c->G; g++)
            for (rf_index j = j_lo; j < j_hi; j += 64 / sizeof(REAL)) __builtin_prefetch(row + g * c->H + j);
    }
}

/* Batch 1, the forward phases whose GEMM reads the state the previous step wrote (h_{s-1}: K = H units,
 * made by the phase's own panel groups): a single row's k range sums in two blocks, [0, K1) and [K1, K),
 * which are then added. K1 is where a split of the groups between 2 threads puts it, or with a single
 * group (which one thread runs) half of the vectors (0: one block); a function of H and the panel layout
 * only, so the bits do not depend on the thread count. */
static RF_INLINE rf_index SFX(row1_k1)(const rf_ctx *c, rf_index K, int ub) {
    if (c->B != 1) return 0;
    /* a lone group (one thread has all units): halves of whole vectors, summed side by side (gemm_row1x2) */
    return RF_NGRP(K, ub) > 1 ? RF_NGRP(K, ub) / 2 * ub * V : K / 2 / V * V;
}

/* The start of such a phase (any phase: it finishes the previous step's barrier). With 2 threads each
 * block is one thread's own units, which it wrote itself: the thread sums its own block for all its
 * groups into part before it waits for the other thread, and the other block after (step_gemm with
 * `done`), so that the wait and the transfer of the other half of the state hide behind half of the GEMM.
 * Only when the thread's panels fit in its L1 (RF_L1_KEEPS_BYTES): then every step finds all of them
 * there whatever the order. Beyond it the thread waits for the whole state first, and its walk down on odd
 * steps (RF_STEP_TILES) starts on the panels the step before ended on, still in L1 or L2, which the own
 * block first never does; the shadow's projection tiles fill the wait. Measured (float32, batch 1, T = 100,
 * I = H, 2 threads, in-process ABBA, same bits), against the own block first:
 * - 2026-11-24, panels beyond L2: H = 1024 LSTM -2.4%, GRU -10%, RNN -15.5%; H = 512 LSTM -2.1%, GRU -17%;
 * - 2026-11-25, panels beyond L1 (KiB a thread in brackets), the fast state: GRU H = 96 (54) -7%,
 *   H = 128 (96) -1.9% to -6.2% (six runs), H = 160 -3%, H = 256 (384) -0.7% to -3.6%; LSTM H = 96 (72)
 *   -5.7%, H = 128 (128) -0.3% to -1.3% (+2.7% and +2.9% in the slow state, where the own block first
 *   hides more of a longer hand-off), H = 256 (512) +0.5%; RNN H = 192 (72) -0.2%, H = 256 (128) +0.2%
 *   and +1%;
 * - within L1, where the own block first stays: GRU H = 64 (24) +1.9%, RNN H = 64 +0.9%, H = 128 (32)
 *   +0.2%, LSTM H = 64 (32) -0.6%.
 * The backward's single row (no own block first) walks down too: H = 1024 LSTM -2.3%, GRU -6.5%, H = 512
 * LSTM -1.4%, H = 256 LSTM and RNN -1.2%.
 * Returns `done` for step_gemm (0: nothing summed yet). */
#define RF_L1_KEEPS_BYTES (48 << 10)
#define RF_OVL_MAXV 128 /* the vectors of part: a thread's groups x NV, whose panels fit in L1 */
static RF_INLINE int SFX(row1_begin)(const rf_ctx *c, rf_split *sp, SFX(xwq) *q, rf_index s, const REAL *a,
                                     rf_index K, rf_index K1, const REAL *panel, int NV, rf_index g_lo,
                                     rf_index g_hi, REAL *part) {
    int done = 0;
    if (K1 > 0 && sp->nt == 2 && !sp->batch && sp->has_pend && (g_hi - g_lo) * NV <= RF_OVL_MAXV &&
        (g_hi - g_lo) * K * NV * V * (rf_index)sizeof(REAL) <= RF_L1_KEEPS_BYTES && SFX(any_active)(c, s, 0, 1)) {
        const rf_index gsize = K * NV * V, lo = sp->tid ? K1 : 0, hi = sp->tid ? K : K1;
        for (rf_index g = g_lo, m = rf_walk_m(0, RF_ROW1_MAXG, g_lo, g_hi, 0); g < g_hi;
             g += m, m = rf_walk_m(0, RF_ROW1_MAXG, g_lo, g_hi, g - g_lo))
            SFX(gemm_row1)((int)m, NV, a, lo, hi, panel + g * gsize, gsize, part + (g - g_lo) * NV * V);
        done = sp->tid ? 2 : 1;
    }
    sp->walk_up = done != 0;
    SFX(step_finish)(c, sp, q);
    return done;
}

/* Backward epilogue: dx = dg @ w_ih for all T*B rows. GRU reset_after (dgh_tb): dg's r and z parts are
 * dgh_tb's, and dg_tb holds only its n part, (T, B, H). */
static RF_INLINE void SFX(input_gradient)(const rf_ctx *c, rf_split *sp) {
    rf_sync_all(sp);
    const SFX(rowmap) ident = {0};
    const rf_index GH = c->G * c->H, H = c->H;
    const REAL *dg = (const REAL *)c->dg_tb, *dgh = (const REAL *)c->dgh_tb;
    rf_index lo, hi;
    rf_share(sp, c->T * c->B, &lo, &hi);
    SFX(rows_gemm)(lo, hi, 0, RF_NGRP(c->n_in, c->uihq), 64, &ident, dgh ? dgh : dg, GH, dgh ? 2 * H : GH, dg, H,
                   dgh ? H : 0, (const REAL *)c->wihq_pack, 1, c->uihq, c->n_in, (REAL *)c->dx, c->n_in);
}

/* Weight gradient dW[m, :] (+)= sum_n A[n, m] * Bm[n, :] for the M rows m of dW, split between threads in
 * whole cache lines of A's rows (16 floats): A is (N, M) (the gate gradients, read down its columns). Bm is
 * either packed as panels over its L columns (ldb == 0: group grp, row n at bm + (grp*N + n)*NV*V) or read
 * in place, rows ldb apart (when L is a whole number of groups and every row may be read: group grp, row n
 * at bm + n*ldb + grp*NV*V). n is blocked so that the block's rows of every column group stay in L2 while
 * the thread's row tiles pass over them. The rows m go in strips of up to RF_WG_STRIP (eight 6-row tiles):
 * a strip's slice of A is first copied into a contiguous k-major block, whole vectors a k (read down a
 * column of A directly, every k would be a new cache line at a stride that maps onto a few cache sets, and
 * a line would be fetched again for each tile it feeds), and the strip's tiles read their rows of it. The
 * FMA chains continue across blocks, so neither blocks nor strips change a bit. With db, the copy also sums
 * the columns: db[m] = sum_n A[n, m], in order within each n block, then the blocks' sums in order (so db's
 * bits depend on the block size, which depends on the shapes only; summed in one chain over all N, db's
 * error against float64 was 3-6x larger at GRU and RNN big). Measured 2026-11-23 (2 threads, float32,
 * weight-gradient phase alone, per-phase cycle counts of two builds interleaved) against copying 8 elements
 * a tile: LSTM mid -14%, big -3.6%; GRU big and RNN big within noise (+-2%). */
#define RF_WG_STRIP 48
#define RF_WG_LINE 16
/* weight_grad's A may come in two parts: its columns m < M1 are A's (rows lda apart), the others column m - M1
 * of A2 (rows lda2 apart; GRU reset_after's dw_ih: the r, z columns of dgh, then the n part of dg). Strips do
 * not straddle M1. Where column m starts, and the row stride there: */
static RF_INLINE const REAL *SFX(wg_col)(const REAL *A, rf_index lda, rf_index M1, const REAL *A2, rf_index lda2,
                                         rf_index m, rf_index *ld) {
    *ld = m < M1 ? lda : lda2;
    return m < M1 ? A + m : A2 + (m - M1);
}
static RF_INLINE void SFX(weight_grad)(const rf_split *sp, rf_index N, rf_index M, const REAL *A, rf_index lda,
                                       rf_index M1, const REAL *A2, rf_index lda2, const REAL *bm, rf_index ldb,
                                       int ub, rf_index L, REAL *dW, rf_index ldw, REAL *db) {
    /* NBMAX: the strip's block of A is at most 72 KiB of stack (384 rows of floats, 192 of doubles) */
    enum { SW = RF_WG_STRIP, SV = RF_WG_STRIP / V, NBMAX = 72 * 1024 / (SW * sizeof(REAL)) };
    const int NV = ub;
    rf_index u_lo, u_hi;
    rf_share(sp, (M + RF_WG_LINE - 1) / RF_WG_LINE, &u_lo, &u_hi);
    const rf_index m_lo = u_lo * RF_WG_LINE, m_hi = u_hi * RF_WG_LINE < M ? u_hi * RF_WG_LINE : M;
    const rf_index ngrp = RF_NGRP(L, ub);
    /* Bm's row and group strides: packed or in place */
    const rf_index b_row = ldb ? ldb : NV * V, b_grp = ldb ? NV * V : N * NV * V;
    if (ngrp == 0) {
        if (db)
            for (rf_index m = m_lo; m < m_hi; m++) {
                rf_index ld;
                const REAL *col = SFX(wg_col)(A, lda, M1, A2, lda2, m, &ld);
                REAL s = 0;
                for (rf_index n = 0; n < N; n++) s += col[n * ld];
                db[m] = s;
            }
        return;
    }
    /* rows of all column groups for one n block: ~768 KiB. Each block loads and stores the thread's dW tiles
     * once (from L3 at big sizes); measured 2026-11-24 (2 threads, float32, backward, in-process ABBA, the
     * bits of dW the same) against ~512 KiB (NB 384 against 256 at 512 columns): GRU big -2.3%, LSTM big
     * -1.7%, RNN big -1.5%, GRU wide -1.5%, LSTM mid -1.0%. */
    rf_index NB = (rf_index)(768 * 1024 / sizeof(REAL)) / (ngrp * NV * V);
    NB = NB < 64 ? 64 : NB > NBMAX ? NBMAX : NB;
    REAL tile[8 * 4 * V] __attribute__((aligned(64)));
    REAL apack[NBMAX * SW] __attribute__((aligned(64)));
    for (rf_index n0 = 0; n0 < N; n0 += NB) {
        const rf_index nk = N - n0 < NB ? N - n0 : NB;
        for (rf_index st = m_lo, st_hi; st < m_hi; st = st_hi) {
            st_hi = RF_MIN(RF_MIN(st + SW, m_hi), st < M1 ? M1 : m_hi);
            rf_index a_ld;
            const REAL *a_st = SFX(wg_col)(A, lda, M1, A2, lda2, st, &a_ld);
            const int sv = (int)((st_hi - st + V - 1) / V); /* the strip's vectors (lanes past m_hi read 0) */
            VEC sum[SV];
            for (int u = 0; u < SV; u++) sum[u] = SFX(vsplat)(0);
            for (rf_index k = 0; k < nk; k++) {
                const REAL *src = a_st + (n0 + k) * a_ld;
                for (int u = 0; u < sv; u++) {
                    const rf_index c0 = st + u * V;
                    const VEC v = c0 + V <= st_hi ? SFX(vload)(src + u * V) : SFX(vload_n)(src + u * V, (int)(st_hi - c0));
                    SFX(vstore)(apack + k * SW + u * V, v);
                    if (db) sum[u] += v;
                }
            }
            if (db)
                for (rf_index m = st; m < st_hi; m++) {
                    const REAL v = sum[(m - st) / V][(m - st) % V];
                    db[m] = n0 ? db[m] + v : v;
                }
            /* the next strip's slice of A (or the next block's first), a share of its rows before each GEMM
             * of this strip: the copy above otherwise waits on each of its rows in turn (lda apart, in L3) */
            const rf_index nx_n0 = st_hi < m_hi ? n0 : n0 + NB, nx_st = st_hi < m_hi ? st_hi : m_lo;
            const rf_index nx_nk = nx_n0 < N ? RF_MIN(N - nx_n0, NB) : 0;
            const rf_index nx_w = RF_MIN(RF_MIN(SW, m_hi - nx_st), nx_st < M1 ? M1 - nx_st : SW);
            rf_index nx_ld;
            const REAL *nx_a = SFX(wg_col)(A, lda, M1, A2, lda2, nx_st, &nx_ld);
            const rf_index n_calls = (st_hi - st + RF_RMAX(NV) - 1) / RF_RMAX(NV) * ngrp;
            rf_index call = 0;
            RF_TILE_ROWS(st, st_hi, NV, r0, nr) {
                for (rf_index grp = 0; grp < ngrp; grp++, call++) {
                    for (rf_index k = nx_nk * call / n_calls; k < nx_nk * (call + 1) / n_calls; k++)
                        SFX(pf_span)(nx_a + (nx_n0 + k) * nx_ld, nx_w);
                    /* the next tile of dW (the next group's, or the first group's of the next row tile,
                     * whose rows follow: the next strip's or, after the last, the next block's first),
                     * asked for while this one's GEMM runs */
                    {
                        const rf_index ng = grp + 1 < ngrp ? grp + 1 : 0;
                        const rf_index nr0 = ng ? r0 : r0 + nr < m_hi ? r0 + nr : n0 + NB < N ? m_lo : m_hi;
                        for (rf_index i = nr0; i < RF_MIN(nr0 + nr, m_hi); i++)
                            SFX(pf_span)(dW + i * ldw + ng * NV * V, RF_MIN(NV * V, L - ng * NV * V));
                    }
                    /* A whole group's tile accumulates in dW itself; one with a tail goes through `tile`.
                     * Measured 2026-11-24 (2 threads, float32, backward, in-process ABBA, same bits; with the
                     * prefetch above, which before skipped the next row tile's): against every tile going
                     * through `tile`, GRU big -1.8 and -2.3%, LSTM big -1.2%, RNN big -1.0%, GRU wide -3.2%,
                     * LSTM wide -2.4%, the mid rows -1.2 to -2.5%, RNN wide the same. */
                    REAL *const dwt = dW + r0 * ldw + grp * NV * V;
                    if ((grp + 1) * NV * V <= L) {
                        SFX(gemm_tile_p)(nr, NV, apack + (r0 - st), SW, nk, bm + grp * b_grp + n0 * b_row, b_row,
                                         n0 > 0, dwt, ldw);
                        continue;
                    }
                    for (int i = 0; i < nr; i++)
                        for (int sb = 0; sb < ub; sb++) {
                            const rf_index j0 = (grp * ub + sb) * V;
                            const int nl = (int)(j0 >= L ? 0 : (L - j0 < V ? L - j0 : V));
                            VEC v = n0 ? SFX(vload_n)(dW + (r0 + i) * ldw + j0, nl) : SFX(vsplat)(0);
                            SFX(vstore)(tile + (i * NV + sb) * V, v);
                        }
                    /* nr <= RF_RMAX(NV): one pass */
                    SFX(gemm_tile_p)(nr, NV, apack + (r0 - st), SW, nk, bm + grp * b_grp + n0 * b_row, b_row, 1, tile,
                                     NV * V);
                    for (int i = 0; i < nr; i++)
                        for (int sb = 0; sb < ub; sb++) {
                            const rf_index j0 = (grp * ub + sb) * V;
                            if (j0 >= L) break;
                            const int nl = (int)(L - j0 < V ? L - j0 : V);
                            SFX(vstore_n)(dW + (r0 + i) * ldw + j0, SFX(vload)(tile + (i * NV + sb) * V), nl);
                        }
                }
            }
        }
    }
}

/* Backward epilogue, after dx: dw_ih = dg^T x and dw_hh = dgh^T hprev (GRU reset before: the n rows from
 * r*h), dw_hr = dhp^T m for a projection, and the bias gradients db_ih, db_hh (column sums of dg, dgh) on the
 * way. x, hprev, r*h, m are read in place where their row length is a whole number of panel groups
 * (xp_ld etc. nonzero) and packed by the caller otherwise. */
static RF_INLINE void SFX(weight_gradients)(const rf_ctx *c, rf_split *sp) {
    const rf_index N = c->T * c->B, H = c->H, GH = c->G * c->H, I = c->n_in, K = c->K;
    const REAL *dgh = c->dgh_tb ? (const REAL *)c->dgh_tb : (const REAL *)c->dg_tb;
    const REAL *xp = c->xp_ld ? (const REAL *)c->x : (const REAL *)c->xp_pack;
    const REAL *hp = c->hp_ld ? (const REAL *)c->hprev_tb : (const REAL *)c->hp_pack;
    const REAL *mp = c->mp_ld ? (const REAL *)c->m_tb : (const REAL *)c->mp_pack;
    REAL *db_ih = (REAL *)c->db_ih, *db_hh = (REAL *)c->db_hh;
    /* dg; GRU reset_after: its r and z columns are dgh's, its n columns dg_tb's (T, B, H) */
    SFX(weight_grad)(sp, N, GH, dgh, GH, c->dgh_tb ? 2 * H : GH, (const REAL *)c->dg_tb, H, xp, c->xp_ld, c->uxp,
                     I, (REAL *)c->dw_ih, I, db_ih);
    if (c->G == 3 && c->mode != 1) {
        SFX(weight_grad)(sp, N, 2 * H, dgh, GH, 2 * H, NULL, 0, hp, c->hp_ld, c->uhp, K, (REAL *)c->dw_hh, K, db_hh);
        SFX(weight_grad)(sp, N, H, dgh + 2 * H, GH, H, NULL, 0, mp, c->mp_ld, c->ump, H,
                         (REAL *)c->dw_hh + 2 * H * K, K, db_hh ? db_hh + 2 * H : NULL);
    } else {
        SFX(weight_grad)(sp, N, GH, dgh, GH, GH, NULL, 0, hp, c->hp_ld, c->uhp, K, (REAL *)c->dw_hh, K, db_hh);
    }
    if (c->proj)
        SFX(weight_grad)(sp, N, K, (const REAL *)c->dhp_tb, K, K, NULL, 0, mp, c->mp_ld, c->ump, H, (REAL *)c->dw_hr, H, NULL);
}
