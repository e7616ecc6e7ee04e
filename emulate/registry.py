"""The quantized module classes :func:`~lowbit.emulate.quantize_model`
swaps in, found by the type of the module they wrap (its exact type:
a subclass may compute differently)."""

from __future__ import annotations

import torch

from .modules import QuantConv, QuantConv1D, QuantEmbedding, QuantLinear, QuantModule, QuantMultiheadAttention
from .recurrent import QuantGRU, QuantLSTM, QuantRNN
from .spec import QuantSpec

CLASSES: tuple[type[QuantModule], ...] = (QuantLinear, QuantConv1D, QuantConv, QuantEmbedding,
                                          QuantMultiheadAttention, QuantLSTM, QuantGRU, QuantRNN)


def quantized_class(module: torch.nn.Module) -> type[QuantModule] | None:
    """The quantized module class that wraps ``module``, or None."""
    return next((cls for cls in CLASSES if cls.accepts(module)), None)


def quantized(module: torch.nn.Module, spec: QuantSpec) -> QuantModule:
    """``module`` wrapped in its quantized module class under ``spec``."""
    cls = quantized_class(module)
    if cls is None:
        wrapped = [t.__name__ for c in CLASSES for t in c.wraps] + [n for c in CLASSES for n in c.wraps_by_name]
        raise TypeError(f"lowbit has no quantized {type(module).__name__}; it quantizes {', '.join(wrapped)}")
    return cls(module, spec)
