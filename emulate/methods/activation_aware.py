"""AWQ (Lin et al., MLSys 2024): activation-aware per-input-feature scales
of the weights, searched for the least output error with the weight
format.

For each group of linear layers that share an input (see
:mod:`.folding`), with m_j the mean |x_j| of input feature j over every
calibration row, and for alpha in the grid 0, 1/grid, ..., (grid-1)/grid
(the reference implementation's: 20 points, alpha = 0 first, 1 not
included):

    s = max(m^alpha, 1e-4);  s <- s / sqrt(max(s) * min(s))

(the reference's clamp and normalisation; alpha = 0 gives s = 1 exactly,
round to nearest). Each candidate s (rounded to the weights' dtype, as it
will be folded) is scored by the group's squared output error on the
first ``samples`` calibration rows X, in float64:

    sum over the group's layers of || X W^T - (X / s) Q(W diag(s))^T ||^2

where Q rounds to nearest as the layer's quantized module rounds its
weight under its spec (any lowbit weight format: element formats with
observer scales, MX, NVFP4, int4 groups, codebooks). The first alpha with
the least error wins (ties keep the smaller alpha, so the error is never
above round to nearest's on these rows). Then W <- W diag(s) and
x <- x / s are folded as :mod:`.folding` does (nothing changes when
alpha = 0 wins). Groups are done last to first, so each search sees the
weight's rows as they will be rounded. The search is weight-only, as the
reference's: the input format does not enter it.

Not done: the reference's second step, the search of a clipping range per
weight group (auto_clip); the objective is each group's own outputs, not
the reference's whole block (attention or MLP) output.

The result is the model with the scales applied, **not quantized**:
``quantize_model(model, spec)`` then rounds W diag(s) to nearest, the
weight the search measured. Each layer's Change holds its relative output
error ||X W^T - X Q^T|| / ||X W^T|| with round to nearest before and after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..spec import QuantSpec
from .folding import Group, Scale, prepare
from .inputs import LayerInputs
from .layers import output_error, weight_matrix
from .trial import rounded


def awq_scales(absmean: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's candidate s (float64) for one alpha from the inputs' mean |x|
    per feature; see the module docstring. Raises ValueError when it is
    not finite (NaN or Inf in the calibration inputs)."""
    s = absmean.double().pow(alpha).clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    if not bool(torch.isfinite(s).all()):
        raise ValueError("the calibration inputs hold NaN or Inf: AWQ's scales would not be finite")
    return s


def scaled_error(x: torch.Tensor, weight: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> float:
    """|| x W^T - (x / s) Q(W diag(s))^T ||^2 (float64), s in the weight's
    dtype, Q the round to nearest of the spec's weight format."""
    q = rounded(weight * s, spec).double() / s.double()
    return float(torch.sum((x.double() @ (weight.double() - q).T) ** 2))


def awq(model: torch.nn.Module, spec: QuantSpec | None, batches: Iterable[Any], *,
        rules: Mapping[Any, QuantSpec | None] | None = None,
        forward: Callable[[torch.nn.Module, Any], Any] | None = None, inplace: bool = True,
        grid: int = 20, samples: int = 512) -> torch.nn.Module:
    """Search and apply AWQ's scales to the linear layers chosen by
    ``spec`` and ``rules`` (see the module docstring) on the calibration
    ``batches`` (each run as ``forward(model, batch)``, default
    ``model(batch)``, ``model(**batch)`` for a mapping); ``grid`` alphas, errors on the first ``samples``
    rows of each layer's inputs. Returns the model with the scales
    applied, unquantized (a deep copy when ``inplace=False``);
    ``restore_model`` undoes it bit for bit. Raises ValueError for a grid
    that is not a positive int or empty batches, TypeError for a spec that
    is not a QuantSpec."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    prepared = prepare(model, spec, batches, method="awq", rules=rules, forward=forward, inplace=inplace,
                       samples=samples)
    before = prepared.errors(rounding_error)
    transforms, details = {}, {}
    for group in reversed(prepared.folder.groups):
        alpha, s = _search(group, prepared.inputs[group.names[0]], prepared.specs, grid)
        if alpha == 0:
            detail = f"alpha 0 (grid of {grid}); round to nearest: left unscaled"
        else:
            scale = Scale(s, s.dtype)
            how = prepared.folder.apply(group, scale)
            transforms.update(dict.fromkeys(group.names, scale))
            detail = f"alpha {alpha:g} (grid of {grid}), s in [{float(s.min()):.3g}, {float(s.max()):.3g}]; {how}"
        details.update(dict.fromkeys(group.names, detail))
    prepared.record("awq", before, prepared.errors(rounding_error, transforms), details)
    return prepared.model


def rounding_error(weight: torch.Tensor, spec: QuantSpec, x: torch.Tensor) -> float:
    """The layer's relative output error with its weight rounded to nearest (the Change's error)."""
    return output_error(x, weight, rounded(weight, spec))


def _search(group: Group, inputs: LayerInputs, specs: Mapping[str, QuantSpec], grid: int) -> tuple[float, torch.Tensor]:
    """The alpha with the least error over the group, and its s in the weights' dtype."""
    weights = [weight_matrix(layer).detach() for layer in group.layers]
    best: tuple[float, float, torch.Tensor] | None = None
    for step in range(grid):
        alpha = step / grid
        s = awq_scales(inputs.absmean(), alpha).to(weights[0].dtype)
        error = sum(scaled_error(inputs.samples, w, s.to(w.dtype), specs[name])
                    for name, w in zip(group.names, weights))
        if best is None or error < best[0]:
            best = (error, alpha, s)
    return best[1], best[2]
