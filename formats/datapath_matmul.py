"""Running a :class:`~lowbit.formats.datapath.Datapath` over matrices:
``datapath_product`` for plain values (the emulation layer's products),
``operand_parts`` for the elements and block scales of an Encoded operand
(what a block-scaled instruction, or a promoting kernel, takes).

The numba kernel computes every output it can hold in an int64 adder; the
few outputs of an exact step whose terms span more than that (values some
2**40 apart in one group) come from the exact reference, so every output is
the datapath's, bit for bit.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from . import backends, datapath_reference
from .datapath import FP32, Datapath
from .encoded import Encoded
from .matmul_operands import check_operand
from .packing import unpack

#: how many products the exact reference computes before a warning says so
SLOW_PRODUCTS = 1 << 20
#: the alignment exponent of a zero or non-finite operand value (int32): a product with one stays far
#: below every other, and a step of such products only is a zero
NO_EXPONENT = -(1 << 29)

def exact_in(values: torch.Tensor, fmt: Any) -> bool:
    """Whether every value is exactly representable in ``fmt`` (NaN and Inf
    count where the format keeps them)."""
    flat = values.reshape(-1).to(torch.float64)
    rounded = fmt.quantize(flat)
    return bool(((rounded == flat) | (torch.isnan(rounded) & torch.isnan(flat))).all())


def input_format(values: torch.Tensor, datapath: Datapath, name: str) -> Any:
    """The first of the datapath's input formats that holds every value of
    an operand (None when the datapath takes any values); ValueError naming
    ``name`` when none does: the instruction would have to round them."""
    if datapath.inputs is None:
        return None
    for fmt in datapath.inputs:
        if exact_in(values, fmt):
            return fmt
    names = ", ".join(f.name for f in datapath.inputs)
    raise ValueError(f"{name} has values that no input format of {datapath.name} ({names}) holds exactly: "
                     f"round the operand to one of them first")


def alignment_exponents(values: np.ndarray, emin: int | None) -> np.ndarray:
    """max(floor(log2 |x|), emin) for each finite nonzero x (no clamp with
    None); the kernel's NO_EXPONENT for zeros and non-finite values."""
    finite = np.isfinite(values) & (values != 0)
    lead = np.frexp(np.where(finite, values, 1.0))[1].astype(np.int64) - 1
    if emin is not None:
        lead = np.maximum(lead, emin)
    return np.where(finite, lead, NO_EXPONENT).astype(np.int32)


def _kernel() -> Any:
    """The ``"cpu"`` backend's datapath matmul, or None where it cannot load."""
    try:
        return backends.get("cpu").datapath
    except backends.BackendUnavailable:
        return None


