"""Human-readable descriptions of formats: property tables, bit fields, and
the catalogue table that docs/formats.md embeds."""

from __future__ import annotations

import math
from typing import Any

from .block_format import BlockFormat
from .catalogue import CATALOGUE
from .codebook import CodebookFormat
from .float_format import FloatFormat
from .int_format import IntFormat
from .microexponent import MicroexponentFormat
from .tensor_scaled import TensorScaledFormat

SPECIAL_VALUES = {
    "ieee": "Inf and NaN at the top exponent, -0",
    "fn": "no Inf; all-ones code is NaN",
    "fnuz": "no Inf, no -0; -0 code is the NaN",
    "p3109": "P3109 extended: signed, +-Inf at the top codes and the -0 code is the NaN; unsigned, "
             "the all-ones code is the NaN and the one below +Inf",
    "none": "finite only",
}


def number(v: float) -> str:
    """A value written so that it reads exactly: integers plainly, powers of
    two as 2^k, others with up to 8 significant digits."""
    if v == 0 or (abs(v) >= 1 and float(v).is_integer() and abs(v) < 1e9):
        return f"{v:.0f}"
    m, e = math.frexp(abs(v))
    if m == 0.5:
        return f"{'-' if v < 0 else ''}2^{e - 1}"
    return f"{v:.8g}"


def layout(fmt: Any) -> str:
    """Short layout tag: E4M3, INT8, MX(E2M1, 32)..."""
    if isinstance(fmt, FloatFormat):
        return f"E{fmt.exp_bits}M{fmt.man_bits}"
    if isinstance(fmt, IntFormat):
        return f"{'' if fmt.signed else 'U'}INT{fmt.bits}" + (f" with {fmt.frac_bits} fraction bits" if fmt.frac_bits else "")
    if isinstance(fmt, BlockFormat):
        blocks = ("axis" if fmt.block_size is None else
                  f"{fmt.block_shape[0]}x{fmt.block_shape[1]}" if fmt.block_shape else str(fmt.block_size))
        extras = (" + zero point" if fmt.zero_point else "") + (
            f" (scales in {layout(fmt.double_quant)})" if fmt.double_quant else "")
        return f"{layout(fmt.element)} x {blocks}, {layout(fmt.scale)} scale{extras}"
    if isinstance(fmt, CodebookFormat):
        return f"codebook of {len(fmt.table)}"
    if isinstance(fmt, TensorScaledFormat):
        return f"{layout(fmt.element)} x tensor, fp32 scale ({fmt.scale_rule})"
    if isinstance(fmt, MicroexponentFormat):
        return f"sign+{fmt.man_bits}b, {fmt.exp_bits}b exp / {fmt.block_size}, {fmt.micro_bits}b shift / {fmt.sub_block}"
    return type(fmt).__name__  # a family without a layout of its own here


