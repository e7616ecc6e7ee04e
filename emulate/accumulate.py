"""Limited-precision accumulation of a product (``QuantSpec(accumulate=)``).

a @ b is computed with its reduction dimension K split into chunks of
``accumulate_chunk`` (the last one zero-padded): each chunk's partial dot
products are formed in the operands' dtype, rounded to the accumulator
format, and added in order to a running sum that is rounded to the
accumulator format after every addition:

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

import torch
import torch.nn.functional as F

from .rounding import round_to
from .spec import QuantSpec


def accumulated_matmul(a: torch.Tensor, b: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """a (..., M, K) @ b (..., K, N), accumulated as ``spec.accumulate``
    says (see the module docstring); plain ``a @ b`` without one."""
    if spec.accumulate is None:
        return a @ b
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
