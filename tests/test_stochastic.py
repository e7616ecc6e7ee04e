"""Stochastic rounding: picks a neighbour, unbiased, reproducible."""

import numpy as np
import pytest
import torch

import lowbit

from oracle import Oracle

pytestmark = pytest.mark.usefixtures("each_backend")


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp4_e2m1", "int4", "bf16", "e8m0"])
def test_result_is_one_of_the_two_neighbours(name):
    fmt = lowbit.get_format(name)
    oracle = Oracle(fmt)
    x = np.abs(np.random.default_rng(0).standard_normal(5000)) * min(fmt.max, 1e4) / 8
    y = fmt.quantize(x, rounding="stochastic", seed=1, overflow="saturate")
    down, up = oracle.round(x, "down", "saturate"), oracle.round(x, "up", "saturate")
    assert ((y == down) | (y == up)).all()
    assert (y == down).any() and (y == up).any()


def test_unbiased():
    """P(up) = (x - lo) / (hi - lo): 0.3 between 0 and 0.5 rounds up with p = 0.6."""
    n = 200_000
    y = lowbit.quantize(np.full(n, 0.3), "fp4_e2m1", rounding="stochastic", seed=7)
    p = (y == 0.5).mean()
    assert abs(p - 0.6) < 6 * np.sqrt(0.6 * 0.4 / n)
    assert abs(y.mean() - 0.3) < 6 * 0.5 * np.sqrt(0.6 * 0.4 / n)


def test_reproducible_from_seed_and_generator():
    x = torch.randn(10000)
    a = lowbit.quantize(x, "fp8_e5m2", rounding="stochastic", seed=3)
    b = lowbit.quantize(x, "fp8_e5m2", rounding="stochastic", seed=3)
    c = lowbit.quantize(x, "fp8_e5m2", rounding="stochastic", seed=4)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    d = lowbit.quantize(x, "fp8_e5m2", rounding="stochastic", generator=g1)
    e = lowbit.quantize(x, "fp8_e5m2", rounding="stochastic", generator=g2)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(d, e)


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "mx6", "mxint8"])
def test_scaled_formats_stochastic(name):
    fmt = lowbit.get_format(name)
    x = np.random.default_rng(2).standard_normal(4096).astype(np.float32)
    a, b = fmt.quantize(x, rounding="stochastic", seed=5), fmt.quantize(x, rounding="stochastic", seed=5)
    np.testing.assert_array_equal(a, b)
    down, up = fmt.quantize(x, rounding="down"), fmt.quantize(x, rounding="up")
    assert ((a == down) | (a == up)).all()
    np.testing.assert_array_equal(fmt.encode(x, rounding="stochastic", seed=5).decode(), a)


def test_seed_only_with_stochastic():
    with pytest.raises(ValueError, match="seed and generator apply only to rounding='stochastic'"):
        lowbit.quantize(np.ones(3), "fp8_e4m3", seed=1)
    with pytest.raises(ValueError, match="either seed or generator"):
        lowbit.quantize(np.ones(3), "fp8_e4m3", rounding="stochastic", seed=1, generator=torch.Generator())
