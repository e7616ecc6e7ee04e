"""Zero-copy numpy views of CPU data in the shapes the kernels take.

float16 and bfloat16 data are viewed as int16 bit patterns (numba has
neither type). A view keeps the data's strides: transposed, sliced and
permuted inputs are read in place. Only data whose strides cannot be
expressed in the kernel's three dimensions is copied first, once.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided

from ..arrays import numpy_view
from .compiling import jit
from .scalar import HALF_BFLOAT16, HALF_FLOAT16

HALF_TORCH = {torch.float16: HALF_FLOAT16, torch.bfloat16: HALF_BFLOAT16}


def numpy_data(t: torch.Tensor) -> tuple[np.ndarray, int]:
    """A CPU tensor's data as a numpy view, and which half type it holds
    (meaningful for int16 views of float16/bfloat16 only). The storage is
    left resizable (:func:`~lowbit.formats.arrays.numpy_view`)."""
    t = t.detach()
    if t.dtype in HALF_TORCH:
        return numpy_view(t.view(torch.int16)), HALF_TORCH[t.dtype]
    return numpy_view(t), HALF_FLOAT16


def _merge(dims: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(size, byte stride) pairs with size-1 dims dropped and neighbours that
    step through memory as one dim merged."""
    merged: list[tuple[int, int]] = []
    for size, stride in dims:
        if size == 1:
            continue
        if merged and merged[-1][1] == stride * size:
            merged[-1] = (merged[-1][0] * size, stride)
        else:
            merged.append((size, stride))
    return merged


def _view(a: np.ndarray, dims: list[tuple[int, int]], writeable: bool = False) -> np.ndarray:
    return as_strided(a, shape=tuple(n for n, _ in dims), strides=tuple(s for _, s in dims), writeable=writeable)


def planes_rows_cols(a: np.ndarray) -> np.ndarray:
    """``a`` (any shape) as a (planes, rows, cols) view whose C order is a's
    C order; copied contiguous first if its strides need more dimensions."""
    merged = _merge(list(zip(a.shape, a.strides)))
    if len(merged) > 3:
        a = np.ascontiguousarray(a)
        merged = _merge(list(zip(a.shape, a.strides)))
    merged = [(1, 0)] * (3 - len(merged)) + merged
    return _view(a, merged)


def outer_axis_inner(a: np.ndarray, axis: int, writeable: bool = False) -> np.ndarray:
    """``a`` as an (outer, length, inner) view: the dims before ``axis``, the
    axis, the dims after it; copied contiguous first if the dims on either
    side do not merge into one (never for ``writeable`` views of outputs,
    which are contiguous)."""
    def one(dims: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
        merged = _merge(dims)
        return merged if len(merged) == 1 else [(1, 0)] if not merged else None

    if a.ndim == 0:
        a = a.reshape(1)
    dims = list(zip(a.shape, a.strides))
    before, after = one(dims[:axis]), one(dims[axis + 1:])
    if before is None or after is None:
        a = np.ascontiguousarray(a)
        return outer_axis_inner(a, axis)
    return _view(a, before + [dims[axis]] + after, writeable)


@jit(inline="always")
def block_at(view, n):
    """(a, b): where block n lies in a view of :func:`block_view` (no
    division for rows of blocks, where the kernels find it per block)."""
    columns = view.shape[2]
    return (n, 0) if columns == 1 else (n // columns, n % columns)


def block_view(data: np.ndarray, tile: tuple[int, int] | None) -> np.ndarray:
    """The 4-d view (A, rows, B, cols) in which the block kernels read
    blocks in place: block n is view[a, :, b, :] with (a, b) = divmod(n, B).
    ``data`` (contiguous) as rows of whole blocks along its last axis
    (``tile`` None: (blocks, 1, 1, block) of a (blocks, block) array), or
    as the r x c tiles of its last two axes, whose lengths the tile divides:
    (planes * R / r, r, C / c, c), the tiles in
    :class:`~lowbit.formats.blocking.TileLayout`'s order."""
    if tile is None:
        return data.reshape(-1, 1, 1, data.shape[-1])
    r, c = tile
    return data.reshape(-1, r, data.shape[-1] // c, c)
