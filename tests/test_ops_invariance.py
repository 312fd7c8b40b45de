"""rnnfast.ops invariances: the thread count, the memory layout of the inputs (Fortran order, strided and
transposed views, negative and zero strides, read-only arrays, Python lists) change no bit of any result;
inputs are never modified and results never share memory with them; backward can be repeated."""
import numpy as np
import pytest

import rnnfast
from rnnfast import ops
from test_ops import CASES, FLOATS, GRAD_NAMES, OUT_NAMES, backward, d_outputs_for, forward, make_problem


@pytest.fixture(autouse=True)
def restore_threads():
    """1 thread unless a test sets more (fast on a busy machine); the count is restored afterwards."""
    n = rnnfast.get_num_threads()
    rnnfast.set_num_threads(1)
    yield
    rnnfast.set_num_threads(n)


def run(cell, a, kw, d, threads=None, **options):
    """Forward (training) then backward with the output gradients d, with `threads` threads if given.
    Returns (outputs, gradients) as tuples."""
    if threads is not None:
        rnnfast.set_num_threads(threads)
    out, saved = forward(ops, cell, a, kw, training=True, **options)
    return tuple(out), tuple(backward(ops, cell, d, saved, a))


def assert_same_bits(results, expected, what):
    """Every output and gradient of `results` equals that of `expected`: dtype, shape and every bit."""
    (out, grads), (out_e, grads_e) = results, expected
    for name, o, e in zip(OUT_NAMES["lstm"], out, out_e):
        assert o.dtype == e.dtype and np.array_equal(o, e), f"{what}: {name} differs"
    assert len(grads) == len(grads_e)
    for name, g, e in zip(GRAD_NAMES["lstm"] if len(grads) > 6 else GRAD_NAMES["rnn"], grads, grads_e):
        assert (g is None) == (e is None), name
        if g is not None:
            assert g.dtype == e.dtype and np.array_equal(g, e), f"{what}: {name} differs"


# ------------------------------------------------------------------------------------ thread count

# With n threads the kernels split batch rows when B >= 16 n, else hidden units (panel groups). B = 1, 3:
# hidden split for 2 and 3 threads; B = 40: batch split for 2 threads, hidden split for 3; B = 64: batch
# split for both. H = 72 (P = 71) gives at least 2 panel groups for every cell, dtype and phase, so every
# thread gets work in the hidden split.
@pytest.mark.parametrize("B", [1, 3, 40, 64])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_thread_count_changes_no_bit(rng, monkeypatch, case, dtype, B):
    T = 3
    cell, a, kw = make_problem(rng, case, T, B, 5, 72, 71, dtype=dtype)
    lengths = rng.integers(0, T + 1, B)
    lengths[0] = T
    lengths[-1] = 0 if B > 1 else T
    reverse = B % 2 == 1
    out, _ = forward(ops, cell, a, kw, lengths=lengths, reverse=reverse)
    d = d_outputs_for(rng, out)
    expected = run(cell, a, kw, d, threads=1, lengths=lengths, reverse=reverse)
    for n in (2, 3):
        assert_same_bits(run(cell, a, kw, d, threads=n, lengths=lengths, reverse=reverse), expected,
                         f"{n} threads vs 1")
    # the other split forced on 2 threads (ops._split): batch rows for B = 1, 3, hidden units for B = 40, 64
    monkeypatch.setattr(ops, "_split", lambda *args: 1 if B < 32 else 2)
    assert_same_bits(run(cell, a, kw, d, threads=2, lengths=lengths, reverse=reverse), expected,
                     "2 threads, the other split vs 1 thread")
    monkeypatch.undo()
    # forward and backward with different thread counts
    rnnfast.set_num_threads(3)
    out3, saved3 = forward(ops, cell, a, kw, lengths=lengths, reverse=reverse, training=True)
    rnnfast.set_num_threads(1)
    assert_same_bits((tuple(out3), tuple(backward(ops, cell, d, saved3, a))), expected, "forward 3, backward 1")


