"""Small cases of the CUDA extension for ``benchmarks/gpu_check.sh``.

    python benchmarks/gpu_cases.py kernels [--dry]   # every kernel once, against the reference
    python benchmarks/gpu_cases.py streams [--dry]   # the ops launch on torch's current stream

``kernels`` runs every kernel of the extension (element, block and
microexponent quantize/encode/decode; the MX matmul's operand preparation
and product with each instruction, K = 0 included) on small inputs and
checks each result against the reference: casts bit for bit, int8 products
bit for bit against the host model of the kernel's arithmetic, the others
within fp32's summation bound. It is small so that compute-sanitizer's
memcheck, racecheck and synccheck can run it in seconds.

``streams`` captures raw ops (no status read-back, so no synchronisation)
in a CUDA graph, which records work on its own capture stream: an op that
launched on another stream (the legacy default stream, say) makes the
capture fail, and an op that launched on the capture stream replays to the
eager result.

``--dry`` runs both on the emulated build (the same ``.cu`` kernels run on
the CPU, thread by thread) so that CI keeps this file working on machines
without a GPU; ``streams`` then runs its ops eagerly (the CPU has no streams).

Each case prints ``ok`` or ``FAIL`` with its name; the exit status is the
number of failures (0: all passed).
"""

from __future__ import annotations

import argparse
import sys
import traceback

import torch

import lowbit
from lowbit.formats import abi, reference_matmul, summation_bound

ELEMENT = ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "int4", "bf16",
           # codebooks: NF4's 16 values (the lower neighbour by a short search), 300 values (a longer one)
           lowbit.get_format("nf4").element,
           lowbit.CodebookFormat(torch.linspace(-3, 3, 300).float().unique().tolist(), name="codebook300")]
SCALED = ["mxfp4", "mxfp6_e3m2", "mxint8", "nvfp4", "mx6", "mx9", "nf4", "fp4_bnb", "nf4_dq",
          # rows of codes that end inside a byte: neighbouring threads OR them into shared words
          lowbit.BlockFormat(lowbit.get_format("fp6_e3m2"), 2, scale=lowbit.get_format("e8m0")),
          lowbit.MicroexponentFormat(2, 4, 2, micro_bits=1)]
#: (A format, B format, instruction, M, N, K)
MATMULS = [("mxfp4", "mxfp4", "int8", 19, 9, 96), ("mxint8", "mxfp6_e2m3", "int8", 130, 257, 160),
           ("mxfp8_e4m3", "mxfp6_e3m2", "fp16", 33, 65, 64), ("mxfp8_e4m3", "mxfp8_e5m2", "fp8", 19, 130, 128),
           ("mxfp8_e4m3", "mxfp4", None, 3, 5, 0)]

#: (name, policy): the rounding paths of the cast kernels (stochastic with a 53-bit and a 13-bit draw)
ROUNDINGS = [("nearest_even", {}), ("stochastic", {"rounding": "stochastic", "seed": 7}),
             ("stochastic sr_bits=13", {"rounding": "stochastic", "seed": 7, "sr_bits": 13})]


