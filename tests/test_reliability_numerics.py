"""Numerical reliability: huge and tiny magnitudes, overflow only where the math overflows, NaN confined to its
batch row, gradient clipping (rnnfast.clip_grad_norm against torch.nn.utils.clip_grad_norm_), and 64-bit
indexing.

Warnings: numpy's floating-point state covers the numpy work in rnnfast.ops (the input GEMM, the weight
gradients); the C kernels set no flags that numpy reports. So besides running under
warnings.simplefilter("error") and np.errstate(over/invalid/divide="raise"), every test checks the outputs
themselves: finite where the math is finite, and equal to the float64 reference.

64-bit indexing (see also the report in docs/SANITIZERS.md): every size and index in src_ext/*.h is an
rf_index (int64); the only `int`s are loop counters bounded by constants (tile rows <= 8, unit blocks <= 4,
gates <= 4, lanes <= 16) and flags. An element offset beyond 2**31 needs an array of more than 2**31
elements: the cheapest such call, a float32 LSTM inference with T*B*4H > 2**31 and the input projection
forced into one chunk of all T steps (xw alone 8 GiB, ~11 GiB in
all, ~1 minute here), is test_element_offsets_beyond_2_31, opt-in (RNNFAST_TEST_HUGE=1). CI runs
test_byte_offsets_beyond_2_31: float32 offsets beyond 2**29 elements = 2**31 bytes (~2.7 GiB, ~10 s), which
would catch a byte count or offset held in 32 bits anywhere on the way (numpy reshapes, the binding, memset /
memcpy sizes), and checks the last batch rows, whose offsets are the largest, bit for bit against B = 1 runs.
"""
import os
import warnings

import numpy as np
import pytest

import rnnfast
from rnnfast import ops, reference
from test_ops import CASES, GRAD_NAMES, OUT_NAMES, as64, backward, d_outputs_for, forward, make_problem
from test_reliability_input import (LAYERS, as_tuple, nonzero, reference_layer_backward, reference_layer_forward,
                                    states_for)
from tolerances import assert_close, tol

FLOATS = [np.float64, np.float32]
F32_MAX = float(np.finfo(np.float32).max)


def strict_fp():
    """warnings as errors and numpy raising on overflow / invalid / divide (underflow stays ignored: a
    saturated sigmoid's derivative legitimately underflows)."""
    class _Ctx:
        def __enter__(self):
            self._w = warnings.catch_warnings()
            self._w.__enter__()
            warnings.simplefilter("error")
            self._e = np.errstate(over="raise", invalid="raise", divide="raise", under="ignore")
            self._e.__enter__()

        def __exit__(self, *exc):
            self._e.__exit__(*exc)
            return self._w.__exit__(*exc)
    return _Ctx()


def reference64(cell, a, kw, d, **options):
    """The reference in float64 on the same data: (outputs, gradients); its own warnings are ignored."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        out, saved = forward(reference, cell, {k: as64(v) for k, v in a.items()}, kw, training=True, **options)
        grads = backward(reference, cell, [as64(v) for v in d], saved, a)
    return out, grads


# ==========================================================================================================
# Huge and tiny magnitudes



# Where each dtype's vectorised activations are checked against libm: x spans the smooth region, the
# saturation regions and the overflow thresholds of exp in both dtypes. Bounds: float32 <= 3e-7 absolute
# (the speed issue's bound); float64 a few ulp relative (what a Cody-Waite exp with an exact polynomial gives).
_ACT_X = np.concatenate([np.linspace(-30, 30, 6001), [0.0, -0.0, 1e-300, -1e-300, 1e-30, -1e-30, 1e-8, -1e-8],
                         [-87.0, -88.7, -88.8, -89.0, 88.0, 89.0, -700.0, -708.5, -709.5, -710.0, -745.0,
                          700.0, 709.5, 710.0, 1e10, -1e10]])


def _activation_via_rnn(x, dtype, nonlinearity):
    """tanh or relu of x computed by the kernels: an RNN with w_ih = 1, w_hh = 0 and one unit per value."""
    n = x.size
    out, _, _ = ops.rnn_forward(x.reshape(1, n, 1).astype(dtype), None, np.ones((1, 1), dtype),
                                np.zeros((1, 1), dtype), nonlinearity=nonlinearity)
    return out.ravel()


def _sigmoid_via_gru(x, dtype):
    """sigmoid(x) by the kernels: a GRU with n = 0 (w_in = 0), z = sigmoid(x) and h0 = 1, so h' = z."""
    n = x.size
    w_ih = np.array([[0.0], [1.0], [0.0]], dtype)
    _, h_n, _ = ops.gru_forward(x.reshape(1, n, 1).astype(dtype), np.ones((n, 1), dtype), w_ih,
                                np.zeros((3, 1), dtype))
    return h_n.ravel()


