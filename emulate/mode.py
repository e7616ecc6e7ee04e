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
- ``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``
  (``nn.MultiheadAttention``, the ``nn.Transformer`` layers), computed from
  quantized projections and products (:mod:`lowbit.emulate.attention`):
  a function mode sees each as one call, so their inner products would
  otherwise run in full precision.

Every other call runs as it is, and so do the calls that quantized modules
(:mod:`lowbit.emulate.modules`) make themselves: their operands are rounded
once, by their own spec. Calls are matched by name
(``torch.overrides.resolve_name``), which is how ``a @ b`` reaches a
function mode in torch 2.13: as ``torch.Tensor.matmul``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch.overrides import TorchFunctionMode, resolve_name

from .attention import attention, multi_head_attention
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
    "torch.nn.functional.scaled_dot_product_attention": attention,
    "torch.nn.functional.multi_head_attention_forward": multi_head_attention,
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

