"""Rounding a weight column by column with scales set before the column's
values are final: GPTQ's quantizer, for any lowbit format in a spec's
weight role.

A weight W is (out, in) as F.linear takes it; a column is one input
feature. Scales come in two kinds:

- scales that span every column (an observer's per-tensor or per-channel
  scale, a whole-axis block such as ``int8_rowwise``, NVFP4's tensor scale,
  a :class:`~lowbit.formats.TensorScaledFormat`'s scale) are set once, from
  the weight as the layer stores it, exactly as the quantized module sets
  them;
- scales of a group of consecutive input features (an observer's
  ``group`` scales, a block format's blocks, 2-D tiles' column blocks) are
  set by :meth:`ColumnRounder.set_scales` from whatever values the caller
  gives for the group's columns (GPTQ: the weight before any column is
  rounded, or with ``static_groups=False`` the columns' current,
  error-updated values when it reaches the group's first column), by the
  format's own encoding of those values.

Then :meth:`ColumnRounder.round` rounds one column's values with its
group's fixed scales, elementwise, as the format rounds an element given
its scale: the element format's own quantize of x / scale (saturating, in
the spec's rounding mode; the zero point added to the rounded integer and
clamped; a microexponent element as a sign and magnitude on its step),
then the value as the format decodes it (element * scale, rounded to
float32 where the format's decoding rounds, NVFP4's tensor scale
multiplied in float32). With a group's scales set from the values the
format itself would see, that is the format's quantize, bit for bit
(tests/test_methods_gptq.py checks every family). Each column is first
cast to the layer's dtype, as the layer holds it; results are float64.
Stochastic rounding and double-quantized scales (``nf4_dq``: a second
level over every block's scale) are not supported (ValueError). Weights
must be finite.
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.formats import BlockFormat, ElementFormat, IntFormat, MicroexponentFormat, TensorScaledFormat, unpack
from lowbit.formats.tensor_scaled import TensorEncoded

from ..calibration import Calibrated
from ..rounding import round_to
from ..spec import QuantSpec


class ColumnRounder:
    """Rounds the columns of one weight; see the module docstring."""

    width: int | None = None  # columns per group of scales set by set_scales; None: no such groups

    def __init__(self, spec: QuantSpec, dtype: torch.dtype, columns: int) -> None:
        self.spec, self.dtype, self.columns = spec, dtype, columns
        self.fixed: dict[int, Any] = {}  # group index -> its scales

    def group(self, column: int) -> range | None:
        """The columns whose scales are set together with ``column``'s, or
        None where the column's scales are set already (or it has none)."""
        if self.width is None:
            return None
        start = column // self.width * self.width
        return range(start, min(start + self.width, self.columns))

    def needs_scales(self, column: int) -> bool:
        """Whether ``column``'s group has no scales yet."""
        return self.width is not None and column // self.width not in self.fixed

    def set_scales(self, group: range, values: torch.Tensor) -> None:
        """Fix the scales of ``group`` (a range from :meth:`group`) from the
        values of its columns, (out, len(group))."""
        self.fixed[group.start // self.width] = self._scales(values.to(self.dtype))

    def round(self, column: int, values: torch.Tensor) -> torch.Tensor:
        """Column ``column``'s values (out,) rounded with its scales (float64)."""
        scales = self.fixed[column // self.width] if self.width is not None else None
        return self._round(values.to(self.dtype), scales, column).to(torch.float64)

    def _scales(self, values: torch.Tensor) -> Any:
        raise NotImplementedError

    def _round(self, x: torch.Tensor, scales: Any, column: int) -> torch.Tensor:
        raise NotImplementedError


class _Elementwise(ColumnRounder):
    """An element format without a scale: each value rounded on its own."""

    def _round(self, x: torch.Tensor, scales: Any, column: int) -> torch.Tensor:
        return round_to(x, self.spec.weight, -1, self.spec)


class _Observed(ColumnRounder):
    """An element format with an observer's scales: Q(x / s) * s in the
    layer's dtype, as :class:`~lowbit.emulate.calibration.Calibrated` rounds."""

    def __init__(self, spec: QuantSpec, dtype: torch.dtype, columns: int, stored: torch.Tensor,
                 matrix: torch.Tensor) -> None:
        super().__init__(spec, dtype, columns)
        self.observer = spec.observer("weight")
        plain = QuantSpec(rounding=spec.rounding)
        self.quantize = lambda t: round_to(t, spec.weight, -1, plain)  # what the quantized module's observer uses
        if self.observer.granularity == "group":
            self.observer.groups(matrix)  # ValueError unless the input features divide into groups
            self.width = self.observer.group_size
        else:  # one scale per tensor or per output channel, from the weight as the layer stores it
            self.whole = self.observer.scale(stored.to(dtype), spec.weight, self.quantize).reshape(-1)

    def _scales(self, values: torch.Tensor) -> torch.Tensor:
        return self.observer.scale(values, self.spec.weight, self.quantize)[:, 0]

    def _round(self, x: torch.Tensor, scales: Any, column: int) -> torch.Tensor:
        scale = self.whole if scales is None else scales
        return round_to(x, Calibrated(self.spec.weight, scale), -1, self.spec)


class _TensorScaled(ColumnRounder):
    """A TensorScaledFormat: the whole weight's scale s, then the element
    format's code of x / s (saturating), decoded by the format."""

    def __init__(self, spec: QuantSpec, dtype: torch.dtype, columns: int, stored: torch.Tensor) -> None:
        super().__init__(spec, dtype, columns)
        self.scale = spec.weight.scale_of(stored.to(dtype))

    def _round(self, x: torch.Tensor, scales: Any, column: int) -> torch.Tensor:
        fmt = self.spec.weight
        codes = fmt.element.encode(x.to(torch.float64) / self.scale, rounding=self.spec.rounding, overflow="saturate")
        return fmt.decode(TensorEncoded(fmt, codes, self.scale), dtype=torch.float64)


class _Blocked(ColumnRounder):
    """A BlockFormat blocked along the input features (blocks, 2-D tiles or
    whole rows; zero points, codebook elements, NVFP4's tensor scale)."""

    def __init__(self, spec: QuantSpec, dtype: torch.dtype, columns: int, stored: torch.Tensor,
                 matrix: torch.Tensor) -> None:
        super().__init__(spec, dtype, columns)
        fmt = self.fmt = spec.weight
        self.rule = spec.scale_rule if spec.applies_rule(fmt) else None
        self.tensor_scale = fmt.tensor_scale_exact(stored.to(dtype), False)
        self.rows = matrix.shape[0]
        if fmt.block_shape is not None:
            self.width = fmt.block_shape[1]
        elif fmt.block_size is not None:
            self.width = fmt.block_size
        else:  # one block per output channel: its scale from the whole row, as stored
            self.whole = self._scales(matrix.to(dtype))

    def _scales(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per output row: the block's scale (float64) and its zero point (or None)."""
        fmt = self.fmt
        encoded = fmt.encode(values, axis=1, rounding=self.spec.rounding, scale_rule=self.rule,
                             tensor_scale=self.tensor_scale)
        tile_rows = fmt.block_shape[0] if fmt.block_shape is not None else 1
        scale = fmt.scale.decode(encoded.scales.reshape(-1), dtype=torch.float64)
        scale = scale.repeat_interleave(tile_rows)[: self.rows]
        zeros = None
        if fmt.zero_point:
            count = encoded.scales.numel()
            zeros = unpack(encoded.zero_points, fmt.zero_point_code_bits, count).to(torch.int64)
            zeros = zeros.repeat_interleave(tile_rows)[: self.rows]
        return scale, zeros

    def _round(self, x: torch.Tensor, scales: Any, column: int) -> torch.Tensor:
        fmt, rounding = self.fmt, self.spec.rounding
        scale, zeros = self.whole if scales is None else scales
        divisor = scale * (self.tensor_scale or 1.0)  # exact in float64, as the format forms it
        usable = divisor > 0  # a block whose scale rounded to zero holds zeros
        scaled = x.to(torch.float64) / torch.where(usable, divisor, 1.0)
        if zeros is None:
            elements = fmt.element.quantize(scaled, rounding=rounding, overflow="saturate")
        else:
            integers = fmt.zero_point_integers.quantize(scaled, rounding=rounding, overflow="saturate")
            elements = (integers + zeros).clamp(0, (1 << fmt.element.nbits) - 1) - zeros
        values = torch.where(usable, elements, 0.0) * scale  # exact in float64
        if self.tensor_scale is not None:  # times the float32 tensor scale, in float32
            return (values.to(torch.float32) * torch.tensor(self.tensor_scale, dtype=torch.float32)).to(torch.float64)
        return values.to(torch.float32).to(torch.float64) if fmt.rounds_to_float32 else values


class _Microexponent(ColumnRounder):
    """A MicroexponentFormat: each element's step (shared exponent less its
    sub-block's shift) from the format's grid of the block, then a sign and
    magnitude of x / step, clamped to 2**m - 1."""

    def __init__(self, spec: QuantSpec, dtype: torch.dtype, columns: int) -> None:
        super().__init__(spec, dtype, columns)
        self.width = spec.weight.block_size
        self.magnitudes = IntFormat(spec.weight.man_bits + 1, narrow=True)  # -(2**m - 1) .. 2**m - 1

    def _scales(self, values: torch.Tensor) -> torch.Tensor:
        return self.spec.weight.grid(values, axis=1).ulp  # each element's step, (out, columns)

    def _round(self, x: torch.Tensor, scales: Any, column: int) -> torch.Tensor:
        step = scales[:, column % self.width]
        return self.magnitudes.quantize(x.to(torch.float64) / step, rounding=self.spec.rounding,
                                        overflow="saturate") * step


def column_rounder(spec: QuantSpec, stored: torch.Tensor, matrix: torch.Tensor) -> ColumnRounder:
    """The rounder of a layer's weight under ``spec``: ``stored`` is the
    weight as the layer stores it (whole-tensor scales come from it),
    ``matrix`` the same values as (out, in). ValueError for what the
    module docstring excludes."""
    fmt, dtype, columns = spec.weight, stored.dtype, matrix.shape[1]
    if spec.rounding == "stochastic":
        raise ValueError("gptq rounds with a deterministic rounding mode; the spec asks for stochastic rounding")
    if isinstance(fmt, ElementFormat):
        if spec.observer("weight") is None:
            return _Elementwise(spec, dtype, columns)
        return _Observed(spec, dtype, columns, stored, matrix)
    if isinstance(fmt, TensorScaledFormat):
        return _TensorScaled(spec, dtype, columns, stored)
    if isinstance(fmt, MicroexponentFormat):
        return _Microexponent(spec, dtype, columns)
    if isinstance(fmt, BlockFormat):
        if fmt.double_quant is not None:
            raise ValueError(f"gptq cannot fix the scales of {fmt.name} block by block: its double quantization "
                             f"encodes every block's scale together")
        return _Blocked(spec, dtype, columns, stored, matrix)
    raise ValueError(f"gptq has no column rounding for {getattr(fmt, 'name', fmt)!r} ({type(fmt).__name__})")
