"""QuantSpec: which format each operand of a matmul-like op is rounded to.

Roles, for y = x @ w.T (+ b) and its backward pass:

- ``input`` (x) and ``weight`` (w): rounded before the forward product,
  each blocked along the product's reduction dimension (x's last axis, w's
  input-feature axis); in the backward pass they are rounded again from
  their full-precision values, blocked along the reduction dimension of the
  product they enter there (w along its output features for the input
  gradient, x along the tokens for the weight gradient).
- ``output`` (y): rounded after the product (last axis).
- ``grad_output``: the incoming gradient, rounded before each backward
  product, blocked along that product's reduction dimension.
- ``grad_input``, ``grad_weight``: the gradients the backward products
  give, rounded along their last axis.

Attention's operands (the products inside ``F.scaled_dot_product_attention``
and ``nn.MultiheadAttention``, for KV-cache and attention-precision studies):

- ``query``, ``key``: the operands of q @ k.mT (blocked along the head
  dimension);
- ``probabilities``, ``value``: the operands of p @ v (blocked along the
  key positions).

Each is ``None`` to take the ``input`` format (an activation format: both
operands of an activation-by-activation product are activations), or a
format of its own (``"fp32"`` keeps one in full precision).

``token_blocks``: how the weight gradient's product (which reduces over
the tokens) blocks its operands. ``"batch"`` (default) flattens every
token of the batch into one axis, so a block may span samples and the
rounding depends on how the batch is split across data-parallel ranks;
``"sample"`` blocks within each sample (along the token axis, -2, of each
``(..., tokens, features)`` input), so the Linear and matmul weight
gradients of DDP and FSDP do not depend on the split (``grad_weight``
still rounds each rank's partial gradient before the ranks add them, and
convolutions block their weight gradient along the batch axis).

``None`` leaves an operand in full precision. ``rounding`` applies to every
role; ``scale_rule`` to the roles whose format is an MX block format
(power-of-two scales), and is ignored by the others. ``accumulate`` (an
element format with ``accumulate_chunk``, or a datapath: a
:class:`~lowbit.formats.Datapath` or a name of
:data:`lowbit.formats.DATAPATHS`) emulates a limited-precision accumulator
in the products (:mod:`lowbit.emulate.accumulate`).

The weight role of a linear layer whose weight a method (GPTQ) rounded
already holds a :class:`~lowbit.emulate.prerounded.Prerounded` marker
(the format and the method): the layer keeps that weight as it is.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch

from lowbit.formats import DATAPATHS, ROUNDING_MODES, BlockFormat, Datapath, ElementFormat, get_datapath, get_format

from .calibration import Calibrated, Observer
from .prerounded import Prerounded

ROLES = ("input", "weight", "output", "grad_input", "grad_weight", "grad_output")
ATTENTION_ROLES = ("query", "key", "value", "probabilities")
TOKEN_BLOCKS = ("batch", "sample")


@dataclass(frozen=True)
class QuantSpec:
    """A format (or None) per operand role; see the module docstring."""

    input: Any = None
    weight: Any = None
    output: Any = None
    grad_input: Any = None
    grad_weight: Any = None
    grad_output: Any = None
    rounding: str = "nearest_even"
    scale_rule: str | None = None
    accumulate: Any = None
    accumulate_chunk: int = 32
    observers: Any = None
    query: Any = None
    key: Any = None
    value: Any = None
    probabilities: Any = None
    token_blocks: str = "batch"

    def __post_init__(self) -> None:
        for role in ROLES + ATTENTION_ROLES:
            value = getattr(self, role)
            if isinstance(value, Prerounded) and role != "weight":
                raise ValueError(f"a method's rounded weight (Prerounded) belongs in the weight role, not {role!r}")
            if value is not None and not isinstance(value, Calibrated | Prerounded):
                object.__setattr__(self, role, get_format(value))
        object.__setattr__(self, "observers", self._checked_observers())
        if self.accumulate is not None:
            object.__setattr__(self, "accumulate", _accumulator(self.accumulate))
        if isinstance(self.accumulate_chunk, bool) or not isinstance(self.accumulate_chunk, int) \
                or self.accumulate_chunk < 1:
            raise ValueError(f"accumulate_chunk must be a positive int, got {self.accumulate_chunk!r}")
        if self.token_blocks not in TOKEN_BLOCKS:
            raise ValueError(f"token_blocks must be one of {', '.join(TOKEN_BLOCKS)}; got {self.token_blocks!r}")
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDING_MODES)}; got {self.rounding!r}")
        if self.scale_rule is not None and not any(self.applies_rule(getattr(self, r)) for r in ROLES + ATTENTION_ROLES):
            raise ValueError(f"scale_rule={self.scale_rule!r} needs an MX block format in some role")

    def _checked_observers(self) -> tuple[tuple[str, Any], ...]:
        pairs = dict(self.observers or {})
        for role, observer in pairs.items():
            if role not in ("input", "weight"):
                raise ValueError(f"observers apply to the input and weight roles, not {role!r}")
            if not isinstance(observer, Observer):
                raise TypeError(f"the {role} observer must be an Observer, got {type(observer).__name__}")
            fmt = _plain(getattr(self, role))
            if not (isinstance(fmt, Calibrated) or isinstance(fmt, ElementFormat)):
                raise ValueError(f"an observer sets the scale of an element format; the {role} role has "
                                 f"{'none' if fmt is None else fmt.name}")
        return tuple(sorted(pairs.items()))

    def observer(self, role: str) -> Any:
        """The role's observer, or None."""
        return dict(self.observers).get(role)

    def applies_rule(self, fmt: Any) -> bool:
        """Whether ``scale_rule`` applies to ``fmt`` (an MX format: power-of-two
        block scales; for a Prerounded weight, the format it was rounded to)."""
        fmt = _plain(fmt)
        return isinstance(fmt, BlockFormat) and fmt.scale.man_bits == 0

    def attention_format(self, role: str) -> Any:
        """The format of an attention operand (one of ATTENTION_ROLES): its
        own, or the input format."""
        own = getattr(self, role)
        return self.input if own is None else own

    def with_operands(self, left: Any, right: Any) -> "QuantSpec":
        """This spec with ``left`` and ``right`` (formats or None) as the
        formats of a product's left (``input``) and right (``weight``)
        operands; every other field as it is."""
        if torch.compiler.is_compiling():  # traced once per graph: dynamo would bypass the cache with a warning
            return _with_operands.__wrapped__(self, left, right)
        return _with_operands(self, left, right)

    def formats(self) -> dict[str, str]:
        """The role -> format name of the roles that are quantized."""
        return {role: getattr(self, role).name for role in ROLES + ATTENTION_ROLES if getattr(self, role) is not None}

    def __str__(self) -> str:
        parts = [f"{role}={name}" for role, name in self.formats().items()]
        if self.token_blocks != "batch":
            parts.append(f"token_blocks={self.token_blocks}")
        if self.rounding != "nearest_even":
            parts.append(f"rounding={self.rounding}")
        if self.scale_rule is not None:
            parts.append(f"scale_rule={self.scale_rule}")
        if self.accumulate is not None:
            parts.append(f"accumulate=datapath {self.accumulate.name}" if isinstance(self.accumulate, Datapath)
                         else f"accumulate={self.accumulate.name} every {self.accumulate_chunk}")
        parts += [f"{role} scale={obs.method}/{obs.granularity}" for role, obs in self.observers]
        return ", ".join(parts) or "nothing quantized"


