"""emulating(spec): quantize the operands of torch's products wherever
they are called, inside modules or not, and report what was rounded.

Within ``with emulating(spec) as report:`` these calls run quantized:

- ``F.linear`` (as :class:`~lowbit.emulate.QuantLinear` does);
- ``torch.matmul``, ``Tensor.matmul``, ``a @ b``, ``torch.linalg.matmul``,
  ``mm``, ``bmm``, ``mv``, ``dot``, and the product in ``addmm``,
  ``baddbmm``, ``addbmm``, ``addmv`` and their in-place (``addmm_``) and
  ``out=`` forms (as :func:`~lowbit.emulate.quantized_matmul`);
- ``torch.tensordot``, ``torch.einsum`` and ``torch.linalg.multi_dot`` /
  ``torch.chain_matmul``, as matmuls blocked along the contracted
  dimensions (:mod:`lowbit.emulate.contractions`);
- ``F.conv1d/2d/3d`` and ``F.conv_transpose1d/2d/3d`` (as
  :func:`~lowbit.emulate.quantized_conv`);
- ``F.embedding``: the table rounded to the ``weight`` format along the
  embedding dimension, the rows to ``output`` (as
  :class:`~lowbit.emulate.QuantEmbedding` does; a lookup, not a product);
- ``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``
  (``nn.MultiheadAttention``, the ``nn.Transformer`` layers), computed from
  quantized projections and products (:mod:`lowbit.emulate.attention`).

Roles: the weight argument of ``F.linear`` and of the convolutions, and
any operand that is an ``nn.Parameter`` (or a view of one, such as
``w.T``), take the ``weight`` format; every other operand is an
activation and takes the ``input`` format, so both operands of an
activation-by-activation product (attention's q @ k.mT, p @ v) take the
activation format. A weight computed from a parameter (``w * 1.0``,
``w.to(torch.bfloat16)``, a parametrization) is an activation to ``@``:
pass it through ``F.linear`` to give it the weight format. Inside
attention functions the spec's ``query``, ``key``, ``probabilities`` and
``value`` formats apply. Integer and complex products run as they are
(counted in the report).

``rules`` (as in :func:`~lowbit.emulate.quantize_model`: a name pattern or
a module type, to a QuantSpec or None) choose the spec by the module the
call is made in, innermost first; name patterns need ``model=`` to name
modules. ``min_reduction``: products whose reduction dimension K is below
it run in full precision (RoPE's outer product of positions and
frequencies has K = 1).

The report counts, per function, the calls rounded and the calls left in
full precision with the reason: excluded by a rule, K below
``min_reduction``, or a product lowbit does not round here (``torch.lstm``
and the other recurrent kernels, ``bilinear``, ``outer``, ``kron``, an
einsum with a diagonal, ...); those last draw a warning when the block
ends. With ``model=`` it also lists the model's parameters that entered no
rounded product. torch's fused attention fast path is off inside the block.
Calls that quantized modules (:mod:`lowbit.emulate.modules`) make
themselves run as they are: their operands are rounded once, by their own
spec. Functions are matched by identity, not by name (``torch.mm`` and
``torch.spmm`` are one object).

Under ``torch.compile`` (``fullgraph=True`` too) the block traces, with
results equal to eager ones and the report filled as in eager; the
end-of-block warning is given once, when the code is traced. Two limits:
``rules`` follow the running module through global module hooks, which
torch.compile does not trace, so a block with rules refuses to run in
compiled code (a RuntimeError naming the limit; without ``fullgraph``
torch.compile runs that code eagerly); and with ``model=`` the graph
depends on the model's identity (one graph per model object).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import contractions
from .attention import attention, multi_head_attention
from .calibration import Calibrated
from .conv import quantized_conv
from .fake_quant import fake_quantize
from .linear import linear_product, quantized_linear
from .matmul import quantized_matmul
from .modules import QuantModule
from .prerounded import Prerounded
from .rounding import inside_quantized_module, kept_round_to, quantized_module, round_to, set_fast_path
from .rules import check_rules, matching_rule, unmatched_patterns
from .spec import QuantSpec


def is_parameter(t: Any) -> bool:
    """Whether ``t`` is an nn.Parameter or a view of one (it takes the weight format)."""
    while isinstance(t, torch.Tensor):
        if isinstance(t, torch.nn.Parameter):
            return True
        t = t._base
    return False


class EmulationReport:
    """What ``emulating`` did: per function, the calls rounded and the calls
    left in full precision with their reasons; with a model, the
    parameters that entered no rounded product."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec
        self.rounded: Counter[str] = Counter()
        self.full_precision: Counter[tuple[str, str]] = Counter()
        self.unrounded_parameters: list[str] = []
        self.missed: set[tuple[str, str]] = set()  # (function, reason) of products lowbit could not round
        self._seen_parameters: set[int] = set()

    def __str__(self) -> str:
        lines = [f"emulating {self.spec}"]
        lines += [f"  rounded         {name}: {calls}" for name, calls in sorted(self.rounded.items())]
        lines += [f"  full precision  {name}: {calls} ({why})"
                  for (name, why), calls in sorted(self.full_precision.items())]
        if self.unrounded_parameters:
            lines.append(f"  parameters in no rounded product: {', '.join(self.unrounded_parameters)}")
        return "\n".join(lines)


