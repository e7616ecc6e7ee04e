"""Fast decoding of BlockFormats whose blocks of codes fill whole bytes:
codes unpacked a block at a time, values from a table of every element
code, scales from a table of every scale code or, for float32 scales, from
their bits; zero points subtracted; products rounded to float32 where the
format rounds them. Blocks are written in place through the 4-d view of
:func:`.fast_amax.block_view` (rows of whole blocks, or tiles)."""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from .bits import get_code, unpack_row
from .compiling import jit
from .fast32 import ROWS_PER_TASK
from .views import block_at

inline = jit(inline="always")


@functools.lru_cache(maxsize=256)
def decode_tables(fmt, scale_bits: bool) -> tuple[np.ndarray, np.ndarray]:
    """(value of every element code, value of every scale code, or an empty
    table where the scale codes are float32 bits), float64, NaN for NaN
    codes: a BlockFormat's decoding as table lookups."""
    scales = np.zeros(0) if scale_bits else fmt.scale.codes_of_values()[1]
    return fmt.element.codes_of_values()[1], scales


@inline
def scaled_value(element, scale, tensor_scale, round32):
    """element * scale (exact in float64), rounded to float32 where
    ``round32`` (the format rounds its products), or times the tensor scale
    (None for none) in float32 as the reference applies it."""
    value = element * scale
    if tensor_scale is not None:
        return np.float64(np.float32(value) * np.float32(tensor_scale))
    return np.float64(np.float32(value)) if round32 else value


@inline
def block_scale(scale_codes, n, scale_values):
    """Block n's scale: its code's value in the table, or its code's bits as float32 (an empty table)."""
    if scale_values.size:
        return scale_values[scale_codes[n]]
    return np.float64(np.int32(scale_codes[n]).view(np.float32))


@inline
def decode_task(packed, scale_codes, zero_points, out, g, element_values, scale_values, tensor_scale, bits,
                zero_bits, round32, rows, cols):
    codes = np.empty(rows * cols, np.int32)
    for n in range(g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, out.shape[0] * out.shape[2])):
        a, b = block_at(out, n)
        scale = block_scale(scale_codes, n, scale_values)
        zero = np.float64(get_code(zero_points, n * zero_bits, zero_bits)) if zero_bits else 0.0
        unpack_row(packed, n, codes, rows * cols, bits)
        for i in range(rows):
            for j in range(cols):
                out[a, i, b, j] = scaled_value(element_values[codes[i * cols + j]] - zero, scale, tensor_scale,
                                               round32)


@jit(parallel=True)
def decode_blocks(packed, scale_codes, zero_points, out, element_values, scale_values, tensor_scale, bits, zero_bits,
                  round32):
    """out (float32 or float64; the 4-d view of its blocks) = (element value
    less the block's zero point, when zero_bits > 0) * scale value, looked up
    in the tables (decode_tables), rounded to float32 where ``round32``.
    A NaN scale's block decodes to NaN. ``tensor_scale``: a float, or None."""
    rows, cols = out.shape[1], out.shape[3]
    for g in prange((out.shape[0] * out.shape[2] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        if rows == 1:
            decode_task(packed, scale_codes, zero_points, out, g, element_values, scale_values, tensor_scale, bits,
                        zero_bits, round32, 1, cols)
        else:
            decode_task(packed, scale_codes, zero_points, out, g, element_values, scale_values, tensor_scale, bits,
                        zero_bits, round32, rows, cols)
