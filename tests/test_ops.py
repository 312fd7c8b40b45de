"""rnnfast.ops (the compiled kernels) against rnnfast.reference (the numpy oracle), forward and backward, every
returned array, every cell and option, float64 and float32 (against the reference run in float64 on the same
data); plus the empty cases (T = 0, B = 0, all lengths 0).

The helpers at the top (CASES, make_problem, forward, backward, ...) are shared with test_ops_invariance.py
and test_ops_validation.py (`from test_ops import ...`: tests/ is on sys.path).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import rnnfast
from rnnfast import ops, reference
from tolerances import assert_close

# name -> (cell, options). proj / peep are test options of the LSTM (w_hr / w_peep present).
CASES = {
    "rnn_tanh": ("rnn", dict(nonlinearity="tanh")),
    "rnn_relu": ("rnn", dict(nonlinearity="relu")),
    "lstm": ("lstm", {}),
    "lstm_proj": ("lstm", dict(proj=True)),
    "lstm_peep": ("lstm", dict(peep=True)),
    "lstm_proj_peep": ("lstm", dict(proj=True, peep=True)),
    "gru": ("gru", dict(reset_after=True)),
    "gru_reset_before": ("gru", dict(reset_after=False)),
}
GATES = dict(rnn=1, gru=3, lstm=4)
OUT_NAMES = dict(rnn=("y", "h_n"), gru=("y", "h_n"), lstm=("y", "h_n", "c_n"))
GRAD_NAMES = dict(rnn=("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"),
                  gru=("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"),
                  lstm=("dx", "dh0", "dc0", "dw_ih", "dw_hh", "db_ih", "db_hh", "dw_hr", "dw_peep"))
# Which input each gradient belongs to (its shape and dtype must be that input's).
GRAD_OF = dict(dx="x", dh0="h0", dc0="c0", dw_ih="w_ih", dw_hh="w_hh", db_ih="b_ih", db_hh="b_hh",
               dw_hr="w_hr", dw_peep="w_peep")
BIAS = dict(both=("b_ih", "b_hh"), none=(), ih=("b_ih",), hh=("b_hh",))
FLOATS = [np.float64, np.float32]


def make_problem(rng, case, T, B, I, H, P=1, *, bias="both", states=True, dtype=np.float64):
    """(cell, a, kw): a maps every argument name of the cell's forward to an array or None, kw holds the cell
    option (nonlinearity / reset_after). Data as torch initialises a layer: weights and biases
    U(-1/sqrt(H), 1/sqrt(H)); x ~ N(0, 1), h0 and c0 ~ U(-1, 1): random, never zero, and small enough that
    float32 stays within TOL[float32] of float64. A projection needs 0 < P < H: with H = 1 it gets H = 2."""
    cell, opts = CASES[case]
    proj = bool(opts.get("proj"))
    if proj and H < 2:
        H = 2
    G, K = GATES[cell], (P if proj else H)
    s = 1 / np.sqrt(H)
    u = lambda *shape: rng.uniform(-s, s, shape)  # noqa: E731
    a = dict(x=rng.standard_normal((T, B, I)), h0=rng.uniform(-1, 1, (B, K)) if states else None,
             w_ih=u(G * H, I), w_hh=u(G * H, K), b_ih=None, b_hh=None)
    for name in BIAS[bias]:
        a[name] = u(G * H)
    if cell == "lstm":
        a["c0"] = rng.uniform(-1, 1, (B, H)) if states else None
        a["w_hr"] = u(P, H) if proj else None
        a["w_peep"] = u(3, H) if opts.get("peep") else None
    kw = {k: v for k, v in opts.items() if k in ("nonlinearity", "reset_after")}
    return cell, {k: None if v is None else v.astype(dtype) for k, v in a.items()}, kw


def forward_args(cell, a):
    """Positional arguments and the LSTM's keyword arrays of <cell>_forward, taken from a."""
    args = (a["x"], a["h0"]) + ((a["c0"],) if cell == "lstm" else ()) + (a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"])
    kw = dict(w_hr=a["w_hr"], w_peep=a["w_peep"]) if cell == "lstm" else {}
    return args, kw


def forward(module, cell, a, kw, **options):
    """module.<cell>_forward on the arrays a; returns (outputs (y, h_n[, c_n]), saved)."""
    args, arrays_kw = forward_args(cell, a)
    out = getattr(module, f"{cell}_forward")(*args, **arrays_kw, **kw, **options)
    assert len(out) == len(OUT_NAMES[cell]) + 1
    return out[:-1], out[-1]


def backward(module, cell, d_outputs, saved, a):
    """module.<cell>_backward; returns the tuple of gradients, its length checked: an LSTM returns dw_peep
    (a 9th array) only when the forward had w_peep."""
    grads = getattr(module, f"{cell}_backward")(*d_outputs, saved)
    n = len(GRAD_NAMES[cell]) - (cell == "lstm" and a["w_peep"] is None)
    assert len(grads) == n, f"{module.__name__}.{cell}_backward returned {len(grads)} arrays, expected {n}"
    return grads


def random_lengths(rng, T, B):
    """Random lengths in [0, T] that include 0 and T when B >= 2 (T alone when B = 1)."""
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    if B >= 2:
        lengths[-1] = 0
    return rng.permutation(lengths)


def d_outputs_for(rng, outputs, which="all"):
    """Gradients of the outputs: 'all' random, 'none' all None, 'dy' dy only, 'state' dh_n (dc_n) only."""
    ds = [rng.standard_normal(o.shape).astype(o.dtype) for o in outputs]
    if which == "none":
        return [None] * len(ds)
    if which == "dy":
        return [ds[0]] + [None] * (len(ds) - 1)
    if which == "state":
        return [None] + ds[1:]
    assert which == "all"
    return ds


def as64(v):
    return None if v is None else np.asarray(v, np.float64)


def check_against_reference(rng, case, dtype, T, B, I, H, P=1, *, bias="both", states=True, lengths=None,
                            reverse=False, grads="all"):
    """ops in `dtype` vs the reference in float64 on the same (dtype-rounded) data: every output and gradient,
    within TOL[dtype]; dtypes, shapes and None-ness of every result."""
    cell, a, kw = make_problem(rng, case, T, B, I, H, P, bias=bias, states=states, dtype=dtype)
    if isinstance(lengths, str):
        lengths = random_lengths(rng, T, B)
    options = dict(lengths=lengths, reverse=reverse)
    out, saved = forward(ops, cell, a, kw, training=True, **options)
    ref_out, ref_saved = forward(reference, cell, {k: as64(v) for k, v in a.items()}, kw, training=True, **options)
    for name, o, r in zip(OUT_NAMES[cell], out, ref_out):
        assert o.dtype == dtype, f"{name} dtype"
        assert_close(o, r, dtype, f"{case} {name}")
    d = d_outputs_for(rng, out, grads)
    g = backward(ops, cell, d, saved, a)
    ref_g = backward(reference, cell, [as64(v) for v in d], ref_saved, a)
    assert len(g) == len(ref_g)
    for name, gi, ri in zip(GRAD_NAMES[cell], g, ref_g):
        src = a[GRAD_OF[name]]
        if src is None and name not in ("dh0", "dc0"):
            assert gi is None, f"{case}: {name} of an absent argument should be None, got {type(gi)}"
            continue
        assert gi.dtype == dtype, f"{name} dtype"
        assert_close(gi, ri, dtype, f"{case} {name}")
    return out, g


@pytest.fixture(autouse=True)
def threads(request):
    """1 thread unless a test asks for more (parametrize "threads" indirectly); restored afterwards. One
    thread is the fast path on a busy machine; test_ops_invariance.py shows that the thread count changes no
    bit, and the grid below runs with 2 threads so that both split modes meet the reference too."""
    n = rnnfast.get_num_threads()
    rnnfast.set_num_threads(getattr(request, "param", 1))
    yield
    rnnfast.set_num_threads(n)


# --------------------------------------------------------------------------------------------- the grid

# (T, B, I, H, P, options). Size-1 dimensions, odd sizes (not multiples of 8 or 16 lanes), H = 16 and 32
# exactly, P = 1 and P = H - 1. With 2 threads the kernels split batch rows when B >= 32, else hidden units
# (panel groups of up to 4 x 16 floats / 4 x 8 doubles): H >= 65 gives >= 2 groups for every cell and phase
# in both dtypes, so both threads work (H = 48 does so for all but the float32 RNN and backward panels).
# The options rotate over the rows so that each meets several sizes; test_options does the full product.
GRID = [
    (1, 1, 1, 1, 1, dict(bias="both", lengths=None, reverse=False, grads="all")),
    (1, 3, 5, 3, 2, dict(bias="none", states=False, lengths="random", reverse=True, grads="all")),
    (4, 1, 1, 17, 16, dict(bias="ih", lengths="random", reverse=False, grads="dy")),
    (3, 5, 5, 16, 1, dict(bias="hh", lengths=None, reverse=True, grads="state")),
    (5, 2, 3, 32, 31, dict(bias="both", states=False, lengths="random", reverse=False, grads="all")),
    (6, 7, 5, 33, 1, dict(bias="both", lengths="random", reverse=True, grads="all")),
    (3, 1, 4, 80, 79, dict(bias="both", lengths=None, reverse=True, grads="all")),
    (3, 5, 2, 48, 47, dict(bias="ih", states=False, lengths="random", reverse=False, grads="all")),
    (4, 5, 6, 72, 5, dict(bias="hh", lengths="random", reverse=False, grads="all")),
    (3, 40, 5, 50, 49, dict(bias="both", lengths="random", reverse=True, grads="all")),
    (2, 40, 1, 72, 1, dict(bias="none", states=False, lengths=None, reverse=False, grads="dy")),
    (7, 33, 3, 9, 4, dict(bias="ih", lengths="random", reverse=False, grads="state")),
]


def _grid_id(row):
    T, B, I, H, P, o = row
    return f"T{T}B{B}I{I}H{H}P{P}-" + "-".join(f"{k}={v}" for k, v in o.items())


@pytest.mark.parametrize("threads", [2], indirect=True, ids=["2threads"])
@pytest.mark.parametrize("row", GRID, ids=[_grid_id(r) for r in GRID])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_on_grid(rng, case, dtype, row, threads):
    T, B, I, H, P, options = row
    check_against_reference(rng, case, dtype, T, B, I, H, P, **options)


# Batch 1 without lengths (the row kernel, the projection in the barrier's shadow, LSTM's and GRU's epilogue
# over several panel groups at once), forward and backward against the reference, on 1 and 2 threads.
@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["1thread", "2threads"])
@pytest.mark.parametrize("H", [40, 72, 136])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_batch1_matches_reference(rng, case, dtype, H, threads):
    check_against_reference(rng, case, dtype, 6, 1, 9, H, H - 1, bias="both", lengths=None, reverse=False)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("lengths", [None, "random"], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", sorted(BIAS))
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_options(rng, case, dtype, bias, lengths, reverse):
    """Every combination of bias, lengths and direction on one small odd shape."""
    check_against_reference(rng, case, dtype, T=5, B=6, I=5, H=19, P=7, bias=bias, lengths=lengths,
                            reverse=reverse)


@pytest.mark.parametrize("states", [True, False], ids=["h0", "h0None"])
@pytest.mark.parametrize("grads", ["all", "none", "dy", "state"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_none_states_and_output_gradients(rng, case, dtype, grads, states):
    """h0 / c0 None and dy / dh_n / dc_n None (zeros), alone and together, with lengths and reverse."""
    check_against_reference(rng, case, dtype, T=4, B=5, I=3, H=11, P=4, states=states, grads=grads,
                            lengths="random", reverse=True)


@pytest.mark.parametrize("threads", [1, 2], indirect=True, ids=["1thread", "2threads"])
@pytest.mark.parametrize("B", [3, 40], ids=["hidden_split", "batch_split"])
@pytest.mark.parametrize("lengths", [None, "random"], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_backward_without_state_grads(rng, case, dtype, lengths, B, threads):
    """state_grads=False: dh0 (and dc0) are None, and every other gradient has the bits it has with
    state_grads=True (the kernel only leaves out the last step, which gives dh0); the reference agrees."""
    cell, a, kw = make_problem(rng, case, 6, B, 5, 19, 7, dtype=dtype)
    options = dict(lengths=random_lengths(rng, 6, B) if lengths else None, reverse=lengths is not None)
    states = ("dh0", "dc0") if cell == "lstm" else ("dh0",)
    for module in (ops, reference):
        out, saved = forward(module, cell, a, kw, training=True, **options)
        d = d_outputs_for(rng, out)
        g_all = backward(module, cell, d, saved, a)
        out, saved = forward(module, cell, a, kw, training=True, **options)
        g = getattr(module, f"{cell}_backward")(*d, saved, state_grads=False)
        assert len(g) == len(g_all)
        for name, gi, ei in zip(GRAD_NAMES[cell], g, g_all):
            if name in states:
                assert gi is None and ei is not None, f"{module.__name__} {case} {name}"
            elif ei is None:
                assert gi is None, f"{module.__name__} {case} {name}"
            else:
                np.testing.assert_array_equal(gi, ei, err_msg=f"{module.__name__} {case} {name}")


@pytest.mark.parametrize("case", CASES)
def test_float32_large_values_stay_close(rng, case):
    """Saturating activations (x ~ 4 N(0, 1)): float32 still tracks float64."""
    cell, a, kw = make_problem(rng, case, 6, 5, 7, 21, 5, dtype=np.float64)
    a["x"] = 4 * a["x"]
    a32 = {k: None if v is None else v.astype(np.float32) for k, v in a.items()}
    out, saved = forward(ops, cell, a32, kw, training=True)
    ref, ref_saved = forward(reference, cell, {k: as64(v) for k, v in a32.items()}, kw, training=True)
    for name, o, r in zip(OUT_NAMES[cell], out, ref):
        assert_close(o, r, np.float32, name)
    d = d_outputs_for(rng, out)
    for name, gi, ri in zip(GRAD_NAMES[cell], backward(ops, cell, d, saved, a32),
                            backward(reference, cell, [as64(v) for v in d], ref_saved, a32)):
        assert_close(gi, ri, np.float32, name)


# ------------------------------------------------------------------------------------ property-based

@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), case=st.sampled_from(sorted(CASES)), T=st.integers(0, 6), B=st.integers(0, 9),
       I=st.integers(1, 9), H=st.integers(1, 40), bias=st.sampled_from(sorted(BIAS)), states=st.booleans(),
       reverse=st.booleans(), grads=st.sampled_from(["all", "none", "dy", "state"]),
       n_threads=st.sampled_from([1, 1, 2, 3]), seed=st.integers(0, 2**32 - 1))
def test_matches_reference_hypothesis(data, case, T, B, I, H, bias, states, reverse, grads, n_threads, seed):
    P = data.draw(st.integers(1, max(1, H - 1)), label="P")
    lengths = data.draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B).map(np.array),
                        label="lengths")
    rnnfast.set_num_threads(n_threads)  # restored by the `threads` fixture
    check_against_reference(np.random.default_rng(seed), case, np.float64, T, B, I, H, P, bias=bias,
                            states=states, lengths=lengths, reverse=reverse, grads=grads)


