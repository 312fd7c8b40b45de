"""Torch-like recurrent layers and cells built on rnnfast.ops.

    RNN, LSTM, GRU            stacked, optionally bidirectional sequence layers
    RNNCell, LSTMCell, GRUCell  one time step (a T = 1 call to the same kernels)

Notation as in the rest of rnnfast: T time steps, B batch, I input size, H hidden size, P projection size
(LSTM ``proj_size``), G gates per cell (RNN 1, GRU 3, LSTM 4), D directions, L layers; ``H_out`` is P for an
LSTM with projection and H otherwise.

The layers do no arithmetic of their own beyond reshapes, transposes, concatenating the two directions,
summing the two directions' input gradients and applying dropout masks; every recurrence runs in
rnnfast.ops, one layer and one direction per call. Parameters live in ``module.params`` (numpy arrays,
named as torch names them, also readable as attributes: ``lstm.weight_ih_l0``); gradients are added into
``module.grads`` by ``backward``.
"""
import collections
import numbers
import warnings

import numpy as np

from . import ops

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "clip_grad_norm"]

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# Kernel-level names of the parameters of one layer and direction, in torch's order.
_ROLES = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_peep")

LoadResult = collections.namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


# ----------------------------------------------------------------------------------------------------------
# argument checks (each error names the argument, the expected and the actual value)

def _check_size(name, value, minimum=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def _check_bool(name, value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name}: expected a bool, got {value!r} ({type(value).__name__})")


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        expected = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from exc
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


def _check_dropout(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"dropout: expected a float in [0, 1), got {value!r} ({type(value).__name__})")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"dropout: expected a float in [0, 1), got {value}")
    return float(value)


def _asarray(name, value, what="an array"):
    """numpy.asarray(value), with numpy's complaint about ragged or odd input turned into one naming `name`."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} that numpy cannot convert "
                        f"({e})") from None


def _as_input(name, value, dtype):
    """numpy.asarray(value), checked to be a floating array of the module's dtype."""
    arr = _asarray(name, value, f"a {np.dtype(dtype)} array")
    if arr.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the module's dtype), got {arr.dtype}")
    return arr


def _check_lengths(lengths, T, B):
    """lengths -> int64 array (B,) with values in [0, T], or None."""
    if lengths is None:
        return None
    arr = _asarray("lengths", lengths, f"an integer array of shape ({B},)")
    if arr.size == 0 and arr.dtype.kind == "f":
        arr = arr.astype(np.int64)  # [] is an empty integer list, not a float array
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected an integer array of shape ({B},), got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > T):
        raise ValueError(f"lengths: expected values in [0, T={T}], got min {arr.min()} and max {arr.max()}")
    return arr.astype(np.int64)


def _check_shape(name, arr, expected):
    if arr.shape != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {arr.shape}")


# ----------------------------------------------------------------------------------------------------------
# shared machinery: parameters, gradients, state_dict, kernel calls for one layer and direction

