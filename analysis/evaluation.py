"""Model-level quality: how well a (quantized) model does, not how far one
tensor moved.

- :func:`perplexity`: a causal language model's perplexity on a token
  stream, in windows of fixed length moved by a stride.
- :func:`fidelity`: how closely a model's outputs follow a reference
  model's on the same inputs (:class:`Fidelity`: KL divergence, top-1
  agreement, cosine similarity, relative error), for any model.

Both run without gradients with the models in eval mode (each model's
training flag is put back afterwards), in float64 where they sum, and
draw nothing at random: the same models and inputs give the same numbers.
A model's output may be a logits tensor, an object with ``.logits``
(transformers), a mapping or a tuple (see :func:`output_tensor`).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import torch
import torch.nn.functional as F

from .sweep import Progress

#: the entries of a mapping output taken as the model's output, in this order
OUTPUT_KEYS = ("logits", "sentence_embedding", "last_hidden_state", "pooler_output")


def output_tensor(output: Any) -> torch.Tensor:
    """The tensor a model's output stands for: the output itself if a
    tensor; its ``.logits``; the first of :data:`OUTPUT_KEYS` a mapping
    holds; the first element of a tuple or list. TypeError otherwise."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    if isinstance(output, Mapping):
        for key in OUTPUT_KEYS:
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find the output tensor in a {type(output).__name__}: give a forward= that returns a "
                    f"tensor (a mapping is searched for {', '.join(OUTPUT_KEYS)})")


def perplexity(model: torch.nn.Module, tokens: Any, *, window: int, stride: int | None = None,
               batch_size: int = 8, forward: Callable[[torch.nn.Module, torch.Tensor], Any] | None = None,
               progress: bool | TextIO = False) -> float:
    """exp(mean negative log-likelihood) of a causal language model on the
    token stream ``tokens`` (a 1-D sequence of token ids, at least two).

    The model reads windows of ``window`` tokens starting every ``stride``
    tokens (1 to ``window - 1``; default ``window - 1``, the fewest
    windows) and scores, in each window, only the tokens no earlier window
    scored, so every token but the first is predicted exactly once, from
    at least ``window - stride`` tokens of context (the first window's
    tokens from fewer); the last window ends at the stream's end and may be
    shorter. (Windows side by side, ``stride == window``, would leave each
    window's first token unpredicted: a window's first position has no
    context in it.) The model is called
    as ``forward(model, ids)`` (default ``model(ids)``) on ids of shape
    (windows, length), up to ``batch_size`` windows of one length at a time,
    and must give logits (windows, length, vocabulary) for the next token
    at each position (see :func:`output_tensor`). Log-likelihoods are
    float32 log-softmax of the logits, summed in float64. ``progress``:
    True for a progress line on stderr, or a stream."""
    ids = _token_stream(tokens)
    window = _positive_int("window", window, least=2)
    stride = window - 1 if stride is None else _positive_int("stride", stride)
    if stride >= window:
        raise ValueError(f"stride ({stride}) must be less than window ({window}): windows must overlap by at least "
                         "one token, or the first token of each window would never be predicted")
    batch_size = _positive_int("batch_size", batch_size)
    run = forward or _default_forward()
    spans = _windows(len(ids), window, stride)
    batches = [group[i:i + batch_size] for group in _by_length(spans) for i in range(0, len(group), batch_size)]
    meter = Progress(len(batches), sys.stderr if progress is True else (progress or None))
    device = _device(model)
    total, count = 0.0, 0
    with _evaluating(model), torch.no_grad():
        for batch in batches:
            inputs = torch.stack([ids[begin:end] for begin, end, _ in batch]).to(device)
            logits = output_tensor(run(model, inputs))
            if logits.dim() != 3 or logits.shape[:2] != inputs.shape:
                raise ValueError(f"the model gave an output of shape {tuple(logits.shape)} for ids of shape "
                                 f"{tuple(inputs.shape)}: perplexity needs logits (windows, length, vocabulary)")
            log_probs = F.log_softmax(logits.float(), dim=-1)
            for row, (begin, end, first) in enumerate(batch):
                targets = inputs[row, first - begin + 1:]  # the tokens this window scores
                predicted = log_probs[row, first - begin:end - begin - 1]
                total -= float(predicted.gather(-1, targets.unsqueeze(-1)).double().sum())
                count += len(targets)
            meter.step(f"perplexity: {count} of {len(ids) - 1} tokens")
    return math.exp(total / count)


