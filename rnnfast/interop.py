"""Convert the weights of rnnfast layers and cells to and from Keras and ONNX.

Every function takes an rnnfast module (RNN, LSTM, GRU or one of the cells, which count as one layer and one
direction). Per layer k and direction d rnnfast holds, in torch's layout, w_ih (G*H, I_k), w_hh (G*H, H),
b_ih, b_hh (G*H,), and for a peephole LSTM w_peep (3, H) with rows p_i, p_f, p_o.
Gate orders: rnnfast LSTM i,f,g,o; GRU r,z,n.  Keras LSTM i,f,c,o; GRU z,r,h.  ONNX LSTM i,o,f,c; GRU z,r,h.

Keras (keras.layers.SimpleRNN / LSTM / GRU and their cells)
    ``to_keras(module)`` -> one list per layer, each the list ``keras_layer.set_weights`` takes:
    [kernel (I, G*H), recurrent_kernel (H, G*H), bias] for one direction; for a bidirectional module the
    forward direction's three arrays then the reverse direction's, as keras.layers.Bidirectional orders them.
    bias: SimpleRNN, LSTM and GRU(reset_after=False) have one bias (G*H,) = b_ih + b_hh (Keras adds the two
    in the same place); GRU(reset_after=True) has (2, 3H): row 0 the input bias, row 1 the recurrent bias.
    No bias array when the module has bias=False (Keras use_bias=False).
    ``from_keras(module, weights)`` loads such lists (a flat list is accepted for a one-layer module); a
    single Keras bias goes to b_ih and b_hh is set to 0.
    Not representable in Keras: proj_size > 0, peepholes (ValueError). The Keras layer must use its default
    activations (tanh / sigmoid; SimpleRNN activation="relu" for nonlinearity="relu") and the same
    reset_after as the GRU.

ONNX (operators RNN, GRU, LSTM; layout 0)
    ``to_onnx(module)`` -> one dict per layer: {"op_type", "W" (D, G*H, I_k), "R" (D, G*H, H),
    "B" (D, 2*G*H) = [Wb, Rb] (absent without bias), "P" (D, 3*H) in ONNX's order i, o, f (peephole LSTM
    only), "attributes": keyword arguments for onnx.helper.make_node (hidden_size, direction, and
    activations for the RNN, linear_before_reset for the GRU)}.
    ``from_onnx(module, layers)`` loads such dicts (a single dict for a one-layer module); a missing B or P
    counts as zeros; attributes, when given, are checked against the module.
    ``export_onnx_model(module)`` -> onnx.ModelProto: one recurrent node per layer, chained through
    Squeeze (D = 1) or Transpose + Reshape (D = 2), states sliced from / concatenated into (D*L, B, .);
    Transpose at both ends when batch_first. Graph inputs "x" and optionally "h0" (+ "c0"), "lengths"
    (int32 (B,), ONNX sequence_lens, same semantics as rnnfast's lengths for lengths >= 1); outputs
    "output", "h_n" (+ "c_n"). Batched input only; no dropout (inference graph).
    ``from_onnx_model(model)`` -> a new rnnfast module built from the recurrent nodes of a model (in graph
    order, as export_onnx_model chains them), reading W, R, B, P from the initializers.
    Not representable in ONNX: proj_size > 0 (ValueError). Not read from ONNX: direction "reverse" alone,
    clip, input_forget=1, non-default activations (other than the RNN's Tanh/Relu) (ValueError).
"""
import numpy as np

from . import layers as _layers
from ._onnx_models import IR_VERSION, ONNX_GATE_ORDER, ONNX_OP, OPSET

__all__ = ["to_keras", "from_keras", "to_onnx", "from_onnx", "export_onnx_model", "from_onnx_model"]

# Position k of the Keras gate list holds rnnfast's gate KERAS_GATE_ORDER[kind][k].
KERAS_GATE_ORDER = {"rnn": (0,), "lstm": (0, 1, 2, 3), "gru": (1, 0, 2)}
# ONNX's P rows (i, o, f) taken from rnnfast's w_peep rows (p_i, p_f, p_o).
ONNX_PEEP_ORDER = (0, 2, 1)
_ONNX_ACT = {"tanh": "Tanh", "relu": "Relu"}