# ------------------------------------------------------------------------------------ the contract

@pytest.mark.parametrize("case", CASES)
def test_saved_is_none_unless_training_and_inference_matches_training(rng, case):
    cell, a, kw = make_problem(rng, case, 4, 3, 5, 17, 3)
    lengths = np.array([4, 0, 2])
    out, saved = forward(ops, cell, a, kw, lengths=lengths)
    assert saved is None
    out_t, saved_t = forward(ops, cell, a, kw, lengths=lengths, training=True)
    assert saved_t is not None
    for name, o, o_t in zip(OUT_NAMES[cell], out, out_t):
        np.testing.assert_array_equal(o, o_t, err_msg=name)
    # without lengths every row takes the epilogues' common path (one row, 6-row tiles, the fused projection)
    for B in (1, 6, 40):
        cell, a, kw = make_problem(rng, case, 4, B, 5, 40, 3)
        out, _ = forward(ops, cell, a, kw)
        out_t, _ = forward(ops, cell, a, kw, training=True)
        for name, o, o_t in zip(OUT_NAMES[cell], out, out_t):
            np.testing.assert_array_equal(o, o_t, err_msg=f"B = {B}: {name}")


@pytest.mark.parametrize("case", CASES)
def test_lengths_semantics(rng, case):
    """y is exactly 0 after each row's length; a row of length 0 keeps h0 (c0) exactly; dx is exactly 0
    there, and dh0 (dc0) of a row of length 0 is exactly dh_n (dc_n)."""
    cell, a, kw = make_problem(rng, case, 5, 4, 3, 10, 4)
    lengths = np.array([5, 0, 3, 1])
    for reverse in (False, True):
        out, saved = forward(ops, cell, a, kw, lengths=lengths, reverse=reverse, training=True)
        d = d_outputs_for(rng, out)
        g = dict(zip(GRAD_NAMES[cell], backward(ops, cell, d, saved, a)))
        for b, L in enumerate(lengths):
            assert np.all(out[0][L:, b] == 0) and np.any(out[0][:L, b]) == (L > 0), f"y row {b}"
            assert np.all(g["dx"][L:, b] == 0) and np.any(g["dx"][:L, b]) == (L > 0), f"dx row {b}"
        for k, state in enumerate(out[1:]):
            np.testing.assert_array_equal(state[1], a[("h0", "c0")[k]][1])
            assert not np.array_equal(state[0], a[("h0", "c0")[k]][0])
        np.testing.assert_array_equal(g["dh0"][1], d[1][1])
        if cell == "lstm":
            np.testing.assert_array_equal(g["dc0"][1], d[2][1])


