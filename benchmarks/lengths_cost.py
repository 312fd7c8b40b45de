"""What variable lengths cost: rnnfast's layers with `lengths=` (random lengths) against the same call without,
and torch with a PackedSequence against torch on the padded batch. Interleaved turns, medians, one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/lengths_cost.py [--configs mid,big] [--threads 2]

Random lengths are uniform in [1, T] (torch's packing rejects 0), sorted nowhere: rnnfast takes the padded
batch as it is, torch packs with enforce_sorted=False as its users do. Both modes: inference and training
(forward + backward of sum(output)).
"""
import argparse
import statistics

import numpy as np

import rnnfast
from rnnfast.bench import CONFIGS, time_interleaved


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="rnn,gru,lstm")
    p.add_argument("--configs", default="lat,mid,big")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.set_num_threads(args.threads)
    rnnfast.set_num_threads(args.threads)
    print(f"rnnfast {rnnfast.__version__}, torch {torch.__version__}, threads {args.threads}; median ms; "
          "lengths uniform in [1, T]")
    print(f"{'cell':5}{'config':7}{'mode':11}{'rnnfast':>10}{'+lengths':>10}{'ratio':>7}"
          f"{'torch':>10}{'packed':>10}{'ratio':>7}")
    for cell in args.cells.split(","):
        for config in args.configs.split(","):
            T, B, I, H = CONFIGS[config]
            rng = np.random.default_rng(args.seed)
            x = rng.standard_normal((T, B, I)).astype(np.float32)
            lengths = rng.integers(1, T + 1, B)
            ours = getattr(rnnfast, cell.upper())(I, H, seed=args.seed)
            theirs = getattr(torch.nn, cell.upper())(I, H)
            ours.load_state_dict(theirs.state_dict())
            xt = torch.from_numpy(x)
            xt_train = xt.clone().requires_grad_(True)
            lt = torch.from_numpy(lengths)

            def rf(train, use_lengths):
                kw = {"lengths": lengths} if use_lengths else {}
                if not train:
                    return lambda: ours(x, **kw)

                def step():
                    y = ours.forward(x, train=True, **kw)[0]
                    ours.backward(np.ones_like(y))
                return step

            def tc(train, packed):
                def run(inp):
                    if packed:
                        out = theirs(pack_padded_sequence(inp, lt, enforce_sorted=False))[0]
                        return pad_packed_sequence(out, total_length=T)[0]
                    return theirs(inp)[0]
                if not train:
                    def infer():
                        with torch.no_grad():
                            run(xt)
                    return infer

                def step():
                    theirs.zero_grad(set_to_none=True)
                    xt_train.grad = None
                    run(xt_train).sum().backward()
                return step

            for mode in ("inference", "training"):
                train = mode == "training"
                calls = {"rnnfast": rf(train, False), "rnnfast+lengths": rf(train, True),
                         "torch": tc(train, False), "torch packed": tc(train, True)}
                samples = time_interleaved(calls, args.budget, 50, 5)
                ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
                print(f"{cell:5}{config:7}{mode:11}{ms['rnnfast']:10.3f}{ms['rnnfast+lengths']:10.3f}"
                      f"{ms['rnnfast+lengths'] / ms['rnnfast']:7.2f}{ms['torch']:10.3f}{ms['torch packed']:10.3f}"
                      f"{ms['torch packed'] / ms['torch']:7.2f}", flush=True)


if __name__ == "__main__":
    main()
