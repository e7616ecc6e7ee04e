"""Float32 fast path of MX blocks (power-of-two E8M0 scales): contiguous
float32 or bfloat16 data blocked along its last axis in whole blocks,
rounded to nearest even (the default); the blocks are the rows of a
(blocks, block_size) view.

The block's largest magnitude comes from one vector reduction
(:mod:`.reductions`); x / 2**s is an exact float32 product, rounded by
adding and subtracting a power of two whose float32 step is the element's
(:func:`mx_float_element`), and codes are read off the same sum. Agrees
with the reference bit for bit (tests/test_backends.py checks every
rounding boundary and every code).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from ..abi import (
    BLOCK_ELEMENT_BITS, BLOCK_ELEMENT_EMAX, BLOCK_RULE, BLOCK_SCALE_EMAX, BLOCK_SCALE_EMIN, BLOCK_SCALE_NAN,
    RULE_FLOOR, block_params,
)
from ..block_format import E8M0
from ..float_format import FloatFormat
from ..int_format import IntFormat
from .bits import pack_row
from .block_kernels import scale_exponent
from .compiling import jit
from .fast32 import (
    EXPONENT32, MAGNITUDE32, ROWS_PER_TASK, SIGN32, as_float32, float_params, shift_right32, to_output,
)
from .reductions import largest_magnitude_bits
from .scalar import pow2

inline = jit(inline="always")

# Fields of mx_params' element tuple. Float elements round by adding and
# subtracting a power of two (mx_float_element); integer elements by adding
# and subtracting 2**23 to the scaled value in units of their step.
(FLOOR_BITS, SHIFT_BITS, LOWEST, LARGEST, UP, DOWN, MAX_CODE, CODE_SHIFT, SIGN_BIT_CODE, CODE_MASK) = range(10)


@functools.lru_cache(maxsize=256)
def float_element_fields(element) -> tuple | None:
    """The element tuple of mx_float_element and mx_float_code for a float
    element format, or None where they do not serve it. They round in
    32-bit lanes: the format must be one that :func:`.fast32.float_params`
    serves, with quantum >= 2**-22 (every element times every MX scale is
    then a float32 number or overflows) and emax + 25 - man_bits <= 127
    (every scaled value lies below 2**(emax + 2) and rounds at a finite
    power of two)."""
    if not (isinstance(element, FloatFormat) and float_params(element, "saturate", False) is not None
            and element.min_subnormal >= 2.0 ** -22 and element.emax + 25 - element.man_bits <= 127):
        return None
    m, emin = element.man_bits, element.emin
    f32, i32 = np.float32, np.int32
    return (i32((127 + emin) << 23), i32((23 - m) << 23), f32(-element.max), f32(element.max), f32(1.0), f32(1.0),
            i32(element.max_code), i32(23 - m), i32(element.sign_code), i32(0))


@functools.lru_cache(maxsize=256)
def mx_params(fmt, rule: str) -> tuple | None:
    """(element tuple, block params, integer element) when an MX format's
    blocks can take the fast path, else None: an E8M0 scale and a float
    element that :func:`float_element_fields` serves, or an integer of at
    most 22 bits with quantum >= 2**-22."""
    element = fmt.element
    if fmt.scale != E8M0 or rule == "mse":  # mse tries several exponents: the general kernels
        return None
    if isinstance(element, IntFormat) and element.bits <= 22 and element.min_subnormal >= 2.0 ** -22:
        f32, i32 = np.float32, np.int32
        fields = (i32(0), i32(0), f32(element.qmin), f32(element.qmax), f32(2.0 ** element.frac_bits),
                  f32(2.0 ** -element.frac_bits), i32(0), i32(0), i32(0), i32((1 << element.bits) - 1))
    else:
        fields = float_element_fields(element)
        if fields is None:
            return None
    return fields, block_params(fmt, rule, None), isinstance(element, IntFormat)


@inline
def block_power(top, bp):
    """(scale exponent, NaN block) of a float32 block whose largest
    magnitude has the bits ``top``; a NaN block's scale is NaN whatever
    its finite amax, so that amax is not needed."""
    bad = top >= EXPONENT32
    if bp[BLOCK_RULE] == RULE_FLOOR:  # 2**(floor(log2 amax) - emax_elem); subnormal amax clamps to the lowest scale
        exponent = (top >> 23) - 127 - bp[BLOCK_ELEMENT_EMAX]
    else:
        amax = np.float64(np.int32(top).view(np.float32))
        exponent = scale_exponent(amax, bp[BLOCK_RULE], bp) if top > 0 else bp[BLOCK_SCALE_EMIN]
    return min(max(exponent, bp[BLOCK_SCALE_EMIN]), bp[BLOCK_SCALE_EMAX]), bad


@inline
def mx_float_element(v, ep):
    """Finite float32 v rounded to nearest even in the float element
    format and saturated, signed (a zero keeps v's sign): |v| rounded
    (:func:`magnitude_element`) with v's sign."""
    sign = np.int32(np.float32(v).view(np.int32) & SIGN32)
    r = magnitude_element(abs(np.float32(v)), ep)
    return np.int32(np.float32(r).view(np.int32) | sign).view(np.float32)


@inline
def magnitude_element(a, ep):
    """Finite non-negative float32 a rounded to nearest even in the float
    element format and saturated. With E = max(a's exponent, emin) and
    c = 2**(E + 23 - man), a < 2**(E + 1) and a + c lies in c's binade,
    whose float32 step is the element's step at a: the float32 addition
    rounds a to nearest even on the element's grid (c is an even number of
    steps), and (a + c) - c is exact."""
    exponent = np.int32(max(np.int32(np.float32(a).view(np.int32) & EXPONENT32), ep[FLOOR_BITS]))
    c = np.int32(exponent + ep[SHIFT_BITS]).view(np.float32)
    return min((np.float32(a) + c) - c, ep[LARGEST])


@inline
def mx_int_element(v, ep):
    """Finite float32 v in units of the integer element's step, rounded to
    nearest even (by adding and subtracting 2**23 with v's sign: every
    scaled value is below 2**22 steps) and saturated, as a float32 (+0 for
    zero: the format has no -0)."""
    t = np.float32(v) * ep[UP]
    c = np.int32(np.int32(np.float32(t).view(np.int32) & SIGN32) | np.int32(0x4B000000)).view(np.float32)
    return min(max((t + c) - c, ep[LOWEST]), ep[LARGEST])


@inline
def mx_element(v, ep, is_int):
    """Scaled value v rounded in the element format, in units of the
    element's step (for float elements: the value itself)."""
    return mx_int_element(v, ep) if is_int else mx_float_element(v, ep)


@inline
def mx_float_code(v, ep):
    """The code of finite float32 v rounded to nearest even in the float
    element format, saturated, rounded as mx_float_element rounds |v| but
    read off the sum's bits: |v| + c = c + k steps, and the code is k plus
    (E - emin) << man (k counts the implicit bit when E > emin)."""
    bits = np.float32(v).view(np.int32)
    exponent = np.int32(max(np.int32(bits & EXPONENT32), ep[FLOOR_BITS]))
    c_bits = np.int32(exponent + ep[SHIFT_BITS])
    steps = np.int32(np.float32(np.int32(bits & MAGNITUDE32).view(np.float32) + c_bits.view(np.float32)).view(np.int32)
                     - c_bits)
    code = np.int32(min(np.int32(shift_right32(np.int32(exponent - ep[FLOOR_BITS]), ep[CODE_SHIFT]) + steps),
                        ep[MAX_CODE]))
    return np.int32(code | (ep[SIGN_BIT_CODE] if bits < 0 else np.int32(0)))


@inline
def mx_code(v, ep, is_int):
    """The element code of scaled value v."""
    if is_int:
        return np.int32(mx_int_element(v, ep)) & ep[CODE_MASK]
    return mx_float_code(v, ep)


@inline
def mx_quantize_rows(x, out, g, ep, bp, is_int, block):
    """Task g's rows: each row's scale from its largest magnitude, then its
    elements rounded and scaled back (exact unless the product overflows,
    which only rows with a large enough scale check for); NaN rows."""
    lost = False
    for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0])):
        exponent, bad = block_power(largest_magnitude_bits(x[r], block), bp)
        if bad:
            for j in range(block):
                out[r, j] = to_output(np.float32(np.nan), out)[0]
            continue
        inverse, step = np.float32(pow2(-exponent)), np.float32(pow2(exponent)) * ep[DOWN]
        for j in range(block):
            out[r, j], exact = to_output(mx_element(as_float32(x[r, j]) * inverse, ep, is_int) * step, out)
            lost |= not exact
        if ep[LARGEST] * step == np.inf:
            for j in range(block):
                lost |= abs(as_float32(out[r, j])) == np.inf
    return lost