@pytest.mark.parametrize("case", CASES)
def test_reverse_with_lengths_reads_each_row_backwards_from_its_end(rng, case):
    """Row b of reverse=True with lengths equals the row alone, forward on its prefix x[:L] flipped in time."""
    cell, a, kw = make_problem(rng, case, 6, 3, 4, 9, 3)
    lengths = np.array([6, 2, 4])
    out, _ = forward(ops, cell, a, kw, lengths=lengths, reverse=True)
    for b, L in enumerate(lengths):
        a_b = {k: (v[:L, b:b + 1][::-1] if k == "x" else v[b:b + 1] if k in ("h0", "c0") else v)
               for k, v in a.items()}
        out_b, _ = forward(ops, cell, a_b, kw)
        assert_close(out[0][:L, b:b + 1], out_b[0][::-1], np.float64, f"y row {b}")
        for o, o_b in zip(out[1:], out_b[1:]):
            assert_close(o[b:b + 1], o_b, np.float64, f"final state row {b}")


# T = 0, B = 0, or every length 0: outputs empty (or zero), final states equal the initial ones, gradients zero
# (dh0 = dh_n, dc0 = dc_n), as ops' module docstring says.
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("TB", [(0, 3), (4, 0), (0, 0), "lengths0"], ids=["T0", "B0", "T0B0", "all_lengths_0"])
@pytest.mark.parametrize("case", CASES)
def test_empty(rng, case, TB, dtype):
    T, B = (3, 4) if TB == "lengths0" else TB
    lengths = np.zeros(B, np.int64) if TB == "lengths0" else None
    cell, a, kw = make_problem(rng, case, T, B, 5, 6, 2, dtype=dtype)
    K = a["h0"].shape[1]
    out, saved = forward(ops, cell, a, kw, lengths=lengths, reverse=True, training=True)
    assert out[0].shape == (T, B, K) and out[0].dtype == dtype
    assert np.all(out[0] == 0)
    np.testing.assert_array_equal(out[1], a["h0"])
    if cell == "lstm":
        np.testing.assert_array_equal(out[2], a["c0"])
    for o in out:
        assert o.dtype == dtype
        assert not any(v is not None and np.shares_memory(o, v) for v in a.values())
    d = d_outputs_for(rng, out)
    g = dict(zip(GRAD_NAMES[cell], backward(ops, cell, d, saved, a)))
    np.testing.assert_array_equal(g["dh0"], d[1])
    assert not np.shares_memory(g["dh0"], d[1])
    if cell == "lstm":
        np.testing.assert_array_equal(g["dc0"], d[2])
        assert not np.shares_memory(g["dc0"], d[2])
    for name, gi in g.items():
        src = a[GRAD_OF[name]]
        if src is None:
            assert gi is None, name
            continue
        assert gi.shape == src.shape and gi.dtype == dtype, name
        if name not in ("dh0", "dc0"):
            assert not np.any(gi), f"{name} should be zero"
    # None states and None output gradients: zeros.
    out0, saved0 = forward(ops, cell, dict(a, h0=None, **({"c0": None} if cell == "lstm" else {})), kw,
                           lengths=lengths, training=True)
    for o in out0[1:]:
        assert o.shape[0] == B and not np.any(o)
    g0 = backward(ops, cell, [None] * len(out0), saved0, a)
    assert all(gi is None or not np.any(gi) for gi in g0)
    # And the reference agrees.
    ref_out, ref_saved = forward(reference, cell, a, kw, lengths=lengths, reverse=True, training=True)
    for o, r in zip(out, ref_out):
        assert_close(o, r, dtype)
    for gi, ri in zip(g.values(), backward(reference, cell, d, ref_saved, a)):
        assert_close(gi, ri, dtype)


