/* LSTM, gate order i, f, g, o (torch), optional projection h = w_hr (o * tanh c) and peephole
 * (i, f see c_{t-1}; o sees c_t). Compiled once per dtype (see common.h). */

/* The cell update on one vector of units, in two halves so that a caller can run each over several rows
 * (see lstm_fwd_epi). With sigmoid = 1 / d and tanh = n / d: i * g = n_g r and o * tanh c = n_c s, where
 * r = 1 / (d_i d_g) and s = 1 / (d_o d_c); three divisions a unit instead of five (four in training, which
 * also keeps i = d_g r, g = n_g / d_g, o = d_c s, with i and o exactly 1 where d_i, d_o are). Where the
 * sigmoid is 0, d_i, d_o are inf, or 1 + e^hi with subnormals flushed (vsigmoid_den), and r, s
 * are 0 either way; d_g, d_c lie in [1, 2], so the finite products do not overflow.
 * First half: from the pre-activations pre (i, f, g, o; the peephole terms of i and f already added), f,
 * i * g and d_o (with o_later, o's pre-activation, which waits for its peephole term). Training (g not
 * NULL) gets i, f, g in g[0..2]. */
static RF_INLINE void SFX(lstm_gates)(const VEC pre[4], int o_later, VEC *f, VEC *ig, VEC *dod, VEC *g) {
    VEC ng;
    const VEC di = SFX(vsigmoid_den)(pre[0]), dg = SFX(vtanh_nd)(pre[2], &ng), r = (REAL)1 / (di * dg);
    VEC igv = ng * r;
    RF_ROUNDED(igv); /* c_t = f c_{t-1} + i g fuses f c_{t-1} in every caller (see RF_ROUNDED) */
    *ig = igv;
    *f = (REAL)1 / SFX(vsigmoid_den)(pre[1]);
    *dod = o_later ? pre[3] : SFX(vsigmoid_den)(pre[3]);
    if (g) { /* i exactly 1 where d_i rounds to 1 (a saturated gate has a zero derivative) */
        g[0] = SFX(vselect)(di == (REAL)1, SFX(vsplat)(1), dg * r);
        g[1] = *f;
        g[2] = ng / dg;
    }
}
/* Second half: m = o * tanh(c_t), from c_t and d_o (with o_later, o's pre-activation, to which the peephole
 * term po * c_t is added first); o in g[3] for training. */
static RF_INLINE VEC SFX(lstm_out)(VEC cn, VEC dod, int o_later, VEC po, VEC *g) {
    if (o_later) dod = SFX(vsigmoid_den)(dod + po * cn);
    VEC nc;
    const VEC dc = SFX(vtanh_nd)(cn, &nc), s = (REAL)1 / (dod * dc);
    if (g) g[3] = SFX(vselect)(dod == (REAL)1, SFX(vsplat)(1), dc * s);
    return nc * s;
}
/* The whole update, c_{t-1} = cp: returns m, and c_t in *cn (and the gates in g[0..3] when g is not NULL). */
static RF_INLINE VEC SFX(lstm_cell)(const VEC pre[4], VEC cp, int peep, VEC po, VEC *g, VEC *cn) {
    VEC f, ig, dod;
    SFX(lstm_gates)(pre, peep, &f, &ig, &dod, g);
    *cn = f * cp + ig;
    return SFX(lstm_out)(*cn, dod, peep, po, g);
}

/* Row i's pre-activations in lstm_fwd_epi: accumulators + xw row (xr NULL: the accumulators hold x's part
 * already, fuse_x) (+ bias). */
static RF_INLINE void SFX(lstm_epi_pre)(VEC pre[4], const REAL *acc, const REAL *xr, rf_index H, const REAL *bias) {
    if (xr)
        _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) pre[q] = SFX(vload)(acc + q * V) + SFX(vload)(xr + q * H);
    else
        _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) pre[q] = SFX(vload)(acc + q * V);
    if (bias)
        _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) pre[q] += SFX(vload)(bias + q * H);
}

