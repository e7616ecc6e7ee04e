"""Float32 fast path of microexponent formats in sub-blocks of two (MX4,
MX6, MX9, MSFP): contiguous float32 or bfloat16 data blocked along its last
axis in whole blocks, rounded to nearest even.

Quantize runs loops over a task's pairs and blocks, each of which
vectorizes: pair maxima, block maxima as a tree over them, shared
exponents, then each pair on its step, rounded by adding and subtracting
2**(step + 23). Decoding reads whole-byte rows of codes and shifts.
Agrees with the reference bit for bit.
"""

from __future__ import annotations


import numpy as np
from numba import prange

from ..abi import MICRO_BLOCK, MICRO_EMAX, MICRO_EMIN, MICRO_EXP_BIAS, MICRO_EXP_BITS, MICRO_MAN, MICRO_MICRO_BITS
from .bits import pack_row, unpack_row
from .compiling import jit
from .fast32 import (
    EXPONENT32, MAGNITUDE32, ROWS_PER_TASK, SIGN32, as_float32, to_output,
)
from .reductions import largest_magnitude_bits
from .scalar import pow2

inline = jit(inline="always")
NO_EXPONENT = -(1 << 20)  # floor(log2 0), below every exponent


def microexponent_fits(fmt) -> bool:
    """Whether a MicroexponentFormat's quantize can take the fast path:
    sub-blocks of two elements (MX4, MX6, MX9, MSFP) and magnitudes of at
    most 23 bits (exact in float32 after scaling)."""
    return fmt.sub_block == 2 and fmt.man_bits <= 22


@inline
def block_output(value, bad, out):
    """A float64 block result in out's dtype (NaN for a NaN block), and
    whether float32 or out's dtype failed to hold it exactly."""
    narrow = np.float32(value)
    stored, exact = to_output(np.float32(np.nan) if bad else narrow, out)
    return stored, ((np.float64(narrow) != value) & (not bad)) | (not exact)


@inline
def exponent_of_bits(bits):
    """floor(log2 |v|) of a finite float32 v given as its magnitude bits
    (subnormals included: below 2**23 the bits convert to float32 exactly,
    and that float's exponent is the bits' top set bit); NO_EXPONENT for 0."""
    shift = np.int32(23)  # int32 throughout: numba computes int32 operations in int64 lanes unless narrowed
    normal = np.int32(np.int32(bits >> shift) - np.int32(127))
    subnormal = np.int32(np.int32(np.float32(bits).view(np.int32) >> shift) - np.int32(127 + 149))
    return normal if bits >= np.int32(1 << 23) else (subnormal if bits > np.int32(0) else np.int32(NO_EXPONENT))


@inline
def microexponent_element(v, step_exp, largest, bad, out):
    """(v in out's dtype, inexact) for element v of a sub-block with step
    2**step_exp, in float64: |v| / step rounded to nearest even, saturated,
    with a check that float32 holds the result."""
    negative = np.float32(v).view(np.int32) < 0
    t = np.float32(abs(np.float64(v)) * pow2(-step_exp))  # exact, or far below 1/2
    magnitude = min((t + np.float32(1 << 23)) - np.float32(1 << 23), largest)
    value = np.float64(magnitude) * pow2(step_exp)
    return block_output(-value if negative else value, bad, out)


