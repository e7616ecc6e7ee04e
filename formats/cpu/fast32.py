"""The float32 fast path: nearest-even rounding of float32 data computed in
32-bit lanes (twice the SIMD width of the float64 path, and a third of its
instructions), for formats whose values are all float32 numbers.

Normal results round on the float32 bits (add half an ulp of the target
minus one plus the kept parity bit, then mask: ties go to the even
mantissa). Results in the format's subnormal range round by adding and
subtracting ``magic`` = 2**(emin - m + 23), whose ulp is the format's
subnormal quantum: the float32 addition itself rounds to nearest even on
that grid. Both are exact float32 operations on the exact input, so the
results equal the reference's bit for bit (the tests check this on every
code, every midpoint and their neighbours).

A format qualifies (:func:`float_params` / :func:`int_params` return its
parameters, else None) when it is a signed float format with subnormals,
-0 and 1..22 mantissa bits whose values lie inside float32's range, or an
integer format of at most 24 bits whose values float32 holds exactly.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..float_format import FloatFormat
from ..int_format import IntFormat
from .bits import put_code
from .scalar import pow2
from .block_kernels import scale_exponent
from .descriptors import (
    ELEMENT_BITS, ELEMENT_EMAX, FLOOR, INF, INF_MAG, NAN_NEGATIVE, NAN_POSITIVE, RULE, SATURATE, SCALE_EMAX, SCALE_EMIN, SCALE_NAN,
    SIGN_CODE, element_descriptor,
)

inline = njit(inline="always", cache=True)
SIGN32, MAGNITUDE32 = 0x80000000, 0x7FFFFFFF


def float_params(fmt, overflow: str, flush_subnormals: bool) -> tuple | None:
    """The fast path's parameters for a FloatFormat, or None if it does not qualify."""
    if not (isinstance(fmt, FloatFormat) and fmt.signed and fmt.subnormals and fmt.has_negative_zero
            and 1 <= fmt.man_bits <= 22 and fmt.emin - fmt.man_bits >= -149 and fmt.emin >= -126
            and fmt.max <= float(np.finfo(np.float32).max)):
        return None
    d = element_descriptor(fmt)
    policy = ("saturate", "inf", "nan").index(overflow)
    beyond = np.inf if policy == INF else np.nan
    return (fmt.man_bits, np.float32(2.0 ** fmt.emin), np.float32(2.0 ** (fmt.emin - fmt.man_bits + 23)),
            np.float32(fmt.max), np.float32(beyond), policy == SATURATE, _tiny(flush_subnormals),
            fmt.emin, d[SIGN_CODE], d[INF_MAG], d[NAN_POSITIVE], d[NAN_NEGATIVE],
            2.0 ** (fmt.man_bits - fmt.emin))


def int_params(fmt, flush_subnormals: bool) -> tuple | None:
    """The fast path's parameters for an IntFormat, or None if it does not qualify."""
    if not (isinstance(fmt, IntFormat) and fmt.bits <= 24 and -100 <= fmt.frac_bits <= 100):
        return None
    return (np.float32(2.0 ** fmt.frac_bits), np.float32(2.0 ** -fmt.frac_bits), np.float32(fmt.qmin),
            np.float32(fmt.qmax), _tiny(flush_subnormals), fmt.bits)


def _tiny(flush_subnormals: bool) -> np.float32:
    return np.float32(np.finfo(np.float32).tiny if flush_subnormals else 0.0)


