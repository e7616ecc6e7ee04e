"""The reference product of two encoded operands: decode, then multiply in
float64, or add the products as a hardware datapath does
(``datapath=``, :mod:`lowbit.formats.datapath`). It is the oracle that
:func:`lowbit.cuda.mx_matmul` is checked against, and what any MX matmul
should approach."""

from __future__ import annotations

import torch

from .datapath import Datapath
from .datapath_matmul import datapath_matmul
from .datapath_profiles import get_datapath
from .encoded import Encoded
from .matmul_operands import check_operand, k_block


def reference_matmul(a: Encoded | torch.Tensor, b: Encoded | torch.Tensor, bias: torch.Tensor | None = None, *,
                     backend: str | None = None, datapath: Datapath | str | None = None) -> torch.Tensor:
    """``A @ B.T (+ bias)`` in float64, for A (M x K) and B (N x K) encoded in
    blocks along K (``axis=1``), on their device.

    With ``datapath`` (a :class:`~lowbit.formats.Datapath` or a name of
    :data:`~lowbit.formats.DATAPATHS`) the products are added as that
    datapath adds them, bit for bit, and A and B may also be plain 2-D
    float tensors (their values taken exactly); see
    :func:`lowbit.formats.datapath_matmul.datapath_matmul` for operands,
    inputs and the bias (the accumulator's initial value there). The
    result holds the accumulator's values as float64.

    Without one:
    Each element is decoded exactly (a float64 holds every value of every
    lowbit format times its scale) and torch's float64 matmul sums the
    products, so the result carries float64 rounding only (relative 2**-53
    per addition), far below the float32 rounding of any fast MX matmul.
    NaN and Inf propagate as IEEE arithmetic says (a NaN block's scale
    makes its products NaN). ``backend`` decodes the operands (a name of
    :func:`lowbit.backends`; None: the device's default), as in
    :meth:`Encoded.decode`; every backend decodes alike.
    """
    if datapath is not None:
        return datapath_matmul(a, b, bias, get_datapath(datapath))
    check_operand(a, "a")
    check_operand(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same K (their second dimension); got {a.shape} and {b.shape}")
    product = a.decode(dtype=torch.float64, backend=backend) @ b.decode(dtype=torch.float64, backend=backend).T
    return product if bias is None else product + bias.to(product)


def summation_bound(a: Encoded, b: Encoded, *, roundings_per_block: int = 2,
                    unit: float = 2.0 ** -24) -> torch.Tensor:
    """A bound on ``|C - reference_matmul(a, b)|`` (float64, M x N) for any C
    computed as MX matmuls compute it: each block's products summed in fp32
    with at most ``roundings_per_block`` roundings, then each block's partial
    sum, times its two scales, added to an fp32 total in block order with
    one rounding:

        (blocks + roundings_per_block + 1) * unit * (|A| @ |B|.T) + (blocks + roundings_per_block) * 2**-149

    the classical bound of recursive summation (a rounding error of at most
    ``unit`` relative to each running sum, which is at most the sum of the
    magnitudes), with one unit to spare for second-order terms and an
    absolute 2**-149 per rounding below fp32's normal range. ``unit``:
    2**-24 for rounding to nearest, 2**-23 for an adder that truncates.
    """
    check_operand(a, "a")
    check_operand(b, "b")
    blocks = -(-a.shape[1] // k_block(a))
    magnitudes = a.decode(dtype=torch.float64).abs() @ b.decode(dtype=torch.float64).abs().T
    return ((blocks + roundings_per_block + 1) * unit * magnitudes
            + (blocks + roundings_per_block) * 2.0 ** -149)
