"""A candidate weight tried out before a method commits to it: rounded, and
multiplied with inputs, exactly as a quantized layer holding it would.

A method that weighs changes of a layer's weight (AWQ's scaled weights,
SmoothQuant's smoothed ones) measures each on a bias-free twin layer that
holds the candidate, so the observer scales, blocks and products are those
of :class:`~lowbit.emulate.QuantLinear` for that weight. A transformers
Conv1D rounds as the twin Linear does (its blocks run along the input
features too, and it takes only per-tensor observer scales, which the
method checks on the layer itself through
:func:`~lowbit.emulate.methods.layers.rounded_matrix`).
"""

from __future__ import annotations

import torch

from ..modules import QuantLinear
from ..spec import QuantSpec
from .costs import layer_error
from .layers import rounded_matrix


def twin(matrix: torch.Tensor) -> torch.nn.Linear:
    """A bias-free nn.Linear holding ``matrix`` (out, in) as its weight (no copy)."""
    layer = torch.nn.Linear(matrix.shape[1], matrix.shape[0], bias=False, device="meta")
    layer.weight = torch.nn.Parameter(matrix.detach(), requires_grad=False)
    return layer


def rounded(matrix: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``matrix`` (out, in) rounded to the spec's weight format as a
    quantized layer holding it rounds its weight (observer scales from
    ``matrix`` itself)."""
    return rounded_matrix(twin(matrix), spec)


def quantized_error(matrix: torch.Tensor, spec: QuantSpec, x: torch.Tensor) -> float:
    """The relative output error of a quantized layer with weight ``matrix``
    (out, in) and no bias under ``spec``, every role rounded
    (:func:`~lowbit.emulate.methods.costs.layer_error` of the twin)."""
    return layer_error(QuantLinear(twin(matrix), spec), x)
