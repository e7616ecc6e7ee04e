"""Rules that choose a spec per module, shared by ``quantize_model`` and
``emulating``: a module's qualified name (a regular expression, matched
with ``re.fullmatch``) or a module type, mapped to a QuantSpec or to None
(full precision); the first rule that matches wins, in the rules' order."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from .spec import QuantSpec


def check_rules(rules: Mapping[Any, Any]) -> None:
    """Raise unless every key is a valid pattern or a type, and every value a QuantSpec or None."""
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


def checked_arguments(model: Any, spec: Any, rules: Mapping[Any, Any] | None) -> dict[Any, QuantSpec | None]:
    """The rules as a dict, after checking that ``model`` is an nn.Module,
    ``spec`` a QuantSpec or None and the rules valid (TypeError /
    ValueError naming what is wrong)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if spec is not None and not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec or None, got {type(spec).__name__}")
    rules = dict(rules or {})
    check_rules(rules)
    return rules


def matching_rule(rules: Mapping[Any, QuantSpec | None], name: str | None,
                  module: torch.nn.Module) -> tuple[bool, QuantSpec | None]:
    """(whether a rule matches the module, and that rule's spec); a module
    without a name matches type rules only."""
    for key, spec in rules.items():
        if isinstance(key, type) and isinstance(module, key) or \
                isinstance(key, str) and name is not None and re.fullmatch(key, name):
            return True, spec
    return False, None


def spec_for(rules: Mapping[Any, QuantSpec | None], name: str, module: torch.nn.Module,
             default: QuantSpec | None) -> QuantSpec | None:
    """The spec of the first rule that matches the module, else ``default``."""
    matched, spec = matching_rule(rules, name, module)
    return spec if matched else default


def unmatched_patterns(rules: Mapping[Any, Any], names: list[str]) -> list[str]:
    """The name patterns among the rules that match none of ``names``."""
    return [key for key in rules if isinstance(key, str) and not any(re.fullmatch(key, n) for n in names)]
