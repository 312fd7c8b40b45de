/* Instantiates the kernels for float32 and float64 and holds what does not depend on the dtype:
 * the thread split, the barrier, run-time SIMD dispatch. */
#include <math.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include "kernels.h"
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define RF_INLINE inline __attribute__((always_inline))

/* Each worker is compiled for AVX-512, AVX2+FMA and baseline x86-64; the loader picks one for this CPU
 * (GCC function multi-versioning). Everything it calls is inlined into it, so the whole time loop runs in
 * the chosen instruction set. Other compilers/architectures get the portable build only. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(RNNFAST_NO_CLONES)
#define RF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RF_CLONES
#endif

/* Work split of one call between threads, fixed for the whole sequence.
 * batch split: each thread owns a range of batch rows for every step, with no synchronisation at all.
 * hidden split: every thread works on all rows, owns a range of panel groups (hidden units), and the
 * threads meet at a barrier after each phase; the only way to use several cores at small batch.
 * Which thread computes an element never changes its value (see kernels.h). */
/* The per-step barrier of the hidden split: a dissemination barrier. In round r thread t signals thread
 * (t + 2^r) mod nt and waits for the signal of thread (t - 2^r) mod nt, so ceil(log2 nt) rounds, each one
 * cache line passed from one core to one other (with 2 threads: each writes the other's flag and both
 * transfers overlap). A central counter costs a chain of transfers through one contended line: 230 ns
 * per step on this machine's 2 cores against ~100 ns here. Each flag has one writer and one reader and
 * holds the writer's barrier count, which only grows, so nothing is ever reset. A waiting thread spins
 * briefly (a balanced step waits well under a microsecond) and then yields the CPU, so that on a loaded
 * or oversubscribed machine it hands its core to the thread it waits for. */
#define RF_BAR_ROUNDS 32
typedef struct {
    _Alignas(64) unsigned epoch;
} rf_flag;
typedef struct {
    rf_flag *flags;    /* nt * RF_BAR_ROUNDS, zeroed */
    rf_flag *progress; /* one more flag, zeroed: the rows a projection helper has published (common.h,
                          fwd_begin) */
} rf_barrier;

#define RF_SPINS_BEFORE_YIELD 4000

/* One turn of a wait loop (the barrier's, and the projection helper's in common.h): spin, from the 65th turn
 * with a pause, and from RF_SPINS_BEFORE_YIELD on give the CPU away. */
static RF_INLINE void rf_spin(int *spins) {
    if (*spins < RF_SPINS_BEFORE_YIELD) {
        ++*spins;
#if defined(__x86_64__) || defined(__i386__)
        if (*spins > 64) __builtin_ia32_pause();
#endif
    } else {
        sched_yield();
    }
}

/* A barrier in two halves, so that a thread can do work that needs nobody in between: arrive signals the
 * first round and returns the barrier's count; arrived tells whether the first round's signal is in;
 * finish waits for it and runs the remaining rounds. */
static inline unsigned rf_barrier_arrive(rf_barrier *b, int tid, int nt, unsigned *epoch) {
    const unsigned e = ++*epoch;
    __atomic_store_n(&b->flags[((tid + 1) % nt) * RF_BAR_ROUNDS].epoch, e, __ATOMIC_RELEASE);
    return e;
}

static inline int rf_barrier_arrived(const rf_barrier *b, int tid, unsigned e) {
    /* the writer may already be one barrier ahead: compare in wrapping arithmetic */
    return (int)(__atomic_load_n(&b->flags[tid * RF_BAR_ROUNDS].epoch, __ATOMIC_ACQUIRE) - e) >= 0;
}

static inline void rf_barrier_finish(rf_barrier *b, int tid, int nt, unsigned e) {
    for (int r = 0, d = 1; d < nt; r++, d *= 2) {
        if (r > 0) __atomic_store_n(&b->flags[((tid + d) % nt) * RF_BAR_ROUNDS + r].epoch, e, __ATOMIC_RELEASE);
        const unsigned *mine = &b->flags[tid * RF_BAR_ROUNDS + r].epoch;
        for (int spins = 0; (int)(__atomic_load_n(mine, __ATOMIC_ACQUIRE) - e) < 0;) rf_spin(&spins);
    }
}

static inline void rf_barrier_wait(rf_barrier *b, int tid, int nt, unsigned *epoch) {
    rf_barrier_finish(b, tid, nt, rf_barrier_arrive(b, tid, nt, epoch));
}

typedef struct {
    rf_index r_lo, r_hi;
    int tid, nt, batch;
    unsigned epoch;
    rf_barrier *barrier;
    unsigned pend;  /* the count of a barrier this thread has arrived at and not yet finished (has_pend) */
    int has_pend;
    int helped;     /* a single thread whose projection another thread makes (xw_helper) */
    int walk_up;    /* this step's single row sums its own k block first (common.h, row1_begin): its
                     * groups go up whatever the step (RF_STEP_TILES) */
} rf_split;

