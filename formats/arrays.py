"""Input normalisation: every public entry point accepts numpy arrays, torch
tensors and Python scalars, wraps them as a torch tensor of their own dtype,
computes chunk by chunk on exact float64 copies (float16, bfloat16 and
float32 values are all exactly representable in float64, so that never
rounds), and returns the result in the caller's kind, dtype and device.
Inputs are never modified in place: numpy arrays are wrapped zero-copy
(whatever their strides) and only read.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

FLOAT_TORCH_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLOAT_NUMPY_DTYPES = (np.float16, np.float32, np.float64)


NUMPY_TO_TORCH = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
                  np.dtype(np.float64): torch.float64}


@dataclass(frozen=True)
class InputKind:
    """How to give a result back in the form the input came in."""

    kind: str  # "torch", "numpy", "numpy_scalar" or "python"
    dtype: torch.dtype  # the input's float dtype, as a torch dtype

    def inexact_error(self) -> ValueError:
        """The error for results that the input's dtype cannot hold exactly."""
        return ValueError(
            f"the result holds values that {self.dtype} cannot represent exactly "
            "(outside its range or precision); pass the input as float32 or float64"
        )

    def give_back_array(self, t: torch.Tensor) -> Any:
        """A result tensor that is an array whatever the input's shape (the
        packed codes and scales of an :class:`Encoded`): itself for torch
        input, else a numpy array (for Python and numpy scalars too)."""
        return t if self.kind == "torch" else t.cpu().numpy()

    def give_back(self, t: torch.Tensor) -> Any:
        """A result tensor (values or codes) in the input's kind."""
        if self.kind == "torch":
            return t
        out = t.cpu().numpy()
        if self.kind == "python":
            return out.item()
        if self.kind == "numpy_scalar":
            return out[()]
        return out


def difference_rounded_to_odd(values: torch.Tensor, subtrahend: float) -> torch.Tensor:
    """values - subtrahend for float64 ``values``, rounded to odd: the
    nearest float64 where it is exact, else whichever of the two float64
    neighbours of the exact difference has an odd last bit. Rounding that
    once more to at most 51 significant bits (and comparing it with any
    float64 of at most 52) then decides as the exact difference would
    (Boldo and Melquiond's round-to-odd): a difference just inside a tie
    stays inside it. NaN and Inf as float64 subtraction gives them."""
    nearest = values - subtrahend
    # TwoSum: the exact difference is nearest + error
    back = nearest - values
    error = (values - (nearest - back)) + (-subtrahend - back)
    inexact = error != 0
    if not bool(inexact.any()):  # every difference exact: the common case
        return nearest
    inexact &= torch.isfinite(error) & ((nearest.view(torch.int64) & 1) == 0)  # and even
    toward = torch.where(error > 0, torch.inf, -torch.inf).to(torch.float64)
    return torch.where(inexact, torch.nextafter(nearest, toward), nearest)


def finite_mean_float32(values: torch.Tensor) -> float:
    """float32(math.fsum(finite) / n) for the n finite ones of float64
    ``values`` (0.0 when none is): their exact sum rounded once to float64,
    divided by n in float64, rounded to nearest even float32. Taken from
    the float64 sum torch computes when its error bound (gamma(n - 1) times
    the sum of magnitudes, whatever the order of the additions) leaves one
    float32 for every float64 the exact steps could give; else from
    math.fsum itself."""
    finite = values[torch.isfinite(values)]
    n = finite.numel()
    if n == 0:
        return 0.0
    u = 2.0 ** -53
    total, magnitudes = float(finite.sum()), float(finite.abs().sum())
    error = (n * u / (1.0 - n * u)) * magnitudes * (1.0 + 4.0 * n * u)
    # the exact sum lies within error of total; fsum's rounding and the division's add 2u of |mean| each,
    # the computations of the bounds below a few u more: 8u of (|total| + error) covers them all
    reach = (error + 8.0 * u * (abs(total) + error)) * (1.0 + 8.0 * u) + 2.0 ** -1070
    low, high = np.float32((total - reach) / n), np.float32((total + reach) / n)
    if n * u < 2.0 ** -20 and low == high and low != 0:  # a zero's sign is math.fsum's to give
        return float(low)
    return float(np.float32(math.fsum(finite.tolist()) / n))


