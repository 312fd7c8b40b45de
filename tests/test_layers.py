"""rnnfast.RNN / LSTM / GRU: parity with torch.nn (float64) on a randomized grid of every constructor option,
float64 finite differences for what torch lacks (peepholes, GRU reset_after=False, dropout), lengths
semantics, dropout, state_dict and parameter handling."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import rnnfast
from rnnfast import ops
from conftest import require_peer
from tolerances import FD_ATOL, FD_EPS, FD_RTOL, TORCH_ATOL, TORCH_RTOL, assert_close

LAYERS = {"rnn": rnnfast.RNN, "lstm": rnnfast.LSTM, "gru": rnnfast.GRU}
TORCH_NAMES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def nonzero(rng, shape, scale=1.0, dtype=np.float64):
    """Uniform in +-[0.1, 1] * scale: random and never zero."""
    return (scale * rng.uniform(0.1, 1.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)


def states_like(layer, rng, batch):
    """Random hx for `layer` (batch None = unbatched)."""
    lead = (layer.num_directions * layer.num_layers,) + (() if batch is None else (batch,))
    h = nonzero(rng, lead + (layer.proj_size or layer.hidden_size,), dtype=layer.dtype)
    if layer._kind == "lstm":
        return h, nonzero(rng, lead + (layer.hidden_size,), dtype=layer.dtype)
    return h


def as_tuple(hx):
    return tuple(hx) if isinstance(hx, tuple) else (hx,)


# ------------------------------------------------------------------------------------------------- torch parity

def _torch_grid(n_cases=40, seed=20240611):
    """A fixed random sample of the option grid (every option appears in several combinations)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n_cases):
        kind = ("rnn", "lstm", "gru")[i % 3]
        case = dict(kind=kind, num_layers=int(rng.integers(1, 4)), bidirectional=bool(rng.integers(2)),
                    batch_first=bool(rng.integers(2)), bias=bool(rng.random() < 0.75),
                    T=int(rng.integers(1, 6)), B=int(rng.integers(1, 5)), I=int(rng.integers(1, 6)),
                    H=int(rng.integers(2, 7)), proj_size=0, nonlinearity="tanh")
        if kind == "lstm" and rng.random() < 0.5:
            case["proj_size"] = int(rng.integers(1, case["H"]))
        if kind == "rnn" and rng.random() < 0.5:
            case["nonlinearity"] = "relu"
        mode = rng.random()
        case["unbatched"] = mode < 0.2
        case["lengths"] = None
        if 0.2 <= mode < 0.7:
            case["lengths"] = [int(v) for v in rng.integers(1, case["T"] + 1, case["B"])]
        case["hx"] = bool(rng.random() < 0.8)
        cases.append(case)
    return cases


def _case_id(c):
    parts = [c["kind"] + ("_relu" if c["nonlinearity"] == "relu" else ""), f"L{c['num_layers']}",
             f"T{c['T']}B{c['B']}I{c['I']}H{c['H']}"]
    parts += [name for name in ("bidirectional", "batch_first", "unbatched") if c[name]]
    parts += [] if c["bias"] else ["nobias"]
    parts += [f"P{c['proj_size']}"] if c["proj_size"] else []
    parts += ["lengths"] if c["lengths"] else []
    parts += [] if c["hx"] else ["nohx"]
    return "-".join(parts)


TORCH_CASES = _torch_grid()


def _torch_module(torch, c):
    kw = dict(num_layers=c["num_layers"], bias=c["bias"], batch_first=c["batch_first"],
              bidirectional=c["bidirectional"])
    if c["kind"] == "lstm":
        kw["proj_size"] = c["proj_size"]
    if c["kind"] == "rnn":
        kw["nonlinearity"] = c["nonlinearity"]
    return getattr(torch.nn, TORCH_NAMES[c["kind"]])(c["I"], c["H"], **kw).double()


def _rnnfast_layer(c, seed=0):
    kw = dict(num_layers=c["num_layers"], bias=c["bias"], batch_first=c["batch_first"],
              bidirectional=c["bidirectional"], dtype=np.float64, seed=seed)
    if c["kind"] == "lstm":
        kw["proj_size"] = c["proj_size"]
    if c["kind"] == "rnn":
        kw["nonlinearity"] = c["nonlinearity"]
    return LAYERS[c["kind"]](c["I"], c["H"], **kw)


