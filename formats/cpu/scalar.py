"""Per-element math of the CPU kernels: numba functions inlined into every
kernel, mirroring the reference implementation operation for operation.

Every value is taken exactly as float64 (float16, bfloat16 and float32 all
fit) and rounded with the same float64 steps as the reference: scaling by
powers of two, floor, and exact comparisons, so the two agree bit for bit.
Powers of two and exponents are read and built on the float64 bits.
"""

from __future__ import annotations


import numpy as np
from numba import types
from numba.extending import overload

from ..abi import (
    BIAS, DOWN, FRAC_BITS, HAS_NEGATIVE_ZERO, HAS_ZERO, INF_MAG, INT_BITS, INT_SIGNED, IS_INT, LOWEST_EXPONENT,
    MAG_BITS, MAN_BITS, MAX_CODE, NAN_NEGATIVE, NAN_POSITIVE, NEAREST_AWAY, NEAREST_EVEN, NEGATIVE_ZERO_IS_NAN, ODD,
    OVERFLOW_INF, OVERFLOW_NAN, OVERFLOW_SATURATE, QMAX, QMIN, SIGNED, SIGN_CODE, SMALLEST_BITS, STOCHASTIC,
    STOCHASTIC_BITS, SUBNORMALS, TOWARD_ZERO, UP,
)
from ..rounding import SPLITMIX_GAMMA, SPLITMIX_MUL1, SPLITMIX_MUL2
from .compiling import jit
from .float_bits import EXPONENT_MASK, MAGNITUDE_MASK, bits_of, floor_log2_or, pow2

GAMMA, MUL1, MUL2 = np.uint64(SPLITMIX_GAMMA), np.uint64(SPLITMIX_MUL1), np.uint64(SPLITMIX_MUL2)
inline = jit(inline="always")
#: the per-family math is large: compiled once as a function of its own
#: (inlining it everywhere multiplies numba's compile time)
function = jit()


# -- stochastic rounding's uniforms ---------------------------------------------------
@inline
def counter_uniform(key, index):
    """Element ``index``'s uniform in [0, 1) in the stream ``key`` (uint64):
    draw index of SplitMix64, as :func:`lowbit.formats.rounding.counter_uniforms`."""
    z = key + np.uint64(index + 1) * GAMMA
    z = (z ^ (z >> np.uint64(30))) * MUL1
    z = (z ^ (z >> np.uint64(27))) * MUL2
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * 2.0 ** -53


# -- the rounding decision -------------------------------------------------------------
@inline
def toward_zero(mode, negative):
    return (mode == TOWARD_ZERO) | ((mode == UP) & negative) | ((mode == DOWN) & (not negative))


@inline
def is_stochastic(mode):
    """Whether the kernels' rounding mode ``mode`` draws a uniform per element
    (STOCHASTIC, or STOCHASTIC_BITS + k for sr_bits=k)."""
    return (mode == STOCHASTIC) | (mode > STOCHASTIC_BITS)


@inline
def stochastic_upper(mode, a, lo, hi, u):
    """Rounder.pick_upper's stochastic decision for ``lo <= a < hi`` and the
    53-bit uniform u: hi where u * (hi - lo) < a - lo; under sr_bits=k (mode
    STOCHASTIC_BITS + k) where round_half_even((a - lo) / (hi - lo) * 2**k)
    + r >= 2**k, r = floor(u * 2**k) being the draw's top k bits."""
    if mode == STOCHASTIC:
        return u * (hi - lo) < (a - lo)
    if hi == lo:  # the reference's division gives +-Inf or NaN here (numba's would raise)
        return a > lo
    return fraction_upper(mode, (a - lo) / (hi - lo), u)


@inline
def fraction_upper(mode, f, u):
    """The stochastic decision on the exact fraction f = (a - lo) / (hi - lo)
    in [0, 1): u < f for the 53-bit draw (STOCHASTIC), else (mode
    STOCHASTIC_BITS + k) round_half_even(f * 2**k) + floor(u * 2**k) >= 2**k."""
    if mode == STOCHASTIC:
        return u < f
    steps = pow2(mode - STOCHASTIC_BITS)
    return np.rint(f * steps) + np.floor(u * steps) >= steps


