"""How the emulation layer rounds an operand: :func:`round_to`, a call of
the ``lowbit::fake_quantize`` op with a spec's policy, and the marker that
tells ``emulating`` which calls quantized modules make themselves."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Optional

import torch
import torch.utils.weak

from .calibration import Calibrated
from .fake_quant import _fake_quantize_op, format_key
from .prerounded import Prerounded
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


def set_fast_path(enabled: bool) -> None:
    """``torch.backends.mha.set_fastpath_enabled`` in a form torch.compile
    traces: dynamo skips torch.backends' functions (a graph break) but
    follows a store to the module's flag, and compiled code that reads the
    flag after it sees the new value (the fused paths stay off in the graph)."""
    if torch.compiler.is_compiling():
        torch.backends.mha._is_fastpath_enabled = enabled
    else:
        torch.backends.mha.set_fastpath_enabled(enabled)


def values_fingerprint(t: torch.Tensor) -> int:
    """A fingerprint of t's values for the caches of rounded weights, under
    torch.distributed only: there FSDP gathers new values into the same
    parameter, often at the same address, and keeps its version counter
    (``torch.autograd._unsafe_preserve_version_counter``), so the id,
    address and version that key the caches elsewhere do not see the
    change. The sum of t's bit patterns as integers (int64, wrapping; one
    pass over the weight, read 8 bytes at a time where the layout allows);
    two tensors collide only where their bit patterns differ by amounts
    that add up to exactly zero. 0 outside torch.distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0
    flat = t.detach().reshape(-1)
    if flat.numel() * flat.element_size() % 8 == 0 and flat.data_ptr() % 8 == 0:
        return int(flat.view(torch.int64).sum())
    return int(flat.view(_INTEGERS[t.element_size()]).sum(dtype=torch.int64))


_kept: Any = torch.utils.weak.WeakIdKeyDictionary()  # weight -> {(format, axis, rounding, rule): (state, rounded)}


def _kept_rounding(weight: torch.Tensor, fmt: str, axis: int, rounding: str, scale_rule: str | None) -> torch.Tensor:
    """``lowbit::fake_quantize`` of a weight, rounded once per value: the
    rounded tensor is kept for as long as the weight tensor lives, and given
    back while the weight's address, layout and version (and under
    torch.distributed its values' fingerprint) stay the same. Callers must
    not write to it."""
    state = (weight.data_ptr(), weight._version, weight.shape, weight.stride(), weight.dtype, weight.device,
             values_fingerprint(weight))
    kept = _kept.get(weight)
    if kept is None:
        kept = _kept[weight] = {}
    entry = kept.get((fmt, axis, rounding, scale_rule))
    if entry is None or entry[0] != state:
        with torch.no_grad():
            rounded = _fake_quantize_op(weight, fmt, axis, rounding, scale_rule, None, "identity", None,
                                        "nearest_even")
        entry = kept[(fmt, axis, rounding, scale_rule)] = (state, rounded)
    return entry[1]


@torch.library.custom_op("lowbit::rounded_weight", mutates_args=())
def _rounded_weight_op(weight: torch.Tensor, fmt: str, axis: int, rounding: str,
                       scale_rule: Optional[str]) -> torch.Tensor:
    """The kept rounding of a weight (a copy of it: compiled code may reuse
    an op's output buffer). What the quantized modules' own caches do in
    eager code, for compiled inference graphs, which cannot hold a cache
    (inductor passes a parameter to the op as the parameter object
    itself)."""
    return _kept_rounding(weight, fmt, axis, rounding, scale_rule).clone()


@_rounded_weight_op.register_fake
def _(weight, fmt, axis, rounding, scale_rule):
    return torch.empty_like(weight)


KEPT_BYTES = 1 << 22  # up to here a copy of the kept weight costs less than rounding it again (CPU, 1 thread)


def kept_round_to(weight: torch.Tensor, fmt: Any, axis: int, spec: QuantSpec) -> torch.Tensor:
    """:func:`round_to` of a weight (no autograd), rounded once per value of
    the weight and kept for as long as the weight tensor lives (pass the
    parameter itself, not a fresh ``detach()``, for the rounding to be
    found again). In eager code the kept tensor itself (callers must not
    write to it); in compiled code through ``lowbit::rounded_weight`` (a
    copy) where the weight is at most KEPT_BYTES, larger weights being
    rounded on every call, which costs about what the copy would.
    Observer-scaled formats are rounded on every call; a Prerounded weight
    is given back as it is."""
    if fmt is None or isinstance(fmt, Calibrated | Prerounded):
        return round_to(weight, fmt, axis, spec)
    rule = spec.scale_rule if spec.applies_rule(fmt) else None
    if not torch.compiler.is_compiling():
        return _kept_rounding(weight, format_key(fmt), axis, spec.rounding, rule)
    if weight.numel() * weight.element_size() > KEPT_BYTES:
        return round_to(weight, fmt, axis, spec)
    return _rounded_weight_op(weight, format_key(fmt), axis, spec.rounding, rule)


def round_to(t: torch.Tensor, fmt: Any, axis: int, spec: QuantSpec) -> torch.Tensor:
    """``t`` rounded to ``fmt`` (blocked along ``axis``) with the spec's
    rounding and scale rule; ``t`` itself when ``fmt`` is None or a
    Prerounded weight (a method rounded it; the quantized module resolves
    the marker, :meth:`~lowbit.emulate.QuantModule.active_spec`). No autograd."""
    if fmt is None or isinstance(fmt, Prerounded):
        return t
    if isinstance(fmt, Calibrated):
        return round_to(t / fmt.scale, fmt.format, axis, spec) * fmt.scale
    rule = spec.scale_rule if spec.applies_rule(fmt) else None
    return _fake_quantize_op(t, format_key(fmt), axis, spec.rounding, rule, None, "identity", None, "nearest_even")
