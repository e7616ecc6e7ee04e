"""A small but real language model that needs no download: a byte-level
GPT trained on the English documentation Python ships
(:func:`~lowbit.analysis.text.python_docs_text`), with a held-out split to
measure perplexity on.

- :class:`TinyGPT`: a pre-norm decoder-only transformer (learned position
  embeddings, causal attention through ``F.scaled_dot_product_attention``,
  separate query/key/value/output projections, a GELU MLP, an untied output
  layer): every weight matrix is an ``nn.Linear`` that
  :func:`~lowbit.emulate.quantize_model` and the methods see.
- :func:`tiny_lm`: the trained model of a size in :data:`TINY_LM_SIZES`
  and its held-out tokens. Training is seeded; the weights are cached on
  disk (:func:`cache_dir`) after the first run and loaded from there
  (``weights_only=True``) afterwards.
- :func:`python_docs_split` and :func:`python_docs_bytes`: the training and
  held-out text and its token streams (UTF-8 bytes), every tenth
  documentation topic held out.

Training is deterministic on one machine with one thread count; float
reductions may split differently elsewhere, so two machines can train
weights that differ in their last bits. The cache makes every later run
use the first run's weights.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import sys
import tempfile
from dataclasses import dataclass
from typing import TextIO

import torch
import torch.nn.functional as F

from .text import python_docs_topics

#: tokens are bytes
VOCAB = 256
#: every HELD_OUT_EVERY-th documentation topic (in name order) is held out
HELD_OUT_EVERY = 10


@dataclass(frozen=True)
class TinyLMConfig:
    """The shape of a :class:`TinyGPT` and how :func:`tiny_lm` trains it:
    AdamW (betas 0.9/0.95, weight decay 0.1 on matrices) at ``learning_rate``
    with ``warmup`` linear steps then cosine decay to a tenth, ``steps``
    steps of ``batch`` random windows of ``context`` + 1 training bytes,
    gradients clipped to norm 1, everything drawn from ``seed``."""

    width: int
    layers: int
    heads: int
    context: int
    steps: int
    batch: int = 32
    learning_rate: float = 3e-3
    warmup: int = 50
    seed: int = 0


#: The sizes :func:`tiny_lm` trains: ``"small"`` (about 1.9 M parameters,
#: a few minutes on 2 CPU cores) for examples, benchmarks and the report;
#: ``"tiny"`` (about 0.1 M, seconds) for tests.
TINY_LM_SIZES = {
    "small": TinyLMConfig(width=192, layers=4, heads=6, context=128, steps=400, warmup=40),
    "tiny": TinyLMConfig(width=64, layers=2, heads=4, context=64, steps=150, batch=16),
}


class Block(torch.nn.Module):
    """One pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm = torch.nn.LayerNorm(width)
        self.query = torch.nn.Linear(width, width)
        self.key = torch.nn.Linear(width, width)
        self.value = torch.nn.Linear(width, width)
        self.output = torch.nn.Linear(width, width)
        self.mlp_norm = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        h = self.attention_norm(x)
        q, k, v = (layer(h).view(batch, length, self.heads, -1).transpose(1, 2)
                   for layer in (self.query, self.key, self.value))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.output(attended.transpose(1, 2).reshape(batch, length, width))
        return x + self.down(F.gelu(self.up(self.mlp_norm(x))))


