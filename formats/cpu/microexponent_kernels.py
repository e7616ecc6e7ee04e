"""Parallel kernels for MicroexponentFormat (MX9/MX6/MX4, MSFP): quantize,
encode and decode, block by block as ``MicroexponentFormat.encode_blocks_exact``
does: a first pass finds the block's largest exponent, a second pass per
sub-block finds its shift and rounds its elements. Same view, block order
and task layout as :mod:`.block_kernels`.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..abi import (
    MICRO_BLOCK, MICRO_EMAX, MICRO_EMIN, MICRO_EXP_BIAS, MICRO_EXP_BITS, MICRO_MAN, MICRO_MICRO_BITS,
    MICRO_SUB_BLOCK,
)
from .bits import get_code, put_code
from .block_kernels import GROUP, block_origin, element_at
from .compiling import jit, task
from .scalar import counter_uniform, floor_log2_or, is_stochastic, pick_upper, pow2, store

NO_EXPONENT = -(1 << 20)
inline = jit(inline="always")


@inline
def exponent_of(v):
    """floor(log2 |v|) for finite nonzero v (subnormal float64s, which lie
    below every shared exponent, count as -1023); NO_EXPONENT for 0, NaN, Inf."""
    a = abs(v)
    return floor_log2_or(np.float64(a).view(np.int64), -1023) if (a > 0.0) & (a < np.inf) else NO_EXPONENT


@inline
def shared_exponent(x, o, i, k0, mp, half, tiny):
    """(clamped largest exponent of the block, NaN block)."""
    e_max, bad = NO_EXPONENT, False
    for j in range(mp[MICRO_BLOCK]):
        v = element_at(x, o, i, k0 + j, half, tiny)
        bad |= not (abs(v) < np.inf)
        e_max = max(e_max, exponent_of(v))
    return min(max(e_max, mp[MICRO_EMIN]), mp[MICRO_EMAX]), bad


@inline
def sub_block_shift(x, o, i, k0, e_max, mp, half, tiny):
    sub_max = NO_EXPONENT
    for j in range(mp[MICRO_SUB_BLOCK]):
        sub_max = max(sub_max, exponent_of(element_at(x, o, i, k0 + j, half, tiny)))
    return min(max(e_max - sub_max, 0), (1 << mp[MICRO_MICRO_BITS]) - 1)


@inline
def magnitude_code(v, step_exp, bad, mp, mode, u):
    """Sign and rounded, saturated magnitude of v on the grid 2**step_exp, as a code."""
    negative = np.float64(v).view(np.int64) < 0
    t = (abs(v) if abs(v) < np.inf else 0.0) * pow2(-step_exp)
    lo = np.floor(t)
    half_lo = lo * 0.5
    upper = pick_upper(mode, t, lo, lo + 1.0, half_lo != np.floor(half_lo), negative, u)
    magnitude = np.int64(min(lo + (1.0 if upper else 0.0), np.float64((1 << mp[MICRO_MAN]) - 1)))
    return 0 if bad else magnitude + ((1 << mp[MICRO_MAN]) if negative else 0)


@inline
def code_value(code, step_exp, bad, mp):
    magnitude = np.float64(code & ((1 << mp[MICRO_MAN]) - 1)) * pow2(step_exp)
    value = -magnitude if code >> mp[MICRO_MAN] else magnitude
    return np.nan if bad else value


@task
def walk_block(x, r, nblocks, mp, mode, key, half, tiny, out, elements, subscales):
    """Encode block r: write its decoded values into ``out`` (when it has
    elements) or its codes into ``elements``/``subscales``; returns (scale
    code, whether ``out`` lost exactness)."""
    block, sub = mp[MICRO_BLOCK], mp[MICRO_SUB_BLOCK]
    o, i, k0 = block_origin(r, nblocks, x.shape[2], block)
    e_max, bad = shared_exponent(x, o, i, k0, mp, half, tiny)
    lost = False
    for s in range(block // sub):
        shift = sub_block_shift(x, o, i, k0 + s * sub, e_max, mp, half, tiny) if mp[MICRO_MICRO_BITS] else 0
        if subscales.size:
            put_code(subscales, (r * (block // sub) + s) * mp[MICRO_MICRO_BITS], shift, mp[MICRO_MICRO_BITS])
        step_exp = e_max - shift - mp[MICRO_MAN] + 1
        for j in range(s * sub, s * sub + sub):
            v = element_at(x, o, i, k0 + j, half, tiny)
            u = counter_uniform(key, r * block + j) if is_stochastic(mode) else 0.0
            code = magnitude_code(v, step_exp, bad, mp, mode, u)
            if elements.size:
                put_code(elements, (r * block + j) * (mp[MICRO_MAN] + 1), code, mp[MICRO_MAN] + 1)
            elif k0 + j < x.shape[1]:
                narrow, exact = store(code_value(code, step_exp, bad, mp), out, half)
                out[o, k0 + j, i] = narrow
                lost |= not exact
    return ((1 << mp[MICRO_EXP_BITS]) - 1 if bad else e_max + mp[MICRO_EXP_BIAS]), lost


@jit(parallel=True)
def quantize_microexponent(x, out, nblocks, mp, mode, key, half, tiny, inexact):
    no_codes = np.empty(0, dtype=np.uint8)
    nrows = x.shape[0] * x.shape[2] * nblocks
    for g in prange(inexact.size):
        lost = False
        for r in range(g * GROUP, min(g * GROUP + GROUP, nrows)):
            _, block_lost = walk_block(x, r, nblocks, mp, mode, key, half, tiny, out, no_codes, no_codes)
            lost |= block_lost
        inexact[g] = lost


@jit(parallel=True)
def encode_microexponent(x, elements, scales, subscales, nblocks, mp, mode, key, half, tiny):
    no_values = np.empty((0, 0, 0), dtype=np.float64)
    for g in prange((scales.size + GROUP - 1) // GROUP):
        for r in range(g * GROUP, min(g * GROUP + GROUP, scales.size)):
            scales[r], _ = walk_block(x, r, nblocks, mp, mode, key, half, tiny, no_values, elements, subscales)


@jit(parallel=True)
def decode_microexponent(elements, scales, subscales, out, nblocks, mp):
    block, sub, micro = mp[MICRO_BLOCK], mp[MICRO_SUB_BLOCK], mp[MICRO_MICRO_BITS]
    for g in prange((scales.size + GROUP - 1) // GROUP):
        for r in range(g * GROUP, min(g * GROUP + GROUP, scales.size)):
            o, i, k0 = block_origin(r, nblocks, out.shape[2], block)
            bad = np.int64(scales[r]) == (1 << mp[MICRO_EXP_BITS]) - 1
            e_max = np.int64(scales[r]) - mp[MICRO_EXP_BIAS]
            for j in range(min(block, out.shape[1] - k0)):
                shift = get_code(subscales, (r * (block // sub) + j // sub) * micro, micro) if micro else 0
                code = get_code(elements, (r * block + j) * (mp[MICRO_MAN] + 1), mp[MICRO_MAN] + 1)
                out[o, k0 + j, i] = code_value(code, e_max - shift - mp[MICRO_MAN] + 1, bad, mp)
