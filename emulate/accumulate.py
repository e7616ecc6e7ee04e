"""Limited-precision accumulation of a product (``QuantSpec(accumulate=)``).

With a :class:`~lowbit.formats.Datapath` (or a profile name of
:data:`lowbit.formats.DATAPATHS`), every product of a quantized Linear or
matmul, forward and backward, adds its operands' products as that datapath
does, bit for bit (:func:`lowbit.formats.datapath_matmul.datapath_product`,
on the CPU: a GPU's operands go there and back). The operands are the
values the spec rounded them to, so they must be exact in one of the
datapath's input formats (give the roles such a format: a100_fp16 takes
fp16 values); block-scaled and block-promoting datapaths need the block
scales apart from the elements, which only Encoded operands have
(:func:`lowbit.formats.reference_matmul`), and are refused here. The
result, the accumulator's values, is returned in the operands' dtype. The
op ``lowbit::datapath_matmul`` runs it, so torch.compile traces it.

With an element format, a @ b is computed with its reduction dimension K
split into chunks of ``accumulate_chunk`` (the last one zero-padded): each
chunk's partial dot products are formed in the operands' dtype, rounded to
the accumulator format, and added in order to a running sum that is
rounded to the accumulator format after every addition:

    acc = Q(p_0);  acc = Q(acc + Q(p_c)) for c = 1, 2, ...

with Q the accumulator format under the spec's rounding mode (its overflow
policy the format's default: Inf where it has infinities). A bias is added
after the accumulation, in full precision. This models a datapath whose
multiplier array sums ``accumulate_chunk`` products exactly (or in the
operands' precision) before each addition into a narrower accumulator
register. It applies to the forward products of Linear and matmul (and the
products ``emulating`` catches); backward products accumulate in full
precision.
"""

from __future__ import annotations

import functools
import json

import torch
import torch.nn.functional as F

from lowbit.formats import Datapath
from lowbit.formats.datapath_matmul import datapath_product, input_format

from .rounding import round_to
from .spec import QuantSpec

@functools.lru_cache(maxsize=64)
def datapath_of(record: str) -> Datapath:
    """The Datapath of its :attr:`~lowbit.formats.Datapath.json` record."""
    return Datapath.from_dict(json.loads(record))


@torch.library.custom_op("lowbit::datapath_matmul", mutates_args=())
def _datapath_matmul_op(a: torch.Tensor, b: torch.Tensor, datapath: str) -> torch.Tensor:
    """a (..., M, K) @ b (..., K, N), batch dimensions broadcast, added as
    the datapath whose JSON record ``datapath`` is adds (in a's dtype)."""
    path = datapath_of(datapath)
    try:
        a_emin = getattr(input_format(a, path, "the left operand"), "emin", None)
        b_emin = getattr(input_format(b, path, "the right operand"), "emin", None)
    except ValueError as why:
        raise ValueError(f"{why} (QuantSpec: give the roles of this product, input and weight, or grad_output in "
                         f"the backward pass, a format the datapath takes)") from None
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    left = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    right = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    out = torch.stack([datapath_product(x, y.mT, path, a_emin=a_emin, b_emin=b_emin)
                       for x, y in zip(left, right, strict=True)]) \
        if left.shape[0] else torch.empty(0, a.shape[-2], b.shape[-1], dtype=torch.float64)
    return out.reshape(*batch, a.shape[-2], b.shape[-1]).to(device=a.device, dtype=a.dtype)


@_datapath_matmul_op.register_fake
def _(a, b, datapath):
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return a.new_empty((*batch, a.shape[-2], b.shape[-1]))


def accumulated_matmul(a: torch.Tensor, b: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """a (..., M, K) @ b (..., K, N), accumulated as ``spec.accumulate``
    says (see the module docstring); plain ``a @ b`` without one."""
    if spec.accumulate is None:
        return a @ b
    if isinstance(spec.accumulate, Datapath):
        return _datapath_matmul_op(a, b, spec.accumulate.json)
    chunk = spec.accumulate_chunk
    chunks = -(-a.shape[-1] // chunk)
    padding = chunks * chunk - a.shape[-1]
    if padding:
        a, b = F.pad(a, (0, padding)), F.pad(b, (0, 0, 0, padding))
    partials = torch.einsum("...mck,...ckn->...cmn", a.unflatten(-1, (chunks, chunk)), b.unflatten(-2, (chunks, chunk)))
    total = round_to(partials[..., 0, :, :], spec.accumulate, -1, spec)
    for c in range(1, chunks):
        total = round_to(total + round_to(partials[..., c, :, :], spec.accumulate, -1, spec), spec.accumulate, -1, spec)
    return total


def backward_matmul(a: torch.Tensor, b: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """A backward product: as the datapath adds with a datapath accumulator,
    in full precision otherwise."""
    return accumulated_matmul(a, b, spec) if isinstance(spec.accumulate, Datapath) else a @ b
