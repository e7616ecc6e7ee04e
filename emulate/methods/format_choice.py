"""Per-layer format choice (MoFQ: Zhang et al., "Integer or floating point?
New outlooks for low-bit quantization on large language models", 2023):
for each linear layer, the candidate spec whose quantized layer has the
least output error on calibration data, optionally under a total bit
budget; given back as ``quantize_model`` rules.

Error: :func:`~lowbit.emulate.methods.costs.layer_error`, the relative
error ||Y_q - Y|| / ||Y|| of the layer's quantized module under the
candidate (input, weight and output rounded as the spec says, accumulated
as it says; input observers calibrated on the same rows) against the
full-precision output, on the first ``samples`` input rows the layer sees
while the model, as it is, runs the batches. Bits: the weight's bits per
element in the candidate's weight format
(:func:`~lowbit.emulate.methods.costs.weight_bits`, block scales
included).

Without a budget each layer takes its least-error candidate (ties: the
fewer bits, then the earlier candidate). With ``bits_per_weight=b`` the
choice minimises the sum of the layers' errors subject to
sum_l bits_l * elements_l <= b * sum_l elements_l (a multiple-choice
knapsack), solved exactly by :func:`best_assignment`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..changes import Change, record
from ..registry import quantized
from ..spec import QuantSpec
from .costs import layer_error, weight_bits
from .inputs import layer_inputs
from .layers import linear_layers, plain, weight_matrix

METHOD = "choose_formats"
#: relative slack on the bit budget, for sums of float bit counts that equal it
BUDGET_SLACK = 1e-12


def choose_formats(model: torch.nn.Module, candidates: Sequence[QuantSpec], batches: Iterable[Any], *,
                   rules: Mapping[Any, None] | None = None,
                   forward: Callable[[torch.nn.Module, Any], Any] | None = None, samples: int = 512,
                   bits_per_weight: float | None = None) -> dict[str, QuantSpec]:
    """The chosen spec of each linear layer as ``quantize_model`` rules,
    ``{re.escape(name): spec}`` in module order (see the module docstring
    for the error, the bits and the budget).

    ``candidates``: two or more distinct QuantSpecs, each with a weight
    format. ``rules``: as quantize_model's, to leave layers out (a layer
    whose rule maps to None takes no part); they cannot map to a spec.
    ``samples``: the input rows per layer the errors are measured on.
    ``bits_per_weight``: None, or the largest average bits per weight
    element over the chosen layers.

    The model is not changed (a layer already quantized is measured from
    the layer it wraps, with the inputs it receives in the model as it is).
    Each layer's choice is logged (:func:`~lowbit.emulate.methods.changes`:
    the chosen format, its error as ``error_after`` and every candidate's
    error and bits as the detail) with a row for the whole model (the
    average bits), so that the log of a pipeline shows what was chosen;
    ``restore_model`` forgets these rows with the rest of the log.

    A candidate a layer cannot take (a quantized module rejects the spec)
    is warned about and left out for that layer; a layer that can take
    none is warned about and left out of the rules. A NaN error counts as
    infinite. Raises TypeError/ValueError for bad arguments, ValueError
    when the budget is below the cheapest choice."""
    candidates = _checked_candidates(candidates)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    _check_budget(bits_per_weight)
    for key, value in dict(rules or {}).items():
        if value is not None:
            raise ValueError(f"choose_formats' rules leave layers out (map them to None); rule {key!r} maps to a "
                             f"spec: give the specs as candidates")
    layers = {name: layer for name, (layer, _) in linear_layers(model, candidates[0], rules).items()}
    inputs = layer_inputs(model, layers, batches, samples=samples, forward=forward)
    labels = _labels(candidates)
    errors = np.full((len(layers), len(candidates)), math.inf)
    bits = np.zeros((len(layers), len(candidates)))
    for i, (name, layer) in enumerate(layers.items()):
        for j, spec in enumerate(candidates):
            bits[i, j] = weight_bits(layer, spec)
            errors[i, j] = _error(name, layer, spec, labels[j], inputs[name].samples)
    usable = np.isfinite(errors).any(axis=1)
    for name in np.array(list(layers), dtype=object)[~usable]:
        warnings.warn(f"choose_formats: layer {name!r} can take none of the candidates; it is left out of the "
                      f"rules", stacklevel=2)
    names = [name for name, ok in zip(layers, usable) if ok]
    errors, bits = errors[usable], bits[usable]
    elements = np.array([weight_matrix(plain(layers[name])).numel() for name in names], dtype=np.float64)
    if bits_per_weight is None:
        chosen = [_least_error(errors[i], bits[i]) for i in range(len(names))]
    else:
        cheapest = np.where(np.isfinite(errors), bits, math.inf).min(axis=1) @ elements / elements.sum()
        if cheapest > bits_per_weight * (1 + BUDGET_SLACK):
            raise ValueError(f"bits_per_weight={bits_per_weight:g} is below the cheapest choice's {cheapest:.4g} bits "
                             f"per weight")
        chosen = best_assignment(errors, bits * elements[:, None], float(bits_per_weight) * elements.sum())
    for i, name in enumerate(names):
        listing = "; ".join(f"{labels[j]}: {_number(errors[i, j])} ({bits[i, j]:.4g} bits)"
                            for j in range(len(candidates)))
        record(model, Change(name, METHOD, labels[chosen[i]], None, float(errors[i, chosen[i]]),
                             f"output errors (input rounded too) of {listing}"))
    average = sum(bits[i, c] * elements[i] for i, c in enumerate(chosen)) / elements.sum() if names else math.nan
    budget = "no budget" if bits_per_weight is None else f"budget {bits_per_weight:.4g}"
    record(model, Change("", METHOD, "-", None, None,
                         f"{average:.4g} bits per weight on average over {len(names)} layers ({budget})"))
    return {re.escape(name): candidates[c] for name, c in zip(names, chosen)}


def best_assignment(errors: np.ndarray, bits: np.ndarray, capacity: float) -> list[int]:
    """The candidate per row (layer) that minimises the sum of ``errors``
    (layers x candidates; +inf marks a candidate a layer cannot take)
    subject to the sum of ``bits`` (layers x candidates, the layer's
    total bits under each) being at most ``capacity`` (with a relative
    slack of 1e-12 for float sums). Exact: a dynamic programme over the
    layers that keeps, for each total of bits reachable so far, the least
    total error, and drops a total that is not below the error of every
    cheaper one (or that cannot fit with the remaining layers' cheapest
    candidates); its work grows with the number of distinct bit totals.
    Ties (equal total error) go to the fewer total bits, then to a fixed
    order. Raises ValueError when even the cheapest choice exceeds the
    capacity."""
    errors, bits = np.asarray(errors, dtype=np.float64), np.asarray(bits, dtype=np.float64)
    limit = capacity * (1 + BUDGET_SLACK)
    cheapest = np.where(np.isfinite(errors), bits, math.inf).min(axis=1)
    after = np.concatenate([np.cumsum(cheapest[::-1])[::-1][1:], [0.0]])  # the cheapest bits of the layers after
    if cheapest.sum() > limit:
        raise ValueError(f"capacity {capacity:g} is below the cheapest choice's {cheapest.sum():g} bits")
    total_bits, total_error = np.zeros(1), np.zeros(1)
    steps = []  # per layer: (the point each new point extends, the candidate it adds)
    for layer in range(len(errors)):
        options = np.flatnonzero(np.isfinite(errors[layer]))
        new_bits = (total_bits[:, None] + bits[layer, options]).ravel()
        new_error = (total_error[:, None] + errors[layer, options]).ravel()
        parent = np.repeat(np.arange(len(total_bits)), len(options))
        option = np.tile(options, len(total_bits))
        fits = new_bits + after[layer] <= limit
        new_bits, new_error, parent, option = new_bits[fits], new_error[fits], parent[fits], option[fits]
        order = np.lexsort((new_error, new_bits))  # by bits, then error (stable)
        new_bits, new_error, parent, option = new_bits[order], new_error[order], parent[order], option[order]
        keep = np.ones(len(new_bits), dtype=bool)
        keep[1:] = new_error[1:] < np.minimum.accumulate(new_error)[:-1]
        total_bits, total_error = new_bits[keep], new_error[keep]
        steps.append((parent[keep], option[keep]))
    point = len(total_bits) - 1  # the last point left has the least error
    chosen = []
    for parent, option in reversed(steps):
        chosen.append(int(option[point]))
        point = parent[point]
    return chosen[::-1]


def _checked_candidates(candidates: Any) -> list[QuantSpec]:
    if isinstance(candidates, QuantSpec) or not isinstance(candidates, Sequence) or isinstance(candidates, str):
        raise TypeError(f"candidates must be a sequence of QuantSpecs, got {type(candidates).__name__}")
    candidates = list(candidates)
    for spec in candidates:
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"candidates must be QuantSpecs, got a {type(spec).__name__}")
        if spec.weight is None:
            raise ValueError(f"every candidate needs a weight format; {spec} has none")
    if len(candidates) < 2:
        raise ValueError(f"choose_formats needs at least two candidates, got {len(candidates)}")
    if len(set(candidates)) < len(candidates):
        raise ValueError("the candidates must differ: two are the same spec")
    return candidates


def _check_budget(bits_per_weight: Any) -> None:
    if bits_per_weight is None:
        return
    if isinstance(bits_per_weight, bool) or not isinstance(bits_per_weight, (int, float)):
        raise TypeError(f"bits_per_weight must be a number or None, got {type(bits_per_weight).__name__}")
    if not (math.isfinite(bits_per_weight) and bits_per_weight > 0):
        raise ValueError(f"bits_per_weight must be a positive finite number, got {bits_per_weight!r}")


def _labels(candidates: list[QuantSpec]) -> list[str]:
    """Each candidate's name: the parts of its description the candidates do not all share."""
    parts = [str(spec).split(", ") for spec in candidates]
    common = set.intersection(*map(set, parts))
    labels = [", ".join(p for p in own if p not in common) for own in parts]
    return labels if len(set(labels)) == len(labels) else [str(spec) for spec in candidates]


def _error(name: str, layer: torch.nn.Module, spec: QuantSpec, label: str, rows: torch.Tensor) -> float:
    """The candidate's output error on the rows; inf where the layer cannot take it (warned)."""
    try:
        module = quantized(plain(layer), spec)
    except ValueError as why:
        warnings.warn(f"choose_formats: layer {name!r} cannot take {label}: {why}", stacklevel=3)
        return math.inf
    error = layer_error(module, rows)
    return math.inf if math.isnan(error) else error


def _least_error(errors: np.ndarray, bits: np.ndarray) -> int:
    """The least error's candidate; ties to the fewer bits, then the earlier."""
    return min(range(len(errors)), key=lambda j: (errors[j], bits[j], j))


def _number(value: float) -> str:
    return "-" if math.isinf(value) else f"{value:.4g}"
