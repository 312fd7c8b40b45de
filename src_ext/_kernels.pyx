# cython: language_level=3
"""Binding of the compiled time loops (src_ext/*.h). Users call rnnfast.ops, which validates every
argument first; this module checks again, as a last line of defence, that each array it hands to C code is
C-contiguous with the expected dtype and holds at least the elements the loops touch, so no mistake upstream
can turn into an out-of-bounds access."""
cimport numpy as cnp
from libc.stdint cimport int64_t

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
        int reverse, mode, training, proj, n_threads, split
        const int64_t *lengths
        rf_pack_spec packs[RF_MAX_PACKS]
        int n_packs
        const void *x
        const void *wih_pack
        int uih
        void *xw
        rf_index xw_steps
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


def _check_sizes(dict a, rf_index T, rf_index B, rf_index I, rf_index H, rf_index K, int G, rf_index V,
                 rf_index xw_steps):
    """Every array the loops index must hold at least the elements they touch (sizes are 64-bit)."""
    cdef rf_index GH = G * H, TB = T * B, Hp = (H + V - 1) // V * V
    need = {"lengths": B, "x": TB * I, "xw": xw_steps * B * GH, "bias": GH, "b_hn": H, "peep": 3 * H, "y": TB * K,
            "gates_tb": TB * GH, "c_tb": TB * H, "cprev_tb": TB * H, "hprev_tb": TB * K, "m_tb": TB * H,
            "dy": TB * K, "dh_n": B * K, "dc_n": B * H, "dg_tb": TB * GH, "dgh_tb": TB * GH, "dhp_tb": TB * K,
            "dh0": B * K, "dx": TB * I, "dw_ih": GH * I, "dw_hh": GH * K, "dw_hr": K * H, "hbuf": 2 * B * K,
            "cbuf": B * Hp, "mbuf": B * H, "zero": max(GH, K, H) + V}
    for name, n in need.items():
        arr = a.get(name)
        if arr is not None and cnp.PyArray_SIZE(<cnp.ndarray>arr) < n:
            raise ValueError(f"internal: {name} holds {cnp.PyArray_SIZE(<cnp.ndarray>arr)} elements, "
                             f"the loop touches {n}")


def run(str cell, bint backward, object dtype, dict a, rf_index T, rf_index B, rf_index I, rf_index H,
        rf_index K, int G, bint reverse, int mode, bint training, bint proj, int n_threads,
        int ub=1, int ub2=1, int uq=1, int uq2=1, int uih=1, int uihq=1, int uxp=1, int uhp=1, int ump=1,
        rf_index xw_steps=0, int split=0):
    """Run one time loop. `a` maps the rf_ctx pointer field names to arrays (or None); every array must
    already have its documented shape (rnnfast/ops.py guarantees it)."""
    cdef rf_ctx c
    cdef int typenum = cnp.NPY_FLOAT32 if cnp.dtype(dtype).itemsize == 4 else cnp.NPY_FLOAT64
    c.T = T; c.B = B; c.n_in = I; c.H = H; c.K = K; c.G = G
    c.reverse = reverse; c.mode = mode; c.training = training; c.proj = proj; c.n_threads = n_threads
    c.ub = ub; c.ub2 = ub2; c.uq = uq; c.uq2 = uq2; c.uih = uih; c.uihq = uihq
    c.uxp = uxp; c.uhp = uhp; c.ump = ump
    if xw_steps == 0:
        xw_steps = T
    if xw_steps < 1 or xw_steps > max(T, 1):
        raise ValueError(f"internal: xw_steps {xw_steps} outside 1..{T}")
    c.xw_steps = xw_steps
    if split not in (0, 1, 2):
        raise ValueError(f"internal: split {split} is not 0, 1 or 2")
    c.split = split
    _check_sizes(a, T, B, I, H, K, G, lanes(dtype), xw_steps)
    packs = a.get("packs", ())
    if len(packs) > RF_MAX_PACKS:
        raise ValueError("internal: too many operands to pack")
    c.n_packs = len(packs)
    for i, spec in enumerate(packs):
        _fill_pack(&c.packs[i], spec, typenum)
    lengths = a.get("lengths")
    c.lengths = <const int64_t *>_ptr(lengths, cnp.NPY_INT64, "lengths")
    c.x = _ptr(a.get("x"), typenum, "x")
    c.wih_pack = _ptr(a.get("wih_pack"), typenum, "wih_pack")
    c.xw = _ptr(a.get("xw"), typenum, "xw")
    c.bias = _ptr(a.get("bias"), typenum, "bias")
    c.b_hn = _ptr(a.get("b_hn"), typenum, "b_hn")
    c.peep = _ptr(a.get("peep"), typenum, "peep")
    c.w_pack = _ptr(a.get("w_pack"), typenum, "w_pack")
    c.w2_pack = _ptr(a.get("w2_pack"), typenum, "w2_pack")
    c.h0 = _ptr(a.get("h0"), typenum, "h0")
    c.c0 = _ptr(a.get("c0"), typenum, "c0")
    c.y = _ptr(a.get("y"), typenum, "y")
    c.h_n = _ptr(a.get("h_n"), typenum, "h_n")
    c.c_n = _ptr(a.get("c_n"), typenum, "c_n")
    c.gates_tb = _ptr(a.get("gates_tb"), typenum, "gates_tb")
    c.c_tb = _ptr(a.get("c_tb"), typenum, "c_tb")
    c.cprev_tb = _ptr(a.get("cprev_tb"), typenum, "cprev_tb")
    c.hprev_tb = _ptr(a.get("hprev_tb"), typenum, "hprev_tb")
    c.m_tb = _ptr(a.get("m_tb"), typenum, "m_tb")
    c.dy = _ptr(a.get("dy"), typenum, "dy")
    c.dh_n = _ptr(a.get("dh_n"), typenum, "dh_n")
    c.dc_n = _ptr(a.get("dc_n"), typenum, "dc_n")
    c.wq_pack = _ptr(a.get("wq_pack"), typenum, "wq_pack")
    c.wq2_pack = _ptr(a.get("wq2_pack"), typenum, "wq2_pack")
    c.dg_tb = _ptr(a.get("dg_tb"), typenum, "dg_tb")
    c.dgh_tb = _ptr(a.get("dgh_tb"), typenum, "dgh_tb")
    c.dhp_tb = _ptr(a.get("dhp_tb"), typenum, "dhp_tb")
    c.dh0 = _ptr(a.get("dh0"), typenum, "dh0")
    c.dx = _ptr(a.get("dx"), typenum, "dx")
    c.wihq_pack = _ptr(a.get("wihq_pack"), typenum, "wihq_pack")
    c.xp_pack = _ptr(a.get("xp_pack"), typenum, "xp_pack")
    c.hp_pack = _ptr(a.get("hp_pack"), typenum, "hp_pack")
    c.mp_pack = _ptr(a.get("mp_pack"), typenum, "mp_pack")
    c.dw_ih = _ptr(a.get("dw_ih"), typenum, "dw_ih")
    c.dw_hh = _ptr(a.get("dw_hh"), typenum, "dw_hh")
    c.dw_hr = _ptr(a.get("dw_hr"), typenum, "dw_hr")
    c.dc0 = _ptr(a.get("dc0"), typenum, "dc0")
    c.hbuf = _ptr(a.get("hbuf"), typenum, "hbuf")
    c.cbuf = _ptr(a.get("cbuf"), typenum, "cbuf")
    c.mbuf = _ptr(a.get("mbuf"), typenum, "mbuf")
    c.zero = _ptr(a.get("zero"), typenum, "zero")
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
    with nogil:
        fn(&c)
