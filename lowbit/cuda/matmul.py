"""The MX matmul on tensor cores: :func:`mx_matmul`.

Every value of an MX element format is exact in some tensor-core input
type: FP4 (E2M1), FP6 E2M3 and MXINT8 elements are integers in int8 once
multiplied by 2, 8 and 64; every FP element is an fp16 number; E4M3, E3M2,
E2M3 and E2M1 elements are E4M3 numbers and E5M2 elements E5M2 numbers. An
operand is prepared (the op ``mx_prepare``, one pass over its codes) by
mapping each element code to its tensor-core input (a table per element
format and type) and each block's scale code to a float32 power of two
(times 2**-shift for the int8 multiple). The kernel
(``cuda/mx_matmul.cu``) then multiplies on tensor cores, with the block
scales applied per block in fp32 (``cuda/mx_matmul_math.cuh``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from lowbit.formats import BlockFormat, Encoded, backends
from lowbit.formats.matmul_operands import check_operand

#: the tensor-core input types, numbered as MmaType in cuda/mx_matmul_math.cuh
TENSOR_CORE_TYPES = {"int8": 0, "fp16": 1, "e4m3": 2, "e5m2": 3}
#: the instructions mx_matmul can run on, by their input kind
INSTRUCTIONS = ("int8", "fp16", "fp8")
OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: the longest block the int8 instruction takes (INT8_BLOCK_MAX in
#: cuda/mx_matmul_math.cuh): a block's int32 partial sum, at most 1024
#: products of magnitude <= 2**14, converts to fp32 exactly
INT8_BLOCK_MAX = 1024
#: the compute capability the MX matmul needs (cp.async, tensor-core MMAs), and FP8 inputs
MATMUL_CAPABILITY, FP8_CAPABILITY = (8, 0), (8, 9)
_TORCH_TYPES = {"fp16": torch.float16, "e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


@dataclass(frozen=True)
class ElementTable:
    """An element format's codes as inputs of one tensor-core type: each
    code's input (uint8 bytes, two per code for fp16) is its value times
    2**shift."""

    inputs: torch.Tensor
    shift: int

    @property
    def is_identity(self) -> bool:
        """Whether each 8-bit code is its own input byte (FP8 elements as FP8, MXINT8 as int8)."""
        return self.inputs.shape == (256, 1) and torch.equal(self.inputs.flatten(), torch.arange(256).to(torch.uint8))


def _decoded_codes(element) -> torch.Tensor:
    return element.decode(torch.arange(1 << element.nbits), dtype=torch.float64)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


@functools.cache
def element_tables(element) -> dict[str, ElementTable]:
    """The tensor-core types that hold every value of ``element`` (NaN and
    Inf included), with their tables; none for elements of over 16 bits."""
    if element.nbits > 16:
        return {}
    values = _decoded_codes(element)
    tables = {}
    for name, dtype in _TORCH_TYPES.items():
        inputs = values.to(dtype)
        if _same(inputs.to(torch.float64), values):
            tables[name] = ElementTable(inputs.view(torch.uint8).reshape(len(values), -1), 0)
    finite = values[values.isfinite()]
    if len(finite) == len(values):
        # the least shift that makes every value an integer: the largest exponent of a denominator
        shift = max(v.as_integer_ratio()[1].bit_length() - 1 for v in finite.tolist())
        integers = finite * 2.0 ** shift
        if bool((integers >= -128).all() and (integers <= 127).all()):
            tables["int8"] = ElementTable(integers.to(torch.int8).view(torch.uint8).reshape(-1, 1), shift)
    return tables


@functools.cache
def scale_table(scale, shift: int) -> torch.Tensor:
    """Each scale code's value times 2**-shift, as float32: powers of two, NaN."""
    values = _decoded_codes(scale) * 2.0 ** -shift
    table = values.to(torch.float32)
    finite = values[values.isfinite()]
    powers = bool((finite > 0).all()) and all(math.frexp(v)[0] == 0.5 for v in finite.tolist())
    if not powers or not _same(table.to(torch.float64), values) or bool(values.isinf().any()):
        raise ValueError(f"mx_matmul needs scales that are powers of two within float32's range; {scale.name} "
                         f"with elements scaled by 2**{shift} has others")
    return table


