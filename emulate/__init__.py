"""lowbit.emulate: torch integration.

- :func:`fake_quantize`: a differentiable, torch.compile-able op that rounds
  a tensor to a format in the forward pass (straight-through gradient,
  optionally masked where the forward clipped, optionally rounded to a
  gradient format).
- :class:`QuantSpec`: a format per operand role of a matmul.
- :class:`QuantLinear`, :func:`quantized_linear`: Linear with its operands
  rounded, forward and backward (re-blocked along each product's reduction
  dimension).
- :func:`quantized_matmul`: torch.matmul with quantized operands, likewise.
- :func:`quantize_model` / :func:`restore_model`: swap a model's Linear
  layers by rules, and back; :func:`summary_table` shows what is quantized.
- :func:`emulating`: a function mode that quantizes F.linear, matmul / @,
  bmm, baddbmm and scaled_dot_product_attention wherever they are called.

Convolutions, embeddings, accumulators and calibration are not built yet:
see the project's open issues.
"""

from .fake_quant import STE_MODES, fake_quantize
from .linear import QuantLinear, quantized_linear
from .matmul import quantized_matmul
from .mode import emulating
from .patching import quantize_model, restore_model, summary, summary_table
from .spec import ROLES, QuantSpec

__all__ = [
    "QuantLinear", "QuantSpec", "ROLES", "STE_MODES", "emulating", "fake_quantize", "quantize_model",
    "quantized_linear", "quantized_matmul", "restore_model", "summary", "summary_table",
]