/* The gate phase's epilogue for nr rows of one panel group in the common case (no projection or peephole,
 * every row active, a whole vector of units), out of line: inside the worker, GCC kept reloading the
 * activations' constants and spilling between the rows (LSTM mid steps -2.5% here). Row i's accumulators
 * at acc + i*sa, xw row at xr + i*sx (gates H apart; xr NULL with fuse_x), c at cb + i*sc, h_{t-1} at
 * hp + i*sh, h and y at hn + i*sh and y + i*sy, bias at bias + i*sbias; for training (gs not NULL) the saves
 * at gs + i*sg, cs, cps, hps (stride sy). The "rows" may also be a single row's consecutive panel groups
 * (batch 1: strides of V units), so that their chains overlap as rows' do.
 * Inference runs in phases over the rows, each a loop of independent short iterations (the gates of every
 * row, then c_t, then o * tanh c_t): row by row, one row's chain of dependent operations (~200 cycles:
 * gates, c_t, tanh c_t) filled the reorder window and the core waited on it (this function alone, 6 rows,
 * one core: -15%; LSTM mid inference -1.4%). Training stays row by row: in phases, with its saves, the
 * training forward measured 5% slower (LSTM mid and big). The bits are the same either way. */
RF_CLONES RF_KERNEL_FN void SFX(lstm_fwd_epi)(
        int nr, const REAL *acc, rf_index sa, const REAL *xr, rf_index sx, rf_index H, const REAL *bias,
        rf_index sbias, REAL *cb, rf_index sc, const REAL *hp, REAL *hn, rf_index sh, REAL *y, rf_index sy,
        REAL *gs, rf_index sg, REAL *cs, REAL *cps, REAL *hps, int nts) {
    if (gs) {
        for (int i = 0; i < nr; i++) {
            VEC pre[4], g[4], cn;
            SFX(lstm_epi_pre)(pre, acc + i * sa, xr ? xr + i * sx : NULL, H, bias ? bias + i * sbias : NULL);
            const VEC cp = SFX(vload)(cb + i * sc);
            const VEC m = SFX(lstm_cell)(pre, cp, 0, SFX(vsplat)(0), g, &cn);
            SFX(vstore)(cb + i * sc, cn);
            SFX(vstore)(hn + i * sh, m);
            SFX(vstore)(y + i * sy, m);
            /* the gates (row stride sg), c_t, c_{t-1} and h_{t-1} (stride sy) */
            _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) SFX(vstore_save)(gs + i * sg + q * H, g[q], nts);
            SFX(vstore_save)(cs + i * sy, cn, nts);
            SFX(vstore_save)(cps + i * sy, cp, nts);
            SFX(vstore_save)(hps + i * sy, SFX(vload)(hp + i * sh), nts);
        }
        return;
    }
    VEC f[8], ig[8], dod[8];
    for (int i = 0; i < nr; i++) {
        VEC pre[4];
        SFX(lstm_epi_pre)(pre, acc + i * sa, xr ? xr + i * sx : NULL, H, bias ? bias + i * sbias : NULL);
        SFX(lstm_gates)(pre, 0, &f[i], &ig[i], &dod[i], NULL);
    }
    for (int i = 0; i < nr; i++) SFX(vstore)(cb + i * sc, f[i] * SFX(vload)(cb + i * sc) + ig[i]);
    for (int i = 0; i < nr; i++) {
        const VEC m = SFX(lstm_out)(SFX(vload)(cb + i * sc), dod[i], 0, SFX(vsplat)(0), NULL);
        SFX(vstore)(hn + i * sh, m);
        SFX(vstore)(y + i * sy, m);
    }
}

/* Forward, gate phase for loop step s: GEMM of h_{s-1} with the w_hh panels, then the cell update on the
 * accumulators. Without projection it writes h_s and y; with projection it leaves m = o*tanh(c) in mbuf. */
