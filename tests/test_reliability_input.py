"""Reliability against bad and odd input, at both levels (rnnfast.ops and the layers / cells).

Bad input raises TypeError / ValueError (KeyError for a missing state_dict entry, RuntimeError for a backward
out of order) whose message starts with the argument's name and holds the expected and the actual value;
odd but valid input (views, Fortran order, read-only, T = 1, B = 1, T = 0, B = 0, every length 0, T = 10,000)
gives the reference's answer, and no input is ever modified.

Already covered elsewhere, not repeated here:
- tests/test_ops_validation.py (ops): x of wrong ndim, every forward / backward array of a wrong shape, weights
  of the wrong ndim, P >= H, H = 0, weights of another cell, bad dtypes (int, complex, object, float16, bool,
  longdouble, str) of every forward array and of dy / dh_n / dc_n, mixed float32 / float64 (forward and
  backward), None for required arrays, non-array x, lengths (negative, > T, huge, fractional, NaN, inf, wrong
  count, 2-D, scalar, bool, str, object, complex), unknown nonlinearity, non-bool flags, a bad `saved`, and a
  hypothesis fuzz of shapes / float64 / float32 / int64 dtypes / lengths / reverse.
- tests/test_ops_invariance.py (ops): Fortran order, strided / transposed / negative-stride / zero-stride /
  read-only views and lists give the same bits, inputs unmodified. tests/test_ops.py: T = 0, B = 0, every
  length 0, I = 0.
- tests/test_layers.py / tests/test_cells.py (layers, cells): a first set of bad constructor arguments (sizes 0 /
  -1 / float, nonlinearity, dropout 1.0 / -0.1 / str, proj_size = H / -1, dtype int32 / float16, non-bool
  flags, GRU proj_size, RNN peephole), bad call and backward arguments (x ndim / size / dtype, hx shapes and
  pairs, lengths), backward without a training forward, state_dict missing / extra / misshaped / str entries.

Here: what those leave out (complex / object / float16 / ragged input to the layers, every state and gradient
argument of the layers, lengths at the layer level, constructor edge values, state_dicts of another cell, of
another depth or direction count, RNNFAST_NUM_THREADS, set_num_threads), hypothesis fuzzing of exotic
dtypes / options / backward arguments at the ops level and of everything at the layer level against a layer
built from rnnfast.reference, and odd-but-valid input at the layer level.
"""
import os
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

import rnnfast
from rnnfast import ops, reference
from test_ops import CASES, OUT_NAMES, as64, backward, d_outputs_for, forward, forward_args, make_problem
from test_ops_invariance import LAYOUTS as OPS_LAYOUTS
from tolerances import assert_close

LAYERS = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}
CELLS = {"rnn": rnnfast.RNNCell, "lstm": rnnfast.LSTMCell, "gru": rnnfast.GRUCell}
FLOATS = [np.float64, np.float32]


def raises(exc, arg, *pieces):
    """pytest.raises(exc) for a message that starts with `arg:` and contains every piece (literal text)."""
    return pytest.raises(exc, match="^" + re.escape(arg) + ":" + "".join(f"(?s:.*){re.escape(str(p))}"
                                                                         for p in pieces))


def as_tuple(s):
    return tuple(s) if isinstance(s, tuple) else (s,)


def nonzero(rng, shape, dtype=np.float64):
    """Uniform in +-[0.1, 1]: random and never zero."""
    return (rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)


# ==========================================================================================================
# A layer computed with rnnfast.reference: the oracle for the layer-level tests (here and in the other
# test_reliability_* files). Units are stacked as torch stacks them; dropout masks are taken from the layer.

def _unit_params(layer, k, d):
    suffix = f"_l{k}" + ("_reverse" if d else "")
    names = dict(w_ih="weight_ih", w_hh="weight_hh", b_ih="bias_ih", b_hh="bias_hh", w_hr="weight_hr",
                 w_peep="weight_peep")
    return {role: as64(layer.params.get(name + suffix)) for role, name in names.items()}


def _ref_unit_forward(kind, layer, p, inp, h0, c0, lengths, reverse):
    common = dict(lengths=lengths, reverse=reverse, training=True)
    if kind == "lstm":
        y, h, c, s = reference.lstm_forward(inp, h0, c0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                            w_hr=p["w_hr"], w_peep=p["w_peep"], **common)
        return y, (h, c), s
    if kind == "gru":
        y, h, s = reference.gru_forward(inp, h0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                        reset_after=layer.reset_after, **common)
    else:
        y, h, s = reference.rnn_forward(inp, h0, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                        nonlinearity=layer.nonlinearity, **common)
    return y, (h,), s


def reference_layer_forward(layer, x, hx=None, lengths=None, masks=()):
    """(output, states, tape): `layer`'s forward in float64 with rnnfast.reference; states is (h_n,) or
    (h_n, c_n) in the layer's layout; `masks` are the dropout masks of layers 0..L-2 (None = no dropout)."""
    kind, D, L = layer._kind, layer.num_directions, layer.num_layers
    x = as64(x)
    batched = x.ndim == 3
    x_tbi = (x.transpose(1, 0, 2) if layer.batch_first else x) if batched else x[:, None]
    states0 = [None, None]
    if hx is not None:
        for i, h in enumerate(as_tuple(hx)):
            states0[i] = as64(h) if batched else as64(h)[:, None]
    lengths = None if lengths is None else np.atleast_1d(np.asarray(lengths))
    inp, finals, saved = x_tbi, [], []
    for k in range(L):
        ys = []
        for d in range(D):
            idx = k * D + d
            h0 = None if states0[0] is None else states0[0][idx]
            c0 = None if states0[1] is None else states0[1][idx]
            y, fin, s = _ref_unit_forward(kind, layer, _unit_params(layer, k, d), inp, h0, c0, lengths, bool(d))
            ys.append(y)
            finals.append(fin)
            saved.append(s)
        inp = np.concatenate(ys, axis=-1)
        if k < L - 1 and len(masks) > k and masks[k] is not None:
            inp = inp * as64(masks[k])
    out = (inp.transpose(1, 0, 2) if layer.batch_first else inp) if batched else inp[:, 0]
    states = tuple(np.stack([f[i] for f in finals]) for i in range(len(finals[0])))
    if not batched:
        states = tuple(s[:, 0] for s in states)
    return out, states, dict(saved=saved, masks=masks, batched=batched, T=x_tbi.shape[0], B=x_tbi.shape[1])


