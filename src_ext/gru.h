/* GRU, gate order r, z, n (torch). reset_after (mode 1, torch's form): n = tanh(W_in x + b_in + r*(W_hn h + b_hn));
 * reset before (mode 0, Keras reset_after=False / ONNX linear_before_reset=0): n = tanh(W_in x + b_in +
 * W_hn (r*h) + b_hn), which needs r of every unit before the n GEMM: a second phase per step.
 * h' = (1 - z) * n + z * h. Compiled once per dtype. */

/* reset_after's new state from r, z, the hidden-side n term hn (b_hn added) and xw's n term xn:
 * n = tanh(xn + r * hn (+ the folded n bias bn)), h = (1 - z) * n + z * hp. */
static RF_INLINE VEC SFX(gru_after_state)(VEC r, VEC z, VEC hn, VEC xn, int has_bn, VEC bn, VEC hp, VEC *n) {
    VEC pn = xn + r * hn;
    if (has_bn) pn += bn;
    *n = SFX(vtanh)(pn);
    return (1 - z) * *n + z * hp;
}

/* Phase 1's epilogue for nr rows of one panel group in the common case (reset_after, every row active, a
 * whole vector of units), out of line as LSTM's (lstm_fwd_epi). Row i's accumulators at acc + i*sa, xw row
 * at xr + i*sx (gates H apart; NULL with fuse_x, whose accumulators hold x's part of r and z already), x's
 * n term at xn + i*sxn, h_{s-1} at hp + i*sh, h_s and y at hn + i*sh and y + i*sy; bias and b_hn at
 * this group's units (or NULL), row i's sbias further; for training (gs not NULL) the saves at gs + i*sg,
 * hps, ms (stride sy). The "rows" may also be a single row's consecutive panel groups (batch 1: strides of
 * V units), so that their chains overlap as rows' do. */
RF_CLONES RF_KERNEL_FN void SFX(gru_fwd_epi)(
        int nr, const REAL *acc, rf_index sa, const REAL *xr, rf_index sx, const REAL *xn, rf_index sxn,
        rf_index H, const REAL *bias, const REAL *b_hn, rf_index sbias, const REAL *hp, REAL *hn, rf_index sh,
        REAL *y, rf_index sy, REAL *gs, rf_index sg, REAL *hps, REAL *ms, int nts) {
    for (int i = 0; i < nr; i++) {
        const REAL *a = acc + i * sa, *bi = bias ? bias + i * sbias : NULL;
        VEC pr = SFX(vload)(a), pz = SFX(vload)(a + V);
        if (xr) {
            pr += SFX(vload)(xr + i * sx);
            pz += SFX(vload)(xr + i * sx + H);
        }
        if (bi) {
            pr += SFX(vload)(bi);
            pz += SFX(vload)(bi + H);
        }
        const VEC r = SFX(vsigmoid)(pr), z = SFX(vsigmoid)(pz);
        VEC hh = SFX(vload)(a + 2 * V), n;
        if (b_hn) hh += SFX(vload)(b_hn + i * sbias);
        const VEC h = SFX(gru_after_state)(r, z, hh, SFX(vload)(xn + i * sxn), bi != NULL,
                                           bi ? SFX(vload)(bi + 2 * H) : SFX(vsplat)(0), SFX(vload)(hp + i * sh), &n);
        SFX(vstore)(hn + i * sh, h);
        SFX(vstore)(y + i * sy, h);
        if (gs) { /* training: the gates (row stride sg), h_{s-1} and the n-gate's hidden term (stride sy) */
            SFX(vstore_save)(gs + i * sg, r, nts);
            SFX(vstore_save)(gs + i * sg + H, z, nts);
            SFX(vstore_save)(gs + i * sg + 2 * H, n, nts);
            SFX(vstore_save)(hps + i * sy, SFX(vload)(hp + i * sh), nts);
            SFX(vstore_save)(ms + i * sy, hh, nts);
        }
    }
}

/* Forward phase 1. reset_after: all three gates and the new state. Reset before: r and z only (panels of
 * w_hh rows r, z), leaving r*h in mbuf and z in cbuf for phase 2. */
