"""Hypothesis strategies and assertions for testing casts against lowbit.

Use them to test lowbit, or to test your own cast with lowbit as the oracle::

    from hypothesis import given
    from lowbit.testing import element_formats, rounding_boundaries
    ...

Strategies: :func:`element_formats`, :func:`scaled_formats`, :func:`formats`,
:func:`representable_values`, :func:`rounding_boundaries`,
:func:`wide_range_blocks`. Assertion: :func:`assert_correctly_rounded`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from lowbit.formats import (
    CATALOGUE, E8M0, BlockFormat, ElementFormat, FloatFormat, IntFormat, MicroexponentFormat, ScaledFormat,
)


def _valid(build):
    """Hypothesis: keep only parameter draws the constructor accepts."""
    def attempt(kwargs):
        try:
            return build(**kwargs)
        except ValueError:
            return None
    return attempt


@st.composite
def _float_formats(draw: Any, max_bits: int = 12) -> FloatFormat:
    exp_bits = draw(st.integers(1, 6))
    man_bits = draw(st.integers(0, max(0, max_bits - 1 - exp_bits)))
    specials = draw(st.sampled_from(["ieee", "fn", "fnuz", "p3109", "none"]))
    default_bias = (1 << (exp_bits - 1)) - 1
    kwargs = dict(exp_bits=exp_bits, man_bits=man_bits, specials=specials,
                  bias=draw(st.integers(default_bias - 2, default_bias + 2)),
                  signed=draw(st.booleans()) if specials != "fnuz" else True,
                  subnormals=draw(st.booleans()))
    fmt = _valid(FloatFormat)(kwargs)
    if fmt is None:
        return draw(st.sampled_from([CATALOGUE["fp8_e4m3"], CATALOGUE["fp6_e2m3"], CATALOGUE["p3109_8p3"]]))
    return fmt


@st.composite
def _int_formats(draw: Any, max_bits: int = 12) -> IntFormat:
    signed = draw(st.booleans())
    return IntFormat(draw(st.integers(2, max_bits)), signed=signed,
                     narrow=signed and draw(st.booleans()), frac_bits=draw(st.integers(-4, 8)))


def element_formats(max_bits: int = 12) -> st.SearchStrategy[ElementFormat]:
    """Float and integer formats of at most ``max_bits`` bits: catalogued ones
    and randomly built ones (any exponent/mantissa split, bias, specials,
    signedness, with or without subnormals; fixed point)."""
    catalogued = [f for f in CATALOGUE.values() if isinstance(f, ElementFormat) and f.nbits <= max_bits]
    return st.one_of(st.sampled_from(catalogued), _float_formats(max_bits), _int_formats(max_bits))


def _symmetric_element(fmt: ElementFormat) -> bool:
    """MX elements are sign-symmetric (signed floats, narrow integers)."""
    values = fmt.values()
    return fmt.max >= 1 and bool(np.array_equal(values, -values[::-1]))


@st.composite
def _block_formats(draw: Any) -> BlockFormat:
    element = draw(element_formats(max_bits=8).filter(_symmetric_element))
    return BlockFormat(element, draw(st.sampled_from([1, 2, 4, 8, 16, 32])), scale=E8M0)


@st.composite
def _microexponent_formats(draw: Any) -> MicroexponentFormat:
    block, sub = draw(st.sampled_from([(16, 2), (16, 1), (8, 4), (4, 2), (32, 8)]))
    return MicroexponentFormat(draw(st.integers(1, 10)), block, sub, micro_bits=draw(st.integers(0, 2)))


def scaled_formats() -> st.SearchStrategy[ScaledFormat]:
    """Formats that block one axis: block formats (catalogued ones: MX,
    NVFP4, integer groups with or without zero points, rowwise; and random
    element/block size with E8M0 scales) and microexponent formats (random
    m, k1, k2, d2). Tiled formats (which need two axes) are left out."""
    catalogued = [f for f in CATALOGUE.values() if isinstance(f, ScaledFormat)
                  and getattr(f, "block_shape", None) is None]
    return st.one_of(st.sampled_from(catalogued), _block_formats(), _microexponent_formats())


def formats() -> st.SearchStrategy[Any]:
    """Formats of every family."""
    return st.one_of(element_formats(), scaled_formats())


def representable_values(fmt: ElementFormat) -> st.SearchStrategy[float]:
    """Finite values of an element format (formats up to 16 bits)."""
    return st.sampled_from(fmt.values().tolist())


def rounding_boundaries(fmt: ElementFormat) -> st.SearchStrategy[float]:
    """Inputs where rounding decisions flip: values, midpoints between
    neighbours, the float64 numbers right next to both, and points just past
    the largest value."""
    values = fmt.values()
    points = np.concatenate([values, (values[:-1] + values[1:]) / 2, [fmt.max * 1.0625, fmt.max * 2]])
    return st.sampled_from(points.tolist()).flatmap(
        lambda p: st.sampled_from([p, float(np.nextafter(p, np.inf)), float(np.nextafter(p, -np.inf)), -p]))


@st.composite
def wide_range_blocks(draw: Any, block_size: int = 32, max_blocks: int = 4, exponent_range: int = 40) -> np.ndarray:
    """float32 arrays of whole blocks whose elements span a wide exponent
    range within each block (zeros and exact powers of two included)."""
    nblocks = draw(st.integers(1, max_blocks))
    base = draw(st.integers(-exponent_range, exponent_range))
    n = nblocks * block_size
    exponents = draw(st.lists(st.integers(base - 24, base), min_size=n, max_size=n))
    mantissas = draw(st.lists(st.sampled_from([0.0, 1.0, 1.5, 1.75, 1.0625, 1.9999]) | st.floats(1, 2, exclude_max=True), min_size=n, max_size=n))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n))
    return (np.array(signs) * np.array(mantissas) * np.exp2(np.array(exponents, dtype=np.float64))).astype(np.float32)


def assert_correctly_rounded(fmt: ElementFormat, x: Any, y: Any, rounding: str = "nearest_even") -> None:
    """Assert that ``y`` is ``x`` correctly rounded into ``fmt`` (an element
    format of at most 16 bits) under ``rounding``.

    Within the format's range, y must be one of x's two neighbours in
    ``fmt.values()``, and the one the mode picks (ties to the even code for
    nearest_even, away from zero for nearest_away; either for stochastic).
    Past the range, y must be +-max, +-Inf or NaN. NaN must stay NaN.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise AssertionError(f"x and y differ in size: {x.size} vs {y.size}")
    values = fmt.values()
    for xi, yi in zip(x, y):
        if np.isnan(xi):
            assert np.isnan(yi), f"NaN became {yi}"
            continue
        if not values[0] <= xi <= values[-1]:
            assert np.isnan(yi) or abs(yi) in (np.inf, fmt.max) or yi in (values[0], values[-1]), f"{xi} out of range became {yi}"
            continue
        i = np.searchsorted(values, xi)
        lo, hi = (xi, xi) if values[i] == xi else (values[i - 1], values[i])
        assert yi in (lo, hi), f"{xi} became {yi}, not a neighbour ({lo}, {hi})"
        if lo == hi or rounding == "stochastic":
            continue
        toward_zero = lo if xi > 0 else hi
        expected = {
            "toward_zero": toward_zero, "up": hi, "down": lo,
        }.get(rounding)
        if expected is None:
            d_lo, d_hi = xi - lo, hi - xi
            if d_lo != d_hi:
                expected = lo if d_lo < d_hi else hi
            elif rounding == "nearest_away":
                expected = hi if xi > 0 else lo
            else:
                lo_code = int(np.asarray(fmt.encode(np.float64(lo))))
                expected = lo if lo_code % 2 == 0 else hi
        assert yi == expected, f"{xi} became {yi}; {rounding} gives {expected}"
