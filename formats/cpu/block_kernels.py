"""Parallel kernels for BlockFormat (OCP MX, NVFP4): quantize, encode, decode.

The input is an (outer, length, inner) strided view (see :mod:`.views`):
blocks run along ``length``, zero-padded past its end. Block r (in the
order of :class:`lowbit.formats.blocking.BlockLayout`: lines (outer,
inner) in C order, then blocks along the line) computes its scale and its
elements in one pass over its data, as ``BlockFormat.encode_blocks_exact``
does, with the same float64 operations. Tasks take ``GROUP`` blocks each
(a multiple of 8, so every task's packed codes start on a byte).
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ..abi import (
    BLOCK_DIVISOR, BLOCK_ELEMENT_BITS, BLOCK_ELEMENT_EMAX, BLOCK_ELEMENT_MANTISSA_BITS, BLOCK_ELEMENT_MAX,
    BLOCK_HAS_TENSOR_SCALE, BLOCK_ROUND_FLOAT32, BLOCK_RULE, BLOCK_SCALE_EMAX, BLOCK_SCALE_EMIN, BLOCK_SCALE_MAN_BITS,
    BLOCK_SCALE_NAN, BLOCK_SCALE_TINY, BLOCK_SIZE, BLOCK_ZERO_POINT, NEAREST_EVEN, OVERFLOW_SATURATE, RULE_4OVER6,
    RULE_CEIL, RULE_EVEN, RULE_FLOOR, RULE_MSE,
)
from .bits import get_code, put_code
from .compiling import jit, task
from .scalar import (
    counter_uniform, decode_element, encode_element, float_decode, float_encode, floor_log2_or, is_stochastic, load,
    pow2, store,
)

GROUP = 64
inline = jit(inline="always")


def group_count(nrows: int) -> int:
    return -(-nrows // GROUP)


@inline
def block_origin(r, nblocks, inner, block):
    """(outer index, inner index, first position along the axis) of block r."""
    line, k = r // nblocks, r % nblocks
    return line // inner, line % inner, k * block


@inline
def element_at(x, o, i, k, half, tiny):
    """Exact value at position k along the axis; 0 in the padding."""
    if k >= x.shape[1]:
        return 0.0
    v = load(x[o, k, i], half)
    return v * 0.0 if abs(v) < tiny else v


@inline
def scale_exponent(amax, rule, bp):
    """BlockFormat._scale_exponent for positive finite amax."""
    floor_log2 = floor_log2_or(np.float64(amax).view(np.int64), -1100)
    emax = bp[BLOCK_ELEMENT_EMAX]
    if rule == RULE_FLOOR:
        return floor_log2 - emax
    if rule == RULE_CEIL:
        return floor_log2 + (0 if amax == math.ldexp(1.0, floor_log2) else 1) - emax
    if rule == RULE_EVEN:
        carry = amax >= math.ldexp(1.0, floor_log2) * (2.0 - math.ldexp(1.0, -(bp[BLOCK_ELEMENT_MANTISSA_BITS] + 1)))
        return floor_log2 + (1 if carry else 0) - emax
    top = bp[BLOCK_ELEMENT_MAX]
    s = np.int64(math.ceil(math.log2(amax / top)))
    s += 1 if amax > math.ldexp(top, s) else 0
    return s - (1 if amax <= math.ldexp(top, s - 1) else 0)


@inline
def block_range(x, o, i, k0, bp, half, tiny):
    """(amax, lo = min(min x, 0), hi = max(max x, 0), NaN block) over the
    finite values of the block starting at k0 (padding counts as zeros)."""
    amax, lo, hi, bad = 0.0, 0.0, 0.0, False
    for j in range(bp[BLOCK_SIZE]):
        v = element_at(x, o, i, k0 + j, half, tiny)
        if abs(v) < np.inf:
            amax, lo, hi = max(amax, abs(v)), min(lo, v), max(hi, v)
        else:
            bad = True
    return amax, lo, hi, bad


@inline
def candidate_count(bp):
    """How many candidate scales the block's rule tries."""
    rule = bp[BLOCK_RULE]
    if rule == RULE_MSE:
        return 16 if bp[BLOCK_ZERO_POINT] or bp[BLOCK_SCALE_MAN_BITS] > 0 else 4
    return 2 if rule == RULE_4OVER6 else 1


@inline
def round_half_even(v):
    """v >= 0 rounded to the nearest integer, ties to even (torch.round)."""
    f = math.floor(v)
    d = v - f
    return f + 1.0 if d > 0.5 or (d == 0.5 and f % 2.0 == 1.0) else f


