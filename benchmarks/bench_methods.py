"""GPTQ's cost with lowbit's formats as its quantizer (issue 21's target:
GPTQ on a 4096 x 4096 Linear with 128 x 2048 calibration tokens within 3x
the same GPTQ loop with round-to-nearest int4, so that lowbit's quantizer
does not dominate).

The Hessian H = 2 X^T X / tokens is accumulated in float64 from --tokens
rows of correlated inputs (timed, and printed, on its own: 262144 rows of
4096 is about 9 TFLOP in float64); then the GPTQ loop
(:func:`lowbit.emulate.methods.error_feedback.gptq_matrix`, given H) runs
with a plain int4 round-to-nearest column quantizer written here (one
absmax scale per output channel: clamp(round(w / s), -8, 7) * s in torch)
and with each lowbit format, the plain loop before and after them; each
ratio divides a format's time by the plain loop's better time.

    python benchmarks/bench_methods.py [--tokens 8192] [--size 4096] [--formats mxfp4 nvfp4 ...]
"""

from __future__ import annotations

import argparse
import time

import torch

from lowbit.bench import machine
from lowbit.emulate import Observer, QuantSpec
from lowbit.emulate.methods.column_rounding import ColumnRounder, column_rounder
from lowbit.emulate.methods.error_feedback import gptq_matrix

SPECS = {
    "int4 [absmax/channel]": QuantSpec(weight="int4", observers={"weight": Observer(granularity="channel")}),
    "int4_g128_asym": QuantSpec(weight="int4_g128_asym"),
    "mxfp4": QuantSpec(weight="mxfp4"),
    "mxfp8_e4m3": QuantSpec(weight="mxfp8_e4m3"),
    "nvfp4": QuantSpec(weight="nvfp4"),
    "nf4": QuantSpec(weight="nf4"),
    "mx6": QuantSpec(weight="mx6"),
}


class PlainInt4(ColumnRounder):
    """Round to nearest int4 with a per-channel absmax scale, in plain torch."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(QuantSpec(), torch.float64, weight.shape[1])
        self.scale = (weight.abs().amax(dim=1) / 7).double().clamp(min=1e-12)

    def round(self, column: int, values: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(values / self.scale), -8, 7) * self.scale


def hessian(size: int, tokens: int, chunk: int = 4096) -> torch.Tensor:
    """2 X^T X / tokens in float64 for X = Z M (float32): Z normal, M = I + a dense random mix."""
    generator = torch.Generator().manual_seed(1)
    mix = torch.eye(size) + torch.randn(size, size, generator=generator) / size ** 0.5
    gram = torch.zeros(size, size, dtype=torch.float64)
    for start in range(0, tokens, chunk):
        x = (torch.randn(min(chunk, tokens - start), size, generator=generator) @ mix).double()
        gram.addmm_(x.T, x)
    return gram * (2.0 / tokens)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="calibration rows for H (the issue: 262144)")
    parser.add_argument("--size", type=int, default=4096, help="the Linear is size x size")
    parser.add_argument("--formats", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()} ({torch.get_num_threads()} torch threads)\n")
    seconds, h = timed(lambda: hessian(args.size, args.tokens))
    print(f"H from {args.tokens} tokens of {args.size} features (float64): {seconds:.1f} s\n")
    weight = torch.randn(args.size, args.size, generator=torch.Generator().manual_seed(2))
    small = weight[:64, :256]  # warm-up on a small slice (numba's first calls load or compile kernels)
    for spec in (SPECS[name] for name in args.formats):
        gptq_matrix(small, h[:256, :256], column_rounder(spec, small, small))
    plain = [timed(lambda: gptq_matrix(weight, h, PlainInt4(weight)))[0]]
    rows = []
    for name in args.formats:
        spec = SPECS[name]
        seconds, _ = timed(lambda: gptq_matrix(weight, h, column_rounder(spec, weight, weight)))
        rows.append((name, seconds))
    plain.append(timed(lambda: gptq_matrix(weight, h, PlainInt4(weight)))[0])
    baseline = min(plain)
    print(f"GPTQ loop on a {args.size} x {args.size} Linear (block 128, float64), given H; plain int4 RTN "
          f"quantizer: {plain[0]:.2f} s before the formats, {plain[1]:.2f} s after\n")
    print("| quantizer | seconds | ratio to plain int4 RTN |")
    print("|---|---:|---:|")
    print(f"| plain int4 RTN (torch) | {baseline:.2f} | 1.00 |")
    for name, seconds in rows:
        print(f"| lowbit {name} | {seconds:.2f} | {seconds / baseline:.2f} |")


if __name__ == "__main__":
    main()
