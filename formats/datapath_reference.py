"""The exact reference of a :class:`~lowbit.formats.datapath.Datapath`:
one dot product at a time, every finite nonzero value a
:class:`fractions.Fraction`, zeros and non-finite values floats (so a zero
keeps its sign).

It is written to be read, not to be fast (tens of microseconds a product):
the numba kernel (:mod:`lowbit.formats.cpu.datapath_kernels`) computes the
same bits fast, and the tests hold the two together and this one against
Fraction sums, torch's float32 arithmetic and the published test vectors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from .datapath import Datapath, NumberGrid

#: a value in a sum: a finite nonzero Fraction, or a float (a signed zero, NaN or +-Inf)
Term = Fraction | float
TWO = Fraction(2)


def term(x: float | Fraction) -> Term:
    """x as a Term: finite nonzero values exact as Fractions, the rest as floats."""
    if isinstance(x, Fraction):
        return x if x else 0.0
    return Fraction(x) if math.isfinite(x) and x != 0 else float(x)


def lead_exponent(x: Fraction) -> int:
    """floor(log2 |x|) of a nonzero x."""
    n, d = abs(x.numerator), x.denominator
    e = n.bit_length() - d.bit_length()
    return e if (n >= d << e if e >= 0 else n << -e >= d) else e - 1


def round_to_grid(x: Fraction, grid: NumberGrid, rounding: str, negative: bool) -> float:
    """|x| rounded once to ``grid`` in ``rounding`` (nearest_even,
    nearest_away, toward_zero, up, down or odd), given the sign, as a
    float64 (a grid of at most 53 bits of precision holds every result).
    Past the largest finite value the rounding is decided as if the
    exponent were unbounded; then the nearest modes give Inf, toward_zero
    gives the largest finite value, up and down give Inf in their direction
    and the largest finite value in the other (IEEE 754 section 7.4). A
    grid without subnormals flushes results below its smallest normal to
    a zero of x's sign."""
    a = abs(x)
    if a == 0:
        return -0.0 if negative else 0.0
    quantum = max(lead_exponent(a), grid.emin) - (grid.precision - 1)
    scaled = a / TWO ** quantum
    kept = math.floor(scaled)
    rest = scaled - kept
    if rest:
        if rounding == "nearest_even":
            kept += rest > Fraction(1, 2) or (rest == Fraction(1, 2) and kept % 2 == 1)
        elif rounding == "nearest_away":
            kept += rest >= Fraction(1, 2)
        elif rounding == "up":
            kept += not negative
        elif rounding == "down":
            kept += negative
        elif rounding == "odd":
            kept |= 1
    value = kept * TWO ** quantum
    if value > grid.largest:
        toward_inf = rounding in ("nearest_even", "nearest_away") or rounding == ("down" if negative else "up")
        value = math.inf if toward_inf else grid.largest
    elif not grid.subnormals and value < TWO ** grid.emin:
        value = 0
    return -float(value) if negative else float(value)


def _special(terms: Sequence[Term]) -> float | None:
    """NaN, +Inf or -Inf when a term is one (IEEE addition: Inf - Inf is NaN), else None."""
    specials = [t for t in terms if isinstance(t, float) and not math.isfinite(t)]
    if not specials:
        return None
    if any(math.isnan(t) for t in specials) or (math.inf in specials and -math.inf in specials):
        return math.nan
    return specials[0]


def exponent(x: Term, emin: int | None) -> int:
    """A term's alignment exponent: max(floor(log2 |x|), emin) (no clamp
    with emin None); 0 for a zero (which never sets the alignment)."""
    if not x or isinstance(x, float):
        return 0
    e = lead_exponent(x)
    return e if emin is None else max(e, emin)


def aligned_sum(terms: Sequence[tuple[Fraction, int]], datapath: Datapath) -> Fraction:
    """The sum of finite (value, exponent) ``terms`` as the datapath's adder
    forms it (see :mod:`lowbit.formats.datapath`): exact with
    ``fraction_bits=None``; otherwise every term cut to a multiple of
    2**(E - fraction_bits), E the largest exponent of a nonzero term (at
    least ``min_exponent``), as ``alignment_rounding`` says, and the cut
    values added exactly."""
    nonzero = [(v, e) for v, e in terms if v]
    if datapath.fraction_bits is None or not nonzero:
        return sum((v for v, _ in nonzero), Fraction(0))
    top = max(e for _, e in nonzero)
    if datapath.min_exponent is not None:
        top = max(top, datapath.min_exponent)
    unit = TWO ** (top - datapath.fraction_bits)
    cut = {"toward_zero": math.trunc, "down": math.floor, "nearest_even": round}[datapath.alignment_rounding]
    return sum(cut(v / unit) for v, _ in nonzero) * unit


