"""ElementFormat: the public operations shared by every per-element format
(FloatFormat, IntFormat). A subclass supplies three exact kernels on float64
/ int64 tensors: ``_encode_exact``, ``_decode_exact`` and the value range."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .arrays import as_codes, narrow_codes
from .base import check_backend, prepare_input
from .rounding import Rounder, check_overflow


class ElementFormat:
    """Base of formats that code each element on its own in ``nbits`` bits."""

    name: str
    nbits: int
    has_inf: bool
    has_nan: bool

    # -- implemented by subclasses -------------------------------------------------
    def _encode_exact(self, x64: torch.Tensor, rounder: Rounder, overflow: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (int64) of the rounded x, and a mask of elements the format
        cannot represent at all (NaN without a NaN code, negatives in an
        unsigned format, zero in a format without zero)."""
        raise NotImplementedError

    def _decode_exact(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def max(self) -> float:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------
    def __str__(self) -> str:
        return self.name

    def _codes_and_invalid(self, x: Any, rounding: str, overflow: str | None, seed: Any, generator: Any,
                           flush_subnormals: bool, backend: str | None):
        x64, kind = prepare_input(x, flush_subnormals, backend)
        policy = check_overflow(overflow, self.has_inf, self.has_nan, self.name)
        rounder = Rounder(rounding, torch.signbit(x64), seed, generator)
        codes, invalid = self._encode_exact(x64, rounder, policy)
        return x64, kind, codes, invalid

    def quantize(self, x: Any, *, rounding: str = "nearest_even", overflow: str | None = None,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 flush_subnormals: bool = False, backend: str | None = None) -> Any:
        """What ``x`` becomes in this format, in x's kind, dtype and device.

        NaN stays NaN. Values the format cannot hold at all (negatives in an
        unsigned format, zero in a format without zero) become NaN. Overflow
        follows ``overflow`` (default: ``inf`` if the format has infinities,
        else ``saturate``).
        """
        _, kind, codes, invalid = self._codes_and_invalid(x, rounding, overflow, seed, generator, flush_subnormals, backend)
        values = self._decode_exact(codes)
        values = torch.where(invalid, torch.nan, values)
        return kind.restore(values)

    def encode(self, x: Any, *, rounding: str = "nearest_even", overflow: str | None = None,
               seed: int | None = None, generator: torch.Generator | None = None,
               flush_subnormals: bool = False, backend: str | None = None) -> Any:
        """The bit code of each rounded element, in the narrowest unsigned
        integer dtype (uint8/uint16/uint32). Raises ValueError for elements
        the format cannot represent (NaN into a format without NaN, negatives
        into an unsigned format, zero into a format without zero)."""
        x64, kind, codes, invalid = self._codes_and_invalid(x, rounding, overflow, seed, generator, flush_subnormals, backend)
        if bool(invalid.any()):
            bad = float(x64[invalid].flatten()[0])
            raise ValueError(f"{bad!r} cannot be encoded in {self.name}: {self._why_unrepresentable(bad)}")
        return narrow_codes(codes, self.nbits, kind)

    def _why_unrepresentable(self, value: float) -> str:
        if math.isnan(value):
            return "the format has no NaN"
        if value < 0:
            return "the format is unsigned"
        return "the format has no zero"

    def decode(self, codes: Any, *, dtype: Any = None, backend: str | None = None) -> Any:
        """Values of ``codes`` (integers in [0, 2**nbits)); float32 by default,
        ``dtype=torch.float64`` / ``np.float64`` on request. Returns the
        codes' kind (numpy or torch) and device."""
        check_backend(backend)
        c, kind = as_codes(codes, self.nbits)
        values = self._decode_exact(c)
        if kind.kind == "torch":
            return values.to(dtype or torch.float32)
        out = values.cpu().numpy().astype(dtype or np.float32)
        return float(out) if kind.kind == "python" else out

    def values(self) -> np.ndarray:
        """Every distinct finite value, sorted ascending, as float64 (-0.0 and
        +0.0 count as one value, 0.0). Formats of at most 16 bits."""
        if self.nbits > 16:
            raise ValueError(f"values() enumerates formats of at most 16 bits; {self.name} has {self.nbits}")
        v = self._decode_exact(torch.arange(1 << self.nbits, dtype=torch.int64))
        v = v[torch.isfinite(v)] + 0.0  # -0.0 + 0.0 == +0.0
        return np.unique(v.numpy())

    def codes_of_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Every code and its value (float64, NaN/Inf included), code order."""
        if self.nbits > 16:
            raise ValueError(f"codes_of_values() enumerates formats of at most 16 bits; {self.name} has {self.nbits}")
        codes = torch.arange(1 << self.nbits, dtype=torch.int64)
        return codes.numpy(), self._decode_exact(codes).numpy()

    @property
    def dynamic_range(self) -> float:
        """log2 of max / smallest positive value, in binades."""
        return math.log2(self.max / self.min_subnormal)
