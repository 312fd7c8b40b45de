/* Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu. Compiled once per dtype. */

static RF_INLINE VEC SFX(rnn_act)(int relu, VEC x) { return relu ? SFX(vrelu)(x) : SFX(vtanh)(x); }

static RF_INLINE void SFX(rnn_fwd_step)(const rf_ctx *c, rf_index s, rf_split *sp, SFX(xwq) *q) {
    const rf_index B = c->B, H = c->H;
    const int ub = c->ub, NV = ub, relu = c->mode == 1;
    const REAL *hprev = (const REAL *)c->hbuf + (s & 1) * B * H;
    REAL *hnext = (REAL *)c->hbuf + ((s + 1) & 1) * B * H;
    const REAL *xws = SFX(xw_step)(c, s), *bias = (const REAL *)c->bias, *panel = (const REAL *)c->w_pack;
    REAL *y = (REAL *)c->y, *g_tb = (REAL *)c->gates_tb, *hp_tb = (REAL *)c->hprev_tb;
    rf_index g_lo, g_hi;
    rf_groups(sp, RF_NGRP(H, ub), &g_lo, &g_hi);
    REAL out[8 * 4 * V] __attribute__((aligned(64))), part[RF_OVL_MAXV * V] __attribute__((aligned(64)));
    const rf_index K1 = SFX(row1_k1)(c, H, ub);
    const int done = SFX(row1_begin)(c, sp, q, s, hprev, H, K1, panel, NV, g_lo, g_hi, part);
    RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr) {
        const REAL *A[8];
        for (int i = 0; i < nr; i++) A[i] = hprev + (r0 + i) * H;
        for (rf_index grp = g_cur; grp < g_cur + m; grp++) {
            if (grp == g_cur && (s < 0 || SFX(any_active)(c, s, r0, nr))) {
                const SFX(pfs) st[4] = {{xws, H, 0, 1, 0}, {c->training ? y : NULL, H, 0, 1, 1},
                                        {c->training ? g_tb : NULL, H, 0, 1, 1},
                                        {c->training && !c->hp_shared ? hp_tb : NULL, H, 0, 1, 1}};
                SFX(pf_tile)(c, s, r0, nr, g_cur * ub * V, RF_MIN(ub * V, H - g_cur * ub * V), st, 4);
                SFX(gates_gemm)(c, s, r0, nr, (int)m, NV, A, H, panel, g_cur, out,
                                RF_STEP_ROW1(g_lo, g_hi, K1, done, done ? part + (g_cur - g_lo) * NV * V : NULL),
                                NULL, 1);
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
                        if (c->training) {
                            SFX(zero_n)(g_tb + (s * B + b) * H + j0, nl);
                            if (!c->hp_shared) SFX(zero_n)(hp_tb + (s * B + b) * H + j0, nl);
                        }
                        continue;
                    }
                    VEC pre = SFX(vload)(out + ((grp - g_cur + i) * NV + sb) * V);
                    if (xws) pre += SFX(vload_n)(xws + b * H + j0, nl);
                    if (bias) pre += SFX(vload_n)(bias + j0, nl);
                    const VEC h = SFX(rnn_act)(relu, pre);
                    SFX(vstore_n)(hnext + b * H + j0, h, nl);
                    SFX(vstore_n)(y + (t * B + b) * H + j0, h, nl);
                    if (c->training) {
                        SFX(vstore_n)(g_tb + (t * B + b) * H + j0, h, nl);
                        if (!c->hp_shared) SFX(copy_n)(hp_tb + (t * B + b) * H + j0, hprev + b * H + j0, nl);
                    }
                }
            }
        }
    }
}

RF_CLONES void SFX(rnn_fwd_worker)(const rf_ctx *c, int tid, int nt, rf_barrier *bar) {
    rf_split sp;
    rf_split_init(&sp, c, tid, nt, bar);
    if (SFX(fwd_begin)(c, &sp)) return;
    SFX(xwq) q;
    SFX(xwq_init)(c, &sp, 1, &q);
    for (rf_index s = 0; s < c->T; s++) {
        SFX(project_for)(c, &sp, &q, s);
        SFX(rnn_fwd_step)(c, s, &sp, &q); /* finishes the last step's barrier */
        rf_step_arrive(&sp);
    }
    SFX(step_finish)(c, &sp, &q);
}

