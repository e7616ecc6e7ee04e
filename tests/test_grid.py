"""fmt.grid: the spacing and the range of the grid each element is rounded
on, checked against the formats' enumerated values and against rounding."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, strategies as st

import lowbit
from lowbit.formats import BlockFormat, CodebookFormat, IntFormat
from lowbit.testing import element_formats, scaled_formats, wide_range_blocks

from helpers import swept_element_formats

SMALL_ELEMENT_FORMATS = [lowbit.get_format(n) for n in swept_element_formats()]


@pytest.mark.parametrize("fmt", SMALL_ELEMENT_FORMATS, ids=str)
def test_element_ulp_is_the_gap_between_neighbouring_values(fmt):
    """Between two neighbouring non-negative values a < b, the ulp is b - a."""
    values = fmt.values()
    positive = values[values >= 0]
    a, b = positive[:-1], positive[1:]
    ulp, largest = fmt.grid((a + b) / 2)
    np.testing.assert_array_equal(ulp, b - a)
    np.testing.assert_array_equal(largest, np.full_like(a, fmt.max))


@given(element_formats(max_bits=10), st.data())
def test_element_grid_bounds_the_rounding_error(fmt, data):
    """Where |x| <= largest: round to nearest lands within ulp/2, directed
    rounding within one ulp, on a multiple of the ulp."""
    values = fmt.values()
    x = np.array(data.draw(st.lists(st.floats(float(values[0]) * 1.01, float(values[-1]) * 1.01,
                                              allow_nan=False), min_size=1, max_size=20)))
    ulp, largest = fmt.grid(x)
    inside = np.abs(x) <= largest
    for rounding, bound in (("nearest_even", 0.5), ("toward_zero", 1.0), ("up", 1.0)):
        q = fmt.quantize(x, rounding=rounding, overflow="saturate", backend="reference")
        ok = ~np.isnan(q) & inside  # NaN: a value the format cannot hold (negatives when unsigned)
        assert np.all(np.abs(q - x)[ok] <= bound * ulp[ok])
        assert np.all((q[ok] / ulp[ok]) == np.round(q[ok] / ulp[ok]))


def test_element_grid_examples():
    ulp, largest = lowbit.get_format("fp8_e4m3").grid(np.array([0.0, 1.0, 1.5, 300.0, 1e6, -2.0 ** -12]))
    assert ulp.tolist() == [2.0 ** -9, 0.125, 0.125, 32.0, 32.0, 2.0 ** -9]
    assert largest.tolist() == [448.0] * 6
    ulp, largest = lowbit.get_format("int8").grid(np.array([-200.0, 3.0]))
    assert ulp.tolist() == [1.0, 1.0] and largest.tolist() == [128.0, 127.0]
    ulp, largest = IntFormat(8, signed=False).grid(np.array([-1.0, 1.0]))
    assert largest.tolist() == [0.0, 255.0]  # negatives lie beyond an unsigned format's range
    ulp, _ = lowbit.get_format("e8m0").grid(np.array([3.0, 0.5]))
    assert ulp.tolist() == [2.0, 0.5]
    ulp, largest = lowbit.get_format("fp8_e5m2").grid(np.array([np.nan, np.inf]))
    assert np.isnan(ulp[0]) and np.isnan(largest[0]) and ulp[1] == 2.0 ** 13


def test_grid_keeps_the_input_kind():
    fmt = lowbit.get_format("mxfp4")
    t = torch.randn(3, 40, dtype=torch.bfloat16)
    ulp, largest = fmt.grid(t, axis=-1)
    assert isinstance(ulp, torch.Tensor) and ulp.dtype == torch.float64 and ulp.shape == t.shape
    assert lowbit.get_format("fp4_e2m1").grid(2.5) == (1.0, 6.0)


def block_scales(fmt, x, axis):
    """Each element's decoded block scale (1 for formats whose scales are
    powers of two, which are never zero), for 2-D x blocked along axis."""
    if not (isinstance(fmt, BlockFormat) and fmt.scale.man_bits > 0):
        return np.ones_like(x)
    scales = fmt.scale.decode(fmt.encode(x, axis=axis, backend="reference").scales, dtype=np.float64)
    per_element = np.repeat(scales, fmt.block_size or x.shape[axis], axis=-1)[:, : x.shape[axis]]  # (others, axis)
    return per_element if axis == 1 else per_element.T


@given(scaled_formats(), wide_range_blocks(block_size=32, max_blocks=3), st.sampled_from([0, 1]))
def test_scaled_grid_bounds_the_rounding_error(fmt, x, axis):
    """Each element of a scaled format lands on a multiple of its grid's ulp,
    within ulp/2 under round to nearest, and never beyond the grid's largest
    magnitude (elements saturate). Double-quantized formats are left out:
    their elements round on the exact first-level scales while the grid
    reads the decoded second level (QLoRA's semantics, documented)."""
    assume(getattr(fmt, "double_quant", None) is None)
    x = x.reshape(-1, 32)  # axis 1: blocks along the rows; axis 0: down the (short, padded) columns
    ulp, largest = fmt.grid(x, axis=axis, backend="reference")
    for got, expected in zip(fmt.grid(x, axis=axis, backend="cpu"), (ulp, largest)):
        np.testing.assert_array_equal(got, expected)
    q = fmt.quantize(x, axis=axis, backend="reference").astype(np.float64)
    x = x.astype(np.float64)
    # where decoding rounds element * scale to float32 (float32 scales), the
    # values are the grid's points rounded once more, to float32
    unit = 2.0 ** -24 if getattr(fmt, "rounds_to_float32", False) else 0.0
    assert np.all(np.abs(q) <= largest * (1 + unit))
    # an NVFP4 block whose scale rounds to zero is flushed: measured on the
    # smallest scale's grid (documented), its values lie further than ulp/2
    inside = (np.abs(x) <= largest) & (block_scales(fmt, x, axis) > 0)
    assert np.all(np.abs(q - x)[inside] <= ulp[inside] / 2 + unit * np.abs(q)[inside])
    if isinstance(getattr(fmt, "element", None), CodebookFormat):  # not a uniform grid: q is a table value
        values = np.float32(np.array(fmt.element.table) * block_scales(fmt, x, axis)[..., None])
        assert np.all((values == q[..., None]).any(axis=-1))
        return
    on_grid = np.round(q / ulp) * ulp
    assert np.all(np.abs(q - on_grid) <= unit * np.abs(on_grid))


def test_scaled_grid_examples():
    x = np.zeros((1, 32))
    x[0, :5] = [0.1, 1, 3, 5, 7.5]  # amax 7.5: floor rule scale 2**(2 - 2) = 1
    ulp, largest = lowbit.get_format("mxfp4").grid(x)
    assert ulp[0, :5].tolist() == [0.5, 0.5, 1.0, 2.0, 2.0] and np.all(largest == 6.0)
    ulp, largest = lowbit.get_format("mx6").grid(x[:, :16])  # e_max 2, m 4: step 2**(2 - shift - 3)
    assert ulp[0, :4].tolist() == [0.25, 0.25, 0.5, 0.5] and largest[0, :4].tolist() == [3.75, 3.75, 7.5, 7.5]
    x[0, 3] = np.nan
    assert np.all(np.isnan(lowbit.get_format("mxfp4").grid(x).ulp))
    # an NVFP4 block whose scale rounds to zero is on the grid of the smallest scale, 2**-9
    ulp, _ = lowbit.get_format("nvfp4").grid(np.full(16, 1e-4))
    assert np.all(ulp == 2.0 ** -9 * 0.5)
