"""QuantSpec, the quantized Linear (forward and the re-blocked backward,
derived here from lowbit.quantize and plain matmuls), and model patching."""

import re

import pytest
import torch

import lowbit
from lowbit.emulate import QuantLinear, QuantSpec, quantize_model, restore_model, summary, summary_table
from lowbit.emulate import modules as modules_module

FULL = QuantSpec(input="mxfp8_e4m3", weight="mxfp4", output="bf16", grad_input="mxfp8_e5m2",
                 grad_weight="fp8_e4m3", grad_output="mxfp8_e5m2")


def q(t, fmt, spec, axis=-1):
    """t rounded to fmt with the spec's rounding; scaled formats blocked
    along axis, MX formats with the spec's scale rule."""
    if fmt is None:
        return t
    policy = {"rounding": spec.rounding}
    if isinstance(fmt, lowbit.formats.ScaledFormat):
        policy["axis"] = axis
    if isinstance(fmt, lowbit.BlockFormat) and fmt.scale.man_bits == 0:
        policy["scale_rule"] = spec.scale_rule
    return lowbit.quantize(t, fmt, **policy)


def expected_linear(x, w, b, upstream, spec):
    """The spec's semantics written out: forward operands blocked along the
    reduction (in-features) axis; backward operands re-blocked along the
    output features (input gradient) and the tokens (weight gradient)."""
    # F.linear adds the bias inside its product, as the layer does (added outside, it could round differently)
    y = q(torch.nn.functional.linear(q(x, spec.input, spec), q(w, spec.weight, spec, axis=1), b), spec.output, spec)
    g = q(upstream, spec.grad_output, spec)
    grad_x = q(g @ q(w, spec.weight, spec, axis=0), spec.grad_input, spec)
    rows, tokens = upstream.reshape(-1, upstream.shape[-1]), x.reshape(-1, x.shape[-1])
    grad_w = q(q(rows, spec.grad_output, spec, axis=0).T @ q(tokens, spec.input, spec, axis=0), spec.grad_weight, spec)
    return y, grad_x, grad_w, rows.sum(0)


@pytest.mark.parametrize("spec", [FULL, QuantSpec(weight="nvfp4", input="mx6"),
                                  QuantSpec(input="int8", weight="mxint8", rounding="toward_zero"),
                                  QuantSpec(input="mxfp4", weight="mxfp4", scale_rule="rceil")], ids=str)
def test_forward_and_backward_follow_the_spec(spec):
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 40)  # 96 = 3 blocks of 32; 40 output features: a padded block in backward
    x = torch.randn(2, 5, 96, requires_grad=True)
    upstream = torch.randn(2, 5, 40)
    y = QuantLinear(layer, spec)(x)
    y.backward(upstream)
    ey, egx, egw, egb = expected_linear(x.detach(), layer.weight.detach(), layer.bias.detach(), upstream, spec)
    assert torch.equal(y, ey)
    assert torch.equal(x.grad, egx) and torch.equal(layer.weight.grad, egw) and torch.equal(layer.bias.grad, egb)


def test_an_empty_spec_is_the_plain_linear():
    torch.manual_seed(1)
    layer = torch.nn.Linear(32, 8)
    x1, x2 = (torch.randn(4, 32).requires_grad_() for _ in range(2))
    x2.data.copy_(x1.data)
    QuantLinear(layer, QuantSpec())(x1).sum().backward()
    w_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    layer(x2).sum().backward()
    assert torch.equal(x1.grad, x2.grad) and torch.equal(w_grad, layer.weight.grad)


def test_inference_caches_the_rounded_weight_until_it_changes(monkeypatch):
    layer = QuantLinear(torch.nn.Linear(64, 16), QuantSpec(weight="mxfp4", input="mxfp8_e4m3"))
    calls = []
    real = modules_module.round_to
    def counted(t, fmt, axis, spec):
        calls.append(fmt)
        return real(t, fmt, axis, spec)

    monkeypatch.setattr(modules_module, "round_to", counted)
    x = torch.randn(3, 64)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first)
        assert [str(f) for f in calls].count("mxfp4") == 1
        layer.weight.mul_(2)  # an in-place update: rounded again
        layer(x)
        assert [str(f) for f in calls].count("mxfp4") == 2
    expected = torch.nn.functional.linear(lowbit.quantize(x, "mxfp8_e4m3"),
                                          lowbit.quantize(layer.weight.detach(), "mxfp4"), layer.bias)
    with torch.no_grad():
        assert torch.equal(layer(x), expected)


def model():
    torch.manual_seed(2)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                               torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU()),
                               torch.nn.Linear(128, 8))


