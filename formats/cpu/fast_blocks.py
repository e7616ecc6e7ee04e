"""Float32 fast paths for scaled formats: contiguous float32 or bfloat16
data blocked along its last axis in whole blocks, rounded to nearest even
(the default).
The blocks are the rows of a (blocks, block_size) view.

- MX (E8M0 scales): the block's largest magnitude from one vector
  reduction (:mod:`.reductions`); x / 2**s is an exact float32 product,
  rounded by adding and subtracting a power of two whose float32 step is
  the element's (:func:`mx_float_element`), codes read off the same sum.
- NVFP4 (E4M3 scales): amax / 6 in float64 as the reference forms it;
  x times the scale's float32 inverse rounded as MX elements round, and
  the rows with a quotient near a rounding midpoint redone in float64 as
  the reference divides.
- Microexponents (sub-blocks of two): loops over a task's pairs and blocks
  (pair maxima, block maxima as a tree over them, shared exponents, then
  each pair on its step, rounded by adding and subtracting 2**(step + 23)).
- Decoding: codes unpacked a row at a time, values from tables of every
  element and scale code (blocks) or from the steps (microexponents).

Each agrees with the reference bit for bit (tests/test_backends.py checks
every rounding boundary and every code).
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from ..block_format import E8M0
from ..float_format import FloatFormat
from ..int_format import IntFormat
from .bits import put_code
from .block_kernels import scale_exponent
from .descriptors import (
    DIVISOR, ELEMENT_BITS, ELEMENT_EMAX, FLOOR, HAS_TENSOR_SCALE, RULE, SCALE_EMAX, SCALE_EMIN, SCALE_NAN,
    block_params,
)
from .fast32 import MAGNITUDE32, SIGN32, as_float32, finite_code, float_params, shift_right32, to_output
from .reductions import largest_magnitude_bits
from .scalar import pow2

inline = njit(inline="always", cache=True)
ROWS_PER_TASK = 64
NO_EXPONENT = -(1 << 20)  # floor(log2 0), below every exponent


# -- MX blocks (power-of-two scales) ---------------------------------------------------------
# Fields of mx_params' element tuple. Float elements round by adding and
# subtracting a power of two (mx_float_element); integer elements by adding
# and subtracting 2**23 to the scaled value in units of their step.
(FLOOR_BITS, SHIFT_BITS, LOWEST, LARGEST, UP, DOWN, MAX_CODE, CODE_SHIFT, SIGN_BIT_CODE, CODE_MASK) = range(10)
EXPONENT32 = 0x7F800000


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
            i32(element.max_code), i32(23 - m), i32(element._sign_code), i32(0))


@functools.lru_cache(maxsize=256)
def mx_params(fmt, rule: str) -> tuple | None:
    """(element tuple, block params, integer element) when an MX format's
    blocks can take the fast path, else None: an E8M0 scale and a float
    element that :func:`float_element_fields` serves, or an integer of at
    most 22 bits with quantum >= 2**-22."""
    element = fmt.element
    if fmt.scale != E8M0:
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
    if bp[RULE] == FLOOR:  # 2**(floor(log2 amax) - emax_elem); subnormal amax clamps to the lowest scale
        exponent = (top >> 23) - 127 - bp[ELEMENT_EMAX]
    else:
        amax = np.float64(np.int32(top).view(np.float32))
        exponent = scale_exponent(amax, bp[RULE], bp) if top > 0 else bp[SCALE_EMIN]
    return min(max(exponent, bp[SCALE_EMIN]), bp[SCALE_EMAX]), bad


@inline
def mx_float_element(v, ep):
    """Finite float32 v rounded to nearest even in the float element
    format and saturated, signed (a zero keeps v's sign). With E = max(v's
    exponent, emin) and c = 2**(E + 23 - man) with v's sign, |v| < 2**(E + 1)
    and v + c lies in c's binade, whose float32 step is the element's step
    at v: the float32 addition rounds v to nearest even on the element's
    grid (c is an even number of steps), and (v + c) - c is exact."""
    bits = np.float32(v).view(np.int32)
    sign = np.int32(bits & SIGN32)
    exponent = np.int32(max(np.int32(bits & EXPONENT32), ep[FLOOR_BITS]))
    c = np.int32(np.int32(exponent + ep[SHIFT_BITS]) | sign).view(np.float32)
    r = min(max((np.float32(v) + c) - c, ep[LOWEST]), ep[LARGEST])
    return np.int32(np.float32(r).view(np.int32) | sign).view(np.float32)


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


@njit(parallel=True, cache=True)
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
def whole_bytes(bits, block):
    """Whether each row of ``block`` codes of ``bits`` bits fills whole
    bytes, which pack_row then writes outright (so the packed buffer need
    not be zeroed first)."""
    return (block * bits) % 8 == 0


@inline
def pack_row(packed, r, codes, block, bits):
    """Pack row r's codes (non-negative int32, fewer than 2**bits) in
    packing's layout. Rows of 4- and 8-bit codes are written through a slice
    (indices the compiler knows are in range) so that the loops vectorize;
    other rows filling whole bytes stream their bits through a 64-bit word;
    the rest OR their codes into zeroed bytes."""
    if bits == 8:
        row = packed[r * block:(r + 1) * block]
        for j in range(block):
            row[j] = codes[j]
    elif (bits == 4) & (block % 2 == 0):
        row = packed[r * (block // 2):(r + 1) * (block // 2)]
        for j in range(block // 2):
            row[j] = codes[2 * j] | (codes[2 * j + 1] << 4)
    elif whole_bytes(bits, block):
        byte, word, filled = r * block * bits // 8, np.int64(0), 0
        for j in range(block):
            word |= np.int64(codes[j]) << filled
            filled += bits
            while filled >= 8:
                packed[byte] = word & 0xFF
                byte, word, filled = byte + 1, word >> 8, filled - 8
    else:
        for j in range(block):
            put_code(packed, (r * block + j) * bits, codes[j], bits)


@inline
def mx_encode_rows(x, elements, scales, g, ep, bp, is_int, block):
    bits = bp[ELEMENT_BITS]
    codes = np.empty(block, np.int32)
    for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0])):
        exponent, bad = block_power(largest_magnitude_bits(x[r], block), bp)
        scales[r] = bp[SCALE_NAN] if bad else exponent - bp[SCALE_EMIN]
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


@njit(parallel=True, cache=True)
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


# -- microexponent blocks ----------------------------------------------------------------------
def microexponent_fits(fmt) -> bool:
    """Whether a MicroexponentFormat's quantize can take the fast path:
    sub-blocks of two elements (MX4, MX6, MX9, MSFP) and magnitudes of at
    most 23 bits (exact in float32 after scaling)."""
    return fmt.sub_block == 2 and fmt.man_bits <= 22


@inline
def block_output(value, bad, out):
    """A float64 block result in out's dtype (NaN for a NaN block), and
    whether float32 or out's dtype failed to hold it exactly."""
    narrow = np.float32(value)
    stored, exact = to_output(np.float32(np.nan) if bad else narrow, out)
    return stored, ((np.float64(narrow) != value) & (not bad)) | (not exact)


