"""Float32 fast path of BlockFormats whose scale has a mantissa (NVFP4's
E4M3 scale = amax / 6): amax / max_elem in float64 as the reference forms
it; x times the scale's float32 inverse rounded as MX elements round
(:func:`.fast_mx.mx_float_element`), and the rows with a quotient near a
rounding midpoint redone in float64 as the reference divides. Agrees with
the reference bit for bit (tests/test_backends.py checks inputs next to
every midpoint).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from ..abi import BLOCK_DIVISOR, BLOCK_ELEMENT_BITS, BLOCK_HAS_TENSOR_SCALE, BLOCK_SCALE_NAN, block_params
from .bits import pack_row
from .compiling import jit
from .fast_mx import FLOOR_BITS, SHIFT_BITS, float_element_fields, mx_float_code, mx_float_element
from .fast32 import (
    EXPONENT32, LARGEST, MAGIC, MAN, ROWS_PER_TASK, SMALLEST_NORMAL, as_float32, finite_code, float_params, to_output,
)
from .reductions import largest_magnitude_bits

inline = jit(inline="always")


# Fields of scaled_block_params' tuple: float_params of the element and of
# the scale, nearest64_params of both, the block parameters, and the element
# tuple of fast_mx (the element rounded in float32 lanes)
ELEMENT32, SCALE32, ELEMENT64, SCALE64, BLOCK, MX_ELEMENT = range(6)


def nearest64_params(fmt) -> tuple:
    """float_params' rounding constants (its first four fields) for rounding float64 values."""
    return (fmt.man_bits, 2.0 ** fmt.emin, 2.0 ** (fmt.emin - fmt.man_bits + 52), float(fmt.max))


@functools.lru_cache(maxsize=256)
def scaled_block_params(fmt, tensor_scale: float | None) -> tuple | None:
    """Parameters of the fast path for a BlockFormat whose scale has a
    mantissa (NVFP4): element and scale float formats that float_params
    serves, whose every product (element times scale) is a float32 number,
    with an element that :func:`float_element_fields` serves; else None."""
    element, scale = fmt.element, fmt.scale
    if scale.man_bits == 0 or not scale.signed:
        return None
    element_fp, scale_fp = float_params(element, "saturate", False), float_params(scale, "saturate", False)
    ep = float_element_fields(element)
    if (element_fp is None or scale_fp is None or ep is None or element.man_bits + scale.man_bits + 2 > 24
            or element.max * scale.max > float(np.finfo(np.float32).max)
            or element.min_subnormal * scale.min_subnormal < float(np.finfo(np.float32).tiny)):
        return None
    return (element_fp, scale_fp, nearest64_params(fmt.element), nearest64_params(fmt.scale),
            block_params(fmt, "amax", tensor_scale), ep)


@inline
def nearest64(a, p):
    """Non-negative finite float64 a rounded to nearest even in the float
    format of p (nearest64_params), saturating at its largest value: the
    float_nearest method on float64 bits."""
    m, smallest_normal, magic, largest = p[MAN], p[SMALLEST_NORMAL], p[MAGIC], p[LARGEST]
    bits = np.int64(np.float64(a).view(np.int64))
    s = 52 - m
    normal = (bits + ((1 << (s - 1)) - 1) + ((bits >> s) & 1)) & ~((1 << s) - 1)
    r = (a + magic) - magic if a < smallest_normal else np.int64(normal).view(np.float64)
    return min(r, largest)


