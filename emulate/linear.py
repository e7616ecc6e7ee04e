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

from .accumulate import accumulated_matmul
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
        ctx.spec, ctx.has_bias = spec, bias is not None

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        spec = ctx.spec
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # grad @ w: reduces over the output features
            product = round_to(grad, spec.grad_output, -1, spec) @ round_to(weight, spec.weight, 0, spec)
            grad_x = round_to(product, spec.grad_input, -1, spec)
        rows = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:  # grad.T @ x: reduces over the tokens
            tokens = x.reshape(-1, x.shape[-1])
            product = round_to(rows, spec.grad_output, 0, spec).T @ round_to(tokens, spec.input, 0, spec)
            grad_w = round_to(product, spec.grad_weight, -1, spec)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(dim=0)
        return grad_x, grad_w, grad_b, None


def quantized_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     spec: QuantSpec) -> torch.Tensor:
    """F.linear with its operands rounded as ``spec`` says (differentiable)."""
    return _QuantizedLinear.apply(x, weight, bias, spec)