def data(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Normal data over 16 binades with zeros and a NaN."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-8, 8, shape[-1], base=2)
    flat = x.view(-1)
    flat[::97] = 0.0
    if flat.numel() > 5:
        flat[5] = float("nan")
    return x


def same(result, expected) -> None:
    """AssertionError unless result equals expected bit for bit (NaN where it is NaN)."""
    if isinstance(expected, lowbit.Encoded):
        assert result == expected, "encodings differ"
        return
    result = result.cpu()
    assert result.dtype == expected.dtype and result.shape == expected.shape, (result.shape, expected.shape)
    if not expected.dtype.is_floating_point:
        assert torch.equal(result, expected), "codes differ"
        return
    nan = expected.isnan()
    assert torch.equal(result.isnan(), nan), "NaN positions differ"
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[expected.element_size()]
    differ = int((result[~nan].view(bits) != expected[~nan].view(bits)).sum())
    assert differ == 0, f"{differ} of {expected.numel()} values differ"


def agree(on_device, reference) -> None:
    """The two calls return the same bits, or raise ValueError with the same message."""
    outcomes = []
    for call in (on_device, reference):
        try:
            outcomes.append(call())
        except ValueError as error:
            outcomes.append(str(error))
    if isinstance(outcomes[0], str) or isinstance(outcomes[1], str):
        assert outcomes[0] == outcomes[1], outcomes
    else:
        same(*outcomes)


def cast_cases(device: torch.device):
    """(name, call) for every cast kernel: element, block and microexponent formats."""
    for fmt in ELEMENT:
        fmt = lowbit.get_format(fmt) if isinstance(fmt, str) else fmt
        name = fmt.name
        x = data((3, 1001), 1)
        part = x.reshape(-1)[1:]  # one element past a 16-byte boundary
        for tag, policy in ROUNDINGS:
            yield f"{name} quantize {tag}", lambda fmt=fmt, p=part, policy=policy: same(
                fmt.quantize(p.to(device), **policy), fmt.quantize(p, backend="reference", **policy))
        yield f"{name} encode", lambda fmt=fmt, p=part: agree(
            lambda: fmt.encode(p.to(device), overflow="saturate"),
            lambda: fmt.encode(p, overflow="saturate", backend="reference"))
        finite = part.nan_to_num()
        yield f"{name} encode finite", lambda fmt=fmt, p=finite: same(
            fmt.encode(p.to(device), overflow="saturate"), fmt.encode(p, overflow="saturate", backend="reference"))
        if fmt.nbits <= 16:
            codes = torch.arange(1 << fmt.nbits)
            yield f"{name} decode", lambda fmt=fmt, c=codes: same(fmt.decode(c.to(device)),
                                                                  fmt.decode(c, backend="reference"))
    for fmt in SCALED:
        fmt = lowbit.get_format(fmt) if isinstance(fmt, str) else fmt
        x = data((5, 67, 33), 2)
        for axis in (-1, 1):
            tag = f"{fmt.name} axis {axis}"
            for rounding, policy in ROUNDINGS:
                yield f"{tag} quantize {rounding}", lambda fmt=fmt, a=axis, policy=policy: same(
                    fmt.quantize(x.to(device), axis=a, **policy), fmt.quantize(x, axis=a, backend="reference", **policy))
            yield f"{tag} encode", lambda fmt=fmt, a=axis: same(fmt.encode(x.to(device), axis=a),
                                                                fmt.encode(x, axis=a, backend="reference"))
            yield f"{tag} decode", lambda fmt=fmt, a=axis: same(
                fmt.decode(fmt.encode(x.to(device), axis=a)),
                fmt.decode(fmt.encode(x, axis=a, backend="reference"), backend="reference"))


def check_product(fa: str, fb: str, instruction: str | None, m: int, n: int, k: int, device: torch.device) -> None:
    """The product on the device: int8 bit for bit equal to the host model,
    every instruction within fp32's summation bound (unit 2**-23: the tensor
    cores may truncate) of the reference."""
    from lowbit.cuda.matmul import choose_types

    a = lowbit.encode(data((m, k), 3), fa, axis=1)
    b = lowbit.encode(data((n, k), 4), fb, axis=1)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(5))
    result = lowbit.cuda.mx_matmul(lowbit.encode(data((m, k), 3).to(device), fa, axis=1),
                                   lowbit.encode(data((n, k), 4).to(device), fb, axis=1), bias=bias.to(device),
                                   instruction=instruction, backend="cuda" if device.type == "cuda" else
                                   "cuda_emulated").cpu()
    host = lowbit.cuda.mx_matmul(a, b, bias=bias, instruction=instruction, backend="cuda_host")
    if choose_types(a.format, b.format, instruction)[0] == "int8":
        same(result, host)
    reference = reference_matmul(a, b, bias)
    bound = summation_bound(a, b, roundings_per_block=a.format.block_size // 16, unit=2.0 ** -23)
    error = (result.double() - reference).abs()
    finite = reference.isfinite()
    assert torch.equal(result.isnan(), reference.isnan()), "NaN positions differ from the reference"
    assert bool((error[finite] <= bound[finite]).all()), f"error {float((error / bound)[finite].max()):.3g} x bound"


def matmul_cases(device: torch.device):
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else (10, 0)
    if capability < (8, 0):  # the op refuses: check that it says so
        a = lowbit.encode(data((4, 64), 3).to(device), "mxfp4", axis=1)
        yield "mx_matmul refused below sm_80", lambda: agree(lambda: lowbit.cuda.mx_matmul(a, a), lambda: (
            f"mx_matmul needs a GPU of compute capability 8.0 or later; {a.elements.device} has "
            f"{capability[0]}.{capability[1]}"))
        return
    for fa, fb, instruction, m, n, k in MATMULS:
        if instruction == "fp8" and capability < (8, 9):
            continue
        yield (f"mx_matmul {fa} x {fb} {instruction} {m}x{n}x{k}",
               lambda c=(fa, fb, instruction, m, n, k): check_product(*c, device))


def run_cases(cases) -> int:
    failures = 0
    for name, call in cases:
        try:
            call()
            print(f"ok    {name}", flush=True)
        except Exception as error:  # a case's failure is reported and counted; the others still run
            failures += 1
            print(f"FAIL  {name}: {type(error).__name__}: {error}", flush=True)
            traceback.print_exc(limit=3, file=sys.stdout)
    return failures


def stream_cases(ops, device: torch.device):
    """(name, op, arguments) of raw ops, each on inputs of ``device``."""
    from lowbit.cuda.matmul import TENSOR_CORE_TYPES, prepared

    x = data((64, 96), 6).to(device)
    fp8, mxfp4, mx6 = (lowbit.get_format(n) for n in ("fp8_e4m3", "mxfp4", "mx6"))
    block = ([*abi.element_descriptor(mxfp4.element)], [*abi.element_descriptor(mxfp4.scale)],
             [float(v) for v in abi.block_params(mxfp4, "floor", None)])
    encoded = mxfp4.encode(x, axis=1)
    a = lowbit.encode(x, "mxfp8_e4m3", axis=1)
    (pa, sa), (pb, sb) = prepared(a, "fp16", ops), prepared(encoded, "fp16", ops)
    fp16 = TENSOR_CORE_TYPES["fp16"]
    yield "element_quantize", ops.element_quantize, (x, [*abi.element_descriptor(fp8)], 0, 0, 0, 0.0)
    yield "element_encode", ops.element_encode, (x, [*abi.element_descriptor(fp8)], 0, 0, 0, 0.0, 8)
    yield "block_encode", ops.block_encode, (x, 1, *block, 0, 0, 0.0)
    yield "block_decode", ops.block_decode, (encoded.elements, encoded.scales.reshape(-1), [64, 96], 1, *block,
                                             torch.float32)
    yield "microexponent_quantize", ops.microexponent_quantize, (x, 0, [*abi.microexponent_params(mx6)], 0, 0, 0.0)
    table = torch.tensor(lowbit.NF4_VALUES, dtype=torch.float64, device=device)
    yield "codebook_encode", ops.codebook_encode, (x, table, 0, 0, 0.0, 8)
    yield "codebook_block_quantize", ops.codebook_block_quantize, (x, 1, table, 64, 4, 0, 0, 0.0)
    yield "mx_prepare", ops.mx_prepare, (a.elements, a.scales.reshape(-1), None, torch.ones(256, device=device), 8,
                                         64, 96)
    if device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 0):
        yield "mx_matmul", ops.mx_matmul, (pa, sa, pb, sb, None, fp16, fp16, 32, torch.float32)