def _torch_run(torch, module, x, hx, lengths, batch_first, grads):
    """Run a torch module on numpy data (packed when lengths are given); returns (output, states, x_t, hx_t)
    with the outputs as torch tensors."""
    x_t = torch.tensor(x, requires_grad=True)
    hx_t = None if hx is None else tuple(torch.tensor(h, requires_grad=True) for h in as_tuple(hx))
    inp = x_t
    if lengths is not None:
        inp = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.tensor(lengths), batch_first=batch_first,
                                                      enforce_sorted=False)
    state_in = None if hx_t is None else (hx_t if len(hx_t) == 2 else hx_t[0])
    out, states = module(inp, state_in)
    if lengths is not None:
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                        total_length=x.shape[1 if batch_first else 0])
    loss = (out * torch.tensor(grads[0])).sum()
    for s, g in zip(as_tuple(states), grads[1:]):
        loss = loss + (s * torch.tensor(g)).sum()
    loss.backward()
    return out, as_tuple(states), x_t, hx_t


@pytest.mark.parametrize("c", TORCH_CASES, ids=_case_id)
def test_matches_torch(c, rng):
    torch = require_peer("torch")
    torch.manual_seed(int(rng.integers(2**31)))
    module = _torch_module(torch, c)
    layer = _rnnfast_layer(c)
    layer.load_state_dict(module.state_dict())

    T, B = c["T"], c["B"]
    shape = (T, c["I"]) if c["unbatched"] else ((B, T, c["I"]) if c["batch_first"] else (T, B, c["I"]))
    x = nonzero(rng, shape)
    hx = states_like(layer, rng, None if c["unbatched"] else B) if c["hx"] else None
    lengths = None if c["lengths"] is None else np.array(c["lengths"])

    out, states = layer.forward(x, hx, lengths=lengths, train=True)
    states = as_tuple(states)
    grads = [nonzero(rng, out.shape)] + [nonzero(rng, s.shape) for s in states]
    dx, dhx = layer.backward(grads[0], tuple(grads[1:]) if c["kind"] == "lstm" else grads[1])

    t_out, t_states, x_t, hx_t = _torch_run(torch, module, x, hx, c["lengths"], c["batch_first"], grads)
    close = dict(rtol=TORCH_RTOL, atol=TORCH_ATOL)
    np.testing.assert_allclose(out, t_out.detach().numpy(), **close, err_msg="output")
    for i, (s, t_s) in enumerate(zip(states, t_states)):
        np.testing.assert_allclose(s, t_s.detach().numpy(), **close, err_msg=f"state {i}")
    np.testing.assert_allclose(dx, x_t.grad.numpy(), **close, err_msg="dx")
    if hx_t is not None:
        for i, (d, t_h) in enumerate(zip(as_tuple(dhx), hx_t)):
            np.testing.assert_allclose(d, t_h.grad.numpy(), **close, err_msg=f"dhx0[{i}]")
    assert list(layer.grads) == [name for name, _ in module.named_parameters()]
    for name, p in module.named_parameters():
        np.testing.assert_allclose(layer.grads[name], p.grad.numpy(), **close, err_msg=f"grad {name}")
    # Inference gives the same outputs and keeps nothing.
    out2, _ = layer(x, hx, lengths=lengths)
    np.testing.assert_array_equal(out2, out)


def test_parameters_named_shaped_and_ordered_as_torch():
    torch = require_peer("torch")
    for kind, kw in (("rnn", {}), ("gru", {}), ("lstm", dict(proj_size=2)), ("lstm", {})):
        module = getattr(torch.nn, TORCH_NAMES[kind])(3, 5, num_layers=3, bidirectional=True, **kw)
        layer = LAYERS[kind](3, 5, num_layers=3, bidirectional=True, seed=0, **kw)
        assert [(n, tuple(p.shape)) for n, p in module.state_dict().items()] == \
               [(n, p.shape) for n, p in layer.state_dict().items()]


# ---------------------------------------------------------------------------------- finite differences

@pytest.fixture
def one_thread():
    """The finite-difference checks make thousands of tiny calls; results do not depend on the thread count
    (test_non_contiguous_inputs_and_thread_count_give_identical_results), so they run on one thread."""
    threads = rnnfast.get_num_threads()
    rnnfast.set_num_threads(1)
    yield
    rnnfast.set_num_threads(threads)


def _loss(layer, x, hx, lengths, g_out, g_states, train):
    """loss = <output, g_out> + sum <state_n, g_state>."""
    out, states = layer.forward(x, hx, lengths=lengths, train=train)
    return float(np.sum(out * g_out)) + sum(float(np.sum(s * g)) for s, g in zip(as_tuple(states), g_states))


