"""fit_codebook: a codebook fitted to data by weighted 1-D k-means (Lloyd's
algorithm), as SqueezeLLM fits its per-channel codebooks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .arrays import as_tensor, numpy_view
from .codebook import CodebookFormat


def _flat_float64(x: Any, name: str) -> np.ndarray:
    t, _ = as_tensor(x, name)
    return numpy_view(t.cpu().to(torch.float64)).reshape(-1)


def _nearest_codes(table: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Codes of sorted float64 ``v`` in ``table`` under nearest_even (ties to the even code)."""
    mids = (table[:-1] + table[1:]) / 2  # exact: CodebookFormat checked that each pair sums exactly
    codes = np.searchsorted(mids, v, side="left")
    tie = codes < len(mids)
    tie[tie] = mids[codes[tie]] == v[tie]
    return codes + (tie & (codes % 2 == 1))


def _squared_error(table: np.ndarray, v: np.ndarray, w: np.ndarray) -> float:
    d = v - table[_nearest_codes(table, v)]
    return float(np.sum(w * d * d))


def fit_codebook(x: Any, bits: int, *, weights: Any = None, iterations: int = 100) -> CodebookFormat:
    """A codebook of at most 2**bits values fitted to ``x`` (any shape) by
    weighted k-means (Lloyd), deterministic: the same input gives the same
    codebook on every machine and backend.

    It starts from the uniform grid, 2**bits evenly spaced float32 values
    from min(x) to max(x), and alternates nearest-even assignment and
    weighted means (float64 sums in sorted order, rounded to float32) for at
    most ``iterations`` steps, stopping early when the values stop moving.
    It returns the codebook with the least squared error sum(weights *
    (x - quantize(x))**2) seen, so that error never exceeds the uniform
    grid's. A cluster left empty keeps its value; if two values meet, the
    fit stops there (fewer distinct values cannot be a codebook of them all).

    ``weights``: non-negative, x's shape (SqueezeLLM's sensitivities); None
    weighs every element 1. ValueError for NaN or Inf in x, fewer than two
    distinct values, or weights of another shape, negative or all zero.
    """
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must lie in 1..16, got {bits}")
    if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    v = _flat_float64(x, "x")
    if not np.isfinite(v).all():
        raise ValueError("x must be finite to fit a codebook (it holds NaN or Inf)")
    if weights is None:
        w = np.ones_like(v)
    else:
        w = _flat_float64(weights, "weights")
        if w.shape != v.shape:
            raise ValueError(f"weights must have x's {v.size} elements, got {w.size}")
        if not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise ValueError("weights must be finite, non-negative and not all zero")
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    if v[0] == v[-1]:
        raise ValueError("x needs at least two distinct values to fit a codebook")
    levels = 1 << bits
    grid = np.unique(np.float32(v[0] + (v[-1] - v[0]) * np.arange(levels) / (levels - 1)).astype(np.float64))
    best = CodebookFormat(grid)
    table = np.array(best.table)
    best_error = _squared_error(table, v, w)
    weight_sums = np.concatenate([[0.0], np.cumsum(w)])
    moment_sums = np.concatenate([[0.0], np.cumsum(w * v)])
    for _ in range(iterations):
        starts = np.searchsorted(_nearest_codes(table, v), np.arange(len(table) + 1), side="left")
        mass = weight_sums[starts[1:]] - weight_sums[starts[:-1]]
        moment = moment_sums[starts[1:]] - moment_sums[starts[:-1]]
        means = np.where(mass > 0, moment / np.where(mass > 0, mass, 1.0), table)
        moved = np.float32(means).astype(np.float64)
        if np.array_equal(moved, table):
            break
        try:
            table = np.array(CodebookFormat(moved).table)
        except ValueError:  # two values met (or lie too far apart for exact midpoints)
            break
        error = _squared_error(table, v, w)
        if error < best_error:
            best, best_error = CodebookFormat(table), error
    return CodebookFormat(best.table, name=f"fitted{bits}")
