"""Parallel kernels for codebook elements (:class:`~lowbit.formats.codebook.CodebookFormat`),
on their own and in blocks with an fp32 scale per block (``nf4``).

They mirror ``CodebookFormat.encode_exact``: an element's code follows from
comparisons of the exact float64 value with the table's values and
midpoints (exact in float64). For tables of up to ``COUNTED_TABLE`` values
the kernels count, for a run of elements at a time, how many thresholds
each one passes, which the compiler turns into vector instructions: under
``nearest_even`` the code is the number of midpoints below the value, a tie
counting when it lies at an odd midpoint (so it goes to the even code);
every other mode counts the table values from the second on that are <=
the value (the lower neighbour's index) and then decides element by
element between it and the next code. Longer tables find the lower
neighbour by binary search.

Elements are split into spans of ``SPAN``, one span per task; element i
draws its stochastic uniform from the counter-based stream at i, so results
never depend on the thread count.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import prange

from ..abi import DOWN, NEAREST_AWAY, NEAREST_EVEN, ODD, TOWARD_ZERO, UP
from .bits import pack_row, unpack_row
from .compiling import jit, task
from .scalar import counter_uniform, is_stochastic, stochastic_upper

SPAN = 1 << 14
#: elements whose codes one pass of threshold counts computes (cache-resident)
RUN = 256
NO_INDEX = np.iinfo(np.int64).max
inline = jit(inline="always")
parallel = jit(parallel=True)


def span_count(total: int) -> int:
    return -(-total // SPAN)


@inline
def count_above(v, n, thresholds, strict, counts):
    """counts[i] += the number of thresholds below v[i] (strictly, or at most v[i])."""
    for t in thresholds:
        if strict:
            for i in range(n):
                counts[i] += v[i] > t
        else:
            for i in range(n):
                counts[i] += v[i] >= t


#: tables longer than this find each element's neighbours by binary search, not by counting
COUNTED_TABLE = 64


@functools.lru_cache(maxsize=256)
def short_midpoints(table: tuple[float, ...]) -> bool:
    """Whether every midpoint of the table has at most 26 significant bits.
    Then, for float32 x and s, the exact test x > mid * s (mid * s is exact
    in float64) decides as the reference's test of the rounded float64
    quotient, x / s > mid, does: a quotient of two float32 numbers that is
    not on such a midpoint lies further from it than float64 rounding
    reaches. For other tables (bitsandbytes' FP4, most fitted codebooks)
    the rare blocks where the tests can differ are redone by
    :func:`codebook_blocks` (``near_only``)."""
    for lo, hi in zip(table, table[1:]):
        mantissa, _ = math.frexp((lo + hi) / 2)
        significand = int(abs(mantissa) * 2.0 ** 53)
        if significand and (significand & -significand).bit_length() - 1 < 53 - 26:
            return False
    return True


@inline
def down_index(x, table, last):
    """The index of the largest table value <= x (0 below the table)."""
    lo_index, hi_index = 0, last + 1
    while hi_index - lo_index > 1:
        middle = (lo_index + hi_index) >> 1
        if table[middle] <= x:
            lo_index = middle
        else:
            hi_index = middle
    return lo_index


@inline
def code_from_down(x, lo_index, table, last, mode, u):
    """The code of x (not NaN) given the index of the largest table value <= x."""
    lo = table[lo_index]
    if x <= table[0] or x >= table[last] or x == lo:
        return 0 if x <= table[0] else last if x >= table[last] else lo_index
    hi = table[lo_index + 1]
    negative = np.float64(x).view(np.int64) < 0
    twice, mid = 2.0 * x, lo + hi
    lo_is_odd = (lo_index & 1) == 1
    if mode == NEAREST_EVEN:
        upper = (twice > mid) | ((twice == mid) & lo_is_odd)
    elif mode == NEAREST_AWAY:
        upper = (twice > mid) | ((twice == mid) & (not negative))
    elif mode == TOWARD_ZERO:
        upper = negative
    elif mode == UP:
        upper = True
    elif mode == DOWN:
        upper = False
    elif mode == ODD:
        upper = not lo_is_odd
    else:  # stochastic, with or without sr_bits
        upper = stochastic_upper(mode, x, lo, hi, u)
    return lo_index + 1 if upper else lo_index


@task
def run_codes(v, n, table, mids, mode, key, first, codes):
    """The codes of the n float64 values v[:n] (no NaN) in the sorted
    ``table`` (midpoints ``mids``) under ``mode``; ``first``: the stream
    index of v[0] for stochastic rounding. ``codes`` starts zeroed."""
    last = table.shape[0] - 1
    if last < COUNTED_TABLE:
        if mode == NEAREST_EVEN:
            count_above(v, n, mids[0::2], True, codes)
            count_above(v, n, mids[1::2], False, codes)
            return
        count_above(v, n, table[1:], False, codes)
    else:
        for i in range(n):
            codes[i] = down_index(v[i], table, last)
    for i in range(n):
        u = counter_uniform(key, first + i) if is_stochastic(mode) else 0.0
        codes[i] = code_from_down(v[i], codes[i], table, last, mode, u)


@inline
def load_run(x, start, n, tiny, v):
    """x[start:start + n] as float64 into v (flushed below ``tiny``, NaN as
    0); the index of the first NaN, or NO_INDEX."""
    first_nan = NO_INDEX
    for i in range(n):
        value = np.float64(x[start + i])
        if value != value:
            first_nan = min(first_nan, start + i)
            value = 0.0
        v[i] = value * 0.0 if abs(value) < tiny else value
    return first_nan


@task
def codes_span(x, codes, values, table, table32, start, stop, mode, key, tiny):
    """Codes (and float32 values, when ``values`` is not empty) of elements
    start..stop; the index of the first NaN, or NO_INDEX."""
    first_nan = NO_INDEX
    mids = (table[:-1] + table[1:]) / 2.0
    v = np.empty(RUN, dtype=np.float64)
    run = np.empty(RUN, dtype=np.int64)
    for begin in range(start, stop, RUN):
        n = min(RUN, stop - begin)
        nan_at = load_run(x, begin, n, tiny, v)
        first_nan = min(first_nan, nan_at)
        run[:] = 0
        run_codes(v, n, table, mids, mode, key, begin, run)
        for i in range(n):
            codes[begin + i] = run[i]
        if values.shape[0]:
            for i in range(n):
                values[begin + i] = table32[run[i]]
            if nan_at != NO_INDEX:
                for i in range(n):
                    if x[begin + i] != x[begin + i]:
                        values[begin + i] = np.nan
    return first_nan


@parallel
def codebook_elements(x, codes, values, table, table32, mode, key, tiny, first_nan):
    """Every element of the flat arrays; each span's first NaN index into
    ``first_nan``. ``table``: the values (float64); ``table32``: as float32."""
    total = x.shape[0]
    for s in prange(first_nan.shape[0]):
        start = s * SPAN
        first_nan[s] = codes_span(x, codes, values, table, table32, start, min(start + SPAN, total), mode, key,
                                  tiny)


FLOAT32_MAX = float(np.finfo(np.float32).max)


@inline
def scaled_element(x, scale, tiny):
    """x (flushed below ``tiny``) / scale in float64, as the reference
    divides: a nonzero x whose quotient falls below 2**-1020 (float64
    inputs far below their block's scale) keeps 2**-1020 with its sign,
    which every table rounds as it rounds the exact quotient, rather than
    underflowing to zero (BlockFormat._element_codes)."""
    clean = x * 0.0 if abs(x) < tiny else x
    quotient = clean / scale
    if abs(quotient) < 2.0 ** -1020 and clean != 0.0:
        return math.copysign(2.0 ** -1020, clean)
    return quotient


@task
def codebook_block(rows, codes, values, scales, table, mids, divisor, zero_code, mode, key, tiny, r, v, run):
    """Block r of a BlockFormat with codebook elements and fp32 scales
    (rule ``amax``: float32(amax / divisor), saturating), as
    ``BlockFormat.encode_blocks_exact``: codes and values float32(element *
    scale), each unless empty (not asked for)."""
    block = rows.shape[1]
    amax = 0.0
    bad = False
    for j in range(block):
        x = np.float64(rows[r, j])
        if x - x != 0.0:  # NaN or Inf
            bad = True
        elif abs(x) >= tiny:
            amax = max(amax, abs(x))
    if bad:
        scales[r] = np.nan
        for j in range(block):
            if codes.shape[0]:
                codes[r, j] = 0
            if values.shape[0]:
                values[r, j] = np.nan
        return
    scale = np.float64(np.float32(amax / divisor))
    scale = min(scale, FLOAT32_MAX)
    scales[r] = scale
    if scale == 0.0:
        for j in range(block):
            if codes.shape[0]:
                codes[r, j] = zero_code
            if values.shape[0]:
                values[r, j] = np.float32(table[zero_code] * scale)  # a signed zero
        return
    for begin in range(0, block, RUN):
        n = min(RUN, block - begin)
        for i in range(n):
            v[i] = scaled_element(np.float64(rows[r, begin + i]), scale, tiny)
            run[i] = 0
        run_codes(v, n, table, mids, mode, key, r * block + begin, run)
        for i in range(n):
            if codes.shape[0]:
                codes[r, begin + i] = run[i]
            if values.shape[0]:
                values[r, begin + i] = np.float32(table[run[i]] * scale)


#: blocks one parallel task takes
ROWS_PER_TASK = 64


@inline
def near_float32(mids, scale):
    """Whether some mid * scale lies within a relative NEAR of a float32:
    only then can a float32 x lie close enough to it for the reference's
    rounded quotient (within float64 rounding, a relative 2^-53, of x /
    scale) to decide otherwise than a float32 threshold
    (:func:`nearest_float32_blocks`). Never for a NaN scale."""
    near = 0
    for j in range(mids.shape[0]):
        product = mids[j] * scale
        near += np.int32(abs(np.float64(np.float32(product)) - product) <= abs(product) * NEAR)
    return near > 0


@parallel
def codebook_blocks(rows, codes, values, scales, table, divisor, zero_code, mode, key, tiny, near_only):
    """Every block (row) of ``rows``: codes, float64 scales and, when
    ``values`` is not empty, float32 values (see :func:`codebook_block`).
    ``near_only`` (after :func:`nearest_float32_blocks` on a table other
    than :func:`short_midpoints`, whose ``scales`` it reads): only the
    blocks of nonzero scale where :func:`near_float32`, the rare
    ones where the float32 thresholds may decide otherwise than the
    reference divides."""
    nrows = rows.shape[0]
    mids = (table[:-1] + table[1:]) / 2.0
    for g in prange((nrows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        v = np.empty(RUN, dtype=np.float64)
        run = np.empty(RUN, dtype=np.int64)
        for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, nrows)):
            if near_only and not (scales[r] != 0.0 and near_float32(mids, scales[r])):
                continue
            codebook_block(rows, codes, values, scales, table, mids, divisor, zero_code, mode, key, tiny, r, v, run)


@parallel
def pack_block_codes(codes, packed, bits):
    """Each row of ``codes`` packed into ``packed`` (zeroed unless rows fill whole bytes)."""
    block = codes.shape[1]
    for r in prange(codes.shape[0]):
        pack_row(packed, r, codes[r], block, bits)


@parallel
def decode_codebook_blocks(packed, scales, out, table, bits):
    """out (blocks as rows filling whole bytes of packed ``bits``-bit codes)
    = float32(table value * scale); NaN where the code lies past the table."""
    block = out.shape[1]
    entries = table.shape[0]
    for g in prange((out.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        codes = np.empty(block, np.int32)
        for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, out.shape[0])):
            unpack_row(packed, r, codes, block, bits)
            scale = np.float64(scales[r])
            for j in range(block):
                out[r, j] = np.float32(table[codes[j]] * scale) if codes[j] < entries else np.float32(np.nan)


@inline
def float32_threshold(t, strict):
    """The float32 that stands for the float64 t when a float32 x is
    compared with it: the largest float32 <= t for ``x > t`` (``strict``),
    the smallest float32 >= t for ``x >= t``, so the float32 comparison
    decides as the float64 one; t is first clamped to float32's finite
    range (no float32 x lies beyond it but the infinities, which the
    callers treat apart). Branch-free (one integer step on the bits when
    float32(t) fell on the wrong side of t), so loops over blocks vectorize."""
    t = min(max(t, -FLOAT32_MAX), FLOAT32_MAX)
    t32 = np.float32(t)
    bits = t32.view(np.int32)
    wrong_side = np.int32(np.float64(t32) > t) if strict else np.int32(np.float64(t32) < t)
    away_from_zero = (bits >> np.int32(31)) | np.int32(1)  # +1 or -1 by the sign: added to the bits, steps away from 0
    step = -away_from_zero if strict else away_from_zero
    return np.int32(bits + step * wrong_side).view(np.float32)


#: how close (relative) to a float32 a threshold's float64 product mid * s must lie for the reference's rounded
#: quotient to decide otherwise than a comparison with it (float64 rounding reaches 2^-53 of each; with room)
NEAR = 2.0 ** -50

#: thresholds of the tables of at most 16 values (4-bit codebooks), which
#: :func:`nearest_float32_blocks` compares unrolled
SHORT = 15


@inline
def passed_value(x, thresholds, products, k):
    """products[j * ROWS_PER_TASK + k] for the number j of the SHORT
    thresholds (``thresholds[j * ROWS_PER_TASK + k]``) the float32 x
    passes: x > threshold at even j, x >= at odd j, where a tie goes up to
    the even code. The thresholds passed are a prefix (ascending, ties
    resolved one way), so the value is the last product past a passed
    threshold: two chains of selects, below and above the middle threshold,
    halve the dependent steps. (Written out: the same comparisons through a
    helper function compile to a loop twice as slow.)"""
    low, high = products[k], products[8 * ROWS_PER_TASK + k]
    for j in range(7):
        at = j * ROWS_PER_TASK + k
        below, above = products[at + ROWS_PER_TASK], products[at + 9 * ROWS_PER_TASK]
        if j % 2 == 0:
            low = below if x > thresholds[at] else low
            high = above if x > thresholds[at + 8 * ROWS_PER_TASK] else high
        else:
            low = below if x >= thresholds[at] else low
            high = above if x >= thresholds[at + 8 * ROWS_PER_TASK] else high
    return high if x >= thresholds[7 * ROWS_PER_TASK + k] else low


@inline
def passed_count(x, thresholds, k):
    """The number of SHORT thresholds x passes (see :func:`passed_value`), in four independent sums."""
    c0, c1, c2, c3 = np.int32(0), np.int32(0), np.int32(0), np.int32(0)
    for j in range(0, SHORT, 4):
        at = j * ROWS_PER_TASK + k
        c0 += np.int32(x > thresholds[at])
        c1 += np.int32(x >= thresholds[at + ROWS_PER_TASK])
        c2 += np.int32(x > thresholds[at + 2 * ROWS_PER_TASK])
        if j + 3 < SHORT:
            c3 += np.int32(x >= thresholds[at + 3 * ROWS_PER_TASK])
    return np.int32(c0 + c1) + np.int32(c2 + c3)


@inline
def block_scale(rows, r, divisor):
    """The fp32 scale of float32 block (row) r: float32(amax / divisor) as a
    float64, at most float32's largest; NaN for a block holding NaN or Inf."""
    top = np.int32(0)  # the largest magnitude's bits: an int32 maximum vectorizes, a float one does not
    for i in range(rows.shape[1]):
        top = max(top, np.int32(np.float32(rows[r, i]).view(np.int32) & np.int32(0x7FFFFFFF)))
    scale = min(np.float64(np.float32(np.float64(np.int32(top).view(np.float32)) / divisor)), FLOAT32_MAX)
    return np.nan if top >= np.int32(0x7F800000) else scale


@parallel
def block_scales(rows, scales, divisor):
    """scales[r] = :func:`block_scale` of every block (row) of float32 ``rows``."""
    for r in prange(rows.shape[0]):
        scales[r] = block_scale(rows, r, divisor)


@parallel
def nearest_float32_blocks(rows, codes, values, scales, table, mids, divisor, zero_code, rescaled):
    """:func:`codebook_blocks` under ``nearest_even`` for float32 rows
    without flushing, comparing in float32; ``codes`` or ``values`` may be
    empty (not asked for). ``rescaled`` (double quantization), unless
    empty: each block's values are its table values times rescaled[r] (the
    scale its second level decodes) rather than times its own scale, the
    one its codes are rounded under. The reference tests float64(x / s) > mid (>= at
    odd midpoints, where a tie goes up to the even code); for a float32 x
    that is x > mid * s for tables of :func:`short_midpoints` (mid * s is
    exact in float64), and x passes a float64 threshold exactly when it
    passes :func:`float32_threshold` of it. For other tables
    :func:`codebook_blocks` then redoes the rare blocks where the tests can
    differ (``near_only``).

    Per task of ROWS_PER_TASK blocks: the scales, then every block's
    thresholds and float32 values (loops over the blocks, which vectorize),
    then each block: tables of at most 16 values unrolled
    (:func:`passed_value`, :func:`passed_count`), longer ones counting in
    a loop over the thresholds. A code is the number of thresholds passed,
    a value the table's value at it times the scale, rounded to float32.
    (A variant that took the rare blocks in this kernel, in one more loop
    over the thresholds, compared a fifth slower; so did one that computed
    ``mids`` from ``table`` here, as :func:`codebook_blocks` does.)"""
    nrows, block = rows.shape
    m = mids.shape[0]
    last = table.shape[0] - 1
    slots = max(m, SHORT)  # short tables padded with thresholds no finite x passes
    for g in prange((nrows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        first = g * ROWS_PER_TASK
        count = min(ROWS_PER_TASK, nrows - first)
        task_scales = np.empty(ROWS_PER_TASK, np.float64)
        thresholds = np.empty(slots * ROWS_PER_TASK, np.float32)
        products = np.empty((slots + 1) * ROWS_PER_TASK, np.float32)
        counts = np.empty(block, np.int32)
        multipliers = np.empty(ROWS_PER_TASK, np.float64)
        for k in range(count):
            task_scales[k] = block_scale(rows, first + k, divisor)
            multipliers[k] = task_scales[k] if rescaled.shape[0] == 0 else rescaled[first + k]
        for j in range(slots):
            mid, strict = mids[min(j, m - 1)], j % 2 == 0
            for k in range(count):
                thresholds[j * ROWS_PER_TASK + k] = (float32_threshold(mid * task_scales[k], strict) if j < m
                                                     else np.float32(np.inf))
        for j in range(slots + 1):
            entry = table[min(j, last)]
            for k in range(count):
                products[j * ROWS_PER_TASK + k] = np.float32(entry * multipliers[k])
        for k in range(count):
            r, scale = first + k, task_scales[k]
            scales[r] = scale
            if scale != scale or scale == 0.0:  # NaN: codes 0, values NaN; a zero scale: the +0.0 code and value
                for i in range(block):
                    if codes.shape[0]:
                        codes[r, i] = 0 if scale != scale else zero_code
                    if values.shape[0]:
                        values[r, i] = np.nan if scale != scale else np.float32(table[zero_code] * multipliers[k])
                continue
            if m <= SHORT:
                if values.shape[0]:
                    for i in range(block):
                        values[r, i] = passed_value(rows[r, i], thresholds, products, k)
                if codes.shape[0]:
                    for i in range(block):
                        codes[r, i] = passed_count(rows[r, i], thresholds, k)
                continue
            counts[:] = 0
            for j in range(m):
                t = thresholds[j * ROWS_PER_TASK + k]
                if j % 2 == 0:  # a tie at an even midpoint stays below it
                    for i in range(block):
                        counts[i] += rows[r, i] > t
                else:
                    for i in range(block):
                        counts[i] += rows[r, i] >= t
            for i in range(block):
                if codes.shape[0]:
                    codes[r, i] = counts[i]
                if values.shape[0]:
                    values[r, i] = products[counts[i] * ROWS_PER_TASK + k]
