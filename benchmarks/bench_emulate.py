"""Cost of quantized layers against the plain ones, measured alternately in
the same run (best of --repeat): a Linear 4096x4096 on a batch of 64 in
inference (the issue's target: at most 2x the plain Linear) and a training
step (forward and backward), for a few specs.

    python benchmarks/bench_emulate.py [--repeat 20] [--threads N]
"""

from __future__ import annotations

import argparse

import torch

from lowbit.bench import best_seconds, machine
from lowbit.emulate import QuantLinear, QuantSpec

SPECS = {
    "mxfp8_e4m3 input, mxfp4 weight": QuantSpec(input="mxfp8_e4m3", weight="mxfp4"),
    "mxfp8_e4m3 input and weight": QuantSpec(input="mxfp8_e4m3", weight="mxfp8_e4m3"),
    "mx6 input, nvfp4 weight": QuantSpec(input="mx6", weight="nvfp4"),
    "+ mxfp8_e5m2 gradients": QuantSpec(input="mxfp8_e4m3", weight="mxfp4", grad_output="mxfp8_e5m2",
                                        grad_input="mxfp8_e5m2", grad_weight="mxfp8_e5m2"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = torch.nn.Linear(4096, 4096)
    x = torch.randn(64, 4096)
    print(f"machine: {machine()}, torch {torch.__version__} ({torch.get_num_threads()} threads)\n")
    print("Linear 4096 x 4096, batch 64; each ratio divides the quantized layer's best time by the plain one's,")
    print("measured alternately.\n")
    print("| spec | inference ms | plain ms | ratio | training step ms | plain ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, spec in SPECS.items():
        layer = QuantLinear(plain, spec)
        with torch.no_grad():
            q_inf, p_inf = best_seconds(lambda: layer(x), lambda: plain(x), args.repeat)
        xg = x.clone().requires_grad_()

        def step(module):
            return lambda: module(xg).sum().backward()

        q_train, p_train = best_seconds(step(layer), step(plain), max(3, args.repeat // 4))
        print(f"| {name} | {q_inf * 1e3:.2f} | {p_inf * 1e3:.2f} | {q_inf / p_inf:.2f} "
              f"| {q_train * 1e3:.1f} | {p_train * 1e3:.1f} | {q_train / p_train:.2f} |")


if __name__ == "__main__":
    main()
