# cython: language_level=3
"""Binding of the compiled time loops (src_ext/*.h). Users call rnnfast.ops, which validates every
argument first; this module checks again, as a last line of defence, that each array it hands to C code is
C-contiguous with the expected dtype and holds at least the elements the loops touch, so no mistake upstream
can turn into an out-of-bounds access."""
cimport numpy as cnp
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset

cnp.import_array()

cdef extern from "kernels.h" nogil:
    ctypedef int64_t rf_index
    ctypedef struct rf_pack_spec:
        const void *src
        void *dst
        rf_index s_g, s_j, s_k, Gs, N, K, ub
        const int64_t *row_len
        rf_index row_B
    enum: RF_MAX_PACKS
    ctypedef struct rf_ctx:
        rf_index T, B, n_in, H, K, G
        int reverse, mode, training, proj, n_threads, split, hp_shared
        const int64_t *lengths
        rf_pack_spec packs[RF_MAX_PACKS]
        int n_packs
        const void *x
        void *x_copy
        const void *wih_pack
        int uih
        void *xw
        rf_index xw_steps
        int fuse_x
        int xw_helper
        rf_index saves_keep
        const void *bias
        const void *b_hn
        const void *peep
        const void *w_pack
        const void *w2_pack
        int ub, ub2
        const void *h0
        const void *c0
        void *y
        void *h_n
        void *c_n
        void *gates_tb
        void *c_tb
        void *cprev_tb
        void *hprev_tb
        void *m_tb
        const void *dy
        const void *dh_n
        const void *dc_n
        const void *wq_pack
        const void *wq2_pack
        int uq, uq2
        void *dg_tb
        void *dgh_tb
        void *dhp_tb
        void *dh0
        void *dx
        const void *wihq_pack
        int uihq
        const void *xp_pack
        const void *hp_pack
        const void *mp_pack
        int uxp, uhp, ump
        rf_index xp_ld, hp_ld, mp_ld
        void *db_ih
        void *db_hh
        void *dw_ih
        void *dw_hh
        void *dw_hr
        void *dc0
        void *hbuf
        void *cbuf
        void *mbuf
        void *zero
    int rf_lanes_f32()
    int rf_lanes_f64()
    const char *rf_simd_path()
    int rf_openmp_enabled()
    int rf_max_threads()
    rf_index rf_pack_size(rf_index Gs, rf_index N, rf_index K, rf_index ub, rf_index V)
    void rf_rnn_forward_f32(const rf_ctx *c)
    void rf_rnn_forward_f64(const rf_ctx *c)
    void rf_rnn_backward_f32(const rf_ctx *c)
    void rf_rnn_backward_f64(const rf_ctx *c)
    void rf_lstm_forward_f32(const rf_ctx *c)
    void rf_lstm_forward_f64(const rf_ctx *c)
    void rf_lstm_backward_f32(const rf_ctx *c)
    void rf_lstm_backward_f64(const rf_ctx *c)
    void rf_gru_forward_f32(const rf_ctx *c)
    void rf_gru_forward_f64(const rf_ctx *c)
    void rf_gru_backward_f32(const rf_ctx *c)
    void rf_gru_backward_f64(const rf_ctx *c)

ctypedef void (*loop_fn)(const rf_ctx *) noexcept nogil



def lanes(dtype):
    """SIMD lanes per vector for dtype (the panel width)."""
    return rf_lanes_f32() if cnp.dtype(dtype).itemsize == 4 else rf_lanes_f64()


def simd_path():
    return rf_simd_path().decode()


def openmp_enabled():
    return bool(rf_openmp_enabled())


def max_threads():
    return rf_max_threads()


def align_offset(cnp.ndarray a, int align):
    """How many elements into a (1-D, contiguous) the first `align`-byte boundary lies: what
    a.ctypes.data % align tells, for ~1/20 of the cost (that builds a ctypes object)."""
    cdef size_t addr = <size_t>cnp.PyArray_DATA(a)
    return <rf_index>(((align - addr % align) % align) // cnp.PyArray_ITEMSIZE(a))


cdef inline bint _plain(object a, int typenum, int ndim):
    """a is an ndarray (not a subclass) of typenum, native byte order, C-contiguous, with ndim dimensions."""
    if type(a) is not cnp.ndarray:
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISNOTSWAPPED(arr))


