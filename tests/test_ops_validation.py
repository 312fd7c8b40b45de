"""rnnfast.ops rejects bad input with a TypeError or ValueError whose message names the argument and holds the
expected and the actual shape or dtype; nothing crashes, whatever is passed."""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from rnnfast import ops, reference
from test_ops import CASES, backward, d_outputs_for, forward, forward_args, make_problem

T, B, I, H, P = 4, 3, 5, 6, 2


def problem(case="lstm", dtype=np.float64):
    """A valid problem of `case`: (cell, a, kw); a["lengths"] is valid too."""
    cell, a, kw = make_problem(np.random.default_rng(0), case, T, B, I, H, P, dtype=dtype)
    return cell, a, kw


def call_forward(case, training=False, **overrides):
    """<cell>_forward of a valid `case` problem with some arguments replaced (arrays or options)."""
    cell, a, kw = problem(case)
    options = dict(kw, training=training)
    for name, v in overrides.items():
        if name in a:
            a[name] = v
        else:
            options[name] = v
    args, arrays_kw = forward_args(cell, a)
    return getattr(ops, f"{cell}_forward")(*args, **arrays_kw, **options)


def trained(case, dtype=np.float64):
    """(cell, outputs, d_outputs, saved) of a training forward of `case`."""
    cell, a, kw = problem(case, dtype)
    out, saved = forward(ops, cell, a, kw, training=True)
    return cell, out, d_outputs_for(np.random.default_rng(1), out), saved


def raises(exc, arg, *pieces):
    """pytest.raises(exc) for a message that starts with `arg:` and contains every piece (literal text)."""
    return pytest.raises(exc, match="^" + re.escape(arg) + ":" + "".join(f"(?s:.*){re.escape(str(p))}" for p in pieces))


def shapes(case):
    """The correct shape of each array argument of `case` (forward and backward)."""
    cell, opts = CASES[case]
    G = dict(rnn=1, gru=3, lstm=4)[cell]
    K = P if opts.get("proj") else H
    s = dict(x=(T, B, I), h0=(B, K), w_ih=(G * H, I), w_hh=(G * H, K), b_ih=(G * H,), b_hh=(G * H,),
             dy=(T, B, K), dh_n=(B, K))
    if cell == "lstm":
        s.update(c0=(B, H), dc_n=(B, H))
        if opts.get("proj"):
            s["w_hr"] = (P, H)
        if opts.get("peep"):
            s["w_peep"] = (3, H)
    return s


def bad_shapes(name, shape):
    """Wrong shapes of the same ndim that cannot be blamed on another argument (H and P are inferred from
    w_hh's columns and w_hr: those stay right; w_hr has its own tests)."""
    if name == "w_hh":  # columns fix H (or P); only the rows can be wrong here
        return [(shape[0] + 1, shape[1]), (shape[0] - 1, shape[1])]
    if name in ("x", "w_hr"):  # x fixes T, B, I; w_hr fixes P and H
        return []
    transposed = tuple(reversed(shape)) + (1,) * (len(shape) == 1)
    return [tuple(n + 1 for n in shape), shape[:-1] + (shape[-1] + 3,), transposed]


FORWARD_SHAPE_CASES = [(case, name, bad) for case in CASES for name, shape in shapes(case).items()
                       if name not in ("dy", "dh_n", "dc_n") for bad in bad_shapes(name, shape)
                       if bad != shape]
BACKWARD_SHAPE_CASES = [(case, name, bad) for case in ("rnn_tanh", "lstm_proj", "lstm", "gru")
                        for name, shape in shapes(case).items() if name in ("dy", "dh_n", "dc_n")
                        for bad in bad_shapes(name, shape)]


# ------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("x_shape", [(T, B), (T, B, I, 1), (), (T * B * I,)])
def test_x_of_wrong_ndim(case, x_shape):
    with raises(ValueError, "x", "3 dimensions", "(T, B, I)", x_shape):
        call_forward(case, x=np.random.default_rng(0).standard_normal(x_shape))


@pytest.mark.parametrize("case, name, bad", FORWARD_SHAPE_CASES,
                         ids=[f"{c}-{n}-{b}" for c, n, b in FORWARD_SHAPE_CASES])