def cast_exactly(t64: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """float64 (or float32) values cast to ``dtype``, and whether every one
    survived the cast unchanged (NaN counts as NaN); a cast to float64 or to
    the values' own dtype is exact and not checked. A NaN keeps its sign in
    every dtype: bfloat16 NaNs are 0x7FC0 or 0xFFC0, as the kernels give
    (torch's own cast picks the sign bit differently in its vectorised and
    scalar paths)."""
    out = t64.to(dtype)
    if dtype == torch.bfloat16:
        nan_bits = torch.where(torch.signbit(t64), -0x40, 0x7FC0).to(torch.int16)  # -0x40 is 0xFFC0
        out = torch.where(torch.isnan(t64), nan_bits.view(torch.bfloat16), out)
    if dtype in (torch.float64, t64.dtype):
        return out, True
    back = out.to(torch.float64)
    return out, bool(((back == t64) | (torch.isnan(back) & torch.isnan(t64))).all())


def as_tensor(x: Any, name: str = "x") -> tuple[torch.Tensor, InputKind]:
    """``x`` as a torch tensor of its own float dtype, on its device, without
    copying where possible (numpy arrays are wrapped), and its kind.

    Accepts dense torch tensors and numpy arrays of
    float16/bfloat16/float32/float64 and Python or numpy float/int scalars
    (Python ints exactly, see :func:`int_to_odd_float`). Raises TypeError
    for anything else (integer, boolean or complex tensors, sparse or nested
    tensors, strings, lists) and ValueError for meta tensors, which hold no
    values. A negated view (``torch._neg_view``) is read as its values.
    """
    if isinstance(x, torch.Tensor):
        if x.dtype not in FLOAT_TORCH_DTYPES:
            raise TypeError(
                f"{name} must be a floating-point tensor (float16, bfloat16, float32 "
                f"or float64), got dtype {x.dtype}"
            )
        return _dense(x, name), InputKind("torch", x.dtype)
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} must not be a masked array (lowbit would round the masked values too); "
                        "pass x.filled(value) or x.compressed()")
    if isinstance(x, np.ndarray | np.generic):
        arr = np.asarray(x)
        if arr.dtype.type not in FLOAT_NUMPY_DTYPES:
            raise TypeError(
                f"{name} must be a floating-point array (float16, float32 or float64), "
                f"got dtype {arr.dtype}"
            )
        kind = "numpy_scalar" if isinstance(x, np.generic) else "numpy"
        return _from_numpy(arr), InputKind(kind, NUMPY_TO_TORCH[np.dtype(arr.dtype.type)])
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(
            f"{name} must be a torch tensor, a numpy array or a Python float, got {type(x).__name__}"
        )
    value = x if isinstance(x, float) else int_to_odd_float(x)
    return torch.tensor(value, dtype=torch.float64), InputKind("python", torch.float64)


def int_to_odd_float(n: int) -> float:
    """A Python int as a float64 that rounds like it: n itself when float64
    holds it, else n rounded to odd (truncated to 53 bits, the last bit set
    if any bit was dropped; beyond float64's range, +-max with its odd last
    bit). Rounding that float64 to any format of at most 51 significant bits
    (every lowbit format) gives the correctly rounded n in every
    deterministic mode; stochastic rounding draws against the 53-bit value."""
    magnitude = abs(n)
    drop = magnitude.bit_length() - 53
    if drop <= 0:
        return float(n)
    kept = magnitude >> drop
    if kept << drop != magnitude:
        kept |= 1
    odd = math.ldexp(kept, drop) if drop <= 1024 - 53 else sys.float_info.max
    return -odd if n < 0 else odd


def integer_input(codes: Any, name: str = "codes") -> tuple[torch.Tensor, InputKind]:
    """Integer codes as a torch tensor of their own dtype (numpy arrays
    wrapped without a copy), and their kind. TypeError for non-integers."""
    if isinstance(codes, torch.Tensor):
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {codes.dtype}")
        return _dense(codes, name), InputKind("torch", torch.int64)
    if isinstance(codes, np.ndarray | np.generic):
        arr = np.asarray(codes)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
        kind = InputKind("numpy_scalar" if isinstance(codes, np.generic) else "numpy", torch.int64)
        return _from_numpy(arr), kind
    if isinstance(codes, int) and not isinstance(codes, bool):
        return torch.tensor(codes, dtype=torch.int64), InputKind("python", torch.int64)
    raise TypeError(f"{name} must be an integer array, tensor or int, got {type(codes).__name__}")


