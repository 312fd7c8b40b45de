/* rnnfast compiled kernels: the time loops of RNN, LSTM and GRU, forward and backward.
 *
 * Everything here receives valid, C-contiguous data of one dtype; rnnfast/ops.py validates first.
 * Notation as in the Python code: T steps, B batch rows, H hidden units, K = width of the recurrent state
 * (H, or P for an LSTM with projection), G gates. "tb" arrays are (T, B, ...) in real time order.
 *
 * The per-step recurrent GEMM runs on weights packed once per call into panels (see pack_panels): a panel
 * group holds NV vectors of V lanes for every reduction index k, so one register tile (R rows x NV vectors)
 * accumulates all gates of `ub` blocks of V hidden units and the gate math runs on the accumulators.
 * Every output element is a chain of FMAs over k in order 0..K-1, whatever tile or thread computes it, so
 * results are bitwise independent of the thread count and of the split.
 */
#ifndef RNNFAST_KERNELS_H
#define RNNFAST_KERNELS_H
#include <stddef.h>
#include <stdint.h>

typedef int64_t rf_index;

/* One operand to pack into panels at the start of a call, element (g, j, k) = src[g*s_g + j*s_j + k*s_k]
 * (group grp holds k-major rows of Gs*ub vectors of V lanes; see pack_groups in common.h): packing runs inside the
 * kernel's parallel region, each thread packing its share of the panel groups. */
typedef struct {
    const void *src;
    void *dst;
    rf_index s_g, s_j, s_k, Gs, N, K, ub;
    /* Optional: the reduction index k is a (t, b) row, k = t*row_B + b; rows with t >= row_len[b] (padding,
     * never read, as torch never reads the padding of a PackedSequence) pack as zeros. */
    const int64_t *row_len;
    rf_index row_B;
} rf_pack_spec;

#define RF_MAX_PACKS 8

/* One context for all cells and both dtypes; pointers are float* or double* as the dtype says. Unused
 * fields are NULL / 0. Sizes are 64-bit so that T*B*G*H beyond 2**31 indexes correctly. */
