"""CodebookFormat: elements that are entries of a table of values (QLoRA's
NF4, bitsandbytes' FP4, ternary and binary weights, k-means codebooks).

A code is the index of its value in the table, which is strictly
increasing: code 0 is the most negative value. Codes past the table's end
(up to the next power of two) are unused and decode to NaN. There is no NaN
code and no infinity: NaN inputs quantize to NaN and cannot be encoded, and
every input beyond the table's ends (+-Inf too) takes the end value, in
every rounding mode (``overflow`` is ``"saturate"`` only).

Rounding acts on the two table values around the exact input x, ``lo < x <
hi`` (an input equal to a table value keeps it; a zero input gives the
table's 0.0, which is +0.0):

- ``nearest_even``: the nearer; a tie goes to the even code.
- ``nearest_away``: the nearer; a tie goes to the value of larger
  magnitude (when both have the same, x is a zero: to hi for +0.0, to lo
  for -0.0).
- ``toward_zero``: lo for x with a clear sign bit, hi for x with a set one;
  ``up``: hi; ``down``: lo; ``odd``: the one with the odd code.
- ``stochastic``: hi with probability (x - lo) / (hi - lo) (see
  :class:`~lowbit.formats.rounding.Rounder`, computed in float64).

Midpoints are compared exactly: the table's values are float32 numbers and
each neighbouring pair sums exactly in float64 (checked when the format is
built).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from .base import check_name
from .element import ElementFormat
from .families import family
from .rounding import Rounder

#: The largest table: codes of at most 16 bits.
MAX_TABLE = 1 << 16

#: QLoRA's NormalFloat4 (Dettmers et al. 2023, appendix E; bitsandbytes'
#: table): the quantiles of a standard normal, normalised to [-1, 1], with
#: an exact zero. float32 values.
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)

#: bitsandbytes' FP4 as its kernels dequantize it: the magnitudes
#: 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1 (E2M1's 0, 0.0625, 2, 3, 4, 6, 8, 12
#: over 12) as the float32 constants of its CUDA source, and their negatives.
FP4_BNB_MAGNITUDES = tuple(float(np.float32(v)) for v in (
    "0.0", "5.208333333e-03", "0.16666667", "0.25", "0.33333333", "0.5", "0.66666667", "1.0"))
FP4_BNB_VALUES = tuple(sorted({-v for v in FP4_BNB_MAGNITUDES} | set(FP4_BNB_MAGNITUDES)))

#: A 4-bit codebook fitted by :func:`~lowbit.formats.codebook_fit.fit_codebook`
#: to standard normal weights normalised per block of 64 by their absmax
#: (``numpy.random.default_rng(0).standard_normal(2**16)`` in rows of 64,
#: each divided by its largest magnitude in float64): NF4's derivation
#: (normal weights, absmax blocks of 64) answered by k-means instead of
#: quantiles. tests/test_codebooks.py fits it again and compares.
KMEANS4_VALUES = (
    -0.9469253420829773, -0.7401432394981384, -0.5897030830383301, -0.46326082944869995, -0.349686861038208,
    -0.24397213757038116, -0.14354051649570465, -0.04642057418823242, 0.049463145434856415, 0.14551691710948944,
    0.2432253509759903, 0.34739723801612854, 0.46196338534355164, 0.5895355343818665, 0.7462488412857056,
    0.9499713182449341,
)


def _table_of(values: Any) -> tuple[float, ...]:
    """``values`` as a checked tuple of floats (see :class:`CodebookFormat`)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64, copy=True).numpy()  # a copy: never pin the caller's storage
    if isinstance(values, str | bytes) or not hasattr(values, "__len__"):
        raise TypeError(f"table must be a sequence of numbers (a list, tuple or array), got {type(values).__name__}")
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise TypeError(f"table must hold numbers: {e}") from None
    if not 2 <= array.size <= MAX_TABLE:
        raise ValueError(f"table must hold 2 to {MAX_TABLE} values, got {array.size}")
    if not np.isfinite(array).all():
        raise ValueError("table values must be finite (a codebook has no NaN or Inf)")
    if not (array.astype(np.float32).astype(np.float64) == array).all():
        bad = array[array.astype(np.float32).astype(np.float64) != array][0]
        raise ValueError(f"table values must be float32 numbers; {bad!r} is not (round them with np.float32 first)")
    array = array + 0.0  # -0.0 counts as 0.0
    if not (np.diff(array) > 0).all():
        raise ValueError("table values must be strictly increasing (sort them and drop repeats)")
    lo, hi = array[:-1], array[1:]
    total = lo + hi  # exact unless the two lie far apart in magnitude: Knuth's TwoSum gives the error
    part = total - lo
    if not ((lo - (total - part)) + (hi - part) == 0).all():
        raise ValueError("each pair of neighbouring table values must sum exactly in float64 "
                         "(their magnitudes lie too far apart)")
    return tuple(float(v) for v in array)