@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
def test_activations_match_libm(dtype):
    x = _ACT_X.astype(dtype)
    with np.errstate(over="ignore"):
        want_tanh = np.tanh(x.astype(np.float64))
        want_sig = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    got_tanh = _activation_via_rnn(x, dtype, "tanh")
    got_sig = _sigmoid_via_gru(x, dtype)
    assert got_tanh.dtype == dtype and got_sig.dtype == dtype
    assert np.all(np.isfinite(got_tanh)) and np.all(np.isfinite(got_sig))
    if dtype == np.float32:
        assert np.max(np.abs(got_tanh - want_tanh)) <= 3e-7
        assert np.max(np.abs(got_sig - want_sig)) <= 3e-7
    else:
        eps = np.finfo(np.float64).eps
        np.testing.assert_allclose(got_tanh, want_tanh, rtol=8 * eps, atol=0)
        np.testing.assert_allclose(got_sig, want_sig, rtol=8 * eps, atol=1e-307)
    assert np.all(np.abs(got_tanh) <= 1) and np.all((got_sig >= 0) & (got_sig <= 1))
    nz = x != 0  # (a zero input reaches tanh as the sum 0 + x*1 = +0)
    np.testing.assert_array_equal(np.signbit(got_tanh[nz]), np.signbit(x[nz]))
    assert not np.any(np.signbit(got_tanh[~nz])), "tanh(+0) must be +0"


def test_float32_sigmoid_saturates_to_zero():
    """GRU with n = 0 and z = sigmoid(-200): h' = z * h0, which is 0 in float32 (the true value is 1e-87)."""
    f32 = np.float32
    w_ih = np.array([[0.0], [1.0], [0.0]], f32)
    _, h_n, _ = ops.gru_forward(np.full((1, 1, 1), -200, f32), np.ones((1, 1), f32), w_ih, np.zeros((3, 1), f32))
    assert h_n[0, 0] == 0.0, h_n


def test_float32_saturated_forget_gate_gives_no_gradient():
    """Minimal case: x = 1e30, w_ih forget row -1 (f = sigmoid(-1e30) = 0), c0 = 1e30: c_n = 0 and
    dw_ih = 0 for the forget gate, as in float64."""
    f32 = np.float32
    w_ih = np.array([[0.0], [-1.0], [0.0], [0.0]], f32)
    _, _, c_n, saved = ops.lstm_forward(np.full((1, 1, 1), 1e30, f32), None, np.full((1, 1), 1e30, f32), w_ih,
                                        np.zeros((4, 1), f32), training=True)
    dw_ih = ops.lstm_backward(None, None, np.ones((1, 1), f32), saved)[3]
    assert c_n[0, 0] == 0.0 and dw_ih[1, 0] == 0.0, (c_n, dw_ih.ravel())

