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

import math

import numpy as np
from numba import prange

from ..abi import DOWN, NEAREST_AWAY, NEAREST_EVEN, ODD, TOWARD_ZERO, UP
from .bits import pack_row, unpack_row
from .compiling import jit
from .scalar import counter_uniform, is_stochastic, stochastic_upper

SPAN = 1 << 14
#: elements whose codes one pass of threshold counts computes (cache-resident)
RUN = 256
NO_INDEX = np.iinfo(np.int64).max
inline = jit(inline="always")
task = jit()
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


def compares_in_float32(table: tuple[float, ...]) -> bool:
    """Whether :func:`nearest_float32_blocks` serves a table: at most
    COUNTED_TABLE values whose midpoints have at most 26 significant bits
    (so midpoint * float32 scale is exact in float64 and a float32 quotient
    cannot fall within float64 rounding of a midpoint without being on it)."""
    if len(table) > COUNTED_TABLE:
        return False
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


@task
def codebook_block(rows, codes, values, scales, table, mids, divisor, zero_code, mode, key, tiny, r, v, run):
    """Block r of a BlockFormat with codebook elements and fp32 scales
    (rule ``amax``: float32(amax / divisor), saturating), as
    ``BlockFormat.encode_blocks_exact``; values float32(element * scale)."""
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
            codes[r, j] = 0
            if values.shape[0]:
                values[r, j] = np.nan
        return
    scale = np.float64(np.float32(amax / divisor))
    scale = min(scale, FLOAT32_MAX)
    scales[r] = scale
    if scale == 0.0:
        for j in range(block):
            codes[r, j] = zero_code
            if values.shape[0]:
                values[r, j] = np.float32(table[zero_code] * scale)  # a signed zero
        return
    for begin in range(0, block, RUN):
        n = min(RUN, block - begin)
        for i in range(n):
            x = np.float64(rows[r, begin + i])
            v[i] = (x * 0.0 if abs(x) < tiny else x) / scale
            run[i] = 0
        run_codes(v, n, table, mids, mode, key, r * block + begin, run)
        for i in range(n):
            codes[r, begin + i] = run[i]
            if values.shape[0]:
                values[r, begin + i] = np.float32(table[run[i]] * scale)


#: blocks one parallel task takes
ROWS_PER_TASK = 64


@parallel
def codebook_blocks(rows, codes, values, scales, table, divisor, zero_code, mode, key, tiny):
    """Every block (row) of ``rows``: codes, float64 scales and, when
    ``values`` is not empty, float32 values (see :func:`codebook_block`)."""
    nrows = rows.shape[0]
    mids = (table[:-1] + table[1:]) / 2.0
    for g in prange((nrows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        v = np.empty(RUN, dtype=np.float64)
        run = np.empty(RUN, dtype=np.int64)
        for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, nrows)):
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
    for r in prange(out.shape[0]):
        codes = np.empty(block, np.int32)
        unpack_row(packed, r, codes, block, bits)
        scale = np.float64(scales[r])
        for j in range(block):
            out[r, j] = np.float32(table[codes[j]] * scale) if codes[j] < entries else np.float32(np.nan)


@inline
def float32_step(t32, up):
    """The float32 next to the finite t32 toward +Inf (``up``) or -Inf, on its bits."""
    bits = np.float32(t32).view(np.int32)
    if t32 == 0:
        return np.int32(1).view(np.float32) if up else np.int32(-2147483647).view(np.float32)  # +-smallest subnormal
    return np.int32(bits + (1 if (t32 > 0) == up else -1)).view(np.float32)


@inline
def float32_below(t):
    """The largest float32 <= the float64 t (float32's largest for t beyond it)."""
    t32 = np.float32(min(t, FLOAT32_MAX))
    return float32_step(t32, False) if np.float64(t32) > t else t32


@inline
def float32_above(t):
    """The smallest float32 >= the float64 t (+Inf beyond float32's largest)."""
    if t > FLOAT32_MAX:
        return np.float32(np.inf)
    t32 = np.float32(t)
    return float32_step(t32, True) if np.float64(t32) < t else t32


@parallel
def nearest_float32_blocks(rows, codes, values, scales, table, mids, divisor, zero_code):
    """:func:`codebook_blocks` under ``nearest_even`` for float32 rows
    without flushing, comparing in float32: x / s > mid exactly when x >
    mid * s, which is exact in float64 for midpoints of at most 26
    significant bits (the caller checks), and a float32 x exceeds a float64
    threshold exactly when it exceeds the largest float32 at or below it (or
    reaches the smallest at or above it, for the ties that count)."""
    nrows, block = rows.shape
    m = mids.shape[0]
    for g in prange((nrows + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        thresholds = np.empty(m, np.float32)
        products = np.empty(table.shape[0], np.float32)
        counts = np.empty(block, np.int32)
        for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, nrows)):
            row = rows[r]
            top = np.int32(0)  # the largest magnitude's bits: an int32 maximum vectorizes, a float one does not
            for j in range(block):
                top = max(top, np.int32(np.float32(row[j]).view(np.int32) & np.int32(0x7FFFFFFF)))
            amax = np.int32(top).view(np.float32)
            if top >= np.int32(0x7F800000):  # a NaN or an infinity
                scales[r] = np.nan
                codes[r, :] = 0
                if values.shape[0]:
                    values[r, :] = np.nan
                continue
            scale = min(np.float64(np.float32(np.float64(amax) / divisor)), FLOAT32_MAX)
            scales[r] = scale
            if scale == 0.0:
                codes[r, :] = zero_code
                if values.shape[0]:
                    values[r, :] = np.float32(table[zero_code] * scale)
                continue
            for j in range(m):
                thresholds[j] = float32_below(mids[j] * scale) if j % 2 == 0 else float32_above(mids[j] * scale)
            for k in range(table.shape[0]):
                products[k] = np.float32(table[k] * scale)
            counts[:] = 0
            for j in range(m):
                t = thresholds[j]
                if j % 2 == 0:  # a tie at an even midpoint stays below it
                    for i in range(block):
                        counts[i] += row[i] > t
                else:
                    for i in range(block):
                        counts[i] += row[i] >= t
            for i in range(block):
                codes[r, i] = counts[i]
            if values.shape[0]:
                for i in range(block):
                    values[r, i] = products[counts[i]]
