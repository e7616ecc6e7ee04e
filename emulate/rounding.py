"""How the emulation layer rounds an operand: :func:`round_to`, a call of
the ``lowbit::fake_quantize`` op with a spec's policy, and the marker that
tells ``emulating`` which calls quantized modules make themselves."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

from .calibration import Calibrated
from .fake_quant import _fake_quantize_op, format_key
from .spec import QuantSpec

class _Depth(threading.local):
    def __init__(self) -> None:
        self.depth = 0  # set on each thread's first use: torch.compile guards on its value, not on its presence


_local = _Depth()


@contextlib.contextmanager
def quantized_module() -> Iterator[None]:
    """Mark the calls a quantized module makes, so that ``emulating`` lets
    them through rather than rounding their operands a second time."""
    _local.depth += 1
    try:
        yield
    finally:
        _local.depth -= 1


def inside_quantized_module() -> bool:
    """Whether a quantized module's forward is running on this thread."""
    return _local.depth > 0


_INTEGERS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bit_sum(t: torch.Tensor) -> int:
    """The sum of t's bit patterns as integers (int64, wrapping): a
    fingerprint of its values for the caches of rounded weights, which
    cannot trust a parameter's version counter alone (FSDP gathers new
    values into the same parameter, often at the same address, and keeps
    its version: ``torch.autograd._unsafe_preserve_version_counter``). Two
    tensors collide only where their bit patterns differ by amounts that
    add up to exactly zero."""
    return int(t.detach().view(_INTEGERS[t.element_size()]).sum(dtype=torch.int64))


def round_to(t: torch.Tensor, fmt: Any, axis: int, spec: QuantSpec) -> torch.Tensor:
    """``t`` rounded to ``fmt`` (blocked along ``axis``) with the spec's
    rounding and scale rule; ``t`` itself when ``fmt`` is None. No autograd."""
    if fmt is None:
        return t
    if isinstance(fmt, Calibrated):
        return round_to(t / fmt.scale, fmt.format, axis, spec) * fmt.scale
    rule = spec.scale_rule if spec.applies_rule(fmt) else None
    return _fake_quantize_op(t, format_key(fmt), axis, spec.rounding, rule, None, "identity", None, "nearest_even")
