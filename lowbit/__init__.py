"""lowbit: exact, fast emulation of low-precision number formats.

    >>> import lowbit, numpy as np
    >>> lowbit.quantize(np.float32([0.3, 500.0]), "fp8_e4m3")
    array([  0.3125, 448.    ], dtype=float32)
"""

from __future__ import annotations

from typing import Any

from lowbit.formats import (
    NF4_VALUES, BlockFormat, CodebookFormat, Encoded, FloatFormat, IntFormat, MicroexponentFormat, TensorScaledFormat,
    fit_codebook, get_format, list_formats, p3109, pack, unpack,
)
from lowbit.formats import backends as _backends

import lowbit.cuda  # noqa: F401,E402  (registers the CUDA extension's backends; builds nothing until used)

__version__ = "0.1.0"


def quantize(x: Any, fmt: Any, **policy: Any) -> Any:
    """What ``x`` becomes in ``fmt`` (a name or a format object); same kind,
    dtype and device as ``x``. ``policy``: rounding, overflow, seed,
    generator, flush_subnormals, backend; axis and scale_rule for scaled formats."""
    return get_format(fmt).quantize(x, **policy)


def encode(x: Any, fmt: Any, **policy: Any) -> Any:
    """Bit codes of ``x`` in ``fmt``: unsigned integer codes for element
    formats, an :class:`Encoded` for scaled formats."""
    return get_format(fmt).encode(x, **policy)


def decode(codes: Any, fmt: Any = None, **options: Any) -> Any:
    """Values of ``codes``: an :class:`Encoded` (``fmt`` optional) or integer
    codes of the element format ``fmt``. float32 unless ``dtype`` says float64."""
    if isinstance(codes, Encoded):
        if fmt is not None and get_format(fmt) != codes.format:
            raise ValueError(f"fmt {get_format(fmt).name} does not match the Encoded's format {codes.format.name}")
        return codes.decode(**options)
    if fmt is None:
        raise TypeError("decode needs fmt to decode integer codes")
    return get_format(fmt).decode(codes, **options)


def backends() -> tuple[str, ...]:
    """The names every ``backend=`` argument takes: ``"reference"`` (any
    device), ``"cpu"`` (numba, CPU data), ``"cuda"`` (the CUDA extension,
    CUDA data, where it builds) and the extension's CPU builds
    ``"cuda_host"`` and ``"cuda_emulated"`` (CPU data; they need a C++
    compiler and ninja). ``backend=None`` picks the device's default where
    it supports the call, else the reference."""
    return _backends.names()


__all__ = [
    "NF4_VALUES", "BlockFormat", "CodebookFormat", "Encoded", "FloatFormat", "IntFormat", "MicroexponentFormat",
    "TensorScaledFormat", "backends", "decode", "encode", "fit_codebook", "get_format", "list_formats", "p3109",
    "pack", "quantize", "unpack",
]
