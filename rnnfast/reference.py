"""The numpy reference (the oracle) for the kernels in `rnnfast.ops`: one layer, one direction.

Written to be obviously right, not fast: a Python loop over time, numpy over the batch, PyTorch's formulas and
gate orders. Notation as in API.md: T time steps, B batch, I input size, H hidden size, P projection size,
G gates (RNN 1, GRU 3, LSTM 4).

    RNN   h' = act(W_ih x + b_ih + W_hh h + b_hh),  act = tanh or relu
    LSTM  gates i, f, g, o:  i, f, o = sigmoid(.), g = tanh(.),  c' = f*c + i*g,  h' = o * tanh(c')
          projection (w_hr):  h' = W_hr (o * tanh(c'))
          peepholes (w_peep = [p_i, p_f, p_o], ONNX's definition): i and f add p_i*c and p_f*c,
          o adds p_o*c' (c' is computed before o)
    GRU   gates r, z, n:  r, z = sigmoid(W_i x + b_i + W_h h + b_h),  h' = (1 - z)*n + z*h
          reset_after=True  (torch):  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
          reset_after=False (Keras reset_after=False, ONNX linear_before_reset=0):
                                      n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)

Shapes: x (T, B, I); y (T, B, H), or (T, B, P) with a projection; h0, h_n (B, H) or (B, P); c0, c_n (B, H);
w_ih (G*H, I); w_hh (G*H, H) or (G*H, P); b_ih, b_hh (G*H,); w_hr (P, H); w_peep (3, H); lengths (B,) ints.

Variable lengths: row b is updated only at steps t < lengths[b]; y is 0 elsewhere and its final state is the
state after lengths[b] steps. With reverse=True the row is read from t = lengths[b]-1 down to 0, as the
reverse direction of a torch module reads a PackedSequence.

Each cell is a pair of step functions that mirror each other: `_<cell>_step` maps (x_t, state) to the new
state and a cache; `_<cell>_step_back` maps the gradient of the new state and that cache to the gradients of
x_t, of the old state and of the parameters. `_forward` and `_backward`, shared by the three cells, run them
over time and do the masking.
"""
from collections import namedtuple
from functools import partial

import numpy as np

__all__ = ["rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward"]

# What backward needs: the cell name (to catch a saved from another cell), its step_back with the options
# bound, the input, the parameters, the initial state (for shapes), the time steps and one cache per step.
_Saved = namedtuple("_Saved", "cell step_back x params state0 steps caches")


# --------------------------------------------------------------------------------------------- helpers

def _sigmoid(a):
    with np.errstate(over="ignore"):  # exp(-a) = inf for a very negative a still gives the right limit, 0
        return 1 / (1 + np.exp(-a))


def _linear(inp, w, b):
    """inp @ w.T + b: inp (B, K), w (N, K), b (N,) or None -> (B, N)."""
    out = inp @ w.T
    return out if b is None else out + b


def _linear_back(d_out, inp, w):
    """Gradients of _linear given d_out (B, N): (d_inp (B, K), d_w (N, K), d_b (N,))."""
    return d_out @ w, d_out.T @ inp, d_out.sum(axis=0)


def _rows(a, start, stop):
    """a[start:stop], or None when a is None (an absent bias)."""
    return None if a is None else a[start:stop]


def _time_steps(T, B, lengths, reverse):
    """The steps in processing order, as pairs (t, active) with active (B, 1) bool: row b is updated at t iff
    t < lengths[b].

    The reverse direction runs t = T-1 .. 0 with the same mask: a row with lengths[b] < T keeps its initial
    state until t = lengths[b]-1, so it is read from lengths[b]-1 down to 0, as torch reads a PackedSequence.
    """
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    order = range(T - 1, -1, -1) if reverse else range(T)
    return [(t, (t < lengths)[:, None]) for t in order]


def _initial(s, shape, dtype):
    """A private copy of an initial state (zeros when None), so that outputs never alias inputs."""
    return np.zeros(shape, dtype) if s is None else np.array(s, dtype=dtype)