def _dense(x: torch.Tensor, name: str) -> torch.Tensor:
    """x detached, its values resolved (a negated view reads as its values);
    TypeError for sparse and nested tensors, ValueError for meta ones."""
    if x.is_nested or x.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got a "
                        f"{'nested' if x.is_nested else str(x.layout).removeprefix('torch.')} one "
                        f"(convert it with .to_dense() or torch.nested.to_padded_tensor first)")
    if x.is_meta:
        raise ValueError(f"{name} is on the meta device and holds no values; materialize it first")
    return x.detach().resolve_neg()


def codes_range_error(nbits: int, name: str = "codes") -> ValueError:
    return ValueError(f"{name} must lie in [0, {1 << nbits}) for a {nbits}-bit format")


def as_codes(codes: Any, nbits: int, name: str = "codes") -> tuple[torch.Tensor, InputKind]:
    """Integer codes as an int64 tensor, checking each is in [0, 2**nbits)."""
    t, kind = integer_input(codes, name)
    t = t.to(torch.int64)
    if t.numel() and (bool((t < 0).any()) or bool((t >= (1 << nbits)).any())):
        raise codes_range_error(nbits, name)
    return t, kind


def as_torch(part: Any) -> torch.Tensor:
    """A numpy array or tensor as a tensor (numpy arrays wrapped as by
    :func:`as_tensor`, without a copy where torch can wrap them)."""
    return part if isinstance(part, torch.Tensor) else _from_numpy(np.asarray(part))


def _from_numpy(arr: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory (read only by lowbit); arrays
    torch cannot wrap (negative strides, non-native byte order) are copied,
    their values unchanged."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if any(stride < 0 for stride in arr.strides):
        arr = arr.copy()
    with warnings.catch_warnings():  # read-only arrays: lowbit never writes its inputs
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as a writeable numpy array, without a copy and
    without pinning it: ``Tensor.numpy()`` marks the tensor's storage as
    never resizable again, for good, and FSDP (1 and 2) frees a gathered
    parameter by resizing its storage to zero, so a parameter lowbit had
    read that way could no longer be freed ("Trying to resize storage that
    is not resizable"). DLPack shares the memory and leaves the storage as
    it was. Storages that cannot be resized anyway (numpy-backed: lowbit's
    own buffers, wrapped arrays) take the cheaper ``.numpy()``."""
    t = t.detach()
    if not t.untyped_storage().resizable():
        return t.numpy()
    return np.from_dlpack(t)


def code_dtype(nbits: int) -> torch.dtype:
    """The narrowest unsigned integer dtype that holds nbits-bit codes."""
    return torch.uint8 if nbits <= 8 else torch.uint16 if nbits <= 16 else torch.uint32


def float_dtype(dtype: Any) -> torch.dtype:
    """A decode dtype (torch or numpy float32/float64, None for float32) as a torch dtype."""
    if dtype is None:
        return torch.float32
    resolved = dtype if isinstance(dtype, torch.dtype) else NUMPY_TO_TORCH.get(np.dtype(dtype))
    if resolved not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return resolved


def decoded_in(dtype: torch.dtype, decode_to: Callable[[torch.dtype], torch.Tensor],
               may_overflow: Callable[[float], bool], name: str) -> torch.Tensor:
    """``decode_to(dtype)``, checked: ValueError if a finite value of the
    format overflowed ``dtype`` to infinity. Infinities the format itself
    encodes pass. ``may_overflow(limit)``: whether any value could exceed
    ``limit`` (a cheap bound, so that the exact check runs only then)."""
    values = decode_to(dtype)
    if dtype == torch.float64 or not may_overflow(torch.finfo(dtype).max) or not bool(torch.isinf(values).any()):
        return values
    if bool((torch.isinf(values) & torch.isfinite(decode_to(torch.float64))).any()):
        raise ValueError(f"values of {name} beyond {str(dtype).removeprefix('torch.')}'s range decoded to "
                         f"infinity; pass dtype=torch.float64 (or np.float64) to decode them exactly")
    return values


def pow2(k: torch.Tensor | int) -> torch.Tensor:
    """2**k as float64, exact for integer k in [-1074, 1023]."""
    k = torch.as_tensor(k)
    return torch.pow(2.0, k.to(torch.float64))
