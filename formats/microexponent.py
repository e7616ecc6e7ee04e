"""MicroexponentFormat: two-level shared exponents (Rouhani et al., "With
Shared Microexponents, A Little Shifting Goes a Long Way", ISCA 2023).

A block of ``block_size`` (k1) elements shares a ``exp_bits``-bit (d1)
exponent; each sub-block of ``sub_block`` (k2) elements shares a
``micro_bits``-bit (d2) shift; each element is a sign and an ``man_bits``-bit
(m) magnitude. For a block:

- e_max = max floor(log2 |x|) over the block, clamped to the shared
  exponent's range [-(2**(d1-1) - 1), 2**(d1-1) - 1] ([-127, 127] for d1 = 8;
  the top code is NaN). An all-zero block takes the lowest exponent.
- a sub-block's shift is e_max - (its own max floor(log2 |x|)), clamped to
  [0, 2**d2 - 1]; with d2 = 1 it is 1 iff every element of the sub-block has
  floor(log2 |x|) <= e_max - 1.
- step = 2**(e_max - shift - m + 1); magnitude = round(|x| / step) under the
  rounding mode, clamped to 2**m - 1 (saturation); value = sign * magnitude * step.

A block holding NaN or Inf gets the NaN exponent code and decodes to NaN.
Storage per element: 1 + m + d1/k1 + d2/k2 bits (MX9: 9, MX6: 6, MX4: 4).
d2 = 0 is plain block floating point (MSFP12, MSFP16).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from .arrays import pow2
from .base import check_ints, check_name
from .blocking import BlockCodes, check_block_size
from .families import family
from .packing import MAX_CODE_BITS
from .rounding import Rounder
from .scaled import ScaledFormat


@family
@dataclass(frozen=True)
class MicroexponentFormat(ScaledFormat):
    """Sign + ``man_bits`` magnitudes under a shared exponent and microexponents."""

    man_bits: int
    block_size: int = 16
    sub_block: int = 2
    exp_bits: int = 8
    micro_bits: int = 1
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        check_ints(self, "man_bits", "sub_block", "exp_bits", "micro_bits")
        check_block_size(self, "block_size")
        check_name(self)
        if not 1 <= self.man_bits < MAX_CODE_BITS:  # sign + magnitude must pack
            raise ValueError(f"man_bits must lie in 1..{MAX_CODE_BITS - 1}, got {self.man_bits}")
        if not 2 <= self.exp_bits <= 10:
            raise ValueError(f"exp_bits must lie in 2..10, got {self.exp_bits}")
        if not 0 <= self.micro_bits <= 4:
            raise ValueError(f"micro_bits must lie in 0..4, got {self.micro_bits}")
        if self.block_size < 1 or self.sub_block < 1 or self.block_size % self.sub_block:
            raise ValueError(f"sub_block ({self.sub_block}) must be a positive divisor of block_size ({self.block_size})")
        if not self.name:
            object.__setattr__(self, "name", f"me(m{self.man_bits},{self.block_size},{self.sub_block},d{self.exp_bits},d{self.micro_bits})")

    # -- properties ------------------------------------------------------------------
    @property
    def bits(self) -> float:
        """Storage bits per element: sign, magnitude, amortised exponents."""
        return 1 + self.man_bits + self.exp_bits / self.block_size + self.micro_bits / self.sub_block

    @property
    def element_code_bits(self) -> int:
        return 1 + self.man_bits

    @property
    def scale_code_bits(self) -> int:
        return self.exp_bits

    @property
    def subscale_code_bits(self) -> int:
        return max(self.micro_bits, 1)

    @property
    def subscales_per_block(self) -> int:
        return self.block_size // self.sub_block if self.micro_bits else 0

    @property
    def exp_bias(self) -> int:
        """Bias of the shared exponent code: code = e_max + exp_bias."""
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def emax(self) -> int:
        return self.exp_bias

    @property
    def emin(self) -> int:
        return -self.exp_bias

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value: magnitude 1 at the lowest exponent, fully shifted."""
        return 2.0 ** (self.emin - ((1 << self.micro_bits) - 1) - self.man_bits + 1)

    @property
    def max(self) -> float:
        return float((1 << self.man_bits) - 1) * 2.0 ** (self.emax - self.man_bits + 1)

    @cached_property
    def largest_per_scale_code(self) -> torch.Tensor:
        codes = torch.arange(1 << self.exp_bits)
        largest = ((1 << self.man_bits) - 1) * pow2(codes - self.exp_bias - self.man_bits + 1)
        return torch.where(codes == (1 << self.exp_bits) - 1, torch.nan, largest)

    # -- exact kernels ---------------------------------------------------------------
    def _resolve_rule(self, scale_rule: str | None) -> None:
        if scale_rule is not None:
            raise ValueError(f"scale_rule applies to MX block formats; {self.name} has fixed shared-exponent rules")

    def encode_blocks_exact(self, blocks: torch.Tensor, rounder: Rounder, scale_rule: str | None,
                       tensor_scale: float | None) -> BlockCodes:
        finite = torch.isfinite(blocks)
        bad_block = ~finite.all(dim=-1)
        a = torch.where(finite, blocks.abs(), 0.0)
        _, ex = torch.frexp(a)
        no_exponent = -(1 << 20)
        floor_log2 = torch.where(a > 0, ex.to(torch.int64) - 1, no_exponent)
        e_max = floor_log2.amax(dim=-1).clamp(self.emin, self.emax)
        sub_shape = (*floor_log2.shape[:-1], self.block_size // self.sub_block, self.sub_block)
        sub_max = floor_log2.reshape(sub_shape).amax(dim=-1)
        shift = (e_max[..., None] - sub_max).clamp(0, (1 << self.micro_bits) - 1)
        step_exp = (e_max[..., None] - shift - self.man_bits + 1).repeat_interleave(self.sub_block, dim=-1)

        t = a * pow2(-step_exp)
        lo = torch.floor(t)
        upper = rounder.pick_upper(t, lo, lo + 1, torch.remainder(lo, 2) == 1)
        magnitude = (lo + upper.to(torch.float64)).clamp(max=(1 << self.man_bits) - 1).to(torch.int64)
        elements = magnitude + (rounder.negative.to(torch.int64) << self.man_bits)
        elements = torch.where(bad_block[..., None], 0, elements)
        scales = torch.where(bad_block, (1 << self.exp_bits) - 1, e_max + self.exp_bias)
        return BlockCodes(elements, scales, shift if self.micro_bits else None)

    def _steps(self, codes: BlockCodes) -> torch.Tensor:
        """Each element's step 2**(e_max - shift - m + 1) (NaN blocks aside)."""
        e_max = codes.scales - self.exp_bias
        shift = codes.subscales if codes.subscales is not None else torch.zeros((*e_max.shape, self.block_size // self.sub_block), dtype=torch.int64, device=e_max.device)
        return pow2((e_max[..., None] - shift - self.man_bits + 1).repeat_interleave(self.sub_block, dim=-1))

    def _nan_blocks(self, codes: BlockCodes) -> torch.Tensor:
        """Where a block's exponent is the NaN code, broadcast over its elements."""
        return (codes.scales == (1 << self.exp_bits) - 1)[..., None]

    def grid_blocks_exact(self, blocks: torch.Tensor, codes: BlockCodes) -> tuple[torch.Tensor, torch.Tensor]:
        step = torch.where(self._nan_blocks(codes), torch.nan, self._steps(codes))
        return step, step * ((1 << self.man_bits) - 1)

    def decode_blocks_exact(self, codes: BlockCodes) -> torch.Tensor:
        magnitude = (codes.elements & ((1 << self.man_bits) - 1)).to(torch.float64)
        negative = (codes.elements >> self.man_bits).bool()
        values = magnitude * self._steps(codes)
        values = torch.where(negative, -values, values)
        return torch.where(self._nan_blocks(codes), torch.nan, values)