class TinyGPT(torch.nn.Module):
    """A byte-level decoder-only transformer: token ids (batch, length) or
    (length,) of at most ``context`` tokens in, logits (batch, length, 256)
    out (a batch of one for 1-D input)."""

    def __init__(self, config: TinyLMConfig) -> None:
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"width ({config.width}) must be a multiple of heads ({config.heads})")
        self.config = config
        self.tokens = torch.nn.Embedding(VOCAB, config.width)
        self.positions = torch.nn.Embedding(config.context, config.width)
        self.blocks = torch.nn.ModuleList(Block(config.width, config.heads) for _ in range(config.layers))
        self.norm = torch.nn.LayerNorm(config.width)
        self.head = torch.nn.Linear(config.width, VOCAB, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.shape[1] > self.config.context:
            raise ValueError(f"ids must be (batch, length) with length at most {self.config.context}, "
                             f"got shape {tuple(ids.shape)}")
        x = self.tokens(ids) + self.positions(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


@functools.cache
def python_docs_split(split: str) -> str:
    """The documentation topics of one split, in name order joined by
    newlines: ``"held_out"`` every tenth topic (the 0th, 10th, ...),
    ``"train"`` the others."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    topics = python_docs_topics()
    return "\n".join(text for i, text in enumerate(topics) if (i % HELD_OUT_EVERY == 0) == (split == "held_out"))


def python_docs_bytes(split: str) -> torch.Tensor:
    """The UTF-8 bytes of :func:`python_docs_split` as int64 token ids 0-255
    (a new tensor on each call)."""
    return torch.frombuffer(bytearray(python_docs_split(split).encode()), dtype=torch.uint8).to(torch.int64)


def cache_dir() -> pathlib.Path:
    """Where trained weights are kept: ``$LOWBIT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/lowbit``, else ``~/.cache/lowbit``."""
    if os.environ.get("LOWBIT_CACHE_DIR"):
        return pathlib.Path(os.environ["LOWBIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "lowbit"


def weights_file(size: str) -> pathlib.Path:
    """The cache file of a size: named by a digest of its configuration and
    the training text, so a change to either trains anew."""
    config = _config(size)
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    digest.update(python_docs_bytes("train").numpy().tobytes())
    return cache_dir() / f"tiny_lm-{size}-{digest.hexdigest()[:16]}.pt"


def tiny_lm(size: str = "small", *, retrain: bool = False,
            progress: bool | TextIO = False) -> tuple[TinyGPT, torch.Tensor]:
    """The trained :class:`TinyGPT` of ``size`` (see :data:`TINY_LM_SIZES`)
    in eval mode, and the held-out tokens (:func:`python_docs_bytes`) to
    measure it on. The first call trains it (seeded; ``progress``: True for
    a line per hundred steps on stderr, or a stream) and saves the weights
    in :func:`cache_dir`; later calls load them, unless ``retrain``. A cache
    file that cannot be read is trained anew and replaced."""
    config = _config(size)
    path = weights_file(size)
    model = TinyGPT(config)
    state = None if retrain else _cached(path)
    if state is None:
        state = train(config, python_docs_bytes("train"), progress)
        _save(state, path)
    model.load_state_dict(state)
    return model.eval(), python_docs_bytes("held_out")


def train(config: TinyLMConfig, tokens: torch.Tensor, progress: bool | TextIO = False) -> dict[str, torch.Tensor]:
    """Train a :class:`TinyGPT` of ``config`` on the token stream (see
    :class:`TinyLMConfig`) and give back its state_dict. The global random
    state is left as it was."""
    stream = sys.stderr if progress is True else (progress or None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = TinyGPT(config)
        generator = torch.Generator().manual_seed(config.seed)
        matrices = [p for p in model.parameters() if p.dim() >= 2]
        others = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
                                      lr=config.learning_rate, betas=(0.9, 0.95))
        offsets = torch.arange(config.context + 1)
        model.train()
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * _schedule(step, config)
            starts = torch.randint(len(tokens) - config.context - 1, (config.batch, 1), generator=generator)
            window = tokens[starts + offsets]
            logits = model(window[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), window[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if stream is not None and ((step + 1) % 100 == 0 or step + 1 == config.steps):
                stream.write(f"tiny_lm: step {step + 1}/{config.steps}, loss {loss.item():.3f}\n")
                stream.flush()
    return model.state_dict()


def _schedule(step: int, config: TinyLMConfig) -> float:
    """The learning rate's factor: linear warmup, then cosine decay to 0.1."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    done = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * done))


def _config(size: str) -> TinyLMConfig:
    if size not in TINY_LM_SIZES:
        raise ValueError(f"size must be one of {', '.join(map(repr, TINY_LM_SIZES))}, got {size!r}")
    return TINY_LM_SIZES[size]


def _cached(path: pathlib.Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: train anew and replace it
        return None


def _save(state: dict[str, torch.Tensor], path: pathlib.Path) -> None:
    """Write the weights atomically: into a temporary file beside ``path``, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(state, f)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
