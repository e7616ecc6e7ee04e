"""Quantized convolutions (1-3 spatial dimensions, plain and transposed)
(the modules are in :mod:`lowbit.emulate.modules`).

A convolution is a product that reduces over input channels (and kernel
positions): in the forward pass x is blocked along its channel axis (1)
and the weight along its input-channel axis (1 for convolutions, 0 for
transposed ones); the output is rounded along its channel axis. Backward,
as for Linear, each operand is rounded again from full precision along the
reduction of the product it enters: the input gradient reduces over output
channels (the gradient along axis 1, the weight along its output-channel
axis), the weight gradient over the batch and positions (the gradient and
x along the batch axis, 0). With ``groups > 1`` the channel blocks run
within each group (a convolution sums only over one group's channels):
x's and the input gradient's channels, and a transposed convolution's
weight along its input channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .rounding import round_to
from .spec import QuantSpec


def channels_rounded(t: torch.Tensor, fmt, axis: int, spec: QuantSpec, groups: int) -> torch.Tensor:
    """t rounded to fmt along a channel axis that a grouped convolution
    splits into ``groups`` groups: blocks within each group, since a
    convolution sums only over the channels of one group (a depthwise
    convolution's blocks hold one channel)."""
    if groups == 1 or fmt is None:
        return round_to(t, fmt, axis, spec)
    return round_to(t.unflatten(axis, (groups, -1)), fmt, axis + 1, spec).flatten(axis, axis + 1)


def conv_weight_rounded(weight: torch.Tensor, fmt, spec: QuantSpec, transposed: bool, groups: int) -> torch.Tensor:
    """A convolution weight rounded along its input channels (axis 1; axis
    0, per group, for a transposed convolution): the forward product's
    reduction."""
    return channels_rounded(weight, fmt, 0, spec, groups) if transposed else round_to(weight, fmt, 1, spec)


class _QuantizedConv(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, spec, stride, padding, dilation, transposed, output_padding, groups):
        w = conv_weight_rounded(weight, spec.weight, spec, transposed, groups)
        y = torch.ops.aten.convolution(channels_rounded(x, spec.input, 1, spec, groups), w, bias, stride, padding,
                                       dilation, transposed, output_padding, groups)
        return round_to(y, spec.output, 1, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, spec, *geometry = inputs
        ctx.save_for_backward(x, weight)
        ctx.spec, ctx.geometry, ctx.has_bias = spec, geometry, bias is not None

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        spec, geometry = ctx.spec, ctx.geometry
        transposed, groups = geometry[3], geometry[5]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # reduces over the output channels of each group
            w = round_to(weight, spec.weight, 1, spec) if transposed else \
                channels_rounded(weight, spec.weight, 0, spec, groups)
            g = channels_rounded(grad, spec.grad_output, 1, spec, groups)
            grad_x, _, _ = torch.ops.aten.convolution_backward(g, x, w, None, *geometry, [True, False, False])
            grad_x = round_to(grad_x, spec.grad_input, 1, spec)
        if ctx.needs_input_grad[1]:
            _, grad_w, _ = torch.ops.aten.convolution_backward(round_to(grad, spec.grad_output, 0, spec),
                                                               round_to(x, spec.input, 0, spec), weight, None,
                                                               *geometry, [False, True, False])
            grad_w = round_to(grad_w, spec.grad_weight, 0 if transposed else 1, spec)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=[d for d in range(grad.dim()) if d != 1])
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


def _per_dim(value: int | Sequence[int], dims: int) -> list[int]:
    return [value] * dims if isinstance(value, int) else list(value)


def _explicit_padding(x: torch.Tensor, padding: str, weight: torch.Tensor, stride: list[int],
                      dilation: list[int]) -> tuple[torch.Tensor, list[int]]:
    """x and the per-dimension padding for "valid" or "same" (which pads
    the input first when a dimension needs more on one side)."""
    dims = weight.dim() - 2
    if padding == "valid":
        return x, [0] * dims
    if padding != "same":
        raise ValueError(f"padding must be an int, a sequence of ints, 'valid' or 'same'; got {padding!r}")
    if any(s != 1 for s in stride):
        raise ValueError("padding='same' needs stride 1")
    totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    if all(t % 2 == 0 for t in totals):
        return x, [t // 2 for t in totals]
    pads = [side for t in reversed(totals) for side in (t // 2, t - t // 2)]
    return F.pad(x, pads), [0] * dims


def quantized_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: QuantSpec, *,
                   stride: int | Sequence[int] = 1, padding: str | int | Sequence[int] = 0,
                   dilation: int | Sequence[int] = 1, groups: int = 1, transposed: bool = False,
                   output_padding: int | Sequence[int] = 0) -> torch.Tensor:
    """F.conv{1,2,3}d (or conv_transpose{1,2,3}d with ``transposed``) with
    its operands rounded as ``spec`` says (differentiable; see the module
    docstring). ``padding`` may be "valid" or "same" for convolutions."""
    if spec.accumulate is not None:
        raise ValueError("accumulate= applies to Linear and matmul products; convolutions accumulate in full precision")
    dims = weight.dim() - 2
    stride, dilation = _per_dim(stride, dims), _per_dim(dilation, dims)
    if isinstance(padding, str):
        if transposed:
            raise ValueError("transposed convolutions take numeric padding")
        x, padding = _explicit_padding(x, padding, weight, stride, dilation)
    return _QuantizedConv.apply(x, weight, bias, spec, stride, _per_dim(padding, dims), dilation, transposed,
                                _per_dim(output_padding, dims), groups)
