"""Quantized convolutions and embeddings: forward and backward against
torch's own convolutions and autograd on operands rounded by lowbit."""

import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit.emulate import QuantConv, QuantEmbedding, QuantSpec, emulating, quantize_model, restore_model, summary

SPEC = QuantSpec(input="mxfp8_e4m3", weight="mxfp4", output="bf16", grad_input="mxfp8_e5m2",
                 grad_weight="fp8_e4m3", grad_output="mxfp8_e5m2")


def q(t, fmt, axis):
    if fmt is None:
        return t
    if isinstance(fmt, lowbit.formats.ElementFormat):
        return lowbit.quantize(t, fmt)
    return lowbit.quantize(t, fmt, axis=axis)


def qg(t, fmt, axis, groups):
    """q along a channel axis split into groups: blocks within each group."""
    if fmt is None or groups == 1:
        return q(t, fmt, axis)
    return q(t.unflatten(axis, (groups, -1)), fmt, axis + 1).flatten(axis, axis + 1)


def vjp(op, x, w, upstream, wrt):
    """The gradient of the bilinear op(x, w) with respect to x or w (it does
    not depend on the other operand's value, only on the rounded one given)."""
    x, w = x.detach().requires_grad_(wrt == "x"), w.detach().requires_grad_(wrt == "w")
    return torch.autograd.grad(op(x, w), x if wrt == "x" else w, upstream)[0]


torch.manual_seed(10)  # the layers' weights, whatever ran before this module was imported
CASES = [
    (torch.nn.Conv1d(40, 24, 3, stride=2, padding=1), (2, 40, 17)),
    (torch.nn.Conv2d(8, 36, (3, 2), dilation=(1, 2), groups=4, bias=False), (3, 8, 9, 10)),
    (torch.nn.Conv3d(6, 8, 2, padding="same"), (1, 6, 5, 6, 7)),
    (torch.nn.ConvTranspose1d(40, 12, 4, stride=2, padding=1, output_padding=1), (2, 40, 9)),
    (torch.nn.ConvTranspose2d(16, 8, 3, stride=2, groups=2), (2, 16, 5, 6)),
]


@pytest.mark.parametrize("conv, shape", CASES, ids=lambda c: type(c).__name__ if isinstance(c, torch.nn.Module) else "")
def test_convolutions_follow_the_spec(conv, shape):
    torch.manual_seed(0)
    conv.weight.grad = None
    transposed = conv.transposed
    x = torch.randn(shape, requires_grad=True)
    quantized = QuantConv(conv, SPEC)
    y = quantized(x)
    upstream = torch.randn(y.shape)
    y.backward(upstream)
    xd, w = x.detach(), conv.weight.detach()
    in_axis, out_axis = (0, 1) if transposed else (1, 0)

    def op(a, b, bias=None):  # torch's own convolution of the module's geometry
        if not transposed:
            return conv._conv_forward(a, b, bias)
        transpose = F.conv_transpose1d if a.dim() == 3 else F.conv_transpose2d
        return transpose(a, b, bias, conv.stride, conv.padding, conv.output_padding, conv.groups, conv.dilation)

    # the bias goes into the convolution, as in the layer: added outside it could round differently
    bias = None if conv.bias is None else conv.bias.detach()
    groups = conv.groups  # a convolution sums over the channels of one group: blocks run within groups
    w_in = qg(w, SPEC.weight, 0, groups) if transposed else q(w, SPEC.weight, 1)
    w_out = q(w, SPEC.weight, 1) if transposed else qg(w, SPEC.weight, 0, groups)
    expected = q(op(qg(xd, SPEC.input, 1, groups), w_in, bias), SPEC.output, 1)
    assert torch.equal(y, expected)
    grad_x = vjp(op, xd, w_out, qg(upstream, SPEC.grad_output, 1, groups), "x")
    grad_w = vjp(op, q(xd, SPEC.input, 0), w, q(upstream, SPEC.grad_output, 0), "w")
    assert torch.equal(x.grad, q(grad_x, SPEC.grad_input, 1))
    assert torch.equal(conv.weight.grad, q(grad_w, SPEC.grad_weight, in_axis))
    with torch.no_grad():  # inference: the cached rounded weight gives the same result
        assert torch.equal(quantized(xd), y)


