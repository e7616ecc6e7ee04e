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
- ``zero_points``: formats with zero points only: one zero-point code per
  block (the element's code width) in block order, bit-packed (uint8).
- ``scale_offset``: formats with double quantization only: the float32
  offset the scales were shifted by; ``scales`` is then itself an Encoded
  of the second-level format, of the flattened scales (shape (nblocks,),
  axis 0).

A tiled format's ``axis`` is the pair (row axis, column axis) and its scales
have the shape (other axes..., tile rows, tile columns).

An Encoded checks itself (:meth:`Encoded.validate`) when it is built, when
it is loaded and again before it is decoded, so no kernel ever reads past
its buffers: every part present that the format needs and no other, each
of the code dtype and the exact size its format, shape and axis imply,
torch parts on one device, scale codes within their width, the tensor
scale a positive finite float32 value. Any code within its width is valid
and decodes (negative E4M3 scale codes and NaN codes included), so a file
either loads into an Encoded that decodes correctly or raises ValueError.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .arrays import code_dtype, numpy_view
from .families import FAMILIES

KINDS = ("torch", "numpy")


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
    zero_points: Any = None
    scale_offset: float | None = None

    def __post_init__(self) -> None:
        for name in ("shape", "axis"):  # as JSON and numpy give them; frozen as tuples of ints
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(int(n) if isinstance(n, np.integer) else n for n in value))
        self.validate()

    def validate(self) -> None:
        """Check the parts against the format, shape and axis (see the module
        docstring); TypeError for a part of the wrong type, ValueError naming
        the part for anything else. Decoding and the matmuls call it first,
        so a part changed in place after construction is caught too."""
        fmt = self.format
        if type(fmt) not in FAMILIES.values() or not hasattr(fmt, "block_size"):
            raise TypeError(f"format must be a scaled format (BlockFormat or MicroexponentFormat), "
                            f"got {type(fmt).__name__}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if not isinstance(self.shape, tuple) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in self.shape):
            raise ValueError(f"shape must be a tuple of non-negative ints, got {self.shape!r}")
        layout = fmt.layout(self.shape, self.axis)
        devices = set()
        _check_part("elements", self.elements, torch.uint8,
                    (_packed_bytes(layout.nrows * layout.block, fmt.element_code_bits),), devices)
        self._check_scales(layout, devices)
        if fmt.zero_point:
            if self.zero_points is None:
                raise ValueError(f"zero_points are missing: {fmt.name} has one per block")
            _check_part("zero_points", self.zero_points, torch.uint8,
                        (_packed_bytes(layout.nrows, fmt.zero_point_code_bits),), devices)
        elif self.zero_points is not None:
            raise ValueError(f"zero_points must be None: {fmt.name} has no zero points")
        if fmt.subscales_per_block:
            if self.subscales is None:
                raise ValueError(f"subscales are missing: {fmt.name} has {fmt.subscales_per_block} per block")
            _check_part("subscales", self.subscales, torch.uint8,
                        (_packed_bytes(layout.nrows * fmt.subscales_per_block, fmt.subscale_code_bits),), devices)
        elif self.subscales is not None:
            raise ValueError(f"subscales must be None: {fmt.name} has no sub-block shifts")
        if len(devices) > 1:
            raise ValueError(f"the parts must lie on one device, got {', '.join(sorted(devices))}")
        check_tensor_scale(fmt, self.tensor_scale)

    def _check_scales(self, layout: Any, devices: set[str]) -> None:
        """Scale codes in the layout's scales shape; or, with double
        quantization, an Encoded of the second-level format and a float32 offset."""
        fmt = self.format
        if fmt.double_quant is None:
            _check_part("scales", self.scales, code_dtype(fmt.scale_code_bits), layout.scales_shape, devices)
            _check_codes("scales", self.scales, fmt.scale_code_bits)
            if self.scale_offset is not None:
                raise ValueError(f"scale_offset must be None: {fmt.name} has no double quantization")
            return
        second = self.scales
        if not isinstance(second, Encoded):
            raise TypeError(f"scales must be an Encoded of {fmt.double_quant.name} ({fmt.name} double-quantizes its "
                            f"scales), got {type(second).__name__}")
        if second.format != fmt.double_quant or second.shape != (layout.nrows,) or second.kind != self.kind:
            raise ValueError(f"scales must encode the {layout.nrows} block scales in {fmt.double_quant.name} "
                             f"({self.kind}); got {second.format.name} of shape {second.shape} ({second.kind})")
        second.validate()
        devices.update(str(p.device) for p in (second.elements,) if isinstance(p, torch.Tensor))
        offset = self.scale_offset
        if isinstance(offset, bool) or not isinstance(offset, numbers.Real) or not (
                math.isfinite(offset) and float(np.float32(offset)) == offset):
            raise ValueError(f"scale_offset must be a finite float32 value, got {offset!r:.40}")

    @property
    def nbytes(self) -> int:
        """Bytes the encoding really takes: packed elements, scale codes (or
        the encoded scales and their float32 offset), zero points, packed
        sub-block shifts and the float32 tensor scale."""
        parts = (self.elements, self.scales, self.subscales, self.zero_points)
        floats = (self.tensor_scale, self.scale_offset)
        return sum(p.nbytes for p in parts if p is not None) + 4 * sum(f is not None for f in floats)

    @property
    def bits(self) -> float:
        """Stored bits per element of the true shape (:attr:`nbytes` * 8 / elements); NaN for an empty tensor."""
        count = math.prod(self.shape)
        return self.nbytes * 8 / count if count else math.nan

    def decode(self, *, dtype: Any = None, backend: str | None = None) -> Any:
        """The decoded values, float32 unless ``dtype`` says float64; a numpy
        array when the encoded input was numpy, else a torch tensor.
        ``backend``: as in the format's ``decode``."""
        return self.format.decode(self, dtype=dtype, backend=backend)

    def save(self, path: str | os.PathLike) -> None:
        """Write to an ``.npz`` file (numpy arrays and the format as JSON)."""
        arrays = _arrays(self, "")
        arrays["meta"] = np.array(json.dumps({"format": format_to_dict(self.format), **_meta(self)}))
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Encoded":
        """Read an ``.npz`` file written by :meth:`save`: numpy arrays if the
        encoded input was numpy, else torch tensors on ``device``. The file
        is untrusted: anything but a valid Encoded (see :meth:`validate`)
        raises ValueError naming the file and what is wrong with it."""
        try:
            with np.load(path, allow_pickle=False) as data:
                parts = {name: data[name] for name in data.files
                         if name == "meta" or name.removeprefix("scales.") in PART_NAMES}
        except (ValueError, OSError, EOFError, MemoryError, zipfile.BadZipFile) as error:
            if isinstance(error, FileNotFoundError):
                raise
            why = "its arrays claim more memory than there is" if isinstance(error, MemoryError) else (
                "it holds pickled data or no arrays" if "pickle" in str(error) else error)
            raise ValueError(f"{path}: not an .npz file that Encoded.save wrote ({why})") from error
        try:
            meta = _read_meta(parts)
            return _from_arrays(cls, format_from_dict(meta["format"]), meta, parts, "", device)
        except (ValueError, TypeError, RecursionError) as error:
            raise ValueError(f"{path}: {error}") from error

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Encoded):
            return NotImplemented
        def same(a: Any, b: Any) -> bool:
            if isinstance(a, Encoded) or isinstance(b, Encoded):
                return a == b
            return (a is None) == (b is None) and (a is None or np.array_equal(_to_numpy(a), _to_numpy(b)))

        return (self.format == other.format and self.shape == other.shape and self.axis == other.axis
                and all(same(getattr(self, name), getattr(other, name)) for name in PART_NAMES)
                and self.tensor_scale == other.tensor_scale and self.scale_offset == other.scale_offset)

    __hash__ = None  # mutable payload