static RF_INLINE void SFX(gru_fwd_rz)(const rf_ctx *c, rf_index s, rf_split *sp, SFX(xwq) *q) {
    const rf_index B = c->B, H = c->H, GH = 3 * H, Hp = RF_ROUND(H);
    const int after = c->mode == 1, Gs = after ? 3 : 2, ub = c->ub, NV = Gs * ub;
    const REAL *hprev = (const REAL *)c->hbuf + (s & 1) * B * H;
    REAL *hnext = (REAL *)c->hbuf + ((s + 1) & 1) * B * H;
    const REAL *xws = SFX(xw_step)(c, s), *bias = (const REAL *)c->bias, *b_hn = (const REAL *)c->b_hn;
    const REAL *panel = (const REAL *)c->w_pack;
    REAL *y = (REAL *)c->y, *g_tb = (REAL *)c->gates_tb, *hp_tb = (REAL *)c->hprev_tb, *m_tb = (REAL *)c->m_tb;
    REAL *mb = (REAL *)c->mbuf, *zb = (REAL *)c->cbuf;
    rf_index g_lo, g_hi;
    rf_groups(sp, RF_NGRP(H, ub), &g_lo, &g_hi);
    REAL out[8 * 4 * V] __attribute__((aligned(64))), part[RF_OVL_MAXV * V] __attribute__((aligned(64)));
    REAL xn[8 * 4 * V] __attribute__((aligned(64))); /* fuse_x: x's n term, row i block sb at (i * ub + sb) * V */
    /* reset before: h_{s-1} comes from phase n's groups: one block */
    const rf_index K1 = after ? SFX(row1_k1)(c, H, ub) : 0;
    const int done = SFX(row1_begin)(c, sp, q, s, hprev, H, K1, panel, NV, g_lo, g_hi, part);
    /* the common case's out-of-line epilogue (gru_fwd_epi), which may store the saves past the caches: r, z,
     * n, h_{s-1}, hn */
    const int common = after && !c->lengths && ub == 1;
    const int nts = common && rf_saves_nt(c, s, 5 * H * (rf_index)sizeof(REAL));
    RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr) {
        const REAL *A[8];
        for (int i = 0; i < nr; i++) A[i] = hprev + (r0 + i) * H;
        for (rf_index grp = g_cur; grp < g_cur + m; grp++) {
            if (grp == g_cur && (s < 0 || SFX(any_active)(c, s, r0, nr))) {
                const int tr = c->training, pfsave = tr && !nts;
                const SFX(pfs) st[5] = {{xws, GH, H, Gs, 0}, {after && tr ? y : NULL, H, 0, 1, 1},
                                        {pfsave ? g_tb : NULL, GH, H, Gs, 1}, {pfsave ? hp_tb : NULL, H, 0, 1, 1},
                                        {pfsave ? m_tb : NULL, H, 0, 1, 1}};
                SFX(pf_tile)(c, s, r0, nr, g_cur * ub * V, RF_MIN(ub * V, H - g_cur * ub * V), st, 5);
                SFX(gates_gemm)(c, s, r0, nr, (int)m, NV, A, H, panel, g_cur, out,
                                RF_STEP_ROW1(g_lo, g_hi, K1, done, done ? part + (g_cur - g_lo) * NV * V : NULL),
                                xn, Gs);
            }
            if (common && (grp + 1) * V <= H) {
                rf_index t, len; /* every row at the same time index (no lengths) */
                SFX(row_at)(c, s, r0, &t, &len);
                const rf_index j0 = grp * V, row = t * B + r0;
                rf_index rs; /* a single row with its xw rows: its groups as rows V units apart (epi_rows) */
                const int n = SFX(epi_rows)(nr, g_cur, m, grp, H, xws != NULL, &rs);
                const rf_index sx = rs ? rs : GH, sh = rs ? rs : H;
                SFX(gru_fwd_epi)(n, out + (grp - g_cur) * NV * V, NV * V, xws ? xws + r0 * GH + j0 : NULL, sx,
                                 xws ? xws + r0 * GH + 2 * H + j0 : xn, xws ? sx : V, H, bias ? bias + j0 : NULL,
                                 b_hn ? b_hn + j0 : NULL, rs, hprev + r0 * H + j0, hnext + r0 * H + j0, sh,
                                 y + row * H + j0, sh, c->training ? g_tb + row * GH + j0 : NULL, sx,
                                 c->training ? hp_tb + row * H + j0 : NULL, c->training ? m_tb + row * H + j0 : NULL,
                                 nts);
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
                    if (!active) {
                        if (after) {
                            SFX(copy_n)(hnext + b * H + j0, hprev + b * H + j0, nl);
                            SFX(zero_n)(y + (s * B + b) * H + j0, nl);
                        }
                        if (c->training) {
                            for (int g = 0; g < 3; g++) SFX(zero_n)(g_tb + (s * B + b) * GH + g * H + j0, nl);
                            SFX(zero_n)(hp_tb + (s * B + b) * H + j0, nl);
                            SFX(zero_n)(m_tb + (s * B + b) * H + j0, nl);
                        }
                        continue;
                    }
                    const REAL *acc = out + ((grp - g_cur + i) * NV + sb * Gs) * V;
                    const REAL *xr = xws ? xws + b * GH + j0 : NULL;
                    VEC pr = SFX(vload)(acc), pz = SFX(vload)(acc + V);
                    if (xr) {
                        pr += SFX(vload_n)(xr, nl);
                        pz += SFX(vload_n)(xr + H, nl);
                    }
                    if (bias) {
                        pr += SFX(vload_n)(bias + j0, nl);
                        pz += SFX(vload_n)(bias + H + j0, nl);
                    }
                    const VEC r = SFX(vsigmoid)(pr), z = SFX(vsigmoid)(pz);
                    const VEC hp = SFX(vload_n)(hprev + b * H + j0, nl);
                    REAL *gs = g_tb + (t * B + b) * GH + j0;
                    if (after) {
                        VEC hn = SFX(vload)(acc + 2 * V), n;
                        if (b_hn) hn += SFX(vload_n)(b_hn + j0, nl);
                        const VEC xnv = xr ? SFX(vload_n)(xr + 2 * H, nl) : SFX(vload)(xn + (i * ub + sb) * V);
                        const VEC h = SFX(gru_after_state)(r, z, hn, xnv, bias != NULL,
                                                           bias ? SFX(vload_n)(bias + 2 * H + j0, nl) : SFX(vsplat)(0),
                                                           hp, &n);
                        SFX(vstore_n)(hnext + b * H + j0, h, nl);
                        SFX(vstore_n)(y + (t * B + b) * H + j0, h, nl);
                        if (c->training) {
                            SFX(vstore_n)(gs + 2 * H, n, nl);
                            SFX(vstore_n)(m_tb + (t * B + b) * H + j0, hn, nl);
                        }
                    } else {
                        SFX(vstore_n)(mb + b * H + j0, r * hp, nl);
                        SFX(vstore)(zb + b * Hp + j0, z);
                        if (c->training) SFX(vstore_n)(m_tb + (t * B + b) * H + j0, r * hp, nl);
                    }
                    if (c->training) {
                        SFX(vstore_n)(gs, r, nl);
                        SFX(vstore_n)(gs + H, z, nl);
                        SFX(copy_n)(hp_tb + (t * B + b) * H + j0, hprev + b * H + j0, nl);
                    }
                }
            }
        }
    }
}

