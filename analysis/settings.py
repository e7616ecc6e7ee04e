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
"""

from __future__ import annotations

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
            raise ValueError(f"scale_rule applies to MX block formats; {self.format.name} has none")
        if self.scale_rule is not None:
            self.format.quantize(np.zeros(1, np.float32), scale_rule=self.scale_rule, backend="reference")  # checks it

    @property
    def bits(self) -> float:
        """Storage bits per element, amortised block scales included (one
        per-tensor scale, 32 bits for the whole tensor, is not counted)."""
        return float(self.format.bits)

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
        ``axis``) and give the result with each element's grid."""
        data = as_array(x)
        fmt, policy = self.format, self._policy(axis)
        grid_policy = {k: v for k, v in policy.items() if k in ("axis", "scale_rule")}
        if self.tensor_scaling == "none":
            ulp, largest = fmt.grid(data, **grid_policy)
            return Quantized(np.asarray(fmt.quantize(data, **policy), np.float64), ulp, np.abs(data) > largest)
        scale = absmax_scale(data, fmt.max)
        scaled = data.astype(np.float64) / scale
        ulp, largest = fmt.grid(scaled)
        return Quantized(fmt.quantize(scaled, **policy) * scale, ulp * scale, np.abs(scaled) > largest)


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
