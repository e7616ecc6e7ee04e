"""The ``lowbit`` command: error reports, and formats looked up and encoded by hand.

    lowbit report [--out DIR …]  error analysis of formats on built-in data (or a model): report.md + PNGs
    lowbit info [FORMAT ...]     properties of formats (no FORMAT: the whole catalogue)
    lowbit values FORMAT         every value of an element format with its code
    lowbit encode FORMAT VALUE…  codes and bit fields of values
    lowbit bench [--sizes …]     CPU kernel throughput against a copy, ml_dtypes, torch
"""

from __future__ import annotations

import argparse
import signal
import sys

import numpy as np

from lowbit.formats import CATALOGUE, ElementFormat, FloatFormat, get_format, unpack
from lowbit.formats.describe import bit_fields, catalogue_markdown, number, properties


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_info(args: argparse.Namespace) -> None:
    if not args.formats:
        import lowbit.cuda

        cuda = lowbit.cuda.missing()
        print(f"lowbit catalogue: {len(CATALOGUE)} formats (lowbit info NAME for one)")
        print(f"CUDA tensors: {'the CUDA extension (built on first use)' if cuda is None else f'the reference ({cuda})'}\n")
        print(catalogue_markdown())
        return
    print("\n\n".join(_table(properties(get_format(name))) for name in args.formats))


def cmd_values(args: argparse.Namespace) -> None:
    fmt = get_format(args.format)
    if not isinstance(fmt, ElementFormat):
        raise ValueError(f"{fmt.name} is a scaled format; list its element format's values instead")
    codes, values = fmt.codes_of_values()
    hex_width = (fmt.nbits + 3) // 4
    print(f"{'code':>{hex_width + 2}}  {'bits':<{fmt.nbits + 2}}  value")
    for code, value in zip(codes, values):
        print(f"0x{int(code):0{hex_width}x}  {bit_fields(fmt, int(code)):<{fmt.nbits + 2}}  {number(value) if np.isfinite(value) else value}")