# ----------------------------------------------------------------------------------------------------------
# module layout

def _check_module(module):
    if not isinstance(module, _layers._Module):
        raise TypeError(f"module: expected an rnnfast RNN, LSTM, GRU or cell, got {type(module).__name__}")


def _structure(module):
    """(num_layers, num_directions, [[unit dict per direction] per layer]) for a layer or a cell."""
    _check_module(module)
    L = getattr(module, "num_layers", 1)
    D = getattr(module, "num_directions", 1)
    return L, D, [module._units[k * D:(k + 1) * D] for k in range(L)]


def _reorder(a, order, inverse=False):
    """Permute the gate blocks of a along axis 0 (len(order) blocks)."""
    order = np.argsort(order) if inverse else order
    blocks = np.split(np.asarray(a), len(order), axis=0)
    return np.concatenate([blocks[k] for k in order], axis=0)


def _get(module, unit, role):
    name = unit.get(role)
    return None if name is None else module.params[name]


def _gh(module):
    return _layers._GATES[module._kind] * module.hidden_size


def _as_float(name, value):
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def _expect_shape(name, arr, shape):
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}")


def _load(module, new_params):
    """Load a complete name -> array dict through load_state_dict (shapes and dtype handled there)."""
    state = module.state_dict()
    state.update(new_params)
    module.load_state_dict(state)
    return module


def _put_bias(module, unit, new, b_ih, b_hh, name):
    """Store the two biases of a unit; a module without bias accepts only zeros."""
    if "b_ih" in unit:
        new[unit["b_ih"]] = b_ih
        new[unit["b_hh"]] = b_hh
    elif np.any(b_ih != 0) or np.any(b_hh != 0):
        raise ValueError(f"{name}: the module has bias=False but the given bias is not zero")


# ----------------------------------------------------------------------------------------------------------
# Keras

def _check_keras_representable(module):
    if getattr(module, "proj_size", 0):
        raise ValueError(f"proj_size: Keras has no LSTM projection; expected proj_size=0, got {module.proj_size}")
    if getattr(module, "peephole", False):
        raise ValueError("peephole: Keras has no peephole LSTM; expected peephole=False, got True")


def to_keras(module):
    """Weights of ``module`` in Keras layout: one list per layer (see the module docstring)."""
    _check_module(module)
    _check_keras_representable(module)
    kind, order = module._kind, KERAS_GATE_ORDER[module._kind]
    L, D, units = _structure(module)
    result = []
    for layer_units in units:
        weights = []
        for unit in layer_units:
            weights.append(_reorder(_get(module, unit, "w_ih"), order).T.copy())
            weights.append(_reorder(_get(module, unit, "w_hh"), order).T.copy())
            if "b_ih" in unit:
                b_ih = _reorder(_get(module, unit, "b_ih"), order)
                b_hh = _reorder(_get(module, unit, "b_hh"), order)
                if kind == "gru" and module.reset_after:
                    weights.append(np.stack([b_ih, b_hh]))
                else:
                    weights.append(b_ih + b_hh)
        result.append(weights)
    return result


