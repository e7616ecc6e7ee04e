"""Fast decoding of element formats: contiguous uint8 or uint16 codes of a
format of at most 16 bits into a float32 or float64 output, as one table
lookup per element (a table of the value of every value of the codes'
dtype, padded past 2**nbits) in a parallel loop that writes the output
directly, with no intermediate arrays.

Out-of-range codes (at or above 2**nbits) are detected by an OR of the
codes per span; a call that finds one leaves the output to the general
kernel (:func:`.element_kernels.decode_elements`), which counts them and
raises the reference's error. Agrees with the reference bit for bit: the
table holds the reference's values, cast to the output dtype as the
general kernel stores them.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from numba import prange

from ..arrays import numpy_view
from .compiling import jit

#: the code dtypes the table lookup serves, and their numpy twins
CODE_DTYPES = {torch.uint8: np.uint8, torch.uint16: np.uint16}
OUT_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
#: codes per parallel task
SPAN = 1 << 14


@functools.lru_cache(maxsize=128)
def lookup_table(fmt, code_dtype: torch.dtype, out_dtype: torch.dtype) -> np.ndarray:
    """The value of every value of ``code_dtype`` as ``fmt``'s code, in
    ``out_dtype`` (NaN past 2**nbits: never read, as those codes are
    rejected), read-only."""
    width = 1 << (8 * np.dtype(CODE_DTYPES[code_dtype]).itemsize)
    values = np.full(width, np.nan, dtype=np.float64)
    own = fmt.codes_of_values()[1][:width]
    values[:own.size] = own
    with np.errstate(over="ignore"):  # values past float32's range become infinities, as the kernel stores them
        table = values.astype(OUT_DTYPES[out_dtype])
    table.flags.writeable = False
    return table


@jit(parallel=True)
def decode_lookup(codes, out, table, nbits, high):
    """out[i] = table[codes[i]] (codes and out flat, contiguous; the table
    covers every value of the codes' dtype); high[span] = the OR of the
    span's codes shifted right by nbits (nonzero where a code is out of
    range). Each span runs on slices (indices the compiler knows are in
    range) in 32-bit integers: 1.5-2x faster than indexing the whole arrays."""
    for s in prange(high.size):
        start, stop = s * SPAN, min(s * SPAN + SPAN, out.size)
        span_codes, span_out = codes[start:stop], out[start:stop]
        seen = np.int32(0)
        for i in range(span_codes.size):
            code = np.int32(span_codes[i])
            span_out[i] = table[code]
            seen = np.int32(seen | code)
        high[s] = seen >> nbits


def decoded(fmt, codes: torch.Tensor, out: torch.Tensor) -> bool:
    """Decode ``codes`` into ``out`` (a new contiguous float32 or float64
    tensor of their shape) by table lookup where that serves the call:
    contiguous uint8/uint16 codes of a format of at most 16 bits. True when
    done; False when the call is not served or holds an out-of-range code
    (the general kernel then decodes it and raises the error)."""
    if (fmt.nbits > 16 or codes.dtype not in CODE_DTYPES or out.dtype not in OUT_DTYPES or not codes.is_contiguous()
            or codes.numel() == 0):
        return False
    high = np.empty(-(-codes.numel() // SPAN), dtype=np.int32)
    decode_lookup(numpy_view(codes).reshape(-1), out.numpy().reshape(-1), lookup_table(fmt, codes.dtype, out.dtype),
                  fmt.nbits, high)
    return not high.any()
