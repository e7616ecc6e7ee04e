"""lowbit.emulate: torch integration.

- :func:`fake_quantize`: a differentiable, torch.compile-able op that rounds
  a tensor to a format in the forward pass (straight-through gradient,
  optionally masked where the forward clipped, optionally rounded to a
  gradient format).
- :class:`QuantSpec`: a format per operand role of a matmul.
- :func:`quantized_linear`, :func:`quantized_matmul`, :func:`quantized_conv`:
  the products with their operands rounded, forward and backward
  (re-blocked along each backward product's reduction dimension).
- :class:`QuantLinear`, :class:`QuantConv1D`, :class:`QuantConv`,
  :class:`QuantEmbedding`, :class:`QuantMultiheadAttention`,
  :class:`QuantLSTM`, :class:`QuantGRU`, :class:`QuantRNN`: modules that
  wrap Linear, transformers' Conv1D, Conv1d/2d/3d, ConvTranspose1d/2d/3d,
  Embedding, MultiheadAttention and the recurrent layers.
- :func:`quantize_model` / :func:`restore_model`: swap a model's layers by
  rules, and back; :func:`summary_table` shows what is quantized and
  :func:`full_precision` what is not.
- :func:`emulating`: a function mode that quantizes every product torch
  code makes (F.linear, matmul / @, mm, bmm, addmm, einsum, tensordot,
  convolutions, attention, ...) wherever it is called, and reports what it
  rounded (:class:`EmulationReport`).

``QuantSpec(accumulate=...)`` emulates a limited-precision accumulator in
the forward products; ``QuantSpec(observers=...)`` with :class:`Observer`
and :func:`calibrate` give element formats external scales (per tensor,
channel or group; absmax, percentile or MSE-optimal).
"""

from .fake_quant import STE_MODES, fake_quantize
from .calibration import Observer
from .calibrating import calibrate
from .conv import quantized_conv
from .linear import quantized_linear
from .matmul import quantized_matmul
from .modules import QuantConv, QuantConv1D, QuantEmbedding, QuantLinear, QuantModule, QuantMultiheadAttention
from .mode import EmulationReport, checkpoint_context, emulating
from .recurrent import QuantGRU, QuantLSTM, QuantRNN
from .patching import full_precision, quantize_model, restore_model, summary, summary_table
from .spec import ROLES, QuantSpec

__all__ = [
    "EmulationReport", "Observer", "QuantConv", "QuantConv1D", "QuantEmbedding", "QuantGRU", "QuantLSTM",
    "QuantLinear", "QuantModule", "QuantMultiheadAttention", "QuantRNN", "QuantSpec", "ROLES", "STE_MODES",
    "calibrate", "checkpoint_context", "full_precision", "emulating", "fake_quantize", "quantize_model", "quantized_conv", "quantized_linear",
    "quantized_matmul", "restore_model", "summary", "summary_table",
]
