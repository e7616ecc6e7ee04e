"""Issue 20's element kinds, tested from their specification alone:
codebooks (NF4, bitsandbytes FP4, user tables, fitted tables), ternary and
binary (BitNet), round to odd, stochastic rounding with k random bits
(against gfloat), and the P3109 variants (against gfloat).

Every expected value comes from an independent reference: tests/oracle.py
(brute force, exact), gfloat, or a few lines of numpy/Fractions here. The
only constants are QLoRA's published NF4 table and bitsandbytes' FP4 values."""

import functools
import math
import re
from fractions import Fraction

import gfloat
import numpy as np
import pytest
import torch
from gfloat.formats import format_info_ocp_e4m3, format_info_ocp_e5m2, format_info_p3109
from gfloat.types import Domain, Signedness
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.formats import FloatFormat, IntFormat

from helpers import assert_same_values, swept_element_formats
from oracle import CODEBOOK_MODES, CodebookOracle, Oracle, boundary_inputs, enumerate_p3109

#: the tests that run lowbit's rounding kernels run on every backend
every_backend = pytest.mark.usefixtures("each_backend")

MODES = ("nearest_even", "nearest_away", "toward_zero", "up", "down")

#: QLoRA's NF4 table (Dettmers et al. 2023, appendix E; bitsandbytes' NF4 code)
NF4_PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]
#: bitsandbytes' FP4 magnitudes: the E2M1-like {0, 0.0625, 2, 3, 4, 6, 8, 12} / 12
FP4_BNB_MAGNITUDES = [Fraction(0), Fraction(1, 192), Fraction(1, 6), Fraction(1, 4), Fraction(1, 3),
                      Fraction(1, 2), Fraction(2, 3), Fraction(1)]


def f32(values):
    """Python floats, each rounded once to float32 (nearest even)."""
    return [float(np.float32(float(v))) for v in values]


def fp4_bnb_values():
    mags = f32(FP4_BNB_MAGNITUDES)
    return sorted(set(mags + [-m + 0.0 for m in mags]))  # one zero, +0.0


def CodebookFormat(*args, **kwargs):
    return lowbit.formats.CodebookFormat(*args, **kwargs)


CODEBOOKS = {
    "nf4": f32(NF4_PUBLISHED),
    "user5": [-2.5, -0.75, 0.0, 0.5, 3.0],            # 5 values: nbits 3, codes 5..7 unused
    "negative": [-8.0, -3.0, -1.25, -0.5],             # no zero, all negative
    "positive": [0.125, 0.5, 0.75, 3.0, 7.0, 7.5],     # no zero, all positive
    "pm1": [-1.0, 1.0],                                # BitNet's sign
    "fp4_bnb": fp4_bnb_values(),
}


def codebook_inputs(values, seed=0):
    v = np.array(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    span = v[-1] - v[0]
    random = np.concatenate([rng.uniform(v[0] - span / 4, v[-1] + span / 4, 600),
                             rng.standard_normal(200) * np.abs(v).max(),
                             (rng.standard_normal(100) * np.abs(v).max()).astype(np.float32)])
    extra = np.array([5e-324, -5e-324, 1e-300, -1e-300, 2.0 ** -149, -(2.0 ** -149)])
    return np.concatenate([boundary_inputs(v, np.abs(v).max()), extra, random])


# ----------------------------------------------------------------------------
# NF4 and bitsandbytes FP4 tables


def test_nf4_values_are_qlora_published():
    expected = tuple(float(np.float32(v)) for v in NF4_PUBLISHED)
    assert expected == tuple(NF4_PUBLISHED)  # the published numbers are float32 numbers
    nf4_values = lowbit.formats.NF4_VALUES
    assert isinstance(nf4_values, tuple) and all(type(v) is float for v in nf4_values)
    assert nf4_values == expected
    fmt = lowbit.get_format("nf4")
    assert isinstance(fmt, lowbit.BlockFormat)
    assert fmt.block_size == 64
    element = fmt.element
    assert isinstance(element, lowbit.formats.CodebookFormat)
    assert element.nbits == 4 and element.max == 1.0
    values = element.values()
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, np.array(expected))
    codes = np.arange(16, dtype=np.uint8)
    decoded = element.decode(codes)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, np.float32(NF4_PUBLISHED))
    np.testing.assert_array_equal(element.encode(np.float32(NF4_PUBLISHED)), codes)


def test_fp4_bnb_values():
    expected = fp4_bnb_values()
    assert len(expected) == 15 and expected.count(0.0) == 1
    # the same numbers written as E2M1-like values / 12
    e2m1 = np.float32(np.array([0, 0.0625, 2, 3, 4, 6, 8, 12]) / 12)
    assert sorted(set(f32(-e2m1) + f32(e2m1))) == expected
    fmt = lowbit.get_format("fp4_bnb")
    assert isinstance(fmt, lowbit.BlockFormat) and fmt.block_size == 64
    element = fmt.element
    assert isinstance(element, lowbit.formats.CodebookFormat)
    assert element.nbits == 4 and element.max == 1.0
    np.testing.assert_array_equal(element.values(), np.array(expected))
    decoded = element.decode(np.arange(16, dtype=np.uint8), dtype=np.float64)
    assert_same_values(decoded, np.array(expected + [np.nan]), "fp4_bnb codes are sorted indices")
    assert element.decode(np.array([7], dtype=np.uint8))[0] == 0.0  # the one zero at index 7


def test_nf4_dq_uses_the_nf4_table():
    fmt = lowbit.get_format("nf4_dq")
    np.testing.assert_array_equal(fmt.element.values(), np.array(f32(NF4_PUBLISHED)))
    assert fmt.double_quant


def nf4_dq_reference(x):
    """QLoRA double quantization as the scaling-schemes docs define it: fp32
    absmax per 64 (the codes use it exactly); the scales less
    offset = float32(fsum(scales) / n) in E4M3 blocks of 256 with scale
    float32(absmax / 448) (x / scale rounded exactly, nearest even, value
    float32(e * scale)); s' = float32(level-two value + offset) in float32;
    value = float32(element * s')."""
    nf4 = CodebookOracle(CODEBOOKS["nf4"])
    e4m3 = lowbit.get_format("fp8_e4m3")
    e4m3_table = CodebookOracle(list(e4m3.values()))  # sorted index parity = E4M3 code parity
    rows = np.asarray(x, dtype=np.float32).astype(np.float64).reshape(-1, 64)
    scales = np.float32(np.abs(rows).max(axis=1)).astype(np.float64)
    offset = float(np.float32(math.fsum(scales.tolist()) / scales.size))
    c = scales - offset  # the difference of two float32 numbers, exact in float64
    c = np.float32(c).astype(np.float64)  # the tensor handed to the second level (float32)
    level_two = np.empty_like(c)
    for start in range(0, c.size, 256):
        part = c[start:start + 256]
        s2 = float(np.float32(np.abs(part).max() / 448))
        if s2 == 0:
            level_two[start:start + 256] = 0.0
            continue
        for j, v in enumerate(part):
            e = e4m3_table.values[e4m3_table.index(Fraction(float(v)) / Fraction(s2), bool(np.signbit(v)))]
            level_two[start + j] = float(np.float32(e * s2))
    s_prime = (np.float32(level_two) + np.float32(offset)).astype(np.float64)
    out = np.empty_like(rows)
    for r, row in enumerate(rows):
        for j, v in enumerate(row):
            e = nf4.values[nf4.index(Fraction(float(v)) / Fraction(float(scales[r])), bool(np.signbit(v)))]
            out[r, j] = float(np.float32(e * s_prime[r]))
    return out.reshape(np.shape(x))


@functools.cache
def nf4_dq_case(shape):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * np.exp2(rng.uniform(-3, 3, (shape[0], 1)))).astype(np.float32)
    return x, nf4_dq_reference(x)


@every_backend
@pytest.mark.parametrize("shape", [(8, 2048), (3, 640)])
def test_nf4_dq_against_reference(shape):
    x, expected = nf4_dq_case(shape)
    fmt = lowbit.get_format("nf4_dq")
    assert_same_values(fmt.quantize(x), expected, f"nf4_dq {shape}")
    assert_same_values(fmt.encode(x).decode(), expected, f"nf4_dq {shape} encode/decode")


@pytest.mark.parametrize("name", ["CodebookFormat", "fit_codebook", "p3109"])
def test_top_level_reexports(name):
    assert getattr(lowbit, name) is getattr(lowbit.formats, name), name