def from_keras(module, weights):
    """Load Keras weights (as ``to_keras`` returns them) into ``module``; returns the module."""
    _check_module(module)
    _check_keras_representable(module)
    kind, order = module._kind, KERAS_GATE_ORDER[module._kind]
    L, D, units = _structure(module)
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights: expected a list (one list of arrays per layer), got {type(weights).__name__}")
    if L == 1 and weights and not isinstance(weights[0], (list, tuple)):
        weights = [weights]
    if len(weights) != L:
        raise ValueError(f"weights: expected {L} lists (one per layer), got {len(weights)}")
    H, gh = module.hidden_size, _gh(module)
    per_direction = 3 if module.bias else 2
    new = {}
    for k, (layer_units, layer_weights) in enumerate(zip(units, weights)):
        if len(layer_weights) != D * per_direction:
            raise ValueError(f"weights[{k}]: expected {D * per_direction} arrays (kernel, recurrent_kernel"
                             f"{', bias' if module.bias else ''} for each of {D} direction(s)), "
                             f"got {len(layer_weights)}")
        for d, unit in enumerate(layer_units):
            kernel, recurrent, *bias = [_as_float(f"weights[{k}][{d * per_direction + j}]", w)
                                        for j, w in enumerate(layer_weights[d * per_direction:
                                                                            (d + 1) * per_direction])]
            input_size = module.params[unit["w_ih"]].shape[1]
            _expect_shape(f"weights[{k}][{d * per_direction}] (kernel)", kernel, (input_size, gh))
            _expect_shape(f"weights[{k}][{d * per_direction + 1}] (recurrent_kernel)", recurrent, (H, gh))
            new[unit["w_ih"]] = _reorder(kernel.T, order, inverse=True)
            new[unit["w_hh"]] = _reorder(recurrent.T, order, inverse=True)
            if bias:
                (b,) = bias
                name = f"weights[{k}][{d * per_direction + 2}] (bias)"
                if kind == "gru" and module.reset_after:
                    _expect_shape(name, b, (2, gh))
                    b_ih, b_hh = b[0], b[1]
                else:
                    _expect_shape(name, b, (gh,))
                    b_ih, b_hh = b, np.zeros_like(b)
                _put_bias(module, unit, new, _reorder(b_ih, order, inverse=True),
                          _reorder(b_hh, order, inverse=True), name)
    return _load(module, new)


# ----------------------------------------------------------------------------------------------------------
# ONNX

def _onnx_attributes(module, D):
    attributes = {"hidden_size": module.hidden_size, "direction": "bidirectional" if D == 2 else "forward"}
    if module._kind == "rnn":
        attributes["activations"] = [_ONNX_ACT[module.nonlinearity]] * D
    if module._kind == "gru":
        attributes["linear_before_reset"] = int(module.reset_after)
    return attributes


def to_onnx(module):
    """Weights of ``module`` as ONNX operator inputs and attributes: one dict per layer (see the module
    docstring)."""
    _check_module(module)
    if getattr(module, "proj_size", 0):
        raise ValueError(f"proj_size: ONNX's LSTM has no projection; expected proj_size=0, got {module.proj_size}")
    kind, order = module._kind, ONNX_GATE_ORDER[module._kind]
    L, D, units = _structure(module)
    result = []
    for layer_units in units:
        entry = {"op_type": ONNX_OP[kind],
                 "W": np.stack([_reorder(_get(module, u, "w_ih"), order) for u in layer_units]),
                 "R": np.stack([_reorder(_get(module, u, "w_hh"), order) for u in layer_units])}
        if module.bias:
            entry["B"] = np.stack([np.concatenate([_reorder(_get(module, u, "b_ih"), order),
                                                   _reorder(_get(module, u, "b_hh"), order)])
                                   for u in layer_units])
        if getattr(module, "peephole", False):
            entry["P"] = np.stack([_get(module, u, "w_peep")[list(ONNX_PEEP_ORDER)].reshape(-1)
                                   for u in layer_units])
        entry["attributes"] = _onnx_attributes(module, D)
        result.append(entry)
    return result


