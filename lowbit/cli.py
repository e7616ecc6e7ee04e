"""The ``lowbit`` command: error reports, and formats looked up and encoded by hand.

    lowbit report [--out DIR …]  error analysis of formats on built-in data (or a model): report.md + PNGs
    lowbit info [FORMAT ...]     properties of formats (no FORMAT: the whole catalogue)
    lowbit values FORMAT         every value of an element format with its code
    lowbit encode FORMAT VALUE…  codes and bit fields of values
    lowbit bench [--sizes …]     CPU kernel throughput against a copy, ml_dtypes, torch
"""

from __future__ import annotations

import argparse
import functools
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

import numpy as np

from lowbit.formats import (CATALOGUE, OVERFLOW_POLICIES, ROUNDING_MODES, ElementFormat, FloatFormat, get_format,
                            unpack)
from lowbit.formats.block_format import POWER_OF_TWO_RULES
from lowbit.formats.describe import bit_fields, catalogue_markdown, number, properties

#: What a command's checks give back: the work itself, run once they pass.
Work = Callable[[], None]

#: The largest ``bench --sizes`` exponent: 2**28 float32 elements are 1 GiB
#: an array, and the bench holds several arrays of that size at once.
MAX_BENCH_LOG2N = 28


class Parser(argparse.ArgumentParser):
    """argparse's parser, except that a usage error is one line on stderr,
    ``lowbit: error: MESSAGE (see PROG --help)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"lowbit: error: {message} (see {self.prog} --help)\n")


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int from ``low`` to ``high`` (inclusive; no upper
    bound when ``high`` is None)."""
    allowed = f"an int from {low} to {high}" if high is not None else f"an int of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    return parse


