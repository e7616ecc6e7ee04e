"""Throughput of lowbit's CPU kernels against baselines measured in the same
run: a parallel float32 copy, ml_dtypes' astype there and back, torch's
float8 casts there and back, and lowbit's own reference implementation.
Run as ``lowbit bench`` or ``python benchmarks/bench_cpu.py``.

Each comparison is like for like. A lowbit call allocates its output, as
the peers' casts do; its ratio is to the copy into a new array. Allocating
and first touching a large output can cost as much as the copy itself (the
kernel zeroes every new page), so each lowbit call is timed a second time
with its output buffers reused from call to call, and that time is compared
with the copy into a preallocated array: the kernels alone. Times are the
best of ``repeat`` runs after a warm-up call (which also compiles the
kernels).
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
from lowbit.formats.catalogue import Format
from lowbit.formats.cpu.buffers import reused_outputs

FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int8", "mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4", "mx6"]
SIZES = [16, 18, 20, 22, 24, 26]
#: The data are rows of this many elements (a hidden size) where they fill
#: whole rows: blocks run along them, tiles over them, rowwise scales per row.
ROW = 4096


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_seconds(fn: Callable[[], object], baseline: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best times of fn and of a baseline, run alternately ``repeat`` times
    after a warm-up call of each: both see the same state of the machine
    (on a shared VM memory bandwidth and page-fault costs drift by 2x and
    more within minutes)."""
    fn(), baseline()
    pairs = [(seconds(baseline), seconds(fn)) for _ in range(repeat)]
    return min(p[1] for p in pairs), min(p[0] for p in pairs)


class Copies:
    """A numba parallel copy of x into a new array and into a preallocated
    one: the memory-speed baselines."""

    def __init__(self, x: np.ndarray):
        from numba import njit, prange

        @njit(parallel=True, cache=True)
        def copy_into(x, out):
            for i in prange(x.size):
                out[i] = x[i]

        out = np.empty_like(x)
        self.new = lambda: copy_into(x, np.empty_like(x))
        self.preallocated = lambda: copy_into(x, out)


def peer_rows(x: np.ndarray, copies: Copies, repeat: int) -> list[tuple[str, float, float]]:
    """(cast there and back, its seconds, the new-output copy's seconds beside it)."""
    casts = []
    t = torch.from_numpy(x)
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        casts.append((f"torch {str(dtype).replace('torch.', '')} cast+back", lambda dtype=dtype: t.to(dtype).float()))
    try:
        import ml_dtypes
    except ImportError:
        ml_dtypes = None
    for name in ("float8_e4m3fn", "float8_e5m2", "float4_e2m1fn") if ml_dtypes else ():
        dtype = getattr(ml_dtypes, name)
        casts.append((f"ml_dtypes {name} astype+back", lambda dtype=dtype: x.astype(dtype).astype(np.float32)))
    return [(label, *best_seconds(cast, copies.new, repeat)) for label, cast in casts]


def format_and_rule(name: str) -> tuple[Format, str | None]:
    """The format and scale rule of a bench name: a format name, or
    ``NAME:RULE`` for a scaled format under a scale rule (``nvfp4:4over6``).
    ValueError for an unknown format or a rule the format refuses."""
    spec, _, rule = name.partition(":")
    fmt = lowbit.get_format(spec)
    if rule:
        fmt.quantize(torch.zeros(1, 32), scale_rule=rule, backend="reference")  # the format's own check of the rule
    return fmt, rule or None


def lowbit_rows(x: np.ndarray, copies: Copies, formats: list[str], repeat: int,
                reference: bool) -> list[tuple[str, tuple[float, float], tuple[float, float], float | None]]:
    """(operation, (seconds, new-output copy's), (seconds with outputs
    reused, preallocated copy's), seconds on the reference backend or None)."""
    rows = []
    x = x.reshape(-1, ROW) if x.size % ROW == 0 else x  # rows, as tiles and rowwise scales need
    for name in formats:
        fmt, rule = format_and_rule(name)
        options = {"scale_rule": rule} if rule else {}
        encoded = fmt.encode(x, **options)
        for op, call in (("quantize", lambda: fmt.quantize(x, **options)), ("encode", lambda: fmt.encode(x, **options)),
                         ("decode", lambda: fmt.decode(encoded))):
            allocating = best_seconds(call, copies.new, repeat)
            with reused_outputs():
                reused = best_seconds(call, copies.preallocated, repeat)
            slow = (seconds(lambda: fmt.quantize(x, backend="reference", **options)) if reference and op == "quantize"
                    else None)
            rows.append((f"lowbit {name} {op}", allocating, reused, slow))
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


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def machine() -> str:
    import numba

    return (f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, numba {numba.__version__} "
            f"({numba.get_num_threads()} threads), torch {torch.__version__}")


def run(sizes: list[int], formats: list[str], repeat: int, reference_max: int, cold_start: bool) -> None:
    print(f"machine: {machine()}")
    print("\nEach ratio divides the copy's best time, measured alternately with the operation, by the operation's.")
    for log2n in sizes:
        n = 1 << log2n
        x = torch.randn(n, generator=torch.Generator().manual_seed(0)).numpy()
        copies = Copies(x)
        peers = peer_rows(x, copies, repeat)
        ours = lowbit_rows(x, copies, formats, repeat, reference=log2n <= reference_max)
        new = min([copy for _, _, copy in peers] + [row[1][1] for row in ours])
        preallocated = min(row[2][1] for row in ours) if ours else best_seconds(copies.preallocated, copies.preallocated, repeat)[0]
        print(f"\n### 2^{log2n} float32 elements\n")
        print("| operation | G elem/s | vs copy, new output | G elem/s, outputs reused | vs copy, preallocated "
              "| vs reference |")
        print("|---|---:|---:|---:|---:|---:|")
        print(f"| parallel float32 copy (best seen) | {n / new / 1e9:.3f} | 1.00 | {n / preallocated / 1e9:.3f} | 1.00 | |")
        for label, time_, copy in peers:
            print(f"| {label} | {n / time_ / 1e9:.3f} | {copy / time_:.2f} | | | |")
        for label, (time_, copy), (reused, copy_into), slow in ours:
            speedup = f"{slow / time_:.0f}x" if slow else ""
            print(f"| {label} | {n / time_ / 1e9:.3f} | {copy / time_:.2f} | {n / reused / 1e9:.3f} "
                  f"| {copy_into / reused:.2f} | {speedup} |")
    if cold_start:
        cold, warm = cold_start_seconds()
        print(f"\nfirst fp8_e4m3 + mxfp4 quantize in a new process: {cold:.1f} s with an empty kernel cache, "
              f"{warm:.1f} s with it filled")
