"""Fast path of BlockFormats with integer elements and a scale with a
mantissa (``int4_g128``, ``int4_g128_asym``, ``int8_rowwise``): float32 or
bfloat16 rows of whole blocks, nearest even, no flushing. Each block's
scale (and zero point) comes from :func:`.block_kernels.candidate_scale`,
the general kernels' own; each element is x / s divided in float64 as the
reference divides and rounded half to even (``np.rint``), so the path
agrees with the reference bit for bit without the general kernels'
per-element format decoding.
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
from .fast32 import ROWS_PER_TASK, as_float32, to_output
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
def block_bounds(x, r, block):
    """(amax, lo = min(min x, 0), hi = max(max x, 0), NaN block) of row r, in float32."""
    amax, lo, hi, bad = np.float32(0), np.float32(0), np.float32(0), False
    for j in range(block):
        v = as_float32(x[r, j])
        bad |= not (abs(v) < np.inf)
        amax, lo, hi = max(amax, abs(v)), min(lo, v), max(hi, v)
    return np.float64(amax), np.float64(lo), np.float64(hi), bad


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
def quantize_rows(x, out, g, ed, sd, bp, block):
    lost = False
    for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0])):
        amax, lo, hi, bad = block_bounds(x, r, block)
        _, scale, zero = candidate_scale(amax, lo, hi, 0, sd, bp)
        for j in range(block):
            if bad:
                out[r, j], _ = to_output(np.float32(np.nan), out)
            else:
                v = np.float64(as_float32(x[r, j]))
                out[r, j], exact = to_output(value_of(integer(v, scale, zero, ed, bp), scale, zero, ed, bp), out)
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
    codes = np.empty(block, np.int32)
    bits = bp[BLOCK_ELEMENT_BITS]
    mask = (1 << bits) - 1
    for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0])):
        amax, lo, hi, bad = block_bounds(x, r, block)
        code, scale, zero = candidate_scale(amax, lo, hi, 0, sd, bp)
        scales[r] = bp[BLOCK_SCALE_NAN] if bad else code
        if bp[BLOCK_ZERO_POINT] and not bad:
            put_code(zeros, r * bits, np.int64(zero), bits)
        for j in range(block):
            q = 0.0 if bad else integer(np.float64(as_float32(x[r, j])), scale, zero, ed, bp)
            codes[j] = np.int32(np.int64(q) & mask)
        pack_row(elements, r, codes, block, bits)


@jit(parallel=True)
def encode_int_blocks(x, elements, scales, zeros, ed, sd, bp):
    """Packed element codes (``elements`` zeroed), scale codes and packed
    zero points (``zeros`` zeroed) of integer-element blocks (rows of x)."""
    for g in prange((x.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        encode_rows(x, elements, scales, zeros, g, ed, sd, bp, x.shape[1])
