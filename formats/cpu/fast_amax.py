"""Float32 fast path of BlockFormats whose scale has a mantissa: NVFP4's
E4M3 scale = amax / 6, and float32 scales (``fp8_e4m3_rowwise``,
``fp8_e4m3_b128x128``), whose products round to float32. The block scale is
amax / max_elem in float64 as the reference forms it; x times the scale's
float32 inverse is rounded as MX elements round
(:func:`.fast_mx.mx_float_element`), and the elements whose quotient lies
near a rounding midpoint are redone in float64 as the reference divides.
Agrees with the reference bit for bit (tests/test_backends.py checks inputs
next to every midpoint).

The kernels read the blocks in place from the 4-d view of
:func:`.views.block_view`: rows of whole blocks, or tiles.

Searched scales (``4over6``, ``mse``) are chosen by a pass of their own,
:func:`search_scales`: each candidate's squared error estimated per block
in float32 lanes, with a rigorous bound on its distance from the
reference's float64 sum; blocks whose least estimate is not apart from
the others by their bounds are summed again as the reference sums them,
in index order in float64. The kernels then round each block under the
scale it chose, as for one candidate.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange

from ..abi import (
    BLOCK_DIVISOR, BLOCK_ELEMENT_BITS, BLOCK_HAS_TENSOR_SCALE, BLOCK_SCALE_NAN, block_params,
)
from ..block_format import MSE_RATIOS
from ..float_format import FloatFormat
from .bits import pack_row
from .compiling import jit, task
from .fast_mx import (
    FLOOR_BITS, SHIFT_BITS, float_element_fields, magnitude_element, mx_float_code, mx_float_element,
)
from .fast32 import (
    EXPONENT32, LARGEST, MAGIC, MAN, ROWS_PER_TASK, SMALLEST_NORMAL, as_float32, finite_code, float_params, to_output,
)
from .reductions import largest_magnitude_bits
from .views import block_at

inline = jit(inline="always")


# Fields of scaled_block_params' tuple: float_params of the element and of
# the scale (of the element for float32 scales, whose codes are their bits:
# SCALE_BITS), nearest64_params of both, the block parameters, the element
# tuple of fast_mx (the element rounded in float32 lanes)
ELEMENT32, SCALE32, ELEMENT64, SCALE64, BLOCK, MX_ELEMENT, SCALE_BITS = range(7)


def nearest64_params(fmt) -> tuple:
    """float_params' rounding constants (its first four fields) for rounding float64 values."""
    return (fmt.man_bits, 2.0 ** fmt.emin, 2.0 ** (fmt.emin - fmt.man_bits + 52), float(fmt.max))


@functools.lru_cache(maxsize=256)
def scaled_block_params(fmt, rule: str, tensor_scale: float | None, block: int) -> tuple | None:
    """Parameters of the fast path for a BlockFormat whose scale has a
    mantissa, under scale rule ``amax``, ``4over6`` or ``mse``, in blocks of
    ``block`` elements: a float element that
    :func:`float_element_fields` and float_params serve, a scale that
    float_params serves or float32 itself, and products (element times
    scale) that are float32 numbers or that the format rounds to float32
    (a float32 multiplication rounds them as the reference does); no zero
    point or second level; else None."""
    element, scale = fmt.element, fmt.scale
    if (not isinstance(scale, FloatFormat) or scale.man_bits == 0 or not scale.signed or fmt.zero_point
            or fmt.double_quant is not None or rule not in ("amax", "4over6", "mse")):
        return None
    float32_scale = scale.is_float32
    element_fp, ep = float_params(element, "saturate", False), float_element_fields(element)
    scale_fp = element_fp if float32_scale else float_params(scale, "saturate", False)
    if element_fp is None or scale_fp is None or ep is None:
        return None
    exact_products = (element.man_bits + scale.man_bits + 2 <= 24
                      and element.max * scale.max <= float(np.finfo(np.float32).max)
                      and element.min_subnormal * scale.min_subnormal >= float(np.finfo(np.float32).tiny))
    if not (exact_products or fmt.rounds_to_float32):
        return None
    return (element_fp, scale_fp, nearest64_params(fmt.element), nearest64_params(fmt.scale),
            block_params(fmt, rule, tensor_scale, block), ep, float32_scale)


