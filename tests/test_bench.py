"""Tests of the benchmark harness (rnnfast.bench) and the ONNX graph builder: FLOP counting, the JSON
document, peer detection, and the weight conversions to the peers. No timing assertions."""
import json
import sys

import numpy as np
import pytest

import rnnfast
from conftest import require_peer
from rnnfast import bench


# ---- FLOP counting: forward 2*T*B*(I+H)*G*H, training 3x -------------------------------------------------

@pytest.mark.parametrize("cell, config, mode, expected", [
    # 2 * 100 * 1 * (128 + 128) * 4 * 128 = 26_214_400
    ("lstm", "lat", "inference", 26_214_400),
    ("lstm", "lat", "training", 3 * 26_214_400),
    # 2 * 100 * 32 * (256 + 256) * 3 * 256 = 2_516_582_400
    ("gru", "mid", "inference", 2_516_582_400),
    # 2 * 50 * 64 * (512 + 512) * 1 * 512 = 3_355_443_200, x3 = 10_066_329_600
    ("rnn", "big", "training", 10_066_329_600),
    # 2 * 25 * 16 * (1024 + 1024) * 4 * 1024 = 6_710_886_400
    ("lstm", "wide", "inference", 6_710_886_400),
])
def test_flops_standard_configs(cell, config, mode, expected):
    assert bench.flops(cell, bench.CONFIGS[config], mode) == expected


def test_flops_uneven_shape():
    # T=3, B=5, I=7, H=2, GRU: 2 * 3 * 5 * (7 + 2) * 3 * 2 = 1620; training 4860
    assert bench.flops("gru", (3, 5, 7, 2), "inference") == 1620
    assert bench.flops("gru", (3, 5, 7, 2), "training") == 4860


def test_standard_configs_are_the_contract():
    assert bench.CONFIGS == {"lat": (100, 1, 128, 128), "mid": (100, 32, 256, 256),
                             "big": (50, 64, 512, 512), "wide": (25, 16, 1024, 1024)}


# ---- The JSON document, from an in-process run on a tiny shape ----------------------------------------------

REQUIRED_ROW_KEYS = {"impl": str, "cell": str, "config": str, "mode": str, "dtype": str,
                     "ms": float, "gflops": float, "peak_share": float}
TINY = "--shape 3,2,4,5 --repeats 2 --rounds 2 --cooldown 0 --settle 0 --peak-size 64 --quiet".split()


def _run(tmp_path, *extra):
    path = tmp_path / "out.json"
    status = bench.main([*TINY, "--json", str(path), *extra])
    with open(path) as f:
        return status, json.load(f)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_json_document(tmp_path, capsys, dtype):
    status, doc = _run(tmp_path, "--impls", "rnnfast,numpy", "--dtype", dtype)
    assert status == 0
    assert set(doc) == {"header", "rows"}
    header = doc["header"]
    for key in ("cpu", "logical_cpus", "threads", "blas", "versions", "impls", "env", "gemm", "warnings"):
        assert key in header, key
    assert header["gemm"]["name"] == ("SGEMM" if dtype == "float32" else "DGEMM")
    assert header["gemm"]["gflops"] > 0

    rows = doc["rows"]
    assert len(rows) == 3 * 2 * 2        # cells x modes x impls
    assert {(r["cell"], r["mode"], r["impl"]) for r in rows} == {
        (c, m, i) for c in bench.CELLS for m in bench.MODES for i in ("rnnfast", "numpy")}
    for row in rows:
        for key, kind in REQUIRED_ROW_KEYS.items():
            assert isinstance(row[key], kind), (key, row[key])
        assert row["config"] == "custom" and row["dtype"] == dtype
        assert (row["T"], row["B"], row["I"], row["H"]) == (3, 2, 4, 5)
        assert row["flops"] == bench.flops(row["cell"], (3, 2, 4, 5), row["mode"])
        assert row["ms"] > 0 and row["repeats"] == 2 and len(row["times_ms"]) == 2
        assert row["gflops"] == pytest.approx(row["flops"] / row["ms"] / 1e6)
        assert row["peak_share"] == pytest.approx(row["gflops"] / header["gemm"]["gflops"])
        assert row["agrees"] is True
    for row in rows:
        if row["impl"] == "rnnfast":
            assert row["speedup_of_rnnfast"] == pytest.approx(1.0)
            assert set(row["speedup_vs"]) == {"numpy"}

    printed = capsys.readouterr().out
    assert "median ms" in printed and "GFLOP/s" in printed and "custom" in printed


