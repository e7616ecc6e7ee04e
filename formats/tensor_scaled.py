"""TensorScaledFormat: one float32 scale for a whole tensor, elements in an
element format (BitNet b1.58's ternary weights, BitNet's binary weights).

The scale s comes from the whole tensor, by ``scale_rule``:

- ``absmean`` (BitNet): the exact mean of |x| over every element, rounded
  once to float32 (nearest even);
- ``amax``: the largest magnitude over the element format's largest value,
  the exact quotient rounded once to float32.

A tensor of zeros gets s = 1. Each element is then x / s (exact in float64
for float32 and narrower inputs' rounding decisions, as in block formats)
rounded to the element format in the user's rounding mode, saturating; the
value is element * s, exact in float32 for ternary and binary elements and
rounded once to float32 otherwise. A NaN or Inf anywhere in the tensor makes
the scale NaN and every value NaN.

``ternary``: int2 with the most negative code unused ({-1, 0, 1}): q =
clamp(round_half_even(x / s), -1, 1) under ``nearest_even``. ``binary``: the
codebook {-1, +1}: under ``nearest_even`` q = +1 for x > 0 and -1 for
x <= 0 (a zero is the tie between them and goes to the even code, -1:
BitNet's Sign).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from . import chunks
from .arrays import as_tensor, as_torch, cast_exactly, float_dtype
from .base import Grid, check_name
from .chunks import chunk_slices, exact
from .element import ElementFormat
from .families import family

TENSOR_SCALE_RULES = ("absmean", "amax")

#: float64's exponents (of frexp) span -1073 .. 1024; an exact sum counts in units of 2**-1127
_UNIT_EXPONENT = 1074 + 53


def _exact_abs_sum(t: torch.Tensor, flush_subnormals: bool, with_sum: bool = True) -> tuple[int, float]:
    """The exact sum of |x| over t's finite elements as an integer count of
    2**-1127 (0 unless ``with_sum``), and the largest |x| (float64; NaN if
    any element is NaN or Inf)."""
    total, largest = 0, 0.0
    flat = t.reshape(-1)
    for part in chunk_slices(flat.numel(), chunks.CHUNK_ELEMENTS):
        a = exact(flat[part], flush_subnormals).abs()
        if not bool(torch.isfinite(a).all()):
            return 0, math.nan
        largest = max(largest, float(a.max()) if a.numel() else 0.0)
        if not with_sum:
            continue
        mantissa, exponent = torch.frexp(a)  # a = mantissa * 2**exponent, mantissa in [0.5, 1)
        significand = (mantissa * 2.0 ** 53).to(torch.int64)  # exact: < 2**53
        bins = (exponent.to(torch.int64) + 1073).clamp(min=0)
        high = torch.zeros(2100, dtype=torch.int64).scatter_add_(0, bins, significand >> 26)
        low = torch.zeros(2100, dtype=torch.int64).scatter_add_(0, bins, significand & ((1 << 26) - 1))
        for b in torch.nonzero(high | low).reshape(-1).tolist():  # bin b: significands of 2**(b - 1073 - 53)
            total += ((int(high[b]) << 26) + int(low[b])) << (b + 1)
    return total, largest


def float32_of(q: Fraction) -> float:
    """The exact rational q >= 0 rounded once to float32 (nearest, ties to
    even; Inf beyond float32's range)."""
    if q == 0:
        return 0.0
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    quantum = max(e - 23, -149)
    scaled = q / Fraction(2) ** quantum
    n = scaled.numerator // scaled.denominator
    rest = scaled - n
    n += rest > Fraction(1, 2) or (rest == Fraction(1, 2) and n % 2 == 1)
    value = math.ldexp(n, quantum)
    return value if value <= float(np.finfo(np.float32).max) else math.inf


@dataclass(frozen=True)
class TensorEncoded:
    """A tensor in a :class:`TensorScaledFormat`: the element codes (the
    element format's code dtype, the input's kind and shape) and the float32
    scale (NaN when the tensor held NaN or Inf)."""

    format: Any
    codes: Any
    scale: float

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def bits(self) -> float:
        """Exact storage bits per element: the codes and the one float32 scale."""
        count = max(math.prod(self.shape), 1)
        return self.format.element.nbits + 32 / count

    def decode(self, **options: Any) -> Any:
        return self.format.decode(self, **options)


@family
@dataclass(frozen=True)
class TensorScaledFormat:
    """``element`` values sharing one float32 scale per tensor, set by ``scale_rule``."""

    element: ElementFormat
    scale_rule: str = "absmean"
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.element, ElementFormat):
            raise TypeError(f"element must be an element format, got {type(self.element).__name__}")
        if not self.element.signed:
            raise ValueError(f"the element format must be signed; {self.element.name} is unsigned")
        self._check_rule(self.scale_rule)
        check_name(self)
        if not self.name:
            object.__setattr__(self, "name", f"tensor({self.element.name},{self.scale_rule})")

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def _check_rule(rule: str) -> str:
        if rule not in TENSOR_SCALE_RULES:
            raise ValueError(f"scale_rule must be one of {', '.join(TENSOR_SCALE_RULES)}; got {rule!r}")
        return rule

    @property
    def bits(self) -> int:
        """Bits per element, the element's code (the one scale amortises over the tensor)."""
        return self.element.nbits

    @property
    def max(self) -> float:
        """The largest finite value: float32's largest (values are element *
        scale rounded to float32; the scale comes from the tensor)."""
        return float(np.finfo(np.float32).max)

    @property
    def min_subnormal(self) -> float:
        """The smallest positive value (the element's smallest times float32's)."""
        return self.element.min_subnormal * 2.0 ** -149

    def scale_of(self, x: Any, *, scale_rule: str | None = None, flush_subnormals: bool = False) -> float:
        """The float32 scale of tensor ``x`` (NaN if it holds NaN or Inf)."""
        t, _ = as_tensor(x)
        rule = self._check_rule(scale_rule or self.scale_rule)
        total, largest = _exact_abs_sum(t, flush_subnormals, with_sum=rule == "absmean")
        if math.isnan(largest):
            return math.nan
        if rule == "absmean":
            scale = float32_of(Fraction(total, max(t.numel(), 1) << _UNIT_EXPONENT))
        else:
            scale = float32_of(Fraction(largest) / Fraction(self.element.max))
        return scale or 1.0

    def encode(self, x: Any, *, axis: Any = None, rounding: str = "nearest_even", scale_rule: str | None = None,
               seed: int | None = None, generator: torch.Generator | None = None, flush_subnormals: bool = False,
               backend: str | None = None, sr_bits: int | None = None) -> TensorEncoded:
        """The element codes of x / s and the scale s (see the module text).
        ``axis`` is accepted for the scaled formats' call signature and has
        no effect: the scale is per tensor. The other options as in
        :meth:`ElementFormat.quantize`."""
        t, kind = as_tensor(x)
        scale = self.scale_of(t, scale_rule=scale_rule, flush_subnormals=flush_subnormals)
        scaled = torch.empty(t.shape, dtype=torch.float64, device=t.device)
        flat, out = t.reshape(-1), scaled.reshape(-1)
        for part in chunk_slices(flat.numel(), chunks.CHUNK_ELEMENTS):
            out[part] = exact(flat[part], flush_subnormals) / scale if math.isfinite(scale) else 0.0
        codes = self.element.encode(scaled, rounding=rounding, overflow="saturate", seed=seed, generator=generator,
                                    backend=backend, sr_bits=sr_bits)
        return TensorEncoded(self, kind.give_back(codes), scale)

    def grid(self, x: Any, *, axis: Any = None, scale_rule: str | None = None, flush_subnormals: bool = False,
             backend: str | None = None) -> Grid:
        """Each element's grid once the tensor's scale is set: the element
        format's grid at x / s, times s (NaN everywhere when s is NaN);
        float64, in x's kind. ``axis`` and ``backend`` have no effect."""
        t, kind = as_tensor(x)
        scale = self.scale_of(t, scale_rule=scale_rule, flush_subnormals=flush_subnormals)
        ulp, largest = self.element.grid(exact(t, flush_subnormals) / scale)
        return Grid(kind.give_back(ulp * scale), kind.give_back(largest * scale))

    def decode(self, encoded: TensorEncoded, *, dtype: Any = None, backend: str | None = None) -> Any:
        """element value * scale, float32 unless ``dtype`` asks for float64;
        in the codes' kind and device."""
        if not isinstance(encoded, TensorEncoded) or encoded.format != self:
            raise TypeError(f"{self.name} decodes a TensorEncoded of its own (from {self.name}.encode), "
                            f"got {type(encoded).__name__}")
        codes = as_torch(encoded.codes)
        values = self.element.decode(codes, dtype=torch.float64, backend=backend)
        values = (values * encoded.scale).to(torch.float32).to(float_dtype(dtype))
        return values.cpu().numpy() if isinstance(encoded.codes, np.ndarray) else values

    def quantize(self, x: Any, **options: Any) -> Any:
        """What x becomes: decode(encode(x)) in x's kind, dtype and device
        (ValueError if x's dtype cannot hold a value exactly). Options as in
        :meth:`encode`."""
        t, kind = as_tensor(x)
        values = as_torch(self.decode(self.encode(t, **options), dtype=torch.float64))
        out, fits = cast_exactly(values.to(t.device), t.dtype)
        if not fits:
            raise kind.inexact_error()
        return kind.give_back(out)
