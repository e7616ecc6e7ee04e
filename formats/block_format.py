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

Granularity: ``block_size=k`` blocks k elements along one axis;
``block_size=None`` makes the whole axis one block (per-channel weights,
per-token activations); ``block_shape=(r, c)`` tiles two axes in r x c
tiles (see :func:`~lowbit.formats.blocking.check_tile_axes` for the axes).

Searched scales: ``mse`` tries a documented list of candidate scales per
block (:data:`MSE_RATIOS` of amax, or the power-of-two exponents e0 + 1,
e0, e0 - 1, e0 - 2 around the floor rule's e0) and ``4over6`` (E2M1
elements) maps amax to 6 or to 4; each candidate's squared error is summed
over the block in index order in float64 with nearest-even elements, and
the first candidate with the strictly least error is kept.

``zero_point=True`` (GPTQ, AWQ: an unsigned integer element): per block
lo = min(min x, 0), hi = max(max x, 0); s = (hi - lo) / (2**b - 1)
rounded once (nearest even, saturating) to the scale format, the smallest
positive scale if that is zero, 1 for an all-zero block;
z = round_half_even(-lo / s) in [0, 2**b - 1]; q = clamp(round(x / s) + z,
0, 2**b - 1), rounded in the user's mode before z is added; the value is
(q - z) * s. ``scale_rule="mse"`` shrinks lo and hi by each ratio instead.

``double_quant=`` (QLoRA): the scales of every block, less their float32
mean over the finite ones (``scale_offset``, their exact sum divided by
their count in float64), are themselves encoded in that block format along
one axis (each exact difference, even where float64 cannot hold it); the
elements are encoded with the exact first-level scales, and decoding uses
float32(level-two value + offset), which is Inf where that sum passes
float32's range (scales near float32's largest: the block then decodes to
Inf, and its zeros to NaN). A block holding NaN or Inf has a NaN scale,
and so every block whose scale shares its second-level block decodes to
NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from . import chunks
from .arrays import pow2
from .base import check_axis, check_bools, check_name
from .blocking import MAX_BLOCK_SIZE, BlockCodes, BlockLayout, Layout, TileLayout, check_block_size, check_tile_axes
from .chunks import chunk_slices, exact
from .element import ElementFormat
from .families import family
from .float_format import FloatFormat
from .int_format import IntFormat
from .rounding import Rounder
from .packing import MAX_CODE_BITS
from .scaled import ScaledFormat

POWER_OF_TWO_RULES = ("floor", "ceil", "rceil", "even")

#: The ratios of amax (or of a zero-point block's range) that ``scale_rule="mse"``
#: tries, largest first: 1 - k/32 for k = 0..15 (exact in binary).
MSE_RATIOS = tuple(1 - k / 32 for k in range(16))

E8M0 = FloatFormat(8, 0, bias=127, signed=False, subnormals=False, specials="fn", name="e8m0")