@inline
def pick_upper(mode, a, lo, hi, lo_is_odd, negative, u):
    """Rounder.pick_upper for one magnitude ``lo <= a < hi``."""
    twice, mid = 2.0 * a, lo + hi
    if mode == NEAREST_EVEN:
        return (twice > mid) | ((twice == mid) & lo_is_odd)
    if mode == NEAREST_AWAY:
        return twice >= mid
    if is_stochastic(mode):
        return stochastic_upper(mode, a, lo, hi, u)
    if mode == ODD:
        return (a > lo) & (not lo_is_odd)
    return (a > lo) & (not toward_zero(mode, negative))


# -- FloatFormat -----------------------------------------------------------------------
@function
def float_encode(x, d, mode, overflow, u):
    """FloatFormat.encode_exact of one value: (code, invalid)."""
    x_bits = bits_of(x)
    negative = x_bits < 0
    nan_in = (x_bits & MAGNITUDE_MASK) > EXPONENT_MASK
    inf_in = (x_bits & MAGNITUDE_MASK) == EXPONENT_MASK
    a = 0.0 if nan_in | inf_in else abs(x)
    m, e0 = d[MAN_BITS], d[LOWEST_EXPONENT]
    e = max(floor_log2_or(bits_of(a), e0), e0)
    step = pow2(e - m)
    sig = np.floor(a * pow2(m - e))
    lo = sig * step
    hi = lo + step
    code = ((e - e0) << m) + np.int64(sig)
    if not d[SUBNORMALS]:
        code -= 1 << m
        below = code <= 0 if d[HAS_ZERO] else code < 0
        if below:
            code = 0 if d[HAS_ZERO] else -1
            lo, hi = 0.0, np.int64(d[SMALLEST_BITS]).view(np.float64)
    upper = pick_upper(mode, a, lo, hi, (code & 1) == 1, negative, u) | (code < 0)
    mag = code + np.int64(upper)

    overflowed = mag > d[MAX_CODE]
    to_max = (overflow == OVERFLOW_SATURATE) | toward_zero(mode, negative)
    special = (overflowed & (not to_max)) | (inf_in & (overflow != OVERFLOW_SATURATE))
    if (overflowed & to_max) | (inf_in & (overflow == OVERFLOW_SATURATE)):
        mag = d[MAX_CODE]
    if (overflow == OVERFLOW_INF) & special:
        mag = d[INF_MAG]
    sign = negative if d[HAS_NEGATIVE_ZERO] else negative & (mag != 0)
    code = mag + (d[SIGN_CODE] if sign else 0)
    if d[NAN_POSITIVE] >= 0 and (nan_in | ((overflow == OVERFLOW_NAN) & special)):
        code = d[NAN_NEGATIVE] if negative else d[NAN_POSITIVE]
    invalid = nan_in & (d[NAN_POSITIVE] < 0)
    if not d[SIGNED]:
        invalid |= negative & (x != 0.0)
        if invalid:
            code = 0
    if not d[HAS_ZERO]:
        invalid |= x == 0.0
    return code, invalid


@function
def float_decode(code, d):
    """FloatFormat.decode_exact of one code."""
    m, bias = d[MAN_BITS], d[BIAS]
    mag = code & ((1 << d[MAG_BITS]) - 1)
    negative = d[SIGNED] and (code >> d[MAG_BITS]) != 0
    e_field, m_field = mag >> m, np.float64(mag & ((1 << m) - 1))
    value = ((1 << m) + m_field) * pow2(e_field - bias - m)
    if d[SUBNORMALS]:
        if e_field == 0:
            value = m_field * pow2(1 - bias - m)
    elif d[HAS_ZERO] and mag == 0:
        value = 0.0
    if mag > d[MAX_CODE]:
        value = np.inf if mag == d[INF_MAG] else np.nan
    if negative:
        value = -value
    if d[NEGATIVE_ZERO_IS_NAN] and code == d[SIGN_CODE]:
        value = np.nan
    return value


# -- IntFormat -------------------------------------------------------------------------
@function
def int_encode(x, d, mode, u):
    """IntFormat.encode_exact of one value: (code, invalid)."""
    nan_in = x != x
    negative = bits_of(x) < 0
    a = 0.0 if nan_in else min(abs(x), 2.0 ** 100)  # beyond every IntFormat's max, 2**95
    if a > 0.0:
        a = max(a, 2.0 ** -900)
    a = a * pow2(d[FRAC_BITS])
    lo = np.floor(a)
    half = lo * 0.5
    upper = pick_upper(mode, a, lo, lo + 1.0, half != np.floor(half), negative, u)
    q = lo + (1.0 if upper else 0.0)
    q = -q if negative else q
    q = min(max(q, np.float64(d[QMIN])), np.float64(d[QMAX]))
    code = 0 if nan_in else np.int64(q) & ((1 << d[INT_BITS]) - 1)
    return code, nan_in


