"""Every element format in the catalogue against the brute-force oracle:
every code, every midpoint, the numbers right next to them, and random
inputs, in every deterministic rounding mode and overflow policy."""

import numpy as np
import pytest

import lowbit
from lowbit.formats import FloatFormat, IntFormat

from helpers import assert_same_values, swept_element_formats
from oracle import Oracle, boundary_inputs, enumerate_codes

pytestmark = pytest.mark.usefixtures("each_backend")

ELEMENT_FORMATS = swept_element_formats()
EXTRA_FORMATS = [
    FloatFormat(4, 3, name="e4m3_ieee"),
    FloatFormat(3, 4, name="e3m4_ieee"),
    FloatFormat(3, 2, subnormals=False, specials="none", name="e3m2_nosub"),
    FloatFormat(4, 2, bias=3, signed=False, specials="fn", name="ue4m2"),
    FloatFormat(5, 0, bias=15, signed=False, subnormals=False, specials="fn", name="e5m0"),
    FloatFormat(2, 1, bias=3, specials="fnuz", name="e2m1fnuz"),
    IntFormat(8, narrow=True, frac_bits=6, name="mxint8_elem"),
    IntFormat(6, frac_bits=-2, name="int6_coarse"),
    IntFormat(5, signed=False, frac_bits=3, name="ufix5"),
]
MODES = ["nearest_even", "nearest_away", "toward_zero", "up", "down"]


def all_formats():
    return [lowbit.get_format(n) for n in ELEMENT_FORMATS] + EXTRA_FORMATS


def policies(fmt):
    out = [None, "saturate"]
    if fmt.has_inf:
        out.append("inf")
    if fmt.has_nan:
        out.append("nan")
    return out


def inputs_for(fmt, oracle):
    rng = np.random.default_rng(abs(hash(fmt.name)) % 2**32)
    random = np.concatenate([
        rng.standard_normal(2000) * oracle.max / 4,
        np.exp2(rng.uniform(np.log2(max(fmt.min_subnormal, 1e-300)) - 3, np.log2(oracle.max) + 2, 2000)) * rng.choice([-1, 1], 2000),
    ])
    return np.concatenate([boundary_inputs(oracle.values[np.isfinite(oracle.values)], oracle.max), random])


@pytest.mark.parametrize("fmt", all_formats(), ids=lambda f: f.name)
def test_decode_every_code_matches_enumeration(fmt):
    codes, values = zip(*enumerate_codes(fmt))
    assert_same_values(fmt.decode(np.array(codes), dtype=np.float64), np.array(values), fmt.name)


@pytest.mark.parametrize("fmt", all_formats(), ids=lambda f: f.name)
def test_values_are_the_finite_values(fmt):
    expected = np.unique([v + 0.0 for _, v in enumerate_codes(fmt) if np.isfinite(v)])
    if isinstance(fmt, IntFormat) and fmt.narrow:
        expected = expected[1:]
    np.testing.assert_array_equal(fmt.values(), expected)


@pytest.mark.parametrize("fmt", all_formats(), ids=lambda f: f.name)
@pytest.mark.parametrize("rounding", MODES)
def test_quantize_matches_oracle(fmt, rounding):
    oracle = Oracle(fmt)
    x = inputs_for(fmt, oracle)
    for overflow in policies(fmt):
        got = fmt.quantize(x, rounding=rounding, overflow=overflow)
        assert_same_values(got, oracle.round(x, rounding, overflow), f"{fmt.name} {rounding} overflow={overflow}")


@pytest.mark.parametrize("fmt", all_formats(), ids=lambda f: f.name)
def test_encode_decode_round_trip_every_value(fmt):
    v = fmt.values()
    assert_same_values(fmt.decode(fmt.encode(v), dtype=np.float64), v, fmt.name)


def test_fp32_against_numpy_and_neighbours():
    """fp32 has too many codes to enumerate: nearest_even must equal numpy's
    float64 -> float32 cast; directed modes must give the float32 neighbours."""
    fp32 = lowbit.get_format("fp32")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000) * 10.0 ** rng.integers(-45, 39, 20000),
                        [3.4028235677973366e38, 3.4028235677973362e38, 1e-46, 7e-46, 1.401298464324817e-45 * 1.5]])
    with np.errstate(over="ignore"):
        near = x.astype(np.float32).astype(np.float64)
    assert_same_values(fp32.quantize(x), near, "nearest_even")
    below = np.where(near > x, np.nextafter(near.astype(np.float32), np.float32(-np.inf)), near)
    with np.errstate(over="ignore"):
        above = np.where(near < x, np.nextafter(near.astype(np.float32), np.float32(np.inf)), near)
    finite = np.isfinite(near) & (np.abs(x) < 3.4e38)
    assert_same_values(fp32.quantize(x[finite], rounding="down"), below[finite], "down")
    assert_same_values(fp32.quantize(x[finite], rounding="up"), above[finite], "up")
