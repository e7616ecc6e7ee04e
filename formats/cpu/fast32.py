"""The float32 fast path: nearest-even (and stochastic) rounding of float32
and bfloat16 data computed in 32-bit lanes (twice the SIMD width of the
float64 path, and a third of its instructions), for formats whose values
are all float32 numbers.

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

import functools

import numpy as np
from numba import prange, types
from numba.extending import intrinsic, overload

from ..abi import (
    INF_MAG, NAN_NEGATIVE, NAN_POSITIVE, NEAREST_EVEN, OVERFLOW_INF, OVERFLOW_SATURATE, SIGN_CODE, STOCHASTIC,
    element_descriptor,
)
from ..float_format import FloatFormat
from ..int_format import IntFormat
from .compiling import jit, task
from .scalar import counter_uniform, fraction_upper, is_stochastic, pow2

inline = jit(inline="always")
SIGN32, MAGNITUDE32, EXPONENT32 = 0x80000000, 0x7FFFFFFF, 0x7F800000
#: rows (blocks) per parallel task of the block fast paths
ROWS_PER_TASK = 64

# Fields of float_params' tuple: the mantissa width, the smallest normal
# value, magic = 2**(emin - m + 23), the largest value, what lies beyond it
# (Inf or NaN), whether to saturate, the flush threshold, emin, the sign
# bit's code, the codes of Inf and NaN (-1 without them) and 1 / quantum
# (float64 and float32, the latter capped at 2**127)
(MAN, SMALLEST_NORMAL, MAGIC, LARGEST, BEYOND, SATURATES, TINY, EMIN, SIGN_BIT, INF_CODE, NAN_POSITIVE_CODE,
 NAN_NEGATIVE_CODE, INVERSE_QUANTUM, INVERSE_QUANTUM32) = range(14)
# Fields of int_params' tuple: 2**frac_bits, 2**-frac_bits, qmin, qmax, the flush threshold, the width
INT_UP, INT_DOWN, INT_QMIN, INT_QMAX, INT_TINY, INT_WIDTH = range(6)


@functools.lru_cache(maxsize=256)
def float_params(fmt, overflow: str, flush_subnormals: bool) -> tuple | None:
    """The fast path's parameters for a FloatFormat, or None if it does not qualify."""
    if not (isinstance(fmt, FloatFormat) and fmt.signed and fmt.subnormals and fmt.has_negative_zero
            and 1 <= fmt.man_bits <= 22 and fmt.emin - fmt.man_bits >= -149 and fmt.emin >= -126
            and fmt.max <= float(np.finfo(np.float32).max)):
        return None
    d = element_descriptor(fmt)
    policy = ("saturate", "inf", "nan").index(overflow)
    beyond = np.inf if policy == OVERFLOW_INF else np.nan
    return (fmt.man_bits, np.float32(2.0 ** fmt.emin), np.float32(2.0 ** (fmt.emin - fmt.man_bits + 23)),
            np.float32(fmt.max), np.float32(beyond), policy == OVERFLOW_SATURATE, _tiny(flush_subnormals),
            fmt.emin, d[SIGN_CODE], d[INF_MAG], d[NAN_POSITIVE], d[NAN_NEGATIVE],
            2.0 ** (fmt.man_bits - fmt.emin), np.float32(min(2.0 ** (fmt.man_bits - fmt.emin), 2.0 ** 127)))


@functools.lru_cache(maxsize=256)
def int_params(fmt, flush_subnormals: bool) -> tuple | None:
    """The fast path's parameters for an IntFormat, or None if it does not qualify."""
    if not (isinstance(fmt, IntFormat) and fmt.bits <= 24 and -100 <= fmt.frac_bits <= 100):
        return None
    return (np.float32(2.0 ** fmt.frac_bits), np.float32(2.0 ** -fmt.frac_bits), np.float32(fmt.qmin),
            np.float32(fmt.qmax), _tiny(flush_subnormals), fmt.bits)


def _tiny(flush_subnormals: bool) -> np.float32:
    return np.float32(np.finfo(np.float32).tiny if flush_subnormals else 0.0)


