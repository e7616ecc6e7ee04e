"""Bit packing inside the kernels, in :mod:`lowbit.formats.packing`'s
layout (code i at bits i*k .. i*k + k - 1, least significant bit first).

Each task of a kernel owns whole bytes (its blocks start on byte
boundaries), so tasks never write the same byte. The output starts zeroed.
"""

import numpy as np
from numba import njit

inline = njit(inline="always", cache=True)


@inline
def put_code(packed, bit, code, bits):
    """OR a ``bits``-wide (<= 16) code into zeroed bytes at stream position ``bit``."""
    byte, shift = bit >> 3, bit & 7
    word = code << shift
    for k in range((shift + bits + 7) >> 3):
        packed[byte + k] |= (word >> (8 * k)) & 0xFF


@inline
def get_code(packed, bit, bits):
    """The ``bits``-wide code at stream position ``bit``."""
    byte, shift = bit >> 3, bit & 7
    word = 0
    for k in range((shift + bits + 7) >> 3):
        word |= np.int64(packed[byte + k]) << (8 * k)
    return (word >> shift) & ((1 << bits) - 1)