# ----------------------------------------------------------------------------
# codebooks against the codebook oracle


@functools.cache
def codebook_expected(book, rounding, seed=0, float32=False):
    """(inputs, the codebook oracle's results), computed once for every backend."""
    x = codebook_inputs(CODEBOOKS[book], seed)
    if float32:
        x = x.astype(np.float32).astype(np.float64)
    return x, CodebookOracle(CODEBOOKS[book]).round(x, rounding)


@every_backend
@pytest.mark.parametrize("book", list(CODEBOOKS))
@pytest.mark.parametrize("rounding", CODEBOOK_MODES)
def test_codebook_quantize_matches_oracle(book, rounding):
    fmt = CodebookFormat(CODEBOOKS[book], name=book)
    x, expected = codebook_expected(book, rounding)
    assert_same_values(fmt.quantize(x, rounding=rounding), expected, f"{book} {rounding}")
    assert_same_values(fmt.quantize(x, rounding=rounding, overflow="saturate"), expected, f"{book} {rounding} saturate")
    # float32 inputs (numpy and torch) give the same as their float64 values
    x32 = x.astype(np.float32)
    _, expected32 = codebook_expected(book, rounding, float32=True)
    got32 = fmt.quantize(x32, rounding=rounding)
    assert got32.dtype == np.float32
    assert_same_values(got32, expected32, f"{book} {rounding} float32")
    got_torch = fmt.quantize(torch.from_numpy(x32), rounding=rounding)
    assert got_torch.dtype == torch.float32
    assert_same_values(got_torch.numpy(), expected32, f"{book} {rounding} torch")


@functools.cache
def codebook_codes(book, rounding):
    x = codebook_inputs(CODEBOOKS[book], seed=1)
    x = x[~np.isnan(x)]
    return x, CodebookOracle(CODEBOOKS[book]).encode(x, rounding)


@every_backend
@pytest.mark.parametrize("book", list(CODEBOOKS))
@pytest.mark.parametrize("rounding", CODEBOOK_MODES)
def test_codebook_encode_gives_indices(book, rounding):
    fmt = CodebookFormat(CODEBOOKS[book], name=book)
    x, expected_codes = codebook_codes(book, rounding)
    codes = fmt.encode(x, rounding=rounding)
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, expected_codes)
    torch_codes = fmt.encode(torch.from_numpy(x), rounding=rounding)
    assert torch_codes.dtype == torch.uint8
    np.testing.assert_array_equal(torch_codes.numpy(), expected_codes)
    assert_same_values(fmt.decode(codes, dtype=np.float64), fmt.quantize(x, rounding=rounding), f"{book} {rounding}")


@pytest.mark.parametrize("book", list(CODEBOOKS))
def test_codebook_decode_every_code(book):
    values = CODEBOOKS[book]
    fmt = CodebookFormat(values, name=book)
    nbits = max(1, math.ceil(math.log2(len(values))))
    assert fmt.nbits == nbits
    codes = np.arange(2 ** nbits, dtype=np.uint8)
    expected = np.array(values + [np.nan] * (2 ** nbits - len(values)))
    decoded = fmt.decode(codes)
    assert decoded.dtype == np.float32
    assert_same_values(decoded, expected, f"{book}: unused codes decode to NaN")
    assert_same_values(fmt.decode(torch.from_numpy(codes), dtype=torch.float64).numpy(), expected, book)
    np.testing.assert_array_equal(fmt.values(), np.array(values))
    assert fmt.max == max(abs(values[0]), abs(values[-1]))


def test_user_codebook_unused_codes():
    assert CodebookFormat(CODEBOOKS["user5"], name="my5").name == "my5"
    fmt = CodebookFormat(CODEBOOKS["user5"])
    assert fmt.nbits == 3
    assert_same_values(fmt.decode(np.array([5, 6, 7], dtype=np.uint8)), np.full(3, np.nan))
    assert_same_values(fmt.decode(np.array([0, 4], dtype=np.uint8)), np.array([-2.5, 3.0]))


@every_backend
@pytest.mark.parametrize("book", ["nf4", "user5", "negative", "pm1"])
def test_codebook_nan(book):
    fmt = CodebookFormat(CODEBOOKS[book])
    for rounding in CODEBOOK_MODES:
        got = fmt.quantize(np.array([np.nan, 0.25, -np.nan]), rounding=rounding)
        assert np.isnan(got[0]) and np.isnan(got[2]) and not np.isnan(got[1])
    with pytest.raises(ValueError):
        fmt.encode(np.array([0.25, np.nan]))
    with pytest.raises(ValueError):
        fmt.encode(np.float32([np.nan]))


@pytest.mark.parametrize("overflow", ["inf", "nan"])
def test_codebook_overflow_only_saturate(overflow):
    fmt = CodebookFormat(CODEBOOKS["user5"])
    with pytest.raises(ValueError):
        fmt.quantize(np.array([1.0]), overflow=overflow)


def test_codebook_ends_in_every_mode():
    """Inputs past either end (infinities included) clamp, in every mode."""
    values = CODEBOOKS["user5"]
    fmt = CodebookFormat(values)
    x = np.array([-np.inf, -1e300, -2.6, values[0], values[-1], 3.1, 1e300, np.inf])
    expected = np.array([values[0]] * 4 + [values[-1]] * 4)
    for rounding in CODEBOOK_MODES:
        assert_same_values(fmt.quantize(x, rounding=rounding), expected, rounding)
        np.testing.assert_array_equal(fmt.encode(x, rounding=rounding), [0] * 4 + [4] * 4)


def test_codebook_zero_is_positive_zero():
    fmt = CodebookFormat([-1.0, -0.0, 1.0])
    values = fmt.values()
    assert values[1] == 0.0 and not np.signbit(values[1])
    for rounding in CODEBOOK_MODES:
        got = fmt.quantize(np.array([-0.0, 0.0, -1e-300, 1e-300]), rounding=rounding)
        assert got[0] == 0.0 and not np.signbit(got[0]), rounding
        assert got[1] == 0.0 and not np.signbit(got[1]), rounding
    got = fmt.quantize(np.array([-1e-300, 1e-300]))  # nearest: the table's +0.0
    assert (got == 0).all() and not np.signbit(got).any()


def test_pm1_zero_ties_follow_the_sign_bit():
    """[-1, 1]: a zero is the tie of equal magnitudes."""
    fmt = CodebookFormat([-1.0, 1.0])
    x = np.array([0.0, -0.0])
    assert_same_values(fmt.quantize(x, rounding="nearest_even"), [-1.0, -1.0])   # the even index 0
    assert_same_values(fmt.quantize(x, rounding="nearest_away"), [1.0, -1.0])    # hi for +0, lo for -0
    assert_same_values(fmt.quantize(x, rounding="toward_zero"), [-1.0, 1.0])     # lo if sign clear, else hi
    assert_same_values(fmt.quantize(x, rounding="odd"), [1.0, 1.0])              # index 1
    assert_same_values(fmt.quantize(x, rounding="up"), [1.0, 1.0])
    assert_same_values(fmt.quantize(x, rounding="down"), [-1.0, -1.0])


INVALID_TABLES = {
    "decreasing": [1.0, 0.5],
    "repeated": [0.0, 0.5, 0.5, 1.0],
    "minus_zero_and_zero": [-0.0, 0.0, 1.0],
    "nan": [0.0, float("nan"), 1.0],
    "inf": [0.0, 1.0, float("inf")],
    "minus_inf": [float("-inf"), 0.0],
    "not_float32": [0.0, 0.1],
    "not_float32_big": [0.0, 16777217.0],
    "midpoint_not_exact": [2.0 ** -149, 1.0],  # lo + hi is not a float64 number
    "one_value": [1.0],
    "empty": [],
    "too_many": list(np.arange(65537, dtype=np.float64)),
}


@pytest.mark.parametrize("name", list(INVALID_TABLES))
def test_codebook_invalid_construction(name):
    with pytest.raises(ValueError, match="values"):
        CodebookFormat(INVALID_TABLES[name])


