"""Encoded: a tensor in a scaled format, as bits.

Layout (see :mod:`lowbit.formats.blocking`): the blocked axis is moved last
and padded to whole blocks, giving blocks of shape (..., nblocks, block).

The arrays are numpy arrays when the encoded input was numpy, else torch
tensors on the input's device.

- ``elements``: every element code of every block in that order (padding
  included), bit-packed with :func:`lowbit.formats.pack` (uint8).
- ``scales``: one scale code per block, shape (..., nblocks), in the scale
  format's code dtype (E8M0 for MX, E4M3 for NVFP4, the d1-bit shared
  exponent for microexponent formats).
- ``subscales``: microexponent formats only: one d2-bit shift per sub-block,
  bit-packed (uint8); None otherwise.
- ``tensor_scale``: NVFP4 with a per-tensor scale only: the float32 scale.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .families import FAMILIES


@dataclass(frozen=True)
class Encoded:
    """The bits of a tensor encoded in a BlockFormat or MicroexponentFormat."""

    format: Any
    shape: tuple[int, ...]
    axis: int
    elements: Any
    scales: Any
    subscales: Any = None
    tensor_scale: float | None = None
    kind: str = "torch"

    @property
    def nbytes(self) -> int:
        """Bytes the encoding really takes: packed elements, scale codes,
        packed sub-block shifts and the float32 tensor scale."""
        parts = (self.elements, self.scales, self.subscales)
        return sum(p.nbytes for p in parts if p is not None) + (4 if self.tensor_scale is not None else 0)

    def decode(self, *, dtype: Any = None, backend: str | None = None) -> Any:
        """The decoded values, float32 unless ``dtype`` says float64; a numpy
        array when the encoded input was numpy, else a torch tensor.
        ``backend``: as in the format's ``decode``."""
        return self.format.decode(self, dtype=dtype, backend=backend)

    def save(self, path: str | os.PathLike) -> None:
        """Write to an ``.npz`` file (numpy arrays and the format as JSON)."""
        arrays = {
            "elements": _to_numpy(self.elements),
            "scales": _to_numpy(self.scales),
            "meta": np.array(json.dumps({
                "format": format_to_dict(self.format),
                "shape": list(self.shape),
                "axis": self.axis,
                "tensor_scale": self.tensor_scale,
                "kind": self.kind,
            })),
        }
        if self.subscales is not None:
            arrays["subscales"] = _to_numpy(self.subscales)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Encoded":
        """Read an ``.npz`` file written by :meth:`save`: numpy arrays if the
        encoded input was numpy, else torch tensors on ``device``."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            as_kind = (lambda a: a) if meta["kind"] == "numpy" else (lambda a: torch.from_numpy(a).to(device))
            return cls(
                format=format_from_dict(meta["format"]),
                shape=tuple(meta["shape"]),
                axis=meta["axis"],
                elements=as_kind(data["elements"]),
                scales=as_kind(data["scales"]),
                subscales=as_kind(data["subscales"]) if "subscales" in data else None,
                tensor_scale=meta["tensor_scale"],
                kind=meta["kind"],
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Encoded):
            return NotImplemented
        def same(a: Any, b: Any) -> bool:
            return (a is None) == (b is None) and (a is None or np.array_equal(_to_numpy(a), _to_numpy(b)))

        return (self.format == other.format and self.shape == other.shape and self.axis == other.axis
                and same(self.elements, other.elements) and same(self.scales, other.scales)
                and same(self.subscales, other.subscales) and self.tensor_scale == other.tensor_scale)

    __hash__ = None  # mutable payload


def _to_numpy(a: Any) -> np.ndarray:
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def format_to_dict(fmt: Any) -> dict:
    """A JSON-able description of a format, nested formats included."""
    out = {"family": type(fmt).__name__}
    for field in dataclasses.fields(fmt):
        value = getattr(fmt, field.name)
        out[field.name] = format_to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def format_from_dict(d: dict) -> Any:
    """Inverse of :func:`format_to_dict`."""
    d = dict(d)
    family = FAMILIES[d.pop("family")]
    args = {k: format_from_dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    return family(**args)
