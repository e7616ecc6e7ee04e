"""The catalogue of named formats and the spec parser behind get_format."""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any

from .block_format import E8M0, BlockFormat
from .codebook import FP4_BNB_VALUES, KMEANS4_VALUES, NF4_VALUES, CodebookFormat
from .element import ElementFormat
from .float_format import FloatFormat
from .int_format import IntFormat
from .microexponent import MicroexponentFormat
from .scaled import ScaledFormat
from .tensor_scaled import TensorScaledFormat

Format = ElementFormat | ScaledFormat | TensorScaledFormat


P3109_DOMAINS = ("extended", "finite")


def p3109(k: int, p: int, signed: bool = True, domain: str = "extended") -> FloatFormat:
    """IEEE P3109 binary{k}p{p} (as its interim report and gfloat define it):
    k bits, precision p (implicit bit included), subnormals. Signed: a sign
    bit, k-p exponent bits, bias 2**(k-p-1), the negative-zero code is the
    single NaN; ``domain="extended"`` puts +-Inf at the top code of each
    sign, ``"finite"`` has no infinities. Unsigned: k-p+1 exponent bits,
    bias 2**(k-p), the all-ones code is the NaN; extended puts +Inf below it.
    Named as gfloat names it (``p3109_k8p3se``); the signed extended
    formats also answer to ``p3109_{k}p{p}``."""
    if domain not in P3109_DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(P3109_DOMAINS)}; got {domain!r}")
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be a bool, got {type(signed).__name__}")
    top = k - 1 if signed else k
    if not 2 <= k <= 32 or not 1 <= p <= top:
        raise ValueError(f"p3109 k={k} p={p} {'signed' if signed else 'unsigned'}: need 2 <= k <= 32 and "
                         f"1 <= p <= {'k - 1 (at least one exponent bit)' if signed else 'k'}")
    exp_bits = k - p if signed else k - p + 1
    specials = "p3109" if domain == "extended" else "fnuz" if signed else "fn"
    name = f"p3109_k{k}p{p}{'s' if signed else 'u'}{domain[0]}"
    return FloatFormat(exp_bits, p - 1, bias=1 << (exp_bits - 1), signed=signed, specials=specials, name=name)


def p3109_variants(k: int) -> list[FloatFormat]:
    """Every P3109 format of k bits: signed and unsigned, extended and finite, each precision."""
    return [p3109(k, p, signed, domain) for signed in (True, False) for domain in P3109_DOMAINS
            for p in range(1, k if signed else k + 1)]


