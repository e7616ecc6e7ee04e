"""ScaledFormat: the public operations shared by block-scaled formats
(BlockFormat, MicroexponentFormat). A subclass supplies the exact block
kernels ``_encode_blocks`` and ``_decode_blocks``; quantize is decode of
encode, so the two can never disagree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .arrays import code_dtype, float_dtype
from . import base
from .base import Grid, check_axis, chunk_slices, exact, kernels, prepare_input, resolve_backend
from .blocking import BlockLayout
from .encoded import Encoded
from .packing import pack, unpack
from .rounding import Rounder, stochastic_key


@dataclass
class BlockCodes:
    """Unpacked codes of a blocked tensor, as int64 tensors."""

    elements: torch.Tensor | None  # (rows, block); None where only the scales are needed
    scales: torch.Tensor  # (rows,)
    subscales: torch.Tensor | None = None  # (rows, block // sub_block)
    tensor_scale: float | None = None


class ScaledFormat:
    """Base of formats whose elements share scales across blocks along an axis."""

    name: str
    block_size: int

    # -- implemented by subclasses -------------------------------------------------
    element_code_bits: int
    scale_code_bits: int
    subscale_code_bits: int = 0
    subscales_per_block: int = 0

    def _encode_blocks(self, blocks: torch.Tensor, rounder: Rounder, scale_rule: str | None,
                       tensor_scale: float | None) -> BlockCodes:
        """Codes of float64 blocks of shape (rows, block_size)."""
        raise NotImplementedError

    def _decode_blocks(self, codes: BlockCodes) -> torch.Tensor:
        raise NotImplementedError

    def _grid_blocks(self, blocks: torch.Tensor, codes: BlockCodes) -> tuple[torch.Tensor, torch.Tensor]:
        """The ulp and the largest magnitude of each element's grid, given
        the float64 blocks and their codes."""
        raise NotImplementedError

    def _tensor_scale(self, t: torch.Tensor, flush_subnormals: bool) -> float | None:
        """A per-tensor scale computed over the whole input first (NVFP4); None here."""
        return None

    # -- shared ---------------------------------------------------------------------
    def __str__(self) -> str:
        return self.name

    def _rows_per_chunk(self) -> int:
        """Whole blocks per chunk, a multiple of 8 blocks so that every chunk's
        packed codes end on a byte boundary and chunks pack independently."""
        return max(8, base.CHUNK_ELEMENTS // self.block_size // 8 * 8)

    def _resolve_rule(self, scale_rule: str | None) -> str | None:
        """The scale rule a call uses (checked); None for formats without one."""
        raise NotImplementedError

    def _prepare(self, x: Any, axis: int, rounding: str, scale_rule: str | None, seed: Any, generator: Any,
                 backend: str | None):
        """The input tensor, its kind, its block layout, the scale rule, the
        stochastic key and the backend that runs."""
        t, kind, backend = prepare_input(x, backend)
        layout = BlockLayout(tuple(t.shape), check_axis(axis, t.dim()), self.block_size)
        rule = self._resolve_rule(scale_rule)
        return t, kind, layout, rule, stochastic_key(rounding, seed, generator), backend

    def _encoded_chunks(self, t, layout, rounding, rule, key, tensor_scale, flush_subnormals):
        """Chunks of whole blocks of t: (row slice, the float64 blocks, their BlockCodes)."""
        rows = layout.to_blocks(t).reshape(-1, self.block_size)
        for part in chunk_slices(rows.shape[0], self._rows_per_chunk()):
            blocks = exact(rows[part], flush_subnormals)
            rounder = Rounder(rounding, torch.signbit(blocks), key, part.start * self.block_size)
            yield part, blocks, self._encode_blocks(blocks, rounder, rule, tensor_scale)

    def _tensor_scale_of_input(self, t: torch.Tensor, layout: BlockLayout, flush_subnormals: bool, backend: str):
        if backend != "reference":
            return kernels(backend).scaled.tensor_scale(self, t, flush_subnormals)
        return self._tensor_scale(t, flush_subnormals)

    def quantize(self, x: Any, *, axis: int = -1, rounding: str = "nearest_even", scale_rule: str | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 flush_subnormals: bool = False, backend: str | None = None) -> Any:
        """What ``x`` becomes when encoded in blocks along ``axis`` and decoded
        again; same kind, dtype, shape and device as ``x``. A block holding
        NaN or Inf becomes all NaN. Elements saturate (they never overflow).
        ``backend``: as in :meth:`ElementFormat.quantize`."""
        t, kind, layout, rule, key, backend = self._prepare(x, axis, rounding, scale_rule, seed, generator, backend)
        tensor_scale = self._tensor_scale_of_input(t, layout, flush_subnormals, backend)
        if backend != "reference":
            out, exact_fit = kernels(backend).scaled.quantize(self, t, layout, rounding, rule, key, flush_subnormals, tensor_scale)
            if not exact_fit:
                raise kind.inexact_error()
            return kind.give_back(out)
        out = torch.empty((layout.nrows, self.block_size), dtype=t.dtype, device=t.device)
        for part, _, codes in self._encoded_chunks(t, layout, rounding, rule, key, tensor_scale, flush_subnormals):
            out[part] = kind.exact_cast(self._decode_blocks(codes))
        return kind.give_back(layout.from_blocks(out))

    def encode(self, x: Any, *, axis: int = -1, rounding: str = "nearest_even", scale_rule: str | None = None,
               seed: int | None = None, generator: torch.Generator | None = None,
               flush_subnormals: bool = False, backend: str | None = None) -> Encoded:
        """Encode ``x`` in blocks along ``axis``: bit-packed element codes and
        one scale code per block (see :class:`Encoded` for the layout)."""
        t, kind, layout, rule, key, backend = self._prepare(x, axis, rounding, scale_rule, seed, generator, backend)
        tensor_scale = self._tensor_scale_of_input(t, layout, flush_subnormals, backend)
        if backend != "reference":
            elements, scale_codes, subscales = kernels(backend).scaled.encode(self, t, layout, rounding, rule, key,
                                                                   flush_subnormals, tensor_scale)
        else:
            elements, scale_codes, subscales = self._encode_reference(t, layout, rounding, rule, key, tensor_scale,
                                                                      flush_subnormals)
        return Encoded(
            format=self,
            shape=layout.shape,
            axis=layout.axis,
            elements=kind.give_back(elements),
            scales=kind.give_back(scale_codes),
            subscales=kind.give_back(subscales) if subscales is not None else None,
            tensor_scale=tensor_scale,
            kind="torch" if kind.kind == "torch" else "numpy",
        )

    def grid(self, x: Any, *, axis: int = -1, scale_rule: str | None = None,
             flush_subnormals: bool = False, backend: str | None = None) -> Grid:
        """The grid each element of ``x`` is rounded on once its block's
        scales are set (they do not depend on the rounding mode): its ulp
        (the spacing of the element's grid where it lies, times the block's
        scales) and the largest magnitude its block can hold. NaN in blocks
        holding NaN or Inf. float64, in x's kind and shape; for error
        analysis (errors in ulps, clamping), not rounding. ``backend``
        computes the scales, as in :meth:`encode`."""
        t, kind, layout, _, _, _ = self._prepare(x, axis, "nearest_even", scale_rule, None, None, backend)
        encoded = self.encode(t, axis=axis, scale_rule=scale_rule, flush_subnormals=flush_subnormals,
                              backend=backend)
        scales = encoded.scales.reshape(-1)
        rows = layout.to_blocks(t).reshape(-1, self.block_size)
        ulp = torch.empty((layout.nrows, self.block_size), dtype=torch.float64, device=t.device)
        largest = torch.empty_like(ulp)
        for part in chunk_slices(layout.nrows, self._rows_per_chunk()):
            codes = self._chunk_codes(part, None, scales, encoded.subscales, encoded.tensor_scale)
            ulp[part], largest[part] = self._grid_blocks(exact(rows[part], flush_subnormals), codes)
        return Grid(kind.give_back(layout.from_blocks(ulp)), kind.give_back(layout.from_blocks(largest)))

    def _chunk_codes(self, part: slice, packed_elements: torch.Tensor | None, scales: torch.Tensor,
                     packed_subscales: torch.Tensor | None, tensor_scale: float | None) -> BlockCodes:
        """The unpacked codes of a chunk of whole blocks (element codes only
        when ``packed_elements`` is given)."""
        n = part.stop - part.start
        elements = subscales = None
        if packed_elements is not None:
            elements = unpack(_bytes(packed_elements, part, self.block_size * self.element_code_bits),
                              self.element_code_bits, n * self.block_size).to(torch.int64).reshape(n, self.block_size)
        if packed_subscales is not None:
            per_block = self.subscales_per_block
            subscales = unpack(_bytes(packed_subscales, part, per_block * self.subscale_code_bits),
                               self.subscale_code_bits, n * per_block).to(torch.int64).reshape(n, per_block)
        return BlockCodes(elements, scales[part].to(torch.int64), subscales, tensor_scale)

    def _encode_reference(self, t, layout, rounding, rule, key, tensor_scale, flush_subnormals):
        elements, scales, subscales = [], [], []
        for _, _, codes in self._encoded_chunks(t, layout, rounding, rule, key, tensor_scale, flush_subnormals):
            elements.append(pack(codes.elements, self.element_code_bits))
            scales.append(codes.scales.to(code_dtype(self.scale_code_bits)))
            if codes.subscales is not None:
                subscales.append(pack(codes.subscales, self.subscale_code_bits))
        device = t.device
        scale_codes = torch.cat(scales) if scales else torch.empty(0, dtype=code_dtype(self.scale_code_bits), device=device)
        packed = torch.cat(elements) if elements else torch.empty(0, dtype=torch.uint8, device=device)
        shifts = None
        if self.subscales_per_block:  # an empty input has empty shifts, as the kernels give
            shifts = torch.cat(subscales) if subscales else torch.empty(0, dtype=torch.uint8, device=device)
        return packed, scale_codes.reshape(layout.blocked_shape[:-1]), shifts

    def decode(self, encoded: Encoded, *, dtype: Any = None, backend: str | None = None) -> Any:
        """Values of an :class:`Encoded` of this format, in its true shape:
        float32 unless ``dtype`` asks for float64."""
        if not isinstance(encoded, Encoded):
            raise TypeError(f"{self.name} decodes an Encoded (from {self.name}.encode), got {type(encoded).__name__}")
        if encoded.format != self:
            raise ValueError(f"this Encoded holds {encoded.format.name}, not {self.name}")
        layout = BlockLayout(tuple(encoded.shape), check_axis(encoded.axis, len(encoded.shape)), self.block_size)
        packed_elements = torch.as_tensor(encoded.elements)
        packed_subscales = None if encoded.subscales is None else torch.as_tensor(encoded.subscales)
        scales = torch.as_tensor(encoded.scales).reshape(-1)
        out_dtype = float_dtype(dtype)
        backend = resolve_backend(backend, packed_elements.device)
        if backend != "reference":
            values = kernels(backend).scaled.decode(self, layout, packed_elements, scales, packed_subscales,
                                         encoded.tensor_scale, out_dtype)
        else:
            values = self._decode_reference(layout, packed_elements, scales, packed_subscales, encoded.tensor_scale,
                                            out_dtype)
        return values.cpu().numpy() if encoded.kind == "numpy" else values

    def _decode_reference(self, layout, packed_elements, scales, packed_subscales, tensor_scale, dtype):
        out = torch.empty((layout.nrows, self.block_size), dtype=dtype, device=packed_elements.device)
        for part in chunk_slices(layout.nrows, self._rows_per_chunk()):
            codes = self._chunk_codes(part, packed_elements, scales, packed_subscales, tensor_scale)
            out[part] = self._decode_blocks(codes).to(out.dtype)
        return layout.from_blocks(out)


def _bytes(packed: torch.Tensor, rows: slice, bits_per_row: int) -> torch.Tensor:
    """The packed bytes that hold the codes of a slice of rows (rows start on
    byte boundaries: chunks are multiples of 8 rows)."""
    return packed[rows.start * bits_per_row // 8: -(-rows.stop * bits_per_row // 8)]
