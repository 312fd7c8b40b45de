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
        int no_shadow
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


cdef int _set_call(rf_ctx *c, bint backward, bint reverse, int n_threads, int split, bint xw_helper,
                   rf_index saves_keep, bint shadow) except -1:
    """What one call sets besides its shapes, layout and operands (c's sizes, fuse_x and xw_steps set),
    checked."""
    if split not in (0, 1, 2):
        raise ValueError(f"internal: split {split} is not 0, 1 or 2")
    if xw_helper and (backward or c.fuse_x or c.B != 1 or n_threads != 2 or c.xw_steps < c.T or c.T >= 2**31):
        raise ValueError("internal: xw_helper is for a forward of batch 1 on 2 threads, projected in one chunk")
    c.reverse = reverse; c.n_threads = n_threads; c.split = split; c.xw_helper = xw_helper
    c.no_shadow = not shadow  # only where the shadow would run at all (common.h, xwq_init) does it matter
    c.saves_keep = saves_keep  # < 0: every save stored as usual
    return 0


cdef int _fill(rf_ctx *c, void **ptr, str cell, bint backward, int typenum, dict a, rf_index T, rf_index B,
               rf_index I, rf_index H, rf_index K, int G, bint reverse, int mode, bint training, bint proj,
               int n_threads, int ub, int ub2, int uq, int uq2, int uih, int uihq, int uxp, int uhp, int ump,
               rf_index xw_steps, int split, rf_index xp_ld, rf_index hp_ld, rf_index mp_ld, bint hp_shared,
               bint fuse_x, bint xw_helper, rf_index saves_keep, bint shadow) except -1:
    """c and ptr (the operands by field id) from run()'s arguments, every one checked."""
    cdef rf_index need[NF]
    cdef rf_index V = rf_lanes_f32() if typenum == cnp.NPY_FLOAT32 else rf_lanes_f64()
    cdef int i
    c.T = T; c.B = B; c.n_in = I; c.H = H; c.K = K; c.G = G
    c.mode = mode; c.training = training; c.proj = proj
    c.ub = ub; c.ub2 = ub2; c.uq = uq; c.uq2 = uq2; c.uih = uih; c.uihq = uihq
    c.uxp = uxp; c.uhp = uhp; c.ump = ump
    c.xp_ld = xp_ld; c.hp_ld = hp_ld; c.mp_ld = mp_ld
    if xw_steps == 0:
        xw_steps = T
    if xw_steps < 1 or xw_steps > max(T, 1):
        raise ValueError(f"internal: xw_steps {xw_steps} outside 1..{T}")
    c.xw_steps = xw_steps
    if hp_shared and (cell != "rnn" or backward or not training or a.get("lengths") is not None):
        raise ValueError("internal: hp_shared is for an RNN training forward without lengths")
    c.hp_shared = hp_shared
    if fuse_x and (backward or (cell == "gru" and mode != 1) or uih != ub or B < 2):
        raise ValueError("internal: fuse_x is for a forward of LSTM, RNN or GRU reset_after, B >= 2, uih == ub")
    c.fuse_x = fuse_x
    _set_call(c, backward, reverse, n_threads, split, xw_helper, saves_keep, shadow)
    # every array the loops index must hold at least the elements they touch (sizes are 64-bit)
    _needs(need, T, B, I, H, K, G, V, xw_steps)
    if backward and cell == "gru" and mode == 1:
        # reset_after: dg_tb holds the n part of the gate gradients only, dgh_tb all three
        if a.get("dgh_tb") is None:
            raise ValueError("internal: a GRU reset_after backward needs dgh_tb")
        need[F_DG_TB] = T * B * H
    elif a.get("dgh_tb") is not None:
        raise ValueError("internal: dgh_tb is for a GRU reset_after backward only")
    memset(ptr, 0, NF * sizeof(void *))
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
    if cell not in ("rnn", "lstm", "gru"):
        raise ValueError(f"internal: unknown cell {cell!r}")
    if not backward and ptr[F_HBUF] == NULL:
        raise ValueError("internal: a forward needs hbuf")
    if not backward and ptr[F_B_HH] != NULL and cell == "gru" and mode == 1:
        c.b_hn = <char *>ptr[F_B_HH] + 2 * H * cnp.PyArray_ITEMSIZE(<cnp.ndarray>a["b_hh"])
    return 0


