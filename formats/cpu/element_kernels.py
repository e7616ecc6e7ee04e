"""Parallel kernels for element formats: quantize, encode and decode.

Each takes its input as a (planes, rows, cols) strided view (see
:mod:`.views`) and writes a flat C-order output. The elements are split
into spans of ``SPAN``, one span per task, so results (stochastic ones
included: element i draws its uniform from the counter-based stream at i)
never depend on the thread count. Each span reports into its own slot of a
status array. This is the general path, for every format, mode, dtype and
layout; the common cases take :mod:`.fast32` instead.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .compiling import jit, task
from .scalar import counter_uniform, decode_element, encode_element, is_stochastic, load, round_element, store

SPAN = 1 << 14
NO_INDEX = np.iinfo(np.int64).max
inline = jit(inline="always")


def span_count(total: int) -> int:
    return -(-total // SPAN)


@inline
def segment(x, i, stop):
    """(plane, row, column) of flat index i in the (planes, rows, cols) view
    x, and how many elements from there on lie in that row before ``stop``."""
    rows, cols = x.shape[1], x.shape[2]
    c = i % cols
    return i // (rows * cols), (i // cols) % rows, c, min(cols - c, stop - i)


@inline
def exact_input(x, i, mode, key, half, tiny):
    """Element i's exact value (flushed to a signed zero below ``tiny``)
    and its stochastic uniform."""
    v = load(x, half)
    v = v * 0.0 if abs(v) < tiny else v
    return v, counter_uniform(key, i) if is_stochastic(mode) else 0.0


@task
def quantize_span(x, out, start, stop, d, mode, overflow, key, half, tiny):
    lost = False
    i = start
    while i < stop:
        p, r, c, n = segment(x, i, stop)
        for j in range(n):
            v, u = exact_input(x[p, r, c + j], i + j, mode, key, half, tiny)
            narrow, exact = store(round_element(v, d, mode, overflow, u), out, half)
            out[i + j] = narrow
            lost |= not exact
        i += n
    return lost


@jit(parallel=True)
def quantize_elements(x, out, d, mode, overflow, key, half, tiny, inexact):
    """out[i] = the i-th element of x rounded into ``d`` (NaN where the
    format cannot hold it); inexact[span] says whether out's dtype failed to
    hold a result exactly."""
    for s in prange(inexact.size):
        start, stop = s * SPAN, min(s * SPAN + SPAN, out.size)
        inexact[s] = quantize_span(x, out, start, stop, d, mode, overflow, key, half, tiny)


@task
def encode_span(x, out, start, stop, d, mode, overflow, key, half, tiny):
    bad = NO_INDEX
    i = start
    while i < stop:
        p, r, c, n = segment(x, i, stop)
        for j in range(n):
            v, u = exact_input(x[p, r, c + j], i + j, mode, key, half, tiny)
            code, invalid = encode_element(v, d, mode, overflow, u)
            out[i + j] = code
            bad = min(bad, i + j if invalid else NO_INDEX)
        i += n
    return bad


@jit(parallel=True)
def encode_elements(x, out, d, mode, overflow, key, half, tiny, first_invalid):
    """out[i] = the code of x's i-th element; first_invalid[span] is the
    first index in the span the format cannot represent (NO_INDEX if none)."""
    for s in prange(first_invalid.size):
        start, stop = s * SPAN, min(s * SPAN + SPAN, out.size)
        first_invalid[s] = encode_span(x, out, start, stop, d, mode, overflow, key, half, tiny)


@task
def decode_span(codes, out, start, stop, d, nbits, table):
    count = 0
    i = start
    while i < stop:
        p, r, c, n = segment(codes, i, stop)
        for j in range(n):
            code = np.int64(codes[p, r, c + j])
            ok = (code >= 0) & (code < (1 << nbits))
            value = table[code if ok else 0] if table.size else decode_element(code if ok else 0, d)
            out[i + j] = value if ok else np.nan
            count += 0 if ok else 1
        i += n
    return count


@jit(parallel=True)
def decode_elements(codes, out, d, nbits, table, out_of_range):
    """out[i] = the value of the i-th code, looked up in ``table`` (the
    value of every code) or, where that is empty, computed; out_of_range[span]
    counts codes outside [0, 2**nbits) (their outputs are NaN)."""
    for s in prange(out_of_range.size):
        start, stop = s * SPAN, min(s * SPAN + SPAN, out.size)
        out_of_range[s] = decode_span(codes, out, start, stop, d, nbits, table)
