"""fake_quantize: a tensor rounded to a format in the forward pass, with a
straight-through gradient, as a torch.library op that autograd, torch.compile
and torch.export see.

Forward: exactly ``fmt.quantize`` (same dtype, shape and device; scaled
formats block along ``axis``). Backward, the straight-through estimator:

- ``ste="identity"``: the incoming gradient passes unchanged;
- ``ste="masked"``: it is zero where the forward clipped, that is where
  |x| exceeded the largest magnitude of x's grid (``fmt.grid``: the format's
  max, or its block's largest for scaled formats), and where x was +-Inf.

With ``grad_format``, the gradient (after masking) is then quantized to
that format, blocked along the same axis, with ``grad_rounding``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Optional

import torch

from lowbit.formats import FAMILIES, ElementFormat, get_format

STE_MODES = ("identity", "masked")
SPEC_PREFIX = "spec:"

@torch.compiler.assume_constant_result
def format_key(fmt: Any) -> str:
    """The string that stands for ``fmt`` in the ops' arguments: its name
    where the catalogue or the spec parser gives back this very format,
    else its parameters as JSON. Any process can turn it back into the
    format (:func:`format_of`): no state is kept."""
    fmt = get_format(fmt)
    try:
        if get_format(fmt.name) == fmt:
            return fmt.name
    except ValueError:
        pass
    return SPEC_PREFIX + json.dumps(_spec(fmt), sort_keys=True)


@functools.lru_cache(maxsize=None)
def format_of(key: str) -> Any:
    """The format a :func:`format_key` stands for."""
    if key.startswith(SPEC_PREFIX):
        return _from_spec(json.loads(key[len(SPEC_PREFIX):]))
    return get_format(key)


def _spec(fmt: Any) -> dict[str, Any]:
    fields = {f.name: getattr(fmt, f.name) for f in dataclasses.fields(fmt)}
    return {"family": type(fmt).__name__,
            **{k: _spec(v) if dataclasses.is_dataclass(v) else v for k, v in fields.items()}}


def _from_spec(spec: dict[str, Any]) -> Any:
    family = FAMILIES[spec["family"]]
    return family(**{k: _from_spec(v) if isinstance(v, dict) else v for k, v in spec.items() if k != "family"})


def _policy(fmt: Any, axis: int, rounding: str, scale_rule: Optional[str], seed: Optional[int]) -> dict[str, Any]:
    policy: dict[str, Any] = {"rounding": rounding, "seed": seed}
    if not isinstance(fmt, ElementFormat):
        policy.update(axis=axis, scale_rule=scale_rule)
    return policy


@torch.library.custom_op("lowbit::fake_quantize", mutates_args=())
def _fake_quantize_op(x: torch.Tensor, fmt: str, axis: int, rounding: str, scale_rule: Optional[str],
                      seed: Optional[int], ste: str, grad_format: Optional[str], grad_rounding: str) -> torch.Tensor:
    format_ = format_of(fmt)
    policy = _policy(format_, axis, rounding, scale_rule, seed)
    inner = -x.dim() <= axis < x.dim() and axis % max(x.dim(), 1) != x.dim() - 1
    if "axis" in policy and x.device.type == "cpu" and (inner or not x.is_contiguous()):
        # the CPU kernels' fast paths block along the last axis of a contiguous tensor: move the axis
        # there (the blocks, their order and the stochastic stream are those of the blocked layout either way)
        moved = format_.quantize(x.movedim(axis, -1).contiguous(), **{**policy, "axis": -1})
        return torch.empty_like(x).copy_(moved.movedim(-1, axis))
    return _in_layout_of(x, format_.quantize(x, **policy))


def _in_layout_of(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` (x's shape) with the strides of ``torch.empty_like(x)``, the
    layout the fake kernels promise (the backends give contiguous results
    whatever x's strides; torch.compile's inductor checks the strides)."""
    if out.is_contiguous() and x.is_contiguous():
        return out
    return torch.empty_like(x, dtype=out.dtype).copy_(out)


@_fake_quantize_op.register_fake
def _(x, fmt, axis, rounding, scale_rule, seed, ste, grad_format, grad_rounding):
    return torch.empty_like(x)


@torch.library.custom_op("lowbit::clipped", mutates_args=())
def _clipped_op(x: torch.Tensor, fmt: str, axis: int, scale_rule: Optional[str]) -> torch.Tensor:
    """Where |x| lies beyond the largest magnitude of its grid (+-Inf included)."""
    format_ = format_of(fmt)
    options = {} if isinstance(format_, ElementFormat) else {"axis": axis, "scale_rule": scale_rule}
    largest = format_.grid(x, **options).largest
    return _in_layout_of(x, x.abs().to(torch.float64) > largest)


@_clipped_op.register_fake
def _(x, fmt, axis, scale_rule):
    return torch.empty_like(x, dtype=torch.bool)


def _setup_context(ctx, inputs, output):
    x, fmt, axis, _, scale_rule, _, ste, grad_format, grad_rounding = inputs
    ctx.axis, ctx.grad_format, ctx.grad_rounding = axis, grad_format, grad_rounding
    ctx.save_for_backward(_clipped_op(x, fmt, axis, scale_rule) if ste == "masked" else None)


def _backward(ctx, grad):
    (clipped,) = ctx.saved_tensors
    if clipped is not None:
        grad = torch.where(clipped, torch.zeros_like(grad), grad)
    if ctx.grad_format is not None:
        grad = _fake_quantize_op(grad, ctx.grad_format, ctx.axis, ctx.grad_rounding, None, None, "identity",
                                 None, "nearest_even")
    return grad, None, None, None, None, None, None, None, None


_fake_quantize_op.register_autograd(_backward, setup_context=_setup_context)


def fake_quantize(t: torch.Tensor, fmt: Any, *, axis: int = -1, rounding: str = "nearest_even",
                  scale_rule: str | None = None, seed: int | None = None, ste: str = "identity",
                  grad_format: Any = None, grad_rounding: str = "nearest_even") -> torch.Tensor:
    """``t`` rounded to ``fmt`` (see the module docstring), differentiable.

    ``fmt``: a format or its name. ``axis``, ``scale_rule``: how scaled
    formats block. ``rounding``, ``seed``: as in ``fmt.quantize``
    (``stochastic`` without a seed draws its key from torch's generator).
    ``ste``: "identity" or "masked". ``grad_format``: None, or the format
    the gradient is rounded to (with ``grad_rounding``).
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fake_quantize takes a torch tensor, got {type(t).__name__}; use lowbit.quantize for arrays")
    if not t.dtype.is_floating_point:
        raise TypeError(f"t must be a floating-point tensor, got dtype {t.dtype}")
    if ste not in STE_MODES:
        raise ValueError(f"ste must be one of {', '.join(STE_MODES)}; got {ste!r}")
    grad_key = None if grad_format is None else format_key(grad_format)
    return _fake_quantize_op(t, format_key(fmt), axis, rounding, scale_rule, seed, ste, grad_key, grad_rounding)