class _Module:
    """Parameters, gradients and state_dict shared by the layers and the cells.

    A subclass sets ``_kind`` ("rnn", "lstm", "gru"), the options the kernels need (``nonlinearity``,
    ``reset_after``) and calls ``_init_params`` with its list of units: one unit per layer and direction,
    a dict kernel role ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr", "w_peep") -> (parameter name, shape).
    """

    _kind = None
    nonlinearity = "tanh"
    reset_after = True

    def _init_params(self, units, hidden_size, dtype, seed):
        self.dtype = _check_dtype(dtype)
        if isinstance(seed, np.random.SeedSequence):
            seed_seq = seed
        else:
            if seed is not None and (isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral)):
                raise TypeError(f"seed: expected None or a non-negative integer, got {type(seed).__name__} {seed!r}")
            if seed is not None and seed < 0:
                raise ValueError(f"seed: expected None or a non-negative integer, got {seed}")
            seed_seq = np.random.SeedSequence(None if seed is None else int(seed))
        # The init generator is numpy.random.default_rng(seed) itself; dropout draws from a spawned child so
        # that it never shifts the weights a given seed produces.
        init_rng = np.random.default_rng(seed_seq)
        self._dropout_rng = np.random.default_rng(seed_seq.spawn(1)[0])
        self._units = [{role: name for role, (name, _) in unit.items()} for unit in units]
        bound = 1.0 / np.sqrt(hidden_size)
        self.params = {}
        for unit in units:
            for role in _ROLES:
                if role in unit:
                    name, shape = unit[role]
                    self.params[name] = init_rng.uniform(-bound, bound, size=shape).astype(self.dtype)
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._tape = None

    def __getattr__(self, name):
        # Only reached when normal lookup fails: expose parameters as attributes, as torch does.
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def zero_grad(self):
        """Set every entry of ``grads`` to zero (in place)."""
        for g in self.grads.values():
            g[...] = 0

    def named_parameters(self):
        """(name, array) pairs of the live parameters, in torch's order."""
        return list(self.params.items())

    def state_dict(self):
        """dict name -> copy of the parameter (numpy arrays, torch's names and order)."""
        return {name: p.copy() for name, p in self.params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters in from a mapping name -> array-like (numpy arrays, torch tensors, ...).

        Names must match exactly when ``strict`` (KeyError listing the missing and unexpected ones);
        shapes always (ValueError). Values are cast to the module's dtype. Returns
        ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, collections.abc.Mapping):
            raise TypeError(f"state_dict: expected a mapping name -> array, got {type(state_dict).__name__}")
        missing = [name for name in self.params if name not in state_dict]
        unexpected = [name for name in state_dict if name not in self.params]
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict: missing keys {missing}, unexpected keys {unexpected} "
                           f"(expected exactly {list(self.params)})")
        new_values = {}
        for name, param in self.params.items():
            if name not in state_dict:
                continue
            value = _asarray(f"state_dict[{name!r}]", state_dict[name], "a real numeric array")
            if value.dtype.kind not in "biuf":
                raise TypeError(f"state_dict[{name!r}]: expected a real numeric array, got dtype {value.dtype}")
            if value.shape != param.shape:
                raise ValueError(f"state_dict[{name!r}]: expected shape {param.shape}, got {value.shape}")
            new_values[name] = value
        # Checked everything before writing anything: a failed load leaves the module unchanged.
        for name, value in new_values.items():
            self.params[name][...] = value
        return LoadResult(missing, unexpected)

    # ---- one layer, one direction ----

    def _unit_params(self, unit):
        return {role: self.params[name] for role, name in unit.items()}

    def _unit_forward(self, unit, x, h0, c0, lengths, reverse, training):
        """Run one unit over x (T, B, I_k). Returns (y (T, B, H_out), h_n, c_n or None, saved)."""
        p = self._unit_params(unit)
        common = dict(lengths=lengths, reverse=reverse, training=training)
        if self._kind == "lstm":
            extra = {"w_peep": p["w_peep"]} if "w_peep" in p else {}
            return ops.lstm_forward(x, h0, c0, p["w_ih"], p["w_hh"], p.get("b_ih"), p.get("b_hh"),
                                    w_hr=p.get("w_hr"), **extra, **common)
        if self._kind == "gru":
            y, h_n, saved = ops.gru_forward(x, h0, p["w_ih"], p["w_hh"], p.get("b_ih"), p.get("b_hh"),
                                            reset_after=self.reset_after, **common)
        else:
            y, h_n, saved = ops.rnn_forward(x, h0, p["w_ih"], p["w_hh"], p.get("b_ih"), p.get("b_hh"),
                                            nonlinearity=self.nonlinearity, **common)
        return y, h_n, None, saved

    def _unit_backward(self, unit, dy, dh_n, dc_n, saved):
        """Backward of one unit; adds its parameter gradients into ``grads``. Returns (dx, dh0, dc0)."""
        if self._kind == "lstm":
            dx, dh0, dc0, *d_params = ops.lstm_backward(dy, dh_n, dc_n, saved)
        else:
            backward = ops.gru_backward if self._kind == "gru" else ops.rnn_backward
            dx, dh0, *d_params = backward(dy, dh_n, saved)
            dc0 = None
        for role, grad in zip(_ROLES, d_params):
            if grad is not None and role in unit:
                self.grads[unit[role]] += grad
        return dx, dh0, dc0

    def _pending_tape(self):
        """What the last training forward kept; backward drops it (``_tape = None``) once its arguments
        are checked, so a call with bad arguments can be retried."""
        if self._tape is None:
            raise RuntimeError(f"{type(self).__name__}.backward: no training forward to differentiate; "
                               "call forward(..., train=True) first (each backward consumes one forward)")
        return self._tape