# A single row without lengths takes the batch-1 fast paths: the recurrent row sums its k range in two blocks
# (gemm_row1), the input projection runs in the barrier's shadow in 4-row tiles, and LSTM's and GRU's
# epilogue runs over a thread's panel groups in one call, as if they were rows (how many groups depends on
# the thread count). H = 72 and 136: whole groups and a partial last one, 1-4 groups a thread. Every way of
# running batch 1 on more threads gives one thread's bits: the hidden split on 2 and 3 threads (inference
# too), the work rule forced off, and the projection helper, with lengths and reversed too.
@pytest.mark.parametrize("H", [72, 136])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_batch1_thread_count_changes_no_bit(rng, monkeypatch, case, dtype, H):
    T = 21
    cell, a, kw = make_problem(rng, case, T, 1, 7, H, H - 3, dtype=dtype)
    out, _ = forward(ops, cell, a, kw)
    d = d_outputs_for(rng, out)
    expected = run(cell, a, kw, d, threads=1)
    for n in (2, 3):
        assert_same_bits(run(cell, a, kw, d, threads=n), expected, f"{n} threads vs 1")
        rnnfast.set_num_threads(n)
        inference, _ = forward(ops, cell, a, kw)
        for name, o, e in zip(OUT_NAMES[cell], inference, expected[0]):
            assert np.array_equal(o, e), f"inference on {n} threads vs training on 1: {name} differs"
    # the work rule (ops._MIN_STEP_WORK_PER_THREAD) keeps RNN H = 72 on one thread; forced onto 2 and 3, each
    # thread has one group (float32), whose two k blocks (64 and 8 units) the first step sums side by side
    # (gemm_row1x2), where one thread sums them one after the other
    monkeypatch.setattr(ops, "_MIN_STEP_WORK_PER_THREAD", 1)
    for n in (2, 3):
        assert_same_bits(run(cell, a, kw, d, threads=n), expected, f"{n} threads (forced) vs 1")
    monkeypatch.undo()
    # steps kept on one thread with the projection on a second (ops._HELPER_MIN_WORK; common.h, fwd_begin),
    # in blocks of 8 rows (T = 21: two whole blocks and a part); the helper did run
    for lengths, reverse in ((None, False), (np.array([T - 4]), True)):
        if lengths is not None:
            expected = run(cell, a, kw, d, threads=1, lengths=lengths, reverse=reverse)
        monkeypatch.setattr(ops, "_HELPER_MIN_WORK", 0)
        monkeypatch.setattr(ops, "_MIN_STEP_WORK_PER_THREAD", 10 ** 12)
        monkeypatch.setattr(ops, "_TUNE_MAX_WORK", 0)  # the rule's count, not one chosen by timings
        helped = []
        kernel_run = ops._kernels.run

        def recording_run(*args, **kwargs):
            helped.append(kwargs.get("xw_helper", False))
            return kernel_run(*args, **kwargs)

        monkeypatch.setattr(ops._kernels, "run", recording_run)
        assert_same_bits(run(cell, a, kw, d, threads=2, lengths=lengths, reverse=reverse), expected,
                         "projection helper vs 1 thread")
        inference, _ = forward(ops, cell, a, kw, lengths=lengths, reverse=reverse)
        for name, o, e in zip(OUT_NAMES[cell], inference, expected[0]):
            assert np.array_equal(o, e), f"inference with the projection helper vs 1 thread: {name} differs"
        assert helped == [True, False, True], helped  # training forward, backward, inference forward
        monkeypatch.undo()
        rnnfast.set_num_threads(1)


