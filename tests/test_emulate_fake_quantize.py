"""fake_quantize: forward = quantize, straight-through backward, the op's
registration (opcheck), and torch.compile."""

import numpy as np
import pytest
import torch

import lowbit
from lowbit.emulate import fake_quantize
from lowbit.emulate.fake_quant import _fake_quantize_op, format_key, format_of

E3M4 = lowbit.FloatFormat(3, 4, specials="fn")
USER_BLOCK = lowbit.BlockFormat(E3M4, block_size=16)


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "int4", "mxfp4", "nvfp4", "mx6", USER_BLOCK], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_is_quantize(fmt, dtype):
    x = (torch.randn(6, 64) * 4).to(dtype)
    scaled = isinstance(lowbit.get_format(fmt), lowbit.formats.ScaledFormat)
    for axis in (-1, 0):  # element formats take no axis: fake_quantize ignores it for them
        expected = lowbit.quantize(x, fmt, **({"axis": axis} if scaled else {}))
        np.testing.assert_array_equal(fake_quantize(x, fmt, axis=axis).float().numpy(), expected.float().numpy())
    q = fake_quantize(x, fmt, rounding="stochastic", seed=3)
    assert q.dtype == dtype and torch.equal(q, lowbit.quantize(x, fmt, rounding="stochastic", seed=3))


def test_identity_ste_passes_the_gradient_unchanged():
    x = torch.tensor([0.3, 500.0, -2.0, 1e-6, float("inf")], requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    fake_quantize(x, "fp8_e4m3").backward(upstream)
    assert torch.equal(x.grad, upstream)


def test_masked_ste_zeroes_the_gradient_where_the_forward_clipped():
    # fp8_e4m3 saturates beyond 448: 500 and -1e9 and +inf are clipped; 448 + 15 rounds to 448 but
    # lies beyond the grid's largest magnitude, so it counts as clipped too
    x = torch.tensor([0.3, 500.0, -1e9, 448.0, 463.0, float("inf"), 1e-6], requires_grad=True)
    upstream = torch.arange(1.0, 8.0)
    fake_quantize(x, "fp8_e4m3", ste="masked").backward(upstream)
    assert x.grad.tolist() == [1.0, 0.0, 0.0, 4.0, 0.0, 0.0, 7.0]


def test_masked_ste_in_blocks():
    """mxfp4 (floor rule): amax 7 puts the block scale at 1, so elements above
    6 are clipped to 6 while the rest of the block keeps its gradient."""
    row = torch.zeros(32)
    row[:4] = torch.tensor([7.0, 6.5, 6.0, -1.25])
    x = row.clone().requires_grad_()
    fake_quantize(x, "mxfp4", ste="masked").backward(torch.ones(32))
    expected = torch.ones(32)
    expected[:2] = 0
    assert torch.equal(x.grad, expected)


def test_gradient_format():
    x = torch.randn(4, 64, requires_grad=True)
    upstream = torch.randn(4, 64)
    fake_quantize(x, "mxfp4", grad_format="mxfp8_e5m2", axis=0).backward(upstream)
    assert torch.equal(x.grad, lowbit.quantize(upstream, "mxfp8_e5m2", axis=0))
    y = torch.tensor([1.0, 1000.0], requires_grad=True)
    fake_quantize(y, "fp8_e4m3", ste="masked", grad_format="int4", grad_rounding="toward_zero").backward(
        torch.tensor([2.7, 2.7]))
    assert y.grad.tolist() == [2.0, 0.0]  # masked first, then rounded toward zero in int4


def test_format_keys_name_every_format_without_state():
    assert format_key("fp8_e4m3") == "fp8_e4m3" and format_key(lowbit.get_format("e4m3")) == "fp8_e4m3"
    for fmt in (E3M4, USER_BLOCK, lowbit.IntFormat(6, frac_bits=2), lowbit.MicroexponentFormat(3, 8, 4)):
        assert format_of(format_key(fmt)) == fmt


def test_op_registration():
    x = torch.randn(4, 64, requires_grad=True)
    for args in [(x, format_key("mxfp4"), -1, "nearest_even", None, None, "masked", format_key("fp8_e5m2"),
                  "nearest_even"),
                 (x.detach().to(torch.bfloat16).requires_grad_(), format_key(USER_BLOCK), 0, "toward_zero",
                  None, None, "identity", None, "nearest_even")]:
        torch.library.opcheck(_fake_quantize_op, args)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_matches_eager(backend):
    def f(t):  # elementwise around the op: a compiled reduction could add in another order
        return fake_quantize(t * 2, "mxfp4", ste="masked", grad_format=USER_BLOCK) * 0.5 + 1

    torch.manual_seed(0)
    x = torch.randn(16, 32)
    eager_x, compiled_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(16, 32)
    eager = f(eager_x)
    eager.backward(upstream)
    compiled = torch.compile(f, fullgraph=True, backend=backend)(compiled_x)
    compiled.backward(upstream)
    assert torch.equal(eager, compiled) and torch.equal(eager_x.grad, compiled_x.grad)


def test_bad_arguments():
    with pytest.raises(TypeError, match="torch tensor"):
        fake_quantize(np.zeros(3, np.float32), "mxfp4")
    with pytest.raises(TypeError, match="floating-point tensor"):
        fake_quantize(torch.zeros(3, dtype=torch.int32), "mxfp4")
    with pytest.raises(ValueError, match="ste must be one of identity, masked"):
        fake_quantize(torch.zeros(3), "mxfp4", ste="clip")
    with pytest.raises(ValueError, match="unknown format"):
        fake_quantize(torch.zeros(3), "mxfp5")
    with pytest.raises(ValueError, match="rounding"):
        fake_quantize(torch.zeros(3), "int8", rounding="nearest")
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        fake_quantize(torch.zeros(3, 4), "mxfp4", axis=2)


@pytest.mark.parametrize("fmt", ["mxfp4", "nvfp4", "mx6"])
def test_other_axes_match_quantize(fmt):
    """On the CPU the op moves a blocked axis last for the fast kernels: the
    blocks, their order and the stochastic stream must not change."""
    x = torch.randn(3, 40, 50)
    for t, axis in ((x, 1), (x, 0), (x.transpose(0, 2), 1), (x[:, ::2], -2)):
        for rounding, seed in (("nearest_even", None), ("stochastic", 7), ("up", None)):
            out = fake_quantize(t, fmt, axis=axis, rounding=rounding, seed=seed)
            assert torch.equal(out, lowbit.quantize(t, fmt, axis=axis, rounding=rounding, seed=seed))
            assert out.stride() == torch.empty_like(t).stride()