def test_forward_argument_of_wrong_shape(case, name, bad):
    with raises(ValueError, name, "expected shape", shapes(case)[name], "got", bad):
        call_forward(case, **{name: np.random.default_rng(0).uniform(-1, 1, bad)})


@pytest.mark.parametrize("case, name, bad", BACKWARD_SHAPE_CASES,
                         ids=[f"{c}-{n}-{b}" for c, n, b in BACKWARD_SHAPE_CASES])
def test_backward_argument_of_wrong_shape(case, name, bad):
    cell, out, d, saved = trained(case)
    d[("dy", "dh_n", "dc_n").index(name)] = np.random.default_rng(0).uniform(-1, 1, bad)
    with raises(ValueError, name, "expected shape", shapes(case)[name], "got", bad):
        getattr(ops, f"{cell}_backward")(*d, saved)


@pytest.mark.parametrize("case, name, bad", [
    ("rnn_tanh", "w_hh", (H * H,)), ("lstm", "w_hh", (4 * H, H, 1)), ("gru", "w_hh", ()),
    ("lstm_proj", "w_hr", (P * H,)), ("lstm_proj", "w_hr", (P, H, 1)),
])
def test_weight_of_wrong_ndim(case, name, bad):
    with raises(ValueError, name, "2 dimensions", "got shape", bad):
        call_forward(case, **{name: np.ones(bad)})


@pytest.mark.parametrize("bad", [(H, H), (H + 1, H), (0, H)])
def test_projection_size_must_be_below_hidden_size(bad):
    with raises(ValueError, "w_hr", "0 < P < H", bad):
        call_forward("lstm_proj", w_hr=np.ones(bad))


@pytest.mark.parametrize("w_hh_shape", [(0, 0), (6, 0)])
def test_hidden_size_zero(w_hh_shape):
    with raises(ValueError, "w_hh", "hidden size >= 1", w_hh_shape):
        ops.rnn_forward(np.ones((T, B, I)), None, np.ones((w_hh_shape[0], I)), np.ones(w_hh_shape))


@pytest.mark.parametrize("bad", [(P, H + 1), (P + 1, H), (1, H - 1)])
def test_projection_of_wrong_shape_names_w_hr(bad):
    with raises(ValueError, "w_hr", (P, H), bad):
        call_forward("lstm_proj", w_hr=np.ones(bad))


# Weights of another cell: the gate count is wrong, the argument is named with both shapes.
@pytest.mark.parametrize("case, other, names", [
    ("lstm", "gru", ("w_ih",)), ("lstm", "gru", ("w_ih", "w_hh")), ("rnn_tanh", "lstm", ("w_ih", "w_hh")),
    ("gru", "rnn_tanh", ("w_ih", "w_hh")), ("gru", "lstm", ("w_ih",)), ("rnn_relu", "gru", ("w_hh", "b_ih")),
])
def test_weights_of_another_cell(case, other, names):
    _, a_other, _ = problem(other)
    first = "w_hh" if "w_hh" in names else names[0]  # w_hh is checked first
    with raises(ValueError, first, shapes(case)[first], a_other[first].shape):
        call_forward(case, **{n: a_other[n] for n in names})


# ------------------------------------------------------------------------------------------- dtypes

BAD_DTYPES = [np.int64, np.int32, np.complex128, object, np.float16, np.bool_, np.longdouble, "U3"]


def _as(dtype, shape):
    v = np.random.default_rng(0).uniform(-1, 1, shape)
    return v.astype(dtype) if dtype != "U3" else np.full(shape, "abc")


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["x", "w_ih", "w_hh", "h0", "b_hh", "c0", "w_hr", "w_peep"])
def test_forward_argument_of_bad_dtype(name, dtype):
    case = "lstm_proj_peep"
    with raises(TypeError, name, "float32 or float64", "got", np.dtype(dtype)):
        call_forward(case, **{name: _as(dtype, shapes(case)[name])})