@inline
def amax_scales(x, g, q, tops, values, inverses, block):
    """For task g's rows: tops[k], the largest magnitude bits of row
    first + k; values[k], its block scale: amax / (tensor scale * max
    element) rounded to nearest even in the scale format, saturating; and
    inverses[k], 1 / (scale * tensor scale) as a float32 when the row can
    take the float32 lanes of :func:`amax_fast_row` (a full scale in
    2**-100..2**100 and every scaled value below twice the largest
    element, where mx_float_element still rounds), else 0.
    Two loops, so that the scales' float64 divisions and roundings run as a
    batch instead of one dependent chain per row (40% faster)."""
    element64, scale64, bp = q[ELEMENT64], q[SCALE64], q[BLOCK]
    first_row, end_row = g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0])
    for r in range(first_row, end_row):
        tops[r - first_row] = largest_magnitude_bits(x[r], block)
    for k in range(end_row - first_row):
        amax = np.float64(np.int32(tops[k]).view(np.float32))
        values[k] = nearest64(amax / (bp[BLOCK_DIVISOR] * element64[LARGEST]), scale64)
        full_scale = values[k] * bp[BLOCK_DIVISOR]  # exact: at most 25 + 24 bits
        inverse = np.float32(1.0 / full_scale) if (full_scale >= 2.0 ** -100) & (full_scale <= 2.0 ** 100) else np.float32(0.0)
        in_lanes = np.float32(amax) * inverse < np.float32(2.0 * element64[LARGEST])
        inverses[k] = inverse if in_lanes & (tops[k] < EXPONENT32) else np.float32(0.0)
    return first_row, end_row


@inline
def near_rounding_boundary(v, ep):
    """Whether finite float32 v lies within 2**-22 |v| of a boundary
    between two neighbours on the float element's grid (c as in
    mx_float_element: (|v| + c) - c is |v| rounded, and c * 2**-24 half
    the grid's step at v)."""
    a = abs(np.float32(v))
    exponent = np.int32(max(np.int32(np.float32(a).view(np.int32) & EXPONENT32), ep[FLOOR_BITS]))
    c = np.int32(exponent + ep[SHIFT_BITS]).view(np.float32)
    half_step = np.int32(exponent + ep[SHIFT_BITS] - (24 << 23)).view(np.float32)
    return half_step - abs(a - ((a + c) - c)) <= a * np.float32(2.0 ** -22)


@inline
def amax_element(v, full_scale, q):
    """(|element| rounded, negative) of one value of a block scaled by
    full_scale (the block scale times the tensor scale), in float64 as the
    reference computes it."""
    a = abs(np.float64(v)) / (full_scale if full_scale > 0.0 else 1.0)
    negative = (np.float32(v).view(np.int32) < 0) & (full_scale > 0.0)
    return (nearest64(a, q[ELEMENT64]) if full_scale > 0.0 else 0.0), negative


@inline
def amax_code(v, full_scale, q):
    """The element code of one value of a block scaled by full_scale."""
    magnitude, negative = amax_element(v, full_scale, q)
    return finite_code(np.float32(magnitude), negative, q[ELEMENT32])


@inline
def amax_value(v, scale, q, out):
    """(value in out's dtype, exact) of element v of a block with the float64 scale ``scale``."""
    bp = q[BLOCK]
    magnitude, negative = amax_element(v, scale * bp[BLOCK_DIVISOR], q)
    value = np.float32((-magnitude if negative else magnitude) * scale)  # exact (scaled_block_params)
    if bp[BLOCK_HAS_TENSOR_SCALE]:
        value = value * np.float32(bp[BLOCK_DIVISOR])
    return to_output(value, out)


@inline
def amax_fast_row(x, out, r, scale, inverse, q, block):
    """Row r quantized in float32 lanes: v * inverse (the float32 inverse
    of the full scale: within 2**-23 of the exact quotient) rounded as MX
    elements round; (whether out's dtype held every result, whether some
    quotient lay near a rounding boundary, where the row must be redone
    exactly)."""
    bp, ep = q[BLOCK], q[MX_ELEMENT]
    scale32 = np.float32(scale)
    lost, near = False, False
    for j in range(block):
        quotient = as_float32(x[r, j]) * inverse
        near |= near_rounding_boundary(quotient, ep)
        value = mx_float_element(quotient, ep) * scale32  # exact (scaled_block_params)
        if bp[BLOCK_HAS_TENSOR_SCALE]:
            value = value * np.float32(bp[BLOCK_DIVISOR])
        out[r, j], exact = to_output(value, out)
        lost |= not exact
    return lost, near


