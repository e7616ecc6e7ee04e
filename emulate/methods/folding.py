"""Transforms of groups of linear layers' input features, folded into the
op that produces their input (the machinery of SmoothQuant, AWQ and
rotations).

A diagonal scale s (one positive number per input feature, :class:`Scale`)
leaves a linear layer's product unchanged when its weight takes
W <- W diag(s) and its input x <- x / s: (x / s) (W diag(s))^T = x W^T; an
orthogonal R (:class:`Rotation`) when W <- W R and x <- x R. The methods
choose s or R so that the rounded product is more accurate; this module
applies them.

**Groups and producers.** One calibration batch runs through the model
(unquantized: layers swapped by quantize_model run as the modules they
wrap; in eval mode; without gradients) with forward hooks that record the
output tensor of every LayerNorm, RMSNorm (``torch.nn.RMSNorm`` and
transformers' ``*RMSNorm`` classes) and linear layer (nn.Linear,
transformers' Conv1D), and the input tensor of each layer to scale.
Layers whose inputs are the same tensor objects, call by call, form one
group and get one transform: Llama's q/k/v_proj after input_layernorm, gate/up_proj
after post_attention_layernorm; GPT-2's c_attn after ln_1. The group's
producer is the module whose output IS that tensor (object identity, not
equal values; the innermost module when modules are nested).

**Folding.** x / s goes into the producer: a LayerNorm's weight and bias,
an RMSNorm's weight (it has no bias) or a linear layer's output rows and
bias are divided by s (s rounded once to the weights' dtype, the same
values on both sides); x R only into a linear layer (W_p <- R^T W_p,
b_p <- R^T b_p: a norm cannot absorb a rotation). A fold is kept only if
every module of the unquantized model computes on the calibration batch
what it computed before the method, the producers folded into excepted
(their outputs change by design): for each module's outputs (their first
CHECKED_ROWS rows) and the model's own, the relative change
||y' - y|| / ||y|| (float64) must not exceed sqrt(eps) of the layers'
dtype (3.5e-4 for float32, 0.031 for float16, 0.088 for bfloat16). Why
that bound: a fold moves each weight and activation it touches by at
most one rounding (eps / 2 relative), which moves the outputs by a few eps
times the model's amplification, orders of magnitude below sqrt(eps)
(2e-7 on a small Llama and GPT-2 in float32); a fold that changes what the
model computes (the producer's output also feeds a residual or another
layer, or the norm computes (1 + w) x as Gemma's does) moves the module
that takes the producer's output besides the group by about the spread
of s or the mixing of R. Checking every module, not only the model's
outputs, catches such a fold where later layers hide it (a post-norm
model's final outputs may move by less than the bound while a layer's
output moved by 3%).

**Explicit transform.** Where the group's input is no norm's or linear
layer's output (an activation, an attention product, the model's input),
the producer cannot take the transform (no elementwise weight, a weight
shared with another module, a norm and a rotation), or the fold failed the
check, each layer of the group transforms its input in a forward
pre-hook (which the quantized module quantize_model swaps in runs too).
The method's Change says which happened and why.

**Undo.** Each parameter is saved with :func:`~lowbit.emulate.changes.keep_parameter`
before it first changes and each hook is removed by an
:func:`~lowbit.emulate.changes.on_undo` step, so
:func:`~lowbit.emulate.restore_model` puts the model back bit for bit. A
fold that failed its check is undone on the spot (the saved values copied
back).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from ..changes import Change, keep_parameter, on_undo, record, working_model
from ..calibrating import default_forward
from ..modules import QuantModule
from ..spec import QuantSpec
from .inputs import LayerInputs, layer_inputs
from .layers import check_order, is_linear, linear_layers, plain, weight_matrix

NORM_TYPES = (torch.nn.LayerNorm, torch.nn.RMSNorm)
CHECKED_ROWS = 16  # rows of each module's outputs a fold is checked on (a wrong fold changes every row)


def is_norm(module: torch.nn.Module) -> bool:
    """A LayerNorm, an nn.RMSNorm or one of transformers' ``*RMSNorm``
    classes or ``T5LayerNorm`` (an RMS norm: weight times x / rms(x))."""
    kind = type(module)
    return isinstance(module, NORM_TYPES) or ((kind.__name__.endswith("RMSNorm") or kind.__name__ == "T5LayerNorm")
                                              and kind.__module__.startswith("transformers."))


@dataclasses.dataclass
class Group:
    """Linear layers that take the same input tensors (in the order they
    first run), the name of the module that produces that input (None when
    no norm or linear layer does) and, when no fold will be tried, why."""

    names: list[str]
    layers: list[torch.nn.Module]
    producer: str | None = None
    why_explicit: str = ""


class Folder:
    """The groups of ``layers`` (name -> layer) in ``model``, found on
    ``batch`` (see the module docstring), and the folding of a transform
    into each."""

    def __init__(self, model: torch.nn.Module, layers: Mapping[str, torch.nn.Module], batch: Any,
                 forward: Callable[[torch.nn.Module, Any], Any] | None = None) -> None:
        self.model, self.batch = model, batch
        self.run = forward or default_forward
        self.groups, self.reference = self._trace(layers)
        self.folded: set[str] = set()  # the producers folded into so far

    # -- applying a transform ---------------------------------------------------------------
    def apply(self, group: Group, transform: Scale | Rotation) -> str:
        """W <- W M for every layer of the group (M = diag(s) or R) and the
        inverse on the input, x <- x M^-T, folded into the producer, or else
        applied by each layer's forward pre-hook; says which (and why)."""
        features = weight_matrix(group.layers[0]).shape[1]
        if transform.features != features:
            raise ValueError(f"{', '.join(group.names)} take {features} input features; the {transform.kind} "
                             f"has {transform.features}")
        with torch.no_grad():
            for layer in group.layers:
                keep_parameter(self.model, plain(layer), "weight")
                transform.into_weight(weight_matrix(layer))
            why = group.why_explicit or self._fold(group, transform)
        if not why:
            producer = self.model.get_submodule(group.producer)
            return f"{transform.folded} folded into {group.producer} ({type(plain(producer)).__name__})"
        for layer in group.layers:
            handle = plain(layer).register_forward_pre_hook(_on_input(transform))
            on_undo(self.model, handle.remove)
        return f"input {transform.online} in a forward pre-hook: {why}"

    def _fold(self, group: Group, transform: Scale | Rotation) -> str:
        """Fold the input's transform into the producer's outputs; keep it if
        the model's outputs stay, else put its values back. Returns why not
        ("" when folded)."""
        producer = plain(self.model.get_submodule(group.producer))
        if is_norm(producer) and not transform.diagonal:
            return f"{group.producer} is a norm, which takes a diagonal scale only"
        if not self.reference.get(""):
            return "the calibration forward returns no floating tensor to check a fold against"
        names = [n for n in ("weight", "bias") if getattr(producer, n, None) is not None]
        saved = {n: producer._parameters[n].detach().clone() for n in names}
        for n in names:
            keep_parameter(self.model, producer, n)
        if is_norm(producer):
            for n in names:
                transform.into_elementwise(producer._parameters[n])
        else:
            transform.into_rows(weight_matrix(producer), producer.bias)
        change, bound = self._change(group.producer), torch.finfo(weight_matrix(group.layers[0]).dtype).eps ** 0.5
        if change <= bound:
            self.folded.add(group.producer)
            return ""
        for n in names:
            producer._parameters[n].copy_(saved[n])
        return (f"folding into {group.producer} changed a module's outputs by {change:.2g} (relative; bound "
                f"{bound:.2g}): its output feeds more than these layers, or it does not scale by its weight")

    def _outputs(self, model: torch.nn.Module) -> dict[str, list[torch.Tensor]]:
        """Run the batch (no gradients); every module's floating outputs, the
        first CHECKED_ROWS rows of each (rows: all dimensions but the last),
        by module name ("" is the model's own), calls of one module one
        after another."""
        outputs: dict[str, list[torch.Tensor]] = {}

        def keep(name: str) -> Callable:
            def hook(_module, _args, out):
                outputs.setdefault(name, []).extend(
                    t.detach().reshape(-1, t.shape[-1])[:CHECKED_ROWS].clone() if t.dim() else t.detach().clone()
                    for t in floating_tensors(out))
            return hook

        handles = [m.register_forward_hook(keep(name)) for name, m in model.named_modules() if name]
        try:
            with torch.no_grad():
                keep("")(model, (), self.run(model, self.batch))
        finally:
            for handle in handles:
                handle.remove()
        return outputs

    def _change(self, producer: str) -> float:
        """The largest relative change ||y' - y|| / ||y|| (float64) of any
        module's outputs on the batch, now against before the method, over
        the modules other than the producers folded into (theirs change by
        design); infinite where a module's outputs changed shape or count."""
        with unquantized(self.model) as model:
            now = self._outputs(model)
        changes = [0.0]
        for name, before in self.reference.items():
            if name in self.folded or name == producer:
                continue
            after = now.get(name, [])
            if [t.shape for t in after] != [t.shape for t in before]:
                return float("inf")
            difference = sum(float(torch.sum((a.double() - b.double()) ** 2)) for a, b in zip(after, before))
            size = sum(float(torch.sum(b.double() ** 2)) for b in before)
            changes.append((difference / size) ** 0.5 if size > 0 else difference ** 0.5)
        return max(changes)

    # -- finding the groups -----------------------------------------------------------------
    def _trace(self, layers: Mapping[str, torch.nn.Module]) -> tuple[list[Group], dict[str, list[torch.Tensor]]]:
        """Run the batch once; group the layers by their input tensors and
        name each group's producer. Returns the groups (in the order their
        first layer first runs; layers the batch does not reach last, one
        group each) and the outputs of every module (:meth:`_outputs`)."""
        outputs: dict[int, str] = {}
        inputs: dict[str, list[int]] = {name: [] for name in layers}
        calls: list[str] = []
        alive: list[torch.Tensor] = []  # keeps the tensors, and so their ids, alive for the pass

        def output_hook(name: str) -> Callable:
            def hook(_module, _args, out):
                if isinstance(out, torch.Tensor):
                    outputs.setdefault(id(out), name)  # nested modules: the innermost one's hook runs first
                    alive.append(out)
            return hook

        def input_hook(name: str) -> Callable:
            def hook(_module, args):
                if args and isinstance(args[0], torch.Tensor):
                    inputs[name].append(id(args[0]))
                    calls.append(name)
                    alive.append(args[0])
            return hook

        with unquantized(self.model) as model:
            handles = [m.register_forward_hook(output_hook(name)) for name, m in model.named_modules()
                       if is_norm(m) or is_linear(m)]
            handles += [plain(layer).register_forward_pre_hook(input_hook(name)) for name, layer in layers.items()]
            try:
                reference = self._outputs(model)
            finally:
                for handle in handles:
                    handle.remove()
            by_inputs: dict[tuple, list[str]] = {}
            for name in [*dict.fromkeys(calls), *(n for n in layers if not inputs[n])]:
                by_inputs.setdefault(tuple(inputs[name]) or (name,), []).append(name)
            shared = shared_parameters(model)
            groups = [self._group(model, key, names, layers, outputs, shared) for key, names in by_inputs.items()]
        return groups, reference

    @staticmethod
    def _group(model: torch.nn.Module, key: tuple, names: list[str], layers: Mapping[str, torch.nn.Module],
               outputs: dict[int, str], shared: set[int]) -> Group:
        group = Group(names, [layers[n] for n in names])
        if isinstance(key[0], str):
            group.why_explicit = "the first calibration batch does not reach it"
            return group
        sources = {outputs.get(i) for i in key}
        if None in sources:
            group.why_explicit = "its input is not the output of a norm or linear layer"
            return group
        if len(sources) > 1:
            group.why_explicit = f"its inputs come from several modules ({', '.join(sorted(sources))})"
            return group
        group.producer = sources.pop()
        producer = plain(model.get_submodule(group.producer))
        features = weight_matrix(group.layers[0]).shape[1]
        weight = getattr(producer, "weight", None)
        if is_norm(producer) and (weight is None or tuple(weight.shape) != (features,)):
            group.why_explicit = f"{group.producer} has no elementwise weight over the {features} features"
        elif any(id(getattr(producer, n, None)) in shared for n in ("weight", "bias")):
            group.why_explicit = f"a parameter of {group.producer} is shared with another module"
        return group