void SFX(rf_rnn_forward)(const rf_ctx *c) { RF_PARALLEL(c, SFX(rnn_fwd_worker)); }

/* Backward step s (s = -1 gives dh0): dh = dg_{s+1} @ w_hh + dy_t (+ dh_n at the row's last step),
 * then dg_s = dh * act'(h). */
static RF_INLINE void SFX(rnn_bwd_step)(const rf_ctx *c, rf_index s, const rf_split *sp) {
    const rf_index B = c->B, H = c->H;
    const int ub = c->uq, NV = ub, relu = c->mode == 1;
    const REAL *dy = (const REAL *)c->dy, *dh_n = (const REAL *)c->dh_n, *zero = (const REAL *)c->zero;
    const REAL *g_tb = (const REAL *)c->gates_tb, *panel = (const REAL *)c->wq_pack;
    REAL *dg_tb = (REAL *)c->dg_tb, *dh0 = (REAL *)c->dh0;
    rf_index g_lo, g_hi;
    rf_groups(sp, RF_NGRP(H, ub), &g_lo, &g_hi);
    REAL out[8 * 4 * V] __attribute__((aligned(64)));
    RF_STEP_TILES(sp, s, g_lo, g_hi, NV, g_cur, m, r0, nr) {
        const REAL *A[8];
        for (int i = 0; i < nr; i++) {
            rf_index t1, len1;
            A[i] = SFX(row_at)(c, s + 1, r0 + i, &t1, &len1) ? dg_tb + (t1 * B + r0 + i) * H : zero;
        }
        for (rf_index grp = g_cur; grp < g_cur + m; grp++) {
            if (grp == g_cur && (s < 0 || SFX(any_active)(c, s, r0, nr))) {
                const SFX(pfs) st[3] = {{dy, H, 0, 1, 1}, {g_tb, H, 0, 1, 1}, {dg_tb, H, 0, 1, 1}};
                SFX(pf_tile)(c, s, r0, nr, g_cur * ub * V, RF_MIN(ub * V, H - g_cur * ub * V), st, 3);
                if (SFX(any_active)(c, s + 1, r0, nr))
                    SFX(step_gemm)(nr, (int)m, NV, A, H, panel, g_cur, out, RF_STEP_AHEAD(g_lo, g_hi));
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
                    if (s == len - 1 && dh_n) dh += SFX(vload_n)(dh_n + b * H + j0, nl);
                    if (s < 0) { SFX(vstore_n)(dh0 + b * H + j0, dh, nl); continue; }
                    if (!active) { SFX(zero_n)(dg_tb + (s * B + b) * H + j0, nl); continue; }
                    if (dy) dh += SFX(vload_n)(dy + (t * B + b) * H + j0, nl);
                    const VEC h = SFX(vload_n)(g_tb + (t * B + b) * H + j0, nl);
                    const VEC d = relu ? SFX(vselect)(h > 0, dh, SFX(vsplat)(0)) : dh * (1 - h * h);
                    SFX(vstore_n)(dg_tb + (t * B + b) * H + j0, d, nl);
                }
            }
        }
    }
}

RF_CLONES void SFX(rnn_bwd_worker)(const rf_ctx *c, int tid, int nt, rf_barrier *bar) {
    rf_split sp;
    rf_split_init(&sp, c, tid, nt, bar);
    SFX(pack_panels)(c, &sp);
    for (rf_index s = c->T - 1; s >= rf_bwd_last(c); s--) {
        SFX(rnn_bwd_step)(c, s, &sp);
        rf_sync(&sp);
    }
    SFX(input_gradient)(c, &sp);
    SFX(weight_gradients)(c, &sp);
}

void SFX(rf_rnn_backward)(const rf_ctx *c) { RF_PARALLEL(c, SFX(rnn_bwd_worker)); }
