"""The kernels' view of formats and policies: one ABI for the numba kernels
and the CUDA extension.

A kernel takes a format as a fixed-length tuple of numbers (a value, not
memory, so the compiler keeps its fields in registers) and reads it by the
field numbers below; one compilation serves every format of a family.
Rounding modes, overflow policies and scale rules travel as the numbers of
their enums. The CUDA headers do not number anything themselves: they
include ``cuda/abi.h``, which :func:`header` writes from these enums (a test
checks that the file in the repository is what it writes), so the two
sides cannot drift.

A kernel backend serves the rounding modes, overflow policies and scale
rules its enum here lists; a mode added to :mod:`.rounding` alone runs on
the reference implementation until the kernels learn it.

Float fields a kernel needs (the smallest positive value) travel as their
float64 bit patterns in the element descriptor.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .block_format import BlockFormat
from .codebook import CodebookFormat
from .element import ElementFormat
from .float_format import FloatFormat
from .int_format import IntFormat
from .microexponent import MicroexponentFormat
from .rounding import check_sr_bits

if TYPE_CHECKING:
    import torch

    from .backends import ElementOps, Policy, ScaledOps
    from .encoded import Encoded


class Rounding(enum.IntEnum):
    """The rounding modes the kernels implement."""

    NEAREST_EVEN = 0
    NEAREST_AWAY = 1
    TOWARD_ZERO = 2
    UP = 3
    DOWN = 4
    STOCHASTIC = 5
    ODD = 6


class Overflow(enum.IntEnum):
    """The overflow policies the kernels implement."""

    OVERFLOW_SATURATE = 0
    OVERFLOW_INF = 1
    OVERFLOW_NAN = 2


class ScaleRule(enum.IntEnum):
    """BlockFormat scale rules the kernels implement."""

    RULE_FLOOR = 0
    RULE_CEIL = 1
    RULE_RCEIL = 2
    RULE_EVEN = 3
    RULE_AMAX = 4
    RULE_MSE = 5
    RULE_4OVER6 = 6
    RULE_MINMAX = 7


class ElementField(enum.IntEnum):
    """Fields of an element descriptor (:func:`element_descriptor`): field 0
    says the family, the others depend on it (so numbers repeat)."""

    IS_INT = 0
    # FloatFormat
    MAN_BITS = 1
    LOWEST_EXPONENT = 2
    SUBNORMALS = 3
    HAS_ZERO = 4
    MAX_CODE = 5
    SIGN_CODE = 6
    MAG_BITS = 7
    INF_MAG = 8
    NAN_POSITIVE = 9
    NAN_NEGATIVE = 10
    HAS_NEGATIVE_ZERO = 11
    SIGNED = 12
    BIAS = 13
    NEGATIVE_ZERO_IS_NAN = 14
    SMALLEST_BITS = 15
    # IntFormat
    INT_BITS = 1
    INT_SIGNED = 2
    QMIN = 3
    QMAX = 4
    FRAC_BITS = 5
    ELEMENT_FIELDS = 16


class BlockField(enum.IntEnum):
    """Fields of a BlockFormat's parameters (:func:`block_params`), ints and floats."""

    BLOCK_RULE = 0
    BLOCK_SCALE_EMIN = 1
    BLOCK_SCALE_EMAX = 2
    BLOCK_ELEMENT_EMAX = 3
    BLOCK_ELEMENT_MAX = 4
    BLOCK_ELEMENT_MANTISSA_BITS = 5
    BLOCK_DIVISOR = 6
    BLOCK_SIZE = 7
    BLOCK_ELEMENT_BITS = 8
    BLOCK_HAS_TENSOR_SCALE = 9
    BLOCK_SCALE_NAN = 10
    BLOCK_ZERO_POINT = 11
    BLOCK_SCALE_TINY = 12
    BLOCK_ROUND_FLOAT32 = 13
    BLOCK_SCALE_MAN_BITS = 14
    BLOCK_FIELDS = 15


class MicroField(enum.IntEnum):
    """Fields of a MicroexponentFormat's parameters (:func:`microexponent_params`)."""

    MICRO_MAN = 0
    MICRO_BLOCK = 1
    MICRO_SUB_BLOCK = 2
    MICRO_EXP_BITS = 3
    MICRO_MICRO_BITS = 4
    MICRO_EMIN = 5
    MICRO_EMAX = 6
    MICRO_EXP_BIAS = 7
    MICRO_FIELDS = 8


