"""Products taken from encoded operands, by the backend of the operands'
device that multiplies them (:func:`lowbit.formats.backends.product_backend`:
the device type's default backend, where it supports ``"matmul"`` for the
two formats). The CUDA extension's backend does, for MX formats on a GPU
(``lowbit.emulate`` never imports ``lowbit.cuda``; both meet in the
formats' backend registry).

A quantized Linear, or a quantized matmul of 2-D operands, whose input and
weight formats such a backend takes, with no ``accumulate`` format, no
observers, a deterministic rounding mode and a weight no method rounded
already (a Prerounded weight holds a method's scales, which encoding it
again would not find), encodes both operands exactly
as :func:`~lowbit.emulate.rounding.round_to` would round them (same blocks
along K, same rounding and scale rule) and takes the product from the
backend: the same element values and scales, multiplied by its kernel
instead of torch's matmul of the rounded tensors. Only the summation
differs (the backend documents its own; the MX matmul adds each block's
partial sum to an fp32 total). Under ``torch.compile`` the fake-quantized
path runs, whose ops trace.
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.formats import Encoded, backends

from .prerounded import Prerounded
from .spec import QuantSpec


def encoded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   spec: QuantSpec) -> torch.Tensor | None:
    """``F.linear(Q(x), Q(weight), bias)`` from the device's product
    backend, or None where none applies (see the module docstring); x (..., K), weight (N, K)."""
    if (spec.accumulate is not None or spec.observers or spec.rounding == "stochastic" or x.dim() == 0
            or isinstance(spec.weight, Prerounded)
            or x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or weight.dtype != x.dtype
            or torch.compiler.is_compiling()):  # compiled graphs keep the traceable fake-quantized ops
        return None
    chosen = backends.product_backend(spec.input, spec.weight, x.device.type)
    if chosen is None:
        return None

    def encoded(t: torch.Tensor, fmt: Any) -> Encoded:
        rule = spec.scale_rule if spec.applies_rule(fmt) else None
        return fmt.encode(t, axis=1, rounding=spec.rounding, scale_rule=rule)

    y = chosen.matmul(encoded(x.reshape(-1, x.shape[-1]), spec.input), encoded(weight, spec.weight), bias, x.dtype,
                      None)
    return y.reshape(*x.shape[:-1], weight.shape[0])
