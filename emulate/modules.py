"""Quantized modules: Linear, transformers' Conv1D (GPT-2), Conv1d/2d/3d,
ConvTranspose1d/2d/3d, Embedding and MultiheadAttention that round their
operands as a QuantSpec says.

Each wraps a module of its type and shares its parameter, buffer and
submodule tables (the same dict objects): the state_dict keys stay the
module's own, optimizers and checkpoints are unaffected, and whatever
replaces a parameter (``load_state_dict(assign=True)``, ``to_empty`` after
meta-device init, FSDP) replaces it in the wrapped module too, so
:func:`~lowbit.emulate.restore_model` gives back a module with the current
parameters. It shares the forward hook tables too: a forward (pre-)hook
registered on the wrapped module before or after the swap (a method's
input scale, a user's probe) runs, once, when the quantized module runs.
In inference (no gradient to compute for the weight) the rounded weight
is cached and reused until the weight changes (a new tensor
or an in-place update); in training it is rounded on every call. Compiled
inference graphs keep weights of up to 4 MiB rounded outside the graph
(the ``lowbit::rounded_weight`` op, which copies the kept value out) and
round larger ones on every call; ``torch._inductor.config.freezing = True``
folds every rounded weight into the graph as a constant (the weights are
then frozen: compile again after changing them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from .attention import AttentionRouting
from .calibration import Calibrated, Recorder
from .conv import channels_rounded, conv_weight_rounded, quantized_conv
from .encoded_products import encoded_linear
from .fake_quant import fake_quantize
from .linear import linear_product, quantized_linear
from .prerounded import Prerounded, holds
from .rounding import kept_round_to, quantized_module, round_to, values_fingerprint
from .spec import ATTENTION_ROLES, ROLES, QuantSpec


#: the forward-hook tables a quantized module shares with the module it wraps
_HOOK_TABLES = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
                "_forward_hooks_always_called")


def qualified_name(cls: type) -> str:
    """A class's module-qualified name (how wrapped types from other packages are matched)."""
    return f"{cls.__module__}.{cls.__qualname__}"