# -- per element -------------------------------------------------------------------------
@inline
def float_nearest(x, p):
    """(|result|, sign bit) of float32 x rounded to nearest even in the float
    format ``p`` (float_params), overflow per its policy; NaN stays NaN."""
    m, smallest_normal, magic, largest, beyond, saturate, tiny = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    bits = np.float32(x).view(np.uint32)
    sign = np.uint32(bits & SIGN32)
    a = np.uint32(bits & MAGNITUDE32).view(np.float32)
    a = np.float32(0.0) if a < tiny else a
    s = 23 - m
    mag_bits = np.uint32(np.float32(a).view(np.uint32))
    normal = np.uint32(np.uint32(mag_bits + ((1 << (s - 1)) - 1) + ((mag_bits >> s) & 1)) & np.uint32(~((1 << s) - 1)))
    r = (a + magic) - magic if a < smallest_normal else np.uint32(normal).view(np.float32)
    r = (largest if saturate else beyond) if r > largest else r
    return (r if a == a else a), sign


@inline
def with_sign(r, sign):
    return np.uint32(np.float32(r).view(np.uint32) | sign).view(np.float32)


@inline
def float_code(r, sign, p):
    """The code of float_nearest's (r, sign); invalid for NaN in a format without NaN."""
    m, smallest_normal, emin = p[0], p[1], p[7]
    sign_code, inf_mag, nan_positive, nan_negative = p[8], p[9], p[10], p[11]
    r_bits = np.int64(np.float32(r).view(np.uint32))
    normal_code = (((r_bits >> 23) - 127 - emin + 1) << m) | ((r_bits & 0x7FFFFF) >> (23 - m))
    subnormal_code = np.int64(np.float64(r) * p[12]) if r < smallest_normal else 0
    code = normal_code if r >= smallest_normal else subnormal_code
    code = inf_mag if r == np.inf else code
    code = code + (sign_code if sign else 0)
    is_nan = r != r
    code = (nan_negative if sign else nan_positive) if is_nan else code
    return code, is_nan & (nan_positive < 0)


@inline
def int_nearest(x, p):
    """float32 x rounded to nearest even in the integer format ``p``
    (int_params), saturating, as the integer q (a float32); NaN stays NaN."""
    up, qmin, qmax, tiny = p[0], p[2], p[3], p[4]
    a = abs(np.float32(x))
    a = np.float32(0.0) if a < tiny else a
    t = a * up
    magic = np.float32(1 << 23)
    r = (t + magic) - magic if t < magic else t
    q = -r if np.float32(x).view(np.int32) < 0 else r
    q = min(max(q, qmin), qmax)
    return (q + np.float32(0.0)) if x == x else np.float32(x)


# -- kernels (flat C-contiguous float32 in, flat out) -------------------------------------
@njit(parallel=True, cache=True)
def quantize_float(x, out, p):
    for i in prange(x.size):
        r, sign = float_nearest(x[i], p)
        out[i] = with_sign(r, sign)


@njit(parallel=True, cache=True)
def encode_float(x, out, p):
    """Codes into out; returns the number of elements the format cannot represent."""
    bad = 0
    for i in prange(x.size):
        r, sign = float_nearest(x[i], p)
        code, invalid = float_code(r, sign, p)
        out[i] = code
        bad += 1 if invalid else 0
    return bad


@njit(parallel=True, cache=True)
def quantize_int(x, out, p):
    down = p[1]
    for i in prange(x.size):
        out[i] = int_nearest(x[i], p) * down


@njit(parallel=True, cache=True)
def encode_int(x, out, p):
    """Codes into out; returns the number of NaN elements (not encodable)."""
    mask = (1 << p[5]) - 1
    bad = 0
    for i in prange(x.size):
        q = int_nearest(x[i], p)
        out[i] = np.int64(q) & mask if q == q else 0
        bad += 0 if q == q else 1
    return bad


# -- MX blocks (power-of-two scales) ---------------------------------------------------------
def mx_params(fmt, rule: str) -> tuple | None:
    """(float element params, int element params, block params) when an MX
    format's blocks can take the fast path (element as above, E8M0 scale,
    element quantum >= 2**-22 so that every element times every scale is a
    float32 number or overflows), else None."""
    from .descriptors import block_params

    from ..block_format import E8M0

    element = fmt.element
    if fmt.scale != E8M0:
        return None
    fp, ip = float_params(element, "saturate", False), int_params(element, False)
    if fp is None and ip is None or element.min_subnormal < 2.0 ** -22:
        return None
    # a stand-in of the right type for the family not in use
    fp = fp or float_params(FloatFormat(2, 1, name="e2m1"), "saturate", False)
    ip = ip or int_params(IntFormat(8), False)
    return fp, ip, block_params(fmt, rule, None)