@intrinsic
def shift_right32(typingctx, value, count):
    """value >> count (arithmetic) computed in 32 bits: numba widens integer
    arithmetic to 64 bits, and a shift by a runtime count stays that wide,
    halving the SIMD lanes; both are truncated to int32 first (value must
    fit, 0 <= count < 32)."""
    if not (isinstance(value, types.Integer) and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        value32, count32 = (context.cast(builder, arg, kind, types.int32) for arg, kind in zip(args, signature.args))
        return builder.ashr(value32, count32)
    return types.int32(value, count), codegen


# -- per element -------------------------------------------------------------------------
@inline
def nearest_magnitude(a, p):
    """Finite a >= 0 (float32) rounded to nearest even on the grid of the
    float format ``p`` continued past its largest value."""
    m, smallest_normal, magic = p[MAN], p[SMALLEST_NORMAL], p[MAGIC]
    s = 23 - m
    a_bits = np.int32(np.float32(a).view(np.int32))  # < 2**31 - 2**23, so the sums below stay in int32
    normal = np.int32(a_bits + ((1 << (s - 1)) - 1) + (shift_right32(a_bits, s) & 1)) & np.int32(-(1 << s))
    return (a + magic) - magic if a < smallest_normal else np.int32(normal).view(np.float32)


@inline
def float_nearest(x, p):
    """(|result|, sign bit) of float32 x rounded to nearest even in the float
    format ``p`` (float_params), overflow per its policy; NaN stays NaN."""
    largest, beyond, saturate, tiny = p[LARGEST], p[BEYOND], p[SATURATES], p[TINY]
    bits = np.float32(x).view(np.uint32)
    sign = np.uint32(bits & SIGN32)
    a = np.uint32(bits & MAGNITUDE32).view(np.float32)
    a = np.float32(0.0) if a < tiny else a
    r = nearest_magnitude(a, p)
    r = (largest if saturate else beyond) if r > largest else r
    return (r if a == a else a), sign


@inline
def with_sign(r, sign):
    return np.uint32(np.float32(r).view(np.uint32) | sign).view(np.float32)


@inline
def code_constants(p):
    """float_code's constants for the float format ``p``, in 32-bit lanes:
    the normal codes' offset and shift, the codes of Inf, the sign and NaN
    of each sign, 1 / quantum as two float32 factors (both exact powers of
    two: 1 / quantum may exceed 2**127) and whether NaN has a code."""
    i32 = np.int32
    second = np.float32(p[INVERSE_QUANTUM] / np.float64(p[INVERSE_QUANTUM32]))
    return (i32((127 + p[EMIN] - 1) << 23), i32(23 - p[MAN]), i32(p[INF_CODE]), i32(p[SIGN_BIT]),
            i32(p[NAN_POSITIVE_CODE]), i32(p[NAN_NEGATIVE_CODE]), p[INVERSE_QUANTUM32], second,
            p[NAN_POSITIVE_CODE] >= 0)


@inline
def float_code(r, sign, p, c):
    """The code of float_nearest's (r, sign), in 32-bit lanes (c:
    code_constants(p)), and 1 for NaN in a format without NaN, else 0. A
    subnormal r's code is r / quantum: two exact float32 products."""
    normal_offset, shift, inf_code, sign_code, nan_positive, nan_negative, inverse_quantum, second, has_nan = c
    r_bits = np.int32(np.float32(r).view(np.int32))
    normal_code = shift_right32(np.int32(r_bits - normal_offset), shift)  # r's dropped mantissa bits are 0
    subnormal_code = np.int32(np.float32(np.float32(r) * inverse_quantum) * second)
    code = np.int32(normal_code if r >= p[SMALLEST_NORMAL] else subnormal_code)
    code = inf_code if r == np.float32(np.inf) else code
    code = np.int32(code + (sign_code if sign != 0 else np.int32(0)))
    is_nan = r != r
    code = (nan_negative if sign != 0 else nan_positive) if is_nan else code
    return code, np.int32(1) if is_nan and not has_nan else np.int32(0)


@inline
def finite_code(r, sign, p):
    """float_code for a finite r in 32-bit lanes (the MX path, where elements
    saturate): the normal code straight from r's bits, the subnormal one as
    r / quantum (p[INVERSE_QUANTUM32], exact when the format's m - emin <= 127)."""
    m, smallest_normal, emin = p[MAN], p[SMALLEST_NORMAL], p[EMIN]
    r_bits = np.int32(np.float32(r).view(np.int32))
    normal_code = shift_right32(r_bits - ((127 + emin - 1) << 23), 23 - m)
    code = normal_code if r >= smallest_normal else np.int32(r * p[INVERSE_QUANTUM32])
    return code | (p[SIGN_BIT] if sign else 0)


@inline
def int_nearest(x, p):
    """float32 x rounded to nearest even in the integer format ``p``
    (int_params), saturating, as the integer q (a float32); NaN stays NaN."""
    up, qmin, qmax, tiny = p[INT_UP], p[INT_QMIN], p[INT_QMAX], p[INT_TINY]
    a = abs(np.float32(x))
    a = np.float32(0.0) if a < tiny else a
    t = a * up
    magic = np.float32(1 << 23)
    r = (t + magic) - magic if t < magic else t
    q = -r if np.float32(x).view(np.int32) < 0 else r
    q = min(max(q, qmin), qmax)
    return (q + np.float32(0.0)) if x == x else np.float32(np.nan)  # integers have no NaN code: +NaN


@inline
def float_stochastic(x, u, p, mode):
    """(|result|, sign bit) of float32 x rounded stochastically in the float
    format ``p``: up with probability (|x| - lo) / (hi - lo), decided by
    fraction_upper on that fraction (exact in float64, as the reference
    decides u * (hi - lo) < |x| - lo, or on the same fraction under
    sr_bits); overflow per the policy; NaN stays NaN."""
    m, smallest_normal, largest = p[MAN], p[SMALLEST_NORMAL], p[LARGEST]
    beyond, saturate, tiny = p[BEYOND], p[SATURATES], p[TINY]
    bits = np.float32(x).view(np.uint32)
    sign = np.uint32(bits & SIGN32)
    a = np.uint32(bits & MAGNITUDE32).view(np.float32)
    a = np.float32(0.0) if a < tiny else a
    s = 23 - m
    a_bits = np.uint32(np.float32(a).view(np.uint32))
    low = np.uint32(a_bits & np.uint32(~((1 << s) - 1)))
    normal_lo = np.uint32(low).view(np.float32)
    normal_hi = np.uint32(low + np.uint32(1 << s)).view(np.float32)
    normal_fraction = np.float64(a_bits - low) * pow2(-s)
    steps = np.float64(a) * p[INVERSE_QUANTUM]  # |x| in units of the subnormal quantum, exactly
    whole = np.floor(steps)
    normal = a >= smallest_normal
    up = fraction_upper(mode, normal_fraction if normal else steps - whole, u)
    sub = np.float32((whole + (1.0 if up else 0.0)) / p[INVERSE_QUANTUM])
    r = (normal_hi if up else normal_lo) if normal else sub
    r = (largest if saturate else beyond) if r > largest else r
    return (r if a == a else a), sign


@inline
def float_rounded(x, i, p, key, mode):
    """float_nearest, or stochastic rounding (``mode``: STOCHASTIC or
    STOCHASTIC_BITS + k) with element i's uniform."""
    if is_stochastic(mode):
        return float_stochastic(x, counter_uniform(key, i), p, mode)
    return float_nearest(x, p)


@inline
def int_rounded(x, i, p, key, mode):
    """int_nearest, or stochastic rounding with element i's uniform."""
    if not is_stochastic(mode):
        return int_nearest(x, p)
    up, qmin, qmax, tiny = p[INT_UP], p[INT_QMIN], p[INT_QMAX], p[INT_TINY]
    a = abs(np.float32(x))
    a = np.float32(0.0) if a < tiny else a
    t = np.float64(a * up)
    whole = np.floor(t)
    r = np.float32(whole + (1.0 if fraction_upper(mode, t - whole, counter_uniform(key, i)) else 0.0))
    q = -r if np.float32(x).view(np.int32) < 0 else r
    q = min(max(q, qmin), qmax)
    return (q + np.float32(0.0)) if x == x else np.float32(np.nan)  # integers have no NaN code: +NaN


# -- float32 and bfloat16 data (bfloat16 travels as int16 bits) ------------------------------
def as_float32(value):
    """An input element as float32 (exact for bfloat16)."""


@overload(as_float32, inline="always")
def _as_float32(value):
    if isinstance(value, types.Float):
        return lambda value: np.float32(value)
    return lambda value: np.int32(np.int32(value) << 16).view(np.float32)


def to_output(value, out):
    """A float32 result in out's dtype, and whether that is exact."""


@overload(to_output, inline="always")
def _to_output(value, out):
    if isinstance(out.dtype, types.Float):
        return lambda value, out: (value, True)

    def impl(value, out):
        bits = np.float32(value).view(np.int32)
        return np.int16(bits >> 16), ((bits & 0xFFFF) == 0) | (value != value)
    return impl


def codes_per_word(codes):
    """How many codes of the integer array ``codes`` one uint32 holds (1, 2
    or 4), a constant of the compiled function (``itemsize`` is read at run
    time, which keeps a loop over it from unrolling)."""


@overload(codes_per_word, inline="always")
def _codes_per_word(codes):
    per = 32 // codes.dtype.bitwidth
    return lambda codes: per


# -- kernels (flat C-contiguous float32 or bfloat16 in, flat out; ``mode``, NEAREST_EVEN
# -- or stochastic, picks the rounding, and nearest even is a loop compiled for it alone). The
# -- quantize kernels return how many results the output dtype could not hold. ----------
@inline
def signed_nans(p):
    """Whether the format has NaN codes of both signs (IEEE, fn)."""
    return p[NAN_POSITIVE_CODE] >= 0 and p[NAN_NEGATIVE_CODE] != p[NAN_POSITIVE_CODE]


@inline
def float_value(x, i, out, p, key, mode):
    r, sign = float_rounded(as_float32(x), i, p, key, mode)
    if r != r and not signed_nans(p):  # NaN codes without a sign (or none at all) decode to +NaN
        sign = np.uint32(0)
    return to_output(with_sign(r, sign), out)



@jit(parallel=True)
def quantize_float(x, out, p, key, mode):
    lost = 0
    if mode == STOCHASTIC:  # the 53-bit draw, a loop of its own (its decision vectorizes)
        for i in prange(x.size):
            value, exact = float_value(x[i], i, out, p, key, STOCHASTIC)
            out[i] = value
            lost += 0 if exact else 1
    elif is_stochastic(mode):
        for i in prange(x.size):
            value, exact = float_value(x[i], i, out, p, key, mode)
            out[i] = value
            lost += 0 if exact else 1
    else:
        for i in prange(x.size):
            value, exact = float_value(x[i], i, out, p, key, NEAREST_EVEN)
            out[i] = value
            lost += 0 if exact else 1
    return lost


@inline
def float_encoded(x, i, p, key, mode, c):
    r, sign = float_rounded(as_float32(x), i, p, key, mode)
    return float_code(r, sign, p, c)


#: elements per task of the encode kernels, which count invalid elements in
#: 32-bit lanes per task (a 64-bit count across the loop halves its SIMD width)
ENCODE_SPAN = 1 << 14


@inline
def float_codes_into(xs, outs, start, p, key, mode, c):
    """float_encoded of each element of xs (element start + i of the call)
    into outs; returns the number the format cannot represent. The codes of
    codes_per_word neighbours are stored as one uint32 word, code k in its
    bits from k * width up (little-endian, so byte order is code order;
    outs 4-byte aligned): a store per uint8 or uint16 code compiles, for
    AVX-512, to a loop that ran at half speed where the input started 0, 32
    or 48 bytes into a cache line, as torch's allocations start
    (benchmarks/encode_alignment.py)."""
    per = codes_per_word(outs)
    width = 32 // per
    mask = np.uint32(0xFFFFFFFF >> (32 - width))  # a NaN's code in a format without NaN is -1
    whole = xs.size // per * per if outs.ctypes.data % 4 == 0 else 0
    words = outs[:whole].view(np.uint32)
    count = np.int32(0)
    for w in range(words.size):
        word = np.uint32(0)
        for k in range(per):
            code, invalid = float_encoded(xs[per * w + k], start + per * w + k, p, key, mode, c)
            word |= np.uint32((np.uint32(code) & mask) << np.uint32(width * k))
            count = np.int32(count + invalid)
        words[w] = word
    for i in range(whole, xs.size):
        code, invalid = float_encoded(xs[i], start + i, p, key, mode, c)
        outs[i] = code
        count = np.int32(count + invalid)
    return count


@jit(parallel=True)
def encode_float(x, out, p, key, mode):
    """Codes into out (uint8, uint16 or uint32); returns the number of
    elements the format cannot represent."""
    c = code_constants(p)
    bad = np.zeros(-(-x.size // ENCODE_SPAN), np.int32)
    for s in prange(bad.size):
        start = s * ENCODE_SPAN
        xs, outs = x[start:start + ENCODE_SPAN], out[start:start + ENCODE_SPAN]
        if mode == STOCHASTIC:  # the 53-bit draw, a loop of its own (its decision vectorizes)
            bad[s] = float_codes_into(xs, outs, start, p, key, STOCHASTIC, c)
        elif is_stochastic(mode):
            bad[s] = float_codes_into(xs, outs, start, p, key, mode, c)
        else:
            bad[s] = float_codes_into(xs, outs, start, p, key, NEAREST_EVEN, c)
    return bad.sum()


@jit(parallel=True)
def quantize_int(x, out, p, key, mode):
    down = p[INT_DOWN]
    lost = 0
    if mode == STOCHASTIC:  # the 53-bit draw, a loop of its own (its decision vectorizes)
        for i in prange(x.size):
            value, exact = to_output(int_rounded(as_float32(x[i]), i, p, key, STOCHASTIC) * down, out)
            out[i] = value
            lost += 0 if exact else 1
    elif is_stochastic(mode):
        for i in prange(x.size):
            value, exact = to_output(int_rounded(as_float32(x[i]), i, p, key, mode) * down, out)
            out[i] = value
            lost += 0 if exact else 1
    else:
        for i in prange(x.size):
            value, exact = to_output(int_rounded(as_float32(x[i]), i, p, key, NEAREST_EVEN) * down, out)
            out[i] = value
            lost += 0 if exact else 1
    return lost


@inline
def int_encoded(q, mask):
    """The code of int_rounded's q (|q| < 2**24, so int32 holds it), and whether q is NaN."""
    return (np.int32(np.int32(q) & mask) if q == q else np.int32(0)), (np.int32(0) if q == q else np.int32(1))


@task
def int_codes_into(xs, outs, start, p, key, mode, mask):
    """The codes of int_rounded of each element of xs (element start + i of
    the call) into outs; returns the number of NaN elements."""
    count = np.int32(0)
    for i in range(xs.size):
        code, invalid = int_encoded(int_rounded(as_float32(xs[i]), start + i, p, key, mode), mask)
        outs[i] = code
        count = np.int32(count + invalid)
    return count


@jit(parallel=True)
def encode_int(x, out, p, key, mode):
    """Codes into out; returns the number of NaN elements (not encodable)."""
    mask = np.int32((1 << p[INT_WIDTH]) - 1)
    bad = np.zeros(-(-x.size // ENCODE_SPAN), np.int32)
    for s in prange(bad.size):
        start = s * ENCODE_SPAN
        xs, outs = x[start:start + ENCODE_SPAN], out[start:start + ENCODE_SPAN]
        if mode == STOCHASTIC:  # the 53-bit draw, a loop of its own (its decision vectorizes)
            bad[s] = int_codes_into(xs, outs, start, p, key, STOCHASTIC, mask)
        elif is_stochastic(mode):
            bad[s] = int_codes_into(xs, outs, start, p, key, mode, mask)
        else:
            bad[s] = int_codes_into(xs, outs, start, p, key, NEAREST_EVEN, mask)
    return bad.sum()
