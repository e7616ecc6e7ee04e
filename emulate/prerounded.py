"""Weights a method has rounded already: the spec marker that keeps a
quantized layer from rounding them a second time.

A method such as GPTQ (:mod:`lowbit.emulate.methods`) leaves a weight on a
format's grid with scales of its own choosing; rounding that weight again
with the format's own scale rule is not the identity in general (an
observer's absmax scale, a zero-point group's minimum and maximum and
NVFP4's amax / 6 all see the changed values). So the method marks the
layer (:func:`mark`) and gives it a spec whose weight role is a
:class:`Prerounded` marker, which carries a fingerprint of the weight's
values (their shape and values). The quantized module uses the
weight as it is while it still holds those values, and rounds it to the
plain format as usual once it changed (an optimizer step, other weights
loaded), so a changed weight is never left in full precision. The values
are compared only when the parameter is not the one last found to hold
them (a deep copy of the model, a new Parameter); a parameter's in-place
change bumps its version. A marker no method made (no fingerprint) holds
no weight. Only linear layers (QuantLinear, QuantConv1D) take such a spec,
and ``emulating`` refuses it: a marker stands for a layer's own weight.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch
import torch.utils.weak

from lowbit.formats import get_format

#: the plain module's attribute that holds its mark (copied with the module, outside its state_dict)
_MARK = "_lowbit_prerounded"


@dataclasses.dataclass(frozen=True)
class Prerounded:
    """The weight role of a layer whose weight ``method`` rounded to
    ``format`` already (shown as e.g. ``mxfp4 (gptq)``); ``fingerprint``:
    the rounded weight's, from :func:`fingerprint`."""

    format: Any
    method: str
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", get_format(self.format))
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"method must be a method's name, got {self.method!r}")

    @property
    def name(self) -> str:
        return f"{self.format.name} ({self.method})"


def fingerprint(weight: torch.Tensor) -> str:
    """A digest of a tensor's shape and values (as float64, so a dtype or
    device it moves to exactly keeps it; BLAKE2b, 128 bits)."""
    digest = hashlib.blake2b(str(tuple(weight.shape)).encode(), digest_size=16)
    digest.update(weight.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return digest.hexdigest()


#: parameter -> (marker, its version) last found to hold the marker's values
_HOLDING: Any = torch.utils.weak.WeakIdKeyDictionary()


def holds(weight: torch.Tensor, marker: Prerounded) -> bool:
    """Whether ``weight`` holds the values ``marker`` was made for. Under
    torch.compile the marker is trusted: the graph cannot compare values."""
    if marker.fingerprint is None:
        return False
    if torch.compiler.is_compiling():
        return True
    if _HOLDING.get(weight) == (marker, weight._version):
        return True
    if fingerprint(weight) != marker.fingerprint:
        return False
    _HOLDING[weight] = (marker, weight._version)
    return True


def mark(module: torch.nn.Module, marker: Prerounded, spec: Any) -> None:
    """Record that ``module``'s weight holds ``marker.method``'s rounding to
    ``marker.format`` under ``spec`` (its marked spec)."""
    module.__dict__[_MARK] = (marker, spec)
    holds(module.weight, marker)


def unmark(module: torch.nn.Module) -> None:
    """Forget ``module``'s mark (when the method's change is undone)."""
    module.__dict__.pop(_MARK, None)


def held_marker(module: torch.nn.Module) -> Prerounded | None:
    """The marker of the method whose rounding ``module``'s weight still holds, else None."""
    entry = module.__dict__.get(_MARK)
    return entry[0] if entry is not None and holds(module.weight, entry[0]) else None


def marked_spec(module: torch.nn.Module, spec: Any) -> Any:
    """``spec`` with ``module``'s :class:`Prerounded` marker in its weight
    role where the module's weight holds a method's rounding to that very
    format under the same rounding, scale rule and weight observer (so
    quantizing the model again keeps the method's values); else ``spec``."""
    entry = module.__dict__.get(_MARK)
    if spec is None or entry is None:
        return spec
    marker, marked = entry
    same = (spec.weight == marker.format and spec.rounding == marked.rounding
            and spec.scale_rule == marked.scale_rule and spec.observer("weight") == marked.observer("weight"))
    return dataclasses.replace(spec, weight=marker) if same and holds(module.weight, marker) else spec