@dataclasses.dataclass
class Prepared:
    """What a method of this kind starts from: the model it changes, the
    layers' specs, their calibration inputs, and the groups."""

    model: torch.nn.Module
    specs: dict[str, QuantSpec]
    inputs: dict[str, LayerInputs]
    folder: Folder

    def layers(self) -> dict[str, torch.nn.Module]:
        """The layers by name, group by group in the order they run."""
        return {name: layer for group in self.folder.groups for name, layer in zip(group.names, group.layers)}

    def errors(self, error: Callable[[torch.Tensor, QuantSpec, torch.Tensor], float],
               transforms: Mapping[str, Scale | Rotation] | None = None) -> dict[str, float]:
        """``error(W, spec, x)`` of each layer: its weight now (out, in), its
        spec, and its first calibration rows, passed through its group's
        transform where ``transforms`` has one (the inputs the layer now
        sees, as the fold or hook gives them)."""
        transforms = transforms or {}
        result = {}
        for name, layer in self.layers().items():
            x = self.inputs[name].samples
            if name in transforms:
                x = transforms[name].into_input(x)
            result[name] = error(weight_matrix(layer).detach().clone(), self.specs[name], x)
        return result

    def record(self, method: str, before: Mapping[str, float], after: Mapping[str, float],
               details: Mapping[str, str]) -> None:
        """One Change per layer, in the layers' order."""
        for name in self.layers():
            record(self.model, Change(name, method, format_name(self.specs[name].weight), before[name], after[name],
                                      details[name]))