@pytest.mark.parametrize("n", [2, 3, 4, 5, 16, 17, 256, 257, 65536])
def test_codebook_sizes(n):
    values = list(np.arange(n, dtype=np.float64) - n // 3)
    fmt = CodebookFormat(values)
    nbits = max(1, math.ceil(math.log2(n)))
    assert fmt.nbits == nbits
    assert fmt.max == max(abs(values[0]), abs(values[-1]))
    codes = fmt.encode(np.array(values))
    assert codes.dtype == (np.uint8 if nbits <= 8 else np.uint16)
    np.testing.assert_array_equal(codes.astype(np.int64), np.arange(n))
    x = np.array([values[0] - 1, values[0] + 0.5, values[n // 2] + 0.5, values[-1] - 0.25, values[-1] + 7, -0.5])
    oracle = CodebookOracle(values)
    for rounding in CODEBOOK_MODES:
        assert_same_values(fmt.quantize(x, rounding=rounding), oracle.round(x, rounding), f"n={n} {rounding}")


def table_points(values):
    v = np.array(values)
    return list(v) + list((v[:-1] + v[1:]) / 2)


@settings(max_examples=50)
@given(data=st.data())
@pytest.mark.parametrize("book", ["nf4", "user5", "negative", "pm1"])
def test_codebook_properties(book, data):
    values = CODEBOOKS[book]
    fmt = CodebookFormat(values)
    near = st.sampled_from(table_points(values)).flatmap(
        lambda p: st.sampled_from([p, float(np.nextafter(p, np.inf)), float(np.nextafter(p, -np.inf))]))
    anything = st.floats(allow_nan=False, width=64)
    x = np.array(data.draw(st.lists(st.one_of(near, anything), min_size=2, max_size=20)))
    table = set(values)
    for rounding in CODEBOOK_MODES:
        q = fmt.quantize(x, rounding=rounding)
        assert all(float(v) in table for v in q), rounding
        assert_same_values(fmt.quantize(q, rounding=rounding), q, f"idempotent {rounding}")
        if rounding != "toward_zero":  # toward_zero sends +0.0 to lo and -0.0 to hi
            order = np.lexsort((~np.signbit(x), x))  # -0.0 before +0.0
            assert (np.diff(q[order]) >= 0).all(), f"monotone {rounding}: {x[order]} -> {q[order]}"


# ----------------------------------------------------------------------------
# NF4 / FP4 block formats against a per-block reference


def block_reference(x, values, rounding="nearest_even", block=64):
    """NF4-style blocks along the last axis: scale = absmax rounded to float32,
    element = x / scale (exact) rounded into the table, value = float32(element * scale)."""
    oracle = CodebookOracle(values)
    x64 = np.asarray(x, dtype=np.float64)
    rows = x64.reshape(-1, block)
    out = np.empty_like(rows)
    for r, row in enumerate(rows):
        if not np.isfinite(row).all():
            out[r] = np.nan
            continue
        scale = float(np.float32(np.abs(row).max()))
        if scale == 0:
            out[r] = 0.0
            continue
        for j, v in enumerate(row):
            e = oracle.values[oracle.index(Fraction(float(v)) / Fraction(scale), bool(np.signbit(v)), rounding)]
            out[r, j] = float(np.float32(e * scale))  # e * scale is exact in float64
    return out.reshape(x64.shape)


def block_data(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((8, 256)) * np.exp2(rng.integers(-20, 20, (8, 1)))).astype(dtype)
    x[0, :64] = 0.0                 # an all-zero block
    x[1, 64:128] = -0.0             # an all negative-zero block
    x[2, 5] = np.nan                # a NaN block
    x[3, 130] = np.inf              # an Inf block
    x[4, 200] = -np.inf
    x[5, 0:64:7] = -0.0             # negative zeros in an ordinary block
    x[6, 64:128] = x[6, 64]         # a constant block
    x[7, 192:256] = np.float32(3.0) * np.arange(64, dtype=np.float32) / 63  # an absmax hit exactly
    x[5, 128:192] = (rng.standard_normal(64) * 1e-42).astype(dtype)  # a subnormal float32 absmax
    x[4, 0:64] = (rng.standard_normal(64) * 1e38).astype(dtype)      # near float32's max
    return x


@every_backend
@pytest.mark.parametrize("name", ["nf4", "fp4_bnb"])
@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away", "toward_zero", "up", "down", "odd"])
def test_nf4_blocks_against_reference(name, rounding):
    fmt = lowbit.get_format(name)
    values = CODEBOOKS[name]
    x = block_data()
    expected = block_reference(x, values, rounding)
    got = fmt.quantize(x, rounding=rounding)
    assert got.dtype == np.float32
    # the sign of the all-zero blocks' zeros is checked on its own below
    assert_same_values(unsigned_zero_blocks(x, got), expected, f"{name} {rounding}")
    if rounding == "nearest_even":
        assert_same_values(unsigned_zero_blocks(x, fmt.quantize(x.T.copy(), axis=0).T), expected, f"{name} axis=0")
        assert_same_values(unsigned_zero_blocks(x, fmt.encode(x).decode()), expected, f"{name} encode/decode")
        assert_same_values(unsigned_zero_blocks(x, fmt.quantize(torch.from_numpy(x)).numpy()), expected,
                           f"{name} torch")


def unsigned_zero_blocks(x, got, block=64):
    """``got`` with the zeros of x's all-zero blocks made +0.0."""
    got = np.array(got, dtype=np.float64)
    zero = (np.asarray(x).reshape(-1, block) == 0).all(axis=1)
    flat = got.reshape(-1, block)
    flat[zero] = flat[zero] + 0.0
    return flat.reshape(got.shape)


@every_backend
@pytest.mark.parametrize("name", ["nf4", "fp4_bnb"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nf4_all_zero_block_is_positive_zero(name, dtype):
    """Scale 0 and the table's zero element (+0.0): the value is float32(+0.0 * 0) = +0.0."""
    x = np.zeros((3, 64), dtype=dtype)
    x[1] = -0.0
    x[2, 7] = 1.0
    got = lowbit.get_format(name).quantize(x)
    assert_same_values(got[:2], np.zeros((2, 64)), f"{name} all-zero blocks")
    assert_same_values(got[2, 8:], np.zeros(56), f"{name} zeros in a nonzero block")


@every_backend
@pytest.mark.parametrize("name", ["nf4", "fp4_bnb"])
def test_nf4_partial_last_block(name):
    """100 columns: blocks of 64 and 36 (the padding holds no magnitude)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 100)).astype(np.float32)
    padded = np.zeros((3, 128), dtype=np.float32)
    padded[:, :100] = x
    expected = block_reference(padded, CODEBOOKS[name])[:, :100]
    fmt = lowbit.get_format(name)
    assert_same_values(fmt.quantize(x), expected, f"{name} partial block")
    assert_same_values(fmt.encode(x).decode(), expected, f"{name} partial block encode/decode")


@every_backend
def test_nf4_float64_input_scale_rounds_to_float32():
    """The scale is the absmax rounded to float32: elements past it clamp to the table's ends."""
    fmt = lowbit.get_format("nf4")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 128))
    x[0, 3] = 1.0 + 2.0 ** -30   # absmax rounds down to 1.0: x / scale slightly above 1
    x[1, 7] = -(1.0 + 2.0 ** -30)
    x[2, :64] = 0.0
    assert_same_values(unsigned_zero_blocks(x, fmt.quantize(x)), block_reference(x, CODEBOOKS["nf4"]), "nf4 float64")


@every_backend
def test_nf4_stochastic_picks_a_neighbour():
    fmt = lowbit.get_format("nf4")
    x = block_data(seed=3)
    a = fmt.quantize(x, rounding="stochastic", seed=11)
    b = fmt.quantize(x, rounding="stochastic", seed=11)
    assert_same_values(a, b, "reproducible")
    down, up = block_reference(x, CODEBOOKS["nf4"], "down"), block_reference(x, CODEBOOKS["nf4"], "up")
    ok = (a == down) | (a == up) | (np.isnan(a) & np.isnan(down))
    assert ok.all()


# ----------------------------------------------------------------------------
# round to odd


def p3109_name_parameters(name):
    m = re.fullmatch(r"p3109_k(\d+)p(\d+)([su])([ef])", name)
    if m:
        return int(m[1]), int(m[2]), m[3] == "s", m[4] == "e"
    m = re.fullmatch(r"p3109_(\d+)p(\d+)", name)
    if m:
        return int(m[1]), int(m[2]), True, True
    return None


_ORACLES = {}


def oracle_for(fmt):
    """The brute-force oracle (built once per format); P3109 formats enumerated
    from their name's parameters."""
    key = (type(fmt).__name__, fmt.name, repr(fmt))
    if key not in _ORACLES:
        params = p3109_name_parameters(fmt.name)
        if params:
            k, p, signed, extended = params
            _ORACLES[key] = Oracle(fmt, pairs=enumerate_p3109(k, p, signed, extended), man_bits=p - 1)
        else:
            _ORACLES[key] = Oracle(fmt)
    return _ORACLES[key]


ODD_FORMATS = swept_element_formats()
ODD_EXTRA = [
    FloatFormat(4, 3, name="e4m3_ieee"),
    FloatFormat(3, 2, subnormals=False, specials="none", name="e3m2_nosub"),
    FloatFormat(4, 2, bias=3, signed=False, specials="fn", name="ue4m2"),
    FloatFormat(5, 0, bias=15, signed=False, subnormals=False, specials="fn", name="e5m0"),
    FloatFormat(2, 1, bias=3, specials="fnuz", name="e2m1fnuz"),
    IntFormat(8, name="int8_plain"),
    IntFormat(4, signed=False, name="uint4_plain"),
    IntFormat(8, narrow=True, frac_bits=6, name="mxint8_elem"),
    IntFormat(6, frac_bits=-2, name="int6_coarse"),
    IntFormat(5, signed=False, frac_bits=3, name="ufix5"),
]


def odd_policies(fmt):
    out = [None, "saturate"]
    if fmt.has_inf:
        out.append("inf")
    if fmt.has_nan:
        out.append("nan")
    return out


_ODD_INPUTS = {}


def odd_inputs(fmt, oracle, full=False):
    """Every value, midpoint and neighbour (for formats over 12 bits a sample
    of them, unless ``full``: the slow test takes them all), and random inputs."""
    key = (fmt.name, repr(fmt), full)
    if key not in _ODD_INPUTS:
        rng = np.random.default_rng(abs(hash(fmt.name)) % 2**32)
        finite = oracle.values[np.isfinite(oracle.values)]
        random = rng.standard_normal(500) * oracle.max / 4
        boundary = boundary_inputs(finite, oracle.max)
        if fmt.nbits > 12 and not full:
            ends = np.concatenate([boundary_inputs(finite[:64], oracle.max), boundary_inputs(finite[-64:], oracle.max)])
            boundary = np.concatenate([rng.choice(boundary, 30000, replace=False), ends])
        _ODD_INPUTS[key] = np.concatenate([boundary, random])
    return _ODD_INPUTS[key]


_ODD_EXPECTED = {}


def odd_expected(fmt, overflow, full=False):
    key = (fmt.name, repr(fmt), overflow, full)
    if key not in _ODD_EXPECTED:
        oracle = oracle_for(fmt)
        _ODD_EXPECTED[key] = oracle.round(odd_inputs(fmt, oracle, full), "odd", overflow)
    return _ODD_EXPECTED[key]


@every_backend
@pytest.mark.parametrize("fmt", [lowbit.get_format(n) for n in ODD_FORMATS] + ODD_EXTRA, ids=lambda f: f.name)
def test_round_to_odd_matches_oracle(fmt):
    if not isinstance(fmt, (FloatFormat, IntFormat)):
        values = list(fmt.values())
        oracle = CodebookOracle(values)
        x = codebook_inputs(values)
        assert_same_values(fmt.quantize(x, rounding="odd"), oracle.round(x, "odd"), f"{fmt.name} odd")
        return
    oracle = oracle_for(fmt)
    x = odd_inputs(fmt, oracle)
    for overflow in odd_policies(fmt):
        got = fmt.quantize(x, rounding="odd", overflow=overflow)
        assert_same_values(got, odd_expected(fmt, overflow), f"{fmt.name} odd overflow={overflow}")
    finite = x[np.isfinite(x) & (np.abs(x) <= oracle.max)]
    if not oracle.unsigned_float:
        np.testing.assert_array_equal(fmt.decode(fmt.encode(finite, rounding="odd"), dtype=np.float64) + 0.0,
                                      fmt.quantize(finite, rounding="odd") + 0.0)


MX_ODD = {"mxfp8_e4m3": (gfloat.formats.format_info_mxfp8_e4m3, "fp8_e4m3"),
          "mxfp4": (gfloat.formats.format_info_mxfp4_e2m1, "fp4_e2m1")}


@every_backend
@pytest.mark.parametrize("name", list(MX_ODD))
def test_mx_blocks_round_to_odd(name):
    """MX blocks: gfloat's power-of-two scale, x / scale (exact) rounded to odd by the oracle, times the scale."""
    fi, element = MX_ODD[name]
    oracle = oracle_for(lowbit.get_format(element))
    rng = np.random.default_rng(17)
    x = (rng.standard_normal((8, 64)) * np.exp2(rng.integers(-10, 10, (8, 1)))).astype(np.float32)
    expected = []
    for row in x.astype(np.float64).reshape(-1, 32):
        scale = gfloat.compute_scale_amax(fi.etype.emax, row)
        expected.append(oracle.round(row / scale, "odd", "saturate") * scale)
    got = lowbit.get_format(name).quantize(x, rounding="odd")
    assert_same_values(got, np.array(expected).reshape(x.shape), f"{name} odd")


@pytest.mark.slow
@every_backend
@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_round_to_odd_16_bit_every_boundary(name):
    """Every value, midpoint and neighbour of the 16-bit formats (the default run takes a sample)."""
    fmt = lowbit.get_format(name)
    x = odd_inputs(fmt, oracle_for(fmt), full=True)
    for overflow in odd_policies(fmt):
        assert_same_values(fmt.quantize(x, rounding="odd", overflow=overflow), odd_expected(fmt, overflow, full=True),
                           f"{name} odd overflow={overflow}")


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "p3109_8p3"])
def test_oracle_odd_is_one_of_the_directed_results(name):
    """A check of the oracle itself: odd is down or up, with an odd code (gfloat encodes)."""
    fmt = lowbit.get_format(name)
    oracle = oracle_for(fmt)
    fi = {"fp8_e4m3": format_info_ocp_e4m3, "fp8_e5m2": format_info_ocp_e5m2,
          "fp4_e2m1": gfloat.formats.format_info_ocp_e2m1, "p3109_8p3": format_info_p3109(8, 3)}[name]
    x = odd_inputs(fmt, oracle)
    x = x[np.isfinite(x) & (np.abs(x) < oracle.max)]
    q = oracle.round(x, "odd", "saturate")
    down, up = oracle.round(x, "down", "saturate"), oracle.round(x, "up", "saturate")
    assert ((q == down) | (q == up)).all()
    inexact = q != x
    codes = np.array([gfloat.encode_float(fi, float(v)) for v in q[inexact]])
    assert (codes & 1 == 1).all()


@every_backend
@pytest.mark.parametrize("wide,narrow", [((5, 4), (5, 2)), ((4, 5), (4, 3)), ((3, 4), (3, 2))])
def test_round_to_odd_then_nearest_is_nearest(wide, narrow):
    """Round to odd into p + 2 bits, then nearest-even into p bits, equals
    nearest-even directly (same exponent range: no double-rounding error)."""
    w = FloatFormat(*wide, specials="none", name="wide")
    n = FloatFormat(*narrow, specials="none", name="narrow")
    rng = np.random.default_rng(7)
    x = rng.standard_normal(20000) * np.exp2(rng.uniform(np.log2(n.min_subnormal) - 2, np.log2(n.max), 20000))
    x = np.concatenate([x, boundary_inputs(n.values(), n.max)])
    x = x[np.isfinite(x) & (np.abs(x) < n.max)]
    twice = n.quantize(w.quantize(x, rounding="odd"), rounding="nearest_even")
    assert_same_values(twice, n.quantize(x, rounding="nearest_even"), f"{wide} -> {narrow}")


@settings(max_examples=50)
@given(data=st.data())
@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "int4", "p3109_k8p3se"])
def test_round_to_odd_properties(name, data):
    fmt = lowbit.get_format(name)
    limit = float(fmt.max)
    x = np.array(data.draw(st.lists(st.floats(-limit, limit, allow_nan=False), min_size=1, max_size=20)))
    q = fmt.quantize(x, rounding="odd", overflow="saturate")
    down = fmt.quantize(x, rounding="down", overflow="saturate")
    up = fmt.quantize(x, rounding="up", overflow="saturate")
    assert ((down <= q) & (q <= up)).all()
    inexact = q != x
    codes = fmt.encode(q[inexact], overflow="saturate").astype(np.int64)
    assert (codes & 1 == 1).all(), (x[inexact], q[inexact], codes)


