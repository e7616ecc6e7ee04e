"""Speed of the datapath model's numba kernel (lowbit.formats.reference_matmul with datapath=).

    python benchmarks/bench_datapath.py [--size 1024]

Prints, for a size^3 product of fp16 values, the time of each profile's
kernel, its multiply-adds per second (in all and per core), and its ratio to
torch's float32 matmul of the same operands measured in the same run (the
baseline: an IEEE product with no model of the adder). The issue's target:
>= 0.2 G multiply-adds per second per core with groups of 16 (h100_fp16).
"""

from __future__ import annotations

import argparse
import time

import numba
import torch

from lowbit.formats import DATAPATHS, reference_matmul

PROFILES = ["h100_fp16", "a100_fp16", "v100_fp16", "ieee_fp32", "exact"]


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    n = args.size
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).half().float()
    b = torch.randn(n, n, generator=generator).half().float()
    reference_matmul(a[:8, :64], b[:8, :64], datapath="h100_fp16")  # compile (or load) the kernel
    baseline = best_of(args.repeats, lambda: a @ b.T)
    cores = numba.get_num_threads()
    print(f"{n} x {n} x {n} fp16 values, {cores} threads; torch float32 matmul {baseline * 1e3:.1f} ms\n")
    print("| profile | group | seconds | G multiply-adds/s | per core | ratio to torch fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in PROFILES:
        seconds = best_of(args.repeats, lambda name=name: reference_matmul(a, b, datapath=name))
        rate = n ** 3 / seconds / 1e9
        print(f"| {name} | {DATAPATHS[name].group or 'K'} | {seconds:.2f} | {rate:.3f} | {rate / cores:.3f} | "
              f"{baseline / seconds:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
