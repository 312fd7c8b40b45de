"""rnnfast.interop: every conversion checked numerically.

ONNX: graphs built from converted rnnfast weights run in ONNX Runtime and must give rnnfast's outputs (this
also checks peephole LSTMs and GRU reset_after=False against an independent implementation); ONNX weights
loaded with from_onnx must give the outputs ONNX Runtime computes from them; round trips are exact.
ONNX Runtime runs RNN/GRU/LSTM in float32 only, so those comparisons are in float32.
Keras: against a numpy transcription of Keras' formulas in Keras' layout (always), and against real Keras
layers (KERAS_BACKEND=torch) where keras is installed.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import rnnfast
import rnnfast.interop as interop
from conftest import require_peer
from tolerances import TORCH_ATOL, TORCH_RTOL, assert_close

LAYERS = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def nonzero(rng, shape, scale=1.0, dtype=np.float64):
    """Uniform in +-[0.1, 1] * scale: random and never zero."""
    return (scale * rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)


def as_tuple(s):
    return tuple(s) if isinstance(s, tuple) else (s,)


def randomize(layer, rng, scale=0.8):
    """Give every parameter random non-zero values (larger than the init, to exercise the gates)."""
    layer.load_state_dict({n: nonzero(rng, p.shape, scale) for n, p in layer.state_dict().items()})
    return layer


def test_interop_is_reachable_from_the_package():
    # In a fresh interpreter: both spellings load the submodule lazily.
    code = ("import rnnfast; assert callable(rnnfast.interop.to_onnx); "
            "from rnnfast import interop; assert interop is rnnfast.interop")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(rnnfast.__file__))))
    assert result.returncode == 0, result.stderr[-2000:]


# ------------------------------------------------------------------------------------------------- ONNX

def _session(model):
    ort = require_peer("onnxruntime")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


EXPORT_CASES = [
    ("rnn", dict()),
    ("rnn", dict(nonlinearity="relu", num_layers=2, bidirectional=True, batch_first=True)),
    ("rnn", dict(bias=False, num_layers=3)),
    ("lstm", dict()),
    ("lstm", dict(num_layers=3, bidirectional=True)),
    ("lstm", dict(peephole=True)),
    ("lstm", dict(peephole=True, num_layers=2, bidirectional=True)),
    ("lstm", dict(peephole=True, bias=False, bidirectional=True, batch_first=True)),
    ("gru", dict()),
    ("gru", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("gru", dict(reset_after=False)),
    ("gru", dict(reset_after=False, num_layers=2, bidirectional=True)),
    ("gru", dict(reset_after=False, bias=False, num_layers=2, batch_first=True)),
]


def _export_id(case):
    kind, kw = case
    return "-".join([kind] + [k if v is True else f"{k}={v}" for k, v in kw.items()])


@pytest.mark.parametrize("kind, kw", EXPORT_CASES, ids=[_export_id(c) for c in EXPORT_CASES])
@pytest.mark.parametrize("mode", ["states+lengths", "plain"])
def test_exported_model_matches_onnxruntime(kind, kw, mode, rng):
    I, H, T, B = 3, 5, 6, 4
    layer = randomize(LAYERS[kind](I, H, dtype=np.float32, seed=0, **kw), rng)
    with_extras = mode == "states+lengths"
    model = interop.export_onnx_model(layer, initial_state=with_extras, lengths=with_extras)
    x = nonzero(rng, (B, T, I) if layer.batch_first else (T, B, I), dtype=np.float32)
    feeds = {"x": x}
    hx, lengths = None, None
    if with_extras:
        shape = (layer.num_directions * layer.num_layers, B, H)
        hx = tuple(nonzero(rng, shape, dtype=np.float32) for _ in range(2 if kind == "lstm" else 1))
        feeds.update(zip(("h0", "c0"), hx))
        lengths = np.array([6, 2, 1, 5], np.int32)
        feeds["lengths"] = lengths
        hx = hx if kind == "lstm" else hx[0]
    got = _session(model).run(None, feeds)
    out, states = layer(x, hx, lengths=lengths)
    expected = (out,) + as_tuple(states)
    assert [o.shape for o in got] == [e.shape for e in expected]
    for g, e in zip(got, expected):
        assert_close(g, e, np.float32)


def _onnx_node_model(kind, entry, I, direction_count, with_lengths):
    """A one-node ONNX model written directly from ONNX tensors (independent of export_onnx_model)."""
    from onnx import TensorProto, helper, numpy_helper
    H = entry["attributes"]["hidden_size"]
    names = {"W": "W", "R": "R", "B": "B", "P": "P"}
    inits = [numpy_helper.from_array(entry[k].astype(np.float32), names[k]) for k in names if k in entry]
    inputs = ["X", "W", "R", "B" if "B" in entry else "", "seq" if with_lengths else "", "h0"]
    inputs += ["c0", "P" if "P" in entry else ""] if kind == "lstm" else []
    outputs = ["Y", "Y_h"] + (["Y_c"] if kind == "lstm" else [])
    node = helper.make_node(entry["op_type"], inputs, outputs, **entry["attributes"])
    f32 = TensorProto.FLOAT
    vi = [helper.make_tensor_value_info("X", f32, ["T", "B", I]),
          helper.make_tensor_value_info("h0", f32, [direction_count, "B", H])]
    if kind == "lstm":
        vi.append(helper.make_tensor_value_info("c0", f32, [direction_count, "B", H]))
    if with_lengths:
        vi.append(helper.make_tensor_value_info("seq", TensorProto.INT32, ["B"]))
    outs = [helper.make_tensor_value_info(o, f32, None) for o in outputs]
    graph = helper.make_graph([node], "node", vi, outs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


FROM_ONNX_CASES = [
    ("rnn", dict(activations=["Relu", "Relu"]), True, True),
    ("rnn", {}, False, False),
    ("lstm", {}, True, False),
    ("lstm", dict(P=True), True, True),
    ("lstm", dict(P=True), False, False),
    ("gru", dict(linear_before_reset=1), True, True),
    ("gru", dict(linear_before_reset=0), True, True),
    ("gru", dict(linear_before_reset=0), False, False),
]


@pytest.mark.parametrize("kind, extra, bidirectional, with_B", FROM_ONNX_CASES)
def test_from_onnx_matches_onnxruntime(kind, extra, bidirectional, with_B, rng):
    I, H, T, B = 3, 4, 5, 3
    D = 2 if bidirectional else 1
    G = GATES[kind]
    entry = {"op_type": {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}[kind],
             "W": nonzero(rng, (D, G * H, I), 0.8), "R": nonzero(rng, (D, G * H, H), 0.8),
             "attributes": {"hidden_size": H, "direction": "bidirectional" if bidirectional else "forward"}}
    if with_B:
        entry["B"] = nonzero(rng, (D, 2 * G * H), 0.5)
    if extra.get("P"):
        entry["P"] = nonzero(rng, (D, 3 * H), 0.8)
    if "activations" in extra:
        entry["attributes"]["activations"] = extra["activations"][:D]
    if "linear_before_reset" in extra:
        entry["attributes"]["linear_before_reset"] = extra["linear_before_reset"]
    kw = {}
    if kind == "rnn" and "activations" in extra:
        kw["nonlinearity"] = "relu"
    if kind == "gru":
        kw["reset_after"] = bool(extra["linear_before_reset"])
    if extra.get("P"):
        kw["peephole"] = True
    layer = LAYERS[kind](I, H, bidirectional=bidirectional, bias=with_B, dtype=np.float32, **kw)
    interop.from_onnx(layer, entry)

    x = nonzero(rng, (T, B, I), dtype=np.float32)
    states = [nonzero(rng, (D, B, H), dtype=np.float32) for _ in range(2 if kind == "lstm" else 1)]
    lengths = np.array([5, 1, 3], np.int32)
    feeds = {"X": x, "h0": states[0], "seq": lengths}
    if kind == "lstm":
        feeds["c0"] = states[1]
    y, *ort_states = _session(_onnx_node_model(kind, entry, I, D, True)).run(None, feeds)
    out, got_states = layer(x, tuple(states) if kind == "lstm" else states[0], lengths=lengths)
    assert_close(out, y.transpose(0, 2, 1, 3).reshape(T, B, D * H), np.float32)
    for g, e in zip(as_tuple(got_states), ort_states):
        assert_close(g, e, np.float32)


@pytest.mark.parametrize("kind, kw", EXPORT_CASES, ids=[_export_id(c) for c in EXPORT_CASES])
def test_onnx_round_trips_are_exact(kind, kw, rng):
    layer = randomize(LAYERS[kind](3, 4, dtype=np.float64, seed=0, **kw), rng)
    other = LAYERS[kind](3, 4, dtype=np.float64, seed=1, **kw)
    interop.from_onnx(other, interop.to_onnx(layer))
    for name, p in layer.state_dict().items():
        np.testing.assert_array_equal(other.params[name], p, err_msg=name)
    rebuilt = interop.from_onnx_model(interop.export_onnx_model(layer), batch_first=layer.batch_first)
    assert repr(rebuilt) == repr(layer)
    for name, p in layer.state_dict().items():
        np.testing.assert_array_equal(rebuilt.params[name], p, err_msg=name)


def test_to_onnx_layout():
    layer = rnnfast.LSTM(2, 3, bidirectional=True, peephole=True, seed=0)
    (entry,) = interop.to_onnx(layer)
    assert entry["op_type"] == "LSTM"
    assert entry["W"].shape == (2, 12, 2) and entry["R"].shape == (2, 12, 3)
    assert entry["B"].shape == (2, 24) and entry["P"].shape == (2, 9)
    assert entry["attributes"] == {"hidden_size": 3, "direction": "bidirectional"}
    w = layer.weight_ih_l0_reverse  # rnnfast i, f, g, o -> ONNX i, o, f, c
    np.testing.assert_array_equal(entry["W"][1], np.concatenate([w[0:3], w[9:12], w[3:6], w[6:9]]))
    p = layer.weight_peep_l0  # rows p_i, p_f, p_o -> ONNX i, o, f
    np.testing.assert_array_equal(entry["P"][0], np.concatenate([p[0], p[2], p[1]]))
    (gru,) = interop.to_onnx(rnnfast.GRU(2, 3, bias=False, reset_after=False, seed=0))
    assert "B" not in gru and gru["attributes"]["linear_before_reset"] == 0
    (rnn,) = interop.to_onnx(rnnfast.RNN(2, 3, nonlinearity="relu", seed=0))
    assert rnn["attributes"]["activations"] == ["Relu"]
    assert len(interop.to_onnx(rnnfast.GRUCell(2, 3, seed=0))) == 1


def test_onnx_conversion_errors(rng):
    with pytest.raises(ValueError, match=r"proj_size: ONNX's LSTM has no projection.*got 2"):
        interop.to_onnx(rnnfast.LSTM(3, 4, proj_size=2))
    with pytest.raises(TypeError, match=r"module: expected an rnnfast RNN, LSTM, GRU or cell, got dict"):
        interop.to_onnx({})
    with pytest.raises(TypeError, match=r"module: expected an rnnfast RNN, LSTM or GRU layer, got GRUCell"):
        interop.export_onnx_model(rnnfast.GRUCell(3, 4))
    gru = rnnfast.GRU(3, 4, num_layers=2)
    entries = interop.to_onnx(rnnfast.GRU(3, 4, num_layers=2, reset_after=False))
    with pytest.raises(ValueError, match=r"layers\[0\]\['attributes'\]: attribute 'linear_before_reset' "
                                         r"expected 1 for this module, got 0"):
        interop.from_onnx(gru, entries)
    entries = interop.to_onnx(gru)
    with pytest.raises(ValueError, match=r"layers: expected 2 dicts \(one per layer\), got 1"):
        interop.from_onnx(gru, entries[:1])
    bad = [dict(entries[0], R=np.zeros((1, 12, 5))), entries[1]]
    with pytest.raises(ValueError, match=r"layers\[0\]\['R'\]: expected shape \(1, 12, 4\), got \(1, 12, 5\)"):
        interop.from_onnx(gru, bad)
    with pytest.raises(KeyError, match=r"layers\[1\]: missing \['R'\]"):
        interop.from_onnx(gru, [entries[0], {"W": entries[1]["W"]}])
    lstm = interop.to_onnx(rnnfast.LSTM(3, 4, peephole=True, seed=0))
    with pytest.raises(ValueError, match=r"P'\]: the module has no peepholes but P is not zero"):
        interop.from_onnx(rnnfast.LSTM(3, 4), lstm)
    with pytest.raises(ValueError, match=r"bias=False but the given bias is not zero"):
        interop.from_onnx(rnnfast.LSTM(3, 4, bias=False, peephole=True), lstm)
    with pytest.raises(ValueError, match=r"\['op_type'\]: expected 'GRU', got 'LSTM'"):
        interop.from_onnx(rnnfast.GRU(3, 4), lstm)
    with pytest.raises(ValueError, match=r"attribute 'clip' is not supported"):
        interop.from_onnx(rnnfast.LSTM(3, 4, peephole=True),
                          [dict(lstm[0], attributes=dict(lstm[0]["attributes"], clip=3.0))])
    # Zeros are representable: a zero P loads into an LSTM without peepholes, a missing B means zeros.
    no_peep = dict(lstm[0], P=np.zeros((1, 12)))
    del no_peep["B"]
    plain = interop.from_onnx(rnnfast.LSTM(3, 4), no_peep)
    assert np.all(plain.bias_ih_l0 == 0) and np.all(plain.bias_hh_l0 == 0)


# ------------------------------------------------------------------------------------------------- Keras

def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def keras_formulas(kind, weights, x_bti, *, reset_after=True, activation="tanh"):
    """One direction of Keras' SimpleRNN / LSTM / GRU, transcribed from Keras' cells, in Keras' layout:
    kernel (I, G*H), recurrent_kernel (H, G*H), bias; gates LSTM i,f,c,o, GRU z,r,h. Returns
    (y (B, T, H), [h_T] or [h_T, c_T])."""
    kernel, rk = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else None
    B, T, _ = x_bti.shape
    H = rk.shape[0]
    h, c = np.zeros((B, H)), np.zeros((B, H))
    act = np.tanh if activation == "tanh" else (lambda a: np.maximum(a, 0))
    ys = []
    for t in range(T):
        xt = x_bti[:, t]
        if kind == "rnn":
            h = act(xt @ kernel + (0 if bias is None else bias) + h @ rk)
        elif kind == "lstm":
            z = xt @ kernel + h @ rk + (0 if bias is None else bias)
            i, f, cc, o = np.split(z, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(cc)
            h = _sigmoid(o) * np.tanh(c)
        elif reset_after:
            b_in, b_rec = (0, 0) if bias is None else (bias[0], bias[1])
            x_z, x_r, x_h = np.split(xt @ kernel + b_in, 3, axis=1)
            r_z, r_r, r_h = np.split(h @ rk + b_rec, 3, axis=1)
            z, r = _sigmoid(x_z + r_z), _sigmoid(x_r + r_r)
            h = z * h + (1 - z) * np.tanh(x_h + r * r_h)
        else:
            x_z, x_r, x_h = np.split(xt @ kernel + (0 if bias is None else bias), 3, axis=1)
            z = _sigmoid(x_z + h @ rk[:, :H])
            r = _sigmoid(x_r + h @ rk[:, H:2 * H])
            h = z * h + (1 - z) * np.tanh(x_h + (r * h) @ rk[:, 2 * H:])
        ys.append(h)
    return np.stack(ys, axis=1), ([h, c] if kind == "lstm" else [h])


def keras_formulas_layer(kind, weights, x_bti, bidirectional, **kw):
    """keras_formulas for a layer or a keras.layers.Bidirectional (merge_mode="concat") around it; returns
    (y, states in Keras' return_state order)."""
    if not bidirectional:
        return keras_formulas(kind, weights, x_bti, **kw)
    half = len(weights) // 2
    y_f, s_f = keras_formulas(kind, weights[:half], x_bti, **kw)
    y_b, s_b = keras_formulas(kind, weights[half:], x_bti[:, ::-1], **kw)
    return np.concatenate([y_f, y_b[:, ::-1]], axis=-1), s_f + s_b


KERAS_CASES = [("rnn", dict()), ("rnn", dict(nonlinearity="relu", bias=False)), ("lstm", dict()),
               ("lstm", dict(bias=False)), ("gru", dict()), ("gru", dict(reset_after=False)),
               ("gru", dict(bias=False)), ("gru", dict(reset_after=False, bias=False))]


def _formula_options(layer):
    return dict(reset_after=getattr(layer, "reset_after", True), activation=getattr(layer, "nonlinearity", "tanh"))


def _rnnfast_states_in_keras_order(layer, states):
    """rnnfast final states (D*L, B, H) of a one-layer layer -> Keras return_state order."""
    states = as_tuple(states)
    return [s[d] for d in range(layer.num_directions) for s in states]


@pytest.mark.parametrize("kind, kw", KERAS_CASES, ids=[_export_id(c) for c in KERAS_CASES])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_keras_conversions_against_keras_formulas(kind, kw, bidirectional, rng):
    I, H, T, B = 3, 4, 5, 2
    layer = randomize(LAYERS[kind](I, H, bidirectional=bidirectional, batch_first=True, dtype=np.float64,
                                   seed=0, **kw), rng)
    x = nonzero(rng, (B, T, I))
    (weights,) = interop.to_keras(layer)
    y, states = keras_formulas_layer(kind, weights, x, bidirectional, **_formula_options(layer))
    out, got = layer(x)
    np.testing.assert_allclose(out, y, rtol=1e-12, atol=1e-14)
    for g, e in zip(_rnnfast_states_in_keras_order(layer, got), states):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)
    # from_keras: random Keras-layout weights give what Keras' formulas give.
    keras_weights = [nonzero(rng, w.shape, 0.8) for w in weights]
    loaded = interop.from_keras(LAYERS[kind](I, H, bidirectional=bidirectional, batch_first=True,
                                             dtype=np.float64, **kw), keras_weights)
    y, _ = keras_formulas_layer(kind, keras_weights, x, bidirectional, **_formula_options(layer))
    np.testing.assert_allclose(loaded(x)[0], y, rtol=1e-12, atol=1e-14)
    # Round trip: Keras weights survive exactly (a single Keras bias lands in bias_ih).
    for a, b in zip(interop.to_keras(loaded)[0], keras_weights):
        np.testing.assert_allclose(a, b, rtol=1e-15, atol=0)