# ----------------------------------------------------------------------------
# stochastic rounding: SplitMix64 and sr_bits


def splitmix64_scalar(seed, i):
    m = 2 ** 64
    z = (seed % m + (i + 1) * 0x9E3779B97F4A7C15) % m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % m
    return z ^ (z >> 31)


def splitmix64(seed, n):
    """The random bits of elements 0..n-1 (uint64), numpy's uint64 arithmetic wrapping mod 2^64."""
    key = np.uint64(seed % 2 ** 64)
    z = key + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def test_splitmix64_helper():
    z = splitmix64(123456789, 1000)
    assert [int(v) for v in z[[0, 1, 500, 999]]] == [splitmix64_scalar(123456789, i) for i in (0, 1, 500, 999)]
    assert int(splitmix64(-3, 5)[4]) == splitmix64_scalar(-3, 4)
    # SplitMix64's published first output for state 0 (Vigna's splitmix64.c)
    assert splitmix64_scalar(0, 0) == 0xE220A8397B1DCDAF


SR_FORMATS = {
    "fp8_e4m3": format_info_ocp_e4m3,
    "fp8_e5m2": format_info_ocp_e5m2,
    "p3109_8p3": format_info_p3109(8, 3),
    "p3109_k8p4sf": format_info_p3109(8, 4, Signedness.Signed, Domain.Finite),
    "p3109_k8p5ue": format_info_p3109(8, 5, Signedness.Unsigned, Domain.Extended),
}