static RF_INLINE void SFX(lstm_fwd_gates)(const rf_ctx *c, rf_index s, rf_split *sp, SFX(xwq) *q) {
    const rf_index B = c->B, H = c->H, K = c->K, GH = 4 * H, Hp = RF_ROUND(H);
    const int ub = c->ub, NV = 4 * ub, proj = c->proj;
    const REAL *hprev = (const REAL *)c->hbuf + (s & 1) * B * K;
    REAL *hnext = (REAL *)c->hbuf + ((s + 1) & 1) * B * K;
    REAL *cb = (REAL *)c->cbuf, *mb = (REAL *)c->mbuf, *y = (REAL *)c->y;
    const REAL *xws = SFX(xw_step)(c, s), *bias = (const REAL *)c->bias, *peep = (const REAL *)c->peep;
    const REAL *panel = (const REAL *)c->w_pack;
    REAL *g_tb = (REAL *)c->gates_tb, *c_tb = (REAL *)c->c_tb, *cp_tb = (REAL *)c->cprev_tb;
    REAL *hp_tb = (REAL *)c->hprev_tb, *m_tb = (REAL *)c->m_tb;
    rf_index g_lo, g_hi;
    rf_groups(sp, RF_NGRP(H, ub), &g_lo, &g_hi);
    REAL out[8 * 4 * V] __attribute__((aligned(64))), part[RF_OVL_MAXV * V] __attribute__((aligned(64)));
    /* with a projection h_{s-1} comes from the projection's groups: one block */
    const rf_index K1 = proj ? 0 : SFX(row1_k1)(c, H, ub);
    const int done = SFX(row1_begin)(c, sp, q, s, hprev, K, K1, panel, NV, g_lo, g_hi, part);
    /* the common case's out-of-line epilogue (lstm_fwd_epi), which may store the saves past the caches: the
     * gates, c_t, c_{t-1}, h_{t-1} */
    const int common = !peep && !proj && !c->lengths && ub == 1;
    const int nts = common && rf_saves_nt(c, s, 7 * H * (rf_index)sizeof(REAL));
    RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr) {
        const REAL *A[8];
        for (int i = 0; i < nr; i++) A[i] = hprev + (r0 + i) * K;
        for (rf_index grp = g_cur; grp < g_cur + m; grp++) {
            if (grp == g_cur && (s < 0 || SFX(any_active)(c, s, r0, nr))) {
                const int tr = c->training, pfsave = tr && !nts;
                const SFX(pfs) st[6] = {{xws, GH, H, 4, 0}, {proj || !tr ? NULL : y, K, 0, 1, 1},
                                        {pfsave ? g_tb : NULL, GH, H, 4, 1}, {pfsave ? c_tb : NULL, H, 0, 1, 1},
                                        {pfsave ? cp_tb : NULL, H, 0, 1, 1},
                                        {pfsave ? (proj ? m_tb : hp_tb) : NULL, proj ? H : K, 0, 1, 1}};
                SFX(pf_tile)(c, s, r0, nr, g_cur * ub * V, RF_MIN(ub * V, H - g_cur * ub * V), st, 6);
                SFX(gates_gemm)(c, s, r0, nr, (int)m, NV, A, K, panel, g_cur, out,
                                RF_STEP_ROW1(g_lo, g_hi, K1, done, done ? part + (g_cur - g_lo) * NV * V : NULL),
                                NULL, 1);
            }
            if (common && (grp + 1) * V <= H) {
                rf_index t, len; /* every row at the same time index (no lengths) */
                SFX(row_at)(c, s, r0, &t, &len);
                const rf_index j0 = grp * V, row = t * B + r0;
                const int tr = c->training;
                rf_index rs; /* a single row: its groups as rows V units apart (epi_rows) */
                const int n = SFX(epi_rows)(nr, g_cur, m, grp, H, 1, &rs);
                const rf_index sx = rs ? rs : GH, sc = rs ? rs : Hp, sk = rs ? rs : K;
                SFX(lstm_fwd_epi)(n, out + (grp - g_cur) * NV * V, NV * V, xws ? xws + r0 * GH + j0 : NULL, sx, H,
                                  bias ? bias + j0 : NULL, rs, cb + r0 * Hp + j0, sc, hprev + r0 * K + j0,
                                  hnext + r0 * K + j0, sk, y + row * K + j0, sk, tr ? g_tb + row * GH + j0 : NULL,
                                  sx, tr ? c_tb + row * H + j0 : NULL, tr ? cp_tb + row * H + j0 : NULL,
                                  tr ? hp_tb + row * K + j0 : NULL, nts);
                if (rs) break;
                continue;
            }
            for (int i = 0; i < nr; i++) {
                const rf_index b = r0 + i;
                rf_index t, len;
                const int active = SFX(row_at)(c, s, b, &t, &len);
                for (int sb = 0; sb < ub; sb++) {
                    const rf_index j0 = (grp * ub + sb) * V;
                    if (j0 >= H) break;
                    const int nl = (int)(H - j0 < V ? H - j0 : V);
                    if (!active) { /* padded step: state carries over, output and saves are 0 */
                        if (!proj) {
                            SFX(copy_n)(hnext + b * K + j0, hprev + b * K + j0, nl);
                            SFX(zero_n)(y + (s * B + b) * K + j0, nl);
                        }
                        if (c->training) {
                            for (int g = 0; g < 4; g++) SFX(zero_n)(g_tb + (s * B + b) * GH + g * H + j0, nl);
                            SFX(zero_n)(c_tb + (s * B + b) * H + j0, nl);
                            SFX(zero_n)(cp_tb + (s * B + b) * H + j0, nl);
                            if (proj) SFX(zero_n)(m_tb + (s * B + b) * H + j0, nl);
                            else SFX(zero_n)(hp_tb + (s * B + b) * K + j0, nl);
                        }
                        continue;
                    }
                    const REAL *acc = out + ((grp - g_cur + i) * NV + sb * 4) * V;
                    VEC pre[4];
                    _Pragma("GCC unroll 4") for (int g = 0; g < 4; g++) {
                        pre[g] = SFX(vload)(acc + g * V);
                        if (xws) pre[g] += SFX(vload_n)(xws + b * GH + g * H + j0, nl);
                    }
                    if (bias)
                        _Pragma("GCC unroll 4") for (int g = 0; g < 4; g++)
                            pre[g] += SFX(vload_n)(bias + g * H + j0, nl);
                    const VEC cp = SFX(vload)(cb + b * Hp + j0);
                    if (peep) {
                        pre[0] += SFX(vload_n)(peep + j0, nl) * cp;
                        pre[1] += SFX(vload_n)(peep + H + j0, nl) * cp;
                    }
                    VEC gv[4], cn;
                    const VEC m = SFX(lstm_cell)(pre, cp, peep != NULL,
                                                 peep ? SFX(vload_n)(peep + 2 * H + j0, nl) : SFX(vsplat)(0),
                                                 c->training ? gv : NULL, &cn);
                    SFX(vstore)(cb + b * Hp + j0, cn);
                    if (proj) {
                        SFX(vstore_n)(mb + b * H + j0, m, nl);
                    } else {
                        SFX(vstore_n)(hnext + b * K + j0, m, nl);
                        SFX(vstore_n)(y + (t * B + b) * K + j0, m, nl);
                    }
                    if (c->training) {
                        REAL *gs = g_tb + (t * B + b) * GH + j0;
                        for (int g = 0; g < 4; g++) SFX(vstore_n)(gs + g * H, gv[g], nl);
                        SFX(vstore_n)(c_tb + (t * B + b) * H + j0, cn, nl);
                        SFX(vstore_n)(cp_tb + (t * B + b) * H + j0, cp, nl);
                        if (proj) SFX(vstore_n)(m_tb + (t * B + b) * H + j0, m, nl);
                        else SFX(copy_n)(hp_tb + (t * B + b) * K + j0, hprev + b * K + j0, nl);
                    }
                }
            }
        }
    }
}