def _unit_spec(kind, input_size, hidden_size, bias, proj_size, peephole, suffix):
    """dict role -> (name, shape) for one layer and direction (``suffix`` e.g. "_l0_reverse")."""
    gh = _GATES[kind] * hidden_size
    h_out = proj_size or hidden_size
    spec = {"w_ih": ("weight_ih" + suffix, (gh, input_size)),
            "w_hh": ("weight_hh" + suffix, (gh, h_out))}
    if bias:
        spec["b_ih"] = ("bias_ih" + suffix, (gh,))
        spec["b_hh"] = ("bias_hh" + suffix, (gh,))
    if proj_size:
        spec["w_hr"] = ("weight_hr" + suffix, (proj_size, hidden_size))
    if peephole:
        spec["w_peep"] = ("weight_peep" + suffix, (3, hidden_size))
    return spec


# ----------------------------------------------------------------------------------------------------------
# sequence layers

class _RecurrentLayer(_Module):
    """Stacked, optionally bidirectional recurrent layer (see RNN, LSTM, GRU for the constructors)."""

    def __init__(self, kind, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                 proj_size=0, peephole=False, *, dtype, seed):
        self._kind = kind
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.num_layers = _check_size("num_layers", num_layers)
        self.bias = _check_bool("bias", bias)
        self.batch_first = _check_bool("batch_first", batch_first)
        self.dropout = _check_dropout(dropout)
        self.bidirectional = _check_bool("bidirectional", bidirectional)
        self.proj_size = _check_size("proj_size", proj_size, minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"proj_size: expected 0 <= proj_size < hidden_size = {self.hidden_size}, "
                             f"got {self.proj_size}")
        self.peephole = _check_bool("peephole", peephole)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"dropout={self.dropout} has no effect with num_layers=1: rnnfast applies dropout "
                          "to the outputs of every layer but the last", UserWarning, stacklevel=3)
        self.num_directions = 2 if self.bidirectional else 1
        self._h_out = self.proj_size or self.hidden_size
        units = []
        for k in range(self.num_layers):
            layer_in = self.input_size if k == 0 else self.num_directions * self._h_out
            for d in range(self.num_directions):
                suffix = f"_l{k}" + ("_reverse" if d else "")
                units.append(_unit_spec(kind, layer_in, self.hidden_size, self.bias, self.proj_size,
                                        self.peephole, suffix))
        self._init_params(units, self.hidden_size, dtype, seed)

    def __repr__(self):
        args = [str(self.input_size), str(self.hidden_size)]
        for name, default in (("num_layers", 1), ("nonlinearity", "tanh"), ("bias", True),
                              ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                              ("proj_size", 0), ("peephole", False), ("reset_after", True)):
            value = getattr(self, name, default)
            if value != default:
                args.append(f"{name}={value!r}")
        if self.dtype != np.float32:
            args.append(f"dtype={self.dtype}")
        return f"{type(self).__name__}({', '.join(args)})"

    @property
    def dropout_masks(self):
        """The dropout masks of the pending training forward, for inspection: one (T, B, D*H_out) array per
        layer but the last, with entries 0 and 1/(1-dropout) (None where no dropout was applied); [] when
        no training forward is pending."""
        return [] if self._tape is None else list(self._tape["masks"][:-1])

    def __call__(self, x, hx=None, *, lengths=None):
        """Inference: same as ``forward(x, hx, lengths=lengths, train=False)``."""
        return self.forward(x, hx, lengths=lengths, train=False)

    # ---- input / state layout ----

    def _state_shapes(self, batch):
        """Expected shapes of h0 and c0 (c0 None unless LSTM); ``batch`` None for unbatched input."""
        lead = (self.num_directions * self.num_layers,) + (() if batch is None else (batch,))
        h_shape = lead + (self._h_out,)
        return h_shape, (lead + (self.hidden_size,) if self._kind == "lstm" else None)

    def _split_hx(self, hx, batch):
        """hx -> (h0, c0) as (D*L, B, H_out) / (D*L, B, H) arrays or None; shapes checked."""
        h_shape, c_shape = self._state_shapes(batch)
        if self._kind == "lstm":
            if hx is None:
                return None, None
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx: expected None or a pair (h_0, c_0) of arrays with shapes {h_shape} and "
                                f"{c_shape}, got {type(hx).__name__}")
            pairs = (("hx[0]", hx[0], h_shape), ("hx[1]", hx[1], c_shape))
        else:
            if hx is None:
                return None, None
            pairs = (("hx", hx, h_shape),)
        states = []
        for name, value, shape in pairs:
            arr = _as_input(name, value, self.dtype)
            _check_shape(name, arr, shape)
            states.append(arr if batch is not None else arr[:, None, :])
        return states[0], (states[1] if len(states) > 1 else None)

    def _to_time_major(self, x):
        """x as given -> (x (T, B, I), batched)."""
        x = _as_input("x", x, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"x: expected a 3-D (batched) or 2-D (unbatched) array, got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected size {self.input_size} (input_size) on the last axis, "
                             f"got shape {x.shape}")
        if x.ndim == 2:
            return x[:, None, :], False
        return (x.transpose(1, 0, 2) if self.batch_first else x), True

    def _from_time_major(self, y, batched):
        if not batched:
            return y[:, 0, :]
        return y.transpose(1, 0, 2) if self.batch_first else y

    @staticmethod
    def _state_out(h, batched):
        return h if batched else h[:, 0, :]

    # ---- forward / backward ----

    def forward(self, x, hx=None, *, lengths=None, train=False):
        """Run the layer.

        x: (T, B, I), or (B, T, I) when batch_first, or unbatched (T, I).
        hx: RNN/GRU h_0 (D*L, B, H_out); LSTM (h_0 (D*L, B, H_out), c_0 (D*L, B, H)); (D*L, H_out) /
            (D*L, H) for unbatched input; None = zeros.
        lengths: optional int array (B,) with 0 <= lengths[b] <= T: sequence b is read for its first
            lengths[b] steps only, as a PackedSequence (outputs past the length are 0).
        train: keep what backward needs and apply dropout between layers.

        Returns (output, h_n) for RNN/GRU and (output, (h_n, c_n)) for LSTM: output (T, B, D*H_out)
        (batch_first: (B, T, D*H_out); unbatched: (T, D*H_out)), h_n like h_0, c_n like c_0.
        """
        train = _check_bool("train", train)
        x_tbi, batched = self._to_time_major(x)
        batch = x_tbi.shape[1] if batched else None
        h0, c0 = self._split_hx(hx, batch)
        if lengths is not None and not batched:
            lengths = np.atleast_1d(_asarray("lengths", lengths, "an integer"))  # one sequence: a scalar or (1,)
        lengths = _check_lengths(lengths, x_tbi.shape[0], x_tbi.shape[1])
        D = self.num_directions
        layer_in = x_tbi
        h_n, c_n, saved, masks = [], [], [], []
        for k in range(self.num_layers):
            outs = []
            for d in range(D):
                idx = k * D + d
                y, h, c, s = self._unit_forward(self._units[idx], layer_in,
                                                None if h0 is None else h0[idx],
                                                None if c0 is None else c0[idx],
                                                lengths, reverse=bool(d), training=train)
                outs.append(y)
                h_n.append(h)
                c_n.append(c)
                saved.append(s)
            layer_out = outs[0] if D == 1 else np.concatenate(outs, axis=-1)
            if train and self.dropout > 0 and k < self.num_layers - 1:
                keep = self._dropout_rng.random(layer_out.shape) >= self.dropout
                mask = keep.astype(self.dtype) / self.dtype.type(1.0 - self.dropout)
                layer_out = layer_out * mask
                masks.append(mask)
            else:
                masks.append(None)
            layer_in = layer_out
        output = self._from_time_major(layer_in, batched)
        h_n = self._state_out(np.stack(h_n), batched)
        if train:
            self._tape = {"saved": saved, "masks": masks, "batched": batched, "batch": x_tbi.shape[1],
                          "out_shape": output.shape}
        if self._kind == "lstm":
            return output, (h_n, self._state_out(np.stack(c_n), batched))
        return output, h_n

    def backward(self, d_output, d_hx=None):
        """Backward of the last ``forward(..., train=True)``.

        d_output: gradient of the loss w.r.t. output, shaped as output (None = zeros).
        d_hx: RNN/GRU d_h_n shaped as h_n; LSTM (d_h_n, d_c_n); None (or None entries) = zeros.
        Returns (dx, dhx0): dx shaped as x; dhx0 = d_h_0 (RNN/GRU) or (d_h_0, d_c_0) (LSTM), shaped as
        the states. Parameter gradients are ADDED into ``grads``.
        """
        tape = self._pending_tape()
        batched, B = tape["batched"], tape["batch"]
        D, L = self.num_directions, self.num_layers
        if d_output is None:
            dy = None
        else:
            dy = _as_input("d_output", d_output, self.dtype)
            _check_shape("d_output", dy, tape["out_shape"])
            dy = dy[:, None, :] if not batched else (dy.transpose(1, 0, 2) if self.batch_first else dy)
        dh_n, dc_n = self._split_d_state(d_hx, batched, B)
        self._tape = None
        dh0, dc0 = [None] * (D * L), [None] * (D * L)
        for k in reversed(range(L)):
            if dy is not None and tape["masks"][k] is not None:
                dy = dy * tape["masks"][k]
            dx = None
            for d in range(D):
                idx = k * D + d
                dy_d = None if dy is None else dy[..., d * self._h_out:(d + 1) * self._h_out]
                dx_d, dh0[idx], dc0[idx] = self._unit_backward(
                    self._units[idx], dy_d,
                    None if dh_n is None else dh_n[idx], None if dc_n is None else dc_n[idx],
                    tape["saved"][idx])
                dx = dx_d if dx is None else dx + dx_d
            dy = dx
        dx = self._from_time_major(dy, batched)
        dh0 = self._state_out(np.stack(dh0), batched)
        if self._kind == "lstm":
            return dx, (dh0, self._state_out(np.stack(dc0), batched))
        return dx, dh0

    def _split_d_state(self, d_hx, batched, batch):
        if self._kind == "lstm":
            if d_hx is None:
                return None, None
            if not isinstance(d_hx, (tuple, list)) or len(d_hx) != 2:
                raise TypeError(f"d_hx: expected None or a pair (d_h_n, d_c_n), got {type(d_hx).__name__}")
            items = (("d_hx[0]", d_hx[0]), ("d_hx[1]", d_hx[1]))
        else:
            items = (("d_hx", d_hx),)
        shapes = self._state_shapes(batch if batched else None)
        out = []
        for (name, value), shape in zip(items, shapes):
            if value is None:
                out.append(None)
                continue
            arr = _as_input(name, value, self.dtype)
            _check_shape(name, arr, shape)
            out.append(arr if batched else arr[:, None, :])
        return out[0], (out[1] if len(out) > 1 else None)


