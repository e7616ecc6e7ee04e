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
    BLOCK_HAS_TENSOR_SCALE, BLOCK_RULE, BLOCK_SCALE_EMAX, BLOCK_SCALE_EMIN, BLOCK_SCALE_NAN, BLOCK_SIZE,
    NEAREST_EVEN, OVERFLOW_SATURATE, RULE_AMAX, RULE_CEIL, RULE_EVEN, RULE_FLOOR, STOCHASTIC,
)
from .bits import get_code, put_code
from .compiling import jit
from .scalar import (
    counter_uniform, decode_element, encode_element, float_decode, float_encode, floor_log2_or, load, pow2, store,
)

GROUP = 64
inline = jit(inline="always")
#: what one parallel task runs: compiled on its own (inlining it into the
#: parallel loop makes numba's compile time explode)
task = jit()


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
def block_scale(x, o, i, k0, sd, bp, half, tiny):
    """(scale code, scale value, scale times the tensor scale, NaN block) of
    the block starting at k0."""
    amax, bad = 0.0, False
    for j in range(bp[BLOCK_SIZE]):
        v = element_at(x, o, i, k0 + j, half, tiny)
        finite = abs(v) < np.inf
        bad |= not finite
        amax = max(amax, abs(v) if finite else 0.0)
    rule = bp[BLOCK_RULE]
    if rule == RULE_AMAX:
        ratio = amax / (bp[BLOCK_DIVISOR] * bp[BLOCK_ELEMENT_MAX])
        code, _ = float_encode(ratio, sd, NEAREST_EVEN, OVERFLOW_SATURATE, 0.0)
        value = float_decode(code, sd)
    else:
        exponent = scale_exponent(amax, rule, bp) if amax > 0.0 else bp[BLOCK_SCALE_EMIN]
        value = pow2(min(max(exponent, bp[BLOCK_SCALE_EMIN]), bp[BLOCK_SCALE_EMAX]))
        code, _ = float_encode(value, sd, NEAREST_EVEN, OVERFLOW_SATURATE, 0.0)
    return (bp[BLOCK_SCALE_NAN] if bad else code), value, value * bp[BLOCK_DIVISOR], bad


@inline
def element_code(v, full_scale, bad, ed, mode, u):
    """The element code of v in a block with scale ``full_scale``."""
    scaled = v / (full_scale if full_scale > 0.0 else 1.0) if abs(v) < np.inf else 0.0
    # only float64 inputs far below the scale underflow here: keep them at
    # 2**-1020, which rounds like any magnitude below every format's values
    if abs(scaled) < 2.0 ** -1020 and v != 0.0 and abs(v) < np.inf:
        scaled = math.copysign(2.0 ** -1020, v)
    code, _ = encode_element(scaled, ed, mode, OVERFLOW_SATURATE, u)
    return code if (full_scale > 0.0) & (not bad) else 0


@inline
def element_value(code, scale_value, bad, ed, bp):
    """BlockFormat.decode_blocks_exact of one element."""
    value = decode_element(code, ed) * scale_value
    if bp[BLOCK_HAS_TENSOR_SCALE]:
        value = np.float64(np.float32(value) * np.float32(bp[BLOCK_DIVISOR]))
    return np.nan if bad else value


@task
def quantize_group(x, out, g, nblocks, ed, sd, bp, mode, key, half, tiny):
    lost = False
    block = bp[BLOCK_SIZE]
    for r in range(g * GROUP, min(g * GROUP + GROUP, x.shape[0] * x.shape[2] * nblocks)):
        o, i, k0 = block_origin(r, nblocks, x.shape[2], block)
        _, scale_value, full_scale, bad = block_scale(x, o, i, k0, sd, bp, half, tiny)
        for j in range(min(block, x.shape[1] - k0)):
            v = element_at(x, o, i, k0 + j, half, tiny)
            u = counter_uniform(key, r * block + j) if mode == STOCHASTIC else 0.0
            code = element_code(v, full_scale, bad, ed, mode, u)
            narrow, exact = store(element_value(code, scale_value, bad, ed, bp), out, half)
            out[o, k0 + j, i] = narrow
            lost |= not exact
    return lost


@jit(parallel=True)
def quantize_blocks(x, out, nblocks, ed, sd, bp, mode, key, half, tiny, inexact):
    """out (the shape of x, contiguous) = x encoded in blocks and decoded;
    inexact[task] says whether out's dtype failed to hold a result exactly."""
    for g in prange(inexact.size):
        inexact[g] = quantize_group(x, out, g, nblocks, ed, sd, bp, mode, key, half, tiny)


@task
def encode_group(x, elements, scales, g, nblocks, ed, sd, bp, mode, key, half, tiny):
    block, bits = bp[BLOCK_SIZE], bp[BLOCK_ELEMENT_BITS]
    for r in range(g * GROUP, min(g * GROUP + GROUP, scales.size)):
        o, i, k0 = block_origin(r, nblocks, x.shape[2], block)
        scale_code, _, full_scale, bad = block_scale(x, o, i, k0, sd, bp, half, tiny)
        scales[r] = scale_code
        for j in range(block):
            v = element_at(x, o, i, k0 + j, half, tiny)
            u = counter_uniform(key, r * block + j) if mode == STOCHASTIC else 0.0
            put_code(elements, (r * block + j) * bits, element_code(v, full_scale, bad, ed, mode, u), bits)


@jit(parallel=True)
def encode_blocks(x, elements, scales, nblocks, ed, sd, bp, mode, key, half, tiny):
    """Packed element codes into ``elements`` (zeroed) and one scale code
    per block into ``scales``."""
    for g in prange((scales.size + GROUP - 1) // GROUP):
        encode_group(x, elements, scales, g, nblocks, ed, sd, bp, mode, key, half, tiny)


@task
def decode_group(elements, scales, out, g, nblocks, ed, sd, bp):
    block, bits = bp[BLOCK_SIZE], bp[BLOCK_ELEMENT_BITS]
    for r in range(g * GROUP, min(g * GROUP + GROUP, scales.size)):
        o, i, k0 = block_origin(r, nblocks, out.shape[2], block)
        scale_code = np.int64(scales[r])
        scale_value = float_decode(scale_code, sd)
        bad = scale_code == bp[BLOCK_SCALE_NAN]
        for j in range(min(block, out.shape[1] - k0)):
            code = get_code(elements, (r * block + j) * bits, bits)
            out[o, k0 + j, i] = element_value(code, scale_value, bad, ed, bp)


@jit(parallel=True)
def decode_blocks(elements, scales, out, nblocks, ed, sd, bp):
    """out (outer, length, inner) = the decoded values of packed codes."""
    for g in prange((scales.size + GROUP - 1) // GROUP):
        decode_group(elements, scales, out, g, nblocks, ed, sd, bp)


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