def datapath_product(a: torch.Tensor, b: torch.Tensor, datapath: Datapath, *, c: torch.Tensor | None = None,
                     a_exponents: np.ndarray | None = None, b_exponents: np.ndarray | None = None,
                     a_emin: int | None = None, b_emin: int | None = None, interval: int | None = None,
                     a_scales: torch.Tensor | None = None, b_scales: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ c)`` (a: M x K, b: N x K, c broadcast to M x N) as
    ``datapath`` computes it, a float64 tensor of accumulator values on the
    CPU. Operand values are taken exactly; the caller checks the datapath's
    ``inputs``.

    Alignment exponents (see :mod:`lowbit.formats.datapath`): ``a_exponents``
    (M x K) where given, else max(floor(log2 |x|), a_emin); b alike. With
    promotion, ``interval`` is the promotion interval (the datapath's
    ``promote_every`` when that is a number) and ``a_scales`` (M x I) and
    ``b_scales`` (N x I) the scales of each interval (ones when None).
    """
    rows, depth = a.shape
    columns = b.shape[0]
    if isinstance(datapath.promote_every, int):
        interval = datapath.promote_every
    if datapath.promote_every is not None and interval is None:
        raise ValueError(f"{datapath.name} promotes every block: the operands must be block-scaled Encoded")
    a64 = a.detach().to("cpu", torch.float64).contiguous().numpy()
    b64 = b.detach().to("cpu", torch.float64).contiguous().numpy()
    c64 = (np.zeros((rows, columns)) if c is None else
           c.detach().to("cpu", torch.float64).expand(rows, columns).contiguous().numpy())
    intervals = -(-depth // interval) if interval else 1
    sa = np.ones((rows, intervals)) if a_scales is None else a_scales.detach().to("cpu", torch.float64).numpy()
    sb = np.ones((columns, intervals)) if b_scales is None else b_scales.detach().to("cpu", torch.float64).numpy()
    a_e = alignment_exponents(a64, a_emin) if a_exponents is None else a_exponents.astype(np.int32)
    b_e = alignment_exponents(b64, b_emin) if b_exponents is None else b_exponents.astype(np.int32)
    kernel = _kernel()
    if kernel is not None:
        out, wide, why = kernel(a64, b64, c64, datapath, a_e, b_e, interval, sa, sb)
    else:
        out, wide, why = np.empty((rows, columns)), np.ones((rows, columns), dtype=np.bool_), "no CPU kernel here"
    if why is not None and rows * columns * depth > SLOW_PRODUCTS:
        warnings.warn(f"{datapath.name}: {rows} x {columns} x {depth} products on the exact reference (about "
                      f"10 us each), not the kernel: {why}", stacklevel=2)
    for m, n in zip(*np.nonzero(wide), strict=True):
        scales = None if not interval else [Fraction(x) * Fraction(y) for x, y in zip(sa[m], sb[n], strict=True)]
        value = datapath_reference.dot(a64[m].tolist(), b64[n].tolist(), datapath, c=float(c64[m, n]),
                                       a_exponents=a_e[m].tolist(), b_exponents=b_e[n].tolist(),
                                       interval=interval, interval_scales=scales)
        out[m, n] = float(value)
    return torch.from_numpy(out)


def operand_parts(x: Encoded, name: str) -> tuple[torch.Tensor, torch.Tensor, int, float | None]:
    """The element values (M x K, float64), block scale values (M x blocks),
    block length along K and float32 tensor scale (None without) of a 2-D
    Encoded in a block format along its last axis: what a block-scaled
    instruction takes. ValueError (naming ``name``) for a format whose
    blocks are more than element times scale (zero points, double
    quantization, tiles, microexponents)."""
    fmt = x.format
    problem = None
    if not hasattr(fmt, "zero_point") or getattr(fmt, "subscales_per_block", 0):
        problem = "its blocks have sub-block shifts"
    elif fmt.zero_point or fmt.double_quant is not None or fmt.block_shape is not None:
        problem = "its blocks have zero points, double-quantized scales or 2-D tiles"
    if problem:
        raise ValueError(f"{name}: a block-scaled datapath takes elements times one scale per block; "
                         f"{fmt.name} is not that ({problem})")
    rows, depth = x.shape
    block = fmt.block_size or max(depth, 1)
    blocks = -(-depth // block)
    codes = unpack(x.elements, fmt.element_code_bits, rows * blocks * block).to(torch.int64)
    elements = fmt.element.decode_exact(codes).reshape(rows, blocks * block)[:, :depth]
    scales = fmt.scale.decode_exact(x.scales.to(torch.int64).reshape(rows, blocks))
    return elements, scales, block, x.tensor_scale


def _exponents(values: torch.Tensor, fmt: Any) -> np.ndarray:
    """Alignment exponents of values of an element or scale format: clamped
    to its emin where it has one (floats), floor(log2 |x|) otherwise."""
    return alignment_exponents(values.to(torch.float64).numpy(), getattr(fmt, "emin", None))


def _operand(x: Any, datapath: Datapath, name: str, depth: int) -> dict[str, Any]:
    """What :func:`datapath_product` takes of one operand (see
    :func:`datapath_matmul`)."""
    if isinstance(x, torch.Tensor):
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a 2-D floating-point tensor or an Encoded, got {x.dim()}-D {x.dtype}")
        values = x.detach().to("cpu", torch.float64)
        fmt = input_format(values, datapath, name)
        return {"values": values, "emin": getattr(fmt, "emin", None)}
    check_operand(x, name)
    if not (datapath.block_scaled or datapath.promote_every == "block"):
        values = x.decode(dtype=torch.float64).cpu()
        fmt = input_format(values, datapath, name)
        return {"values": values, "emin": getattr(fmt, "emin", None)}
    elements, scales, block, tensor_scale = operand_parts(x, name)
    if tensor_scale is not None:
        raise ValueError(f"{name}: {x.format.name} has a per-tensor scale, which {datapath.name} does not apply "
                         f"(a block-scaled instruction takes block scales only)")
    elements, scales = elements.cpu(), scales.cpu()
    input_format(elements, datapath, f"{name}'s elements")
    if datapath.promote_every == "block":
        return {"values": elements, "emin": None, "block": block, "scales": scales}
    expand = scales.repeat_interleave(block, dim=1)[:, :depth]
    exponents = _exponents(elements, x.format.element) + _exponents(expand, x.format.scale)
    return {"values": elements * expand, "exponents": exponents, "block": block}


def datapath_matmul(a: Any, b: Any, bias: torch.Tensor | None, datapath: Datapath) -> torch.Tensor:
    """``A @ B.T (+ bias)`` as ``datapath`` computes it: the engine of
    :func:`lowbit.formats.reference_matmul` with ``datapath=``.

    A (M x K) and B (N x K) are Encoded along K or plain 2-D float tensors
    (values taken exactly). A block-scaled datapath takes the elements and
    block scales of block-format operands (each product's exponent adds
    both scales'); a promoting one with ``promote_every="block"`` sums each
    block's element products and promotes them times the block scales;
    every other datapath multiplies the decoded values. Operand values must
    be exact in one of the datapath's input formats. ``bias`` (N,) is the
    accumulator's initial value C (D = A B^T + C, as a matrix instruction
    takes it) and must be exact in the accumulator format or in fp32 (the
    register it is read from; H100's FP8 accumulator keeps 14 bits of it
    once it is aligned, as any term). The result is a
    float64 tensor of accumulator values on A's device.
    """
    depth = a.shape[1] if isinstance(a, torch.Tensor | Encoded) else None
    if depth is None or b.shape[1] != depth:
        raise ValueError(f"a and b must be 2-D with the same K (their second dimension); "
                         f"got {getattr(a, 'shape', a)} and {getattr(b, 'shape', b)}")
    left, right = _operand(a, datapath, "a", depth), _operand(b, datapath, "b", depth)
    interval = None
    if datapath.promote_every == "block" or datapath.block_scaled:
        if left.get("block") != right.get("block"):
            raise ValueError(f"{datapath.name} needs both operands block-scaled with the same block length along K; "
                             f"got {left.get('block')} and {right.get('block')}")
        interval = left["block"] if datapath.promote_every == "block" else None
    c = None
    if bias is not None:
        c = bias.detach().to("cpu", torch.float64).reshape(1, -1)
        if c.shape[1] != b.shape[0]:
            raise ValueError(f"bias must have N = {b.shape[0]} elements, got {bias.shape}")
        if datapath.accumulator is not None and not (exact_in(c, datapath.accumulator) or exact_in(c, FP32)):
            allowed = " or ".join(dict.fromkeys([datapath.accumulator.name, "fp32"]))
            raise ValueError(f"bias must be exact in {allowed} ({datapath.name}'s accumulator format or the fp32 "
                             f"register it is read from: it is the accumulator's initial value)")
    out = datapath_product(left["values"], right["values"], datapath, c=c, a_exponents=left.get("exponents"),
                           b_exponents=right.get("exponents"), a_emin=left.get("emin"), b_emin=right.get("emin"),
                           interval=interval, a_scales=left.get("scales"), b_scales=right.get("scales"))
    device = a.device if isinstance(a, torch.Tensor) else a.elements.device
    return out.to(device)