@inline
def nearest64(a, p):
    """Non-negative finite float64 a rounded to nearest even in the float
    format of p (nearest64_params), saturating at its largest value: the
    float_nearest method on float64 bits."""
    m, smallest_normal, magic, largest = p[MAN], p[SMALLEST_NORMAL], p[MAGIC], p[LARGEST]
    bits = np.int64(np.float64(a).view(np.int64))
    s = 52 - m
    normal = (bits + ((1 << (s - 1)) - 1) + ((bits >> s) & 1)) & ~((1 << s) - 1)
    r = (a + magic) - magic if a < smallest_normal else np.int64(normal).view(np.float64)
    return min(r, largest)


@inline
def block_top(x, n, rows, cols):
    """The largest magnitude bits of block n of the 4-d view x."""
    a, b = block_at(x, n)
    top = largest_magnitude_bits(x[a, 0, b], cols)
    for i in range(1, rows):
        top = max(top, largest_magnitude_bits(x[a, i, b], cols))
    return top


@inline
def amax_scales(x, first, end, q, tops, values, inverses, rows, cols, chosen):
    """For blocks first..end - 1: tops[k], the largest magnitude bits of
    block first + k, and its block scale and float32 inverse: amax /
    max_elem (:func:`candidate_scales`), or those a search chose
    (``chosen``: :func:`searched_scales`, empty for none)."""
    for n in range(first, end):
        tops[n - first] = block_top(x, n, rows, cols)
    chosen_values, chosen_inverses = chosen
    if chosen_values.size:
        for k in range(end - first):
            values[k], inverses[k] = chosen_values[first + k], chosen_inverses[first + k]
    else:
        candidate_scales(end - first, q, tops, 1.0, q[ELEMENT64][LARGEST], values, inverses)


