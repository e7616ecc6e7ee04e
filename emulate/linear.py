"""The quantized Linear product: y = Q(Q(x) @ Q(w).T + b), with its
backward pass re-blocked along each backward product's reduction dimension
(the roles are described in :mod:`lowbit.emulate.spec`; the module is in
:mod:`lowbit.emulate.modules`). Where the default backend of the operands'
device multiplies encoded operands of these formats (the CUDA extension's
MX matmul, for MX operands on a GPU), the forward product comes from it
(:mod:`lowbit.emulate.encoded_products`).

The rounding runs through the ``lowbit::fake_quantize`` op, so
``torch.compile`` traces quantized modules as it traces the op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .accumulate import accumulated_matmul, backward_matmul
from .encoded_products import encoded_linear
from .rounding import round_to
from .spec import QuantSpec


def linear_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: QuantSpec) -> torch.Tensor:
    """F.linear of operands rounded already, accumulated as the spec says."""
    if spec.accumulate is None:
        return F.linear(x, weight, bias)
    y = accumulated_matmul(x.reshape(-1, x.shape[-1]), weight.T, spec).reshape(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias


class _QuantizedLinear(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, spec):
        y = encoded_linear(x, weight, bias, spec)
        if y is None:
            y = linear_product(round_to(x, spec.input, -1, spec), round_to(weight, spec.weight, 1, spec), bias, spec)
        return round_to(y, spec.output, -1, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, spec = inputs
        ctx.save_for_backward(x, weight)
        ctx.spec, ctx.bias_dtype = spec, None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        spec = ctx.spec
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # grad @ w: reduces over the output features
            w = round_to(weight, spec.weight, 0, spec).to(grad.dtype)
            grad_x = round_to(backward_matmul(round_to(grad, spec.grad_output, -1, spec), w, spec), spec.grad_input,
                              -1, spec)
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:  # grad.T @ x: reduces over the tokens
            grad_w = round_to(token_product(grad, x, spec), spec.grad_weight, -1, spec).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(dim=0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None


def token_product(grad: torch.Tensor, x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """grad.T @ x summed over every token (the weight gradient of a Linear),
    each operand rounded along the tokens: across the flattened batch, or
    within each sample (``spec.token_blocks == "sample"``, axis -2 of an
    input of three or more dimensions). Formed in the gradient's dtype (the
    dtype the forward product ran in, under autocast too)."""
    if spec.token_blocks == "sample" and x.dim() > 2:
        g, t = round_to(grad, spec.grad_output, -2, spec), round_to(x, spec.input, -2, spec)
    else:
        g = round_to(grad.reshape(-1, grad.shape[-1]), spec.grad_output, 0, spec)
        t = round_to(x.reshape(-1, x.shape[-1]), spec.input, 0, spec)
    return backward_matmul(g.reshape(-1, g.shape[-1]).T, t.reshape(-1, t.shape[-1]).to(g.dtype), spec)


def quantized_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     spec: QuantSpec) -> torch.Tensor:
    """F.linear with its operands rounded as ``spec`` says (differentiable)."""
    return _QuantizedLinear.apply(x, weight, bias, spec)