def _check_onnx_attributes(module, D, given, name):
    """Compare ONNX attributes given for a layer with what the module computes."""
    expected = _onnx_attributes(module, D)
    given = dict(given)
    for key in ("clip",):
        if given.get(key) is not None:
            raise ValueError(f"{name}: attribute {key!r} is not supported by rnnfast, got {given[key]!r}")
    if given.get("input_forget", 0):
        raise ValueError(f"{name}: attribute 'input_forget' must be 0, got {given['input_forget']!r}")
    if given.get("layout", 0):
        raise ValueError(f"{name}: attribute 'layout' must be 0, got {given['layout']!r}")
    defaults = {"direction": "forward", "linear_before_reset": 0,
                "activations": {"rnn": ["Tanh"] * D, "gru": ["Sigmoid", "Tanh"] * D,
                                "lstm": ["Sigmoid", "Tanh", "Tanh"] * D}[module._kind]}
    for key, value in expected.items():
        actual = given.get(key, defaults.get(key))
        if isinstance(actual, bytes):
            actual = actual.decode()
        if isinstance(actual, (list, tuple)):
            actual = [a.decode() if isinstance(a, bytes) else a for a in actual]
            actual = [a[:1].upper() + a[1:].lower() for a in actual]
        if actual is None or actual != value:
            raise ValueError(f"{name}: attribute {key!r} expected {value!r} for this module, got {actual!r}")
    if module._kind != "rnn" and "activations" in given:
        acts = [a.decode() if isinstance(a, bytes) else a for a in given["activations"]]
        if [a.lower() for a in acts] != [a.lower() for a in defaults["activations"]]:
            raise ValueError(f"{name}: attribute 'activations' must be the default "
                             f"{defaults['activations']}, got {acts}")


def from_onnx(module, layers):
    """Load ONNX operator weights (as ``to_onnx`` returns them) into ``module``; returns the module."""
    _check_module(module)
    if getattr(module, "proj_size", 0):
        raise ValueError(f"proj_size: ONNX's LSTM has no projection; expected proj_size=0, got {module.proj_size}")
    kind, order = module._kind, ONNX_GATE_ORDER[module._kind]
    L, D, units = _structure(module)
    if isinstance(layers, dict):
        layers = [layers]
    if not isinstance(layers, (list, tuple)):
        raise TypeError(f"layers: expected a list of dicts (one per layer), got {type(layers).__name__}")
    if len(layers) != L:
        raise ValueError(f"layers: expected {L} dicts (one per layer), got {len(layers)}")
    H, gh = module.hidden_size, _gh(module)
    new = {}
    for k, (layer_units, entry) in enumerate(zip(units, layers)):
        name = f"layers[{k}]"
        if not isinstance(entry, dict):
            raise TypeError(f"{name}: expected a dict with keys 'W', 'R' and optionally 'B', 'P', "
                            f"'attributes', got {type(entry).__name__}")
        if "op_type" in entry and entry["op_type"] != ONNX_OP[kind]:
            raise ValueError(f"{name}['op_type']: expected {ONNX_OP[kind]!r}, got {entry['op_type']!r}")
        if "attributes" in entry:
            _check_onnx_attributes(module, D, entry["attributes"], f"{name}['attributes']")
        missing = [key for key in ("W", "R") if key not in entry]
        if missing:
            raise KeyError(f"{name}: missing {missing}; expected keys 'W', 'R' and optionally 'B', 'P'")
        input_size = module.params[layer_units[0]["w_ih"]].shape[1]
        W = _as_float(f"{name}['W']", entry["W"])
        R = _as_float(f"{name}['R']", entry["R"])
        _expect_shape(f"{name}['W']", W, (D, gh, input_size))
        _expect_shape(f"{name}['R']", R, (D, gh, H))
        if entry.get("B") is not None:
            B = _as_float(f"{name}['B']", entry["B"])
            _expect_shape(f"{name}['B']", B, (D, 2 * gh))
        else:
            B = np.zeros((D, 2 * gh))
        P = entry.get("P")
        if P is not None:
            P = _as_float(f"{name}['P']", P)
            _expect_shape(f"{name}['P']", P, (D, 3 * H))
            if kind != "lstm":
                raise ValueError(f"{name}['P']: only an LSTM has peepholes, got P for a {ONNX_OP[kind]}")
            if not module.peephole and np.any(P != 0):
                raise ValueError(f"{name}['P']: the module has no peepholes but P is not zero "
                                 "(build the LSTM with peephole=True)")
        for d, unit in enumerate(layer_units):
            new[unit["w_ih"]] = _reorder(W[d], order, inverse=True)
            new[unit["w_hh"]] = _reorder(R[d], order, inverse=True)
            _put_bias(module, unit, new, _reorder(B[d, :gh], order, inverse=True),
                      _reorder(B[d, gh:], order, inverse=True), f"{name}['B']")
            if "w_peep" in unit:
                p_onnx = np.zeros((3, H)) if P is None else P[d].reshape(3, H)
                new[unit["w_peep"]] = p_onnx[list(np.argsort(ONNX_PEEP_ORDER))]
    return _load(module, new)