@inline
def microexponent_pairs64(x, out, shared, mp):
    """x's pairs (x and out: a task's slices) quantized into out in float64,
    with the shared exponent of pair i in shared[i]; whether any result was
    inexact."""
    man, micro = mp[MICRO_MAN], mp[MICRO_MICRO_BITS]
    largest = np.float32((1 << man) - 1)
    lost = False
    for i in range(x.size // 2):
        a, b = as_float32(x[2 * i]), as_float32(x[2 * i + 1])
        e_max = shared[i]
        bad = e_max == NO_EXPONENT
        pair_top = max(np.int32(np.float32(a).view(np.int32) & MAGNITUDE32),
                       np.int32(np.float32(b).view(np.int32) & MAGNITUDE32))
        step_exp = e_max - min(max(e_max - exponent_of_bits(pair_top), 0), (1 << micro) - 1) - man + 1
        step_exp = np.int32(0 if bad else step_exp)
        out[2 * i], lost_a = microexponent_element(a, step_exp, largest, bad, out)
        out[2 * i + 1], lost_b = microexponent_element(b, step_exp, largest, bad, out)
        lost |= lost_a | lost_b
    return lost


@inline
def rounded_on_step(v, c, limit, bad, out):
    """(v in out's dtype, exact) for finite float32 v rounded to nearest even
    on the grid of the step 2**s, given c = 2**(s + 23) (|v| < c, so |v| + c
    rounds |v| on that grid and subtracting c is exact) and limit, the
    largest magnitude (2**man - 1) * 2**s; NaN for a NaN block."""
    bits = np.float32(v).view(np.int32)
    magnitude = min((np.int32(bits & MAGNITUDE32).view(np.float32) + c) - c, limit)
    value = np.int32(np.float32(magnitude).view(np.int32) | np.int32(bits & SIGN32)).view(np.float32)
    return to_output(np.float32(np.nan) if bad else value, out)


@inline
def pair_shift(e_max, pair_top, most_shift):
    """A pair's shift below its block's exponent e_max: e_max less the
    exponent field of the pair's largest magnitude bits, clamped to
    0..most_shift. Every operation is narrowed to int32: numba computes
    int32 operations in int64 (half as many lanes) unless told otherwise."""
    pair_exponent = np.int32(np.int32(pair_top >> np.int32(23)) - np.int32(127))
    return np.int32(min(np.int32(max(np.int32(e_max - pair_exponent), np.int32(0))), most_shift))


@inline
def microexponent_pairs32(x, out, pair_tops, shared, mp):
    """microexponent_pairs64 in float32 lanes, for tasks whose every block
    has steps 2**s with -126 <= s and s + 23 <= 127 (its results are then
    float32 numbers), given each pair's largest magnitude bits."""
    man, micro = mp[MICRO_MAN], mp[MICRO_MICRO_BITS]
    limit_offset = np.int32(((man - 1) << 23) + (1 << 23) - (1 << (24 - man)))  # (2**man - 1) * 2**s, less 2**s
    most_shift, step_offset, c_offset = np.int32((1 << micro) - 1), np.int32(128 - man), np.int32(23 << 23)
    lost = False
    for i in range(x.size // 2):
        e_max = shared[i]
        bad = e_max == NO_EXPONENT
        # every block exponent is >= -126 + the largest shift, so a pair below 2**-126
        # (whose exponent field reads -127) takes the largest shift either way
        shift = pair_shift(e_max, pair_tops[i], most_shift)
        step_bits = np.int32(np.int32(np.int32(0) if bad else np.int32(np.int32(e_max - shift) + step_offset)) << np.int32(23))
        c, limit = np.int32(step_bits + c_offset).view(np.float32), np.int32(step_bits + limit_offset).view(np.float32)
        out[2 * i], exact_a = rounded_on_step(as_float32(x[2 * i]), c, limit, bad, out)
        out[2 * i + 1], exact_b = rounded_on_step(as_float32(x[2 * i + 1]), c, limit, bad, out)
        lost |= not (exact_a & exact_b)
    return lost


@inline
def largest_of_pairs(pair_tops, k, pairs):
    """The largest of row k's ``pairs`` pair maxima: for 8 (blocks of 16)
    written out as a tree, which the loop over rows vectorizes across rows
    (3x faster than a reduction per row)."""
    if pairs == 8:
        p, i = pair_tops, 8 * k
        return max(max(max(p[i], p[i + 1]), max(p[i + 2], p[i + 3])), max(max(p[i + 4], p[i + 5]), max(p[i + 6], p[i + 7])))
    top = np.int32(0)
    for j in range(pairs):
        top = max(top, pair_tops[k * pairs + j])
    return top


@inline
def microexponent_task(x, out, g, mp, pairs):
    """Quantize task g's blocks (of 2 * pairs elements); whether any result
    was inexact. Each pair's largest magnitude, then each block's shared
    exponent from its pairs', spread over its pairs, then one loop over the
    pairs: loops over a whole task, each of which vectorizes."""
    man, micro, emin, emax = mp[MICRO_MAN], mp[MICRO_MICRO_BITS], mp[MICRO_EMIN], mp[MICRO_EMAX]
    block = 2 * pairs
    first_row, end_row = g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.size // block)
    xs, outs = x[first_row * block:end_row * block], out[first_row * block:end_row * block]
    pair_tops, shared = np.empty(ROWS_PER_TASK * pairs, np.int32), np.empty(ROWS_PER_TASK * pairs, np.int32)
    shared_exponents = np.empty(ROWS_PER_TASK, np.int32)
    for i in range(xs.size // 2):
        pair_tops[i] = max(np.int32(np.float32(as_float32(xs[2 * i])).view(np.int32) & MAGNITUDE32),
                           np.int32(np.float32(as_float32(xs[2 * i + 1])).view(np.int32) & MAGNITUDE32))
    for k in range(end_row - first_row):
        top = largest_of_pairs(pair_tops, k, pairs)
        e_max = np.int32(min(max(exponent_of_bits(top), emin), emax))
        shared_exponents[k] = e_max if top < EXPONENT32 else np.int32(NO_EXPONENT)
    in_float32 = True
    for k in range(end_row - first_row):
        e_max = shared_exponents[k]
        in_float32 &= (e_max == NO_EXPONENT) | ((e_max - ((1 << micro) - 1) - man + 1 >= -126) & (e_max + 24 - man <= 127))
        for j in range(pairs):
            shared[k * pairs + j] = e_max
    if in_float32:
        return microexponent_pairs32(xs, outs, pair_tops, shared, mp)
    return microexponent_pairs64(xs, outs, shared, mp)


@jit(parallel=True)
def quantize_microexponent(x, out, mp, inexact):
    """Microexponent quantize (nearest even) of float32 blocks of mp[MICRO_BLOCK]
    elements in sub-blocks of two (x and out flat), a task of blocks at a
    time (microexponent_task): in float32 lanes when every block's steps
    lie in 2**-126..2**104 (its results are then float32 numbers), else in
    float64 with an exactness check."""
    for g in prange(inexact.size):
        if mp[MICRO_BLOCK] == 16:
            inexact[g] = microexponent_task(x, out, g, mp, 8)
        else:
            inexact[g] = microexponent_task(x, out, g, mp, mp[MICRO_BLOCK] // 2)


@inline
def finite_magnitude_bits(bits):
    """Magnitude bits, 0 for NaN and Inf (a NaN block's exponents come from
    its finite elements, as the reference computes them)."""
    return bits if bits < EXPONENT32 else np.int32(0)


@inline
def microexponent_code(v, step_exp, largest, man):
    """The code (sign bit above ``man`` magnitude bits) of finite v on the
    grid 2**step_exp: |v| / step rounded to nearest even, saturated."""
    t = np.float32(abs(np.float64(v)) * pow2(-step_exp))  # exact, or far below 1/2
    magnitude = np.int32(min((t + np.float32(1 << 23)) - np.float32(1 << 23), largest))
    return magnitude | (np.int32(1 << man) if np.float32(v).view(np.int32) < 0 else np.int32(0))


@inline
def encode_rows(x, elements, scales, subscales, mp, first_row, end_row):
    """Encode rows first_row..end_row-1 one at a time, per element in
    float64: for the tasks encode_task16 does not serve."""
    man, block, exp_bits, micro = mp[MICRO_MAN], mp[MICRO_BLOCK], mp[MICRO_EXP_BITS], mp[MICRO_MICRO_BITS]
    emin, emax, bias = mp[MICRO_EMIN], mp[MICRO_EMAX], mp[MICRO_EXP_BIAS]
    largest = np.float32((1 << man) - 1)
    codes, shifts = np.empty(block, np.int32), np.empty(block // 2, np.int32)
    for r in range(first_row, end_row):
        row = x[r * block:(r + 1) * block]
        top = largest_magnitude_bits(row, block)
        bad = top >= EXPONENT32
        if bad:
            top = np.int32(0)
            for j in range(block):
                top = max(top, finite_magnitude_bits(np.int32(np.float32(as_float32(row[j])).view(np.int32) & MAGNITUDE32)))
        e_max = min(max(exponent_of_bits(top), emin), emax)
        scales[r] = (1 << exp_bits) - 1 if bad else e_max + bias
        for i in range(block // 2):
            a, b = as_float32(row[2 * i]), as_float32(row[2 * i + 1])
            pair_top = max(finite_magnitude_bits(np.int32(np.float32(a).view(np.int32) & MAGNITUDE32)),
                           finite_magnitude_bits(np.int32(np.float32(b).view(np.int32) & MAGNITUDE32)))
            shifts[i] = min(max(e_max - exponent_of_bits(pair_top), 0), (1 << micro) - 1)
            step_exp = e_max - shifts[i] - man + 1
            codes[2 * i] = 0 if bad else microexponent_code(a, step_exp, largest, man)
            codes[2 * i + 1] = 0 if bad else microexponent_code(b, step_exp, largest, man)
        pack_row(elements, r, codes, block, man + 1)
        if micro:
            pack_row(subscales, r, shifts, block // 2, micro)


@inline
def pack_task(codes, packed, groups, bits):
    """pack_groups with ``bits`` a constant for the widths of the catalogue's
    formats (the loops over a group's codes and bytes then unroll: 4x faster)."""
    if bits == 3:
        pack_groups(codes, packed, groups, 3)
    elif bits == 5:
        pack_groups(codes, packed, groups, 5)
    elif bits == 1:
        pack_groups(codes, packed, groups, 1)
    else:
        pack_groups(codes, packed, groups, bits)


@inline
def unpack_task(packed, codes, groups, bits):
    """unpack_groups with ``bits`` a constant for the catalogue's widths."""
    if bits == 3:
        unpack_groups(packed, codes, groups, 3)
    elif bits == 5:
        unpack_groups(packed, codes, groups, 5)
    elif bits == 1:
        unpack_groups(packed, codes, groups, 1)
    else:
        unpack_groups(packed, codes, groups, bits)


@inline
def pack_groups(codes, packed, groups, bits):
    """Pack ``groups`` groups of 8 codes (int32, below 2**bits, bits <= 8)
    into ``bits`` bytes each, in packing's layout (packed: the task's bytes)."""
    if bits == 8:
        for i in range(8 * groups):
            packed[i] = codes[i]
    elif bits == 4:
        for i in range(4 * groups):
            packed[i] = codes[2 * i] | (codes[2 * i + 1] << 4)
    elif bits == 1:  # written out: the loop below runs 10x slower for 1-bit codes in parallel kernels
        for q in range(groups):
            c = codes[8 * q:8 * q + 8]
            packed[q] = np.uint8(c[0] | (c[1] << 1) | (c[2] << 2) | (c[3] << 3) | (c[4] << 4) | (c[5] << 5)
                                 | (c[6] << 6) | (c[7] << 7))
    else:
        for q in range(groups):
            word = np.int64(0)
            for j in range(8):
                word |= np.int64(codes[8 * q + j]) << (bits * j)
            for k in range(bits):
                packed[q * bits + k] = (word >> (8 * k)) & 0xFF


@inline
def unpack_groups(packed, codes, groups, bits):
    """The inverse of pack_groups: ``groups`` groups of 8 codes from ``bits`` bytes each."""
    if bits == 8:
        for i in range(8 * groups):
            codes[i] = packed[i]
    elif bits == 4:
        for i in range(4 * groups):
            codes[2 * i], codes[2 * i + 1] = packed[i] & 0xF, packed[i] >> 4
    else:
        mask = np.int64((1 << bits) - 1)
        for q in range(groups):
            word = np.int64(0)
            for k in range(bits):
                word |= np.int64(packed[q * bits + k]) << (8 * k)
            for j in range(8):
                codes[8 * q + j] = np.int32((word >> (bits * j)) & mask)


@inline
def element_code(v, c_bits, largest, sign_code):
    """The code of finite float32 v on the step whose 2**(step + 23) has the
    bits c_bits: |v| + 2**(step + 23) rounds |v| to nearest even on the step,
    and its bits less c_bits count the steps (saturated at ``largest``)."""
    v_bits = np.int32(np.float32(v).view(np.int32))
    c = np.int32(c_bits).view(np.float32)
    total = np.int32(np.float32(np.int32(v_bits & MAGNITUDE32).view(np.float32) + c).view(np.int32))
    magnitude = np.int32(min(np.int32(total - c_bits), largest))
    return np.int32(magnitude | (sign_code if v_bits < 0 else np.int32(0)))


@inline
def encode_task16(x, elements, scales, subscales, g, mp):
    """Encode task g's blocks of 16 (sub-blocks of two, element codes of at
    most 8 bits) in loops over the whole task, each in 32-bit lanes: pair
    maxima, block exponents, each pair's shift and step, each element's
    code read off |v| + 2**(step + 23) (whose float32 step is the element's,
    so the addition rounds |v| to nearest even: the code is the sum's bits
    less those of 2**(step + 23)), then packing. False, having written
    nothing but scale codes, for a task holding a NaN/Inf block or a step
    outside 2**-149..2**104 (encode_rows then encodes it)."""
    man, micro = mp[MICRO_MAN], mp[MICRO_MICRO_BITS]
    emin, emax, bias = mp[MICRO_EMIN], mp[MICRO_EMAX], mp[MICRO_EXP_BIAS]
    bits, most_shift = man + 1, np.int32((1 << micro) - 1)
    first_row, end_row = g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.size // 16)
    nrows = end_row - first_row
    xs = x[first_row * 16:end_row * 16]
    pair_tops, shared = np.empty(ROWS_PER_TASK * 8, np.int32), np.empty(ROWS_PER_TASK * 8, np.int32)
    codes, block_exponents = np.empty(ROWS_PER_TASK * 16, np.int32), np.empty(ROWS_PER_TASK, np.int32)
    for i in range(xs.size // 2):
        pair_tops[i] = max(np.int32(np.float32(as_float32(xs[2 * i])).view(np.int32) & MAGNITUDE32),
                           np.int32(np.float32(as_float32(xs[2 * i + 1])).view(np.int32) & MAGNITUDE32))
    served = True
    emin32, emax32, infinite = np.int32(emin), np.int32(emax), np.int32(EXPONENT32)
    # every pair below 2**-126 (whose exponent field reads -127) takes the largest shift when
    # e_max - most_shift >= -126; steps then lie above 2**-149, and 2**(step + 23) is finite below 2**104
    lowest, highest = np.int32(-126 + most_shift), np.int32(104 + man - 1)
    for k in range(nrows):
        top = largest_of_pairs(pair_tops, k, 8)
        e_max = np.int32(min(np.int32(max(exponent_of_bits(top), emin32)), emax32))
        block_exponents[k] = e_max
        served &= (top < infinite) & (e_max >= lowest) & (e_max <= highest)
    if not served:
        return False
    for k in range(nrows):
        scales[first_row + k] = block_exponents[k] + bias
        for j in range(8):
            shared[8 * k + j] = block_exponents[k]
    sign_code, largest, step_offset = np.int32(1 << man), np.int32((1 << man) - 1), np.int32(151 - man)
    for i in range(nrows * 8):
        e_max = shared[i]
        shift = pair_shift(e_max, pair_tops[i], most_shift)
        shared[i] = shift
        c_bits = np.int32(np.int32(np.int32(e_max - shift) + step_offset) << np.int32(23))  # 2**(step + 23)
        codes[2 * i] = element_code(as_float32(xs[2 * i]), c_bits, largest, sign_code)
        codes[2 * i + 1] = element_code(as_float32(xs[2 * i + 1]), c_bits, largest, sign_code)
    pack_task(codes, elements[first_row * 2 * bits:end_row * 2 * bits], 2 * nrows, bits)
    if micro:
        pack_task(shared, subscales[first_row * micro:end_row * micro], nrows, micro)
    return True


@jit(parallel=True)
def encode_microexponent(x, elements, scales, subscales, mp):
    """Packed element codes, shared-exponent codes and packed sub-block
    shifts of float32 blocks of mp[MICRO_BLOCK] elements in sub-blocks of two (x flat;
    ``elements`` and ``subscales`` zeroed unless their rows fill whole bytes):
    a task of blocks at a time, by encode_task16 for blocks of 16 with
    element codes of at most 8 bits, else (and for the tasks it leaves) row by row."""
    block = mp[MICRO_BLOCK]
    vector = (block == 16) & (mp[MICRO_MAN] + 1 <= 8)
    for g in prange((x.size // block + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        if not (vector and encode_task16(x, elements, scales, subscales, g, mp)):
            encode_rows(x, elements, scales, subscales, mp, g * ROWS_PER_TASK,
                        min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.size // block))


@inline
def decode_rows(packed, scale_codes, packed_shifts, out, mp, first_row, end_row):
    """Decode rows first_row..end_row-1 one at a time, in float64: for the
    tasks decode_task16 does not serve."""
    man, exp_bits, micro, bias = mp[MICRO_MAN], mp[MICRO_EXP_BITS], mp[MICRO_MICRO_BITS], mp[MICRO_EXP_BIAS]
    block = out.shape[1]
    codes, shifts = np.empty(block, np.int32), np.zeros(block // 2, np.int32)
    for r in range(first_row, end_row):
        e_max = np.int64(scale_codes[r]) - bias
        bad = np.int64(scale_codes[r]) == (1 << exp_bits) - 1
        unpack_row(packed, r, codes, block, man + 1)
        if micro:
            unpack_row(packed_shifts, r, shifts, block // 2, micro)
        for j in range(block):
            magnitude = np.float64(codes[j] & ((1 << man) - 1)) * pow2(e_max - shifts[j // 2] - man + 1)
            out[r, j] = np.nan if bad else (-magnitude if codes[j] >> man else magnitude)


@inline
def decode_task16(packed, scale_codes, packed_shifts, out, g, mp):
    """Decode task g's blocks of 16 (element codes of at most 8 bits) in
    loops over the whole task: unpacking, then each element as its
    magnitude times 2**step, one exact float32 product (steps of at least
    2**-126), signed. False, having written nothing, for a task holding a
    block whose steps could fall below 2**-126 (decode_rows then decodes it)."""
    man, exp_bits, micro, bias = mp[MICRO_MAN], mp[MICRO_EXP_BITS], mp[MICRO_MICRO_BITS], mp[MICRO_EXP_BIAS]
    bits, most_shift = man + 1, (1 << micro) - 1
    nan_code = (1 << exp_bits) - 1
    first_row, end_row = g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, out.shape[0])
    nrows = end_row - first_row
    served = True
    for k in range(nrows):
        code = np.int32(scale_codes[first_row + k])
        served &= (code == nan_code) | (code - bias - most_shift - man + 1 >= -126)
    if not served:
        return False
    codes, shifts = np.empty(ROWS_PER_TASK * 16, np.int32), np.zeros(ROWS_PER_TASK * 8, np.int32)
    scale_bits = np.empty(ROWS_PER_TASK * 8, np.int32)
    unpack_task(packed[first_row * 2 * bits:end_row * 2 * bits], codes, 2 * nrows, bits)
    if micro:
        unpack_task(packed_shifts[first_row * micro:end_row * micro], shifts, nrows, micro)
    for k in range(nrows):
        code = np.int32(scale_codes[first_row + k])
        for j in range(8):  # 2**(e_max - man + 1) as float32 bits, or a NaN's
            scale_bits[8 * k + j] = np.int32(np.int32(code - bias - man + 1 + 127) << 23) if code != nan_code else np.int32(-1)
    magnitude_mask, values = np.int32((1 << man) - 1), out.reshape(-1)[first_row * 16:end_row * 16]
    for i in range(nrows * 8):
        bits_ = scale_bits[i]
        scale = np.int32(bits_ - np.int32(shifts[i] << 23)).view(np.float32)
        values[2 * i] = element_value(codes[2 * i], scale, bits_ == -1, magnitude_mask, man)
        values[2 * i + 1] = element_value(codes[2 * i + 1], scale, bits_ == -1, magnitude_mask, man)
    return True


@inline
def element_value(code, scale, bad, magnitude_mask, man):
    """The value of an element code under the step ``scale`` (float32), NaN for a NaN block."""
    magnitude = np.float32(np.int32(code & magnitude_mask)) * scale
    value = np.int32(np.float32(magnitude).view(np.int32) | np.int32(np.int32(code >> man) << 31)).view(np.float32)
    return np.float32(np.nan) if bad else value


@jit(parallel=True)
def decode_microexponent(packed, scale_codes, packed_shifts, out, mp):
    """out (blocks as rows; float32 or float64) = the values of microexponent
    codes in sub-blocks of two whose element codes and shifts fill whole
    bytes per block: magnitude * 2**(e_max - shift - man + 1), signed; NaN
    for a block whose shared-exponent code is the NaN one. A task of blocks
    at a time: by decode_task16 for blocks of 16 with element codes of at
    most 8 bits, else (and for the tasks it leaves) row by row."""
    vector = (out.shape[1] == 16) & (mp[MICRO_MAN] + 1 <= 8)
    for g in prange((out.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        if not (vector and decode_task16(packed, scale_codes, packed_shifts, out, g, mp)):
            decode_rows(packed, scale_codes, packed_shifts, out, mp, g * ROWS_PER_TASK,
                        min(g * ROWS_PER_TASK + ROWS_PER_TASK, out.shape[0]))