def test_keras_layout_and_multi_layer(rng):
    layer = randomize(rnnfast.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=np.float64,
                                  seed=0), rng)
    weights = interop.to_keras(layer)
    assert [[w.shape for w in ws] for ws in weights] == [[(3, 12), (4, 12), (2, 12)] * 2,
                                                         [(8, 12), (4, 12), (2, 12)] * 2]
    w = layer.weight_hh_l1  # rnnfast r, z, n -> Keras z, r, h
    np.testing.assert_array_equal(weights[1][1], np.concatenate([w[4:8], w[0:4], w[8:12]]).T)
    x = nonzero(rng, (2, 5, 3))
    h = x
    for ws in weights:  # stacked Keras layers
        h, _ = keras_formulas_layer("gru", ws, h, True)
    np.testing.assert_allclose(layer(x)[0], h, rtol=1e-12, atol=1e-14)
    lstm = randomize(rnnfast.LSTM(3, 4, dtype=np.float64, seed=0), rng)
    (kernel, _, bias), = interop.to_keras(lstm)
    np.testing.assert_array_equal(kernel, lstm.weight_ih_l0.T)  # same gate order i, f, c(g), o
    np.testing.assert_array_equal(bias, lstm.bias_ih_l0 + lstm.bias_hh_l0)
    cell = rnnfast.LSTMCell(3, 4, dtype=np.float64, seed=0)
    cell.load_state_dict({n[:-3]: v for n, v in lstm.state_dict().items()})
    for a, b in zip(interop.to_keras(cell)[0], interop.to_keras(lstm)[0]):
        np.testing.assert_array_equal(a, b)


