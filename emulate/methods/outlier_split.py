"""Dense-and-sparse outliers: a few outliers kept in a second, wider format
(``sparse_format``, fp16 by default) while the rest takes the spec's
formats, the layer's product computed as the sum of the two products.

Two kinds, for y = x W^T + b with W of shape (out, in):

- ``kind="activation"`` (LLM.int8, Dettmers et al. 2022): at run time, the
  input features (columns of x, over every row of the call) with some
  |x| >= ``threshold`` (6.0; bitsandbytes' test, ``>=``) are outlier
  columns C. Then
  y = Q_out( Q_in(x_D) Q_w(W_D)^T  +  S(x[:, C]) S(W[:, C])^T  +  b ),
  where x_D and W_D are x and W with the columns C set to 0 (they are
  zeroed before rounding, so block and row scales see the rest only), Q_in,
  Q_w, Q_out round to the spec's formats along the reduction axis (as
  :class:`~lowbit.emulate.QuantLinear` does, accumulated as the spec says),
  and S rounds to the sparse format. No column at the threshold: exactly
  the quantized Linear.
- ``kind="weight"`` (SpQR, Dettmers et al. 2023; SqueezeLLM, Kim et al.
  2023): the weight elements M with the ``weight_fraction`` largest
  magnitudes (the floor(fraction * out * in) largest |w|; ties to the
  lower row-major position; NaN counts as the largest), or with
  |w| >= ``threshold``, chosen from the current weight whenever it
  changes. Then
  y = Q_out( Q_in(x) Q_w(W_D)^T  +  S(x) S(W_M)^T  +  b ),
  with W_D = W with M set to 0 (zeroed before rounding) and W_M the
  sparse matrix of M's values; the sparse product multiplies the stored
  entries only (a sparse-times-dense product).
- ``kind="sensitivity"`` (SpQR's criterion): as ``"weight"``, with the
  elements ranked by their sensitivity s_ij = (w_ij - Q_w(W)_ij)^2 /
  [H^-1]_jj instead of |w_ij|: the output error that rounding w_ij alone
  to nearest costs on the calibration inputs once the other weights of
  its row absorb it (the Optimal Brain Surgeon saliency GPTQ minimises).
  Q_w(W) is the whole weight rounded as the quantized module rounds it
  (round to nearest), and H = 2 X^T X / rows is the layer's calibration
  Hessian damped as GPTQ damps it (``damp`` times its mean diagonal
  added; a dead input's H_jj set to 1 first), inverted in float64 once
  when ``outliers`` runs; the ranking follows the weight when it changes.
  SpQR chooses its outliers inside its GPTQ loop, from the error-updated
  weights; here the choice is made once from the weight as it is, and a
  weight that already holds GPTQ's rounding (no rounding error left to
  weigh) cannot take it (``kind="weight"`` can).

The sparse product takes both operands in the sparse format and is formed
in the input's dtype; ``sparse_format=None`` keeps them as they are. A
weight observer's scale is taken from W_D; an input observer's, under
``calibrate`` (run it after ``outliers``, as after ``quantize_model``),
from x_D. Gradients pass straight through every rounding (the spec's
gradient formats do not apply in these layers: ``outliers`` warns).

The layers are quantized modules (:class:`OutlierLinear`,
:class:`OutlierConv1D`), swapped in by :func:`outliers`:
``restore_model`` puts the layers they wrap back (and undoes the other
methods); ``quantize_model`` on the model afterwards re-wraps every
layer under its new spec as a plain quantized module, so the split is gone
(apply ``outliers`` last; again after re-quantizing).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lowbit.formats import ElementFormat, get_format

from ..calibration import Calibrated
from ..changes import Change, on_undo, record, undo_changes, working_model
from ..linear import linear_product
from ..modules import QuantConv1D, QuantLinear, QuantModule
from ..prerounded import Prerounded, holds, marked_spec
from ..registry import quantized
from ..rounding import quantized_module, round_to
from ..spec import QuantSpec
from .costs import layer_error, weight_bits
from .error_feedback import inverse_hessian_diagonal
from .inputs import LayerInputs, layer_inputs
from .layers import linear_layers, plain

METHOD = "outliers"
KINDS = ("activation", "weight", "sensitivity")
INDEX_BITS = 32  # a column index, a CSR row offset
GRADIENT_ROLES = ("grad_input", "grad_weight", "grad_output")


@dataclasses.dataclass(frozen=True)
class Split:
    """Which outliers a layer keeps apart: ``kind``, and ``threshold`` or
    (weights only) ``fraction``, in ``sparse_format`` (None: unrounded)."""

    kind: str
    threshold: float | None = None
    fraction: float | None = None
    sparse_format: Any = "fp16"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind == "activation" and self.fraction is not None:
            raise ValueError("weight_fraction applies to kind='weight' or 'sensitivity'; activation outliers take a "
                             "threshold")
        if (self.threshold is None) == (self.fraction is None):
            raise ValueError("give exactly one of threshold and weight_fraction")
        if self.threshold is not None:
            _check_number("threshold", self.threshold, lambda v: v > 0, "a positive finite number")
        if self.fraction is not None:
            _check_number("weight_fraction", self.fraction, lambda v: 0 <= v <= 1, "a number in [0, 1]")
        if self.sparse_format is not None:
            fmt = get_format(self.sparse_format)
            if not isinstance(fmt, ElementFormat):
                raise ValueError(f"sparse_format must be an element format (each outlier is stored alone); "
                                 f"{fmt.name} is scaled")
            object.__setattr__(self, "sparse_format", fmt)

    def describe(self) -> str:
        measure = {"activation": "|x|", "weight": "|w|", "sensitivity": "sensitivity"}[self.kind]
        rule = (f"{measure} >= {self.threshold:g}" if self.threshold is not None
                else f"the {self.fraction:.4g} largest {measure}")
        return f"{self.kind} outliers ({rule}) in {_name(self.sparse_format)}"


class OutlierSplit:
    """The dense-and-sparse product of a quantized linear layer (mixed into
    QuantLinear and QuantConv1D; see the module docstring)."""

    def __init__(self, module: torch.nn.Module, spec: QuantSpec, split: Split,
                 inverse_hessian_diagonal: torch.Tensor | None = None) -> None:
        if not isinstance(split, Split):
            raise TypeError(f"split must be a Split, got {type(split).__name__}")
        if (split.kind == "sensitivity") != (inverse_hessian_diagonal is not None):
            raise ValueError("inverse_hessian_diagonal (diag of the layer's damped calibration H^-1) is given with, "
                             "and only with, sensitivity outliers")
        if split.kind == "sensitivity" and isinstance(spec.weight, Prerounded):
            raise ValueError(f"its weight holds {spec.weight.method}'s rounding, which leaves no rounding error for "
                             f"sensitivity outliers to weigh (kind='weight' ranks by magnitude)")
        super().__init__(module, spec)
        self.split = split
        self.inverse_hessian_diagonal = inverse_hessian_diagonal
        self._parts: tuple[Any, Any] | None = None  # (key, parts) of the last inference call

    def rewrapped(self, spec: QuantSpec) -> "OutlierSplit":
        return type(self)(self.original, spec, self.split, self.inverse_hessian_diagonal)

    # -- which outliers -------------------------------------------------------------------
    def outlier_columns(self, x: torch.Tensor) -> torch.Tensor:
        """The input features (bool, in_features) with |x| >= threshold in some row of x."""
        rows = x.detach().reshape(-1, x.shape[-1])
        return (rows.abs() >= self.split.threshold).any(dim=0)

    def outlier_weights(self) -> torch.Tensor:
        """The outlier elements of the weight (bool, (out, in) as F.linear takes it)."""
        magnitude = self.sensitivity() if self.split.kind == "sensitivity" else self.matrix(self.weight.detach()).abs()
        if self.split.threshold is not None:
            return magnitude >= self.split.threshold
        count = math.floor(self.split.fraction * magnitude.numel())
        order = torch.sort(magnitude.reshape(-1), descending=True, stable=True).indices[:count]
        mask = torch.zeros(magnitude.numel(), dtype=torch.bool, device=magnitude.device)
        mask[order] = True
        return mask.reshape(magnitude.shape)

    def sensitivity(self) -> torch.Tensor:
        """SpQR's (w_ij - Q_w(W)_ij)^2 / [H^-1]_jj of every weight element
        (float64, (out, in) as F.linear takes it; see the module docstring)."""
        weight = self.matrix(self.weight.detach())
        with quantized_module():
            error = weight.to(torch.float64) - self._dense(weight).to(torch.float64)
        return error.square() / self.inverse_hessian_diagonal.to(error.device)

    # -- the product ----------------------------------------------------------------------
    def recorded(self, x: torch.Tensor) -> bool:
        if self._recording and self.split.kind == "activation":  # the input observer sees x_D
            x = torch.where(self.outlier_columns(x), torch.zeros_like(x), x)
        return super().recorded(x)

    @torch.compiler.disable(reason="lowbit's outlier layers choose their outliers from the data and run eagerly: "
                                   "torch.compile breaks the graph around them (not possible with fullgraph=True)")
    def forward(self, input: torch.Tensor) -> torch.Tensor:  # torch's name: callers may pass input=
        x = input
        if self.recorded(x):
            return self.original.forward(x)  # its hooks ran already: they are ours
        spec = self.active_spec()
        training = self.training_step(x)
        weight = self.matrix(self.weight if training else self.weight.detach())
        with quantized_module():
            if self.split.kind == "activation":
                columns = self.outlier_columns(x)
                index = columns.nonzero().reshape(-1)
                dense_weight = self._cached(tuple(index.tolist()), training,
                                            lambda: self._dense(torch.where(columns, 0.0, weight)))
                y = linear_product(round_to(torch.where(columns, 0.0, x), spec.input, -1, spec), dense_weight,
                                   self.bias, spec)
                if len(index):
                    y = y + F.linear(self._sparse(x.index_select(-1, index)),
                                     self._sparse(weight.index_select(1, index)))
            else:
                dense_weight, sparse_weight = self._cached((), training, lambda: self._weight_parts(weight))
                y = linear_product(round_to(x, spec.input, -1, spec), dense_weight, self.bias, spec)
                if sparse_weight._nnz():
                    rows = self._sparse(x).reshape(-1, x.shape[-1])
                    y = y + torch.sparse.mm(sparse_weight, rows.T).T.reshape(y.shape)
            return round_to(y, spec.output, -1, spec)

    def _weight_parts(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q_w(W_D), S(W_M) as a sparse COO matrix)."""
        mask = self.outlier_weights()
        index = mask.nonzero().T
        values = self._sparse(weight[mask])
        sparse = torch.sparse_coo_tensor(index, values, tuple(weight.shape), check_invariants=False,
                                         is_coalesced=True)
        return self._dense(torch.where(mask, 0.0, weight)), sparse

    def _dense(self, dense: torch.Tensor) -> torch.Tensor:
        """Q_w(W_D): the weight format along the input features, with the
        observer's scale (if any) taken from W_D; W_D as it is while the
        weight holds a method's rounding (a Prerounded weight role: GPTQ's)."""
        fmt, observer = self.spec.weight, self.spec.observer("weight")
        if isinstance(fmt, Prerounded):
            if holds(self.weight, fmt):
                return dense
            fmt = fmt.format
        if observer is not None:
            fmt = Calibrated(fmt, observer.scale(dense.detach(), fmt, self._rounder(fmt)))
        return round_to(dense, fmt, 1, self.spec)

    def _sparse(self, t: torch.Tensor) -> torch.Tensor:
        return round_to(t, self.split.sparse_format, -1, self.spec)

    def _cached(self, key: tuple[int, ...], training: bool, compute: Callable[[], Any]) -> Any:
        """compute(), kept for inference until the weight or ``key`` (the outlier columns) changes."""
        if training:
            return compute()
        key = (key, self._weight_key())
        if self._parts is None or self._parts[0] != key:
            self._parts = (key, compute())
        return self._parts[1]

    # -- storage --------------------------------------------------------------------------
    def sparse_bits(self, columns: int | None = None) -> float:
        """Bits per weight element the sparse part adds: for weight
        outliers, CSR storage, each outlier's value in the sparse format
        and a 32-bit column index, and a 32-bit row offset per output row
        (out + 1 of them); for activation outliers, ``columns`` outlier
        columns of W stored whole in the sparse format with a 32-bit index
        each (the columns differ from call to call: give the count seen)."""
        out_features, in_features = self.matrix(self.weight).shape
        value = self.weight.element_size() * 8 if self.split.sparse_format is None else self.split.sparse_format.bits
        if self.split.kind != "activation":
            count = int(self.outlier_weights().sum())
            total = count * (value + INDEX_BITS) + (out_features + 1) * INDEX_BITS
        else:
            if columns is None:
                raise ValueError("activation outliers: give the number of outlier columns")
            total = columns * (out_features * value + INDEX_BITS)
        return total / (out_features * in_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.split.describe()}"


