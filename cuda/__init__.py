"""lowbit.cuda: the CUDA extension, the default backend for CUDA tensors.

Importing this package (``import lowbit`` does) registers the ``"cuda"``
backend with :mod:`lowbit.formats.backends` and :func:`mx_matmul` (the MX
matmul on tensor cores) with :mod:`lowbit.emulate.encoded_products`;
nothing else imports it. The
extension is compiled on first use (a CUDA tensor reaching a format's
``quantize``/``encode``/``decode``, or :func:`build`) with
``torch.utils.cpp_extension.load`` and cached. Where it cannot be built
(a CPU-only torch, no GPU, no nvcc, no ninja), CUDA tensors use the
reference implementation and ``backend="cuda"`` raises
:class:`CudaUnavailable` saying what is missing.

The kernels' math lives in ``csrc/*.cuh`` headers that also compile on the
host. Two CPU builds let machines without a GPU test it bit for bit
against the reference: :func:`host_kernels` (the headers' math in host
loops) and :func:`emulated_kernels` (the ``.cu`` kernels themselves run on
the host, thread after thread).
"""

from __future__ import annotations

from lowbit.emulate.encoded_products import EncodedProduct, register_encoded_product
from lowbit.formats.backends import Kernels, register_backend

from . import extension as _extension
from .extension import CudaUnavailable, missing
from .matmul import mx_matmul, operand_problem

__all__ = ["CudaUnavailable", "available", "build", "emulated_kernels", "host_kernels", "missing", "mx_matmul"]


def _loaded(load, namespace: str) -> Kernels:
    """A build's Kernels, after building and loading it and registering its fakes."""
    load()
    from . import fake
    from .backend import kernels

    fake.register(namespace)
    return kernels(namespace)


def cuda_kernels() -> Kernels:
    """The extension as the formats' "cuda" backend."""
    return _loaded(_extension.load_cuda, "lowbit_cuda")


def build() -> None:
    """Compile (the first time; about a minute) and load the CUDA extension.
    Raises :class:`CudaUnavailable` naming what is missing."""
    cuda_kernels()


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


def host_kernels() -> Kernels:
    """The host twin (ops ``torch.ops.lowbit_host.*`` on CPU tensors): the
    kernels' math in host loops, for testing without a GPU."""
    return _loaded(_extension.load_host, "lowbit_host")


def emulated_kernels() -> Kernels:
    """The emulated build (ops ``torch.ops.lowbit_emulated.*`` on CPU
    tensors): the ``.cu`` kernels run on the host one thread after another,
    for testing their code without a GPU (slow: sequential threads)."""
    return _loaded(_extension.load_emulated, "lowbit_emulated")


def _accepts_operands(input_format, weight_format, device) -> bool:
    """Whether the MX matmul takes a quantized product of these formats on ``device``."""
    return (device.type == "cuda" and operand_problem(input_format) is None
            and operand_problem(weight_format) is None and input_format.block_size == weight_format.block_size
            and available())


register_backend("cuda", "cuda", cuda_kernels, default=True)
register_encoded_product(EncodedProduct(
    _accepts_operands, lambda a, b, bias, out_dtype: mx_matmul(a, b, bias=bias, out_dtype=out_dtype)))