class _Call:
    """One caught call: the spec that applies, and the products it makes."""

    def __init__(self, mode: "_EmulatingMode", name: str, spec: QuantSpec) -> None:
        self.mode, self.name, self.spec = mode, name, spec
        self.skipped_k: int | None = None

    def operands(self, left: Any, right: Any, *, right_is_weight: bool = False) -> QuantSpec:
        """The spec with the formats of these operands' roles: the weight
        format for parameters (and for ``right`` when the function's
        signature makes it the weight: F.linear, convolutions), the input
        format for activations. Raises Uncovered for operands that are not
        real floating point (integer and complex products run as they are)."""
        if not (left.is_floating_point() and right.is_floating_point()):
            raise contractions.Uncovered(f"{left.dtype} and {right.dtype} operands: not a real floating-point product",
                                         missed=False)
        self.mode.note_parameters(left, right)
        spec = self.spec
        return spec.with_operands(spec.weight if is_parameter(left) else spec.input,
                                  spec.weight if right_is_weight or is_parameter(right) else spec.input)

    def too_small(self, k: int) -> bool:
        if k < self.mode.min_reduction:
            self.skipped_k = k
            return True
        return False

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a @ b (torch.matmul's shapes) with the operands' roles."""
        if self.too_small(a.shape[-1]):
            return torch.matmul(a, b)
        return quantized_matmul(a, b, self.operands(a, b))

    def product(self, a3: torch.Tensor, b3: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a3 @ b3 with the roles of the user's operands a and b (for contractions)."""
        if self.too_small(a3.shape[-1]):
            return a3 @ b3
        return quantized_matmul(a3, b3, self.operands(a, b))


def _linear(call, x, weight, bias=None):
    if call.too_small(x.shape[-1]):
        return F.linear(x, weight, bias)
    call.mode.note_parameters(bias)
    spec = call.operands(x, weight, right_is_weight=True)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad) or torch.compiler.is_compiling() \
            or not isinstance(weight, torch.nn.Parameter):
        return quantized_linear(x, weight, bias, spec)
    # inference with a parameter: its rounded copy is kept (as quantized modules keep theirs)
    product = linear_product(round_to(x, spec.input, -1, spec), call.mode.rounded_parameter(weight, spec), bias, spec)
    return round_to(product, spec.output, -1, spec)


def _matmul(call, a, b, *, out=None):
    return _into(out, call.matmul(a, b))


def _rmatmul(call, b, a):
    return call.matmul(a, b)


def _dot(call, a, b, *, out=None):
    if a.dim() != 1 or b.dim() != 1:
        raise ValueError(f"dot takes two 1-D tensors, got {a.dim()}-D and {b.dim()}-D")
    return _into(out, call.matmul(a, b))