def _loss_and_grads(layer, x, hx, lengths, g_out, g_states):
    """_loss of a training forward and its gradients (dx, dhx0 as a tuple, parameter gradients)."""
    loss = _loss(layer, x, hx, lengths, g_out, g_states, train=True)
    d_hx = tuple(g_states) if layer._kind == "lstm" else g_states[0]
    layer.zero_grad()
    dx, dhx = layer.backward(g_out, d_hx)
    return loss, dx, as_tuple(dhx), {n: g.copy() for n, g in layer.grads.items()}


def _finite_difference_check(make_layer, x, hx, lengths, rng):
    """Compare dx, dhx0 and every parameter gradient of make_layer() with central differences; make_layer
    must return a layer in the same state every call (weights and dropout generator)."""
    layer = make_layer()
    state = layer.state_dict()
    out, states = layer(x, hx, lengths=lengths)
    g_out = nonzero(rng, out.shape)
    g_states = [nonzero(rng, s.shape) for s in as_tuple(states)]
    _, dx, dhx, grads = _loss_and_grads(make_layer(), x, hx, lengths, g_out, g_states)

    def loss_at(x_=x, hx_=hx, params=state):
        fresh = make_layer()
        fresh.load_state_dict(params)
        # A training forward (dropout on) without its backward.
        return _loss(fresh, x_, hx_, lengths, g_out, g_states, train=fresh.dropout > 0)

    def numeric(array, evaluate):
        grad = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            saved = array[idx]
            array[idx] = saved + FD_EPS
            up = evaluate()
            array[idx] = saved - FD_EPS
            down = evaluate()
            array[idx] = saved
            grad[idx] = (up - down) / (2 * FD_EPS)
        return grad

    x_var = x.copy()
    np.testing.assert_allclose(dx, numeric(x_var, lambda: loss_at(x_=x_var)), rtol=FD_RTOL, atol=FD_ATOL,
                               err_msg="dx")
    hx_vars = [h.copy() for h in as_tuple(hx)]
    pack = (lambda: tuple(hx_vars)) if layer._kind == "lstm" else (lambda: hx_vars[0])
    for i, h in enumerate(hx_vars):
        np.testing.assert_allclose(dhx[i], numeric(h, lambda: loss_at(hx_=pack())), rtol=FD_RTOL, atol=FD_ATOL,
                                   err_msg=f"dhx0[{i}]")
    params = {n: p.copy() for n, p in state.items()}
    for name in params:
        np.testing.assert_allclose(grads[name], numeric(params[name], lambda: loss_at(params=params)),
                                   rtol=FD_RTOL, atol=FD_ATOL, err_msg=f"grad {name}")


@pytest.mark.parametrize("kind, kw", [
    ("lstm", dict(peephole=True)),
    ("lstm", dict(peephole=True, bias=False, batch_first=True)),
    ("lstm", dict(peephole=True, proj_size=2)),
    ("gru", dict(reset_after=False)),
    ("gru", dict(reset_after=False, bias=False, batch_first=True)),
], ids=["peephole", "peephole-nobias-batch_first", "peephole-proj", "gru_reset_before",
        "gru_reset_before-nobias-batch_first"])
def test_finite_differences_beyond_torch(kind, kw, rng, one_thread):
    T, B, I, H = 4, 3, 2, 3
    make = lambda: LAYERS[kind](I, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=7, **kw)
    layer = make()
    x = nonzero(rng, (B, T, I) if layer.batch_first else (T, B, I))
    _finite_difference_check(make, x, states_like(layer, rng, B), np.array([4, 1, 3]), rng)


def test_finite_differences_with_dropout(rng, one_thread):
    # A fresh layer with the same seed draws the same masks: the loss is a smooth function of the weights.
    make = lambda: rnnfast.GRU(2, 3, num_layers=3, dropout=0.4, dtype=np.float64, seed=11)
    layer = make()
    x = nonzero(rng, (3, 2, 2))
    _finite_difference_check(make, x, states_like(layer, rng, 2), None, rng)


# ------------------------------------------------------------------------------------------------- semantics

@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lengths_equal_running_each_row_truncated(kind, bidirectional, rng):
    # lengths[b] == 0 included (torch rejects it): output all zeros and the final state is the initial one.
    layer = LAYERS[kind](3, 4, num_layers=2, bidirectional=bidirectional, dtype=np.float64, seed=1)
    T, lengths = 5, np.array([5, 0, 2, 1])
    x = nonzero(rng, (T, 4, 3))
    hx = states_like(layer, rng, 4)
    out, states = layer(x, hx, lengths=lengths)
    for b, n in enumerate(lengths):
        hx_b = tuple(h[:, b] for h in as_tuple(hx))
        assert np.all(out[n:, b] == 0)
        if n == 0:
            for s, h in zip(as_tuple(states), hx_b):
                np.testing.assert_array_equal(s[:, b], h)
            continue
        out_b, states_b = layer(x[:n, b], hx_b if kind == "lstm" else hx_b[0])
        np.testing.assert_allclose(out[:n, b], out_b, rtol=1e-12, atol=1e-14)
        for s, s_b in zip(as_tuple(states), as_tuple(states_b)):
            np.testing.assert_allclose(s[:, b], s_b, rtol=1e-12, atol=1e-14)


