"""Formats and policies as tuples of integers, the kernels' view of them
(the numba kernels here and the CUDA extension's, whose headers read the
same fields in the same order).

A kernel takes a format as a fixed-length tuple of int64 (a value, not
memory, so the compiler keeps its fields in registers) and reads it with
the field indices below; one compilation serves every format of a family.
Float fields that a kernel needs (the smallest positive value) travel as
their float64 bit patterns.
"""

from __future__ import annotations

import functools

import struct

from ..element import ElementFormat
from ..float_format import FloatFormat
from ..int_format import IntFormat
from ..rounding import OVERFLOW_POLICIES, ROUNDING_MODES

# rounding modes and overflow policies, numbered in their public order
NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, UP, DOWN, STOCHASTIC = range(len(ROUNDING_MODES))
SATURATE, INF, NAN = range(len(OVERFLOW_POLICIES))

# element descriptor fields (both families)
IS_INT = 0
# FloatFormat
MAN_BITS, LOWEST_EXPONENT, SUBNORMALS, HAS_ZERO, MAX_CODE, SIGN_CODE, MAG_BITS = 1, 2, 3, 4, 5, 6, 7
INF_MAG, NAN_POSITIVE, NAN_NEGATIVE, HAS_NEGATIVE_ZERO, SIGNED, BIAS, NEGATIVE_ZERO_IS_NAN = 8, 9, 10, 11, 12, 13, 14
SMALLEST_BITS = 15
# IntFormat
INT_BITS, INT_SIGNED, QMIN, QMAX, FRAC_BITS = 1, 2, 3, 4, 5
ELEMENT_FIELDS = 16


def rounding_code(rounding: str) -> int:
    return ROUNDING_MODES.index(rounding)


def overflow_code(overflow: str) -> int:
    return OVERFLOW_POLICIES.index(overflow)


def flush_threshold(dtype, flush_subnormals: bool) -> float:
    """Magnitudes below this become zeros: the torch dtype's smallest normal, or 0."""
    import torch

    return float(torch.finfo(dtype).tiny) if flush_subnormals else 0.0


def float_bits(value: float) -> int:
    """The float64 bit pattern of value, as a signed int64."""
    return struct.unpack("<q", struct.pack("<d", value))[0]


@functools.lru_cache(maxsize=256)
def element_descriptor(fmt: ElementFormat) -> tuple[int, ...]:
    """The kernels' description of a FloatFormat or IntFormat."""
    fields = [0] * ELEMENT_FIELDS
    if isinstance(fmt, IntFormat):
        fields[IS_INT] = 1
        fields[INT_BITS], fields[INT_SIGNED] = fmt.bits, int(fmt.signed)
        fields[QMIN], fields[QMAX], fields[FRAC_BITS] = fmt.qmin, fmt.qmax, fmt.frac_bits
        return tuple(fields)
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"no CPU kernel for element format {type(fmt).__name__}")
    fields[MAN_BITS], fields[LOWEST_EXPONENT] = fmt.man_bits, fmt._lowest_exponent()
    fields[SUBNORMALS], fields[HAS_ZERO] = int(fmt.subnormals), int(fmt.has_zero)
    fields[MAX_CODE], fields[SIGN_CODE], fields[MAG_BITS] = fmt.max_code, fmt._sign_code, fmt._mag_bits
    fields[INF_MAG] = fmt._inf_mag if fmt.has_inf else -1
    if fmt.has_nan:
        fields[NAN_POSITIVE], fields[NAN_NEGATIVE] = _nan_codes(fmt)
    else:
        fields[NAN_POSITIVE] = fields[NAN_NEGATIVE] = -1
    fields[HAS_NEGATIVE_ZERO], fields[SIGNED] = int(fmt.has_negative_zero), int(fmt.signed)
    fields[BIAS] = fmt.bias
    fields[NEGATIVE_ZERO_IS_NAN] = int(fmt.specials in ("fnuz", "p3109"))
    fields[SMALLEST_BITS] = float_bits(fmt.min_subnormal)
    return tuple(fields)


def _nan_codes(fmt: FloatFormat) -> tuple[int, int]:
    import torch

    codes = fmt._nan_code(torch.tensor([False, True]))
    return int(codes[0]), int(codes[1])


# BlockFormat parameters (a tuple of ints and floats); scale rules by number
FLOOR, CEIL, RCEIL, EVEN, AMAX = range(5)
SCALE_RULES = ("floor", "ceil", "rceil", "even", "amax")
(RULE, SCALE_EMIN, SCALE_EMAX, ELEMENT_EMAX, ELEMENT_MAX, ELEMENT_MANTISSA_BITS, DIVISOR, BLOCK,
 ELEMENT_BITS, HAS_TENSOR_SCALE, SCALE_NAN) = range(11)


@functools.lru_cache(maxsize=256)
def block_params(fmt, rule: str, tensor_scale: float | None) -> tuple:
    """The kernels' description of a BlockFormat's scale rule and sizes."""
    scale_nan = _nan_codes(fmt.scale)[0]
    return (SCALE_RULES.index(rule), fmt.scale.emin, fmt.scale.emax, fmt.element.emax, float(fmt.element.max),
            fmt._element_mantissa_bits, float(tensor_scale or 1.0), fmt.block_size, fmt.element_code_bits,
            int(tensor_scale is not None), scale_nan)


# MicroexponentFormat parameters (a tuple of ints)
(MAN, ME_BLOCK, SUB_BLOCK, EXP_BITS, MICRO_BITS, ME_EMIN, ME_EMAX, EXP_BIAS) = range(8)


@functools.lru_cache(maxsize=256)
def microexponent_params(fmt) -> tuple[int, ...]:
    return (fmt.man_bits, fmt.block_size, fmt.sub_block, fmt.exp_bits, fmt.micro_bits, fmt.emin, fmt.emax,
            fmt._exp_bias)