@function
def int_decode(code, d):
    bits = d[INT_BITS]
    q = code - ((code >> (bits - 1)) << bits) if d[INT_SIGNED] else code
    return np.float64(q) * pow2(-d[FRAC_BITS])


# -- either family ---------------------------------------------------------------------
@function
def encode_element(x, d, mode, overflow, u):
    """(code, invalid) of one exact value in the element format ``d``."""
    if d[IS_INT]:
        return int_encode(x, d, mode, u)
    return float_encode(x, d, mode, overflow, u)


@function
def round_element(x, d, mode, overflow, u):
    """What x becomes: decode_element of encode_element's code, NaN where
    the format cannot represent x (as ElementFormat.quantize)."""
    code, invalid = encode_element(x, d, mode, overflow, u)
    return np.nan if invalid else decode_element(code, d)


@function
def decode_element(code, d):
    if d[IS_INT]:
        return int_decode(code, d)
    return float_decode(code, d)


# -- input and output dtypes -----------------------------------------------------------
# float16 and bfloat16 data travel as int16 bit patterns (numba has neither
# type); ``half`` says which: HALF_FLOAT16 or HALF_BFLOAT16.
HALF_FLOAT16, HALF_BFLOAT16 = 0, 1


def load(value, half):
    """An input element as its exact float64 value."""


@overload(load, inline="always")
def _load(value, half):
    if isinstance(value, types.Float):
        return lambda value, half: np.float64(value)

    def impl(value, half):
        if half == HALF_FLOAT16:
            return float16_value(value)
        return bfloat16_value(value)
    return impl


def store(value, out, half):
    """A float64 result in out's dtype and whether that conversion is exact
    (NaN counts as exact)."""


@overload(store, inline="always")
def _store(value, out, half):
    if out.dtype == types.float64:
        return lambda value, out, half: (value, True)
    if out.dtype == types.float32:
        def impl32(value, out, half):
            narrow = np.float32(value)
            return narrow, (np.float64(narrow) == value) | (value != value)
        return impl32

    def impl16(value, out, half):
        if half == HALF_FLOAT16:
            code = float16_code(value)
            back = float16_value(code)
        else:
            code = bfloat16_code(value)
            back = bfloat16_value(code)
        return np.int16(code), (back == value) | (value != value)
    return impl16


@function
def float16_value(code):
    bits = np.int64(code) & 0xFFFF
    e_field, m_field = (bits >> 10) & 0x1F, np.float64(bits & 0x3FF)
    value = (1024.0 + m_field) * pow2(e_field - 25) if e_field != 0 else m_field * 2.0 ** -24
    if e_field == 0x1F:
        value = np.inf if m_field == 0.0 else np.nan
    return -value if bits >> 15 else value


@inline
def bfloat16_value(code):
    return np.float64(np.int32((np.int64(code) & 0xFFFF) << 16).view(np.float32))


@function
def float16_code(value):
    """The float16 bits of value when it is a float16 number (else some code
    that decodes to a different value); NaN gives the quiet NaN 0x7E00 with its sign."""
    a = abs(value)
    e = max(floor_log2_or(bits_of(a), -15), -15)
    e = min(e, 16)
    mantissa = np.int64(np.floor(a * pow2(10 - max(e, -14)))) if a <= 65536.0 else 0
    code = mantissa if e < -14 else ((e + 15) << 10) + mantissa - 1024
    if a > 65504.0:
        code = 0x7C00 if a == np.inf else 0x7BFF
    if value != value:
        code = 0x7E00
    return code | (0x8000 if bits_of(value) < 0 else 0)


@inline
def bfloat16_code(value):
    """The bfloat16 bits of value when it is a bfloat16 number (else some
    code that decodes to a different value); NaN gives 0x7FC0 with its sign."""
    if value != value:
        return 0xFFC0 if bits_of(value) < 0 else 0x7FC0
    return (np.int64(np.float32(value).view(np.int32)) >> 16) & 0xFFFF
