"""Compare lowbit's datapath profiles with the GPU at hand, bit for bit.

    python benchmarks/datapath_vs_gpu.py            # on a GPU
    python benchmarks/datapath_vs_gpu.py --dry      # no GPU: the same cases, computed on the CPU only

For each comparison that the GPU's compute capability supports, the script
builds inputs (random normal, random positive, and an adversarial set whose
values span 2**-12 .. 2**12 with cancellation), runs the GPU's product, and
counts the outputs whose bits equal the profile's (lowbit.formats.reference_matmul
with ``datapath=``), and the largest difference in units of the output's last
place. What the GPU computes:

- ``torch.matmul`` of fp16 / bf16 operands with fp32 output (cuBLAS; reduced-
  precision reductions and TF32 off, one output tile per thread block: a
  K up to 512, so that cuBLAS has no reason to split K), against the profile of
  the GPU's architecture;
- ``torch._scaled_mm`` of FP8 E4M3 operands (unit scales, fp32 output) on sm_89+;
- ``lowbit.cuda.mx_matmul`` with each instruction against its ``lowbit_mx_*``
  profile (the fp16 and FP8 profiles round each MMA to nearest, the GPU's
  tensor cores truncate: the table says how often that shows).

cuBLAS picks its kernels itself: a split of K or another order of the
groups makes its result differ from one chain of groups; the table reports
what it sees rather than asserting. The output is a Markdown table for
docs/datapaths.md; with --dry (or no GPU) each row says "not run" and the
script checks only that the CPU side of every comparison runs.
"""

from __future__ import annotations

import argparse
import sys

import torch

import lowbit
from lowbit.formats import get_format, reference_matmul

#: the profile of each architecture's fp16 / bf16 MMA, by compute capability (major, minor)
ARCHITECTURES = {
    (7, 0): ("v100_fp16", None, None),
    (7, 5): ("t4_fp16", None, None),
    (8, 0): ("a100_fp16", "a100_bf16", None),
    (8, 6): ("a100_fp16", "a100_bf16", None),
    (8, 9): ("a100_fp16", "a100_bf16", None),
    (9, 0): ("h100_fp16", "h100_bf16", "h100_fp8"),
    (10, 0): ("b200_fp16", "b200_bf16", "b200_fp8"),
}
SHAPE = (64, 48, 512)  # M, N, K


def inputs(kind: str, fmt: str, rows: int, depth: int, generator: torch.Generator) -> torch.Tensor:
    """float32 values exact in ``fmt``: random normal, positive, or spanning 2**-12..2**12 with signs."""
    if kind == "normal":
        x = torch.randn(rows, depth, generator=generator)
    elif kind == "positive":
        x = torch.rand(rows, depth, generator=generator)
    else:
        exponents = torch.randint(-12, 13, (rows, depth), generator=generator).float()
        signs = torch.randint(0, 2, (rows, depth), generator=generator).float() * 2 - 1
        x = signs * (1 + torch.rand(rows, depth, generator=generator)) * 2.0 ** exponents
    return get_format(fmt).quantize(x)


def compare(gpu: torch.Tensor | None, model: torch.Tensor) -> tuple[str, str]:
    """(bit-exact outputs "k / n", largest difference in the model's ulps), or "not run"."""
    if gpu is None:
        return "not run", ""
    gpu = gpu.double().cpu()
    same = int((gpu == model).sum())
    ulp = torch.where(model == 0, torch.full_like(model, 2.0 ** -149),
                      2.0 ** (torch.floor(torch.log2(model.abs())) - 23))
    worst = float(((gpu - model).abs() / ulp).max()) if model.numel() else 0.0
    return f"{same} / {model.numel()}", f"{worst:.3g}"


def torch_matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, device: str | None) -> torch.Tensor | None:
    """cuBLAS's a @ b.T of fp16 / bf16 operands with fp32 output (``torch.mm``'s ``out_dtype``), its
    reduced-precision reductions and TF32 off; None without a GPU."""
    if device is None:
        return None
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch.mm(a.to(device, dtype), b.to(device, dtype).T, out_dtype=torch.float32)


def scaled_mm(a: torch.Tensor, b: torch.Tensor, device: str | None) -> torch.Tensor | None:
    if device is None:
        return None
    one = torch.ones((), device=device)
    x = a.to(device).to(torch.float8_e4m3fn)
    w = b.to(device).to(torch.float8_e4m3fn)
    return torch._scaled_mm(x, w.T, scale_a=one, scale_b=one, out_dtype=torch.float32)


def rows(device: str | None, capability: tuple[int, int] | None, generator: torch.Generator) -> list[list[str]]:
    m, n, k = SHAPE
    table = []
    fp16_profile, bf16_profile, fp8_profile = ARCHITECTURES.get(capability, ("h100_fp16", "h100_bf16", "h100_fp8"))
    for kind in ("normal", "positive", "adversarial"):
        for fmt, dtype, profile in (("fp16", torch.float16, fp16_profile), ("bf16", torch.bfloat16, bf16_profile)):
            if profile is None:
                continue
            a, b = inputs(kind, fmt, m, k, generator), inputs(kind, fmt, n, k, generator)
            model = reference_matmul(a, b, datapath=profile)
            table.append([f"torch.matmul {fmt}", kind, profile, *compare(torch_matmul(a, b, dtype, device), model)])
        if fp8_profile is not None:
            a, b = inputs(kind, "fp8_e4m3", m, k, generator), inputs(kind, "fp8_e4m3", n, k, generator)
            model = reference_matmul(a, b, datapath=fp8_profile)
            table.append(["torch._scaled_mm e4m3", kind, fp8_profile, *compare(scaled_mm(a, b, device), model)])
        for instruction in ("int8", "fp16", "fp8"):
            x = lowbit.encode(inputs(kind, "fp32", m, k, generator), "mxfp4", axis=1)
            w = lowbit.encode(inputs(kind, "fp32", n, k, generator), "mxfp4", axis=1)
            model = reference_matmul(x, w, datapath=f"lowbit_mx_{instruction}")
            gpu = None
            if device is not None:
                on_gpu = [lowbit.encode(t.decode().to(device), "mxfp4", axis=1) for t in (x, w)]
                gpu = lowbit.cuda.mx_matmul(*on_gpu, instruction=instruction)
            table.append([f"lowbit mx_matmul {instruction} (mxfp4)", kind, f"lowbit_mx_{instruction}",
                          *compare(gpu, model)])
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="compute the CPU side only, even with a GPU")
    args = parser.parse_args(argv)
    device = None if args.dry or not torch.cuda.is_available() else "cuda"
    capability = torch.cuda.get_device_capability() if device else None
    name = torch.cuda.get_device_name() if device else "no GPU (dry run)"
    generator = torch.Generator().manual_seed(0)
    print(f"# datapath profiles against {name}, compute capability {capability}, "
          f"M x N x K = {' x '.join(map(str, SHAPE))}\n")
    print("| GPU product | inputs | profile | bit-exact outputs | largest difference (ulp) |")
    print("|---|---|---|---:|---:|")
    for row in rows(device, capability, generator):
        print("| " + " | ".join(row) + " |")
    if device is None:
        print("\nNothing ran on a GPU: every row above is owed to one (see docs/datapaths.md).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