/* The rule: batch rows when every thread gets >= 16 of them. Measured 2026-11-22 (2 threads, float32,
 * inference, in-process A/B alternating the split): B = 32 (H = 256) the batch split is faster by 4-6%
 * (LSTM, GRU) and 36% (RNN, whose step is short for a barrier); B = 64 (H = 512) within +-5% either way;
 * B = 16 (H = 1024) the hidden split is faster by 8-16%. Backward: within +-4% at B = 32, 64. */
#define RF_BATCH_ROWS_PER_THREAD 16

static RF_INLINE void rf_split_init(rf_split *sp, const rf_ctx *c, int tid, int nt, rf_barrier *barrier) {
    const rf_index B = c->B;
    sp->tid = tid;
    sp->nt = nt;
    sp->epoch = 0;
    sp->pend = 0;
    sp->has_pend = 0;
    sp->helped = 0;
    sp->walk_up = 0;
    sp->barrier = barrier;
    if (nt == 1 || c->split == 1) sp->batch = 1;
    else if (c->split == 2) sp->batch = 0;
    else sp->batch = B >= (rf_index)RF_BATCH_ROWS_PER_THREAD * nt;
    if (sp->batch && nt > 1) {
        sp->r_lo = B * tid / nt;
        sp->r_hi = B * (tid + 1) / nt;
    } else {
        sp->r_lo = 0;
        sp->r_hi = B;
    }
}

/* This thread's share lo..hi of n items split evenly between the threads. */
static RF_INLINE void rf_share(const rf_split *sp, rf_index n, rf_index *lo, rf_index *hi) {
    *lo = n * sp->tid / sp->nt;
    *hi = n * (sp->tid + 1) / sp->nt;
}

/* Orders this thread's non-temporal stores (vstore_nt) before whatever follows (they are weakly ordered). */
static inline void rf_nt_fence(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_sfence();
#endif
}

/* Whether loop step s of a training forward stores its saves (row_bytes a batch row) past the caches: those
 * of the steps that backward reads last, which the saves written after them push out of the caches anyway;
 * the last c->saves_keep bytes (ops._SAVES_KEEP_BYTES) are stored as usual, for backward's first steps. */
static inline int rf_saves_nt(const rf_ctx *c, rf_index s, rf_index row_bytes) {
    return c->training && c->saves_keep >= 0 && (c->T - 1 - s) * c->B * row_bytes >= c->saves_keep;
}

/* The last step of a backward time loop: -1, the step that computes dh0 = dg_0 @ w_hh, unless the caller
 * asked for no initial-state gradients (dh0 NULL: ops' state_grads=False), which saves that GEMM. */
static RF_INLINE rf_index rf_bwd_last(const rf_ctx *c) { return c->dh0 ? -1 : 0; }

/* The panel groups of a step phase: all of them in the batch split, a share in the hidden split. */
static RF_INLINE void rf_groups(const rf_split *sp, rf_index ngrp, rf_index *lo, rf_index *hi) {
    if (sp->batch) {
        *lo = 0;
        *hi = ngrp;
    } else {
        rf_share(sp, ngrp, lo, hi);
    }
}

/* A thread whose step has a single row (batch 1) takes up to RF_ROW1_MAXG panel groups in one GEMM call
 * (gemm_row1), a multi-row step one. */
#define RF_ROW1_MAXG 4

/* A step phase's walk over its groups (common.h, RF_STEP_TILES), `done` groups in: the first group and the
 * count of the next chunk, up (rv = 0) or down; chunks of cs groups from g_lo either way. */
static RF_INLINE rf_index rf_walk_g(rf_index rv, rf_index cs, rf_index g_lo, rf_index g_hi, rf_index done) {
    const rf_index rem = g_hi - g_lo - done;
    return rv ? g_lo + (rem - 1) / cs * cs : g_lo + done;
}
static RF_INLINE rf_index rf_walk_m(rf_index rv, rf_index cs, rf_index g_lo, rf_index g_hi, rf_index done) {
    const rf_index rem = g_hi - g_lo - done;
    return rv ? rem - (rem - 1) / cs * cs : (rem < cs ? rem : cs);
}

/* The end of a step phase in the hidden split, in two halves: arrive here, finish (SFX(step_finish)) before
 * anything reads another thread's results or overwrites what another thread may still read. */
static RF_INLINE void rf_step_arrive(rf_split *sp) {
    if (sp->batch) return;
    sp->pend = rf_barrier_arrive(sp->barrier, sp->tid, sp->nt, &sp->epoch);
    sp->has_pend = 1;
}

static RF_INLINE void rf_sync(rf_split *sp) {
    if (!sp->batch) rf_barrier_wait(sp->barrier, sp->tid, sp->nt, &sp->epoch);
}

