"""Error against K of each datapath profile: the plot and table of docs/datapaths.md.

    python benchmarks/datapath_error.py [--out docs/images/datapath_error_vs_k.png]

For K = 16 .. 16384, 16 x 16 dot products of random operands (fp16 values for
the fp16 profiles, FP8 E4M3 values for the FP8 ones: normal N(0, 1), and
positive U(0, 1), where truncation cannot cancel), each profile's result is
compared with the exact sum (``DATAPATHS["exact"]``): the median over the
outputs of |result - exact| / (sum of the products' magnitudes), the
relative error that summation bounds are stated in. A measurement of the
models, not of GPUs (benchmarks/datapath_vs_gpu.py compares with those).
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lowbit.formats import get_format, reference_matmul  # noqa: E402

PROFILES = {  # profile: the input format of its operands
    "ieee_fp32": "fp16",
    "v100_fp16": "fp16",
    "a100_fp16": "fp16",
    "h100_fp16": "fp16",
    "h100_fp8": "fp8_e4m3",
    "b200_fp8": "fp8_e4m3",
}
DEPTHS = [16, 64, 256, 1024, 4096, 16384]
SIDE = 16


def relative_errors(kind: str, generator: torch.Generator) -> dict[str, list[float]]:
    errors: dict[str, list[float]] = {name: [] for name in PROFILES}
    for depth in DEPTHS:
        draw = torch.randn if kind == "normal" else torch.rand
        raw_a, raw_b = draw(SIDE, depth, generator=generator), draw(SIDE, depth, generator=generator)
        for name, fmt in PROFILES.items():
            a, b = get_format(fmt).quantize(raw_a), get_format(fmt).quantize(raw_b)
            exact = reference_matmul(a, b, datapath="exact")
            scale = reference_matmul(a.abs(), b.abs(), datapath="exact")
            result = reference_matmul(a, b, datapath=name)
            errors[name].append(float(((result - exact).abs() / scale).median()))
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/images/datapath_error_vs_k.png")
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(0)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, kind in zip(axes, ("normal", "positive"), strict=True):
        errors = relative_errors(kind, generator)
        print(f"\n{kind} operands: median |result - exact| / sum |products|\n")
        print("| profile | " + " | ".join(f"K={k}" for k in DEPTHS) + " |")
        print("|---|" + "---:|" * len(DEPTHS))
        for name, values in errors.items():
            print(f"| {name} | " + " | ".join(f"{v:.2e}" for v in values) + " |")
            axis.loglog(DEPTHS, [max(v, 1e-12) for v in values], marker="o", label=name)
        axis.set_title(f"{kind} operands")
        axis.set_xlabel("K (products per output)")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median |error| / sum |products|")
    axes[1].legend(fontsize=8)
    figure.suptitle("Datapath profiles against the exact sum")
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
