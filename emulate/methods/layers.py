"""The linear layers a method works on, and the spec of each: nn.Linear
and transformers' Conv1D (GPT-2), plain or already swapped by
quantize_model, chosen by the rules quantize_model takes (a layer whose
spec is None, or has no weight format, is left alone)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..modules import QuantConv1D, QuantLinear, QuantModule
from ..prerounded import held_marker
from ..registry import quantized_class
from ..rules import checked_arguments, spec_for, unmatched_patterns
from ..spec import QuantSpec


def is_linear(module: torch.nn.Module) -> bool:
    """An nn.Linear or transformers' Conv1D, plain or quantized."""
    inner = module.original if isinstance(module, QuantModule) else module
    return QuantLinear.accepts(inner) or QuantConv1D.accepts(inner)


def weight_matrix(layer: torch.nn.Module) -> torch.Tensor:
    """The layer's weight as F.linear takes it, (out, in): a view of the
    parameter (Conv1D's transposed)."""
    inner = layer.original if isinstance(layer, QuantModule) else layer
    return inner.weight if QuantLinear.accepts(inner) else inner.weight.T  # QuantConv1D accepts Linear too


def linear_layers(model: torch.nn.Module, spec: QuantSpec | None,
                  rules: Mapping[Any, QuantSpec | None] | None = None) -> dict[str, tuple[torch.nn.Module, QuantSpec]]:
    """Each linear layer's name, the layer and its spec (``spec``, or the
    first matching rule's), in module order, for the layers whose spec has
    a weight format. Raises TypeError for a spec that is not a QuantSpec,
    ValueError when no layer is left; warns for a name rule that matches
    nothing."""
    rules = checked_arguments(model, spec, rules)
    names = [name for name, _ in model.named_modules()]
    for pattern in unmatched_patterns(rules, names):
        warnings.warn(f"rule {pattern!r} matches no module name of the model", stacklevel=3)
    attention = [name or "(model)" for name, m in model.named_modules()
                 if isinstance(plain(m), torch.nn.MultiheadAttention)]
    if attention:
        warnings.warn(f"the methods leave the projections of nn.MultiheadAttention ({', '.join(attention)}) as "
                      f"they are (its in_proj_weight is no linear layer); quantize_model rounds them to nearest",
                      stacklevel=3)
    chosen = {}
    for name, module in model.named_modules():
        if not is_linear(module):
            continue
        layer_spec = spec_for(rules, name, module, spec)
        if layer_spec is not None and layer_spec.weight is not None:
            chosen[name] = (module, layer_spec)
    if not chosen:
        raise ValueError("no linear layer of the model has a spec with a weight format (nn.Linear and "
                         "transformers' Conv1D are the layers the methods change)")
    return chosen


def plain(layer: torch.nn.Module) -> torch.nn.Module:
    """The layer itself, or the one a quantized module wraps."""
    return layer.original if isinstance(layer, QuantModule) else layer


def rounded_matrix(layer: torch.nn.Module, spec: QuantSpec) -> torch.Tensor:
    """The layer's weight as its quantized module under ``spec`` rounds it
    (round to nearest: the baseline every method is measured against), as
    F.linear takes it, (out, in)."""
    quantized = (QuantLinear if QuantLinear.accepts(plain(layer)) else QuantConv1D)(plain(layer), spec)
    with torch.no_grad():
        return quantized.matrix(quantized.round_weight(quantized.weight.detach()))


def output_error(x: torch.Tensor, weight: torch.Tensor, rounded: torch.Tensor) -> float:
    """||x W^T - x Q^T|| / ||x W^T|| (Frobenius norms, float64): a layer's
    relative output error with weight Q in place of W; 0 when x W^T is 0."""
    x, weight, rounded = (t.detach().to(torch.float64) for t in (x, weight, rounded))
    reference = torch.linalg.matrix_norm(x @ weight.T)
    difference = torch.linalg.matrix_norm(x @ (weight - rounded).T)
    return float(difference / reference) if reference > 0 else float(difference)


#: the methods that change weights in full precision (a weight GPTQ rounded would lose its rounding)
REWEIGHTING = ("smoothquant", "awq", "rotate")


def check_order(chosen: dict[str, tuple[torch.nn.Module, QuantSpec]], method: str) -> None:
    """ValueError where ``method`` would silently undo an earlier method's
    work on a chosen layer: a layer in another method's own module (the
    outlier split; apply outliers last), or a weight that holds GPTQ's
    rounding, for a method that changes weights in full precision
    (SmoothQuant, AWQ, rotations: apply them before GPTQ)."""
    for name, (layer, _) in chosen.items():
        if isinstance(layer, QuantModule) and type(layer) is not quantized_class(plain(layer)) \
                and method != "outliers":
            raise ValueError(f"{name or '(model)'} is a {type(layer).__name__}, which {method} would replace: "
                             f"apply the methods in their order (SmoothQuant or rotations, then GPTQ or AWQ, then "
                             f"outliers), or restore_model first")
        marker = held_marker(plain(layer))
        if marker is not None and method in REWEIGHTING:
            raise ValueError(f"{name or '(model)'}'s weight holds {marker.method}'s rounding, which {method} would "
                             f"change back to full precision: apply {method} before {marker.method}, or "
                             f"restore_model first")
