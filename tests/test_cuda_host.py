"""The CUDA kernels' math (the host twin, the "cuda_host" backend) against
the reference on every code and every rounding boundary of every
catalogued element format, in every rounding mode and overflow policy; and
the extension's ops against their fake implementations (what torch.compile
traces). The formats tests run the twin too, as the cuda_host backend."""

import numpy as np
import pytest
import torch

import lowbit
from lowbit.formats import BlockFormat, FloatFormat, IntFormat, abi
from lowbit.formats import backends

try:
    backends.get("cuda_host")
except backends.BackendUnavailable as why:
    pytest.skip(f"the host twin does not build here: {why}", allow_module_level=True)

ELEMENT_FORMATS = [n for n in lowbit.list_formats() if isinstance(lowbit.get_format(n), (FloatFormat, IntFormat))]


def overflow_policies(fmt):
    return ["saturate"] + (["inf"] if fmt.has_inf else []) + (["nan"] if fmt.has_nan else [])


def boundaries(fmt) -> torch.Tensor:
    """Every value of the format (at most 2**16 of them, evenly picked from
    wider ones), every midpoint between neighbours and the float64 numbers
    on either side of it, values beyond the largest, and specials; both signs."""
    values = fmt.values() if fmt.nbits <= 16 else np.unique(fmt.decode(
        np.arange(0, 1 << fmt.nbits, 1 << (fmt.nbits - 16), dtype=np.uint64).astype(np.uint32), dtype=np.float64))
    values = values[np.isfinite(values)]
    mids = (values[1:] + values[:-1]) / 2
    top = values[-1]
    points = np.concatenate([values, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
                             [top * 1.5, top * 4, 1e300, 5e-324, np.inf, np.nan]])
    return torch.from_numpy(np.concatenate([points, -points]))


def rounding_policies(seed: int):
    """Every rounding mode the kernels implement; stochastic with its 53-bit
    draw and with a draw of 1, 8, 13 and 32 bits (sr_bits)."""
    for rounding in abi.ROUNDINGS:
        if rounding != "stochastic":
            yield {"rounding": rounding}
            continue
        for k in (None, 1, 8, 13, 32):
            yield {"rounding": rounding, "seed": seed, **({"sr_bits": k} if k else {})}


def same_bits(a: torch.Tensor, b: torch.Tensor, context: str) -> None:
    assert a.dtype == b.dtype, context
    nan = torch.isnan(a)
    assert torch.equal(nan, torch.isnan(b)), context
    assert torch.equal(a[~nan].view(torch.int64), b[~nan].view(torch.int64)), context


def outcome(call, *args, **kwargs):
    """What a call returns, or the message of the ValueError it raises."""
    try:
        return call(*args, **kwargs)
    except ValueError as error:
        return str(error)


def error_of(call, *args, **kwargs) -> str | None:
    """The message of the ValueError a call raises, None if it returns."""
    try:
        call(*args, **kwargs)
    except ValueError as error:
        return str(error)
    return None


@pytest.mark.parametrize("name", ELEMENT_FORMATS)
def test_every_code_and_boundary_in_every_mode(name):
    fmt = lowbit.get_format(name)
    if fmt.nbits <= 16:
        codes = torch.arange(1 << fmt.nbits, dtype=torch.int64)
        same_bits(fmt.decode(codes, dtype=torch.float64, backend="cuda_host"),
                  fmt.decode(codes, dtype=torch.float64, backend="reference"), f"{name} decode")
    x = boundaries(fmt)
    representable = ~torch.isnan(x) & ((x >= 0) | fmt.signed) & ((x != 0) | getattr(fmt, "has_zero", True))
    for rounding in rounding_policies(seed=7):
        for overflow in overflow_policies(fmt):
            policy = dict(rounding, overflow=overflow)
            context = f"{name} {policy}"
            same_bits(fmt.quantize(x, backend="cuda_host", **policy), fmt.quantize(x, backend="reference", **policy),
                      context)
            assert torch.equal(fmt.encode(x[representable], backend="cuda_host", **policy),
                               fmt.encode(x[representable], backend="reference", **policy)), context
            assert error_of(fmt.encode, x, backend="cuda_host", **policy) == \
                error_of(fmt.encode, x, backend="reference", **policy), context