/* Forward phase 2 (reset before only): n = tanh(xw_n + (r*h) @ w_hn^T + b_in + b_hn), new state. */
static RF_INLINE void SFX(gru_fwd_n)(const rf_ctx *c, rf_index s, const rf_split *sp) {
    const rf_index B = c->B, H = c->H, GH = 3 * H, Hp = RF_ROUND(H);
    const int ub = c->ub2, NV = ub;
    const REAL *hprev = (const REAL *)c->hbuf + (s & 1) * B * H;
    REAL *hnext = (REAL *)c->hbuf + ((s + 1) & 1) * B * H;
    const REAL *xws = SFX(xw_step)(c, s), *bias = (const REAL *)c->bias, *panel = (const REAL *)c->w2_pack;
    const REAL *mb = (const REAL *)c->mbuf, *zb = (const REAL *)c->cbuf;
    REAL *y = (REAL *)c->y, *g_tb = (REAL *)c->gates_tb;
    rf_index g_lo, g_hi;
    rf_groups(sp, RF_NGRP(H, ub), &g_lo, &g_hi);
    REAL out[8 * 4 * V] __attribute__((aligned(64)));
    RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr) {
        const REAL *A[8];
        for (int i = 0; i < nr; i++) A[i] = mb + (r0 + i) * H;
        for (rf_index grp = g_cur; grp < g_cur + m; grp++) {
            if (grp == g_cur && (s < 0 || SFX(any_active)(c, s, r0, nr))) {
                const SFX(pfs) st[3] = {{xws + 2 * H, GH, 0, 1, 0}, {c->training ? y : NULL, H, 0, 1, 1},
                                        {c->training ? g_tb + 2 * H : NULL, GH, 0, 1, 1}};
                SFX(pf_tile)(c, s, r0, nr, g_cur * ub * V, RF_MIN(ub * V, H - g_cur * ub * V), st, 3);
                SFX(step_gemm)(nr, (int)m, NV, A, H, panel, g_cur, out,
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
                        SFX(copy_n)(hnext + b * H + j0, hprev + b * H + j0, nl);
                        SFX(zero_n)(y + (s * B + b) * H + j0, nl);
                        continue;
                    }
                    VEC pn = SFX(vload)(out + ((grp - g_cur + i) * NV + sb) * V) + SFX(vload_n)((xws + b * GH) + 2 * H + j0, nl);
                    if (bias) pn += SFX(vload_n)(bias + 2 * H + j0, nl);
                    const VEC n = SFX(vtanh)(pn);
                    const VEC z = SFX(vload)(zb + b * Hp + j0), hp = SFX(vload_n)(hprev + b * H + j0, nl);
                    const VEC h = (1 - z) * n + z * hp;
                    SFX(vstore_n)(hnext + b * H + j0, h, nl);
                    SFX(vstore_n)(y + (t * B + b) * H + j0, h, nl);
                    if (c->training) SFX(vstore_n)(g_tb + (t * B + b) * GH + 2 * H + j0, n, nl);
                }
            }
        }
    }
}