#: The array parts of an Encoded, as save names them (a double-quantized
#: format's second level is saved under "scales.").
PART_NAMES = ("elements", "scales", "subscales", "zero_points")


def _arrays(encoded: Encoded, prefix: str) -> dict[str, np.ndarray]:
    """The numpy arrays of an Encoded's parts, named with ``prefix``; a second level's under "scales."."""
    out = {}
    for name in PART_NAMES:
        part = getattr(encoded, name)
        if isinstance(part, Encoded):
            out.update(_arrays(part, f"{prefix}{name}."))
        elif part is not None:
            out[prefix + name] = _to_numpy(part)
    return out


def _meta(encoded: Encoded) -> dict[str, Any]:
    """An Encoded's layout and floats as JSON; a second level's under "scales"."""
    record = {"shape": list(encoded.shape), "axis": list(encoded.axis) if isinstance(encoded.axis, tuple)
              else encoded.axis, "kind": encoded.kind,
              "tensor_scale": None if encoded.tensor_scale is None else float(encoded.tensor_scale)}
    if encoded.scale_offset is not None:
        record["scale_offset"] = float(encoded.scale_offset)
        record["scales"] = _meta(encoded.scales)
    return record


def _from_arrays(cls: type, fmt: Any, meta: dict[str, Any], parts: dict[str, np.ndarray], prefix: str,
                 device: Any) -> Encoded:
    """The Encoded that :func:`_arrays` and :func:`_meta` wrote, validated."""
    as_kind = (lambda a: a) if meta["kind"] == "numpy" else (lambda a: torch.from_numpy(a).to(device))
    second = getattr(fmt, "double_quant", None)
    if second is not None:
        if not isinstance(meta.get("scales"), dict):
            raise ValueError(f"{fmt.name} double-quantizes its scales; meta has no record of them")
        scales = _from_arrays(cls, second, _checked_meta(meta["scales"]), parts, prefix + "scales.", device)
    else:
        scales = as_kind(_part(parts, prefix + "scales"))
    optional = {name: as_kind(parts[prefix + name]) if prefix + name in parts else None
                for name in ("subscales", "zero_points")}
    return cls(format=fmt, shape=meta["shape"], axis=meta["axis"], elements=as_kind(_part(parts, prefix + "elements")),
               scales=scales, tensor_scale=meta["tensor_scale"], kind=meta["kind"],
               scale_offset=meta.get("scale_offset"), **optional)