def prepare(model: torch.nn.Module, spec: QuantSpec | None, batches: Iterable[Any], *, method: str,
            rules: Mapping[Any, QuantSpec | None] | None, forward: Callable[[torch.nn.Module, Any], Any] | None,
            inplace: bool, samples: int) -> Prepared:
    """The common start of SmoothQuant, AWQ and rotations: copy the model
    unless ``inplace``; take the linear layers by ``spec`` and ``rules``;
    leave alone, warned about and logged, the layers whose weight another
    module shares (changing it would change that module too: tied
    embeddings); run
    ``batches`` (read once, into a list) for each layer's input statistics
    and first ``samples`` rows; find the groups on the first batch."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    model = working_model(model, inplace)
    chosen = linear_layers(model, spec, rules)
    check_order(chosen, method)
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: the method needs calibration data")
    shared = shared_parameters(model)
    tied = [name for name, (layer, _) in chosen.items() if id(plain(layer).weight) in shared]
    for name in tied:
        record(model, Change(name, method, format_name(chosen[name][1].weight),
                             detail="left alone: its weight is shared with another module (tied)"))
    if tied:
        warnings.warn(f"{method} leaves {', '.join(tied)} alone: the weight is shared with another module, which "
                      f"scaling it would change too", stacklevel=3)
    layers = {name: layer for name, (layer, _) in chosen.items() if name not in tied}
    if not layers:
        raise ValueError(f"{method}: every chosen layer's weight is shared with another module; none can be scaled")
    inputs = layer_inputs(model, layers, batches, samples=samples, forward=forward)
    return Prepared(model, {name: chosen[name][1] for name in layers}, inputs,
                    Folder(model, layers, batches[0], forward))


def format_name(fmt: Any) -> str:
    return getattr(fmt, "name", str(fmt))


class Scale:
    """A diagonal scale: W <- W diag(s), x <- x / s (s rounded once to
    ``dtype``, the same values on both sides). s must be finite and
    positive (ValueError)."""

    kind, diagonal, folded, online = "scale", True, "1/s", "divided by s"

    def __init__(self, s: torch.Tensor, dtype: torch.dtype) -> None:
        if s.dim() != 1 or not bool(torch.isfinite(s).all() and (s > 0).all()):
            raise ValueError("a scale must be a vector of finite positive numbers")
        self.s, self.features = s.to(dtype), len(s)
        self._copies: dict[tuple, torch.Tensor] = {}

    def _s(self, like: torch.Tensor) -> torch.Tensor:
        """s on ``like``'s device in its dtype (kept: the online hook runs on every call)."""
        key = (like.device, like.dtype)
        if key not in self._copies:
            self._copies[key] = self.s.to(like.device, like.dtype)
        return self._copies[key]

    def into_weight(self, matrix: torch.Tensor) -> None:
        matrix.mul_(self._s(matrix))

    def into_input(self, x: torch.Tensor) -> torch.Tensor:
        return x / self._s(x)

    def into_elementwise(self, parameter: torch.Tensor) -> None:
        parameter.div_(self._s(parameter))

    def into_rows(self, rows: torch.Tensor, bias: torch.Tensor | None) -> None:
        rows.div_(self._s(rows)[:, None])
        if bias is not None:
            bias.div_(self._s(bias))


