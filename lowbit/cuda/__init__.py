"""lowbit.cuda: the CUDA extension, the default backend for CUDA tensors.

Importing this package (``import lowbit`` does) registers three backends
with :mod:`lowbit.formats.backends`: ``"cuda"`` (the extension, default for
CUDA tensors) and its two CPU builds, ``"cuda_host"`` (the kernels' math in
host loops) and ``"cuda_emulated"`` (the ``.cu`` kernels themselves run on
the host, thread after thread), which let machines without a GPU test it
bit for bit against the reference. Each also multiplies MX operands
(:func:`mx_matmul`, on tensor cores), which the emulation layer takes for
quantized products on the device whose default it is. Nothing else imports
this package, and it imports nothing of :mod:`lowbit.emulate`.

A build is compiled on first use (a CUDA tensor reaching a format's
``quantize``/``encode``/``decode``, a backend named explicitly, or
:func:`build`) with ``torch.utils.cpp_extension.load`` and cached. Where
the extension cannot be built (a CPU-only torch, no GPU, no nvcc, no
ninja), CUDA tensors use the reference implementation and
``backend="cuda"`` raises :class:`CudaUnavailable` saying what is missing.

The kernels' math lives in ``cuda/*.cuh`` headers (the repository's
``cuda/`` folder, installed as the package data ``lowbit.cuda.sources``)
that also compile on the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lowbit.formats.backends import get, register_backend

from . import extension as _extension
from .extension import CudaUnavailable, missing
from .matmul import mx_matmul

if TYPE_CHECKING:
    from lowbit.formats.abi import KernelBackend

__all__ = ["CudaUnavailable", "available", "build", "missing", "mx_matmul"]

#: each build: its backend name, the device type of its data, its loader and the namespace of its ops
BUILDS = {
    "cuda": ("cuda", _extension.load_cuda, "lowbit_cuda"),
    "cuda_host": ("cpu", _extension.load_host, "lowbit_host"),
    "cuda_emulated": ("cpu", _extension.load_emulated, "lowbit_emulated"),
}


def _loader(name: str):
    """The loader of a build's backend: build and load it, register its fakes."""
    device_type, load, namespace = BUILDS[name]

    def loaded() -> KernelBackend:
        load()
        from . import fake
        from .backend import backend

        fake.register(namespace)
        return backend(name, device_type, namespace)

    return loaded


def build() -> None:
    """Compile (the first time; about a minute) and load the CUDA extension.
    Raises :class:`CudaUnavailable` naming what is missing."""
    get("cuda")


def available() -> bool:
    """Whether CUDA tensors run on the extension: its prerequisites are
    present and it builds (the first call may compile it). When it does
    not, :func:`missing` names a missing prerequisite, or :func:`build`
    raises the compiler's error."""
    try:
        build()
    except Exception:  # a failed build is "not available"; build() shows why
        return False
    return True


def _register() -> None:
    for name, (device_type, _, _) in BUILDS.items():
        register_backend(name, device_type, _loader(name), default=name == "cuda")


_register()
