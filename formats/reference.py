"""The reference backend: every format's own exact math
(``encode_exact``/``decode_exact`` of element formats,
``encode_blocks_exact``/``decode_blocks_exact`` of scaled ones) run on
float64 torch tensors of any device, a chunk at a time.

It is the semantics in code, registered as the backend ``"reference"``:
the kernel backends must agree with it bit for bit, and ``backend=None``
falls back to it for anything they do not support. A new format family
needs only its exact math to run here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from . import chunks
from .arrays import as_codes, cast_exactly, code_dtype
from .blocking import BlockCodes, Layout
from .chunks import chunk_slices, exact
from .encoded import Encoded
from .matmul import reference_matmul
from .packing import pack, unpack
from .rounding import Rounder

if TYPE_CHECKING:  # the registry loads this module; it needs no arrow back
    from .backends import Policy


def element_chunks(fmt: Any, t: torch.Tensor, policy: Policy) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]]:
    """Chunks of t's flattened elements: (slice, exact float64 values, codes, mask of unrepresentable elements)."""
    flat = t.reshape(-1)
    for part in chunk_slices(flat.numel(), chunks.CHUNK_ELEMENTS):
        x64 = exact(flat[part], policy.flush_subnormals)
        rounder = Rounder(policy.rounding, torch.signbit(x64), policy.key, part.start, policy.sr_bits)
        codes, invalid = fmt.encode_exact(x64, rounder, policy.overflow)
        yield part, x64, codes, invalid