@pytest.mark.parametrize("dtype", [np.int64, np.complex64, object, np.float16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["dy", "dh_n", "dc_n"])
def test_backward_argument_of_bad_dtype(name, dtype):
    cell, out, d, saved = trained("lstm")
    d[("dy", "dh_n", "dc_n").index(name)] = _as(dtype, shapes("lstm")[name])
    with raises(TypeError, name, "float32 or float64", "got", np.dtype(dtype)):
        ops.lstm_backward(*d, saved)


# Mixed float32 / float64: every floating argument must have x's dtype.
@pytest.mark.parametrize("x_dtype", [np.float32, np.float64], ids=["x_f32", "x_f64"])
@pytest.mark.parametrize("name", ["h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_peep"])
def test_mixed_dtypes_forward(name, x_dtype):
    cell, a, kw = problem("lstm_proj_peep", x_dtype)
    other = np.float64 if x_dtype == np.float32 else np.float32
    a[name] = a[name].astype(other)
    args, arrays_kw = forward_args(cell, a)
    with raises(TypeError, name, "expected dtype", np.dtype(x_dtype), "got", np.dtype(other)):
        ops.lstm_forward(*args, **arrays_kw)


@pytest.mark.parametrize("saved_dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["dy", "dh_n", "dc_n"])
def test_mixed_dtypes_backward(name, saved_dtype):
    cell, out, d, saved = trained("lstm_peep", saved_dtype)
    other = np.float64 if saved_dtype == np.float32 else np.float32
    i = ("dy", "dh_n", "dc_n").index(name)
    d[i] = d[i].astype(other)
    with raises(TypeError, name, "expected dtype", np.dtype(saved_dtype), "got", np.dtype(other)):
        ops.lstm_backward(*d, saved)


def test_python_float_list_with_float32_x_is_a_dtype_error():
    """A list converts to float64: with float32 x that is a mixed-dtype call."""
    cell, a, kw = problem("gru", np.float32)
    with raises(TypeError, "h0", "float32", "float64"):
        ops.gru_forward(a["x"], a["h0"].tolist(), a["w_ih"], a["w_hh"])


@pytest.mark.parametrize("name", ["x", "w_ih", "w_hh"])
def test_required_argument_none(name):
    with raises(TypeError, name, "got None"):
        call_forward("gru", **{name: None})


@pytest.mark.parametrize("value", [[[[1.0]], [[1.0, 2.0]]], "abc", {"a": 1}, object()],
                         ids=["ragged", "str", "dict", "object"])
def test_x_not_an_array_of_floats(value):
    with raises(TypeError, "x", "float32 or float64"):
        call_forward("rnn_tanh", x=value)


def test_non_native_byte_order():
    """Big-endian float64 is float64 data: either accepted with the same numbers, or refused by a TypeError
    naming x and the dtype (the current behaviour; see the report)."""
    cell, a, kw = problem("lstm")
    expected, _ = forward(ops, cell, a, kw)
    try:
        got, _ = forward(ops, cell, dict(a, x=a["x"].astype(">f8")), kw)
    except TypeError as e:
        assert str(e).startswith("x:") and ">f8" in str(e)
    else:
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)


# ------------------------------------------------------------------------------------------- lengths

@pytest.mark.parametrize("case", ["rnn_relu", "lstm_proj", "gru"])
@pytest.mark.parametrize("lengths, exc, pieces", [
    ([1, -1, 2], ValueError, ("[0, 4]", "-1")),
    ([1, 5, 2], ValueError, ("[0, 4]", "5")),
    ([1, 2**40, 2], ValueError, ("[0, 4]", str(2**40))),
    (np.array([1, 2**63 + 5, 2], np.uint64), ValueError, ("[0, 4]", str(2**63 + 5))),
    ([1, 1.5, 2], TypeError, ("integers",)),
    ([1, np.nan, 2], TypeError, ("integers",)),
    ([1, np.inf, 2], TypeError, ("integers",)),
    ([1, 2], ValueError, ("(3,)", "(2,)")),
    ([1, 2, 3, 4], ValueError, ("(3,)", "(4,)")),
    ([[1, 2, 3]], ValueError, ("(3,)", "(1, 3)")),
    (3, ValueError, ("(3,)", "()")),
    ([True, False, True], TypeError, ("integer", "bool")),
    (["1", "2", "3"], TypeError, ("integer", "<U1")),
    (np.array([1, 2, 3], object), TypeError, ("integer", "object")),
    (np.array([1, 2, 3], complex), TypeError, ("integer", "complex128")),
], ids=["negative", "above_T", "huge", "uint64_huge", "fractional", "nan", "inf", "too_few", "too_many", "2d",
        "scalar", "bool", "str", "object", "complex"])
def test_bad_lengths(case, lengths, exc, pieces):
    with raises(exc, "lengths", *pieces):
        call_forward(case, lengths=lengths)


def test_integral_float_lengths_are_accepted():
    expected = call_forward("gru", lengths=np.array([4, 0, 2]))
    got = call_forward("gru", lengths=np.array([4.0, 0.0, 2.0]))
    for g, e in zip(got[:2], expected[:2]):
        np.testing.assert_array_equal(g, e)


def test_lengths_with_T_zero_must_be_zero():
    cell, a, kw = make_problem(np.random.default_rng(0), "rnn_tanh", 0, 2, 3, 4)
    with raises(ValueError, "lengths", "[0, 0]"):
        forward(ops, cell, a, kw, lengths=np.array([0, 1]))


# ------------------------------------------------------------------------------------------- options

@pytest.mark.parametrize("value", ["sigmoid", "TANH", "", None, 3, b"tanh", ["tanh"]])
def test_unknown_nonlinearity(value):
    with raises(ValueError, "nonlinearity", "'tanh' or 'relu'", repr(value)):
        call_forward("rnn_tanh", nonlinearity=value)


FLAG_CASES = [(case, flag) for case in ("rnn_tanh", "lstm", "gru") for flag in ("reverse", "training")]
FLAG_CASES += [("gru_reset_before", "reset_after")]


@pytest.mark.parametrize("case, flag", FLAG_CASES)
@pytest.mark.parametrize("value", [1, 0, None, "yes", 1.0, np.array([True])],
                         ids=["1", "0", "None", "str", "1.0", "array"])
def test_non_bool_flags(case, flag, value):
    with raises(TypeError, flag, "expected a bool", "got", type(value).__name__):
        call_forward(case, **{flag: value})


@pytest.mark.parametrize("module", [ops, reference], ids=["ops", "reference"])
@pytest.mark.parametrize("case", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("value", [1, 0, None, "yes", 1.0, np.array([True])],
                         ids=["1", "0", "None", "str", "1.0", "array"])
def test_non_bool_state_grads(case, value, module):
    cell, a, kw = problem(case)
    out, saved = forward(module, cell, a, kw, training=True)
    d = d_outputs_for(np.random.default_rng(1), out)
    with raises(TypeError, "state_grads", "expected a bool", "got", type(value).__name__):
        getattr(module, f"{cell}_backward")(*d, saved, state_grads=value)


@pytest.mark.parametrize("case", ["rnn_tanh", "lstm"])
def test_reset_after_is_gru_only(case):
    with pytest.raises(TypeError, match="unexpected keyword argument 'reset_after'"):
        call_forward(case, reset_after=True)


@pytest.mark.parametrize("flag", ["reverse", "training", "reset_after"])
def test_numpy_bools_are_bools(flag):
    expected = call_forward("gru", **{flag: True})
    got = call_forward("gru", **{flag: np.bool_(True)})
    for g, e in zip(got[:2], expected[:2]):
        np.testing.assert_array_equal(g, e)


# ------------------------------------------------------------------------------------------- saved

@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_backward_of_saved_none(cell):
    case = dict(rnn="rnn_tanh", lstm="lstm", gru="gru")[cell]
    cell, out, d, _ = trained(case)
    with raises(ValueError, "saved is None", "training=True"):
        getattr(ops, f"{cell}_backward")(*d, None)
    assert call_forward(case)[-1] is None  # what an inference forward returns as saved


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("saved", [object(), {}, (), 3, "saved"], ids=["object", "dict", "tuple", "int", "str"])
def test_backward_of_a_random_object(cell, saved):
    args = (None,) * (3 if cell == "lstm" else 2)
    with raises(TypeError, "saved", f"{cell}_forward", type(saved).__name__):
        getattr(ops, f"{cell}_backward")(*args, saved)


@pytest.mark.parametrize("case, other", [("rnn_tanh", "gru"), ("rnn_relu", "lstm"), ("gru", "rnn"),
                                         ("gru_reset_before", "lstm"), ("lstm", "rnn"), ("lstm_proj", "gru")])
def test_backward_of_another_cell(case, other):
    cell, out, d, saved = trained(case)
    args = (None,) * (3 if other == "lstm" else 2)
    with raises(ValueError, "saved", other, cell):
        getattr(ops, f"{other}_backward")(*args, saved)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_backward_of_a_reference_saved(cell):
    case = dict(rnn="rnn_tanh", lstm="lstm", gru="gru")[cell]
    cell, a, kw = problem(case)
    out, saved = forward(reference, cell, a, kw, training=True)
    with raises(TypeError, "saved", f"{cell}_forward", "_Saved"):
        backward(ops, cell, [None] * len(out), saved, a)


# ------------------------------------------------------------------------------------------- fuzzing

_DIMS = st.sampled_from([0, 1, 2, 3, 5])


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), case=st.sampled_from(sorted(CASES)), Tx=st.integers(0, 3), Bx=st.integers(0, 3),
       Ix=st.integers(0, 3), Hx=st.integers(1, 5), Px=st.integers(1, 4))
