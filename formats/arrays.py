"""Input normalisation: every public entry point accepts numpy arrays, torch
tensors and Python scalars, computes on an exact float64 torch tensor, and
returns its result in the caller's kind, dtype and device.

float16, bfloat16 and float32 values are all exactly representable in
float64, so the conversion never rounds. Inputs are never modified in place:
numpy arrays are wrapped zero-copy and only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

FLOAT_TORCH_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLOAT_NUMPY_DTYPES = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class InputKind:
    """How to give a result back in the form the input came in."""

    kind: str  # "torch", "numpy", "numpy_scalar" or "python"
    dtype: Any  # torch dtype for "torch", numpy dtype otherwise
    device: torch.device

    def restore(self, t64: torch.Tensor) -> Any:
        """Convert a float64 result back to the input's kind and dtype.

        Raises ValueError if a value would not survive the cast (a result
        outside the input dtype's range), instead of silently rounding it.
        """
        if self.kind == "torch":
            out = t64.to(self.dtype)
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                out = t64.cpu().numpy().astype(self.dtype)
        _check_cast_is_exact(t64, out, self.dtype)
        if self.kind == "python":
            return float(out)
        if self.kind == "numpy_scalar":
            return out[()]
        return out


def _check_cast_is_exact(t64: torch.Tensor, out: Any, dtype: Any) -> None:
    if dtype in (torch.float64, np.float64, np.dtype(np.float64)):
        return
    back = out.to(torch.float64) if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out, dtype=np.float64))
    back = back.to(t64.device)
    same = (back == t64) | (torch.isnan(back) & torch.isnan(t64))
    if not bool(same.all()):
        raise ValueError(
            f"the result holds values that {dtype} cannot represent exactly "
            "(outside its range or precision); pass the input as float32 or float64"
        )


def as_float64(x: Any, name: str = "x") -> tuple[torch.Tensor, InputKind]:
    """Return ``x`` as a float64 torch tensor (on x's device) and its kind.

    Accepts torch tensors and numpy arrays of float16/bfloat16/float32/float64
    and Python or numpy float/int scalars. Raises TypeError for anything else
    (integer, boolean or complex tensors, strings, lists).
    """
    if isinstance(x, torch.Tensor):
        if x.dtype not in FLOAT_TORCH_DTYPES:
            raise TypeError(
                f"{name} must be a floating-point tensor (float16, bfloat16, float32 "
                f"or float64), got dtype {x.dtype}"
            )
        return x.to(torch.float64), InputKind("torch", x.dtype, x.device)
    if isinstance(x, np.ndarray | np.generic):
        arr = np.asarray(x)
        if arr.dtype.type not in FLOAT_NUMPY_DTYPES:
            raise TypeError(
                f"{name} must be a floating-point array (float16, float32 or float64), "
                f"got dtype {arr.dtype}"
            )
        kind = "numpy_scalar" if isinstance(x, np.generic) else "numpy"
        t = torch.from_numpy(arr if arr.flags.c_contiguous and arr.flags.writeable else arr.copy())
        return t.to(torch.float64), InputKind(kind, arr.dtype, torch.device("cpu"))
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise TypeError(
            f"{name} must be a torch tensor, a numpy array or a Python float, got {type(x).__name__}"
        )
    return torch.tensor(float(x), dtype=torch.float64), InputKind("python", np.float64, torch.device("cpu"))


def as_codes(codes: Any, nbits: int, name: str = "codes") -> tuple[torch.Tensor, InputKind]:
    """Return integer codes as an int64 tensor, checking each is in [0, 2**nbits)."""
    if isinstance(codes, torch.Tensor):
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {codes.dtype}")
        kind = InputKind("torch", codes.dtype, codes.device)
        t = codes.to(torch.int64)
    elif isinstance(codes, np.ndarray | np.generic):
        arr = np.asarray(codes)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
        kind = InputKind("numpy_scalar" if isinstance(codes, np.generic) else "numpy", arr.dtype, torch.device("cpu"))
        t = torch.from_numpy(arr.astype(np.int64))
    elif isinstance(codes, int) and not isinstance(codes, bool):
        kind = InputKind("python", np.int64, torch.device("cpu"))
        t = torch.tensor(codes, dtype=torch.int64)
    else:
        raise TypeError(f"{name} must be an integer array, tensor or int, got {type(codes).__name__}")
    if t.numel() and (bool((t < 0).any()) or bool((t >= (1 << nbits)).any())):
        raise ValueError(f"{name} must lie in [0, {1 << nbits}) for a {nbits}-bit format")
    return t, kind


def code_dtype(nbits: int, kind: InputKind) -> Any:
    """The narrowest unsigned integer dtype that holds nbits-bit codes."""
    width = 8 if nbits <= 8 else 16 if nbits <= 16 else 32
    if kind.kind == "torch":
        return {8: torch.uint8, 16: torch.uint16, 32: torch.uint32}[width]
    return {8: np.uint8, 16: np.uint16, 32: np.uint32}[width]


def narrow_codes(codes: torch.Tensor, nbits: int, kind: InputKind) -> Any:
    """int64 codes → the narrowest unsigned dtype, in the caller's kind."""
    if kind.kind == "torch":
        return codes.to(code_dtype(nbits, kind))
    out = codes.cpu().numpy().astype(code_dtype(nbits, kind))
    if kind.kind == "python":
        return int(out)
    if kind.kind == "numpy_scalar":
        return out[()]
    return out


def pow2(k: torch.Tensor | int) -> torch.Tensor:
    """2**k as float64, exact for integer k in [-1074, 1023]."""
    k = torch.as_tensor(k)
    return torch.pow(2.0, k.to(torch.float64))
