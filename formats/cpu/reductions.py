"""The largest magnitude of a block, as float32 bits, for the fast block kernels.

A block's largest magnitude is a maximum over its elements' bits with the
sign cleared (for finite floats the bits' order is the magnitudes' order;
Inf and NaN sort above every finite value). How it compiles decides the
speed of every block kernel:

- over a count the compiler cannot see as a constant, LLVM vectorizes the
  loop, but each row then pays the loop's run-time dispatch;
- over a known 16 or 32 it unrolls the loop into a chain of compare and
  branch (8x slower);
- as one vector load and ``llvm.vector.reduce.umax`` (the intrinsic
  below), it is a shuffle tree of about ten instructions: 3x faster than
  the loop on 32-element rows.

:func:`largest_magnitude_bits` takes the intrinsic when the count is a
compile-time constant and the loop otherwise.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from .compiling import jit
from .fast32 import MAGNITUDE32, as_float32


@intrinsic
def _vector_magnitude_max(typingctx, row, count):
    """The largest sign-cleared bits of row[0:count] (count a literal; row a
    contiguous 1-d float32 array, or int16 holding bfloat16 bits), widened
    to float32 bits."""
    if not (isinstance(count, types.IntegerLiteral) and isinstance(row, types.Array) and row.ndim == 1
            and row.layout == "C" and row.dtype in (types.float32, types.int16)):
        return None
    n, width = count.literal_value, row.dtype.bitwidth

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        lanes = ir.VectorType(ir.IntType(width), n)
        values = builder.load(builder.bitcast(data, lanes.as_pointer()), align=width // 8)
        magnitudes = builder.and_(values, ir.Constant(lanes, [(1 << (width - 1)) - 1] * n))
        reduce = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(width), [lanes]),
                                                f"llvm.vector.reduce.umax.v{n}i{width}")
        top = builder.zext(builder.call(reduce, [magnitudes]), ir.IntType(32))
        return top if width == 32 else builder.shl(top, ir.Constant(ir.IntType(32), 16))
    return types.int32(row, count), codegen


@jit(inline="always")
def _loop_magnitude_max(row, count):
    top = np.int32(0)
    for j in range(count):
        top = max(top, np.int32(np.float32(as_float32(row[j])).view(np.int32) & MAGNITUDE32))
    return top


def largest_magnitude_bits(row, count):
    """The largest |row[j]| for j < count, as float32 bits (row: contiguous
    float32, or int16 holding bfloat16 bits; count <= row's length)."""


@overload(largest_magnitude_bits, prefer_literal=True)
def _largest_magnitude_bits(row, count):
    if isinstance(count, types.IntegerLiteral):
        return lambda row, count: _vector_magnitude_max(row, count)
    return lambda row, count: _loop_magnitude_max(row, count)
