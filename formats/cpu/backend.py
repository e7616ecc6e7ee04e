"""The ``"cpu"`` backend: the numba kernels of this package, for CPU data."""

from __future__ import annotations

from ..abi import KernelBackend
from . import element_backend, scaled_backend


def load_backend() -> KernelBackend:
    return KernelBackend("cpu", "cpu", element_backend, scaled_backend)
