"""Bit packing inside the kernels, in :mod:`lowbit.formats.packing`'s
layout (code i at bits i*k .. i*k + k - 1, least significant bit first).

Each task of a kernel owns whole bytes (its blocks start on byte
boundaries), so tasks never write the same byte. The output starts zeroed.
"""

import numpy as np

from .compiling import jit

inline = jit(inline="always")


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





@inline
def whole_bytes(bits, block):
    """Whether each row of ``block`` codes of ``bits`` bits fills whole
    bytes, which pack_row then writes outright (so the packed buffer need
    not be zeroed first)."""
    return (block * bits) % 8 == 0


@inline
def pack_row(packed, r, codes, block, bits):
    """Pack row r's codes (non-negative int32, fewer than 2**bits) in
    packing's layout. Rows of 4- and 8-bit codes are written through a slice
    (indices the compiler knows are in range) so that the loops vectorize;
    other rows filling whole bytes stream their bits through a 64-bit word;
    the rest OR their codes into zeroed bytes."""
    if bits == 8:
        row = packed[r * block:(r + 1) * block]
        for j in range(block):
            row[j] = codes[j]
    elif (bits == 4) & (block % 2 == 0):
        row = packed[r * (block // 2):(r + 1) * (block // 2)]
        for j in range(block // 2):
            row[j] = codes[2 * j] | (codes[2 * j + 1] << 4)
    elif whole_bytes(bits, block):
        byte, word, filled = r * block * bits // 8, np.int64(0), 0
        for j in range(block):
            word |= np.int64(codes[j]) << filled
            filled += bits
            while filled >= 8:
                packed[byte] = word & 0xFF
                byte, word, filled = byte + 1, word >> 8, filled - 8
    else:
        for j in range(block):
            put_code(packed, (r * block + j) * bits, codes[j], bits)


@inline
def unpack_row(packed, r, codes, block, bits):
    """Row r's ``block`` codes of ``bits`` bits into codes (int32): the
    inverse of pack_row, for rows that fill whole bytes."""
    if bits == 8:
        row = packed[r * block:(r + 1) * block]
        for j in range(block):
            codes[j] = row[j]
    elif (bits == 4) & (block % 2 == 0):
        row = packed[r * (block // 2):(r + 1) * (block // 2)]
        for j in range(block // 2):
            codes[2 * j], codes[2 * j + 1] = row[j] & 0xF, row[j] >> 4
    else:
        byte, word, filled = r * block * bits // 8, np.int64(0), 0
        for j in range(block):
            while filled < bits:
                word |= np.int64(packed[byte]) << filled
                byte, filled = byte + 1, filled + 8
            codes[j] = word & ((1 << bits) - 1)
            word, filled = word >> bits, filled - bits
