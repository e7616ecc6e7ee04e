"""Codebook elements and the per-tensor scaled formats on the kernel
backends (the numba kernels, and the CUDA kernels' host twin and emulated
build) against the reference implementation, bit for bit (every rounding
mode the kernels take, every input dtype, other axes and layouts), the
catalogue's fitted codebook fitted again, and the kernels refusing the
layouts they lack by name.
The semantics themselves are checked against independent references in
tests/test_element_kinds.py."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit.formats import BlockFormat, CodebookFormat, abi, backends
from lowbit.formats.codebook import KMEANS4_VALUES
from lowbit.formats.cpu import codebook_kernels

from helpers import assert_same_result, assert_same_values, kernel_backends

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
TABLES = [
    lowbit.NF4_VALUES,
    lowbit.formats.FP4_BNB_VALUES,
    (-1.0, 1.0),
    (-3.0, -1.0, 0.5, 2.0, 7.0),
    (0.0, 0.25, 1.0),
    tuple(np.unique(np.float32(np.random.default_rng(3).standard_normal(200))).astype(np.float64)),  # binary search
]


def outcome(call):
    try:
        return call()
    except (ValueError, TypeError) as error:
        return f"{type(error).__name__}: {error}"


KERNELS = kernel_backends()


def same(method, x, context, **policy):
    """The call on each kernel backend gives what it gives on the reference."""
    expected = outcome(lambda: method(x, backend="reference", **policy))
    for backend in KERNELS:
        assert_same_result(outcome(lambda: method(x, backend=backend, **policy)), expected, f"{backend}: {context}")


def values_for(table, draw):
    """Table values, midpoints, their float64 neighbours, specials and random values around the table."""
    t = np.array(table)
    mids = (t[:-1] + t[1:]) / 2
    points = np.concatenate([t, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
    picked = draw(st.lists(st.sampled_from(points.tolist()), min_size=1, max_size=24))
    extra = draw(st.lists(st.one_of(st.floats(float(t[0]) * 2 - 1, float(t[-1]) * 2 + 1),
                                    st.sampled_from([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40])), max_size=12))
    return torch.tensor(picked + extra, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_codebook_elements_agree(data):
    fmt = CodebookFormat(data.draw(st.sampled_from(TABLES), "table"))
    x = values_for(fmt.table, data.draw).to(data.draw(st.sampled_from(DTYPES), "dtype"))
    rounding = data.draw(st.sampled_from(abi.ROUNDINGS), "rounding")
    policy = dict(rounding=rounding, flush_subnormals=data.draw(st.booleans(), "flush"),
                  **({"seed": 7} if rounding == "stochastic" else {}))
    for layout in (x, x.reshape(-1, 1).t(), x[::2]):
        same(fmt.quantize, layout, f"{fmt.name} {x.dtype} {policy}", **policy)
        same(fmt.encode, layout, f"{fmt.name} {x.dtype} {policy}", **policy)
    codes = torch.randint(0, 1 << fmt.nbits, (40,))
    same(fmt.decode, codes, f"{fmt.name} decode", dtype=torch.float64)


BLOCK_FORMATS = ["nf4", "fp4_bnb", "kmeans4_g64", "nf4_dq"]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_codebook_blocks_agree(data):
    fmt = lowbit.get_format(data.draw(st.sampled_from(BLOCK_FORMATS), "format"))
    rows = data.draw(st.integers(1, 3), "rows")
    length = data.draw(st.sampled_from([64, 100, 128, 7]), "length")
    scale = data.draw(st.sampled_from([1.0, 1e-30, 1e30, 3.0]), "scale")
    x = torch.randn(rows, length, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))) * scale
    for where, value in data.draw(st.lists(st.tuples(st.integers(0, x.numel() - 1),
                                                     st.sampled_from([0.0, np.nan, np.inf, -0.0, 1e-42])),
                                           max_size=3), "specials"):
        x.view(-1)[where] = value
    if data.draw(st.booleans(), "zero row"):
        x[0] = 0.0
    x = x.to(data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float64]), "dtype"))
    axis = data.draw(st.sampled_from([-1, 0]), "axis")
    rounding = data.draw(st.sampled_from(abi.ROUNDINGS), "rounding")
    policy = dict(axis=axis, rounding=rounding, **({"seed": 3} if rounding == "stochastic" else {}))
    context = f"{fmt.name} {x.dtype} {tuple(x.shape)} {policy}"
    same(fmt.quantize, x, context, **policy)
    same(fmt.encode, x, context, **policy)
    encoded = fmt.encode(x, backend="reference", **policy)
    for backend in KERNELS:
        assert_same_values(fmt.decode(encoded, backend=backend), fmt.decode(encoded, backend="reference"),
                           f"{backend}: {context}")


#: tables for the float32 block kernel: 4-bit ones (compared unrolled; bitsandbytes' FP4 with midpoints of
#: more than 26 bits) and longer dyadic ones (counted in a loop)
FLOAT32_TABLES = [
    lowbit.NF4_VALUES,
    KMEANS4_VALUES,
    lowbit.formats.FP4_BNB_VALUES,
    (-1.0, -0.5, 0.0, 0.25, 1.0),
    tuple(np.unique(np.round(np.random.default_rng(5).standard_normal(40) * 16) / 16)),
    tuple(np.unique(np.round(np.random.default_rng(6).standard_normal(300) * 64) / 64))[:64],
]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_float32_codebook_blocks_agree_across_tasks(data):
    """The float32 nearest-even kernel (tasks of 64 blocks, thresholds
    rounded to float32 per block) against the reference, on blocks whose
    scale is a power of two so that elements can sit exactly on a
    midpoint, on the float32 numbers next to each threshold, on table
    values, and on specials; quantize and encode, over several tasks."""
    table = data.draw(st.sampled_from(FLOAT32_TABLES), "table")
    fmt = BlockFormat(CodebookFormat(table), 64, scale=lowbit.get_format("fp32"))
    rows = data.draw(st.sampled_from([1, 63, 65, 130]), "rows")
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), "seed"))
    scale = 2.0 ** rng.integers(-130, 120, size=(rows, 1))
    t = np.array(table)
    points = np.concatenate([t, (t[:-1] + t[1:]) / 2]) / fmt.element.max
    x = np.float32(rng.choice(points, size=(rows, 64)) * scale)
    x = np.where(rng.random((rows, 64)) < 0.3, np.nextafter(x, rng.choice([-np.inf, np.inf], size=x.shape)), x)
    x = np.where(rng.random((rows, 64)) < 0.2, np.float32(rng.standard_normal((rows, 64)) * scale * 0.4), x)
    x[:, 0] = np.float32(scale[:, 0] * rng.choice([-1.0, 1.0], size=rows))  # amax = the scale's power of two
    for where, value in data.draw(st.lists(st.tuples(st.integers(0, x.size - 1),
                                                     st.sampled_from([0.0, -0.0, np.nan, np.inf, 1e-42, 3e38])),
                                           max_size=4), "specials"):
        x.reshape(-1)[where] = value
    x = torch.from_numpy(x.astype(np.float32))
    context = f"{len(table)} values, {rows} rows"
    same(fmt.quantize, x, context)
    same(fmt.encode, x, context)


def rounding_coincidences(count, seed=0):
    """(table, s, x): float32 s and x whose float64 quotient x / s rounds
    onto a midpoint m of the table (values in [-1, 1], 1.0 among them, so
    a block whose largest magnitude is s has scale s) while comparing x
    with the float64 product m * s decides otherwise: m is the table's
    third midpoint (strict tests, q > m) when x lies above the product, its
    fourth (q >= m) when below. Found by number theory: with m = M * 2^k
    (M odd, of about 33 bits, so that float64 rounding of m reaches as far
    as x / s lies from it) and s = S * 2^-23, x = (M * S - r) * 2^(k - 23)
    is a float32 when S = r / M modulo 2^L lies in [2^23, 2^24) and so
    does (M * S - r) / 2^L."""
    rng = np.random.default_rng(seed)
    above, below = [], []  # x above the product (an even midpoint), below it (an odd one)
    while len(above) < count // 2 or len(below) < count - count // 2:
        a, b = float(np.float32(rng.uniform(2 ** -11, 2 ** -9))), float(np.float32(rng.uniform(0.25, 0.5)))
        m = Fraction(a + b) / 2
        k = -(m.denominator.bit_length() - 1)
        big_m = int(m * 2 ** -k)
        for length in range(big_m.bit_length() - 1, big_m.bit_length() + 2):
            inverse = pow(big_m, -1, 2 ** length)
            for r in range(-15, 16):
                big_s = r * inverse % 2 ** length
                big_x = (big_m * big_s - r) >> length
                if not (r and 2 ** 23 <= big_s < 2 ** 24 and 2 ** 23 <= big_x < 2 ** 24):
                    continue
                scale = big_s * 2.0 ** -23
                x = big_x * 2.0 ** (length + k - 23)
                product = float(m) * scale
                if x / scale == float(m) and x != product:
                    if x > product:
                        above.append(((-1.0, 0.0, a, b, 1.0), scale, x))
                    else:
                        below.append(((-1.0, 0.0, a / 2, a, b, 1.0), scale, x))
    return above[:count // 2] + below[:count - count // 2]


def test_float32_codebook_blocks_follow_the_rounded_quotient():
    """Where the reference's float64 quotient x / s rounds onto a midpoint
    (tables whose midpoints have more than 26 bits, such as bitsandbytes'
    FP4), the float32 kernel decides as the reference, not as a comparison
    with the threshold m * s: at even and at odd midpoints, for x and its
    float32 neighbours."""
    cases = rounding_coincidences(2)
    assert {len(table) for table, _, _ in cases} == {5, 6}
    for table, scale, x in cases:
        assert not codebook_kernels.short_midpoints(table)
        fmt = BlockFormat(CodebookFormat(table), 64, scale=lowbit.get_format("fp32"))
        near = np.nextafter(np.float32(x), np.float32([-np.inf, np.inf]))
        row = np.zeros(64, np.float32)
        row[:5] = [scale, x, near[0], near[1], -x]
        same(fmt.quantize, torch.from_numpy(np.tile(row, (3, 1))), f"{table} {scale} {x}")
        same(fmt.encode, torch.from_numpy(row[None]), f"{table} {scale} {x}")


def test_the_catalogued_kmeans_codebook_is_what_fit_codebook_gives():
    x = np.random.default_rng(0).standard_normal(1 << 16).reshape(-1, 64)
    x = x / np.abs(x).max(axis=1, keepdims=True)
    assert lowbit.fit_codebook(x, 4).table == KMEANS4_VALUES
    assert lowbit.get_format("kmeans4_g64").element.table == KMEANS4_VALUES


def test_codebook_kernels_refuse_what_they_lack_by_name():
    odd_scales = BlockFormat(lowbit.get_format("nf4").element, 64, scale=lowbit.get_format("fp16"))
    x = torch.randn(2, 64)
    assert backends.resolve(None, "cpu", odd_scales, "quantize").name == "reference"
    with pytest.raises(ValueError, match="codebook elements in blocks with fp32 scales"):
        odd_scales.quantize(x, backend="cpu")
    limited = dict(rounding="stochastic", seed=1, sr_bits=8)  # taken since the kernels have sr_bits
    assert torch.equal(lowbit.get_format("nf4").quantize(x, backend="cpu", **limited),
                       lowbit.get_format("nf4").quantize(x, backend="reference", **limited))
    tiles = BlockFormat(lowbit.get_format("nf4").element, block_shape=(8, 8), scale=lowbit.get_format("fp32"))
    y = torch.randn(16, 24)
    assert torch.equal(tiles.quantize(y, backend="cpu"), tiles.quantize(y, backend="reference"))
    for name in KERNELS[1:]:  # the CUDA kernels read blocks along one axis
        with pytest.raises(ValueError, match="its kernels do not implement 2-D tiles"):
            tiles.quantize(y, backend=name)


@pytest.mark.parametrize("rounding", ["nearest_even", "up", "down", "toward_zero", "stochastic"])
def test_float64_elements_far_below_their_block_scale_round_as_their_exact_quotient(rounding):
    """A float64 element whose quotient by its block's scale underflows
    float64 rounds as the exact (tiny, signed) quotient does, not as zero:
    up to the smallest positive value, down to the largest negative one,
    and, in a table without 0.0, to the neighbour on its own side."""
    nf4, two = lowbit.get_format("nf4"), BlockFormat(CodebookFormat([-1.0, 1.0]), 4, scale=lowbit.get_format("fp32"))
    x = torch.tensor([2.0, 5e-324, -5e-324, 1e-300, -1e-300, 0.0, -0.0, 0.5], dtype=torch.float64)
    policy = dict(rounding=rounding, **({"seed": 4} if rounding == "stochastic" else {}))
    for fmt in (nf4, two):
        rows = torch.cat([x, torch.zeros(fmt.block_size - len(x) % fmt.block_size or fmt.block_size,
                                         dtype=torch.float64)])
        assert isinstance(fmt.quantize(rows, backend="reference", **policy), torch.Tensor)
        same(fmt.quantize, rows, f"{fmt.name} {policy}", **policy)
        same(fmt.encode, rows, f"{fmt.name} {policy}", **policy)
    scale = float(np.float32(2.0 / 1.0))  # nf4: the block's amax over the table's largest magnitude
    smallest_positive = float(np.float32(lowbit.NF4_VALUES[8] * scale))
    up = nf4.quantize(torch.cat([x, torch.zeros(56, dtype=torch.float64)]), rounding="up", backend="reference")
    assert up[1] == up[3] == smallest_positive and up[2] == up[4] == 0.0
    nearest = two.quantize(x, backend="reference")  # the first block's scale is 2: its values are -2 and 2
    assert nearest.tolist()[:3] == [2.0, 2.0, -2.0]


def test_a_partial_block_of_a_table_without_zero_checks_only_its_data():
    """The padding of a partial last block (zeros, which round to a nonzero
    value of kmeans4's table) is not data: a bfloat16 input whose values the
    dtype holds quantizes without error, each element as in a full block."""
    fmt = lowbit.get_format("kmeans4_g64")
    x = torch.full((2, 65), 0.375, dtype=torch.bfloat16)
    full = fmt.quantize(torch.full((2, 64), 0.375, dtype=torch.bfloat16), backend="reference")
    got = fmt.quantize(x, backend="reference")
    assert torch.equal(got[:, :64], full) and torch.equal(got[:, 64], full[:, 0])
    same(fmt.quantize, x, "kmeans4_g64 bfloat16, a partial block")


def test_sr_bits_on_block_formats_matches_the_elements_rule():
    """A k-bit draw in a block picks the upper neighbour exactly where the element rule says (mxfp4's scale 1)."""
    x = np.array([[1.0 + 2.0 ** -6, 1.25, 2.5 + 2.0 ** -5] + [0.0] * 28 + [4.0]])
    for k in (2, 5, 8):
        block = lowbit.quantize(x, "mxfp4", rounding="stochastic", seed=9, sr_bits=k)
        element = lowbit.quantize(x, "fp4_e2m1", rounding="stochastic", seed=9, sr_bits=k)
        assert np.array_equal(block, element)


def test_tensor_scaled_formats_take_float_inputs_of_every_kind():
    x = torch.randn(33, 17, dtype=torch.float64)
    for name in ("ternary", "binary"):
        fmt = lowbit.get_format(name)
        q64 = fmt.quantize(x)
        assert torch.equal(fmt.quantize(x.float()).double(), fmt.quantize(x.float().double()))
        assert torch.equal(q64, fmt.decode(fmt.encode(x), dtype=torch.float64))
        assert np.array_equal(fmt.quantize(x.numpy()), q64.numpy())
        encoded = fmt.encode(x)
        assert encoded.bits == fmt.element.nbits + 32 / x.numel()


@pytest.mark.parametrize("name", ["nf4", "kmeans4_g64"])
def test_the_float32_comparison_path_on_every_midpoint(name):
    """float32 blocks under nearest_even compare x with midpoint * scale in
    float32: every midpoint times a block's scale, the float32 numbers next
    to it, and random scales, against the reference."""
    fmt = lowbit.get_format(name)
    table = np.array(fmt.element.table)
    mids = (table[:-1] + table[1:]) / 2
    rng = np.random.default_rng(5)
    rows = []
    for scale in [1.0, 3.0, 0.7, 1e-3, 2.0 ** -140, 1e38, *rng.uniform(0.1, 10, 12)]:
        s = np.float32(scale)
        points = np.float32(np.concatenate([mids * np.float64(s), table * np.float64(s)]))
        near = np.concatenate([points, np.nextafter(points, np.float32(np.inf)), np.nextafter(points, np.float32(-np.inf))])
        row = np.resize(near, 64 * 2).reshape(2, 64).copy()
        row[:, 0] = s  # the block's absmax is s, so its scale is s / max
        rows.append(row)
    x = torch.from_numpy(np.concatenate(rows))
    for policy in ({}, {"axis": 0}):
        same(fmt.quantize, x, f"{name} {policy}", **policy)
        same(fmt.encode, x, f"{name} {policy}", **policy)
