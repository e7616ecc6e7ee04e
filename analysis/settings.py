"""How data is put in a format for analysis: a :class:`Setting` names the
format, the rounding mode, the scale rule (MX formats) and, for element
formats, the per-tensor scaling, and applies them to an array.

Element formats cover a fixed range, so real data is usually scaled into it
first: ``tensor_scaling="absmax"`` divides by s = amax / fmt.max (amax the
largest finite magnitude of the tensor, s = 1 for an all-zero tensor),
quantizes, and multiplies back, as symmetric per-tensor INT and FP8
quantization does. x / s and q * s are formed in float64 (one rounding each,
2**-53 relative, far below any format's step). ``"none"`` quantizes the raw
values. Scaled formats (MX, NVFP4, microexponents) carry their own scales
and take ``"none"`` only.

``scale_rule`` picks a block format's scale rule (``None``: the format's
own); a rule applies to the block formats that take it
(:func:`takes_scale_rule`): the power-of-two rules to E8M0-scaled (MX)
formats, ``"4over6"`` to E2M1 elements with mantissa scales (NVFP4),
``"mse"`` to every block format.

Whole-axis formats (``block_size=None``: one scale per row, "rowwise") and
2-D tiles (``block_shape=(r, c)``) need rows: a 1-D sample has none (a
whole-axis format would make the whole sample one block, a per-tensor
scale; tiles refuse it). ``row_width=n`` lays 1-D data out as rows of n
values first (the last row zero-padded; the padding is quantized with its
row and then dropped, so no metric sees it). Zero padding changes no
scale: it never raises a row's amax, its range (which holds 0 already) or
a searched scale's error (0 is exact on every grid), and tiles pad partial
tiles with zeros themselves. Data of two or more dimensions keeps its own
rows (the last axis).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from lowbit.formats import ROUNDING_MODES, BlockFormat, ElementFormat, get_format

TENSOR_SCALINGS = ("none", "absmax")


class Quantized(NamedTuple):
    """A setting applied to data: the quantized values (float64), each
    element's ulp (see ``fmt.grid``; float64) and whether it lay beyond the
    largest magnitude of its grid (bool), arrays of the data's shape."""

    values: np.ndarray
    ulp: np.ndarray
    out_of_range: np.ndarray


