"""AWQ (lowbit.emulate.methods.awq) against the reference algorithm written
here in float64 from the paper's equations (with this test's own int4
group rounding); never above round to nearest's error (alpha = 0 is in the
grid and is round to nearest); the unquantized model's outputs unchanged
(Llama, GPT-2); exact undo."""

import copy
import re

import pytest
import torch

from helpers import small_gpt2, small_llama
from lowbit import get_format
from lowbit.emulate import Observer, QuantSpec, quantize_model, restore_model
from lowbit.emulate.methods import awq, changes
from lowbit.emulate.methods.activation_aware import awq_scales

INT4_GROUPS = QuantSpec(weight="int4", observers={"weight": Observer("absmax", "group", group_size=16)})
MXFP4 = QuantSpec(weight="mxfp4")


def int4_groups(w):
    """Round to nearest int4 in groups of 16 input features, scale max|w| / 7 (written here, not lowbit's)."""
    groups = w.reshape(w.shape[0], -1, 16)
    amax = groups.abs().amax(-1, keepdim=True)
    scale = torch.where(amax > 0, amax / 7, torch.ones_like(amax))
    return (torch.clamp(torch.round(groups / scale), -8, 7) * scale).reshape(w.shape)


def mxfp4(w):
    return get_format("mxfp4").quantize(w, axis=1)


def reference_awq(x_all, x_search, weights, quantize, grid=20):
    """The reference search: s = mean|x|^a clamped at 1e-4, normalised by sqrt(max s * min s), for
    a = 0, 1/grid, ..., (grid-1)/grid; the first a with the least squared error of the group's outputs."""
    mean = x_all.double().abs().mean(0)
    best = None
    for step in range(grid):
        a = step / grid
        s = torch.clamp(mean ** a, min=1e-4)
        s = (s / torch.sqrt(s.max() * s.min())).float()
        error = sum(float(((x_search.double() @ (w.double() - quantize(w * s).double() / s.double()).T) ** 2).sum())
                    for w in weights)
        if best is None or error < best[0]:
            best = (error, a, s)
    return best


class TwoHeads(torch.nn.Module):
    """An RMSNorm feeding two layers (as Llama's gate and up projections)."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.RMSNorm(64, eps=1e-6)
        self.a, self.b = torch.nn.Linear(64, 48), torch.nn.Linear(64, 32)

    def forward(self, x):
        h = self.norm(x)
        return torch.cat([self.a(h), self.b(h)], -1)


def two_heads():
    torch.manual_seed(0)
    model = TwoHeads()
    with torch.no_grad():
        model.norm.weight.copy_(torch.rand(64) + 0.5)
    return model


def salient_batches(n=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        x = torch.randn(4, 16, 64, generator=generator)
        x[..., 5:9] *= 12  # salient input channels
        batches.append(x)
    return batches


def alpha_of(change):
    return float(re.match(r"alpha ([0-9.]+)", change.detail).group(1))


@pytest.mark.parametrize("spec, quantize", [(INT4_GROUPS, int4_groups), (MXFP4, mxfp4)], ids=["int4_g16", "mxfp4"])
def test_the_search_is_the_reference_one(spec, quantize):
    model = two_heads()
    original = copy.deepcopy(model)
    batches = salient_batches()
    awq(model, spec, batches, samples=100)
    x = torch.cat(batches).reshape(-1, 64).double()
    h = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * original.norm.weight.detach().double()  # RMSNorm
    _, alpha, s = reference_awq(h, h[:100].float(), [original.a.weight.detach(), original.b.weight.detach()],
                                    quantize)
    rows = {c.layer: c for c in changes(model)}
    assert alpha > 0 and alpha_of(rows["a"]) == alpha_of(rows["b"]) == alpha
    for name in ("a", "b"):
        assert torch.allclose(getattr(model, name).weight, getattr(original, name).weight * s, rtol=1e-6, atol=0)
        assert "folded into norm (RMSNorm)" in rows[name].detail
    assert torch.allclose(model.norm.weight, original.norm.weight / s, rtol=1e-6, atol=0)


@pytest.mark.parametrize("spec", [INT4_GROUPS, MXFP4], ids=["int4_g16", "mxfp4"])
def test_the_error_is_never_above_round_to_nearest(spec):
    model = two_heads()
    batches, test = salient_batches(), salient_batches(1, seed=7)[0]
    x = torch.cat(batches)

    def error(m, data):
        with torch.no_grad():
            return float(((quantize_model(m, spec, inplace=False)(data) - model(data)).double() ** 2).sum())

    smoothed = awq(model, spec, batches, inplace=False, samples=x.numel() // 64)  # search on every row
    # the group's output error on the calibration rows is the search's objective: alpha = 0 is round to nearest
    assert error(smoothed, x) <= error(model, x) * (1 + 1e-6)
    assert error(smoothed, x) < 0.9 * error(model, x)  # salient channels: a real gain
    assert error(smoothed, test) < error(model, test)  # and on rows it never saw
    for row in changes(smoothed):
        assert row.error_after < row.error_before


def test_alpha_zero_is_in_the_grid_and_is_round_to_nearest():
    means = torch.tensor([0.0, 1e-9, 3.0, 7e5], dtype=torch.float64)
    assert torch.equal(awq_scales(means, 0.0), torch.ones(4, dtype=torch.float64))
    model = two_heads()
    with torch.no_grad():
        model.norm.weight.fill_(1.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    signs = torch.randint(0, 2, (4, 16, 64), generator=torch.Generator().manual_seed(3)) * 2.0 - 1
    awq(model, INT4_GROUPS, [signs], grid=5)  # |h| = 1 everywhere: s = 1 for every alpha, the first (0) wins
    rows = changes(model)
    assert [alpha_of(r) for r in rows] == [0, 0]
    assert all(r.detail.endswith("round to nearest: left unscaled") and r.error_after == r.error_before
               for r in rows)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())


def llama():
    return small_llama()


def gpt2():
    return small_gpt2()


@pytest.mark.parametrize("build", [llama, gpt2])
def test_transformers_outputs_unchanged_and_restored_bit_for_bit(build):
    model = build()
    batches = [torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def outputs():
        with torch.no_grad():
            out = model(batches[1])
            return out.logits if hasattr(out, "logits") else out.last_hidden_state

    reference = outputs()
    awq(model, MXFP4, batches)
    after = outputs()
    assert float((after - reference).norm() / reference.norm()) < 1e-5
    rows = changes(model)
    assert len(rows) == len([m for m in model.modules() if type(m).__name__ in ("Linear", "Conv1D")])
    assert all(r.error_after <= r.error_before * 1.1 for r in rows)  # per layer: the group's sum is what is searched
    assert any("folded into" in r.detail for r in rows) and any("pre-hook" in r.detail for r in rows)
    model = restore_model(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(outputs(), reference)


def test_bad_arguments_are_refused():
    model = two_heads()
    batches = salient_batches(1)
    for grid in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="grid"):
            awq(model, MXFP4, batches, grid=grid)
    with pytest.raises(ValueError, match="no linear layer"):
        awq(model, QuantSpec(input="int8_rowwise"), batches)
    with pytest.raises(TypeError, match="inplace"):
        awq(model, MXFP4, batches, inplace="no")
    with pytest.raises(ValueError, match="never reached"):
        awq(model, MXFP4, batches, forward=lambda m, x: m.a(x))
    assert not changes(model)