def test_an_empty_spec_is_the_plain_convolution():
    for conv, shape in CASES:
        torch.manual_seed(1)
        conv.weight.grad = None  # the module is shared with the other tests
        x = torch.randn(shape)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        out = QuantConv(conv, QuantSpec())(a)
        out.sum().backward()
        grad = conv.weight.grad.clone()
        conv.weight.grad = None
        plain = conv(b)
        plain.sum().backward()
        assert torch.allclose(out, plain, atol=1e-6) and torch.allclose(a.grad, b.grad, atol=1e-5)
        assert torch.allclose(grad, conv.weight.grad, atol=1e-4)
        conv.weight.grad = None


def test_embedding():
    torch.manual_seed(2)
    emb = torch.nn.Embedding(20, 64, padding_idx=0)
    indices = torch.tensor([[3, 0, 3, 19]])
    quantized = QuantEmbedding(emb, SPEC)
    rows = quantized(indices)
    upstream = torch.randn(1, 4, 64)
    rows.backward(upstream)
    table = q(emb.weight.detach(), SPEC.weight, 1)
    assert torch.equal(rows, q(F.embedding(indices, table), SPEC.output, -1))
    expected = torch.zeros(20, 64).index_add_(0, indices[0], upstream[0])
    expected[0] = 0  # the padding row gets no gradient
    assert torch.equal(emb.weight.grad, q(expected, SPEC.grad_weight, 1))
    assert summary(torch.nn.Sequential(quantized))[0] == {"layer": "0", "type": "Embedding", "weight": "mxfp4",
                                                          "output": "bf16", "grad_weight": "fp8_e4m3"}
    with pytest.raises(ValueError, match="max_norm"):
        QuantEmbedding(torch.nn.Embedding(4, 4, max_norm=1.0), SPEC)


def test_quantize_model_swaps_convolutions_and_embeddings_and_restores_them():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1, padding_mode="reflect"), torch.nn.ReLU(),
                              torch.nn.ConvTranspose2d(32, 4, 2, stride=2))
    x = torch.randn(2, 3, 8, 8)
    before, keys = net(x), list(net.state_dict())
    quantize_model(net, QuantSpec(input="mxfp8_e4m3", weight="mxfp4"))
    assert [row["type"] for row in summary(net)] == ["Conv2d", "ConvTranspose2d"]
    assert list(net.state_dict()) == keys and net[0].in_channels == 3
    reflected = F.pad(x, (1, 1, 1, 1), mode="reflect")
    expected = F.conv2d(lowbit.quantize(reflected, "mxfp8_e4m3", axis=1),
                        lowbit.quantize(net[0].weight.detach(), "mxfp4", axis=1), net[0].bias)
    assert torch.equal(net[0](x), expected)
    restore_model(net)
    assert torch.equal(net(x), before)


def test_the_mode_quantizes_functional_convolutions():
    torch.manual_seed(4)
    x, w = torch.randn(2, 32, 20), torch.nn.Parameter(torch.randn(16, 32, 3))  # a parameter: the weight format
    with emulating(SPEC):
        y = F.conv1d(x, w, padding="same")
        z = F.conv_transpose1d(y, torch.randn(16, 8, 3), stride=2)
    assert torch.equal(y, q(F.conv1d(q(x, SPEC.input, 1), q(w.detach(), SPEC.weight, 1), padding=1), SPEC.output, 1))
    assert z.shape == (2, 8, 41)
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        with emulating(SPEC):
            F.conv1d(x, w, stride=2, padding="same")