/* Forward, projection phase: h_s = m @ w_hr^T over blocks of the P outputs. */
static RF_INLINE void SFX(lstm_fwd_proj)(const rf_ctx *c, rf_index s, const rf_split *sp) {
    const rf_index B = c->B, H = c->H, K = c->K;
    const int ub = c->ub2, NV = ub;
    const REAL *hprev = (const REAL *)c->hbuf + (s & 1) * B * K;
    REAL *hnext = (REAL *)c->hbuf + ((s + 1) & 1) * B * K;
    const REAL *mb = (const REAL *)c->mbuf, *panel = (const REAL *)c->w2_pack;
    REAL *y = (REAL *)c->y, *hp_tb = (REAL *)c->hprev_tb;
    rf_index g_lo, g_hi;
    rf_groups(sp, RF_NGRP(K, ub), &g_lo, &g_hi);
    REAL out[8 * 4 * V] __attribute__((aligned(64)));
    RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr) {
        const REAL *A[8];
        for (int i = 0; i < nr; i++) A[i] = mb + (r0 + i) * H;
        for (rf_index grp = g_cur; grp < g_cur + m; grp++) {
            if (grp == g_cur && (s < 0 || SFX(any_active)(c, s, r0, nr))) {
                const SFX(pfs) st[2] = {{c->training ? y : NULL, K, 0, 1, 1},
                                        {c->training ? hp_tb : NULL, K, 0, 1, 1}};
                SFX(pf_tile)(c, s, r0, nr, g_cur * ub * V, RF_MIN(ub * V, K - g_cur * ub * V), st, 2);
                SFX(step_gemm)(nr, (int)m, NV, A, H, panel, g_cur, out,
                                RF_STEP_AHEAD(g_lo, g_hi));
            }
            for (int i = 0; i < nr; i++) {
                const rf_index b = r0 + i;
                rf_index t, len;
                const int active = SFX(row_at)(c, s, b, &t, &len);
                for (int sb = 0; sb < ub; sb++) {
                    const rf_index p0 = (grp * ub + sb) * V;
                    if (p0 >= K) break;
                    const int nl = (int)(K - p0 < V ? K - p0 : V);
                    if (!active) {
                        SFX(copy_n)(hnext + b * K + p0, hprev + b * K + p0, nl);
                        SFX(zero_n)(y + (s * B + b) * K + p0, nl);
                        if (c->training) SFX(zero_n)(hp_tb + (s * B + b) * K + p0, nl);
                        continue;
                    }
                    const VEC h = SFX(vload)(out + ((grp - g_cur + i) * NV + sb) * V);
                    SFX(vstore_n)(hnext + b * K + p0, h, nl);
                    SFX(vstore_n)(y + (t * B + b) * K + p0, h, nl);
                    if (c->training) SFX(copy_n)(hp_tb + (t * B + b) * K + p0, hprev + b * K + p0, nl);
                }
            }
        }
    }
}