def _part(parts: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in parts:
        raise ValueError(f"the file has no {name!r} array")
    return parts[name]


def _packed_bytes(count: int, bits: int) -> int:
    return -(-count * bits // 8)


def _check_part(name: str, part: Any, dtype: torch.dtype, shape: tuple[int, ...], devices: set[str]) -> None:
    """TypeError unless ``part`` is an array or tensor; ValueError unless it has ``dtype`` and ``shape``."""
    if isinstance(part, torch.Tensor):
        part_dtype = part.dtype
        if part.layout != torch.strided or part.is_nested:
            raise ValueError(f"{name} must be a dense tensor, got layout {part.layout}")
        if part.is_meta:
            raise ValueError(f"{name} is on the meta device and holds no codes")
        devices.add(str(part.device))
    elif isinstance(part, np.ndarray):
        if part.dtype.kind not in "biufc" or part.dtype.byteorder == ">":
            raise ValueError(f"{name} must have dtype {str(dtype).removeprefix('torch.')}, got {part.dtype}")
        part_dtype = torch.from_numpy(np.empty(0, part.dtype)).dtype
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(part).__name__}")
    if part_dtype != dtype:
        raise ValueError(f"{name} must have dtype {str(dtype).removeprefix('torch.')}, "
                         f"got {str(part_dtype).removeprefix('torch.')}")
    if tuple(part.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} for this format, shape and axis; "
                         f"got {tuple(part.shape)}")


def _check_codes(name: str, part: Any, bits: int) -> None:
    """ValueError unless every code lies in [0, 2**bits) (only wider dtypes can hold others)."""
    if part.dtype.itemsize * 8 > bits and math.prod(part.shape):
        largest = int(part.max()) if isinstance(part, np.ndarray) else int(part.to(torch.int32).max())
        if largest >= 1 << bits:
            raise ValueError(f"{name} must lie in [0, {1 << bits}) for {bits}-bit codes, got {largest}")