class Rotation:
    """An orthogonal R = diag(d) blockdiag(H, ..., H): ``signs`` d (each
    +1 or -1) over n features and an orthogonal b x b ``block`` H (b
    divides n; checked in float64: max |H H^T - I| <= 64 b eps, else
    ValueError). W <- W R and x <- x R (x R R^T = x); a producing linear
    layer takes W_p <- R^T W_p, b_p <- R^T b_p. Applied block by block
    (never an n x n matrix); parameters in float64, rounded once to their
    dtype; the online x R in x's dtype."""

    kind, diagonal, folded, online = "rotation", False, "R^T", "rotated by R"

    def __init__(self, signs: torch.Tensor, block: torch.Tensor) -> None:
        block, signs = block.detach().to(torch.float64), signs.detach().to(torch.float64)
        b = block.shape[0]
        if block.shape != (b, b) or signs.dim() != 1 or len(signs) % b:
            raise ValueError(f"a rotation takes a square block whose size divides the signs' length; got a block "
                             f"of shape {tuple(block.shape)} and {tuple(signs.shape)} signs")
        if not bool((signs.abs() == 1).all()):
            raise ValueError("a rotation's signs must each be +1 or -1")
        deviation = float((block @ block.T - torch.eye(b, dtype=torch.float64, device=block.device)).abs().max())
        if deviation > 64 * b * torch.finfo(torch.float64).eps:
            raise ValueError(f"the rotation's block is not orthogonal: max |H H^T - I| = {deviation:.3g}")
        self.signs, self.block, self.features = signs, block, len(signs)
        self._copies: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def times(self, t: torch.Tensor) -> torch.Tensor:
        """t R along t's last axis, in t's dtype."""
        key = (t.device, t.dtype)
        if key not in self._copies:  # kept: the online hook runs on every call
            self._copies[key] = (self.signs.to(t.device, t.dtype), self.block.to(t.device, t.dtype))
        d, h = self._copies[key]
        b = h.shape[0]
        return ((t * d).reshape(*t.shape[:-1], -1, b) @ h).reshape(t.shape)

    def into_weight(self, matrix: torch.Tensor) -> None:
        matrix.copy_(self.times(matrix.double()))

    def into_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.times(x)

    def into_rows(self, rows: torch.Tensor, bias: torch.Tensor | None) -> None:
        rows.copy_(self.times(rows.double().T).T)  # R^T W = (W^T R)^T
        if bias is not None:
            bias.copy_(self.times(bias.double()))