def test_float32_matches_float64(rng):
    l64 = rnnfast.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=3)
    l32 = rnnfast.LSTM(3, 5, num_layers=2, bidirectional=True, dtype=np.float32, seed=3)
    np.testing.assert_array_equal(l32.weight_ih_l0, l64.weight_ih_l0.astype(np.float32))
    x = nonzero(rng, (6, 2, 3))
    out64, _ = l64.forward(x, train=True)
    out32, (h32, c32) = l32.forward(x.astype(np.float32), train=True)
    assert out32.dtype == h32.dtype == c32.dtype == np.float32
    assert_close(out32, out64, np.float32)
    g = nonzero(rng, out64.shape)
    dx64, _ = l64.backward(g)
    dx32, (dh32, dc32) = l32.backward(g.astype(np.float32))
    assert dx32.dtype == dh32.dtype == l32.grads["weight_hh_l1"].dtype == np.float32
    assert_close(dx32, dx64, np.float32)
    assert_close(l32.grads["weight_hh_l1_reverse"], l64.grads["weight_hh_l1_reverse"], np.float32)


def test_gradients_accumulate_and_zero_grad(rng):
    layer = rnnfast.GRU(3, 4, num_layers=2, dtype=np.float64, seed=0)
    x = nonzero(rng, (4, 2, 3))
    g = nonzero(rng, (4, 2, 4))
    layer.forward(x, train=True)
    layer.backward(g)
    once = {n: v.copy() for n, v in layer.grads.items()}
    assert all(np.any(v != 0) for v in once.values())
    layer.forward(x, train=True)
    layer.backward(g)
    for n, v in layer.grads.items():
        np.testing.assert_allclose(v, 2 * once[n], rtol=1e-14)
    layer.zero_grad()
    assert all(np.all(v == 0) for v in layer.grads.values())


def test_backward_consumes_the_training_forward(rng):
    layer = rnnfast.RNN(2, 3, dtype=np.float64, seed=0)
    x = nonzero(rng, (3, 1, 2))
    with pytest.raises(RuntimeError, match=r"forward\(\.\.\., train=True\)"):
        layer.backward(np.ones((3, 1, 3)))
    layer(x)  # inference keeps nothing
    with pytest.raises(RuntimeError, match="train=True"):
        layer.backward(np.ones((3, 1, 3)))
    layer.forward(x, train=True)
    layer.forward(x)  # an inference call in between does not drop the pending training forward
    layer.backward(np.ones((3, 1, 3)))
    with pytest.raises(RuntimeError, match="train=True"):
        layer.backward(np.ones((3, 1, 3)))


def test_backward_none_means_zeros(rng):
    layer = rnnfast.LSTM(2, 3, num_layers=2, dtype=np.float64, seed=0)
    x = nonzero(rng, (3, 2, 2))
    out, (h, c) = layer.forward(x, train=True)
    dh = nonzero(rng, h.shape)
    dx, (dh0, dc0) = layer.backward(None, (dh, None))
    grads = {n: g.copy() for n, g in layer.grads.items()}
    layer.zero_grad()
    layer.forward(x, train=True)
    dx2, (dh02, dc02) = layer.backward(np.zeros_like(out), (dh, np.zeros_like(c)))
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(dc0, dc02)
    for n in grads:
        np.testing.assert_array_equal(grads[n], layer.grads[n])


def test_unbatched_equals_batch_of_one(rng):
    layer = rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, batch_first=True,
                         dtype=np.float64, seed=0)
    x = nonzero(rng, (5, 3))
    h0, c0 = states_like(layer, rng, None)
    out, (h, c) = layer.forward(x, (h0, c0), train=True)
    assert out.shape == (5, 4) and h.shape == (4, 2) and c.shape == (4, 4)
    g = nonzero(rng, out.shape)
    dx, (dh0, dc0) = layer.backward(g)
    assert dx.shape == x.shape and dh0.shape == h0.shape and dc0.shape == c0.shape
    grads = {n: v.copy() for n, v in layer.grads.items()}
    layer.zero_grad()
    out_b, (h_b, c_b) = layer.forward(x[None], (h0[:, None], c0[:, None]), train=True)
    dx_b, (dh0_b, _) = layer.backward(g[None])
    np.testing.assert_array_equal(out, out_b[0])
    np.testing.assert_array_equal(h, h_b[:, 0])
    np.testing.assert_array_equal(dx, dx_b[0])
    np.testing.assert_array_equal(dh0, dh0_b[:, 0])
    for n in grads:
        np.testing.assert_array_equal(grads[n], layer.grads[n])


