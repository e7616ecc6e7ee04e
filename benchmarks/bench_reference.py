"""Throughput of lowbit's reference implementation (``backend="reference"``)
against baselines measured in the same run: a float32 copy, torch's float8
cast there and back, and ml_dtypes' astype there and back.

    python benchmarks/bench_reference.py [--sizes 16 20 22] [--repeat 3]

Prints G elements/s and the ratio to the copy. The CPU kernels have their
own benchmark, benchmarks/bench_cpu.py (``lowbit bench``).
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np
import torch

import lowbit
from lowbit.bench import best_seconds

FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int8", "mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4", "mx6"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 20, 22], help="log2 of element counts")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    try:
        import ml_dtypes
    except ImportError:
        ml_dtypes = None
    for log2n in args.sizes:
        n = 1 << log2n
        x = torch.randn(n)
        xn = x.numpy()
        copy = best_seconds(lambda: x.clone(), args.repeat)
        rows = [("float32 copy", copy)]
        rows.append(("torch float8_e4m3fn cast+back", best_seconds(lambda: x.to(torch.float8_e4m3fn).float(), args.repeat)))
        if ml_dtypes is not None:
            rows.append(("ml_dtypes float8_e4m3fn astype+back",
                         best_seconds(lambda: xn.astype(ml_dtypes.float8_e4m3fn).astype(np.float32), args.repeat)))
        for name in FORMATS:
            fmt = lowbit.get_format(name)
            rows.append((f"lowbit {name} quantize (reference)", best_seconds(lambda: fmt.quantize(x, backend="reference"), args.repeat)))
        print(f"\n2^{log2n} float32 elements")
        print(f"{'operation':<42} {'G elem/s':>9} {'vs copy':>8}")
        for label, seconds in rows:
            print(f"{label:<42} {n / seconds / 1e9:>9.4f} {copy / seconds:>8.4f}")


if __name__ == "__main__":
    main()