def properties(fmt: Any) -> list[tuple[str, str]]:
    """(property, value) rows describing a format."""
    rows = [("name", fmt.name), ("family", type(fmt).__name__), ("bits per element", f"{fmt.bits:g}")]
    if isinstance(fmt, FloatFormat):
        rows += [
            ("layout", f"{'sign | ' if fmt.signed else 'unsigned: '}{fmt.exp_bits} exponent | {fmt.man_bits} mantissa ({layout(fmt)})"),
            ("bias", str(fmt.bias)),
            ("special values", SPECIAL_VALUES[fmt.specials]),
            ("subnormals", "yes" if fmt.subnormals else "no"),
            ("max", number(fmt.max)),
            ("min normal", number(fmt.min_normal)),
            ("min subnormal", number(fmt.min_subnormal) if fmt.subnormals else "-"),
            ("eps", number(fmt.eps)),
            ("emin, emax", f"{fmt.emin}, {fmt.emax}"),
            ("dynamic range", f"{fmt.dynamic_range:.1f} binades"),
            ("default overflow", "inf" if fmt.has_inf else "saturate"),
        ]
    elif isinstance(fmt, IntFormat):
        rows += [
            ("layout", f"{'two''s complement' if fmt.signed else 'unsigned'}, {fmt.frac_bits} fraction bits ({layout(fmt)})"),
            ("range", f"{number(fmt.min)} .. {number(fmt.max)}" + (" (narrow: symmetric)" if fmt.narrow else "")),
            ("step", number(fmt.min_subnormal)),
            ("default overflow", "saturate"),
        ]
    elif isinstance(fmt, CodebookFormat):
        rows += [
            ("values", ", ".join(f"{v:.8g}" for v in fmt.table[:32]) + (", ..." if len(fmt.table) > 32 else "")),
            ("codes", f"the index of the value, {fmt.nbits} bits ({len(fmt.table)} values)"),
            ("rounding", "to the neighbouring table values; nearest ties to the even code"),
            ("overflow", "saturate to the end values"),
        ]
    elif isinstance(fmt, TensorScaledFormat):
        rows += [
            ("element", f"{fmt.element.name} ({layout(fmt.element)})"),
            ("scale", f"one float32 per tensor, rule {fmt.scale_rule}: {TENSOR_RULE_TEXT[fmt.scale_rule]}"),
            ("overflow", "elements saturate; NaN/Inf make the tensor NaN"),
        ]
    elif isinstance(fmt, BlockFormat):
        rows += [
            ("element", f"{fmt.element.name} ({layout(fmt.element)}, max {number(fmt.element.max)})"),
            ("block", block_text(fmt)),
            ("scale", f"{fmt.scale.name} ({layout(fmt.scale)}), rule {fmt.scale_rule}: {RULE_TEXT[fmt.scale_rule]}"
                      + (", plus a float32 tensor scale" if fmt.tensor_scale else "")),
        ]
        if fmt.zero_point:
            rows.append(("zero point", f"{fmt.element.nbits}-bit code per block: value = (q - z) * s; "
                                       "z = round_half_even(-lo / s), lo = min(min x, 0)"))
        if fmt.double_quant:
            rows.append(("scales stored", f"less their float32 mean, in {fmt.double_quant.name} "
                                          "(double quantization)"))
        if fmt.rounds_to_float32:
            rows.append(("decoded", "element * scale rounded to float32"))
        rows += [("max", number(fmt.max)), ("overflow", "elements saturate; NaN/Inf make the block NaN")]
    elif isinstance(fmt, MicroexponentFormat):
        rows += [
            ("element", f"sign + {fmt.man_bits}-bit magnitude"),
            ("block", f"{fmt.block_size} elements share a {fmt.exp_bits}-bit exponent"),
            ("sub-block", f"{fmt.sub_block} elements share a {fmt.micro_bits}-bit shift"),
            ("max", number(fmt.max)),
            ("overflow", "magnitudes saturate; NaN/Inf make the block NaN"),
        ]
    return rows


#: What each scale rule computes, in a line.
RULE_TEXT = {
    "floor": "2^(floor(log2 amax) - emax_elem) (OCP MX)",
    "ceil": "2^(ceil(log2 amax) - emax_elem)",
    "rceil": "2^ceil(log2(amax / max_elem)) (NVIDIA)",
    "even": "amax rounded to the element's mantissa, then floor",
    "amax": "amax / max_elem, rounded to nearest even",
    "mse": "the candidate scale with the least squared error",
    "4over6": "amax mapped to 6 or to 4, whichever errs less",
    "minmax": "(hi - lo) / (2^b - 1) over the block's range including 0",
}


#: What each per-tensor scale rule computes, in a line.
TENSOR_RULE_TEXT = {
    "absmean": "the exact mean of |x| rounded to float32 (BitNet)",
    "amax": "amax / max_elem rounded to float32",
}


def block_text(fmt: BlockFormat) -> str:
    """Which elements share a scale, in words."""
    if fmt.block_shape:
        return f"{fmt.block_shape[0]} x {fmt.block_shape[1]} tiles over two axes ({fmt.block_size} elements)"
    if fmt.block_size is None:
        return "the whole axis (one scale per row: per-channel, per-token)"
    return f"{fmt.block_size} elements along an axis"


def bit_fields(fmt: Any, code: int) -> str:
    """A code split into its fields: ``s|eeee|mmm`` for floats, the bits for integers."""
    bits = format(code, f"0{fmt.nbits}b")
    if isinstance(fmt, FloatFormat):
        fields = ([bits[0]] if fmt.signed else []) + [bits[fmt.signed: fmt.signed + fmt.exp_bits]]
        if fmt.man_bits:
            fields.append(bits[fmt.signed + fmt.exp_bits:])
        return "|".join(fields)
    return bits


def catalogue_markdown() -> str:
    """The catalogue as a Markdown table (embedded in docs/formats.md)."""
    lines = ["| name | family | layout | bits/element | max | smallest positive |",
             "|---|---|---|---|---|---|"]
    for name, fmt in CATALOGUE.items():
        lines.append(f"| `{name}` | {type(fmt).__name__} | {layout(fmt)} | {fmt.bits:g} | {number(fmt.max)} | {number(fmt.min_subnormal)} |")
    return "\n".join(lines) + "\n"