cdef inline bint _plain_shape(object a, int typenum, rf_index d0, rf_index d1):
    """_plain with shape (d0,) (d1 < 0) or (d0, d1)."""
    if not _plain(a, typenum, 1 if d1 < 0 else 2):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return cnp.PyArray_DIM(arr, 0) == d0 and (d1 < 0 or cnp.PyArray_DIM(arr, 1) == d1)


def plain_sizes(rf_index G, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """(T, B, I, H) of a forward call (no projection) whose arrays need nothing done to them: every one an
    ndarray of x's dtype (float32 or float64, native byte order), C-contiguous, of its expected shape, with
    T * B > 0 and every (T, B, .) array addressable. None otherwise: rnnfast.ops then validates argument
    by argument (and says what is wrong). The common call's validation, for ~1/10 of the cost."""
    if type(x) is not cnp.ndarray:
        return None
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        return None
    if not _plain(x, typenum, 3) or not _plain(w_hh, typenum, 2):
        return None
    cdef rf_index T = cnp.PyArray_DIM(<cnp.ndarray>x, 0), B = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    cdef rf_index I = cnp.PyArray_DIM(<cnp.ndarray>x, 2), H = cnp.PyArray_DIM(<cnp.ndarray>w_hh, 1)
    if T < 1 or B < 1 or H < 1 or cnp.PyArray_DIM(<cnp.ndarray>w_hh, 0) != G * H:
        return None
    if not _plain_shape(w_ih, typenum, G * H, I):
        return None
    if b_ih is not None and not _plain_shape(b_ih, typenum, G * H, -1):
        return None
    if b_hh is not None and not _plain_shape(b_hh, typenum, G * H, -1):
        return None
    if h0 is not None and not _plain_shape(h0, typenum, B, H):
        return None
    if c0 is not None and not _plain_shape(c0, typenum, B, H):
        return None
    cdef rf_index lim = 0x7FFFFFFFFFFFFFFF, widest = max(G * H, max(I, 1)) * cnp.PyArray_ITEMSIZE(<cnp.ndarray>x)
    if T > lim // B or T * B > lim // widest:
        return None
    return T, B, I, H


def pack_size(rf_index Gs, rf_index N, rf_index K, rf_index ub, dtype):
    return rf_pack_size(Gs, N, K, ub, lanes(dtype))


cdef void *_ptr(object a, int typenum, str name) except? NULL:
    if a is None:
        return NULL
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"internal: {name} must be an ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr) or cnp.PyArray_TYPE(arr) != typenum:
        raise ValueError(f"internal: {name} must be C-contiguous {cnp.PyArray_DescrFromType(typenum)}, "
                         f"got {arr.dtype} (C-contiguous: {bool(cnp.PyArray_IS_C_CONTIGUOUS(arr))})")
    return cnp.PyArray_DATA(arr)


cdef int _fill_pack(rf_pack_spec *p, tuple spec, int typenum) except -1:
    """spec = (src, offset, s_g, s_j, s_k, Gs, N, K, ub, dst[, row_len]), checked so that every element the
    packing reads lies inside src and dst is large enough; row_len (B,) int64 zeroes padded (t, b) rows."""
    src, offset, s_g, s_j, s_k, Gs, N, K, ub, dst = spec[:10]
    row_len = spec[10] if len(spec) > 10 else None
    p.row_len = NULL
    p.row_B = 1
    if row_len is not None:
        if cnp.PyArray_SIZE(<cnp.ndarray>row_len) < 1 or K % cnp.PyArray_SIZE(<cnp.ndarray>row_len):
            raise ValueError("internal: row lengths do not divide the reduction")
        p.row_len = <const int64_t *>_ptr(row_len, cnp.NPY_INT64, "row lengths")
        p.row_B = cnp.PyArray_SIZE(<cnp.ndarray>row_len)
    cdef rf_index V = lanes(src.dtype)
    if dst.ndim != 1 or dst.shape[0] < rf_pack_size(Gs, N, K, ub, V):
        raise ValueError("internal: pack destination too small")
    if N > 0 and K > 0:
        last = offset + (Gs - 1) * s_g + (N - 1) * s_j + (K - 1) * s_k
        if offset < 0 or s_g < 0 or s_j < 0 or s_k < 0 or last >= cnp.PyArray_SIZE(<cnp.ndarray>src):
            raise ValueError("internal: pack source out of range")
    cdef char *base = <char *>_ptr(src, typenum, "pack source")
    cdef rf_index off = offset
    p.src = base + off * cnp.PyArray_ITEMSIZE(<cnp.ndarray>src)
    p.dst = _ptr(dst, typenum, "pack destination")
    p.s_g = s_g; p.s_j = s_j; p.s_k = s_k; p.Gs = Gs; p.N = N; p.K = K; p.ub = ub
    return 0


# The operands run() accepts: the rf_ctx pointer fields but b_hn, plus b_ih / b_hh (a forward folds them
# into `bias`, and GRU reset_after's b_hn is the tail of b_hh) and h0 / c0 / h_n / c_n (a forward seeds its
# state buffers from h0, c0, or zeros, and writes the final state to h_n, c_n), so that rnnfast.ops makes
# none of these small arrays itself.
_FIELDS = ("lengths", "x", "wih_pack", "xw", "bias", "peep", "w_pack", "w2_pack", "h0", "c0", "y",
           "h_n", "c_n", "gates_tb", "c_tb", "cprev_tb", "hprev_tb", "m_tb", "dy", "dh_n", "dc_n", "wq_pack",
           "wq2_pack", "dg_tb", "dgh_tb", "dhp_tb", "dh0", "dx", "wihq_pack", "xp_pack", "hp_pack", "mp_pack",
           "dw_ih", "dw_hh", "dw_hr", "dc0", "hbuf", "cbuf", "mbuf", "zero", "b_ih", "b_hh", "db_ih", "db_hh",
           "x_copy")
_FIELD_ID = {name: i for i, name in enumerate(_FIELDS)}
cdef enum:
    F_LENGTHS
    F_X
    F_WIH_PACK
    F_XW
    F_BIAS
    F_PEEP
    F_W_PACK
    F_W2_PACK
    F_H0
    F_C0
    F_Y
    F_H_N
    F_C_N
    F_GATES_TB
    F_C_TB
    F_CPREV_TB
    F_HPREV_TB
    F_M_TB
    F_DY
    F_DH_N
    F_DC_N
    F_WQ_PACK
    F_WQ2_PACK
    F_DG_TB
    F_DGH_TB
    F_DHP_TB
    F_DH0
    F_DX
    F_WIHQ_PACK
    F_XP_PACK
    F_HP_PACK
    F_MP_PACK
    F_DW_IH
    F_DW_HH
    F_DW_HR
    F_DC0
    F_HBUF
    F_CBUF
    F_MBUF
    F_ZERO
    F_B_IH
    F_B_HH
    F_DB_IH
    F_DB_HH
    F_X_COPY
    NF  # the number of operands
assert len(_FIELDS) == NF


cdef void _needs(rf_index *need, rf_index T, rf_index B, rf_index I, rf_index H, rf_index K, rf_index G,
                 rf_index V, rf_index xw_steps) noexcept:
    """The elements the loops touch in each operand (0: checked elsewhere, the panels by _fill_pack)."""
    cdef rf_index GH = G * H, TB = T * B, Hp = (H + V - 1) // V * V
    cdef int i
    for i in range(NF):
        need[i] = 0
    need[F_LENGTHS] = B; need[F_X] = TB * I; need[F_XW] = xw_steps * B * GH; need[F_BIAS] = GH
    need[F_PEEP] = 3 * H; need[F_Y] = TB * K; need[F_H0] = B * K; need[F_C0] = B * H
    need[F_H_N] = B * K; need[F_C_N] = B * H; need[F_GATES_TB] = TB * GH; need[F_C_TB] = TB * H
    need[F_CPREV_TB] = TB * H; need[F_HPREV_TB] = TB * K; need[F_M_TB] = TB * H; need[F_DY] = TB * K
    need[F_DH_N] = B * K; need[F_DC_N] = B * H; need[F_DG_TB] = TB * GH; need[F_DGH_TB] = TB * GH
    need[F_DHP_TB] = TB * K; need[F_DH0] = B * K; need[F_DX] = TB * I; need[F_DW_IH] = GH * I
    need[F_DW_HH] = GH * K; need[F_DW_HR] = K * H; need[F_HBUF] = 2 * B * K; need[F_CBUF] = B * Hp
    need[F_MBUF] = B * H; need[F_ZERO] = max(GH, max(K, H)) + V; need[F_B_IH] = GH; need[F_B_HH] = GH
    need[F_DB_IH] = GH; need[F_DB_HH] = GH; need[F_X_COPY] = TB * I


# A forward's set-up and wind-up around the time loop, in C: the biases folded (0 + b_ih + b_hh in this
# order, as numpy would add them), the state buffers seeded, the final state copied out.
ctypedef fused real:
    float
    double


cdef void _set_up(real *bias, const real *b_ih, const real *b_hh, rf_index n, rf_index n_hh, real *hbuf,
                  const real *h0, real *cbuf, const real *c0, real *mbuf, rf_index B, rf_index K, rf_index H,
                  rf_index Hp) noexcept nogil:
    """bias (if any) = 0 + b_ih + b_hh[:n_hh] (absent terms skipped); hbuf[0] = h0 (or zeros); cbuf rows
    (padded to Hp) = c0 rows (or zeros); mbuf = zeros."""
    cdef rf_index j, b
    cdef real v
    if bias != NULL:
        for j in range(n):
            v = 0
            if b_ih != NULL:
                v = v + b_ih[j]
            if b_hh != NULL and j < n_hh:
                v = v + b_hh[j]
            bias[j] = v
    if h0 != NULL:
        memcpy(hbuf, h0, B * K * sizeof(real))
    else:
        memset(hbuf, 0, B * K * sizeof(real))
    if cbuf != NULL:
        memset(cbuf, 0, B * Hp * sizeof(real))
        if c0 != NULL:
            for b in range(B):
                memcpy(cbuf + b * Hp, c0 + b * H, H * sizeof(real))
    if mbuf != NULL:
        memset(mbuf, 0, B * H * sizeof(real))


cdef void _wind_up(const real *hlast, real *h_n, const real *cbuf, real *c_n, rf_index B, rf_index K,
                   rf_index H, rf_index Hp) noexcept nogil:
    cdef rf_index b
    if h_n != NULL:
        memcpy(h_n, hlast, B * K * sizeof(real))
    if c_n != NULL and cbuf != NULL:
        for b in range(B):
            memcpy(c_n + b * H, cbuf + b * Hp, H * sizeof(real))


def run(str cell, bint backward, object dtype, dict a, rf_index T, rf_index B, rf_index I, rf_index H,
        rf_index K, int G, bint reverse, int mode, bint training, bint proj, int n_threads,
        int ub=1, int ub2=1, int uq=1, int uq2=1, int uih=1, int uihq=1, int uxp=1, int uhp=1, int ump=1,
        rf_index xw_steps=0, int split=0, rf_index xp_ld=0, rf_index hp_ld=0, rf_index mp_ld=0,
        bint hp_shared=False, bint fuse_x=False, bint xw_helper=False, rf_index saves_keep=-1):
    """Run one time loop. `a` maps operand names (_FIELDS: the rf_ctx pointer fields, b_ih / b_hh, h0 / c0 /
    h_n / c_n) to arrays (or None), plus "packs"; every array must already have its documented shape
    (rnnfast/ops.py guarantees it)."""
    cdef rf_ctx c
    cdef int typenum = cnp.NPY_FLOAT32 if cnp.dtype(dtype).itemsize == 4 else cnp.NPY_FLOAT64
    cdef void *ptr[NF]
    cdef rf_index need[NF]
    cdef rf_index V = rf_lanes_f32() if typenum == cnp.NPY_FLOAT32 else rf_lanes_f64()
    cdef rf_index Hp = (H + V - 1) // V * V
    cdef int i
    c.T = T; c.B = B; c.n_in = I; c.H = H; c.K = K; c.G = G
    c.reverse = reverse; c.mode = mode; c.training = training; c.proj = proj; c.n_threads = n_threads
    c.ub = ub; c.ub2 = ub2; c.uq = uq; c.uq2 = uq2; c.uih = uih; c.uihq = uihq
    c.uxp = uxp; c.uhp = uhp; c.ump = ump
    c.xp_ld = xp_ld; c.hp_ld = hp_ld; c.mp_ld = mp_ld
    if xw_steps == 0:
        xw_steps = T
    if xw_steps < 1 or xw_steps > max(T, 1):
        raise ValueError(f"internal: xw_steps {xw_steps} outside 1..{T}")
    c.xw_steps = xw_steps
    if split not in (0, 1, 2):
        raise ValueError(f"internal: split {split} is not 0, 1 or 2")
    c.split = split
    if hp_shared and (cell != "rnn" or backward or not training or a.get("lengths") is not None):
        raise ValueError("internal: hp_shared is for an RNN training forward without lengths")
    c.hp_shared = hp_shared
    if fuse_x and (backward or (cell == "gru" and mode != 1) or uih != ub or B < 2):
        raise ValueError("internal: fuse_x is for a forward of LSTM, RNN or GRU reset_after, B >= 2, uih == ub")
    c.fuse_x = fuse_x
    if xw_helper and (backward or fuse_x or B != 1 or n_threads != 2 or xw_steps < T or T >= 2**31):
        raise ValueError("internal: xw_helper is for a forward of batch 1 on 2 threads, projected in one chunk")
    c.xw_helper = xw_helper
    c.saves_keep = saves_keep  # < 0: every save stored as usual
    # every array the loops index must hold at least the elements they touch (sizes are 64-bit)
    _needs(need, T, B, I, H, K, G, V, xw_steps)
    if backward and cell == "gru" and mode == 1:
        # reset_after: dg_tb holds the n part of the gate gradients only, dgh_tb all three
        if a.get("dgh_tb") is None:
            raise ValueError("internal: a GRU reset_after backward needs dgh_tb")
        need[F_DG_TB] = T * B * H
    elif a.get("dgh_tb") is not None:
        raise ValueError("internal: dgh_tb is for a GRU reset_after backward only")
    memset(ptr, 0, sizeof(ptr))
    packs = ()
    for name, arr in a.items():
        if name == "packs":
            packs = arr
            continue
        if arr is None:
            continue
        fid = _FIELD_ID.get(name)
        if fid is None:
            raise ValueError(f"internal: unknown operand {name!r}")
        i = fid
        ptr[i] = _ptr(arr, cnp.NPY_INT64 if i == F_LENGTHS else typenum, name)
        if cnp.PyArray_SIZE(<cnp.ndarray>arr) < need[i]:
            raise ValueError(f"internal: {name} holds {cnp.PyArray_SIZE(<cnp.ndarray>arr)} elements, "
                             f"the loop touches {need[i]}")
    if len(packs) > RF_MAX_PACKS:
        raise ValueError("internal: too many operands to pack")
    c.n_packs = len(packs)
    for i, spec in enumerate(packs):
        _fill_pack(&c.packs[i], spec, typenum)
    c.lengths = <const int64_t *>ptr[F_LENGTHS]
    c.x = ptr[F_X]; c.wih_pack = ptr[F_WIH_PACK]; c.xw = ptr[F_XW]; c.bias = ptr[F_BIAS]; c.b_hn = NULL
    c.peep = ptr[F_PEEP]; c.w_pack = ptr[F_W_PACK]; c.w2_pack = ptr[F_W2_PACK]; c.h0 = ptr[F_H0]
    c.c0 = ptr[F_C0]; c.y = ptr[F_Y]; c.h_n = ptr[F_H_N]; c.c_n = ptr[F_C_N]; c.gates_tb = ptr[F_GATES_TB]
    c.c_tb = ptr[F_C_TB]; c.cprev_tb = ptr[F_CPREV_TB]; c.hprev_tb = ptr[F_HPREV_TB]; c.m_tb = ptr[F_M_TB]
    c.dy = ptr[F_DY]; c.dh_n = ptr[F_DH_N]; c.dc_n = ptr[F_DC_N]; c.wq_pack = ptr[F_WQ_PACK]
    c.wq2_pack = ptr[F_WQ2_PACK]; c.dg_tb = ptr[F_DG_TB]; c.dgh_tb = ptr[F_DGH_TB]; c.dhp_tb = ptr[F_DHP_TB]
    c.dh0 = ptr[F_DH0]; c.dx = ptr[F_DX]; c.wihq_pack = ptr[F_WIHQ_PACK]; c.xp_pack = ptr[F_XP_PACK]
    c.hp_pack = ptr[F_HP_PACK]; c.mp_pack = ptr[F_MP_PACK]; c.dw_ih = ptr[F_DW_IH]; c.dw_hh = ptr[F_DW_HH]
    c.dw_hr = ptr[F_DW_HR]; c.dc0 = ptr[F_DC0]; c.hbuf = ptr[F_HBUF]; c.cbuf = ptr[F_CBUF]
    c.mbuf = ptr[F_MBUF]; c.zero = ptr[F_ZERO]; c.db_ih = ptr[F_DB_IH]; c.db_hh = ptr[F_DB_HH]
    c.x_copy = ptr[F_X_COPY]
    if not backward and T > 0 and B > 0 and (c.x == NULL or (not fuse_x and c.xw == NULL)):
        raise ValueError("internal: a forward needs x, and xw unless it fuses the projection")
    # an operand of the weight gradients read in place: every group it has is whole, so no row is read past
    if xp_ld and (xp_ld != I or c.x == NULL or I % (uxp * V)):
        raise ValueError("internal: x cannot be read in place")
    if hp_ld and (hp_ld != K or c.hprev_tb == NULL or K % (uhp * V)):
        raise ValueError("internal: hprev_tb cannot be read in place")
    if mp_ld and (mp_ld != H or c.m_tb == NULL or H % (ump * V)):
        raise ValueError("internal: m_tb cannot be read in place")
    cdef loop_fn fn
    cdef bint f32 = typenum == cnp.NPY_FLOAT32
    if cell == "rnn":
        if backward:
            fn = rf_rnn_backward_f32 if f32 else rf_rnn_backward_f64
        else:
            fn = rf_rnn_forward_f32 if f32 else rf_rnn_forward_f64
    elif cell == "lstm":
        if backward:
            fn = rf_lstm_backward_f32 if f32 else rf_lstm_backward_f64
        else:
            fn = rf_lstm_forward_f32 if f32 else rf_lstm_forward_f64
    elif cell == "gru":
        if backward:
            fn = rf_gru_backward_f32 if f32 else rf_gru_backward_f64
        else:
            fn = rf_gru_forward_f32 if f32 else rf_gru_forward_f64
    else:
        raise ValueError(f"internal: unknown cell {cell!r}")
    cdef bint after = cell == "gru" and mode == 1
    cdef rf_index n_hh = 2 * H if after else G * H
    if not backward and ptr[F_HBUF] == NULL:
        raise ValueError("internal: a forward needs hbuf")
    if not backward and ptr[F_B_HH] != NULL and after:
        c.b_hn = <char *>ptr[F_B_HH] + 2 * H * cnp.PyArray_ITEMSIZE(<cnp.ndarray>a["b_hh"])
    with nogil:
        if not backward:
            if f32:
                _set_up(<float *>c.bias, <const float *>ptr[F_B_IH], <const float *>ptr[F_B_HH], G * H, n_hh,
                        <float *>c.hbuf, <const float *>c.h0, <float *>c.cbuf, <const float *>c.c0,
                        <float *>c.mbuf, B, K, H, Hp)
            else:
                _set_up(<double *>c.bias, <const double *>ptr[F_B_IH], <const double *>ptr[F_B_HH], G * H, n_hh,
                        <double *>c.hbuf, <const double *>c.h0, <double *>c.cbuf, <const double *>c.c0,
                        <double *>c.mbuf, B, K, H, Hp)
        fn(&c)
        if not backward:
            if f32:
                _wind_up(<const float *>c.hbuf + (T % 2) * B * K, <float *>c.h_n, <const float *>c.cbuf,
                         <float *>c.c_n, B, K, H, Hp)
            else:
                _wind_up(<const double *>c.hbuf + (T % 2) * B * K, <double *>c.h_n, <const double *>c.cbuf,
                         <double *>c.c_n, B, K, H, Hp)