@inline
def block_power(x, r, bp, block):
    """(scale exponent, NaN block) of row r of float32 blocks. The largest
    magnitude is found on the bits (their order is the magnitudes' order, and
    NaN/Inf sort above every finite value); a NaN block's scale is NaN
    whatever its finite amax, so that amax is not needed."""
    top = 0
    for j in range(block):
        top = max(top, np.int64(np.float32(x[r, j]).view(np.int32)) & MAGNITUDE32)
    bad = top >= 0x7F800000
    if bp[RULE] == FLOOR:  # 2**(floor(log2 amax) - emax_elem); subnormal amax clamps to the lowest scale
        exponent = (top >> 23) - 127 - bp[ELEMENT_EMAX]
    else:
        amax = np.float64(np.int32(np.int64(top)).view(np.float32))
        exponent = scale_exponent(amax, bp[RULE], bp) if top > 0 else bp[SCALE_EMIN]
    return min(max(exponent, bp[SCALE_EMIN]), bp[SCALE_EMAX]), bad


@inline
def scaled_nearest(v, fp, ip, is_int):
    """v rounded to nearest even in the element format, as a signed float32."""
    if is_int:
        return int_nearest(v, ip) * ip[1]
    r, sign = float_nearest(v, fp)
    return with_sign(r, sign)


@inline
def scaled_code(v, fp, ip, is_int):
    if is_int:
        q = int_nearest(v, ip)
        return np.int64(q) & ((1 << ip[5]) - 1)
    r, sign = float_nearest(v, fp)
    code, _ = float_code(r, sign, fp)
    return code


@inline
def mx_quantize_rows(x, out, g, fp, ip, bp, is_int, block):
    lost = False
    for r in range(g * 64, min(g * 64 + 64, x.shape[0])):
        exponent, bad = block_power(x, r, bp, block)
        inverse, scale = np.float32(pow2(-exponent)), np.float32(pow2(exponent))
        for j in range(block):
            element = scaled_nearest(x[r, j] * inverse, fp, ip, is_int)
            value = element * scale  # exact unless it overflows (the element quantum is >= 2**-22)
            lost |= (abs(value) == np.inf) & (abs(element) < np.inf) & (not bad)
            out[r, j] = np.float32(np.nan) if bad else value
    return lost


@njit(parallel=True, cache=True)
def quantize_mx(x, out, fp, ip, bp, is_int, inexact):
    """MX quantize of float32 blocks (rows of x) into out; inexact[task]
    says whether a result left float32's range."""
    for g in prange(inexact.size):
        if is_int:
            inexact[g] = mx_quantize_rows(x, out, g, fp, ip, bp, True, x.shape[1])
        elif x.shape[1] == 32:
            inexact[g] = mx_quantize_rows(x, out, g, fp, ip, bp, False, 32)
        else:
            inexact[g] = mx_quantize_rows(x, out, g, fp, ip, bp, False, x.shape[1])