@pytest.mark.parametrize("case", CASES)
def test_zero_input_size(rng, case):
    """I = 0 (no input features) is a valid shape: the recurrence alone runs; dx and dw_ih are empty."""
    cell, a, kw = make_problem(rng, case, 3, 2, 0, 5, 2)
    out, saved = forward(ops, cell, a, kw, training=True)
    ref, ref_saved = forward(reference, cell, a, kw, training=True)
    for o, r in zip(out, ref):
        assert_close(o, r, np.float64)
    d = d_outputs_for(rng, out)
    for gi, ri in zip(backward(ops, cell, d, saved, a), backward(reference, cell, d, ref_saved, a)):
        assert_close(gi, ri, np.float64)


@pytest.mark.parametrize("threads", [2], indirect=True, ids=["2threads"])
@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("B", [5, 40], ids=["hidden_split", "batch_split"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_input_projection_in_chunks(rng, monkeypatch, case, dtype, reverse, B, steps, threads):
    """Long sequences project x @ w_ih^T a few loop steps at a time (ops._xw_steps); forced to chunks of 1-3
    steps on a small problem (with lengths, so padded and reversed rows cross chunk borders), the results
    match the reference and are bitwise those of the one-chunk run."""
    T, I, H = 7, 5, 72
    cell, a, kw = make_problem(rng, case, T, B, I, H, 5, dtype=dtype)
    lengths = random_lengths(rng, T, B)
    whole, _ = forward(ops, cell, a, kw, lengths=lengths, reverse=reverse)
    monkeypatch.setattr(ops, "_xw_steps", lambda T, B, GH, itemsize: min(T, steps))
    monkeypatch.setattr(ops, "_FUSE_X_MIN_ROWS", 1 << 30)  # B = 40 would fuse the projection into the steps
    out, _ = forward(ops, cell, a, kw, lengths=lengths, reverse=reverse)
    ref, _ = forward(reference, cell, {k: as64(v) for k, v in a.items()}, kw, lengths=lengths, reverse=reverse)
    for name, o, w, r in zip(OUT_NAMES[cell], out, whole, ref):
        assert_close(o, r, dtype, f"{case} {name}")
        np.testing.assert_array_equal(o, w, err_msg=f"{case} {name}: chunked != one chunk")


def test_xw_chunk_rule():
    """One chunk while the whole projection is small; else chunks of ~_XW_CHUNK_BYTES, >= 128 rows."""
    assert ops._xw_steps(100, 1, 512, 4) == 100
    assert ops._xw_steps(50, 64, 2048, 4) == 2           # 512 KiB a step: 2 steps, 128 rows
    assert ops._xw_steps(100, 32, 1024, 4) == 8          # 128 KiB a step: 1 MiB
    assert ops._xw_steps(10, 4096, 4096, 4) == 1         # a step alone is beyond the chunk size
    assert 1 <= ops._xw_steps(3, 1, 1 << 22, 8) <= 3


def test_fused_projection_rule():
    """LSTM, RNN and GRU reset_after with >= ops._FUSE_X_MIN_ROWS batch rows fuse x @ w_ih^T into the steps
    (no xw workspace); fewer rows and GRU reset-before project in chunks. A rule on the shapes alone."""
    def plan(cell, B, reset_after=True):
        G = GATES[cell]
        return ops._make_plan(cell, np.dtype(np.float32), 10, B, 8, 48, 48, G, cell == "gru" and reset_after,
                              False, False)
    n = ops._FUSE_X_MIN_ROWS
    assert n == 32
    for cell in ("lstm", "rnn", "gru"):
        fused = plan(cell, n)
        assert fused[4] is True and fused[5]["xw"] is None, cell
        chunked = plan(cell, n - 1)
        assert chunked[4] is False and chunked[5]["xw"] is not None, cell
    assert plan("gru", 64, reset_after=False)[4] is False


@pytest.mark.parametrize("threads", [2], indirect=True, ids=["2threads"])
@pytest.mark.parametrize("B", [3, 40], ids=["hidden_split", "batch_split"])
@pytest.mark.parametrize("lengths", [None, "random"], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_fused_projection_matches_reference(rng, monkeypatch, case, dtype, reverse, lengths, B, threads):
    """The steps with the projection fused in (forced on for B = 3, off for B = 40 by ops._FUSE_X_MIN_ROWS)
    meet the reference, forward and backward, with padded and reversed rows, H = 72 (a partial vector of
    units) and every cell option; the fused run with 1, 2 and 3 threads gives the same bits."""
    T, I, H = 4, 5, 72
    cell, a, kw = make_problem(rng, case, T, B, I, H, 5, dtype=dtype)
    lens = random_lengths(rng, T, B) if lengths else None
    ref, _ = forward(reference, cell, {k: as64(v) for k, v in a.items()}, kw, lengths=lens, reverse=reverse)
    runs = {}
    for fuse in (True, False):
        monkeypatch.setattr(ops, "_FUSE_X_MIN_ROWS", 1 if fuse else 1 << 30)
        out, saved = forward(ops, cell, a, kw, lengths=lens, reverse=reverse, training=True)
        for name, o, r in zip(OUT_NAMES[cell], out, ref):
            assert_close(o, r, dtype, f"{case} fused={fuse} {name}")
        runs[fuse] = (out, saved)
    d = d_outputs_for(rng, runs[True][0])
    ref_saved = forward(reference, cell, {k: as64(v) for k, v in a.items()}, kw, lengths=lens, reverse=reverse,
                        training=True)[1]
    ref_g = backward(reference, cell, [as64(v) for v in d], ref_saved, a)
    for name, g, r in zip(GRAD_NAMES[cell], backward(ops, cell, d, runs[True][1], a), ref_g):
        if r is not None:
            assert_close(g, r, dtype, f"{case} fused {name}")
    monkeypatch.setattr(ops, "_FUSE_X_MIN_ROWS", 1)
    inference = {}
    for n in (1, 2, 3):
        rnnfast.set_num_threads(n)
        inference[n] = forward(ops, cell, a, kw, lengths=lens, reverse=reverse)[0]
    for n in (2, 3):
        for name, o, e in zip(OUT_NAMES[cell], inference[n], inference[1]):
            np.testing.assert_array_equal(o, e, err_msg=f"{case} fused {name}: {n} threads vs 1")
    if cell != "gru" or kw.get("reset_after"):
        # the fused and the chunked run sum in different orders: the results differ somewhere
        assert any(not np.array_equal(f, c) for f, c in zip(runs[True][0], runs[False][0])), case
