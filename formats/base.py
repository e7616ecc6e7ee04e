"""What every format shares: input preparation and the backend switch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .arrays import InputKind, as_float64

BACKENDS = (None, "reference")


def check_backend(backend: str | None) -> None:
    """Only the reference implementation exists in this layer; the numba and
    CUDA kernels register themselves as further backends when they exist."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be None or 'reference' (no other backend is built yet); got {backend!r}")


def prepare_input(x: Any, flush_subnormals: bool, backend: str | None) -> tuple[torch.Tensor, InputKind]:
    """x as an exact float64 tensor; input subnormals (of x's own dtype) become
    signed zeros only when ``flush_subnormals`` is asked for."""
    check_backend(backend)
    x64, kind = as_float64(x)
    if flush_subnormals:
        tiny = torch.finfo(kind.dtype).tiny if kind.kind == "torch" else float(np.finfo(kind.dtype).tiny)
        x64 = torch.where(x64.abs() < tiny, x64 * 0.0, x64)
    return x64, kind


def check_axis(axis: Any, ndim: int) -> int:
    """Normalise a blocked axis; an int in [-ndim, ndim)."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"axis {axis} is out of range for an input with {ndim} dimension(s)")
    return axis % max(ndim, 1)


def check_ints(obj: Any, *fields: str) -> None:
    """TypeError unless each named attribute of obj is an int (bools are not)."""
    for field in fields:
        value = getattr(obj, field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{field} must be an int, got {type(value).__name__}")