def sr_inputs(fmt, fi, seed):
    rng = np.random.default_rng(seed)
    finite = np.array([v for v in gfloat.decode_ndarray(fi, np.arange(2 ** fi.k)) if np.isfinite(v)])
    random = rng.standard_normal(400) * float(fmt.max) / 8
    tiny = rng.standard_normal(100) * float(np.sort(np.abs(finite[finite != 0]))[3])
    x = np.concatenate([boundary_inputs(finite, float(fmt.max)), random, tiny])
    if not fi.is_signed:
        x = x[~(x < 0)]
    return x


def gfloat_sr(fi, x, z, k, sat):
    r = (z >> np.uint64(64 - k)).astype(np.int64)
    return np.array([gfloat.round_float(fi, float(v), gfloat.RoundMode.Stochastic, sat, srbits=int(ri), srnumbits=k)
                     for v, ri in zip(x.reshape(-1), r.reshape(-1))]).reshape(x.shape)


@functools.cache
def sr_expected(name, k, sat):
    """(inputs, seed, gfloat's results), computed once for every backend."""
    fmt, fi = lowbit.get_format(name), SR_FORMATS[name]
    x = sr_inputs(fmt, fi, seed=k)
    seed = 1000 + k
    return x, seed, gfloat_sr(fi, x, splitmix64(seed, x.size), k, sat)


@every_backend
@pytest.mark.parametrize("name", list(SR_FORMATS))
@pytest.mark.parametrize("k", [1, 4, 8, 13, 32])
def test_sr_bits_like_gfloat(name, k):
    fmt, fi = lowbit.get_format(name), SR_FORMATS[name]
    for sat in (True, False):
        x, seed, expected = sr_expected(name, k, sat)
        overflow = "saturate" if sat else ("inf" if fi.domain == Domain.Extended else "nan")
        got = fmt.quantize(x, rounding="stochastic", seed=seed, sr_bits=k, overflow=overflow)
        assert_same_values(got, expected, f"{name} k={k} overflow={overflow}")


@every_backend
def test_sr_bits_index_is_c_order_over_the_whole_input():
    fmt, fi = lowbit.get_format("fp8_e4m3"), format_info_ocp_e4m3
    rng = np.random.default_rng(9)
    x = rng.standard_normal((24, 40)) * 3
    seed, k = 77, 8
    expected = gfloat_sr(fi, x, splitmix64(seed, x.size).reshape(x.shape), k, True)
    assert_same_values(fmt.quantize(x, rounding="stochastic", seed=seed, sr_bits=k, overflow="saturate"), expected, "2-D")
    xt = np.ascontiguousarray(x.T).T  # the same array, Fortran-ordered in memory
    assert_same_values(fmt.quantize(xt, rounding="stochastic", seed=seed, sr_bits=k, overflow="saturate"), expected,
                       "Fortran-ordered")
    expected32 = gfloat_sr(fi, x.astype(np.float32).astype(np.float64), splitmix64(seed, x.size).reshape(x.shape), k, True)
    got = fmt.quantize(torch.from_numpy(x.astype(np.float32)), rounding="stochastic", seed=seed, sr_bits=k,
                       overflow="saturate")
    assert_same_values(got.numpy(), expected32, "torch float32")


MX_SR = {"mxfp8_e4m3": gfloat.formats.format_info_mxfp8_e4m3, "mxfp4": gfloat.formats.format_info_mxfp4_e2m1}


@every_backend
@pytest.mark.parametrize("name", list(MX_SR))
@pytest.mark.parametrize("k", [3, 8])
@pytest.mark.parametrize("columns", [64, 40])
def test_mx_blocks_sr_bits_like_gfloat(name, k, columns):
    """MX blocks (power-of-two scales: x / scale is exact): element i of the
    C-ordered padded blocks takes SplitMix64 bits i, as gfloat's Stochastic
    rounding (40 columns: each row is padded to 64, two blocks of 32)."""
    fi = MX_SR[name]
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((6, columns)) * np.exp2(rng.integers(-8, 8, (6, 1)))).astype(np.float32)
    padded = np.zeros((6, 64))
    padded[:, :columns] = x
    seed = 4321 + k
    r = (splitmix64(seed, padded.size) >> np.uint64(64 - k)).astype(np.int64).reshape(-1, 32)
    expected = []
    for row, bits in zip(padded.reshape(-1, 32), r):
        scale = gfloat.compute_scale_amax(fi.etype.emax, row)
        expected.append([gfloat.round_float(fi.etype, v / scale, gfloat.RoundMode.Stochastic, True,
                                            srbits=int(b), srnumbits=k) * scale for v, b in zip(row, bits)])
    expected = np.array(expected).reshape(padded.shape)[:, :columns]
    got = lowbit.get_format(name).quantize(x, rounding="stochastic", seed=seed, sr_bits=k)
    assert_same_values(got, expected, f"{name} sr_bits={k} columns={columns}")


@every_backend
@pytest.mark.parametrize("fmt", [IntFormat(4, name="int4"), IntFormat(8, frac_bits=3, name="fix8_3"),
                                 IntFormat(6, signed=False, frac_bits=-1, name="ufix6")], ids=lambda f: f.name)
@pytest.mark.parametrize("k", [1, 5, 11])
def test_int_sr_bits(fmt, k):
    """IntFormat: f = (a - lo) / (hi - lo) on magnitudes; d = round_half_even(f 2^k); away from zero iff d + r >= 2^k."""
    oracle = oracle_for(fmt)
    rng = np.random.default_rng(k)
    x = rng.uniform(oracle.min, oracle.max, 3000)
    seed = 99 + k
    r = (splitmix64(seed, x.size) >> np.uint64(64 - k)).astype(np.int64)
    tz = oracle.round(x, "toward_zero", "saturate")
    away = np.where(x < 0, oracle.round(x, "down", "saturate"), oracle.round(x, "up", "saturate"))
    a, lo, hi = np.abs(x), np.abs(tz), np.abs(away)
    with np.errstate(invalid="ignore"):
        f = np.where(hi > lo, (a - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    d = np.round(f * 2.0 ** k)
    expected = np.where((hi > lo) & (d + r >= 2 ** k), away, tz)
    got = fmt.quantize(x, rounding="stochastic", seed=seed, sr_bits=k, overflow="saturate")
    np.testing.assert_array_equal(got + 0.0, expected + 0.0)


@every_backend
def test_sr_bits_seed_taken_mod_2_64():
    fmt, fi = lowbit.get_format("fp8_e5m2"), format_info_ocp_e5m2
    x = np.random.default_rng(4).standard_normal(500)
    for seed in (0, -3, 2 ** 64 + 5, 2 ** 63 + 1):
        expected = gfloat_sr(fi, x, splitmix64(seed, x.size), 6, False)
        assert_same_values(fmt.quantize(x, rounding="stochastic", seed=seed, sr_bits=6), expected, f"seed={seed}")


@every_backend
@pytest.mark.parametrize("name", ["fp8_e4m3", "fp4_e2m1", "int4", "p3109_8p3"])
def test_stochastic_default_bits(name):
    """sr_bits=None: u = (z >> 11) * 2^-53; hi iff u * (hi - lo) < (a - lo), magnitudes in float64."""
    fmt = lowbit.get_format(name)
    oracle = oracle_for(fmt)
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.standard_normal(3000) * float(fmt.max) / 5, oracle.values[np.isfinite(oracle.values)]])
    x = x[np.abs(x) < oracle.max]
    seed = 31
    z = splitmix64(seed, x.size)
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    tz = oracle.round(x, "toward_zero", "saturate")
    away = np.where(x < 0, oracle.round(x, "down", "saturate"), oracle.round(x, "up", "saturate"))
    a, lo, hi = np.abs(x), np.abs(tz), np.abs(away)
    expected = np.where(u * (hi - lo) < (a - lo), away, tz)
    got = fmt.quantize(x, rounding="stochastic", seed=seed, overflow="saturate")
    np.testing.assert_array_equal(got + 0.0, expected + 0.0)


