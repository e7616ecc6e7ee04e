"""Products taken from encoded operands, by a provider registered from
outside: the CUDA extension registers its MX matmul here when it loads
(``lowbit.emulate`` never imports ``lowbit.cuda``).

A quantized Linear, or a quantized matmul of 2-D operands, whose input and
weight formats a provider accepts on the operands' device, with no
``accumulate`` format, no observers and a deterministic rounding mode,
encodes both operands exactly as :func:`~lowbit.emulate.rounding.round_to`
would round them (same blocks along K, same rounding and scale rule) and
takes the product from the provider: the same element values and scales,
multiplied by the provider's kernel instead of torch's matmul of the
rounded tensors. Only the summation differs (the provider documents its
own; the MX matmul adds each block's partial sum to an fp32 total).
Under ``torch.compile`` the fake-quantized path runs, whose ops trace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lowbit.formats import Encoded

from .spec import QuantSpec


@dataclass(frozen=True)
class EncodedProduct:
    """``accepts(input_format, weight_format, device)``: whether ``matmul``
    handles such operands; ``matmul(a, b, bias, out_dtype)``: ``A @ B.T +
    bias`` for A (M x K) and B (N x K) encoded along K."""

    accepts: Callable[[Any, Any, torch.device], bool]
    matmul: Callable[[Encoded, Encoded, torch.Tensor | None, torch.dtype], torch.Tensor]


_providers: list[EncodedProduct] = []


def register_encoded_product(provider: EncodedProduct) -> None:
    """Offer ``provider`` to quantized Linear and matmul products (latest first)."""
    _providers.insert(0, provider)


def unregister_encoded_product(provider: EncodedProduct) -> None:
    """Withdraw a provider registered with :func:`register_encoded_product`."""
    _providers.remove(provider)


def encoded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   spec: QuantSpec) -> torch.Tensor | None:
    """``F.linear(Q(x), Q(weight), bias)`` from a provider, or None where
    none applies (see the module docstring); x (..., K), weight (N, K)."""
    if (spec.accumulate is not None or spec.observers or spec.rounding == "stochastic" or x.dim() == 0
            or x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or weight.dtype != x.dtype
            or torch.compiler.is_compiling()):  # compiled graphs keep the traceable fake-quantized ops
        return None
    provider = next((p for p in _providers if p.accepts(spec.input, spec.weight, x.device)), None)
    if provider is None:
        return None

    def encoded(t: torch.Tensor, fmt: Any) -> Encoded:
        rule = spec.scale_rule if spec.applies_rule(fmt) else None
        return fmt.encode(t, axis=1, rounding=spec.rounding, scale_rule=rule)

    y = provider.matmul(encoded(x.reshape(-1, x.shape[-1]), spec.input), encoded(weight, spec.weight), bias, x.dtype)
    return y.reshape(*x.shape[:-1], weight.shape[0])
