"""Cutting a tensor into blocks along one axis, and putting it back.

The blocked axis is moved last and zero-padded to a multiple of the block
size; the blocks are then the last dimension of shape (..., nblocks, block).
Padding takes part in the computation as zeros (it never raises a block's
amax) and is dropped again on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import check_ints
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


@dataclass
class BlockCodes:
    """Unpacked codes of blocks of shape (rows, block), as int64 tensors:
    what a scaled format's exact math encodes and decodes."""

    elements: torch.Tensor | None  # (rows, block); None where only the scales are needed
    scales: torch.Tensor  # (rows,)
    subscales: torch.Tensor | None = None  # (rows, block // sub_block)
    tensor_scale: float | None = None
