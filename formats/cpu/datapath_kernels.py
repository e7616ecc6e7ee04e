"""The numba kernel of :class:`~lowbit.formats.datapath.Datapath` matmuls:
C = A @ B.T accumulated as a datapath adds, in exact float64 and int64
integer sums, bit for bit with :mod:`lowbit.formats.datapath_reference`.

An aligning datapath (``fraction_bits`` F) needs only each operand's
alignment exponent e (int32) beside its float64 value: a step finds the
largest exponent E among its terms, scales every product (exact in float64:
operands of at most 26 significant bits, magnitudes within 2**+-500) by
2**(F - E), which is exact, cuts it to an integer there (trunc, floor or
rint), and adds the integers in float64, exactly while the sum stays below
2**53 (F + 2 + carries <= 53, checked by the caller); :func:`round_sum`
rounds that sum once into the accumulator.

An exact datapath holds each value as an odd int64 significand and its
exponent (:func:`split`), and adds a step's terms at their lowest bit; when
they span more bits than an int64 holds the step is not computed here: the
output is marked in ``wide`` and the caller takes it from the exact
reference. Promotion adds each interval's partial sum times its scale
product to the running total exactly, with one rounding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import prange

from ..datapath_matmul import NO_EXPONENT
from .compiling import jit
from .float_bits import bits_of, floor_log2_or, pow2

#: alignment_rounding's codes
ALIGN_TOWARD_ZERO, ALIGN_DOWN, ALIGN_NEAREST_EVEN = 0, 1, 2
ALIGNMENT_CODES = {"toward_zero": ALIGN_TOWARD_ZERO, "down": ALIGN_DOWN, "nearest_even": ALIGN_NEAREST_EVEN}
#: the accumulator's rounding modes, as the kernel reads them (its own numbering: this module imports
#: nothing of the formats layer, which imports it)
NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, UP, DOWN, ODD = range(6)
ROUNDING_CODES = {"nearest_even": NEAREST_EVEN, "nearest_away": NEAREST_AWAY, "toward_zero": TOWARD_ZERO,
                  "up": UP, "down": DOWN, "odd": ODD}
#: operand bits the exact path multiplies in an int64 (two of them within 62 bits)
MAX_EXACT_BITS = 31
#: operand bits the aligning path multiplies exactly in float64
MAX_ALIGNED_BITS = 26
#: the magnitudes (as powers of two) whose products stay normal and exact in float64
MAGNITUDE_RANGE = 500
#: the lead exponent :func:`product_term` gives a product that overflowed its format
OVERFLOWED = 1 << 30
#: rows of A computed together, so that each row of B is read from memory once for all of them
ROW_TILE = 8
inline = jit(inline="always")
#: the larger steps compile once as functions of their own (inlining them everywhere makes the kernel
#: take minutes to compile); a call per group of products costs little
function = jit()
parallel = jit(parallel=True)


def split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 values as (odd int64 significand with the value's sign, or 0;
    exponent; significant bits), value = sig * 2**exp. Non-finite values
    give 0 (the kernel reads them from the floats)."""
    finite = np.isfinite(x) & (x != 0)
    mantissa, exponent = np.frexp(np.where(finite, x, 1.0))
    sig = (mantissa * 2.0 ** 53).astype(np.int64)
    lowest = sig & -sig
    trailing = np.frexp(lowest.astype(np.float64))[1] - 1
    sig = np.where(finite, sig >> trailing, 0)
    bits = np.where(finite, np.frexp(np.abs(sig).astype(np.float64))[1], 0)
    return sig, np.where(finite, exponent - 53 + trailing, 0).astype(np.int64), bits.astype(np.int64)


@inline
def bit_length(mag):
    """Bits of a positive int64 (< 2**63)."""
    e = floor_log2_or(bits_of(np.float64(mag)), 0) + 1
    if (mag >> (e - 1)) == 0:  # the float rounded up to the next power of two
        e -= 1
    return e


