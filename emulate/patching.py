"""quantize_model / restore_model: swap a model's layers (Linear,
transformers' Conv1D, convolutions, Embedding, MultiheadAttention, LSTM,
GRU, RNN; :mod:`lowbit.emulate.registry`) for
quantized ones, by rules, and back; :func:`summary` and
:func:`full_precision` say what is quantized and what is not.

Rules map a layer's qualified name (a regular expression, matched with
``re.fullmatch``) or a module type to a QuantSpec, or to None to leave the
layer alone; the first rule that matches a layer wins (in the rules' order),
and layers no rule matches get the default spec. The patched model keeps its
parameters and state_dict keys; restore_model puts the original layer
objects back (with the current parameters), so outputs are bit-identical to
the model's before patching. A linear layer whose weight a method of
:mod:`lowbit.emulate.methods` rounded (GPTQ) keeps the method's values
when its new spec asks for that same format (:mod:`lowbit.emulate.prerounded`).

Quantizing a quantized model again applies the new spec and rules to the
layers it wraps, each in the same kind of quantized module (a method's
module, such as :class:`~lowbit.emulate.methods.outlier_split.OutlierLinear`,
keeps its method). torch's fused fast paths of ``nn.TransformerEncoderLayer``
and ``nn.TransformerEncoder`` read the weights directly, bypassing the
swapped layers: in a model with quantized layers inside one, quantize_model
says so (a warning) and disables the fast path in that module's forward.
Modules holding parameters that stay in full precision are listed by
:func:`full_precision`, and those whose parameters may enter products
lowbit cannot see (a custom module using its raw Parameters) or cannot
quantize (an LSTM with ``proj_size``, an Embedding with ``max_norm``,
...), which stay as they are, draw a warning. So does a name rule that
matches no module (a typo would otherwise quantize the layer it meant to
exclude).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import torch

from .changes import undo_changes, working_model
from .modules import QuantModule, qualified_name
from .prerounded import Prerounded, holds, marked_spec
from .registry import quantized, quantized_class
from .rounding import set_fast_path
from .rules import checked_arguments, spec_for, unmatched_patterns
from .spec import ATTENTION_ROLES, ROLES, QuantSpec
from .tables import text_table

FAST_PATH_TYPES = (torch.nn.TransformerEncoderLayer, torch.nn.TransformerEncoder)
ELEMENTWISE_TYPES = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm, torch.nn.PReLU,
                     torch.nn.modules.batchnorm._NormBase)
_FAST_PATH_HOOKS = "_lowbit_fast_path_hooks"
#: why quantize_model left a layer of a type it quantizes in full precision
_LEFT: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()


def quantize_model(model: torch.nn.Module, spec: QuantSpec | None, rules: Mapping[Any, QuantSpec | None] | None = None,
                   *, inplace: bool = True) -> torch.nn.Module:
    """The model with each layer of a type lowbit quantizes swapped for its
    quantized module under its spec (``spec``, or the first matching rule's;
    layers quantized already are re-wrapped under it, or restored where it
    is None). Use the return value: when ``model`` itself is such a layer,
    it is its quantized module. ``inplace=False`` patches a deep copy and
    leaves ``model`` as it was. See the module docstring for fast paths and
    the warning about parameters left in full precision."""
    rules = checked_arguments(model, spec, rules)
    model = working_model(model, inplace)
    before = {id(m.original): m for m in model.modules() if isinstance(m, QuantModule)}
    model = _unswap(model)
    names = [name for name, _ in model.named_modules()]
    for pattern in unmatched_patterns(rules, names):
        warnings.warn(f"rule {pattern!r} matches no module name of the model (names look like "
                      f"{', '.join(repr(n) for n in names[1:4])}, ...)", stacklevel=2)
    for name, module in list(model.named_modules()):
        cls = quantized_class(module)
        if cls is None:
            continue
        chosen = spec_for(rules, name, module, spec)
        if cls.takes_prerounded:  # a weight a method rounded to this very format keeps its values
            chosen = marked_spec(module, chosen)
        _LEFT.pop(module, None)
        if chosen is None:
            _LEFT[module] = "excluded by a rule"
            continue
        try:
            new = before[id(module)].rewrapped(chosen) if id(module) in before else quantized(module, chosen)
        except ValueError as why:  # a layer lowbit cannot round stays as it is, said and listed
            _LEFT[module] = f"lowbit cannot quantize it: {why}"
            continue
        if not name:
            model = new
        else:
            _replace(model, name, new)
    _disable_fast_paths(model)
    _warn_unseen_parameters(model)
    return model


def restore_model(model: torch.nn.Module) -> torch.nn.Module:
    """Undo quantize_model and the methods of :mod:`lowbit.emulate.methods`
    in place: every quantized module gives way to the module it wraps (the
    same object, with the current parameters), the fast-path hooks go, and
    every change a method made is undone (the saved parameters put back bit
    for bit). Use the return value: when ``model`` itself is a quantized
    module, it is the module it wraps."""
    root = model
    model = _unswap(model)
    undo_changes(root)  # a log kept on a quantized layer itself
    undo_changes(model)
    return model


def _unswap(model: torch.nn.Module) -> torch.nn.Module:
    """Undo quantize_model's swaps and hooks (not the methods' changes)."""
    if isinstance(model, QuantModule):
        model = model.original
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantModule):
            _replace(model, name, module.original)
        for handle in module.__dict__.pop(_FAST_PATH_HOOKS, ()):
            handle.remove()
    return model


def _replace(model: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _disable_fast_paths(model: torch.nn.Module) -> None:
    """Hooks that turn torch's MHA fast path off while a Transformer module
    holding quantized layers runs (an attached hook alone keeps
    TransformerEncoderLayer off its fused path; the flag keeps
    TransformerEncoder from converting to nested tensors)."""
    bypassed = []
    for name, module in model.named_modules():
        if not isinstance(module, FAST_PATH_TYPES) or not any(isinstance(m, QuantModule) for m in module.modules()):
            continue
        bypassed.append(f"{type(module).__name__} {name or '(the model)'!r}")
        saved: list[bool] = []

        def before(_module, _args, saved=saved):
            saved.append(torch.backends.mha.get_fastpath_enabled())
            set_fast_path(False)

        def after(_module, _args, _output, saved=saved):
            set_fast_path(saved.pop())

        module.__dict__[_FAST_PATH_HOOKS] = (module.register_forward_pre_hook(before),
                                             module.register_forward_hook(after, always_call=True))
    if bypassed:
        warnings.warn(f"torch's fused fast path would bypass the quantized layers of {', '.join(bypassed)}: lowbit "
                      f"turns it off in their forward", stacklevel=3)


def full_precision(model: torch.nn.Module) -> list[dict[str, str]]:
    """The modules that hold parameters of their own and are not quantized,
    in module order: their name, type and why they stay in full precision."""
    covered = {id(inner) for m in model.modules() if isinstance(m, QuantModule) for inner in m.modules()}
    return [{"layer": name or "(model)", "type": type(module).__name__, "reason": _why_full(module)}
            for name, module in model.named_modules()
            if id(module) not in covered and any(True for _ in module.parameters(recurse=False))]


def _why_full(module: torch.nn.Module) -> str:
    if module in _LEFT:
        return _LEFT[module]
    if quantized_class(module) is not None:
        return "not quantized (quantize_model has not seen it)"
    if isinstance(module, ELEMENTWISE_TYPES) or type(module).__name__.endswith("Norm"):
        return "elementwise (no product)"
    return f"lowbit cannot see how {qualified_name(type(module))} uses its parameters (try emulating)"


def _warn_unseen_parameters(model: torch.nn.Module) -> None:
    unseen = [f"{row['layer']} ({row['type']}: {row['reason']})" for row in full_precision(model)
              if not row["reason"].startswith(("excluded", "elementwise"))]
    if unseen:
        warnings.warn(f"quantize_model leaves parameters in full precision that may enter products: "
                      f"{'; '.join(unseen)}. See lowbit.emulate.full_precision(model)", stacklevel=3)


def summary(model: torch.nn.Module) -> list[dict[str, str]]:
    """What is quantized: a row per quantized module (its name, the type it
    wraps and the format of each role), in module order; print it with
    :func:`summary_table`."""
    return [{"layer": name or "(model)", "type": _kind(module), **_formats(module)}
            for name, module in model.named_modules() if isinstance(module, QuantModule)]


def _kind(module: QuantModule) -> str:
    """The wrapped type's name, and the quantized class's where it is not the
    one quantize_model swaps in (a method's module: ``Linear (OutlierLinear)``)."""
    wrapped = type(module.original).__name__
    return wrapped if type(module) is quantized_class(module.original) else f"{wrapped} ({type(module).__name__})"


def _formats(module: QuantModule) -> dict[str, str]:
    """The module's roles and formats; observed scales as [method/granularity]."""
    formats = {}
    for role, name in module.spec.formats().items():
        if role in module.roles:
            observer = module.spec.observer(role)
            formats[role] = name if observer is None else f"{name} [{observer.method}/{observer.granularity}]"
    marker = module.spec.weight
    if isinstance(marker, Prerounded) and "weight" in formats and not holds(module.weight, marker):
        formats["weight"] = f"{marker.format.name} (to nearest: the weight changed since {marker.method})"
    return formats


def summary_table(model: torch.nn.Module) -> str:
    """:func:`summary` as an aligned text table, then :func:`full_precision`'s
    modules under "full precision:"."""
    quantized_rows, full = summary(model), full_precision(model)
    text = _table(quantized_rows) if quantized_rows else "no quantized layers"
    text += "\n\nfull precision:\n" + _table(full) if full else ""
    return text + ("\n\n(products made outside these layers, such as functional attention or @ in model code, "
                   "are not rounded here: run the model under lowbit.emulate.emulating)" if quantized_rows else "")


_COLUMNS = ("layer", "type", *ROLES, *ATTENTION_ROLES, "reason")


def _table(rows: list[dict[str, str]]) -> str:
    present = {key for row in rows for key in row}
    return text_table(rows, [c for c in _COLUMNS if c in present])
