"""Fast path of BlockFormats with integer elements and a scale with a
mantissa (``int4_g128``, ``int4_g128_asym``, ``int8_rowwise``): float32 or
bfloat16 rows of whole blocks, nearest even, no flushing. Each block's
scale (and zero point) comes from :func:`.block_kernels.candidate_scale`,
the general kernels' own; each element is x times the float32 inverse of
the scale, rounded half to even in float32 lanes, and the elements whose
quotient lies near a half-integer are redone as x / s divided in float64
as the reference divides (``np.rint``), so the path agrees with the
reference bit for bit without the general kernels' per-element format
decoding.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..abi import (
    BLOCK_ELEMENT_BITS, BLOCK_SCALE_NAN, BLOCK_ZERO_POINT, FRAC_BITS, QMAX, QMIN,
    block_params, element_descriptor,
)
from ..float_format import FloatFormat
from ..int_format import IntFormat
from .bits import pack_row, put_code
from .block_kernels import candidate_scale
from .compiling import jit
from .fast32 import EXPONENT32, MAGNITUDE32, ROWS_PER_TASK, as_float32, to_output
from .reductions import largest_magnitude_bits
from .scalar import pow2

inline = jit(inline="always")


def int_block_params(fmt, rule: str, block: int) -> tuple | None:
    """(element descriptor, scale descriptor, block parameters) when the
    fast path serves ``fmt`` under ``rule`` in blocks of ``block``: integer
    elements, a FloatFormat scale with a mantissa, the amax or minmax rule,
    no tensor scale or second level; else None."""
    if not (isinstance(fmt.element, IntFormat) and isinstance(fmt.scale, FloatFormat) and fmt.scale.man_bits > 0
            and rule in ("amax", "minmax") and not fmt.tensor_scale and fmt.double_quant is None):
        return None
    return element_descriptor(fmt.element), element_descriptor(fmt.scale), block_params(fmt, rule, None, block)


@inline
def ordered_key(v):
    """float32 v's bits as an int32 whose order is the values' order (for
    non-NaN v; -0.0 just below +0.0), so that a block's minimum and maximum
    are integer reductions, which vectorize (float ones do not)."""
    bits = np.int32(np.float32(v).view(np.int32))
    return bits ^ ((bits >> 31) & MAGNITUDE32)


@inline
def key_value(key):
    """The float64 value of an ordered_key, -0.0 read as 0.0."""
    return np.float64(np.int32(key ^ ((key >> 31) & MAGNITUDE32)).view(np.float32)) + 0.0


@inline
def block_bounds(x, r, block, zero_point):
    """(amax, lo = min(min x, 0), hi = max(max x, 0), NaN block) of row r,
    from the elements' bits; lo and hi only with a zero point (else 0)."""
    top = largest_magnitude_bits(x[r], block)
    lo, hi = np.int32(0), np.int32(0)
    if zero_point:
        for j in range(block):
            key = ordered_key(as_float32(x[r, j]))
            lo, hi = min(lo, key), max(hi, key)
    return np.float64(np.int32(top).view(np.float32)), key_value(lo), key_value(hi), top >= EXPONENT32


@inline
def integer(v, scale, zero, ed, bp):
    """The element's integer: round_half_even(v / scale) (times 2**frac_bits)
    clamped to the element's range, or, with a zero point, plus the zero
    point clamped to [0, 2**bits - 1]; 0.0 where the scale is zero."""
    if not scale > 0.0:
        return 0.0
    q = np.rint(v / scale * pow2(ed[FRAC_BITS]))
    if bp[BLOCK_ZERO_POINT]:
        return min(max(q + zero, 0.0), np.float64((1 << bp[BLOCK_ELEMENT_BITS]) - 1))
    return min(max(q, np.float64(ed[QMIN])), np.float64(ed[QMAX])) + 0.0  # + 0.0: no negative zero


@inline
def value_of(q, scale, zero, ed, bp):
    """(q - zero) * scale (exact in float64), as float32 (once rounded where the format says so)."""
    value = (q - zero) * pow2(-ed[FRAC_BITS]) * scale if bp[BLOCK_ZERO_POINT] else q * pow2(-ed[FRAC_BITS]) * scale
    return np.float32(value)


@inline
def row_lanes(amax, scale, bad, ed):
    """(float32 2**frac_bits / scale, or 0 where the row must be computed in
    float64: a NaN row, a zero scale, or a scale outside 2**-100..2**100 or
    so small that a quotient passes 2**22) and float32 2**-frac_bits."""
    up = pow2(ed[FRAC_BITS])
    fits = (scale >= 2.0 ** -100) & (scale <= 2.0 ** 100) & (amax * up < scale * 2.0 ** 22) & (not bad)
    return (np.float32(up / scale) if fits else np.float32(0.0)), np.float32(pow2(-ed[FRAC_BITS]))


