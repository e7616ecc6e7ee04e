"""SmoothQuant (Xiao et al., ICML 2023): move the activations' outlier
channels into the weights with a per-input-feature scale, so that both
round well (W8A8).

For each group of linear layers that share an input (see
:mod:`.folding`), with max|X_j| feature j's largest magnitude over every
calibration row and the column maxima taken over the group's weights:

    s_j = max( max|X_j|^alpha / max( max_i |W_ij|, 1e-5 )^(1 - alpha), 1e-5 )

(the clamps are the reference implementation's; alpha = 0.5 by default,
0 gives s_j = 1 / max|W_j|, 1 gives s_j = max|X_j|; computed in float64 and
rounded once to the weights' dtype). Then W <- W diag(s) for every layer
of the group and x <- x / s folded into the norm or linear layer that
produces x, or applied by a forward pre-hook where nothing can take it.
The groups are done last to first (in the order the calibration forward
runs them), so a group's weight maxima are those of the weights as they
will be rounded (a later group's fold into a linear producer divides that
producer's rows first).

The product is unchanged in exact arithmetic and the unquantized model's
outputs are unchanged to float rounding (each fold is checked, see
:mod:`.folding`). The result is the smoothed model, **not quantized**:
quantize the returned model with the spec (``quantize_model``; with an
input observer, ``calibrate`` next), as the documented order of methods
says (SmoothQuant or rotation, then GPTQ or AWQ, then outliers, then
quantize_model). The spec's formats enter the log only: each layer's
Change holds its relative output error on the first ``samples``
calibration rows with its operands rounded as its quantized module rounds
them (every role of the spec: input, weight, output, accumulator; a static
input scale calibrated on those rows), before smoothing (x, W) and after
(x / s, W diag(s)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from ..spec import QuantSpec
from .folding import Scale, format_name, prepare
from .layers import weight_matrix
from .trial import quantized_error


def smoothing_scales(absmax: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant's s (float64) from the inputs' per-feature largest
    magnitudes and the group's weights (each (out, in)); see the module
    docstring. Raises ValueError when s is not finite (NaN or Inf in the
    calibration inputs)."""
    weight_max = torch.stack([w.detach().abs().amax(0).double() for w in weights]).amax(0).clamp(min=1e-5)
    s = (absmax.double().pow(alpha) / weight_max.pow(1 - alpha)).clamp(min=1e-5)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("the calibration inputs hold NaN or Inf: SmoothQuant's scales would not be finite")
    return s


def smoothquant(model: torch.nn.Module, spec: QuantSpec | None, batches: Iterable[Any], *,
                rules: Mapping[Any, QuantSpec | None] | None = None,
                forward: Callable[[torch.nn.Module, Any], Any] | None = None, inplace: bool = True,
                alpha: float = 0.5, samples: int = 512) -> torch.nn.Module:
    """Smooth the linear layers chosen by ``spec`` and ``rules`` (see the
    module docstring) on the calibration ``batches`` (each run as
    ``forward(model, batch)``, default ``model(batch)``, ``model(**batch)`` for a mapping); ``alpha`` in
    [0, 1] is the migration strength, ``samples`` the rows each layer's
    logged errors are measured on. Returns the smoothed, unquantized model
    (a deep copy when ``inplace=False``); ``restore_model`` undoes it bit
    for bit. Raises ValueError for alpha outside [0, 1] or empty batches,
    TypeError for a spec that is not a QuantSpec."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    prepared = prepare(model, spec, batches, method="smoothquant", rules=rules, forward=forward, inplace=inplace,
                       samples=samples)
    before = prepared.errors(quantized_error)
    transforms, details = {}, {}
    for group in reversed(prepared.folder.groups):
        s = smoothing_scales(prepared.inputs[group.names[0]].absmax,
                             [weight_matrix(layer) for layer in group.layers], alpha)
        scale = Scale(s, weight_matrix(group.layers[0]).dtype)
        how = prepared.folder.apply(group, scale)
        for name in group.names:
            spec_ = prepared.specs[name]
            inputs_in = format_name(spec_.input) if spec_.input is not None else "full precision"
            transforms[name] = scale
            details[name] = (f"alpha {alpha:g}, s in [{float(s.min()):.3g}, {float(s.max()):.3g}]; {how}; "
                             f"errors with inputs {inputs_in}")
    prepared.record("smoothquant", before, prepared.errors(quantized_error, transforms), details)
    return prepared.model