class RNN(_RecurrentLayer):
    """Elman RNN, h' = act(W_ih x + b_ih + W_hh h + b_hh) with act tanh or relu (torch.nn.RNN semantics).

    Parameters per layer k (suffix _reverse for the second direction): weight_ih_l{k} (H, I_k),
    weight_hh_l{k} (H, H), bias_ih_l{k} (H,), bias_hh_l{k} (H,); I_0 = input_size, I_k = D*H.
    See ``forward`` for the call.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, dtype=np.float32, seed=None):
        self.nonlinearity = _check_choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        super().__init__("rnn", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed)


class LSTM(_RecurrentLayer):
    """LSTM with torch.nn.LSTM semantics (gate order i, f, g, o), optional projection and peepholes.

    Parameters per layer k (suffix _reverse for the second direction): weight_ih_l{k} (4H, I_k),
    weight_hh_l{k} (4H, H_out), bias_ih_l{k} (4H,), bias_hh_l{k} (4H,), weight_hr_l{k} (P, H) when
    proj_size > 0, weight_peep_l{k} (3, H) when peephole (rows p_i, p_f, p_o: i and f see c_{t-1},
    o sees c_t, as ONNX's LSTM); I_0 = input_size, I_k = D*H_out. See ``forward`` for the call.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, *, peephole=False, dtype=np.float32, seed=None):
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, peephole, dtype=dtype, seed=seed)