def float32_boundaries(fmt) -> torch.Tensor:
    """The float32 numbers around every boundary of the format (at most
    about 20000 of them, evenly picked): its values and midpoints rounded to
    float32 and the float32 numbers on either side of each; float32 subnormals and powers of two far below the format's
    smallest value; float32 bit patterns drawn at random; specials."""
    points = boundaries(fmt)
    near = points[torch.isfinite(points)]
    near = near[::max(1, near.numel() // 20000)].to(torch.float32)  # evenly picked for 16-bit and wider formats
    up, down = torch.full_like(near, float("inf")), torch.full_like(near, -float("inf"))
    g = torch.Generator().manual_seed(11)
    random_bits = torch.randint(-(1 << 31), 1 << 31, (20000,), generator=g, dtype=torch.int64).to(torch.int32)
    subnormals = torch.arange(1, 1 << 23, 4099, dtype=torch.int32).view(torch.float32)
    tiny = torch.exp2(torch.arange(-149, -60, dtype=torch.float32))
    return torch.cat([near, torch.nextafter(near, up), torch.nextafter(near, down), random_bits.view(torch.float32),
                      subnormals, -subnormals, tiny, -tiny, points[~torch.isfinite(points)].to(torch.float32)])


@pytest.mark.parametrize("name", [n for n in ELEMENT_FORMATS if isinstance(lowbit.get_format(n), FloatFormat)
                                  and lowbit.get_format(n).man_bits <= 23])
def test_float32_inputs_take_the_integer_path_to_the_same_codes(name):
    """Float formats of at most 23 mantissa bits encode float16, bfloat16 and
    float32 inputs from their float32 bits with integer arithmetic
    (float_encode_f32); the codes and values equal the reference's for every
    float32 number around every boundary, in every mode and overflow policy,
    with and without flushing subnormal inputs."""
    fmt = lowbit.get_format(name)
    points = float32_boundaries(fmt)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = points.to(dtype)
        representable = ~torch.isnan(x) & ((x >= 0) | fmt.signed) & ((x != 0) | getattr(fmt, "has_zero", True))
        for rounding in rounding_policies(seed=2**64 - 3):
            for overflow in overflow_policies(fmt):
                for flush in (False, True):
                    policy = dict(rounding, overflow=overflow, flush_subnormals=flush)
                    context = f"{name} {dtype} {policy}"
                    host, reference = (outcome(fmt.quantize, x, backend=b, **policy) for b in ("cuda_host", "reference"))
                    if isinstance(host, str) or isinstance(reference, str):  # a dtype that cannot hold the results
                        assert host == reference, context
                    else:
                        same_bits(host.double(), reference.double(), context)
                    host, reference = (outcome(fmt.encode, x[representable], backend=b, **policy)
                                       for b in ("cuda_host", "reference"))
                    assert type(host) is type(reference), context
                    assert host == reference if isinstance(host, str) else torch.equal(host, reference), context


def sr_bits_ties(fmt, k: int) -> torch.Tensor:
    """Magnitudes a fraction (2j + 1) / 2**(k + 1) of the way from a value of
    the format to the next (j = 0, 1, 2**k - 1), where round(f * 2**k) ties
    under sr_bits=k, and the float64 numbers on either side; values evenly
    picked, at most 4096 of them; both signs."""
    values = fmt.values()
    values = values[np.isfinite(values) & (values >= 0)]
    lo, step = values[:-1], np.diff(values)
    pick = slice(None, None, max(1, lo.size // 4096))
    fractions = np.array([1, 3, (1 << (k + 1)) - 1]) / 2.0 ** (k + 1)
    ties = (lo[pick, None] + step[pick, None] * fractions).ravel()  # exact: few significant bits
    points = np.concatenate([ties, np.nextafter(ties, np.inf), np.nextafter(ties, -np.inf)])
    return torch.from_numpy(np.concatenate([points, -points]))


@pytest.mark.parametrize("name", [n for n in ELEMENT_FORMATS if lowbit.get_format(n).nbits <= 16])
def test_sr_bits_at_the_ties_of_the_rounded_fraction(name):
    """sr_bits=k rounds the fraction f of the step to k bits, half to even,
    before it compares with the draw: the host twin's double path (float64
    inputs) and integer path (float32 inputs) against the reference where
    f * 2**k sits on, just above and just below a half."""
    fmt = lowbit.get_format(name)
    for k in (1, 3, 8, 13):
        x = sr_bits_ties(fmt, k)
        for dtype in (torch.float64, torch.float32):
            policy = dict(rounding="stochastic", seed=k, sr_bits=k, overflow="saturate")
            same_bits(fmt.quantize(x.to(dtype), backend="cuda_host", **policy).double(),
                      fmt.quantize(x.to(dtype), backend="reference", **policy).double(), f"{name} {dtype} {policy}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4", "mx6", "msfp12"])
def test_scaled_formats_on_boundary_blocks(name, dtype):
    """Blocks whose largest element sits on every boundary of the element
    format's grid at a spread of scales (so every scale rule's edge cases
    and every element rounding decision occur), as float64 inputs and as
    float32 and bfloat16 ones (MX elements of those take the integer path,
    float_encode_parts)."""
    fmt = lowbit.get_format(name)
    element = fmt.element if isinstance(fmt, BlockFormat) else lowbit.FloatFormat(2, 3)
    b = boundaries(element)
    b = b[torch.isfinite(b) & (b.abs() < 1e30)]
    rows = b.numel() // fmt.block_size * fmt.block_size
    x = b[:rows].reshape(-1, fmt.block_size)
    x = (x * torch.logspace(-30, 30, x.shape[0], base=2, dtype=torch.float64)[:, None]).to(dtype)
    rules = (["floor", "ceil", "rceil", "even"] if isinstance(fmt, BlockFormat) and fmt.scale.man_bits == 0
             else [None])
    for rule in rules:
        for rounding in rounding_policies(seed=1):
            policy = dict(rounding, **({"scale_rule": rule} if rule else {}))
            host, reference = (outcome(fmt.quantize, x, backend=b, **policy) for b in ("cuda_host", "reference"))
            if isinstance(host, str) or isinstance(reference, str):  # bfloat16 cannot hold every result
                assert host == reference, f"{name} {policy}"
            else:
                same_bits(host.double(), reference.double(), f"{name} {policy}")
            assert fmt.encode(x, backend="cuda_host", **policy) == fmt.encode(x, backend="reference", **policy)


#: float32 subnormals from the smallest to the largest, with few and many significant bits
FLOAT32_SUBNORMALS = torch.tensor([1, 2, 3, 5, 7, 255, 4097, (1 << 23) - 1], dtype=torch.int32).view(torch.float32)


@pytest.mark.parametrize("element", ["bf16", "fp16", "p3109_8p1", "fp8_e5m2", "fp8_e4m3"])
def test_float32_subnormals_over_the_smallest_scales(element):
    """Blocks of float32 subnormals and signed zeros, whose scales are the
    smallest (so the quotient of a subnormal lies in a wide element format's
    normal range and the format keeps every bit of it), and blocks of one
    larger value among them (p3109_8p1's zeros under 2**-87); every scale
    rule and rounding mode."""
    fmt = lowbit.BlockFormat(lowbit.get_format(element), 8, scale=lowbit.get_format("e8m0"))
    subnormals = FLOAT32_SUBNORMALS
    blocks = [subnormals, -subnormals, torch.tensor([0.0, -0.0] * 4), subnormals.flip(0)]
    for top in (2.0 ** -126, 1.5 * 2.0 ** -100, 2.0 ** -60, 2.0 ** -24, 1.5 * 2.0 ** -25):
        blocks.append(torch.cat([-subnormals[:7], torch.tensor([top])]))
        blocks.append(torch.tensor([0.0, -0.0, 0.0, -0.0, -0.0, 0.0, -0.0, top]))
    x = torch.stack(blocks)
    for rule in ("floor", "ceil", "rceil", "even"):
        for rounding in rounding_policies(seed=3):
            policy = dict(rounding, scale_rule=rule)
            host, reference = (outcome(fmt.quantize, x, backend=b, **policy) for b in ("cuda_host", "reference"))
            if isinstance(host, str) or isinstance(reference, str):
                assert host == reference, f"{element} {policy}"
            else:
                same_bits(host.double(), reference.double(), f"{element} {policy}")
            assert fmt.encode(x, backend="cuda_host", **policy) == fmt.encode(x, backend="reference", **policy)


@pytest.mark.parametrize("exp_bits,man_bits", [(9, 3), (10, 2), (8, 7)])
def test_float32_subnormals_in_formats_of_float32s_exponent_range_or_wider(exp_bits, man_bits):
    """A float32 subnormal is normal (or exact) in a float format whose
    exponent range reaches below float32's: the integer path keeps every
    bit of it, in every rounding mode."""
    fmt = lowbit.FloatFormat(exp_bits, man_bits)
    subnormals = FLOAT32_SUBNORMALS
    x = torch.cat([subnormals, -subnormals, torch.tensor([0.0, -0.0, 2.0 ** -126, -1.5])])
    for rounding in rounding_policies(seed=5):
        same_bits(fmt.quantize(x, backend="cuda_host", **rounding), fmt.quantize(x, backend="reference", **rounding),
                  f"{fmt.name} {rounding}")
        assert torch.equal(fmt.encode(x, backend="cuda_host", **rounding), fmt.encode(x, backend="reference", **rounding))


def op_samples():
    """(op, args) pairs covering each op of the extension."""
    from lowbit.formats.abi import block_params, element_descriptor, microexponent_params

    ops = torch.ops.lowbit_host
    x = torch.randn(3, 40)
    fp8, mxfp4, mx6 = (lowbit.get_format(n) for n in ("fp8_e4m3", "mxfp4", "mx6"))
    desc = list(element_descriptor(fp8))
    block = (list(element_descriptor(mxfp4.element)), list(element_descriptor(mxfp4.scale)),
             [float(v) for v in block_params(mxfp4, "floor", None)])
    micro = list(microexponent_params(mx6))
    elements, scales = ops.block_encode(x, 1, *block, 0, 0, 0.0)
    m_elements, m_scales, m_shifts = ops.microexponent_encode(x, 0, micro, 0, 0, 0.0)
    return [
        (ops.element_quantize, (x, desc, 0, 0, 0, 0.0)),
        (ops.element_encode, (x.double(), desc, 5, 0, -3, 0.0, 8)),
        (ops.element_decode, (torch.arange(256, dtype=torch.uint8), desc, 8, torch.float64)),
        (ops.block_quantize, (x.to(torch.bfloat16), 1, *block, 0, 0, 0.0)),
        (ops.block_encode, (x, 0, *block, 0, 0, 0.0)),
        (ops.block_decode, (elements, scales, [3, 40], 1, *block, torch.float32)),
        (ops.microexponent_quantize, (x.t(), 1, micro, 0, 0, 0.0)),
        (ops.microexponent_encode, (x, 1, micro, 0, 0, 0.0)),
        (ops.microexponent_decode, (m_elements, m_scales, m_shifts, [3, 40], 0, micro, torch.float32)),
    ]


@pytest.mark.parametrize("index", range(9))
def test_ops_agree_with_their_fake_implementations(index):
    op, args = op_samples()[index]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
