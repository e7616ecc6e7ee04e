"""emulating(spec): quantize the operands of torch's matmul-like functions
wherever they are called, inside modules or not.

Within ``with emulating(spec):`` these calls run quantized:

- ``F.linear`` (as :class:`~lowbit.emulate.QuantLinear` does);
- ``torch.matmul``, ``Tensor.matmul`` and ``a @ b``, ``torch.bmm``, and the
  product in ``torch.addmm`` and ``torch.baddbmm`` (as
  :func:`~lowbit.emulate.quantized_matmul`:
  ``input`` is the left operand, ``weight`` the right one);
- ``F.conv1d/2d/3d`` and ``F.conv_transpose1d/2d/3d`` (as
  :func:`~lowbit.emulate.quantized_conv`);
- ``F.scaled_dot_product_attention``, computed as its two products
  (q @ k.mT and probabilities @ v, both quantized) around the scaling,
  mask, softmax and dropout, which stay in full precision.

Every other call runs as it is, and so do the calls that quantized modules
(:mod:`lowbit.emulate.modules`) make themselves: their operands are rounded
once, by their own spec. Calls are matched by name
(``torch.overrides.resolve_name``), which is how ``a @ b`` reaches a
function mode in torch 2.13: as ``torch.Tensor.matmul``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode, resolve_name

from .conv import quantized_conv
from .linear import quantized_linear
from .matmul import quantized_matmul
from .rounding import inside_quantized_module
from .spec import QuantSpec


def _linear(spec, x, weight, bias=None):
    return quantized_linear(x, weight, bias, spec)


def _matmul(spec, a, b):
    return quantized_matmul(a, b, spec)


def _rmatmul(spec, b, a):
    return quantized_matmul(a, b, spec)


def _addmm(spec, base, a, b, *, beta=1, alpha=1):  # also baddbmm: base + a @ b, batched or not
    product = quantized_matmul(a, b, spec)
    return (base if beta == 1 else beta * base) + (product if alpha == 1 else alpha * product)


def _conv(spec, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return quantized_conv(x, weight, bias, spec, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _conv_transpose(spec, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return quantized_conv(x, weight, bias, spec, stride=stride, padding=padding, dilation=dilation, groups=groups,
                          transposed=True, output_padding=output_padding)


def _attention(spec, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scores = quantized_matmul(q, k.mT, spec) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probabilities = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probabilities = F.dropout(probabilities, dropout_p)
    return quantized_matmul(probabilities, v, spec)


HANDLERS = {
    "torch.nn.functional.linear": _linear,
    "torch.matmul": _matmul,
    "torch.Tensor.matmul": _matmul,
    "torch.Tensor.__matmul__": _matmul,
    "torch.Tensor.__rmatmul__": _rmatmul,
    "torch.bmm": _matmul,
    "torch.Tensor.bmm": _matmul,
    "torch.baddbmm": _addmm,
    "torch.Tensor.baddbmm": _addmm,
    "torch.addmm": _addmm,
    "torch.Tensor.addmm": _addmm,
    "torch.nn.functional.scaled_dot_product_attention": _attention,
    **{f"torch.nn.functional.conv{d}d": _conv for d in (1, 2, 3)},
    **{f"torch.nn.functional.conv_transpose{d}d": _conv_transpose for d in (1, 2, 3)},
}


class _EmulatingMode(TorchFunctionMode):
    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        handler = HANDLERS.get(resolve_name(func) or "")
        if handler is None or inside_quantized_module():
            return func(*args, **(kwargs or {}))
        return handler(self.spec, *args, **(kwargs or {}))


@contextlib.contextmanager
def emulating(spec: QuantSpec) -> Iterator[QuantSpec]:
    """Quantize matmul-like calls made inside the block (see the module
    docstring); yields the spec."""
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    with _EmulatingMode(spec):
        yield spec


def handled() -> list[str]:
    """The names of the functions ``emulating`` quantizes."""
    return sorted(HANDLERS)