RF_CLONES void SFX(gru_fwd_worker)(const rf_ctx *c, int tid, int nt, rf_barrier *bar) {
    rf_split sp;
    rf_split_init(&sp, c, tid, nt, bar);
    if (SFX(fwd_begin)(c, &sp)) return;
    SFX(xwq) q;
    /* reset before: phase n reads xw by the groups of w_hn, not the projection's */
    SFX(xwq_init)(c, &sp, c->mode == 1, &q);
    for (rf_index s = 0; s < c->T; s++) {
        SFX(project_for)(c, &sp, &q, s);
        SFX(gru_fwd_rz)(c, s, &sp, &q); /* finishes the last step's barrier */
        rf_step_arrive(&sp);
        if (c->mode != 1) {
            SFX(step_finish)(c, &sp, &q);
            SFX(gru_fwd_n)(c, s, &sp);
            rf_step_arrive(&sp);
        }
    }
    SFX(step_finish)(c, &sp, &q);
    rf_nt_fence();
}

void SFX(rf_gru_forward)(const rf_ctx *c) { RF_PARALLEL(c, SFX(gru_fwd_worker)); }

/* Backward phase 1 for step s (s = -1 gives dh0). The recurrent GEMM reads the hidden-side gate gradients
 * of step s+1: all three (dgh_tb) for reset_after, r and z (the first 2H of dg_tb) for reset before.
 * cbuf carries the direct terms dh*z (+ r * d(r*h) for reset before) from step s+1. */