cdef loop_fn _loop(str cell, bint backward, bint f32) noexcept:
    if cell == "rnn":
        if backward:
            return rf_rnn_backward_f32 if f32 else rf_rnn_backward_f64
        return rf_rnn_forward_f32 if f32 else rf_rnn_forward_f64
    if cell == "lstm":
        if backward:
            return rf_lstm_backward_f32 if f32 else rf_lstm_backward_f64
        return rf_lstm_forward_f32 if f32 else rf_lstm_forward_f64
    if backward:
        return rf_gru_backward_f32 if f32 else rf_gru_backward_f64
    return rf_gru_forward_f32 if f32 else rf_gru_forward_f64


cdef void _execute(const rf_ctx *c, loop_fn fn, bint backward, bint f32, const void *b_ih,
                   const void *b_hh) noexcept nogil:
    """The time loop, and for a forward its set-up (biases, state buffers) and wind-up (final state)."""
    cdef rf_index T = c.T, B = c.B, K = c.K, H = c.H, GH = c.G * c.H
    cdef rf_index V = rf_lanes_f32() if f32 else rf_lanes_f64()
    cdef rf_index Hp = (H + V - 1) // V * V
    # GRU reset_after folds b_hh's r and z rows only (b_hn stays apart; b_hn is set exactly then)
    cdef rf_index n_hh = 2 * H if c.b_hn != NULL else GH
    if not backward:
        if f32:
            _set_up(<float *>c.bias, <const float *>b_ih, <const float *>b_hh, GH, n_hh, <float *>c.hbuf,
                    <const float *>c.h0, <float *>c.cbuf, <const float *>c.c0, <float *>c.mbuf, B, K, H, Hp)
        else:
            _set_up(<double *>c.bias, <const double *>b_ih, <const double *>b_hh, GH, n_hh, <double *>c.hbuf,
                    <const double *>c.h0, <double *>c.cbuf, <const double *>c.c0, <double *>c.mbuf, B, K, H, Hp)
    fn(c)
    if not backward:
        if f32:
            _wind_up(<const float *>c.hbuf + (T % 2) * B * K, <float *>c.h_n, <const float *>c.cbuf,
                     <float *>c.c_n, B, K, H, Hp)
        else:
            _wind_up(<const double *>c.hbuf + (T % 2) * B * K, <double *>c.h_n, <const double *>c.cbuf,
                     <double *>c.c_n, B, K, H, Hp)


def run(str cell, bint backward, object dtype, a, rf_index T, rf_index B, rf_index I, rf_index H,
        rf_index K, int G, bint reverse, int mode, bint training, bint proj, int n_threads,
        int ub=1, int ub2=1, int uq=1, int uq2=1, int uih=1, int uihq=1, int uxp=1, int uhp=1, int ump=1,
        rf_index xw_steps=0, int split=0, rf_index xp_ld=0, rf_index hp_ld=0, rf_index mp_ld=0,
        bint hp_shared=False, bint fuse_x=False, bint xw_helper=False, rf_index saves_keep=-1, bint shadow=True):
    """Run one time loop. `a` maps operand names (_FIELDS: the rf_ctx pointer fields, b_ih / b_hh, h0 / c0 /
    h_n / c_n) to arrays (or None), plus "packs"; every array must already have its documented shape
    (rnnfast/ops.py guarantees it). Or `a` is a Bound call of a Prepared plan (an inference forward), whose
    layout arguments must be the plan's; reverse, n_threads, split, xw_helper, shadow are this call's."""
    cdef rf_ctx c
    cdef void *ptr[NF]
    cdef int typenum = cnp.NPY_FLOAT32 if cnp.dtype(dtype).itemsize == 4 else cnp.NPY_FLOAT64
    cdef bint f32 = typenum == cnp.NPY_FLOAT32
    cdef Bound bd
    cdef const void *b_ih
    cdef const void *b_hh
    if type(a) is Bound:
        bd = <Bound>a
        if bd.done:
            raise ValueError("internal: a Bound call runs once")
        c = bd.c
        if (backward or training or proj or hp_shared or cell != bd.cell or typenum != bd.typenum or T != c.T
                or B != c.B or I != c.n_in or H != c.H or K != c.K or G != c.G or mode != c.mode or ub != c.ub
                or ub2 != c.ub2 or uih != c.uih or (xw_steps or T) != c.xw_steps or fuse_x != c.fuse_x):
            raise ValueError("internal: a Bound call's arguments differ from its plan's")
        _set_call(&c, False, reverse, n_threads, split, xw_helper, saves_keep, shadow)
        b_ih = bd.b_ih; b_hh = bd.b_hh
        bd.done = True
    else:
        if not isinstance(a, dict):
            raise TypeError(f"internal: a must be a dict or a Bound call, got {type(a).__name__}")
        _fill(&c, ptr, cell, backward, typenum, <dict>a, T, B, I, H, K, G, reverse, mode, training, proj,
              n_threads, ub, ub2, uq, uq2, uih, uihq, uxp, uhp, ump, xw_steps, split, xp_ld, hp_ld, mp_ld,
              hp_shared, fuse_x, xw_helper, saves_keep, shadow)
        b_ih = ptr[F_B_IH]; b_hh = ptr[F_B_HH]
    cdef loop_fn fn = _loop(cell, backward, f32)
    with nogil:
        _execute(&c, fn, backward, f32, b_ih, b_hh)


