"""Model-level metrics: perplexity in strided windows against a hand
computation, fidelity against the definitions of its metrics, and the
tiny LM (trained, cached, loaded)."""

import math

import numpy as np
import pytest
import torch

from lowbit.analysis import Fidelity, fidelity, perplexity, tiny_lm
from lowbit.analysis import tiny_gpt as tiny_lm_module
from lowbit.analysis.evaluation import output_tensor


class RunningMean(torch.nn.Module):
    """Two layers: an embedding, then a linear layer on the mean of the
    embeddings of every token so far. Its prediction at a position depends
    on where the window began, so a perplexity that used the wrong context
    for a token would differ."""

    def __init__(self, vocab: int = 11, width: int = 5) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, width)
        self.linear = torch.nn.Linear(width, vocab)

    def forward(self, ids):
        summed = self.embedding(ids).cumsum(dim=1)
        return self.linear(summed / torch.arange(1, ids.shape[1] + 1).unsqueeze(-1))


def hand_perplexity(model: RunningMean, ids: list[int], window: int, stride: int) -> float:
    """Token p (1 <= p < n) is scored in the first window (begin k*stride,
    end min(k*stride + window, n)) that holds it, from the tokens of that
    window before it; log-softmax by hand in float64."""
    emb = model.embedding.weight.detach().double().numpy()
    weight, bias = model.linear.weight.detach().double().numpy(), model.linear.bias.detach().double().numpy()
    nll = 0.0
    for p in range(1, len(ids)):
        k = next(k for k in range(len(ids)) if min(k * stride + window, len(ids)) > p)
        context = ids[k * stride:p]
        logits = weight @ np.mean([emb[t] for t in context], axis=0) + bias
        top = max(logits)
        nll -= logits[ids[p]] - top - math.log(sum(math.exp(v - top) for v in logits))
    return math.exp(nll / (len(ids) - 1))


@pytest.mark.parametrize("length, window, stride, batch_size", [
    (40, 8, 7, 3), (40, 8, 3, 8), (41, 8, 5, 1), (9, 8, 7, 2), (2, 2, 1, 1), (37, 16, 1, 64)])
def test_perplexity_against_a_hand_computation(length, window, stride, batch_size):
    torch.manual_seed(length + window + stride)
    model = RunningMean()
    ids = torch.randint(0, 11, (length,)).tolist()
    got = perplexity(model, ids, window=window, stride=stride, batch_size=batch_size)
    assert got == pytest.approx(hand_perplexity(model, ids, window, stride), rel=1e-5)


def test_perplexity_of_a_uniform_model_is_its_vocabulary():
    class Uniform(torch.nn.Module):
        def forward(self, ids):
            return torch.zeros(*ids.shape, 50)

    assert perplexity(Uniform(), np.arange(100) % 50, window=10) == pytest.approx(50.0)


def test_perplexity_default_stride_and_outputs_with_logits():
    torch.manual_seed(0)
    model = RunningMean()
    ids = torch.randint(0, 11, (30,))

    class Output:
        def __init__(self, logits):
            self.logits = logits

    wrapped = perplexity(model, ids, window=6, forward=lambda m, x: Output(m(x)))
    assert wrapped == perplexity(model, ids, window=6, stride=5)


def test_perplexity_keeps_the_training_flag_and_needs_no_gradients():
    model = RunningMean().train()
    model.linear.eval()
    perplexity(model, torch.arange(20) % 11, window=5)
    assert model.training and not model.linear.training and model.embedding.training


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tokens": [3], "window": 4}, ValueError, "at least 2 tokens"),
    ({"tokens": [[1, 2], [3, 4]], "window": 4}, ValueError, "1-D"),
    ({"tokens": [0.5, 1.5], "window": 4}, TypeError, "integer token ids"),
    ({"tokens": [1, 2, 3], "window": 1}, ValueError, "window must be an int of at least 2"),
    ({"tokens": [1, 2, 3], "window": 4, "stride": 4}, ValueError, "stride \\(4\\) must be less than window"),
    ({"tokens": [1, 2, 3], "window": 4, "stride": 0}, ValueError, "stride must be an int"),
    ({"tokens": [1, 2, 3], "window": 4, "batch_size": 0}, ValueError, "batch_size"),
])
def test_perplexity_refuses_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        perplexity(RunningMean(), **kwargs)