@inline
def exponent_of_bits(bits):
    """floor(log2 |v|) of a finite float32 v given as its magnitude bits
    (subnormals included: below 2**23 the bits convert to float32 exactly,
    and that float's exponent is the bits' top set bit); NO_EXPONENT for 0."""
    normal = (bits >> 23) - 127
    subnormal = (np.float32(np.float32(bits)).view(np.int32) >> 23) - 127 - 149 if bits > 0 else NO_EXPONENT
    return normal if bits >= (1 << 23) else subnormal


@inline
def microexponent_element(v, step_exp, largest, bad, out):
    """(v in out's dtype, inexact) for element v of a sub-block with step
    2**step_exp, in float64: |v| / step rounded to nearest even, saturated,
    with a check that float32 holds the result."""
    negative = np.float32(v).view(np.int32) < 0
    t = np.float32(abs(np.float64(v)) * pow2(-step_exp))  # exact, or far below 1/2
    magnitude = min((t + np.float32(1 << 23)) - np.float32(1 << 23), largest)
    value = np.float64(magnitude) * pow2(step_exp)
    return block_output(-value if negative else value, bad, out)


@inline
def microexponent_pairs64(x, out, shared, mp):
    """x's pairs (x and out: a task's slices) quantized into out in float64,
    with the shared exponent of pair i in shared[i]; whether any result was
    inexact."""
    man, micro = mp[0], mp[4]
    largest = np.float32((1 << man) - 1)
    lost = False
    for i in range(x.size // 2):
        a, b = as_float32(x[2 * i]), as_float32(x[2 * i + 1])
        e_max = shared[i]
        bad = e_max == NO_EXPONENT
        pair_top = max(np.int32(np.float32(a).view(np.int32) & MAGNITUDE32),
                       np.int32(np.float32(b).view(np.int32) & MAGNITUDE32))
        step_exp = e_max - min(max(e_max - exponent_of_bits(pair_top), 0), (1 << micro) - 1) - man + 1
        step_exp = np.int32(0 if bad else step_exp)
        out[2 * i], lost_a = microexponent_element(a, step_exp, largest, bad, out)
        out[2 * i + 1], lost_b = microexponent_element(b, step_exp, largest, bad, out)
        lost |= lost_a | lost_b
    return lost


@inline
def rounded_on_step(v, c, limit, bad, out):
    """(v in out's dtype, exact) for finite float32 v rounded to nearest even
    on the grid of the step 2**s, given c = 2**(s + 23) (|v| < c, so |v| + c
    rounds |v| on that grid and subtracting c is exact) and limit, the
    largest magnitude (2**man - 1) * 2**s; NaN for a NaN block."""
    bits = np.float32(v).view(np.int32)
    magnitude = min((np.int32(bits & MAGNITUDE32).view(np.float32) + c) - c, limit)
    value = np.int32(np.float32(magnitude).view(np.int32) | np.int32(bits & SIGN32)).view(np.float32)
    return to_output(np.float32(np.nan) if bad else value, out)


@inline
def microexponent_pairs32(x, out, pair_tops, shared, mp):
    """microexponent_pairs64 in float32 lanes, for tasks whose every block
    has steps 2**s with -126 <= s and s + 23 <= 127 (its results are then
    float32 numbers), given each pair's largest magnitude bits."""
    man, micro = mp[0], mp[4]
    limit_offset = np.int32(((man - 1) << 23) + (1 << 23) - (1 << (24 - man)))  # (2**man - 1) * 2**s, less 2**s
    lost = False
    for i in range(x.size // 2):
        e_max = shared[i]
        bad = e_max == NO_EXPONENT
        # every block exponent is >= -126 + the largest shift, so a pair below 2**-126
        # (whose exponent field reads -127) takes the largest shift either way
        shift = np.int32(min(max(np.int32(e_max - np.int32((pair_tops[i] >> 23) - 127)), 0), (1 << micro) - 1))
        step_bits = np.int32(np.int32(0 if bad else e_max - shift - man + 1 + 127) << 23)
        c, limit = np.int32(step_bits + (23 << 23)).view(np.float32), np.int32(step_bits + limit_offset).view(np.float32)
        out[2 * i], exact_a = rounded_on_step(as_float32(x[2 * i]), c, limit, bad, out)
        out[2 * i + 1], exact_b = rounded_on_step(as_float32(x[2 * i + 1]), c, limit, bad, out)
        lost |= not (exact_a & exact_b)
    return lost


@inline
def largest_of_pairs(pair_tops, k, pairs):
    """The largest of row k's ``pairs`` pair maxima: for 8 (blocks of 16)
    written out as a tree, which the loop over rows vectorizes across rows
    (3x faster than a reduction per row)."""
    if pairs == 8:
        p, i = pair_tops, 8 * k
        return max(max(max(p[i], p[i + 1]), max(p[i + 2], p[i + 3])), max(max(p[i + 4], p[i + 5]), max(p[i + 6], p[i + 7])))
    top = np.int32(0)
    for j in range(pairs):
        top = max(top, pair_tops[k * pairs + j])
    return top


@inline
def microexponent_task(x, out, g, mp, pairs):
    """Quantize task g's blocks (of 2 * pairs elements); whether any result
    was inexact. Each pair's largest magnitude, then each block's shared
    exponent from its pairs', spread over its pairs, then one loop over the
    pairs: loops over a whole task, each of which vectorizes."""
    man, micro, emin, emax = mp[0], mp[4], mp[5], mp[6]
    block = 2 * pairs
    first_row, end_row = g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.size // block)
    xs, outs = x[first_row * block:end_row * block], out[first_row * block:end_row * block]
    pair_tops, shared = np.empty(ROWS_PER_TASK * pairs, np.int32), np.empty(ROWS_PER_TASK * pairs, np.int32)
    shared_exponents = np.empty(ROWS_PER_TASK, np.int32)
    for i in range(xs.size // 2):
        pair_tops[i] = max(np.int32(np.float32(as_float32(xs[2 * i])).view(np.int32) & MAGNITUDE32),
                           np.int32(np.float32(as_float32(xs[2 * i + 1])).view(np.int32) & MAGNITUDE32))
    for k in range(end_row - first_row):
        top = largest_of_pairs(pair_tops, k, pairs)
        e_max = np.int32(min(max(exponent_of_bits(top), emin), emax))
        shared_exponents[k] = e_max if top < EXPONENT32 else np.int32(NO_EXPONENT)
    in_float32 = True
    for k in range(end_row - first_row):
        e_max = shared_exponents[k]
        in_float32 &= (e_max == NO_EXPONENT) | ((e_max - ((1 << micro) - 1) - man + 1 >= -126) & (e_max + 24 - man <= 127))
        for j in range(pairs):
            shared[k * pairs + j] = e_max
    if in_float32:
        return microexponent_pairs32(xs, outs, pair_tops, shared, mp)
    return microexponent_pairs64(xs, outs, shared, mp)


@njit(parallel=True, cache=True)
def quantize_microexponent(x, out, mp, inexact):
    """Microexponent quantize (nearest even) of float32 blocks of mp[1]
    elements in sub-blocks of two (x and out flat), a task of blocks at a
    time (microexponent_task): in float32 lanes when every block's steps
    lie in 2**-126..2**104 (its results are then float32 numbers), else in
    float64 with an exactness check."""
    for g in prange(inexact.size):
        if mp[1] == 16:
            inexact[g] = microexponent_task(x, out, g, mp, 8)
        else:
            inexact[g] = microexponent_task(x, out, g, mp, mp[1] // 2)


@inline
def finite_magnitude_bits(bits):
    """Magnitude bits, 0 for NaN and Inf (a NaN block's exponents come from
    its finite elements, as the reference computes them)."""
    return bits if bits < EXPONENT32 else np.int32(0)


@inline
def microexponent_code(v, step_exp, largest, man):
    """The code (sign bit above ``man`` magnitude bits) of finite v on the
    grid 2**step_exp: |v| / step rounded to nearest even, saturated."""
    t = np.float32(abs(np.float64(v)) * pow2(-step_exp))  # exact, or far below 1/2
    magnitude = np.int32(min((t + np.float32(1 << 23)) - np.float32(1 << 23), largest))
    return magnitude | (np.int32(1 << man) if np.float32(v).view(np.int32) < 0 else np.int32(0))


@njit(parallel=True, cache=True)
def encode_microexponent(x, elements, scales, subscales, mp):
    """Packed element codes, shared-exponent codes and packed sub-block
    shifts of float32 blocks of mp[1] elements in sub-blocks of two (x flat;
    ``elements`` and ``subscales`` zeroed unless their rows fill whole bytes)."""
    man, block, exp_bits, micro, emin, emax, bias = mp[0], mp[1], mp[3], mp[4], mp[5], mp[6], mp[7]
    largest = np.float32((1 << man) - 1)
    for g in prange((x.size // block + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        codes, shifts = np.empty(block, np.int32), np.empty(block // 2, np.int32)
        for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.size // block)):
            row = x[r * block:(r + 1) * block]
            top = largest_magnitude_bits(row, block)
            bad = top >= EXPONENT32
            if bad:
                top = np.int32(0)
                for j in range(block):
                    top = max(top, finite_magnitude_bits(np.int32(np.float32(as_float32(row[j])).view(np.int32) & MAGNITUDE32)))
            e_max = min(max(exponent_of_bits(top), emin), emax)
            scales[r] = (1 << exp_bits) - 1 if bad else e_max + bias
            for i in range(block // 2):
                a, b = as_float32(row[2 * i]), as_float32(row[2 * i + 1])
                pair_top = max(finite_magnitude_bits(np.int32(np.float32(a).view(np.int32) & MAGNITUDE32)),
                               finite_magnitude_bits(np.int32(np.float32(b).view(np.int32) & MAGNITUDE32)))
                shifts[i] = min(max(e_max - exponent_of_bits(pair_top), 0), (1 << micro) - 1)
                step_exp = e_max - shifts[i] - man + 1
                codes[2 * i] = 0 if bad else microexponent_code(a, step_exp, largest, man)
                codes[2 * i + 1] = 0 if bad else microexponent_code(b, step_exp, largest, man)
            pack_row(elements, r, codes, block, man + 1)
            if micro:
                pack_row(subscales, r, shifts, block // 2, micro)


# -- NVFP4-style blocks (scales with a mantissa) ------------------------------------------------
def nearest64_params(fmt) -> tuple:
    """float_params' rounding constants for rounding float64 values."""
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
    m, smallest_normal, magic, largest = p[0], p[1], p[2], p[3]
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
    element64, scale64, bp = q[2], q[3], q[4]
    first_row, end_row = g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0])
    for r in range(first_row, end_row):
        tops[r - first_row] = largest_magnitude_bits(x[r], block)
    for k in range(end_row - first_row):
        amax = np.float64(np.int32(tops[k]).view(np.float32))
        values[k] = nearest64(amax / (bp[DIVISOR] * element64[3]), scale64)
        full_scale = values[k] * bp[DIVISOR]  # exact: at most 25 + 24 bits
        inverse = np.float32(1.0 / full_scale) if (full_scale >= 2.0 ** -100) & (full_scale <= 2.0 ** 100) else np.float32(0.0)
        in_lanes = np.float32(amax) * inverse < np.float32(2.0 * element64[3])
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
    return (nearest64(a, q[2]) if full_scale > 0.0 else 0.0), (np.float32(v).view(np.int32) < 0) & (full_scale > 0.0)


@inline
def amax_code(v, full_scale, q):
    """The element code of one value of a block scaled by full_scale."""
    magnitude, negative = amax_element(v, full_scale, q)
    return finite_code(np.float32(magnitude), negative, q[0])


@inline
def amax_value(v, scale, q, out):
    """(value in out's dtype, exact) of element v of a block with the float64 scale ``scale``."""
    bp = q[4]
    magnitude, negative = amax_element(v, scale * bp[DIVISOR], q)
    value = np.float32((-magnitude if negative else magnitude) * scale)  # exact (scaled_block_params)
    if bp[HAS_TENSOR_SCALE]:
        value = value * np.float32(bp[DIVISOR])
    return to_output(value, out)


@inline
def amax_fast_row(x, out, r, scale, inverse, q, block):
    """Row r quantized in float32 lanes: v * inverse (the float32 inverse
    of the full scale: within 2**-23 of the exact quotient) rounded as MX
    elements round; (whether out's dtype held every result, whether some
    quotient lay near a rounding boundary, where the row must be redone
    exactly)."""
    bp, ep = q[4], q[5]
    scale32 = np.float32(scale)
    lost, near = False, False
    for j in range(block):
        quotient = as_float32(x[r, j]) * inverse
        near |= near_rounding_boundary(quotient, ep)
        value = mx_float_element(quotient, ep) * scale32  # exact (scaled_block_params)
        if bp[HAS_TENSOR_SCALE]:
            value = value * np.float32(bp[DIVISOR])
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


@njit(parallel=True, cache=True)
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
    bp, ep = q[4], q[5]
    tops, values = np.empty(ROWS_PER_TASK, np.int32), np.empty(ROWS_PER_TASK, np.float64)
    inverses = np.empty(ROWS_PER_TASK, np.float32)
    first_row, end_row = amax_scales(x, g, q, tops, values, inverses, block)
    codes = np.empty(block, np.int32)
    for r in range(first_row, end_row):
        scale, inverse, bad = values[r - first_row], inverses[r - first_row], tops[r - first_row] >= EXPONENT32
        scales[r] = bp[SCALE_NAN] if bad else finite_code(np.float32(scale), False, q[1])
        near = True
        if inverse > 0:
            near = False
            for j in range(block):  # (packing codes as they are computed, as mx_encode_rows does, is 4x slower here)
                quotient = as_float32(x[r, j]) * inverse
                near |= near_rounding_boundary(quotient, ep)
                codes[j] = mx_float_code(quotient, ep)
        if near:
            for j in range(block):
                codes[j] = 0 if bad else amax_code(as_float32(x[r, j]), scale * bp[DIVISOR], q)
        pack_row(elements, r, codes, block, bp[ELEMENT_BITS])


@njit(parallel=True, cache=True)
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


# -- decoding rows of whole bytes ----------------------------------------------------------------
@inline
def unpack_row(packed, r, codes, block, bits):
    """Row r's ``block`` codes of ``bits`` bits into codes (int32): the
    inverse of pack_row, for rows that fill whole bytes."""
    if bits == 8:
        row = packed[r * block:(r + 1) * block]
        for j in range(block):
            codes[j] = row[j]
    elif (bits == 4) & (block % 2 == 0):
        row = packed[r * (block // 2):(r + 1) * (block // 2)]
        for j in range(block // 2):
            codes[2 * j], codes[2 * j + 1] = row[j] & 0xF, row[j] >> 4
    else:
        byte, word, filled = r * block * bits // 8, np.int64(0), 0
        for j in range(block):
            while filled < bits:
                word |= np.int64(packed[byte]) << filled
                byte, filled = byte + 1, filled + 8
            codes[j] = word & ((1 << bits) - 1)
            word, filled = word >> bits, filled - bits


@functools.lru_cache(maxsize=256)
def decode_tables(fmt) -> tuple[np.ndarray, np.ndarray]:
    """(value of every element code, value of every scale code), float64,
    NaN for NaN codes: a BlockFormat's decoding as two table lookups."""
    return fmt.element.codes_of_values()[1], fmt.scale.codes_of_values()[1]


@inline
def scaled_value(element, scale, tensor_scale):
    """element * scale (exact in float64), times the tensor scale (None for
    none) in float32 as the reference applies it."""
    value = element * scale
    return value if tensor_scale is None else np.float64(np.float32(value) * np.float32(tensor_scale))


@njit(parallel=True, cache=True)
def decode_blocks(packed, scale_codes, out, element_values, scale_values, tensor_scale, bits):
    """out (blocks as rows filling whole bytes of packed ``bits``-bit codes;
    float32 or float64) = element value * scale value, looked up in the
    tables of every code. A NaN scale code's value is NaN, so its block
    decodes to NaN. ``tensor_scale``: a float, or None."""
    block = out.shape[1]
    for g in prange((out.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        codes = np.empty(block, np.int32)
        for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, out.shape[0])):
            scale = scale_values[scale_codes[r]]
            unpack_row(packed, r, codes, block, bits)
            for j in range(block):
                out[r, j] = scaled_value(element_values[codes[j]], scale, tensor_scale)


@njit(parallel=True, cache=True)
def decode_microexponent(packed, scale_codes, packed_shifts, out, mp):
    """out (blocks as rows; float32 or float64) = the values of microexponent
    codes in sub-blocks of two whose element codes and shifts fill whole
    bytes per block: magnitude * 2**(e_max - shift - man + 1), signed; NaN
    for a block whose shared-exponent code is the NaN one."""
    man, exp_bits, micro, bias = mp[0], mp[3], mp[4], mp[7]
    block = out.shape[1]
    for g in prange((out.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        codes, shifts = np.empty(block, np.int32), np.zeros(block // 2, np.int32)
        for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, out.shape[0])):
            e_max = np.int64(scale_codes[r]) - bias
            bad = np.int64(scale_codes[r]) == (1 << exp_bits) - 1
            unpack_row(packed, r, codes, block, man + 1)
            if micro:
                unpack_row(packed_shifts, r, shifts, block // 2, micro)
            for j in range(block):
                magnitude = np.float64(codes[j] & ((1 << man) - 1)) * pow2(e_max - shifts[j // 2] - man + 1)
                out[r, j] = np.nan if bad else (-magnitude if codes[j] >> man else magnitude)
