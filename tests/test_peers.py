"""lowbit against independent implementations: ml_dtypes, torch's float8 and
e8m0 casts, and gfloat (P3109 and MX blocks). Every documented policy
difference is tested explicitly as a difference."""

import gfloat
import ml_dtypes
import numpy as np
import pytest
import torch
from gfloat.formats import (
    format_info_mxfp4_e2m1, format_info_mxfp6_e2m3, format_info_mxfp6_e3m2, format_info_mxfp8_e4m3,
    format_info_mxfp8_e5m2, format_info_mxint8, format_info_p3109,
)

import lowbit

from helpers import assert_same_values
from oracle import boundary_inputs

pytestmark = pytest.mark.usefixtures("each_backend")

# lowbit format, ml_dtypes type, the overflow policy that reproduces ml_dtypes
ML_DTYPES = [
    ("fp8_e4m3", ml_dtypes.float8_e4m3fn, "nan"),
    ("fp8_e5m2", ml_dtypes.float8_e5m2, "inf"),
    ("fp8_e4m3fnuz", ml_dtypes.float8_e4m3fnuz, "nan"),
    ("fp8_e5m2fnuz", ml_dtypes.float8_e5m2fnuz, "nan"),
    ("fp6_e3m2", ml_dtypes.float6_e3m2fn, "saturate"),
    ("fp6_e2m3", ml_dtypes.float6_e2m3fn, "saturate"),
    ("fp4_e2m1", ml_dtypes.float4_e2m1fn, "saturate"),
    ("e3m4", ml_dtypes.float8_e3m4, "inf"),
    ("fp16", np.float16, "inf"),
    ("bf16", ml_dtypes.bfloat16, "inf"),
]
TORCH_DTYPES = [
    ("fp8_e4m3", torch.float8_e4m3fn, "saturate"),
    ("fp8_e5m2", torch.float8_e5m2, "inf"),
    ("fp8_e4m3fnuz", torch.float8_e4m3fnuz, "nan"),
    ("fp8_e5m2fnuz", torch.float8_e5m2fnuz, "nan"),
    ("bf16", torch.bfloat16, "inf"),
    ("fp16", torch.float16, "inf"),
]


def float32_inputs(fmt, seed=0):
    """Every value, midpoint and neighbour of the format as float32, plus random float32."""
    rng = np.random.default_rng(seed)
    values = fmt.values() if fmt.nbits <= 16 else np.array([1.0])
    boundary = boundary_inputs(values, fmt.max)
    with np.errstate(over="ignore"):
        boundary = boundary.astype(np.float32)
    random = (rng.standard_normal(50000) * fmt.max / 3).astype(np.float32)
    wide = np.exp2(rng.uniform(-30, np.log2(fmt.max) + 3, 50000)).astype(np.float32) * rng.choice([-1, 1], 50000).astype(np.float32)
    return np.concatenate([boundary, random, wide])


@pytest.mark.parametrize("name,dtype,overflow", ML_DTYPES, ids=[n for n, _, _ in ML_DTYPES])
def test_decode_every_code_like_ml_dtypes(name, dtype, overflow):
    fmt = lowbit.get_format(name)
    width = np.uint16 if fmt.nbits > 8 else np.uint8
    codes = np.arange(1 << fmt.nbits, dtype=width)
    expected = codes.view(dtype).astype(np.float64) if fmt.nbits in (8, 16) else codes.astype(np.uint8).view(dtype).astype(np.float64)
    assert_same_values(fmt.decode(codes, dtype=np.float64), expected, name)


@pytest.mark.parametrize("name,dtype,overflow", ML_DTYPES, ids=[n for n, _, _ in ML_DTYPES])
def test_quantize_float32_like_ml_dtypes(name, dtype, overflow):
    fmt = lowbit.get_format(name)
    x = float32_inputs(fmt)
    if not fmt.has_nan:  # ml_dtypes turns NaN into a number there; lowbit keeps NaN (tested below)
        x = x[~np.isnan(x)]
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(dtype).astype(np.float32)
    assert_same_values(fmt.quantize(x, overflow=overflow), expected, name)