class OutlierLinear(OutlierSplit, QuantLinear):
    """nn.Linear computed as a dense and a sparse product (:class:`OutlierSplit`)."""


class OutlierConv1D(OutlierSplit, QuantConv1D):
    """transformers' Conv1D computed as a dense and a sparse product (:class:`OutlierSplit`)."""


def outliers(model: torch.nn.Module, spec: QuantSpec | None, batches: Iterable[Any], *, kind: str = "activation",
             threshold: float | None = None, weight_fraction: float | None = None, sparse_format: Any = "fp16",
             rules: Mapping[Any, QuantSpec | None] | None = None,
             forward: Callable[[torch.nn.Module, Any], Any] | None = None, inplace: bool = True,
             samples: int = 512, damp: float = 0.01) -> torch.nn.Module:
    """Swap each linear layer (chosen by ``spec`` and ``rules`` as
    quantize_model chooses) for its dense-and-sparse module under its spec
    (see the module docstring). ``kind="activation"`` takes ``threshold``
    (default 6.0); ``kind="weight"`` and ``kind="sensitivity"`` take
    ``weight_fraction`` or ``threshold`` (exactly one). ``sparse_format``:
    an element format, or None. ``damp`` (sensitivity only): the fraction
    of H's mean diagonal added to its diagonal, as GPTQ's. Use the return value (a bare layer is replaced by its module);
    ``inplace=False`` changes a deep copy.

    ``batches`` (run by ``forward``) give each layer's input rows to
    measure; the log gets a Change per layer: ``error_before`` the
    quantized Linear's relative output error under the spec (input rounded
    too: :func:`~lowbit.emulate.methods.costs.layer_error`), ``error_after``
    the split layer's, on the first ``samples`` rows; the detail says the
    outliers found and the bits per weight element, dense + sparse
    (:meth:`OutlierSplit.sparse_bits`; activation columns: those at the
    threshold in some calibration row). A layer that cannot take the split
    is warned about and left as it is."""
    if kind == "activation" and threshold is None and weight_fraction is None:
        threshold = 6.0
    split = Split(kind, threshold, weight_fraction, sparse_format)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    _check_number("damp", damp, lambda v: v >= 0, "a finite number >= 0 (a fraction of H's mean diagonal)")
    model = working_model(model, inplace)
    layers = linear_layers(model, spec, rules)
    inputs = layer_inputs(model, {name: layer for name, (layer, _) in layers.items()}, batches, samples=samples,
                          gram=split.kind == "sensitivity", forward=forward)
    root, left, graded = model, [], []
    for name, (layer, layer_spec) in layers.items():
        inner = plain(layer)
        dense_bits = weight_bits(inner, layer_spec)
        layer_spec = marked_spec(inner, layer_spec)  # a weight GPTQ rounded to this format keeps GPTQ's values
        cls = OutlierLinear if QuantLinear.accepts(inner) else OutlierConv1D
        try:
            diagonal = (inverse_hessian_diagonal(inputs[name].hessian(), damp) if split.kind == "sensitivity"
                        else None)
            new, measured = cls(inner, layer_spec, split, diagonal), cls(inner, layer_spec, split, diagonal)
        except ValueError as why:
            left.append(f"{name or '(model)'} ({why})")
            continue
        if any(getattr(layer_spec, role) is not None for role in GRADIENT_ROLES):
            graded.append(name or "(model)")
        rows = inputs[name].samples
        before, after = layer_error(quantized(inner, layer_spec), rows), layer_error(measured, rows)
        found, extra, storage = _sparse_part(new, inputs[name])
        if name:
            model.set_submodule(name, new)
        else:
            model = new
        record(model, Change(name, METHOD, f"{layer_spec.weight.name} + {_name(split.sparse_format)}", before, after,
                             f"{found}; {dense_bits:.4g} + {extra:.4g} = {dense_bits + extra:.4g} bits/weight "
                             f"({storage}); output errors with the input rounded too"))
    if model is not root and isinstance(root, QuantModule):  # a bare quantized layer replaced: its log goes too
        on_undo(model, lambda: undo_changes(root))
    if left:
        warnings.warn(f"outliers left these layers as they are: {'; '.join(left)}", stacklevel=2)
    if graded:
        warnings.warn(f"outlier layers round the forward product only; the gradient formats of the spec do not "
                      f"apply in {', '.join(graded)}", stacklevel=2)
    return model


def _sparse_part(module: OutlierSplit, stats: LayerInputs) -> tuple[str, float, str]:
    """What a layer's sparse part holds: the outliers found (activation
    columns: those at the threshold in some calibration row), the bits per
    weight element it adds and how they are counted."""
    split = module.split
    if split.kind == "activation":
        columns = int((stats.absmax >= split.threshold).sum())
        return (f"{columns} of {stats.features} input columns at |x| >= {split.threshold:g} in some calibration row",
                module.sparse_bits(columns), "outlier columns of W whole, a 32-bit index each")
    count = int(module.outlier_weights().sum())
    return (f"{count} outlier weights ({100 * count / module.weight.numel():.3g}%)",
            module.sparse_bits(), "CSR: values, 32-bit column indices, 32-bit row offsets")


def _check_number(name: str, value: Any, ok: Callable[[float], bool], allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and ok(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _name(fmt: Any) -> str:
    return "unrounded" if fmt is None else fmt.name