@pytest.mark.parametrize("scale", [1e30, 1e10, 1e-30], ids=["1e30", "1e10", "1e-30"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_huge_and_tiny_inputs_saturate_cleanly(request, rng, case, dtype, scale):
    """x, h0 and c0 of magnitude `scale` (weights as torch initialises them): no warning, no floating-point
    error, every output and gradient finite and equal to the float64 reference within the dtype's tolerance."""
    cell, a, kw = make_problem(rng, case, 4, 3, 3, 6, 2, dtype=dtype)
    for k in ("x", "h0", "c0"):
        if a.get(k) is not None:
            a[k] = (a[k] * scale).astype(dtype)
    options = dict(lengths=np.array([4, 0, 3]), reverse=True)
    with strict_fp():
        out, saved = forward(ops, cell, a, kw, training=True, **options)
        d = d_outputs_for(rng, out)
        grads = backward(ops, cell, d, saved, a)
    ref_out, ref_grads = reference64(cell, a, kw, d, **options)
    for name, o, r in zip(OUT_NAMES[cell], out, ref_out):
        assert np.all(np.isfinite(o)), name
        assert_close(o, r, dtype, name)
    for name, g, r in zip(GRAD_NAMES[cell], grads, ref_grads):
        if g is not None:
            assert np.all(np.isfinite(g)), name
            # Gradients scale with the inputs (dw_ih ~ x): compare relative to their own magnitude.
            scale_g = max(1.0, float(np.max(np.abs(r)))) if r.size else 1.0
            np.testing.assert_allclose(g / scale_g, r / scale_g, err_msg=name, **tol(dtype))
    if case == "rnn_tanh":
        assert np.all(np.abs(out[0]) <= 1)  # tanh saturates at +-1, never beyond


@pytest.mark.parametrize("B", [1, 5, 16])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][0] == "lstm"])
def test_lstm_large_cell_state_with_open_output_gate(rng, case, dtype, training, B):
    """c_t of either sign far beyond where tanh saturates (|c| up to 1e4: e^(2|c|) overflows) while the output
    gate stays between 0 and 1 (x and h0 of normal size): h_t = o * tanh(c_t) = +-o, as in the float64
    reference. Guards o * tanh(c) computed as one product n_c / (d_o d_c), whose denominator must stay finite
    and normal for a saturated tanh of a negative argument as for a positive one."""
    cell, a, kw = make_problem(rng, case, 3, B, 4, 20, 2, dtype=dtype)
    a["c0"] = (rng.choice([-1.0, 1.0], a["c0"].shape) * 10.0 ** rng.uniform(1, 4, a["c0"].shape)).astype(dtype)
    with strict_fp():
        out, _ = forward(ops, cell, a, kw, training=training)
    with np.errstate(all="ignore"):
        ref_out, _ = forward(reference, cell, {k: as64(v) for k, v in a.items()}, kw)
    for name, o, r in zip(OUT_NAMES[cell], out, ref_out):
        assert_close(o, r, dtype, name)
    if case == "lstm":  # (a peephole closes o for such c; a projection mixes the units)
        assert np.all(np.abs(out[0]) > 1e-3)  # the output gates are open: no h_t collapses to 0


