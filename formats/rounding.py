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

ROUNDING_MODES = ("nearest_even", "nearest_away", "toward_zero", "up", "down", "stochastic")
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


def stochastic_generator(rounding: str, seed: int | None, generator: Any, device: torch.device) -> torch.Generator | None:
    """The generator stochastic rounding draws from: ``generator`` if given,
    else one seeded with ``seed``, else None (torch's global generator,
    reproducible with ``torch.manual_seed``). Checks the mode's arguments."""
    check_rounding(rounding)
    if rounding != "stochastic":
        if seed is not None or generator is not None:
            raise ValueError("seed and generator apply only to rounding='stochastic'")
        return None
    if generator is not None and seed is not None:
        raise ValueError("pass either seed or generator for stochastic rounding, not both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is not None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        generator = torch.Generator(device=device).manual_seed(seed)
    return generator


class Rounder:
    """One rounding mode applied to magnitudes of values with known signs.

    ``generator`` (from :func:`stochastic_generator`) feeds stochastic
    rounding. Directed modes become magnitude modes: ``up`` rounds positive values away
    from zero and negative ones toward zero, ``down`` the reverse.
    """

    def __init__(self, rounding: str, negative: torch.Tensor, generator: torch.Generator | None = None):
        self.mode = check_rounding(rounding)
        self.negative = negative
        self.u = None
        if self.mode == "stochastic":  # uniform in [0, 1), 53 random bits
            self.u = torch.rand(negative.shape, dtype=torch.float64, device=negative.device, generator=generator)

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
        and to ``hi`` (away from zero) under ``nearest_away``. Stochastic
        rounding picks ``hi`` with probability (a - lo) / (hi - lo).
        """
        if self.mode in ("nearest_even", "nearest_away"):
            twice, mid = 2 * a, lo + hi
            if self.mode == "nearest_away":
                return twice >= mid
            return (twice > mid) | ((twice == mid) & lo_is_odd)
        if self.mode == "stochastic":
            return self.u * (hi - lo) < (a - lo)
        return (a > lo) & ~torch.as_tensor(self.toward_zero(), device=a.device)