@jit(parallel=True)
def quantize_mx(x, out, ep, bp, is_int, inexact):
    """MX quantize of float32 blocks (rows of x) into out; inexact[task]
    says whether a result left float32's range or out's dtype."""
    for g in prange(inexact.size):  # a loop each for the standard 32-element blocks, with a constant trip count
        if (x.shape[1] == 32) & is_int:
            inexact[g] = mx_quantize_rows(x, out, g, ep, bp, True, 32)
        elif x.shape[1] == 32:
            inexact[g] = mx_quantize_rows(x, out, g, ep, bp, False, 32)
        else:
            inexact[g] = mx_quantize_rows(x, out, g, ep, bp, is_int, x.shape[1])


@inline
def mx_encode_rows(x, elements, scales, g, ep, bp, is_int, block):
    bits = bp[BLOCK_ELEMENT_BITS]
    codes = np.empty(block, np.int32)
    for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0])):
        exponent, bad = block_power(largest_magnitude_bits(x[r], block), bp)
        scales[r] = bp[BLOCK_SCALE_NAN] if bad else exponent - bp[BLOCK_SCALE_EMIN]
        inverse = np.float32(pow2(-exponent))
        # rows of 4- and 8-bit codes are packed as they are computed (a codes buffer
        # between the two loops costs a quarter of the time); a NaN row's codes are 0
        if (bits == 4) & (block % 2 == 0):
            row = elements[r * (block // 2):(r + 1) * (block // 2)]
            for j in range(block // 2):
                low = mx_code(as_float32(x[r, 2 * j]) * inverse, ep, is_int)
                high = mx_code(as_float32(x[r, 2 * j + 1]) * inverse, ep, is_int)
                row[j] = low | (high << 4)
            if bad:
                row[:] = 0
        elif bits == 8:
            row = elements[r * block:(r + 1) * block]
            for j in range(block):
                row[j] = mx_code(as_float32(x[r, j]) * inverse, ep, is_int)
            if bad:
                row[:] = 0
        else:
            for j in range(block):
                codes[j] = 0 if bad else mx_code(as_float32(x[r, j]) * inverse, ep, is_int)
            pack_row(elements, r, codes, block, bits)


@jit(parallel=True)
def encode_mx(x, elements, scales, ep, bp, is_int):
    """Packed element codes (``elements`` zeroed unless its rows fill whole
    bytes) and E8M0 scale codes of float32 blocks (rows of x)."""
    for g in prange((x.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        if (x.shape[1] == 32) & is_int:
            mx_encode_rows(x, elements, scales, g, ep, bp, True, 32)
        elif x.shape[1] == 32:
            mx_encode_rows(x, elements, scales, g, ep, bp, False, 32)
        else:
            mx_encode_rows(x, elements, scales, g, ep, bp, is_int, x.shape[1])