def _on_input(transform: Scale | Rotation) -> Callable:
    def hook(_module: torch.nn.Module, args: tuple) -> tuple:
        return (transform.into_input(args[0]), *args[1:])
    return hook


def floating_tensors(output: Any) -> list[torch.Tensor]:
    """The floating-point tensors in a forward's output (tensors, and
    mappings, lists and tuples of them; other objects, such as key-value
    caches, are passed over), in order."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, list | tuple):
        return [t for item in output for t in floating_tensors(item)]
    return []


def shared_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the parameters that two or more modules hold (tied weights)."""
    counts = collections.Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    return {key for key, count in counts.items() if count > 1}


@contextlib.contextmanager
def unquantized(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model with every module quantize_model swapped in replaced by the
    one it wraps, in eval mode, for the duration; yields the model to run
    (``model``, or the module it wraps when it is itself quantized). The
    swaps and every module's training flag are put back after."""
    swapped = [(name, m) for name, m in model.named_modules() if name and isinstance(m, QuantModule)]
    for name, module in swapped:
        _put(model, name, module.original)
    root = plain(model)
    modes = [(m, m.training) for m in root.modules()]
    root.eval()
    try:
        yield root
    finally:
        for module, mode in modes:
            module.training = mode
        for name, module in swapped:
            _put(model, name, module)


def _put(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
