"""Cutting a tensor into blocks, and putting it back.

A :class:`BlockLayout` blocks one axis: the blocked axis is moved last and
zero-padded to a multiple of the block size; the blocks are then the last
dimension of shape (..., nblocks, block). A :class:`TileLayout` blocks two
axes in r x c tiles: both move last, each is zero-padded to whole tiles,
and a tile's elements (row-major) are the last dimension of shape
(..., ntile_rows, ntile_cols, r * c). Padding takes part in the computation
as zeros (it never raises a block's amax) and is dropped again on the way
out. Either layout gives every block as a row of ``block`` elements and has
one scale per row, in ``scales_shape``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import check_axis, check_ints
from .chunks import CHUNK_ELEMENTS

#: The largest block size: the reference works 8 whole blocks at a time, and
#: 8 blocks of this size fill one chunk (:data:`~lowbit.formats.chunks.CHUNK_ELEMENTS`),
#: which bounds its memory; every kernel indexes such blocks with 32-bit counts.
MAX_BLOCK_SIZE = CHUNK_ELEMENTS // 8


def check_block_size(obj: Any, field: str) -> None:
    """TypeError unless obj's ``field`` is an int; ValueError unless it lies in 1..MAX_BLOCK_SIZE."""
    check_ints(obj, field)
    value = getattr(obj, field)
    if not 1 <= value <= MAX_BLOCK_SIZE:
        raise ValueError(f"{field} must be a positive int of at most {MAX_BLOCK_SIZE}, got {value}")


@dataclass(frozen=True)
class BlockLayout:
    """Where the blocks of a tensor of ``shape`` blocked along ``axis`` lie."""

    shape: tuple[int, ...]
    axis: int
    block: int

    @property
    def length(self) -> int:
        return self.shape[self.axis] if self.shape else 1

    @property
    def nblocks(self) -> int:
        return -(-self.length // self.block)

    @property
    def nrows(self) -> int:
        """Number of blocks in all (the rows of the (nrows, block) view)."""
        count = self.nblocks
        for i, n in enumerate(self.shape):
            count *= n if i != self.axis else 1
        return count

    @property
    def scales_shape(self) -> tuple[int, ...]:
        """Shape of the per-block codes (scales, zero points): the other axes in order, then nblocks."""
        return self.blocked_shape[:-1]

    @property
    def blocked_shape(self) -> tuple[int, ...]:
        """Shape of the blocks: the other axes in order, then (nblocks, block)."""
        others = tuple(n for i, n in enumerate(self.shape) if i != self.axis)
        return (*others, self.nblocks, self.block)

    def to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        t = x.reshape(1) if x.dim() == 0 else x
        t = torch.movedim(t, self.axis, -1)
        t = torch.nn.functional.pad(t, (0, self.nblocks * self.block - self.length))
        return t.reshape(self.blocked_shape)

    def from_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        t = blocks.reshape(*self.blocked_shape[:-2], self.nblocks * self.block)[..., : self.length]
        if not self.shape:
            return t.reshape(())
        return torch.movedim(t, -1, self.axis)


def check_tile_axes(axis: Any, ndim: int) -> tuple[int, int]:
    """The (row axis, column axis) of 2-D tiles, normalised: ``axis`` is a
    pair of distinct axes, or an int naming the column axis, the row axis
    then being the other of the last two axes (so the default -1 tiles the
    last two axes, columns along the last). ValueError for other axes, or
    for an input of fewer than two dimensions."""
    if ndim < 2:
        raise ValueError(f"2-D tiles need an input of at least 2 dimensions, got {ndim}")
    if isinstance(axis, tuple | list):
        if len(axis) != 2:
            raise ValueError(f"axis of a tiled format must be a pair (row axis, column axis) or an int, got {axis!r}")
        rows, cols = (check_axis(a, ndim) for a in axis)
        if rows == cols:
            raise ValueError(f"axis of a tiled format must name two distinct axes, got {axis!r}")
        return rows, cols
    cols = check_axis(axis, ndim)
    if cols < ndim - 2:
        raise ValueError(f"axis {axis} of a tiled format: an int names the column axis and must be one of the "
                         f"last two (the row axis is the other); pass a pair (row axis, column axis) for others")
    return (ndim - 2 if cols == ndim - 1 else ndim - 1), cols


@dataclass(frozen=True)
class TileLayout:
    """Where the r x c tiles of a tensor of ``shape`` lie, rows of a tile
    along ``axis[0]`` and columns along ``axis[1]``."""

    shape: tuple[int, ...]
    axis: tuple[int, int]
    tile: tuple[int, int]

    @property
    def block(self) -> int:
        return self.tile[0] * self.tile[1]

    @property
    def grid(self) -> tuple[int, int]:
        """Tiles along the row axis and along the column axis."""
        return tuple(-(-self.shape[a] // n) for a, n in zip(self.axis, self.tile))

    @property
    def others(self) -> tuple[int, ...]:
        return tuple(n for i, n in enumerate(self.shape) if i not in self.axis)

    @property
    def scales_shape(self) -> tuple[int, ...]:
        """Shape of the per-tile codes: the other axes in order, then the tile grid."""
        return (*self.others, *self.grid)

    @property
    def nrows(self) -> int:
        count = 1
        for n in self.scales_shape:
            count *= n
        return count

    def to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        (r, c), (gr, gc) = self.tile, self.grid
        t = torch.movedim(x, self.axis, (-2, -1))
        t = torch.nn.functional.pad(t, (0, gc * c - t.shape[-1], 0, gr * r - t.shape[-2]))
        t = t.reshape(*self.others, gr, r, gc, c).transpose(-3, -2)
        return t.reshape(*self.scales_shape, r * c)

    def from_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        (r, c), (gr, gc) = self.tile, self.grid
        t = blocks.reshape(*self.others, gr, gc, r, c).transpose(-3, -2).reshape(*self.others, gr * r, gc * c)
        t = t[..., : self.shape[self.axis[0]], : self.shape[self.axis[1]]]
        return torch.movedim(t, (-2, -1), self.axis)


Layout = BlockLayout | TileLayout


@dataclass
class BlockCodes:
    """Unpacked codes of blocks of shape (rows, block), as int64 tensors:
    what a scaled format's exact math encodes and decodes."""

    elements: torch.Tensor | None  # (rows, block); None where only the scales are needed
    scales: torch.Tensor  # (rows,)
    subscales: torch.Tensor | None = None  # (rows, block // sub_block)
    tensor_scale: float | None = None
    zero_points: torch.Tensor | None = None  # (rows,), formats with zero points
    scale_values: torch.Tensor | None = None  # (rows,) float64, double quantization: the decoded scales
