"""What every format shares: input preparation and the backend switch."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from . import backends
from .arrays import InputKind, as_tensor


class Grid(NamedTuple):
    """The grid each element of an input is rounded on, as float64 values of
    the input's kind: ``ulp`` is the spacing of that grid where the element
    lies, ``largest`` the largest magnitude the grid holds (anything beyond
    it is clamped or overflows)."""

    ulp: Any
    largest: Any


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """The implementation that runs: ``backend`` when given, else the
    device's default kernels (numba for CPU data, the CUDA extension for
    CUDA data where it can be built), else the reference implementation."""
    return backends.resolve(backend, device.type)


def kernels(backend: str) -> backends.Kernels:
    """The entry points of a kernel backend that resolve_backend returned."""
    return backends.kernels(backend)


#: How many elements the reference implementation turns into float64 at a
#: time. Its temporaries (about thirty times the input's bytes at once) are
#: bounded by this, not by the input's size.
CHUNK_ELEMENTS = 1 << 20


def prepare_input(x: Any, backend: str | None) -> tuple[torch.Tensor, InputKind, str]:
    """x as a tensor of its own dtype (no copy where possible), its kind, and
    the backend that will run."""
    t, kind = as_tensor(x)
    return t, kind, resolve_backend(backend, t.device)


def exact(chunk: torch.Tensor, flush_subnormals: bool) -> torch.Tensor:
    """A chunk of input as exact float64; its subnormals (of the input's own
    dtype) become signed zeros only when ``flush_subnormals`` is asked for."""
    x64 = chunk.to(torch.float64)
    if flush_subnormals:
        x64 = torch.where(x64.abs() < torch.finfo(chunk.dtype).tiny, x64 * 0.0, x64)
    return x64


def chunk_slices(count: int, step: int) -> list[slice]:
    """Consecutive slices of at most ``step`` covering range(count)."""
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]


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