@dataclass(frozen=True)
class Setting:
    """A format with the policy it is applied with."""

    format: Any
    rounding: str = "nearest_even"
    scale_rule: str | None = None
    tensor_scaling: str = "none"
    seed: int = 0
    row_width: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", get_format(self.format))
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {', '.join(ROUNDING_MODES)}; got {self.rounding!r}")
        if self.tensor_scaling not in TENSOR_SCALINGS:
            raise ValueError(f"tensor_scaling must be one of {', '.join(TENSOR_SCALINGS)}; got {self.tensor_scaling!r}")
        if self.tensor_scaling != "none" and not isinstance(self.format, ElementFormat):
            raise ValueError(f"tensor_scaling={self.tensor_scaling!r} applies to element formats; "
                             f"{self.format.name} carries its own scales")
        if self.scale_rule is not None and not isinstance(self.format, BlockFormat):
            raise ValueError(f"scale_rule applies to block formats; {self.format.name} has none")
        if self.scale_rule is not None:  # checks it (one row: tiles need two dimensions)
            self.format.quantize(np.zeros((1, 1), np.float32), scale_rule=self.scale_rule, backend="reference")
        if self.row_width is not None and (isinstance(self.row_width, bool) or not isinstance(self.row_width, int)
                                           or self.row_width < 1):
            raise ValueError(f"row_width must be None or a positive int, got {self.row_width!r}")

    @property
    def bits(self) -> float:
        """Storage bits per element, amortised block scales included (one
        per-tensor scale, 32 bits for the whole tensor, is not counted). A
        whole-axis format counts its element bits only: its row length is
        the data's (:meth:`bits_on` gives the figure for a shape)."""
        return float(self.format.bits)

    def bits_on(self, shape: tuple[int, ...], axis: int = -1) -> float:
        """Storage bits per element on data of ``shape`` laid out as
        :meth:`apply` lays it out: for a whole-axis format, its element
        bits plus one row's scale (zero point, second-level) bits spread
        over the row's length (``row_width`` for 1-D data); otherwise
        :attr:`bits`. (Partial blocks and tiles are counted as whole ones,
        as :attr:`bits` does.)"""
        fmt = self.format
        if not (isinstance(fmt, BlockFormat) and fmt.block_size is None):
            return self.bits
        laid_out = self.laid_out_shape(tuple(shape))
        length = laid_out[axis if laid_out == tuple(shape) else -1] if shape else 1
        return float(dataclasses.replace(fmt, block_size=max(length, 1)).bits)

    def laid_out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape :meth:`apply` quantizes data of ``shape`` in: 1-D data
        as rows of ``row_width`` where the format needs rows, else as it is."""
        if len(shape) == 1 and self.row_width is not None and needs_rows(self.format):
            return (-(-shape[0] // self.row_width), self.row_width)
        return shape

    @property
    def label(self) -> str:
        """A short name: the format, then whatever differs from the defaults."""
        parts = [self.format.name]
        if self.scale_rule is not None:
            parts.append(f"rule={self.scale_rule}")
        if self.rounding != "nearest_even":
            parts.append(self.rounding)
        if self.tensor_scaling != "none":
            parts.append(f"{self.tensor_scaling}-scaled")
        return " ".join(parts)

    def _policy(self, axis: int) -> dict[str, Any]:
        policy: dict[str, Any] = {"rounding": self.rounding}
        if self.rounding == "stochastic":
            policy["seed"] = self.seed
        if isinstance(self.format, ElementFormat):
            return policy
        return {**policy, "axis": axis, "scale_rule": self.scale_rule}

    def apply(self, x: Any, axis: int = -1) -> Quantized:
        """Quantize ``x`` (a float array or tensor; scaled formats block along
        ``axis``) and give the result with each element's grid. 1-D data goes
        to whole-axis and tiled formats as rows of ``row_width`` when it is
        set (see the module docstring)."""
        data = as_array(x)
        shape = self.laid_out_shape(data.shape)
        if shape != data.shape:
            rows = np.zeros(shape[0] * shape[1], data.dtype)
            rows[:data.size] = data
            done = self.apply(rows.reshape(shape), -1)  # the one axis of the data runs along the rows
            return Quantized(*(part.reshape(-1)[:data.size] for part in done))
        fmt, policy = self.format, self._policy(axis)
        grid_policy = {k: v for k, v in policy.items() if k in ("axis", "scale_rule")}
        if self.tensor_scaling == "none":
            ulp, largest = fmt.grid(data, **grid_policy)
            return Quantized(np.asarray(fmt.quantize(data, **policy), np.float64), ulp, np.abs(data) > largest)
        scale = absmax_scale(data, fmt.max)
        scaled = data.astype(np.float64) / scale
        ulp, largest = fmt.grid(scaled)
        return Quantized(fmt.quantize(scaled, **policy) * scale, ulp * scale, np.abs(scaled) > largest)


def needs_rows(fmt: Any) -> bool:
    """Whether a format scales whole rows (``block_size=None``) or 2-D tiles:
    what :attr:`Setting.row_width` lays 1-D data out for."""
    return isinstance(fmt, BlockFormat) and (fmt.block_size is None or fmt.block_shape is not None)


def takes_scale_rule(fmt: Any, rule: str | None) -> bool:
    """Whether ``rule`` is a scale rule of the format (None, its own
    default, always is): the power-of-two rules for E8M0 (MX) scales,
    ``"4over6"`` for E2M1 elements with mantissa scales, ``"mse"`` for any
    block format, ``"minmax"`` for zero points, ``"amax"`` for mantissa scales."""
    if rule is None:
        return True
    if not isinstance(fmt, BlockFormat):
        return False
    try:
        fmt.quantize(np.zeros((1, 1), np.float32), scale_rule=rule, backend="reference")
    except ValueError:
        return False
    return True


def absmax_scale(x: np.ndarray, fmt_max: float) -> float:
    """amax(|x|) / fmt_max over the finite values, nudged up by an ulp where
    float64 division would put amax / scale just above fmt_max; 1.0 when the
    values are all zero."""
    finite = np.abs(x[np.isfinite(x)])
    amax = float(finite.max()) if finite.size else 0.0
    if amax == 0:
        return 1.0
    scale = amax / fmt_max
    return scale if amax / scale <= fmt_max else float(np.nextafter(scale, np.inf))


def as_array(x: Any) -> np.ndarray:
    """A float array or tensor as a numpy array on the CPU: float32 and
    float64 as they are (no copy where possible), float16 and bfloat16 as
    float32, which holds them exactly, so that results wider than the
    input's dtype (bf16's 65536 from float16's 65504) can be measured."""
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        if t.dtype.is_floating_point and t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        x = t.numpy()
    array = np.asarray(x)
    if array.dtype.kind != "f":
        raise TypeError(f"data must be floating point, got dtype {array.dtype}")
    return array.astype(np.float32) if array.dtype == np.float16 else array