def test_table_lines_have_fixed_width(tmp_path, capsys):
    _run(tmp_path, "--impls", "rnnfast,numpy", "--cells", "lstm", "--modes", "inference")
    out = capsys.readouterr().out.splitlines()
    start = out.index(bench.ROW_TABLE.header())
    lines = out[start:out.index("", start)]          # the header and one line per implementation
    assert len(lines) == 3
    assert len({len(line) for line in lines}) == 1


# ---- Peers: a missing one is reported, not an error --------------------------------------------------------

@pytest.mark.parametrize("peer", ["onnxruntime", "torch"])
def test_missing_peer_is_reported(tmp_path, capsys, monkeypatch, peer):
    monkeypatch.setitem(sys.modules, peer, None)        # makes `import <peer>` raise ImportError
    found = bench.detect_impls(["rnnfast", peer])
    assert found["rnnfast"]["available"] is True
    assert found[peer]["available"] is False and peer in found[peer]["reason"]

    status, doc = _run(tmp_path, "--impls", f"rnnfast,{peer}", "--cells", "rnn")
    assert status == 0
    assert doc["header"]["impls"][peer]["available"] is False
    assert {row["impl"] for row in doc["rows"]} == {"rnnfast"}
    assert f"missing    {peer}" in capsys.readouterr().out


@pytest.mark.parametrize("option, value", [("--cooldown", "-0.1"), ("--settle", "-1"), ("--repeats", "0"),
                                           ("--rounds", "0"), ("--threads", "0")])
def test_out_of_range_options_are_refused_by_name(option, value, capsys):
    with pytest.raises(SystemExit) as info:
        bench.parse_args([option, value])
    assert info.value.code == 2
    assert option in capsys.readouterr().err


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as info:
        bench.parse_args(["--plot", "x.png"])
    assert info.value.code == 2
    assert "matplotlib" in capsys.readouterr().err


def test_interleaving_schedule():
    log = []
    calls = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    samples = bench.time_interleaved(calls, budget_s=1.0, max_repeats=10, rounds=2, cooldown_s=0.0, repeats=4,
                                     settle_s=0.0)
    assert {name: len(times) for name, times in samples.items()} == {"a": 4, "b": 4, "c": 4}
    # warm-ups; then per round each implementation once (rotated start): 1 settle call + its 2 timed calls
    assert "".join(log) == "abc" + "aaa" "bbb" "ccc" + "bbb" "ccc" "aaa"


def test_turns_settle_for_settle_s_before_timing(monkeypatch):
    clock = {"now": 0.0}
    log = []

    def call(name, seconds):
        log.append((name, clock["now"]))
        clock["now"] += seconds

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: None)
    calls = {"fast": lambda: call("fast", 0.001), "slow": lambda: call("slow", 0.5)}
    samples = bench.time_interleaved(calls, budget_s=1.0, max_repeats=3, rounds=1, cooldown_s=0.0,
                                     settle_s=0.0045)
    assert samples["fast"] == pytest.approx([0.001] * 3)
    names = [name for name, _ in log]
    # warm-ups; then "fast": settle calls until 4.5 ms have passed (5 of 1 ms), its 3 timed calls; "slow"
    # (costlier than SETTLE_CALL_MAX_S) no settle call, its 2 timed calls (1 s budget / 0.5 s)
    assert names == ["fast", "slow"] + ["fast"] * (5 + 3) + ["slow"] * 2


