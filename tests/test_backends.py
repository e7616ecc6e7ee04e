"""The kernel backends against the reference implementation, bit for bit:
the CPU kernels and the CUDA extension's two CPU builds (``cuda_host``, its
math in host loops, and ``cuda_emulated``, its kernels run thread after
thread; see conftest.py), on every family, every rounding mode
and overflow policy, every input dtype, strided inputs and other axes; and
the CPU's float32 fast paths on every rounding boundary of the formats
they serve."""

import itertools

import numba
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.formats import BlockFormat, FloatFormat, IntFormat, abi, backends
from lowbit.formats.cpu import codebook_kernels, fast32
from lowbit.testing import element_formats, scaled_formats, wide_range_blocks

from helpers import assert_same_result, kernel_backends

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-40, 3e38, 1e300, -1e-300, 2.0 ** -1074]


def outcome(call):
    """A call's result, or its error's type and message."""
    try:
        return call()
    except (ValueError, TypeError) as error:
        return f"{type(error).__name__}: {error}"


COMPARED = (*kernel_backends(), "reference")


def same(results, context):
    """Each kernel backend's result equals the reference's (the last)."""
    for backend, result in zip(COMPARED, results[:-1]):
        assert_same_result(result, results[-1], f"{backend}: {context}")


def both(method, *args, **kwargs):
    """The outcome of the call on each backend of COMPARED."""
    return [outcome(lambda b=b: method(*args, backend=b, **kwargs)) for b in COMPARED]


def overflow_policies(fmt):
    return [None, "saturate"] + (["inf"] if fmt.has_inf else []) + (["nan"] if fmt.has_nan else [])


def layouts(t):
    """The tensor as given, transposed, and as a strided slice."""
    yield t
    if t.dim() == 2:
        yield t.t()
        yield t[:, ::2]


@st.composite
def inputs(draw, fmt_max=1e4):
    values = draw(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                                     st.floats(-fmt_max, fmt_max), st.sampled_from(SPECIALS)),
                           min_size=1, max_size=48))
    rows = draw(st.sampled_from([1, 2, 3, 4]))
    values = values + [0.5] * ((-len(values)) % rows)
    return torch.tensor(values, dtype=torch.float64).reshape(rows, -1)


#: stochastic rounding's draw: 53 bits (None) or sr_bits=k
SR_BITS = st.one_of(st.none(), st.integers(1, 32))


@given(st.data())
def test_element_formats_agree(data):
    fmt = data.draw(element_formats(max_bits=16), "format")
    x64 = data.draw(inputs(fmt.max), "values")
    dtype = data.draw(st.sampled_from(DTYPES), "dtype")
    rounding = data.draw(st.sampled_from(abi.ROUNDINGS), "rounding")  # the modes the kernels implement
    overflow = data.draw(st.sampled_from(overflow_policies(fmt)), "overflow")
    flush = data.draw(st.booleans(), "flush_subnormals")
    seed = {"seed": 11, "sr_bits": data.draw(SR_BITS, "sr_bits")} if rounding == "stochastic" else {}
    for x in layouts(x64.to(dtype)):
        policy = dict(rounding=rounding, overflow=overflow, flush_subnormals=flush, **seed)
        context = f"{fmt.name} {dtype} {policy} {tuple(x.stride())}"
        same(both(fmt.quantize, x, **policy), context)
        same(both(fmt.encode, x, **policy), context)
    codes = torch.randint(0, 1 << fmt.nbits, (40,), dtype=torch.int64)
    same(both(fmt.decode, codes, dtype=torch.float64), f"{fmt.name} decode")


def described_by_every_kernel(fmt):
    """Whether fmt uses none of the BlockFormat schemes some kernel backends lack (tested below)."""
    return not isinstance(fmt, BlockFormat) or not abi.block_schemes(fmt, fmt.scale_rule)


@given(st.data())
def test_scaled_formats_agree(data):
    fmt = data.draw(scaled_formats().filter(described_by_every_kernel), "format")
    blocks = data.draw(wide_range_blocks(block_size=fmt.block_size, max_blocks=3), "blocks")
    x = torch.from_numpy(np.asarray(blocks, dtype=np.float64).reshape(-1))
    extra = data.draw(st.integers(0, fmt.block_size), "extra")
    x = torch.cat([x, torch.linspace(-3, 3, extra, dtype=torch.float64)])
    shape = data.draw(st.sampled_from([(-1,), (1, -1), (-1, 1)]), "shape")
    x = x.reshape(shape).to(data.draw(st.sampled_from(DTYPES), "dtype"))
    axis = data.draw(st.sampled_from(range(-x.dim(), x.dim())), "axis")
    rounding = data.draw(st.sampled_from(abi.ROUNDINGS), "rounding")
    stochastic = {"seed": 5, "sr_bits": data.draw(SR_BITS, "sr_bits")}
    policy = dict(axis=axis, rounding=rounding, **(stochastic if rounding == "stochastic" else {}))
    if isinstance(fmt, BlockFormat):
        policy["scale_rule"] = data.draw(st.sampled_from(
            ["floor", "ceil", "rceil", "even"] if fmt.scale.man_bits == 0 else ["amax"]), "rule")
    context = f"{fmt.name} {x.dtype} {tuple(x.shape)} {policy}"
    same(both(fmt.quantize, x, **policy), context)
    encoded = both(fmt.encode, x, **policy)
    same(encoded, context)
    if not isinstance(encoded[-1], str):
        same(both(fmt.decode, encoded[-1]), context)


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8",
                                  "nvfp4", "mx9", "mx6", "mx4", "msfp12"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_scaled_formats_along_every_axis(name, axis):
    fmt = lowbit.get_format(name)
    x = torch.randn(3, 37, 5) * torch.logspace(-3, 3, 5)
    x[1, 2, 3] = torch.nan
    policy = dict(axis=axis) if name not in ("nvfp4",) else dict(axis=axis)
    same(both(fmt.quantize, x, **policy), f"{name} axis {axis}")
    encoded = both(fmt.encode, x.permute(2, 0, 1), axis=axis)  # non-contiguous input
    same(encoded, f"{name} permuted axis {axis}")
    same(both(fmt.decode, encoded[0], dtype=torch.float64), f"{name} decode axis {axis}")