@pytest.mark.parametrize("case", ["rnn_tanh", "gru", "lstm", "lstm_proj"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
def test_tanh_cells_are_odd(rng, case, dtype):
    """Negating x, h0 and c0 negates every output bit for bit where the cell is an odd function of them: a
    tanh RNN without biases, and a GRU / LSTM whose sigmoid gates get zero pre-activations (their weight rows
    zero, so every gate is exactly 1/2 and only tanh sees the data). Needs tanh(-a) == -tanh(a) exactly,
    across magnitudes from 1e-3 to 1e3 (where tanh saturates and its exponential would overflow)."""
    cell, a, kw = make_problem(rng, case, 4, 6, 3, 20, 7, bias="none", dtype=dtype)
    H = a["w_hh"].shape[0] // {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    sigmoid_rows = {"rnn": [], "gru": [0, 1], "lstm": [0, 1, 3]}[cell]  # GRU r, z; LSTM i, f, o
    for q in sigmoid_rows:
        a["w_ih"][q * H:(q + 1) * H] = 0
        a["w_hh"][q * H:(q + 1) * H] = 0
    for k in ("x", "h0", "c0"):
        if a.get(k) is not None:
            a[k] = (a[k] * 10.0 ** rng.uniform(-3, 3, a[k].shape)).astype(dtype)
    neg = {k: (-v if k in ("x", "h0", "c0") and v is not None else v) for k, v in a.items()}
    out_pos, _ = forward(ops, cell, a, kw)
    out_neg, _ = forward(ops, cell, neg, kw)
    for name, p, n in zip(OUT_NAMES[cell], out_pos, out_neg):
        np.testing.assert_array_equal(n, -p, err_msg=name)
    if case != "lstm_proj":  # (the projection mixes the units)
        assert np.any(np.abs(out_pos[0]) > 0.99 * (0.5 if cell == "lstm" else 1))  # some tanh saturated


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
def test_layer_huge_inputs(rng, kind, dtype):
    layer = LAYERS[kind](3, 5, num_layers=2, bidirectional=True, dtype=dtype, seed=0)
    x = (nonzero(rng, (4, 2, 3)) * 1e30).astype(dtype)
    with strict_fp():
        out, states = layer.forward(x, lengths=[4, 2], train=True)
        d_out = nonzero(rng, out.shape, dtype)
        dx, _ = layer.backward(d_out)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ref_out, ref_states, tape = reference_layer_forward(layer, x, None, [4, 2])
        ref_dx, _, ref_grads = reference_layer_backward(layer, tape, d_out, ())
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    assert_close(out, ref_out, dtype, "output")
    for s, r in zip(as_tuple(states), ref_states):
        assert_close(s, r, dtype, "state")
    assert_close(dx, ref_dx, dtype, "dx")
    for name, g in layer.grads.items():
        assert np.all(np.isfinite(g)), name
        scale_g = max(1.0, float(np.max(np.abs(ref_grads[name]))))
        np.testing.assert_allclose(g / scale_g, ref_grads[name] / scale_g, err_msg=name, **tol(dtype))


def test_relu_overflows_to_inf_exactly_where_the_math_does(rng):
    """A float32 relu RNN with positive weights and inputs of 1e30 grows by ~4x per step: after ~15 steps the
    true values pass float32's maximum. Every output and gradient whose float64 value is beyond it is +inf,
    every one below it is finite and close to the float64 value; nothing is NaN."""
    T, B, I, H = 25, 3, 2, 5
    f32 = np.float32
    x = (rng.uniform(0.5, 1, (T, B, I)) * 1e30).astype(f32)
    w_ih, w_hh = rng.uniform(0.5, 1, (H, I)).astype(f32), rng.uniform(0.5, 1, (H, H)).astype(f32)
    h0 = rng.uniform(0.5, 1, (B, H)).astype(f32)
    lengths = np.array([T, 20, 9])
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # the weight-gradient GEMMs overflow: right
        warnings.simplefilter("ignore")
        y, h_n, saved = ops.rnn_forward(x, h0, w_ih, w_hh, nonlinearity="relu", lengths=lengths, training=True)
        dy = rng.uniform(0.5, 1, y.shape).astype(f32)
        grads = ops.rnn_backward(dy, None, saved)
        ry, rh, rsaved = reference.rnn_forward(as64(x), as64(h0), as64(w_ih), as64(w_hh), nonlinearity="relu",
                                               lengths=lengths, training=True)
        rgrads = reference.rnn_backward(as64(dy), None, rsaved)
    n_over = 0
    for name, o, r in [("y", y, ry), ("h_n", h_n, rh)] + list(zip(GRAD_NAMES["rnn"], grads, rgrads)):
        if o is None:
            continue
        assert not np.any(np.isnan(o)), name
        over, under = np.abs(r) > F32_MAX * 1.001, np.abs(r) < F32_MAX * 0.999
        n_over += int(over.sum())
        assert np.all(np.isposinf(o[over] * np.sign(r[over]))), f"{name}: finite where the math overflows"
        np.testing.assert_allclose(o[under], r[under], rtol=1e-4, atol=0, err_msg=name)
    assert n_over > 0, "the test must reach the overflow"
    assert np.isinf(y[-1, 0]).all() and np.isfinite(y[:8, 2]).all() and not np.any(y[9:, 2])


# ==========================================================================================================
# NaN stays in its batch row

def _without_row(a, b):
    return {k: (np.delete(v, b, axis=1) if k == "x" else np.delete(v, b, axis=0) if k in ("h0", "c0") else v)
            for k, v in a.items()}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case, where", [(c, w) for c in CASES for w in ("x", "h0", "c0")
                                         if w != "c0" or CASES[c][0] == "lstm"])
