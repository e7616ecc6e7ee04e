"""The ``"cpu"`` backend: the numba kernels of this package, for CPU data."""

from __future__ import annotations

from ..abi import SCHEMES, KernelBackend
from . import datapath_kernels, element_backend, scaled_backend

#: the BlockFormat schemes the CPU kernels implement: all but double
#: quantization of scales other than fp32 (their float32 decoded values are
#: fp32 codes, which the kernels read as they are)
CPU_SCHEMES = frozenset(SCHEMES) - {"double quantization of scales other than fp32"}


def load_backend() -> KernelBackend:
    return KernelBackend("cpu", "cpu", element_backend, scaled_backend, schemes=CPU_SCHEMES, codebooks=True,
                         datapath=datapath_kernels.datapath_product)