# A batch-1 inference forward in the band of step work (ops._TUNE_MIN_WORK.._TUNE_MAX_WORK) runs the way its
# own timings favour: one thread, two projecting in the barrier's shadow, or two projecting up front. Here a
# fake clock makes each way take its own time, so after the fill the favoured way runs, the others in turn
# only every _TUNE_PROBE-th call, and a change of the timings moves the choice at the next probes. Every
# call gives the same bits (each way runs at least _TUNE_KEEP times in the fill).
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_batch1_thread_choice_by_timings(rng, monkeypatch, case, dtype):
    H = 128 if CASES[case][0] == "rnn" else 64
    cell, a, kw = make_problem(rng, case, 9, 1, 16, H, H - 16, dtype=dtype)
    work = ops._GATES[cell] * H * a["w_hh"].shape[1]
    if not ops._TUNE_MIN_WORK <= work <= ops._TUNE_MAX_WORK:
        pytest.fail(f"{case} H = {H}: {work} multiply-adds a step is outside the band")
    rnnfast.set_num_threads(1)
    expected, _ = forward(ops, cell, a, kw)
    rnnfast.set_num_threads(2)
    ONE, SHADOW, UP = (1, True), (2, True), (2, False)
    now, cost, used = [0.0], {ONE: 1.0, SHADOW: 2.0, UP: 4.0}, []
    kernel_run = ops._kernels.run

    def timed_run(*args, **kwargs):
        way = ONE if kwargs.get("xw_helper") or args[14] == 1 else (2, kwargs.get("shadow", True))
        used.append(way)
        now[0] += cost[way]
        return kernel_run(*args, **kwargs)

    monkeypatch.setattr(ops._kernels, "run", timed_run)
    monkeypatch.setattr(ops, "_clock", lambda: now[0])
    # a fresh plan, whose choice starts from the rule; the plans kept before come back afterwards, so that no
    # later test meets a choice made on this fake clock
    monkeypatch.setattr(ops._scratch_tls, "plans", None, raising=False)
    P, K, W = ops._TUNE_PROBE, ops._TUNE_KEEP, ops._TUNE_WARM
    fill = W + 3 * K

    def calls(n):
        del used[:]
        for _ in range(n):
            out, _ = forward(ops, cell, a, kw)
            for name, o, e in zip(OUT_NAMES[cell], out, expected):
                assert np.array_equal(o, e), f"{name} differs from one thread's"
        return list(used)

    first = calls(fill)
    assert sorted(set(first[W:])) == sorted([ONE, SHADOW, UP]), first  # every way timed in the fill
    assert all(first[W + i * K:W + (i + 1) * K].count(first[W + i * K]) == K for i in range(3)), first
    later = calls(4 * P)
    probes = {i: w for i, w in enumerate(later, fill + 1) if w != ONE}
    assert sorted(probes) == [P, 2 * P, 3 * P, 4 * P], later  # probes only, the other two in turn
    assert sorted(set(probes.values())) == [UP, SHADOW] and probes[P] != probes[2 * P], probes
    # one thread is now the slowest: the others' kept timings win at their next probes, first UP's or
    # SHADOW's, whichever comes, and then SHADOW's (by 7P whatever the order of the ways)
    cost[ONE] = 5.0
    later = calls(6 * P)
    tail = [(c, w) for c, w in enumerate(later, fill + 4 * P + 1) if c > 7 * P]
    assert [c for c, w in tail if w != SHADOW] == [8 * P, 9 * P, 10 * P], tail
    assert {w for c, w in tail if w != SHADOW} == {ONE, UP}, tail