def test_keras_conversion_errors():
    with pytest.raises(ValueError, match=r"proj_size: Keras has no LSTM projection; expected proj_size=0, got 1"):
        interop.to_keras(rnnfast.LSTM(3, 4, proj_size=1))
    with pytest.raises(ValueError, match=r"peephole: Keras has no peephole LSTM"):
        interop.to_keras(rnnfast.LSTM(3, 4, peephole=True))
    gru = rnnfast.GRU(3, 4)
    weights = interop.to_keras(gru)
    with pytest.raises(ValueError, match=r"weights\[0\]: expected 3 arrays"):
        interop.from_keras(gru, [weights[0][:2]])
    with pytest.raises(ValueError, match=r"weights\[0\]\[2\] \(bias\): expected shape \(2, 12\), got \(12,\)"):
        interop.from_keras(gru, [weights[0][:2] + [np.zeros(12)]])
    with pytest.raises(ValueError, match=r"weights\[0\]\[0\] \(kernel\): expected shape \(3, 12\), got \(12, 3\)"):
        interop.from_keras(gru, [[weights[0][0].T] + weights[0][1:]])
    with pytest.raises(ValueError, match=r"weights: expected 1 lists \(one per layer\), got 2"):
        interop.from_keras(gru, weights * 2)
    interop.from_keras(gru, weights[0])  # a flat list is fine for a one-layer module