def _addmm(call, base, a, b, *, beta=1, alpha=1, out=None):
    """base + a @ b (addmm, baddbmm, addmv), scaled as torch scales them: beta = 0 ignores base."""
    call.mode.note_parameters(base)
    product = call.matmul(a, b)
    product = product if alpha == 1 else alpha * product
    return _into(out, product if beta == 0 else (base if beta == 1 else beta * base) + product)


def _addbmm(call, base, a, b, *, beta=1, alpha=1, out=None):
    """base + the sum over the batch of a[i] @ b[i]."""
    return _addmm(call, base, a.transpose(0, 1).flatten(1), b.flatten(0, 1), beta=beta, alpha=alpha, out=out)


def _in_place(handler: Callable) -> Callable:
    def run(call, base, *args, **kwargs):
        return base.copy_(handler(call, base, *args, **kwargs))
    return run


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    if out is None:
        return result
    if out.shape != result.shape:
        out.resize_(result.shape)
    return out.copy_(result)


def _tensordot(call, a, b, dims=2, out=None):
    return _into(out, contractions.tensordot(a, b, dims, call.product))


def _einsum(call, equation, *operands):
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = operands[0]
    if not isinstance(equation, str):
        raise contractions.Uncovered("the sublist form of einsum")
    return contractions.einsum(equation, operands, call.product)


def _multi_dot(call, tensors, *, out=None):
    return _into(out, contractions.multi_dot(tensors, call.product))


def _chain_matmul(call, *matrices, out=None):
    return _multi_dot(call, matrices, out=out)