def test_slow_implementation_is_bounded_by_the_budget(monkeypatch):
    clock = {"now": 0.0}

    def slow():                        # advances the (fake) clock by 10 s per call
        clock["now"] += 10.0

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["now"])
    samples = bench.time_interleaved({"slow": slow, "fast": lambda: None}, budget_s=2.5, max_repeats=7,
                                     rounds=3, cooldown_s=0.0)
    assert len(samples["slow"]) == 1            # 2.5 s budget / 10 s per call: the minimum, one
    assert len(samples["fast"]) == 7            # free calls: capped by max_repeats


def test_disagreeing_outputs_are_flagged():
    y = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    diffs = bench.compare_outputs({"rnnfast": y, "good": y + 1e-6, "bad": y[:, :, ::-1]})
    rows = bench.make_rows("gru", "custom", (2, 3, 4, 4), "inference", "float32",
                           {name: [1e-3, 2e-3] for name in diffs}, diffs, peak_gflops=100.0)
    agrees = {row["impl"]: row["agrees"] for row in rows}
    assert agrees == {"rnnfast": True, "good": True, "bad": False}


# ---- Conversions to the peers agree with rnnfast.reference ------------------------------------------------

def _reference_output(cell, data, **options):
    forward = getattr(rnnfast.reference, f"{cell}_forward")
    return forward(data.x, *data.states, data.w_ih, data.w_hh, data.b_ih, data.b_hh, **options)[0]


@pytest.mark.parametrize("cell", bench.CELLS)
def test_onnx_graph_matches_reference(cell):
    require_peer("onnx")
    require_peer("onnxruntime")
    from rnnfast import _onnx_models
    data = bench.make_inputs(cell, (7, 3, 5, 6), "float32", seed=3)
    session = _onnx_models.make_session(
        _onnx_models.build_model(cell, data.w_ih, data.w_hh, data.b_ih, data.b_hh), n_threads=1)
    y = session.run(["Y"], _onnx_models.state_feeds(cell, data.x, *data.states))[0]
    assert y.shape == (7, 1, 3, 6)
    np.testing.assert_allclose(y[:, 0], _reference_output(cell, data), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell, options, onnx_options", [
    ("rnn", {"nonlinearity": "relu"}, {"nonlinearity": "relu"}),
    ("gru", {"reset_after": False}, {"reset_after": False}),
])
def test_onnx_graph_variants_match_reference(cell, options, onnx_options):
    require_peer("onnx")
    require_peer("onnxruntime")
    from rnnfast import _onnx_models
    data = bench.make_inputs(cell, (6, 2, 4, 5), "float32", seed=4)
    model = _onnx_models.build_model(cell, data.w_ih, data.w_hh, data.b_ih, data.b_hh, **onnx_options)
    y = _onnx_models.make_session(model, n_threads=1).run(
        ["Y"], _onnx_models.state_feeds(cell, data.x, *data.states))[0]
    np.testing.assert_allclose(y[:, 0], _reference_output(cell, data, **options), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("peer", ["torch", "onnxruntime"])
@pytest.mark.parametrize("cell", bench.CELLS)
def test_harness_peer_setup_matches_reference(cell, peer):
    require_peer(peer)
    if peer == "onnxruntime":
        require_peer("onnx")
    data = bench.make_inputs(cell, (5, 3, 4, 6), "float32", seed=5)
    calls = bench.IMPLS[peer].setup(cell, data)
    np.testing.assert_allclose(calls["inference"](), _reference_output(cell, data), rtol=1e-4, atol=1e-5)
    if "training" in calls:
        calls["training"]()          # runs; its gradients are torch's business


def test_onnx_gate_order():
    from rnnfast._onnx_models import to_onnx_gates
    blocks = np.arange(4)[:, None] * np.ones((4, 2))               # block k filled with k
    assert to_onnx_gates(blocks, "lstm")[:, 0].tolist() == [0, 3, 1, 2]    # i, o, f, g
    assert to_onnx_gates(blocks[:3], "gru")[:, 0].tolist() == [1, 0, 2]      # z, r, n