def test_nan_in_one_row_stays_in_that_row(rng, case, where, dtype, reverse):
    cell, a, kw = make_problem(rng, case, 5, 4, 3, 7, 3, dtype=dtype)
    b = 2
    lengths = np.array([5, 3, 4, 0])
    if where == "x":
        a["x"][1, b, 0] = np.nan
    else:
        a[where][b, 0] = np.nan
    options = dict(lengths=lengths, reverse=reverse)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # numpy's GEMMs report the NaN
        out, saved = forward(ops, cell, a, kw, training=True, **options)
        d = d_outputs_for(rng, out)
        g = dict(zip(GRAD_NAMES[cell], backward(ops, cell, d, saved, a)))
    keep = [i for i in range(4) if i != b]
    a_rest = _without_row(a, b)
    out_rest, saved_rest = forward(ops, cell, a_rest, kw, training=True, lengths=lengths[keep], reverse=reverse)
    d_rest = [v[:, keep] if v.ndim == 3 else v[keep] for v in d]
    g_rest = dict(zip(GRAD_NAMES[cell], backward(ops, cell, d_rest, saved_rest, a_rest)))
    close = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-6)
    for name, o, o_rest in zip(OUT_NAMES[cell], out, out_rest):
        rows = o[:, keep] if o.ndim == 3 else o[keep]
        assert np.all(np.isfinite(rows)), f"{name}: NaN leaked into other rows"
        np.testing.assert_allclose(rows, o_rest, err_msg=name, **close)
    assert np.isnan(out[0][:, b]).any() and np.isnan(out[1][b]).any(), "the NaN row must show its NaN"
    for name in ("dx", "dh0", "dc0"):
        if name in g:
            rows = g[name][:, keep] if name == "dx" else g[name][keep]
            assert np.all(np.isfinite(rows)), f"{name}: NaN leaked into other rows"
            np.testing.assert_allclose(rows, g_rest[name], err_msg=name, **close)
    assert np.isnan(g["dw_hh"]).any(), "weight gradients sum over rows: the NaN must show"


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_nan_in_one_row_stays_in_that_row_through_a_stacked_layer(rng, kind):
    layer = LAYERS[kind](3, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x = nonzero(rng, (5, 4, 3))
    x[2, 1, 1] = np.nan
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        out, states = layer.forward(x, lengths=[5, 4, 3, 5], train=True)
        d_out = nonzero(rng, out.shape)
        dx, dhx0 = layer.backward(d_out)
    keep = [0, 2, 3]
    out_r, states_r = layer.forward(x[:, keep], lengths=[5, 3, 5], train=True)
    dx_r, dhx0_r = layer.backward(d_out[:, keep])
    np.testing.assert_allclose(out[:, keep], out_r, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dx[:, keep], dx_r, rtol=1e-12, atol=1e-14)
    for s, s_r in zip(as_tuple(states) + as_tuple(dhx0), as_tuple(states_r) + as_tuple(dhx0_r)):
        np.testing.assert_allclose(s[:, keep], s_r, rtol=1e-12, atol=1e-14)
    assert np.isnan(out[:, 1]).any() and np.isnan(dx[:, 1]).any()


def _nan_padding_problem(rng, case):
    cell, a, kw = make_problem(rng, case, 5, 3, 2, 4, 2)
    lengths = np.array([5, 2, 0])
    clean = dict(a, x=a["x"].copy())
    a["x"][2:, 1] = np.nan  # past row 1's length: never read
    a["x"][:, 2] = np.inf   # row 2 has length 0
    return cell, a, clean, kw, lengths


@pytest.mark.parametrize("case", CASES)
def test_nan_in_padding_changes_no_output_and_no_input_gradient(rng, case):
    """Steps past a row's length are never read (PackedSequence semantics): NaN / inf there change no
    output, and neither dx nor dh0 / dc0."""
    cell, a, clean, kw, lengths = _nan_padding_problem(rng, case)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        out, saved = forward(ops, cell, a, kw, lengths=lengths, training=True)
        d = d_outputs_for(rng, out)
        g = dict(zip(GRAD_NAMES[cell], backward(ops, cell, d, saved, a)))
    out_c, saved_c = forward(ops, cell, clean, kw, lengths=lengths, training=True)
    g_c = dict(zip(GRAD_NAMES[cell], backward(ops, cell, d, saved_c, clean)))
    for o, o_c in zip(out, out_c):
        np.testing.assert_array_equal(o, o_c)
    for name in ("dx", "dh0", "dc0"):
        if name in g:
            np.testing.assert_array_equal(g[name], g_c[name], err_msg=name)


@pytest.mark.parametrize("level", ["ops", "layer"])
def test_nan_in_padding_changes_no_parameter_gradient(rng, level):
    """dw_ih used to be dg.T @ x over every step: the zero gate gradients of padded steps times NaN / inf
    there gave NaN (fixed in 9809b97; torch with a PackedSequence never sees the padding)."""
    if level == "ops":
        cell, a, clean, kw, lengths = _nan_padding_problem(rng, "lstm")
        out, saved = forward(ops, cell, a, kw, lengths=lengths, training=True)
        d = d_outputs_for(rng, out)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            g = backward(ops, cell, d, saved, a)
        _, saved_c = forward(ops, cell, clean, kw, lengths=lengths, training=True)
        g_c = backward(ops, cell, d, saved_c, clean)
        for name, gi, gc in zip(GRAD_NAMES[cell], g, g_c):
            if gi is not None:
                np.testing.assert_array_equal(gi, gc, err_msg=name)
    else:
        layer = rnnfast.GRU(2, 3, dtype=np.float64, seed=0)
        x = nonzero(rng, (4, 2, 2))
        x[3:, 1] = np.nan
        out, _ = layer.forward(x, lengths=[4, 3], train=True)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            layer.backward(np.ones_like(out))
        assert all(np.all(np.isfinite(gr)) for gr in layer.grads.values()), \
            {n: bool(np.all(np.isfinite(gr))) for n, gr in layer.grads.items()}


# ==========================================================================================================
# rnnfast.clip_grad_norm(modules, max_norm, norm_type=2.0)

def _fill_grads(rng, modules, dtype):
    for m in modules:
        for g in m.grads.values():
            g[...] = nonzero(rng, g.shape, dtype) * rng.uniform(0.1, 3)


def _total_norm(modules, norm_type):
    flat = np.concatenate([g.astype(np.float64).ravel() for m in modules for g in m.grads.values()])
    return float(np.max(np.abs(flat))) if np.isinf(norm_type) else float(np.sum(np.abs(flat) ** norm_type)
                                                                          ** (1 / norm_type))


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3, float("inf")], ids=["L2", "L1", "L3", "inf"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
def test_clip_grad_norm_returns_the_norm_and_scales_only_above_max_norm(rng, dtype, norm_type):
    modules = [rnnfast.LSTM(3, 4, num_layers=2, dtype=dtype, seed=0), rnnfast.GRUCell(2, 3, dtype=dtype, seed=0)]
    _fill_grads(rng, modules, dtype)
    total = _total_norm(modules, norm_type)
    before = [g.copy() for m in modules for g in m.grads.values()]
    # above the total: returns it, changes nothing
    got = rnnfast.clip_grad_norm(modules, 2 * total, norm_type=norm_type)
    assert isinstance(got, float) and got == pytest.approx(total, rel=1e-12)
    for g, b in zip((g for m in modules for g in m.grads.values()), before):
        np.testing.assert_array_equal(g, b)
    # below: scaled by max_norm / (total + 1e-6), dtype kept, new norm = max_norm
    max_norm = total / 7
    got = rnnfast.clip_grad_norm(modules, max_norm, norm_type=norm_type)
    assert got == pytest.approx(total, rel=1e-12)
    coef = max_norm / (total + 1e-6)
    for g, b in zip((g for m in modules for g in m.grads.values()), before):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, b * coef, rtol=2e-7 if dtype == np.float32 else 1e-14)
    assert _total_norm(modules, norm_type) == pytest.approx(max_norm, rel=1e-5)
    # a single module (not in a list) works too
    assert rnnfast.clip_grad_norm(modules[0], 1e30) == pytest.approx(_total_norm(modules[:1], 2.0), rel=1e-12)