ENUMS = (Rounding, Overflow, ScaleRule, ElementField, BlockField, MicroField)

# Every member as a plain int constant of this module too (``abi.MAN_BITS``),
# for the numba kernels: they index the descriptor tuples with literal ints,
# and numba does not take an IntEnum member as one.
globals().update({name: int(value) for enum_type in ENUMS for name, value in enum_type.__members__.items()})

#: the public names the enums number, in their order
ROUNDINGS = tuple(m.name.lower() for m in Rounding)
OVERFLOWS = tuple(m.name.removeprefix("OVERFLOW_").lower() for m in Overflow)
SCALE_RULES = tuple(m.name.removeprefix("RULE_").lower() for m in ScaleRule)  # ... "mse", "4over6", "minmax"


#: stochastic rounding with a draw of k random bits (``sr_bits=k``) is the
#: kernels' rounding mode STOCHASTIC_BITS + k; STOCHASTIC draws 53 bits. The
#: width is part of the mode, as hardware describes its SR units, so it is
#: not a member of ``Rounding``; :func:`header` writes it beside the enums.
STOCHASTIC_BITS = 64


def rounding_code(rounding: str, sr_bits: int | None = None) -> int:
    """The kernels' number of a rounding mode (ValueError for one they
    lack); with ``sr_bits`` (stochastic only), STOCHASTIC_BITS + sr_bits."""
    code = _code(ROUNDINGS, rounding, "rounding")
    return code if check_sr_bits(rounding, sr_bits) is None else STOCHASTIC_BITS + sr_bits


def overflow_code(overflow: str) -> int:
    return _code(OVERFLOWS, overflow, "overflow")


def scale_rule_code(rule: str) -> int:
    return _code(SCALE_RULES, rule, "scale_rule")


def _code(names: tuple[str, ...], name: str, what: str) -> int:
    if name not in names:
        raise ValueError(f"the kernels implement {what} {', '.join(names)}; got {name!r}")
    return names.index(name)


def flush_threshold(dtype: Any, flush_subnormals: bool) -> float:
    """Magnitudes below this become zeros: the torch dtype's smallest normal, or 0."""
    import torch

    return float(torch.finfo(dtype).tiny) if flush_subnormals else 0.0


def float_bits(value: float) -> int:
    """The float64 bit pattern of value, as a signed int64."""
    return struct.unpack("<q", struct.pack("<d", value))[0]


@functools.lru_cache(maxsize=256)
def element_descriptor(fmt: ElementFormat) -> tuple[int, ...]:
    """The kernels' description of a FloatFormat or IntFormat (TypeError for other element families)."""
    f = ElementField
    fields = [0] * f.ELEMENT_FIELDS
    if isinstance(fmt, IntFormat):
        fields[f.IS_INT] = 1
        fields[f.INT_BITS], fields[f.INT_SIGNED] = fmt.bits, int(fmt.signed)
        fields[f.QMIN], fields[f.QMAX], fields[f.FRAC_BITS] = fmt.qmin, fmt.qmax, fmt.frac_bits
        return tuple(fields)
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"the kernels have no element descriptor for {type(fmt).__name__}")
    fields[f.MAN_BITS], fields[f.LOWEST_EXPONENT] = fmt.man_bits, fmt.lowest_exponent
    fields[f.SUBNORMALS], fields[f.HAS_ZERO] = int(fmt.subnormals), int(fmt.has_zero)
    fields[f.MAX_CODE], fields[f.SIGN_CODE], fields[f.MAG_BITS] = fmt.max_code, fmt.sign_code, fmt.magnitude_bits
    fields[f.INF_MAG] = fmt.inf_code if fmt.has_inf else -1
    fields[f.NAN_POSITIVE], fields[f.NAN_NEGATIVE] = fmt.nan_codes or (-1, -1)
    fields[f.HAS_NEGATIVE_ZERO], fields[f.SIGNED] = int(fmt.has_negative_zero), int(fmt.signed)
    fields[f.BIAS] = fmt.bias
    fields[f.NEGATIVE_ZERO_IS_NAN] = int(fmt.negative_zero_is_nan)
    fields[f.SMALLEST_BITS] = float_bits(fmt.min_subnormal)
    return tuple(fields)