def _forward(cell, step, step_back, x, state0, params, lengths, reverse, training):
    """Run `step` over time. state0: tuple of (B, .) arrays whose first element is h; returns (y, state, saved)."""
    T, B = x.shape[:2]
    steps = _time_steps(T, B, lengths, reverse)
    y = np.zeros((T, B, state0[0].shape[1]), dtype=x.dtype)
    state, caches = state0, []
    for t, active in steps:
        # Padded steps never read x (torch never sees the padding of a PackedSequence): feed them 0.
        new_state, cache = step(np.where(active, x[t], 0), state, params)
        state = tuple(np.where(active, new, old) for new, old in zip(new_state, state))
        y[t] = np.where(active, new_state[0], 0)
        caches.append(cache)
    saved = _Saved(cell, step_back, x, params, state0, steps, caches) if training else None
    return y, state, saved


def _backward(cell, dy, d_state_n, saved, state_grads=True):
    """Run the saved step_back over time, backwards. Returns (dx, d_state0, grads: name -> array or None);
    d_state0 all None with state_grads=False."""
    if not isinstance(state_grads, (bool, np.bool_)):
        raise TypeError(f"state_grads: expected a bool, got {type(state_grads).__name__}")
    if saved is None:
        raise ValueError("saved is None: call the forward with training=True")
    if saved.cell != cell:
        raise ValueError(f"saved comes from {saved.cell}_forward, not from {cell}_forward")
    x, params = saved.x, saved.params
    dy = np.zeros((x.shape[0],) + saved.state0[0].shape, x.dtype) if dy is None else np.asarray(dy, x.dtype)
    d_state = tuple(_initial(d, s.shape, x.dtype) for d, s in zip(d_state_n, saved.state0))
    dx = np.zeros_like(x)
    grads = {name: None if p is None else np.zeros_like(p) for name, p in params.items()}
    for (t, active), cache in zip(reversed(saved.steps), reversed(saved.caches)):
        # Rows not active at t pass their state through unchanged and output a constant 0: nothing of this
        # step's computation reaches the loss through them.
        d_new = (d_state[0] + dy[t],) + d_state[1:]
        d_new = tuple(np.where(active, d, 0) for d in d_new)
        dx[t], d_old, step_grads = saved.step_back(d_new, cache, params)
        d_state = tuple(np.where(active, d_o, d) for d_o, d in zip(d_old, d_state))
        for name, g in grads.items():
            if g is not None:
                g += step_grads[name]
    return dx, d_state if state_grads else (None,) * len(d_state), grads


def _params(**arrays):
    return {name: None if a is None else np.asarray(a) for name, a in arrays.items()}


# ------------------------------------------------------------------------------------------------- RNN

def _rnn_step(x_t, state, p, relu):
    (h,) = state
    a = _linear(x_t, p["w_ih"], p["b_ih"]) + _linear(h, p["w_hh"], p["b_hh"])
    h_new = np.maximum(a, 0) if relu else np.tanh(a)
    return (h_new,), (x_t, h, h_new)


def _rnn_step_back(d_state, cache, p, relu):
    (dh_new,) = d_state
    x_t, h, h_new = cache
    da = dh_new * (h_new > 0) if relu else dh_new * (1 - h_new * h_new)
    dx, dw_ih, db_ih = _linear_back(da, x_t, p["w_ih"])
    dh, dw_hh, db_hh = _linear_back(da, h, p["w_hh"])
    return dx, (dh,), dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db_ih, b_hh=db_hh)


