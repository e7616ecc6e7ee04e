"""ScaledFormat: the public operations shared by block-scaled formats
(BlockFormat, MicroexponentFormat). A subclass supplies its exact block
math (``encode_blocks_exact``, ``decode_blocks_exact``,
``grid_blocks_exact``, ``tensor_scale_exact``); the operations run on a
backend (:mod:`.backends`), the reference running that math. quantize is
decode of encode, so the two can never disagree."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from . import backends
from .arrays import (
    as_tensor, as_torch, cast_exactly, decoded_in, difference_rounded_to_odd, finite_mean_float32, float_dtype,
    numpy_view,
)
from .backends import Policy
from .base import Grid, check_axis
from .blocking import BlockCodes, BlockLayout, Layout
from .chunks import chunk_slices, exact
from .encoded import Encoded, check_tensor_scale
from .reference import block_codes, rows_per_chunk
from .rounding import Rounder, check_sr_bits, stochastic_key


class ScaledFormat:
    """Base of formats whose elements share scales across blocks along an axis."""

    name: str
    block_size: int

    # -- a family's exact math and code sizes -------------------------------------
    element_code_bits: int
    scale_code_bits: int
    subscale_code_bits: int = 0
    subscales_per_block: int = 0
    tensor_scale: bool = False  # whether a per-tensor scale divides first (NVFP4's second level)
    zero_point: bool = False  # whether each block has an integer zero point
    zero_point_code_bits: int = 0
    double_quant: Any = None  # the format the scales are encoded in (QLoRA's double quantization), or None

    def encode_blocks_exact(self, blocks: torch.Tensor, rounder: Rounder, scale_rule: str | None,
                            tensor_scale: float | None) -> BlockCodes:
        """Codes of float64 blocks of shape (rows, block_size)."""
        raise NotImplementedError

    def decode_blocks_exact(self, codes: BlockCodes) -> torch.Tensor:
        """The float64 values of blocks of codes, shape (rows, block_size)."""
        raise NotImplementedError

    def grid_blocks_exact(self, blocks: torch.Tensor, codes: BlockCodes) -> tuple[torch.Tensor, torch.Tensor]:
        """The ulp and the largest magnitude of each element's grid, given
        the float64 blocks and their codes."""
        raise NotImplementedError

    def tensor_scale_exact(self, t: torch.Tensor, flush_subnormals: bool) -> float | None:
        """A per-tensor scale computed over the whole input first (NVFP4); None here."""
        return None

    #: The largest magnitude a block can decode to under each scale code
    #: (float64, indexed by code; NaN for NaN codes), before any tensor scale;
    #: computed once per format (formats are immutable).
    largest_per_scale_code: torch.Tensor

    def _may_exceed(self, limit: float, scales: torch.Tensor, tensor_scale: float | None) -> bool:
        """Whether a block of these scale codes could decode beyond ``limit``,
        from the scales alone (far cheaper than a pass over the values): no
        code up to the largest present is risky, or else none present is."""
        if self.max * (tensor_scale or 1.0) <= limit or not scales.numel():
            return False
        if self.scale_code_bits > 16 or scales.is_floating_point():  # no table of every code: read the values
            return True
        risky = self.largest_per_scale_code.to(scales.device) * (tensor_scale or 1.0) > limit
        top = int((scales if scales.dtype == torch.uint8 else scales.to(torch.int64)).max())  # no uint16 max
        if not bool(risky[: top + 1].any()):
            return False
        return bool(risky[scales.to(torch.int64)].any())

    def _resolve_rule(self, scale_rule: str | None) -> str | None:
        """The scale rule a call uses (checked); None for formats without one."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    def __str__(self) -> str:
        return self.name

    def layout(self, shape: tuple[int, ...], axis: Any) -> Layout:
        """Where the blocks of a tensor of ``shape`` blocked along ``axis`` lie."""
        return BlockLayout(tuple(shape), check_axis(axis, len(shape)), self.block_size)

    def _call(self, x: Any, operation: str, axis: int | tuple[int, int], rounding: str, scale_rule: str | None, seed: Any,
              generator: Any, flush_subnormals: bool, backend: str | None, sr_bits: int | None,
              tensor_scale: float | None = None):
        """The input tensor, its kind, its block layout, the checked policy,
        the backend that runs ``operation`` and the per-tensor scale: the
        one given (checked), else the one the backend computes from x."""
        t, kind = as_tensor(x)
        layout = self.layout(tuple(t.shape), axis)
        policy = Policy(rounding=rounding, scale_rule=self._resolve_rule(scale_rule),
                        key=stochastic_key(rounding, seed, generator), flush_subnormals=flush_subnormals,
                        sr_bits=check_sr_bits(rounding, sr_bits))
        chosen = backends.resolve(backend, t.device.type, self, operation, policy)
        if tensor_scale is not None:
            check_tensor_scale(self, tensor_scale)
            return t, kind, layout, policy, chosen, float(tensor_scale)
        return t, kind, layout, policy, chosen, chosen.scaled.tensor_scale(self, t, policy)

    def quantize(self, x: Any, *, axis: int | tuple[int, int] = -1, rounding: str = "nearest_even", scale_rule: str | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 flush_subnormals: bool = False, backend: str | None = None, sr_bits: int | None = None) -> Any:
        """What ``x`` becomes when encoded in blocks along ``axis`` and decoded
        again; same kind, dtype, shape and device as ``x``. ``axis``: the
        blocked axis; for a tiled format a pair (row axis, column axis) or
        the column axis (:meth:`layout`). A block holding
        NaN or Inf becomes all NaN. Elements saturate (they never overflow).
        ``rounding``, ``seed``, ``generator``, ``sr_bits`` and ``backend``:
        as in :meth:`ElementFormat.quantize`."""
        t, kind, layout, policy, chosen, ts = self._call(x, "quantize", axis, rounding, scale_rule, seed, generator,
                                                         flush_subnormals, backend, sr_bits)
        rescale = self._second_level_scales if self.double_quant is not None else None
        out, exact_fit = chosen.scaled.quantize(self, t, layout, policy, ts, rescale)
        if not exact_fit:
            raise kind.inexact_error()
        return kind.give_back(out)

    def encode(self, x: Any, *, axis: int | tuple[int, int] = -1, rounding: str = "nearest_even", scale_rule: str | None = None,
               seed: int | None = None, generator: torch.Generator | None = None,
               flush_subnormals: bool = False, backend: str | None = None, sr_bits: int | None = None,
               tensor_scale: float | None = None) -> Encoded:
        """Encode ``x`` in blocks along ``axis``: bit-packed element codes and
        one scale code per block (see :class:`Encoded` for the layout).
        ``tensor_scale`` (formats with a per-tensor scale, NVFP4): the
        float32 scale to divide by, in place of the one x's largest
        magnitude gives (a part of a tensor encoded with the whole
        tensor's scale); ValueError for other formats and for values that
        are not positive float32 numbers in range."""
        t, kind, layout, policy, chosen, ts = self._call(x, "encode", axis, rounding, scale_rule, seed, generator,
                                                         flush_subnormals, backend, sr_bits, tensor_scale)
        elements, scale_codes, subscales, zero_points = chosen.scaled.encode(self, t, layout, policy, ts)
        array = kind.give_back_array
        scales, scale_offset = array(scale_codes), None
        if self.double_quant is not None:
            scales, scale_offset = self._encode_scales(scale_codes, array)
        return Encoded(
            format=self,
            shape=layout.shape,
            axis=layout.axis,
            elements=array(elements),
            scales=scales,
            subscales=array(subscales) if subscales is not None else None,
            tensor_scale=ts,
            kind="torch" if kind.kind == "torch" else "numpy",
            zero_points=array(zero_points) if zero_points is not None else None,
            scale_offset=scale_offset,
        )

    def _encode_scales(self, scale_codes: torch.Tensor, array: Any = None) -> tuple[Encoded, float]:
        """Double quantization's second level: the first-level scales (in
        block order) less offset = float32(mean of the finite ones, summed
        exactly), encoded in ``double_quant`` along their one axis (in the
        kind ``array``, an :meth:`InputKind.give_back_array`, gives them);
        and the offset."""
        codes = scale_codes.reshape(-1).to(torch.int64)
        if self.scale.is_float32:  # fp32 codes are float32's own bits
            signed = ((codes & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000
            values = signed.to(torch.int32).view(torch.float32).to(torch.float64)
        else:
            values = self.scale.decode_exact(codes)
        offset = finite_mean_float32(values)
        second = difference_rounded_to_odd(values, offset)  # encodes as the exact difference would
        narrow, exact_fit = cast_exactly(second, torch.float32)  # the same values: float32 takes faster kernels
        second = narrow if exact_fit else second
        return self.double_quant.encode(array(second) if array else second, axis=0), offset

    def _second_level_scales(self, scale_codes: torch.Tensor) -> torch.Tensor:
        """Double quantization: the float32 scales the blocks of these
        first-level scale codes decode with (:meth:`_encode_scales`, then
        :meth:`_scales_of`)."""
        return self._scales_of(*self._encode_scales(scale_codes))

    def _decoded_scales(self, encoded: Encoded) -> torch.Tensor:
        """Double quantization: each block's scale (:meth:`_scales_of`)."""
        return self._scales_of(encoded.scales, encoded.scale_offset)

    @staticmethod
    def _scales_of(second: Encoded, offset: float) -> torch.Tensor:
        """Double quantization: each block's scale, float32(second level's float32 value + offset)."""
        values = as_torch(second.decode()).reshape(-1)
        if values.device.type == "cpu":  # in numpy, single-threaded (see cpu.scaled_backend.float32_bits)
            with np.errstate(over="ignore"):  # a sum beyond float32's range is inf, as in torch
                return torch.from_numpy(numpy_view(values) + np.float32(offset))
        return values + torch.tensor(offset, dtype=torch.float32)

    def grid(self, x: Any, *, axis: int | tuple[int, int] = -1, scale_rule: str | None = None,
             flush_subnormals: bool = False, backend: str | None = None) -> Grid:
        """The grid each element of ``x`` is rounded on once its block's
        scales are set (they do not depend on the rounding mode): its ulp
        (the spacing of the element's grid where it lies, times the block's
        scales) and the largest magnitude its block can hold. NaN in blocks
        holding NaN or Inf. float64, in x's kind and shape; for error
        analysis (errors in ulps, clamping), not rounding; where decoding
        rounds element * scale to float32 (``rounds_to_float32``), decoded
        values are these grid points rounded once more. ``backend``
        computes the scales, as in :meth:`encode`."""
        t, kind = as_tensor(x)
        layout = self.layout(tuple(t.shape), axis)
        encoded = self.encode(t, axis=axis, scale_rule=scale_rule, flush_subnormals=flush_subnormals,
                              backend=backend)
        scales = self._decoded_scales(encoded) if self.double_quant else encoded.scales.reshape(-1)
        zero_points = None if encoded.zero_points is None else as_torch(encoded.zero_points)
        rows = layout.to_blocks(t).reshape(-1, layout.block)
        ulp = torch.empty((layout.nrows, layout.block), dtype=torch.float64, device=t.device)
        largest = torch.empty_like(ulp)
        for part in chunk_slices(layout.nrows, rows_per_chunk(layout.block)):
            codes = block_codes(self, layout.block, part, None, scales, encoded.subscales, encoded.tensor_scale,
                                zero_points)
            ulp[part], largest[part] = self.grid_blocks_exact(exact(rows[part], flush_subnormals), codes)
        return Grid(kind.give_back(layout.from_blocks(ulp)), kind.give_back(layout.from_blocks(largest)))

    def decode(self, encoded: Encoded, *, dtype: Any = None, backend: str | None = None) -> Any:
        """Values of an :class:`Encoded` of this format, in its true shape:
        float32 unless ``dtype`` asks for float64 (ValueError if a value lies
        beyond float32's range). The Encoded is validated first
        (:meth:`Encoded.validate`). ``backend``: as in :meth:`encode`."""
        if not isinstance(encoded, Encoded):
            raise TypeError(f"{self.name} decodes an Encoded (from {self.name}.encode), got {type(encoded).__name__}")
        if encoded.format != self:
            raise ValueError(f"this Encoded holds {encoded.format.name}, not {self.name}")
        encoded.validate()
        layout = self.layout(tuple(encoded.shape), encoded.axis)
        packed_elements = as_torch(encoded.elements)
        packed_subscales = None if encoded.subscales is None else as_torch(encoded.subscales)
        zero_points = None if encoded.zero_points is None else as_torch(encoded.zero_points)
        scales = self._decoded_scales(encoded) if self.double_quant else as_torch(encoded.scales).reshape(-1)
        chosen = backends.resolve(backend, packed_elements.device.type, self, "decode")
        values = decoded_in(float_dtype(dtype), lambda to: chosen.scaled.decode(
            self, layout, packed_elements, scales, packed_subscales, encoded.tensor_scale, to, zero_points),
            lambda limit: self._may_exceed(limit, scales, encoded.tensor_scale), self.name)
        return values.cpu().numpy() if encoded.kind == "numpy" else values