@inline
def scaled(x, k):
    """x * 2**k, exact for the values here (float64 normal results), on the
    bits where k allows, else by ldexp."""
    if -1022 <= k <= 1023:
        return x * pow2(k)
    return math.ldexp(x, k)


@inline
def split_one(x):
    """:func:`split` of one finite nonzero float64."""
    mantissa, exponent = math.frexp(x)
    sig = np.int64(math.ldexp(mantissa, 53))
    trailing = bit_length(sig & -sig) - 1
    sig >>= trailing
    return sig, np.int64(exponent - 53 + trailing), np.int64(bit_length(abs(sig)))


@function
def round_sum(total, lsb, precision, emin, largest, subnormals, mode):
    """total * 2**lsb (total a nonzero int64) rounded once to the grid of
    ``precision`` bits, normal exponents from ``emin`` and largest finite
    value ``largest``, as :func:`~lowbit.formats.datapath_reference.round_to_grid`."""
    negative = total < 0
    mag = -total if negative else total
    lead = lsb + bit_length(mag) - 1
    quantum = max(lead, emin) - (precision - 1)
    if quantum <= lsb:
        value = scaled(np.float64(mag), lsb)
    else:
        shift = quantum - lsb
        if shift < 63:
            kept = mag >> shift
            rest = mag - (kept << shift)
            half = np.int64(1) << (shift - 1)
            above, at_half = rest > half, rest == half
        else:
            kept = np.int64(0)
            rest = mag
            above = shift == 63 and mag > (np.int64(1) << 62)
            at_half = shift == 63 and mag == (np.int64(1) << 62)
        if rest != 0:
            if mode == NEAREST_EVEN:
                kept += 1 if above or (at_half and (kept & 1) == 1) else 0
            elif mode == NEAREST_AWAY:
                kept += 1 if above or at_half else 0
            elif mode == UP:
                kept += 0 if negative else 1
            elif mode == DOWN:
                kept += 1 if negative else 0
            elif mode == ODD:
                kept |= 1
        value = scaled(np.float64(kept), quantum)
    if value > largest:
        toward_inf = mode == NEAREST_EVEN or mode == NEAREST_AWAY or (mode == UP and not negative) \
            or (mode == DOWN and negative)
        value = np.inf if toward_inf else largest
    elif not subnormals and value < math.ldexp(1.0, emin):
        value = 0.0
    return -value if negative else value


@inline
def rounded_normal(value, precision, largest, mode):
    """A float64 value, at least the grid's smallest normal, rounded to
    ``precision`` bits toward zero or to nearest even on its bits (a carry
    out of the significand steps the exponent, as it should); past
    ``largest`` as :func:`round_sum`."""
    drop = 53 - precision
    if drop == 0:
        return value
    bits = bits_of(value)
    if mode == NEAREST_EVEN:
        bits += (np.int64(1) << (drop - 1)) - 1 + ((bits >> drop) & 1)
    bits &= ~((np.int64(1) << drop) - 1)
    result = np.int64(bits).view(np.float64)
    if abs(result) > largest:
        return math.copysign(np.inf if mode == NEAREST_EVEN else largest, value)
    return result


@inline
def product_term(a_sig, a_exp, a_bits, b_sig, b_exp, b_bits, p_precision, p_emin, p_largest):
    """A nonzero product as (sig, exp, lead exponent): exact, or rounded to
    nearest even on the product grid (``p_precision`` > 0)."""
    sig = a_sig * b_sig
    bits = a_bits + b_bits
    if abs(sig) < (np.int64(1) << (bits - 1)):
        bits -= 1
    exp = a_exp + b_exp
    if p_precision > 0:
        rounded = round_sum(sig, exp, p_precision, p_emin, p_largest, True, NEAREST_EVEN)
        if not math.isfinite(rounded):
            return sig, exp, np.int64(OVERFLOWED)  # the product overflowed its format
        sig, exp, bits = split_one(rounded)
    return sig, exp, exp + bits - 1