def search_candidates(fmt, rule: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(ratios, targets) of the candidates a searched scale rule tries, in
    its order, as BlockFormat._candidates forms them: candidate c's block
    scale is amax * ratios[c] / (tensor scale * targets[c]) rounded in the
    scale format (``mse``: each of MSE_RATIOS over max_elem; ``4over6``:
    amax to 6, then to 4); None for ``amax``."""
    if rule == "4over6":
        return np.ones(2), np.array([6.0, 4.0])
    if rule == "mse":
        return np.array(MSE_RATIOS), np.full(len(MSE_RATIOS), float(fmt.element.max))
    return None


def searched_scales(x, q: tuple, fmt, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' ``chosen`` for the blocks of the 4-d view x of a format
    under scale rule ``rule``: each block's scale and float32 inverse (as
    :func:`candidate_scales` gives them) from :func:`search_scales` over the
    rule's candidates (:func:`search_candidates`), or two empty arrays for
    ``amax`` (each block maps amax to max_elem)."""
    candidates = search_candidates(fmt, rule)
    if candidates is None:
        return np.empty(0), np.empty(0, np.float32)
    count = x.shape[0] * x.shape[2]
    values, inverses = np.empty(count), np.empty(count, np.float32)
    search_scales(x, q, *candidates, values, inverses)
    return values, inverses


@jit(parallel=True)
def search_scales(x, q, ratios, targets, values, inverses):
    """values[n], inverses[n]: the scale and float32 inverse (as
    :func:`candidate_scales` gives them) of the first candidate
    (:func:`search_candidates`) with the strictly least squared error over
    block n of the 4-d view x, as the reference chooses. A pass of its own,
    so that the kernels that round the blocks stay as lean as for one
    candidate."""
    element_fp, scale_fp, element64, scale64, bp, ep, scale_bits = q  # a parallel loop takes flat tuples only
    rows, cols = x.shape[1], x.shape[3]
    for g in prange((x.shape[0] * x.shape[2] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        q = (element_fp, scale_fp, element64, scale64, bp, ep, scale_bits)
        if (rows == 1) & (cols == 16):  # NVFP4's blocks
            search_task(x, np.int64(g), q, ratios, targets, values, inverses, 1, 16)
        else:
            search_task(x, np.int64(g), q, ratios, targets, values, inverses, rows, cols)


@task
def search_task(x, g, q, ratios, targets, chosen_values, chosen_inverses, rows, cols):
    """search_scales for task g's blocks, a batch at a time (as in
    :func:`task_batches`, but at least SEARCH_LANES blocks, so that long
    blocks too are summed side by side): the batch copied to ``columns``
    with element e of its block k at [e, k], so that each candidate's error
    is estimated for every block of the batch at once
    (:func:`batch_errors`). The candidate of least estimate is kept when
    its interval (estimate plus or minus bound) lies wholly below that of
    every candidate with another scale (candidates whose scales round alike
    err alike, and any of them gives the reference's choice). Other blocks
    (near-equal errors, NaN, a candidate without lanes) have every
    candidate's error summed again as the reference sums it
    (:func:`least_error`). Every other loop runs over the blocks, so it
    vectorizes."""
    task_first, task_end = g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0] * x.shape[2])
    step = min(ROWS_PER_TASK, max(SEARCH_LANES, BATCH_ELEMENTS // (rows * cols)))
    count = (task_end - task_first + step - 1) // step
    size = ratios.size
    tops, columns = np.empty(step, np.int32), np.empty((rows * cols, step), np.float32)
    values, inverses = np.empty((size, step)), np.empty((size, step), np.float32)
    errors, bounds, sums = np.empty((size, step)), np.empty((size, step)), np.empty(step, np.float32)
    # ceiling: the least estimate, then plus its bound; margin: that bound, then 1.0 where the block is undecided
    ceiling, margin, squares = np.empty(step), np.empty(step), np.empty(rows * cols, np.float64)
    for batch in range(count):
        first = task_first + batch * step
        end = min(first + step, task_end)
        m = end - first
        for k in range(m):
            a, b = block_at(x, first + k)
            tops[k] = block_top(x, first + k, rows, cols)
            for i in range(rows):
                for j in range(cols):
                    columns[i * cols + j, k] = as_float32(x[a, i, b, j])
        for c in range(size):
            candidate_scales(m, q, tops, ratios[c], targets[c], values[c], inverses[c])
            batch_errors(columns, m, tops, values[c], inverses[c], q, sums, errors[c], bounds[c])
        for k in range(m):
            ceiling[k], margin[k] = errors[0, k], bounds[0, k]
            chosen_values[first + k], chosen_inverses[first + k] = values[0, k], inverses[0, k]
        for c in range(1, size):
            for k in range(m):
                better = errors[c, k] < ceiling[k]
                ceiling[k] = errors[c, k] if better else ceiling[k]
                margin[k] = bounds[c, k] if better else margin[k]
                chosen_values[first + k] = values[c, k] if better else chosen_values[first + k]
                chosen_inverses[first + k] = inverses[c, k] if better else chosen_inverses[first + k]
        for k in range(m):
            ceiling[k] += margin[k]
            margin[k] = 0.0
        for c in range(size):
            for k in range(m):
                apart = (values[c, k] == chosen_values[first + k]) | (ceiling[k] < errors[c, k] - bounds[c, k])
                margin[k] = margin[k] if apart else 1.0
        undecided = False
        for k in range(m):
            undecided |= margin[k] > 0.0
        if undecided:  # a loop of its own: the ones above stay lean
            for k in range(m):
                if margin[k] > 0.0:
                    best = least_error(x, first + k, tops[k], values[:, k], q, rows, cols, squares)
                    chosen_values[first + k], chosen_inverses[first + k] = values[best, k], inverses[best, k]


@inline
def least_error(x, n, top, candidates, q, rows, cols, squares):
    """The first of the candidate scales with the strictly least squared
    error over block n as the reference sums it (:func:`squared_error`); 0
    for a block of zeros (every candidate's error is 0) and for one with NaN
    or Inf (its scale is not used)."""
    best, least = 0, 0.0
    if (top > 0) & (top < EXPONENT32):
        for c in range(candidates.size):
            error = squared_error(x, n, candidates[c], q, rows, cols, squares)
            if (c == 0) or (error < least):
                best, least = c, error
    return best


@inline
def batch_errors(columns, m, tops, values, inverses, q, sums, errors, bounds):
    """For blocks k < m of a batch (element e of block k at columns[e, k])
    under candidate scales values[k]: errors[k], the block's squared error
    estimated in float32 lanes, and bounds[k], a bound on its distance
    from the reference's float64 sum (inf for a block without lanes:
    inverses[k] is 0). The inner loop runs over the blocks, so it
    vectorizes.

    The estimate is F**2 * S, with F the full scale and S the float32 sum
    of the n squares (r - t)**2, t = |v| * inverses[k] and r = t rounded as
    MX elements round. With u = 2**-24 and t = (|v| / F)(1 + h), |h| <=
    2.0001u: r - t is exact (Sterbenz: r lies within a factor 2 of t, or is
    0). Against the reference's element r' (the exact quotient's nearest,
    or its neighbour when that quotient lies within 2**-53 of a midpoint)
    and d = r' - |v| / F, ||r - t| - |d|| <= 3 |h| t per element, so
    (Minkowski) the norms of the two error vectors differ by at most
    3 |h| T, T**2 = sum t**2 <= n (amax * inverses[k])**2 (1 + 2.1u), and
    their squares by 3 |h| T (2 D + 3 |h| T), D**2 = sum (r - t)**2 <=
    (S + n 2**-149) / (1 - g). The float32 roundings of a square and the
    sums add at most g = (n + 1)u / (1 - (n + 1)u) of D**2, and n 2**-150
    for squares that underflow. The reference's own float64 sum lies
    within (n + 3) 2**-53 of its exact value. The bound doubles each of
    these."""
    ep, divisor = q[MX_ELEMENT], q[BLOCK][BLOCK_DIVISOR]
    n = columns.shape[0]
    for k in range(m):
        sums[k] = np.float32(0.0)
    for e in range(n):
        for k in range(m):
            t = abs(columns[e, k]) * inverses[k]
            d = magnitude_element(t, ep) - t
            sums[k] += d * d
    g = (n + 1) * 2.0 ** -24 / (1.0 - (n + 1) * 2.0 ** -24)
    for k in range(m):
        full, total = values[k] * divisor, np.float64(sums[k])
        t_max = np.float64(np.int32(tops[k]).view(np.float32)) * np.float64(inverses[k])
        spread = 3.0 * 2.0001 * 2.0 ** -24 * np.sqrt(np.float64(n)) * t_max * (1.0 + 2.0 ** -20)
        d2 = (total + n * 2.0 ** -149) / (1.0 - g)
        estimate = total * full * full
        off = 2.0 * full * full * (spread * (2.0 * np.sqrt(d2) + spread) + g * d2 + n * 2.0 ** -149)
        errors[k] = estimate
        bounds[k] = off + 2.0 * (n + 8) * 2.0 ** -53 * (estimate + off) if inverses[k] > 0 else np.inf


@inline
def candidate_scales(count, q, tops, ratio, target, values, inverses):
    """For blocks k < count of largest magnitude bits tops[k]: values[k],
    the block scale amax * ratio / (tensor scale * target) rounded to
    nearest even in the scale format, saturating (amax / max_elem for the
    ``amax`` rule); and inverses[k], 1 / (scale * tensor scale) as a float32
    when the block can take the float32 lanes of :func:`amax_fast_block` (a
    full scale in 2**-100..2**100 and every scaled value below twice the
    largest element, where mx_float_element still rounds), else 0. A loop of
    its own, so that the scales' float64 divisions and roundings run as a
    batch instead of one dependent chain per block (40% faster)."""
    for k in range(count):
        values[k], inverses[k] = candidate_scale(tops[k], ratio, target, q)


@inline
def candidate_scale(top, ratio, target, q):
    """(block scale, float32 inverse or 0) of candidate_scales for one block
    of largest magnitude bits ``top``."""
    element64, scale64, bp = q[ELEMENT64], q[SCALE64], q[BLOCK]
    amax = np.float64(np.int32(top).view(np.float32))
    value = nearest64(amax * ratio / (bp[BLOCK_DIVISOR] * target), scale64)  # amax * ratio: exact (ratio of 5 bits)
    full_scale = value * bp[BLOCK_DIVISOR]  # exact: at most 24 + 24 bits
    inverse = np.float32(1.0 / full_scale) if (full_scale >= 2.0 ** -100) & (full_scale <= 2.0 ** 100) else np.float32(0.0)
    in_lanes = np.float32(amax) * inverse < np.float32(2.0 * element64[LARGEST])
    return value, (inverse if in_lanes & (top < EXPONENT32) else np.float32(0.0))


@inline
def squared_error(x, n, scale, q, rows, cols, squares):
    """The squared error of finite block n under a candidate scale, as the
    reference sums it: (element * scale * tensor scale - x)**2 over the
    block in index order, in float64, with nearest-even elements computed
    in float64 as the reference divides (for the blocks the float32 lanes
    of :func:`batch_errors` cannot decide). The squares go through
    ``squares`` (rows * cols float64), so that the loop forming them
    vectorizes and only the sum runs in order."""
    divisor = q[BLOCK][BLOCK_DIVISOR]
    a, b = block_at(x, n)
    for i in range(rows):
        for j in range(cols):
            v = as_float32(x[a, i, b, j])
            magnitude, negative = amax_element(v, scale * divisor, q)
            d = (-magnitude if negative else magnitude) * scale * divisor - np.float64(v)
            squares[i * cols + j] = d * d
    error = 0.0
    for k in range(rows * cols):
        error = error + squares[k]
    return error


#: the elements of the blocks whose scales a task computes in one batch:
#: few enough that the blocks are still in cache when their elements are read again
BATCH_ELEMENTS = 8192
#: the fewest blocks whose errors :func:`search_task` sums side by side
SEARCH_LANES = 8


@inline
def task_batches(x, g, rows, cols):
    """(first block of task g, its end, blocks per batch, batches): one
    batch when the task's blocks hold at most BATCH_ELEMENTS elements
    (known when the kernel is compiled for the block shape, and then one
    loop less: NVFP4 quantize runs 6% faster), else batches of at most that
    many elements."""
    first, end = g * ROWS_PER_TASK, min(g * ROWS_PER_TASK + ROWS_PER_TASK, x.shape[0] * x.shape[2])
    if rows * cols * ROWS_PER_TASK <= BATCH_ELEMENTS:
        return first, end, ROWS_PER_TASK, 1
    step = max(1, BATCH_ELEMENTS // (rows * cols))
    return first, end, step, (end - first + step - 1) // step


@inline
def near_rounding_boundary(v, ep):
    """Whether finite float32 v lies within 2**-22 |v| of a boundary
    between two neighbours on the float element's grid (c as in
    mx_float_element: (|v| + c) - c is |v| rounded, and c * 2**-24 half
    the grid's step at v)."""
    a = abs(np.float32(v))
    exponent = np.int32(max(np.int32(np.float32(a).view(np.int32) & EXPONENT32), ep[FLOOR_BITS]))
    c = np.int32(exponent + ep[SHIFT_BITS]).view(np.float32)
    half_step = np.int32(exponent + ep[SHIFT_BITS] - (24 << 23)).view(np.float32)
    return half_step - abs(a - ((a + c) - c)) <= a * np.float32(2.0 ** -22)


@inline
def amax_element(v, full_scale, q):
    """(|element| rounded, negative) of one value of a block scaled by
    full_scale (the block scale times the tensor scale), in float64 as the
    reference computes it."""
    a = abs(np.float64(v)) / (full_scale if full_scale > 0.0 else 1.0)
    negative = (np.float32(v).view(np.int32) < 0) & (full_scale > 0.0)
    return (nearest64(a, q[ELEMENT64]) if full_scale > 0.0 else 0.0), negative


@inline
def amax_code(v, full_scale, q):
    """The element code of one value of a block scaled by full_scale."""
    magnitude, negative = amax_element(v, full_scale, q)
    return finite_code(np.float32(magnitude), negative, q[ELEMENT32])


@inline
def scale_code(scale, q):
    """The code of a block scale (a value of the scale format)."""
    if q[SCALE_BITS]:
        return np.int32(np.float32(scale).view(np.int32))
    return finite_code(np.float32(scale), False, q[SCALE32])


@inline
def amax_value(v, scale, q, out):
    """(value in out's dtype, exact) of element v of a block with the float64
    scale ``scale``: element * scale rounded to float32 (exact unless the
    format rounds its products), times the tensor scale in float32."""
    bp = q[BLOCK]
    magnitude, negative = amax_element(v, scale * bp[BLOCK_DIVISOR], q)
    value = np.float32((-magnitude if negative else magnitude) * scale)  # the float64 product is exact
    if bp[BLOCK_HAS_TENSOR_SCALE]:
        value = value * np.float32(bp[BLOCK_DIVISOR])
    return to_output(value, out)


@inline
def amax_fast_block(x, out, n, scale, inverse, q, rows, cols):
    """Block n quantized in float32 lanes: v * inverse (the float32 inverse
    of the full scale: within 2**-23 of the exact quotient) rounded as MX
    elements round, times the scale in float32 (one rounding of the exact
    product, as the reference rounds it); (whether out's dtype held every
    result of an element not near a rounding boundary, whether some
    quotient lay near one: that element must be redone exactly)."""
    bp, ep = q[BLOCK], q[MX_ELEMENT]
    a, b = block_at(x, n)
    scale32 = np.float32(scale)
    lost, near = False, False
    for i in range(rows):
        for j in range(cols):
            quotient = as_float32(x[a, i, b, j]) * inverse
            undecided = near_rounding_boundary(quotient, ep)
            value = mx_float_element(quotient, ep) * scale32
            if bp[BLOCK_HAS_TENSOR_SCALE]:
                value = value * np.float32(bp[BLOCK_DIVISOR])
            out[a, i, b, j], exact = to_output(value, out)
            near |= undecided
            lost |= (not exact) & (not undecided)
    return lost, near


@inline
def amax_redo_block(x, out, n, top, scale, inverse, q, rows, cols):
    """Block n's elements that the float32 lanes could not decide (all of
    them when ``inverse`` is 0; else those near a rounding boundary)
    recomputed in float64 as the reference computes them; NaN for a NaN
    block. Whether out's dtype held every recomputed result."""
    ep = q[MX_ELEMENT]
    a, b = block_at(x, n)
    lost = False
    for i in range(rows):
        for j in range(cols):
            v = as_float32(x[a, i, b, j])
            if top >= EXPONENT32:
                out[a, i, b, j] = to_output(np.float32(np.nan), out)[0]
            elif (inverse == 0) or near_rounding_boundary(v * inverse, ep):
                out[a, i, b, j], exact = amax_value(v, scale, q, out)
                lost |= not exact
    return lost


@inline
def amax_quantize_blocks(x, out, g, q, rows, cols, chosen):
    """Task g's blocks, a batch at a time (:func:`task_batches`): in float32
    lanes (amax_fast_block) where the block allows, then in a second loop
    (which keeps the first one lean) the other blocks and the elements near
    a rounding boundary in float64, as the reference computes them; NaN for
    NaN blocks."""
    tops, values = np.empty(ROWS_PER_TASK, np.int32), np.empty(ROWS_PER_TASK, np.float64)
    inverses, redo = np.empty(ROWS_PER_TASK, np.float32), np.empty(ROWS_PER_TASK, np.bool_)
    lost = False
    task_first, task_end, step, count = task_batches(x, g, rows, cols)
    for batch in range(count):
        first = task_first + batch * step
        end = min(first + step, task_end)
        amax_scales(x, first, end, q, tops, values, inverses, rows, cols, chosen)
        any_redo = False
        for k in range(end - first):
            block_lost, redo[k] = False, True
            if inverses[k] > 0:
                block_lost, redo[k] = amax_fast_block(x, out, first + k, values[k], inverses[k], q, rows, cols)
            lost |= block_lost
            any_redo |= redo[k]
        if any_redo:
            for k in range(end - first):
                if redo[k]:
                    lost |= amax_redo_block(x, out, first + k, tops[k], values[k], inverses[k], q, rows, cols)
    return lost


@jit(parallel=True)
def quantize_amax_blocks(x, out, q, chosen, inexact):
    """Quantize of float32 blocks of the 4-d view x (:func:`.views.block_view`)
    into out, a view of the same shape; inexact[task] says whether a
    result left out's dtype."""
    element_fp, scale_fp, element64, scale64, bp, ep, scale_bits = q  # a parallel loop takes flat tuples only
    rows, cols = x.shape[1], x.shape[3]
    for g in prange(inexact.size):
        q = (element_fp, scale_fp, element64, scale64, bp, ep, scale_bits)
        if (rows == 1) & (cols == 16):  # NVFP4's blocks
            inexact[g] = amax_quantize_blocks(x, out, g, q, 1, 16, chosen)
        elif cols == 16:  # NVFP4's 16 x 16 tiles
            inexact[g] = amax_quantize_blocks(x, out, g, q, rows, 16, chosen)
        elif cols == 128:  # DeepSeek-V3's 128 x 128 tiles
            inexact[g] = amax_quantize_blocks(x, out, g, q, rows, 128, chosen)
        else:
            inexact[g] = amax_quantize_blocks(x, out, g, q, rows, cols, chosen)


@task
def amax_encode_blocks(x, elements, scales, g, q, rows, cols, chosen):
    """Task g's blocks as amax_quantize_blocks computes them, as codes."""
    bp, ep = q[BLOCK], q[MX_ELEMENT]
    tops, values = np.empty(ROWS_PER_TASK, np.int32), np.empty(ROWS_PER_TASK, np.float64)
    inverses = np.empty(ROWS_PER_TASK, np.float32)
    codes = np.empty(rows * cols, np.int32)
    task_first, task_end, step, count = task_batches(x, g, rows, cols)
    for batch in range(count):
        first = task_first + batch * step
        end = min(first + step, task_end)
        amax_scales(x, first, end, q, tops, values, inverses, rows, cols, chosen)
        for n in range(first, end):
            a, b = block_at(x, n)
            scale, inverse, bad = values[n - first], inverses[n - first], tops[n - first] >= EXPONENT32
            scales[n] = bp[BLOCK_SCALE_NAN] if bad else scale_code(scale, q)
            near = True
            if inverse > 0:
                near = False
                for i in range(rows):  # (packing codes as they are computed, as mx_encode_rows does, is 4x slower)
                    for j in range(cols):
                        quotient = as_float32(x[a, i, b, j]) * inverse
                        near |= near_rounding_boundary(quotient, ep)
                        codes[i * cols + j] = mx_float_code(quotient, ep)
            if near:
                for i in range(rows):
                    for j in range(cols):
                        v = as_float32(x[a, i, b, j])
                        if bad:
                            codes[i * cols + j] = 0
                        elif (inverse == 0) or near_rounding_boundary(v * inverse, ep):
                            codes[i * cols + j] = amax_code(v, scale * bp[BLOCK_DIVISOR], q)
            pack_row(elements, n, codes, rows * cols, bp[BLOCK_ELEMENT_BITS])


@jit(parallel=True)
def encode_amax_blocks(x, elements, scales, q, chosen):
    """Packed element codes (``elements`` zeroed unless its blocks fill
    whole bytes) and scale codes of the float32 blocks of the 4-d view x."""
    element_fp, scale_fp, element64, scale64, bp, ep, scale_bits = q  # a parallel loop takes flat tuples only
    rows, cols = x.shape[1], x.shape[3]
    for g in prange((x.shape[0] * x.shape[2] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        q = (element_fp, scale_fp, element64, scale64, bp, ep, scale_bits)
        if (rows == 1) & (cols == 16):  # NVFP4's blocks
            amax_encode_blocks(x, elements, scales, np.int64(g), q, 1, 16, chosen)
        elif cols == 16:  # NVFP4's 16 x 16 tiles
            amax_encode_blocks(x, elements, scales, np.int64(g), q, rows, 16, chosen)
        elif cols == 128:  # DeepSeek-V3's 128 x 128 tiles
            amax_encode_blocks(x, elements, scales, np.int64(g), q, rows, 128, chosen)
        else:
            amax_encode_blocks(x, elements, scales, np.int64(g), q, rows, cols, chosen)