@pytest.mark.parametrize("name", ["fp6_e3m2", "fp6_e2m3", "fp4_e2m1"])
def test_nan_into_format_without_nan(name):
    """quantize keeps NaN (ml_dtypes returns a number); encode refuses it."""
    fmt = lowbit.get_format(name)
    assert np.isnan(fmt.quantize(np.float32([np.nan]))).all()
    with pytest.raises(ValueError, match=f"cannot be encoded in {name}: the format has no NaN"):
        fmt.encode(np.float32([1.0, np.nan]))


@pytest.mark.parametrize("name,dtype,overflow", ML_DTYPES[:8], ids=[n for n, _, _ in ML_DTYPES[:8]])
def test_encode_float32_like_ml_dtypes(name, dtype, overflow):
    fmt = lowbit.get_format(name)
    x = float32_inputs(fmt)
    x = x[~np.isnan(x)]  # NaN is compared by quantize above
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(dtype).view(np.uint8) if fmt.nbits == 8 else x.astype(dtype).view(np.uint8)
    np.testing.assert_array_equal(fmt.encode(x, overflow=overflow), expected)


def test_e4m3_default_differs_from_ml_dtypes_only_on_overflow():
    """Default overflow for E4M3 (no Inf) saturates, as torch does; ml_dtypes gives NaN."""
    fmt = lowbit.get_format("fp8_e4m3")
    x = np.float32([464.0, 465.0, 1e9, -1e9, np.inf])
    assert_same_values(fmt.quantize(x), [448, 448, 448, -448, 448])
    assert_same_values(x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32), [448, np.nan, np.nan, np.nan, np.nan])


def test_e8m0_ties_differ_from_ml_dtypes_and_torch_under_nearest_even():
    fmt = lowbit.get_format("e8m0")
    x = np.float32([3.0, 6.0, 1.5, 0.75, 12.0])
    assert_same_values(fmt.quantize(x), [2.0, 8.0, 2.0, 0.5, 8.0])  # ties to the even code
    np.testing.assert_array_equal(x.astype(ml_dtypes.float8_e8m0fnu).astype(np.float32), [4.0, 8.0, 2.0, 1.0, 16.0])


def test_e8m0_nearest_away_matches_ml_dtypes_and_torch_on_positive_inputs():
    fmt = lowbit.get_format("e8m0")
    rng = np.random.default_rng(1)
    x = np.concatenate([np.exp2(rng.uniform(-126, 127, 100000)), 1.5 * np.exp2(np.arange(-126, 127)),
                        np.exp2(np.arange(-127, 128))]).astype(np.float32)
    got = fmt.encode(x, rounding="nearest_away")
    np.testing.assert_array_equal(got, x.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8))
    np.testing.assert_array_equal(got, torch.from_numpy(x).to(torch.float8_e8m0fnu).view(torch.uint8).numpy())


def test_e8m0_zero_and_negatives_are_not_representable():
    fmt = lowbit.get_format("e8m0")
    assert np.isnan(fmt.quantize(np.float32([0.0, -2.0]))).all()
    with pytest.raises(ValueError, match="no zero"):
        fmt.encode(np.float32([0.0]))
    with pytest.raises(ValueError, match="unsigned"):
        fmt.encode(np.float32([-2.0]))


@pytest.mark.parametrize("name,dtype,overflow", TORCH_DTYPES, ids=[str(d) for _, d, _ in TORCH_DTYPES])
def test_quantize_like_torch_casts(name, dtype, overflow):
    fmt = lowbit.get_format(name)
    x = torch.from_numpy(float32_inputs(fmt, seed=2))
    expected = x.to(dtype).to(torch.float32)
    assert_same_values(fmt.quantize(x, overflow=overflow).numpy(), expected.numpy(), name)
    if fmt.nbits == 8:
        finite = ~torch.isnan(x)
        codes = fmt.encode(x[finite], overflow=overflow)
        assert codes.dtype == torch.uint8
        torch.testing.assert_close(codes, x[finite].to(dtype).view(torch.uint8), rtol=0, atol=0)


def test_torch_input_dtypes_and_device_are_kept():
    fmt = lowbit.get_format("fp8_e5m2")
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.linspace(-3, 3, 101, dtype=dtype)
        y = fmt.quantize(x)
        assert y.dtype == dtype and y.device == x.device
        assert_same_values(y.double().numpy(), x.to(torch.float8_e5m2).double().numpy(), str(dtype))