RF_CLONES void SFX(lstm_fwd_worker)(const rf_ctx *c, int tid, int nt, rf_barrier *bar) {
    rf_split sp;
    rf_split_init(&sp, c, tid, nt, bar);
    if (SFX(fwd_begin)(c, &sp)) return;
    SFX(xwq) q;
    SFX(xwq_init)(c, &sp, 1, &q);
    for (rf_index s = 0; s < c->T; s++) {
        SFX(project_for)(c, &sp, &q, s);
        SFX(lstm_fwd_gates)(c, s, &sp, &q); /* finishes the last step's barrier */
        rf_step_arrive(&sp);
        if (c->proj) {
            SFX(step_finish)(c, &sp, &q);
            SFX(lstm_fwd_proj)(c, s, &sp);
            rf_step_arrive(&sp);
        }
    }
    SFX(step_finish)(c, &sp, &q);
    rf_nt_fence();
}

void SFX(rf_lstm_forward)(const rf_ctx *c) { RF_PARALLEL(c, SFX(lstm_fwd_worker)); }

/* Backward cell math for row b, units j0..j0+nl at real time t, given dh (gradient of m = o*tanh c, i.e.
 * of h without projection). The dc carry lives in cbuf; at the row's last step it starts from dc_n. */
static RF_INLINE void SFX(lstm_bwd_cell)(const rf_ctx *c, rf_index s, rf_index t, rf_index len,
                                        rf_index b, rf_index j0, int nl, VEC dh) {
    const rf_index B = c->B, H = c->H, GH = 4 * H, Hp = RF_ROUND(H);
    const REAL *peep = (const REAL *)c->peep, *dc_n = (const REAL *)c->dc_n;
    REAL *dcb = (REAL *)c->cbuf;
    const REAL *gs = (const REAL *)c->gates_tb + (t * B + b) * GH + j0;
    const VEC ig = SFX(vload_n)(gs, nl), fg = SFX(vload_n)(gs + H, nl);
    const VEC gg = SFX(vload_n)(gs + 2 * H, nl), og = SFX(vload_n)(gs + 3 * H, nl);
    const VEC cn = SFX(vload_n)((const REAL *)c->c_tb + (t * B + b) * H + j0, nl);
    const VEC cp = SFX(vload_n)((const REAL *)c->cprev_tb + (t * B + b) * H + j0, nl);
    VEC dc = s == len - 1 ? (dc_n ? SFX(vload_n)(dc_n + b * H + j0, nl) : SFX(vsplat)(0))
                          : SFX(vload)(dcb + b * Hp + j0);
    const VEC tc = SFX(vtanh)(cn);
    const VEC do_pre = dh * tc * og * (1 - og);
    dc += dh * og * (1 - tc * tc);
    if (peep) dc += do_pre * SFX(vload_n)(peep + 2 * H + j0, nl);
    const VEC di_pre = dc * gg * ig * (1 - ig);
    const VEC df_pre = dc * cp * fg * (1 - fg);
    const VEC dg_pre = dc * ig * (1 - gg * gg);
    VEC dcp = dc * fg;
    if (peep) dcp += di_pre * SFX(vload_n)(peep + j0, nl) + df_pre * SFX(vload_n)(peep + H + j0, nl);
    SFX(vstore)(dcb + b * Hp + j0, dcp);
    REAL *dg = (REAL *)c->dg_tb + (t * B + b) * GH + j0;
    SFX(vstore_n)(dg, di_pre, nl);
    SFX(vstore_n)(dg + H, df_pre, nl);
    SFX(vstore_n)(dg + 2 * H, dg_pre, nl);
    SFX(vstore_n)(dg + 3 * H, do_pre, nl);
}

