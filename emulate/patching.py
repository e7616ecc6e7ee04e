"""quantize_model / restore_model: swap a model's Linear, convolution and
Embedding layers for quantized ones, by rules, and back.

Rules map a layer's qualified name (a regular expression, matched with
``re.fullmatch``) or a module type to a QuantSpec, or to None to leave the
layer alone; the first rule that matches a layer wins (in the rules' order),
and layers no rule matches get the default spec. The patched model keeps its
parameters and state_dict keys; restore_model puts the original layer
objects back, so outputs are bit-identical to the model's before patching.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import torch

from .modules import QUANTIZED, QuantModule, quantized
from .spec import QuantSpec


def _spec_for(name: str, module: torch.nn.Module, default: QuantSpec | None,
              rules: Mapping[Any, QuantSpec | None]) -> QuantSpec | None:
    for key, spec in rules.items():
        if isinstance(key, str) and re.fullmatch(key, name) or isinstance(key, type) and isinstance(module, key):
            return spec
    return default


def _check_rules(rules: Mapping[Any, Any]) -> None:
    for key, spec in rules.items():
        if isinstance(key, str):
            try:
                re.compile(key)
            except re.error as error:
                raise ValueError(f"rule {key!r} is not a valid regular expression: {error}") from error
        elif not isinstance(key, type):
            raise TypeError(f"rule keys are name patterns (str) or module types, got {key!r}")
        if spec is not None and not isinstance(spec, QuantSpec):
            raise TypeError(f"rule {key!r} maps to a {type(spec).__name__}; give a QuantSpec or None")


def quantize_model(model: torch.nn.Module, spec: QuantSpec | None, rules: Mapping[Any, QuantSpec | None] | None = None,
                   *, inplace: bool = True) -> torch.nn.Module:
    """The model with each layer of a type lowbit quantizes (Linear,
    Conv1d/2d/3d, ConvTranspose1d/2d/3d, Embedding) swapped for its
    quantized module under its spec (``spec``, or the first matching
    rule's). ``inplace=False`` patches a deep copy and leaves ``model`` as
    it was."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if spec is not None and not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec or None, got {type(spec).__name__}")
    rules = dict(rules or {})
    _check_rules(rules)
    if not inplace:
        model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if type(module) not in QUANTIZED:
            continue
        chosen = _spec_for(name, module, spec, rules)
        if chosen is not None:
            _replace(model, name, quantized(module, chosen))
    return model


def restore_model(model: torch.nn.Module) -> torch.nn.Module:
    """Undo quantize_model in place: every quantized module gives way to the
    module it wraps (the same object, with its current parameters)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantModule):
            _replace(model, name, module.original)
    return model


def _replace(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def summary(model: torch.nn.Module) -> list[dict[str, str]]:
    """What is quantized: a row per quantized module (its name, the type it
    wraps and the format of each role), in module order; print it with
    :func:`summary_table`."""
    return [{"layer": name, "type": type(module.original).__name__, **_formats(module)}
            for name, module in model.named_modules() if isinstance(module, QuantModule)]


def _formats(module: QuantModule) -> dict[str, str]:
    """The module's roles and formats; observed scales as [method/granularity]."""
    formats = {}
    for role, name in module.spec.formats().items():
        if role in module.roles:
            observer = module.spec.observer(role)
            formats[role] = name if observer is None else f"{name} [{observer.method}/{observer.granularity}]"
    return formats


def summary_table(model: torch.nn.Module) -> str:
    """:func:`summary` as an aligned text table."""
    rows = summary(model)
    if not rows:
        return "no quantized layers"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(row.get(c, "-")) for row in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(row.get(c, "-").ljust(widths[c]) for c in columns) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