GFLOAT_MODES = {
    "nearest_even": gfloat.RoundMode.TiesToEven, "nearest_away": gfloat.RoundMode.TiesToAway,
    "toward_zero": gfloat.RoundMode.TowardZero, "up": gfloat.RoundMode.TowardPositive,
    "down": gfloat.RoundMode.TowardNegative,
}


@pytest.mark.parametrize("p", range(1, 8))
@pytest.mark.parametrize("rounding", list(GFLOAT_MODES))
def test_p3109_like_gfloat(p, rounding):
    fmt = lowbit.get_format(f"p3109_8p{p}")
    fi = format_info_p3109(8, p)
    x = float32_inputs(fmt, seed=p).astype(np.float64)[:20000]
    for overflow, sat in (("saturate", True), ("inf", False)):
        expected = gfloat.round_ndarray(fi, x, GFLOAT_MODES[rounding], sat=sat)
        assert_same_values(fmt.quantize(x, rounding=rounding, overflow=overflow), expected, f"p3109_8p{p} {rounding} {overflow}")
    finite = x[~np.isnan(x)]
    np.testing.assert_array_equal(fmt.encode(finite, overflow="inf"),
                                  gfloat.encode_ndarray(fi, gfloat.round_ndarray(fi, finite, sat=False)))


@pytest.mark.parametrize("p", range(1, 8))
def test_p3109_decode_like_gfloat(p):
    fmt = lowbit.get_format(f"p3109_8p{p}")
    fi = format_info_p3109(8, p)
    codes = np.arange(256)
    assert_same_values(fmt.decode(codes, dtype=np.float64), gfloat.decode_ndarray(fi, codes), fmt.name)


MX_GFLOAT = [
    ("mxfp8_e4m3", format_info_mxfp8_e4m3), ("mxfp8_e5m2", format_info_mxfp8_e5m2),
    ("mxfp6_e3m2", format_info_mxfp6_e3m2), ("mxfp6_e2m3", format_info_mxfp6_e2m3),
    ("mxfp4", format_info_mxfp4_e2m1), ("mxint8_full", format_info_mxint8),
]
MXINT8_FULL = lowbit.BlockFormat(lowbit.IntFormat(8, frac_bits=6), 32, name="mxint8_full")


@pytest.mark.parametrize("name,info", MX_GFLOAT, ids=[n for n, _ in MX_GFLOAT])
def test_mx_blocks_like_gfloat_floor_rule(name, info):
    fmt = MXINT8_FULL if name == "mxint8_full" else lowbit.get_format(name)
    rng = np.random.default_rng(3)
    nblocks = 300
    scales = np.exp2(rng.integers(-40, 40, (nblocks, 1)))
    spread = np.exp2(rng.uniform(-12, 0, (nblocks, 32)))
    x = (rng.standard_normal((nblocks, 32)) * spread * scales).astype(np.float32)
    x[0] = 0.0
    x[1, :] = 0.0
    x[1, 5] = 2.0 ** -140  # float32 subnormal alone in its block
    got = fmt.quantize(x)
    expected = np.stack([gfloat.quantize_block(info, row.astype(np.float64), gfloat.compute_scale_amax) for row in x])
    assert_same_values(got, expected.astype(np.float32), name)


def test_mxint8_is_symmetric_by_default_unlike_gfloat():
    """OCP MXINT8 elements are symmetric (-127/64..127/64) by default; the
    full two's complement range (-2.0, as gfloat) is IntFormat(narrow=False)."""
    x = np.float32([-1.999] + [1.0] * 31)
    assert lowbit.get_format("mxint8").quantize(x)[0] == np.float32(-127 / 64)
    assert MXINT8_FULL.quantize(x)[0] == -2.0
    assert gfloat.quantize_block(format_info_mxint8, x.astype(np.float64), gfloat.compute_scale_amax)[0] == -2.0


@pytest.mark.parametrize("name,dtype", [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2),
                                        ("fp8_e4m3fnuz", torch.float8_e4m3fnuz), ("fp8_e5m2fnuz", torch.float8_e5m2fnuz),
                                        ("e8m0", torch.float8_e8m0fnu)])
def test_decode_every_code_like_torch(name, dtype):
    codes = torch.arange(256, dtype=torch.int64).to(torch.uint8)
    expected = codes.view(dtype).to(torch.float64)
    assert_same_values(lowbit.get_format(name).decode(codes, dtype=torch.float64).numpy(), expected.numpy(), name)
