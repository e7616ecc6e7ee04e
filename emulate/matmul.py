"""Quantized matmul: a @ b with a (..., M, K) and b (..., K, N) rounded as a
QuantSpec says; ``input`` is the left operand, ``weight`` the right one.

Forward: a blocked along K (its last axis), b along K (its axis -2), the
product rounded to ``output`` along its last axis. Backward, each operand
rounded again from its full-precision value along the reduction axis of the
product it enters: grad_a = g @ b.mT reduces over N (g's and b's last
axis), grad_b = a.mT @ g over M (a's and g's axis -2); the gradients are
rounded to ``grad_input`` / ``grad_weight`` blocked like a and b in the
forward pass. Batch dimensions broadcast as in torch.matmul; operands of
one dimension are treated as a row (a) or a column (b) vector. Under
autocast the backward products run in the gradient's dtype (the dtype of
the forward product) and each gradient comes back in its operand's dtype.
"""

from __future__ import annotations

import torch

from .accumulate import accumulated_matmul, backward_matmul
from .encoded_products import encoded_linear
from .rounding import round_to
from .spec import QuantSpec


class _QuantizedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(a, b, spec):
        product = encoded_linear(a, b.mT, None, spec) if a.dim() == 2 and b.dim() == 2 else None
        if product is None:
            product = accumulated_matmul(round_to(a, spec.input, -1, spec), round_to(b, spec.weight, -2, spec), spec)
        return round_to(product, spec.output, -1, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, b, spec = inputs
        ctx.save_for_backward(a, b)
        ctx.spec = spec

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        spec = ctx.spec
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            product = backward_matmul(round_to(grad, spec.grad_output, -1, spec),
                                      round_to(b, spec.weight, -1, spec).mT.to(grad.dtype), spec)
            grad_a = round_to(product.sum_to_size(a.shape), spec.grad_input, -1, spec).to(a.dtype)
        if ctx.needs_input_grad[1]:
            product = backward_matmul(round_to(a, spec.input, -2, spec).mT.to(grad.dtype),
                                      round_to(grad, spec.grad_output, -2, spec), spec)
            grad_b = round_to(product.sum_to_size(b.shape), spec.grad_weight, -2, spec).to(b.dtype)
        return grad_a, grad_b, None


def quantized_matmul(a: torch.Tensor, b: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """torch.matmul(a, b) with its operands rounded as ``spec`` says
    (differentiable; see the module docstring)."""
    if a.dim() == 0 or b.dim() == 0:
        raise ValueError("matmul needs operands of at least one dimension")
    if a.dim() == 1 and b.dim() == 1:
        return quantized_matmul(a.unsqueeze(0), b.unsqueeze(-1), spec)[0, 0]
    if a.dim() == 1:
        return quantized_matmul(a.unsqueeze(0), b, spec).squeeze(-2)
    if b.dim() == 1:
        return quantized_matmul(a, b.unsqueeze(-1), spec).squeeze(-1)
    return _QuantizedMatmul.apply(a, b, spec)
