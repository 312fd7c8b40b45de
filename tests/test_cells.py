"""rnnfast.RNNCell / LSTMCell / GRUCell: parity with torch.nn.*Cell (float64), agreement with the sequence
layers, the options torch lacks (peepholes, GRU reset_after=False), training machinery and bad arguments."""
import numpy as np
import pytest

import rnnfast
from conftest import require_peer
from tolerances import TORCH_ATOL, TORCH_RTOL

CELLS = {"rnn": rnnfast.RNNCell, "lstm": rnnfast.LSTMCell, "gru": rnnfast.GRUCell}
LAYERS = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}
CLOSE = dict(rtol=TORCH_RTOL, atol=TORCH_ATOL)


def nonzero(rng, shape, scale=1.0):
    """Uniform in +-[0.1, 1] * scale: random and never zero."""
    return scale * rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)


def as_tuple(s):
    return tuple(s) if isinstance(s, tuple) else (s,)


CASES = [(kind, nl, bias, batch, hx)
         for kind, nl in (("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None))
         for bias in (True, False)
         for batch in (3, 1, None)  # None = unbatched
         for hx in (True, False)]


@pytest.mark.parametrize("kind, nonlinearity, bias, batch, given_hx", CASES,
                         ids=[f"{k}{'_' + n if n else ''}-{'bias' if b else 'nobias'}-"
                              f"{'B' + str(B) if B else 'unbatched'}-{'hx' if h else 'nohx'}"
                              for k, n, b, B, h in CASES])
def test_matches_torch_cell(kind, nonlinearity, bias, batch, given_hx, rng):
    torch = require_peer("torch")
    I, H = 4, 5
    kw = {} if nonlinearity is None else {"nonlinearity": nonlinearity}
    torch.manual_seed(int(rng.integers(2**31)))
    module = getattr(torch.nn, type(CELLS[kind](1, 1)).__name__)(I, H, bias=bias, **kw).double()
    cell = CELLS[kind](I, H, bias=bias, dtype=np.float64, seed=0, **kw)
    cell.load_state_dict(module.state_dict())
    assert list(cell.state_dict()) == list(module.state_dict())

    lead = () if batch is None else (batch,)
    x = nonzero(rng, lead + (I,))
    hx = None
    if given_hx:
        hx = tuple(nonzero(rng, lead + (H,)) for _ in range(2 if kind == "lstm" else 1))
        hx = hx if kind == "lstm" else hx[0]
    out = cell.forward(x, hx, train=True)
    grads = tuple(nonzero(rng, o.shape) for o in as_tuple(out))
    dx, dhx = cell.backward(grads if kind == "lstm" else grads[0])

    x_t = torch.tensor(x, requires_grad=True)
    hx_t = None if hx is None else tuple(torch.tensor(h, requires_grad=True) for h in as_tuple(hx))
    out_t = module(x_t, None if hx_t is None else (hx_t if kind == "lstm" else hx_t[0]))
    loss = sum((o * torch.tensor(g)).sum() for o, g in zip(as_tuple(out_t), grads))
    loss.backward()

    for o, o_t in zip(as_tuple(out), as_tuple(out_t)):
        assert o.shape == tuple(o_t.shape)
        np.testing.assert_allclose(o, o_t.detach().numpy(), **CLOSE)
    np.testing.assert_allclose(dx, x_t.grad.numpy(), **CLOSE)
    assert dx.shape == x.shape
    if hx_t is not None:
        for d, h_t in zip(as_tuple(dhx), hx_t):
            np.testing.assert_allclose(d, h_t.grad.numpy(), **CLOSE)
    for name, p in module.named_parameters():
        np.testing.assert_allclose(cell.grads[name], p.grad.numpy(), **CLOSE, err_msg=name)
    # inference: same result, nothing kept
    for o, o2 in zip(as_tuple(out), as_tuple(cell(x, hx))):
        np.testing.assert_array_equal(o, o2)
    with pytest.raises(RuntimeError, match="train=True"):
        cell.backward(grads if kind == "lstm" else grads[0])


@pytest.mark.parametrize("kind, kw", [("rnn", dict(nonlinearity="relu")), ("lstm", {}),
                                      ("lstm", dict(peephole=True)), ("gru", {}),
                                      ("gru", dict(reset_after=False)), ("gru", dict(bias=False))])
def test_cell_steps_equal_the_layer(kind, kw, rng):
    """Stepping a cell over a sequence gives the layer's outputs, and a T = 1 layer's gradients."""
    I, H, T, B = 3, 4, 5, 2
    cell = CELLS[kind](I, H, dtype=np.float64, seed=0, **kw)
    layer = LAYERS[kind](I, H, dtype=np.float64, seed=1, **kw)
    layer.load_state_dict({f"{n}_l0": v for n, v in cell.state_dict().items()})
    x = nonzero(rng, (T, B, I))
    out, _ = layer(x)
    state = None
    for t in range(T):
        state = cell(x[t], state)
        np.testing.assert_allclose(as_tuple(state)[0], out[t], rtol=1e-13, atol=1e-15)

    hx = tuple(nonzero(rng, (B, H)) for _ in range(2 if kind == "lstm" else 1))
    new = cell.forward(x[0], hx if kind == "lstm" else hx[0], train=True)
    d_new = tuple(nonzero(rng, s.shape) for s in as_tuple(new))
    dx, dhx = cell.backward(d_new if kind == "lstm" else d_new[0])
    layer.forward(x[:1], tuple(h[None] for h in hx) if kind == "lstm" else hx[0][None], train=True)
    dx_l, dhx_l = layer.backward(None, tuple(d[None] for d in d_new) if kind == "lstm" else d_new[0][None])
    np.testing.assert_allclose(dx, dx_l[0], rtol=1e-13, atol=1e-15)
    for d, d_l in zip(as_tuple(dhx), as_tuple(dhx_l)):
        np.testing.assert_allclose(d, d_l[0], rtol=1e-13, atol=1e-15)
    for name, g in cell.grads.items():
        np.testing.assert_allclose(g, layer.grads[name + "_l0"], rtol=1e-13, atol=1e-15)


def test_cell_parameters_state_dict_and_grads():
    cell = rnnfast.LSTMCell(3, 4, peephole=True, seed=5)
    assert {n: p.shape for n, p in cell.state_dict().items()} == {
        "weight_ih": (16, 3), "weight_hh": (16, 4), "bias_ih": (16,), "bias_hh": (16,), "weight_peep": (3, 4)}
    assert cell.weight_ih.dtype == np.float32 and np.all(np.abs(cell.weight_ih) <= 0.5)
    np.testing.assert_array_equal(cell.weight_ih, rnnfast.LSTMCell(3, 4, peephole=True, seed=5).weight_ih)
    assert set(cell.grads) == set(cell.params)
    cell.forward(np.ones((2, 3), np.float32), train=True)
    cell.backward((np.ones((2, 4), np.float32), None))
    assert np.any(cell.grads["weight_peep"] != 0)
    cell.zero_grad()
    assert all(np.all(g == 0) for g in cell.grads.values())
    with pytest.raises(KeyError, match="missing keys \\['weight_peep'\\]"):
        cell.load_state_dict(rnnfast.LSTMCell(3, 4).state_dict())
    assert repr(rnnfast.RNNCell(3, 4, bias=False, nonlinearity="relu")) == \
        "RNNCell(3, 4, bias=False, nonlinearity='relu')"


def test_cell_bad_arguments():
    with pytest.raises(ValueError, match=r"hidden_size: expected an int >= 1, got 0"):
        rnnfast.GRUCell(3, 0)
    with pytest.raises(ValueError, match=r"nonlinearity: expected 'tanh' or 'relu', got 'gelu'"):
        rnnfast.RNNCell(3, 4, nonlinearity="gelu")
    with pytest.raises(TypeError, match=r"dtype: expected float32 or float64"):
        rnnfast.LSTMCell(3, 4, dtype=np.int64)
    cell = rnnfast.LSTMCell(3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 3\) or \(3,\), got \(2, 4\)"):
        cell(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 3\) or \(3,\), got \(1, 2, 3\)"):
        cell(np.zeros((1, 2, 3)))
    with pytest.raises(TypeError, match=r"x: expected dtype float64 \(the module's dtype\), got float32"):
        cell(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"hx: expected None or a pair of arrays of shape \(2, 4\)"):
        cell(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"hx\[1\]: expected shape \(2, 4\), got \(4,\)"):
        cell(np.zeros((2, 3)), (np.zeros((2, 4)), np.zeros(4)))
    gru = rnnfast.GRUCell(3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match=r"hx: expected shape \(4,\), got \(1, 4\)"):
        gru(np.zeros(3), np.zeros((1, 4)))
    with pytest.raises(RuntimeError, match=r"GRUCell.backward: no training forward"):
        gru.backward(np.zeros(4))
    gru.forward(np.zeros((2, 3)), train=True)
    with pytest.raises(ValueError, match=r"d_output: expected shape \(2, 4\), got \(4,\)"):
        gru.backward(np.zeros(4))
    gru.backward(np.zeros((2, 4)))  # a rejected call leaves the training forward pending
