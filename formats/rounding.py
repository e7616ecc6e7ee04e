"""Rounding and overflow policies, and the one decision every format shares:
given an exact magnitude ``a`` and its two representable neighbours
``lo <= a < hi``, which one does a rounding mode pick?

All arithmetic here is exact in float64: the neighbours of a format of at
most 32 bits have few significant bits, so ``lo + hi``, ``2 * a``, ``a - lo``
and ``hi - lo`` are computed without rounding.
"""

from __future__ import annotations

from typing import Any

import torch

ROUNDING_MODES = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "stochastic", "odd")

#: The widths ``sr_bits`` may take: the random draw of stochastic rounding
#: limited to k bits, as hardware SR units draw them (8 and 13 are common).
SR_BITS_RANGE = (1, 32)
OVERFLOW_POLICIES = ("saturate", "inf", "nan")


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDING_MODES)}; got {rounding!r}")
    return rounding


def check_overflow(overflow: str | None, has_inf: bool, has_nan: bool, format_name: str) -> str:
    """Validate an overflow policy for a format; None means the format's default
    (``inf`` for formats with infinities, otherwise ``saturate``)."""
    if overflow is None:
        return "inf" if has_inf else "saturate"
    if overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}; got {overflow!r}")
    if overflow == "inf" and not has_inf:
        raise ValueError(f"overflow='inf' needs a format with infinities; {format_name} has none (use 'saturate'{' or nan' if has_nan else ''})")
    if overflow == "nan" and not has_nan:
        raise ValueError(f"overflow='nan' needs a format with NaN; {format_name} has none (use 'saturate')")
    return overflow


#: SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
#: generators", OOPSLA 2014): the i-th draw of a stream with key k is
#: mix(k + (i + 1) * GAMMA). A counter-based generator: element i's random
#: bits depend only on the key and i, never on chunking or thread count, so
#: every backend draws the same bits for the same element.
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX_MUL1 = 0xBF58476D1CE4E5B9
SPLITMIX_MUL2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def check_sr_bits(rounding: str, sr_bits: int | None) -> int | None:
    """``sr_bits`` checked: None (53 random bits) or an int in
    :data:`SR_BITS_RANGE`, and only with ``rounding="stochastic"``."""
    if sr_bits is None:
        return None
    if not isinstance(sr_bits, int) or isinstance(sr_bits, bool):
        raise TypeError(f"sr_bits must be an int or None, got {type(sr_bits).__name__}")
    low, high = SR_BITS_RANGE
    if not low <= sr_bits <= high:
        raise ValueError(f"sr_bits must lie in {low}..{high}, got {sr_bits}")
    if rounding != "stochastic":
        raise ValueError(f"sr_bits applies only to rounding='stochastic', not {rounding!r}")
    return sr_bits


def stochastic_key(rounding: str, seed: int | None, generator: Any) -> int | None:
    """The 64-bit key of stochastic rounding's random stream: ``seed`` itself
    (mod 2**64) if given, else drawn from ``generator``, else from torch's
    global generator (reproducible with ``torch.manual_seed``). None when
    the mode is not stochastic. Checks the mode's arguments."""
    check_rounding(rounding)
    if rounding != "stochastic":
        if seed is not None or generator is not None:
            raise ValueError("seed and generator apply only to rounding='stochastic'")
        return None
    if generator is not None and seed is not None:
        raise ValueError("pass either seed or generator for stochastic rounding, not both")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        return seed & _MASK64
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    draw = torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64, generator=generator,
                         device=generator.device if generator is not None else "cpu")
    return int(draw) & _MASK64


def _as_int64(value: int) -> int:
    """A 64-bit pattern as the signed int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def counter_uniforms(key: int, first: int, shape: tuple[int, ...], device: Any, bits: int = 53) -> torch.Tensor:
    """Uniforms in [0, 1) of ``bits`` random bits (53 at most) for the
    elements numbered ``first``, ``first + 1``, ... in C order over
    ``shape``: draw i of SplitMix64 with ``key``, its top ``bits`` bits
    scaled by 2**-bits (exact in float64)."""
    count = 1
    for n in shape:
        count *= n
    index = torch.arange(first + 1, first + 1 + count, dtype=torch.int64, device=device)
    z = _as_int64(key) + index * _as_int64(SPLITMIX_GAMMA)  # int64 arithmetic wraps modulo 2**64
    z = (z ^ _shift_right(z, 30)) * _as_int64(SPLITMIX_MUL1)
    z = (z ^ _shift_right(z, 27)) * _as_int64(SPLITMIX_MUL2)
    z = z ^ _shift_right(z, 31)
    return (_shift_right(z, 64 - bits).to(torch.float64) * 2.0 ** -bits).reshape(shape)


class Rounder:
    """One rounding mode applied to magnitudes of values with known signs.

    Stochastic rounding draws element i's uniform from the counter-based
    stream ``key`` (see :func:`stochastic_key`), ``first`` being the number
    of the first element of ``negative``; ``sr_bits=k`` limits the draw to
    its top k bits. Directed modes become magnitude modes: ``up`` rounds
    positive values away from zero and negative ones toward zero, ``down``
    the reverse.
    """

    def __init__(self, rounding: str, negative: torch.Tensor, key: int | None = None, first: int = 0,
                 sr_bits: int | None = None):
        self.mode = check_rounding(rounding)
        self.negative = negative
        self.sr_bits = check_sr_bits(self.mode, sr_bits)
        self.u = None
        if self.mode == "stochastic":
            self.u = counter_uniforms(key, first, tuple(negative.shape), negative.device, sr_bits or 53)

    def toward_zero(self) -> torch.Tensor | bool:
        """Where this mode rounds magnitudes toward zero (so never overflows to infinity)."""
        if self.mode == "toward_zero":
            return True
        if self.mode == "up":
            return self.negative
        if self.mode == "down":
            return ~self.negative
        return False

    def pick_upper(self, a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, lo_is_odd: torch.Tensor) -> torch.Tensor:
        """True where the mode picks ``hi`` over ``lo`` for ``lo <= a < hi``.

        Ties (a exactly halfway) go to the even code under ``nearest_even``
        and to ``hi`` (away from zero) under ``nearest_away``; ``odd`` picks
        the neighbour with the odd code when a is not ``lo`` itself.
        Stochastic rounding picks ``hi`` with probability (a - lo) / (hi - lo):
        where u * (hi - lo) < a - lo for the 53-bit uniform u; with
        ``sr_bits=k``, where round_half_even((a - lo) / (hi - lo) * 2**k) +
        r >= 2**k for the k-bit integer r = u * 2**k (gfloat's
        ``RoundMode.Stochastic``; unbiased to within 2**-(k+1)).
        """
        if self.mode in ("nearest_even", "nearest_away"):
            twice, mid = 2 * a, lo + hi
            if self.mode == "nearest_away":
                return twice >= mid
            return (twice > mid) | ((twice == mid) & lo_is_odd)
        if self.mode == "odd":
            return (a > lo) & ~lo_is_odd
        if self.mode == "stochastic":
            if self.sr_bits is None:
                return self.u * (hi - lo) < (a - lo)
            steps = float(1 << self.sr_bits)
            return torch.round((a - lo) / (hi - lo) * steps) + self.u * steps >= steps
        return (a > lo) & ~torch.as_tensor(self.toward_zero(), device=a.device)