@functools.lru_cache(maxsize=256)
def block_params(fmt: Any, rule: str, tensor_scale: float | None, block: int | None = None) -> tuple:
    """The kernels' description of a BlockFormat's scale rule and sizes
    (fields: :class:`BlockField`); ``block``: the elements per block of this
    call's layout (a whole axis, a tile), by default the format's block size."""
    return (scale_rule_code(rule), fmt.scale.emin, fmt.scale.emax, fmt.element.emax, float(fmt.element.max),
            fmt.element_mantissa_bits, float(tensor_scale or 1.0), block or fmt.block_size, fmt.element_code_bits,
            int(tensor_scale is not None), fmt.scale.nan_codes[0], int(fmt.zero_point), fmt.scale.min_subnormal,
            int(fmt.rounds_to_float32), fmt.scale.man_bits)


@functools.lru_cache(maxsize=256)
def microexponent_params(fmt: Any) -> tuple[int, ...]:
    """The kernels' description of a MicroexponentFormat (fields: :class:`MicroField`)."""
    return (fmt.man_bits, fmt.block_size, fmt.sub_block, fmt.exp_bits, fmt.micro_bits, fmt.emin, fmt.emax,
            fmt.exp_bias)


#: The scaling schemes of BlockFormat beyond one-axis blocks of a fixed size
#: with a scale rule of the first five, as :func:`block_schemes` names them;
#: a KernelBackend lists those its kernels implement.
SCHEMES = ("zero points", "double quantization", "double quantization of scales other than fp32", "2-D tiles",
           "whole-axis blocks", "products rounded to float32", "searched scales")


def block_schemes(fmt: Any, rule: str | None) -> list[str]:
    """The schemes (of :data:`SCHEMES`) that a BlockFormat under scale rule ``rule`` uses."""
    fp32_scales = fmt.scale.is_float32
    present = ((fmt.zero_point, "zero points"),
               (fmt.double_quant is not None, "double quantization" if fp32_scales else SCHEMES[2]),
               (fmt.block_shape is not None, "2-D tiles"), (fmt.block_size is None, "whole-axis blocks"),
               (fmt.rounds_to_float32, "products rounded to float32"), (rule in ("mse", "4over6"), "searched scales"))
    return [what for used, what in present if used]


#: the families the descriptors describe (these classes exactly: a subclass may change the math)
KERNEL_FAMILIES = (FloatFormat, IntFormat, BlockFormat, MicroexponentFormat)


def undescribable(fmt: Any, policy: Policy, schemes: frozenset[str] = frozenset(),
                  codebooks: bool = False) -> str | None:
    """Why this ABI cannot describe ``fmt`` and ``policy``, or None when it
    can: FloatFormat and IntFormat elements, BlockFormats of them with
    FloatFormat scales, MicroexponentFormats, with a rounding mode, overflow
    policy and scale rule that the enums number (``sr_bits`` is a rounding
    mode of every kernel; CodebookFormat elements only where the kernels
    take them)."""
    for what, value, known in (("rounding", policy.rounding, ROUNDINGS), ("overflow", policy.overflow, OVERFLOWS),
                               ("scale_rule", policy.scale_rule, SCALE_RULES)):
        if value is not None and value not in known:
            return f"the kernels implement {what} {', '.join(known)}, not {value!r}"
    if type(fmt) is BlockFormat and type(fmt.element) is CodebookFormat and codebooks:
        return _undescribable_codebook_blocks(fmt, policy, schemes)
    if type(fmt) is BlockFormat:
        for role, part, allowed in (("elements", fmt.element, (FloatFormat, IntFormat)),
                                    ("scales", fmt.scale, (FloatFormat,))):
            if type(part) not in allowed:
                return (f"the kernels take BlockFormats with {' or '.join(k.__name__ for k in allowed)} {role}, "
                        f"not {type(part).__name__} ({part.name})")
        missing = [what for what in block_schemes(fmt, policy.scale_rule or fmt.scale_rule) if what not in schemes]
        if missing:
            return f"its kernels do not implement {', '.join(missing)}, which {fmt.name} uses"
    elif type(fmt) is CodebookFormat and not codebooks:
        return "its kernels do not implement codebook elements"
    elif type(fmt) not in (*KERNEL_FAMILIES, CodebookFormat):
        return (f"the kernels implement the families {', '.join(k.__name__ for k in KERNEL_FAMILIES)}, "
                f"not {type(fmt).__name__} ({fmt.name})")
    return None


