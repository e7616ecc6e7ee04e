"""IntFormat: INT-k and fixed point.

A code is a ``bits``-wide two's complement integer q (plain binary when
unsigned); its value is q * 2**-frac_bits. ``narrow=True`` leaves the most
negative code unused so the range is symmetric (-127..127 for int8); the
unused code decodes to its two's complement value all the same.

Integers have no Inf or NaN: out-of-range values, +-Inf among them, always
saturate to the range ends (negatives saturate to 0 when unsigned). NaN
quantizes to NaN and cannot be encoded. Ties under ``nearest_even`` go to
the even integer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .arrays import pow2
from .base import check_bools, check_ints, check_name
from .element import ElementFormat
from .families import family
from .rounding import Rounder


@family
@dataclass(frozen=True)
class IntFormat(ElementFormat):
    """A ``bits``-wide integer, optionally with ``frac_bits`` fraction bits."""

    bits: int
    signed: bool = True
    narrow: bool = False
    frac_bits: int = 0
    name: str = field(default="", compare=False)

    has_inf = False
    has_nan = False

    def __post_init__(self) -> None:
        check_ints(self, "bits", "frac_bits")
        check_bools(self, "signed", "narrow")
        check_name(self)
        if not 2 <= self.bits <= 32:
            raise ValueError(f"an IntFormat has 2..32 bits, got {self.bits}")
        if not -64 <= self.frac_bits <= 64:
            raise ValueError(f"frac_bits must lie in [-64, 64], got {self.frac_bits}")
        if self.narrow and not self.signed:
            raise ValueError("narrow=True drops the most negative code, so it needs signed=True")
        if not self.name:
            name = f"{'' if self.signed else 'u'}int{self.bits}"
            name += "_narrow" if self.narrow else ""
            name += f"_f{self.frac_bits}" if self.frac_bits else ""
            object.__setattr__(self, "name", name)

    @property
    def nbits(self) -> int:
        """Width of a code in bits (the storage cost per element)."""
        return self.bits

    @property
    def qmin(self) -> int:
        """Smallest integer code value (before the 2**-frac_bits scale)."""
        if not self.signed:
            return 0
        return -(1 << (self.bits - 1)) + self.narrow

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def max(self) -> float:
        return self.qmax * 2.0 ** -self.frac_bits

    @property
    def min(self) -> float:
        """Most negative value (0 when unsigned)."""
        return self.qmin * 2.0 ** -self.frac_bits

    @property
    def min_subnormal(self) -> float:
        """The step between neighbouring values, 2**-frac_bits."""
        return 2.0 ** -self.frac_bits

    min_normal = min_subnormal
    eps = min_subnormal

    @property
    def emin(self) -> int:
        return -self.frac_bits

    @property
    def emax(self) -> int:
        return math.frexp(self.max)[1] - 1

    def values(self) -> np.ndarray:
        """Every value, sorted ascending (without the unused code when narrow)."""
        values = super().values()
        return values[values >= self.min]

    def grid_exact(self, x64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        largest = torch.where(x64 < 0, torch.full_like(x64, -self.min), torch.full_like(x64, self.max))
        return torch.full_like(x64, self.min_subnormal), largest

    def encode_exact(self, x64: torch.Tensor, rounder: Rounder, overflow: str):
        nan_in = torch.isnan(x64)
        # magnitudes far below one step all round alike; keeping them >= 2**-900
        # stops the scaling by 2**frac_bits from underflowing to zero. Above
        # 2**100 (beyond every IntFormat's max, 2**95) all saturate alike.
        a = torch.where(nan_in, 0.0, x64.abs()).clamp(max=2.0 ** 100)
        a = torch.where(a > 0, a.clamp(min=2.0 ** -900), a) * pow2(self.frac_bits)
        lo = torch.floor(a)
        upper = rounder.pick_upper(a, lo, lo + 1, torch.remainder(lo, 2) == 1)
        q = (lo + upper.to(torch.float64)) * torch.where(rounder.negative, -1.0, 1.0)
        q = q.clamp(self.qmin, self.qmax).to(torch.int64)
        codes = torch.where(nan_in, 0, q & ((1 << self.bits) - 1))
        return codes, nan_in

    def decode_exact(self, codes: torch.Tensor) -> torch.Tensor:
        q = codes - ((codes >> (self.bits - 1)) << self.bits) if self.signed else codes
        return q.to(torch.float64) * pow2(torch.tensor(-self.frac_bits))