class QuantModule(torch.nn.Module):
    """Base of the quantized modules: the wrapped module's parameters and
    buffers, its spec, and the cached rounded weight."""

    wraps: tuple[type, ...] = ()
    wraps_by_name: tuple[str, ...] = ()  # qualified names of types from packages lowbit does not import
    roles = ROLES  # the spec's roles that apply
    weight_axis = 1  # the weight's axis blocks run along in the forward pass
    takes_prerounded = False  # whether the weight role may hold a method's Prerounded marker

    @classmethod
    def accepts(cls, module: torch.nn.Module) -> bool:
        """Whether this class wraps ``module`` (its exact type: subclasses may compute differently)."""
        return type(module) in cls.wraps or qualified_name(type(module)) in cls.wraps_by_name

    def __init__(self, module: torch.nn.Module, spec: QuantSpec) -> None:
        if not self.accepts(module):
            names = ", ".join([t.__name__ for t in self.wraps] + list(self.wraps_by_name))
            raise TypeError(f"{type(self).__name__} wraps {names}, got {type(module).__name__}")
        if isinstance(module, QuantModule):
            raise TypeError(f"{type(module).__name__} is quantized already")
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        if isinstance(spec.weight, Prerounded) and not self.takes_prerounded:
            raise ValueError(f"{type(self).__name__} takes no Prerounded weight: the methods round linear "
                             f"layers' weights")
        super().__init__()
        # the wrapped module's own tables: one set of parameters, whoever replaces them, and one set of forward
        # hooks (a method's input scale or rotation, a user's probe), run once per call of whichever module runs
        self.__dict__.update(_parameters=module._parameters, _buffers=module._buffers, _modules=module._modules,
                             _non_persistent_buffers_set=module._non_persistent_buffers_set,
                             **{name: getattr(module, name) for name in _HOOK_TABLES})
        self.training = module.training
        self.spec = spec
        self.__dict__["original"] = module  # not a submodule: the state_dict keys stay the module's own
        self._cache: tuple[Any, torch.Tensor] | None = None
        self._weight_scale: tuple[Any, torch.Tensor] | None = None
        self._input_scale: torch.Tensor | None = None
        self._recorder: Recorder | None = None
        self._recording = False

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("original")
            if original is None:
                raise
            return getattr(original, name)  # in_features, stride, padding_idx, ... (the tables are shared)

    def rewrapped(self, spec: QuantSpec) -> "QuantModule":
        """This module's kind of quantized module around the same layer under
        another spec (what quantizing a quantized model again swaps in)."""
        return type(self)(self.original, spec)

    def train(self, mode: bool = True) -> "QuantModule":
        self.original.training = mode
        return super().train(mode)

    def _weight_key(self) -> tuple[Any, ...]:
        # the values' fingerprint under torch.distributed: FSDP gathers new values into the same parameter,
        # often at the same address, without bumping its version counter
        weight = self.weight.detach()
        return (id(self.weight), weight.data_ptr(), self.weight._version, values_fingerprint(weight), self.spec)

    def _rounder(self, fmt: Any):
        plain = QuantSpec(rounding=self.spec.rounding)
        return lambda t: round_to(t, fmt, -1, plain)

    def _weight_format(self) -> Any:
        """The spec's weight format, with its observer's scale if it has one;
        a Prerounded marker while the weight holds the method's values, its
        plain format once the weight changed (:mod:`lowbit.emulate.prerounded`)."""
        fmt = self.spec.weight
        if isinstance(fmt, Prerounded):
            if holds(self.weight, fmt):
                return fmt
            fmt = fmt.format
        observer = self.spec.observer("weight")
        if observer is None:
            return fmt
        if torch.compiler.is_compiling():
            return Calibrated(fmt, observer.scale(self.weight.detach(), fmt, self._rounder(fmt)))
        key = self._weight_key()
        if self._weight_scale is None or self._weight_scale[0] != key:
            scale = observer.scale(self.weight.detach(), fmt, self._rounder(fmt))
            self._weight_scale = (key, scale)
        return Calibrated(fmt, self._weight_scale[1])

    def active_spec(self) -> QuantSpec:
        """The spec with the observed scales in place of the plain formats
        (and a Prerounded weight resolved, see :meth:`_weight_format`)."""
        changes = {}
        if self.spec.observer("weight") is not None or isinstance(self.spec.weight, Prerounded):
            resolved = self._weight_format()
            if resolved is not self.spec.weight:
                changes["weight"] = resolved
        if self.spec.observer("input") is not None:
            if self._input_scale is None:
                raise RuntimeError("this layer's input scale comes from data: run "
                                   "lowbit.emulate.calibrate(model, batches) first")
            changes["input"] = Calibrated(self.spec.input, self._input_scale)
        return dataclasses.replace(self.spec, **changes) if changes else self.spec

    def round_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight rounded as the forward product takes it."""
        return round_to(weight, self._weight_format(), self.weight_axis, self.spec)

    def rounded_weight(self) -> torch.Tensor:
        """The weight rounded as the spec says (cached; in compiled code by
        the ``lowbit::rounded_weight`` op, outside the graph)."""
        if torch.compiler.is_compiling():
            return kept_round_to(self.weight.detach(), self._weight_format(), self.weight_axis, self.spec)
        key = self._weight_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.round_weight(self.weight.detach()))
        return self._cache[1]

    # -- calibration (see lowbit.emulate.calibration) ---------------------------------------
    def start_calibration(self) -> None:
        self._recorder, self._recording = Recorder(self.spec.observer("input")), True

    def stop_calibration(self) -> None:
        self._recording = False

    def finish_calibration(self) -> None:
        self._input_scale = self._recorder.scale(self.spec.input, self._rounder(self.spec.input), self.weight.dtype)
        self._recorder = None

    def recorded(self, x: torch.Tensor) -> bool:
        """While calibrating, record x and say so (the layer then runs in full precision)."""
        if self._recording:
            self._recorder.record(x)
        return self._recording

    def training_step(self, x: torch.Tensor) -> bool:
        """Whether this call needs the differentiable path."""
        return torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad)

    def extra_repr(self) -> str:
        return ", ".join(part for part in (self.original.extra_repr(), str(self.spec)) if part)


class QuantLinear(QuantModule):
    """nn.Linear with its operands rounded (see :mod:`lowbit.emulate.linear`)."""

    wraps = (torch.nn.Linear,)
    takes_prerounded = True

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight as F.linear takes it: (out_features, in_features)."""
        return weight

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # torch's name: callers may pass input=
        x = input
        if self.recorded(x):
            return self.original.forward(x)  # its hooks ran already: they are ours
        spec = self.active_spec()
        with quantized_module():
            if self.training_step(x):
                return quantized_linear(x, self.matrix(self.weight), self.bias, spec)
            y = encoded_linear(x, self.matrix(self.weight.detach()), self.bias, spec)
            if y is None:
                y = linear_product(round_to(x, spec.input, -1, spec), self.matrix(self.rounded_weight()), self.bias,
                                   spec)
            return round_to(y, spec.output, -1, spec)


class QuantConv1D(QuantLinear):
    """transformers' ``Conv1D`` (GPT-2's projections), a Linear that stores
    its weight transposed, (in_features, out_features): rounded along its
    axis 0, the input features, as QuantLinear rounds a Linear's."""

    wraps = ()  # not QuantLinear's nn.Linear
    wraps_by_name = ("transformers.pytorch_utils.Conv1D",)
    weight_axis = 0

    def __init__(self, module: torch.nn.Module, spec: QuantSpec) -> None:
        observer = spec.observer("weight")
        if observer is not None and observer.granularity != "tensor":
            raise ValueError("a Conv1D weight takes a per-tensor observer scale (its axis 0 holds input features)")
        super().__init__(module, spec)

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.T


