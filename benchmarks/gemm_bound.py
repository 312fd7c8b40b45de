"""What a training call's GEMMs alone cost on this machine: a bound for the training targets.

A training call (forward + backward of sum(output)) of a recurrent layer is, in FLOPs, three times the
forward's GEMMs: x @ w_ih^T for all steps and h_{t-1} @ w_hh^T per step; then dh_t @ w_hh per step,
dx = dg @ w_ih and the weight gradients dg^T x, dg^T h_{t-1}. This times exactly those GEMMs with numpy's
BLAS (operands resident, outputs preallocated, no element-wise work, no dependence between steps honoured)
next to rnnfast's and torch's training calls as the harness makes them (rnnfast.bench.prepare) and the
n x n SGEMM peak the harness uses, in turns, medians, one process:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/gemm_bound.py [--cells rnn,gru] [--configs big]

Each line gives ms, GFLOP/s (the harness's FLOP count) and share of the peak, and the time the target
"at most 2/3 of torch's" (1 for the LSTM) allows with the GFLOP/s it asks for.
"""
import argparse
import statistics

import numpy as np

import rnnfast
from rnnfast._config import blas_info
from rnnfast.bench import CONFIGS, GATES, flops, measure_gemm_peak, prepare, time_interleaved


def gemm_only(T, B, I, H, G, rng):
    """The training call's GEMMs (float32), as one callable."""
    f = np.float32
    x = rng.standard_normal((T * B, I)).astype(f)
    hp = rng.standard_normal((T * B, H)).astype(f)
    dg = rng.standard_normal((T * B, G * H)).astype(f)
    w_ih = rng.standard_normal((G * H, I)).astype(f)
    w_hh = rng.standard_normal((G * H, H)).astype(f)
    xw = np.empty((T * B, G * H), f)
    hw = np.empty((B, G * H), f)
    dh = np.empty((B, H), f)
    dx = np.empty((T * B, I), f)
    dw_ih = np.empty((G * H, I), f)
    dw_hh = np.empty((G * H, H), f)
    w_ih_t, w_hh_t = w_ih.T, w_hh.T

    def run():
        np.matmul(x, w_ih_t, out=xw)
        for t in range(T):
            np.matmul(hp[t * B:(t + 1) * B], w_hh_t, out=hw)
        for t in range(T):
            np.matmul(dg[t * B:(t + 1) * B], w_hh, out=dh)
        np.matmul(dg, w_ih, out=dx)
        np.matmul(dg.T, x, out=dw_ih)
        np.matmul(dg.T, hp, out=dw_hh)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="rnn,gru,lstm")
    p.add_argument("--configs", default="mid,big")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    rnnfast.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    peak = measure_gemm_peak()
    blas = ", ".join(f"{i['internal_api']} {i['version']} {i['architecture']}" for i in blas_info()) or "unknown"
    print(f"rnnfast {rnnfast.__version__}, torch {torch.__version__}, threads {args.threads}, "
          f"numpy BLAS: {blas}; SGEMM peak {peak:.1f} GFLOP/s (n = 2048, best of 5)")
    print(f"{'cell':5}{'config':7}{'what':22}{'ms':>9}{'GFLOP/s':>9}{'peak %':>8}")
    for cell in args.cells.split(","):
        G = GATES[cell]
        for config in args.configs.split(","):
            T, B, I, H = CONFIGS[config]
            rng = np.random.default_rng(args.seed)
            # rnnfast's and torch's calls are the harness's own (same data, same training step)
            shape = (T, B, I, H)
            calls = {f"{name} training": prepare(name, cell, shape, threads=args.threads, seed=args.seed)["training"]
                     for name in ("rnnfast", "torch")}
            calls["its GEMMs alone (BLAS)"] = gemm_only(T, B, I, H, G, rng)
            samples = time_interleaved(calls, args.budget, 30, 5)
            fl = flops(cell, shape, "training")
            med = {k: statistics.median(v) for k, v in samples.items()}
            for k, t in med.items():
                print(f"{cell:5}{config:7}{k:22}{t * 1e3:9.2f}{fl / t / 1e9:9.1f}{100 * fl / t / 1e9 / peak:8.1f}")
            target = med["torch training"] * (1.0 if cell == "lstm" else 2 / 3)
            print(f"{cell:5}{config:7}{'target allows':22}{target * 1e3:9.2f}{fl / target / 1e9:9.1f}"
                  f"{100 * fl / target / 1e9 / peak:8.1f}")


if __name__ == "__main__":
    main()