class ElementReference:
    """Element formats on their exact math (the contract of :class:`~lowbit.formats.backends.ElementOps`)."""

    def quantize(self, fmt: Any, t: torch.Tensor, policy: Policy) -> tuple[torch.Tensor, bool]:
        out = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
        for part, _, codes, invalid in element_chunks(fmt, t, policy):
            values, fits = cast_exactly(torch.where(invalid, torch.nan, fmt.decode_exact(codes)), t.dtype)
            if not fits:
                return out.reshape(t.shape), False
            out[part] = values
        return out.reshape(t.shape), True

    def encode(self, fmt: Any, t: torch.Tensor, policy: Policy) -> tuple[torch.Tensor, int | None]:
        out = torch.empty(t.numel(), dtype=code_dtype(fmt.nbits), device=t.device)
        for part, _, codes, invalid in element_chunks(fmt, t, policy):
            if bool(invalid.any()):
                return out.reshape(t.shape), part.start + int(invalid.nonzero()[0, 0])
            out[part] = codes.to(out.dtype)
        return out.reshape(t.shape), None

    def decode(self, fmt: Any, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        c, _ = as_codes(codes, fmt.nbits)
        flat = c.reshape(-1)
        out = torch.empty(flat.numel(), dtype=dtype, device=flat.device)
        for part in chunk_slices(flat.numel(), chunks.CHUNK_ELEMENTS):
            out[part] = fmt.decode_exact(flat[part]).to(out.dtype)
        return out.reshape(c.shape)


def rows_per_chunk(block: int) -> int:
    """Whole blocks of ``block`` elements per chunk, a multiple of 8 blocks so
    that every chunk's packed codes end on a byte boundary and chunks pack
    independently."""
    return max(8, chunks.CHUNK_ELEMENTS // block // 8 * 8)


def block_chunks(fmt: Any, t: torch.Tensor, layout: Layout, policy: Policy,
                 tensor_scale: float | None) -> Iterator[tuple[slice, BlockCodes]]:
    """Chunks of whole blocks of t: (row slice, their BlockCodes)."""
    rows = layout.to_blocks(t).reshape(-1, layout.block)
    for part in chunk_slices(rows.shape[0], rows_per_chunk(layout.block)):
        blocks = exact(rows[part], policy.flush_subnormals)
        rounder = Rounder(policy.rounding, torch.signbit(blocks), policy.key, part.start * layout.block,
                          policy.sr_bits)
        yield part, fmt.encode_blocks_exact(blocks, rounder, policy.scale_rule, tensor_scale)


def block_codes(fmt: Any, block: int, part: slice, packed_elements: torch.Tensor | None, scales: torch.Tensor,
                packed_subscales: torch.Tensor | None, tensor_scale: float | None,
                zero_points: torch.Tensor | None = None) -> BlockCodes:
    """The unpacked codes of a chunk of whole blocks of ``block`` elements
    (element codes only when ``packed_elements`` is given; zero points
    packed as the elements are). Floating-point
    ``scales`` are the blocks' scale values (double quantization), not codes."""
    n = part.stop - part.start
    elements = subscales = None
    if packed_elements is not None:
        elements = unpack(_packed_rows(packed_elements, part, block * fmt.element_code_bits),
                          fmt.element_code_bits, n * block).to(torch.int64).reshape(n, block)
    if packed_subscales is not None:
        per_block = fmt.subscales_per_block
        subscales = unpack(_packed_rows(packed_subscales, part, per_block * fmt.subscale_code_bits),
                           fmt.subscale_code_bits, n * per_block).to(torch.int64).reshape(n, per_block)
    zeros = None
    if zero_points is not None:
        bits = fmt.zero_point_code_bits
        zeros = unpack(_packed_rows(zero_points, part, bits), bits, n).to(torch.int64)
    if scales.is_floating_point():
        values = scales[part].to(torch.float64)
        return BlockCodes(elements, torch.zeros_like(values, dtype=torch.int64), subscales, tensor_scale, zeros, values)
    return BlockCodes(elements, scales[part].to(torch.int64), subscales, tensor_scale, zeros)


def _packed_rows(packed: torch.Tensor, rows: slice, bits_per_row: int) -> torch.Tensor:
    """The packed bytes that hold the codes of a slice of rows (rows start on
    byte boundaries: chunks are multiples of 8 rows)."""
    return packed[rows.start * bits_per_row // 8: -(-rows.stop * bits_per_row // 8)]


def quantize_through_codes(encode: Callable[..., Any], decode: Callable[..., torch.Tensor], fmt: Any,
                           t: torch.Tensor, layout: Layout, policy: Policy, tensor_scale: float | None,
                           rescale: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """ScaledOps.quantize with ``rescale``, through a backend's ScaledOps
    ``encode`` and ``decode``: the encoded elements decoded as float32 with
    the scales ``rescale`` gives for their scale codes, cast exactly to t's
    dtype."""
    elements, scale_codes, subscales, zero_points = encode(fmt, t, layout, policy, tensor_scale)
    values = decode(fmt, layout, elements, rescale(scale_codes), subscales, tensor_scale, torch.float32,
                    zero_points)
    return cast_exactly(values, t.dtype)


def _data_positions(t: torch.Tensor, layout: Layout) -> torch.Tensor | None:
    """Which positions of the layout's rows of blocks hold t's elements
    (the rest is padding: zeros, which decode to a table's value nearest 0.0
    in codebooks without 0.0); None where no block is padded."""
    if layout.nrows * layout.block == t.numel():
        return None
    ones = torch.ones(t.shape, dtype=torch.uint8, device=t.device)
    return layout.to_blocks(ones).reshape(layout.nrows, layout.block).bool()


class ScaledReference:
    """Scaled formats on their exact math (the contract of :class:`~lowbit.formats.backends.ScaledOps`)."""

    def tensor_scale(self, fmt: Any, t: torch.Tensor, policy: Policy) -> float | None:
        return fmt.tensor_scale_exact(t, policy.flush_subnormals)

    def quantize(self, fmt: Any, t: torch.Tensor, layout: Layout, policy: Policy,
                 tensor_scale: float | None,
                 rescale: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, bool]:
        if rescale is not None:
            return quantize_through_codes(self.encode, self.decode, fmt, t, layout, policy, tensor_scale, rescale)
        out = torch.empty((layout.nrows, layout.block), dtype=t.dtype, device=t.device)
        data = _data_positions(t, layout)
        for part, codes in block_chunks(fmt, t, layout, policy, tensor_scale):
            decoded = fmt.decode_blocks_exact(codes)
            if data is not None:  # the padding's values are dropped: only the data must fit the dtype
                decoded = torch.where(data[part], decoded, 0.0)
            values, fits = cast_exactly(decoded, t.dtype)
            if not fits:
                return layout.from_blocks(out), False
            out[part] = values
        return layout.from_blocks(out), True

    def encode(self, fmt: Any, t: torch.Tensor, layout: Layout, policy: Policy,
               tensor_scale: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                    torch.Tensor | None]:
        elements, scales, subscales, zero_points = [], [], [], []
        for _, codes in block_chunks(fmt, t, layout, policy, tensor_scale):
            elements.append(pack(codes.elements, fmt.element_code_bits))
            scales.append(codes.scales.to(code_dtype(fmt.scale_code_bits)))
            if codes.subscales is not None:
                subscales.append(pack(codes.subscales, fmt.subscale_code_bits))
            if codes.zero_points is not None:
                zero_points.append(pack(codes.zero_points, fmt.zero_point_code_bits))
        device = t.device
        scale_codes = torch.cat(scales) if scales else torch.empty(0, dtype=code_dtype(fmt.scale_code_bits),
                                                                    device=device)
        packed = torch.cat(elements) if elements else torch.empty(0, dtype=torch.uint8, device=device)
        shifts = None
        if fmt.subscales_per_block:  # an empty input has empty shifts, as the kernels give
            shifts = torch.cat(subscales) if subscales else torch.empty(0, dtype=torch.uint8, device=device)
        zeros = None
        if fmt.zero_point:
            zeros = torch.cat(zero_points) if zero_points else torch.empty(0, dtype=torch.uint8, device=device)
        return packed, scale_codes.reshape(layout.scales_shape), shifts, zeros

    def decode(self, fmt: Any, layout: Layout, elements: torch.Tensor, scales: torch.Tensor,
               subscales: torch.Tensor | None, tensor_scale: float | None, dtype: torch.dtype,
               zero_points: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.empty((layout.nrows, layout.block), dtype=dtype, device=elements.device)
        scales = scales.reshape(-1)
        for part in chunk_slices(layout.nrows, rows_per_chunk(layout.block)):
            codes = block_codes(fmt, layout.block, part, elements, scales, subscales, tensor_scale, zero_points)
            out[part] = fmt.decode_blocks_exact(codes).to(out.dtype)
        return layout.from_blocks(out)


@dataclass(frozen=True)
class ReferenceBackend:
    """The backend ``"reference"``: supports every format, operation and policy, on any device."""

    name: str = "reference"
    device_type: str = "any"
    elements: ElementReference = ElementReference()
    scaled: ScaledReference = ScaledReference()

    def supports(self, fmt: Any, operation: str, policy: Policy) -> bool:
        return True

    def unsupported(self, fmt: Any, operation: str, policy: Policy) -> str | None:
        return None

    def matmul(self, a: Encoded, b: Encoded, bias: torch.Tensor | None, out_dtype: torch.dtype,
               instruction: str | None) -> torch.Tensor:
        """:func:`~lowbit.formats.reference_matmul` (float64, bias included)
        rounded once to ``out_dtype``: the product an MX matmul approaches."""
        if instruction is not None:
            raise ValueError("instruction chooses tensor-core instructions; the reference backend has none "
                             "(pass instruction=None)")
        return reference_matmul(a, b, bias, backend="reference").to(out_dtype)


def load_backend() -> ReferenceBackend:
    return ReferenceBackend()
