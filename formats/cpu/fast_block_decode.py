"""Fast decoding of BlockFormats (MX, NVFP4) whose rows of codes fill whole
bytes: codes unpacked a row at a time, values from tables of every element
and scale code."""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from .bits import unpack_row
from .compiling import jit
from .fast32 import (
    ROWS_PER_TASK,
)

inline = jit(inline="always")


@functools.lru_cache(maxsize=256)
def decode_tables(fmt) -> tuple[np.ndarray, np.ndarray]:
    """(value of every element code, value of every scale code), float64,
    NaN for NaN codes: a BlockFormat's decoding as two table lookups."""
    return fmt.element.codes_of_values()[1], fmt.scale.codes_of_values()[1]


@inline
def scaled_value(element, scale, tensor_scale):
    """element * scale (exact in float64), times the tensor scale (None for
    none) in float32 as the reference applies it."""
    value = element * scale
    return value if tensor_scale is None else np.float64(np.float32(value) * np.float32(tensor_scale))


@jit(parallel=True)
def decode_blocks(packed, scale_codes, out, element_values, scale_values, tensor_scale, bits):
    """out (blocks as rows filling whole bytes of packed ``bits``-bit codes;
    float32 or float64) = element value * scale value, looked up in the
    tables of every code. A NaN scale code's value is NaN, so its block
    decodes to NaN. ``tensor_scale``: a float, or None."""
    block = out.shape[1]
    for g in prange((out.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        codes = np.empty(block, np.int32)
        for r in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, out.shape[0])):
            scale = scale_values[scale_codes[r]]
            unpack_row(packed, r, codes, block, bits)
            for j in range(block):
                out[r, j] = scaled_value(element_values[codes[j]], scale, tensor_scale)
