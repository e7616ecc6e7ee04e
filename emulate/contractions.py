"""Products written as contractions, computed as batched matmuls so that
their operands round like a matmul's: ``torch.tensordot``,
``torch.einsum`` and ``torch.linalg.multi_dot``, for ``emulating``.

Each pairwise contraction becomes ``(batch, M, K) @ (batch, K, N)``: the
labels both operands share and a later term (or the output) keeps are the
batch; the labels both share and nothing keeps are contracted, flattened
into K in the order they appear in the left operand, so blocks run along
the contracted dimensions (the last contracted dimension fastest). Labels
only one operand has and nothing keeps are summed out first, in full
precision (a sum, not a product). ``einsum`` with three or more operands
contracts from the left, as ``torch.einsum`` does without opt_einsum, and
``multi_dot`` multiplies from the left; the intermediate results are
activations. A contraction lowbit cannot write as a matmul (a label
repeated within one operand: a diagonal) raises :class:`Uncovered`.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence

import torch

Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""product(a3, b3, a, b): a3 (B, M, K) @ b3 (B, K, N) rounded with the roles of the user's operands a and b."""


class Uncovered(Exception):
    """A call lowbit runs in full precision; the message says why.
    ``missed``: a product lowbit cannot round (warned), rather than one
    that is not a rounding matter (integer operands)."""

    def __init__(self, reason: str, *, missed: bool = True) -> None:
        super().__init__(reason)
        self.missed = missed


def einsum(equation: str, operands: Sequence[torch.Tensor], product: Product) -> torch.Tensor:
    """torch.einsum(equation, *operands) with every pairwise contraction a
    rounded product (see the module docstring)."""
    if len(operands) < 2:
        raise Uncovered("one operand: no product")
    inputs, output = _parse(equation, [t.dim() for t in operands])
    for labels in inputs:
        if len(set(labels)) != len(labels):
            raise Uncovered(f"a label repeated within one operand ({labels!r}: a diagonal)")
    terms = list(zip(operands, inputs))
    while len(terms) > 1:
        (a, left), (b, right) = terms[0], terms[1]
        kept = set(output).union(*(labels for _, labels in terms[2:]))
        terms = [_contract(a, left, b, right, kept, product)] + terms[2:]
    result, labels = terms[0]
    result, labels = _sum_out(result, labels, set(output))
    return result.permute([labels.index(c) for c in output])


def tensordot(a: torch.Tensor, b: torch.Tensor, dims: int | Sequence, product: Product) -> torch.Tensor:
    """torch.tensordot(a, b, dims) as one rounded product."""
    if isinstance(dims, torch.Tensor):
        dims = dims.tolist()
    if isinstance(dims, int):
        if not 0 <= dims <= min(a.dim(), b.dim()):
            raise ValueError(f"dims must lie in [0, {min(a.dim(), b.dim())}], got {dims}")
        dims_a, dims_b = list(range(a.dim() - dims, a.dim())), list(range(dims))
    else:
        dims_a, dims_b = ([d] if isinstance(d, int) else list(d) for d in dims)
    dims_a, dims_b = [d % a.dim() for d in dims_a], [d % b.dim() for d in dims_b]
    letters = iter(string.ascii_letters)
    left = [next(letters) for _ in range(a.dim())]
    right = [next(letters) for _ in range(b.dim())]
    for da, db in zip(dims_a, dims_b, strict=True):
        right[db] = left[da]
    kept = {c for c in left + right if (c in left) != (c in right)}
    result, labels = _contract(a, "".join(left), b, "".join(right), kept, product)
    order = [c for c in left if c in kept] + [c for c in right if c in kept]
    return result.permute([labels.index(c) for c in order])


def multi_dot(tensors: Sequence[torch.Tensor], product: Product) -> torch.Tensor:
    """torch.linalg.multi_dot(tensors), multiplied from the left (the first
    and last may be vectors)."""
    if len(tensors) < 2:
        raise ValueError("multi_dot needs at least two tensors")
    result = tensors[0]
    for t in tensors[1:]:
        left = result.unsqueeze(0) if result.dim() == 1 else result
        right = t.unsqueeze(-1) if t.dim() == 1 else t
        out = product(left.unsqueeze(0), right.unsqueeze(0), result, t)[0]
        out = out.squeeze(0) if result.dim() == 1 else out
        result = out.squeeze(-1) if t.dim() == 1 else out
    return result


def _contract(a: torch.Tensor, left: str, b: torch.Tensor, right: str, kept: set[str],
              product: Product) -> tuple[torch.Tensor, str]:
    """a (labels ``left``) times b (``right``), keeping the labels in ``kept``
    (and the batch labels): the result and its labels (batch, left, right)."""
    a_summed, left = _sum_out(a, left, set(right) | kept)
    b_summed, right = _sum_out(b, right, set(left) | kept)
    batch = [c for c in left if c in right and c in kept]
    contracted = [c for c in left if c in right and c not in kept]
    only_left = [c for c in left if c not in right]
    only_right = [c for c in right if c not in left]
    size = {c: _broadcast(a_summed.shape[left.index(c)] if c in left else 1,
                          b_summed.shape[right.index(c)] if c in right else 1) for c in left + right}

    def arranged(t: torch.Tensor, labels: str, order: list[str], groups: list[list[str]]) -> torch.Tensor:
        t = t.permute([labels.index(c) for c in order]).expand([size[c] for c in order])
        return t.reshape([math.prod(size[c] for c in group) for group in groups])

    a3 = arranged(a_summed, left, batch + only_left + contracted, [batch, only_left, contracted])
    b3 = arranged(b_summed, right, batch + contracted + only_right, [batch, contracted, only_right])
    out = product(a3, b3, a, b).reshape([size[c] for c in batch + only_left + only_right])
    return out, "".join(batch + only_left + only_right)


def _broadcast(a: int, b: int) -> int:
    """The size two dimensions broadcast to (1 gives way; 0 stays)."""
    return b if a == 1 else a


def _sum_out(t: torch.Tensor, labels: str, needed: set[str]) -> tuple[torch.Tensor, str]:
    """t with the dimensions whose labels are not needed summed away."""
    gone = [i for i, c in enumerate(labels) if c not in needed]
    if not gone:
        return t, labels
    return t.sum(dim=gone), "".join(c for c in labels if c in needed)


def _parse(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """The labels of each operand and of the output, an ellipsis expanded to
    labels of its own (aligned from the right, as broadcasting aligns)."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    inputs = lhs.split(",")
    if len(inputs) != len(ranks):
        raise ValueError(f"einsum equation {equation!r} names {len(inputs)} operands; {len(ranks)} were given")
    spare = [c for c in string.ascii_letters if c not in equation]
    widths = [rank - (len(term) - 3) if "..." in term else 0 for term, rank in zip(inputs, ranks)]
    width = max(widths, default=0)
    ellipsis = spare[:width]
    expanded = [term.replace("...", "".join(ellipsis[width - w:])) for term, w in zip(inputs, widths)]
    for term, rank in zip(expanded, ranks):
        if len(term) != rank:
            raise ValueError(f"einsum term {term!r} does not match an operand of {rank} dimensions")
    if arrow:
        output = rhs.replace("...", "".join(ellipsis))
    else:
        counts = {c: "".join(expanded).count(c) for c in "".join(expanded)}
        output = "".join(ellipsis) + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ellipsis))
    return expanded, output
