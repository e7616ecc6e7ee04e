"""float64 bit tricks the CPU kernels inline: the bits of a float, powers
of two built on the bits, floor(log2 |x|) read off them. A module of its
own that imports nothing of the formats layer, so any kernel may use it."""

from __future__ import annotations

import numpy as np

from .compiling import jit

EXPONENT_MASK = 0x7FF0000000000000
MAGNITUDE_MASK = 0x7FFFFFFFFFFFFFFF
inline = jit(inline="always")


@inline
def bits_of(x):
    return np.float64(x).view(np.int64)


@inline
def pow2(k):
    """2.0**k for integer k in [-1022, 1023], built on the bits."""
    return np.int64((k + 1023) << 52).view(np.float64)


@inline
def floor_log2_or(x_bits, below):
    """floor(log2 |x|) of a normal float64, or ``below`` when x is zero or
    subnormal (every such x lies under 2**-1022)."""
    biased = (x_bits & MAGNITUDE_MASK) >> 52
    return biased - 1023 if biased != 0 else below
