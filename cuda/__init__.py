"""lowbit.cuda: the CUDA extension, the default backend for CUDA tensors.

Importing this package (``import lowbit`` does) registers the ``"cuda"``
backend with :mod:`lowbit.formats.backends`; nothing else imports it. The
extension is compiled on first use (a CUDA tensor reaching a format's
``quantize``/``encode``/``decode``, or :func:`build`) with
``torch.utils.cpp_extension.load`` and cached. Where it cannot be built
(a CPU-only torch, no GPU, no nvcc, no ninja), CUDA tensors use the
reference implementation and ``backend="cuda"`` raises
:class:`CudaUnavailable` saying what is missing.

The kernels' math lives in ``csrc/*.cuh`` headers that also compile on the
host: :func:`host_kernels` builds that host twin for CPU tensors, which is
how machines without a GPU test it bit for bit against the reference.
"""

from __future__ import annotations

from lowbit.formats.backends import BackendUnavailable, Kernels, register_backend

from . import extension as _extension
from .extension import CudaUnavailable, missing

__all__ = ["CudaUnavailable", "available", "build", "host_kernels", "missing"]


def build() -> None:
    """Compile (the first time; minutes) and load the CUDA extension.
    Raises :class:`CudaUnavailable` naming what is missing."""
    _extension.load_cuda()
    from . import fake

    fake.register("lowbit_cuda")


def available() -> bool:
    """Whether CUDA tensors run on the extension: its prerequisites are
    present and it builds (the first call may compile it)."""
    try:
        build()
    except BackendUnavailable:
        return False
    return True


def cuda_kernels() -> Kernels:
    """The extension as the formats' "cuda" backend."""
    build()
    from .backend import kernels

    return kernels("lowbit_cuda")


def host_kernels() -> Kernels:
    """The host twin (ops ``torch.ops.lowbit_host.*`` on CPU tensors): the
    kernels' math compiled for the CPU, for testing without a GPU."""
    _extension.load_host()
    from . import fake
    from .backend import kernels

    fake.register("lowbit_host")
    return kernels("lowbit_host")


register_backend("cuda", "cuda", cuda_kernels, default=True)
