"""The calibration pass: :func:`calibrate` runs a model over sample
batches so that each quantized module's input observer (see
:mod:`.calibration`) records the activations it sees, then sets their scales."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .modules import QuantModule


def default_forward(model: torch.nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping (a tokenizer's output), else ``model(batch)``."""
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


def run_batches(model: torch.nn.Module, batches: Iterable[Any], forward: Callable[[torch.nn.Module, Any], Any] | None,
                purpose: str) -> None:
    """Run ``forward(model, batch)`` over ``batches`` without gradients
    (default: :func:`default_forward`); ValueError naming ``purpose`` when
    batches is empty."""
    run = forward or default_forward
    seen = False
    with torch.no_grad():
        for batch in batches:
            run(model, batch)
            seen = True
    if not seen:
        raise ValueError(f"batches is empty: {purpose} needs data")


def calibrate(model: torch.nn.Module, batches: Iterable[Any],
              forward: Callable[[torch.nn.Module, Any], Any] | None = None) -> torch.nn.Module:
    """Set the input scales of every quantized module with an input observer
    from the activations it sees while ``forward(model, batch)`` (default:
    ``model(**batch)`` for a mapping, else ``model(batch)``) runs over ``batches`` in full precision, without
    gradients. Gives back the model."""
    layers = [m for m in model.modules() if isinstance(m, QuantModule) and m.spec.observer("input") is not None]
    if not layers:
        raise ValueError("no quantized layer of this model has an input observer (QuantSpec(observers=...))")
    for layer in layers:
        layer.start_calibration()
    try:
        run_batches(model, batches, forward, "calibration")
    finally:
        for layer in layers:
            layer.stop_calibration()
    for layer in layers:
        layer.finish_calibration()
    return model
