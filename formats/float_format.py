"""FloatFormat: FP-k formats of any width from 2 to 32 bits.

A code is ``sign | exponent field E | mantissa field M`` (no sign bit when
unsigned). With subnormals, E == 0 codes are subnormal: M * 2**(1 - bias - m).
Without subnormals (as in gfloat), E == 0 is an ordinary binade
(1 + M/2**m) * 2**-bias, except that its M == 0 code is zero when the format
has a mantissa; with no mantissa (E8M0) there is no zero at all.

``specials`` says what the top codes mean:

- ``"ieee"``: E all ones is Inf (M == 0) or NaN (M != 0); -0 exists.
- ``"fn"``: no Inf; only the all-ones magnitude code is NaN (OCP E4M3, E8M0).
- ``"fnuz"``: no Inf, no -0; the negative-zero code is the single NaN.
- ``"p3109"``: IEEE P3109's extended formats: signed, the top code of each
  sign is +-Inf and the negative-zero code is the single NaN; unsigned, the
  all-ones code is the NaN and the code below it +Inf. (P3109's finite
  formats are ``"fnuz"`` signed and ``"fn"`` unsigned.)
- ``"none"``: every code is a finite number (OCP E2M1, E3M2, E2M3).

Rounding is correct on the exact input value. Rounding past the largest
finite value is decided as if the grid continued above it (IEEE 754 §7.4):
``overflow="saturate"`` then clamps to +-max, ``"inf"`` gives +-Inf (or +-max
for modes that round toward zero), ``"nan"`` gives NaN where Inf would be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .arrays import pow2
from .base import check_bools, check_ints, check_name
from .element import ElementFormat
from .families import family
from .rounding import Rounder

SPECIALS = ("ieee", "fn", "fnuz", "p3109", "none")


@family
@dataclass(frozen=True)
class FloatFormat(ElementFormat):
    """A sign/exponent/mantissa format. ``bias`` defaults to 2**(exp_bits-1) - 1."""

    exp_bits: int
    man_bits: int
    bias: int | None = None
    signed: bool = True
    subnormals: bool = True
    specials: str = "ieee"
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_ints(self, "exp_bits", "man_bits")
        check_bools(self, "signed", "subnormals")
        check_name(self)
        if self.exp_bits < 1:
            raise ValueError(f"exp_bits must be at least 1, got {self.exp_bits}")
        if self.man_bits < 0:
            raise ValueError(f"man_bits must be at least 0, got {self.man_bits}")
        if self.specials not in SPECIALS:
            raise ValueError(f"specials must be one of {', '.join(SPECIALS)}; got {self.specials!r}")
        nbits = self.signed + self.exp_bits + self.man_bits
        if not 2 <= nbits <= 32:
            raise ValueError(f"a FloatFormat has 2..32 bits; sign+exp_bits+man_bits = {nbits}")
        if not self.signed and self.specials == "fnuz":
            raise ValueError(f"specials={self.specials!r} puts NaN on the negative-zero code, so it needs signed=True")
        if self.specials == "ieee" and self.exp_bits < 2:
            raise ValueError("specials='ieee' reserves the top exponent, so it needs exp_bits >= 2")
        if self.bias is None:
            object.__setattr__(self, "bias", (1 << (self.exp_bits - 1)) - 1)
        check_ints(self, "bias")
        if self.subnormals is False and self.specials == "ieee" and self.man_bits == 0:
            raise ValueError("an IEEE-style format without mantissa and subnormals has no zero and no NaN; use specials='fn'")
        if self.signed and not self.has_zero:
            raise ValueError("a signed format needs a zero: give it man_bits >= 1 or subnormals=True (only unsigned formats like E8M0 may lack zero)")
        if self.max_code < 1:
            raise ValueError("the format has no finite nonzero value")
        top_exponent = (self.max_code >> self.man_bits) - self.bias
        if self.lowest_exponent - self.man_bits < -1000 or top_exponent > 1000:
            raise ValueError("the format's values must lie within 2**-1000 .. 2**1001 (float64 computes them exactly there): check bias and exp_bits")
        if not self.name:
            object.__setattr__(self, "name", self._default_name())

    def _default_name(self) -> str:
        parts = [f"e{self.exp_bits}m{self.man_bits}"]
        if self.specials != "ieee":
            parts.append(self.specials)
        if self.bias != (1 << (self.exp_bits - 1)) - 1:
            parts.append(f"b{self.bias}")
        if not self.signed:
            parts.append("unsigned")
        if not self.subnormals:
            parts.append("nosub")
        return "_".join(parts)

    # -- code layout -----------------------------------------------------------------
    @property
    def is_float32(self) -> bool:
        """Whether this is IEEE binary32 itself, whose codes are float32 bits."""
        return (self.exp_bits, self.man_bits, self.bias, self.signed, self.subnormals, self.specials) == (
            8, 23, 127, True, True, "ieee")

    @property
    def nbits(self) -> int:
        return self.signed + self.exp_bits + self.man_bits

    @property
    def bits(self) -> int:
        """Storage cost per element in bits (the code width)."""
        return self.nbits

    @property
    def magnitude_bits(self) -> int:
        """Width of the magnitude field (exponent and mantissa)."""
        return self.exp_bits + self.man_bits

    @property
    def sign_code(self) -> int:
        """The sign bit as a code (0 when unsigned): a value's code is its
        magnitude code plus this when negative."""
        return (1 << self.magnitude_bits) if self.signed else 0

    @property
    def max_code(self) -> int:
        """Magnitude code of the largest finite value."""
        top = (1 << self.magnitude_bits) - 1
        if self.specials == "ieee":
            return ((1 << self.exp_bits) - 1 << self.man_bits) - 1
        if self.specials == "fn" or (self.specials == "p3109" and self.signed):
            return top - 1
        if self.specials == "p3109":
            return top - 2
        return top

    @property
    def inf_code(self) -> int | None:
        """Magnitude code of infinity, or None without infinities."""
        if self.specials == "ieee":
            return (1 << self.exp_bits) - 1 << self.man_bits
        if self.specials == "p3109":
            return (1 << self.magnitude_bits) - 1 - (not self.signed)
        return None

    @property
    def has_inf(self) -> bool:
        return self.inf_code is not None

    @property
    def has_nan(self) -> bool:
        if self.specials == "ieee":
            return self.man_bits > 0
        return self.specials != "none"

    @property
    def has_zero(self) -> bool:
        return self.subnormals or self.man_bits > 0

    @property
    def has_negative_zero(self) -> bool:
        return self.signed and self.specials in ("ieee", "fn", "none")

    @property
    def negative_zero_is_nan(self) -> bool:
        """Whether the negative-zero code is the format's single NaN (FNUZ, signed P3109)."""
        return self.signed and self.specials in ("fnuz", "p3109")

    @property
    def nan_codes(self) -> tuple[int, int] | None:
        """The codes NaN encodes to, (from positive, from negative) inputs;
        None without NaN. Formats with a NaN of each sign keep the sign."""
        if not self.has_nan:
            return None
        if self.negative_zero_is_nan:
            return self.sign_code, self.sign_code
        mag = self.inf_code + (1 << (self.man_bits - 1)) if self.specials == "ieee" else (1 << self.magnitude_bits) - 1
        return mag, mag + self.sign_code

    def nan_code(self, negative: torch.Tensor) -> torch.Tensor:
        """The NaN code for NaN inputs of the given signs (int64)."""
        positive, negative_nan = self.nan_codes
        return torch.where(negative, negative_nan, positive).to(torch.int64)

    # -- properties ------------------------------------------------------------------
    @property
    def lowest_exponent(self) -> int:
        """Exponent of the lowest binade (the subnormal quantum is 2**(this - m))."""
        return 1 - self.bias if self.subnormals else -self.bias

    @property
    def max(self) -> float:
        """Largest finite value."""
        return self._mag_value(self.max_code)

    def _mag_value(self, mag: int) -> float:
        return float(self.decode_exact(torch.tensor(mag, dtype=torch.int64)))

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (a subnormal when the format has them)."""
        return self._mag_value(1 if self.has_zero else 0)

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, 2**emin (without subnormals: the
        smallest positive value)."""
        return 2.0 ** self.emin if self.subnormals else self.min_subnormal

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade."""
        return self.lowest_exponent

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value's binade."""
        return math.frexp(self.max)[1] - 1

    @property
    def eps(self) -> float:
        """Distance from 1.0 to the next larger value, 2**-man_bits."""
        return 2.0 ** -self.man_bits

    # -- exact kernels ---------------------------------------------------------------
    def _floor_neighbours(self, a: torch.Tensor):
        """For finite a >= 0: the magnitude code of the largest representable
        value <= a (-1 if there is none), that value, and the next grid value
        above it (which may lie beyond max: the grid continues past the top)."""
        m = self.man_bits
        e0 = self.lowest_exponent
        _, ex = torch.frexp(a)
        e = torch.where(a == 0, e0, ex.to(torch.int64) - 1).clamp(min=e0)
        k = e - m
        sig = torch.floor(a * pow2(-k))
        lo, hi = sig * pow2(k), (sig + 1) * pow2(k)
        if self.subnormals:
            code = (e - e0) * (1 << m) + sig.to(torch.int64)
            return code, lo, hi
        code = (e - e0) * (1 << m) + sig.to(torch.int64) - (1 << m)
        smallest = self.min_subnormal
        floor_code = 0 if self.has_zero else -1
        below = code <= 0 if self.has_zero else code < 0
        code = torch.where(below, floor_code, code)
        lo = torch.where(below, 0.0, lo)
        hi = torch.where(below, smallest, hi)
        return code, lo, hi

    def grid_exact(self, x64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.where(torch.isfinite(x64), x64.abs(), self.max)
        _, ex = torch.frexp(a)
        binade = torch.where(a == 0, self.emin, ex.to(torch.int64) - 1).clamp(self.emin, self.emax)
        ulp = pow2(binade - self.man_bits)
        if not self.subnormals:  # below the smallest positive value the neighbours are 0 and it
            ulp = torch.where(a < self.min_subnormal, self.min_subnormal, ulp)
        return ulp, torch.full_like(a, self.max)

    def encode_exact(self, x64: torch.Tensor, rounder: Rounder, overflow: str):
        negative = rounder.negative
        nan_in, inf_in = torch.isnan(x64), torch.isinf(x64)
        a = torch.where(nan_in | inf_in, 0.0, x64.abs())
        code_lo, lo, hi = self._floor_neighbours(a)
        upper = rounder.pick_upper(a, lo, hi, (code_lo & 1).bool()) | (code_lo < 0)
        mag = code_lo + upper.to(torch.int64)

        overflowed = mag > self.max_code
        to_max = torch.as_tensor(overflow == "saturate", device=a.device) | torch.as_tensor(rounder.toward_zero(), device=a.device)
        mag = torch.where(overflowed & to_max, self.max_code, mag)
        special = (overflowed & ~to_max) | (inf_in & (overflow != "saturate"))
        mag = torch.where(inf_in & (overflow == "saturate"), self.max_code, mag)
        if overflow == "inf":
            mag = torch.where(special, self.inf_code, mag)
        sign = negative if self.has_negative_zero else negative & (mag != 0)
        codes = mag + sign.to(torch.int64) * self.sign_code
        if self.has_nan:
            nan_out = nan_in | special if overflow == "nan" else nan_in
            codes = torch.where(nan_out, self.nan_code(negative), codes)

        invalid = nan_in if not self.has_nan else torch.zeros_like(nan_in)
        if not self.signed:
            invalid = invalid | (negative & (x64 != 0))
            codes = torch.where(invalid, 0, codes)
        if not self.has_zero:
            invalid = invalid | (x64 == 0)
        return codes, invalid

    def decode_exact(self, codes: torch.Tensor) -> torch.Tensor:
        m, bias = self.man_bits, self.bias
        mag = codes & ((1 << self.magnitude_bits) - 1)
        negative = (codes >> self.magnitude_bits).bool() if self.signed else torch.zeros_like(codes, dtype=torch.bool)
        e_field, m_field = mag >> m, (mag & ((1 << m) - 1)).to(torch.float64)
        normal = ((1 << m) + m_field) * pow2(e_field - bias - m)
        if self.subnormals:
            value = torch.where(e_field == 0, m_field * pow2(torch.tensor(1 - bias - m)), normal)
        else:
            value = torch.where(mag == 0, 0.0, normal) if self.has_zero else normal
        beyond = mag > self.max_code
        if self.has_inf:
            value = torch.where(beyond & (mag == self.inf_code), torch.inf, value)
            value = torch.where(beyond & (mag != self.inf_code), torch.nan, value)
        else:
            value = torch.where(beyond, torch.nan, value)
        value = torch.where(negative, -value, value)
        if self.negative_zero_is_nan:
            value = torch.where(codes == self.sign_code, torch.nan, value)
        return value