typedef struct {
    rf_index T, B, n_in, H, K, G;   /* n_in = I (the name I is taken by complex.h) */
    int reverse;            /* process each row from its last valid step down to 0 */
    int mode;               /* RNN: 0 tanh, 1 relu.  GRU: 1 reset_after (torch), 0 reset before */
    int training;           /* keep what backward needs in the *_tb arrays */
    int proj;               /* LSTM with projection (K = P < H) */
    int n_threads;
    int split;              /* 0: the default rule (kernels.c), 1: batch rows per thread, 2: hidden units */
    int hp_shared;          /* RNN training: hprev_tb is gates_tb one step back in processing order (one
                               buffer of T + 1 states), so the forward stores no copy of h_{t-1} */
    const int64_t *lengths; /* (B,) valid steps per row, or NULL for T everywhere */
    rf_pack_spec packs[RF_MAX_PACKS];  /* panels to fill before anything else */
    int n_packs;

    /* ---- forward inputs ---- */
    const void *x;          /* (T, B, I) */
    void *x_copy;           /* (T, B, I) or NULL: the forward copies x here (a training call's private copy) */
    const void *wih_pack;   /* panels of w_ih (all G gates), for the input projection */
    int uih;                /* unit blocks per group of wih_pack */
    void *xw;               /* (xw_steps, B, G*H) workspace: x @ w_ih^T (no bias) for a chunk of loop steps */
    rf_index xw_steps;      /* loop steps per chunk (1..T): each chunk is projected just before its steps, so
                               that it is read back from cache rather than memory (T when the whole fits) */
    int fuse_x;             /* LSTM, RNN, GRU reset_after: no xw; each step tile sums x_t @ w_ih^T and then
                               h @ w_hh^T in the same accumulators (common.h, fused_gemm); set by ops.py from
                               the shapes only */
    int xw_helper;          /* forward, batch 1, 2 threads: the second thread only projects (all of xw, in
                               order) while the first runs every step alone (common.h, fwd_begin) */
    int no_shadow;          /* forward, hidden split: the projection up front (project_chunk), never in the
                               barrier's shadow (xwq_init); ops.py chooses it by timings at batch 1 */
    rf_index saves_keep;    /* training forward: the bytes of saves (the last ones) stored as usual; those
                               before them go past the caches (rf_saves_nt) */
    const void *bias;       /* (G*H,) b_ih + b_hh folded (GRU reset_after: n part is b_in only), or NULL */
    const void *b_hn;       /* (H,) GRU reset_after: b_hn, kept inside r * (W_hn h + b_hn); or NULL */
    const void *peep;       /* (3, H) LSTM peephole p_i, p_f, p_o, or NULL */
    const void *w_pack;     /* forward panels of w_hh (all G gates; GRU reset-before: r, z only) */
    const void *w2_pack;    /* LSTM projection: panels of w_hr; GRU reset-before: panels of w_hn */
    int ub, ub2;            /* unit blocks per panel group for w_pack / w2_pack */
    const void *h0;         /* (B, K) */
    const void *c0;         /* (B, H) */
    void *y;                /* (T, B, K) output */
    void *h_n;              /* (B, K) */
    void *c_n;              /* (B, H) */

    /* ---- saved for backward, (T, B, ...) in real time order; zero at padded steps ---- */
    void *gates_tb;         /* (T, B, G*H) post-activation gates */
    void *c_tb;             /* (T, B, H) LSTM c_t */
    void *cprev_tb;         /* (T, B, H) LSTM c_{t-1} */
    void *hprev_tb;         /* (T, B, K) recurrent input of step t */
    void *m_tb;             /* (T, B, H) LSTM proj: o*tanh(c); GRU reset_after: W_hn h + b_hn; reset-before: r*h */

    /* ---- backward ---- */
    const void *dy;         /* (T, B, K) or NULL */
    const void *dh_n;       /* (B, K) or NULL */
    const void *dc_n;       /* (B, H) or NULL */
    const void *wq_pack;    /* backward panels: w_hh^T (GRU reset-before: r, z rows only) */
    const void *wq2_pack;   /* LSTM projection: panels of w_hr^T... (dm = dh @ w_hr); GRU reset-before: w_hn^T */
    int uq, uq2;            /* unit blocks per group for wq_pack / wq2_pack */
    void *dg_tb;            /* (T, B, G*H) gradient of the gate pre-activations (input side); GRU
                               reset_after: (T, B, H), the n part only (r and z are dgh_tb's) */
    void *dgh_tb;           /* (T, B, G*H) GRU reset_after (only): hidden-side gate gradients (n part times r) */
    void *dhp_tb;           /* (T, B, P) LSTM projection: gradient of h_t (the projected state) */
    void *dh0;              /* (B, K) out; NULL: no initial-state gradients (rf_bwd_last) */
    void *dx;               /* (T, B, I) out: dg @ w_ih, computed inside the region after the time loop */
    const void *wihq_pack;  /* panels of w_ih^T (reduction over G*H, outputs I) */
    int uihq;
    /* weight gradients, computed inside the region after dx: panels over the columns of x (T*B, I),
     * hprev (T*B, K) and m (T*B, H) (LSTM projection: o*tanh c; GRU reset before: r*h) */
    const void *xp_pack, *hp_pack, *mp_pack;
    int uxp, uhp, ump;
    rf_index xp_ld, hp_ld, mp_ld; /* nonzero: read x, hprev_tb, m_tb in place (rows this far apart), unpacked */
    void *db_ih, *db_hh;    /* (G*H,) out, or NULL: bias gradients, column sums of dg_tb and dgh_tb (or dg_tb) */
    void *dw_ih;            /* (G*H, I) out */
    void *dw_hh;            /* (G*H, K) out */
    void *dw_hr;            /* (P, H) out */
    void *dc0;              /* (B, H) out */

    /* ---- workspaces (allocated by the caller) ---- */
    void *hbuf;             /* 2 * B * K: the recurrent state, ping-pong between steps */
    void *cbuf;             /* B * Hp: LSTM cell state / backward carries (Hp = H rounded up to V) */
    void *mbuf;             /* B * H: LSTM proj m, GRU reset-before r*h */
    void *zero;             /* a zero row of max(G*H, K, H) + V elements */
} rf_ctx;

/* SIMD lanes per vector: the panel layout depends on it. */
int rf_lanes_f32(void);
int rf_lanes_f64(void);
/* Name of the code path chosen at run time for this CPU ("avx512", "avx2", "generic"). */
const char *rf_simd_path(void);
int rf_openmp_enabled(void);
int rf_max_threads(void);

/* Elements of the panels of a (Gs gates) x (N units) x (K reduction) operand, ub unit blocks per group
 * (see rf_pack_spec; the packing itself runs inside each loop's parallel region). */
rf_index rf_pack_size(rf_index Gs, rf_index N, rf_index K, rf_index ub, rf_index V);

void rf_rnn_forward_f32(const rf_ctx *c);
void rf_rnn_forward_f64(const rf_ctx *c);
void rf_rnn_backward_f32(const rf_ctx *c);
void rf_rnn_backward_f64(const rf_ctx *c);
void rf_lstm_forward_f32(const rf_ctx *c);
void rf_lstm_forward_f64(const rf_ctx *c);
void rf_lstm_backward_f32(const rf_ctx *c);
void rf_lstm_backward_f64(const rf_ctx *c);
void rf_gru_forward_f32(const rf_ctx *c);
void rf_gru_forward_f64(const rf_ctx *c);
void rf_gru_backward_f32(const rf_ctx *c);
void rf_gru_backward_f64(const rf_ctx *c);

#endif