def operand_problem(fmt) -> str | None:
    """Why operands in ``fmt`` cannot enter :func:`mx_matmul`, or None."""
    if not isinstance(fmt, BlockFormat):
        return f"{getattr(fmt, 'name', fmt)} is not a BlockFormat (mx_matmul takes MX formats)"
    if fmt.block_size % 32:
        return f"{fmt.name} has blocks of {fmt.block_size}; mx_matmul needs blocks of a multiple of 32"
    if fmt.tensor_scale:
        return f"{fmt.name} has a per-tensor scale; mx_matmul takes block scales only"
    if not element_tables(fmt.element):
        return f"{fmt.name}'s elements fit no tensor-core input type"
    try:
        for table in element_tables(fmt.element).values():
            scale_table(fmt.scale, table.shift)
    except ValueError as why:
        return str(why)
    return None


def choose_types(a_fmt: BlockFormat, b_fmt: BlockFormat, instruction: str | None) -> tuple[str, str]:
    """The tensor-core input types of A and B for ``instruction`` (None: int8
    where both operands fit it and blocks are at most INT8_BLOCK_MAX long, else fp16)."""
    a_tables, b_tables = element_tables(a_fmt.element), element_tables(b_fmt.element)
    short_blocks = a_fmt.block_size <= INT8_BLOCK_MAX
    if instruction is None:
        instruction = "int8" if "int8" in a_tables and "int8" in b_tables and short_blocks else "fp16"
    if instruction not in INSTRUCTIONS:
        raise ValueError(f"instruction must be None or one of {', '.join(INSTRUCTIONS)}; got {instruction!r}")
    candidates = ("e4m3", "e5m2") if instruction == "fp8" else (instruction,)
    chosen = []
    for fmt, tables in ((a_fmt, a_tables), (b_fmt, b_tables)):
        fits = [c for c in candidates if c in tables]
        if not fits:
            raise ValueError(f"{fmt.name}'s elements are not all {instruction} numbers; they fit "
                             f"{', '.join(sorted(tables)) or 'no tensor-core type'}")
        chosen.append(fits[0])
    if instruction == "int8" and not short_blocks:
        raise ValueError(f"instruction='int8' takes blocks of at most {INT8_BLOCK_MAX} elements (a block's int32 "
                         f"partial sum must convert to fp32 exactly); {a_fmt.name} has blocks of {a_fmt.block_size}: "
                         f"use instruction='fp16'")
    return chosen[0], chosen[1]