def test_perplexity_refuses_an_output_that_is_not_logits():
    with pytest.raises(ValueError, match="perplexity needs logits"):
        perplexity(torch.nn.Embedding(11, 4), [1, 2, 3, 4], window=3, forward=lambda m, x: m(x).sum(-1))


def test_fidelity_against_its_definitions():
    torch.manual_seed(1)
    reference, other = torch.nn.Linear(6, 9), torch.nn.Linear(6, 9)
    batches = [torch.randn(4, 3, 6), torch.randn(5, 6)]
    got = fidelity(reference, other, batches)
    rows_ref = np.concatenate([reference(b).detach().double().reshape(-1, 9).numpy() for b in batches])
    rows = np.concatenate([other(b).detach().double().reshape(-1, 9).numpy() for b in batches])

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    kl = np.mean([np.sum(softmax(a) * (np.log(softmax(a)) - np.log(softmax(b)))) for a, b in zip(rows_ref, rows)])
    cos = np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(rows_ref, rows)])
    assert got.rows == 17
    assert got.kl_divergence == pytest.approx(kl, rel=1e-9)
    assert got.top1_agreement == np.mean(rows_ref.argmax(1) == rows.argmax(1))
    assert got.cosine_similarity == pytest.approx(cos, rel=1e-9)
    assert got.relative_error == pytest.approx(np.linalg.norm(rows - rows_ref) / np.linalg.norm(rows_ref), rel=1e-9)
    assert fidelity(reference, reference, batches) == Fidelity(0.0, 1.0, pytest.approx(1.0), 0.0, 17)


def test_fidelity_zero_rows_and_shape_mismatch():
    zero = torch.nn.Linear(3, 4, bias=False)
    torch.nn.init.zeros_(zero.weight)
    assert fidelity(zero, zero, [torch.ones(2, 3)]).cosine_similarity == 1.0
    with pytest.raises(ValueError, match="batch 0: the model's output has shape \\(2, 5\\)"):
        fidelity(zero, torch.nn.Linear(3, 5), [torch.ones(2, 3)])
    with pytest.raises(ValueError, match="batches is empty"):
        fidelity(zero, zero, [])


def test_output_tensor_finds_the_tensor():
    t = torch.ones(2)
    assert output_tensor({"sentence_embedding": t, "other": 1}) is t
    assert output_tensor((t, None)) is t
    with pytest.raises(TypeError, match="cannot find the output tensor in a str"):
        output_tensor("logits")


# -- the tiny LM -------------------------------------------------------------------------------------------

@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of the test's own (empty)."""
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_the_tiny_lm_learns_the_text_and_is_cached(cache, monkeypatch):
    model, held_out = tiny_lm("tiny")
    files = list(cache.iterdir())
    assert [f.name.startswith("tiny_lm-tiny-") and f.suffix == ".pt" for f in files] == [True]
    assert held_out.dtype == torch.int64 and len(held_out) > 20000 and not model.training
    assert perplexity(model, held_out[:4096], window=64) < 40  # a byte-level uniform guess: 256
    monkeypatch.setattr(tiny_lm_module, "train", lambda *a, **k: pytest.fail("trained again"))
    again, _ = tiny_lm("tiny")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_corrupt_cache_file_is_trained_anew(cache):
    path = tiny_lm_module.weights_file("tiny")
    path.write_bytes(b"not a checkpoint")
    model, _ = tiny_lm("tiny")
    assert torch.equal(torch.load(path, weights_only=True)["head.weight"], model.head.weight)


def test_training_is_seeded_and_leaves_the_global_random_state(cache):
    config = tiny_lm_module.TINY_LM_SIZES["tiny"]
    import dataclasses
    short = dataclasses.replace(config, steps=3)
    tokens = tiny_lm_module.python_docs_bytes("train")
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = tiny_lm_module.train(short, tokens)
    assert torch.rand(1) == before
    second = tiny_lm_module.train(short, tokens)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_the_splits_share_no_topic():
    train, held_out = (bytes(tiny_lm_module.python_docs_bytes(s).to(torch.uint8).numpy()).decode()
                       for s in ("train", "held_out"))
    topics = tiny_lm_module.python_docs_topics()
    assert held_out.startswith(topics[0]) and topics[10] in held_out and topics[1] in train
    assert len(train) + len(held_out) + 1 == len("\n".join(topics))
    with pytest.raises(ValueError, match="split must be"):
        tiny_lm_module.python_docs_bytes("test")
    with pytest.raises(ValueError, match="size must be one of 'small', 'tiny'"):
        tiny_lm("huge")