# The weight gradients read x, hprev and m (the projection's or reset-before's) where they are when their
# rows are whole panel groups (I, H, P = 32, 32, 16 here, for every lane width) and pack them otherwise;
# padding (lengths) keeps x packed. Packing forced (ops._IN_PLACE_MAX_ROW_BYTES = 0) changes no bit, and the
# in-place run packs fewer operands in its backward, so the in-place path did run.
@pytest.mark.parametrize("padded", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_weight_gradient_operands_in_place_change_no_bit(rng, monkeypatch, case, dtype, padded):
    T, B = 4, 5
    cell, a, kw = make_problem(rng, case, T, B, 32, 32, 16, dtype=dtype)
    lengths = np.full(B, T)
    if padded:
        lengths[1:] = rng.integers(1, T, B - 1)
    out, _ = forward(ops, cell, a, kw, lengths=lengths)
    d = d_outputs_for(rng, out)
    rnnfast.set_num_threads(2)
    packs = []
    pack = ops._pack

    def counting_pack(specs, *args, **kwargs):
        packs.append(len(specs))
        return pack(specs, *args, **kwargs)

    monkeypatch.setattr(ops, "_pack", counting_pack)
    out_p, saved = forward(ops, cell, a, kw, lengths=lengths, training=True)
    packs.clear()
    in_place = (tuple(out_p), tuple(backward(ops, cell, d, saved, a)))
    n_in_place = len(packs)
    monkeypatch.setattr(ops, "_IN_PLACE_MAX_ROW_BYTES", 0)
    out_p, saved = forward(ops, cell, a, kw, lengths=lengths, training=True)
    packs.clear()
    packed = (tuple(out_p), tuple(backward(ops, cell, d, saved, a)))
    assert_same_bits(in_place, packed, "operands read in place vs packed")
    assert n_in_place < len(packs), (n_in_place, len(packs))


# A training forward stores the saves of its steps past the caches (non-temporal stores) but for the last
# ops._SAVES_KEEP_BYTES of them (LSTM and GRU reset_after without lengths, whole vectors of units: H = 48
# for every lane width). All, some or none of the steps storing that way change no bit.
@pytest.mark.parametrize("threads", [1, 2], ids=["1thread", "2threads"])
@pytest.mark.parametrize("B", [3, 40], ids=["hidden_split", "batch_split"])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_saves_past_the_caches_change_no_bit(rng, monkeypatch, case, dtype, B, threads):
    T, H = 7, 48
    cell, a, kw = make_problem(rng, case, T, B, 5, H, 17, dtype=dtype)
    reverse = B == 3
    out, _ = forward(ops, cell, a, kw, reverse=reverse)
    d = d_outputs_for(rng, out)
    monkeypatch.setattr(ops, "_SAVES_KEEP_BYTES", -1)  # every save stored as usual
    expected = run(cell, a, kw, d, threads=threads, reverse=reverse)
    for keep in (0, 3 * B * H * np.dtype(dtype).itemsize):  # none kept; the last ~3 steps' saves kept
        monkeypatch.setattr(ops, "_SAVES_KEEP_BYTES", keep)
        assert_same_bits(run(cell, a, kw, d, threads=threads, reverse=reverse), expected, f"keep {keep} bytes")


# ------------------------------------------------------------------------------------ layouts

def _oversubscribed_runs_give_the_bits_of_one(rng, monkeypatch, case, T, B, short, reverse, counts):
    """Every thread count in `counts` (the caps lifted: ops._cpus and the minimum work per thread) gives the
    outputs and gradients of 1 thread, the last row `short` steps shorter than T. The workspaces the calls
    keep are filled with NaN before each run, so that no run can pass on values an earlier one left there
    (an xw row the run forgot to project, say)."""
    cell, a, kw = make_problem(rng, case, T, B, 5, 72, 71, dtype=np.float32)
    lengths = np.full(B, T)
    lengths[-1] = T - short
    out, _ = forward(ops, cell, a, kw, lengths=lengths, reverse=reverse)
    d = d_outputs_for(rng, out)
    expected = run(cell, a, kw, d, threads=1, lengths=lengths, reverse=reverse)
    monkeypatch.setattr(ops, "_cpus", lambda: 64)
    monkeypatch.setattr(ops, "_MIN_STEP_WORK_PER_THREAD", 1)
    for n in counts:
        for kept in getattr(ops._scratch_tls, "pool", {}).values():
            kept.fill(np.nan)
        assert_same_bits(run(cell, a, kw, d, threads=n, lengths=lengths, reverse=reverse), expected,
                         f"{n} threads vs 1")


# The per-step barrier with more threads than this machine has CPUs (the caps lifted: ops._cpus and the
# minimum work per thread): 3, 5, 8 threads take 2, 3, 3 rounds, n not a power of two included, and the
# waiting threads of an oversubscribed team yield their CPU. B = 1 also runs the row kernel (gemm_row1) on
# one to four panel groups a call (a thread's lone group among them), B = 2 and 3 the ordinary tiles; every
# count gives the bits of 1 thread.
@pytest.mark.parametrize("B", [1, 2, 3])
@pytest.mark.parametrize("case", CASES)
def test_more_threads_than_cpus_change_no_bit(rng, monkeypatch, case, B):
    _oversubscribed_runs_give_the_bits_of_one(rng, monkeypatch, case, 4, B, 1, False, (2, 3, 5, 8))


# The input projection in the barrier's shadow (hidden split, the whole sequence in one chunk, a small
# w_ih share): a thread that waits at a step's barrier projects tiles of 6-8 rows of one of its panel
# groups, as many as the wait allows, so the tiles run in an order that differs from run to run and from
# thread count to thread count. T = 37 gives several blocks of rows; with reverse, lengths and 2, 3, 5
# threads every run must give the bits of 1 thread.
@pytest.mark.parametrize("B", [1, 2])
@pytest.mark.parametrize("case", CASES)
def test_projection_in_the_barrier_shadow_changes_no_bit(rng, monkeypatch, case, B):
    _oversubscribed_runs_give_the_bits_of_one(rng, monkeypatch, case, 37, B, 5, B == 2, (2, 3, 5))


def _fortran(v):
    return np.asfortranarray(v)


def _strided(v):
    """A view of every other element of a larger array, along every axis."""
    big = np.full(tuple(2 * n + 1 for n in v.shape), 7, v.dtype)
    view = big[tuple(slice(1, None, 2) for _ in v.shape)]
    view[...] = v
    return view


def _transposed(v):
    """The same values as a transposed view of a C-contiguous array (axes reversed)."""
    return np.ascontiguousarray(v.T).T if v.ndim > 1 else _negative(v)


def _negative(v):
    """Negative strides on every axis."""
    flip = tuple(slice(None, None, -1) for _ in v.shape)
    return np.ascontiguousarray(v[flip])[flip]


def _readonly(v):
    c = np.array(v)
    c.flags.writeable = False
    return c


def _strided_readonly(v):
    c = _strided(v)
    c.flags.writeable = False
    return c


LAYOUTS = dict(fortran=_fortran, strided=_strided, transposed=_transposed, negative=_negative,
               readonly=_readonly, strided_readonly=_strided_readonly)


def _apply(f, a, d, lengths):
    return {k: None if v is None else f(v) for k, v in a.items()}, [None if v is None else f(v) for v in d], f(lengths)


def _copies(a, d):
    return {k: None if v is None else np.array(v, copy=True) for k, v in a.items()}, [np.array(v) for v in d]


def _assert_unmodified(a, d, copies, what):
    a_c, d_c = copies
    for k, v in a.items():
        if v is not None:
            assert np.array_equal(np.asarray(v), a_c[k]), f"{what}: {k} was modified"
    for i, v in enumerate(d):
        assert np.array_equal(np.asarray(v), d_c[i]), f"{what}: d_outputs[{i}] was modified"


def _problem(rng, case, dtype):
    T, B = 5, 4
    cell, a, kw = make_problem(rng, case, T, B, 3, 9, 4, dtype=dtype)
    lengths = np.array([5, 0, 2, 4])
    out, _ = forward(ops, cell, a, kw, lengths=lengths, reverse=True)
    return cell, a, kw, d_outputs_for(rng, out), lengths


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_layout_of_every_argument_changes_no_bit(rng, case, dtype, layout):
    """All arguments at once (x, h0, c0, weights, biases, w_hr, w_peep, lengths, dy, dh_n, dc_n) in the layout;
    same bits as C-contiguous arrays, and the inputs unmodified after forward and backward."""
    cell, a, kw, d, lengths = _problem(rng, case, dtype)
    a_copies = _copies(a, d)
    expected = run(cell, a, kw, d, lengths=lengths, reverse=True)
    _assert_unmodified(a, d, a_copies, "C-contiguous")
    a2, d2, lengths2 = _apply(LAYOUTS[layout], a, d, lengths)
    if layout != "readonly":
        assert not a2["x"].flags.c_contiguous and not a2["w_hh"].flags.c_contiguous
    else:
        assert not a2["x"].flags.writeable and not d2[0].flags.writeable
    copies = _copies(a2, d2)
    assert_same_bits(run(cell, a2, kw, d2, lengths=lengths2, reverse=True), expected, layout)
    _assert_unmodified(a2, d2, copies, layout)
    np.testing.assert_array_equal(lengths2, lengths)


ARGS = ["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh", "lengths", "dy", "dh_n"]
ARGS_LSTM = ARGS + ["c0", "w_hr", "w_peep", "dc_n"]


@pytest.mark.parametrize("case, arg", [(c, arg) for c in ("rnn_relu", "gru_reset_before") for arg in ARGS]
                         + [("lstm_proj_peep", arg) for arg in ARGS_LSTM])
def test_each_argument_alone_strided_and_readonly(rng, case, arg):
    """One argument at a time a strided read-only view (so that a mix of copied and uncopied arrays is met)."""
    cell, a, kw, d, lengths = _problem(rng, case, np.float32)
    expected = run(cell, a, kw, d, lengths=lengths, reverse=True)
    a2, d2, lengths2 = dict(a), list(d), lengths
    if arg in a:
        a2[arg] = _strided_readonly(a[arg])
    elif arg == "lengths":
        lengths2 = _strided_readonly(lengths.astype(np.int32))
    else:
        i = ("dy", "dh_n", "dc_n").index(arg)
        d2[i] = _strided_readonly(d[i])
    copies = _copies(a2, d2)
    assert_same_bits(run(cell, a2, kw, d2, lengths=lengths2, reverse=True), expected, f"{arg} strided read-only")
    _assert_unmodified(a2, d2, copies, arg)


@pytest.mark.parametrize("case", CASES)
def test_zero_strides_broadcast_views(rng, case):
    """np.broadcast_to views (zero strides, read-only) give the numbers of the materialised arrays."""
    cell, a, kw, d, lengths = _problem(rng, case, np.float64)
    a["h0"] = np.broadcast_to(a["h0"][:1], a["h0"].shape)
    if cell == "lstm":
        a["c0"] = np.broadcast_to(a["c0"][:, :1], a["c0"].shape)
    d[0] = np.broadcast_to(d[0][:1], d[0].shape)
    d[1] = np.broadcast_to(d[1][0], d[1].shape)
    materialised = {k: None if v is None else np.array(v) for k, v in a.items()}
    expected = run(cell, materialised, kw, [np.array(v) for v in d], lengths=lengths, reverse=True)
    assert_same_bits(run(cell, a, kw, d, lengths=lengths, reverse=True), expected, "broadcast views")


@pytest.mark.parametrize("case", CASES)
def test_python_lists_are_accepted(rng, case):
    """Lists (of Python floats: float64) for every array argument, lengths included."""
    cell, a, kw, d, lengths = _problem(rng, case, np.float64)
    expected = run(cell, a, kw, d, lengths=lengths, reverse=True)
    a2 = {k: None if v is None else v.tolist() for k, v in a.items()}
    out, saved = forward(ops, cell, a2, kw, training=True, lengths=lengths.tolist(), reverse=True)
    grads = backward(ops, cell, [v.tolist() for v in d], saved, a)
    assert_same_bits((tuple(out), tuple(grads)), expected, "lists")


# ------------------------------------------------------------------------------------ kept plans

# An inference call of the shapes of a kept plan, without lengths, projection or peepholes, runs the plan's
# prepared kernel context with its own arrays put in (ops._kept_call, _kernels.Prepared.bind). Each such call
# must read that call's arrays and nothing of an earlier one: x, h0 / c0 or none, the weights (new arrays and
# the same arrays changed in place), which biases are given, and reverse change from call to call; every
# call gives the bits of a call on a fresh plan (the general path), new outputs that share no memory with
# the call's inputs or earlier outputs, and y on a 64-byte boundary.
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES)
def test_kept_plan_calls_read_each_calls_arrays(rng, monkeypatch, case, dtype, B):
    T, I, H = 5, 6, 40
    cell, a, kw = make_problem(rng, case, T, B, I, H, H - 3, dtype=dtype)
    plain = a.get("w_hr") is None and a.get("w_peep") is None
    kinds = []
    kernel_run = ops._kernels.run

    def recording_run(*args, **kwargs):
        kinds.append(type(args[3]).__name__)
        return kernel_run(*args, **kwargs)

    monkeypatch.setattr(ops._kernels, "run", recording_run)
    monkeypatch.setattr(ops._scratch_tls, "plans", None, raising=False)
    calls = []
    for i in range(8):
        b = dict(a)
        if i % 2:
            b["x"] = rng.standard_normal((T, B, I)).astype(dtype)
        if i % 3 == 1:
            b["h0"] = None
            if cell == "lstm":
                b["c0"] = None
        if i == 3:
            a["w_hh"] *= 0.5  # the same array, changed in place
        if i == 5:
            b["w_ih"] = (a["w_ih"] * -1.5).astype(dtype)
        if i in (2, 6):
            b["b_ih"] = None  # b_hh alone (the same plan: a plan tells only whether any bias is given)
        if i == 4:
            b["b_hh"] = None
        calls.append((b, i in (4, 7)))
    outputs = []
    for b, reverse in calls:
        del kinds[:]
        monkeypatch.setattr(ops._scratch_tls, "plans", None, raising=False)
        want, _ = forward(ops, cell, b, kw, reverse=reverse)  # a fresh plan: the general path
        got, _ = forward(ops, cell, b, kw, reverse=reverse)  # its kept plan
        assert kinds == ["dict", "Bound" if plain else "dict"], kinds
        for name, g, w in zip(OUT_NAMES[cell], got, want):
            assert g.dtype == w.dtype and np.array_equal(g, w), f"{name} differs from a fresh plan's"
        assert got[0].ctypes.data % 64 == 0
        inputs = [v for v in b.values() if v is not None]
        for g in got:
            assert not any(np.shares_memory(g, v) for v in inputs + outputs)
        outputs += list(got)
    del kinds[:]
    forward(ops, cell, b, kw, lengths=np.full(B, T))  # lengths: the general path
    assert kinds == ["dict"], kinds
    if not plain:
        return
    # the kept plan's context checks what it is given
    plan = next(iter(ops._scratch_tls.plans[1].values()))
    prepared = plan[7].prepared
    args = [b[n] for n in ("x", "h0")] + ([b["c0"]] if cell == "lstm" else [None]) + [b[n] for n in (
        "w_ih", "w_hh", "b_ih", "b_hh")]
    for i, wrong in ((0, b["x"][:, :, :-1]), (3, b["w_ih"].astype(np.float16)), (4, b["w_hh"].T),
                     (5, np.zeros(1, dtype)), (1, np.zeros((B + 1, H), dtype))):
        with pytest.raises(ValueError, match="internal"):
            prepared.bind(*args[:i], wrong, *args[i + 1:])
    with pytest.raises(ValueError, match="internal"):  # which biases: none where the plan has them
        prepared.bind(*args[:5], None, None)
    call = prepared.bind(*args)
    G = ops._GATES[cell]
    xw_steps, ub, ub2, uih, fuse_x = plan[:5]
    run_args = (cell, False, np.dtype(dtype), call, T, B, I, H, H, G, False, kw.get("reset_after", True) * 1
                if cell == "gru" else int(kw.get("nonlinearity") == "relu"), False, False, 1)
    layout = dict(ub=ub, ub2=ub2, uih=uih, xw_steps=xw_steps, fuse_x=fuse_x)
    with pytest.raises(ValueError, match="internal"):  # another layout than the plan's
        kernel_run(*run_args, **dict(layout, ub=ub + 1))
    kernel_run(*run_args, **layout)
    with pytest.raises(ValueError, match="internal"):  # a call runs once
        kernel_run(*run_args, **layout)