def prepared(x: Encoded, type_name: str, ops) -> tuple[torch.Tensor, torch.Tensor]:
    """An encoded (rows x K) operand as the kernel reads it, made by the op
    ``ops.mx_prepare`` of one build: rows of tensor-core inputs (uint8
    bytes; the packed codes themselves where each is its own input) and
    rows of float32 block scales."""
    fmt = x.format
    table = element_tables(fmt.element)[type_name]
    device = x.elements.device
    element_table = None if table.is_identity else table.inputs.to(device)
    return ops.mx_prepare(x.elements, x.scales.reshape(-1), element_table,
                          scale_table(fmt.scale, table.shift).to(device), fmt.element_code_bits, x.shape[0],
                          -(-x.shape[1] // fmt.block_size) * fmt.block_size)


def _check_operand(x, name: str) -> None:
    check_operand(x, name)
    problem = operand_problem(x.format)
    if problem:
        raise ValueError(f"{name}: {problem}")


def takes_product(a_format, b_format) -> bool:
    """Whether :func:`mx_matmul` multiplies operands of these formats on the extension's CPU builds."""
    return (operand_problem(a_format) is None and operand_problem(b_format) is None
            and a_format.block_size == b_format.block_size)


def gpu_takes_product(a_format, b_format) -> bool:
    """Whether :func:`mx_matmul` multiplies operands of these formats on the
    current GPU: as :func:`takes_product`, on a GPU of compute capability 8.0
    or later (older ones keep torch's products)."""
    return torch.cuda.get_device_capability() >= MATMUL_CAPABILITY and takes_product(a_format, b_format)


def check_capability(device: torch.device, instruction: str | None) -> None:
    """ValueError unless the GPU ``device`` runs ``instruction`` (CPU devices run every one)."""
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    needed = FP8_CAPABILITY if instruction == "fp8" else MATMUL_CAPABILITY
    if capability < needed:
        what = "instruction='fp8'" if instruction == "fp8" else "mx_matmul"
        raise ValueError(f"{what} needs a GPU of compute capability {needed[0]}.{needed[1]} or later; {device} has "
                         f"{capability[0]}.{capability[1]}")


def product(ops, a: Encoded, b: Encoded, bias: torch.Tensor | None, out_dtype: torch.dtype,
            instruction: str | None) -> torch.Tensor:
    """``A @ B.T + bias`` on one build's ops (``torch.ops.lowbit_cuda`` and
    its CPU builds) for operands :func:`mx_matmul` has checked."""
    a_type, b_type = choose_types(a.format, b.format, instruction)
    check_capability(a.elements.device, instruction)
    (a_inputs, a_scales), (b_inputs, b_scales) = prepared(a, a_type, ops), prepared(b, b_type, ops)
    bias = None if bias is None else bias.to(torch.float32)
    return ops.mx_matmul(a_inputs, a_scales, b_inputs, b_scales, bias, TENSOR_CORE_TYPES[a_type],
                         TENSOR_CORE_TYPES[b_type], a.format.block_size, out_dtype)


def mx_matmul(a: Encoded, b: Encoded, *, bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
              instruction: str | None = None, backend: str = "cuda") -> torch.Tensor:
    """``A @ B.T + bias`` on tensor cores, for A (M x K) and B (N x K)
    encoded in an MX format along K (``fmt.encode(t, axis=1)``); A and B
    may have different formats with the same block size (a multiple of 32).

    Result (M x N, ``out_dtype``: float32, bfloat16 or float16): for each
    output, each block's partial sum of element products comes from the
    tensor cores, is multiplied by the block's two scales and added to an
    fp32 total with one rounding, block after block along K; then ``bias``
    (float16, bfloat16 or float32, shape (N,)) is added in fp32 and the sum
    rounded to ``out_dtype`` (nearest, ties to even). NaN scales and
    elements give NaN; Inf propagates.

    ``instruction``: ``"int8"`` (exact partial sums: elements that are
    integers times a power of two, i.e. FP4 E2M1, FP6 E2M3 and MXINT8;
    blocks of at most 1024), ``"fp16"`` (every MX FP element), ``"fp8"``
    (E4M3/E5M2 inputs, sm_89+; partial sums carry the tensor cores' own
    rounding), or None: int8 where both operands fit it, else fp16. A GPU
    needs compute capability 8.0 or later. K = 0 gives the bias (or zeros).

    ``backend`` (a name of :func:`lowbit.backends`): ``"cuda"`` (operands
    on a GPU), ``"cuda_emulated"`` (the same kernel's code run on the CPU,
    thread by thread; slow) or ``"cuda_host"`` (the CPU model of the
    kernel's arithmetic), the last two for CPU operands, which model each
    tensor-core instruction as adding exact products in double and
    rounding to fp32 once; or ``"reference"`` (any device, no
    ``instruction``): :func:`lowbit.formats.reference_matmul`, float64 with
    the bias, rounded once to ``out_dtype``, the product the others approach;
    or None: the default backend of the operands' device where it
    multiplies these formats, else the reference.
    """
    _check_operand(a, "a")
    _check_operand(b, "b")
    if a.shape[1] != b.shape[1] or a.format.block_size != b.format.block_size:
        raise ValueError(f"a and b must have the same K and block size; got shapes {a.shape}, {b.shape} and "
                         f"blocks {a.format.block_size}, {b.format.block_size}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be torch.float32, torch.bfloat16 or torch.float16; got {out_dtype}")
    if instruction not in (None, *INSTRUCTIONS):
        raise ValueError(f"instruction must be None or one of {', '.join(INSTRUCTIONS)}; got {instruction!r}")
    device = a.elements.device
    if b.elements.device != device:
        raise ValueError(f"a and b must be on one device; got a on {device}, b on {b.elements.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dtype not in OUT_DTYPES or bias.shape != (b.shape[0],):
            raise TypeError(f"bias must be a float32, bfloat16 or float16 tensor of shape ({b.shape[0]},)")
        if bias.device != device:
            raise ValueError(f"bias must be on {device}, got {bias.device}")
    chosen = backends.resolve(backend, device.type, (a.format, b.format), "matmul")
    return chosen.matmul(a, b, bias, out_dtype, instruction)