@family
@dataclass(frozen=True)
class BlockFormat(ScaledFormat):
    """``element`` values sharing one ``scale`` per ``block_size`` elements."""

    element: ElementFormat
    block_size: int | None = 32
    scale: FloatFormat = E8M0
    scale_rule: str = ""
    tensor_scale: bool = False
    name: str = field(default="", compare=False)
    zero_point: bool = False
    block_shape: tuple[int, int] | None = None
    double_quant: BlockFormat | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.element, ElementFormat):
            raise TypeError(f"element must be an element format (FloatFormat, IntFormat, ...), "
                            f"got {type(self.element).__name__}")
        if not isinstance(self.scale, FloatFormat):
            raise TypeError(f"scale must be a FloatFormat, got {type(self.scale).__name__}")
        check_bools(self, "tensor_scale", "zero_point")
        check_name(self)
        self._check_granularity()
        if self.zero_point:
            self._check_zero_point()
        elif not self.element.signed:
            raise ValueError(f"the element format must be signed (a block holds zeros and negatives); "
                             f"{self.element.name} is unsigned (zero_point=True takes an unsigned integer element)")
        if self.element.nbits > MAX_CODE_BITS:
            raise ValueError(f"the element format packs at most {MAX_CODE_BITS}-bit codes; "
                             f"{self.element.name} has {self.element.nbits}")
        if not self.scale.has_nan:
            raise ValueError(f"the scale format needs a NaN code for NaN blocks; {self.scale.name} has none")
        if not self.scale_rule:
            default = "minmax" if self.zero_point else "floor" if self.power_of_two_scale else "amax"
            object.__setattr__(self, "scale_rule", default)
        self._check_rule(self.scale_rule)
        if self.tensor_scale and (self.power_of_two_scale or self.zero_point):
            raise ValueError("tensor_scale=True applies to symmetric blocks with scales with a mantissa "
                             "(NVFP4's E4M3), not to power-of-two scales or zero points")
        self._check_double_quant()
        if not self.name:
            object.__setattr__(self, "name", self._default_name())

    def _check_granularity(self) -> None:
        """block_size an int in range or None; block_shape None or a pair of positive ints (block_size its product)."""
        if self.block_shape is None:
            if self.block_size is not None:
                check_block_size(self, "block_size")
            return
        shape = self.block_shape
        if not isinstance(shape, tuple | list) or len(shape) != 2 or not all(
                isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
            raise ValueError(f"block_shape must be a pair of positive ints (rows, columns), got {shape!r}")
        object.__setattr__(self, "block_shape", tuple(shape))
        tile = shape[0] * shape[1]
        if tile > MAX_BLOCK_SIZE:
            raise ValueError(f"block_shape {shape[0]} x {shape[1]} holds {tile} elements; at most {MAX_BLOCK_SIZE}")
        if self.block_size not in (32, tile):  # 32 is the field's default
            raise ValueError(f"block_size must be left out (or be {tile}) with block_shape={tuple(shape)}, "
                             f"got {self.block_size!r}")
        object.__setattr__(self, "block_size", tile)

    def _check_zero_point(self) -> None:
        element = self.element
        if not (isinstance(element, IntFormat) and not element.signed and element.frac_bits == 0):
            raise ValueError(f"zero_point=True takes an unsigned integer element without fraction bits "
                             f"(uint4, uint8, ...); got {element.name}")

    def _check_double_quant(self) -> None:
        second = self.double_quant
        if second is None:
            return
        if not isinstance(second, BlockFormat):
            raise TypeError(f"double_quant must be a BlockFormat (the format of the scales), "
                            f"got {type(second).__name__}")
        if second.double_quant is not None or second.block_shape is not None:
            raise ValueError(f"double_quant encodes the scales as one axis, once: {second.name} has "
                             f"{'a double_quant of its own' if second.double_quant else '2-D tiles'}")
        if self.tensor_scale:
            raise ValueError("tensor_scale and double_quant are two second levels; choose one")

    def _default_name(self) -> str:
        blocks = ("axis" if self.block_size is None else
                  f"{self.block_shape[0]}x{self.block_shape[1]}" if self.block_shape else str(self.block_size))
        if self.scale == E8M0 and not (self.zero_point or self.double_quant or self.block_shape):
            return f"mx({self.element.name},{blocks})"
        extras = (",zero_point" if self.zero_point else "") + (
            f",double_quant={self.double_quant.name}" if self.double_quant else "")
        return f"block({self.element.name},{blocks},{self.scale.name}{extras})"

    def layout(self, shape: tuple[int, ...], axis: int | tuple[int, int]) -> Layout:
        """Where the blocks of a tensor of ``shape`` lie when blocked along
        ``axis`` (for tiles: a pair, or the column axis; see
        :func:`~lowbit.formats.blocking.check_tile_axes`). ValueError for an
        axis out of range, or a whole axis longer than the largest block."""
        if self.block_shape is not None:
            return TileLayout(shape, check_tile_axes(axis, len(shape)), self.block_shape)
        if self.block_size is not None:
            return super().layout(shape, axis)
        axis = check_axis(axis, len(shape))
        length = shape[axis] if shape else 1
        if length > MAX_BLOCK_SIZE:
            raise ValueError(f"{self.name} makes axis {axis} one block of {length} elements; "
                             f"a block holds at most {MAX_BLOCK_SIZE}")
        return BlockLayout(shape, axis, max(length, 1))

    @property
    def power_of_two_scale(self) -> bool:
        """Whether the scales are powers of two (a scale format without mantissa, E8M0)."""
        return self.scale.man_bits == 0

    def _resolve_rule(self, scale_rule: str | None) -> str:
        return self._check_rule(scale_rule or self.scale_rule)

    def _check_rule(self, rule: str) -> str:
        if self.zero_point:
            allowed = ("minmax", "mse")
        elif self.power_of_two_scale:
            allowed = (*POWER_OF_TWO_RULES, "mse")
        else:
            allowed = ("amax", "mse", *(("4over6",) if self._e2m1_elements else ()))
        if rule not in allowed:
            why = " (4over6 maps amax to 6 or 4 of E2M1 elements)" if rule == "4over6" else ""
            which = "zero-point blocks" if self.zero_point else f"{self.scale.name} scales"
            raise ValueError(f"scale_rule for {which} must be one of {', '.join(allowed)}; got {rule!r}{why}")
        return rule

    @property
    def _e2m1_elements(self) -> bool:
        return isinstance(self.element, FloatFormat) and (self.element.exp_bits, self.element.man_bits) == (2, 1)

    # -- properties ------------------------------------------------------------------
    @property
    def bits(self) -> float:
        """Storage bits per element, the amortised scale (and zero point)
        included (MXFP4: 4.25); with double_quant, the second level's bits
        per scale replace the scale's. A whole-axis format counts its
        element bits only (its per-row scale amortises over a length only a
        tensor knows: :attr:`Encoded.bits` is exact)."""
        if self.block_size is None:
            return float(self.element.nbits)
        per_block = self.double_quant.bits if self.double_quant else self.scale.nbits
        per_block += self.element.nbits if self.zero_point else 0
        return self.element.nbits + per_block / self.block_size

    @property
    def zero_point_code_bits(self) -> int:
        """Bits of a zero point's code (the element's width), 0 without zero points."""
        return self.element.nbits if self.zero_point else 0

    @property
    def element_code_bits(self) -> int:
        return self.element.nbits

    @property
    def scale_code_bits(self) -> int:
        return self.scale.nbits

    @property
    def max(self) -> float:
        """Largest finite value: the largest element times the largest scale
        (at most float32's largest where decoding rounds to float32)."""
        largest = self.element.max * self.scale.max
        return min(largest, float(np.finfo(np.float32).max)) if self.rounds_to_float32 else largest

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value: the smallest element times the smallest scale."""
        return self.element.min_subnormal * self.scale.min_subnormal

    @property
    def element_mantissa_bits(self) -> int:
        """The element's mantissa width, which the ``even`` scale rule rounds
        amax to (an integer element's magnitude bits below its top one; a
        codebook's values are float32 numbers: 23)."""
        return max(self._element_significant_bits - 1, 0)

    @property
    def _element_significant_bits(self) -> int:
        """Significant bits an element value can hold (a codebook's: float32's 24)."""
        if isinstance(self.element, IntFormat):
            return self.element.nbits - self.element.signed
        if isinstance(self.element, FloatFormat):
            return self.element.man_bits + 1
        return 24

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
    def zero_element_code(self) -> int:
        """The element code of +0.0, which a block whose scale is zero holds
        (0 for float and integer elements; a codebook's index of 0.0)."""
        zero = torch.zeros(1, dtype=torch.float64)
        nearest = Rounder("nearest_even", torch.zeros(1, dtype=torch.bool))
        return int(self.element.encode_exact(zero, nearest, "saturate")[0][0])

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

    @cached_property
    def zero_point_integers(self) -> IntFormat:
        """Signed integers wide enough that round(x / s) + z saturates as
        the unbounded sum would (zero-point formats round x / s on them)."""
        return IntFormat(self.element.nbits + 3)

    def _scale_codes(self, targets: torch.Tensor) -> torch.Tensor:
        """Scale codes of exact targets, rounded nearest even, saturating."""
        nearest = Rounder("nearest_even", torch.zeros_like(targets, dtype=torch.bool))
        return self.scale.encode_exact(targets, nearest, "saturate")[0]

    def _power_of_two_codes(self, amax: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        """Codes of 2**exponent clamped to the scale's range (its smallest for all-zero blocks)."""
        lowest, highest = self.scale.emin, self.scale.emax
        exponent = torch.where(amax > 0, exponent, lowest).clamp(lowest, highest)
        return self._scale_codes(pow2(exponent))

    def _zero_point_codes(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale codes, zero points) of blocks ranging over [lo, hi] (lo <= 0 <= hi)."""
        levels = (1 << self.element.nbits) - 1
        scale = self.scale.decode_exact(self._scale_codes((hi - lo) / levels))
        scale = torch.where(scale == 0, self.scale.min_subnormal, scale)
        scale = torch.where(hi == lo, 1.0, scale)  # an all-zero block
        zeros = torch.round(-lo / scale).clamp(0, levels).to(torch.int64)
        return self._scale_codes(scale), zeros

    def _candidates(self, clean: torch.Tensor, rule: str, divisor: float) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(scale codes, zero points or None) of each candidate the rule tries, in its order."""
        ratios = MSE_RATIOS if rule == "mse" else (1.0,)
        if self.zero_point:
            lo, hi = clean.amin(dim=-1).clamp(max=0.0), clean.amax(dim=-1).clamp(min=0.0)
            return [self._zero_point_codes(lo * p, hi * p) for p in ratios]
        amax = clean.abs().amax(dim=-1)
        if self.power_of_two_scale:
            positive = torch.where(amax > 0, amax, 1.0)
            if rule != "mse":
                return [(self._power_of_two_codes(amax, self._scale_exponent(positive, rule)), None)]
            e0 = self._scale_exponent(positive, "floor")
            return [(self._power_of_two_codes(amax, e0 + k), None) for k in (1, 0, -1, -2)]
        if rule == "4over6":
            return [(self._scale_codes(amax / (divisor * target)), None) for target in (6.0, 4.0)]
        return [(self._scale_codes(amax * p / (divisor * self.element.max)), None) for p in ratios]

    def _element_codes(self, clean: torch.Tensor, scale_codes: torch.Tensor, zeros: torch.Tensor | None,
                       divisor: float, rounder: Rounder) -> torch.Tensor:
        """Element codes of finite blocks under these scales (zero where the scale is zero)."""
        full_scale = (self.scale.decode_exact(scale_codes) * divisor)[..., None]
        usable = full_scale > 0
        scaled = clean / torch.where(usable, full_scale, 1.0)
        # Only float64 inputs far below their block's scale can underflow here.
        # Every element format's smallest value is >= 2**-1000, so magnitudes
        # under 2**-1020 all round alike: keep them there, not at zero.
        vanishing = (scaled.abs() < 2.0 ** -1020) & (clean != 0)
        scaled = torch.where(vanishing, torch.copysign(torch.full_like(scaled, 2.0 ** -1020), clean), scaled)
        if zeros is None:
            codes, _ = self.element.encode_exact(scaled, rounder, "saturate")
            return torch.where(usable, codes, self.zero_element_code)
        wide = self.zero_point_integers
        rounded = wide.decode_exact(wide.encode_exact(scaled, rounder, "saturate")[0]).to(torch.int64)
        return (rounded + zeros[..., None]).clamp(0, (1 << self.element.nbits) - 1)

    def _least_error(self, clean: torch.Tensor, candidates: list, divisor: float) -> tuple:
        """The first candidate with the strictly least squared error over its
        block (summed in index order in float64, nearest-even elements)."""
        nearest = Rounder("nearest_even", torch.signbit(clean))
        differences = torch.stack([
            self._block_values(BlockCodes(self._element_codes(clean, scale_codes, zeros, divisor, nearest),
                                          scale_codes, zero_points=zeros)) * divisor - clean
            for scale_codes, zeros in candidates])
        squares = differences.mul_(differences)
        total = torch.zeros(squares.shape[:-1], dtype=torch.float64, device=clean.device)
        for j in range(clean.shape[-1]):  # in index order, as every backend sums
            total = total + squares[..., j]
        errors = total.unbind(0)
        best_codes, best_zeros = candidates[0]
        best_error = errors[0]
        for (scale_codes, zeros), error in zip(candidates[1:], errors[1:]):
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_codes = torch.where(better, scale_codes, best_codes)
            if zeros is not None:
                best_zeros = torch.where(better, zeros, best_zeros)
        return best_codes, best_zeros

    def encode_blocks_exact(self, blocks: torch.Tensor, rounder: Rounder, scale_rule: str | None,
                            tensor_scale: float | None) -> BlockCodes:
        rule = self._resolve_rule(scale_rule)
        finite = torch.isfinite(blocks)
        bad_block = ~finite.all(dim=-1)
        clean = torch.where(finite, blocks, 0.0)
        divisor = tensor_scale or 1.0
        candidates = self._candidates(clean, rule, divisor)
        scale_codes, zeros = candidates[0] if len(candidates) == 1 else self._least_error(clean, candidates, divisor)
        element_codes = torch.where(bad_block[..., None], 0, self._element_codes(clean, scale_codes, zeros, divisor,
                                                                                 rounder))
        scale_codes = torch.where(bad_block, self.scale.nan_code(torch.zeros_like(bad_block)), scale_codes)
        if zeros is not None:
            zeros = torch.where(bad_block, 0, zeros)
        return BlockCodes(element_codes, scale_codes, tensor_scale=tensor_scale, zero_points=zeros)

    def _block_scales(self, codes: BlockCodes) -> torch.Tensor:
        """The float64 scale of each block: decoded from its code, or given (double quantization)."""
        return codes.scale_values if codes.scale_values is not None else self.scale.decode_exact(codes.scales)

    def _block_values(self, codes: BlockCodes) -> torch.Tensor:
        """element (less its zero point) * block scale, exact in float64, before any tensor scale."""
        elements = self.element.decode_exact(codes.elements)
        if codes.zero_points is not None:
            elements = elements - codes.zero_points[..., None]
        return elements * self._block_scales(codes)[..., None]

    def grid_blocks_exact(self, blocks: torch.Tensor, codes: BlockCodes) -> tuple[torch.Tensor, torch.Tensor]:
        # a block whose scale rounded to zero is on the grid of the smallest scale
        scale = self._block_scales(codes)
        scale = (torch.where(scale == 0, self.scale.min_subnormal, scale) * (codes.tensor_scale or 1.0))[..., None]
        if codes.zero_points is not None:  # the integers 0 - z .. 2**b - 1 - z
            zeros = codes.zero_points[..., None].to(torch.float64)
            reach = torch.where(blocks < 0, zeros, self.element.max - zeros)
            return scale.expand_as(blocks).clone(), reach * scale
        ulp, largest = self.element.grid_exact(blocks / scale)
        return ulp * scale, largest * scale

    @cached_property
    def rounds_to_float32(self) -> bool:
        """Whether element * scale is rounded to float32 in decoding, as a
        float32 dequantizing datapath computes it: when the product can hold
        more than float32's 24 significant bits (float32 scales with any
        element wider than one bit, and double-quantized scales, which are
        float32 values), and codebook elements (float32 values of up to 24
        significant bits, so their products with any scale may need more).
        Every other product is exact."""
        return self.double_quant is not None or self._element_significant_bits + self.scale.man_bits + 1 > 24

    def decode_blocks_exact(self, codes: BlockCodes) -> torch.Tensor:
        values = self._block_values(codes)
        if codes.tensor_scale is None:
            return values.to(torch.float32).to(torch.float64) if self.rounds_to_float32 else values
        # element * block scale is exact in float32; the float32 tensor scale
        # multiplies it in float32 (one rounding), as a float32 datapath does
        return (values.to(torch.float32) * torch.tensor(codes.tensor_scale, dtype=torch.float32)).to(torch.float64)