class GRU(_RecurrentLayer):
    """GRU with torch.nn.GRU semantics (gate order r, z, n).

    ``reset_after=False`` computes n = tanh(W_in x + b_in + W_hn (r * h) + b_hn) instead (the Keras
    reset_after=False / ONNX linear_before_reset=0 form). Parameters per layer k (suffix _reverse for the
    second direction): weight_ih_l{k} (3H, I_k), weight_hh_l{k} (3H, H), bias_ih_l{k} (3H,),
    bias_hh_l{k} (3H,). See ``forward`` for the call.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, reset_after=True, dtype=np.float32, seed=None):
        self.reset_after = _check_bool("reset_after", reset_after)
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype=dtype, seed=seed)


# ----------------------------------------------------------------------------------------------------------
# cells: one time step, as a T = 1 call to the same kernels

class _Cell(_Module):
    """One step of a recurrent cell (see RNNCell, LSTMCell, GRUCell for the constructors)."""

    def __init__(self, kind, input_size, hidden_size, bias, peephole=False, *, dtype, seed):
        self._kind = kind
        self.input_size = _check_size("input_size", input_size)
        self.hidden_size = _check_size("hidden_size", hidden_size)
        self.bias = _check_bool("bias", bias)
        self.peephole = _check_bool("peephole", peephole)
        self._init_params([_unit_spec(kind, self.input_size, self.hidden_size, self.bias, 0, self.peephole,
                                      "")], self.hidden_size, dtype, seed)

    def __repr__(self):
        extra = "" if self.bias else ", bias=False"
        if self.nonlinearity != "tanh":
            extra += f", nonlinearity={self.nonlinearity!r}"
        return f"{type(self).__name__}({self.input_size}, {self.hidden_size}{extra})"

    def __call__(self, x, hx=None):
        """Inference: same as ``forward(x, hx, train=False)``."""
        return self.forward(x, hx, train=False)

    def _states(self, name, value, batch):
        """Cell state(s) -> list of (B, H) arrays or None; shapes checked."""
        shape = (self.hidden_size,) if batch is None else (batch, self.hidden_size)
        if self._kind == "lstm":
            if value is None:
                return [None, None]
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise TypeError(f"{name}: expected None or a pair of arrays of shape {shape}, "
                                f"got {type(value).__name__}")
            items = [(f"{name}[0]", value[0]), (f"{name}[1]", value[1])]
        else:
            items = [(name, value)]
        out = []
        for item_name, item in items:
            if item is None:
                out.append(None)
                continue
            arr = _as_input(item_name, item, self.dtype)
            _check_shape(item_name, arr, shape)
            out.append(arr if batch is not None else arr[None, :])
        return out

    def _result(self, states, batched):
        states = [s if batched else s[0] for s in states]
        return tuple(states) if self._kind == "lstm" else states[0]

    def forward(self, x, hx=None, *, train=False):
        """One step.

        x: (B, I) or unbatched (I,). hx: h (B, H) for RNNCell/GRUCell, (h, c) for LSTMCell ((H,) each when
        unbatched); None = zeros. train: keep what backward needs.
        Returns h' (B, H), or (h', c') for LSTMCell.
        """
        train = _check_bool("train", train)
        x = _as_input("x", x, self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected shape (B, {self.input_size}) or ({self.input_size},), "
                             f"got {x.shape}")
        batched = x.ndim == 2
        states = self._states("hx", hx, x.shape[0] if batched else None)
        x_tbi = x[None] if batched else x[None, None]
        h0, c0 = (states + [None])[:2]
        _, h, c, saved = self._unit_forward(self._units[0], x_tbi, h0, c0, None, reverse=False,
                                            training=train)
        if train:
            self._tape = {"saved": saved, "batch": x_tbi.shape[1], "batched": batched}
        return self._result([h] if c is None else [h, c], batched)

    def backward(self, d_output):
        """Backward of the last ``forward(..., train=True)``.

        d_output: gradient w.r.t. h' (RNNCell/GRUCell) or the pair (d_h', d_c') (LSTMCell), shaped as the
        output; None (or None entries) = zeros.
        Returns (dx, dhx): dx shaped as x, dhx = d_h or (d_h, d_c) shaped as hx. Parameter gradients are
        ADDED into ``grads``.
        """
        tape = self._pending_tape()
        batched = tape["batched"]
        d_states = self._states("d_output", d_output, tape["batch"] if batched else None)
        self._tape = None
        dh_n, dc_n = (d_states + [None])[:2]
        dx, dh0, dc0 = self._unit_backward(self._units[0], None, dh_n, dc_n, tape["saved"])
        dx = dx[0] if batched else dx[0, 0]
        return dx, self._result([dh0] if dc0 is None else [dh0, dc0], batched)


class RNNCell(_Cell):
    """One step of an Elman RNN (torch.nn.RNNCell): parameters weight_ih (H, I), weight_hh (H, H),
    bias_ih (H,), bias_hh (H,). See ``forward`` for the call."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", *, dtype=np.float32,
                 seed=None):
        self.nonlinearity = _check_choice("nonlinearity", nonlinearity, ("tanh", "relu"))
        super().__init__("rnn", input_size, hidden_size, bias, dtype=dtype, seed=seed)


