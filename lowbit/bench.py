"""Throughput of lowbit's CPU kernels against baselines measured in the same
run: a parallel float32 copy into a new array, ml_dtypes' astype there and
back, torch's float8 casts there and back, and lowbit's own reference
implementation. Run as ``lowbit bench`` or ``python benchmarks/bench_cpu.py``.

Every lowbit and peer operation allocates its output, as the "new output"
copy does; the "preallocated" copy does not, so the ratio to it is the
stricter one (allocating and first touching a large output costs about as
much as the copy itself on some machines). Times are the best of
``repeat`` runs after a warm-up call (which also compiles the kernels).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import torch

import lowbit

FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int8", "mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4", "mx6"]
SIZES = [16, 18, 20, 22, 24, 26]


def best_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_rows(x: np.ndarray, repeat: int) -> list[tuple[str, float]]:
    """A numba parallel copy, into a preallocated array and into a new one:
    the memory-speed baselines."""
    from numba import njit, prange

    @njit(parallel=True, cache=True)
    def copy_into(x, out):
        for i in prange(x.size):
            out[i] = x[i]

    out = np.empty_like(x)
    return [("parallel float32 copy, preallocated output", best_seconds(lambda: copy_into(x, out), repeat)),
            ("parallel float32 copy, new output", best_seconds(lambda: copy_into(x, np.empty_like(x)), repeat))]


def peer_rows(x: np.ndarray, repeat: int) -> list[tuple[str, float]]:
    """The peers' casts there and back."""
    rows = []
    t = torch.from_numpy(x)
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        rows.append((f"torch {str(dtype).replace('torch.', '')} cast+back", best_seconds(lambda: t.to(dtype).float(), repeat)))
    try:
        import ml_dtypes
    except ImportError:
        return rows
    for name in ("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"):
        dtype = getattr(ml_dtypes, name)
        rows.append((f"ml_dtypes {name} astype+back", best_seconds(lambda: x.astype(dtype).astype(np.float32), repeat)))
    return rows


def lowbit_rows(x: np.ndarray, formats: list[str], repeat: int, reference: bool) -> list[tuple[str, float]]:
    rows = []
    for name in formats:
        fmt = lowbit.get_format(name)
        rows.append((f"lowbit {name} quantize", best_seconds(lambda: fmt.quantize(x), repeat)))
        rows.append((f"lowbit {name} encode", best_seconds(lambda: fmt.encode(x), repeat)))
        if reference:
            rows.append((f"lowbit {name} quantize (reference)",
                         best_seconds(lambda: fmt.quantize(x, backend="reference"), 1)))
    return rows


def cold_start_seconds() -> tuple[float, float]:
    """Seconds for a new process to import lowbit and make its first
    fp8_e4m3 and mxfp4 quantize calls: with an empty kernel cache (every
    kernel compiled) and again with the cache that run left behind."""
    code = ("import time; t = time.perf_counter(); import numpy as np, lowbit; x = np.ones(1024, np.float32); "
            "lowbit.quantize(x, 'fp8_e4m3'); lowbit.quantize(x, 'mxfp4'); print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                     check=True).stdout) for _ in range(2)]
    return runs[0], runs[1]


def machine() -> str:
    import numba

    return (f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, numba "
            f"{numba.__version__} ({numba.get_num_threads()} threads), torch {torch.__version__}".replace("  ", " "))


def run(sizes: list[int], formats: list[str], repeat: int, reference_max: int, cold_start: bool) -> None:
    print(f"machine: {machine()}")
    for log2n in sizes:
        n = 1 << log2n
        x = torch.randn(n, generator=torch.Generator().manual_seed(0)).numpy()
        rows = copy_rows(x, repeat)
        preallocated, new = rows[0][1], rows[1][1]
        rows += peer_rows(x, repeat)
        rows += lowbit_rows(x, formats, repeat, reference=log2n <= reference_max)
        references = {label.replace(" (reference)", ""): s for label, s in rows if label.endswith("(reference)")}
        print(f"\n### 2^{log2n} float32 elements\n")
        print("| operation | G elem/s | vs copy, new output | vs copy, preallocated | vs reference |")
        print("|---|---:|---:|---:|---:|")
        for label, seconds in rows:
            speedup = f"{references[label] / seconds:.0f}x" if label in references else ""
            print(f"| {label} | {n / seconds / 1e9:.3f} | {new / seconds:.2f} | {preallocated / seconds:.2f} | {speedup} |")
    if cold_start:
        cold, warm = cold_start_seconds()
        print(f"\nfirst fp8_e4m3 + mxfp4 quantize in a new process: {cold:.1f} s with an empty kernel cache, "
              f"{warm:.1f} s with it filled")