# ------------------------------------------------------------------------------------ aliasing, repetition

@pytest.mark.parametrize("lengths", ["full", "some0", "all0", "T0"])
@pytest.mark.parametrize("case", CASES)
def test_results_never_share_memory_with_inputs(rng, case, lengths):
    T = 0 if lengths == "T0" else 4
    cell, a, kw = make_problem(rng, case, T, 3, 2, 5, 2)
    lens = dict(full=None, some0=np.array([4, 0, 2]), all0=np.zeros(3, int), T0=None)[lengths]
    out, saved = forward(ops, cell, a, kw, lengths=lens, training=True)
    d = d_outputs_for(rng, out)
    grads = backward(ops, cell, d, saved, a)
    inputs = [v for v in a.values() if v is not None] + d
    results = list(out) + [g for g in grads if g is not None]
    for r in results:
        assert not any(np.shares_memory(r, v) for v in inputs)
    for i, r in enumerate(results):
        assert not any(np.shares_memory(r, s) for s in results[i + 1:])


@pytest.mark.parametrize("case", CASES)
def test_backward_can_be_repeated_and_ignores_changes_to_outputs(rng, case):
    """The saved state is not consumed by backward, and is not the returned y / h_n / c_n: writing into the
    outputs or into the gradients of a first backward changes nothing in a second one."""
    cell, a, kw, d, lengths = _problem(rng, case, np.float32)
    out, saved = forward(ops, cell, a, kw, lengths=lengths, reverse=True, training=True)
    first = tuple(np.array(g) if g is not None else None for g in backward(ops, cell, d, saved, a))
    for o in out:
        o[...] = np.nan
    grads = backward(ops, cell, d, saved, a)
    for g in grads:
        if g is not None:
            g[...] = np.nan
    again = backward(ops, cell, d, saved, a)
    for name, g, e in zip(GRAD_NAMES[cell], again, first):
        assert (g is None) == (e is None) and (g is None or np.array_equal(g, e)), name