@inline
def amax_quantize_rows(x, out, g, q, block):
    """Task g's rows: in float32 lanes (amax_fast_row) where the row allows,
    then in a second loop (which keeps the first one lean) the other rows
    and those with a quotient near a rounding boundary in float64, as the
    reference computes them; NaN for NaN blocks."""
    tops, values = np.empty(ROWS_PER_TASK, np.int32), np.empty(ROWS_PER_TASK, np.float64)
    inverses, redo = np.empty(ROWS_PER_TASK, np.float32), np.empty(ROWS_PER_TASK, np.bool_)
    first_row, end_row = amax_scales(x, g, q, tops, values, inverses, block)
    lost, any_redo = False, False
    for k in range(end_row - first_row):
        row_lost, redo[k] = False, True
        if inverses[k] > 0:
            row_lost, redo[k] = amax_fast_row(x, out, first_row + k, values[k], inverses[k], q, block)
        lost |= row_lost & (not redo[k])
        any_redo |= redo[k]
    if any_redo:
        for k in range(end_row - first_row):
            if redo[k]:
                for j in range(block):
                    if tops[k] >= EXPONENT32:
                        out[first_row + k, j] = to_output(np.float32(np.nan), out)[0]
                    else:
                        out[first_row + k, j], exact = amax_value(as_float32(x[first_row + k, j]), values[k], q, out)
                        lost |= not exact
    return lost


@jit(parallel=True)
def quantize_amax_blocks(x, out, q, inexact):
    """NVFP4-style quantize of float32 blocks (rows of x)."""
    element_fp, scale_fp, element64, scale64, bp, ep = q  # a parallel loop takes flat tuples only
    for g in prange(inexact.size):
        q = (element_fp, scale_fp, element64, scale64, bp, ep)
        if x.shape[1] == 16:
            inexact[g] = amax_quantize_rows(x, out, g, q, 16)
        else:
            inexact[g] = amax_quantize_rows(x, out, g, q, x.shape[1])


@inline
def amax_encode_rows(x, elements, scales, g, q, block):
    """Task g's rows as amax_quantize_rows computes them, as codes."""
    bp, ep = q[BLOCK], q[MX_ELEMENT]
    tops, values = np.empty(ROWS_PER_TASK, np.int32), np.empty(ROWS_PER_TASK, np.float64)
    inverses = np.empty(ROWS_PER_TASK, np.float32)
    first_row, end_row = amax_scales(x, g, q, tops, values, inverses, block)
    codes = np.empty(block, np.int32)
    for r in range(first_row, end_row):
        scale, inverse, bad = values[r - first_row], inverses[r - first_row], tops[r - first_row] >= EXPONENT32
        scales[r] = bp[BLOCK_SCALE_NAN] if bad else finite_code(np.float32(scale), False, q[SCALE32])
        near = True
        if inverse > 0:
            near = False
            for j in range(block):  # (packing codes as they are computed, as mx_encode_rows does, is 4x slower here)
                quotient = as_float32(x[r, j]) * inverse
                near |= near_rounding_boundary(quotient, ep)
                codes[j] = mx_float_code(quotient, ep)
        if near:
            for j in range(block):
                codes[j] = 0 if bad else amax_code(as_float32(x[r, j]), scale * bp[BLOCK_DIVISOR], q)
        pack_row(elements, r, codes, block, bp[BLOCK_ELEMENT_BITS])


@jit(parallel=True)
def encode_amax_blocks(x, elements, scales, q):
    """Packed element codes (``elements`` zeroed) and scale codes of
    NVFP4-style float32 blocks (rows of x)."""
    element_fp, scale_fp, element64, scale64, bp, ep = q  # a parallel loop takes flat tuples only
    for g in prange((x.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        q = (element_fp, scale_fp, element64, scale64, bp, ep)
        if x.shape[1] == 16:
            amax_encode_rows(x, elements, scales, g, q, 16)
        else:
            amax_encode_rows(x, elements, scales, g, q, x.shape[1])
