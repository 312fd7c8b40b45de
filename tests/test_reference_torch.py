"""rnnfast.reference against torch.nn.RNN / LSTM / GRU (CPU, float64): outputs and every gradient.

Each test builds a bidirectional torch module with random weights and runs the reference twice: the forward
direction against the first half of torch's output and h_n[0], reverse=True against the `_reverse`
parameters, the second half and h_n[1]. Lengths go through pack_padded_sequence(enforce_sorted=False) and
pad_packed_sequence, i.e. torch's PackedSequence path; without lengths, torch's padded path. torch rejects
zero lengths (finite differences cover those, in test_reference_gradcheck.py).
"""
import numpy as np
import pytest

from conftest import require_peer
from rnnfast import reference
from tolerances import TORCH_ATOL, TORCH_RTOL

# name -> (cell, nonlinearity, proj)
CASES = {
    "rnn_tanh": ("rnn", "tanh", False),
    "rnn_relu": ("rnn", "relu", False),
    "lstm": ("lstm", None, False),
    "lstm_proj": ("lstm", None, True),
    "gru": ("gru", None, False),
}
# (T, B, I, H, lengths): size-1 dimensions, odd sizes, and lengths whose maximum is below T.
SHAPES = {
    "T1B1": (1, 1, 2, 3, [1]),
    "T5B3": (5, 3, 4, 3, [5, 1, 3]),
    "T5B4": (5, 4, 3, 2, [4, 1, 3, 2]),
    "T3B1": (3, 1, 1, 3, [2]),
}
SHORT = dict(weight_ih="w_ih", weight_hh="w_hh", bias_ih="b_ih", bias_hh="b_hh", weight_hr="w_hr")


def nonzero(rng, shape, scale=1.0):
    return scale * rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


def close(actual, expected, what):
    np.testing.assert_allclose(actual, expected, rtol=TORCH_RTOL, atol=TORCH_ATOL, err_msg=what)


def torch_module(torch, cell, nonlinearity, I, H, proj, bias):
    kw = dict(bias=bias, bidirectional=True, dtype=torch.float64)
    if cell == "rnn":
        return torch.nn.RNN(I, H, nonlinearity=nonlinearity, **kw)
    if cell == "lstm":
        return torch.nn.LSTM(I, H, proj_size=H - 1 if proj else 0, **kw)
    return torch.nn.GRU(I, H, **kw)


def randomize(torch, module, rng):
    """Give every parameter random non-zero values; returns [params of direction 0, of direction 1] as
    dicts short name (w_ih, ...) -> numpy array, all of them (None for an absent bias or projection)."""
    params = [dict.fromkeys(("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")) for _ in range(2)]
    with torch.no_grad():
        for name, param in module.named_parameters():
            arr = nonzero(rng, tuple(param.shape), 0.7)
            param.copy_(torch.from_numpy(arr))
            stem, direction = name.replace("_l0", "").replace("_reverse", ""), int(name.endswith("_reverse"))
            params[direction][SHORT[stem]] = arr
    return params


@pytest.mark.parametrize("use_lengths", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("case", CASES)
def test_reference_matches_torch(rng, case, shape, bias, use_lengths):
    torch = require_peer("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    cell, nonlinearity, proj = CASES[case]
    T, B, I, H, lengths = SHAPES[shape]
    lengths = np.array(lengths) if use_lengths else None
    module = torch_module(torch, cell, nonlinearity, I, H, proj, bias)
    params = randomize(torch, module, rng)
    H_out = H - 1 if proj else H
    x, h0, c0 = nonzero(rng, (T, B, I)), nonzero(rng, (2, B, H_out)), nonzero(rng, (2, B, H))

    # torch: loss = sum(out * w_out) + sum(h_n * w_h) (+ sum(c_n * w_c)), backward.
    x_t, h0_t, c0_t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    inp = x_t if lengths is None else pack_padded_sequence(x_t, torch.from_numpy(lengths), enforce_sorted=False)
    out, hx = module(inp, (h0_t, c0_t) if cell == "lstm" else h0_t)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=T)
    outputs = (out,) + (tuple(hx) if cell == "lstm" else (hx,))
    loss_weights = [nonzero(rng, tuple(o.shape)) for o in outputs]
    sum(torch.sum(o * torch.from_numpy(w)) for o, w in zip(outputs, loss_weights)).backward()
    outputs = [o.detach().numpy() for o in outputs]
    torch_grads = {n: p.grad.numpy() for n, p in module.named_parameters()}

    dx = np.zeros_like(x)
    for d, reverse in enumerate((False, True)):
        half = slice(d * H_out, (d + 1) * H_out)
        p, sfx = params[d], "_reverse" if reverse else ""
        opts = dict(lengths=lengths, reverse=reverse, training=True)
        if cell == "lstm":
            y, h_n, c_n, saved = reference.lstm_forward(x, h0[d], c0[d], p["w_ih"], p["w_hh"], p["b_ih"],
                                                        p["b_hh"], w_hr=p["w_hr"], **opts)
            close(c_n, outputs[2][d], f"c_n[{d}]")
            dx_d, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr = reference.lstm_backward(
                loss_weights[0][..., half], loss_weights[1][d], loss_weights[2][d], saved)
            close(dc0, c0_t.grad.numpy()[d], f"dc0[{d}]")
        else:
            fwd = reference.rnn_forward if cell == "rnn" else reference.gru_forward
            kw = dict(nonlinearity=nonlinearity) if cell == "rnn" else {}
            y, h_n, saved = fwd(x, h0[d], p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], **kw, **opts)
            bwd = reference.rnn_backward if cell == "rnn" else reference.gru_backward
            dx_d, dh0, dw_ih, dw_hh, db_ih, db_hh = bwd(loss_weights[0][..., half], loss_weights[1][d], saved)
            dw_hr = None
        close(y, outputs[0][..., half], f"y direction {d}")
        close(h_n, outputs[1][d], f"h_n[{d}]")
        close(dh0, h0_t.grad.numpy()[d], f"dh0[{d}]")
        for short, g in dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db_ih, b_hh=db_hh, w_hr=dw_hr).items():
            name = {v: k for k, v in SHORT.items()}[short] + "_l0" + sfx
            if p[short] is None:
                assert g is None and name not in torch_grads, name
            else:
                close(g, torch_grads[name], f"d{name}")
        dx += dx_d
    close(dx, x_t.grad.numpy(), "dx (both directions)")


def test_torch_rejects_zero_lengths():
    """Why the torch parity tests use lengths >= 1: if this starts failing, torch accepts them, and zero
    lengths can join the parity grid."""
    torch = require_peer("torch")
    from torch.nn.utils.rnn import pack_padded_sequence
    with pytest.raises(RuntimeError):
        pack_padded_sequence(torch.zeros(3, 2, 1), torch.tensor([3, 0]), enforce_sorted=False)