@inline
def mx_encode_rows(x, elements, scales, g, fp, ip, bp, is_int, block):
    bits = bp[ELEMENT_BITS]
    for r in range(g * 64, min(g * 64 + 64, x.shape[0])):
        exponent, bad = block_power(x, r, bp, block)
        scales[r] = bp[SCALE_NAN] if bad else exponent - bp[SCALE_EMIN]
        inverse = np.float32(pow2(-exponent))
        if bits == 8:
            for j in range(block):
                elements[r * block + j] = 0 if bad else scaled_code(x[r, j] * inverse, fp, ip, is_int)
        elif bits == 4:
            for j in range(block // 2):
                low = scaled_code(x[r, 2 * j] * inverse, fp, ip, is_int)
                high = scaled_code(x[r, 2 * j + 1] * inverse, fp, ip, is_int)
                elements[(r * block) // 2 + j] = 0 if bad else low | (high << 4)
        else:
            for j in range(block):
                code = 0 if bad else scaled_code(x[r, j] * inverse, fp, ip, is_int)
                put_code(elements, (r * block + j) * bits, code, bits)


@njit(parallel=True, cache=True)
def encode_mx(x, elements, scales, fp, ip, bp, is_int):
    """Packed element codes (``elements`` zeroed) and E8M0 scale codes of
    float32 blocks (rows of x)."""
    for g in prange((x.shape[0] + 63) // 64):
        if is_int:
            mx_encode_rows(x, elements, scales, g, fp, ip, bp, True, x.shape[1])
        elif x.shape[1] == 32:
            mx_encode_rows(x, elements, scales, g, fp, ip, bp, False, 32)
        else:
            mx_encode_rows(x, elements, scales, g, fp, ip, bp, False, x.shape[1])


# -- microexponent blocks ----------------------------------------------------------------------
def microexponent_fits(fmt) -> bool:
    """Whether a MicroexponentFormat's quantize can take the fast path:
    magnitudes of at most 23 bits (exact in float32 after scaling)."""
    return fmt.man_bits <= 22


@inline
def exponent64(v):
    """floor(log2 |v|) of a nonzero finite float32 (exact via float64, so
    float32 subnormals get their true exponent); NO_EXPONENT otherwise."""
    a = abs(np.float64(v))
    e = ((np.float64(a).view(np.int64) >> 52) & 0x7FF) - 1023
    return e if (a > 0.0) & (a < np.inf) else -(1 << 20)


@inline
def microexponent_rows(x, out, g, mp, block, sub):
    man, micro, emin, emax = mp[0], mp[4], mp[5], mp[6]
    largest = np.float32((1 << man) - 1)
    exponents, down, up = np.empty(block, np.int64), np.empty(block, np.float64), np.empty(block, np.float64)
    lost = False
    for r in range(g * 64, min(g * 64 + 64, x.shape[0])):
        e_max, bad = -(1 << 20), False
        for j in range(block):
            exponents[j] = exponent64(x[r, j])
            e_max = max(e_max, exponents[j])
            bad |= not (abs(x[r, j]) < np.inf)
        e_max = min(max(e_max, emin), emax)
        for first in range(0, block, sub):
            sub_max = exponents[first]
            for k in range(1, sub):
                sub_max = max(sub_max, exponents[first + k])
            step_exp = e_max - min(max(e_max - sub_max, 0), (1 << micro) - 1) - man + 1
            for k in range(sub):
                down[first + k], up[first + k] = pow2(-step_exp), pow2(step_exp)
        for j in range(block):
            t = np.float32(abs(np.float64(x[r, j])) * down[j])  # exact, or far below 1/2
            magnitude = min((t + np.float32(1 << 23)) - np.float32(1 << 23), largest)
            value = np.float64(magnitude) * up[j]
            narrow = np.float32(value)
            lost |= (np.float64(narrow) != value) & (not bad)
            signed = -narrow if np.float32(x[r, j]).view(np.int32) < 0 else narrow
            out[r, j] = np.float32(np.nan) if bad else signed
    return lost


@njit(parallel=True, cache=True)
def quantize_microexponent(x, out, mp, inexact):
    """Microexponent quantize (nearest even) of float32 blocks (rows of x)."""
    for g in prange(inexact.size):
        if (x.shape[1] == 16) & (mp[2] == 2):
            inexact[g] = microexponent_rows(x, out, g, mp, 16, 2)
        else:
            inexact[g] = microexponent_rows(x, out, g, mp, x.shape[1], mp[2])