def test_inputs_left_unmodified_and_read_only_inputs_accepted(rng):
    layer = rnnfast.GRU(3, 4, num_layers=2, bidirectional=True, dropout=0.5, dtype=np.float64, seed=0)
    x = nonzero(rng, (4, 2, 3))
    h0 = states_like(layer, rng, 2)
    x_copy, h0_copy = x.copy(), h0.copy()
    x.flags.writeable = False
    h0.flags.writeable = False
    out, h = layer.forward(x, h0, train=True)
    g = nonzero(rng, out.shape)
    g.flags.writeable = False
    layer.backward(g, np.ones_like(h))
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(h0, h0_copy)


def test_batch_first_is_a_transpose(rng):
    a = rnnfast.RNN(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=5)
    b = rnnfast.RNN(3, 4, num_layers=2, bidirectional=True, batch_first=True, dtype=np.float64, seed=5)
    x = nonzero(rng, (5, 2, 3))
    out_a, h_a = a(x, lengths=[5, 3])
    out_b, h_b = b(x.transpose(1, 0, 2), lengths=[5, 3])
    np.testing.assert_array_equal(out_b, out_a.transpose(1, 0, 2))
    np.testing.assert_array_equal(h_b, h_a)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["rnn", "lstm", "gru"]), num_layers=st.integers(1, 3),
       bidirectional=st.booleans(), batch_first=st.booleans(), T=st.integers(1, 6), B=st.integers(1, 4),
       H=st.integers(1, 5))