@dataclass(frozen=True)
class Fidelity:
    """How closely a model's outputs follow a reference model's, over
    ``rows`` output vectors (every position of every batch: the output's
    last axis is the vector, the axes before it count rows).

    - ``kl_divergence``: mean over rows of KL(p_ref || p) = sum p_ref
      (log p_ref - log p), in nats, with p = softmax of the row (meaningful
      when the outputs are logits).
    - ``top1_agreement``: the fraction of rows whose largest entry is at
      the same index (for logits: the same predicted token or class).
    - ``cosine_similarity``: mean over rows of y . y_ref / (|y| |y_ref|) (1
      where both rows are zero, 0 where one is).
    - ``relative_error``: ||y - y_ref|| / ||y_ref|| over all rows together
      (Frobenius norms; the absolute error when y_ref is zero).
    """

    kl_divergence: float
    top1_agreement: float
    cosine_similarity: float
    relative_error: float
    rows: int

    def metrics(self) -> dict[str, float]:
        """The four metrics by name."""
        return {"kl_divergence": self.kl_divergence, "top1_agreement": self.top1_agreement,
                "cosine_similarity": self.cosine_similarity, "relative_error": self.relative_error}


def fidelity(reference_model: torch.nn.Module, model: torch.nn.Module, batches: Iterable[Any], *,
             forward: Callable[[torch.nn.Module, Any], Any] | None = None,
             progress: bool | TextIO = False) -> Fidelity:
    """:class:`Fidelity` of ``model`` to ``reference_model`` (typically the
    full-precision model and its quantized copy) on ``batches``: each batch
    is run through both as ``forward(model, batch)`` (default
    ``model(batch)``, ``model(**batch)`` for a mapping) and the outputs
    (:func:`output_tensor`) compared in float64. The two outputs must have
    the same shape. ``progress``: True for a progress line on stderr, or a
    stream. Padding positions count like any other: give a ``forward`` that
    returns only the rows to compare to leave them out."""
    run = forward or _default_forward()
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: fidelity needs at least one batch")
    meter = Progress(len(batches), sys.stderr if progress is True else (progress or None))
    sums = np.zeros(4)  # kl, agreements, cosine, rows
    error_sq = reference_sq = 0.0
    with _evaluating(reference_model), _evaluating(model), torch.no_grad():
        for index, batch in enumerate(batches):
            expected = output_tensor(run(reference_model, batch)).double()
            got = output_tensor(run(model, batch)).double()
            if got.shape != expected.shape:
                raise ValueError(f"batch {index}: the model's output has shape {tuple(got.shape)}, the reference "
                                 f"model's {tuple(expected.shape)}; fidelity compares outputs of one shape")
            expected, got = _rows(expected), _rows(got)
            log_ref, log_got = F.log_softmax(expected, -1), F.log_softmax(got, -1)
            sums += [float((log_ref.exp() * (log_ref - log_got)).sum()),
                     float((expected.argmax(-1) == got.argmax(-1)).sum()),
                     float(_cosines(expected, got).sum()), len(expected)]
            error_sq += float(((got - expected) ** 2).sum())
            reference_sq += float((expected ** 2).sum())
            meter.step(f"fidelity: batch {index + 1}")
    rows = int(sums[3])
    relative = math.sqrt(error_sq / reference_sq) if reference_sq > 0 else math.sqrt(error_sq)
    kl, agreement, cosine = (float(v / rows) for v in sums[:3])
    return Fidelity(kl, agreement, cosine, relative, rows)


def _default_forward() -> Callable[[torch.nn.Module, Any], Any]:
    """How the emulation layer runs a batch (imported when needed: it loads the emulation layer)."""
    from lowbit.emulate.calibrating import default_forward

    return default_forward


def _rows(y: torch.Tensor) -> torch.Tensor:
    """The output as rows (the last axis a row; a scalar is one row of one)."""
    return y.reshape(-1, y.shape[-1] if y.dim() else 1)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity: 1 where both rows are zero, 0 where one is."""
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    both_zero = (a.norm(dim=-1) == 0) & (b.norm(dim=-1) == 0)
    cos = (a * b).sum(-1) / torch.where(norms > 0, norms, torch.ones_like(norms))
    return torch.where(both_zero, torch.ones_like(cos), cos)


def _windows(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first) of each window: it reads ids[begin:end] and
    scores the tokens after position ``first``, those no earlier window
    scored (windows begin every ``stride`` tokens; ``stride < window``
    keeps each window's first unscored token after its first position)."""
    spans, scored_to, begin = [], 1, 0
    while scored_to < length:
        end = min(begin + window, length)
        spans.append((begin, end, scored_to - 1))
        scored_to, begin = end, begin + stride
    return spans


def _by_length(spans: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """The windows grouped by length (all full windows, then a shorter last one), in order."""
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for span in spans:
        groups.setdefault(span[1] - span[0], []).append(span)
    return list(groups.values())


def _token_stream(tokens: Any) -> torch.Tensor:
    ids = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens)
    if ids.dim() != 1:
        raise ValueError(f"tokens must be one stream of token ids (1-D), got shape {tuple(ids.shape)}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"tokens must be integer token ids, got {ids.dtype}")
    if len(ids) < 2:
        raise ValueError(f"tokens must hold at least 2 tokens (the first is never predicted), got {len(ids)}")
    return ids.to(torch.int64)


def _positive_int(name: str, value: Any, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise ValueError(f"{name} must be an int of at least {least}, got {value!r}")
    return int(value)


def _device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, each module's training flag put back after."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag
