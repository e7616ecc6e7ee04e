"""The MX matmul (lowbit.cuda.mx_matmul) and its reference
(lowbit.formats.reference_matmul).

Without a GPU: the reference against a correctly rounded sum of exact
products; the host model of the kernel's arithmetic (ops lowbit_host)
against the arithmetic its docstring states, computed here with exact
fractions; the kernel's own code (ops lowbit_emulated: every thread of a
block on its own host thread, warp MMAs modelled) bit for bit against the
host model for every pair of MX element formats and every instruction;
both within the fp32 accumulation bound of the reference. With a GPU
(marked ``cuda``): the kernel against the host model (int8: bit for bit)
and against the reference within the fp32 bound."""

import functools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import lowbit
from lowbit.cuda.matmul import INSTRUCTIONS, choose_types, element_tables, prepared
from lowbit.emulate import QuantLinear, QuantSpec, quantized_matmul
from lowbit.emulate import encoded_products
from lowbit.formats import BlockFormat, backends, reference_matmul, summation_bound, unpack

MX = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"]
PAIRS = [(a, b) for a in MX for b in MX]


@pytest.fixture(scope="module", autouse=True)
def cpu_builds():
    try:
        backends.get("cuda_host")
        backends.get("cuda_emulated")
    except backends.BackendUnavailable as why:
        pytest.skip(str(why))


def instructions(fa, fb):
    """The instructions that take operands in formats fa and fb."""
    fits = []
    for instruction in INSTRUCTIONS:
        try:
            choose_types(lowbit.get_format(fa), lowbit.get_format(fb), instruction)
            fits.append(instruction)
        except ValueError:
            pass
    return fits


CASES = [(fa, fb, i) for fa, fb in PAIRS for i in instructions(fa, fb)]