@inline
def lane_integer(v, inverse, zero32, ed, bp):
    """(integer of float32 v as :func:`integer` computes it, from the float32
    quotient v * inverse (within 2**-23 of the exact one) rounded half to
    even by adding and subtracting 2**23, as a float32; whether that
    quotient lay within 2**-22 of its magnitude of a half-integer, where
    only float64 decides)."""
    t = np.float32(v) * inverse
    a = abs(t)
    rounded = (a + np.float32(2.0 ** 23)) - np.float32(2.0 ** 23)
    near = abs(abs(a - rounded) - np.float32(0.5)) <= a * np.float32(2.0 ** -22)
    q = -rounded if t < 0 else rounded
    if bp[BLOCK_ZERO_POINT]:
        q = min(max(q + zero32, np.float32(0.0)), np.float32((1 << bp[BLOCK_ELEMENT_BITS]) - 1))
    else:
        q = min(max(q, np.float32(ed[QMIN])), np.float32(ed[QMAX])) + np.float32(0.0)
    return q, near


@inline
def quantize_rows(x, out, g, ed, sd, bp, block):
    """Task g's rows: each row's scale (and zero point), then its elements in
    float32 lanes (lane_integer; the value (q - zero) * 2**-frac_bits *
    scale is one float32 rounding of the exact product, as the reference
    rounds it), and in a second loop the elements near a half-integer, or
    every element of a row the lanes cannot take, in float64 as the
    reference computes them; NaN rows."""
    lost = False
    for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0])):
        amax, lo, hi, bad = block_bounds(x, r, block, bp[BLOCK_ZERO_POINT])
        _, scale, zero = candidate_scale(amax, lo, hi, 0, sd, bp)
        inverse, step = row_lanes(amax, scale, bad, ed)
        zero32, scale32 = np.float32(zero), np.float32(scale)
        near = inverse == 0
        if not near:
            for j in range(block):
                q, undecided = lane_integer(as_float32(x[r, j]), inverse, zero32, ed, bp)
                out[r, j], exact = to_output(((q - zero32) * step) * scale32, out)
                near |= undecided
                lost |= (not exact) & (not undecided)
        if near:
            for j in range(block):
                v = as_float32(x[r, j])
                if bad:
                    out[r, j], _ = to_output(np.float32(np.nan), out)
                elif (inverse == 0) or lane_integer(v, inverse, zero32, ed, bp)[1]:
                    out[r, j], exact = to_output(value_of(integer(np.float64(v), scale, zero, ed, bp), scale, zero,
                                                          ed, bp), out)
                    lost |= not exact
    return lost


@jit(parallel=True)
def quantize_int_blocks(x, out, ed, sd, bp, inexact):
    """Integer-element blocks (rows of x) quantized into out; inexact[task]
    says whether out's dtype failed to hold a result exactly."""
    for g in prange(inexact.size):
        inexact[g] = quantize_rows(x, out, g, ed, sd, bp, x.shape[1])


@inline
def encode_rows(x, elements, scales, zeros, g, ed, sd, bp, block):
    """Task g's rows as quantize_rows computes them, as codes."""
    codes = np.empty(block, np.int32)
    bits = bp[BLOCK_ELEMENT_BITS]
    mask = (1 << bits) - 1
    for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0])):
        amax, lo, hi, bad = block_bounds(x, r, block, bp[BLOCK_ZERO_POINT])
        code, scale, zero = candidate_scale(amax, lo, hi, 0, sd, bp)
        scales[r] = bp[BLOCK_SCALE_NAN] if bad else code
        if bp[BLOCK_ZERO_POINT] and not bad:
            put_code(zeros, r * bits, np.int64(zero), bits)
        inverse, _ = row_lanes(amax, scale, bad, ed)
        zero32 = np.float32(zero)
        near = inverse == 0
        if not near:
            for j in range(block):
                q, undecided = lane_integer(as_float32(x[r, j]), inverse, zero32, ed, bp)
                codes[j] = np.int32(q) & mask
                near |= undecided
        if near:
            for j in range(block):
                v = as_float32(x[r, j])
                if bad:
                    codes[j] = 0
                elif (inverse == 0) or lane_integer(v, inverse, zero32, ed, bp)[1]:
                    codes[j] = np.int32(np.int64(integer(np.float64(v), scale, zero, ed, bp)) & mask)
        pack_row(elements, r, codes, block, bits)


@jit(parallel=True)
def encode_int_blocks(x, elements, scales, zeros, ed, sd, bp):
    """Packed element codes (``elements`` zeroed), scale codes and packed
    zero points (``zeros`` zeroed) of integer-element blocks (rows of x)."""
    for g in prange((x.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        encode_rows(x, elements, scales, zeros, g, ed, sd, bp, x.shape[1])