@inline
def candidate_scale(amax, lo, hi, c, sd, bp):
    """(scale code, scale value, zero point) of candidate c of the block's
    rule: BlockFormat._candidates for one block."""
    p = 1.0 - c / 32.0  # MSE_RATIOS[c]; 1 for the rules with one candidate
    if bp[BLOCK_ZERO_POINT]:
        levels = np.float64((1 << bp[BLOCK_ELEMENT_BITS]) - 1)
        lo_p, hi_p = lo * p, hi * p
        code, _ = float_encode((hi_p - lo_p) / levels, sd, NEAREST_EVEN, OVERFLOW_SATURATE, 0.0)
        value = float_decode(code, sd)
        value = bp[BLOCK_SCALE_TINY] if value == 0.0 else value
        value = 1.0 if hi_p == lo_p else value
        code, _ = float_encode(value, sd, NEAREST_EVEN, OVERFLOW_SATURATE, 0.0)
        return code, value, min(max(round_half_even(-lo_p / value), 0.0), levels)
    rule = bp[BLOCK_RULE]
    if bp[BLOCK_SCALE_MAN_BITS] > 0:
        if rule == RULE_4OVER6:
            ratio = amax / (bp[BLOCK_DIVISOR] * (6.0 if c == 0 else 4.0))
        else:
            ratio = amax * p / (bp[BLOCK_DIVISOR] * bp[BLOCK_ELEMENT_MAX])
        code, _ = float_encode(ratio, sd, NEAREST_EVEN, OVERFLOW_SATURATE, 0.0)
        return code, float_decode(code, sd), 0.0
    if amax > 0.0:
        exponent = scale_exponent(amax, RULE_FLOOR, bp) + 1 - c if rule == RULE_MSE else scale_exponent(amax, rule, bp)
    else:
        exponent = bp[BLOCK_SCALE_EMIN]
    value = pow2(min(max(exponent, bp[BLOCK_SCALE_EMIN]), bp[BLOCK_SCALE_EMAX]))
    code, _ = float_encode(value, sd, NEAREST_EVEN, OVERFLOW_SATURATE, 0.0)
    return code, value, 0.0


@inline
def element_code(v, full_scale, zero, bad, ed, wd, mode, u, bp):
    """The element code of v in a block with scale ``full_scale`` (and zero point ``zero``)."""
    scaled = v / (full_scale if full_scale > 0.0 else 1.0) if abs(v) < np.inf else 0.0
    # only float64 inputs far below the scale underflow here: keep them at
    # 2**-1020, which rounds like any magnitude below every format's values
    if abs(scaled) < 2.0 ** -1020 and v != 0.0 and abs(v) < np.inf:
        scaled = math.copysign(2.0 ** -1020, v)
    if bp[BLOCK_ZERO_POINT]:
        wide, _ = encode_element(scaled, wd, mode, OVERFLOW_SATURATE, u)
        levels = np.float64((1 << bp[BLOCK_ELEMENT_BITS]) - 1)
        q = min(max(decode_element(wide, wd) + zero, 0.0), levels)
        return 0 if bad else np.int64(q)
    code, _ = encode_element(scaled, ed, mode, OVERFLOW_SATURATE, u)
    return code if (full_scale > 0.0) & (not bad) else 0


@inline
def block_product(code, scale_value, zero, ed):
    """(element - zero point) * scale, exact in float64: BlockFormat._block_values of one element."""
    return (decode_element(code, ed) - zero) * scale_value


@inline
def element_value(code, scale_value, zero, bad, ed, bp):
    """BlockFormat.decode_blocks_exact of one element."""
    value = block_product(code, scale_value, zero, ed)
    if bp[BLOCK_HAS_TENSOR_SCALE]:
        value = np.float64(np.float32(value) * np.float32(bp[BLOCK_DIVISOR]))
    elif bp[BLOCK_ROUND_FLOAT32]:
        value = np.float64(np.float32(value))
    return np.nan if bad else value


@inline
def block_scale(x, o, i, k0, sd, ed, wd, bp, half, tiny):
    """(scale code, scale value, scale times the tensor scale, zero point,
    NaN block) of the block starting at k0: its rule's one candidate, or the
    first with the strictly least squared error (summed in index order in
    float64, nearest-even elements), as BlockFormat._least_error."""
    amax, lo, hi, bad = block_range(x, o, i, k0, bp, half, tiny)
    divisor = bp[BLOCK_DIVISOR]
    count = candidate_count(bp)
    if count == 1:
        code, value, zero = candidate_scale(amax, lo, hi, 0, sd, bp)
    else:
        code, value, zero, best = 0, 0.0, 0.0, np.inf
        for c in range(count):
            c_code, c_value, c_zero = candidate_scale(amax, lo, hi, c, sd, bp)
            error = 0.0
            for j in range(bp[BLOCK_SIZE]):
                v = element_at(x, o, i, k0 + j, half, tiny)
                v = v if abs(v) < np.inf else 0.0
                e_code = element_code(v, c_value * divisor, c_zero, False, ed, wd, NEAREST_EVEN, 0.0, bp)
                d = block_product(e_code, c_value, c_zero, ed) * divisor - v
                error = error + d * d
            if c == 0 or error < best:
                best, code, value, zero = error, c_code, c_value, c_zero
    return (bp[BLOCK_SCALE_NAN] if bad else code), value, value * divisor, (0.0 if bad else zero), bad