def rnn_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", lengths=None,
                reverse=False, training=False):
    """Elman RNN over time. Returns (y (T, B, H), h_n (B, H), saved or None)."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    relu = nonlinearity == "relu"
    x = np.asarray(x)
    p = _params(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    h0 = _initial(h0, (x.shape[1], p["w_hh"].shape[1]), x.dtype)
    y, (h_n,), saved = _forward("rnn", partial(_rnn_step, relu=relu), partial(_rnn_step_back, relu=relu),
                                x, (h0,), p, lengths, reverse, training)
    return y, h_n, saved


def rnn_backward(dy, dh_n, saved, *, state_grads=True):
    """Gradients (dx, dh0, dw_ih, dw_hh, db_ih, db_hh) of a loss given dy = dL/dy and dh_n = dL/dh_n;
    dh0 None with state_grads=False."""
    dx, (dh0,), g = _backward("rnn", dy, (dh_n,), saved, state_grads)
    return dx, dh0, g["w_ih"], g["w_hh"], g["b_ih"], g["b_hh"]


# ------------------------------------------------------------------------------------------------ LSTM

def _lstm_step(x_t, state, p):
    h, c = state
    w_hr, w_peep = p["w_hr"], p["w_peep"]
    gates = _linear(x_t, p["w_ih"], p["b_ih"]) + _linear(h, p["w_hh"], p["b_hh"])
    a_i, a_f, a_g, a_o = np.split(gates, 4, axis=1)
    if w_peep is not None:
        a_i = a_i + w_peep[0] * c
        a_f = a_f + w_peep[1] * c
    i, f, g = _sigmoid(a_i), _sigmoid(a_f), np.tanh(a_g)
    c_new = f * c + i * g
    if w_peep is not None:
        a_o = a_o + w_peep[2] * c_new
    o = _sigmoid(a_o)
    tanh_c = np.tanh(c_new)
    m = o * tanh_c
    h_new = m if w_hr is None else m @ w_hr.T
    return (h_new, c_new), (x_t, h, c, i, f, g, o, c_new, tanh_c, m)


def _lstm_step_back(d_state, cache, p):
    dh_new, dc_new = d_state
    x_t, h, c, i, f, g, o, c_new, tanh_c, m = cache
    w_hr, w_peep = p["w_hr"], p["w_peep"]
    dm, dw_hr = (dh_new, None) if w_hr is None else (dh_new @ w_hr, dh_new.T @ m)
    da_o = dm * tanh_c * o * (1 - o)
    dc_new = dc_new + dm * o * (1 - tanh_c * tanh_c)
    if w_peep is not None:
        dc_new = dc_new + da_o * w_peep[2]
    da_i = dc_new * g * i * (1 - i)
    da_f = dc_new * c * f * (1 - f)
    da_g = dc_new * i * (1 - g * g)
    dc = dc_new * f
    dw_peep = None
    if w_peep is not None:
        dc = dc + da_i * w_peep[0] + da_f * w_peep[1]
        dw_peep = np.stack([(da_i * c).sum(axis=0), (da_f * c).sum(axis=0), (da_o * c_new).sum(axis=0)])
    d_gates = np.concatenate([da_i, da_f, da_g, da_o], axis=1)
    dx, dw_ih, db_ih = _linear_back(d_gates, x_t, p["w_ih"])
    dh, dw_hh, db_hh = _linear_back(d_gates, h, p["w_hh"])
    return dx, (dh, dc), dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db_ih, b_hh=db_hh, w_hr=dw_hr, w_peep=dw_peep)


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, *, w_hr=None, w_peep=None, lengths=None,
                 reverse=False, training=False):
    """LSTM over time. Returns (y (T, B, H or P), h_n (B, H or P), c_n (B, H), saved or None)."""
    x = np.asarray(x)
    p = _params(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr, w_peep=w_peep)
    B, (G_H, H_or_P) = x.shape[1], p["w_hh"].shape
    h0 = _initial(h0, (B, H_or_P), x.dtype)
    c0 = _initial(c0, (B, G_H // 4), x.dtype)
    y, (h_n, c_n), saved = _forward("lstm", _lstm_step, _lstm_step_back, x, (h0, c0), p, lengths, reverse,
                                    training)
    return y, h_n, c_n, saved


def lstm_backward(dy, dh_n, dc_n, saved, *, state_grads=True):
    """Gradients (dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr), plus dw_peep when the forward had w_peep;
    dh0, dc0 None with state_grads=False."""
    dx, (dh0, dc0), g = _backward("lstm", dy, (dh_n, dc_n), saved, state_grads)
    out = (dx, dh0, dc0, g["w_ih"], g["w_hh"], g["b_ih"], g["b_hh"], g["w_hr"])
    return out if saved.params["w_peep"] is None else out + (g["w_peep"],)


# ------------------------------------------------------------------------------------------------- GRU

def _gru_step(x_t, state, p, reset_after):
    (h,) = state
    H = h.shape[1]
    w_hh, b_hh = p["w_hh"], p["b_hh"]
    gi_r, gi_z, gi_n = np.split(_linear(x_t, p["w_ih"], p["b_ih"]), 3, axis=1)
    gh_r, gh_z = np.split(_linear(h, w_hh[:2 * H], _rows(b_hh, 0, 2 * H)), 2, axis=1)
    r, z = _sigmoid(gi_r + gh_r), _sigmoid(gi_z + gh_z)
    hn_in = h if reset_after else r * h  # what W_hn multiplies
    gh_n = _linear(hn_in, w_hh[2 * H:], _rows(b_hh, 2 * H, 3 * H))
    n = np.tanh(gi_n + r * gh_n) if reset_after else np.tanh(gi_n + gh_n)
    h_new = (1 - z) * n + z * h
    return (h_new,), (x_t, h, r, z, n, hn_in, gh_n)


def _gru_step_back(d_state, cache, p, reset_after):
    (dh_new,) = d_state
    x_t, h, r, z, n, hn_in, gh_n = cache
    H = h.shape[1]
    w_hh = p["w_hh"]
    dn, dz, dh = dh_new * (1 - z), dh_new * (h - n), dh_new * z
    da_n = dn * (1 - n * n)
    d_gh_n = da_n * r if reset_after else da_n
    d_hn_in, dw_hn, db_hn = _linear_back(d_gh_n, hn_in, w_hh[2 * H:])
    if reset_after:
        dr = da_n * gh_n
        dh = dh + d_hn_in
    else:
        dr = d_hn_in * h
        dh = dh + d_hn_in * r
    da_r, da_z = dr * r * (1 - r), dz * z * (1 - z)
    dx, dw_ih, db_ih = _linear_back(np.concatenate([da_r, da_z, da_n], axis=1), x_t, p["w_ih"])
    dh_rz, dw_hrz, db_hrz = _linear_back(np.concatenate([da_r, da_z], axis=1), h, w_hh[:2 * H])
    return dx, (dh + dh_rz,), dict(w_ih=dw_ih, w_hh=np.concatenate([dw_hrz, dw_hn]), b_ih=db_ih,
                                   b_hh=np.concatenate([db_hrz, db_hn]))


def gru_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reset_after=True, lengths=None, reverse=False,
                training=False):
    """GRU over time. Returns (y (T, B, H), h_n (B, H), saved or None)."""
    x = np.asarray(x)
    p = _params(w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    h0 = _initial(h0, (x.shape[1], p["w_hh"].shape[1]), x.dtype)
    reset_after = bool(reset_after)
    y, (h_n,), saved = _forward("gru", partial(_gru_step, reset_after=reset_after),
                                partial(_gru_step_back, reset_after=reset_after),
                                x, (h0,), p, lengths, reverse, training)
    return y, h_n, saved


def gru_backward(dy, dh_n, saved, *, state_grads=True):
    """Gradients (dx, dh0, dw_ih, dw_hh, db_ih, db_hh) of a loss given dy = dL/dy and dh_n = dL/dh_n;
    dh0 None with state_grads=False."""
    dx, (dh0,), g = _backward("gru", dy, (dh_n,), saved, state_grads)
    return dx, dh0, g["w_ih"], g["w_hh"], g["b_ih"], g["b_hh"]
