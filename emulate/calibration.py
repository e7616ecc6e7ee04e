"""Scales for element formats that need one from outside: observers and the
calibration pass.

An INT or FP element format covers a fixed range, so real tensors are
scaled into it: q = Q(x / s) * s, with s chosen by an :class:`Observer`:

- ``absmax``: s = max|x| / fmt.max (nothing clips);
- ``percentile``: s = the ``percentile``-th percentile of |x| / fmt.max
  (the rare values above it clip);
- ``mse``: s = a * max|x| / fmt.max with a, among ``candidates`` values
  evenly spaced in [``lowest_ratio``, 1], the one with the least squared
  error of Q(x / s) * s against x.

Granularity: ``tensor`` (one scale), ``channel`` (one per output channel,
the weight's axis 0) or ``group`` (one per ``group_size`` consecutive
input features of each output channel, for Linear weights). Calibrated
(static) activation scales are per ``tensor``; scales computed from each
activation at run time need no observer: give the role a dynamically
scaled format, ``int8_rowwise`` / ``fp8_e4m3_rowwise`` (one scale per
token: per row along the product's reduction axis) or ``int8_tensor`` /
``fp8_e4m3_tensor`` (one per tensor).
A scale of a group that is all zero is 1. x / s and Q(x / s) * s are
formed in the tensor's dtype, as a datapath does.

Weights are calibrated from themselves whenever they change; activations by
:func:`lowbit.emulate.calibrate` (:mod:`.calibrating`), which runs the model over sample batches in full
precision while each quantized module's input observer records its inputs
(up to ``max_samples`` values per layer: the first seen).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

METHODS = ("absmax", "percentile", "mse")
GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class Observer:
    """How a scale is chosen (see the module docstring)."""

    method: str = "absmax"
    granularity: str = "tensor"
    group_size: int = 128
    percentile: float = 99.99
    candidates: int = 40
    lowest_ratio: float = 0.3
    max_samples: int = 1 << 20

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}; got {self.granularity!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must lie in (0, 100], got {self.percentile!r}")
        if not 0 < self.lowest_ratio <= 1:
            raise ValueError(f"lowest_ratio must lie in (0, 1], got {self.lowest_ratio!r}")
        for name in ("group_size", "candidates", "max_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    def groups(self, x: torch.Tensor) -> torch.Tensor:
        """x's values as rows, one row per scale."""
        if self.granularity == "tensor":
            return x.reshape(1, -1)
        if self.granularity == "channel":
            return x.reshape(x.shape[0], -1)
        if x.dim() != 2 or x.shape[1] % self.group_size:
            raise ValueError(f"group scales need a 2-D weight whose input features divide into groups of "
                             f"{self.group_size}; got shape {tuple(x.shape)}")
        return x.reshape(-1, self.group_size)

    def scale(self, x: torch.Tensor, fmt: Any, quantize: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The scales of x, shaped to broadcast against it; ``quantize``
        rounds to ``fmt`` (used by the mse search)."""
        rows = self.groups(x.detach()).to(torch.float32)
        magnitude = rows.abs()
        if self.method == "percentile":
            ordered = magnitude.sort(dim=1).values
            index = min(rows.shape[1] - 1, max(0, round(self.percentile / 100 * rows.shape[1]) - 1))
            amax = ordered[:, index]
        else:
            amax = magnitude.amax(dim=1)
        scale = torch.where(amax > 0, amax / fmt.max, torch.ones_like(amax))
        if self.method == "mse":
            best_error = torch.full_like(amax, float("inf"))
            best = scale
            for ratio in torch.linspace(self.lowest_ratio, 1.0, self.candidates):
                trial = scale * ratio
                error = (quantize(rows / trial[:, None]) * trial[:, None] - rows).square().sum(dim=1)
                better = error < best_error
                best, best_error = torch.where(better, trial, best), torch.where(better, error, best_error)
            scale = best
        return self._broadcast(scale, x)

    def _broadcast(self, scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        scale = scale.to(x.dtype)
        if self.granularity == "tensor":
            return scale.reshape(())
        if self.granularity == "channel":
            return scale.reshape(x.shape[0], *[1] * (x.dim() - 1))
        return scale.reshape(x.shape[0], -1).repeat_interleave(self.group_size, dim=1)


@dataclass(frozen=True, eq=False)
class Calibrated:
    """An element format with an external scale: values round as
    Q(x / scale) * scale (the scale broadcasts against the operand)."""

    format: Any
    scale: torch.Tensor

    @property
    def name(self) -> str:
        return f"{self.format.name} (scaled)"


class Recorder:
    """What an input observer has seen: the first ``max_samples`` values."""

    def __init__(self, observer: Observer) -> None:
        if observer.granularity != "tensor":
            raise ValueError(f"activation scales are per tensor (a per-{observer.granularity} scale would change "
                             "with the batch); use granularity='tensor' for the input role")
        self.observer, self.parts, self.count = observer, [], 0

    def record(self, x: torch.Tensor) -> None:
        if self.count < self.observer.max_samples:
            part = x.detach().reshape(-1)[: self.observer.max_samples - self.count].to(torch.float32).clone()
            self.parts.append(part)
            self.count += part.numel()

    def scale(self, fmt: Any, quantize: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        if not self.parts:
            raise RuntimeError("the calibration batches never reached this layer")
        return self.observer.scale(torch.cat(self.parts), fmt, quantize).to(dtype)