def check_tensor_scale(fmt: Any, tensor_scale: Any) -> None:
    """ValueError unless ``tensor_scale`` suits ``fmt``: None for a format
    without a per-tensor scale, else a positive float32 value that decoding
    cannot overflow with."""
    if not fmt.tensor_scale:
        if tensor_scale is not None:
            raise ValueError(f"tensor_scale must be None: {fmt.name} has no per-tensor scale")
        return
    if isinstance(tensor_scale, bool) or not isinstance(tensor_scale, numbers.Real):
        raise ValueError(f"tensor_scale must be a float: {fmt.name} has a per-tensor scale; got {tensor_scale!r}")
    # the largest a tensor scale from encode can be; a larger one overflows float32 in decoding
    largest = float(np.float32(np.finfo(np.float32).max / np.float32(fmt.scale.max * fmt.element.max)))
    try:
        value = float(tensor_scale)
    except OverflowError:
        value = math.inf
    if not 0 < value <= largest:
        raise ValueError(f"tensor_scale must be a positive float32 value of at most {largest!r} (the datapath "
                         f"holds it in float32, and a larger one overflows decoding), got {tensor_scale!r:.40}")
    nearest = float(np.float32(value))
    if nearest != value:
        raise ValueError(f"tensor_scale must be a float32 number exactly (the datapath holds it in float32), got "
                         f"{tensor_scale!r:.40}; the nearest float32 is {nearest!r}")


def _read_meta(parts: dict[str, np.ndarray]) -> dict[str, Any]:
    """The meta record of a saved Encoded, its keys checked."""
    if "meta" not in parts:
        raise ValueError("the file has no 'meta' array")
    meta = parts["meta"]
    if meta.shape != () or meta.dtype.kind != "U":
        raise ValueError("meta must be a JSON string")
    try:
        record = json.loads(str(meta))
    except ValueError as error:  # JSONDecodeError, or an int of too many digits
        raise ValueError(f"meta is not JSON that Encoded.save writes ({error})") from error
    if not isinstance(record, dict) or "format" not in record:
        raise ValueError("meta must be a JSON object with the key format")
    return _checked_meta(record)


def _checked_meta(record: Any) -> dict[str, Any]:
    """A layout record (shape, axis, kind, tensor_scale), its keys and their types checked."""
    keys = {"shape", "axis", "tensor_scale", "kind"}
    if not isinstance(record, dict) or not keys <= record.keys():
        raise ValueError(f"meta must be a JSON object with the keys {', '.join(sorted(keys))}")
    if not isinstance(record["shape"], list):
        raise ValueError(f"shape must be a list of ints, got {record['shape']!r:.100}")
    if record["kind"] not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {record['kind']!r:.100}")
    return record


def _to_numpy(a: Any) -> np.ndarray:
    return numpy_view(a.cpu()) if isinstance(a, torch.Tensor) else np.asarray(a)


def format_to_dict(fmt: Any) -> dict:
    """A JSON-able description of a format, nested formats included."""
    out = {"family": type(fmt).__name__}
    for field in dataclasses.fields(fmt):
        value = getattr(fmt, field.name)
        out[field.name] = format_to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def format_from_dict(d: dict) -> Any:
    """Inverse of :func:`format_to_dict`; ValueError for a record that names
    no format family or arguments the family does not take."""
    if not isinstance(d, dict) or d.get("family") not in FAMILIES:
        raise ValueError(f"a format record must be a JSON object whose 'family' is one of "
                         f"{', '.join(sorted(FAMILIES))}; got {d!r:.200}")
    d = dict(d)
    family = FAMILIES[d.pop("family")]
    known = {f.name for f in dataclasses.fields(family)}
    if not d.keys() <= known:
        raise ValueError(f"{family.__name__} takes {', '.join(sorted(known))}; the record also has "
                         f"{', '.join(sorted(d.keys() - known))}")
    args = {k: format_from_dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    return family(**args)