def boundary_inputs(fmt, most=2048):
    """float32 inputs at and around every value and midpoint of a format
    (of every ``len/most``-th value for formats with more than ``most``
    values, the extremes always included)."""
    values = fmt.values()
    values = values[np.abs(values) < 3e38]
    if values.size > most:
        values = np.unique(np.concatenate([values[:: values.size // most], values[:4], values[-4:]]))
    mids = (values[1:] + values[:-1]) / 2
    points = np.concatenate([values, mids, values * 2, mids * 1.5, [fmt.max * 1.0625, 1e-45, 1e-38]])
    with np.errstate(over="ignore"):
        points = np.concatenate([points, -points]).astype(np.float32)
    up, down = np.nextafter(points, np.float32(np.inf)), np.nextafter(points, np.float32(-np.inf))
    return np.concatenate([points, up, down, np.float32([np.inf, -np.inf, np.nan, 0.0, -0.0])])


FAST_FORMATS = ["fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "bf16", "fp16", "int8", "uint4",
                "int2", FloatFormat(3, 5, name="e3m5"), IntFormat(8, frac_bits=6, narrow=True)]


@pytest.mark.parametrize("fmt", FAST_FORMATS, ids=str)
def test_fast_path_on_every_boundary(fmt):
    fmt = lowbit.get_format(fmt) if isinstance(fmt, str) else fmt
    assert fast32.float_params(fmt, "saturate", False) is not None or fast32.int_params(fmt, False) is not None
    x = boundary_inputs(fmt)
    x = torch.from_numpy(np.concatenate([x, x[::-1]]))  # each point twice: two draws under stochastic rounding
    for dtype, rounding, overflow, flush in itertools.product(
            (torch.float32, torch.bfloat16), ("nearest_even", "stochastic"), overflow_policies(fmt), (False, True)):
        policy = dict(rounding=rounding, overflow=overflow, flush_subnormals=flush,
                      **({"seed": 9} if rounding == "stochastic" else {}))
        xd = x.to(dtype)
        same(both(fmt.quantize, xd, **policy), f"{fmt.name} {dtype} {policy}")
        same(both(fmt.encode, xd[~torch.isnan(xd)], **policy), f"{fmt.name} {dtype} encode {policy}")


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp4_e2m1", "bf16"])
def test_fast_encode_stores_codes_in_words_at_every_length_and_start(name):
    """encode_float stores the codes of neighbours as one uint32 word: every
    length (tails of one to three codes) and uint8 outputs that do not
    start on a 4-byte boundary (stored code by code) give the reference's
    codes, in each mode (the stochastic draws follow the element index); a
    NaN counts as invalid where the format has no NaN."""
    fmt = lowbit.get_format(name)
    params = fast32.float_params(fmt, "saturate", False)
    x = np.random.default_rng(1).standard_normal(41).astype(np.float32) * 30
    x[5] = np.nan  # inside a word: its code (-1 where the format has no NaN) must not reach its neighbours
    dtype = np.uint8 if fmt.nbits <= 8 else np.uint16
    for policy in (dict(rounding="nearest_even"), dict(rounding="stochastic", seed=3),
                   dict(rounding="stochastic", seed=3, sr_bits=5)):
        mode = abi.rounding_code(policy["rounding"], policy.get("sr_bits"))
        key = np.uint64(policy.get("seed", 0))
        finite = fmt.encode(torch.from_numpy(np.nan_to_num(x)), backend="reference", overflow="saturate", **policy)
        for n in range(len(x)):
            for start in (0, 1, 2, 3) if dtype == np.uint8 else (0,):
                out = np.zeros(n + 8, dtype)[start:start + n]
                invalid = fast32.encode_float(x[:n], out, params, key, mode)
                assert invalid == int(n > 5 and not fmt.has_nan), f"{name} {policy} n={n} start={start}"
                keep = np.arange(n) != 5
                assert np.array_equal(out[keep], finite.numpy()[:n][keep]), f"{name} {policy} n={n} start={start}"


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"])
@pytest.mark.parametrize("rule", ["floor", "ceil", "rceil", "even"])
def test_mx_fast_path_on_every_boundary(name, rule):
    fmt = lowbit.get_format(name)
    elements = boundary_inputs(fmt.element)
    scales = np.float32(2.0) ** np.arange(-140, 120, 37, dtype=np.float32)
    with np.errstate(over="ignore"):  # products past float32's range are infinities, inputs like any other
        x = np.concatenate([elements * s for s in scales]).astype(np.float32)
    x = torch.from_numpy(np.resize(x, (-(-x.size // 32) * 32,)).reshape(-1, 32))
    for xd in (x, x.bfloat16()):
        same(both(fmt.quantize, xd, scale_rule=rule), f"{name} {rule} {xd.dtype}")
        same(both(fmt.encode, xd, scale_rule=rule), f"{name} {rule} {xd.dtype} encode")


@pytest.mark.parametrize("tensor_scale", [False, True])
def test_nvfp4_fast_path_on_every_boundary(tensor_scale):
    nvfp4 = lowbit.get_format("nvfp4")
    fmt = BlockFormat(nvfp4.element, 16, nvfp4.scale, tensor_scale=tensor_scale)
    elements = boundary_inputs(fmt.element)
    elements = np.resize(elements, (-(-elements.size // 15) * 15,)).reshape(-1, 15)
    rows = []
    for scale in nvfp4.scale.values()[nvfp4.scale.values() > 0][::5]:
        # the first element fixes the block's amax, so its scale is exactly `scale`
        first = np.full((elements.shape[0], 1), 6 * scale, dtype=np.float32)
        rows.append(np.concatenate([first, elements * np.float32(scale)], axis=1))
    x = torch.from_numpy(np.concatenate(rows).astype(np.float32))
    for xd in (x, x.bfloat16()):
        same(both(fmt.quantize, xd), f"{fmt.name} tensor_scale={tensor_scale} {xd.dtype}")
        same(both(fmt.encode, xd), f"{fmt.name} tensor_scale={tensor_scale} {xd.dtype} encode")


@pytest.mark.parametrize("tensor_scale", [False, True])
def test_nvfp4_fast_path_near_midpoints(tensor_scale):
    # the fast path divides in float32 (within 2**-23 of the quotient) and redoes in
    # float64 the rows with a quotient within 2**-22 of a midpoint: inputs 1..64 float32
    # steps from every midpoint, times every scale, land on both sides of that window
    nvfp4 = lowbit.get_format("nvfp4")
    fmt = BlockFormat(nvfp4.element, 16, nvfp4.scale, tensor_scale=tensor_scale)
    magnitudes = np.unique(np.abs(fmt.element.values()))
    mids = ((magnitudes[1:] + magnitudes[:-1]) / 2).astype(np.float32)
    offsets = np.array([1, 2, 3, 4, 5, 8, 13, 16, 31, 64], dtype=np.int32)
    near = (mids.view(np.int32)[:, None] + np.concatenate([offsets, -offsets])[None, :]).view(np.float32).ravel()
    rng = np.random.default_rng(5)
    rows = []
    for scale in nvfp4.scale.values()[nvfp4.scale.values() > 0]:
        elements = rng.permutation(np.resize(near, (-(-near.size // 15) * 15,))).reshape(-1, 15)
        elements *= rng.choice([-1, 1], elements.shape).astype(np.float32)
        first = np.full((elements.shape[0], 1), 6 * scale, dtype=np.float32)
        rows.append(np.concatenate([first, elements * np.float32(scale)], axis=1))
    x = torch.from_numpy(np.concatenate(rows).astype(np.float32))
    for xd in (x, x * 1e-3, x.bfloat16()):
        same(both(fmt.quantize, xd), f"{fmt.name} tensor_scale={tensor_scale} {xd.dtype}")
        same(both(fmt.encode, xd), f"{fmt.name} tensor_scale={tensor_scale} {xd.dtype} encode")
        # the searches sum each candidate's errors from float32 elements: blocks with a quotient near a
        # midpoint are summed again from float64 ones
        for rule, call in itertools.product(("4over6", "mse"), (fmt.quantize, fmt.encode)):
            assert_same_result(*[outcome(lambda b=b: call(xd, backend=b, scale_rule=rule)) for b in ("cpu", "reference")],
                      f"{fmt.name} tensor_scale={tensor_scale} {xd.dtype} {rule} {call.__name__}")


@pytest.mark.parametrize("name", ["mx9", "mx6", "mx4", "msfp12"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_microexponent_fast_path_across_exponents(name, dtype):
    fmt = lowbit.get_format(name)
    x = torch.randn(512, 64, generator=torch.Generator().manual_seed(1))
    x = x * torch.exp2(torch.randint(-150, 120, (512, 1)).float()) * torch.exp2(torch.randint(-3, 3, (512, 64)).float())
    x[::7, ::5] = 0.0
    x[3, 3], x[5, 17] = float("nan"), float("-inf")
    same(both(fmt.quantize, x.to(dtype)), f"{name} {dtype}")
    same(both(fmt.encode, x.to(dtype)), f"{name} {dtype} encode")
    encoded = fmt.encode(x.to(dtype), backend="reference")
    same(both(fmt.decode, encoded), f"{name} {dtype} decode")


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4",
                                  "nvfp4 tensor scale"])
def test_block_decode_fast_path_on_every_code(name):
    # every element code beside every scale code (NaN ones included), decoded both ways
    nvfp4 = lowbit.get_format("nvfp4")
    fmt = BlockFormat(nvfp4.element, 16, nvfp4.scale, tensor_scale=True) if name.endswith("scale") else lowbit.get_format(name)
    element_codes = torch.arange(1 << fmt.element_code_bits, dtype=torch.int64)
    scale_codes = torch.arange(1 << fmt.scale_code_bits, dtype=torch.int64)
    nblocks = -(-element_codes.numel() // fmt.block_size) * scale_codes.numel()
    codes = element_codes.repeat(-(-nblocks * fmt.block_size // element_codes.numel()))[:nblocks * fmt.block_size]
    packed = lowbit.formats.pack(codes, fmt.element_code_bits)
    scales = scale_codes.repeat_interleave(nblocks // scale_codes.numel()).to(torch.uint8)
    for tensor_scale in ([None] if fmt.tensor_scale is False else [0.75, float(np.float32(3e-5))]):  # float32 values, as encode gives
        encoded = lowbit.Encoded(fmt, (nblocks, fmt.block_size), -1, packed, scales.reshape(-1, 1),
                                 tensor_scale=tensor_scale)
        for dtype in (torch.float32, torch.float64):
            same(both(fmt.decode, encoded, dtype=dtype), f"{name} {dtype} tensor scale {tensor_scale}")


@pytest.mark.parametrize("name", ["mx9", "mx6", "mx4", "msfp12"])
def test_microexponent_decode_fast_path_on_every_code(name):
    # every element code in blocks of every shared-exponent code (the NaN one included), random shifts
    fmt = lowbit.get_format(name)
    element_codes = torch.arange(1 << fmt.element_code_bits, dtype=torch.int64)
    nblocks = -(-element_codes.numel() // fmt.block_size) * (1 << fmt.scale_code_bits)
    codes = element_codes.repeat(-(-nblocks * fmt.block_size // element_codes.numel()))[:nblocks * fmt.block_size]
    scales = torch.arange(1 << fmt.scale_code_bits).repeat_interleave(nblocks >> fmt.scale_code_bits)
    shifts = torch.randint(0, 1 << fmt.micro_bits, (nblocks * fmt.subscales_per_block,),
                           generator=torch.Generator().manual_seed(4))
    encoded = lowbit.Encoded(fmt, (nblocks, fmt.block_size), 1, lowbit.formats.pack(codes, fmt.element_code_bits),
                             scales.to(torch.uint8).reshape(-1, 1),
                             lowbit.formats.pack(shifts, fmt.subscale_code_bits) if fmt.subscales_per_block else None)
    for dtype in (torch.float32, torch.float64):
        same(both(fmt.decode, encoded, dtype=dtype), f"{name} {dtype}")


@pytest.mark.parametrize("name", ["mx9", "mx6", "mx4", "msfp12"])
def test_microexponent_fast_path_where_results_leave_float32(name):
    # the kernel checks exactness only in tasks of 64 blocks holding a block whose steps fall
    # below 2**-149 (or whose exponent tops 127); give every 64 blocks one exponent, across that edge
    fmt = lowbit.get_format(name)
    held = 0
    for exponent in list(range(-156, -118)) + list(range(118, 128)):
        x = torch.randn(64, 16, generator=torch.Generator().manual_seed(exponent)) * 2.0 ** (exponent - 2)
        x[::9, ::4] = 0.0
        for dtype in (torch.float32, torch.bfloat16):
            results = both(fmt.quantize, x.to(dtype))
            same(results, f"{name} {dtype} 2**{exponent}")
            held += not isinstance(results[-1], str)
    assert held > 60  # most calls return values (the rest raise the same inexact-dtype error on both backends)


@pytest.mark.parametrize("name", ["mx9", "mx6", "mx4", "msfp12", "msfp16"])
def test_microexponent_encode_and_decode_fast_paths_task_by_task(name):
    # encode and decode run a task of 64 blocks in 32-bit lanes unless one of its blocks holds
    # NaN/Inf or has steps past their edges (then row by row): one exponent per 64 blocks, across
    # both edges, 3 tasks at a time with the middle one's exponent swept, some with a NaN block
    fmt = lowbit.get_format(name)
    for exponent in list(range(-131, -118)) + list(range(100, 128)):
        x = torch.randn(192, 16, generator=torch.Generator().manual_seed(exponent))
        x[64:128] *= 2.0 ** exponent
        x[::9, ::4] = 0.0
        x[64:128:7, 1::5] = -0.0
        if exponent % 3 == 0:
            x[70, 3] = float("nan") if exponent % 2 else float("inf")
        encoded = both(fmt.encode, x)
        same(encoded, f"{name} encode 2**{exponent}")
        for dtype in (torch.float32, torch.float64):
            same(both(fmt.decode, encoded[-1], dtype=dtype), f"{name} decode 2**{exponent} {dtype}")


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "fp6_e3m2", "int8", "uint4", "fp16", "bf16"])
def test_element_decode_table_lookup(name):
    # contiguous uint8/uint16 codes decode by table lookup: every code, both output dtypes,
    # codes past 2**nbits rejected as the general kernel rejects them, other layouts and dtypes alike
    fmt = lowbit.get_format(name)
    codes = np.arange(1 << fmt.nbits).astype(np.uint8 if fmt.nbits <= 8 else np.uint16)
    codes = torch.from_numpy(np.concatenate([codes, codes[::-1]]))
    for dtype in (torch.float32, torch.float64):
        for c in (codes, codes.reshape(2, -1).t(), codes.to(torch.int64), codes.numpy()):
            same(both(fmt.decode, c, dtype=dtype), f"{name} {dtype} {type(c).__name__}")
    if fmt.nbits < 8 * codes.element_size():
        wide = codes.numpy().copy()
        wide[5] = 1 << fmt.nbits
        same(both(fmt.decode, wide), f"{name} out of range")


@pytest.mark.parametrize("name", ["fp8_e4m3", "int4", "mxfp4", "mx6", "nvfp4"])
def test_stochastic_does_not_depend_on_threads_or_backend(name):
    fmt = lowbit.get_format(name)
    x = torch.randn(1 << 16)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        results.append(fmt.quantize(x, rounding="stochastic", seed=3, backend="cpu"))
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    results += [fmt.quantize(x, rounding="stochastic", seed=3, backend=b) for b in COMPARED[1:]]
    for r in results[1:]:
        assert torch.equal(results[0], r)


def test_cpu_is_the_default_for_cpu_data_and_backends_are_checked():
    fp8 = lowbit.get_format("fp8_e4m3")
    assert backends.resolve(None, "cpu", fp8, "quantize").name == "cpu"
    assert backends.resolve(None, "meta", fp8, "quantize").name == "reference"
    with pytest.raises(ValueError, match="backend must be None or one of 'reference', 'cpu', 'cuda'"):
        lowbit.quantize(np.ones(3), "fp8_e4m3", backend="gpu")
    with pytest.raises(ValueError, match="backend='cpu' runs on cpu data"):
        backends.resolve("cpu", "meta", fp8, "quantize")
    with pytest.raises(ValueError, match="backend='cuda' runs on cuda data"):
        lowbit.quantize(np.ones(3), "fp8_e4m3", backend="cuda")


def test_cuda_tensors_fall_back_to_the_reference_without_the_extension(monkeypatch):
    if lowbit.cuda.missing() is None:
        pytest.skip("the CUDA extension can run here")
    fp8 = lowbit.get_format("fp8_e4m3")
    assert backends.resolve(None, "cuda", fp8, "quantize").name == "reference"
    with pytest.raises(lowbit.cuda.CudaUnavailable, match="lowbit's CUDA extension cannot be used: "):
        backends.resolve("cuda", "cuda", fp8, "quantize")


def test_counter_uniforms_look_uniform():
    from lowbit.formats.rounding import counter_uniforms

    u = counter_uniforms(123, 0, (1 << 18,), "cpu").numpy()
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 6 * np.sqrt(1 / 12 / u.size)
    counts = np.histogram(u, bins=64, range=(0, 1))[0]
    expected = u.size / 64
    assert ((counts - expected) ** 2 / expected).sum() < 64 + 6 * np.sqrt(2 * 64)  # chi-square, 63 dof
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 6 / np.sqrt(u.size)


FP32, FP16, BF16, E4M3, E2M1 = (lowbit.get_format(n) for n in ("fp32", "fp16", "bf16", "fp8_e4m3", "fp4_e2m1"))
SCHEME_FORMATS = [
    *(lowbit.get_format(n) for n in ("int4_g128", "int4_g128_asym", "int8_rowwise", "fp8_e4m3_rowwise",
                                     "nvfp4_16x16")),
    BlockFormat(E4M3, block_shape=(4, 8), scale=FP32),  # fp8_e4m3_b128x128's kind, in tiles these inputs fill
    BlockFormat(IntFormat(3, signed=False), 8, scale=BF16, zero_point=True),
    BlockFormat(IntFormat(8, signed=False), 4, scale=lowbit.get_format("e8m0"), zero_point=True),
    BlockFormat(E4M3, 8, scale=FP32, double_quant=BlockFormat(E4M3, 4, scale=FP32)),
    BlockFormat(E2M1, block_shape=(2, 3), scale=E4M3, tensor_scale=True),
    BlockFormat(IntFormat(4), None, scale=lowbit.get_format("e8m0")),
    BlockFormat(E2M1, 8, scale=FP16),
]


def scheme_rules(fmt):
    if fmt.zero_point:
        return ["minmax", "mse"]
    if fmt.power_of_two_scale:
        return ["floor", "rceil", "mse"]
    return ["amax", "mse"] + (["4over6"] if fmt._e2m1_elements else [])


@st.composite
def normal_matrices(draw, max_rows, max_cols, max_exponent):
    """Normal samples of 1..max_rows x 1..max_cols, times 2**e (|e| <= max_exponent),
    maybe with a special value first, in any dtype, maybe transposed."""
    rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    x = torch.from_numpy(np.random.default_rng(draw(st.integers(0, 99))).standard_normal((rows, cols)))
    x = x * torch.exp2(torch.tensor(float(draw(st.integers(-max_exponent, max_exponent)))))
    if draw(st.booleans()):
        x[0, 0] = draw(st.sampled_from(SPECIALS))
    x = x.to(draw(st.sampled_from(DTYPES)))
    return x.t() if draw(st.booleans()) else x


@settings(max_examples=40)  # each example runs six calls on the reference, searched scales included
@given(st.data())
def test_scaling_schemes_agree_on_the_cpu_kernels(data):
    """Zero points, whole-axis blocks, tiles, searched scales, float32
    products and double quantization: the CPU kernels against the
    reference, on every dtype, rounding mode and axis."""
    fmt = data.draw(st.sampled_from(SCHEME_FORMATS), "format")
    x = data.draw(normal_matrices(5, 40, 30), "x")
    axis = data.draw(st.sampled_from([-1, 0, (1, 0)] if fmt.block_shape else [-1, 0]), "axis")
    rounding = data.draw(st.sampled_from(abi.ROUNDINGS), "rounding")
    stochastic = {"seed": 5, "sr_bits": data.draw(SR_BITS, "sr_bits")}
    policy = dict(axis=axis, rounding=rounding, scale_rule=data.draw(st.sampled_from(scheme_rules(fmt)), "rule"),
                  **(stochastic if rounding == "stochastic" else {}))
    context = f"{fmt.name} {x.dtype} {tuple(x.shape)} {policy}"
    results = [outcome(lambda b=b: fmt.quantize(x, backend=b, **policy)) for b in ("cpu", "reference")]
    assert_same_result(*results, context)
    encoded = [outcome(lambda b=b: fmt.encode(x, backend=b, **policy)) for b in ("cpu", "reference")]
    assert_same_result(*encoded, context)
    if not isinstance(encoded[1], str):
        assert_same_result(*[outcome(lambda b=b: fmt.decode(encoded[1], backend=b, dtype=torch.float64))
                    for b in ("cpu", "reference")], context)


SR_BITS_FORMATS = [lowbit.get_format(n) for n in ("nf4", "fp4_bnb", "kmeans4_g64", "mxfp4", "nvfp4", "mx6", "mx9",
                                                  "int4_g128_asym", "fp8_e4m3_rowwise")]


@settings(max_examples=60)
@given(st.data())
def test_sr_bits_on_the_cpu_kernels(data):
    """Stochastic rounding with a k-bit draw (sr_bits=k, 1..32): the CPU
    kernels against the reference on element formats, codebooks, blocks,
    microexponents and scaling schemes, every dtype, transposed inputs and
    both axes."""
    fmt = data.draw(st.one_of(element_formats(max_bits=16), st.sampled_from(SR_BITS_FORMATS),
                              st.sampled_from([f.element for f in SR_BITS_FORMATS[:3]])), "format")
    x = data.draw(normal_matrices(4, 70, 20), "x")
    policy = dict(rounding="stochastic", seed=data.draw(st.integers(0, 2 ** 64 - 1), "key"),
                  sr_bits=data.draw(st.integers(1, 32), "sr_bits"))
    if hasattr(fmt, "layout"):
        policy["axis"] = data.draw(st.sampled_from([-1, 0]), "axis")
    if isinstance(fmt, (FloatFormat, IntFormat)):
        policy["overflow"] = data.draw(st.sampled_from(overflow_policies(fmt)), "overflow")
    context = f"{fmt.name} {x.dtype} {tuple(x.shape)} {policy}"
    assert_same_result(*[outcome(lambda b=b: fmt.quantize(x, backend=b, **policy)) for b in ("cpu", "reference")], context)
    assert_same_result(*[outcome(lambda b=b: fmt.encode(x, backend=b, **policy)) for b in ("cpu", "reference")], context)


@pytest.mark.parametrize("name", ["int4_g128_asym", "fp8_e4m3_rowwise", "nvfp4_16x16"])
def test_the_cuda_builds_refuse_the_schemes_they_lack_by_name(name):
    """The CUDA kernels implement no scaling scheme yet: asked by name they
    say which; backend=None runs such formats on the reference for CUDA data."""
    fmt = lowbit.get_format(name)
    try:
        backend = backends.get("cuda_host")
    except backends.BackendUnavailable as why:
        pytest.skip(str(why))
    assert not backend.supports(fmt, "quantize", backends.Policy(scale_rule=fmt.scale_rule))
    with pytest.raises(ValueError, match="its kernels do not implement"):
        fmt.quantize(torch.ones(4, 8), backend="cuda_host")


def test_double_quantized_scales_that_decode_negative_decode_alike():
    """A second level can decode a first-level scale near zero to a small
    negative value: the CPU kernels read it as the fp32 code it is."""
    fmt = BlockFormat(E4M3, 4, scale=FP32, double_quant=BlockFormat(IntFormat(2), 8, scale=FP32))
    # scales 0.001, 1, 3 (amax / 448), offset 4.001 / 3; the second level's scale is 3 - offset, so the
    # first scale less the offset (-0.8 of it) rounds to -1 of it: the scale decodes to about -0.333
    x = torch.tensor([[0.448, 0.1, 0, 0], [448.0, 0, 0, 0], [-1344.0, 0, 0, 0]]).reshape(1, -1)
    encoded = fmt.encode(x, backend="reference")
    scales = fmt._decoded_scales(encoded)
    assert (scales < 0).any()
    assert_same_result(fmt.decode(encoded, backend="cpu"), fmt.decode(encoded, backend="reference"), "negative scales")


def double_quantized_codebook_case() -> torch.Tensor:
    """Rows of 600 nf4_dq blocks (1800 scales, second-level blocks of 256
    across the rows) over 2**-30..2**30: all-zero blocks, a block holding
    NaN and one holding Inf (each makes its second-level block of scales,
    and so its 256 first-level blocks, NaN), values on the NF4 table's
    midpoints times their block's scale, subnormal blocks."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 600, 64)) * np.exp2(rng.uniform(-30, 30, (3, 600, 1)))
    x[0, :5] = 0.0
    x[1, 300, 7] = np.nan
    x[2, 10, 0] = -np.inf
    table = np.array(lowbit.get_format("nf4").element.table)
    x[0, 20] = np.resize((table[:-1] + table[1:]) / 2, 64) * 3.0  # amax 3 * the largest midpoint
    x[0, 21] = rng.standard_normal(64) * 2.0 ** -140
    return torch.from_numpy(x.reshape(3, -1).astype(np.float32))


NF4_NEGATIVE_SCALES = BlockFormat(lowbit.get_format("nf4").element, 4, scale=lowbit.get_format("fp32"),
                                  double_quant=BlockFormat(IntFormat(2), 8, scale=lowbit.get_format("fp32")))
LONG_MIDPOINTS = BlockFormat(lowbit.CodebookFormat(tuple(float(np.float32(v)) for v in (-1.0, -0.3, 0.0, 0.1, 0.7, 1.0))), 64,
                             scale=lowbit.get_format("fp32"),
                             double_quant=BlockFormat(lowbit.get_format("fp8_e4m3"), 256, scale=lowbit.get_format("fp32")))


@pytest.mark.parametrize("fmt,dtype,rounding,fused", [
    (lowbit.get_format("nf4_dq"), torch.float32, "nearest_even", True),
    (NF4_NEGATIVE_SCALES, torch.float32, "nearest_even", True),
    (lowbit.get_format("nf4_dq"), torch.float64, "nearest_even", False),
    (lowbit.get_format("nf4_dq"), torch.float32, "toward_zero", False),
    (lowbit.get_format("nf4_dq"), torch.float32, "stochastic", False),
    (LONG_MIDPOINTS, torch.float32, "nearest_even", False),
], ids=lambda v: getattr(v, "name", str(v)))
def test_double_quantized_codebook_blocks_quantize_as_the_reference(fmt, dtype, rounding, fused, monkeypatch):
    """The CPU backend quantizes double-quantized codebook blocks of float32
    under nearest_even (tables whose midpoints are short) in its float32
    kernel, after a pass for the first-level scales, multiplying by the
    second level's scales (``fused``); other inputs, modes and tables go
    through codes. Both give the reference's values and decode(encode),
    on :func:`double_quantized_codebook_case` and on scales that a 2-bit
    second level decodes negative."""
    calls = []
    scale_pass = codebook_kernels.block_scales
    monkeypatch.setattr(codebook_kernels, "block_scales", lambda *a: (calls.append(1), scale_pass(*a))[1])
    x = double_quantized_codebook_case().to(dtype)
    if fmt is NF4_NEGATIVE_SCALES:
        x = torch.tensor([[0.448, 0.1, 0, 0], [448.0, 0, 0, 0], [-1344.0, 0, 0, 0]], dtype=dtype).repeat(4, 3)
        assert (fmt._decoded_scales(fmt.encode(x, backend="reference")) < 0).any()
    seed = 3 if rounding == "stochastic" else None
    got = fmt.quantize(x, rounding=rounding, seed=seed, backend="cpu")
    assert bool(calls) == fused
    expected = fmt.quantize(x, rounding=rounding, seed=seed, backend="reference")
    assert_same_result(got, expected, f"{fmt.name} {dtype} {rounding}")
    decoded = fmt.decode(fmt.encode(x, rounding=rounding, seed=seed, backend="cpu"), backend="cpu", dtype=dtype)
    assert_same_result(got, decoded, f"{fmt.name} {dtype} {rounding}: decode(encode)")
    if fmt is not NF4_NEGATIVE_SCALES:  # the second-level blocks of the NaN and the Inf: 2 x 256 blocks of 64
        assert int(torch.isnan(got).sum()) == 2 * 256 * 64


@pytest.mark.parametrize("fmt", [
    lowbit.get_format("int4_g128"), lowbit.get_format("int4_g128_asym"), lowbit.get_format("int8_rowwise"),
    BlockFormat(IntFormat(8, signed=False), 32, scale=BF16, zero_point=True),
    BlockFormat(IntFormat(8, narrow=True, frac_bits=6), 32, scale=FP16),
], ids=lambda f: f.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_integer_fast_path_agrees_with_the_reference(fmt, dtype):
    """Whole float32/bfloat16 blocks along a contiguous last axis take the
    integer fast path: wide-ranging rows, all-zero rows, NaN, exact ties of
    x / s (a row of multiples of 1/16 under a power-of-two range), negative
    values that round to zero, rows of one sign (the zero point's range
    then ends at 0), -0.0 (the kernels order the elements by their bits)."""
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((16, 256)) * np.exp(rng.uniform(-20, 20, (16, 1))), dtype=dtype)
    x[1] = 0
    x[2, 7] = float("nan")
    x[3] = torch.arange(256) / 16 - 8
    x[4] = -torch.linspace(0, 7, 256) * 2.0 ** -20
    x[5], x[6] = x[5].abs(), -x[6].abs()
    x[7] = -0.0
    x[8, 3] = float("-inf")
    for call in ("quantize", "encode"):
        results = [outcome(lambda b=b: getattr(fmt, call)(x, backend=b)) for b in ("cpu", "reference")]
        assert_same_result(*results, f"{fmt.name} {dtype} {call}")


def takes_a_fast_path(fmt, x, rule=None):
    """Whether quantize and encode of x (along its last axis, or its last
    two for tiles) under scale rule ``rule`` take a fast kernel."""
    from lowbit.formats.cpu import scaled_backend

    policy = backends.Policy(scale_rule=rule or fmt.scale_rule)
    return scaled_backend._fast_path(fmt, x, fmt.layout(tuple(x.shape), -1), policy, None) is not None


def near_every_midpoint(element, rng):
    """Float32 values 1..64 float32 steps either side of every midpoint
    between neighbouring magnitudes of a float element, randomly signed:
    quotients on both sides of the fast paths' 2**-22 window."""
    magnitudes = np.unique(np.abs(element.values()))
    mids = ((magnitudes[1:] + magnitudes[:-1]) / 2).astype(np.float32)
    offsets = np.array([1, 2, 3, 4, 5, 8, 13, 16, 31, 64], dtype=np.int32)
    near = (mids.view(np.int32)[:, None] + np.concatenate([offsets, -offsets])[None, :]).view(np.float32).ravel()
    return rng.permutation(near) * rng.choice([-1, 1], near.size).astype(np.float32)


@pytest.mark.parametrize("fmt", [
    lowbit.get_format("fp8_e4m3_rowwise"), lowbit.get_format("fp8_e4m3_b128x128"), lowbit.get_format("nvfp4_16x16"),
    BlockFormat(E4M3, block_shape=(4, 8), scale=FP32), BlockFormat(E2M1, block_shape=(2, 16), scale=E4M3),
    BlockFormat(E2M1, None, scale=E4M3), BlockFormat(E4M3, 32, scale=FP32),
], ids=lambda f: f.name)
def test_float32_scales_tiles_and_whole_rows_take_the_fast_path_exactly(fmt):
    """Float element blocks with a float32 scale (products rounded to
    float32), whole-row blocks and tiles read in place: quantize, encode and
    decode on the fast kernels equal the reference's for quotients next to
    every rounding midpoint, across the float32 scales (subnormal ones
    included), NaN and all-zero blocks, float32 and bfloat16, in a batch of
    two planes."""
    rng = np.random.default_rng(11)
    tile = fmt.block_shape or (1, 256 if fmt.block_size is None else fmt.block_size)
    rows, cols = (2 * tile[0], 3 * tile[1]) if fmt.block_shape else (24, tile[1])
    near = near_every_midpoint(fmt.element, rng)
    x = np.resize(near, (2, rows, cols))
    # the largest element fixes each block's amax at max_elem * s: its scale is s, exactly or
    # nearly; s of 24 (float32) or 4 significant bits, so that x * (1 / s) is inexact in float32
    grid = (2, rows // tile[0], 1, cols // tile[1], 1)
    mantissa_bits = 23 if fmt.scale.is_float32 else 3
    scales = ((1 + rng.integers(1, 2 ** mantissa_bits, grid) / 2 ** mantissa_bits)
              * 2.0 ** rng.integers(-140 if fmt.scale.is_float32 else -8, 100 if fmt.scale.is_float32 else 8, grid))
    x = x.reshape(2, rows // tile[0], tile[0], cols // tile[1], tile[1])
    x[:, :, 0, :, 0] = np.float32(fmt.element.max)
    with np.errstate(under="ignore"):
        x = (x * scales).astype(np.float32).reshape(2, rows, cols)
    x[0, :tile[0], :tile[1]] = 0
    x[1, -1, -1] = np.nan
    t = torch.from_numpy(x)
    assert takes_a_fast_path(fmt, t)
    for xd in (t, t.bfloat16()):
        context = f"{fmt.name} {xd.dtype}"
        assert_same_result(*[outcome(lambda b=b: fmt.quantize(xd, backend=b)) for b in ("cpu", "reference")], context)
        encoded = [outcome(lambda b=b: fmt.encode(xd, backend=b)) for b in ("cpu", "reference")]
        assert_same_result(*encoded, context + " encode")
        for dtype in (torch.float32, torch.float64):
            assert_same_result(*[outcome(lambda b=b: fmt.decode(encoded[1], backend=b, dtype=dtype)) for b in ("cpu", "reference")],
                      f"{context} decode to {dtype}")


@pytest.mark.parametrize("fmt, rule", [
    (lowbit.get_format("nvfp4"), "4over6"), (BlockFormat(E2M1, 16, scale=E4M3, tensor_scale=True), "4over6"),
    (lowbit.get_format("nvfp4_16x16"), "4over6"), (lowbit.get_format("nvfp4"), "mse"),
    (lowbit.get_format("nvfp4_16x16"), "mse"), (lowbit.get_format("fp8_e4m3_rowwise"), "mse"),
    (BlockFormat(E4M3, block_shape=(4, 8), scale=FP32), "mse"),
], ids=lambda p: getattr(p, "name", p))
def test_searched_scales_take_the_fast_path_exactly(fmt, rule):
    """scale_rule="4over6" and "mse" on the fast kernels (search_scales
    picks each block's candidate): the reference's choice on wide-ranging
    blocks, blocks of one nonzero element (candidates that all err alike:
    ties, which keep the first), all-zero and NaN blocks, float32 and
    bfloat16."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((64, 256)) * np.exp(rng.uniform(-6, 6, (64, 1)))
    x[:16, 1:16] = 0  # the first block of these rows: one nonzero element
    x[16, :16] = 0
    x[17, 3] = np.nan
    t = torch.tensor(x, dtype=torch.float32)
    assert takes_a_fast_path(fmt, t, rule)
    chosen = fmt.encode(t, backend="reference", scale_rule=rule).scales
    assert (chosen != fmt.encode(t, backend="reference").scales).any()  # some blocks take another candidate
    for xd in (t, t.bfloat16()):
        for call in ("quantize", "encode"):
            results = [outcome(lambda b=b: getattr(fmt, call)(xd, backend=b, scale_rule=rule))
                       for b in ("cpu", "reference")]
            assert_same_result(*results, f"{fmt.name} {rule} {xd.dtype} {call}")


def test_4over6_redoes_the_blocks_its_float32_lanes_cannot_decide():
    """Blocks whose float32 lanes round one quotient (x * float32(1 / s),
    x one float32 step below a midpoint times s) across the midpoint, and
    whose two candidates then err so nearly alike (within 2e-6) that the
    lanes' float32 estimates pick 4 where the reference keeps 6 (checked
    by emulating the lanes in numpy): the search's bound must leave such
    blocks undecided, to be summed again as the reference sums them
    (fast_amax.searched_scales)."""
    fmt = BlockFormat(E2M1, 16, scale=E4M3)
    blocks = [[22.5, 2.812499761581421, -7.5, 11.25], [22.5, 2.812499761581421, -7.5, 0.0, 11.25],
              [21.65625, 12.249999046325684, 10.5, 1.75, -3.5]]
    x = np.zeros((len(blocks), 16), np.float32)
    for row, block in zip(x, blocks):
        row[:len(block)] = block
    t = torch.from_numpy(np.concatenate([x, -x]))
    assert takes_a_fast_path(fmt, t, "4over6")
    for call in (fmt.quantize, fmt.encode):
        assert_same_result(*[outcome(lambda b=b: call(t, backend=b, scale_rule="4over6")) for b in ("cpu", "reference")],
                  f"4over6 {call.__name__}")


@pytest.mark.parametrize("fmt", [
    lowbit.get_format("int4_g128"), lowbit.get_format("int4_g128_asym"), lowbit.get_format("int8_rowwise"),
    BlockFormat(IntFormat(8, narrow=True, frac_bits=6), 32, scale=FP16),
], ids=lambda f: f.name)
def test_the_integer_fast_path_near_half_integers(fmt):
    """The integer fast path rounds x times the scale's float32 inverse and
    redoes in float64 the quotients within 2**-22 of a half-integer: inputs
    1..64 float32 steps either side of every half-integer multiple of a
    block's scale (a scale of 11 significant bits, whose float32 inverse is
    inexact) land on both sides of that window."""
    rng = np.random.default_rng(12)
    block = fmt.block_size or 512
    # quotients x / s in the element's integer units: each row's range [lowest, top] fixes s
    # (and the zero point, levels // 3)
    levels = fmt.element.qmax
    top, lowest = (levels - levels // 3, -(levels // 3)) if fmt.zero_point else (levels, -levels)
    unit = 2.0 ** -fmt.element.frac_bits
    s0 = (1 + rng.integers(1, 1024, (32, 1)) / 1024) * 2.0 ** rng.integers(-12, 8, (32, 1))
    x = np.zeros((32, block), np.float32)
    x[:, :1], x[:, 1:2] = top * unit * s0, lowest * unit * s0  # exact in float32
    scales = fmt.scale.decode_exact(fmt.encode(torch.from_numpy(x), backend="reference").scales.reshape(-1).to(torch.int64))
    scales = scales.numpy()[:, None]
    assert (np.frexp(scales)[0] != 0.5).all()  # no power of two: x * (1 / s) is inexact in float32
    halves = np.arange(lowest, top) + 0.5
    offsets = np.array([1, 2, 3, 4, 5, 8, 13, 16, 31, 64], dtype=np.int32)
    offsets = np.concatenate([offsets, -offsets])
    for r in range(32):
        targets = (halves * unit * scales[r]).astype(np.float32)
        near = (targets.view(np.int32)[:, None] + offsets[None, :]).view(np.float32).ravel()
        x[r, 2:] = np.resize(rng.permutation(near), block - 2)
    t = torch.from_numpy(x)
    assert takes_a_fast_path(fmt, t)
    for xd in (t, t.bfloat16()):
        for call in ("quantize", "encode"):
            results = [outcome(lambda b=b: getattr(fmt, call)(xd, backend=b)) for b in ("cpu", "reference")]
            assert_same_result(*results, f"{fmt.name} {xd.dtype} {call}")
    encoded = fmt.encode(t, backend="reference")
    assert_same_result(fmt.decode(encoded, backend="cpu"), fmt.decode(encoded, backend="reference"), f"{fmt.name} decode")


@pytest.mark.parametrize("fmt", [
    "mxfp8_e4m3", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4", "mx9", "mx6", "mx4", "int4_g128", "int4_g128_asym",
    BlockFormat(IntFormat(8, signed=False), 32, scale=BF16, zero_point=True),
], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_partial_last_block_takes_the_fast_path_padded(fmt, dtype, monkeypatch):
    """Rows whose last block is partial are zero-padded to whole blocks for
    the fast paths; the results equal the reference's on tails that decide
    their own scale (smaller, larger, all negative, all zero, NaN and
    infinity in the tail) and for a tail of one element."""
    from lowbit.formats.cpu import scaled_backend

    padded = []
    in_whole_blocks = scaled_backend._in_whole_blocks
    monkeypatch.setattr(scaled_backend, "_in_whole_blocks", lambda *a: padded.append(in_whole_blocks(*a)) or padded[-1])
    fmt = lowbit.get_format(fmt) if isinstance(fmt, str) else fmt
    rng = np.random.default_rng(6)
    for width in (1, fmt.block_size - 1, fmt.block_size + 1, 3 * fmt.block_size + 17):
        x = torch.tensor(rng.standard_normal((8, width)) * np.exp(rng.uniform(-8, 8, (8, 1))), dtype=dtype)
        tail = slice(width // fmt.block_size * fmt.block_size, width)
        x[1, tail] *= 1e-3
        x[2, tail] *= 1e3
        x[3, tail] = -x[3, tail].abs()
        x[4, tail] = 0
        x[5, tail.start] = float("nan")
        x[6, tail.start] = float("inf")
        padded.clear()
        results = [outcome(lambda b=b: fmt.quantize(x, backend=b)) for b in ("cpu", "reference")]
        assert padded and padded[0] is not None, f"{fmt.name} width {width}: no fast path"
        assert_same_result(*results, f"{fmt.name} {dtype} width {width}")