def format_name(text: str) -> str:
    """An argparse type: a name ``get_format`` knows, kept as given."""
    try:
        get_format(text)
    except (ValueError, TypeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def bench_format(text: str) -> str:
    """An argparse type: a format name, or NAME:RULE with a scale rule the format takes, kept as given."""
    from lowbit import bench

    try:
        bench.format_and_rule(text)
    except (ValueError, TypeError) as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _print_catalogue() -> None:
    import lowbit.cuda

    cuda = lowbit.cuda.missing()
    print(f"lowbit catalogue: {len(CATALOGUE)} formats (lowbit info NAME for one)")
    print(f"CUDA tensors: {'the CUDA extension (built on first use)' if cuda is None else f'the reference ({cuda})'}\n")
    print(catalogue_markdown())


def cmd_info(args: argparse.Namespace) -> Work:
    """Print the properties of the named formats, or the whole catalogue."""
    if not args.formats:
        return _print_catalogue
    return lambda: print("\n\n".join(_table(properties(get_format(name))) for name in args.formats))


def cmd_values(args: argparse.Namespace) -> Work:
    """Print every code of an element format of at most 16 bits with its value."""
    fmt = get_format(args.format)
    if not isinstance(fmt, ElementFormat):
        raise ValueError(f"{fmt.name} is a scaled format; list its element format's values instead")
    codes, values = fmt.codes_of_values()
    return functools.partial(_print_values, fmt, codes, values)


def _print_values(fmt: ElementFormat, codes: np.ndarray, values: np.ndarray) -> None:
    hex_width = (fmt.nbits + 3) // 4
    print(f"{'code':>{hex_width + 2}}  {'bits':<{fmt.nbits + 2}}  value")
    for code, value in zip(codes, values):
        print(f"0x{int(code):0{hex_width}x}  {bit_fields(fmt, int(code)):<{fmt.nbits + 2}}  {number(value) if np.isfinite(value) else value}")


def cmd_encode(args: argparse.Namespace) -> Work:
    """Encode the values (a value the format refuses, such as NaN in INT4,
    is a usage error) and print their codes and bit fields."""
    fmt = get_format(args.format)
    x = np.array(args.values, dtype=np.float64)
    if isinstance(fmt, ElementFormat):
        codes = np.atleast_1d(fmt.encode(x, rounding=args.rounding, overflow=args.overflow))
        return functools.partial(_print_element_codes, fmt, x, codes)
    if args.overflow is not None:
        raise ValueError("--overflow does not apply to scaled formats: their elements always saturate")
    return functools.partial(_print_scaled_codes, fmt, x, fmt.encode(x, rounding=args.rounding))


def _print_element_codes(fmt: ElementFormat, x: np.ndarray, codes: np.ndarray) -> None:
    decoded = np.atleast_1d(fmt.decode(codes, dtype=np.float64))
    hex_width = (fmt.nbits + 3) // 4
    fields = "sign|exponent|mantissa" if isinstance(fmt, FloatFormat) else "bits"
    width = max(fmt.nbits + 2, len(fields))
    print(f"{'value':>14}  {'code':<{hex_width + 2}}  {fields:<{width}}  decoded")
    for v, c, d in zip(x, codes, decoded):
        print(f"{float(v)!r:>14}  0x{int(c):0{hex_width}x}  {bit_fields(fmt, int(c)):<{width}}  {number(d) if np.isfinite(d) else d}")


def _print_scaled_codes(fmt, x: np.ndarray, enc) -> None:
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


def cmd_bench(args: argparse.Namespace) -> Work:
    """Time the CPU kernels (argparse has checked every argument)."""
    from lowbit import bench

    return functools.partial(bench.run, args.sizes, args.formats, args.repeat, args.reference_max,
                             not args.no_cold_start)


def cmd_report(args: argparse.Namespace) -> Work:
    """Check --out, load the data and the model; the work measures and
    writes the report (through a staging folder: see write_report)."""
    from lowbit.analysis import report

    report.check_out_dir(args.out, "--out")
    rules = [None if rule == "default" else rule for rule in args.scale_rule]
    sensitivity = None if args.sensitivity == "none" else args.sensitivity
    plan = report.plan_report(formats=args.formats, data=args.data, size=args.size, seed=args.seed,
                              roundings=args.rounding, scale_rules=rules, model=args.model,
                              model_specs=args.model_specs, methods=args.methods, sensitivity=sensitivity,
                              model_tokens=args.model_tokens, progress=not args.quiet)

    def work() -> None:
        path = plan.write(args.out, progress=not args.quiet)
        print(f"wrote {path} (tables; figures and CSV beside it)")

    return work


def build_parser() -> Parser:
    parser = Parser(prog="lowbit", description="Exact emulation of low-precision number formats.")
    sub = parser.add_subparsers(dest="command", required=True)
    from lowbit.analysis import data as analysis_data, defaults

    rep = sub.add_parser("report", help="error analysis of formats on built-in data or a model: report.md, CSV, PNGs")
    rep.add_argument("--formats", nargs="+", type=format_name, default=list(defaults.DEFAULT_FORMATS),
                     metavar="FORMAT", help=f"formats to compare (default: {' '.join(defaults.DEFAULT_FORMATS)})")
    rep.add_argument("--data", nargs="+", default=list(defaults.DEFAULT_DATA), metavar="NAME",
                     help=f"built-in distributions ({', '.join(analysis_data.DISTRIBUTIONS)}; default: all) "
                          "or tensors saved as .npy or .pt files (at least one finite value each)")
    rep.add_argument("--out", default="lowbit-report", metavar="DIR",
                     help="output folder (default: %(default)s): new, empty, or a previous report, which is "
                          "replaced whole only once the new one is complete (an interrupted run leaves it as it "
                          "was); a folder holding other files is refused")
    rep.add_argument("--size", type=int_in(1, defaults.MAX_SIZE), default=defaults.DEFAULT_SIZE,
                     help=f"elements per data set, 1 to {defaults.MAX_SIZE} (default: %(default)s)")
    rep.add_argument("--seed", type=int_in(0), default=0, help="seed of the data, 0 or more (default: %(default)s)")
    rep.add_argument("--rounding", nargs="+", choices=ROUNDING_MODES, default=["nearest_even"], metavar="MODE",
                     help=f"rounding modes to sweep: {', '.join(ROUNDING_MODES)} (default: nearest_even)")
    rep.add_argument("--scale-rule", nargs="+", choices=[*defaults.SCALE_RULES, "default"],
                     default=[rule or "default" for rule in defaults.DEFAULT_SCALE_RULES], metavar="RULE",
                     help=f"scale rules to sweep, each on the block formats that take it: "
                          f"{', '.join(POWER_OF_TWO_RULES)} (MX), 4over6 (NVFP4), mse (any block format), or "
                          f"default (each format's own); a format that takes none of them gets its own "
                          f"(default: {' '.join(rule or 'default' for rule in defaults.DEFAULT_SCALE_RULES)})")
    rep.add_argument("--model", default=None, metavar="MODEL",
                     help="also analyse a model: 'tiny-lm' (a byte-level GPT trained on Python's documentation on "
                          "first use, then cached), 'minilm' (needs lowbit[examples]) or a local transformers "
                          "folder: quality for each model spec x method and per-layer sensitivity; a saved "
                          "state_dict: its weights layer by layer")
    from lowbit.analysis import model_tasks

    rep.add_argument("--model-specs", nargs="+", default=list(defaults.DEFAULT_MODEL_SPECS), metavar="SPEC",
                     help="formats of the model's layers (embeddings excepted): WEIGHT, or WEIGHT/INPUT to round their inputs "
                          f"too (default: {' '.join(defaults.DEFAULT_MODEL_SPECS)})")
    rep.add_argument("--methods", nargs="+", default=list(defaults.DEFAULT_METHODS), metavar="METHOD",
                     help=f"methods before rounding: {', '.join(defaults.METHOD_NAMES)} (rtn: round to nearest "
                          "alone), or chains such as rotate+gptq (default: "
                          f"{' '.join(defaults.DEFAULT_METHODS)})")
    rep.add_argument("--sensitivity", default="auto", metavar="SPEC",
                     help="round each layer with a weight alone to SPEC; 'auto' (default): the model spec with the "
                          "fewest bits; 'none': skip")
    rep.add_argument("--model-tokens", type=int_in(2), default=model_tasks.DEFAULT_EVALUATION_TOKENS,
                     metavar="N", help="held-out tokens a model is measured on (perplexity, or the fidelity of a "
                                      "transformers model without a tokenizer; default: %(default)s)")
    rep.add_argument("--quiet", action="store_true", help="no progress lines")
    rep.set_defaults(prepare=cmd_report)
    info = sub.add_parser("info", help="properties of formats; the whole catalogue without arguments")
    info.add_argument("formats", nargs="*", type=format_name, metavar="FORMAT")
    info.set_defaults(prepare=cmd_info)
    values = sub.add_parser("values", help="every value of an element format with its code")
    values.add_argument("format", type=format_name, metavar="FORMAT")
    values.set_defaults(prepare=cmd_values)
    enc = sub.add_parser("encode", help="codes and bit fields of values")
    enc.add_argument("format", type=format_name, metavar="FORMAT")
    enc.add_argument("values", nargs="+", type=float, metavar="VALUE")
    enc.add_argument("--rounding", choices=ROUNDING_MODES, default="nearest_even", metavar="MODE",
                     help=f"{', '.join(ROUNDING_MODES)} (default: %(default)s)")
    enc.add_argument("--overflow", choices=OVERFLOW_POLICIES, default=None, metavar="POLICY",
                     help=f"element formats: {', '.join(OVERFLOW_POLICIES)} (default: the format's own)")
    enc.set_defaults(prepare=cmd_encode)
    from lowbit import bench

    ben = sub.add_parser("bench", help="CPU kernel throughput against a parallel copy, ml_dtypes, torch, the reference")
    ben.add_argument("--sizes", type=int_in(0, MAX_BENCH_LOG2N), nargs="+", default=bench.SIZES, metavar="LOG2N",
                     help=f"log2 of the element counts, 0 to {MAX_BENCH_LOG2N} (default: %(default)s)")
    ben.add_argument("--formats", nargs="+", type=bench_format, default=bench.FORMATS, metavar="FORMAT",
                     help="format names; NAME:RULE times a scaled format under a scale rule (nvfp4:4over6)")
    ben.add_argument("--repeat", type=int_in(1), default=5, help="timed runs per operation, 1 or more; the best counts")
    ben.add_argument("--reference-max", type=int_in(0, MAX_BENCH_LOG2N), default=20, metavar="LOG2N",
                     help=f"time the (slow) reference implementation up to this size, 0 to {MAX_BENCH_LOG2N}")
    ben.add_argument("--no-cold-start", action="store_true", help="skip timing the kernels' first compilation")
    ben.set_defaults(prepare=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and give back its exit status: 0 when done (or
    after --help), 2 for a usage error (one line on stderr), 130 when
    interrupted (Ctrl-C)."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `lowbit values bf16 | head` ends quietly
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # argparse has printed the help or the usage error
        return int(done.code or 0)
    try:
        return _run(args)
    except KeyboardInterrupt as interrupt:  # a report says what it wrote before stopping
        print(f"lowbit: {interrupt}" if str(interrupt) else "lowbit: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    """Check the command's inputs (their ValueError or TypeError is a usage
    error: one line, status 2), then do its work: an error there is a bug
    in lowbit and keeps its traceback."""
    try:
        work = args.prepare(args)
    except (ValueError, TypeError) as error:
        print(f"lowbit: error: {_first_line(error)}", file=sys.stderr)
        return 2
    work()
    return 0


def _first_line(error: Exception) -> str:
    """The first line of an error's message (torch's are paragraphs)."""
    return (str(error).strip() or type(error).__name__).splitlines()[0]


if __name__ == "__main__":
    sys.exit(main())
