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

from ..calibrating import calibrate
from ..modules import QuantLinear
from ..spec import QuantSpec
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


def quantized_output(matrix: torch.Tensor, spec: QuantSpec, x: torch.Tensor) -> torch.Tensor:
    """x W^T as a quantized layer with weight ``matrix`` (out, in), no bias,
    computes it under ``spec`` (every role: input, weight, output,
    accumulator); an input observer's scale is calibrated on ``x`` itself."""
    layer = QuantLinear(twin(matrix), spec)
    with torch.no_grad():
        if spec.observer("input") is not None:
            calibrate(layer, [x])
        return layer(x.to(matrix.dtype))


def quantized_error(matrix: torch.Tensor, spec: QuantSpec, x: torch.Tensor) -> float:
    """||x W^T - y|| / ||x W^T|| (float64) with y the quantized layer's
    output (:func:`quantized_output`): the layer's relative output error
    with every role of ``spec`` rounded; 0 when x W^T and y are 0."""
    exact = x.double() @ matrix.detach().double().T
    difference = torch.linalg.matrix_norm(exact - quantized_output(matrix, spec, x).double())
    size = torch.linalg.matrix_norm(exact)
    return float(difference / size) if size > 0 else float(difference)