def reference_layer_backward(layer, tape, d_out, d_states):
    """(dx, d_states0, grads name -> array) of reference_layer_forward's tape; None gradients are zeros."""
    kind, D, L = layer._kind, layer.num_directions, layer.num_layers
    batched, T, B = tape["batched"], tape["T"], tape["B"]
    K = layer.proj_size or layer.hidden_size
    dy = np.zeros((T, B, D * K)) if d_out is None else as64(d_out)
    if batched and layer.batch_first and d_out is not None:
        dy = dy.transpose(1, 0, 2)
    elif not batched and d_out is not None:
        dy = dy[:, None]
    n_states = 2 if kind == "lstm" else 1
    d_states = list(d_states) + [None] * (n_states - len(d_states))
    d_fin = [None if d is None else (as64(d) if batched else as64(d)[:, None]) for d in d_states]
    grads = {name: np.zeros(p.shape) for name, p in layer.params.items()}
    roles = dict(w_ih="weight_ih", w_hh="weight_hh", b_ih="bias_ih", b_hh="bias_hh", w_hr="weight_hr",
                 w_peep="weight_peep")
    d0 = [[None] * (D * L) for _ in range(n_states)]
    for k in reversed(range(L)):
        if k < L - 1 and len(tape["masks"]) > k and tape["masks"][k] is not None:
            dy = dy * as64(tape["masks"][k])
        dx = 0
        for d in range(D):
            idx = k * D + d
            dy_d = dy[..., d * K:(d + 1) * K]
            dstate = [None if f is None else f[idx] for f in d_fin]
            if kind == "lstm":
                g = reference.lstm_backward(dy_d, dstate[0], dstate[1], tape["saved"][idx])
                dx_d, dinit, pg = g[0], g[1:3], dict(zip(("w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_peep"), g[3:]))
            else:
                fn = reference.gru_backward if kind == "gru" else reference.rnn_backward
                g = fn(dy_d, dstate[0], tape["saved"][idx])
                dx_d, dinit, pg = g[0], g[1:2], dict(zip(("w_ih", "w_hh", "b_ih", "b_hh"), g[2:]))
            for i, v in enumerate(dinit):
                d0[i][idx] = v
            suffix = f"_l{k}" + ("_reverse" if d else "")
            for role, v in pg.items():
                if v is not None:
                    grads[roles[role] + suffix] += v
            dx = dx + dx_d
        dy = dx
    dx = (dy.transpose(1, 0, 2) if layer.batch_first else dy) if batched else dy[:, 0]
    d0 = tuple(np.stack(v) if batched else np.stack(v)[:, 0] for v in d0)
    return dx, d0, grads


def check_layer_against_reference(layer, x, hx=None, lengths=None, d_out=None, d_hx=None, train=True,
                                  what=""):
    """Run `layer` (forward, and backward when train) and compare every result with the reference layer:
    outputs, final states, dx, dhx0, every parameter gradient (within the tolerance of the layer's dtype)."""
    out, states = layer.forward(x, hx, lengths=lengths, train=train)
    masks = layer.dropout_masks if train else []
    ref_out, ref_states, tape = reference_layer_forward(layer, x, hx, lengths, masks)
    dt = layer.dtype
    assert out.dtype == dt
    assert_close(out, ref_out, dt, f"{what} output")
    for i, (s, r) in enumerate(zip(as_tuple(states), ref_states)):
        assert s.dtype == dt
        assert_close(s, r, dt, f"{what} state {i}")
    if not train:
        return
    layer.zero_grad()
    dx, dhx0 = layer.backward(d_out, d_hx)
    d_states = () if d_hx is None else as_tuple(d_hx)
    ref_dx, ref_d0, ref_grads = reference_layer_backward(layer, tape, d_out, d_states)
    assert dx.dtype == dt
    assert_close(dx, ref_dx, dt, f"{what} dx")
    for i, (d, r) in enumerate(zip(as_tuple(dhx0), ref_d0)):
        assert_close(d, r, dt, f"{what} dhx0[{i}]")
    for name, g in layer.grads.items():
        assert g.dtype == dt
        assert_close(g, ref_grads[name], dt, f"{what} grad {name}")


def states_for(layer, rng, batch):
    lead = (layer.num_directions * layer.num_layers,) + (() if batch is None else (batch,))
    h = nonzero(rng, lead + (layer.proj_size or layer.hidden_size,), layer.dtype)
    if layer._kind == "lstm":
        return h, nonzero(rng, lead + (layer.hidden_size,), layer.dtype)
    return h


# ==========================================================================================================
# 1. Bad input, ops level (what test_ops_validation.py leaves out)

def _call_forward(case, overrides=None, options=None, dtype=np.float64):
    cell, a, kw = make_problem(np.random.default_rng(0), case, 4, 3, 5, 6, 2, dtype=dtype)
    a.update(overrides or {})
    args, arrays_kw = forward_args(cell, a)
    return getattr(ops, f"{cell}_forward")(*args, **arrays_kw, **dict(kw, **(options or {})))


@pytest.mark.parametrize("name", ["h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_peep"])
def test_ops_ragged_list_names_the_argument(name):
    ragged = [[0.1, 0.2], [0.3]]
    with raises(TypeError, name, "float32 or float64", "list"):
        _call_forward("lstm_proj_peep", {name: ragged})


@pytest.mark.parametrize("name", ["dy", "dh_n", "dc_n"])
def test_ops_backward_ragged_list_names_the_argument(name):
    out = _call_forward("lstm", options=dict(training=True))
    d = [np.ones_like(o) for o in out[:3]]
    d[("dy", "dh_n", "dc_n").index(name)] = [[0.1, 0.2], [0.3]]
    with raises(TypeError, name, "float32 or float64", "list"):
        ops.lstm_backward(*d, out[-1])


def test_ops_ragged_lengths_names_lengths():
    with raises((TypeError, ValueError), "lengths"):
        _call_forward("gru", options=dict(lengths=[[1], [2, 3], [4]]))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int32], ids=["f16", "f32", "i32"])
def test_ops_lengths_of_other_numeric_dtypes_are_values_not_types(dtype):
    """Integral values of any real dtype are lengths (as ops documents: integral floats are accepted)."""
    expected = _call_forward("rnn_relu", options=dict(lengths=np.array([4, 0, 2])))
    got = _call_forward("rnn_relu", options=dict(lengths=np.array([4, 0, 2], dtype)))
    for g, e in zip(got[:2], expected[:2]):
        np.testing.assert_array_equal(g, e)


def test_ops_weights_of_another_dtype_than_x_in_float32():
    with raises(TypeError, "w_ih", "float32", "float64"):
        _call_forward("gru", {"x": np.ones((4, 3, 5), np.float32)})


# set_num_threads and RNNFAST_NUM_THREADS

@pytest.mark.parametrize("n, exc", [(0, ValueError), (-1, ValueError), (2.5, TypeError), ("2", TypeError),
                                    (True, TypeError), (None, TypeError), (2.0, TypeError),
                                    (np.float64(2), TypeError)],
                         ids=["0", "-1", "2.5", "str", "True", "None", "2.0", "np.float64"])
def test_set_num_threads_rejects(n, exc):
    before = rnnfast.get_num_threads()
    with raises(exc, "n", "positive integer"):
        rnnfast.set_num_threads(n)
    assert rnnfast.get_num_threads() == before


def test_set_num_threads_accepts_numpy_integers():
    rnnfast.set_num_threads(np.int64(1))
    assert rnnfast.get_num_threads() == 1 and type(rnnfast.get_num_threads()) is int