@pytest.mark.parametrize("case", CASES)
def test_backward_ignores_changes_to_the_inputs_after_forward(rng, case):
    """The training forward keeps what backward needs (x, the weights packed for backward's GEMMs), so
    overwriting the caller's x and weights between forward and backward changes no gradient."""
    cell, a, kw, d, lengths = _problem(rng, case, np.float32)
    out, saved = forward(ops, cell, a, kw, lengths=lengths, training=True)
    expected = tuple(np.array(g) if g is not None else None for g in backward(ops, cell, d, saved, a))
    out, saved = forward(ops, cell, a, kw, lengths=lengths, training=True)
    for k, v in a.items():
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            v[...] = np.nan
    got = backward(ops, cell, d, saved, a)
    for name, g, e in zip(GRAD_NAMES[cell], got, expected):
        assert (g is None) == (e is None) and (g is None or np.array_equal(g, e)), name


@pytest.mark.parametrize("case", CASES)
def test_every_output_element_is_written(rng, monkeypatch, case):
    """dx and the weight gradients are not zeroed before the kernel writes them: with every new array
    prefilled with NaN instead, the results are the same bits (nothing left unwritten)."""
    cell, a, kw, d, lengths = _problem(rng, case, np.float64)
    expected = run(cell, a, kw, d, lengths=lengths)
    real_new = ops._new

    def nan_new(shape, dtype, fill=None):
        return real_new(shape, dtype, fill=np.nan if fill is None else fill)

    monkeypatch.setattr(ops, "_new", nan_new)
    assert_same_bits(run(cell, a, kw, d, lengths=lengths), expected, "outputs prefilled with NaN")