/* Backward recurrent GEMM for loop step s (s = -1 gives dh0): dh_s = dg_{s+1} @ w_hh over blocks of the
 * K outputs. Without projection the cell math follows on the accumulators; with it, dh_s (plus dy and
 * dh_n) is stored in dhp_tb for the projection phase. */
static RF_INLINE void SFX(lstm_bwd_rec)(const rf_ctx *c, rf_index s, const rf_split *sp) {
    const rf_index B = c->B, H = c->H, K = c->K, GH = 4 * H;
    const int ub = c->uq, NV = ub, proj = c->proj;
    const REAL *dg_tb = (const REAL *)c->dg_tb, *zero = (const REAL *)c->zero;
    const REAL *dy = (const REAL *)c->dy, *dh_n = (const REAL *)c->dh_n;
    const REAL *panel = (const REAL *)c->wq_pack;
    REAL *dhp_tb = (REAL *)c->dhp_tb, *dh0 = (REAL *)c->dh0;
    rf_index g_lo, g_hi;
    rf_groups(sp, RF_NGRP(K, ub), &g_lo, &g_hi);
    REAL out[8 * 4 * V] __attribute__((aligned(64)));
    RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr) {
        const REAL *A[8];
        for (int i = 0; i < nr; i++) {
            rf_index t1, len1;
            const int act1 = SFX(row_at)(c, s + 1, r0 + i, &t1, &len1);
            A[i] = act1 ? dg_tb + (t1 * B + r0 + i) * GH : zero;
        }
        for (rf_index grp = g_cur; grp < g_cur + m; grp++) {
            if (grp == g_cur && (s < 0 || SFX(any_active)(c, s, r0, nr))) {
                const SFX(pfs) st[6] = {{dy, K, 0, 1, 1}, {proj ? dhp_tb : NULL, K, 0, 1, 1},
                                        {proj ? NULL : (const REAL *)c->gates_tb, GH, H, 4, 1},
                                        {proj ? NULL : (const REAL *)c->c_tb, H, 0, 1, 1},
                                        {proj ? NULL : (const REAL *)c->cprev_tb, H, 0, 1, 1},
                                        {proj ? NULL : dg_tb, GH, H, 4, 1}};
                SFX(pf_tile)(c, s, r0, nr, g_cur * ub * V, RF_MIN(ub * V, K - g_cur * ub * V), st, 6);
                if (SFX(any_active)(c, s + 1, r0, nr))
                    SFX(step_gemm)(nr, (int)m, NV, A, GH, panel, g_cur, out, RF_STEP_AHEAD(g_lo, g_hi));
            }
            for (int i = 0; i < nr; i++) {
                const rf_index b = r0 + i;
                rf_index t, len;
                const int active = SFX(row_at)(c, s, b, &t, &len);
                for (int sb = 0; sb < ub; sb++) {
                    const rf_index k0 = (grp * ub + sb) * V;
                    if (k0 >= K) break;
                    const int nl = (int)(K - k0 < V ? K - k0 : V);
                    VEC dh = SFX(bwd_dh)(A[i], zero, out + ((grp - g_cur + i) * NV + sb) * V);
                    if (s == len - 1 && dh_n) dh += SFX(vload_n)(dh_n + b * K + k0, nl);
                    if (s < 0) { SFX(vstore_n)(dh0 + b * K + k0, dh, nl); continue; }
                    if (!active) {
                        if (proj) SFX(zero_n)(dhp_tb + (s * B + b) * K + k0, nl);
                        else for (int g = 0; g < 4; g++)
                            SFX(zero_n)((REAL *)c->dg_tb + (s * B + b) * GH + g * H + k0, nl);
                        continue;
                    }
                    if (dy) dh += SFX(vload_n)(dy + (t * B + b) * K + k0, nl);
                    if (proj) SFX(vstore_n)(dhp_tb + (t * B + b) * K + k0, dh, nl);
                    else SFX(lstm_bwd_cell)(c, s, t, len, b, k0, nl, dh);
                }
            }
        }
    }
}