def test_clip_grad_norm_after_a_real_backward(rng):
    layer = rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    out, _ = layer.forward(nonzero(rng, (6, 2, 3)), train=True)
    layer.backward(100 * nonzero(rng, out.shape))
    total = rnnfast.clip_grad_norm(layer, 1.0)
    assert total > 1.0
    assert _total_norm([layer], 2.0) == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_of_zero_gradients():
    layer = rnnfast.GRU(2, 3, seed=0)
    assert rnnfast.clip_grad_norm(layer, 1.0) == 0.0
    assert all(not np.any(g) for g in layer.grads.values())


def test_clip_grad_norm_non_finite_total_is_returned(rng):
    """A NaN / inf gradient gives a NaN / inf total, which the caller can see (rnnfast then leaves the
    gradients as they are; torch, with error_if_nonfinite=False, multiplies them by NaN)."""
    layer = rnnfast.GRU(2, 3, dtype=np.float64, seed=0)
    _fill_grads(rng, [layer], np.float64)
    layer.grads["bias_hh_l0"][0] = np.nan
    assert np.isnan(rnnfast.clip_grad_norm(layer, 1.0))
    layer.grads["bias_hh_l0"][0] = np.inf
    with np.errstate(invalid="ignore"):  # the coefficient max_norm / inf = 0 times inf: NaN, as in torch
        assert np.isinf(rnnfast.clip_grad_norm(layer, 1.0))