def check_stream(op, arguments, dry: bool) -> None:
    eager = op(*arguments)
    eager = eager if isinstance(eager, tuple) else (eager,)
    if dry:
        return
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # captures the current (side) stream; launches elsewhere fail the capture
        captured = op(*arguments)
    graph.replay()
    torch.cuda.synchronize()
    captured = captured if isinstance(captured, tuple) else (captured,)
    for e, c in zip(eager, captured):
        same(c, e.cpu())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["kernels", "streams"])
    parser.add_argument("--dry", action="store_true", help="the emulated build on the CPU (no GPU needed)")
    args = parser.parse_args(argv)
    if args.dry:
        from lowbit.formats import backends

        backends.defaults["cpu"] = "cuda_emulated"
        device, ops = torch.device("cpu"), torch.ops.lowbit_emulated
        backends.get("cuda_emulated")
    else:
        lowbit.cuda.build()
        device, ops = torch.device("cuda"), torch.ops.lowbit_cuda
    if args.what == "kernels":
        return min(run_cases([*cast_cases(device), *matmul_cases(device)]), 255)
    return min(run_cases([(name, lambda o=op, a=arguments: check_stream(o, a, args.dry))
                          for name, op, arguments in stream_cases(ops, device)]), 255)


if __name__ == "__main__":
    sys.exit(main())
