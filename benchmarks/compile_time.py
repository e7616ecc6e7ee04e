"""How long the CPU kernels take to compile: the first call of each
operation on an empty kernel cache, against the same call once compiled.

    python benchmarks/compile_time.py [CASE ...] [--size 22]

A CASE is FORMAT:OPERATION:DTYPE[:SCALE_RULE], OPERATION one of quantize,
encode, decode and DTYPE one of float32, bfloat16, float16, float64 (the
input's dtype; decode decodes the codes of that input into float32), e.g.
``nvfp4:encode:float32`` or ``nvfp4:quantize:float32:mse``. The cases run
in order in one process whose numba cache is a new empty directory, so a
helper that several kernels share is compiled by the first case that needs
it, as in a user's session. Prints, per case, the first call's seconds
(compile and run) and the best of five calls after it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

DEFAULT_CASES = (
    "nvfp4:encode:float32", "nvfp4:quantize:float32", "nvfp4:encode:bfloat16", "nvfp4:quantize:float32:mse",
    "fp8_e4m3:quantize:float32", "fp8_e4m3:encode:float32", "int8:encode:float32", "mxfp4:quantize:float32",
    "mxfp4:encode:float32", "mxfp4:decode:float32", "mx6:encode:float32", "mx6:quantize:float32",
    "mx6:decode:float32", "mxfp8_e4m3:encode:bfloat16", "fp8_e4m3:quantize:float64", "mxfp4:quantize:float64",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=DEFAULT_CASES, help="FORMAT:OPERATION:DTYPE[:SCALE_RULE]")
    parser.add_argument("--size", type=int, default=22, help="log2 of the element count of each call")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["NUMBA_CACHE_DIR"] = cache  # before numba is imported: every kernel compiles afresh
        run(args.cases, 1 << args.size)


def run(cases: list[str], count: int) -> None:
    import torch

    import lowbit
    from lowbit.bench import seconds

    data = torch.randn(count // 64, 64, generator=torch.Generator().manual_seed(0))
    total = 0.0
    print(f"| case ({count} elements) | first call, s | compiled call, ms |\n|---|---:|---:|")
    for case in cases:
        name, operation, dtype, *rule = case.split(":")
        fmt, x = lowbit.get_format(name), data.to(getattr(torch, dtype))
        options = {"backend": "cpu", **({"scale_rule": rule[0]} if rule else {})}
        if operation == "decode":
            codes = fmt.encode(x, **options)
            call = lambda: fmt.decode(codes, backend="cpu", dtype=torch.float32)  # noqa: E731
        else:
            call = lambda: getattr(fmt, operation)(x, **options)  # noqa: E731
        start = time.perf_counter()
        call()
        first = time.perf_counter() - start
        total += first
        print(f"| {case} | {first:.1f} | {min(seconds(call) for _ in range(5)) * 1e3:.2f} |", flush=True)
    print(f"| all first calls | {total:.1f} | |")


if __name__ == "__main__":
    main()
