"""The CPU kernels' output buffers, and a switch that reuses them (for
benchmarks that time the kernels apart from allocating and first touching
their outputs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

#: while reused_outputs() is active: the buffer handed out for each (shape, dtype)
_reused: dict[tuple[tuple[int, ...], torch.dtype], torch.Tensor] | None = None


def _allocate(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    if dtype in (torch.float16, torch.bfloat16):
        return torch.from_numpy(np.empty(shape, dtype=np.int16)).view(dtype)
    return torch.from_numpy(np.empty(shape, dtype=torch.empty(0, dtype=dtype).numpy().dtype))


def new_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor from numpy's allocator, which backs large
    arrays with huge pages where it can (fewer page faults on first write);
    inside :func:`reused_outputs`, the same tensor for the same shape and dtype."""
    if _reused is None:
        return _allocate(shape, dtype)
    key = (tuple(shape), dtype)
    if key not in _reused:
        _reused[key] = _allocate(shape, dtype)
    return _reused[key]


@contextmanager
def reused_outputs() -> Iterator[None]:
    """Within this block, every CPU kernel call writes its results into the
    buffers of the previous call of the same shape and dtype: results
    alias each other, so this is for timing the kernels alone, never for
    keeping results. Not thread-safe."""
    global _reused
    previous, _reused = _reused, {}
    try:
        yield
    finally:
        _reused = previous