static RF_INLINE void SFX(gru_bwd_h)(const rf_ctx *c, rf_index s, const rf_split *sp) {
    const rf_index B = c->B, H = c->H, GH = 3 * H, Hp = RF_ROUND(H);
    const int after = c->mode == 1, ub = c->uq, NV = ub;
    const rf_index Kq = after ? GH : 2 * H;
    const REAL *dy = (const REAL *)c->dy, *dh_n = (const REAL *)c->dh_n, *zero = (const REAL *)c->zero;
    const REAL *g_tb = (const REAL *)c->gates_tb, *hp_tb = (const REAL *)c->hprev_tb, *m_tb = (const REAL *)c->m_tb;
    const REAL *panel = (const REAL *)c->wq_pack;
    REAL *dg_tb = (REAL *)c->dg_tb, *dgh_tb = (REAL *)c->dgh_tb, *dh0 = (REAL *)c->dh0, *carry = (REAL *)c->cbuf;
    const REAL *a_tb = after ? dgh_tb : dg_tb;
    rf_index g_lo, g_hi;
    rf_groups(sp, RF_NGRP(H, ub), &g_lo, &g_hi);
    REAL out[8 * 4 * V] __attribute__((aligned(64)));
    RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr) {
        const REAL *A[8];
        for (int i = 0; i < nr; i++) {
            rf_index t1, len1;
            A[i] = SFX(row_at)(c, s + 1, r0 + i, &t1, &len1) ? a_tb + (t1 * B + r0 + i) * GH : zero;
        }
        for (rf_index grp = g_cur; grp < g_cur + m; grp++) {
            if (grp == g_cur && (s < 0 || SFX(any_active)(c, s, r0, nr))) {
                const SFX(pfs) st[6] = {{dy, H, 0, 1, 1}, {g_tb, GH, H, 3, 1}, {hp_tb, H, 0, 1, 1},
                                        {after ? m_tb : NULL, H, 0, 1, 1},
                                        after ? (SFX(pfs)){dg_tb, H, 0, 1, 1} : (SFX(pfs)){dg_tb, GH, H, 3, 1},
                                        {after ? dgh_tb : NULL, GH, H, 3, 1}};
                SFX(pf_tile)(c, s, r0, nr, g_cur * ub * V, RF_MIN(ub * V, H - g_cur * ub * V), st, 6);
                if (SFX(any_active)(c, s + 1, r0, nr))
                    SFX(step_gemm)(nr, (int)m, NV, A, Kq, panel, g_cur, out, RF_STEP_AHEAD(g_lo, g_hi));
            }
            for (int i = 0; i < nr; i++) {
                const rf_index b = r0 + i;
                rf_index t, len;
                const int active = SFX(row_at)(c, s, b, &t, &len);
                for (int sb = 0; sb < ub; sb++) {
                    const rf_index j0 = (grp * ub + sb) * V;
                    if (j0 >= H) break;
                    const int nl = (int)(H - j0 < V ? H - j0 : V);
                    VEC dh = SFX(bwd_dh)(A[i], zero, out + ((grp - g_cur + i) * NV + sb) * V);
                    if (s == len - 1) { if (dh_n) dh += SFX(vload_n)(dh_n + b * H + j0, nl); }
                    else dh += SFX(vload)(carry + b * Hp + j0);
                    if (s < 0) { SFX(vstore_n)(dh0 + b * H + j0, dh, nl); continue; }
                    if (!active) {
                        if (after) SFX(zero_n)(dg_tb + (s * B + b) * H + j0, nl);
                        for (int g = after ? 0 : 1; g < 3; g++)
                            SFX(zero_n)((after ? dgh_tb : dg_tb) + (s * B + b) * GH + g * H + j0, nl);
                        continue;
                    }
                    if (dy) dh += SFX(vload_n)(dy + (t * B + b) * H + j0, nl);
                    const REAL *gs = g_tb + (t * B + b) * GH + j0;
                    const VEC r = SFX(vload_n)(gs, nl), z = SFX(vload_n)(gs + H, nl), n = SFX(vload_n)(gs + 2 * H, nl);
                    const VEC hp = SFX(vload_n)(hp_tb + (t * B + b) * H + j0, nl);
                    const VEC dn_pre = dh * (1 - z) * (1 - n * n);
                    const VEC dz_pre = dh * (hp - n) * z * (1 - z);
                    SFX(vstore)(carry + b * Hp + j0, dh * z);
                    if (after) { /* dgh and the n part of dg (its r and z parts are dgh's) */
                        const VEC hn = SFX(vload_n)(m_tb + (t * B + b) * H + j0, nl);
                        const VEC dr_pre = dn_pre * hn * r * (1 - r);
                        REAL *dgh = dgh_tb + (t * B + b) * GH + j0;
                        SFX(vstore_n)(dgh, dr_pre, nl);
                        SFX(vstore_n)(dgh + H, dz_pre, nl);
                        SFX(vstore_n)(dgh + 2 * H, dn_pre * r, nl);
                        SFX(vstore_n)(dg_tb + (t * B + b) * H + j0, dn_pre, nl);
                    } else {
                        REAL *dg = dg_tb + (t * B + b) * GH + j0;
                        SFX(vstore_n)(dg + H, dz_pre, nl);
                        SFX(vstore_n)(dg + 2 * H, dn_pre, nl);
                    }
                }
            }
        }
    }
}