def _conv(call, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    call.mode.note_parameters(bias)
    return quantized_conv(x, weight, bias, call.operands(x, weight, right_is_weight=True), stride=stride,
                          padding=padding, dilation=dilation, groups=groups)


def _conv_transpose(call, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    call.mode.note_parameters(bias)
    return quantized_conv(x, weight, bias, call.operands(x, weight, right_is_weight=True), stride=stride,
                          padding=padding, dilation=dilation, groups=groups, transposed=True,
                          output_padding=output_padding)


def _embedding(call, indices, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
               sparse=False):
    """F.embedding from the table rounded to the weight format along the
    embedding dimension, its rows rounded to the output format (as
    QuantEmbedding does)."""
    if max_norm is not None:
        raise contractions.Uncovered("an embedding with max_norm renormalises its table in place")
    if not weight.is_floating_point() or isinstance(call.spec.weight, Calibrated):
        raise contractions.Uncovered("a table lowbit does not round here (not floating point, or observer-scaled)")
    spec = call.spec
    call.mode.note_parameters(weight)
    rule = spec.scale_rule if spec.applies_rule(spec.weight) else None
    if spec.weight is None:
        table = weight
    elif torch.is_grad_enabled() and weight.requires_grad or torch.compiler.is_compiling() \
            or not isinstance(weight, torch.nn.Parameter):
        table = fake_quantize(weight, spec.weight, axis=-1, rounding=spec.rounding, scale_rule=rule,
                              grad_format=spec.grad_weight)
    else:
        table = call.mode.rounded_parameter(weight, spec)
    rows = F.embedding(indices, table, padding_idx, None, norm_type, scale_grad_by_freq, sparse)
    if spec.output is None:
        return rows
    rule = spec.scale_rule if spec.applies_rule(spec.output) else None
    return fake_quantize(rows, spec.output, axis=-1, rounding=spec.rounding, scale_rule=rule)


def _attention(call, *args, **kwargs):
    call.mode.note_parameters(*args, *kwargs.values())
    return attention(call.spec, *args, **kwargs)


def _multi_head_attention(call, *args, **kwargs):
    call.mode.note_parameters(*args, *kwargs.values())
    return multi_head_attention(call.spec, *args, **kwargs)


T = torch.Tensor
HANDLERS: dict[Any, tuple[str, Callable]] = {
    F.linear: ("F.linear", _linear),
    torch.matmul: ("torch.matmul", _matmul), T.matmul: ("Tensor.matmul", _matmul),
    T.__matmul__: ("Tensor.__matmul__", _matmul), T.__rmatmul__: ("Tensor.__rmatmul__", _rmatmul),
    torch.linalg.matmul: ("torch.linalg.matmul", _matmul),
    torch.mm: ("torch.mm", _matmul), T.mm: ("Tensor.mm", _matmul),
    torch.bmm: ("torch.bmm", _matmul), T.bmm: ("Tensor.bmm", _matmul),
    torch.mv: ("torch.mv", _matmul), T.mv: ("Tensor.mv", _matmul),
    torch.dot: ("torch.dot", _dot), T.dot: ("Tensor.dot", _dot),
    torch.addmm: ("torch.addmm", _addmm), T.addmm: ("Tensor.addmm", _addmm),
    T.addmm_: ("Tensor.addmm_", _in_place(_addmm)),
    torch.baddbmm: ("torch.baddbmm", _addmm), T.baddbmm: ("Tensor.baddbmm", _addmm),
    T.baddbmm_: ("Tensor.baddbmm_", _in_place(_addmm)),
    torch.addmv: ("torch.addmv", _addmm), T.addmv: ("Tensor.addmv", _addmm),
    T.addmv_: ("Tensor.addmv_", _in_place(_addmm)),
    torch.addbmm: ("torch.addbmm", _addbmm), T.addbmm: ("Tensor.addbmm", _addbmm),
    T.addbmm_: ("Tensor.addbmm_", _in_place(_addbmm)),
    torch.tensordot: ("torch.tensordot", _tensordot),
    torch.einsum: ("torch.einsum", _einsum),
    torch.linalg.multi_dot: ("torch.linalg.multi_dot", _multi_dot),
    torch.chain_matmul: ("torch.chain_matmul", _chain_matmul),
    F.embedding: ("F.embedding", _embedding),
    F.scaled_dot_product_attention: ("F.scaled_dot_product_attention", _attention),
    F.multi_head_attention_forward: ("F.multi_head_attention_forward", _multi_head_attention),
    **{getattr(F, f"conv{d}d"): (f"F.conv{d}d", _conv) for d in (1, 2, 3)},
    **{getattr(F, f"conv_transpose{d}d"): (f"F.conv_transpose{d}d", _conv_transpose) for d in (1, 2, 3)},
}

_RECURRENT = "a fused recurrent kernel (quantize_model swaps nn.LSTM/nn.GRU/nn.RNN for quantized step-by-step modules)"
UNCOVERED: dict[Any, tuple[str, str]] = {
    **{getattr(torch, name): (f"torch.{name}", _RECURRENT)
       for name in ("lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell")},
    F.bilinear: ("F.bilinear", "a bilinear form lowbit does not round"),
    torch.outer: ("torch.outer", "an outer product lowbit does not round"),
    T.outer: ("Tensor.outer", "an outer product lowbit does not round"),
    torch.inner: ("torch.inner", "an inner product lowbit does not round (write it as a matmul)"),
    torch.vdot: ("torch.vdot", "a complex dot product lowbit does not round"),
    torch.kron: ("torch.kron", "a Kronecker product lowbit does not round"),
    torch.addr: ("torch.addr", "an outer product lowbit does not round"),
    torch.cdist: ("torch.cdist", "distances lowbit does not round"),
}


class _EmulatingMode(TorchFunctionMode):
    def __init__(self, spec: QuantSpec, rules: Mapping[Any, QuantSpec | None], names: dict[int, str],
                 min_reduction: int, report: EmulationReport) -> None:
        super().__init__()
        self.spec, self.rules, self.names = spec, rules, names
        self.min_reduction, self.report = min_reduction, report
        self.stack: list[torch.nn.Module] = []
        self.recomputing = False

    def rounded_parameter(self, weight: torch.nn.Parameter, spec: QuantSpec) -> torch.Tensor:
        """A Linear weight (or embedding table) rounded to the spec's weight
        format along its input features: rounded once per value of the
        parameter and kept while it lives, across blocks, as quantized
        modules keep theirs."""
        return kept_round_to(weight, spec.weight, -1, spec)

    def note_parameters(self, *tensors: Any) -> None:
        if not self.names:
            return
        for t in tensors:
            while isinstance(t, torch.Tensor):
                if isinstance(t, torch.nn.Parameter):
                    self.report._seen_parameters.add(id(t))
                t = t._base

    def spec_here(self) -> QuantSpec | None:
        for module in reversed(self.stack):
            matched, spec = matching_rule(self.rules, self.names.get(id(module)), module)
            if matched:
                return spec
        return self.spec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = HANDLERS.get(func)
        if entry is None or inside_quantized_module():
            if entry is None and func in UNCOVERED and not inside_quantized_module():
                self.report.full_precision[UNCOVERED[func]] += 1
                self.report.missed.add(UNCOVERED[func])
            return func(*args, **kwargs)
        name, handler = entry
        spec = self.spec_here() if self.rules else self.spec
        if spec is None:
            self.report.full_precision[(name, "excluded by a rule")] += 1
            return func(*args, **kwargs)
        if not self.recomputing and _checkpointed_outside_lowbit():
            self.report.missed.add(("activation checkpointing", _CHECKPOINT))
        call = _Call(self, name, spec)
        try:
            with quantized_module():  # an enclosing emulating lets the handler's own calls through
                result = handler(call, *args, **kwargs)
        except contractions.Uncovered as why:
            self.report.full_precision[(name, str(why))] += 1
            if why.missed:
                self.report.missed.add((name, str(why)))
            return func(*args, **kwargs)
        if call.skipped_k is not None:
            self.report.full_precision[(name, f"K = {call.skipped_k} below min_reduction")] += 1
        else:
            self.report.rounded[name] += 1
        return result


_CHECKPOINT = ("torch recomputes checkpointed code in the backward pass outside this block, its products in full "
               "precision: pass context_fn=lowbit.emulate.checkpoint_context(spec, ...) to torch.utils.checkpoint "
               "(non-reentrant), or swap the layers with quantize_model")
_local = threading.local()


def _checkpointed_outside_lowbit() -> bool:
    """Whether saved-tensor hooks (non-reentrant activation checkpointing)
    are active without :func:`checkpoint_context`'s forward marker."""
    return (not torch.compiler.is_compiling() and not getattr(_local, "checkpoint_context", 0)
            and torch._C._autograd._top_saved_tensors_default_hooks(False) is not None)


@contextlib.contextmanager
def _checkpoint_forward() -> Iterator[None]:
    _local.checkpoint_context = getattr(_local, "checkpoint_context", 0) + 1
    try:
        yield
    finally:
        _local.checkpoint_context -= 1


def checkpoint_context(spec: QuantSpec, rules: Mapping[Any, QuantSpec | None] | None = None, *,
                       model: torch.nn.Module | None = None,
                       min_reduction: int = 1) -> Callable[[], tuple[Any, Any]]:
    """A ``context_fn`` for ``torch.utils.checkpoint.checkpoint(...,
    use_reentrant=False, context_fn=...)`` (and transformers'
    ``gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)``)
    under ``emulating``: torch reruns the checkpointed forward in the
    backward pass, outside the ``emulating`` block; this runs the rerun
    under ``emulating`` with the same arguments, so the recomputed products
    round as the first ones did. Give it what the block got."""
    emulating(spec, rules, model=model, min_reduction=min_reduction)  # checks the arguments; not entered
    rules = dict(rules or {})

    def contexts() -> tuple[Any, Any]:
        return _checkpoint_forward(), _emulating(spec, rules, model, min_reduction, recomputing=True)
    return contexts


def _check_rules(rules: Mapping[Any, Any], model: torch.nn.Module | None) -> None:
    check_rules(rules)
    if model is None and any(isinstance(key, str) for key in rules):
        raise ValueError("rules with name patterns need model= (the model whose module names they match)")
    if any(isinstance(getattr(s, "weight", None), Prerounded) for s in rules.values()):
        raise ValueError(_PREROUNDED)


_PREROUNDED = ("emulating takes formats, not a Prerounded weight (a method's marker for the weight of the layer it "
               "rounded, which that layer's quantized module keeps)")


def emulating(spec: QuantSpec, rules: Mapping[Any, QuantSpec | None] | None = None, *,
              model: torch.nn.Module | None = None,
              min_reduction: int = 1) -> contextlib.AbstractContextManager[EmulationReport]:
    """Quantize the products made inside the block (see the module
    docstring); yields the :class:`EmulationReport`, complete when the
    block ends."""
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    if isinstance(spec.weight, Prerounded):
        raise ValueError(_PREROUNDED)
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(min_reduction, bool) or not isinstance(min_reduction, int) or min_reduction < 1:
        raise ValueError(f"min_reduction must be a positive int, got {min_reduction!r}")
    rules = dict(rules or {})
    _check_rules(rules, model)
    if rules and torch.compiler.is_compiling():
        raise RuntimeError(_RULES_UNDER_COMPILE)
    return _emulating(spec, rules, model, min_reduction)


@contextlib.contextmanager
def _emulating(spec: QuantSpec, rules: dict[Any, QuantSpec | None], model: torch.nn.Module | None,
               min_reduction: int, recomputing: bool = False) -> Iterator[EmulationReport]:
    names = {} if model is None else {id(m): name for name, m in model.named_modules()}
    for pattern in unmatched_patterns(rules, list(names.values())):
        warnings.warn(f"rule {pattern!r} matches no module name of the model",
                      stacklevel=_stacklevel_outside(__file__, contextlib.__file__))
    report = EmulationReport(spec)
    mode = _EmulatingMode(spec, rules, names, min_reduction, report)
    mode.recomputing = recomputing
    fast_path = torch.backends.mha.get_fastpath_enabled()
    with contextlib.ExitStack() as stack:
        if rules:
            stack.enter_context(_module_stack(mode.stack))
        set_fast_path(False)
        stack.callback(set_fast_path, fast_path)
        with mode:
            yield report
    _finish(report, model)


_RULES_UNDER_COMPILE = (
    "emulating(rules=...) does not run under torch.compile: its rules follow the running module through global "
    "module hooks, which torch.compile does not trace. Compile without rules, or give the rules to quantize_model "
    "(which compiles), or run this model eagerly")


@contextlib.contextmanager
def _module_stack(stack: list[torch.nn.Module]) -> Iterator[None]:
    """Keep ``stack`` holding the modules whose forward is running."""
    def enter(module, _args):
        if torch.compiler.is_compiling():  # the block entered outside a compiled module: the hooks do not trace
            raise RuntimeError(_RULES_UNDER_COMPILE)
        stack.append(module)

    def leave(module, _args, _output):
        stack.pop()

    handles = (torch.nn.modules.module.register_module_forward_pre_hook(enter),
               torch.nn.modules.module.register_module_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _finish(report: EmulationReport, model: torch.nn.Module | None) -> None:
    if model is not None:
        rounded_by_modules = {id(p) for m in model.modules() if isinstance(m, QuantModule) for p in m.parameters()}
        report.unrounded_parameters = [name for name, p in model.named_parameters()
                                       if id(p) not in report._seen_parameters | rounded_by_modules]
    if report.missed:
        missed = "; ".join(f"{name} ({why})" for name, why in sorted(report.missed))
        message = f"emulating left products in full precision: {missed}; the report counts the calls"
        if torch.compiler.is_compiling():
            _warn_while_tracing(message)
        else:
            warnings.warn(message, stacklevel=_stacklevel_outside(__file__, contextlib.__file__))


def _stacklevel_outside(*files: str) -> int:
    """The stacklevel of the innermost caller frame outside ``files`` (the
    user's ``with`` statement), counted from the caller of warnings.warn."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename in files:
        frame, level = frame.f_back, level + 1
    return level


@torch.compiler.assume_constant_result
def _warn_while_tracing(message: str) -> bool:
    """Warn once, when torch.compile traces the block: dynamo runs this
    function as it traces (warnings.warn itself would break the graph)."""
    warnings.warn(f"{message} (warned as torch.compile traced the code)", stacklevel=2)
    return True