/* Around the whole-sequence phases every thread needs every other thread's rows, whatever the split. */
static RF_INLINE void rf_sync_all(rf_split *sp) {
    if (sp->nt > 1) rf_barrier_wait(sp->barrier, sp->tid, sp->nt, &sp->epoch);
}

/* Subnormals are flushed inside the kernel threads only (x86: MXCSR flush-to-zero and denormals-are-zero,
 * set on entry to a worker and restored on its way out, so the caller's floating-point mode is never
 * changed): a state or gradient that underflows would otherwise make every FMA that reads it take a
 * microcode assist. Measured (float32 RNN, T = 200, B = 64, H = 256, states decaying through the subnormal
 * range): inference 1295 -> 14.7 ms, training 3776 -> 54 ms; on normal data no change (in-process A/B,
 * same bits). A value below the smallest normal number (1.2e-38 in float32, 2.2e-308 in float64) reads and
 * is written as 0; nothing else changes. */
#if defined(__SSE__) || defined(__x86_64__)
#define RF_FLUSH_SUBNORMALS 1
static inline unsigned rf_flush_on(void) {
    const unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u); /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
}
static inline void rf_flush_off(unsigned old) { _mm_setcsr(old); }
#else
static inline unsigned rf_flush_on(void) { return 0; }
static inline void rf_flush_off(unsigned old) { (void)old; }
#endif
#define RF_FLUSHED(call)                                                                        \
    do {                                                                                        \
        const unsigned csr_ = rf_flush_on();                                                    \
        call;                                                                                   \
        rf_flush_off(csr_);                                                                     \
    } while (0)

/* One parallel region around the whole time loop. The team size is read inside the region (the runtime
 * may give fewer threads than asked). */
#ifdef _OPENMP
#define RF_PARALLEL(c, worker)                                                                  \
    do {                                                                                        \
        int nt_ = (c)->n_threads > 0 ? (c)->n_threads : 1;                                      \
        rf_barrier bar_ = {NULL, NULL};                                                         \
        if (nt_ > 1) {                                                                          \
            const size_t sz_ = ((size_t)nt_ * RF_BAR_ROUNDS + 1) * sizeof(rf_flag);             \
            bar_.flags = (rf_flag *)aligned_alloc(64, sz_);                                     \
            if (bar_.flags) {                                                                   \
                memset(bar_.flags, 0, sz_);                                                     \
                bar_.progress = bar_.flags + (size_t)nt_ * RF_BAR_ROUNDS;                       \
            } else {                                                                            \
                nt_ = 1; /* no memory for the flags: one thread needs none */                   \
            }                                                                                   \
        }                                                                                       \
        if (nt_ == 1) {                                                                         \
            RF_FLUSHED(worker(c, 0, 1, &bar_));                                                 \
        } else {                                                                                \
            _Pragma("omp parallel num_threads(nt_) shared(bar_)")                               \
            RF_FLUSHED(worker(c, omp_get_thread_num(), omp_get_num_threads(), &bar_));         \
        }                                                                                       \
        free(bar_.flags);                                                                       \
    } while (0)
#else
#define RF_PARALLEL(c, worker)                                                  \
    do {                                                                        \
        rf_barrier bar_ = {NULL, NULL};                                         \
        RF_FLUSHED(worker(c, 0, 1, &bar_));                                     \
    } while (0)
#endif

rf_index rf_pack_size(rf_index Gs, rf_index N, rf_index K, rf_index ub, rf_index V) {
    const rf_index nblk = (N + V - 1) / V, ngrp = (nblk + ub - 1) / ub;
    return ngrp * K * Gs * ub * V;
}

int rf_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int rf_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

const char *rf_simd_path(void) {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(RNNFAST_NO_CLONES)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return "avx512";
    if (__builtin_cpu_supports("x86-64-v3")) return "avx2";
#endif
    return "generic";
}

#define RF_ROUND(n) (((n) + V - 1) / V * V)
#define RF_MIN(a, b) ((a) < (b) ? (a) : (b))
#define RF_NGRP(n, ub) ((((n) + V - 1) / V + (ub) - 1) / (ub))

/* ---- float32 ---- */
#define REAL float
#define V 16
#define RF_IS_FLOAT 1
#define SFX(name) name##_f32
#include "common.h"
#include "rnn.h"
#include "lstm.h"
#include "gru.h"
int rf_lanes_f32(void) { return V; }
#undef REAL
#undef V
#undef RF_IS_FLOAT
#undef SFX
#undef VEC
#undef IVEC

/* ---- float64 ---- */
#define REAL double
#define V 8
#define RF_IS_FLOAT 0
#define SFX(name) name##_f64
#include "common.h"
#include "rnn.h"
#include "lstm.h"
#include "gru.h"
int rf_lanes_f64(void) { return V; }