def test_quantize_model_follows_rules_and_keeps_the_state_dict():
    net = model()
    keys = list(net.state_dict())
    spec, head = QuantSpec(input="mxfp8_e4m3", weight="mxfp4"), QuantSpec(weight="fp8_e4m3")
    quantize_model(net, spec, rules={r"3": head, r"2\..*": None})
    assert isinstance(net[0], QuantLinear) and net[0].spec == spec
    assert type(net[2][0]) is torch.nn.Linear
    assert net[3].spec == head
    assert list(net.state_dict()) == keys
    assert [row["layer"] for row in summary(net)] == ["0", "3"]
    table = summary_table(net)
    assert table.splitlines()[0].split() == ["layer", "type", "input", "weight"]
    assert re.search(r"^3\s+Linear\s+-\s+fp8_e4m3$", table, flags=re.M)
    by_type = quantize_model(model(), None, rules={torch.nn.Linear: head})
    assert all(isinstance(m, QuantLinear) for m in (by_type[0], by_type[2][0], by_type[3]))


def test_restore_model_gives_bit_identical_outputs():
    net = model()
    x = torch.randn(7, 64)
    before = net(x)
    originals = [net[0], net[2][0], net[3]]
    patched = quantize_model(net, QuantSpec(input="mx6", weight="mxfp4"))
    assert not torch.equal(patched(x), before)
    restore_model(patched)
    assert [net[0], net[2][0], net[3]] == originals and torch.equal(net(x), before)


def test_inplace_false_leaves_the_model_alone():
    net = model()
    copy = quantize_model(net, QuantSpec(weight="mxfp4"), inplace=False)
    assert type(net[0]) is torch.nn.Linear and isinstance(copy[0], QuantLinear)
    assert copy[0].weight is not net[0].weight and torch.equal(copy[0].weight, net[0].weight)


def test_training_with_mxfp8_activations_and_mxfp4_weights_learns():
    torch.manual_seed(3)
    x = torch.randn(256, 64)
    target = torch.sin(x[:, :8] * 2) + x[:, 8:16] ** 2
    net = quantize_model(model(), QuantSpec(input="mxfp8_e4m3", weight="mxfp4", grad_output="mxfp8_e5m2"))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_compiled_quantized_model_matches_eager():
    net = quantize_model(model(), QuantSpec(input="mxfp8_e4m3", weight="mxfp4", grad_output="mxfp8_e5m2"))
    x = torch.randn(9, 64)
    eager = net(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    compiled = torch.compile(net, backend="aot_eager")(x)
    compiled.sum().backward()
    assert torch.equal(eager, compiled)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters()))
    with torch.no_grad():
        assert torch.equal(torch.compile(net, backend="aot_eager")(x), eager)


def test_spec_errors():
    with pytest.raises(TypeError, match="inputs"):
        QuantSpec(inputs="mxfp4")
    with pytest.raises(ValueError, match="unknown format 'mxfp5'"):
        QuantSpec(weight="mxfp5")
    with pytest.raises(ValueError, match="rounding must be one of"):
        QuantSpec(weight="mxfp4", rounding="nearest")
    with pytest.raises(ValueError, match="needs an MX block format"):
        QuantSpec(weight="nvfp4", scale_rule="ceil")
    with pytest.raises(TypeError, match="QuantLinear wraps Linear, got Conv1d"):
        QuantLinear(torch.nn.Conv1d(1, 1, 1), QuantSpec())
    with pytest.raises(TypeError, match="spec must be a QuantSpec"):
        quantize_model(model(), "mxfp4")
    with pytest.raises(TypeError, match="rule keys are name patterns"):
        quantize_model(model(), QuantSpec(), rules={3: None})
    with pytest.raises(ValueError, match="not a valid regular expression"):
        quantize_model(model(), QuantSpec(), rules={"(": None})
    with pytest.raises(TypeError, match="give a QuantSpec or None"):
        quantize_model(model(), QuantSpec(), rules={"0": "mxfp4"})


def test_backward_formulas_pass_gradcheck():
    """With nothing rounded, every quantized product is plain linear algebra:
    gradcheck (finite differences in float64) checks the hand-written
    backward passes, transposes, reductions and broadcasting included."""
    from lowbit.emulate import quantized_conv, quantized_linear, quantized_matmul

    plain = QuantSpec()
    double = {"dtype": torch.float64, "requires_grad": True}
    torch.manual_seed(5)
    x, w, b = torch.randn(2, 3, 6, **double), torch.randn(4, 6, **double), torch.randn(4, **double)
    assert torch.autograd.gradcheck(lambda *t: quantized_linear(*t, plain), (x, w, b))
    a, m = torch.randn(3, 1, 2, 5, **double), torch.randn(2, 5, 3, **double)
    assert torch.autograd.gradcheck(lambda *t: quantized_matmul(*t, plain), (a, m))
    image, kernel = torch.randn(2, 4, 5, 6, **double), torch.randn(6, 2, 3, 2, **double)
    assert torch.autograd.gradcheck(lambda i, k: quantized_conv(i, k, b[:2].repeat(3), plain, stride=2, padding=1,
                                                                groups=2), (image, kernel))
    signal, transposed = torch.randn(1, 4, 7, **double), torch.randn(4, 3, 3, **double)
    assert torch.autograd.gradcheck(lambda i, k: quantized_conv(i, k, None, plain, stride=2, transposed=True,
                                                                output_padding=1), (signal, transposed))
