"""ScaledFormat: the public operations shared by block-scaled formats
(BlockFormat, MicroexponentFormat). A subclass supplies the exact block
kernels ``_encode_blocks`` and ``_decode_blocks``; quantize is decode of
encode, so the two can never disagree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .base import check_axis, check_backend, prepare_input
from .blocking import BlockLayout
from .encoded import Encoded
from .packing import pack, unpack
from .rounding import Rounder


@dataclass
class BlockCodes:
    """Unpacked codes of a blocked tensor, as int64 tensors."""

    elements: torch.Tensor  # (..., nblocks, block)
    scales: torch.Tensor  # (..., nblocks)
    subscales: torch.Tensor | None = None  # (..., nblocks, block // sub_block)
    tensor_scale: float | None = None


class ScaledFormat:
    """Base of formats whose elements share scales across blocks along an axis."""

    name: str
    block_size: int

    # -- implemented by subclasses -------------------------------------------------
    element_code_bits: int
    scale_code_bits: int
    subscale_code_bits: int = 0

    def _encode_blocks(self, blocks: torch.Tensor, rounder: Rounder, scale_rule: str | None) -> BlockCodes:
        raise NotImplementedError

    def _decode_blocks(self, codes: BlockCodes) -> torch.Tensor:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    def __str__(self) -> str:
        return self.name

    def _block_codes(self, x, axis, rounding, scale_rule, seed, generator, flush_subnormals, backend):
        x64, kind = prepare_input(x, flush_subnormals, backend)
        layout = BlockLayout(tuple(x64.shape), check_axis(axis, x64.dim()), self.block_size)
        blocks = layout.to_blocks(x64)
        rounder = Rounder(rounding, torch.signbit(blocks), seed, generator)
        return kind, layout, self._encode_blocks(blocks, rounder, scale_rule)

    def quantize(self, x: Any, *, axis: int = -1, rounding: str = "nearest_even", scale_rule: str | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 flush_subnormals: bool = False, backend: str | None = None) -> Any:
        """What ``x`` becomes when encoded in blocks along ``axis`` and decoded
        again; same kind, dtype, shape and device as ``x``. A block holding
        NaN or Inf becomes all NaN. Elements saturate (they never overflow)."""
        kind, layout, codes = self._block_codes(x, axis, rounding, scale_rule, seed, generator, flush_subnormals, backend)
        return kind.restore(layout.from_blocks(self._decode_blocks(codes)))

    def encode(self, x: Any, *, axis: int = -1, rounding: str = "nearest_even", scale_rule: str | None = None,
               seed: int | None = None, generator: torch.Generator | None = None,
               flush_subnormals: bool = False, backend: str | None = None) -> Encoded:
        """Encode ``x`` in blocks along ``axis``: bit-packed element codes and
        one scale code per block (see :class:`Encoded` for the layout)."""
        kind, layout, codes = self._block_codes(x, axis, rounding, scale_rule, seed, generator, flush_subnormals, backend)
        as_kind = (lambda t: t) if kind.kind == "torch" else (lambda t: t.cpu().numpy())
        return Encoded(
            format=self,
            shape=layout.shape,
            axis=layout.axis,
            elements=as_kind(pack(codes.elements, self.element_code_bits)),
            scales=as_kind(codes.scales.to(torch.uint8 if self.scale_code_bits <= 8 else torch.uint16)),
            subscales=None if codes.subscales is None else as_kind(pack(codes.subscales, self.subscale_code_bits)),
            tensor_scale=codes.tensor_scale,
            kind="torch" if kind.kind == "torch" else "numpy",
        )

    def decode(self, encoded: Encoded, *, dtype: Any = None, backend: str | None = None) -> Any:
        """Values of an :class:`Encoded` of this format, in its true shape:
        float32 unless ``dtype`` asks for float64."""
        check_backend(backend)
        if not isinstance(encoded, Encoded):
            raise TypeError(f"{self.name} decodes an Encoded (from {self.name}.encode), got {type(encoded).__name__}")
        if encoded.format != self:
            raise ValueError(f"this Encoded holds {encoded.format.name}, not {self.name}")
        layout = BlockLayout(encoded.shape, encoded.axis, self.block_size)
        count = int(np.prod(layout.blocked_shape))
        def codes_of(packed, bits, shape):
            return unpack(torch.as_tensor(packed), bits, int(np.prod(shape))).to(torch.int64).reshape(shape)

        elements = codes_of(encoded.elements, self.element_code_bits, layout.blocked_shape)
        subscales = None
        if encoded.subscales is not None:
            subscales = codes_of(encoded.subscales, self.subscale_code_bits,
                                 (*layout.blocked_shape[:-1], self.block_size // self.sub_block))
        codes = BlockCodes(elements, torch.as_tensor(encoded.scales).to(torch.int64), subscales, encoded.tensor_scale)
        values = layout.from_blocks(self._decode_blocks(codes))
        if encoded.kind == "numpy":
            return values.cpu().numpy().astype(dtype or np.float32)
        return values.to(dtype or torch.float32)