def export_onnx_model(module, *, initial_state=True, lengths=False, opset=OPSET):
    """An onnx.ModelProto that computes ``module`` (inference) with ONNX operators.

    Graph inputs: "x" (T, B, I) ((B, T, I) when batch_first); with ``initial_state`` "h0" (D*L, B, H) and
    for an LSTM "c0" (D*L, B, H); with ``lengths`` "lengths" int32 (B,) (values >= 1). Outputs: "output"
    (T, B, D*H) ((B, T, D*H) when batch_first), "h_n" (D*L, B, H), and for an LSTM "c_n". T and B are
    symbolic. Weights become initializers in the module's dtype (ONNX Runtime's CPU RNN, GRU and LSTM
    kernels run float32 only).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not isinstance(module, _layers._RecurrentLayer):
        raise TypeError(f"module: expected an rnnfast RNN, LSTM or GRU layer, got {type(module).__name__} "
                        "(for a cell, take its weights with to_onnx)")
    layer_entries = to_onnx(module)
    kind = module._kind
    L, D, _ = _structure(module)
    H, I = module.hidden_size, module.input_size
    batch_first = getattr(module, "batch_first", False)
    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}[module.dtype]
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    inputs = [helper.make_tensor_value_info("x", elem, ["B", "T", I] if batch_first else ["T", "B", I])]
    state_names = ["h0", "c0"] if kind == "lstm" else ["h0"]
    if initial_state:
        inputs += [helper.make_tensor_value_info(s, elem, [D * L, "B", H]) for s in state_names]
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"]))
    x_name = "x"
    if batch_first:
        nodes.append(helper.make_node("Transpose", ["x"], ["x_tbi"], perm=[1, 0, 2]))
        x_name = "x_tbi"
    if D == 1:
        const("squeeze_axes", np.array([1], np.int64))
    else:
        const("merge_shape", np.array([0, 0, -1], np.int64))
    state_outs = {s: [] for s in state_names}
    for k, entry in enumerate(layer_entries):
        node_inputs = [x_name, const(f"W_l{k}", entry["W"]), const(f"R_l{k}", entry["R"]),
                       const(f"B_l{k}", entry["B"]) if "B" in entry else "",
                       "lengths" if lengths else ""]
        for s in state_names:
            if not initial_state:
                node_inputs.append("")
            elif L == 1:
                node_inputs.append(s)
            else:
                sliced = f"{s}_l{k}"
                nodes.append(helper.make_node(
                    "Slice", [s, const(f"{sliced}_start", np.array([k * D], np.int64)),
                              const(f"{sliced}_end", np.array([(k + 1) * D], np.int64)),
                              const(f"{sliced}_axes", np.array([0], np.int64))], [sliced]))
                node_inputs.append(sliced)
        if "P" in entry:
            node_inputs += [""] * (7 - len(node_inputs)) + [const(f"P_l{k}", entry["P"])]
        while node_inputs and node_inputs[-1] == "":
            node_inputs.pop()
        y_name = f"Y_l{k}"
        outs = [y_name] + [f"{s.replace('0', '_n')}_l{k}" for s in state_names]
        nodes.append(helper.make_node(entry["op_type"], node_inputs, outs, name=f"{entry['op_type']}_l{k}",
                                      **entry["attributes"]))
        for s, o in zip(state_names, outs[1:]):
            state_outs[s].append(o)
        # Y (T, D, B, H) -> (T, B, D*H), the next layer's input.
        merged = f"out_l{k}"
        if D == 1:
            nodes.append(helper.make_node("Squeeze", [y_name, "squeeze_axes"], [merged]))
        else:
            nodes.append(helper.make_node("Transpose", [y_name], [f"{y_name}_tbdh"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"{y_name}_tbdh", "merge_shape"], [merged]))
        x_name = merged
    if batch_first:
        nodes.append(helper.make_node("Transpose", [x_name], ["output"], perm=[1, 0, 2]))
    else:
        nodes.append(helper.make_node("Identity", [x_name], ["output"]))
    outputs = [helper.make_tensor_value_info(
        "output", elem, ["B", "T", D * H] if batch_first else ["T", "B", D * H])]
    for s in state_names:
        out_name = s.replace("0", "_n")
        nodes.append(helper.make_node("Concat", state_outs[s], [out_name], axis=0))
        outputs.append(helper.make_tensor_value_info(out_name, elem, [D * L, "B", H]))
    graph = helper.make_graph(nodes, f"rnnfast_{kind}", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="rnnfast")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def from_onnx_model(model, *, dtype=None, batch_first=False, seed=None):
    """A new rnnfast RNN, LSTM or GRU holding the weights of the recurrent nodes of ``model``.

    The nodes (all RNN, all GRU or all LSTM; same hidden_size and direction) become layers 0, 1, ... in
    graph order; their W, R, B, P must be initializers. The wiring between the nodes is not read: it is
    taken to be the chain ``export_onnx_model`` builds. dtype defaults to W's dtype.
    """
    import onnx
    from onnx import helper, numpy_helper

    if isinstance(model, (str, bytes)) or hasattr(model, "read"):
        model = onnx.load(model)
    graph = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    op_to_kind = {op: kind for kind, op in ONNX_OP.items()}
    nodes = [n for n in graph.node if n.op_type in op_to_kind]
    if not nodes:
        raise ValueError("model: no RNN, GRU or LSTM node in the graph")
    ops_found = sorted({n.op_type for n in nodes})
    if len(ops_found) != 1:
        raise ValueError(f"model: expected recurrent nodes of one kind, got {ops_found}")
    kind = op_to_kind[ops_found[0]]
    entries = []
    for k, node in enumerate(nodes):
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        padded = list(node.input) + [""] * (8 - len(node.input))
        tensors = {}
        for key, position in (("W", 1), ("R", 2), ("B", 3), ("P", 7)):
            name = padded[position]
            if name == "":
                continue
            if name not in init:
                raise ValueError(f"model: node {node.name or k!r} input {key} ({name!r}) is not an initializer")
            tensors[key] = init[name]
        if kind != "lstm" and padded[7]:
            raise ValueError(f"model: node {node.name or k!r} has an unexpected 8th input")
        entries.append(dict(tensors, op_type=node.op_type, attributes=attributes))
    first = entries[0]["attributes"]
    direction = first.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"model: direction {direction!r} is not supported (expected 'forward' or "
                         "'bidirectional')")
    W0 = entries[0]["W"]
    hidden_size = int(first.get("hidden_size", entries[0]["R"].shape[-1]))
    kwargs = dict(num_layers=len(nodes), bias=any("B" in e for e in entries), batch_first=batch_first,
                  bidirectional=direction == "bidirectional",
                  dtype=W0.dtype if dtype is None else dtype, seed=seed)
    if kind == "rnn":
        acts = first.get("activations", [b"Tanh"])
        act = (acts[0].decode() if isinstance(acts[0], bytes) else acts[0]).lower()
        if act not in _ONNX_ACT:
            raise ValueError(f"model: RNN activation {act!r} is not supported (expected Tanh or Relu)")
        module = _layers.RNN(W0.shape[2], hidden_size, nonlinearity=act, **kwargs)
    elif kind == "gru":
        module = _layers.GRU(W0.shape[2], hidden_size, reset_after=bool(first.get("linear_before_reset", 0)),
                             **kwargs)
    else:
        module = _layers.LSTM(W0.shape[2], hidden_size, peephole=any("P" in e for e in entries), **kwargs)
    return from_onnx(module, entries)