@pytest.mark.parametrize("norm_type", [0, -1.0])
def test_clip_grad_norm_bad_norm_type(norm_type):
    with pytest.raises(ValueError, match="^norm_type: "):
        rnnfast.clip_grad_norm(rnnfast.GRU(2, 3), 1.0, norm_type=norm_type)


@pytest.mark.parametrize("what", ["grads_dict", "list_of_arrays"])
def test_clip_grad_norm_on_gradient_arrays(rng, what):
    layer = rnnfast.GRU(2, 3, num_layers=2, dtype=np.float64, seed=0)
    _fill_grads(rng, [layer], np.float64)
    total = _total_norm([layer], 2.0)
    arg = layer.grads if what == "grads_dict" else list(layer.grads.values())
    assert rnnfast.clip_grad_norm(arg, total / 2) == pytest.approx(total)
    assert _total_norm([layer], 2.0) == pytest.approx(total / 2, rel=1e-5)


def test_clip_grad_norm_bad_max_norm_names_it():
    with pytest.raises((TypeError, ValueError), match="^max_norm: "):
        rnnfast.clip_grad_norm(rnnfast.GRU(2, 3), "a")


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")], ids=["L2", "L1", "inf"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("where", ["above", "below", "at"])
def test_clip_grad_norm_matches_torch(rng, torch, dtype, norm_type, where):
    layer = rnnfast.LSTM(3, 4, num_layers=2, proj_size=2, dtype=dtype, seed=0)
    _fill_grads(rng, [layer], dtype)
    module = torch.nn.LSTM(3, 4, num_layers=2, proj_size=2)
    module = module.double() if dtype == np.float64 else module
    for name, p in module.named_parameters():
        p.grad = torch.tensor(layer.grads[name].copy())
    total = _total_norm([layer], norm_type)
    max_norm = dict(above=2 * total, below=total / 3, at=total)[where]
    got = rnnfast.clip_grad_norm(layer, max_norm, norm_type=norm_type)
    expected = float(torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm, norm_type=norm_type))
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert got == pytest.approx(expected, rel=rtol)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(layer.grads[name], p.grad.numpy(), rtol=rtol, atol=0, err_msg=name)


# ==========================================================================================================
# 64-bit indexing