/* Backward projection phase: dm = dh_s @ w_hr over blocks of H, then the cell math. */
static RF_INLINE void SFX(lstm_bwd_proj)(const rf_ctx *c, rf_index s, const rf_split *sp) {
    const rf_index B = c->B, H = c->H, K = c->K, GH = 4 * H;
    const int ub = c->uq2, NV = ub;
    const REAL *dhp_tb = (const REAL *)c->dhp_tb, *zero = (const REAL *)c->zero;
    const REAL *panel = (const REAL *)c->wq2_pack;
    rf_index g_lo, g_hi;
    rf_groups(sp, RF_NGRP(H, ub), &g_lo, &g_hi);
    REAL out[8 * 4 * V] __attribute__((aligned(64)));
    RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr) {
        const REAL *A[8];
        for (int i = 0; i < nr; i++) {
            rf_index t, len;
            A[i] = SFX(row_at)(c, s, r0 + i, &t, &len) ? dhp_tb + (t * B + r0 + i) * K : zero;
        }
        for (rf_index grp = g_cur; grp < g_cur + m; grp++) {
            if (grp == g_cur && (s < 0 || SFX(any_active)(c, s, r0, nr))) {
                const SFX(pfs) st[4] = {{(const REAL *)c->gates_tb, GH, H, 4, 1}, {(const REAL *)c->c_tb, H, 0, 1, 1},
                                        {(const REAL *)c->cprev_tb, H, 0, 1, 1}, {(const REAL *)c->dg_tb, GH, H, 4, 1}};
                SFX(pf_tile)(c, s, r0, nr, g_cur * ub * V, RF_MIN(ub * V, H - g_cur * ub * V), st, 4);
                SFX(step_gemm)(nr, (int)m, NV, A, K, panel, g_cur, out,
                                RF_STEP_AHEAD(g_lo, g_hi));
            }
            for (int i = 0; i < nr; i++) {
                const rf_index b = r0 + i;
                rf_index t, len;
                const int active = SFX(row_at)(c, s, b, &t, &len);
                for (int sb = 0; sb < ub; sb++) {
                    const rf_index j0 = (grp * ub + sb) * V;
                    if (j0 >= H) break;
                    const int nl = (int)(H - j0 < V ? H - j0 : V);
                    if (!active) {
                        for (int g = 0; g < 4; g++)
                            SFX(zero_n)((REAL *)c->dg_tb + (s * B + b) * GH + g * H + j0, nl);
                        continue;
                    }
                    SFX(lstm_bwd_cell)(c, s, t, len, b, j0, nl, SFX(vload)(out + ((grp - g_cur + i) * NV + sb) * V));
                }
            }
        }
    }
}

RF_CLONES void SFX(lstm_bwd_worker)(const rf_ctx *c, int tid, int nt, rf_barrier *bar) {
    rf_split sp;
    rf_split_init(&sp, c, tid, nt, bar);
    SFX(pack_panels)(c, &sp);
    for (rf_index s = c->T - 1; s >= rf_bwd_last(c); s--) {
        SFX(lstm_bwd_rec)(c, s, &sp);
        rf_sync(&sp);
        if (c->proj && s >= 0) {
            SFX(lstm_bwd_proj)(c, s, &sp);
            rf_sync(&sp);
        }
    }
    SFX(input_gradient)(c, &sp);
    SFX(weight_gradients)(c, &sp);
}

void SFX(rf_lstm_backward)(const rf_ctx *c) { RF_PARALLEL(c, SFX(lstm_bwd_worker)); }