def _undescribable_codebook_blocks(fmt: BlockFormat, policy: Policy, schemes: frozenset[str]) -> str | None:
    """Why the codebook block kernels cannot run ``fmt`` (QLoRA's layout:
    fp32 scales, rule amax, double quantization at most; the layouts of
    ``schemes``), or None. Double quantization needs no kernel of its own:
    the backends encode and decode through it."""
    fp32_scales = fmt.scale.is_float32
    rule = policy.scale_rule or fmt.scale_rule
    if not fp32_scales or rule != "amax" or fmt.tensor_scale:
        return (f"its kernels take codebook elements in blocks with fp32 scales under scale_rule 'amax' only; "
                f"{fmt.name} has {fmt.scale.name} scales, rule {rule!r}")
    missing = [what for what in block_schemes(fmt, rule) if what not in schemes and what != "double quantization"]
    if missing:
        return f"its kernels do not implement {', '.join(missing)}, which {fmt.name} uses"
    return None


@dataclass(frozen=True)
class KernelBackend:
    """A backend whose kernels read this ABI's descriptors: it supports
    every format and policy :func:`undescribable` accepts, and matmuls where
    it has a ``product`` (``takes_product(a_format, b_format)`` says which
    pairs; ``product(a, b, bias, out_dtype, instruction)`` computes them)."""

    name: str
    device_type: str
    elements: ElementOps
    scaled: ScaledOps
    takes_product: Callable[[Any, Any], bool] | None = None
    product: Callable[..., torch.Tensor] | None = None
    schemes: frozenset[str] = frozenset()  # the BlockFormat schemes (of SCHEMES) its kernels implement
    codebooks: bool = False  # whether its kernels take CodebookFormat elements (on their own and in blocks)
    datapath: Callable[..., Any] | None = None  # its datapath matmul (lowbit.formats.datapath_matmul), if any

    def supports(self, fmt: Any, operation: str, policy: Policy) -> bool:
        return self.unsupported(fmt, operation, policy) is None

    def unsupported(self, fmt: Any, operation: str, policy: Policy) -> str | None:
        if operation == "matmul":
            if self.takes_product is None or not self.takes_product(*fmt):
                return f"the {self.name!r} backend multiplies no operands of these formats"
            return None
        return undescribable(fmt, policy, self.schemes, self.codebooks)

    def matmul(self, a: Encoded, b: Encoded, bias: torch.Tensor | None, out_dtype: torch.dtype,
               instruction: str | None) -> torch.Tensor:
        if self.product is None:
            raise ValueError(f"the {self.name!r} backend has no matmul")
        return self.product(a, b, bias, out_dtype, instruction)


def header() -> str:
    """The text of ``cuda/abi.h``: these enums as C++ enums of the same
    names and numbers (aliases included) and STOCHASTIC_BITS, for the CUDA
    headers to include."""
    lines = ["// Generated by lowbit.formats.abi.header() from the enums of formats/abi.py: edit those, then",
             "// python -c 'from lowbit.formats.abi import header; print(header(), end=\"\")' > cuda/abi.h",
             "// (tests/test_abi.py checks that this file is what header() writes).",
             "#pragma once", "", "namespace lowbit {", ""]
    for enum_type in ENUMS:
        lines.append(f"enum {enum_type.__name__} {{")
        line = " "
        for name, value in enum_type.__members__.items():
            item = f" {name} = {int(value)},"
            if len(line) + len(item) > 110:
                lines.append(line)
                line = " "
            line += item
        lines += [line.rstrip(","), "};"]
    lines += ["", "// sr_bits=k is the rounding mode STOCHASTIC_BITS + k (formats/abi.py)",
              f"constexpr int STOCHASTIC_BITS = {STOCHASTIC_BITS};", "", "}  // namespace lowbit", ""]
    return "\n".join(lines)
