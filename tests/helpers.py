"""Small comparison helpers for the tests."""

import numpy as np


def assert_same_values(actual, expected, context="", nan_sign=False):
    """Equal as float64, NaN matching NaN, and the sign of zero included
    (and the sign of NaN with ``nan_sign``)."""
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    nans_match = np.isnan(a) & np.isnan(e) & (np.signbit(a) == np.signbit(e) if nan_sign else True)
    same = (a == e) & (np.signbit(a) == np.signbit(e)) | nans_match
    if not same.all():
        bad = np.flatnonzero(~same.reshape(-1))[:8]
        raise AssertionError(f"{context}: {(~same).sum()} mismatches; first: "
                             + ", ".join(f"[{i}] got {a.reshape(-1)[i]!r} expected {e.reshape(-1)[i]!r}" for i in bad))


def assert_same_result(got, expected, context=""):
    """Two calls' outcomes agree: the same error text, equal Encoded
    results, or tensors of one dtype with the same values (the signs of
    zeros and NaNs included)."""
    import torch

    from lowbit import Encoded

    if isinstance(got, str) or isinstance(expected, str):
        assert got == expected, context
    elif isinstance(got, Encoded):
        assert got == expected, context
    else:
        assert got.dtype == expected.dtype, context
        assert_same_values(got.float().numpy() if got.dtype == torch.bfloat16 else got,
                           expected.float().numpy() if expected.dtype == torch.bfloat16 else expected, context,
                           nan_sign=True)


def kernel_backends():
    """The kernel backends that run here: the numba kernels, and the CPU
    builds of the CUDA extension where a C++ compiler and ninja build them."""
    from lowbit.formats import backends

    try:
        backends.get("cuda_host"), backends.get("cuda_emulated")
    except backends.BackendUnavailable:
        return ("cpu",)
    return ("cpu", "cuda_host", "cuda_emulated")


def swept_element_formats(max_bits=16):
    """Names of the catalogued element formats of at most ``max_bits`` bits
    that the per-format sweeps (oracle, grid, round to odd) run on: every
    one, except that of the 8-bit P3109 variants under gfloat's names only
    the precisions 3 and 4 of the kinds the older ``p3109_8p{p}`` names do
    not cover (signed finite, unsigned) are swept. The signed extended ones
    are those same formats; every variant is checked against gfloat in
    tests/test_element_kinds.py. (Each swept format costs the sweeps about
    as much as all the rest of a test file.)"""
    import re

    import lowbit
    from lowbit.formats import ElementFormat

    names = []
    for name in lowbit.list_formats():
        fmt = lowbit.get_format(name)
        if not (isinstance(fmt, ElementFormat) and fmt.nbits <= max_bits):
            continue
        variant = re.fullmatch(r"p3109_k8p(\d)([su])([ef])", name)
        if variant and (variant.group(2, 3) == ("s", "e") or variant[1] not in "34"):
            continue
        names.append(name)
    return names


def small_llama(intermediate_size=128):
    """A random-init transformers Llama (hidden 64, 2 layers, vocab 100), in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=intermediate_size, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    return LlamaForCausalLM(config).eval()


def small_gpt2():
    """A random-init transformers GPT-2 body (hidden 64, 2 layers, vocab 100), in eval mode."""
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2Model(config).eval()


def assert_readable_png(path):
    """A PNG that is not blank: some pixels differ from the background."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert np.mean(np.any(pixels[..., :3] != pixels[0, 0, :3], axis=-1)) > 0.01