def _run_python(code, env=None, timeout=120, preexec_fn=None):
    """Run `code` in a fresh interpreter with the repository on sys.path; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(rnnfast.__file__)))]
        + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec_fn)


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5"])
def test_bad_RNNFAST_NUM_THREADS_is_a_ValueError_naming_the_variable(value):
    p = _run_python("""
        try:
            import rnnfast
        except ValueError as e:
            print("ValueError:", e)
        else:
            print("imported", rnnfast.get_num_threads())
    """, env={"RNNFAST_NUM_THREADS": value})
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ValueError: RNNFAST_NUM_THREADS") and "positive integer" in p.stdout, p.stdout


def test_RNNFAST_NUM_THREADS_is_used():
    p = _run_python("import rnnfast; print(rnnfast.get_num_threads(), rnnfast._config.openmp_enabled())",
                    env={"RNNFAST_NUM_THREADS": "3"})
    n, omp = p.stdout.split()
    assert p.returncode == 0 and int(n) == (3 if omp == "True" else 1), p.stdout + p.stderr


_MANY_THREADS = """
    import resource, numpy as np, rnnfast
    from rnnfast import ops
    rnnfast.set_num_threads({n})
    # 1 GiB of address space: thread stacks run out long before 4096 threads (as a big n does on any machine).
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    B, H = 64, 512   # a step big enough for ops to give it 4096 threads (B*G*H*H / 2**14)
    x = np.ones((1, B, 4), np.float32)
    try:
        y = ops.lstm_forward(x, None, None, np.full((4 * H, 4), .01, np.float32),
                             np.full((4 * H, H), .01, np.float32))[0]
        print("ok", float(y.sum()))
    except (ValueError, RuntimeError, MemoryError, OSError) as e:
        print("error", type(e).__name__, e)
