"""Scaled formats (MX, NVFP4, microexponents) against per-block references
written from DESIGN.md's definitions in plain Python, plus layout, padding,
axis, NaN/zero blocks and the Encoded container."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import lowbit
from lowbit.formats import BlockFormat, Encoded

from helpers import assert_same_values
from oracle import Oracle

pytestmark = pytest.mark.usefixtures("each_backend")

MX = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"]
MODES = ["nearest_even", "nearest_away", "toward_zero", "up", "down"]


def floor_log2(v: float) -> int:
    return math.frexp(v)[1] - 1


def reference_scale_exponent(amax: float, elem, rule: str) -> int:
    emax = floor_log2(elem.max)
    if amax == 0:
        return -127
    if rule == "floor":
        s = floor_log2(amax) - emax
    elif rule == "ceil":
        s = math.ceil(math.log2(Fraction(amax))) if False else (floor_log2(amax) + (Fraction(amax) != 2 ** floor_log2(amax))) - emax
    elif rule == "rceil":
        s = -200
        while Fraction(amax) > Fraction(elem.max) * Fraction(2) ** s:
            s += 1
    else:  # even: amax rounded to nearest even at the element's mantissa width, then floor
        m = elem.man_bits if hasattr(elem, "man_bits") else elem.bits - 2
        e = floor_log2(amax)
        q = Fraction(amax) / Fraction(2) ** (e - m)
        r = round(q)  # Python's round: ties to even
        s = floor_log2(float(r * Fraction(2) ** (e - m))) - emax
    return max(-127, min(127, s))


def reference_mx(x: np.ndarray, fmt: BlockFormat, rule: str, rounding: str) -> np.ndarray:
    oracle = Oracle(fmt.element)
    out = np.empty_like(x, dtype=np.float64)
    for i, block in enumerate(x.reshape(-1, fmt.block_size).astype(np.float64)):
        if not np.isfinite(block).all():
            out.reshape(-1, fmt.block_size)[i] = np.nan
            continue
        s = reference_scale_exponent(float(np.abs(block).max()), fmt.element, rule)
        out.reshape(-1, fmt.block_size)[i] = oracle.round(block / 2.0 ** s, rounding, "saturate") * 2.0 ** s
    return out


def wide_blocks(nblocks, size, seed):
    rng = np.random.default_rng(seed)
    scales = np.exp2(rng.integers(-60, 60, (nblocks, 1)))
    spread = np.exp2(rng.uniform(-10, 0, (nblocks, size)))
    x = rng.standard_normal((nblocks, size)) * spread * scales
    x[0] = 0.0
    x[1, 3] = np.nan
    x[2, 0] = -np.inf
    x[3] = 2.0 ** -149 * np.arange(size)
    x[4] = 3 * 2.0 ** np.arange(-size // 2, size - size // 2)  # amax exactly 1.5 * 2**k: rounding-sensitive scales
    x[5] = 2.0 ** 20 * (2 - 2.0 ** -np.arange(size))  # amax just below a power of two
    return x.astype(np.float32)


@pytest.mark.parametrize("name", MX)
@pytest.mark.parametrize("rule", ["floor", "ceil", "rceil", "even"])
def test_mx_matches_block_reference(name, rule):
    fmt = lowbit.get_format(name)
    x = wide_blocks(120, 32, seed=len(name) + len(rule))
    assert_same_values(fmt.quantize(x, scale_rule=rule), reference_mx(x, fmt, rule, "nearest_even").astype(np.float32), f"{name} {rule}")


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4", "mxint8"])
@pytest.mark.parametrize("rounding", MODES)
def test_mx_rounding_modes_match_block_reference(name, rounding):
    fmt = lowbit.get_format(name)
    x = wide_blocks(60, 32, seed=7)
    assert_same_values(fmt.quantize(x, rounding=rounding), reference_mx(x, fmt, "floor", rounding).astype(np.float32), f"{name} {rounding}")


def test_nvfp4_matches_reference():
    fmt = lowbit.get_format("nvfp4")
    e4m3, e2m1 = Oracle(lowbit.get_format("fp8_e4m3")), Oracle(lowbit.get_format("fp4_e2m1"))
    x = wide_blocks(200, 16, seed=11)
    x[6] = x[6] / 1e6  # scales that round to E4M3 subnormals and to zero
    x[7] = 2.0 ** -140
    expected = np.empty_like(x, dtype=np.float64)
    for i, block in enumerate(x.astype(np.float64)):
        if not np.isfinite(block).all():
            expected[i] = np.nan
            continue
        scale = float(e4m3.round(np.abs(block).max() / 6.0, "nearest_even", "saturate"))
        expected[i] = e2m1.round(block / scale, "nearest_even", "saturate") * scale if scale else 0.0
    assert_same_values(fmt.quantize(x), expected.astype(np.float32), "nvfp4")


def test_nvfp4_quantize_again_may_change_the_block_scale():
    # the block scale follows amax, which directed rounding lowers: [-1, 0, ...] under toward_zero
    # gets scale rn(1/6) and element rz(-1/scale); its amax then gives a smaller scale
    fmt = lowbit.get_format("nvfp4")
    e4m3, e2m1 = Oracle(lowbit.get_format("fp8_e4m3")), Oracle(lowbit.get_format("fp4_e2m1"))

    def by_hand(amax_value):
        scale = float(e4m3.round(np.array([amax_value / 6.0]), "nearest_even", "saturate")[0])
        return float(e2m1.round(np.array([-amax_value / scale]), "toward_zero", "saturate")[0]) * scale

    x = np.zeros(16, dtype=np.float32)
    x[15] = -1.0
    once = fmt.quantize(x, rounding="toward_zero")
    twice = fmt.quantize(once, rounding="toward_zero")
    assert once[15] == by_hand(1.0) and twice[15] == by_hand(-float(once[15]))
    assert twice[15] != once[15]


def test_nvfp4_tensor_scale():
    fmt = BlockFormat(lowbit.get_format("fp4_e2m1"), 16, scale=lowbit.get_format("fp8_e4m3"), tensor_scale=True)
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32) * 1e5
    enc = fmt.encode(x)
    ts = np.float32(np.abs(x).max()) / np.float32(448 * 6)
    assert enc.tensor_scale == float(ts)
    assert enc.nbytes == 8 * 64 // 2 + 8 * 4 + 4
    np.testing.assert_array_equal(enc.decode(), fmt.quantize(x))
    assert np.abs(fmt.quantize(x)).max() <= 6 * 448 * ts * (1 + 1e-6)


def reference_microexponent(x: np.ndarray, m: int, k1: int, k2: int, d2: int, rounding: str) -> np.ndarray:
    """DESIGN.md's definition, element by element, in exact arithmetic."""
    out = np.zeros(x.shape, dtype=np.float64)
    for b, block in enumerate(x.reshape(-1, k1).astype(np.float64)):
        if not np.isfinite(block).all():
            out.reshape(-1, k1)[b] = np.nan
            continue
        exps = [floor_log2(abs(v)) for v in block if v != 0]
        e_max = max(-127, min(127, max(exps))) if exps else -127
        for j in range(0, k1, k2):
            sub = block[j:j + k2]
            sub_exps = [floor_log2(abs(v)) for v in sub if v != 0]
            shift = min(2 ** d2 - 1, max(0, e_max - max(sub_exps))) if sub_exps else 2 ** d2 - 1
            step = Fraction(2) ** (e_max - shift - m + 1)
            for i, v in enumerate(sub):
                t = abs(Fraction(v)) / step
                lo = math.floor(t)
                frac = t - lo
                if rounding == "nearest_even":
                    mag = lo + (frac > Fraction(1, 2) or (frac == Fraction(1, 2) and lo % 2 == 1))
                elif rounding == "toward_zero":
                    mag = lo
                elif rounding == "up":
                    mag = lo + (frac > 0 and v > 0)
                mag = min(mag, 2 ** m - 1)
                out.reshape(-1, k1)[b, j + i] = math.copysign(float(mag * step), v)
    return out