def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _big_lstm_rows_match_single_rows(T, B, H):
    """float32 LSTM inference with I = 1 (x @ w_ih is one product: the same bits whatever B) on a (T, B, 1)
    input; rows 0 and B-1 (the largest offsets) equal, bit for bit, the same rows run alone."""
    f32 = np.float32
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, 1), dtype=f32)
    w_ih = rng.uniform(-0.25, 0.25, (4 * H, 1)).astype(f32)
    w_hh = rng.uniform(-0.25, 0.25, (4 * H, H)).astype(f32)
    b = rng.uniform(-0.25, 0.25, 4 * H).astype(f32)
    lengths = np.full(B, T)
    lengths[-2] = T - 3  # a padded row near the end as well
    y, h_n, c_n, _ = ops.lstm_forward(x, None, None, w_ih, w_hh, b, b, lengths=lengths)
    assert np.all(np.isfinite(y[-1])) and np.all(y[-3:, -2] == 0)
    for row in (0, B - 2, B - 1):
        y1, h1, c1, _ = ops.lstm_forward(np.ascontiguousarray(x[:, row:row + 1]), None, None, w_ih, w_hh, b, b,
                                         lengths=lengths[row:row + 1])
        assert np.array_equal(y1[:, 0], y[:, row]), f"row {row}: y differs"
        assert np.array_equal(h1[0], h_n[row]) and np.array_equal(c1[0], c_n[row]), f"row {row}: state differs"


@pytest.mark.skipif(_mem_available() < 8 * 2**30, reason="needs ~3 GiB of free memory (8 GiB available)")
def test_byte_offsets_beyond_2_31(monkeypatch):
    # the input projection in one chunk of all T steps (ops._xw_steps), so that xw is the big array (not
    # fused into the steps, which B = 64 would do; and the single rows are never fused)
    monkeypatch.setattr(ops, "_xw_steps", lambda T, B, GH, itemsize: T)
    monkeypatch.setattr(ops, "_FUSE_X_MIN_ROWS", 1 << 30)
    B, H = 64, 16
    T = 2**29 // (B * 4 * H) + 1  # xw: T*B*4H > 2**29 float32 elements = 2**31 bytes
    assert T * B * 4 * H * 4 > 2**31
    _big_lstm_rows_match_single_rows(T, B, H)


@pytest.mark.skipif(os.environ.get("RNNFAST_TEST_HUGE") != "1", reason="opt-in (RNNFAST_TEST_HUGE=1): ~11 GiB")
def test_element_offsets_beyond_2_31(monkeypatch):
    monkeypatch.setattr(ops, "_xw_steps", lambda T, B, GH, itemsize: T)  # xw: all T steps, > 2**31 elements
    monkeypatch.setattr(ops, "_FUSE_X_MIN_ROWS", 1 << 30)  # xw exists (not fused into the steps)
    if _mem_available() < 14 * 2**30:
        pytest.skip("needs ~11 GiB of free memory (14 GiB available)")
    B, H = 64, 16
    T = 2**31 // (B * 4 * H) + 1  # xw: T*B*4H > 2**31 elements
    assert T * B * 4 * H > 2**31
    _big_lstm_rows_match_single_rows(T, B, H)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
def test_subnormals_flushed_in_kernel_threads_only(dtype, threads):
    """The kernel threads flush subnormals (a state that underflows reads as 0, instead of making every FMA
    that reads it slow), and the caller's floating-point mode is left as it was: after the call the calling
    thread still computes subnormal results."""
    tiny = np.finfo(dtype).tiny  # the smallest normal number
    T, B, H = 3, 2, 128  # B * H * H multiply-adds a step: enough work for a second thread
    x = np.zeros((T, B, 4), dtype)
    h0 = np.full((B, H), tiny / 4, dtype)  # subnormal
    w_ih = np.zeros((H, 4), dtype)
    w_hh = (0.5 * np.eye(H)).astype(dtype)
    rnnfast.set_num_threads(threads)  # (restored by conftest's restore_threads)
    assert ops._threads(B, 1, H, H) == threads
    y, h_n, _ = ops.rnn_forward(x, h0, w_ih, w_hh)
    # unflushed, h_1 = tanh(0.5 * h0) would be a nonzero subnormal
    assert not np.any(y) and not np.any(h_n)
    # the calling thread still has gradual underflow
    assert dtype(tiny) * dtype(0.25) == tiny / 4 and tiny / 4 != 0
    assert np.all(h0 != 0)
