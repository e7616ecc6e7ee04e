"""Error metrics of a quantized tensor against the original.

:func:`error_stats` reduces (x, q) and the grid each element was rounded on
to an :class:`ErrorStats`: sums and maxima that add up across tensors
(``a + b``, ``sum(stats)``), from which every metric derives, so a metric
aggregated over a sweep or a model equals the metric of all the data at once.

Definitions, with e = q - x over the measured elements (inputs that are NaN
or +-Inf are left out; ``count`` says how many were measured):

- ``mse`` = mean(e**2); ``sqnr_db`` = 10 log10(sum x**2 / sum e**2), +inf
  when there is no error.
- ``max_abs_error``, ``mean_abs_error``: of |e|.
- ``max_rel_error``, ``mean_rel_error``: of |e| / |x| over the nonzero x.
- ``max_ulp_error``, ``mean_ulp_error``: of |e| / ulp(x), the ulp of the
  format's grid where x lies (``fmt.grid``). Correct rounding to nearest
  keeps it <= 0.5 wherever nothing was clamped.
- ``bias``: mean(e), the mean signed error.
- ``overflow_fraction``: x whose magnitude exceeds the largest its grid
  holds (clamped, or gone to Inf under ``overflow="inf"``).
- ``underflow_fraction``: nonzero x that became zero.
- ``nonfinite_fraction``: finite x that became NaN or +-Inf; the error
  metrics are then NaN or Inf too, as they should be.

All arithmetic is float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

METRICS = (
    "mse", "sqnr_db", "max_abs_error", "mean_abs_error", "max_rel_error", "mean_rel_error",
    "max_ulp_error", "mean_ulp_error", "bias", "overflow_fraction", "underflow_fraction", "nonfinite_fraction",
)


@dataclass(frozen=True)
class ErrorStats:
    """Additive statistics of the error of one or more tensors."""

    count: int = 0
    nonzero_count: int = 0
    signal_energy: float = 0.0
    error_energy: float = 0.0
    error_sum: float = 0.0
    abs_error_sum: float = 0.0
    rel_error_sum: float = 0.0
    ulp_error_sum: float = 0.0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    max_ulp_error: float = 0.0
    overflows: int = 0
    underflows: int = 0
    nonfinite: int = 0

    def __add__(self, other: ErrorStats) -> ErrorStats:
        if not isinstance(other, ErrorStats):
            return NotImplemented
        merged = {}
        for field in fields(self):
            a, b = getattr(self, field.name), getattr(other, field.name)
            merged[field.name] = _nan_max(a, b) if field.name.startswith("max_") else a + b
        return ErrorStats(**merged)

    def __radd__(self, other: Any) -> ErrorStats:
        if other == 0:  # sum() starts from 0
            return self
        return NotImplemented

    @property
    def mse(self) -> float:
        return _mean(self.error_energy, self.count)

    @property
    def sqnr_db(self) -> float:
        if self.error_energy == 0:
            return math.inf if self.count else math.nan
        return 10 * math.log10(self.signal_energy / self.error_energy) if self.signal_energy else -math.inf

    @property
    def mean_abs_error(self) -> float:
        return _mean(self.abs_error_sum, self.count)

    @property
    def mean_rel_error(self) -> float:
        return _mean(self.rel_error_sum, self.nonzero_count)

    @property
    def mean_ulp_error(self) -> float:
        return _mean(self.ulp_error_sum, self.count)

    @property
    def bias(self) -> float:
        return _mean(self.error_sum, self.count)

    @property
    def overflow_fraction(self) -> float:
        return _mean(self.overflows, self.count)

    @property
    def underflow_fraction(self) -> float:
        return _mean(self.underflows, self.count)

    @property
    def nonfinite_fraction(self) -> float:
        return _mean(self.nonfinite, self.count)

    def metrics(self) -> dict[str, float]:
        """The metrics by name (see the module docstring), and ``count``."""
        return {"count": self.count, **{name: getattr(self, name) for name in METRICS}}

    def as_dict(self) -> dict[str, float]:
        """The raw statistics (to store and add up later)."""
        return asdict(self)


def _mean(total: float, count: int) -> float:
    """total / count; NaN when nothing was counted."""
    return total / count if count else math.nan


def _nan_max(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _float64(name: str, values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values)
    if array.dtype.kind != "f":
        raise TypeError(f"{name} must hold floating-point values, got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def error_stats(x: Any, q: Any, ulp: Any = None, out_of_range: Any = None) -> ErrorStats:
    """Statistics of the error of ``q`` (quantized) against ``x`` (original).

    ``ulp`` (each element's ulp, from the format's ``grid``) gives the ulp
    errors, NaN without it; ``out_of_range`` (a bool mask: the element lay
    beyond the largest magnitude of its grid, ``abs(x) > grid.largest``)
    gives the overflow count, 0 without it. Arrays may be numpy arrays or
    tensors of any float dtype, all of one shape.
    """
    x64, q64 = _float64("x", x), _float64("q", q)
    if x64.shape != q64.shape:
        raise ValueError(f"x and q must have the same shape, got {x64.shape} and {q64.shape}")
    measured = np.isfinite(x64)
    x64, q64 = x64[measured], q64[measured]
    error = q64 - x64
    abs_error = np.abs(error)
    nonzero = x64 != 0
    rel_error = abs_error[nonzero] / np.abs(x64[nonzero])
    ulp_error = np.full(x64.shape, np.nan) if ulp is None else abs_error / _same_shape("ulp", ulp, measured)
    beyond = None if out_of_range is None else _same_shape("out_of_range", out_of_range, measured)
    overflows = 0 if beyond is None else int(np.count_nonzero(beyond))
    with np.errstate(invalid="ignore", over="ignore"):
        return ErrorStats(
            count=int(x64.size),
            nonzero_count=int(rel_error.size),
            signal_energy=float(np.dot(x64, x64)),
            error_energy=float(np.dot(error, error)),
            error_sum=float(error.sum()),
            abs_error_sum=float(abs_error.sum()),
            rel_error_sum=float(rel_error.sum()),
            ulp_error_sum=float(ulp_error.sum()),
            max_abs_error=_largest(abs_error),
            max_rel_error=_largest(rel_error),
            max_ulp_error=_largest(ulp_error),
            overflows=overflows,
            underflows=int(np.count_nonzero(nonzero & (q64 == 0))),
            nonfinite=int(np.count_nonzero(~np.isfinite(q64))),
        )


def _same_shape(name: str, values: Any, measured: np.ndarray) -> np.ndarray:
    """values (an array or tensor of x's shape) at the measured elements."""
    array = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    if array.shape != measured.shape:
        raise ValueError(f"{name} must have x's shape {measured.shape}, got {array.shape}")
    return array[measured]


def _largest(values: np.ndarray) -> float:
    """The maximum (NaN if any value is NaN; 0 for no values)."""
    return float(values.max()) if values.size else 0.0
