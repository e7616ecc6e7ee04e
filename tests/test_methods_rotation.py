"""Rotations (lowbit.emulate.methods.rotate): the rotation recovered from
the changed weights is a signed Hadamard matrix (scipy's, here) or a
block-diagonal one; exact orthogonality; the unquantized model's outputs
unchanged (Sequential, Llama, GPT-2 with Conv1D); folds into a producing
Linear; lower error on outlier features; exact undo."""

import copy

import numpy as np
import pytest
import scipy.linalg
import torch

from helpers import small_gpt2, small_llama
from lowbit.emulate import QuantSpec, quantize_model, restore_model
from lowbit.emulate.methods import changes, rotate
from lowbit.emulate.methods.folding import Rotation
from lowbit.emulate.methods.rotation import hadamard

SPEC = QuantSpec(input="mxfp4", weight="mxfp4")


def batches_of(features, n=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 8, features, generator=generator) for _ in range(n)]


def recovered(before, after):
    """R with W_after = W_before R, from a square invertible W (float64)."""
    return torch.linalg.solve(before.double(), after.double())


def signed_block_hadamard(features, size):
    blocks = scipy.linalg.block_diag(*[scipy.linalg.hadamard(size)] * (features // size))
    return torch.from_numpy(blocks / np.sqrt(size))


@pytest.mark.parametrize("size", [1, 2, 4, 8, 32, 128])
def test_hadamard_is_sylvesters_and_orthogonal(size):
    h = hadamard(size)
    assert torch.equal(h * size ** 0.5, torch.from_numpy(scipy.linalg.hadamard(size)).double())
    assert (h @ h.T - torch.eye(size, dtype=torch.float64)).abs().max() < 1e-14


@pytest.mark.parametrize("features, size", [(64, 64), (48, 16), (40, 8)])
def test_the_rotation_is_signed_blocks_of_hadamard(features, size):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(features, features))
    weight = model[0].weight.detach().clone()
    rotate(model, SPEC, batches_of(features))
    r = recovered(weight, model[0].weight)
    expected = signed_block_hadamard(features, size)
    signs = torch.sign(torch.diagonal(r @ expected.T))
    assert set(signs.tolist()) <= {-1.0, 1.0}
    assert torch.allclose(r, signs[:, None] * expected, atol=2e-5)  # R = diag(d) blockdiag(H)
    assert (r @ r.T - torch.eye(features, dtype=torch.float64)).abs().max() < 1e-4  # float32 weights
    (row,) = changes(model)
    assert ("Hadamard 64;" if size == features else f"{features // size} Hadamard blocks of {size};") in row.detail


def test_a_rotation_folds_into_a_producing_linear_and_the_model_stays():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 16))
    original = copy.deepcopy(model)
    rotate(model, SPEC, batches_of(64), rules={"0": None}, seed=3)  # layer 0 is not rotated, only takes R^T
    w0, w0r = original[0].weight.double(), model[0].weight.double()
    rt = torch.linalg.solve(w0.T, w0r.T).T  # W0' = R^T W0
    assert (rt @ rt.T - torch.eye(64, dtype=torch.float64)).abs().max() < 1e-4
    assert torch.allclose(rt @ original[0].bias.double(), model[0].bias.double(), atol=1e-5)  # b0' = R^T b0
    assert torch.allclose(original[1].weight.double() @ rt.T, model[1].weight.double(), atol=1e-5)  # W1' = W1 R
    assert not any(m._forward_pre_hooks for m in model)
    (row,) = changes(model)
    assert row.layer == "1" and "R^T folded into 0 (Linear)" in row.detail
    test = batches_of(64, 1, seed=4)[0]
    assert torch.allclose(model(test), original(test), rtol=1e-4, atol=1e-5)


def llama():
    return small_llama(intermediate_size=96)  # not a power of two: block-diagonal rotations


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
    rotate(model, QuantSpec(input="int8_rowwise", weight="int8_rowwise"), batches)
    assert float((outputs() - reference).norm() / reference.norm()) < 1e-5
    details = [c.detail for c in changes(model)]
    if build is llama:  # intermediate 96 = 3 x 32: block-diagonal
        assert sum("3 Hadamard blocks of 32" in d for d in details) == 2
    model = restore_model(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())
    assert torch.equal(outputs(), reference)


@pytest.mark.parametrize("spec", [QuantSpec(input="mxfp4", weight="mxfp4"),
                                  QuantSpec(input="int8_rowwise", weight="int8_rowwise")], ids=["mxfp4", "w8a8"])
def test_rotation_lowers_the_error_on_outlier_features(spec):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LayerNorm(64), torch.nn.Linear(64, 64))
    with torch.no_grad():
        model[0].weight[:3] *= 30
    batches, test = batches_of(64, 3), batches_of(64, 1, seed=9)[0]
    rotated = rotate(model, spec, batches, inplace=False)

    def error(m):
        with torch.no_grad():
            reference = model(test)
            return float((quantize_model(m, spec, inplace=False)(test) - reference).norm() / reference.norm())

    assert error(rotated) < 0.8 * error(model)
    (row,) = changes(rotated)
    assert row.error_after < row.error_before


def test_seeds_reproduce_and_differ():
    def rotated(seed):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 8))
        return rotate(model, SPEC, batches_of(32), seed=seed)[0].weight

    assert torch.equal(rotated(5), rotated(5)) and not torch.equal(rotated(5), rotated(6))


def test_orthogonality_is_checked_and_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="not orthogonal"):
        Rotation(torch.ones(4), hadamard(4) * 1.001)
    with pytest.raises(ValueError, match="signs"):
        Rotation(torch.full((4,), 0.5), hadamard(4))
    with pytest.raises(ValueError, match="divides"):
        Rotation(torch.ones(6), hadamard(4))
    model = torch.nn.Sequential(torch.nn.Linear(48, 8))
    weight = model[0].weight.detach().clone()
    for block in (3, 0, 2.0):
        with pytest.raises(ValueError, match="power of two"):
            rotate(model, SPEC, batches_of(48), block=block)
    with pytest.raises(ValueError, match="does not divide the input width of 0"):
        rotate(model, SPEC, batches_of(48), block=32)
    with pytest.raises(TypeError, match="seed"):
        rotate(model, SPEC, batches_of(48), seed="1")
    assert torch.equal(model[0].weight, weight) and not changes(model)
    rotate(model, SPEC, batches_of(48), block=8)
    assert "6 Hadamard blocks of 8" in changes(model)[0].detail
