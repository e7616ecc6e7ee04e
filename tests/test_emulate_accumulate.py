"""Limited-precision accumulation: a loop over K chunks written out here,
on integer operands whose chunk sums float32 holds exactly (so the order in
which torch adds inside a chunk cannot matter)."""

import pytest
import torch

import lowbit
from lowbit.emulate import QuantLinear, QuantSpec, emulating, quantized_conv, quantized_linear, quantized_matmul


def integers(*shape, seed):
    return torch.randint(-8, 9, shape, generator=torch.Generator().manual_seed(seed)).float()


def accumulated(a, b, fmt, chunk, rounding="nearest_even"):
    """acc = Q(p_0); acc = Q(acc + Q(p_c)), chunk by chunk over K."""
    total = None
    for start in range(0, a.shape[-1], chunk):
        partial = lowbit.quantize(a[..., start:start + chunk] @ b[start:start + chunk], fmt, rounding=rounding)
        total = partial if total is None else lowbit.quantize(total + partial, fmt, rounding=rounding)
    return total


@pytest.mark.parametrize("fmt, chunk", [("bf16", 32), ("fp8_e4m3", 16), ("fp16", 7)])
def test_matmul_accumulates_chunk_by_chunk(fmt, chunk):
    a, b = integers(5, 100, seed=0), integers(100, 6, seed=1)
    spec = QuantSpec(accumulate=fmt, accumulate_chunk=chunk)
    result = quantized_matmul(a, b, spec)
    assert torch.equal(result, accumulated(a, b, fmt, chunk))
    if fmt == "fp8_e4m3":
        assert not torch.equal(result, a @ b)  # a narrow accumulator loses the low bits


def test_a_wide_accumulator_changes_nothing():
    a, b = integers(3, 4, 96, seed=2), integers(96, 5, seed=3)
    assert torch.equal(quantized_matmul(a, b, QuantSpec(accumulate="fp32")), a @ b)


def test_linear_accumulates_then_adds_the_bias():
    x, w, bias = integers(2, 3, 64, seed=4), integers(10, 64, seed=5), integers(10, seed=6)
    spec = QuantSpec(accumulate="fp8_e4m3", accumulate_chunk=16, rounding="toward_zero")
    expected = accumulated(x.reshape(-1, 64), w.T, "fp8_e4m3", 16, "toward_zero").reshape(2, 3, 10) + bias
    assert torch.equal(quantized_linear(x, w, bias, spec), expected)
    layer = torch.nn.Linear(64, 10)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(bias)
        assert torch.equal(QuantLinear(layer, spec)(x), expected)  # the cached-weight path too
    with emulating(spec):
        assert torch.equal(torch.nn.functional.linear(x, w, bias), expected)


def test_accumulate_errors():
    with pytest.raises(ValueError, match="accumulate must be an element format"):
        QuantSpec(accumulate="mxfp8_e4m3")
    with pytest.raises(ValueError, match="accumulate_chunk must be a positive int"):
        QuantSpec(accumulate="bf16", accumulate_chunk=0)
    with pytest.raises(ValueError, match="convolutions accumulate in full precision"):
        quantized_conv(torch.randn(1, 2, 5), torch.randn(3, 2, 3), None, QuantSpec(accumulate="bf16"))
    assert "accumulate=bf16 every 32" in str(QuantSpec(weight="mxfp4", accumulate="bf16"))