@every_backend
@pytest.mark.parametrize("k", [1, 3, 8])
def test_codebook_sr_bits(k):
    """Codebooks: f = (x - lo) / (hi - lo) with signed values; d = round_half_even(f * 2^k); hi iff d + r >= 2^k."""
    values = CODEBOOKS["nf4"]
    fmt = CodebookFormat(values)
    oracle = CodebookOracle(values)
    x = np.concatenate([np.random.default_rng(k).uniform(-1.2, 1.2, 3000), values])
    seed = 5 + k
    z = splitmix64(seed, x.size)
    r = (z >> np.uint64(64 - k)).astype(np.int64)
    lo, hi = oracle.round(x, "down"), oracle.round(x, "up")
    with np.errstate(invalid="ignore", divide="ignore"):
        f = np.where(hi > lo, (x - lo) / (hi - lo), 0.0)
    d = np.round(f * 2.0 ** k)  # numpy rounds half to even
    expected = np.where(d + r >= 2 ** k, hi, lo)
    expected = np.where(hi == lo, lo, expected)
    got = fmt.quantize(x, rounding="stochastic", seed=seed, sr_bits=k)
    assert_same_values(got, expected, f"codebook sr_bits={k}")


@every_backend
def test_codebook_stochastic_default_bits():
    values = CODEBOOKS["user5"]
    fmt = CodebookFormat(values)
    oracle = CodebookOracle(values)
    x = np.concatenate([np.random.default_rng(2).uniform(-3, 3.5, 3000), values])
    seed = 19
    u = (splitmix64(seed, x.size) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    lo, hi = oracle.round(x, "down"), oracle.round(x, "up")
    expected = np.where(u * (hi - lo) < (x - lo), hi, lo)
    assert_same_values(fmt.quantize(x, rounding="stochastic", seed=seed), expected, "codebook default SR")


@every_backend
@pytest.mark.parametrize("k", [1, 2, 5, 8, 13])
def test_sr_bits_unbiased_within_resolution(k):
    """E[q] = lo + round_half_even(f 2^k) 2^-k (hi - lo): within 2^-(k+1) of x."""
    fmt = lowbit.get_format("fp8_e4m3")
    lo, hi = 1.0, 1.125
    x0 = lo + 0.3 * (hi - lo)
    n = 20000
    y = fmt.quantize(np.full(n, x0), rounding="stochastic", seed=2024 + k, sr_bits=k)
    assert set(np.unique(y)) <= {lo, hi}
    p_exact = round(0.3 * 2 ** k) / 2 ** k  # 0.3 * 2^k is never a tie here
    p_hat = (y == hi).mean()
    sd = math.sqrt(max(p_exact * (1 - p_exact), 1e-12) / n)
    assert abs(p_hat - p_exact) <= 6 * sd + 1e-12
    assert abs(y.mean() - x0) <= (2.0 ** -(k + 1) + 6 * sd) * (hi - lo)


@every_backend
def test_sr_bits_reproducible():
    x = np.random.default_rng(0).standard_normal(5000)
    a = lowbit.quantize(x, "fp8_e5m2", rounding="stochastic", seed=3, sr_bits=8)
    b = lowbit.quantize(x, "fp8_e5m2", rounding="stochastic", seed=3, sr_bits=8)
    c = lowbit.quantize(x, "fp8_e5m2", rounding="stochastic", seed=4, sr_bits=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    d = lowbit.quantize(torch.from_numpy(x), "fp8_e5m2", rounding="stochastic", generator=g1, sr_bits=8)
    e = lowbit.quantize(torch.from_numpy(x), "fp8_e5m2", rounding="stochastic", generator=g2, sr_bits=8)
    assert torch.equal(d, e)


def test_sr_bits_errors():
    fmt = lowbit.get_format("fp8_e4m3")
    x = np.ones(4)
    for mode in ("nearest_even", "nearest_away", "toward_zero", "up", "down", "odd"):
        with pytest.raises(ValueError):
            fmt.quantize(x, rounding=mode, sr_bits=8)
    with pytest.raises(ValueError):
        fmt.quantize(x, sr_bits=8)
    for bad in (0, 33, -1):
        with pytest.raises(ValueError):
            fmt.quantize(x, rounding="stochastic", seed=1, sr_bits=bad)
    for bad in ("8", 8.0):
        with pytest.raises(TypeError):
            fmt.quantize(x, rounding="stochastic", seed=1, sr_bits=bad)
    with pytest.raises(ValueError):
        lowbit.quantize(x, "fp8_e4m3", rounding="nearest_even", sr_bits=4)
    with pytest.raises(ValueError):
        CodebookFormat(CODEBOOKS["user5"]).quantize(x, rounding="up", sr_bits=4)
    fmt.quantize(x, rounding="stochastic", seed=1, sr_bits=1)
    fmt.quantize(x, rounding="stochastic", seed=1, sr_bits=32)


@settings(max_examples=50)
@given(data=st.data())
@pytest.mark.parametrize("name", ["fp8_e4m3", "p3109_k8p3se", "int4"])
def test_sr_bits_result_is_a_directed_result(name, data):
    fmt = lowbit.get_format(name)
    limit = float(fmt.max)
    x = np.array(data.draw(st.lists(st.floats(-limit, limit, allow_nan=False), min_size=1, max_size=20)))
    k = data.draw(st.integers(1, 32))
    seed = data.draw(st.integers(-2 ** 70, 2 ** 70))
    q = fmt.quantize(x, rounding="stochastic", seed=seed, sr_bits=k, overflow="saturate")
    down = fmt.quantize(x, rounding="down", overflow="saturate")
    up = fmt.quantize(x, rounding="up", overflow="saturate")
    assert ((q == down) | (q == up)).all()


# ----------------------------------------------------------------------------
# P3109 variants against gfloat


def p3109_variants(k, signed_ps, unsigned_ps):
    out = []
    for signed, ps in ((True, signed_ps), (False, unsigned_ps)):
        for p in ps:
            for extended in (True, False):
                out.append(format_info_p3109(k, p, Signedness.Signed if signed else Signedness.Unsigned,
                                             Domain.Extended if extended else Domain.Finite))
    return out


P3109_K8 = p3109_variants(8, range(1, 8), range(1, 9))
P3109_K6 = p3109_variants(6, range(1, 6), range(1, 7))
P3109_OTHER_K = p3109_variants(3, range(1, 3), range(1, 4)) + p3109_variants(12, [4, 9], [5, 12])
GFLOAT_MODES = {
    "nearest_even": gfloat.RoundMode.TiesToEven, "nearest_away": gfloat.RoundMode.TiesToAway,
    "toward_zero": gfloat.RoundMode.TowardZero, "up": gfloat.RoundMode.TowardPositive,
    "down": gfloat.RoundMode.TowardNegative,
}


def test_p3109_k8_names_in_catalogue():
    names = set(lowbit.list_formats())
    for fi in P3109_K8:
        assert fi.name in names, fi.name
    for p in range(1, 8):
        assert f"p3109_8p{p}" in names


@pytest.mark.parametrize("fi", P3109_K8 + P3109_K6 + P3109_OTHER_K, ids=lambda fi: fi.name)
def test_p3109_decode_like_gfloat(fi):
    fmt = lowbit.get_format(fi.name)
    assert fmt.nbits == fi.k
    codes = np.arange(2 ** fi.k)
    expected = np.array([gfloat.decode_float(fi, int(c)).fval for c in codes], dtype=np.float64)
    assert_same_values(fmt.decode(codes, dtype=np.float64), expected, fi.name)
    assert fmt.max == fi.max
    finite = np.unique(expected[np.isfinite(expected)] + 0.0)
    np.testing.assert_array_equal(fmt.values(), finite)
    assert fmt.has_inf == (fi.domain == Domain.Extended)
    assert fmt.has_nan


@pytest.mark.parametrize("fi", P3109_K8[::3] + P3109_K6[::4], ids=lambda fi: fi.name)
def test_p3109_constructor_like_gfloat(fi):
    signed = fi.is_signed
    fmt = lowbit.formats.p3109(fi.k, fi.precision, signed=signed,
                               domain="extended" if fi.domain == Domain.Extended else "finite")
    codes = np.arange(2 ** fi.k)
    assert_same_values(fmt.decode(codes, dtype=np.float64), gfloat.decode_ndarray(fi, codes), fi.name)
    if signed and fi.domain == Domain.Extended:
        assert_same_values(lowbit.formats.p3109(fi.k, fi.precision).decode(codes, dtype=np.float64),
                           gfloat.decode_ndarray(fi, codes), "defaults: signed, extended")


def test_p3109_old_names_are_signed_extended():
    codes = np.arange(256)
    for p in range(1, 8):
        assert_same_values(lowbit.get_format(f"p3109_8p{p}").decode(codes, dtype=np.float64),
                           lowbit.get_format(f"p3109_k8p{p}se").decode(codes, dtype=np.float64), f"p={p}")


@pytest.mark.parametrize("bad", ["p3109_k8p8se", "p3109_k8p8sf", "p3109_k6p6se", "p3109_k8p9ue", "p3109_k17p3se",
                                 "p3109_k1p1ue", "p3109_k8p0se"])
def test_p3109_unsupported_names(bad):
    with pytest.raises(ValueError):
        lowbit.get_format(bad)


def test_p3109_signed_p_equal_k_unsupported():
    with pytest.raises(ValueError):
        lowbit.formats.p3109(8, 8)
    with pytest.raises(ValueError):
        lowbit.formats.p3109(8, 8, signed=True, domain="finite")
    lowbit.formats.p3109(8, 8, signed=False)


@pytest.mark.parametrize("name", ["p3109_k2p1sf", "p3109_k2p2ue", "p3109_k9p3se", "p3109_k16p8se", "p3109_k16p11uf"])
def test_p3109_parses_k_2_to_16(name):
    k, p, signed, extended = p3109_name_parameters(name)
    values = np.array([v for _, v in enumerate_p3109(k, p, signed, extended)])
    fmt = lowbit.get_format(name)
    assert fmt.nbits == k
    assert fmt.max == values[np.isfinite(values)].max()
    assert fmt.has_inf == extended


def p3109_inputs(fmt, fi, seed):
    rng = np.random.default_rng(seed)
    values = gfloat.decode_ndarray(fi, np.arange(2 ** fi.k))
    finite = np.unique(values[np.isfinite(values)])
    x = np.concatenate([boundary_inputs(finite, fi.max), rng.standard_normal(1500) * fi.max / 3,
                        np.exp2(rng.uniform(np.log2(finite[finite > 0][0]) - 3, np.log2(fi.max) + 2, 1500))
                        * rng.choice([-1, 1], 1500)])
    if not fi.is_signed:
        x = x[~(x < 0)]
    return x


@every_backend
@pytest.mark.parametrize("fi", P3109_K8 + P3109_K6[::2], ids=lambda fi: fi.name)
def test_p3109_quantize_like_gfloat(fi):
    fmt = lowbit.get_format(fi.name)
    x = p3109_inputs(fmt, fi, seed=fi.k * 16 + fi.precision)
    for rounding, mode in GFLOAT_MODES.items():
        for sat in (True, False):
            overflow = "saturate" if sat else ("inf" if fi.domain == Domain.Extended else "nan")
            expected = gfloat.round_ndarray(fi, x, mode, sat=sat)
            assert_same_values(fmt.quantize(x, rounding=rounding, overflow=overflow), expected,
                               f"{fi.name} {rounding} overflow={overflow}")
    finite = x[np.isfinite(x)]
    np.testing.assert_array_equal(fmt.encode(finite, overflow="saturate"),
                                  gfloat.encode_ndarray(fi, gfloat.round_ndarray(fi, finite, sat=True)))


@every_backend
@pytest.mark.parametrize("fi", [fi for fi in P3109_K8 if not fi.is_signed][::3], ids=lambda fi: fi.name)
def test_p3109_unsigned_negative_inputs_are_nan(fi):
    fmt = lowbit.get_format(fi.name)
    got = fmt.quantize(np.array([-1.0, -np.inf, -fi.max * 2, 1.0]))
    assert np.isnan(got[:3]).all() and got[3] == 1.0


# ----------------------------------------------------------------------------
# ternary and binary (BitNet)


def f32_of_fraction(q):
    """A Fraction rounded once to float32, nearest even."""
    c = np.float32(float(q))
    cands = [c, np.nextafter(c, np.float32(-np.inf)), np.nextafter(c, np.float32(np.inf))]
    cands = [v for v in cands if np.isfinite(v)]
    return min(cands, key=lambda v: (abs(Fraction(float(v)) - q), int(v.view(np.uint32)) & 1))


def exact_mean_abs(x):
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return f32_of_fraction(sum((Fraction(float(abs(v))) for v in x), Fraction(0)) / x.size)


def round_integer(t, rounding):
    if rounding == "nearest_even":
        return round(t)  # Fraction.__round__ rounds half to even
    if rounding == "nearest_away":
        return math.floor(abs(t) + Fraction(1, 2)) * (1 if t >= 0 else -1)
    if rounding == "toward_zero":
        return math.trunc(t)
    if rounding == "up":
        return math.ceil(t)
    if rounding == "down":
        return math.floor(t)
    if rounding == "odd":  # an integer stays, otherwise the odd one of floor and ceil
        return math.floor(t) if t == math.floor(t) or math.floor(t) % 2 == 1 else math.ceil(t)
    raise ValueError(rounding)


def ternary_reference(x, rounding="nearest_even"):
    x64 = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x64).all():
        return np.full(x64.shape, np.nan)
    s = float(exact_mean_abs(x64))
    if s == 0:
        s = 1.0
    q = [max(-1, min(1, round_integer(Fraction(float(v)) / Fraction(s), rounding))) for v in x64.reshape(-1)]
    return (np.array(q, dtype=np.float64) * s).reshape(x64.shape)


def binary_reference(x, rounding="nearest_even"):
    x64 = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x64).all():
        return np.full(x64.shape, np.nan)
    s = float(exact_mean_abs(x64))
    if s == 0:
        s = 1.0
    book = CodebookOracle([-1.0, 1.0])
    q = [book.values[book.index(Fraction(float(v)) / Fraction(s), bool(np.signbit(v)), rounding)]
         for v in x64.reshape(-1)]
    return (np.array(q) * s).reshape(x64.shape)