def cmd_encode(args: argparse.Namespace) -> None:
    fmt = get_format(args.format)
    x = np.array(args.values, dtype=np.float64)
    policy = {"rounding": args.rounding}
    if isinstance(fmt, ElementFormat):
        codes = np.atleast_1d(fmt.encode(x, overflow=args.overflow, **policy))
        decoded = np.atleast_1d(fmt.decode(codes, dtype=np.float64))
        hex_width = (fmt.nbits + 3) // 4
        fields = "sign|exponent|mantissa" if isinstance(fmt, FloatFormat) else "bits"
        width = max(fmt.nbits + 2, len(fields))
        print(f"{'value':>14}  {'code':<{hex_width + 2}}  {fields:<{width}}  decoded")
        for v, c, d in zip(x, codes, decoded):
            print(f"{float(v)!r:>14}  0x{int(c):0{hex_width}x}  {bit_fields(fmt, int(c)):<{width}}  {number(d) if np.isfinite(d) else d}")
        return
    if args.overflow is not None:
        raise ValueError("--overflow does not apply to scaled formats: their elements always saturate")
    enc = fmt.encode(x, **policy)
    decoded = enc.decode(dtype=np.float64)
    scales = np.atleast_1d(enc.scales)
    print(f"{fmt.name}: {x.size} values in {scales.size} block(s) of {fmt.block_size}, {enc.nbytes} bytes")
    print("scale codes: " + " ".join(f"0x{int(s):02x}" for s in scales))
    count = scales.size * fmt.block_size
    if enc.subscales is not None:
        shifts = unpack(enc.subscales, fmt.subscale_code_bits, count // fmt.sub_block)
        print("sub-block shifts: " + " ".join(str(int(s)) for s in shifts))
    element_codes = unpack(enc.elements, fmt.element_code_bits, count)[: x.size]
    print(f"{'value':>14}  element code  decoded")
    for v, c, d in zip(x, element_codes, decoded):
        print(f"{float(v)!r:>14}  0x{int(c):02x}          {number(d) if np.isfinite(d) else d}")


def cmd_bench(args: argparse.Namespace) -> None:
    from lowbit import bench

    for name in args.formats:
        get_format(name)  # unknown names fail before minutes of measuring
    bench.run(args.sizes, args.formats, args.repeat, args.reference_max, not args.no_cold_start)


def cmd_report(args: argparse.Namespace) -> None:
    from lowbit.analysis import report

    if args.size < 1:
        raise ValueError(f"--size must be a positive number of elements, got {args.size}")
    if args.seed < 0:
        raise ValueError(f"--seed must be a non-negative int, got {args.seed}")
    rules = [None if rule == "default" else rule for rule in args.scale_rule]
    path = report.write_report(args.out, formats=args.formats, data=args.data, size=args.size, seed=args.seed,
                               roundings=args.rounding, scale_rules=rules, model=args.model,
                               progress=not args.quiet)
    print(f"wrote {path} (tables; figures and CSV beside it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lowbit", description="Exact emulation of low-precision number formats.")
    sub = parser.add_subparsers(dest="command", required=True)
    from lowbit.analysis import data as analysis_data, defaults

    rep = sub.add_parser("report", help="error analysis of formats on built-in data or a model: report.md, CSV, PNGs")
    rep.add_argument("--formats", nargs="+", default=list(defaults.DEFAULT_FORMATS), metavar="FORMAT",
                     help=f"formats to compare (default: {' '.join(defaults.DEFAULT_FORMATS)})")
    rep.add_argument("--data", nargs="+", default=list(defaults.DEFAULT_DATA), metavar="NAME",
                     help=f"built-in distributions ({', '.join(analysis_data.DISTRIBUTIONS)}; default: all) "
                          "or tensors saved as .npy or .pt files")
    rep.add_argument("--out", default="lowbit-report", metavar="DIR", help="output folder (default: %(default)s)")
    rep.add_argument("--size", type=int, default=defaults.DEFAULT_SIZE,
                     help="elements per data set (default: %(default)s)")
    rep.add_argument("--seed", type=int, default=0, help="seed of the data (default: %(default)s)")
    rep.add_argument("--rounding", nargs="+", default=["nearest_even"], metavar="MODE",
                     help="rounding modes to sweep (default: nearest_even)")
    rep.add_argument("--scale-rule", nargs="+", default=["default"], metavar="RULE",
                     help="MX scale rules to sweep: floor, ceil, rceil, even, or default (each format's own)")
    rep.add_argument("--model", default=None, metavar="MODEL",
                     help="also analyse a model layer by layer: 'minilm' (needs lowbit[examples]) "
                          "or a saved state_dict")
    rep.add_argument("--quiet", action="store_true", help="no progress lines")
    rep.set_defaults(run=cmd_report)
    info = sub.add_parser("info", help="properties of formats; the whole catalogue without arguments")
    info.add_argument("formats", nargs="*", metavar="FORMAT")
    info.set_defaults(run=cmd_info)
    values = sub.add_parser("values", help="every value of an element format with its code")
    values.add_argument("format", metavar="FORMAT")
    values.set_defaults(run=cmd_values)
    enc = sub.add_parser("encode", help="codes and bit fields of values")
    enc.add_argument("format", metavar="FORMAT")
    enc.add_argument("values", nargs="+", type=float, metavar="VALUE")
    enc.add_argument("--rounding", default="nearest_even")
    enc.add_argument("--overflow", default=None)
    enc.set_defaults(run=cmd_encode)
    from lowbit import bench

    ben = sub.add_parser("bench", help="CPU kernel throughput against a parallel copy, ml_dtypes, torch, the reference")
    ben.add_argument("--sizes", type=int, nargs="+", default=bench.SIZES, metavar="LOG2N",
                     help="log2 of the element counts (default: %(default)s)")
    ben.add_argument("--formats", nargs="+", default=bench.FORMATS, metavar="FORMAT")
    ben.add_argument("--repeat", type=int, default=5, help="timed runs per operation; the best counts")
    ben.add_argument("--reference-max", type=int, default=20, metavar="LOG2N",
                     help="time the (slow) reference implementation up to this size")
    ben.add_argument("--no-cold-start", action="store_true", help="skip timing the kernels' first compilation")
    ben.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `lowbit values bf16 | head` ends quietly
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError) as error:
        print(f"lowbit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