cdef object _aligned_empty(int nd, cnp.npy_intp *dims, int typenum):
    """A new C-contiguous array whose data start on a 64-byte boundary: a view of a 1-D array 64 bytes longer
    (its base). Every new output array is made here: rnnfast.ops._new through aligned_empty, a Bound call's
    directly."""
    cdef cnp.npy_intp n = 1, item = 4 if typenum == cnp.NPY_FLOAT32 else 8
    cdef int i
    for i in range(nd):
        n *= dims[i]
    cdef cnp.npy_intp total = n + 64 // item
    cdef cnp.ndarray raw = cnp.PyArray_EMPTY(1, &total, typenum, 0)
    cdef size_t addr = <size_t>cnp.PyArray_DATA(raw)
    cdef cnp.ndarray view = cnp.PyArray_SimpleNewFromData(nd, dims, typenum,
                                                           <char *>cnp.PyArray_DATA(raw) + (64 - addr % 64) % 64)
    cnp.set_array_base(view, raw)
    return view


def aligned_empty(tuple shape, object dtype):
    """A new C-contiguous float32 or float64 array of `shape` whose data start on a 64-byte boundary."""
    cdef int typenum = cnp.NPY_FLOAT32 if cnp.dtype(dtype).itemsize == 4 else cnp.NPY_FLOAT64
    cdef cnp.npy_intp dims[8]
    cdef int i, nd = len(shape)
    if nd > 8 or cnp.dtype(dtype).kind != "f" or cnp.dtype(dtype).itemsize not in (4, 8):
        raise ValueError(f"internal: aligned_empty takes up to 8 dimensions of float32 or float64, got {shape} {dtype}")
    for i in range(nd):
        dims[i] = shape[i]
    return _aligned_empty(nd, dims, typenum)


cdef class Bound:
    """One inference call of a Prepared plan: the plan's context with the call's arrays in it, for run()
    (once); y, h_n, c_n are the call's new outputs."""
    cdef rf_ctx c
    cdef str cell
    cdef int typenum
    cdef bint done
    cdef const void *b_ih
    cdef const void *b_hh
    cdef object plan     # the Prepared plan (its workspaces)
    cdef tuple keep      # the call's arrays, alive while the context points into them
    cdef readonly object y, h_n, c_n


# The workspaces of an inference forward (rnnfast.ops, _make_plan): what a Prepared plan holds.
_WORK_IDS = (F_WIH_PACK, F_XW, F_BIAS, F_W_PACK, F_W2_PACK, F_HBUF, F_CBUF, F_MBUF)