@pytest.mark.parametrize("name,m,d2", [("mx9", 7, 1), ("mx6", 4, 1), ("mx4", 2, 1), ("msfp12", 3, 0), ("msfp16", 7, 0)])
@pytest.mark.parametrize("rounding", ["nearest_even", "toward_zero", "up"])
def test_microexponent_matches_definition(name, m, d2, rounding):
    fmt = lowbit.get_format(name)
    x = wide_blocks(80, 16, seed=m + d2)
    x[8] = np.float32([8, 1, 0.5, 0.25, 4, 4, 0, 0, 3, 0.1, 7.99, 2, 1, 1, 0.75, 16])  # each sub-block case
    assert_same_values(fmt.quantize(x, rounding=rounding), reference_microexponent(x, m, 16, 2, d2, rounding).astype(np.float32), name)


def test_microexponent_bits():
    assert [lowbit.get_format(n).bits for n in ("mx9", "mx6", "mx4", "msfp12", "msfp16")] == [9, 6, 4, 4.5, 8.5]


@pytest.mark.parametrize("name", ["mxfp4", "mxfp6_e2m3", "mxint8", "nvfp4", "mx6", "mx9"])
def test_any_axis_and_padding(name):
    fmt = lowbit.get_format(name)
    x = np.random.default_rng(5).standard_normal((3, 37, 5)).astype(np.float32)
    for axis in (0, 1, 2, -1, -2):
        moved = np.moveaxis(x, axis, -1)
        padded = np.zeros((*moved.shape[:-1], -(-moved.shape[-1] // fmt.block_size) * fmt.block_size), np.float32)
        padded[..., : moved.shape[-1]] = moved
        expected = np.moveaxis(fmt.quantize(padded)[..., : moved.shape[-1]], -1, axis)
        got = fmt.quantize(x, axis=axis)
        assert got.shape == x.shape
        np.testing.assert_array_equal(got, expected)
        enc = fmt.encode(x, axis=axis)
        np.testing.assert_array_equal(enc.decode(), got)


def test_nan_and_inf_poison_only_their_block():
    fmt = lowbit.get_format("mxfp8_e4m3")
    x = np.ones(96, np.float32)
    x[40] = np.inf
    y = fmt.quantize(x)
    assert np.isnan(y[32:64]).all() and (y[:32] == 1).all() and (y[64:] == 1).all()
    assert fmt.encode(x).scales.tolist() == [127 - 8, 255, 127 - 8]  # 2**(0 - emax_e4m3)


def test_all_zero_block_scale_and_elements():
    enc = lowbit.get_format("mxfp4").encode(np.zeros(32, np.float32))
    assert enc.scales.tolist() == [0] and not enc.elements.any()


@pytest.mark.parametrize("name", ["mxfp8_e5m2", "mxfp6_e3m2", "mxfp4", "mxint8", "nvfp4", "mx9", "mx4", "msfp12"])
def test_encoded_nbytes_save_load(name, tmp_path):
    fmt = lowbit.get_format(name)
    x = torch.randn(4, 100)
    enc = fmt.encode(x)
    nblocks = 4 * -(-100 // fmt.block_size)
    element_bytes = math.ceil(nblocks * fmt.block_size * fmt.element_code_bits / 8)
    sub_bytes = math.ceil(nblocks * fmt.block_size // 2 / 8) if name in ("mx9", "mx4") else 0
    assert enc.nbytes == element_bytes + nblocks * math.ceil(fmt.scale_code_bits / 8) + sub_bytes
    enc.save(tmp_path / "t.npz")
    back = Encoded.load(tmp_path / "t.npz")
    assert back == enc
    torch.testing.assert_close(back.decode(), fmt.quantize(x), rtol=0, atol=0)
    assert lowbit.decode(back).shape == x.shape


def test_block_scaling_by_power_of_two_scales_output():
    x = np.random.default_rng(9).standard_normal(64).astype(np.float32)
    for name in ("mxfp4", "mxfp8_e4m3", "mx6", "mxint8"):
        fmt = lowbit.get_format(name)
        np.testing.assert_array_equal(fmt.quantize(x * np.float32(2.0 ** 10)), fmt.quantize(x) * np.float32(2.0 ** 10))


def test_scale_rule_validation():
    with pytest.raises(ValueError, match="scale_rule for e8m0 scales must be one of floor, ceil, rceil, even"):
        lowbit.get_format("mxfp4").quantize(np.ones(32, np.float32), scale_rule="nearest")
    with pytest.raises(ValueError, match="scale_rule applies to MX block formats"):
        lowbit.get_format("mx6").quantize(np.ones(32, np.float32), scale_rule="floor")


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4", "mxint8"])
def test_float64_elements_far_below_the_block_scale(name):
    """x / scale would underflow float64 here; directed rounding must still
    see a positive value and give the smallest element times the scale."""
    fmt = lowbit.get_format(name)
    x = np.zeros(32)
    x[0], x[1], x[2] = 2.0 ** 120, 1e-300, -1e-300
    scale = 2.0 ** (120 - fmt.element.emax)
    smallest = fmt.element.min_subnormal * scale
    up = fmt.quantize(x, rounding="up")
    assert up[1] == smallest and up[2] == 0 and np.signbit(up[2]) == (name != "mxint8")
    down = fmt.quantize(x, rounding="down")
    assert down[1] == 0 and down[2] == -smallest


def test_encoded_arrays_follow_the_input_kind(tmp_path):
    fmt = lowbit.get_format("mx6")
    enc = fmt.encode(np.ones(40, np.float32))
    assert all(isinstance(a, np.ndarray) for a in (enc.elements, enc.scales, enc.subscales))
    assert isinstance(enc.decode(), np.ndarray)
    enc.save(tmp_path / "n.npz")
    assert isinstance(Encoded.load(tmp_path / "n.npz").scales, np.ndarray)
    tenc = fmt.encode(torch.ones(40))
    assert all(isinstance(a, torch.Tensor) for a in (tenc.elements, tenc.scales, tenc.subscales))
    assert isinstance(tenc.decode(), torch.Tensor)


def test_an_encoded_built_by_hand_may_name_its_axis_from_the_end():
    fmt = lowbit.get_format("mxfp4")
    encoded = fmt.encode(torch.randn(3, 64))
    by_hand = lowbit.Encoded(fmt, encoded.shape, -1, encoded.elements, encoded.scales)
    assert torch.equal(fmt.decode(by_hand), fmt.decode(encoded))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        fmt.decode(lowbit.Encoded(fmt, encoded.shape, 2, encoded.elements, encoded.scales))


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "mx6", "msfp12"])
def test_an_empty_input_encodes_to_empty_codes(name):
    fmt = lowbit.get_format(name)
    encoded = fmt.encode(torch.empty(0, 5), axis=0)
    assert encoded.elements.numel() == 0 and encoded.scales.numel() == 0
    assert (encoded.subscales is None) == (fmt.subscales_per_block == 0)  # mx6 has shifts, even none
    if encoded.subscales is not None:
        assert encoded.subscales.numel() == 0
    assert fmt.decode(encoded).shape == (0, 5)
