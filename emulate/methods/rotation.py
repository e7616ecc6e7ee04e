"""Rotations (QuIP, QuaRot, SpinQuant-style incoherence processing): a
randomized Hadamard transform of each linear layer's input features, which
spreads outlier features over all of them so that inputs and weights round
better.

For each group of linear layers that share an input of n features (see
:mod:`.folding`):

    R = diag(d) blockdiag(H_b, ..., H_b)

with d independent random signs (+1 or -1; a generator seeded with
``seed`` draws them group by group, in the order the model runs the
groups) and H_b the Sylvester Hadamard matrix of size b scaled by
1 / sqrt(b): b = n when n is a power of two, otherwise the largest power of
two that divides n (``block`` sets b: a power of two that divides every
rotated width; an odd width gets b = 1, sign flips only). R is orthogonal
(its block is checked: max |H H^T - I| <= 64 b eps in float64). Then
W <- W R for every layer of the group and x <- x R (so x R (W R)^T =
x W^T): folded into a producing linear layer (W_p <- R^T W_p,
b_p <- R^T b_p, kept only if the unquantized model's outputs stay, as every
fold), else applied online by a forward pre-hook on each layer, block by
block (a norm cannot absorb a rotation; QuaRot's model-wide rotation of
the residual stream, which fuses the norms' weights into the next layers
and rotates the embeddings, is not done). Weights are rotated in float64
and rounded once to their dtype.

The result is the rotated model, **not quantized** (quantize it next, after
any GPTQ or AWQ). Each layer's Change holds its relative output error on
the first ``samples`` calibration rows with its operands rounded as its
quantized module rounds them under the spec (as SmoothQuant's), before
(x, W) and after (x R, W R).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ..spec import QuantSpec
from .folding import Rotation, format_name, prepare
from .layers import weight_matrix
from .trial import quantized_error


def hadamard(size: int) -> torch.Tensor:
    """The Sylvester Hadamard matrix of ``size`` (a power of two) scaled by
    1 / sqrt(size): orthogonal, float64. Raises ValueError otherwise."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size & (size - 1):
        raise ValueError(f"a Hadamard matrix's size must be a power of two, got {size!r}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < size:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h / size ** 0.5


def random_hadamard(features: int, generator: torch.Generator, block: int | None = None) -> Rotation:
    """R = diag(d) blockdiag(H_b, ...) over ``features`` with random signs
    d from ``generator`` and b = ``block`` or the largest power of two that
    divides ``features``. Raises ValueError when block does not divide it."""
    size = block or features & -features
    if features % size:
        raise ValueError(f"block={block} does not divide {features} features")
    signs = torch.randint(0, 2, (features,), generator=generator).to(torch.float64) * 2 - 1
    return Rotation(signs, hadamard(size))


def rotate(model: torch.nn.Module, spec: QuantSpec | None, batches: Iterable[Any], *,
           rules: Mapping[Any, QuantSpec | None] | None = None,
           forward: Callable[[torch.nn.Module, Any], Any] | None = None, inplace: bool = True,
           seed: int = 0, block: int | None = None, samples: int = 512) -> torch.nn.Module:
    """Rotate the inputs of the linear layers chosen by ``spec`` and
    ``rules`` (see the module docstring) found on the calibration
    ``batches`` (each run as ``forward(model, batch)``, default
    ``model(batch)``, ``model(**batch)`` for a mapping); ``seed`` draws the signs, ``block`` sets the
    Hadamard blocks, ``samples`` the rows each layer's logged errors are
    measured on. Returns the rotated, unquantized model (a deep copy when
    ``inplace=False``); ``restore_model`` undoes it bit for bit. Raises
    ValueError for a block that is not a power of two or does not divide a
    layer's width (before anything changes), or empty batches; TypeError
    for a seed that is not an int or a spec that is not a QuantSpec."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if block is not None:
        hadamard(block)  # a power of two, or ValueError
    prepared = prepare(model, spec, batches, method="rotate", rules=rules, forward=forward, inplace=inplace,
                       samples=samples)
    groups = prepared.folder.groups
    misfits = [g.names[0] for g in groups if block and weight_matrix(g.layers[0]).shape[1] % block]
    if misfits:
        raise ValueError(f"block={block} does not divide the input width of {', '.join(misfits)}")
    generator = torch.Generator().manual_seed(seed)
    rotations = {id(g): random_hadamard(weight_matrix(g.layers[0]).shape[1], generator, block) for g in groups}
    before = prepared.errors(quantized_error)
    transforms, details = {}, {}
    for group in reversed(groups):
        rotation = rotations[id(group)]
        how = prepared.folder.apply(group, rotation)
        transforms.update(dict.fromkeys(group.names, rotation))
        details.update({name: _detail(rotation, seed, how, prepared.specs[name]) for name in group.names})
    prepared.record("rotate", before, prepared.errors(quantized_error, transforms), details)
    return prepared.model


def _detail(rotation: Rotation, seed: int, how: str, spec: QuantSpec) -> str:
    size = rotation.block.shape[0]
    blocks = rotation.features // size
    shape = f"Hadamard {size}" if blocks == 1 else f"{blocks} Hadamard blocks of {size}"
    if size == 1:
        shape += " (an odd width: sign flips only)"
    inputs_in = format_name(spec.input) if spec.input is not None else "full precision"
    return f"random signs (seed {seed}) x {shape}; {how}; errors with inputs {inputs_in}"