class QuantConv(QuantModule):
    """nn.Conv1d/2d/3d and nn.ConvTranspose1d/2d/3d with their operands
    rounded (see :mod:`lowbit.emulate.conv`)."""

    wraps = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d,
             torch.nn.ConvTranspose3d)

    def __init__(self, module: torch.nn.Module, spec: QuantSpec) -> None:
        super().__init__(module, spec)
        self.weight_axis = 0 if module.transposed else 1
        observer = spec.observer("weight")
        if module.transposed and observer is not None and observer.granularity != "tensor":
            raise ValueError("a transposed convolution's weight takes a per-tensor scale (its axis 0 holds input "
                             "channels)")

    def round_weight(self, weight: torch.Tensor) -> torch.Tensor:
        fmt = self._weight_format()
        if isinstance(fmt, Calibrated):  # a per-tensor scale: blocks do not arise
            return super().round_weight(weight)
        return conv_weight_rounded(weight, fmt, self.spec, self.original.transposed, self.original.groups)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # torch's name: callers may pass input=
        x = input
        if self.recorded(x):
            return self.original.forward(x)  # its hooks ran already: they are ours
        spec = self.active_spec()
        conv = self.original
        padding = conv.padding
        if conv.padding_mode != "zeros":
            x, padding = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), 0
        geometry = {"stride": conv.stride, "padding": padding, "dilation": conv.dilation, "groups": conv.groups,
                    "transposed": conv.transposed, "output_padding": conv.output_padding}
        with quantized_module():
            if self.training_step(x):
                return quantized_conv(x, self.weight, self.bias, spec, **geometry)
            plain = QuantSpec(rounding=spec.rounding)  # the weight is rounded already
            x = channels_rounded(x, spec.input, 1, spec, conv.groups)
            y = quantized_conv(x, self.rounded_weight(), self.bias, plain, **geometry)
            return round_to(y, spec.output, 1, spec)


class QuantEmbedding(QuantModule):
    """nn.Embedding whose table is rounded (``weight``, along the embedding
    dimension) and whose looked-up rows are rounded to ``output``; the
    table's gradient passes straight through, rounded to ``grad_weight``.
    Embeddings with ``max_norm`` (which renormalise their table in place)
    are not supported."""

    wraps = (torch.nn.Embedding,)
    roles = ("weight", "output", "grad_weight")

    def __init__(self, module: torch.nn.Module, spec: QuantSpec) -> None:
        if getattr(module, "max_norm", None) is not None:
            raise ValueError("an Embedding with max_norm renormalises its table in place; lowbit cannot round it")
        if spec.observer("input") is not None:
            raise ValueError("an Embedding's input is indices: it takes no input observer")
        super().__init__(module, spec)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        spec, emb = self.spec, self.original
        if torch.is_grad_enabled() and self.weight.requires_grad:
            table = self.weight if spec.weight is None else self._differentiable_table()
        else:
            table = self.rounded_weight()
        rows = F.embedding(indices, table, emb.padding_idx, None, 2.0, emb.scale_grad_by_freq, emb.sparse)
        if spec.output is None:
            return rows
        rule = spec.scale_rule if spec.applies_rule(spec.output) else None
        return fake_quantize(rows, spec.output, axis=-1, rounding=spec.rounding, scale_rule=rule)

    def _differentiable_table(self) -> torch.Tensor:
        """The rounded table, its gradient straight through (rounded to grad_weight)."""
        spec, fmt = self.spec, self._weight_format()
        scale = fmt.scale if isinstance(fmt, Calibrated) else None
        fmt = fmt.format if scale is not None else fmt
        rule = spec.scale_rule if spec.applies_rule(fmt) else None
        table = self.weight if scale is None else self.weight / scale
        table = fake_quantize(table, fmt, axis=1, rounding=spec.rounding, scale_rule=rule, grad_format=spec.grad_weight)
        return table if scale is None else table * scale


class QuantMultiheadAttention(QuantModule):
    """nn.MultiheadAttention computed from quantized products: its input
    and output projections (``input``/``weight`` roles) and its two
    attention products (``query``/``key`` and ``probabilities``/``value``),
    as :mod:`lowbit.emulate.attention` computes them. torch's fused fast
    path, which would read the weights directly, never runs. Observers
    (external scales) do not apply."""

    wraps = (torch.nn.MultiheadAttention,)
    roles = ROLES + ATTENTION_ROLES

    def __init__(self, module: torch.nn.Module, spec: QuantSpec) -> None:
        if spec.observers:
            raise ValueError("a MultiheadAttention takes no observers: its projections use the spec's formats")
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("lowbit computes MultiheadAttention without add_bias_kv or add_zero_attn")
        super().__init__(module, spec)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with AttentionRouting(self.spec), quantized_module():
            return torch.nn.MultiheadAttention.forward(self, *args, **kwargs)