def _catalogue() -> dict[str, Format]:
    fp8_e4m3 = FloatFormat(4, 3, specials="fn", name="fp8_e4m3")
    fp8_e5m2 = FloatFormat(5, 2, name="fp8_e5m2")
    fp6_e3m2 = FloatFormat(3, 2, specials="none", name="fp6_e3m2")
    fp6_e2m3 = FloatFormat(2, 3, specials="none", name="fp6_e2m3")
    fp4_e2m1 = FloatFormat(2, 1, specials="none", name="fp4_e2m1")
    mxint8_element = IntFormat(8, narrow=True, frac_bits=6, name="int8_mx")
    fp32 = FloatFormat(8, 23, name="fp32")
    fp16 = FloatFormat(5, 10, name="fp16")
    nf4 = CodebookFormat(NF4_VALUES, name="nf4_values")
    formats: list[Format] = [
        fp32,
        fp16,
        FloatFormat(8, 7, name="bf16"),
        fp8_e4m3,
        fp8_e5m2,
        FloatFormat(4, 3, bias=8, specials="fnuz", name="fp8_e4m3fnuz"),
        FloatFormat(5, 2, bias=16, specials="fnuz", name="fp8_e5m2fnuz"),
        fp6_e3m2,
        fp6_e2m3,
        fp4_e2m1,
        E8M0,
        *(dataclasses.replace(p3109(8, p), name=f"p3109_8p{p}") for p in range(1, 8)),
        *p3109_variants(8),
        *(IntFormat(b, name=f"int{b}") for b in range(2, 9)),
        *(IntFormat(b, signed=False, name=f"uint{b}") for b in range(2, 9)),
        BlockFormat(fp8_e4m3, 32, name="mxfp8_e4m3"),
        BlockFormat(fp8_e5m2, 32, name="mxfp8_e5m2"),
        BlockFormat(fp6_e3m2, 32, name="mxfp6_e3m2"),
        BlockFormat(fp6_e2m3, 32, name="mxfp6_e2m3"),
        BlockFormat(fp4_e2m1, 32, name="mxfp4"),
        BlockFormat(mxint8_element, 32, name="mxint8"),
        BlockFormat(fp4_e2m1, 16, scale=fp8_e4m3, name="nvfp4"),
        BlockFormat(fp4_e2m1, block_shape=(16, 16), scale=fp8_e4m3, name="nvfp4_16x16"),
        BlockFormat(IntFormat(4, name="int4"), 128, scale=fp16, name="int4_g128"),
        BlockFormat(IntFormat(4, signed=False, name="uint4"), 128, scale=fp16, zero_point=True,
                    name="int4_g128_asym"),
        BlockFormat(IntFormat(8, name="int8"), None, scale=fp32, name="int8_rowwise"),
        BlockFormat(fp8_e4m3, None, scale=fp32, name="fp8_e4m3_rowwise"),
        BlockFormat(fp8_e4m3, block_shape=(128, 128), scale=fp32, name="fp8_e4m3_b128x128"),
        BlockFormat(nf4, 64, scale=fp32, name="nf4"),
        BlockFormat(nf4, 64, scale=fp32, double_quant=BlockFormat(fp8_e4m3, 256, scale=fp32, name="fp8_e4m3_g256"),
                    name="nf4_dq"),
        BlockFormat(CodebookFormat(FP4_BNB_VALUES, name="fp4_bnb_values"), 64, scale=fp32, name="fp4_bnb"),
        BlockFormat(CodebookFormat(KMEANS4_VALUES, name="kmeans4_values"), 64, scale=fp32, name="kmeans4_g64"),
        TensorScaledFormat(IntFormat(8, name="int8"), "amax", name="int8_tensor"),
        TensorScaledFormat(fp8_e4m3, "amax", name="fp8_e4m3_tensor"),
        TensorScaledFormat(IntFormat(2, narrow=True, name="int2_narrow"), "absmean", name="ternary"),
        TensorScaledFormat(CodebookFormat((-1.0, 1.0), name="sign"), "absmean", name="binary"),
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


#: How deep parentheses may nest in a format name. ``mx(ELEMENT,BLOCK)`` needs
#: one level and no valid name needs more; the limit only stops a hostile or
#: mistaken name from recursing without bound.
MAX_NESTING = 8
#: The most digits a number in a format name may have (far more than any
#: width or block size the format classes accept).
MAX_DIGITS = 18
SPEC_FORMS = "eXmY, eXmYfn, eXmYfnuz, intN, uintN, p3109_KpP, p3109_kKpP[s|u][e|f], mx(ELEMENT,BLOCK)"


def _shown(spec: str, limit: int = 60) -> str:
    """``repr(spec)``, cut to ``limit`` characters for error messages."""
    return repr(spec) if len(spec) <= limit else repr(spec[:limit]) + f"... ({len(spec)} characters)"


def _number(digits: str, spec: str) -> int:
    """The int a run of digits in ``spec`` spells; ValueError beyond MAX_DIGITS."""
    if len(digits) > MAX_DIGITS:
        raise ValueError(f"format {_shown(spec)}: a number of {len(digits)} digits; numbers in a format name "
                         f"have at most {MAX_DIGITS}")
    return int(digits)


def _check_parentheses(spec: str) -> None:
    """ValueError unless the parentheses of ``spec`` balance and nest at most MAX_NESTING deep."""
    depth = deepest = 0
    for char in spec:
        depth += (char == "(") - (char == ")")
        deepest = max(deepest, depth)
        if depth < 0:
            break
    if depth != 0:
        raise ValueError(f"format {_shown(spec)}: unbalanced parentheses")
    if deepest > MAX_NESTING:
        raise ValueError(f"format {_shown(spec)} nests parentheses {deepest} deep; at most {MAX_NESTING} are allowed")


def _call(key: str) -> tuple[str, list[str]] | None:
    """``NAME(ARG, ...)`` as the name and its top-level arguments (stripped),
    or None when ``key`` is not one call that ends the string. The
    parentheses must already balance."""
    name, paren, rest = key.partition("(")
    if not paren or not rest.endswith(")"):
        return None
    body, depth, args, start = rest[:-1], 0, [], 0
    for i, char in enumerate(body):
        depth += (char == "(") - (char == ")")
        if depth < 0:  # the call closes before the end: text follows it
            return None
        if char == "," and depth == 0:
            args.append(body[start:i].strip())
            start = i + 1
    return name.strip(), [*args, body[start:].strip()]


def _build(spec: str, family: type, *args: Any, **options: Any) -> Format:
    """``family(*args, **options)``, its ValueError or TypeError prefixed with the name being parsed."""
    try:
        return family(*args, **options)
    except (ValueError, TypeError) as error:
        raise type(error)(f"format {_shown(spec)}: {error}") from error


def _parse_mx(spec: str, args: list[str]) -> Format:
    """``mx(ELEMENT,BLOCK)``: an element format in blocks of BLOCK with E8M0 scales."""
    if len(args) != 2 or not all(args):
        raise ValueError(f"format {_shown(spec)}: mx takes an element format and a block size, "
                         "as in mx(e2m1,32)")
    if not re.fullmatch(r"\d+", args[1]):
        raise ValueError(f"format {_shown(spec)}: the block size must be a positive integer")
    return _build(spec, BlockFormat, get_format(args[0]), _number(args[1], spec))


def _parse(spec: str, key: str) -> Format | None:
    """The format a spelled-out name ``key`` (normalised from ``spec``)
    describes, or None when it has none of the forms in SPEC_FORMS."""
    if m := re.fullmatch(r"p3109_(\d+)p(\d+)", key):
        fmt = _build(spec, p3109, _number(m[1], spec), _number(m[2], spec))
        return dataclasses.replace(fmt, name=key)
    if m := re.fullmatch(r"p3109_k(\d+)p(\d+)([su])([ef])", key):
        domain = "extended" if m[4] == "e" else "finite"
        return _build(spec, p3109, _number(m[1], spec), _number(m[2], spec), m[3] == "s", domain)
    if m := re.fullmatch(r"(u?)int(\d+)", key):
        return _build(spec, IntFormat, _number(m[2], spec), signed=not m[1])
    if m := re.fullmatch(r"(?:fp\d+_)?e(\d+)m(\d+)(fn|fnuz)?", key):
        e, man, suffix = _number(m[1], spec), _number(m[2], spec), m[3]
        if suffix == "fnuz":
            bias = 1 << (e - 1) if 1 <= e <= 31 else None  # e out of range: the constructor says why
            return _build(spec, FloatFormat, e, man, bias=bias, specials="fnuz")
        return _build(spec, FloatFormat, e, man, specials=suffix or "ieee")
    if "(" in key or ")" in key:
        _check_parentheses(key)
        call = _call(key)
        if call and call[0] == "mx":
            return _parse_mx(spec, call[1])
    return None


def get_format(spec: Any) -> Format:
    """A format from its catalogue name, an alias, a spelled-out spec
    (``"e4m3"``, ``"fp6_e3m2"``, ``"e3m4"``, ``"int5"``, ``"uint3"``,
    ``"p3109_8p3"``, ``"mx(e2m1,32)"``) or a format object (returned as is).

    A spelled-out ``eXmY`` that is not catalogued is IEEE-style (Inf and NaN
    at the top exponent); add ``fn`` or ``fnuz`` for those conventions.
    Raises ValueError naming the close matches and the spelled-out forms for
    an unknown spec, and ValueError (TypeError where the format classes
    raise it) naming the spec when it is malformed: unbalanced parentheses,
    parentheses nested deeper than MAX_NESTING, a number of more than
    MAX_DIGITS digits, or parameters the format family refuses.
    """
    if isinstance(spec, ElementFormat | ScaledFormat | TensorScaledFormat):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a format is a name like 'mxfp4' or a format object, got {type(spec).__name__}")
    key = spec.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in CATALOGUE:
        return CATALOGUE[key]
    parsed = _parse(spec, key)
    if parsed is None:
        close = difflib.get_close_matches(key, [*CATALOGUE, *ALIASES], n=5, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown format {_shown(spec)}{hint}; a format is a name from lowbit.list_formats() "
                         f"or one of {SPEC_FORMS}")
    return parsed
