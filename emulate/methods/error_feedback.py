"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023) with any lowbit format:
each linear layer's weight rounded one input feature (column) at a time,
the rounding error of each column fed back to the columns not yet rounded
so that the layer's output on the calibration inputs changes least.

Per layer, with X the layer's calibration inputs (every row of every
batch) and W its weight (out, in), in float64:

1. H = 2 X^T X / rows. Dead inputs (H_jj = 0: a feature that is always
   zero) get H_jj = 1 and their weight column set to 0, as the reference
   implementation does.
2. With ``act_order``, the columns are taken in order of descending H_jj
   (ties in column order).
3. H += damp * mean(diag H) * I; U = the upper Cholesky factor of H^-1
   (H^-1 = U^T U).
4. Columns are rounded left to right in lazy batches of ``block_size``:
   q_j = round(w_j); e_j = (w_j - q_j) / U_jj; the columns after j within
   the batch take w_k -= e_j U_jk at once, those after the batch the
   batch's errors together (W[:, later] -= E U[batch, later]).

The rounding of each column is the spec's weight format
(:mod:`.column_rounding`): scales spanning every column (per tensor, per
channel, whole rows, NVFP4's tensor scale) come from the original weight;
the scales of a group of input features (an observer's groups, a block
format's blocks, tiles, microexponent blocks) are by default
(``static_groups=True``) set from the weight before any column is rounded
(dead columns zeroed), as MR-GPTQ (Egiazarian et al., 2025) sets MXFP4's
and NVFP4's; with ``static_groups=False`` they are set when the rounding
first reaches one of the group's columns, from the group's current,
error-updated values, as the reference GPTQ does for its groups. Scales
set late see values the error feedback has pushed past the weight's range:
a power-of-two scale (MX's E8M0, a microexponent block's shared exponent)
then doubles for the whole block. On all-MiniLM-L6-v2 (docs/methods.md)
late scales leave MXFP4 and MX4 worse than round to nearest, while fixed
scales improve on it; for NVFP4 and int4 groups the two differ by under
0.001 in cosine similarity. Each column is
then rounded elementwise with its fixed scales. So the result is a weight
on the format's grid with GPTQ's scales; rounding it again with the
format's own scale rule would in general change it, so each changed layer
becomes a quantized module (as ``quantize_model`` makes it) whose spec's
weight role is a :class:`~lowbit.emulate.prerounded.Prerounded` marker
("mxfp4 (gptq)"): the layer uses the weight as GPTQ left it, and its
input, output and other roles keep the spec's formats.

With an identity Hessian (or any diagonal one) nothing is fed back and
GPTQ is exactly round to nearest. H comes from one pass of the
calibration batches through the model as it is (every layer's inputs in
full precision unless the model was quantized first); the reference
implementation instead re-runs each transformer block with the blocks
before it quantized. A layer whose weight is tied to another parameter
(an embedding table shared with ``lm_head``) is left as it is, with a
warning: changing it would change the other module too.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..calibrating import run_batches
from ..changes import Change, keep_parameter, on_undo, record, working_model
from ..modules import QuantModule
from ..prerounded import Prerounded, fingerprint, mark, unmark
from ..registry import quantized
from ..spec import QuantSpec
from .column_rounding import ColumnRounder, column_rounder
from .inputs import layer_inputs
from .layers import check_order, linear_layers, output_error, plain, rounded_matrix, weight_matrix

#: calibration rows kept per layer to measure its output error before and after
ERROR_ROWS = 2048


def gptq_matrix(weight: torch.Tensor, hessian: torch.Tensor, rounder: ColumnRounder, *, block_size: int = 128,
                damp: float = 0.01, act_order: bool = False, static_groups: bool = True) -> torch.Tensor:
    """GPTQ of one weight (out, in) given its Hessian (in, in), steps 1-4 of
    the module docstring, each column rounded by ``rounder``: the rounded
    weight, float64, (out, in). ValueError when H + damping is not
    positive definite (raise ``damp``)."""
    columns = weight.shape[1]
    work = weight.detach().to(torch.float64).T.clone()  # (in, out): a column is a contiguous row here
    h, dead = damped_hessian(hessian, damp)
    work[dead] = 0.0
    if static_groups:
        for column in range(columns):
            if rounder.needs_scales(column):
                group = rounder.group(column)
                rounder.set_scales(group, work[group.start:group.stop].T)
    order = (torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order
             else torch.arange(columns, device=h.device))
    work, h = work[order], h[order][:, order]
    upper = torch.linalg.cholesky(_inverse(h, damp), upper=True)
    position = torch.argsort(order)  # where each original column is in the order of rounding
    original = order.tolist()
    rounded = torch.empty_like(work)
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        errors = torch.zeros(stop - start, work.shape[1], dtype=torch.float64, device=work.device)
        inverse = upper[start:stop, start:stop]
        for i in range(stop - start):
            j = start + i
            column = original[j]
            if rounder.needs_scales(column):
                group = rounder.group(column)
                rounder.set_scales(group, _current(work, upper, errors, position[group.start:group.stop], start,
                                                   stop, i))
            q = rounder.round(column, work[j])
            rounded[j] = q
            errors[i] = (work[j] - q) / inverse[i, i]
            work[j + 1:stop].addr_(inverse[i, i + 1:], errors[i], alpha=-1)
        work[stop:].addmm_(upper[start:stop, stop:].T, errors, alpha=-1)
    return rounded[position].T


def damped_hessian(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1 and 3 of the module docstring: a float64 copy of H with each
    dead input's diagonal entry (H_jj = 0) set to 1, then ``damp`` times the
    mean diagonal added to the diagonal; and the dead inputs (bool, in)."""
    h = hessian.detach().to(torch.float64, copy=True)
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * h.diagonal().mean())
    return h, dead


def inverse_hessian_diagonal(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """diag((H damped)^-1) (float64, in), with H damped as GPTQ damps it
    (:func:`damped_hessian`): what SpQR's sensitivity divides by."""
    return torch.diagonal(_inverse(damped_hessian(hessian, damp)[0], damp)).clone()


def _inverse(h: torch.Tensor, damp: float) -> torch.Tensor:
    """The inverse of a damped H by its Cholesky factor; ValueError when it has none."""
    try:
        return torch.cholesky_inverse(torch.linalg.cholesky(h))
    except torch.linalg.LinAlgError as error:
        raise ValueError(f"the damped Hessian is not positive definite ({error}); raise damp "
                         f"(now {damp})") from error


def _current(work: torch.Tensor, upper: torch.Tensor, errors: torch.Tensor, positions: torch.Tensor, start: int,
             stop: int, done: int) -> torch.Tensor:
    """The current values (out, len) of the columns at ``positions`` (none
    rounded yet), while the lazy batch [start, stop) has rounded ``done``
    columns: the rows in the batch are up to date, those after it still
    lack the batch's errors so far."""
    values = work[positions].clone()
    later = positions >= stop
    if done and bool(later.any()):
        values[later] -= upper[start:start + done][:, positions[later]].T @ errors[:done]
    return values.T


def gptq(model: torch.nn.Module, spec: QuantSpec | None, batches: Iterable[Any], *,
         rules: Mapping[Any, QuantSpec | None] | None = None,
         forward: Callable[[torch.nn.Module, Any], Any] | None = None, inplace: bool = True,
         block_size: int = 128, damp: float = 0.01, act_order: bool = False,
         static_groups: bool = True, sequential: bool = False) -> torch.nn.Module:
    """GPTQ on every linear layer whose spec (``spec``, or the first
    matching rule's) has a weight format (see the module docstring).

    ``batches``: the calibration inputs, run as ``forward(model, batch)``
    (default ``model(batch)``, ``model(**batch)`` for a mapping) without gradients. ``block_size``: the lazy
    batch (128). ``damp``: the fraction of the mean diagonal added to H's
    diagonal (0.01). ``act_order``: round columns in order of descending
    H_jj. ``static_groups``: set every group's scales from the weight
    before rounding (the default), or, with False, from the group's
    error-updated values when the rounding reaches it (no effect for
    formats without groups of input features). ``sequential``: gather
    each layer's inputs with the layers GPTQ rounded before it already in
    place (see the module docstring). ``inplace=False`` changes a deep copy.

    Returns the model with each changed layer swapped for its quantized
    module with the spec's weight role marked as GPTQ's (use the return
    value: a bare Linear comes back as a QuantLinear); logs a
    :class:`Change` per layer with the layer's relative output error on
    the first calibration rows with round to nearest and after GPTQ;
    :func:`~lowbit.emulate.restore_model` puts back the original layers and
    weights bit for bit. Raises ValueError / TypeError for bad arguments,
    empty batches, formats GPTQ cannot round column by column
    (double-quantized scales, stochastic rounding), non-finite weights or a
    Hessian damping cannot make positive definite; nothing is changed
    then. Warns for layers that saw fewer calibration rows than input
    features (a singular H: GPTQ overfits the rows it saw)."""
    _check_options(block_size, damp, act_order, static_groups, sequential, inplace)
    model = working_model(model, inplace)
    chosen = linear_layers(model, spec, rules)
    check_order(chosen, "gptq")
    chosen = _untied(model, chosen)
    if not chosen:
        return model
    plans = {name: _plan(name, layer, layer_spec) for name, (layer, layer_spec) in chosen.items()}
    options = {"block_size": block_size, "damp": damp, "act_order": act_order, "static_groups": static_groups}
    if sequential and "" not in plans:
        results, inputs = _sequential_results(model, plans, batches, forward, options)
    else:
        inputs = layer_inputs(model, {name: plan.layer for name, plan in plans.items()}, batches, gram=True,
                              samples=ERROR_ROWS, forward=forward)
        results = {name: _rounded_layer(name, plan, inputs[name], options) for name, plan in plans.items()}
    _warn_if_underdetermined(inputs)
    flags = [k for k in ("act_order", "static_groups") if options[k]] + ["sequential"] * sequential
    detail = ", ".join([f"block_size={block_size}", f"damp={damp:g}"] + flags)
    root = model
    for name, plan in plans.items():
        weight, before, after = results[name]
        swapped = _apply(root, name, plan, weight)
        if not name:  # the model is the layer: its quantized module comes back and holds the log
            model = swapped
        record(model, Change(name, "gptq", _format_name(plan.spec), before, after,
                             f"{detail}, {inputs[name].rows} rows"))
    return model


@dataclasses.dataclass
class _Plan:
    layer: torch.nn.Module  # as found in the model (plain or quantized)
    spec: QuantSpec
    rounder: ColumnRounder


def _check_options(block_size: Any, damp: Any, act_order: Any, static_groups: Any, sequential: Any,
                   inplace: Any) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if isinstance(damp, bool) or not isinstance(damp, int | float) or not 0 <= damp < float("inf"):
        raise ValueError(f"damp must be a finite number >= 0 (a fraction of H's mean diagonal), got {damp!r}")
    for name, value in (("act_order", act_order), ("static_groups", static_groups), ("sequential", sequential),
                        ("inplace", inplace)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")


def _warn_if_underdetermined(inputs: Mapping[str, Any]) -> None:
    """Warn for the layers that saw fewer calibration rows than they have
    input features: their H has rank below its size (damping alone makes it
    invertible), and GPTQ then fits the few rows it saw rather than the
    layer's use (on MiniLM, 4 sentences left GPTQ's embeddings far worse
    than round to nearest's on other sentences)."""
    short = [f"{name or '(model)'} ({s.rows} < {s.features})" for name, s in inputs.items() if s.rows < s.features]
    if short:
        warnings.warn(f"gptq: {len(short)} layer(s) saw fewer calibration rows than input features, so their "
                      f"Hessian is singular and GPTQ will fit the calibration rows rather than the layer: "
                      f"{', '.join(short[:4])}{', ...' if len(short) > 4 else ''}; give at least as many rows "
                      f"(tokens) as input features (the paper uses 128 sequences of 2048 tokens)", stacklevel=3)


def _untied(model: torch.nn.Module, chosen: dict[str, tuple[torch.nn.Module, QuantSpec]]) -> dict:
    """The chosen layers less those whose weight another parameter name
    shares (a tied embedding), which are warned about."""
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    tied = [name for name, (layer, _) in chosen.items() if uses[id(plain(layer).weight)] > 1]
    if tied:
        warnings.warn(f"gptq leaves {', '.join(tied)} as {'it is' if len(tied) == 1 else 'they are'}: a weight "
                      f"tied to another parameter (rounding it for this layer would change the other module too)",
                      stacklevel=3)
    return {name: entry for name, entry in chosen.items() if name not in tied}


def _plan(name: str, layer: torch.nn.Module, spec: QuantSpec) -> _Plan:
    """Check what can be checked before the calibration pass: the weight
    format, the layer's weight and its quantized module under the marked spec."""
    if isinstance(spec.weight, Prerounded):
        raise ValueError(f"layer {name!r}: the spec's weight is a method's Prerounded marker; give gptq a format")
    weight = plain(layer).weight
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"layer {name!r}: its weight holds NaN or Inf; gptq needs finite weights")
    rounder = column_rounder(spec, weight.detach(), weight_matrix(layer).detach())  # ValueError if it cannot round
    quantized(plain(layer), dataclasses.replace(spec, weight=Prerounded(spec.weight, "gptq")))  # a layer it takes
    return _Plan(layer, spec, rounder)


def _rounded_layer(name: str, plan: _Plan, inputs: Any, options: dict[str, Any]) -> tuple[torch.Tensor, float, float]:
    """The layer's GPTQ weight (as F.linear takes it, in the weight's dtype)
    and its output errors with round to nearest and with GPTQ."""
    matrix = weight_matrix(plan.layer).detach()
    try:
        result = gptq_matrix(matrix, inputs.hessian().to(matrix.device), plan.rounder, **options)
    except ValueError as error:
        raise ValueError(f"layer {name!r}: {error}") from error
    fitted = result.to(matrix.dtype)
    if not torch.equal(fitted.to(torch.float64), result):
        raise ValueError(f"layer {name!r}: {plan.spec.weight.name} values do not fit its {matrix.dtype} weight")
    samples = inputs.samples.to(matrix.device)
    return fitted, output_error(samples, matrix, rounded_matrix(plan.layer, plan.spec)), \
        output_error(samples, matrix, fitted)


def _apply(model: torch.nn.Module, name: str, plan: _Plan, rounded: torch.Tensor) -> QuantModule:
    """Write the rounded weight, mark the layer and swap it for its
    quantized module under the marked spec (in place of ``name`` in
    ``model``, unless the model is the layer); that module. The undo steps
    go to the model's log, or the layer's when the model is the layer
    (restore_model of its quantized module undoes both)."""
    layer = plain(plan.layer)
    owner = model if name else layer
    keep_parameter(owner, layer, "weight")
    swapped = _holding(layer, plan, rounded)
    on_undo(owner, lambda: unmark(layer))
    if name:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, swapped)
    return swapped


def _holding(layer: torch.nn.Module, plan: _Plan, rounded: torch.Tensor) -> QuantModule:
    """Write GPTQ's weight into ``layer`` (plain), mark it and wrap it in
    its quantized module under the marked spec."""
    with torch.no_grad():
        weight_matrix(layer).copy_(rounded)
    spec = dataclasses.replace(plan.spec, weight=Prerounded(plan.spec.weight, "gptq", fingerprint(layer.weight)))
    mark(layer, spec.weight, spec)
    return quantized(layer, spec)


def _sequential_results(model: torch.nn.Module, plans: dict[str, _Plan], batches: Iterable[Any],
                        forward: Callable[[torch.nn.Module, Any], Any] | None,
                        options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each layer's GPTQ result and inputs, stage by stage (:func:`_stages`):
    a stage's inputs are gathered with every earlier stage's layers standing
    in as GPTQ left them (quantized modules holding a copy of the layer
    with GPTQ's weight); the model's own layers are back in place when it
    returns or raises, so nothing is changed until every layer succeeded."""
    batches = list(batches)  # run once per stage
    results, inputs, originals = {}, {}, {}
    try:
        for stage in _stages(model, list(plans), batches, forward):
            found = layer_inputs(model, {name: model.get_submodule(name) for name in stage}, batches, gram=True,
                                 samples=ERROR_ROWS, forward=forward)
            for name in stage:
                results[name] = _rounded_layer(name, plans[name], found[name], options)
                inputs[name] = dataclasses.replace(found[name], gram=None)  # the rows' count and samples stay
                originals[name] = model.get_submodule(name)
                model.set_submodule(name, _holding(copy.deepcopy(plain(plans[name].layer)), plans[name],
                                                   results[name][0]))
    finally:
        for name, layer in originals.items():
            model.set_submodule(name, layer)
    return results, inputs


def _stages(model: torch.nn.Module, names: list[str], batches: list[Any],
            forward: Callable[[torch.nn.Module, Any], Any] | None) -> list[list[str]]:
    """The layers in the order the model first calls them on the first
    batch, grouped into stages of consecutive calls on the very same input
    tensor (q, k and v projections; gate and up): a stage's inputs do not
    depend on its own layers. Layers never called come last, as one stage
    (the calibration pass then says they were never reached)."""
    calls: list[tuple[str, torch.Tensor]] = []

    def record_call(name: str, args: tuple, kwargs: dict) -> None:
        if all(seen != name for seen, _ in calls):
            calls.append((name, args[0] if args else kwargs["input"]))

    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args, kwargs, n=name: record_call(n, args, kwargs), with_kwargs=True) for name in names]
    try:
        run_batches(model, batches[:1], forward, "gptq's calibration")
    finally:
        for handle in handles:
            handle.remove()
    stages: list[list[str]] = []
    for i, (name, x) in enumerate(calls):
        if i and x is calls[i - 1][1]:
            stages[-1].append(name)
        else:
            stages.append([name])
    called = {name for name, _ in calls}
    unreached = [name for name in names if name not in called]
    return stages + ([unreached] if unreached else [])


def _format_name(spec: QuantSpec) -> str:
    observer = spec.observer("weight")
    return spec.weight.name + ("" if observer is None else f" [{observer.method}/{observer.granularity}]")