@function
def special_result(a_val, b_val, m, n, k0, k1, c):
    """(True, NaN or +-Inf) when c or a product of the step is NaN or Inf,
    as IEEE addition combines them; (False, 0.0) otherwise."""
    has_nan, has_pinf, has_ninf = math.isnan(c), c == np.inf, c == -np.inf
    for k in range(k0, k1):
        p = a_val[m, k] * b_val[n, k]
        has_nan |= math.isnan(p)
        has_pinf |= p == np.inf
        has_ninf |= p == -np.inf
    if has_nan or (has_pinf and has_ninf):
        return True, np.nan
    if has_pinf or has_ninf:
        return True, np.inf if has_pinf else -np.inf
    return False, 0.0


@function
def zero_result(a_val, b_val, m, n, k0, k1, c, mode):
    """The signed zero a step gives when its exact sum is zero: -0 when c and
    every product are -0, or the sum cancels under rounding down."""
    every_negative_zero = c == 0 and math.copysign(1.0, c) < 0
    any_nonzero = c != 0
    for k in range(k0, k1):
        a, b = a_val[m, k], b_val[n, k]
        any_nonzero |= a != 0 and b != 0
        every_negative_zero &= a * b == 0 and (math.copysign(1.0, a) < 0) != (math.copysign(1.0, b) < 0)
    return -0.0 if every_negative_zero or (any_nonzero and mode == DOWN) else 0.0


@inline
def aligned_step(a_val, a_e, b_val, b_e, m, n, k0, k1, c, specials, fraction_bits, align_mode, min_exponent,
                 precision, emin, largest, subnormals, mode):
    """c plus products k0..k1 of row m of A and row n of B, one fused step
    of an aligning datapath (see the module docstring)."""
    if specials or not math.isfinite(c):
        special, value = special_result(a_val, b_val, m, n, k0, k1, c)
        if special:
            return value
    top = min_exponent
    if c != 0:
        top = max(top, max(floor_log2_or(bits_of(c), emin), emin))
    for k in range(k0, k1):
        top = max(top, a_e[m, k] + b_e[n, k])  # a zero's exponent is far below any other
    if top < NO_EXPONENT // 2:  # every term is zero
        return zero_result(a_val, b_val, m, n, k0, k1, c, mode)
    unit = pow2(fraction_bits - top)  # 2**-(E - F): terms become integers in float64, exactly
    if align_mode == ALIGN_TOWARD_ZERO:
        total = np.trunc(c * unit)
        for k in range(k0, k1):
            total += np.trunc(a_val[m, k] * b_val[n, k] * unit)
    elif align_mode == ALIGN_DOWN:
        total = np.floor(c * unit)
        for k in range(k0, k1):
            total += np.floor(a_val[m, k] * b_val[n, k] * unit)
    else:
        total = np.rint(c * unit)
        for k in range(k0, k1):
            total += np.rint(a_val[m, k] * b_val[n, k] * unit)
    if total == 0:
        return zero_result(a_val, b_val, m, n, k0, k1, c, mode)
    lsb = top - fraction_bits
    if (mode == TOWARD_ZERO or mode == NEAREST_EVEN) and -1022 <= lsb <= 1023 - 53:
        value = total * pow2(lsb)  # exact: an integer below 2**53 times a power of two, a normal float64
        if abs(value) >= pow2(emin):  # a normal of the accumulator: round its float64 significand on the bits
            return rounded_normal(value, precision, largest, mode)
    return round_sum(np.int64(total), lsb, precision, emin, largest, subnormals, mode)


