"""Working through an input a chunk at a time in exact float64, as the
reference implementation and the grids do: temporaries (about thirty times
the input's bytes at once) are bounded by the chunk, not by the input."""

from __future__ import annotations

import torch

#: How many elements are turned into float64 at a time.
CHUNK_ELEMENTS = 1 << 20


def chunk_slices(count: int, step: int) -> list[slice]:
    """Consecutive slices of at most ``step`` covering range(count)."""
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]


def exact(chunk: torch.Tensor, flush_subnormals: bool) -> torch.Tensor:
    """A chunk of input as exact float64; its subnormals (of the input's own
    dtype) become signed zeros only when ``flush_subnormals`` is asked for."""
    x64 = chunk.to(torch.float64)
    if flush_subnormals:
        x64 = torch.where(x64.abs() < torch.finfo(chunk.dtype).tiny, x64 * 0.0, x64)
    return x64
