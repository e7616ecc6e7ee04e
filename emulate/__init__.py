"""lowbit.emulate: torch integration.

- :func:`fake_quantize`: a differentiable, torch.compile-able op that rounds
  a tensor to a format in the forward pass (straight-through gradient,
  optionally masked where the forward clipped, optionally rounded to a
  gradient format).
- :class:`QuantSpec`: a format per operand role of a matmul.
- :class:`QuantLinear`, :func:`quantized_linear`: Linear with its operands
  rounded, forward and backward (re-blocked along each product's reduction
  dimension).
- :func:`quantize_model` / :func:`restore_model`: swap a model's Linear
  layers by rules, and back; :func:`summary_table` shows what is quantized.

Convolutions, embeddings, attention, the function mode, accumulators and
calibration are not built yet: see the project's open issues.
"""

from .fake_quant import STE_MODES, fake_quantize
from .linear import QuantLinear, quantized_linear
from .patching import quantize_model, restore_model, summary, summary_table
from .spec import ROLES, QuantSpec

__all__ = [
    "QuantLinear", "QuantSpec", "ROLES", "STE_MODES", "fake_quantize", "quantize_model", "quantized_linear",
    "restore_model", "summary", "summary_table",
]