@task
def quantize_group(x, out, g, nblocks, ed, sd, wd, bp, mode, key, half, tiny):
    lost = False
    block = bp[BLOCK_SIZE]
    for r in range(g * GROUP, min(g * GROUP + GROUP, x.shape[0] * x.shape[2] * nblocks)):
        o, i, k0 = block_origin(r, nblocks, x.shape[2], block)
        _, scale_value, full_scale, zero, bad = block_scale(x, o, i, k0, sd, ed, wd, bp, half, tiny)
        for j in range(min(block, x.shape[1] - k0)):
            v = element_at(x, o, i, k0 + j, half, tiny)
            u = counter_uniform(key, r * block + j) if is_stochastic(mode) else 0.0
            code = element_code(v, full_scale, zero, bad, ed, wd, mode, u, bp)
            narrow, exact = store(element_value(code, scale_value, zero, bad, ed, bp), out, half)
            out[o, k0 + j, i] = narrow
            lost |= not exact
    return lost


# The parallel kernels below pass their tasks np.int64(g): numba types a
# prange index as int64 and lowers the parallel loop with a uint64 one, so a
# task given g itself would be compiled twice for every signature.


@jit(parallel=True)
def quantize_blocks(x, out, nblocks, ed, sd, wd, bp, mode, key, half, tiny, inexact):
    """out (the shape of x, contiguous) = x encoded in blocks and decoded;
    inexact[task] says whether out's dtype failed to hold a result exactly.
    ``wd``: the wide integers zero-point blocks round x / s on."""
    for g in prange(inexact.size):
        inexact[g] = quantize_group(x, out, np.int64(g), nblocks, ed, sd, wd, bp, mode, key, half, tiny)


@task
def encode_group(x, elements, scales, zeros, g, nblocks, ed, sd, wd, bp, mode, key, half, tiny):
    block, bits = bp[BLOCK_SIZE], bp[BLOCK_ELEMENT_BITS]
    for r in range(g * GROUP, min(g * GROUP + GROUP, scales.size)):
        o, i, k0 = block_origin(r, nblocks, x.shape[2], block)
        scale_code, _, full_scale, zero, bad = block_scale(x, o, i, k0, sd, ed, wd, bp, half, tiny)
        scales[r] = scale_code
        if bp[BLOCK_ZERO_POINT]:
            put_code(zeros, r * bits, np.int64(zero), bits)
        for j in range(block):
            v = element_at(x, o, i, k0 + j, half, tiny)
            u = counter_uniform(key, r * block + j) if is_stochastic(mode) else 0.0
            put_code(elements, (r * block + j) * bits, element_code(v, full_scale, zero, bad, ed, wd, mode, u, bp),
                     bits)


@jit(parallel=True)
def encode_blocks(x, elements, scales, zeros, nblocks, ed, sd, wd, bp, mode, key, half, tiny):
    """Packed element codes into ``elements`` (zeroed), one scale code per
    block into ``scales`` and, for zero-point formats, packed zero points
    into ``zeros`` (zeroed)."""
    for g in prange((scales.size + GROUP - 1) // GROUP):
        encode_group(x, elements, scales, zeros, np.int64(g), nblocks, ed, sd, wd, bp, mode, key, half, tiny)


@task
def decode_group(elements, scales, zeros, out, g, nblocks, ed, sd, bp):
    block, bits = bp[BLOCK_SIZE], bp[BLOCK_ELEMENT_BITS]
    for r in range(g * GROUP, min(g * GROUP + GROUP, scales.size)):
        o, i, k0 = block_origin(r, nblocks, out.shape[2], block)
        scale_code = np.int64(scales[r])
        scale_value = float_decode(scale_code, sd)
        zero = np.float64(get_code(zeros, r * bits, bits)) if bp[BLOCK_ZERO_POINT] else 0.0
        bad = scale_code == bp[BLOCK_SCALE_NAN]
        for j in range(min(block, out.shape[1] - k0)):
            code = get_code(elements, (r * block + j) * bits, bits)
            out[o, k0 + j, i] = element_value(code, scale_value, zero, bad, ed, bp)


@jit(parallel=True)
def decode_blocks(elements, scales, zeros, out, nblocks, ed, sd, bp):
    """out (outer, length, inner) = the decoded values of packed codes (and packed zero points)."""
    for g in prange((scales.size + GROUP - 1) // GROUP):
        decode_group(elements, scales, zeros, out, np.int64(g), nblocks, ed, sd, bp)


@jit(parallel=True)
def finite_amax(x, half, tiny):
    """The largest finite magnitude in a (planes, rows, cols) view."""
    amax = 0.0
    for p in prange(x.shape[0] * x.shape[1]):
        row = 0.0
        for c in range(x.shape[2]):
            v = abs(load(x[p // x.shape[1], p % x.shape[1], c], half))
            v = 0.0 if v < tiny else v
            row = max(row, v if v < np.inf else 0.0)
        amax = max(amax, row)
    return amax