class LSTMCell(_Cell):
    """One LSTM step (torch.nn.LSTMCell): parameters weight_ih (4H, I), weight_hh (4H, H), bias_ih (4H,),
    bias_hh (4H,), and weight_peep (3, H) when peephole. See ``forward`` for the call."""

    def __init__(self, input_size, hidden_size, bias=True, *, peephole=False, dtype=np.float32, seed=None):
        super().__init__("lstm", input_size, hidden_size, bias, peephole, dtype=dtype, seed=seed)


class GRUCell(_Cell):
    """One GRU step (torch.nn.GRUCell; reset_after=False as in GRU): parameters weight_ih (3H, I),
    weight_hh (3H, H), bias_ih (3H,), bias_hh (3H,). See ``forward`` for the call."""

    def __init__(self, input_size, hidden_size, bias=True, *, reset_after=True, dtype=np.float32, seed=None):
        self.reset_after = _check_bool("reset_after", reset_after)
        super().__init__("gru", input_size, hidden_size, bias, dtype=dtype, seed=seed)


# ----------------------------------------------------------------------------------------------------------

def clip_grad_norm(grads, max_norm, norm_type=2.0):
    """Scale gradients in place so that their total norm is at most ``max_norm``, as
    torch.nn.utils.clip_grad_norm_; returns the total norm before clipping (the remedy for exploding
    gradients). ``grads``: a module (its ``.grads``), a ``grads`` dict, one gradient array, or an iterable
    of any of these."""
    grads = list(_gradient_arrays("grads", grads))
    max_norm = _positive_float("max_norm", max_norm, allow_zero=True)
    norm_type = _positive_float("norm_type", norm_type, allow_zero=False)
    if not grads:
        return 0.0
    if np.isinf(norm_type):
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in grads)
    else:
        total = float(sum(float(np.sum(np.abs(g.astype(np.float64)) ** norm_type)) for g in grads)
                      ) ** (1.0 / norm_type)
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for g in grads:
            g *= g.dtype.type(scale)
    return total


def _positive_float(name, value, allow_zero):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, "
                        f"got {type(value).__name__} {value!r}")
    value = float(value)
    if value < 0 or (value == 0 and not allow_zero) or np.isnan(value):
        raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value}")
    return value


def _gradient_arrays(name, grads):
    """The float arrays in a module, a grads dict, an array, or an iterable of these (writable, in place)."""
    if isinstance(grads, _Module):
        yield from grads.grads.values()
    elif isinstance(grads, dict):
        for key, g in grads.items():
            yield from _gradient_arrays(f"{name}[{key!r}]", g)
    elif isinstance(grads, np.ndarray):
        if grads.dtype.kind != "f":
            raise TypeError(f"{name}: expected float gradient arrays, got dtype {grads.dtype}")
        yield grads
    elif isinstance(grads, (list, tuple)) or hasattr(grads, "__iter__") and not isinstance(grads, (str, bytes)):
        for i, g in enumerate(grads):
            yield from _gradient_arrays(f"{name}[{i}]", g)
    else:
        raise TypeError(f"{name}: expected a module, a grads dict or gradient arrays, got {type(grads).__name__}")