def _keras():
    """keras on the torch backend (skip / fail as any peer when absent)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    keras = require_peer("keras")
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was imported with backend {keras.backend.backend()!r}, not torch")
    return keras


def _keras_layer(keras, layer):
    kw = dict(return_sequences=True, return_state=True, use_bias=layer.bias, dtype="float64")
    H = layer.hidden_size
    if layer._kind == "lstm":
        k = keras.layers.LSTM(H, **kw)
    elif layer._kind == "gru":
        k = keras.layers.GRU(H, reset_after=layer.reset_after, **kw)
    else:
        k = keras.layers.SimpleRNN(H, activation=layer.nonlinearity, **kw)
    return keras.layers.Bidirectional(k, dtype="float64") if layer.bidirectional else k


def _keras_run(k, x):
    return [np.asarray(r.detach().cpu().numpy()) for r in k(x)]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' own numpy 2 notices
@pytest.mark.parametrize("kind, kw", KERAS_CASES, ids=[_export_id(c) for c in KERAS_CASES])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_keras_conversions_against_keras(kind, kw, bidirectional, rng):
    keras = _keras()
    I, H, T, B = 3, 4, 5, 2
    layer = randomize(LAYERS[kind](I, H, bidirectional=bidirectional, batch_first=True, dtype=np.float64,
                                   seed=0, **kw), rng)
    x = nonzero(rng, (B, T, I))
    # Keras runs LSTM and GRU(reset_after=True) in float64, but its type promotion turns float64 into
    # float32 in the ops SimpleRNN and GRU(reset_after=False) use (backends other than TensorFlow).
    exact = kind == "lstm" or (kind == "gru" and layer.reset_after)
    close = dict(rtol=TORCH_RTOL, atol=TORCH_ATOL) if exact else dict(rtol=1e-5, atol=1e-6)

    k = _keras_layer(keras, layer)
    k.build((None, T, I))
    k.set_weights(interop.to_keras(layer)[0])
    y, *states = _keras_run(k, x)
    out, got = layer(x)
    np.testing.assert_allclose(out, y, **close)
    for g, e in zip(_rnnfast_states_in_keras_order(layer, got), states):
        np.testing.assert_allclose(g, e, **close)

    k2 = _keras_layer(keras, layer)  # Keras' own initialisation -> rnnfast
    k2.build((None, T, I))
    k2.set_weights([nonzero(rng, w.shape, 0.8) for w in k2.get_weights()])
    loaded = interop.from_keras(LAYERS[kind](I, H, bidirectional=bidirectional, batch_first=True,
                                             dtype=np.float64, **kw), k2.get_weights())
    np.testing.assert_allclose(loaded(x)[0], _keras_run(k2, x)[0], **close)
    # The numpy transcription used by the Keras-free tests is Keras.
    y_f, _ = keras_formulas_layer(kind, k2.get_weights(), x, bidirectional, **_formula_options(layer))
    np.testing.assert_allclose(y_f, _keras_run(k2, x)[0], **close)
