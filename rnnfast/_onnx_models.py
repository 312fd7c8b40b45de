"""ONNX graphs with one RNN / GRU / LSTM node, built from weights in rnnfast's (torch's) layout.

Used by the benchmark harness to run ONNX Runtime on exactly the weights rnnfast runs on, and by the tests to
check that conversion numerically. Importing this module needs only numpy; `build_model` needs `onnx`,
`make_session` needs `onnxruntime` (both imported when called).

Layouts (one layer, one direction, D = 1):
  rnnfast      w_ih (G*H, I), w_hh (G*H, H), b_ih (G*H,), b_hh (G*H,); gates LSTM i,f,g,o; GRU r,z,n
  ONNX         W (D, G*H, I), R (D, G*H, H), B (D, 2*G*H) = [Wb, Rb]; gates LSTM i,o,f,c; GRU z,r,h
Graph inputs:  X (T, B, I), initial_h (1, B, H), and initial_c (1, B, H) for the LSTM; T and B symbolic.
Graph outputs: Y (T, 1, B, H), Y_h (1, B, H), and Y_c (1, B, H) for the LSTM.
"""
import numpy as np

# Position k of the ONNX gate list holds rnnfast's gate ONNX_GATE_ORDER[cell][k].
ONNX_GATE_ORDER = {
    "rnn": (0,),
    "gru": (1, 0, 2),        # z, r, n(=h)
    "lstm": (0, 3, 1, 2),    # i, o, f, g(=c)
}
ONNX_OP = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}
# ONNX opset 17 pairs with IR version 8, which every ONNX Runtime since 1.11 reads.
OPSET = 17
IR_VERSION = 8


def to_onnx_gates(w_g, cell):
    """Reorder the gate blocks of w_g (G*H, ...) or (G*H,) from rnnfast's order to ONNX's."""
    order = ONNX_GATE_ORDER[cell]
    blocks = np.split(np.asarray(w_g), len(order), axis=0)
    return np.concatenate([blocks[k] for k in order], axis=0)


def build_model(cell, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", reset_after=True):
    """An onnx.ModelProto computing one layer of `cell` ("rnn", "gru", "lstm") with these weights.

    The weights become initializers in the dtype of w_ih (float32 or float64). `nonlinearity` applies to the
    RNN ("tanh" or "relu"), `reset_after` to the GRU (ONNX's linear_before_reset).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if cell not in ONNX_OP:
        raise ValueError(f"cell must be one of {sorted(ONNX_OP)}, got {cell!r}")
    w_ih = np.asarray(w_ih)
    dtype = w_ih.dtype
    elem_type = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}.get(dtype)
    if elem_type is None:
        raise TypeError(f"w_ih: expected float32 or float64, got {dtype}")
    gh, input_size = w_ih.shape
    hidden_size = np.asarray(w_hh).shape[1]
    zeros = np.zeros(gh, dtype)
    b_ih = zeros if b_ih is None else b_ih
    b_hh = zeros if b_hh is None else b_hh

    initializers = [
        numpy_helper.from_array(to_onnx_gates(w_ih, cell)[None].astype(dtype), "W"),
        numpy_helper.from_array(to_onnx_gates(w_hh, cell)[None].astype(dtype), "R"),
        numpy_helper.from_array(
            np.concatenate([to_onnx_gates(b_ih, cell), to_onnx_gates(b_hh, cell)])[None].astype(dtype), "B"),
    ]
    state_names = ["initial_h", "initial_c"] if cell == "lstm" else ["initial_h"]
    output_names = ["Y", "Y_h", "Y_c"] if cell == "lstm" else ["Y", "Y_h"]
    attributes = {"hidden_size": hidden_size}
    if cell == "rnn":
        attributes["activations"] = [{"tanh": "Tanh", "relu": "Relu"}[nonlinearity]]
    if cell == "gru":
        attributes["linear_before_reset"] = int(bool(reset_after))
    # Inputs by position: X, W, R, B, sequence_lens (absent), initial_h, initial_c.
    node = helper.make_node(ONNX_OP[cell], ["X", "W", "R", "B", "", *state_names], output_names, **attributes)

    inputs = [helper.make_tensor_value_info("X", elem_type, ["T", "B", input_size])]
    inputs += [helper.make_tensor_value_info(name, elem_type, [1, "B", hidden_size]) for name in state_names]
    outputs = [helper.make_tensor_value_info("Y", elem_type, ["T", 1, "B", hidden_size])]
    outputs += [helper.make_tensor_value_info(name, elem_type, [1, "B", hidden_size]) for name in output_names[1:]]
    graph = helper.make_graph([node], f"rnnfast_{cell}", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rnnfast")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def make_session(model, n_threads=None):
    """An onnxruntime.InferenceSession on the CPU for `model`; n_threads sets intra-op threads (inter-op: 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.inter_op_num_threads = 1
    if n_threads is not None:
        options.intra_op_num_threads = int(n_threads)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def state_feeds(cell, x, h0, c0=None):
    """The feed dict for a session of `build_model(cell, ...)`: x (T, B, I), h0 and c0 (B, H)."""
    feeds = {"X": x, "initial_h": h0[None]}
    if cell == "lstm":
        feeds["initial_c"] = c0[None]
    return feeds
