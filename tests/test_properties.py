"""Hypothesis properties over formats of every family, including randomly
built ones, with the brute-force oracle as the reference."""

import pytest
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from lowbit.formats import BlockFormat, ElementFormat
from lowbit.testing import (
    assert_correctly_rounded, element_formats, representable_values, rounding_boundaries, scaled_formats,
    wide_range_blocks,
)

from helpers import assert_same_values
from oracle import Oracle

pytestmark = pytest.mark.usefixtures("each_backend")

DETERMINISTIC = ["nearest_even", "nearest_away", "toward_zero", "up", "down"]


@given(st.data())
def test_decode_encode_round_trip(data):
    fmt = data.draw(element_formats())
    v = data.draw(st.lists(representable_values(fmt), min_size=1, max_size=20))
    v = np.array(v)
    assert_same_values(fmt.decode(fmt.encode(v), dtype=np.float64), v, fmt.name)


@given(st.data())
def test_random_formats_match_oracle(data):
    fmt = data.draw(element_formats())
    rounding = data.draw(st.sampled_from(DETERMINISTIC))
    x = np.array(data.draw(st.lists(rounding_boundaries(fmt), min_size=1, max_size=30)))
    got = fmt.quantize(x, rounding=rounding, overflow="saturate")
    assert_same_values(got, Oracle(fmt).round(x, rounding, "saturate"), f"{fmt} {rounding}")


@given(st.data())
def test_assert_correctly_rounded_accepts_lowbit(data):
    fmt = data.draw(element_formats(max_bits=8))
    rounding = data.draw(st.sampled_from(DETERMINISTIC + ["stochastic"]))
    x = np.array(data.draw(st.lists(rounding_boundaries(fmt), min_size=1, max_size=20)))
    x = x[(x >= fmt.values()[0]) & (x <= fmt.values()[-1])]
    seed = 0 if rounding == "stochastic" else None
    assert_correctly_rounded(fmt, x, fmt.quantize(x, rounding=rounding, seed=seed), rounding)


@given(st.data())
def test_quantize_is_idempotent(data):
    # formats whose block scales are powers of two; NVFP4's scale follows the block's amax
    # to three mantissa bits, so quantizing again may change it (test_blocks.py shows a case)
    fmt = data.draw(element_formats() | scaled_formats().filter(
        lambda f: not (isinstance(f, BlockFormat) and f.scale.man_bits > 0)))
    rounding = data.draw(st.sampled_from(DETERMINISTIC))
    if isinstance(fmt, ElementFormat):
        x = np.array(data.draw(st.lists(rounding_boundaries(fmt), min_size=1, max_size=30)))
        q = fmt.quantize(x, rounding=rounding, overflow="saturate")
        assert_same_values(fmt.quantize(q, rounding=rounding, overflow="saturate"), q, str(fmt))
    else:
        x = data.draw(wide_range_blocks(fmt.block_size or 32))
        q = fmt.quantize(x, rounding=rounding)
        assert_same_values(fmt.quantize(q, rounding=rounding), q, str(fmt))


@given(st.data())
def test_quantize_is_monotone(data):
    fmt = data.draw(element_formats())
    rounding = data.draw(st.sampled_from(DETERMINISTIC))
    x = np.sort(np.array(data.draw(st.lists(rounding_boundaries(fmt), min_size=2, max_size=40))))
    q = fmt.quantize(x, rounding=rounding, overflow="saturate")
    q = q[~np.isnan(q)]
    assert (np.diff(q) >= 0).all(), (x, q)


@given(st.data())
def test_quantize_is_sign_symmetric(data):
    fmt = data.draw(element_formats())
    values = fmt.values()
    assume(np.array_equal(values, -values[::-1]))  # a symmetric value set
    rounding = data.draw(st.sampled_from(["nearest_even", "nearest_away", "toward_zero"]))
    x = np.array(data.draw(st.lists(rounding_boundaries(fmt), min_size=1, max_size=30)))
    q = fmt.quantize(x, rounding=rounding)
    assert_same_values(fmt.quantize(-x, rounding=rounding) + 0.0, -q + 0.0, str(fmt))


@given(st.data())
def test_scaling_a_block_by_power_of_two_scales_its_output(data):
    fmt = data.draw(scaled_formats())
    assume(not (isinstance(fmt, BlockFormat) and not fmt.power_of_two_scale))  # E4M3 scales clamp at 448
    x = data.draw(wide_range_blocks(fmt.block_size, exponent_range=30))
    k = data.draw(st.integers(-20, 20))
    rounding = data.draw(st.sampled_from(DETERMINISTIC))
    np.testing.assert_array_equal(fmt.quantize(x * np.float32(2.0 ** k), rounding=rounding),
                                  fmt.quantize(x, rounding=rounding) * np.float32(2.0 ** k))


@given(st.data())
def test_scaled_encode_decode_agrees_with_quantize(data):
    fmt = data.draw(scaled_formats())
    x = data.draw(wide_range_blocks(fmt.block_size or 32))
    cut = data.draw(st.integers(1, x.size))
    x = x[:cut]  # a length that need not be a whole number of blocks
    np.testing.assert_array_equal(fmt.encode(x).decode(), fmt.quantize(x))
