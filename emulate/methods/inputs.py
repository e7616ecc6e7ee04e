"""The calibration inputs of a model's linear layers, as the methods need
them: per input feature, the largest magnitude and the mean magnitude
(SmoothQuant, AWQ, LLM.int8's outlier columns); the sum of outer products
X^T X in float64 (GPTQ's Hessian H = 2 X^T X / rows); and the first rows
themselves (to measure a layer's output error)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..calibrating import run_batches
from ..modules import QuantModule


@dataclasses.dataclass
class LayerInputs:
    """What a layer's inputs were, over ``rows`` input rows of ``features``
    features each (every leading dimension of an input is a row)."""

    features: int
    rows: int = 0
    absmax: torch.Tensor | None = None  # float64, per feature
    abssum: torch.Tensor | None = None  # float64, per feature
    gram: torch.Tensor | None = None  # float64, features x features: the sum of x x^T over rows
    samples: torch.Tensor | None = None  # the first rows (float32)

    def absmean(self) -> torch.Tensor:
        """Mean |x| per feature (float64)."""
        return self.abssum / self.rows

    def hessian(self) -> torch.Tensor:
        """GPTQ's H = 2 X^T X / rows (float64)."""
        return self.gram * (2.0 / self.rows)

    def add(self, x: torch.Tensor, gram: bool, samples: int) -> None:
        """Count the rows of one input."""
        rows = x.detach().reshape(-1, self.features)
        if not len(rows):
            return
        wide = rows.to(torch.float64)
        absmax, abssum = wide.abs().amax(0), wide.abs().sum(0)
        self.absmax = absmax if self.absmax is None else torch.maximum(self.absmax, absmax)
        self.abssum = abssum if self.abssum is None else self.abssum + abssum
        if gram:
            product = wide.T @ wide
            self.gram = product if self.gram is None else self.gram + product
        kept = 0 if self.samples is None else len(self.samples)
        if kept < samples:
            new = rows[:samples - kept].to(torch.float32)
            self.samples = new.clone() if self.samples is None else torch.cat([self.samples, new])
        self.rows += len(rows)


def in_features(layer: torch.nn.Module) -> int:
    """A linear layer's input width (a Linear's in_features; transformers'
    Conv1D stores its weight as (in, out))."""
    layer = layer.original if isinstance(layer, QuantModule) else layer
    if isinstance(layer, torch.nn.Linear):
        return layer.in_features
    return layer.weight.shape[0]


def layer_inputs(model: torch.nn.Module, layers: Mapping[str, torch.nn.Module], batches: Iterable[Any], *,
                 gram: bool = False, samples: int = 0,
                 forward: Callable[[torch.nn.Module, Any], Any] | None = None) -> dict[str, LayerInputs]:
    """Run ``forward(model, batch)`` (default ``model(batch)``, ``model(**batch)`` for a mapping) over
    ``batches`` without gradients and gather each named layer's inputs: the
    per-feature statistics always, ``gram`` the float64 X^T X, ``samples``
    the first that many rows. Raises ValueError when batches is empty or a
    layer sees no input."""
    stats = {name: LayerInputs(in_features(layer)) for name, layer in layers.items()}
    handles = [layer.register_forward_pre_hook(
        lambda _m, args, kwargs, s=stats[name]: s.add(args[0] if args else kwargs["input"], gram, samples),
        with_kwargs=True) for name, layer in layers.items()]
    try:
        run_batches(model, batches, forward, "the method's calibration")
    finally:
        for handle in handles:
            handle.remove()
    unseen = [name for name, s in stats.items() if not s.rows]
    if unseen:
        raise ValueError(f"the calibration batches never reached {', '.join(unseen)}")
    return stats
