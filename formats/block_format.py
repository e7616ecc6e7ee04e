"""BlockFormat: an element format, a block size along an axis, and a scale
format with a scale rule (OCP MX, NVFP4).

A block's value is ``element * scale`` (``* tensor_scale`` with NVFP4's
per-tensor scale). Elements always saturate. A block holding NaN or Inf gets
the NaN scale code and decodes to all NaN. An all-zero block gets the
smallest scale and zero elements.

Power-of-two scales (a scale format without mantissa, E8M0) follow one of
four rules, with amax the block's largest magnitude, ``emax_elem`` the
exponent of the element's largest value and ``max_elem`` that value:

- ``floor`` (OCP MX v1.0): 2**(floor(log2 amax) - emax_elem)
- ``ceil``: 2**(ceil(log2 amax) - emax_elem)
- ``rceil`` (NVIDIA): 2**ceil(log2(amax / max_elem)), the smallest power of
  two with amax / scale <= max_elem
- ``even``: amax first rounded to nearest (ties to even) at the element's
  mantissa width, then the floor rule

The scale exponent is clamped to the scale format's range ([-127, 127] for
E8M0). A scale format with a mantissa (NVFP4's E4M3) uses the ``amax`` rule:
amax / max_elem rounded to nearest even in the scale format (saturating); a
block whose scale rounds to zero decodes to zeros. amax / max_elem and
x / scale are formed in float64, which is exact for float32 and narrower
inputs' rounding decisions (a float32 quotient cannot land within 2**-53 of
a tie without being one); float64 inputs can differ in the last place.

``tensor_scale=True`` (NVFP4's second level): a float32 scale
ts = float32(amax_tensor) / (max_scale * max_elem), computed in float32,
divides first; decoding multiplies element * block scale (exact) by ts in
float32, so decoded values are float32 numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from . import chunks
from .arrays import pow2
from .base import check_bools, check_name
from .blocking import BlockCodes, check_block_size
from .chunks import chunk_slices, exact
from .element import ElementFormat
from .families import family
from .float_format import FloatFormat
from .int_format import IntFormat
from .rounding import Rounder
from .packing import MAX_CODE_BITS
from .scaled import ScaledFormat

POWER_OF_TWO_RULES = ("floor", "ceil", "rceil", "even")

E8M0 = FloatFormat(8, 0, bias=127, signed=False, subnormals=False, specials="fn", name="e8m0")


@family
@dataclass(frozen=True)
class BlockFormat(ScaledFormat):
    """``element`` values sharing one ``scale`` per ``block_size`` elements."""

    element: ElementFormat
    block_size: int = 32
    scale: FloatFormat = E8M0
    scale_rule: str = ""
    tensor_scale: bool = False
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.element, ElementFormat):
            raise TypeError(f"element must be an element format (FloatFormat, IntFormat, ...), "
                            f"got {type(self.element).__name__}")
        if not isinstance(self.scale, FloatFormat):
            raise TypeError(f"scale must be a FloatFormat, got {type(self.scale).__name__}")
        check_bools(self, "tensor_scale")
        check_name(self)
        check_block_size(self, "block_size")
        if not self.element.signed:
            raise ValueError(f"the element format must be signed (a block holds zeros and negatives); "
                             f"{self.element.name} is unsigned")
        if self.element.nbits > MAX_CODE_BITS:
            raise ValueError(f"the element format packs at most {MAX_CODE_BITS}-bit codes; "
                             f"{self.element.name} has {self.element.nbits}")
        if not self.scale.has_nan:
            raise ValueError(f"the scale format needs a NaN code for NaN blocks; {self.scale.name} has none")
        if not self.scale_rule:
            object.__setattr__(self, "scale_rule", "floor" if self.power_of_two_scale else "amax")
        self._check_rule(self.scale_rule)
        if self.tensor_scale and self.power_of_two_scale:
            raise ValueError("tensor_scale=True applies to scale formats with a mantissa (NVFP4's E4M3), not to power-of-two scales")
        if not self.name:
            object.__setattr__(self, "name", f"mx({self.element.name},{self.block_size})" if self.scale == E8M0
                               else f"block({self.element.name},{self.block_size},{self.scale.name})")

    @property
    def power_of_two_scale(self) -> bool:
        """Whether the scales are powers of two (a scale format without mantissa, E8M0)."""
        return self.scale.man_bits == 0

    def _resolve_rule(self, scale_rule: str | None) -> str:
        return self._check_rule(scale_rule or self.scale_rule)

    def _check_rule(self, rule: str) -> str:
        allowed = POWER_OF_TWO_RULES if self.power_of_two_scale else ("amax",)
        if rule not in allowed:
            raise ValueError(f"scale_rule for {self.scale.name} scales must be one of {', '.join(allowed)}; got {rule!r}")
        return rule

    # -- properties ------------------------------------------------------------------
    @property
    def bits(self) -> float:
        """Storage bits per element, the amortised scale included (MXFP4: 4.25)."""
        return self.element.nbits + self.scale.nbits / self.block_size

    @property
    def element_code_bits(self) -> int:
        return self.element.nbits

    @property
    def scale_code_bits(self) -> int:
        return self.scale.nbits

    @property
    def max(self) -> float:
        """Largest finite value: the largest element times the largest scale."""
        return self.element.max * self.scale.max

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value: the smallest element times the smallest scale."""
        return self.element.min_subnormal * self.scale.min_subnormal

    @property
    def element_mantissa_bits(self) -> int:
        """The element's mantissa width, which the ``even`` scale rule rounds
        amax to (an integer element's magnitude bits below its top one)."""
        if isinstance(self.element, IntFormat):
            return max(self.element.nbits - 1 - self.element.signed, 0)
        return self.element.man_bits

    # -- exact kernels ---------------------------------------------------------------
    def _scale_exponent(self, amax: torch.Tensor, rule: str) -> torch.Tensor:
        """Power-of-two scale exponents for positive finite amax."""
        _, ex = torch.frexp(amax)
        floor_log2 = ex.to(torch.int64) - 1
        if rule == "floor":
            return floor_log2 - self.element.emax
        if rule == "ceil":
            is_pow2 = amax == pow2(floor_log2)
            return floor_log2 + (~is_pow2).to(torch.int64) - self.element.emax
        if rule == "even":
            m = self.element_mantissa_bits
            carry = amax >= pow2(floor_log2) * (2.0 - 2.0 ** -(m + 1))
            return floor_log2 + carry.to(torch.int64) - self.element.emax
        # rceil: smallest s with amax <= max_elem * 2**s
        s = torch.ceil(torch.log2(amax / self.element.max)).to(torch.int64)
        s = s + (amax > self.element.max * pow2(s)).to(torch.int64)
        return s - (amax <= self.element.max * pow2(s - 1)).to(torch.int64)

    @cached_property
    def largest_per_scale_code(self) -> torch.Tensor:
        return self.element.max * self.scale.decode_exact(torch.arange(1 << self.scale.nbits)).abs()

    def tensor_scale_exact(self, t: torch.Tensor, flush_subnormals: bool) -> float | None:
        """NVFP4's second level, from the largest finite magnitude of the
        tensor (see :meth:`tensor_scale_of`)."""
        if not self.tensor_scale:
            return None
        amax = 0.0
        flat = t.reshape(-1)
        for part in chunk_slices(flat.numel(), chunks.CHUNK_ELEMENTS):
            x64 = exact(flat[part], flush_subnormals)
            if x64.numel():
                amax = max(amax, float(torch.where(torch.isfinite(x64), x64.abs(), 0.0).max()))
        return self.tensor_scale_of(amax)

    def tensor_scale_of(self, amax: float) -> float:
        """float32(amax) / (max_scale * max_elem), divided in float32 as the
        datapath does; 1.0 for an all-zero tensor."""
        return float(np.float32(amax) / np.float32(self.scale.max * self.element.max)) or 1.0

    def encode_blocks_exact(self, blocks: torch.Tensor, rounder: Rounder, scale_rule: str | None,
                       tensor_scale: float | None) -> BlockCodes:
        rule = self._resolve_rule(scale_rule)
        finite = torch.isfinite(blocks)
        bad_block = ~finite.all(dim=-1)
        magnitudes = torch.where(finite, blocks.abs(), 0.0)
        amax = magnitudes.amax(dim=-1)
        divisor = tensor_scale or 1.0

        nearest = Rounder("nearest_even", torch.zeros_like(amax, dtype=torch.bool))
        if self.power_of_two_scale:
            lowest, highest = self.scale.emin, self.scale.emax
            exponent = torch.where(amax > 0, self._scale_exponent(torch.where(amax > 0, amax, 1.0), rule), lowest)
            scale_values = pow2(exponent.clamp(lowest, highest))
            scale_codes, _ = self.scale.encode_exact(scale_values, nearest, "saturate")
        else:
            scale_codes, _ = self.scale.encode_exact(amax / (divisor * self.element.max), nearest, "saturate")
            scale_values = self.scale.decode_exact(scale_codes)

        full_scale = (scale_values * divisor)[..., None]
        safe_scale = torch.where(full_scale > 0, full_scale, 1.0)
        scaled = torch.where(finite, blocks, 0.0) / safe_scale
        # Only float64 inputs far below their block's scale can underflow here.
        # Every element format's smallest value is >= 2**-1000, so magnitudes
        # under 2**-1020 all round alike: keep them there, not at zero.
        vanishing = (scaled.abs() < 2.0 ** -1020) & (blocks != 0) & finite
        scaled = torch.where(vanishing, torch.copysign(torch.full_like(scaled, 2.0 ** -1020), blocks), scaled)
        element_codes, _ = self.element.encode_exact(scaled, rounder, "saturate")
        element_codes = torch.where((full_scale > 0) & ~bad_block[..., None], element_codes, 0)
        scale_codes = torch.where(bad_block, self.scale.nan_code(torch.zeros_like(bad_block)), scale_codes)
        return BlockCodes(element_codes, scale_codes, tensor_scale=tensor_scale)

    def grid_blocks_exact(self, blocks: torch.Tensor, codes: BlockCodes) -> tuple[torch.Tensor, torch.Tensor]:
        # a block whose scale rounded to zero is on the grid of the smallest scale
        scale = self.scale.decode_exact(codes.scales)
        scale = torch.where(scale == 0, self.scale.min_subnormal, scale) * (codes.tensor_scale or 1.0)
        ulp, largest = self.element.grid_exact(blocks / scale[..., None])
        return ulp * scale[..., None], largest * scale[..., None]

    def decode_blocks_exact(self, codes: BlockCodes) -> torch.Tensor:
        values = self.element.decode_exact(codes.elements) * self.scale.decode_exact(codes.scales)[..., None]
        if codes.tensor_scale is None:
            return values
        # element * block scale is exact in float32; the float32 tensor scale
        # multiplies it in float32 (one rounding), as a float32 datapath does
        return (values.to(torch.float32) * torch.tensor(codes.tensor_scale, dtype=torch.float32)).to(torch.float64)