def test_shapes_and_lengths_property(data, kind, num_layers, bidirectional, batch_first, T, B, H):
    I = 2
    proj = data.draw(st.integers(0, H - 1)) if kind == "lstm" else 0
    kw = dict(proj_size=proj) if kind == "lstm" else {}
    layer = LAYERS[kind](I, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                         dtype=np.float64, seed=0, **kw)
    lengths = np.array(data.draw(st.lists(st.integers(0, T), min_size=B, max_size=B)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = nonzero(rng, (B, T, I) if batch_first else (T, B, I))
    out, states = layer.forward(x, lengths=lengths, train=True)
    h_out, D = proj or H, 2 if bidirectional else 1
    assert out.shape == ((B, T, D * h_out) if batch_first else (T, B, D * h_out))
    assert as_tuple(states)[0].shape == (D * num_layers, B, h_out)
    out_tb = out.transpose(1, 0, 2) if batch_first else out
    for b, n in enumerate(lengths):
        assert np.all(out_tb[n:, b] == 0)
        if n == 0:
            assert all(np.all(s[:, b] == 0) for s in as_tuple(states))
    np.testing.assert_array_equal(layer(x, lengths=lengths)[0], out)
    dx, dhx = layer.backward(nonzero(rng, out.shape), tuple(nonzero(rng, s.shape) for s in as_tuple(states))
                             if kind == "lstm" else nonzero(rng, states.shape))
    assert dx.shape == x.shape
    dx_tb = dx.transpose(1, 0, 2) if batch_first else dx
    for b, n in enumerate(lengths):
        assert np.all(dx_tb[n:, b] == 0)  # steps past the length are never read


def test_non_contiguous_inputs_and_thread_count_give_identical_results(rng):
    layer = rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    big = nonzero(rng, (10, 6, 7))
    x = big[::2, ::3, 1:4]  # strided view (5, 2, 3)
    h0 = nonzero(rng, (2, 4, 4)).transpose(1, 0, 2)
    c0 = np.asfortranarray(nonzero(rng, (4, 2, 4)))
    ref_out, (ref_h, ref_c) = layer(np.ascontiguousarray(x), (np.ascontiguousarray(h0), c0.copy(order="C")))
    out, (h, c) = layer(x, (h0, c0))
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(c, ref_c)
    threads = rnnfast.get_num_threads()
    try:
        for n in (1, 2, 3):
            rnnfast.set_num_threads(n)
            out_n, (h_n, _) = layer(x, (h0, c0), lengths=[5, 3])
            if n == 1:
                first = out_n, h_n
            np.testing.assert_array_equal(out_n, first[0])
            np.testing.assert_array_equal(h_n, first[1])
    finally:
        rnnfast.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------- dropout

def test_dropout_reproducible_from_seed_and_different_across_seeds(rng):
    x = nonzero(rng, (6, 3, 4))
    runs = []
    for seed in (42, 42, 43):
        layer = rnnfast.LSTM(4, 5, num_layers=3, dropout=0.5, seed=seed, dtype=np.float64)
        layer.load_state_dict(rnnfast.LSTM(4, 5, num_layers=3, seed=0, dtype=np.float64).state_dict())
        runs.append([layer.forward(x, train=True)[0] for _ in range(2)])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[0][1])  # a new mask at every training forward
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_dropout_has_no_effect_in_inference(rng):
    x = nonzero(rng, (5, 2, 3))
    with_dropout = rnnfast.GRU(3, 4, num_layers=3, bidirectional=True, dropout=0.7, seed=1, dtype=np.float64)
    without = rnnfast.GRU(3, 4, num_layers=3, bidirectional=True, seed=1, dtype=np.float64)
    np.testing.assert_array_equal(with_dropout(x)[0], without(x)[0])
    np.testing.assert_array_equal(with_dropout.forward(x)[0], without.forward(x)[0])
    # ...and a training forward without dropout equals inference.
    np.testing.assert_array_equal(without.forward(x, train=True)[0], without(x)[0])


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_masks_fraction_scale_and_placement(p, rng):
    T, B, H, L = 25, 40, 10, 3
    layer = rnnfast.RNN(4, H, num_layers=L, bidirectional=True, dropout=p, dtype=np.float64, seed=9)
    x = nonzero(rng, (T, B, 4))
    out, _ = layer.forward(x, train=True)
    masks = layer.dropout_masks
    assert len(masks) == L - 1 and all(m.shape == (T, B, 2 * H) for m in masks)
    values = np.concatenate([m.ravel() for m in masks])
    np.testing.assert_array_equal(np.unique(values), [0.0, 1.0 / (1.0 - p)])
    # Zeros ~ Binomial(n, p): 8 standard deviations is a bound a correct implementation never reaches
    # (probability < 1e-15), while any systematic error in p of 2% or more lands outside it.
    n = values.size
    assert abs(np.mean(values == 0) - p) <= 8 * np.sqrt(p * (1 - p) / n)
    # The masks act on the inputs of layers 1..L-1, nowhere else: recompute with rnnfast.ops.
    inp = x
    for k in range(L):
        ys = [ops.rnn_forward(inp, None, *(layer.params[f"{w}_l{k}{s}"] for w in
                                            ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
                              reverse=bool(s))[0] for s in ("", "_reverse")]
        inp = np.concatenate(ys, axis=-1)
        if k < L - 1:
            inp = inp * masks[k]
    np.testing.assert_allclose(out, inp, rtol=1e-12, atol=1e-14)
    layer.backward(np.ones_like(out))
    assert layer.dropout_masks == []


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="num_layers=1"):
        rnnfast.GRU(2, 3, dropout=0.2)


# ------------------------------------------------------------------------------------------------- parameters

def test_init_like_torch_and_reproducible():
    a = rnnfast.LSTM(3, 16, num_layers=2, bidirectional=True, proj_size=4, seed=123)
    b = rnnfast.LSTM(3, 16, num_layers=2, bidirectional=True, proj_size=4, seed=123)
    c = rnnfast.LSTM(3, 16, num_layers=2, bidirectional=True, proj_size=4, seed=124)
    bound = 1 / np.sqrt(16)
    for name, p in a.state_dict().items():
        assert p.dtype == np.float32
        assert np.all(np.abs(p) <= bound) and np.abs(p).max() > 0.8 * bound, name
        np.testing.assert_array_equal(p, b.state_dict()[name])
        assert not np.array_equal(p, c.state_dict()[name])
    # The init generator is numpy.random.default_rng(seed), drawing the parameters in torch's order.
    expected = np.random.default_rng(123).uniform(-bound, bound, (64, 3)).astype(np.float32)
    np.testing.assert_array_equal(a.weight_ih_l0, expected)
    assert rnnfast.LSTM(3, 4, peephole=True, seed=0).weight_peep_l0.shape == (3, 4)


def test_state_dict_copies_and_load_casts(rng):
    torch = require_peer("torch")
    layer = rnnfast.GRU(3, 4, num_layers=2, seed=0)  # float32
    state = layer.state_dict()
    state["weight_ih_l0"][...] = 7
    assert not np.any(layer.weight_ih_l0 == 7)
    module = torch.nn.GRU(3, 4, num_layers=2).double()
    result = layer.load_state_dict(module.state_dict())
    assert result == ([], [])
    for name, p in module.state_dict().items():
        assert layer.params[name].dtype == np.float32
        np.testing.assert_array_equal(layer.params[name], p.numpy().astype(np.float32))
    plain = {n: v.tolist() for n, v in module.state_dict().items()}  # anything numpy.asarray understands
    layer.load_state_dict(plain)


def test_load_state_dict_errors_leave_the_layer_unchanged():
    layer = rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, seed=0)
    before = layer.state_dict()
    good = rnnfast.LSTM(3, 4, num_layers=2, bidirectional=True, seed=1).state_dict()
    missing = dict(good)
    del missing["bias_hh_l1_reverse"]
    with pytest.raises(KeyError, match="missing keys \\['bias_hh_l1_reverse'\\]"):
        layer.load_state_dict(missing)
    extra = dict(good, weight_hr_l0=np.zeros((2, 4)))
    with pytest.raises(KeyError, match="unexpected keys \\['weight_hr_l0'\\]"):
        layer.load_state_dict(extra)
    bad_shape = dict(good, weight_hh_l1=np.zeros((16, 5)))
    with pytest.raises(ValueError, match=r"weight_hh_l1.*expected shape \(16, 4\), got \(16, 5\)"):
        layer.load_state_dict(bad_shape)
    with pytest.raises(TypeError, match="weight_ih_l0"):
        layer.load_state_dict(dict(good, weight_ih_l0=np.full((16, 3), "a")))
    for name, p in layer.state_dict().items():
        np.testing.assert_array_equal(p, before[name])
    # strict=False loads what matches and reports the rest.
    result = layer.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["bias_hh_l1_reverse"] and result.unexpected_keys == []
    np.testing.assert_array_equal(layer.weight_ih_l1, good["weight_ih_l1"])
    np.testing.assert_array_equal(layer.bias_hh_l1_reverse, before["bias_hh_l1_reverse"])
    result = layer.load_state_dict(extra, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == ["weight_hr_l0"]
    np.testing.assert_array_equal(layer.bias_hh_l1_reverse, good["bias_hh_l1_reverse"])


def test_parameters_are_attributes_and_live():
    layer = rnnfast.RNN(2, 3, seed=0)
    assert layer.weight_ih_l0 is layer.params["weight_ih_l0"]
    assert [n for n, _ in layer.named_parameters()] == list(layer.params)
    with pytest.raises(AttributeError, match="weight_ih_l1"):
        layer.weight_ih_l1


def test_repr():
    assert repr(rnnfast.LSTM(3, 4, num_layers=2, proj_size=2)) == "LSTM(3, 4, num_layers=2, proj_size=2)"
    assert repr(rnnfast.RNN(3, 4, nonlinearity="relu", dtype=np.float64)) == \
        "RNN(3, 4, nonlinearity='relu', dtype=float64)"


def test_clip_grad_norm(rng):
    layer = rnnfast.GRU(2, 3, dtype=np.float64, seed=0)
    for g in layer.grads.values():
        g[...] = nonzero(rng, g.shape)
    norm = np.sqrt(sum(np.sum(g ** 2) for g in layer.grads.values()))
    assert rnnfast.clip_grad_norm(layer, 1.0) == pytest.approx(norm)
    assert np.sqrt(sum(np.sum(g ** 2) for g in layer.grads.values())) == pytest.approx(1.0, rel=1e-5)
    assert rnnfast.clip_grad_norm([layer], 10.0) == pytest.approx(1.0, rel=1e-5)  # below: unchanged


# ------------------------------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("cls, args, kwargs, error, match", [
    (rnnfast.RNN, (0, 4), {}, ValueError, r"input_size: expected an int >= 1, got 0"),
    (rnnfast.RNN, (3, -1), {}, ValueError, r"hidden_size: expected an int >= 1, got -1"),
    (rnnfast.GRU, (3, 4, 0), {}, ValueError, r"num_layers: expected an int >= 1, got 0"),
    (rnnfast.GRU, (3, 4.0), {}, TypeError, r"hidden_size: expected an int >= 1, got 4.0"),
    (rnnfast.RNN, (3, 4), dict(nonlinearity="sigmoid"), ValueError,
     r"nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'"),
    (rnnfast.LSTM, (3, 4), dict(dropout=1.0), ValueError, r"dropout: expected a float in \[0, 1\), got 1.0"),
    (rnnfast.LSTM, (3, 4), dict(dropout=-0.1), ValueError, r"dropout: expected a float in \[0, 1\), got -0.1"),
    (rnnfast.LSTM, (3, 4), dict(dropout="0.5"), TypeError, r"dropout: expected a float"),
    (rnnfast.LSTM, (3, 4), dict(proj_size=4), ValueError,
     r"proj_size: expected 0 <= proj_size < hidden_size = 4, got 4"),
    (rnnfast.LSTM, (3, 4), dict(proj_size=-1), ValueError, r"proj_size: expected an int >= 0, got -1"),
    (rnnfast.LSTM, (3, 4), dict(dtype=np.int32), TypeError, r"dtype: expected float32 or float64, got int32"),
    (rnnfast.LSTM, (3, 4), dict(dtype="float16"), TypeError, r"dtype: expected float32 or float64, got float16"),
    (rnnfast.GRU, (3, 4), dict(bidirectional="yes"), TypeError, r"bidirectional: expected a bool, got 'yes'"),
    (rnnfast.GRU, (3, 4), dict(reset_after=None), TypeError, r"reset_after: expected a bool, got None"),
    (rnnfast.GRU, (3, 4), dict(proj_size=1), TypeError, r"proj_size"),
    (rnnfast.RNN, (3, 4), dict(peephole=True), TypeError, r"peephole"),
])
def test_bad_constructor_arguments(cls, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(*args, **kwargs)


def test_bad_call_arguments(rng):
    layer = rnnfast.LSTM(3, 4, num_layers=2, dtype=np.float64, seed=0)
    x = nonzero(rng, (5, 2, 3))
    with pytest.raises(ValueError, match=r"x: expected a 3-D \(batched\) or 2-D \(unbatched\) array, got shape"):
        layer(x[None])
    with pytest.raises(ValueError, match=r"x: expected size 3 \(input_size\) on the last axis, got shape"):
        layer(nonzero(rng, (5, 2, 4)))
    with pytest.raises(TypeError, match=r"x: expected dtype float64 \(the module's dtype\), got float32"):
        layer(x.astype(np.float32))
    with pytest.raises(TypeError, match=r"x: expected dtype float64 .* got int64"):
        layer(np.ones((5, 2, 3), dtype=np.int64))
    h, c = np.zeros((2, 2, 4)), np.zeros((2, 2, 4))
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape \(2, 2, 4\), got \(1, 2, 4\)"):
        layer(x, (h[:1], c))
    with pytest.raises(ValueError, match=r"hx\[1\]: expected shape \(2, 2, 4\), got \(2, 3, 4\)"):
        layer(x, (h, np.zeros((2, 3, 4))))
    with pytest.raises(TypeError, match=r"hx: expected None or a pair \(h_0, c_0\)"):
        layer(x, h)
    with pytest.raises(TypeError, match="train: expected a bool"):
        layer.forward(x, train="yes")
    with pytest.raises(TypeError, match="lengths"):
        layer(x, lengths=[1.5, 2.0])
    with pytest.raises(ValueError, match="lengths"):
        layer(x, lengths=[6, 1])
    with pytest.raises(TypeError):
        layer(x, hx=None, length=[1, 2])  # unknown keyword
    gru = rnnfast.GRU(3, 4, bidirectional=True, batch_first=True, dtype=np.float64)
    with pytest.raises(ValueError, match=r"hx: expected shape \(2, 5, 4\), got \(1, 5, 4\)"):
        gru(nonzero(rng, (5, 2, 3)), np.zeros((1, 5, 4)))
    with pytest.raises(ValueError, match=r"hx: expected shape \(2, 4\), got \(2, 1, 4\)"):
        gru(nonzero(rng, (2, 3)), np.zeros((2, 1, 4)))  # unbatched input takes unbatched hx


def test_bad_backward_arguments(rng):
    layer = rnnfast.GRU(3, 4, batch_first=True, dtype=np.float64, seed=0)
    out, h = layer.forward(nonzero(rng, (2, 5, 3)), train=True)
    with pytest.raises(ValueError, match=r"d_output: expected shape \(2, 5, 4\), got \(5, 2, 4\)"):
        layer.backward(np.zeros((5, 2, 4)))
    with pytest.raises(ValueError, match=r"d_hx: expected shape \(1, 2, 4\), got \(2, 4\)"):
        layer.backward(np.zeros(out.shape), np.zeros((2, 4)))
    with pytest.raises(TypeError, match=r"d_output: expected dtype float64"):
        layer.backward(np.zeros(out.shape, np.float32))
    lstm = rnnfast.LSTM(3, 4, dtype=np.float64, seed=0)
    lstm.forward(nonzero(rng, (5, 2, 3)), train=True)
    with pytest.raises(TypeError, match=r"d_hx: expected None or a pair \(d_h_n, d_c_n\)"):
        lstm.backward(None, np.zeros((1, 2, 4)))
    lstm.backward(None)  # a rejected call leaves the training forward pending
