"""What a layer's quantization costs: the bits each weight element takes
when stored in a spec's weight format (:func:`weight_bits`), and the
error of a quantized layer's output on sample rows (:func:`layer_error`).
Shared by the per-layer format choice and the outlier split."""

from __future__ import annotations

import dataclasses
import math

import torch

from lowbit.formats import BlockFormat, TensorScaledFormat

from ..calibrating import calibrate
from ..modules import QuantModule
from ..spec import QuantSpec
from .layers import plain, weight_matrix

FLOAT32_BITS = 32


def weight_bits(layer: torch.nn.Module, spec: QuantSpec) -> float:
    """Bits per element of the layer's weight stored in ``spec.weight``,
    blocked along the input features as the quantized module blocks it:
    the format's ``bits`` (the element's code and the amortised block
    scales, zero points and second-level scales, as lowbit's formats count
    them: MXFP4 4.25, NVFP4 4.5; a row whose width is not a multiple of the
    block size pays a whole block's scale for its partial last block:
    int4_g128 on 64 input features takes 4 + 16 / 64 = 4.25), plus what depends on the weight's shape: a whole-axis
    format's per-row scale spread over the row (the input features), one
    float32 per-tensor scale (TensorScaledFormat, NVFP4's tensor scale,
    double quantization's offset) spread over the tensor, and an
    observer's scales (one per tensor, output channel or group, each in the
    weight's dtype). No weight format: the weight's own dtype."""
    matrix = weight_matrix(plain(layer))
    fmt, count = spec.weight, matrix.numel()
    if fmt is None:
        return float(matrix.element_size() * 8)
    bits = float(fmt.bits)
    block, width = getattr(fmt, "block_size", None), matrix.shape[1]
    if block and getattr(fmt, "block_shape", None) is None and width % block:  # a partial last block per row
        per_block = (bits - fmt.element_code_bits) * block  # scales, zero points, shifts
        bits = fmt.element_code_bits + per_block * math.ceil(width / block) / width
    if isinstance(fmt, BlockFormat) and fmt.block_size is None and fmt.block_shape is None:
        per_row = dataclasses.replace(fmt, block_size=1).bits - bits  # what one block adds beyond its elements
        bits += per_row / matrix.shape[1]
    if isinstance(fmt, TensorScaledFormat) or isinstance(fmt, BlockFormat) and (fmt.tensor_scale or fmt.double_quant):
        bits += FLOAT32_BITS / count
    observer = spec.observer("weight")
    if observer is not None:
        scales = {"tensor": 1, "channel": matrix.shape[0], "group": count // observer.group_size}[observer.granularity]
        bits += scales * matrix.element_size() * 8 / count
    return bits


def layer_error(quantized: QuantModule, x: torch.Tensor) -> float:
    """||Y_q - Y|| / ||Y|| (Frobenius norms, float64): the relative error of
    the quantized module's output Y_q on the rows ``x`` (its operands
    rounded as its spec says, input included) against the full-precision
    output Y = x W^T + b of the layer it wraps, formed in float64; the
    absolute error when Y is 0, NaN when either holds NaN. A module with an
    input observer is first calibrated on ``x`` (its input scale is set:
    pass a module of your own)."""
    layer, rows = quantized.original, x.to(quantized.weight.dtype)
    if quantized.spec.observer("input") is not None:
        calibrate(quantized, [rows], forward=lambda module, batch: module.forward(batch))
    with torch.no_grad():
        y = quantized.forward(rows).to(torch.float64)  # not its hooks: x is the input they gave already
        wide = x.to(torch.float64)
        reference = wide @ weight_matrix(layer).detach().to(torch.float64).T
        if layer.bias is not None:
            reference = reference + layer.bias.detach().to(torch.float64)
    scale = torch.linalg.matrix_norm(reference)
    difference = torch.linalg.matrix_norm(y - reference)
    return float(difference / scale) if scale > 0 else float(difference)
