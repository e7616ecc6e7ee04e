"""The catalogue of named formats and the spec parser behind get_format."""

from __future__ import annotations

import difflib
import re
from typing import Any

from .block_format import E8M0, BlockFormat
from .element import ElementFormat
from .float_format import FloatFormat
from .int_format import IntFormat
from .microexponent import MicroexponentFormat
from .scaled import ScaledFormat

Format = ElementFormat | ScaledFormat


def p3109(k: int, p: int) -> FloatFormat:
    """IEEE P3109 binary{k}p{p}: k bits, precision p (implicit bit included),
    bias 2**(k-p-1), subnormals, +-Inf at the top code of each sign, the
    negative-zero code is the single NaN."""
    if not 2 <= k <= 32 or not 1 <= p <= k - 1:
        raise ValueError(f"p3109_{k}p{p}: need 2 <= k <= 32 and 1 <= p <= k - 1 (at least one exponent bit)")
    return FloatFormat(k - p, p - 1, bias=1 << (k - p - 1), specials="p3109", name=f"p3109_{k}p{p}")


def _catalogue() -> dict[str, Format]:
    fp8_e4m3 = FloatFormat(4, 3, specials="fn", name="fp8_e4m3")
    fp8_e5m2 = FloatFormat(5, 2, name="fp8_e5m2")
    fp6_e3m2 = FloatFormat(3, 2, specials="none", name="fp6_e3m2")
    fp6_e2m3 = FloatFormat(2, 3, specials="none", name="fp6_e2m3")
    fp4_e2m1 = FloatFormat(2, 1, specials="none", name="fp4_e2m1")
    mxint8_element = IntFormat(8, narrow=True, frac_bits=6, name="int8_mx")
    formats: list[Format] = [
        FloatFormat(8, 23, name="fp32"),
        FloatFormat(5, 10, name="fp16"),
        FloatFormat(8, 7, name="bf16"),
        fp8_e4m3,
        fp8_e5m2,
        FloatFormat(4, 3, bias=8, specials="fnuz", name="fp8_e4m3fnuz"),
        FloatFormat(5, 2, bias=16, specials="fnuz", name="fp8_e5m2fnuz"),
        fp6_e3m2,
        fp6_e2m3,
        fp4_e2m1,
        E8M0,
        *(p3109(8, p) for p in range(1, 8)),
        *(IntFormat(b, name=f"int{b}") for b in range(2, 9)),
        *(IntFormat(b, signed=False, name=f"uint{b}") for b in range(2, 9)),
        BlockFormat(fp8_e4m3, 32, name="mxfp8_e4m3"),
        BlockFormat(fp8_e5m2, 32, name="mxfp8_e5m2"),
        BlockFormat(fp6_e3m2, 32, name="mxfp6_e3m2"),
        BlockFormat(fp6_e2m3, 32, name="mxfp6_e2m3"),
        BlockFormat(fp4_e2m1, 32, name="mxfp4"),
        BlockFormat(mxint8_element, 32, name="mxint8"),
        BlockFormat(fp4_e2m1, 16, scale=fp8_e4m3, name="nvfp4"),
        MicroexponentFormat(7, name="mx9"),
        MicroexponentFormat(4, name="mx6"),
        MicroexponentFormat(2, name="mx4"),
        MicroexponentFormat(3, micro_bits=0, name="msfp12"),
        MicroexponentFormat(7, micro_bits=0, name="msfp16"),
    ]
    return {f.name: f for f in formats}


CATALOGUE: dict[str, Format] = _catalogue()

ALIASES = {
    "float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16",
    "e4m3": "fp8_e4m3", "e4m3fn": "fp8_e4m3", "fp8_e4m3fn": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3",
    "e5m2": "fp8_e5m2", "float8_e5m2": "fp8_e5m2",
    "e4m3fnuz": "fp8_e4m3fnuz", "float8_e4m3fnuz": "fp8_e4m3fnuz",
    "e5m2fnuz": "fp8_e5m2fnuz", "float8_e5m2fnuz": "fp8_e5m2fnuz",
    "e3m2": "fp6_e3m2", "e2m3": "fp6_e2m3", "e2m1": "fp4_e2m1", "fp4": "fp4_e2m1",
    "e8m0fnu": "e8m0", "float8_e8m0fnu": "e8m0",
    "mxfp8": "mxfp8_e4m3", "mxfp4_e2m1": "mxfp4",
}


def list_formats() -> list[str]:
    """Names of every catalogued format, in catalogue order."""
    return list(CATALOGUE)


def _parse(spec: str) -> Format | None:
    if m := re.fullmatch(r"p3109_(\d+)p(\d+)", spec):
        return p3109(int(m[1]), int(m[2]))
    if m := re.fullmatch(r"(u?)int(\d+)", spec):
        return IntFormat(int(m[2]), signed=not m[1])
    if m := re.fullmatch(r"(?:fp\d+_)?e(\d+)m(\d+)(fn|fnuz)?", spec):
        e, man, suffix = int(m[1]), int(m[2]), m[3]
        if suffix == "fnuz":
            return FloatFormat(e, man, bias=1 << (e - 1), specials="fnuz")
        return FloatFormat(e, man, specials=suffix or "ieee")
    if m := re.fullmatch(r"mx\((.+),\s*(\d+)\)", spec):
        return BlockFormat(get_format(m[1]), int(m[2]))
    return None


def get_format(spec: Any) -> Format:
    """A format from its catalogue name, an alias, a spelled-out spec
    (``"e4m3"``, ``"fp6_e3m2"``, ``"e3m4"``, ``"int5"``, ``"uint3"``,
    ``"p3109_8p3"``, ``"mx(e2m1,32)"``) or a format object (returned as is).

    A spelled-out ``eXmY`` that is not catalogued is IEEE-style (Inf and NaN
    at the top exponent); add ``fn`` or ``fnuz`` for those conventions.
    Raises ValueError naming the close matches for an unknown spec.
    """
    if isinstance(spec, ElementFormat | ScaledFormat):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a format is a name like 'mxfp4' or a format object, got {type(spec).__name__}")
    key = spec.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in CATALOGUE:
        return CATALOGUE[key]
    parsed = _parse(key)
    if parsed is None:
        close = difflib.get_close_matches(key, [*CATALOGUE, *ALIASES], n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see lowbit.list_formats()"
        raise ValueError(f"unknown format {spec!r}{hint}")
    return parsed
