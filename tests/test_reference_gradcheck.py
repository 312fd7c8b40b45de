"""rnnfast.reference checked against itself: float64 central finite differences of its backward for every
input and parameter, for every cell and option; plus the semantics of lengths/reverse and the contract
(dtypes, None arguments, saved, inputs left alone)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rnnfast import reference
from test_ops import CASES, GATES  # one list of cell variants for all the tests
from tolerances import FD_ATOL, FD_EPS, FD_RTOL, assert_close

GRAD_NAMES = dict(rnn=("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"),
                  gru=("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"),
                  lstm=("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_peep"))


def nonzero(rng, shape, scale=1.0, dtype=np.float64):
    """Uniform in +-[0.1, 1] * scale: random and never zero."""
    return (scale * rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)


def make_problem(rng, case, T, B, I, H, P=2, bias=True, dtype=np.float64):
    """(cell, arrays, kw): arrays maps every present input/parameter name to an array, kw the cell option."""
    cell, opts = CASES[case]
    G, H_out = GATES[cell], (P if opts.get("proj") else H)
    a = dict(x=nonzero(rng, (T, B, I)), h0=nonzero(rng, (B, H_out)),
             w_ih=nonzero(rng, (G * H, I), 0.8), w_hh=nonzero(rng, (G * H, H_out), 0.8))
    if bias:
        a.update(b_ih=nonzero(rng, G * H, 0.5), b_hh=nonzero(rng, G * H, 0.5))
    if cell == "lstm":
        a["c0"] = nonzero(rng, (B, H))
    if opts.get("proj"):
        a["w_hr"] = nonzero(rng, (P, H), 0.8)
    if opts.get("peep"):
        a["w_peep"] = nonzero(rng, (3, H), 0.8)
    kw = {k: v for k, v in opts.items() if k in ("nonlinearity", "reset_after")}
    return cell, {k: v.astype(dtype) for k, v in a.items()}, kw


def forward(cell, a, kw, **options):
    """Call reference.<cell>_forward on the arrays `a`; returns (outputs (y, h_n[, c_n]), saved)."""
    args = (a["x"], a["h0"]) + ((a["c0"],) if cell == "lstm" else ()) + (a["w_ih"], a["w_hh"])
    args += (a.get("b_ih"), a.get("b_hh"))
    if cell == "lstm":
        kw = dict(kw, w_hr=a.get("w_hr"), w_peep=a.get("w_peep"))
    out = getattr(reference, f"{cell}_forward")(*args, **kw, **options)
    return out[:-1], out[-1]


def backward(cell, d_outputs, saved, a):
    """Call reference.<cell>_backward; returns name -> gradient, checking the length of the tuple."""
    grads = getattr(reference, f"{cell}_backward")(*d_outputs, saved)
    names = GRAD_NAMES[cell] if "w_peep" in a else GRAD_NAMES[cell][:8]
    assert len(grads) == len(names)
    return dict(zip(names, grads))


def finite_differences(loss, a, name):
    """Central differences of loss(arrays) with respect to every element of a[name]."""
    arr = a[name].copy()
    perturbed = dict(a, **{name: arr})
    grad = np.zeros_like(arr)
    for idx in np.ndindex(arr.shape):
        orig = arr[idx]
        arr[idx] = orig + FD_EPS
        up = loss(perturbed)
        arr[idx] = orig - FD_EPS
        down = loss(perturbed)
        arr[idx] = orig
        grad[idx] = (up - down) / (2 * FD_EPS)
    return grad


# With lengths: a zero length, a full length and one in between. Random data keeps relu preactivations away
# from the kink (|a| < FD_EPS has probability ~1e-6 per preactivation; seeds are fixed per test).
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, (4, 0, 2)], ids=["full", "lengths"])
@pytest.mark.parametrize("case", CASES)
def test_backward_matches_finite_differences(rng, case, lengths, reverse, bias):
    cell, a, kw = make_problem(rng, case, T=4, B=3, I=3, H=4, P=2, bias=bias)
    options = dict(lengths=None if lengths is None else np.array(lengths), reverse=reverse)
    outputs, saved = forward(cell, a, kw, training=True, **options)
    loss_weights = [nonzero(rng, o.shape) for o in outputs]  # L = sum(y*Wy) + sum(h_n*Wh) (+ sum(c_n*Wc))

    def loss(arrays):
        outs, _ = forward(cell, arrays, kw, **options)
        return sum(np.sum(o * w) for o, w in zip(outs, loss_weights))

    grads = backward(cell, loss_weights, saved, a)
    for name in grads:
        if name not in a:
            assert grads[name] is None, f"gradient of absent {name} should be None"
            continue
        assert grads[name].shape == a[name].shape and grads[name].dtype == np.float64, name
        np.testing.assert_allclose(grads[name], finite_differences(loss, a, name), rtol=FD_RTOL, atol=FD_ATOL,
                                   err_msg=f"d loss / d {name}")


def run_rows_separately(cell, a, kw, lengths, reverse, d_outputs):
    """Forward and backward of each batch row alone, on its first lengths[b] steps, without `lengths`."""
    rows = []
    for b, L in enumerate(lengths):
        a_b = {k: (v[:L, b:b + 1] if k == "x" else v[b:b + 1] if k in ("h0", "c0") else v) for k, v in a.items()}
        outs, saved = forward(cell, a_b, kw, reverse=reverse, training=True)
        d_b = [d_outputs[0][:L, b:b + 1]] + [d[b:b + 1] for d in d_outputs[1:]]
        rows.append((outs, backward(cell, d_b, saved, a_b)))
    return rows


@settings(max_examples=40, deadline=None)
@given(data=st.data(), case=st.sampled_from(sorted(CASES)), reverse=st.booleans(),
       T=st.integers(1, 5), B=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_lengths_mean_each_row_runs_alone_on_its_prefix(data, case, reverse, T, B, seed):
    """Row b with lengths[b] = L gives what the row alone on x[:L] gives: y[:L] and h_n (c_n) the same, y[L:] 0,
    h_n = h0 when L = 0; and the gradients: dx, dh0 row by row, parameter gradients summed over rows."""
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    rng = np.random.default_rng(seed)
    cell, a, kw = make_problem(rng, case, T, B, I=3, H=3, P=2)
    outputs, saved = forward(cell, a, kw, lengths=lengths, reverse=reverse, training=True)
    d_outputs = [nonzero(rng, o.shape) for o in outputs]
    grads = backward(cell, d_outputs, saved, a)
    rows = run_rows_separately(cell, a, kw, lengths, reverse, d_outputs)
    for b, (L, (outs_b, grads_b)) in enumerate(zip(lengths, rows)):
        assert_close(outputs[0][:L, b:b + 1], outs_b[0], np.float64, f"y row {b}")
        assert np.all(outputs[0][L:, b] == 0), f"y row {b} after its length"
        for o, o_b in zip(outputs[1:], outs_b[1:]):
            assert_close(o[b:b + 1], o_b, np.float64, f"final state row {b}")
        assert_close(grads["x"][:L, b:b + 1], grads_b["x"], np.float64, f"dx row {b}")
        assert np.all(grads["x"][L:, b] == 0), f"dx row {b} after its length"
        for name in ("h0", "c0"):
            if name in a:
                assert_close(grads[name][b:b + 1], grads_b[name], np.float64, f"d{name} row {b}")
    for name in grads:
        if name not in ("x", "h0", "c0") and name in a:
            assert_close(grads[name], sum(g[name] for _, g in rows), np.float64, f"d{name} summed over rows")


@pytest.mark.parametrize("case", CASES)
def test_reverse_is_forward_on_flipped_time(rng, case):
    cell, a, kw = make_problem(rng, case, T=4, B=2, I=3, H=3)
    rev, _ = forward(cell, a, kw, reverse=True)
    fwd, _ = forward(cell, dict(a, x=a["x"][::-1]), kw)
    assert_close(rev[0], fwd[0][::-1], np.float64, "y")
    for r, f in zip(rev[1:], fwd[1:]):
        assert_close(r, f, np.float64, "final state")


@pytest.mark.parametrize("case", CASES)
def test_contract(rng, case):
    """saved None unless training; None states and output gradients mean zeros; inputs unchanged; outputs and
    gradients never alias inputs, even when nothing is updated (all lengths 0)."""
    cell, a, kw = make_problem(rng, case, T=3, B=2, I=2, H=3)
    copies = {k: v.copy() for k, v in a.items()}
    for lengths in (None, np.array([0, 0])):
        outputs, saved = forward(cell, a, kw, lengths=lengths, reverse=True, training=True)
        d_outputs = [nonzero(rng, o.shape) for o in outputs]
        grads = backward(cell, d_outputs, saved, a)
        inference, none_saved = forward(cell, a, kw, lengths=lengths, reverse=True)
        assert none_saved is None
        for o, o_inf in zip(outputs, inference):
            np.testing.assert_array_equal(o, o_inf)
        for result in list(outputs) + [g for g in grads.values() if g is not None]:
            assert not any(np.shares_memory(result, v) for v in a.values())
            assert not any(np.shares_memory(result, d) for d in d_outputs)
    for k in a:
        np.testing.assert_array_equal(a[k], copies[k], err_msg=f"{k} was modified")

    zero_state = {k: np.zeros_like(a[k]) for k in ("h0", "c0") if k in a}
    states_none = {k: None for k in zero_state}
    out_none, saved_none = forward(cell, dict(a, **states_none), kw, training=True)
    out_zero, saved_zero = forward(cell, dict(a, **zero_state), kw, training=True)
    for o_n, o_z in zip(out_none, out_zero):
        np.testing.assert_array_equal(o_n, o_z)
    g_none = backward(cell, [None] * len(out_none), saved_none, a)
    g_zero = backward(cell, [np.zeros_like(o) for o in out_none], saved_zero, a)
    for name, g in g_none.items():
        assert (g is None) == (g_zero[name] is None)
        if g is not None:
            assert not np.any(g), name
            np.testing.assert_array_equal(g, g_zero[name])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_backward_of_saved_none_raises(cell):
    args = (None,) * (3 if cell == "lstm" else 2)
    with pytest.raises(ValueError, match="saved is None: call the forward with training=True"):
        getattr(reference, f"{cell}_backward")(*args, None)


def test_backward_rejects_saved_of_another_cell(rng):
    cell, a, kw = make_problem(rng, "gru", T=2, B=1, I=2, H=2)
    _, saved = forward(cell, a, kw, training=True)
    with pytest.raises(ValueError, match="gru"):
        reference.rnn_backward(None, None, saved)


@pytest.mark.parametrize("case", CASES)
def test_float32_stays_float32_and_matches_float64(rng, case):
    cell, a64, kw = make_problem(rng, case, T=4, B=3, I=3, H=4)
    a32 = {k: v.astype(np.float32) for k, v in a64.items()}
    lengths = np.array([4, 1, 3])
    out64, saved64 = forward(cell, a64, kw, lengths=lengths, training=True)
    out32, saved32 = forward(cell, a32, kw, lengths=lengths, training=True)
    d64 = [nonzero(rng, o.shape) for o in out64]
    g64 = backward(cell, d64, saved64, a64)
    g32 = backward(cell, [d.astype(np.float32) for d in d64], saved32, a32)
    for o32, o64 in zip(out32, out64):
        assert o32.dtype == np.float32
        assert_close(o32, o64, np.float32, "outputs")
    for name, g in g32.items():
        if g is not None:
            assert g.dtype == np.float32, name
        assert_close(g, g64[name], np.float32, f"d{name}")


def test_unknown_nonlinearity_raises(rng):
    _, a, _ = make_problem(rng, "rnn_tanh", T=2, B=1, I=2, H=2)
    with pytest.raises(ValueError, match="nonlinearity"):
        reference.rnn_forward(a["x"], a["h0"], a["w_ih"], a["w_hh"], nonlinearity="sigmoid")