def test_anything_either_works_or_raises_type_or_value_error(data, case, Tx, Bx, Ix, Hx, Px):
    """Arguments of random, often inconsistent, shapes and dtypes: ops either raises TypeError / ValueError
    naming an argument, or returns what the reference returns on the same arrays. Never a crash."""
    cell, a, kw = make_problem(np.random.default_rng(0), case, Tx, Bx, Ix, Hx, min(Px, max(1, Hx - 1)))
    for name in list(a):
        if a[name] is None or not data.draw(st.integers(0, 5), label=f"mutate {name}") == 0:
            continue
        shape = data.draw(st.lists(_DIMS, min_size=0, max_size=4).map(tuple), label=f"{name} shape")
        dtype = data.draw(st.sampled_from([np.float64, np.float64, np.float32, np.int64]), label=f"{name} dtype")
        a[name] = np.random.default_rng(1).uniform(-1, 1, shape).astype(dtype)
    lengths = data.draw(st.none() | st.lists(st.integers(-1, 4), min_size=0, max_size=4).map(np.array),
                        label="lengths")
    reverse = data.draw(st.booleans(), label="reverse")
    try:
        out, saved = forward(ops, cell, a, kw, lengths=lengths, reverse=reverse, training=True)
    except (TypeError, ValueError) as e:
        names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_peep", "lengths")
        assert str(e).split(":")[0] in names, f"unhelpful message: {e}"
        event(f"{type(e).__name__} {str(e).split(':')[0]}")
        return
    event("accepted")
    ref, ref_saved = forward(reference, cell, a, kw, lengths=lengths, reverse=reverse, training=True)
    for o, r in zip(out, ref):
        assert o.shape == r.shape
        np.testing.assert_allclose(o, r, rtol=1e-10, atol=1e-12)
    d = d_outputs_for(np.random.default_rng(2), out)
    for g, r in zip(backward(ops, cell, d, saved, a), backward(reference, cell, d, ref_saved, a)):
        assert (g is None) == (r is None)
        if g is not None:
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


def test_binding_refuses_arrays_shorter_than_the_loops_touch(monkeypatch):
    """The last line of defence: even an array that rnnfast.ops itself got wrong never reaches the C loops."""
    from rnnfast import _kernels
    real_run = _kernels.run

    def short_y(cell, backward, dtype, a, *args, **kw):
        return real_run(cell, backward, dtype, dict(a, y=np.empty(a["y"].size - 1, a["y"].dtype)), *args, **kw)

    monkeypatch.setattr(_kernels, "run", short_y)
    with pytest.raises(ValueError, match="y holds 29 elements, the loop touches 30"):
        ops.rnn_forward(np.ones((3, 2, 4)), None, np.ones((5, 4)), np.ones((5, 5)))