"""


def test_two_threads_under_a_small_address_space_work():
    """The control for the next test: the same call with 2 threads under the same limit runs."""
    p = _run_python(_MANY_THREADS.format(n=2), timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("ok"), p.stdout + p.stderr


def test_a_huge_thread_count_never_kills_the_process():
    """set_num_threads(4096) then a step big enough for 4096 threads: libgomp used to exit the process
    ('Thread creation failed'; a segfault for 100000 threads): ops now caps the team at the CPU count."""
    p = _run_python(_MANY_THREADS.format(n=4096), timeout=60)
    assert p.returncode == 0, f"process died (exit {p.returncode}): {p.stderr[-500:]}"
    assert p.stdout.startswith(("ok", "error")), p.stdout


# ==========================================================================================================
# 1. Bad input, layer level (what test_layers.py / test_cells.py leave out)

def _layer(kind="lstm", **kw):
    return LAYERS[kind](3, 4, num_layers=2, dtype=np.float64, seed=0, **kw)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("value, dtype_name", [
    (np.ones((5, 2, 3), np.complex128), "complex128"), (np.ones((5, 2, 3), object), "object"),
    (np.ones((5, 2, 3), np.float16), "float16"), (np.ones((5, 2, 3), np.float32), "float32"),
    (np.ones((5, 2, 3), np.int32), "int32"), (np.ones((5, 2, 3), bool), "bool"), ("abc", "<U3"),
    (None, "object")], ids=["complex", "object", "f16", "f32", "int32", "bool", "str", "None"])
def test_layer_x_of_bad_dtype(kind, value, dtype_name):
    with raises(TypeError, "x", "float64", dtype_name):
        _layer(kind)(value)


@pytest.mark.parametrize("where", ["x", "hx", "lengths", "d_output", "cell_x", "state_dict"])
def test_layer_ragged_input_names_the_argument(where):
    ragged = [[0.1, 0.2, 0.3], [0.4]]
    layer = _layer("gru")
    x = np.ones((5, 2, 3))
    if where == "x":
        with raises((TypeError, ValueError), "x"):
            layer(ragged)
    elif where == "hx":
        with raises((TypeError, ValueError), "hx"):
            layer(x, ragged)
    elif where == "lengths":
        with raises((TypeError, ValueError), "lengths"):
            layer(x, lengths=[[1], [2, 3]])
    elif where == "d_output":
        layer.forward(x, train=True)
        with raises((TypeError, ValueError), "d_output"):
            layer.backward(ragged)
    elif where == "cell_x":
        with raises((TypeError, ValueError), "x"):
            rnnfast.GRUCell(3, 4, dtype=np.float64)(ragged)
    else:
        with raises((TypeError, ValueError), "state_dict['weight_ih_l0']"):
            layer.load_state_dict(dict(layer.state_dict(), weight_ih_l0=ragged))


@pytest.mark.parametrize("kind, proj", [("rnn", 0), ("gru", 0), ("lstm", 0), ("lstm", 2)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_every_state_argument_of_wrong_shape(kind, proj, bidirectional):
    """hx (h_0 and c_0), d_output and d_hx: wrong D*L, wrong B, wrong H (P vs H with a projection), wrong
    ndim, batched vs unbatched; the message names the argument with both shapes."""
    kw = dict(proj_size=proj) if proj else {}
    layer = LAYERS[kind](3, 4, num_layers=2, bidirectional=bidirectional, dtype=np.float64, seed=0, **kw)
    DL, B, K, H = layer.num_directions * 2, 2, proj or 4, 4
    x = np.ones((5, B, 3))
    good = [(DL, B, K)] + ([(DL, B, H)] if kind == "lstm" else [])
    names = ["hx[0]", "hx[1]"] if kind == "lstm" else ["hx"]
    for i, shape in enumerate(good):
        for bad in [(DL + 1,) + shape[1:], (DL, B + 1, shape[2]), (DL, B, shape[2] + 1), shape[1:],
                    (1,) + shape, (DL, B, 4 if shape[2] != 4 else 2)]:
            if bad == shape:
                continue
            hx = [np.zeros(s) for s in good]
            hx[i] = np.zeros(bad)
            with raises(ValueError, names[i], "expected shape", shape, "got", bad):
                layer(x, tuple(hx) if kind == "lstm" else hx[0])
    out, states = layer.forward(x, train=True)
    for bad in [out.shape[:-1] + (out.shape[-1] + 1,), out.shape[1:], (1,) + out.shape]:
        with raises(ValueError, "d_output", "expected shape", out.shape, "got", bad):
            layer.backward(np.zeros(bad))
    d_names = ["d_hx[0]", "d_hx[1]"] if kind == "lstm" else ["d_hx"]
    for i, s in enumerate(as_tuple(states)):
        bad = s.shape[:-1] + (s.shape[-1] + 1,)
        d = [np.zeros(t.shape) for t in as_tuple(states)]
        d[i] = np.zeros(bad)
        with raises(ValueError, d_names[i], "expected shape", s.shape, "got", bad):
            layer.backward(None, tuple(d) if kind == "lstm" else d[0])
    layer.backward(None)  # the rejected calls left the training forward pending


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.complex128, np.float16, object],
                         ids=["f32", "i64", "c128", "f16", "object"])
def test_layer_states_and_gradients_of_bad_dtype(kind, dtype):
    layer = _layer(kind)
    x = np.ones((5, 2, 3))
    out, states = layer.forward(x, train=True)
    states = as_tuple(states)
    name = np.dtype(dtype).name
    for i in range(len(states)):
        hx = [s.copy() for s in states]
        hx[i] = hx[i].astype(dtype)
        label = f"hx[{i}]" if kind == "lstm" else "hx"
        with raises(TypeError, label, "float64", name):
            layer(x, tuple(hx) if kind == "lstm" else hx[0])
        d = [np.zeros(s.shape) for s in states]
        d[i] = d[i].astype(dtype)
        with raises(TypeError, f"d_hx[{i}]" if kind == "lstm" else "d_hx", "float64", name):
            layer.backward(None, tuple(d) if kind == "lstm" else d[0])
    with raises(TypeError, "d_output", "float64", name):
        layer.backward(np.zeros(out.shape, dtype))
    layer.backward(None)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("lengths, exc, pieces", [
    ([-1, 2], ValueError, ("[0, T=5]", "-1")), ([6, 2], ValueError, ("[0, T=5]", "6")),
    ([1, 2, 3], ValueError, ("(2,)", "(3,)")), ([1], ValueError, ("(2,)", "(1,)")),
    ([[1, 2]], ValueError, ("(2,)", "(1, 2)")), (3, ValueError, ("(2,)", "()")),
    ([1.5, 2], TypeError, ("integer", "float64")), ([True, False], TypeError, ("integer", "bool")),
    (["1", "2"], TypeError, ("integer", "<U1")), (np.array([1, 2], object), TypeError, ("integer", "object")),
    ([1, None], TypeError, ("integer", "object")), ([1 + 0j, 2], TypeError, ("integer", "complex128")),
    (np.array([2**63 + 5, 1], np.uint64), ValueError, ("[0, T=5]", str(2**63 + 5))),
], ids=["negative", "above_T", "too_many", "too_few", "2d", "scalar", "fractional", "bool", "str", "object",
        "None", "complex", "uint64_huge"])
def test_layer_bad_lengths(kind, lengths, exc, pieces):
    layer = _layer(kind, bidirectional=True)
    with raises(exc, "lengths", *pieces):
        layer(np.ones((5, 2, 3)), lengths=lengths)
    with raises(exc, "lengths"):
        layer.forward(np.ones((2, 5, 3)).transpose(1, 0, 2), lengths=lengths, train=True)


def test_layer_empty_list_of_lengths_for_an_empty_batch():
    out, _ = _layer("gru")(np.ones((5, 0, 3)), lengths=[])
    assert out.shape == (5, 0, 4)


def test_layer_unbatched_lengths():
    layer = _layer("gru")
    x = np.ones((5, 3))
    for ok in (3, [3], np.array([0])):
        layer(x, lengths=ok)
    with raises(ValueError, "lengths", "(1,)", "(2,)"):
        layer(x, lengths=[3, 2])
    with raises(ValueError, "lengths", "[0, T=5]", "6"):
        layer(x, lengths=6)


@pytest.mark.parametrize("cls, kw, exc, pieces", [
    (rnnfast.LSTM, dict(input_size=True), TypeError, ("input_size", "int >= 1", "True")),
    (rnnfast.LSTM, dict(input_size="3"), TypeError, ("input_size", "int >= 1", "'3'")),
    (rnnfast.LSTM, dict(input_size=None), TypeError, ("input_size", "int >= 1", "None")),
    (rnnfast.GRU, dict(hidden_size=0), ValueError, ("hidden_size", "int >= 1", "0")),
    (rnnfast.GRU, dict(hidden_size=np.int64(-2)), ValueError, ("hidden_size", "int >= 1", "-2")),
    (rnnfast.RNN, dict(num_layers=-1), ValueError, ("num_layers", "int >= 1", "-1")),
    (rnnfast.RNN, dict(num_layers=1.0), TypeError, ("num_layers", "int >= 1", "1.0")),
    (rnnfast.GRU, dict(dropout=float("nan"), num_layers=2), ValueError, ("dropout", "[0, 1)", "nan")),
    (rnnfast.GRU, dict(dropout=float("inf"), num_layers=2), ValueError, ("dropout", "[0, 1)", "inf")),
    (rnnfast.GRU, dict(dropout=1.5, num_layers=2), ValueError, ("dropout", "[0, 1)", "1.5")),
    (rnnfast.GRU, dict(dropout=True, num_layers=2), TypeError, ("dropout", "[0, 1)", "True")),
    (rnnfast.GRU, dict(dropout=None, num_layers=2), TypeError, ("dropout", "[0, 1)", "None")),
    (rnnfast.LSTM, dict(proj_size=5), ValueError, ("proj_size", "proj_size < hidden_size = 4", "5")),
    (rnnfast.LSTM, dict(proj_size=2.0), TypeError, ("proj_size", "int >= 0", "2.0")),
    (rnnfast.LSTM, dict(dtype=np.complex64), TypeError, ("dtype", "float32 or float64", "complex64")),
    (rnnfast.LSTM, dict(dtype="foo"), TypeError, ("dtype", "float32 or float64", "foo")),
    (rnnfast.LSTM, dict(bias=2), TypeError, ("bias", "bool", "2")),
    (rnnfast.LSTM, dict(batch_first=None), TypeError, ("batch_first", "bool", "None")),
    (rnnfast.LSTM, dict(peephole="no"), TypeError, ("peephole", "bool", "'no'")),
    (rnnfast.RNN, dict(nonlinearity=None), ValueError, ("nonlinearity", "'tanh' or 'relu'", "None")),
    (rnnfast.RNN, dict(nonlinearity="ReLU"), ValueError, ("nonlinearity", "'tanh' or 'relu'", "'ReLU'")),
    (rnnfast.RNNCell, dict(nonlinearity="sigmoid"), ValueError, ("nonlinearity", "'tanh' or 'relu'")),
    (rnnfast.RNNCell, dict(input_size=0), ValueError, ("input_size", "int >= 1", "0")),
    (rnnfast.LSTMCell, dict(hidden_size=-4), ValueError, ("hidden_size", "int >= 1", "-4")),
    (rnnfast.GRUCell, dict(hidden_size=2.5), TypeError, ("hidden_size", "int >= 1", "2.5")),
    (rnnfast.GRUCell, dict(bias="yes"), TypeError, ("bias", "bool", "'yes'")),
    (rnnfast.GRUCell, dict(reset_after=2), TypeError, ("reset_after", "bool", "2")),
    (rnnfast.LSTMCell, dict(dtype=np.int8), TypeError, ("dtype", "float32 or float64", "int8")),
], ids=lambda v: v.__name__ if isinstance(v, type) and issubclass(v, rnnfast.layers._Module) else None)
def test_more_bad_constructor_arguments(cls, kw, exc, pieces):
    args = dict(input_size=3, hidden_size=4)
    args.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with raises(exc, pieces[0], *pieces[1:]):
            cls(**args)


@pytest.mark.parametrize("seed", [-1, "a", 1.5], ids=["negative", "str", "float"])
def test_bad_seed_names_seed(seed):
    with raises((TypeError, ValueError), "seed"):
        rnnfast.GRU(3, 4, seed=seed)


@pytest.mark.parametrize("make, other", [
    (lambda: rnnfast.LSTM(3, 4, seed=0), lambda: rnnfast.GRU(3, 4, seed=0)),
    (lambda: rnnfast.GRU(3, 4, seed=0), lambda: rnnfast.RNN(3, 4, seed=0)),
    (lambda: rnnfast.RNN(3, 4, seed=0), lambda: rnnfast.LSTM(3, 4, seed=0)),
    (lambda: rnnfast.LSTMCell(3, 4, seed=0), lambda: rnnfast.GRUCell(3, 4, seed=0)),
    (lambda: rnnfast.GRUCell(3, 4, seed=0), lambda: rnnfast.RNNCell(3, 4, seed=0)),
], ids=["lstm<-gru", "gru<-rnn", "rnn<-lstm", "lstmcell<-grucell", "grucell<-rnncell"])
def test_state_dict_of_another_cell_type_is_a_shape_error(make, other):
    layer = make()
    before = layer.state_dict()
    src = other().state_dict()
    first = next(iter(src))
    with raises(ValueError, f"state_dict[{first!r}]", "expected shape", before[first].shape, "got",
                src[first].shape):
        layer.load_state_dict(src)
    for name, p in layer.state_dict().items():
        np.testing.assert_array_equal(p, before[name])


@pytest.mark.parametrize("src_kw, missing, unexpected", [
    (dict(num_layers=3), [], ["weight_ih_l2", "weight_hh_l2", "bias_ih_l2", "bias_hh_l2"]),
    (dict(num_layers=1), ["weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"], []),
    (dict(num_layers=2, bidirectional=True), [], ["weight_ih_l0_reverse"]),
    (dict(num_layers=2, bias=False), ["bias_ih_l0"], []),
    (dict(num_layers=2, proj_size=2), [], ["weight_hr_l0"]),
    (dict(num_layers=2, peephole=True), [], ["weight_peep_l0"]),
], ids=["deeper", "shallower", "bidirectional", "no_bias", "projection", "peephole"])
def test_state_dict_of_another_architecture(src_kw, missing, unexpected):
    layer = rnnfast.LSTM(3, 4, num_layers=2, seed=0)
    before = layer.state_dict()
    src = rnnfast.LSTM(3, 4, seed=1, **src_kw).state_dict()
    with pytest.raises(KeyError) as info:
        layer.load_state_dict(src)
    msg = info.value.args[0]
    assert msg.startswith("state_dict:")
    for name in missing + unexpected:
        assert repr(name) in msg, (name, msg)
    for name, p in layer.state_dict().items():
        np.testing.assert_array_equal(p, before[name])


@pytest.mark.parametrize("value, exc, pieces", [
    (None, TypeError, ("real numeric array", "object")),
    (np.ones((16, 3), np.complex64), TypeError, ("real numeric array", "complex64")),
    (np.ones(48), ValueError, ("expected shape (16, 3)", "(48,)")),
    (np.ones((3, 16)), ValueError, ("expected shape (16, 3)", "(3, 16)")),
    (np.ones((1, 16, 3)), ValueError, ("expected shape (16, 3)", "(1, 16, 3)")),
    (1.0, ValueError, ("expected shape (16, 3)", "()")),
], ids=["None", "complex", "flat", "transposed", "3d", "scalar"])
def test_state_dict_bad_entry_strict_or_not(value, exc, pieces):
    layer = rnnfast.LSTM(3, 4, seed=0)
    before = layer.state_dict()
    for strict in (True, False):
        with raises(exc, "state_dict['weight_ih_l0']", *pieces):
            layer.load_state_dict(dict(before, weight_ih_l0=value), strict=strict)
    for name, p in layer.state_dict().items():
        np.testing.assert_array_equal(p, before[name])


def test_state_dict_not_a_mapping():
    for value in ([1, 2], None, "weights", np.ones(3)):
        with raises(TypeError, "state_dict", "mapping"):
            rnnfast.GRU(3, 4).load_state_dict(value)


@pytest.mark.parametrize("kind", CELLS)
def test_cell_bad_states_and_gradients(kind):
    cell = CELLS[kind](3, 4, dtype=np.float64, seed=0)
    x = np.ones((2, 3))
    shapes = [(2, 4)] * (2 if kind == "lstm" else 1)
    for i in range(len(shapes)):
        for bad, exc in ((np.zeros((2, 5)), ValueError), (np.zeros((3, 4)), ValueError),
                         (np.zeros((2, 4), np.float32), TypeError), (np.zeros((2, 4), complex), TypeError)):
            hx = [np.zeros(s) for s in shapes]
            hx[i] = bad
            label = f"hx[{i}]" if kind == "lstm" else "hx"
            with raises(exc, label):
                cell(x, tuple(hx) if kind == "lstm" else hx[0])
    with raises(TypeError, "x", "float64", "complex128"):
        cell(x.astype(complex))
    with raises(ValueError, "x", "(B, 3)"):
        cell(np.float64(1.0))
    out = cell.forward(x, train=True)
    if kind == "lstm":
        with raises(TypeError, "d_output", "pair"):
            cell.backward(np.zeros((2, 4)))
        with raises(ValueError, "d_output[1]", "(2, 4)", "(4,)"):
            cell.backward((None, np.zeros(4)))
    else:
        with raises(TypeError, "d_output", "float64", "int64"):
            cell.backward(np.zeros((2, 4), np.int64))
    cell.backward(None if kind != "lstm" else (None, None))
    with pytest.raises(RuntimeError, match="train=True"):
        cell.backward(None if kind != "lstm" else (None, None))
    assert out is not None


@pytest.mark.parametrize("kind", LAYERS)
def test_backward_out_of_order(kind):
    """backward before any forward, after an inference forward, twice after one training forward, and after
    a training forward that was rejected (RuntimeError naming the remedy)."""
    layer = _layer(kind)
    x = np.ones((5, 2, 3))
    with pytest.raises(RuntimeError, match=r"^" + type(layer).__name__ + r"\.backward: .*train=True"):
        layer.backward(None)
    layer(x)
    with pytest.raises(RuntimeError, match="train=True"):
        layer.backward(None)
    with raises(ValueError, "x"):
        layer.forward(np.ones((5, 2, 4)), train=True)
    with pytest.raises(RuntimeError, match="train=True"):
        layer.backward(None)
    layer.forward(x, train=True)
    layer.backward(None)
    with pytest.raises(RuntimeError, match="train=True"):
        layer.backward(None)


# ==========================================================================================================
# 1. Fuzzing, both levels

_BAD_DTYPES = [np.float16, np.complex128, object, np.bool_, np.int32, np.uint8]


def _mutate_array(data, decide, name, v, x_dtype):
    """A random bad or odd version of array v, with probability 1/10 (else v itself). `decide` is a numpy
    Generator: hypothesis favours the ends of a range, which would make almost every example bad."""
    if v is None or decide.random() >= 0.1:
        return v
    kind = data.draw(st.sampled_from(["dtype", "other_float", "shape", "list", "scalar", "string", "none",
                                      "ndim"]), label=f"{name} mutation")
    if kind == "dtype":
        return v.astype(data.draw(st.sampled_from(_BAD_DTYPES), label=f"{name} dtype"))
    if kind == "other_float":
        return v.astype(np.float32 if x_dtype == np.float64 else np.float64)
    if kind == "shape":
        shape = data.draw(st.lists(st.integers(0, 5), min_size=v.ndim, max_size=v.ndim).map(tuple),
                          label=f"{name} shape")
        return np.random.default_rng(1).uniform(-1, 1, shape).astype(v.dtype)
    if kind == "list":
        return v.tolist()
    if kind == "scalar":
        return 0.5
    if kind == "string":
        return "abc"
    if kind == "ndim":
        return v[..., None]
    return None


_OPS_NAMES = {"x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_peep", "lengths", "nonlinearity",
              "reverse", "training", "reset_after", "dy", "dh_n", "dc_n", "saved"}


def _check_error(e, names):
    assert isinstance(e, (TypeError, ValueError)), f"{type(e).__name__}: {e}"
    name = str(e).split(":")[0]
    assert name in names, f"message does not start with an argument name: {type(e).__name__}: {e}"
    event(f"{type(e).__name__} {name}")


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data(), case=st.sampled_from(sorted(CASES)), dtype=st.sampled_from(FLOATS),
       T=st.integers(0, 3), B=st.integers(0, 3), H=st.integers(1, 4))
def test_ops_fuzz_dtypes_options_and_backward_arguments(data, case, dtype, T, B, H):
    """Exotic dtypes, lists, scalars, strings, wrong ndim in any array; random option values; random
    lengths; then random backward arguments. Every call returns the reference's answer or raises
    TypeError / ValueError whose message starts with an argument name. (Ragged lengths are left out:
    test_ops_ragged_lengths_names_lengths, xfail.)"""
    cell, a, kw = make_problem(np.random.default_rng(0), case, T, B, 2, H, max(1, H - 1), dtype=dtype)
    decide = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="decisions"))
    for name in list(a):
        a[name] = _mutate_array(data, decide, name, a[name], dtype)
    options = dict(kw)
    if cell == "rnn":
        options["nonlinearity"] = _maybe_bad(data, decide, "nonlinearity", st.sampled_from(["tanh", "relu"]),
                                             ["Tanh", "sigmoid", None, 1])
    if cell == "gru":
        options["reset_after"] = _maybe_bad(data, decide, "reset_after",
                                            st.sampled_from([True, False, np.bool_(False)]), [1, None, "no"])
    options["reverse"] = _maybe_bad(data, decide, "reverse", st.sampled_from([False, True, np.bool_(True)]),
                                    [0, "yes"])
    lengths = data.draw(st.none() | st.lists(st.integers(0, T), min_size=B, max_size=B), label="lengths")
    options["lengths"] = _maybe_bad(data, decide, "lengths", st.just(lengths), [
        [-1] * B, [T + 1] * B, [0.0] * B, [1.5] * B, [float("nan")] * B, [0] * (B + 1), 3, "abc", [True] * B])
    args, arrays_kw = forward_args(cell, a)
    try:
        out = getattr(ops, f"{cell}_forward")(*args, **arrays_kw, **options, training=True)
    except (TypeError, ValueError) as e:
        _check_error(e, _OPS_NAMES)
        return
    event("forward accepted")
    # The reference in float64 on the same (accepted, hence valid) data.
    args = [None if v is None else as64(v) for v in args]
    arrays_kw = {k: None if v is None else as64(v) for k, v in arrays_kw.items()}
    ref = getattr(reference, f"{cell}_forward")(*args, **arrays_kw, **options, training=True)
    dt = out[0].dtype
    for o, r in zip(out[:-1], ref[:-1]):
        assert o.shape == r.shape
        assert_close(o, r.astype(np.float64), dt)
    d = [_mutate_array(data, decide, n, np.random.default_rng(2).uniform(-1, 1, o.shape).astype(dt), dt)
         for n, o in zip(("dy", "dh_n", "dc_n"), out[:-1])]
    try:
        grads = getattr(ops, f"{cell}_backward")(*d, out[-1])
    except (TypeError, ValueError) as e:
        _check_error(e, _OPS_NAMES)
        return
    event("backward accepted")
    ref_grads = getattr(reference, f"{cell}_backward")(*[None if v is None else as64(v) for v in d], ref[-1])
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            assert_close(g, r, dt)


_LAYER_CALL_NAMES = {"x", "hx", "hx[0]", "hx[1]", "lengths", "train", "d_output", "d_hx", "d_hx[0]", "d_hx[1]"}
_CTOR_NAMES = {"input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
               "proj_size", "nonlinearity", "reset_after", "peephole", "dtype"}


def _maybe_bad(data, decide, label, good, bad, p=0.06):
    """A bad value (drawn from `bad`) with probability p, else one drawn from the strategy `good`."""
    if decide.random() < p:
        return data.draw(st.sampled_from(bad), label=f"bad {label}")
    return data.draw(good, label=label)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data(), kind=st.sampled_from(["rnn", "lstm", "gru"]))
def test_layer_fuzz_everything_matches_the_reference_or_raises(data, kind):
    """Random constructor arguments (sometimes bad), x / hx / lengths / train of random shapes, dtypes and
    values, then random backward arguments: every step either matches a layer built from rnnfast.reference
    (outputs, states, dx, dhx0, every parameter gradient) or raises TypeError / ValueError naming an
    argument (RuntimeError only for a backward without a pending training forward)."""
    decide = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="decisions"))
    def arg(label, good, bad):
        return _maybe_bad(data, decide, label, good, bad, p=0.025)

    I = arg("input_size", st.integers(1, 3), [0, -1, 2.0, True, "3"])
    H = arg("hidden_size", st.integers(1, 4), [0, -2, 3.5, None])
    kw = dict(num_layers=arg("num_layers", st.integers(1, 2), [0, 1.0]),
              bias=arg("bias", st.booleans(), [2, None, "yes"]),
              batch_first=arg("batch_first", st.booleans(), [None, "no"]),
              dropout=arg("dropout", st.sampled_from([0.0, 0.0, 0.5]), [1.0, -0.1, float("nan"), "0.5"]),
              bidirectional=arg("bidirectional", st.booleans(), [2, None]),
              dtype=arg("dtype", st.sampled_from(FLOATS), [np.int32, np.float16, "foo"]),
              seed=data.draw(st.integers(0, 100), label="seed"))
    if kind == "lstm":
        h = H if isinstance(H, int) and not isinstance(H, bool) and H > 0 else 2
        kw["proj_size"] = arg("proj_size", st.integers(0, h - 1), [h, -1, 1.5])
        kw["peephole"] = data.draw(st.booleans(), label="peephole")
    elif kind == "rnn":
        kw["nonlinearity"] = arg("nonlinearity", st.sampled_from(["tanh", "relu"]), ["gelu", None, "TANH"])
    else:
        kw["reset_after"] = arg("reset_after", st.booleans(), [None, 3])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # dropout with num_layers=1
            layer = LAYERS[kind](I, H, **kw)
    except (TypeError, ValueError) as e:
        _check_error(e, _CTOR_NAMES)
        return
    event("constructed")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="data seed"))
    dt = layer.dtype
    T, B = data.draw(st.integers(0, 4), label="T"), data.draw(st.integers(0, 3), label="B")
    unbatched = data.draw(st.integers(0, 4), label="unbatched") == 0
    shape = (T, I) if unbatched else ((B, T, I) if layer.batch_first else (T, B, I))
    x = nonzero(rng, shape, dt)
    x = _maybe_bad(data, decide, "x", st.just(x), [x.astype(np.float64 if dt == np.float32 else np.float32),
                                           x.astype(np.int64), x.astype(np.complex64), x.astype(np.float16),
                                           x[..., :-1], x[None], "abc", x.tolist()])
    hx = None
    if data.draw(st.booleans(), label="given hx"):
        hx = states_for(layer, rng, None if unbatched else B)
        hx = _maybe_bad(data, decide, "hx", st.just(hx), [
            tuple(h.astype(np.float16) for h in as_tuple(hx)), tuple(h[:1] for h in as_tuple(hx)),
            tuple(h[..., :-1] for h in as_tuple(hx)), as_tuple(hx)[0], (as_tuple(hx)[0],) * 3])
        if kind != "lstm" and isinstance(hx, tuple) and len(hx) == 1:
            hx = hx[0]
    n_rows = 1 if unbatched else B
    lengths = data.draw(st.one_of(st.none(), st.lists(st.integers(0, T), min_size=n_rows, max_size=n_rows)
                                  .map(lambda v: np.array(v, dtype=np.int64))), label="lengths")
    lengths = _maybe_bad(data, decide, "lengths", st.just(lengths), [[-1] * n_rows, [T + 1] * n_rows, [0] * (n_rows + 1),
                                                             [0.5] * n_rows, "abc"])
    train = _maybe_bad(data, decide, "train", st.just(bool(decide.random() < 0.75)), [None, "yes", 2], p=0.03)
    try:
        out, states = layer.forward(x, hx, lengths=lengths, train=train)
    except (TypeError, ValueError) as e:
        _check_error(e, _LAYER_CALL_NAMES)
        return
    event("forward accepted")
    masks = layer.dropout_masks if train else []
    ref_out, ref_states, tape = reference_layer_forward(layer, x, hx, lengths, masks)
    assert_close(out, ref_out, dt, "output")
    for s, r in zip(as_tuple(states), ref_states):
        assert_close(s, r, dt, "state")
    d_out = _maybe_bad(data, decide, "d_output", st.sampled_from([None, nonzero(rng, out.shape, dt)]),
                       [np.zeros(out.shape[:-1] + (out.shape[-1] + 1,), dt), np.zeros(out.shape, np.int64)])
    d_hx = None
    if data.draw(st.booleans(), label="given d_hx"):
        d_hx = tuple(nonzero(rng, s.shape, dt) for s in as_tuple(states))
        d_hx = _maybe_bad(data, decide, "d_hx", st.just(d_hx), [tuple(d[None] for d in d_hx),
                                                        tuple(d.astype(np.complex128) for d in d_hx)])
        if kind != "lstm":
            d_hx = d_hx[0]
    layer.zero_grad()
    try:
        dx, dhx0 = layer.backward(d_out, d_hx)
    except RuntimeError as e:
        assert not train and "train=True" in str(e), e
        return
    except (TypeError, ValueError) as e:
        _check_error(e, _LAYER_CALL_NAMES)
        return
    assert train
    event("backward accepted")
    ref_dx, ref_d0, ref_grads = reference_layer_backward(layer, tape, d_out, () if d_hx is None else as_tuple(d_hx))
    assert_close(dx, ref_dx, dt, "dx")
    for d, r in zip(as_tuple(dhx0), ref_d0):
        assert_close(d, r, dt, "dhx0")
    for name, g in layer.grads.items():
        assert_close(g, ref_grads[name], dt, f"grad {name}")


# ==========================================================================================================
# 2. Odd but valid input, layer level

# The array layouts of the ops-level invariance tests, but for transposed (layers take (T, B, I) as given).
LAYOUTS = {k: f for k, f in OPS_LAYOUTS.items() if k != "transposed"}
LAYER_CONFIGS = {
    "rnn_relu": ("rnn", dict(nonlinearity="relu", bidirectional=True)),
    "lstm_proj": ("lstm", dict(proj_size=2, bidirectional=True, batch_first=True)),
    "lstm_peep": ("lstm", dict(peephole=True)),
    "gru": ("gru", dict(bidirectional=True)),
    "gru_reset_before": ("gru", dict(reset_after=False, batch_first=True)),
}


def _run_layer(layer, x, hx, lengths, d_out, d_hx):
    layer.zero_grad()
    out, states = layer.forward(x, hx, lengths=lengths, train=True)
    dx, dhx0 = layer.backward(d_out, d_hx)
    return [out, *as_tuple(states), dx, *as_tuple(dhx0), *(g.copy() for g in layer.grads.values())]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("config", LAYER_CONFIGS)
def test_layer_layouts_change_no_bit_and_inputs_stay_unmodified(rng, config, dtype, layout):
    kind, kw = LAYER_CONFIGS[config]
    layer = LAYERS[kind](3, 5, num_layers=2, dtype=dtype, seed=0, **kw)
    T, B = 4, 3
    x = nonzero(rng, (B, T, 3) if layer.batch_first else (T, B, 3), dtype)
    hx = states_for(layer, rng, B)
    lengths = np.array([4, 0, 2])
    out, states = layer(x, hx, lengths=lengths)
    d_out = nonzero(rng, out.shape, dtype)
    d_hx = tuple(nonzero(rng, s.shape, dtype) for s in as_tuple(states))
    d_hx = d_hx if kind == "lstm" else d_hx[0]
    expected = _run_layer(layer, x, hx, lengths, d_out, d_hx)
    f = LAYOUTS[layout]
    x2, d_out2, lengths2 = f(x), f(d_out), f(lengths)
    hx2 = tuple(f(h) for h in hx) if kind == "lstm" else f(hx)
    d_hx2 = tuple(f(h) for h in d_hx) if kind == "lstm" else f(d_hx)
    inputs = [x2, d_out2, lengths2, *as_tuple(hx2), *as_tuple(d_hx2)]
    copies = [np.array(v) for v in inputs]
    got = _run_layer(layer, x2, hx2, lengths2, d_out2, d_hx2)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == e.dtype and np.array_equal(g, e), f"{layout}: result {i} differs"
    for v, c in zip(inputs, copies):
        np.testing.assert_array_equal(v, c)
    if layout != "readonly":
        assert not x2.flags.c_contiguous


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cell_layouts_change_no_bit(rng, kind, layout):
    cell = CELLS[kind](3, 5, dtype=np.float64, seed=0)
    x = nonzero(rng, (4, 3))
    hx = tuple(nonzero(rng, (4, 5)) for _ in range(2 if kind == "lstm" else 1))
    hx = hx if kind == "lstm" else hx[0]
    d = tuple(nonzero(rng, (4, 5)) for _ in range(2 if kind == "lstm" else 1))
    d = d if kind == "lstm" else d[0]

    def run(x, hx, d):
        cell.zero_grad()
        new = cell.forward(x, hx, train=True)
        dx, dhx = cell.backward(d)
        return [*as_tuple(new), dx, *as_tuple(dhx), *(g.copy() for g in cell.grads.values())]

    expected = run(x, hx, d)
    f = LAYOUTS[layout]
    wrap = (lambda v: tuple(f(a) for a in v)) if kind == "lstm" else f
    x2, hx2, d2 = f(x), wrap(hx), wrap(d)
    copies = [np.array(v) for v in (x2, *as_tuple(hx2), *as_tuple(d2))]
    for g, e in zip(run(x2, hx2, d2), expected):
        assert np.array_equal(g, e)
    for v, c in zip((x2, *as_tuple(hx2), *as_tuple(d2)), copies):
        np.testing.assert_array_equal(v, c)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_state_dict_from_odd_layouts(rng, layout):
    """A state_dict of views / Fortran-order / read-only arrays loads the same values; the parameters stay
    private, writable, C-contiguous arrays, and the source is not modified."""
    src = rnnfast.LSTM(3, 5, num_layers=2, proj_size=2, dtype=np.float64, seed=1).state_dict()
    odd = {n: LAYOUTS[layout](v) for n, v in src.items()}
    copies = {n: np.array(v) for n, v in odd.items()}
    layer = rnnfast.LSTM(3, 5, num_layers=2, proj_size=2, dtype=np.float64, seed=0)
    layer.load_state_dict(odd)
    for n, p in layer.params.items():
        np.testing.assert_array_equal(p, src[n])
        assert p.flags.c_contiguous and p.flags.writeable and not np.shares_memory(p, odd[n])
        np.testing.assert_array_equal(odd[n], copies[n])
    x = nonzero(rng, (4, 2, 3))
    ref = rnnfast.LSTM(3, 5, num_layers=2, proj_size=2, dtype=np.float64, seed=1)
    np.testing.assert_array_equal(layer(x)[0], ref(x)[0])


@pytest.mark.parametrize("config", LAYER_CONFIGS)
@pytest.mark.parametrize("T, B", [(1, 1), (1, 4), (5, 1), (1, None)], ids=["T1B1", "T1", "B1", "T1_unbatched"])
def test_layer_size_one_dimensions_match_the_reference(rng, config, T, B):
    kind, kw = LAYER_CONFIGS[config]
    layer = LAYERS[kind](3, 5, num_layers=2, dtype=np.float64, seed=0, **kw)
    shape = (T, 3) if B is None else ((B, T, 3) if layer.batch_first else (T, B, 3))
    x = nonzero(rng, shape)
    hx = states_for(layer, rng, B)
    out, states = layer(x, hx)
    d_hx = tuple(nonzero(rng, s.shape) for s in as_tuple(states))
    check_layer_against_reference(layer, x, hx, None, nonzero(rng, out.shape),
                                  d_hx if kind == "lstm" else d_hx[0], what=config)


@pytest.mark.parametrize("config", LAYER_CONFIGS)
def test_layer_every_length_zero(rng, config):
    """Outputs exactly 0, final states exactly the initial ones, dx exactly 0, dhx0 exactly d_hx, every
    parameter gradient exactly 0 (nothing was read)."""
    kind, kw = LAYER_CONFIGS[config]
    layer = LAYERS[kind](3, 5, num_layers=2, dropout=0.3, dtype=np.float64, seed=0, **kw)
    T, B = 4, 3
    x = nonzero(rng, (B, T, 3) if layer.batch_first else (T, B, 3))
    hx = states_for(layer, rng, B)
    out, states = layer.forward(x, hx, lengths=np.zeros(B, int), train=True)
    assert out.shape[-1] == layer.num_directions * (layer.proj_size or 5) and not np.any(out)
    for s, h in zip(as_tuple(states), as_tuple(hx)):
        np.testing.assert_array_equal(s, h)
        assert not np.shares_memory(s, h)
    d_hx = tuple(nonzero(rng, s.shape) for s in as_tuple(states))
    dx, dhx0 = layer.backward(nonzero(rng, out.shape), d_hx if kind == "lstm" else d_hx[0])
    assert dx.shape == x.shape and not np.any(dx)
    for d0, d in zip(as_tuple(dhx0), d_hx):
        np.testing.assert_array_equal(d0, d)
    assert all(not np.any(g) for g in layer.grads.values())


@pytest.mark.parametrize("config", LAYER_CONFIGS)
@pytest.mark.parametrize("T, B", [(0, 3), (4, 0), (0, 0), (0, None)], ids=["T0", "B0", "T0B0", "T0_unbatched"])
def test_layer_empty(rng, config, T, B):
    """T = 0 or B = 0: empty outputs of the right shape and dtype, final states = initial states, dx empty,
    dhx0 = d_hx, parameter gradients zero."""
    kind, kw = LAYER_CONFIGS[config]
    layer = LAYERS[kind](3, 5, num_layers=2, dtype=np.float32, seed=0, **kw)
    D, K = layer.num_directions, layer.proj_size or 5
    shape = (T, 3) if B is None else ((B, T, 3) if layer.batch_first else (T, B, 3))
    x = np.zeros(shape, np.float32)
    hx = states_for(layer, rng, B)
    out, states = layer.forward(x, hx, train=True)
    assert out.dtype == np.float32 and out.shape == shape[:-1] + (D * K,)
    for s, h in zip(as_tuple(states), as_tuple(hx)):
        np.testing.assert_array_equal(s, h)
    d_hx = tuple(nonzero(rng, s.shape, np.float32) for s in as_tuple(states))
    dx, dhx0 = layer.backward(np.zeros(out.shape, np.float32), d_hx if kind == "lstm" else d_hx[0])
    assert dx.shape == x.shape and dx.dtype == np.float32
    for d0, d in zip(as_tuple(dhx0), d_hx):
        np.testing.assert_array_equal(d0, d)
    assert all(not np.any(g) for g in layer.grads.values())
    assert layer(x)[0].shape == out.shape


@pytest.mark.parametrize("kind", CELLS)
def test_cell_batch_of_zero(kind):
    cell = CELLS[kind](3, 4, dtype=np.float64, seed=0)
    new = cell.forward(np.zeros((0, 3)), train=True)
    assert all(s.shape == (0, 4) for s in as_tuple(new))
    dx, dhx = cell.backward(tuple(np.zeros((0, 4)) for _ in as_tuple(new)) if kind == "lstm" else np.zeros((0, 4)))
    assert dx.shape == (0, 3) and all(not np.any(g) for g in cell.grads.values())


# Long sequences: T = 10,000 (small B, I, H), float64, against the reference; errors must not accumulate.
@pytest.mark.parametrize("case", ["rnn_tanh", "lstm_proj_peep", "gru", "gru_reset_before"])
def test_ops_very_long_sequence_matches_the_reference(rng, case):
    T, B = 10_000, 2
    cell, a, kw = make_problem(rng, case, T, B, 2, 3, 2)
    lengths = np.array([T, T - 37])
    out, saved = forward(ops, cell, a, kw, lengths=lengths, reverse=True, training=True)
    ref, ref_saved = forward(reference, cell, a, kw, lengths=lengths, reverse=True, training=True)
    for name, o, r in zip(OUT_NAMES[cell], out, ref):
        assert np.all(np.isfinite(o))
        assert_close(o, r, np.float64, name)
    d = d_outputs_for(rng, out)
    grads = backward(ops, cell, d, saved, a)
    ref_grads = backward(reference, cell, d, ref_saved, a)
    for g, r in zip(grads, ref_grads):
        if g is not None:
            assert np.all(np.isfinite(g))
            # Parameter gradients sum 10,000 steps in a different order (one GEMM vs step by step).
            np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-11)


def test_layer_very_long_sequence_matches_the_reference(rng):
    layer = rnnfast.LSTM(2, 3, bidirectional=True, dtype=np.float64, seed=0)
    T = 10_000
    x = nonzero(rng, (T, 2, 2))
    out, (h, c) = layer.forward(x, lengths=[T, T - 5], train=True)
    ref_out, ref_states, tape = reference_layer_forward(layer, x, None, [T, T - 5])
    assert_close(out, ref_out, np.float64, "output")
    assert_close(h, ref_states[0], np.float64, "h_n")
    d_out = nonzero(rng, out.shape)
    dx, _ = layer.backward(d_out)
    ref_dx, _, ref_grads = reference_layer_backward(layer, tape, d_out, ())
    assert_close(dx, ref_dx, np.float64, "dx")
    for name, g in layer.grads.items():
        np.testing.assert_allclose(g, ref_grads[name], rtol=1e-9, atol=1e-11, err_msg=name)
