"""What the methods of :mod:`lowbit.emulate.methods` changed in a model: a
log per model, to report (:func:`changes`, :func:`changes_table`) and to
undo (:func:`undo_changes`, which :func:`~lowbit.emulate.restore_model`
calls).

A method saves a parameter with :func:`keep_parameter` before it first
changes it (its values and the Parameter object), and registers any other
undo step (a module it inserted, a hook) with :func:`on_undo`; undoing runs
the steps in reverse order and puts back each saved parameter's object and
values, bit for bit, whatever the methods did to it since.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import warnings
import weakref
from collections.abc import Callable

import torch

from .tables import text_table


@dataclasses.dataclass(frozen=True)
class Change:
    """One method's change of one layer: the format it rounds to (or "-"),
    and the layer's relative output error ||X W^T - X Q^T|| / ||X W^T|| on
    the calibration inputs X with the format's plain rounding (``before``)
    and after the method (``after``), where the method measures them."""

    layer: str
    method: str
    format: str = "-"
    error_before: float | None = None
    error_after: float | None = None
    detail: str = ""

    def row(self) -> dict[str, str]:
        def number(value: float | None) -> str:
            return "-" if value is None else f"{value:.4g}"

        return {"layer": self.layer or "(model)", "method": self.method, "format": self.format,
                "error before": number(self.error_before), "error after": number(self.error_after),
                "detail": self.detail or "-"}


@dataclasses.dataclass
class _Log:
    changes: list[tuple[int, Change]] = dataclasses.field(default_factory=list)  # (order, change)
    steps: list[tuple[int, Callable[[], None]]] = dataclasses.field(default_factory=list)  # (order, step)
    kept: set[tuple[int, str]] = dataclasses.field(default_factory=set)


_LOGS: weakref.WeakKeyDictionary[torch.nn.Module, _Log] = weakref.WeakKeyDictionary()
_ORDER = itertools.count()  # one order across the logs of all models: undo runs every step last first


def _log(model: torch.nn.Module) -> _Log:
    if model not in _LOGS:
        _LOGS[model] = _Log()
    return _LOGS[model]


def record(model: torch.nn.Module, change: Change) -> None:
    """Add a row to the model's log of changes."""
    _log(model).changes.append((next(_ORDER), change))


def on_undo(model: torch.nn.Module, step: Callable[[], None]) -> None:
    """Run ``step`` when the model's changes are undone (steps run last first)."""
    _log(model).steps.append((next(_ORDER), step))


def keep_parameter(model: torch.nn.Module, module: torch.nn.Module, name: str) -> None:
    """Save ``module``'s parameter ``name`` (the object and a copy of its
    values) so that undoing puts both back; only the first call per
    parameter saves (the values before any method changed them)."""
    log = _log(model)
    if (id(module), name) in log.kept:
        return
    log.kept.add((id(module), name))
    original = module._parameters[name]
    saved = original.detach().clone()

    def put_back() -> None:
        module._parameters[name] = original
        original.data = saved

    log.steps.append((next(_ORDER), put_back))


def _logs_within(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of ``model`` (itself included) that have a log."""
    return [m for m in model.modules() if m in _LOGS]


def working_model(model: torch.nn.Module, inplace: bool) -> torch.nn.Module:
    """The model a method (or quantize_model) changes: ``model`` itself, or
    with ``inplace=False`` a deep copy. The copy does not carry the log of
    what methods did to ``model`` before (said with a warning when there is
    one): restore_model on the copy undoes only what is done to the copy."""
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be True or False, got {inplace!r}")
    if inplace:
        return model
    if _logs_within(model):
        warnings.warn("inplace=False copies a model that methods changed already: restore_model on the copy undoes "
                      "only the changes made to the copy (use restore_model on the original for the earlier ones)",
                      stacklevel=3)
    return copy.deepcopy(model)


def changes(model: torch.nn.Module) -> list[Change]:
    """The changes the methods made to ``model`` and its submodules, in the
    order they made them."""
    rows = [row for m in _logs_within(model) for row in _LOGS[m].changes]
    return [change for _, change in sorted(rows, key=lambda row: row[0])]


def undo_changes(model: torch.nn.Module) -> None:
    """Undo every change the methods made to ``model`` and its submodules,
    last first (across the methods applied to the model and to its parts),
    and forget them."""
    steps = [step for m in _logs_within(model) for step in _LOGS.pop(m).steps]
    with torch.no_grad():
        for _, step in sorted(steps, key=lambda row: row[0], reverse=True):
            step()


def changes_table(model: torch.nn.Module) -> str:
    """:func:`changes` as an aligned text table."""
    rows = [change.row() for change in changes(model)]
    return text_table(rows, list(rows[0])) if rows else "no changes by lowbit.emulate.methods"