@function
def exact_step(a_val, a_sig, a_exp, a_bits, b_val, b_sig, b_exp, b_bits, m, n, k0, k1, c, specials,
               precision, emin, largest, subnormals, mode, adder_bits, p_precision, p_emin, p_largest):
    """c plus products k0..k1, one step of an exact datapath; returns
    (result, wide) with ``wide`` True when the terms span more than an int64."""
    if specials or not math.isfinite(c):
        special, value = special_result(a_val, b_val, m, n, k0, k1, c)
        if special:
            return value, False
    top = NO_EXPONENT
    low = -NO_EXPONENT
    overflow_up = overflow_down = False
    c_sig, c_exp = np.int64(0), np.int64(0)
    if c != 0:
        c_sig, c_exp, c_bits = split_one(c)
        top, low = c_exp + c_bits - 1, c_exp
    for k in range(k0, k1):
        if a_sig[m, k] == 0 or b_sig[n, k] == 0:
            continue
        sig, exp, lead = product_term(a_sig[m, k], a_exp[m, k], a_bits[m, k], b_sig[n, k], b_exp[n, k],
                                      b_bits[n, k], p_precision, p_emin, p_largest)
        if lead >= OVERFLOWED:
            overflow_up |= sig > 0
            overflow_down |= sig < 0
            continue
        top = max(top, lead)
        low = min(low, exp)
    if overflow_up or overflow_down:  # a product overflowed its format: Inf, as IEEE addition goes on
        return (np.nan if overflow_up and overflow_down else np.inf if overflow_up else -np.inf), False
    if top == NO_EXPONENT:
        return zero_result(a_val, b_val, m, n, k0, k1, c, mode), False
    if top - low + adder_bits > 62:
        return np.nan, True
    total = c_sig << (c_exp - low) if c != 0 else np.int64(0)
    for k in range(k0, k1):
        if a_sig[m, k] != 0 and b_sig[n, k] != 0:
            sig, exp, lead = product_term(a_sig[m, k], a_exp[m, k], a_bits[m, k], b_sig[n, k], b_exp[n, k],
                                          b_bits[n, k], p_precision, p_emin, p_largest)
            total += sig << (exp - low)
    if total == 0:
        return zero_result(a_val, b_val, m, n, k0, k1, c, mode), False
    return round_sum(total, low, precision, emin, largest, subnormals, mode), False


@function
def promote(total, partial, sa, sb, precision, emin, largest, subnormals):
    """total + partial * sa * sb, exact, rounded once to nearest even on
    the grid; returns (result, wide) with ``wide`` when the exact sum does
    not fit an int64."""
    scaled = partial * (sa * sb)
    if not (math.isfinite(total) and math.isfinite(partial) and math.isfinite(sa) and math.isfinite(sb)) \
            or partial == 0 or sa == 0 or sb == 0:
        return total + scaled, False  # NaN, Inf or an exact zero term: IEEE float64 addition is exact here
    p_sig, p_exp, p_bits = split_one(partial)
    a_sig, a_exp, a_bits = split_one(sa)
    b_sig, b_exp, b_bits = split_one(sb)
    if p_bits + a_bits + b_bits > 62:
        return np.nan, True
    sig, exp = p_sig * a_sig * b_sig, p_exp + a_exp + b_exp
    top, low = exp + bit_length(abs(sig)) - 1, exp
    c_sig, c_exp = np.int64(0), np.int64(0)
    if total != 0:
        c_sig, c_exp, c_bits = split_one(total)
        top, low = max(top, c_exp + c_bits - 1), min(low, c_exp)
    if top - low + 2 > 62:
        return np.nan, True
    result = (sig << (exp - low)) + ((c_sig << (c_exp - low)) if total != 0 else np.int64(0))
    if result == 0:
        return 0.0, False
    return round_sum(result, low, precision, emin, largest, subnormals, NEAREST_EVEN), False