def data(rows, k, seed, *, block_exponents=(-6, 6), specials=True):
    """Normal data whose 32-blocks have magnitudes 2**e, e drawn per block
    from block_exponents; with a zero block and (specials) a NaN block."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g, dtype=torch.float64)
    lo, hi = block_exponents
    exponents = torch.randint(lo, hi + 1, (rows, -(-k // 32)), generator=g).repeat_interleave(32, dim=1)[:, :k]
    x = x * torch.exp2(exponents.to(torch.float64))
    if specials and rows > 2 and k > 32:
        x[1, 32:64] = 0.0
        x[2, 5] = float("nan")
    return x.to(torch.float32)


def encoded(fmt, rows, k, seed, device="cpu", **options):
    return lowbit.encode(data(rows, k, seed, **options).to(device), fmt, axis=1)


def assert_within_fp32_bound(result, a, b, *, unit=2.0 ** -24, bias=None):
    """|result - reference| within summation_bound, with the most roundings
    per block any instruction makes (two m16n8k16 MMAs per 32-block; more
    for longer blocks); unit 2**-24 for rounding to nearest, 2**-23 toward zero."""
    reference = reference_matmul(a, b, bias).cpu()
    result = result.cpu().to(torch.float64)
    bound = summation_bound(a, b, roundings_per_block=a.format.block_size // 16, unit=unit).cpu()
    nan = reference.isnan()
    assert torch.equal(result.isnan(), nan)
    error = (result - reference).abs()[~nan]
    assert bool((error <= bound[~nan]).all()), f"largest error / bound: {float((error / bound[~nan]).max())}"


# -- the reference ------------------------------------------------------------------------------
@pytest.mark.parametrize("fa,fb", [("mxfp8_e4m3", "mxfp4"), ("mxint8", "mxfp6_e3m2"), ("mxfp8_e5m2", "mxfp8_e5m2")])
def test_reference_is_the_exact_sum_to_float64_rounding(fa, fb):
    a, b = encoded(fa, 5, 96, 1), encoded(fb, 4, 96, 2)
    bias = torch.randn(4, generator=torch.Generator().manual_seed(3))
    va, vb = a.decode(dtype=torch.float64).tolist(), b.decode(dtype=torch.float64).tolist()
    result = reference_matmul(a, b, bias)
    for m in range(5):
        for n in range(4):
            products = [x * y for x, y in zip(va[m], vb[n])] + [float(bias[n])]  # each exact in float64
            exact = math.fsum(products)
            got = float(result[m, n])
            if math.isnan(exact):
                assert math.isnan(got)
            else:
                assert abs(got - exact) <= 100 * 2.0 ** -53 * math.fsum(abs(p) for p in products)


def test_every_backend_takes_the_same_names():
    a, b = encoded("mxfp4", 5, 96, 3), encoded("mxfp6_e2m3", 4, 96, 4)
    bias = torch.randn(4, generator=torch.Generator().manual_seed(5))
    exact = reference_matmul(a, b, bias)
    assert exact.isnan().any()  # a NaN block of b
    same = functools.partial(torch.testing.assert_close, rtol=0, atol=0, equal_nan=True)
    for backend in ("reference", "cpu", "cuda_host", "cuda_emulated"):
        same(reference_matmul(a, b, bias, backend=backend), exact)
    for out_dtype in (torch.float32, torch.bfloat16):
        same(lowbit.cuda.mx_matmul(a, b, bias=bias, out_dtype=out_dtype, backend="reference"), exact.to(out_dtype))


def test_reference_checks_its_operands():
    a = encoded("mxfp4", 4, 64, 0)
    with pytest.raises(TypeError, match="a must be an Encoded"):
        reference_matmul(torch.zeros(4, 64), a)
    with pytest.raises(ValueError, match="encoded along its last axis"):
        reference_matmul(a, lowbit.encode(torch.randn(64, 4), "mxfp4", axis=0))
    with pytest.raises(ValueError, match="same K"):
        reference_matmul(a, encoded("mxfp4", 4, 96, 0))


# -- the documented arithmetic, with exact fractions -----------------------------------------------
def float32_nearest(value: Fraction) -> float:
    """value rounded to float32: nearest, ties to even, infinity past the largest float."""
    if abs(value) >= Fraction(2 ** 128 - 2 ** 103):
        return math.copysign(math.inf, value)
    first = np.float32(float(value))
    candidates = (first, np.nextafter(first, np.float32(np.inf)), np.nextafter(first, np.float32(-np.inf)))
    return float(min(candidates, key=lambda c: (abs(Fraction(float(c)) - value), int(np.array(c).view(np.uint32)) & 1)))


def element_values_and_scales(x, type_name):
    """An operand's element values (rows x K, float64) and block scales
    (rows x blocks) as the tensor cores see them: elements times 2**shift,
    scales times 2**-shift."""
    fmt = x.format
    shift = element_tables(fmt.element)[type_name].shift
    rows, blocks = x.shape[0], -(-x.shape[1] // fmt.block_size)
    codes = unpack(x.elements, fmt.element_code_bits, rows * blocks * fmt.block_size)
    values = fmt.element.decode(codes, dtype=torch.float64).reshape(rows, -1) * 2.0 ** shift
    scales = fmt.scale.decode(x.scales, dtype=torch.float64).reshape(rows, blocks) * 2.0 ** -shift
    return values.tolist(), scales.tolist()


def documented_matmul(a, b, instruction):
    """mx_matmul's result as its docstring states it: per block, each MMA
    instruction adds its exact products to the running partial sum and
    rounds to fp32 once (int8: exactly); then total = fp32(total + partial
    * scale_a * scale_b), block after block."""
    ta, tb = choose_types(a.format, b.format, instruction)
    (va, sa), (vb, sb) = element_values_and_scales(a, ta), element_values_and_scales(b, tb)
    block, step = a.format.block_size, 16 if ta == "fp16" else 32
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    for m in range(a.shape[0]):
        for n in range(b.shape[0]):
            total = 0.0
            for blk in range(len(sa[m])):
                partial = 0.0
                for first in range(blk * block, (blk + 1) * block, step):
                    products = [va[m][j] * vb[n][j] for j in range(first, first + step)]
                    if any(math.isnan(p) or math.isinf(p) for p in products) or math.isnan(partial):
                        partial = math.fsum([partial, *products])
                        continue
                    exact = Fraction(partial) + sum(Fraction(p) for p in products)
                    partial = float(exact) if ta == "int8" else float32_nearest(exact)
                scale = sa[m][blk] * sb[n][blk]
                if not all(math.isfinite(v) for v in (total, partial, scale)):
                    total = total + partial * scale
                else:
                    total = float32_nearest(Fraction(total) + Fraction(partial) * Fraction(sa[m][blk])
                                            * Fraction(sb[n][blk]))
            out[m, n] = total
    return torch.from_numpy(out)


@pytest.mark.parametrize("fa,fb,instruction", CASES)
def test_host_model_is_the_documented_arithmetic(fa, fb, instruction):
    a, b = encoded(fa, 4, 128, 10), encoded(fb, 3, 128, 11)
    host = lowbit.cuda.mx_matmul(a, b, instruction=instruction, backend="cuda_host")
    expected = documented_matmul(a, b, instruction)
    assert torch.equal(host.double().isnan(), expected.isnan())
    same = host.double() == expected
    assert bool((same | expected.isnan()).all())


@pytest.mark.parametrize("scales", [(-100, -60), (60, 100), (-70, 70)], ids=["tiny", "huge", "spread"])
def test_scales_beyond_the_fma_range_round_once(scales):
    """Block scales whose products leave float32 (2**-149 .. 2**127): the
    kernel's double branch, results in fp32's subnormals, and infinity."""
    a = encoded("mxfp8_e4m3", 3, 128, 20, block_exponents=scales, specials=False)
    b = encoded("mxfp4", 5, 128, 21, block_exponents=(scales[0] // 2, scales[1] // 2), specials=False)
    host = lowbit.cuda.mx_matmul(a, b, backend="cuda_host")
    assert torch.equal(host.double(), documented_matmul(a, b, None))
    assert torch.equal(lowbit.cuda.mx_matmul(a, b, backend="cuda_emulated"), host)


# -- the kernel's code, emulated -------------------------------------------------------------------
@pytest.mark.parametrize("fa,fb,instruction", CASES)
def test_emulated_kernel_matches_the_host_model(fa, fb, instruction):
    a, b = encoded(fa, 19, 96, 30), encoded(fb, 9, 96, 31)
    host = lowbit.cuda.mx_matmul(a, b, instruction=instruction, backend="cuda_host")
    emulated = lowbit.cuda.mx_matmul(a, b, instruction=instruction, backend="cuda_emulated")
    assert torch.equal(emulated.isnan(), host.isnan())
    assert torch.equal(torch.nan_to_num(emulated), torch.nan_to_num(host))


@pytest.mark.parametrize("m,n,k,fa,fb,instruction", [
    (130, 257, 96, "mxfp8_e4m3", "mxfp8_e5m2", "fp8"),  # 2 x 3 tiles over a grid of 2: tiles taken grid-stride
    (1, 300, 64, "mxfp4", "mxint8", "int8"),
    (129, 1, 160, "mxfp6_e3m2", "mxfp8_e4m3", "fp16"),
    (200, 130, 32, "mxfp6_e2m3", "mxfp4", None),
])
def test_emulated_kernel_on_odd_shapes(m, n, k, fa, fb, instruction):
    a, b = encoded(fa, m, k, 40), encoded(fb, n, k, 41)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(42))
    for out_dtype in (torch.float32, torch.bfloat16):
        host = lowbit.cuda.mx_matmul(a, b, bias=bias, out_dtype=out_dtype, instruction=instruction,
                                     backend="cuda_host")
        emulated = lowbit.cuda.mx_matmul(a, b, bias=bias, out_dtype=out_dtype, instruction=instruction,
                                         backend="cuda_emulated")
        assert emulated.shape == (m, n) and emulated.dtype == out_dtype
        assert torch.equal(torch.nan_to_num(emulated.float()), torch.nan_to_num(host.float()))


def test_blocks_of_64_and_a_partial_last_block():
    fmt = BlockFormat(lowbit.get_format("fp8_e4m3"), 64, name="e4m3_blocks_of_64")
    a, b = encoded(fmt, 20, 100, 50), encoded(fmt, 12, 100, 51)  # K = 100: padded to 128, zeros past 100
    host = lowbit.cuda.mx_matmul(a, b, backend="cuda_host")
    assert torch.equal(lowbit.cuda.mx_matmul(a, b, backend="cuda_emulated").nan_to_num(), host.nan_to_num())
    assert_within_fp32_bound(host, a, b)


@pytest.mark.parametrize("backend", ["cuda_host", "cuda_emulated", "reference"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_k_zero_gives_the_bias_without_reading_the_operands(backend, out_dtype):
    """An empty sum: zeros plus the bias, rounded to out_dtype. (The kernel
    once issued its first copies unconditionally: the emulated build
    crashed, a GPU would fault.)"""
    a, b = lowbit.encode(torch.randn(3, 0), "mxfp8_e4m3", axis=1), lowbit.encode(torch.randn(5, 0), "mxfp4", axis=1)
    bias = torch.tensor([1.0, -2.5, 1e-3, 7e4, 0.0])
    for given, expected in ((bias, bias), (None, torch.zeros(5))):
        result = lowbit.cuda.mx_matmul(a, b, bias=given, out_dtype=out_dtype, backend=backend)
        assert torch.equal(result, expected.to(out_dtype).expand(3, 5))


def test_int8_takes_blocks_whose_partial_sums_convert_to_fp32_exactly():
    """1024 products of magnitude up to 2**14 sum below 2**24 (exact in fp32);
    longer blocks take fp16 by default and refuse int8, in Python and in the op."""
    long_blocks = BlockFormat(lowbit.get_format("int8"), 1056, scale=lowbit.get_format("e8m0"), name="int8_b1056")
    longest = BlockFormat(lowbit.get_format("int8"), 1024, scale=lowbit.get_format("e8m0"), name="int8_b1024")
    assert choose_types(longest, longest, None) == ("int8", "int8")
    assert choose_types(long_blocks, long_blocks, None) == ("fp16", "fp16")
    with pytest.raises(ValueError, match="instruction='int8' takes blocks of at most 1024 elements"):
        choose_types(long_blocks, long_blocks, "int8")
    fp8_long_blocks = BlockFormat(lowbit.get_format("fp8_e4m3"), 2048, scale=lowbit.get_format("e8m0"))
    with pytest.raises(ValueError, match="elements are not all int8 numbers"):  # the first thing wrong is named
        choose_types(fp8_long_blocks, fp8_long_blocks, "int8")
    a = lowbit.encode(torch.randn(2, 1056), long_blocks, axis=1)
    with pytest.raises(ValueError, match="blocks of at most 1024"):
        lowbit.cuda.mx_matmul(a, a, instruction="int8", backend="cuda_host")
    assert_within_fp32_bound(lowbit.cuda.mx_matmul(a, a, backend="cuda_host"), a, a)
    inputs, scales = prepared(a, "int8", torch.ops.lowbit_host)
    with pytest.raises(RuntimeError, match="the int8 instruction takes blocks of at most 1024"):
        torch.ops.lowbit_host.mx_matmul(inputs, scales, inputs, scales, None, 0, 0, 1056, torch.float32)


# -- against the reference -------------------------------------------------------------------------
@pytest.mark.parametrize("fa,fb,instruction", CASES)
def test_host_model_is_within_the_fp32_bound_of_the_reference(fa, fb, instruction):
    a, b = encoded(fa, 33, 512, 60), encoded(fb, 17, 512, 61)
    assert_within_fp32_bound(lowbit.cuda.mx_matmul(a, b, instruction=instruction, backend="cuda_host"), a, b)


def test_int8_partial_sums_are_exact():
    """FP4 x FP4 on int8: every block's partial sum is exact, so with one
    block the result is the reference rounded to fp32."""
    a, b = encoded("mxfp4", 40, 32, 70, specials=False), encoded("mxfp4", 30, 32, 71, specials=False)
    host = lowbit.cuda.mx_matmul(a, b, instruction="int8", backend="cuda_host")
    assert torch.equal(host, reference_matmul(a, b).to(torch.float32))


def test_output_dtypes_round_the_fp32_result_to_nearest_even():
    a, b = encoded("mxfp8_e4m3", 24, 64, 80), encoded("mxfp8_e4m3", 40, 64, 81)
    bias = torch.randn(40, generator=torch.Generator().manual_seed(82), dtype=torch.float64).to(torch.bfloat16)
    single = lowbit.cuda.mx_matmul(a, b, bias=bias, backend="cuda_host")
    unbiased = lowbit.cuda.mx_matmul(a, b, backend="cuda_host")
    assert torch.equal(single.nan_to_num(), (unbiased + bias.float()).nan_to_num())
    for dtype in (torch.bfloat16, torch.float16):
        rounded = lowbit.cuda.mx_matmul(a, b, bias=bias, out_dtype=dtype, backend="cuda_host")
        assert torch.equal(rounded.nan_to_num(), single.to(dtype).nan_to_num())  # torch rounds to nearest even


def test_the_instruction_is_chosen_by_what_the_elements_fit():
    fmt = lowbit.get_format
    assert choose_types(fmt("mxfp4"), fmt("mxint8"), None) == ("int8", "int8")
    assert choose_types(fmt("mxfp4"), fmt("mxfp8_e4m3"), None) == ("fp16", "fp16")
    assert choose_types(fmt("mxfp6_e3m2"), fmt("mxfp8_e5m2"), "fp8") == ("e4m3", "e5m2")
    assert {name: t.shift for name, t in element_tables(fmt("mxint8").element).items()} == {"fp16": 0, "int8": 6}


def test_errors_name_the_argument():
    a = encoded("mxfp4", 4, 64, 0)
    mx = lowbit.cuda.mx_matmul
    with pytest.raises(TypeError, match="b must be an Encoded"):
        mx(a, torch.zeros(4, 64), backend="cuda_host")
    with pytest.raises(ValueError, match="a: nvfp4 has blocks of 16"):
        mx(lowbit.encode(torch.randn(4, 64), "nvfp4", axis=1), a, backend="cuda_host")
    with pytest.raises(ValueError, match="b: mx6 is not a BlockFormat"):
        mx(a, lowbit.encode(torch.randn(4, 64), "mx6", axis=1), backend="cuda_host")
    with pytest.raises(ValueError, match="encoded along its last axis"):
        mx(a, lowbit.encode(torch.randn(64, 4), "mxfp4", axis=0), backend="cuda_host")
    with pytest.raises(ValueError, match="same K and block size"):
        mx(a, encoded("mxfp4", 4, 96, 0), backend="cuda_host")
    with pytest.raises(ValueError, match="not all fp8 numbers"):
        mx(a, encoded("mxint8", 4, 64, 0), instruction="fp8", backend="cuda_host")
    with pytest.raises(ValueError, match="instruction must be None or one of"):
        mx(a, a, instruction="tf32", backend="cuda_host")
    with pytest.raises(TypeError, match="out_dtype must be"):
        mx(a, a, out_dtype=torch.float64, backend="cuda_host")
    with pytest.raises(TypeError, match=r"bias must be a float32, bfloat16 or float16 tensor of shape \(4,\)"):
        mx(a, a, bias=torch.zeros(5), backend="cuda_host")
    with pytest.raises(ValueError, match="backend must be None or one of"):
        mx(a, a, backend="numba")
    with pytest.raises(ValueError, match="backend='cuda' runs on cuda data; this input is on cpu"):
        mx(a, a)
    with pytest.raises(ValueError, match="backend='cpu' does not matmul mxfp4 x mxfp4"):
        mx(a, a, backend="cpu")
    with pytest.raises(ValueError, match="the reference backend has none"):
        mx(a, a, instruction="int8", backend="reference")


@pytest.mark.parametrize("fmt,type_name", [("mxfp4", "int8"), ("mxfp6_e3m2", "fp16"), ("mxfp6_e2m3", "e4m3"),
                                            ("mxfp8_e5m2", "e5m2"), ("mxint8", "int8")])
def test_operands_are_prepared_through_the_tables(fmt, type_name):
    x = encoded(fmt, 7, 96, 5)
    table = element_tables(x.format.element)[type_name]
    codes = unpack(x.elements, x.format.element_code_bits, 7 * 96).long()
    expected_inputs = table.inputs[codes].reshape(7, -1)
    expected_scales = (x.format.scale.decode(x.scales, dtype=torch.float64) * 2.0 ** -table.shift).float()
    for ops in (torch.ops.lowbit_host, torch.ops.lowbit_emulated):
        inputs, scales = prepared(x, type_name, ops)
        assert torch.equal(inputs, expected_inputs)
        assert torch.equal(scales.nan_to_num(), expected_scales.nan_to_num())


def test_the_ops_agree_with_their_fakes():
    a, b = encoded("mxfp4", 5, 64, 0, specials=False), encoded("mxfp8_e4m3", 3, 64, 1, specials=False)
    for ops in (torch.ops.lowbit_host, torch.ops.lowbit_emulated):
        (ai, asc), (bi, bsc) = prepared(a, "fp16", ops), prepared(b, "fp16", ops)
        torch.library.opcheck(ops.mx_matmul, (ai, asc, bi, bsc, torch.zeros(3), 1, 1, 32, torch.bfloat16))
        table = element_tables(a.format.element)["fp16"].inputs
        torch.library.opcheck(ops.mx_prepare, (a.elements, a.scales.reshape(-1), table,
                                               torch.ones(256), 4, 5, 64))


# -- the emulation layer ---------------------------------------------------------------------------
@pytest.fixture
def host_products(monkeypatch):
    """The host model as the default backend for CPU data, so that it provides encoded products for CPU tensors."""
    monkeypatch.setitem(backends.defaults, "cpu", "cuda_host")


def test_quantized_linear_and_matmul_take_the_mx_matmul(host_products):
    spec = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")
    layer = QuantLinear(torch.nn.Linear(96, 24), spec)
    x = torch.randn(2, 7, 96, generator=torch.Generator().manual_seed(90))
    a = lowbit.encode(x.reshape(14, 96), "mxfp8_e4m3", axis=1)
    b = lowbit.encode(layer.weight.detach(), "mxfp4", axis=1)
    expected = lowbit.cuda.mx_matmul(a, b, bias=layer.bias.detach(), backend="cuda_host").reshape(2, 7, 24)
    with torch.no_grad():
        assert torch.equal(layer(x), expected)
    assert torch.equal(layer(x), expected)  # the training step's forward
    w = layer.weight.detach().T.contiguous()  # (K, N): blocked along K, like the weight
    assert torch.equal(quantized_matmul(x[0], w, spec), lowbit.cuda.mx_matmul(
        lowbit.encode(x[0], "mxfp8_e4m3", axis=1), b, backend="cuda_host"))
    unrounded = torch.nn.functional.linear(lowbit.quantize(x, "mxfp8_e4m3"), lowbit.quantize(layer.weight, "mxfp4",
                                                                                            axis=1), layer.bias)
    assert torch.allclose(expected, unrounded.detach(), rtol=1e-5, atol=1e-5)


def test_products_the_backend_does_not_take_stay_with_torch(host_products):
    x, w = torch.randn(4, 64), torch.randn(8, 64)
    mx = QuantSpec(input="mxfp4", weight="mxfp4")
    for spec in (QuantSpec(input="mxfp4", weight="nvfp4"),
                 QuantSpec(input="mxfp4", weight="mxfp4", rounding="stochastic"),
                 QuantSpec(input="mxfp4", weight="mxfp4", accumulate="bf16")):
        assert encoded_products.encoded_linear(x, w, None, spec) is None
    assert encoded_products.encoded_linear(x.double(), w.double(), None, mx) is None
    assert encoded_products.encoded_linear(x, w, None, mx) is not None


# -- on a GPU ---------------------------------------------------------------------------------------
@pytest.fixture
def gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    if not lowbit.cuda.available():
        pytest.fail(f"a GPU is present but the extension cannot be used: {lowbit.cuda.missing()}", pytrace=False)
    return torch.device("cuda")


def gpu_cases():
    capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)
    return [c for c in CASES if c[2] != "fp8" or capability >= (8, 9)]


@pytest.mark.cuda
@pytest.mark.parametrize("m,n,k", [(19, 9, 96), (130, 257, 160), (1, 300, 64), (300, 1, 4096)])
@pytest.mark.parametrize("fa,fb,instruction", gpu_cases())
def test_gpu_kernel_matches_the_model_and_the_reference(gpu, m, n, k, fa, fb, instruction):
    a, b = encoded(fa, m, k, 100), encoded(fb, n, k, 101)
    result = lowbit.cuda.mx_matmul(encoded(fa, m, k, 100, gpu), encoded(fb, n, k, 101, gpu), instruction=instruction)
    assert result.device.type == "cuda"
    host = lowbit.cuda.mx_matmul(a, b, instruction=instruction, backend="cuda_host")
    if choose_types(a.format, b.format, instruction)[0] == "int8":  # exact partial sums: the same bits
        assert torch.equal(result.cpu().nan_to_num(), host.nan_to_num())
    # the tensor cores may round partial sums toward zero: fp32's bound with its unit 2**-23
    assert_within_fp32_bound(result, a, b, unit=2.0 ** -23)


@pytest.mark.cuda
def test_gpu_large_products_bias_and_output_dtypes(gpu):
    a = lowbit.encode(torch.randn(1024, 4096, device=gpu), "mxfp8_e4m3", axis=1)
    b = lowbit.encode(torch.randn(1536, 4096, device=gpu), "mxfp4", axis=1)
    bias = torch.randn(1536, device=gpu)
    single = lowbit.cuda.mx_matmul(a, b, bias=bias)
    assert_within_fp32_bound(single, a, b, unit=2.0 ** -23, bias=bias)
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(lowbit.cuda.mx_matmul(a, b, bias=bias, out_dtype=dtype), single.to(dtype))


@pytest.mark.cuda
def test_gpu_quantized_linear_runs_on_the_mx_matmul(gpu):
    spec = QuantSpec(input="mxfp8_e4m3", weight="mxfp4")
    layer = QuantLinear(torch.nn.Linear(256, 64), spec).to(gpu)
    x = torch.randn(8, 256, device=gpu)
    a, b = lowbit.encode(x, "mxfp8_e4m3", axis=1), lowbit.encode(layer.weight.detach(), "mxfp4", axis=1)
    with torch.no_grad():
        assert torch.equal(layer(x), lowbit.cuda.mx_matmul(a, b, bias=layer.bias.detach()))


# -- the profiles of lowbit.formats.DATAPATHS that describe this kernel ------------------
@pytest.mark.parametrize("instruction", ["int8", "fp16", "fp8"])
def test_mx_matmul_cpu_model_is_its_profile_bit_for_bit(instruction):
    torch.manual_seed(2)
    compared = 0
    for left in MX:
        for right in MX:
            x = lowbit.encode(torch.randn(5, 96) * 8, left, axis=1)
            w = lowbit.encode(torch.randn(4, 96), right, axis=1)
            try:
                host = lowbit.cuda.mx_matmul(x, w, backend="cuda_host", instruction=instruction)
            except ValueError:  # a pair this instruction does not take
                continue
            assert torch.equal(host.double(), reference_matmul(x, w, datapath=f"lowbit_mx_{instruction}")), (left, right)
            compared += 1
    assert compared >= 4


def test_mx_matmul_cpu_model_rounds_each_mma_once():
    """4096**2 + 1 + 2**-32 (e5m2 elements 2**15, 2**3, 2**-13 times 2**-3):
    2**30 + 2**6 is an fp32 midpoint; only the exact sum, with the tiny
    product, rounds up (a float64 running sum would drop it and tie to even)."""
    a = torch.zeros(1, 32)
    a[0, :3] = torch.tensor([4096.0, 1.0, 2.0 ** -16])
    x = lowbit.encode(a, "mxfp8_e5m2", axis=1)
    for instruction in ("fp16", "fp8"):
        for backend in ("cuda_host", "cuda_emulated"):
            result = lowbit.cuda.mx_matmul(x, x, backend=backend, instruction=instruction).item()
            assert result == 2.0 ** 24 + 2, (instruction, backend)
        assert reference_matmul(x, x, datapath=f"lowbit_mx_{instruction}").item() == 2.0 ** 24 + 2