def fused_group(c: Term, products: Sequence[tuple[Term, int]], datapath: Datapath) -> Term:
    """One step of the datapath: the accumulator c and a group of
    (product, exponent) pairs summed as :func:`aligned_sum` says and rounded
    once to the accumulator. A zero result is -0 when every term is -0, or
    when it cancels under rounding ``down`` (IEEE 754 section 6.3); NaN and
    Inf as IEEE addition gives them."""
    values = [c, *(p for p, _ in products)]
    special = _special(values)
    if special is not None:
        return special
    grid = datapath.accumulator_grid
    terms = [(Fraction(c), exponent(c, grid.emin)), *((Fraction(p), e) for p, e in products)]
    total = aligned_sum(terms, datapath)
    if total == 0:
        every_term_negative_zero = all(isinstance(t, float) and math.copysign(1.0, t) < 0 for t in values)
        cancelled = any(t for t in values)
        return -0.0 if every_term_negative_zero or (cancelled and datapath.rounding == "down") else 0.0
    return term(round_to_grid(total, grid, datapath.rounding, total < 0))


def product(a: Term, b: Term, datapath: Datapath, a_exponent: int | None = None, b_exponent: int | None = None
            ) -> tuple[Term, int]:
    """(a * b, its exponent) as the multipliers form them: exact, or rounded
    to nearest even in ``datapath.products`` when it names a format. The
    exponent is a_exponent + b_exponent (each floor(log2 |x|) where None);
    a rounded product's is its own, clamped to that format's emin."""
    if isinstance(a, float) or isinstance(b, float):
        return float(a) * float(b), 0  # a zero, NaN or Inf involved: IEEE gives the sign and the special
    exact = a * b
    grid = datapath.product_grid
    if grid is None:
        return exact, (exponent(a, None) if a_exponent is None else a_exponent) + \
            (exponent(b, None) if b_exponent is None else b_exponent)
    rounded = term(round_to_grid(exact, grid, "nearest_even", exact < 0))
    return rounded, exponent(rounded, grid.emin)


def dot(a: Sequence[Term], b: Sequence[Term], datapath: Datapath, *, c: Term = 0.0,
        a_exponents: Sequence[int] | None = None, b_exponents: Sequence[int] | None = None,
        interval: int | None = None, interval_scales: Sequence[Term] | None = None) -> Term:
    """sum_k a[k] * b[k] + c as ``datapath`` computes it, ``a_exponents`` and
    ``b_exponents`` the operands' alignment exponents (see
    :mod:`lowbit.formats.datapath`; floor(log2 |x|) where None).

    Without promotion, the products in groups of ``datapath.group`` (all of
    them with None) are added to the accumulator, which starts at c, one
    fused step per group. With promotion, each ``interval`` of products
    (``datapath.promote_every``, or the block length when that is "block")
    is summed that way from a +0 accumulator; its partial sum times
    ``interval_scales[i]`` (1 where None) is added to the running total,
    which starts at c, with one rounding to ``datapath.promote_to``
    (nearest even).
    """
    a_exponents = [None] * len(a) if a_exponents is None else a_exponents
    b_exponents = [None] * len(b) if b_exponents is None else b_exponents
    products = [product(term(x), term(y), datapath, ea, eb)
                for x, y, ea, eb in zip(a, b, a_exponents, b_exponents, strict=True)]
    if datapath.promote_every is None:
        return _accumulate(products, datapath, term(c))
    interval = datapath.promote_every if isinstance(datapath.promote_every, int) else interval
    if interval is None:
        raise ValueError(f"{datapath.name} promotes every block: give the block length as interval")
    total = term(c)
    promotion = datapath.promotion_datapath
    for i, start in enumerate(range(0, len(products), interval)):
        partial = _accumulate(products[start:start + interval], datapath, 0.0)
        scale = term(Fraction(1) if interval_scales is None else interval_scales[i])
        total = fused_group(total, [product(partial, scale, promotion)], promotion)
    return total


def _accumulate(products: Sequence[tuple[Term, int]], datapath: Datapath, c: Term) -> Term:
    size = datapath.group or max(len(products), 1)
    for start in range(0, len(products), size):
        c = fused_group(c, products[start:start + size], datapath)
    return c
