"""Datapath: how a matrix-multiply unit adds its products, bit for bit.

Tensor cores and other matrix units do not add in IEEE float32 one product
at a time. Published measurements (Fasi, Higham, Mikaitis and Pranesh,
"Numerical behavior of NVIDIA tensor cores", PeerJ Computer Science 7:e330,
2021) and bit-accurate models fitted to hardware (Khattak and Mikaitis,
"Accurate models of NVIDIA tensor cores", arXiv:2512.07004; Xie et al.,
"MMA-Sim", arXiv:2511.10909) find multi-term fused adders: a group of exact
products and the running accumulator are aligned to the largest exponent
among them, every aligned significand is truncated a fixed number of bits
below it, the truncated terms are added without normalising in between, and
the group's sum is rounded once into the accumulator. A :class:`Datapath`
is that model with every choice a parameter; IEEE sequential summation and
exact summation are two of its settings (``DATAPATHS["ieee_fp32"]``,
``DATAPATHS["exact"]``).

One step of a datapath, for the accumulator c and products p_i = a_i * b_i:

1. **exponents**: an operand value x has the exponent
   e(x) = max(floor(log2 |x|), emin) with emin the smallest normal
   exponent of its input format (a subnormal keeps emin and a significand
   below 1; with no input format, no clamp). A product's exponent is
   e(a_i) + e(b_i), not renormalised: its significand
   p_i / 2**(e(a_i) + e(b_i)) lies in [0, 4). The accumulator's exponent is
   max(floor(log2 |c|), the accumulator's emin). A block-scaled operand's
   exponent adds its block scale's (scale formats clamp alike).
2. **products**: exact (``products=None``), or rounded to nearest even in
   the format ``products`` names (IEEE arithmetic that rounds each product:
   only with exact alignment).
3. **alignment**: E = the largest exponent among the nonzero terms (c and
   the p_i), at least ``min_exponent`` when that is set. With
   ``fraction_bits=F`` every term is cut to a multiple of 2**(E - F), as
   ``alignment_rounding`` says: ``toward_zero`` (truncating a
   sign-magnitude significand: what every NVIDIA model finds), ``down``
   (truncating a two's-complement one: AMD's matrix cores in the same
   models) or ``nearest_even``. F = 23 + w in the literature's terms, w the
   extra alignment bits beyond fp32's fraction (V100: 0, A100: 1, H100: 2).
   With ``fraction_bits=None`` nothing is cut: the terms add exactly.
4. **addition**: the cut terms are added exactly: no rounding or
   normalisation between terms, and room for every carry (the published
   models never saturate; Fasi et al.'s test of a fifth integer bit passes
   on V100, T4 and A100).
5. **normalisation and rounding**: the sum is rounded once into the
   ``accumulator`` format in ``rounding`` mode; that is the next c.

Products are taken in groups of ``group`` along K (None: all at once), the
last group shorter, the accumulator starting at the matmul's C (or +0).
``promote_every`` adds a second level, as software does for block-scaled
formats (lowbit's own :func:`lowbit.cuda.mx_matmul`, DeepSeek-V3's FP8
GEMM): every interval of that many products (or each block of the operands,
with ``"block"``) is summed as above from a +0 accumulator, and the partial
sum, times the interval's two block scales, is added to a running total in
``promote_to`` with one rounding to nearest even.

Zeros, NaN and Inf: a NaN or Inf term (an Inf input, or 0 * Inf) makes the
step's result what IEEE addition gives (Inf - Inf is NaN); an exact zero
sum is +0 unless every term is -0, or it cancels under rounding ``down``.
Past the accumulator's largest finite value the rounding mode decides as
IEEE 754 section 7.4 says (nearest: Inf; toward zero: the largest finite
value).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from typing import Any, NamedTuple

from .element import ElementFormat
from .encoded import format_from_dict, format_to_dict
from .float_format import FloatFormat

ALIGNMENT_ROUNDINGS = ("toward_zero", "down", "nearest_even")
#: the most fraction bits an alignment keeps: the fast kernel holds the aligned terms in an int64
MAX_FRACTION_BITS = 52
ACCUMULATOR_ROUNDINGS = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "odd")
FP32 = FloatFormat(8, 23, name="fp32")


class NumberGrid(NamedTuple):
    """The numbers of a binary floating-point format: ``precision``
    significant bits, normal exponents from ``emin``, ``largest`` finite
    value (exact), and whether it has subnormals."""

    precision: int
    emin: int
    largest: Fraction
    subnormals: bool


FLOAT64_GRID = NumberGrid(53, -1022, Fraction((1 << 53) - 1) * Fraction(2) ** 971, True)


def number_grid(fmt: FloatFormat | None) -> NumberGrid:
    """The grid of a FloatFormat (None: float64)."""
    if fmt is None:
        return FLOAT64_GRID
    return NumberGrid(fmt.man_bits + 1, fmt.emin, Fraction(fmt.max), fmt.subnormals)


def _check_float_format(value: Any, name: str, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, FloatFormat) or not value.signed or value.man_bits < 1:
        allowed = "a signed FloatFormat with a mantissa (fp32, fp16, bf16, e8m13, ...)"
        raise TypeError(f"{name} must be {allowed}{' or None' if allow_none else ''}, got {value!r}")


@dataclass(frozen=True)
class Datapath:
    """A matrix unit's arithmetic (see the module docstring for the steps).

    - ``group``: products added to the accumulator in one fused step (n);
      None: all of K (or of a promotion interval) at once.
    - ``products``: None for exact products, or the FloatFormat each
      product is rounded to (nearest even) before it is added.
    - ``fraction_bits``: F, the bits kept below the largest exponent when
      the terms are aligned (23 + w: fp32's fraction and w extra bits);
      None: no cut, the terms are added exactly.
    - ``alignment_rounding``: how an aligned term is cut: ``toward_zero``,
      ``down`` or ``nearest_even``.
    - ``min_exponent``: the least alignment exponent E (the models give
      zero terms an exponent such as -132); None: no floor. It matters only
      when every term lies below 2**min_exponent.
    - ``accumulator``: the format the running sum is rounded to after every
      step (a signed FloatFormat with a mantissa: fp32, fp16, bf16, or fp32
      with fewer mantissa bits such as ``FloatFormat(8, 13)``); None:
      float64.
    - ``rounding``: how the step's sum is rounded into the accumulator.
    - ``inputs``: the formats the multipliers take; operand values (block
      elements when ``block_scaled``) must be exact in one of them, else
      the product raises ValueError rather than round them silently. None:
      any value.
    - ``block_scaled``: the instruction takes block-scaled operands
      (elements and their block scales, as Blackwell's MX and NVFP4 MMAs
      do): ``inputs`` then checks the elements, and each product is the
      elements' product times the two block scales, exactly.
    - ``promote_every``: None, a number of products, or ``"block"``: sum
      each interval from zero and add it, scaled, to a total in
      ``promote_to`` (nearest even).
    - ``source``: where the parameters come from, and which are not
      published.
    """

    name: str
    group: int | None = 1
    products: FloatFormat | None = None
    fraction_bits: int | None = None
    alignment_rounding: str = "toward_zero"
    min_exponent: int | None = None
    accumulator: FloatFormat | None = FP32
    rounding: str = "nearest_even"
    inputs: tuple[ElementFormat, ...] | None = None
    block_scaled: bool = False
    promote_every: int | str | None = None
    promote_to: FloatFormat | None = FP32
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str, got {self.name!r}")
        _check_count(self.group, "group", allow_none=True)
        _check_float_format(self.products, "products", allow_none=True)
        _check_float_format(self.accumulator, "accumulator", allow_none=True)
        _check_float_format(self.promote_to, "promote_to", allow_none=True)
        if self.fraction_bits is not None:
            _check_count(self.fraction_bits, "fraction_bits", allow_none=False, least=0)
            if self.fraction_bits > MAX_FRACTION_BITS:
                raise ValueError(f"fraction_bits must be at most {MAX_FRACTION_BITS}; got {self.fraction_bits}")
            if self.products is not None:
                raise ValueError("products are rounded only by IEEE-style datapaths, which align exactly: "
                                 "give products=None or fraction_bits=None")
        if self.min_exponent is not None:
            _check_count(self.min_exponent, "min_exponent", allow_none=False, least=-1100)
        if self.alignment_rounding not in ALIGNMENT_ROUNDINGS:
            raise ValueError(f"alignment_rounding must be one of {', '.join(ALIGNMENT_ROUNDINGS)}; "
                             f"got {self.alignment_rounding!r}")
        if self.rounding not in ACCUMULATOR_ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ACCUMULATOR_ROUNDINGS)}; got {self.rounding!r}")
        if self.inputs is not None:
            inputs = tuple(self.inputs) if isinstance(self.inputs, list | tuple) else (self.inputs,)
            if not inputs or not all(isinstance(f, ElementFormat) for f in inputs):
                raise TypeError(f"inputs must be None or element formats, got {self.inputs!r}")
            object.__setattr__(self, "inputs", inputs)
        if not isinstance(self.block_scaled, bool):
            raise TypeError(f"block_scaled must be True or False, got {self.block_scaled!r}")
        if self.promote_every != "block":
            _check_count(self.promote_every, "promote_every", allow_none=True, extra="or 'block'")
        if self.promote_every is not None and self.block_scaled:
            raise ValueError("block_scaled applies the scales in the instruction; promote_every applies them "
                             "outside it: choose one")
        if not isinstance(self.source, str):
            raise TypeError(f"source must be a str, got {type(self.source).__name__}")
        object.__setattr__(self, "_json", json.dumps(self.to_dict(), sort_keys=True))

    @property
    def json(self) -> str:
        """:meth:`to_dict` as JSON (computed once: ops take it as their argument)."""
        return self._json

    @property
    def accumulator_grid(self) -> NumberGrid:
        return number_grid(self.accumulator)

    @property
    def product_grid(self) -> NumberGrid | None:
        return None if self.products is None else number_grid(self.products)

    @property
    def promotion_datapath(self) -> Datapath:
        """The second level: one exact product (partial sum times scales)
        added to the total with one rounding to nearest even."""
        return Datapath(f"{self.name} promotion", group=1, accumulator=self.promote_to)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able record of every parameter (formats as
        :func:`~lowbit.formats.encoded.format_to_dict` writes them)."""
        record: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [format_to_dict(fmt) for fmt in value]
            elif isinstance(value, ElementFormat):
                value = format_to_dict(value)
            record[f.name] = value
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Datapath:
        """The inverse of :meth:`to_dict`."""
        args = dict(record)
        for name in ("products", "accumulator", "promote_to"):
            if isinstance(args.get(name), dict):
                args[name] = format_from_dict(args[name])
        if args.get("inputs") is not None:
            args["inputs"] = tuple(format_from_dict(d) for d in args["inputs"])
        return cls(**args)

    def with_(self, **changes: Any) -> Datapath:
        """A copy with some parameters changed (a user's variant of a profile)."""
        return replace(self, **changes)

    def describe(self) -> str:
        """One line per parameter, as ``lowbit info`` prints it."""
        accumulator = "float64" if self.accumulator is None else self.accumulator.name
        lines = [
            f"datapath {self.name}",
            f"  group:       {'all of K' if self.group is None else self.group} products per fused addition",
            f"  products:    {'exact' if self.products is None else 'rounded to ' + self.products.name}",
            "  alignment:   " + ("exact (nothing cut)" if self.fraction_bits is None else
                                 f"to the largest exponent, {self.fraction_bits} fraction bits kept "
                                 f"(w = {self.fraction_bits - 23}), cut {self.alignment_rounding}"
                                 + ("" if self.min_exponent is None else f", exponent at least {self.min_exponent}")),
            f"  accumulator: {accumulator}, rounded {self.rounding}",
        ]
        if self.inputs is not None:
            lines.append(f"  inputs:      {', '.join(f.name for f in self.inputs)}"
                         + (" (block-scaled)" if self.block_scaled else ""))
        if self.promote_every is not None:
            promote = "float64" if self.promote_to is None else self.promote_to.name
            lines.append(f"  promotion:   every {self.promote_every} products into {promote}, nearest even")
        if self.source:
            lines.append(f"  source:      {self.source}")
        return "\n".join(lines)


def _check_count(value: Any, name: str, *, allow_none: bool, least: int = 1, extra: str = "") -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        allowed = f"an int >= {least}" + (" or None" if allow_none else "") + (f" {extra}" if extra else "")
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
