"""CUDA extension throughput against a device-to-device copy of the same
bytes and against the reference implementation on the same GPU.

    python benchmarks/bench_cuda.py [--sizes 20 22 24 26 28] [--formats ...] [--dtype float32] [--repeat 20]

For each call, the baseline is a ``copy_`` between two device buffers
sized so that the copy reads and writes as many bytes as the call does
(input read plus output written: a quantize moves what a copy of its input
moves, an encode less), timed alternately with it on CUDA events. A ratio
of 1.0 means the call runs at the copy's bandwidth. Times are medians of
``repeat`` runs after a warm-up call. Prints the GPU, torch and CUDA
versions with the table; exits 0 without a GPU (nothing to measure).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import lowbit

FORMATS = ["fp8_e4m3", "int8", "mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4", "mx6", "mx9"]
SIZES = [20, 22, 24, 26, 28]
REFERENCE_MAX = 24  # the reference's float64 temporaries make larger sizes slow


def event_seconds(fn, baseline, repeat: int) -> tuple[float, float]:
    """Median seconds of fn and of baseline, timed alternately on CUDA events after a warm-up of each."""
    fn(), baseline()
    times = {fn: [], baseline: []}
    for _ in range(repeat):
        for f in (baseline, fn):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            f()
            stop.record()
            stop.synchronize()
            times[f].append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times[fn]), statistics.median(times[baseline])


def copy_of(nbytes: int):
    """A device-to-device copy that reads nbytes // 2 and writes as many."""
    half = max(nbytes // 2, 1)
    source = torch.empty(half, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return lambda: target.copy_(source)


def encoded_bytes(encoded: lowbit.Encoded) -> int:
    parts = [encoded.elements, encoded.scales, encoded.subscales]
    return sum(p.numel() * p.element_size() for p in parts if p is not None)


def rows(n: int, dtype: torch.dtype, formats: list[str], repeat: int):
    """(format, call, seconds, bytes moved, seconds of a copy of as many bytes, the reference's seconds or None)."""
    x = torch.randn(n, dtype=dtype, device="cuda")
    in_bytes = x.numel() * x.element_size()
    for name in formats:
        fmt = lowbit.get_format(name)
        quantize = lambda fmt=fmt: fmt.quantize(x)  # noqa: E731
        t, copy = event_seconds(quantize, copy_of(2 * in_bytes), repeat)
        reference = None
        if n <= 1 << REFERENCE_MAX:
            reference, _ = event_seconds(lambda fmt=fmt: fmt.quantize(x, backend="reference"), quantize,
                                         max(3, repeat // 5))
        yield name, "quantize", t, 2 * in_bytes, copy, reference
        encode = lambda fmt=fmt: fmt.encode(x)  # noqa: E731
        codes = encode()
        out_bytes = encoded_bytes(codes) if isinstance(codes, lowbit.Encoded) else codes.numel() * codes.element_size()
        t, copy = event_seconds(encode, copy_of(in_bytes + out_bytes), repeat)
        yield name, "encode", t, in_bytes + out_bytes, copy, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, metavar="LOG2N")
    parser.add_argument("--formats", nargs="+", default=FORMATS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return 0
    lowbit.cuda.build()
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"input {args.dtype}")
    print("| format | call | elements | G elem/s | GB/s moved | ratio to the copy | x reference |")
    print("|---|---|---|---|---|---|---|")
    for log2n in args.sizes:
        n = 1 << log2n
        for name, call, t, moved, copy, reference in rows(n, getattr(torch, args.dtype), args.formats, args.repeat):
            speedup = f"{reference / t:.0f}" if reference else ""
            print(f"| {name} | {call} | 2^{log2n} | {n / t / 1e9:.2f} | {moved / t / 1e9:.0f} | {copy / t:.2f} "
                  f"| {speedup} |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