@family
@dataclass(frozen=True)
class CodebookFormat(ElementFormat):
    """Elements that are entries of ``table`` (strictly increasing float32
    numbers, 2 to 65536 of them); a code is the index of its value."""

    table: tuple[float, ...]
    name: str = field(default="", compare=False)

    has_inf = False
    has_nan = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", _table_of(self.table))
        check_name(self)
        if not self.name:
            object.__setattr__(self, "name", f"codebook{len(self.table)}")

    # -- properties ------------------------------------------------------------------
    @property
    def nbits(self) -> int:
        return max(1, (len(self.table) - 1).bit_length())

    @property
    def bits(self) -> int:
        """Storage cost per element in bits (the code width)."""
        return self.nbits

    @property
    def signed(self) -> bool:
        """Whether the table holds negative values."""
        return self.table[0] < 0

    @property
    def max(self) -> float:
        """The largest magnitude in the table."""
        return max(abs(self.table[0]), abs(self.table[-1]))

    @property
    def min_subnormal(self) -> float:
        """The smallest nonzero magnitude in the table."""
        return min(abs(v) for v in self.table if v != 0)

    min_normal = min_subnormal

    @property
    def emax(self) -> int:
        """Exponent of the largest magnitude's binade."""
        return math.frexp(self.max)[1] - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest nonzero magnitude's binade."""
        return math.frexp(self.min_subnormal)[1] - 1

    @cached_property
    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The table (float64), and every code's value (NaN past the table)."""
        table = torch.tensor(self.table, dtype=torch.float64)
        by_code = torch.full((1 << self.nbits,), torch.nan, dtype=torch.float64)
        by_code[: len(self.table)] = table
        return table, by_code

    # -- exact kernels ---------------------------------------------------------------
    def _neighbours(self, x64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For x64 without NaN: the index of the largest table value <= x
        (-1 below the table), and the table values at that index and the
        next (clamped into the table)."""
        table = self._tables[0].to(x64.device)
        below = torch.searchsorted(table, x64.contiguous(), right=True) - 1
        lo_index = below.clamp(0, len(self.table) - 2)
        return below, table[lo_index], table[lo_index + 1]

    def grid_exact(self, x64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, lo, hi = self._neighbours(torch.where(torch.isnan(x64), 0.0, x64))
        largest = torch.full_like(x64, self.table[-1])
        if self.signed:
            largest = torch.where(x64 < 0, -self.table[0], largest)
        return hi - lo, largest

    def encode_exact(self, x64: torch.Tensor, rounder: Rounder, overflow: str) -> tuple[torch.Tensor, torch.Tensor]:
        invalid = torch.isnan(x64)
        x = torch.where(invalid, 0.0, x64)
        below, lo, hi = self._neighbours(x)
        last = len(self.table) - 1
        between = (below >= 0) & (below < last) & (x > lo)
        lo_index = below.clamp(0, last - 1)
        upper = between & self._pick_upper(rounder, x, lo, hi, (lo_index & 1).bool())
        codes = torch.where(below < 0, 0, torch.where(below >= last, last, lo_index + upper.to(torch.int64)))
        return torch.where(invalid, 0, codes), invalid

    @staticmethod
    def _pick_upper(rounder: Rounder, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                    lo_is_odd: torch.Tensor) -> torch.Tensor:
        """Whether the mode picks ``hi`` for signed values ``lo < x < hi``
        (the Rounder decides on magnitudes; here the table's order is the
        values' own)."""
        negative = rounder.negative
        if rounder.mode == "nearest_away":
            twice, mid = 2 * x, lo + hi
            return (twice > mid) | ((twice == mid) & ~negative)
        if rounder.mode == "toward_zero":
            return negative.clone()
        if rounder.mode in ("up", "down"):
            return torch.full_like(negative, rounder.mode == "up")
        return rounder.pick_upper(x, lo, hi, lo_is_odd)

    def decode_exact(self, codes: torch.Tensor) -> torch.Tensor:
        return self._tables[1].to(codes.device)[codes]