def _accumulator(spec: Any) -> Any:
    """``accumulate=``: a Datapath (or profile name), else an element format."""
    if isinstance(spec, Datapath) or (isinstance(spec, str) and spec in DATAPATHS):
        datapath = get_datapath(spec)
        if datapath.block_scaled or datapath.promote_every == "block":
            raise ValueError(f"accumulate={datapath.name}: a block-scaled or block-promoting datapath needs Encoded "
                             f"operands (elements and scales apart): use lowbit.formats.reference_matmul")
        return datapath
    fmt = get_format(spec)
    if not isinstance(fmt, ElementFormat):
        raise ValueError(f"accumulate must be an element format (an accumulator holds single numbers) or a "
                         f"datapath (lowbit.formats.DATAPATHS); {fmt.name} is scaled")
    return fmt


def _plain(fmt: Any) -> Any:
    """The format a Prerounded weight was rounded to; any other value as it is."""
    return fmt.format if isinstance(fmt, Prerounded) else fmt


@functools.lru_cache(maxsize=256)
def _with_operands(spec: QuantSpec, left: Any, right: Any) -> QuantSpec:
    if left is spec.input and right is spec.weight:
        return spec
    changed = copy.copy(spec)  # the formats are resolved already: no __post_init__ to run again
    object.__setattr__(changed, "input", left)
    object.__setattr__(changed, "weight", right)
    return changed
