"""ElementFormat: the public operations shared by every per-element format
(FloatFormat, IntFormat). A subclass supplies its exact math on float64 /
int64 tensors (``encode_exact``, ``decode_exact``, ``grid_exact``) and its
value range; the operations run on a backend (:mod:`.backends`), the
reference running that exact math."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from . import backends, chunks
from .arrays import as_tensor, decoded_in, float_dtype, integer_input
from .backends import Policy
from .base import Grid
from .chunks import chunk_slices, exact
from .rounding import Rounder, check_overflow, check_sr_bits, stochastic_key


class ElementFormat:
    """Base of formats that code each element on its own in ``nbits`` bits."""

    name: str
    nbits: int
    has_inf: bool
    has_nan: bool

    # -- a family's exact math -----------------------------------------------------
    def encode_exact(self, x64: torch.Tensor, rounder: Rounder, overflow: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (int64) of exact float64 values rounded by ``rounder`` under
        the ``overflow`` policy, and a mask of elements the format cannot
        represent at all (NaN without a NaN code, negatives in an unsigned
        format, zero in a format without zero)."""
        raise NotImplementedError

    def decode_exact(self, codes: torch.Tensor) -> torch.Tensor:
        """The float64 value of every int64 code (NaN and Inf included)."""
        raise NotImplementedError

    def grid_exact(self, x64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ulp and the largest magnitude of the grid at each exact float64 value."""
        raise NotImplementedError

    @property
    def max(self) -> float:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    def __str__(self) -> str:
        return self.name

    def _call(self, x: Any, operation: str, rounding: str, overflow: str | None, seed: Any, generator: Any,
              flush_subnormals: bool, backend: str | None, sr_bits: int | None):
        """The input as a tensor, its kind, the checked policy and the backend that runs ``operation``."""
        t, kind = as_tensor(x)
        policy = Policy(rounding=rounding, overflow=check_overflow(overflow, self.has_inf, self.has_nan, self.name),
                        key=stochastic_key(rounding, seed, generator), flush_subnormals=flush_subnormals,
                        sr_bits=check_sr_bits(rounding, sr_bits))
        return t, kind, policy, backends.resolve(backend, t.device.type, self, operation, policy)

    def quantize(self, x: Any, *, rounding: str = "nearest_even", overflow: str | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 flush_subnormals: bool = False, backend: str | None = None, sr_bits: int | None = None) -> Any:
        """What ``x`` becomes in this format, in x's kind, dtype and device.

        NaN stays NaN. Values the format cannot hold at all (negatives in an
        unsigned format, zero in a format without zero) become NaN. Overflow
        follows ``overflow`` (default: ``inf`` if the format has infinities,
        else ``saturate``). Raises ValueError if x's dtype cannot hold a
        result exactly (pass float32 or float64 then). ``backend``: None (the
        device's kernels where they support the call: "cpu" for CPU data,
        "cuda" for CUDA data where the extension builds; else the
        reference), or a name of :func:`lowbit.backends`. ``rounding``: a
        mode of :data:`~lowbit.formats.rounding.ROUNDING_MODES`;
        ``seed``/``generator`` and ``sr_bits`` (the random draw's width,
        1..32; None: 53 bits) apply to ``"stochastic"`` only (see
        :class:`~lowbit.formats.rounding.Rounder`).
        """
        t, kind, policy, chosen = self._call(x, "quantize", rounding, overflow, seed, generator, flush_subnormals,
                                             backend, sr_bits)
        out, exact_fit = chosen.elements.quantize(self, t, policy)
        if not exact_fit:
            raise kind.inexact_error()
        return kind.give_back(out)

    def encode(self, x: Any, *, rounding: str = "nearest_even", overflow: str | None = None,
               seed: int | None = None, generator: torch.Generator | None = None,
               flush_subnormals: bool = False, backend: str | None = None, sr_bits: int | None = None) -> Any:
        """The bit code of each rounded element, in the narrowest unsigned
        integer dtype (uint8/uint16/uint32). Raises ValueError for elements
        the format cannot represent (NaN into a format without NaN, negatives
        into an unsigned format, zero into a format without zero)."""
        t, kind, policy, chosen = self._call(x, "encode", rounding, overflow, seed, generator, flush_subnormals,
                                             backend, sr_bits)
        out, bad = chosen.elements.encode(self, t, policy)
        if bad is not None:
            raise self._unrepresentable(float(exact(t.reshape(-1)[bad], flush_subnormals)))
        return kind.give_back(out)

    def grid(self, x: Any, *, flush_subnormals: bool = False) -> Grid:
        """The format's grid where each element of ``x`` lies: its ulp (the
        spacing of neighbouring values in x's binade: the subnormal spacing
        below the normal range, the gap from zero to the smallest value below
        that value in formats without subnormals, the top binade's spacing
        beyond the largest value) and the largest magnitude on x's side of
        zero; NaN for NaN. float64, in x's kind; for error analysis (errors
        in ulps, overflow), not rounding."""
        t, kind = as_tensor(x)
        ulp = torch.empty(t.numel(), dtype=torch.float64, device=t.device)
        largest = torch.empty_like(ulp)
        flat = t.reshape(-1)
        for part in chunk_slices(flat.numel(), chunks.CHUNK_ELEMENTS):
            x64 = exact(flat[part], flush_subnormals)
            ulp[part], largest[part] = (torch.where(torch.isnan(x64), torch.nan, g) for g in self.grid_exact(x64))
        return Grid(kind.give_back(ulp.reshape(t.shape)), kind.give_back(largest.reshape(t.shape)))

    def _unrepresentable(self, value: float) -> ValueError:
        if math.isnan(value):
            why = "the format has no NaN"
        elif value < 0:
            why = "the format is unsigned"
        else:
            why = "the format has no zero"
        return ValueError(f"{value!r} cannot be encoded in {self.name}: {why}")

    def decode(self, codes: Any, *, dtype: Any = None, backend: str | None = None) -> Any:
        """Values of ``codes`` (integers in [0, 2**nbits)); float32 by default,
        ``dtype=torch.float64`` / ``np.float64`` on request. Returns the
        codes' kind (numpy or torch) and device. ValueError if a finite
        value lies beyond float32's range (ask for float64 then).
        ``backend``: as in :meth:`quantize`."""
        c, kind = integer_input(codes)
        chosen = backends.resolve(backend, c.device.type, self, "decode")
        values = decoded_in(float_dtype(dtype), lambda to: chosen.elements.decode(self, c, to),
                            lambda limit: self.max > limit, self.name)
        return kind.give_back(values)

    def values(self) -> np.ndarray:
        """Every distinct finite value, sorted ascending, as float64 (-0.0 and
        +0.0 count as one value, 0.0). Formats of at most 16 bits."""
        _, v = self.codes_of_values()
        return np.unique(v[np.isfinite(v)] + 0.0)  # -0.0 + 0.0 == +0.0

    def codes_of_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Every code and its value (float64, NaN/Inf included), code order.
        Formats of at most 16 bits."""
        if self.nbits > 16:
            raise ValueError(f"values are enumerated for formats of at most 16 bits; {self.name} has {self.nbits}")
        codes = torch.arange(1 << self.nbits, dtype=torch.int64)
        return codes.numpy(), self.decode_exact(codes).numpy()

    @property
    def dynamic_range(self) -> float:
        """log2 of max / smallest positive value, in binades."""
        return math.log2(self.max / self.min_subnormal)