@parallel
def ieee_float32_matmul(a_val, b_val, c0, out):
    """out[m, n] = c0[m, n] + sum_k fl32(a[m, k] * b[n, k]) one product at a
    time in IEEE float32, each addition rounded to nearest even: float64
    forms each exact sum (or rounds it first: rounding a sum of two float32
    numbers to 53 bits and then to 24 is the single rounding, as 53 >= 2 *
    24 + 2), so the datapath ``ieee_fp32`` without the integer machinery."""
    rows, depth = a_val.shape
    for m in prange(rows):
        for n in range(b_val.shape[0]):
            total = np.float32(c0[m, n])
            for k in range(depth):
                total = np.float32(np.float64(total) + np.float64(np.float32(a_val[m, k] * b_val[n, k])))
            out[m, n] = total


@parallel
def datapath_matmul(a_val, a_e, a_sig, a_exp, a_bits, b_val, b_e, b_sig, b_exp, b_bits, c0,
                    a_scale, b_scale, out, wide, group, interval, specials, fraction_bits, align_mode, min_exponent,
                    precision, emin, largest, subnormals, mode, adder_bits, p_precision, p_emin, p_largest,
                    t_precision, t_emin, t_largest, t_subnormals):
    """out[m, n] = A[m] . B[n] + c0[m, n] as the datapath computes it (see
    the module docstring): aligning with ``fraction_bits`` >= 0 (reading
    the exponents ``e``), exact otherwise (the ``sig``/``exp``/``bits``
    arrays). ``group``: products per step; with ``interval`` > 0 every
    interval i is summed from +0 and promoted, times a_scale[m, i] *
    b_scale[n, i], into a total on the ``t_*`` grid with one nearest-even
    rounding. ``wide[m, n]`` marks the outputs the caller must take from the
    exact reference instead."""
    rows, depth = a_val.shape
    columns = b_val.shape[0]
    span = interval if interval > 0 else max(depth, 1)
    for tile in prange(-(-rows // ROW_TILE)):
        for n in range(columns):  # a row of B is read once for ROW_TILE rows of A
            for m in range(tile * ROW_TILE, min(tile * ROW_TILE + ROW_TILE, rows)):
                total = c0[m, n]
                is_wide = False
                for i, start in enumerate(range(0, depth, span)):
                    end = min(start + span, depth)
                    acc = total if interval == 0 else 0.0
                    for g0 in range(start, end, group):
                        g1 = min(g0 + group, end)
                        if fraction_bits >= 0:
                            acc = aligned_step(a_val, a_e, b_val, b_e, m, n, g0, g1, acc, specials, fraction_bits,
                                               align_mode, min_exponent, precision, emin, largest, subnormals, mode)
                        else:
                            acc, w = exact_step(a_val, a_sig, a_exp, a_bits, b_val, b_sig, b_exp, b_bits, m, n, g0,
                                                g1, acc, specials, precision, emin, largest, subnormals, mode,
                                                adder_bits, p_precision, p_emin, p_largest)
                            is_wide |= w
                    if interval == 0:
                        total = acc
                    else:
                        total, w = promote(total, acc, a_scale[m, i], b_scale[n, i], t_precision, t_emin, t_largest,
                                           t_subnormals)
                        is_wide |= w
                out[m, n] = total
                wide[m, n] = is_wide


def adder_bits(terms: int) -> int:
    """Bits a sum of ``terms`` values, each below 2**t, needs above t: 1 + ceil(log2 terms)."""
    return 1 + max(terms - 1, 0).bit_length()


def _grid(grid: Any) -> tuple[int, int, float, bool]:
    return grid.precision, grid.emin, float(grid.largest), grid.subnormals


def _is_ieee_float32(datapath: Any, interval: int | None) -> bool:
    """Whether the datapath is IEEE float32 one product at a time (products
    and sums rounded to nearest even in fp32): :func:`ieee_float32_matmul`."""
    fp32 = (24, -126, float(np.finfo(np.float32).max), True)
    return (datapath.group == 1 and datapath.fraction_bits is None and datapath.rounding == "nearest_even"
            and datapath.product_grid is not None and _grid(datapath.product_grid) == fp32
            and _grid(datapath.accumulator_grid) == fp32 and not interval)


def _beyond_the_kernel(datapath: Any, a64: np.ndarray, b64: np.ndarray, bits: tuple[int, int],
                       carries: int) -> str | None:
    """Why the kernel cannot compute this product exactly (None when it
    can): an aligning step needs products exact in float64, magnitudes
    within 2**+-MAGNITUDE_RANGE and its aligned sum within float64's 53
    bits; an exact step needs operands of at most MAX_EXACT_BITS bits."""
    if datapath.fraction_bits is None:
        if max(bits) > MAX_EXACT_BITS:
            return f"operand values of {max(bits)} significant bits (the kernel takes {MAX_EXACT_BITS})"
        return None
    if sum(bits) > 53:
        return f"operand values of {bits[0]} and {bits[1]} significant bits (the kernel takes products of 53)"
    for x in (a64, b64):
        magnitudes = np.abs(x[np.isfinite(x) & (x != 0)])
        if magnitudes.size and (magnitudes.max() >= 2.0 ** MAGNITUDE_RANGE
                                or magnitudes.min() < 2.0 ** -MAGNITUDE_RANGE):
            return f"operand magnitudes beyond 2**+-{MAGNITUDE_RANGE}"
    if datapath.fraction_bits + 2 + carries > 53:
        return f"an aligned sum of {datapath.fraction_bits + 2 + carries} bits (the kernel holds 53)"
    return None


def datapath_product(a64: np.ndarray, b64: np.ndarray, c64: np.ndarray, datapath: Any, a_e: np.ndarray,
                     b_e: np.ndarray, interval: int | None, a_scales: np.ndarray,
                     b_scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The ``"cpu"`` backend's datapath matmul (what
    :func:`lowbit.formats.datapath_matmul.datapath_product` asks of it):
    out[m, n] = a64[m] . b64[n] + c64[m, n] as ``datapath`` adds, with the
    alignment exponents ``a_e``, ``b_e`` (int32) and interval scales; the
    mask of the outputs it left to the exact reference; and why it left
    all of them, when it cannot compute this product exactly (else None)."""
    rows, depth = a64.shape
    grid = datapath.accumulator_grid
    group = datapath.group or max(interval or depth, 1)
    carries = adder_bits(group + 1)
    none, none32 = np.zeros((1, 1), np.int64), np.zeros((1, 1), np.int32)
    a_split, b_split = split(a64), split(b64)
    bits = (int(a_split[2].max(initial=0)), int(b_split[2].max(initial=0)))
    out = np.empty((rows, b64.shape[0]))
    if _is_ieee_float32(datapath, interval) and max(bits) <= MAX_ALIGNED_BITS:
        ieee_float32_matmul(a64, b64, c64, out)
        return out, np.zeros(out.shape, dtype=np.bool_), None
    why = _beyond_the_kernel(datapath, a64, b64, bits, carries)
    if why is not None:
        return out, np.ones(out.shape, dtype=np.bool_), why
    if datapath.fraction_bits is not None:
        a_parts, b_parts = (a_e, none, none, none), (b_e, none, none, none)
    else:
        a_parts, b_parts = (none32, *a_split), (none32, *b_split)
    wide = np.zeros(out.shape, dtype=np.bool_)
    specials = not (np.isfinite(a64).all() and np.isfinite(b64).all())
    floor = 2 * NO_EXPONENT if datapath.min_exponent is None else datapath.min_exponent
    products = (0, 0, 0.0) if datapath.product_grid is None else _grid(datapath.product_grid)[:3]
    datapath_matmul(a64, *a_parts, b64, *b_parts, c64, a_scales, b_scales, out, wide, group, interval or 0, specials,
                    -1 if datapath.fraction_bits is None else datapath.fraction_bits,
                    ALIGNMENT_CODES[datapath.alignment_rounding], floor, *_grid(grid),
                    ROUNDING_CODES[datapath.rounding], carries, *products,
                    *_grid(datapath.promotion_datapath.accumulator_grid))
    return out, wide, None