def plus_zero(a):
    """The sign of a zero is left open for ternary (codes are an implementation detail)."""
    return np.asarray(a, dtype=np.float64) + 0.0


HALFWAY = np.array([0.5, 1.5, -0.5, -1.5, 1.0, -1.0, 0.25, 1.75, -0.25, -1.75, 0.0, 2.0, 2.5, -0.5, 0.75, -0.25])


@every_backend
@pytest.mark.parametrize("rounding", [*MODES, "odd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ternary_random(rounding, dtype):
    fmt = lowbit.get_format("ternary")
    rng = np.random.default_rng(21)
    x = (rng.standard_normal((32, 48)) * 0.02).astype(dtype)
    x[3, :5] = 0.0
    expected = ternary_reference(x, rounding)
    got = fmt.quantize(x, rounding=rounding)
    assert got.dtype == dtype
    assert_same_values(plus_zero(got), plus_zero(expected), f"ternary {rounding}")
    assert_same_values(plus_zero(fmt.encode(x, rounding=rounding).decode()), plus_zero(expected), "encode/decode")
    assert_same_values(plus_zero(lowbit.quantize(torch.from_numpy(x), "ternary", rounding=rounding).numpy()),
                       plus_zero(expected), "torch")
    assert_same_values(plus_zero(lowbit.quantize(x.T, "ternary", rounding=rounding)), plus_zero(expected.T),
                       "a per-tensor scale: any layout")


@every_backend
@pytest.mark.parametrize("s0", [1.0, 0.75, 3 * 2.0 ** -10, 2.0 ** 20])
def test_ternary_halfway(s0):
    """x = t s0 with mean|t| = 1 exactly: x / s lands on 0.5, 1.5, ... exactly."""
    assert np.abs(HALFWAY).mean() == 1.0
    x = (HALFWAY * s0).astype(np.float32)
    assert exact_mean_abs(x) == np.float32(s0)
    fmt = lowbit.get_format("ternary")
    for rounding in [*MODES, "odd"]:
        assert_same_values(plus_zero(fmt.quantize(x, rounding=rounding)), plus_zero(ternary_reference(x, rounding)),
                           f"ternary s={s0} {rounding}")
    got = plus_zero(fmt.quantize(x))
    assert got[0] == 0.0 and got[1] == s0 and got[2] == 0.0 and got[3] == -s0  # 0.5 -> 0, 1.5 -> 2 -> 1


@every_backend
def test_ternary_scale_is_the_exact_mean_rounded_once():
    """Many values whose float32 running sum would drift: the mean is exact, then rounded once."""
    rng = np.random.default_rng(8)
    x = np.concatenate([np.float32([1e6, -1e6]), (rng.standard_normal(5000) * 1e-3).astype(np.float32),
                        np.float32([3.0, -1.0000001])]).astype(np.float32)
    fmt = lowbit.get_format("ternary")
    assert_same_values(plus_zero(fmt.quantize(x)), plus_zero(ternary_reference(x)), "ternary exact mean")
    assert_same_values(binary_reference(x), fmt_binary().quantize(x), "binary exact mean")


def fmt_binary():
    return lowbit.get_format("binary")


@every_backend
def test_ternary_binary_zero_tensor_and_nan():
    zeros = np.zeros((4, 8), dtype=np.float32)
    assert_same_values(plus_zero(lowbit.get_format("ternary").quantize(zeros)), np.zeros((4, 8)), "ternary zeros")
    assert_same_values(fmt_binary().quantize(zeros), -np.ones((4, 8)), "binary zeros: s = 1, Sign(0) = -1")
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[2, 3] = bad
        assert np.isnan(lowbit.get_format("ternary").quantize(y)).all(), bad
        assert np.isnan(fmt_binary().quantize(y)).all(), bad


@every_backend
@pytest.mark.parametrize("rounding", [*MODES, "odd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binary_random(rounding, dtype):
    rng = np.random.default_rng(22)
    x = (rng.standard_normal((16, 40)) * 0.5).astype(dtype)
    x[0, :4] = [0.0, -0.0, 0.0, -0.0]
    x[1, :4] = x[1, :4] * 1e-6  # inside (-s, s)
    expected = binary_reference(x, rounding)
    got = fmt_binary().quantize(x, rounding=rounding)
    assert_same_values(got, expected, f"binary {rounding}")
    assert_same_values(fmt_binary().encode(x, rounding=rounding).decode(), expected, "encode/decode")


@every_backend
def test_binary_is_bitnet_sign():
    x = np.float32([0.5, -0.25, 0.0, -0.0, 2.0, -1.75])
    s = np.float32(np.abs(x.astype(np.float64)).mean())
    assert s == np.float32(0.75)
    expected = np.where(x > 0, 1.0, -1.0) * float(s)
    assert_same_values(fmt_binary().quantize(x), expected, "Sign(x) * mean|x|")


# ----------------------------------------------------------------------------
# fit_codebook


def sq_error(x, w, table):
    table = np.asarray(table, dtype=np.float64)
    d = (np.asarray(x, dtype=np.float64)[:, None] - table[None, :]) ** 2
    return float((np.asarray(w, dtype=np.float64) * d.min(axis=1)).sum())


def uniform_grid(x, bits):
    return np.linspace(float(np.min(x)), float(np.max(x)), 2 ** bits).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("dist", ["normal", "laplace", "bimodal"])
def test_fit_codebook_beats_uniform_grid(bits, dist):
    rng = np.random.default_rng(bits * 10 + len(dist))
    x = {"normal": rng.standard_normal(3000), "laplace": rng.laplace(size=3000),
         "bimodal": np.concatenate([rng.normal(-2, 0.3, 1500), rng.normal(1, 0.1, 1500)])}[dist].astype(np.float32)
    fmt = lowbit.formats.fit_codebook(x, bits)
    assert isinstance(fmt, lowbit.formats.CodebookFormat)
    values = fmt.values()
    assert 1 <= len(values) <= 2 ** bits
    assert (np.diff(values) > 0).all()
    assert (values.astype(np.float32).astype(np.float64) == values).all()
    assert values[0] >= x.min() and values[-1] <= x.max()
    w = np.ones(x.size)
    fitted, uniform = sq_error(x, w, values), sq_error(x, w, uniform_grid(x, bits))
    assert fitted <= uniform * (1 + 1e-9), (fitted, uniform)
    if bits >= 2:
        assert fitted < uniform * 0.999  # Lloyd improves a non-uniform distribution
    # lowbit's own quantize (nearest_even) agrees with the nearest-level error
    q = fmt.quantize(x.astype(np.float64))
    assert abs(float(((x - q) ** 2).sum()) - fitted) <= 1e-9 * max(fitted, 1e-30)


def test_fit_codebook_deterministic():
    x = np.random.default_rng(1).standard_normal(5000).astype(np.float32)
    w = np.random.default_rng(2).uniform(0, 3, 5000)
    a = lowbit.formats.fit_codebook(x, 4, weights=w)
    b = lowbit.formats.fit_codebook(x.copy(), 4, weights=w.copy())
    np.testing.assert_array_equal(a.values(), b.values())
    c = lowbit.formats.fit_codebook(torch.from_numpy(x), 4, weights=torch.from_numpy(w))
    np.testing.assert_array_equal(a.values(), c.values())
    d = lowbit.formats.fit_codebook(x, 3, iterations=5)
    e = lowbit.formats.fit_codebook(x, 3, iterations=5)
    np.testing.assert_array_equal(d.values(), e.values())


def test_fit_codebook_uniform_data_is_exact():
    x = np.linspace(-1, 1, 16).astype(np.float32)
    fmt = lowbit.formats.fit_codebook(np.tile(x, 10), 4)
    np.testing.assert_array_equal(fmt.values(), x.astype(np.float64))


def test_fit_codebook_weights():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(1000), [0.3]]).astype(np.float32)
    w = np.ones(x.size)
    w[-1] = 1e6
    fmt = lowbit.formats.fit_codebook(x, 3, weights=w)
    assert np.abs(fmt.values() - float(np.float32(0.3))).min() < 1e-3
    fitted, uniform = sq_error(x, w, fmt.values()), sq_error(x, w, uniform_grid(x, 3))
    assert fitted <= uniform * (1 + 1e-9)


def test_fit_codebook_merges_to_fewer_levels():
    x = np.float32([0.0, 0.0, 1.0, 1.0, 1.0])
    fmt = lowbit.formats.fit_codebook(x, 3)
    assert len(fmt.values()) <= 8
    assert sq_error(x, np.ones(5), fmt.values()) == 0.0


@pytest.mark.parametrize("case", ["nan", "inf", "one_value", "negative_weight", "weight_shape", "nan_weight"])
def test_fit_codebook_errors(case):
    x = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    w = None
    if case == "nan":
        x[5] = np.nan
    elif case == "inf":
        x[5] = np.inf
    elif case == "one_value":
        x = np.full(50, 0.5, dtype=np.float32)
    elif case == "negative_weight":
        w = np.ones(100)
        w[3] = -1.0
    elif case == "weight_shape":
        w = np.ones(99)
    elif case == "nan_weight":
        w = np.ones(100)
        w[3] = np.nan
    with pytest.raises(ValueError):
        lowbit.formats.fit_codebook(x, 3, weights=w)
