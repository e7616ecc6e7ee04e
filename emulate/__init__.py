"""lowbit.emulate: torch integration.

- :func:`fake_quantize`: a differentiable, torch.compile-able op that rounds
  a tensor to a format in the forward pass (straight-through gradient,
  optionally masked where the forward clipped, optionally rounded to a
  gradient format).

Quantized modules, model patching, the function mode and calibration are
not built yet: see the project's open issues.
"""

from .fake_quant import STE_MODES, fake_quantize

__all__ = ["STE_MODES", "fake_quantize"]
