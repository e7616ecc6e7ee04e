"""CUDA extension throughput against a device-to-device copy of the same
bytes and against the reference implementation on the same GPU; and the
MX matmul's TFLOP/s against torch's bf16 matmul and against decoding to
bf16 and then calling torch's matmul.

    python benchmarks/bench_cuda.py [--suite casts|matmul|all] [--sizes 20 22 24 26 28] [--formats ...]
                                    [--dtype float32] [--repeat 20] [--shapes 1024 2048 ... 4096x11008x4096]

For each call, the baseline is a ``copy_`` between two device buffers
sized so that the copy reads and writes as many bytes as the call does
(input read plus output written: a quantize moves what a copy of its input
moves, an encode less), timed alternately with it on CUDA events. A ratio
of 1.0 means the call runs at the copy's bandwidth. Times are medians of
``repeat`` runs after a warm-up call. Prints the GPU, torch and CUDA
versions with the table; exits 0 without a GPU (nothing to measure).

Matmul rows: ``lowbit.cuda.mx_matmul(a, b)`` for A (M x K) and B (N x K)
encoded in MX formats, whole call (operand preparation included) and the
kernel alone (prepared operands), each with each instruction the pair
fits, as TFLOP/s (2 M N K per call) and as ratios to, in the same run,
``a16 @ b16.T`` in bfloat16 and ``decode(a).bf16() @ decode(b).bf16().T``;
and the call's largest error against ``reference_matmul`` as a fraction of
``summation_bound`` (fp32 rounded to nearest): the tensor cores' own accuracy.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

import lowbit

FORMATS = ["fp8_e4m3", "int8", "mxfp8_e4m3", "mxfp4", "mxint8", "nvfp4", "mx6", "mx9", "nf4"]
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


#: (A format, B format) pairs of the matmul rows
MATMUL_PAIRS = [("mxfp8_e4m3", "mxfp8_e4m3"), ("mxfp8_e4m3", "mxfp4"), ("mxfp4", "mxfp4"), ("mxint8", "mxint8")]
#: M x N x K; squares, and a 4096-token batch through LLM projections (up: K 4096 -> N 11008, down: back)
MATMUL_SHAPES = ["1024", "2048", "4096", "8192", "4096x11008x4096", "4096x4096x11008"]


def matmul_rows(shape: str, repeat: int):
    """(pair, instruction, what, seconds, bf16 matmul seconds, decode-then-bf16 seconds) for one M x N x K."""
    from lowbit.cuda.matmul import INSTRUCTIONS, TENSOR_CORE_TYPES, choose_types, prepared

    m, n, k = (int(d) for d in (shape.split("x") if "x" in shape else [shape] * 3))
    x, w = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
    x16, w16 = x.bfloat16(), w.bfloat16()
    bf16 = lambda: x16 @ w16.T  # noqa: E731
    for fa, fb in MATMUL_PAIRS:
        a, b = lowbit.encode(x, fa, axis=1), lowbit.encode(w, fb, axis=1)
        decoded = lambda a=a, b=b: a.decode().bfloat16() @ b.decode().bfloat16().T  # noqa: E731
        t_decoded, t_bf16 = event_seconds(decoded, bf16, repeat)
        for instruction in INSTRUCTIONS:
            try:
                ta, tb = choose_types(a.format, b.format, instruction)
            except ValueError:
                continue
            if instruction == "fp8" and torch.cuda.get_device_capability() < (8, 9):
                continue
            call = lambda a=a, b=b, i=instruction: lowbit.cuda.mx_matmul(a, b, instruction=i)  # noqa: E731
            (pa, sa), (pb, sb) = prepared(a, ta, torch.ops.lowbit_cuda), prepared(b, tb, torch.ops.lowbit_cuda)
            kernel = lambda pa=pa, sa=sa, pb=pb, sb=sb, ta=ta, tb=tb: torch.ops.lowbit_cuda.mx_matmul(  # noqa: E731
                pa, sa, pb, sb, None, TENSOR_CORE_TYPES[ta], TENSOR_CORE_TYPES[tb], a.format.block_size,
                torch.float32)
            error = error_to_bound(call(), a, b, 32 // (16 if instruction == "fp16" else 32))
            for what, fn in (("call", call), ("kernel", kernel)):
                t, _ = event_seconds(fn, bf16, repeat)
                yield f"{fa} x {fb}", instruction, what, (m, n, k), t, t_bf16, t_decoded, error


def error_to_bound(result: torch.Tensor, a, b, roundings_per_block: int) -> float:
    """The largest |result - reference_matmul| as a fraction of the bound of
    fp32 summation rounded to nearest (above 1: the tensor cores add with
    fewer bits than fp32)."""
    reference = lowbit.formats.reference_matmul(a, b)
    bound = lowbit.formats.summation_bound(a, b, roundings_per_block=roundings_per_block)
    return float(((result.double() - reference).abs() / bound).nan_to_num().max())


def print_matmul(shapes: list[str], repeat: int) -> None:
    print("| A x B | instruction | timed | M x N x K | TFLOP/s | x bf16 matmul | x decode + bf16 matmul "
          "| largest error / fp32 bound |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in shapes:
        for pair, instruction, what, (m, n, k), t, t_bf16, t_decoded, error in matmul_rows(shape, repeat):
            print(f"| {pair} | {instruction} | {what} | {m}x{n}x{k} | {2 * m * n * k / t / 1e12:.0f} | "
                  f"{t_bf16 / t:.2f} | {t_decoded / t:.2f} | {error:.2g} |")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, metavar="LOG2N")
    parser.add_argument("--formats", nargs="+", default=FORMATS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--suite", default="all", choices=["casts", "matmul", "all"])
    parser.add_argument("--shapes", nargs="+", default=MATMUL_SHAPES, metavar="M[xNxK]")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: nothing to measure")
        return 0
    lowbit.cuda.build()
    props = torch.cuda.get_device_properties(0)
    print(f"# {props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"input {args.dtype}")
    if args.suite in ("matmul", "all"):
        print_matmul(args.shapes, args.repeat)
    if args.suite == "matmul":
        return 0
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