/* Backward phase 2 (reset before only): d(r*h) = dn_pre @ w_hn, then dr and the r*d(r*h) carry. */
static RF_INLINE void SFX(gru_bwd_r)(const rf_ctx *c, rf_index s, const rf_split *sp) {
    const rf_index B = c->B, H = c->H, GH = 3 * H, Hp = RF_ROUND(H);
    const int ub = c->uq2, NV = ub;
    const REAL *zero = (const REAL *)c->zero, *g_tb = (const REAL *)c->gates_tb;
    const REAL *hp_tb = (const REAL *)c->hprev_tb, *panel = (const REAL *)c->wq2_pack;
    REAL *dg_tb = (REAL *)c->dg_tb, *carry = (REAL *)c->cbuf;
    rf_index g_lo, g_hi;
    rf_groups(sp, RF_NGRP(H, ub), &g_lo, &g_hi);
    REAL out[8 * 4 * V] __attribute__((aligned(64)));
    RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr) {
        const REAL *A[8];
        for (int i = 0; i < nr; i++) {
            rf_index t, len;
            A[i] = SFX(row_at)(c, s, r0 + i, &t, &len) ? dg_tb + (t * B + r0 + i) * GH + 2 * H : zero;
        }
        for (rf_index grp = g_cur; grp < g_cur + m; grp++) {
            if (grp == g_cur && (s < 0 || SFX(any_active)(c, s, r0, nr))) {
                const SFX(pfs) st[3] = {{g_tb, GH, 0, 1, 1}, {hp_tb, H, 0, 1, 1}, {dg_tb, GH, 0, 1, 1}};
                SFX(pf_tile)(c, s, r0, nr, g_cur * ub * V, RF_MIN(ub * V, H - g_cur * ub * V), st, 3);
                SFX(step_gemm)(nr, (int)m, NV, A, H, panel, g_cur, out,
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
                    if (!active) { SFX(zero_n)(dg_tb + (s * B + b) * GH + j0, nl); continue; }
                    const VEC drh = SFX(vload)(out + ((grp - g_cur + i) * NV + sb) * V);
                    const VEC r = SFX(vload_n)(g_tb + (t * B + b) * GH + j0, nl);
                    const VEC hp = SFX(vload_n)(hp_tb + (t * B + b) * H + j0, nl);
                    SFX(vstore_n)(dg_tb + (t * B + b) * GH + j0, drh * hp * r * (1 - r), nl);
                    SFX(vstore)(carry + b * Hp + j0, SFX(vload)(carry + b * Hp + j0) + drh * r);
                }
            }
        }
    }
}

RF_CLONES void SFX(gru_bwd_worker)(const rf_ctx *c, int tid, int nt, rf_barrier *bar) {
    rf_split sp;
    rf_split_init(&sp, c, tid, nt, bar);
    SFX(pack_panels)(c, &sp);
    for (rf_index s = c->T - 1; s >= rf_bwd_last(c); s--) {
        SFX(gru_bwd_h)(c, s, &sp);
        rf_sync(&sp);
        if (c->mode != 1 && s >= 0) {
            SFX(gru_bwd_r)(c, s, &sp);
            rf_sync(&sp);
        }
    }
    SFX(input_gradient)(c, &sp);
    SFX(weight_gradients)(c, &sp);
}

void SFX(rf_gru_backward)(const rf_ctx *c) { RF_PARALLEL(c, SFX(gru_bwd_worker)); }