cdef class Prepared:
    """An inference forward's kernel context with its workspaces and panel layout filled in, for the calls of
    one shape without lengths, projection or peepholes (rnnfast.ops keeps one with each kept plan): made from
    a first call's operands (checked as run() checks them), it keeps the workspaces and forgets that call's
    own arrays; bind() puts another call's arrays in a copy of it."""
    cdef rf_ctx c
    cdef int typenum
    cdef str cell
    cdef tuple work
    cdef int role[RF_MAX_PACKS]       # the source each pack reads: 0 w_ih, 1 w_hh
    cdef rf_index off[RF_MAX_PACKS]   # and the byte offset into it

    def __cinit__(self, str cell, object dtype, dict a, tuple roles, rf_index T, rf_index B, rf_index I,
                  rf_index H, int G, int mode, int ub, int ub2, int uih, rf_index xw_steps, bint fuse_x):
        cdef void *ptr[NF]
        cdef int i
        self.typenum = cnp.NPY_FLOAT32 if cnp.dtype(dtype).itemsize == 4 else cnp.NPY_FLOAT64
        if (a.get("lengths") is not None or a.get("peep") is not None or len(roles) != len(a["packs"])
                or any(r not in ("w_ih", "w_hh") for r in roles)):
            raise ValueError("internal: a Prepared plan is for a forward without lengths, projection or peepholes")
        _fill(&self.c, ptr, cell, False, self.typenum, a, T, B, I, H, H, G, False, mode, False, False, 1, ub, ub2,
              1, 1, uih, 1, 1, 1, 1, xw_steps, 0, 0, 0, 0, False, fuse_x, False, -1, True)
        for i in range(self.c.n_packs):
            src = a["packs"][i][0]
            self.role[i] = 0 if roles[i] == "w_ih" else 1
            self.off[i] = <const char *>self.c.packs[i].src - <const char *>cnp.PyArray_DATA(<cnp.ndarray>src)
        self.cell = cell
        self.work = tuple(a.get(_FIELDS[i]) for i in _WORK_IDS)
        # nothing of the first call's own arrays stays behind
        self.c.x = NULL; self.c.y = NULL; self.c.h0 = NULL; self.c.c0 = NULL; self.c.h_n = NULL
        self.c.c_n = NULL; self.c.b_hn = NULL
        for i in range(self.c.n_packs):
            self.c.packs[i].src = NULL

    def bind(self, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        """A Bound call of this plan on these arrays (of the plan's shapes and dtype, else ValueError), with
        new outputs y, h_n (and c_n for LSTM)."""
        cdef int tn = self.typenum, i
        cdef rf_index T = self.c.T, B = self.c.B, I = self.c.n_in, H = self.c.H, GH = self.c.G * self.c.H
        if not (_plain(x, tn, 3) and cnp.PyArray_DIM(<cnp.ndarray>x, 0) == T
                and cnp.PyArray_DIM(<cnp.ndarray>x, 1) == B and cnp.PyArray_DIM(<cnp.ndarray>x, 2) == I
                and _plain_shape(w_ih, tn, GH, I) and _plain_shape(w_hh, tn, GH, H)
                and (b_ih is None or _plain_shape(b_ih, tn, GH, -1))
                and (b_hh is None or _plain_shape(b_hh, tn, GH, -1))
                and (h0 is None or _plain_shape(h0, tn, B, H))
                and ((c0 is None or _plain_shape(c0, tn, B, H)) if self.cell == "lstm" else c0 is None)
                and (b_ih is not None or b_hh is not None) == (self.c.bias != NULL)):
            raise ValueError("internal: a Bound call's arrays differ from its plan's")
        cdef Bound bd = Bound.__new__(Bound)
        bd.c = self.c
        bd.cell = self.cell
        bd.typenum = tn
        bd.plan = self
        bd.keep = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        cdef cnp.npy_intp dims[3]
        dims[0] = T; dims[1] = B; dims[2] = H
        bd.y = _aligned_empty(3, dims, tn)
        bd.h_n = cnp.PyArray_EMPTY(2, &dims[1], tn, 0)
        bd.c_n = cnp.PyArray_EMPTY(2, &dims[1], tn, 0) if self.cell == "lstm" else None
        bd.c.x = cnp.PyArray_DATA(<cnp.ndarray>x)
        bd.c.y = cnp.PyArray_DATA(<cnp.ndarray>bd.y)
        bd.c.h_n = cnp.PyArray_DATA(<cnp.ndarray>bd.h_n)
        bd.c.c_n = cnp.PyArray_DATA(<cnp.ndarray>bd.c_n) if bd.c_n is not None else NULL
        bd.c.h0 = cnp.PyArray_DATA(<cnp.ndarray>h0) if h0 is not None else NULL
        bd.c.c0 = cnp.PyArray_DATA(<cnp.ndarray>c0) if c0 is not None else NULL
        bd.b_ih = cnp.PyArray_DATA(<cnp.ndarray>b_ih) if b_ih is not None else NULL
        bd.b_hh = cnp.PyArray_DATA(<cnp.ndarray>b_hh) if b_hh is not None else NULL
        if self.cell == "gru" and self.c.mode == 1 and b_hh is not None:
            bd.c.b_hn = <const char *>bd.b_hh + 2 * H * cnp.PyArray_ITEMSIZE(<cnp.ndarray>b_hh)
        for i in range(self.c.n_packs):
            bd.c.packs[i].src = <const char *>cnp.PyArray_DATA(<cnp.ndarray>(w_ih if self.role[i] == 0 else w_hh)) \
                + self.off[i]
        return bd
