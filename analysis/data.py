"""Seeded synthetic data: the distributions formats are compared on.

:func:`load` reads a tensor of your own (``.npy``, ``.pt``), and
:func:`dataset` takes either.

Every generator returns float32 (the dtype real tensors arrive in) drawn
from numpy's PCG64. A distribution's stream depends only on the seed and its
own name, so asking for more or fewer distributions never changes the data
of the others, and the same (name, size, seed) gives the same array on
every machine.

- ``normal``: N(0, 1).
- ``laplace``: Laplace(0, 1/sqrt 2), unit variance; heavier tails, like
  trained weights.
- ``uniform``: U(-1, 1).
- ``student_t``: Student's t with 3 degrees of freedom (finite variance,
  rare values 10-100x the typical one).
- ``lognormal``: a random sign times exp(N(0, 2**2)): magnitudes spread over
  about 12 binades (95% within e**-4..e**4).
- ``llm_activations``: activations of a transformer layer as
  (tokens, 1024 channels): N(0, 1) everywhere except in a few outlier
  channels (4 of 1024, at seeded positions) that are 100x larger, as
  reported for LLMs (Dettmers et al., LLM.int8(), 2022). Blocks along the
  channel axis (the last) meet the outliers only in their own block.
"""

from __future__ import annotations

import os
import pathlib
import zlib
from collections.abc import Callable

import numpy as np

#: The suffixes of the tensor files :func:`load` reads.
DATA_SUFFIXES = (".npy", ".pt", ".pth")
LLM_CHANNELS = 1024
LLM_OUTLIER_CHANNELS = 4
LLM_OUTLIER_GAIN = 100.0


def _normal(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.standard_normal(size)


def _laplace(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.laplace(0.0, 1 / np.sqrt(2), size)


def _uniform(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, size)


def _student_t(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.standard_t(3, size)


def _lognormal(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size) * rng.lognormal(0.0, 2.0, size)


def _llm_activations(rng: np.random.Generator, size: int) -> np.ndarray:
    tokens = -(-size // LLM_CHANNELS)
    x = rng.standard_normal((tokens, LLM_CHANNELS))
    outliers = rng.choice(LLM_CHANNELS, LLM_OUTLIER_CHANNELS, replace=False)
    x[:, outliers] *= LLM_OUTLIER_GAIN
    return x


DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "normal": _normal,
    "laplace": _laplace,
    "uniform": _uniform,
    "student_t": _student_t,
    "lognormal": _lognormal,
    "llm_activations": _llm_activations,
}


def generate(name: str, size: int = 1 << 16, seed: int = 0) -> np.ndarray:
    """``size`` float32 samples of the distribution ``name`` (see the module
    docstring), reproducible from ``seed``. 1-D, except ``llm_activations``:
    (tokens, 1024) with tokens = ceil(size / 1024)."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; choose from {', '.join(DISTRIBUTIONS)}")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    return DISTRIBUTIONS[name](rng, int(size)).astype(np.float32)


def load(path: str | os.PathLike) -> np.ndarray:
    """A tensor saved by the user: ``.npy`` (numpy, no pickles) or ``.pt`` /
    ``.pth`` (one tensor saved with ``torch.save``, loaded with
    ``weights_only=True``), as a float array (float16 and bfloat16 as float32).
    Raises ValueError for a missing or unreadable file, one that holds no
    tensor or a non-float one, an empty tensor, or one without a finite value."""
    import torch

    from .settings import as_array

    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"data file {os.fspath(path)!r} does not exist")
    if file.suffix not in DATA_SUFFIXES:
        raise ValueError(f"data files are .npy, .pt or .pth; got {file.name!r}")
    try:
        if file.suffix == ".npy":
            data = np.load(file, allow_pickle=False)
        else:
            data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # numpy and torch raise many kinds for files they cannot read
        raise ValueError(f"cannot read a tensor from {os.fspath(path)!r}: {error}") from error
    if not isinstance(data, np.ndarray | torch.Tensor):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(data).__name__}, not one tensor "
                         "(a state_dict? pass it as the model)")
    try:
        array = as_array(data)
    except TypeError as error:
        raise ValueError(f"{os.fspath(path)!r}: {error}") from error
    if array.size == 0:
        raise ValueError(f"{os.fspath(path)!r} holds an empty tensor (shape {array.shape}); give at least one value")
    if not np.isfinite(array).any():
        raise ValueError(f"{os.fspath(path)!r} holds no finite value (only NaN and Inf); give at least one")
    return array


def dataset(name: str, size: int, seed: int) -> np.ndarray:
    """A built-in distribution by name, or the tensor in a file (a name
    ending in .npy, .pt or .pth)."""
    if name.endswith(DATA_SUFFIXES):
        return load(name)
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; choose from {', '.join(DISTRIBUTIONS)}, "
                         f"or give a tensor file ending in {', '.join(DATA_SUFFIXES)}")
    return generate(name, size, seed)
