"""Dense bit packing of k-bit codes (1 <= k <= 16).

Layout (little-endian bit order): code i occupies bits i*k .. i*k + k - 1 of
the packed stream, its least significant bit first; bit j of the stream is
bit (j % 8) of byte j // 8. So 4-bit codes [a, b] pack into one byte
``a | b << 4``, and n codes take ceil(n * k / 8) bytes; unused high bits of
the last byte are zero.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


#: The widest code that packs (and so the widest element a scaled format holds).
MAX_CODE_BITS = 16


def _check_bits(bits: Any) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_CODE_BITS:
        raise ValueError(f"bits must be an int in 1..{MAX_CODE_BITS}, got {bits!r}")


def pack(codes: Any, bits: int) -> Any:
    """Pack the codes (flattened, C order) into a uint8 array/tensor.

    ``codes`` is an unsigned or signed integer numpy array or torch tensor
    whose values lie in [0, 2**bits); the result has the same kind and device.
    """
    _check_bits(bits)
    is_numpy = isinstance(codes, np.ndarray)
    if not is_numpy and not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a numpy array or torch tensor, got {type(codes).__name__}")
    t = torch.from_numpy(np.ascontiguousarray(codes)) if is_numpy else codes
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"codes must be integers, got dtype {t.dtype}")
    t = t.reshape(-1).to(torch.int64)
    if t.numel() and (bool((t < 0).any()) or bool((t >> bits).any())):
        raise ValueError(f"codes must lie in [0, {1 << bits}) to pack into {bits} bits")
    shifts = torch.arange(bits, device=t.device)
    stream = ((t[:, None] >> shifts) & 1).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, (-stream.numel()) % 8))
    packed = (stream.reshape(-1, 8) << torch.arange(8, device=t.device)).sum(dim=1).to(torch.uint8)
    return packed.cpu().numpy() if is_numpy else packed


def unpack(data: Any, bits: int, count: int) -> Any:
    """Inverse of :func:`pack`: the first ``count`` codes of the packed bytes,
    as uint8 (bits <= 8) or uint16, in the kind and device of ``data``."""
    _check_bits(bits)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    is_numpy = isinstance(data, np.ndarray)
    if not is_numpy and not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a numpy array or torch tensor, got {type(data).__name__}")
    t = torch.from_numpy(np.ascontiguousarray(data)) if is_numpy else data
    if t.dtype != torch.uint8:
        raise TypeError(f"data must be uint8 bytes, got dtype {t.dtype}")
    t = t.reshape(-1)
    if t.numel() * 8 < count * bits:
        raise ValueError(f"{t.numel()} bytes hold fewer than count={count} codes of {bits} bits")
    group_bits = math.lcm(bits, 8)
    if group_bits <= 32:  # whole groups of bytes hold whole groups of codes: shift them out of int32 words
        group_bytes, per_group = group_bits // 8, group_bits // bits
        groups = -(-count // per_group)
        length = groups * group_bytes
        data = torch.nn.functional.pad(t[:length], (0, length - min(t.numel(), length)))
        byte_shifts = torch.arange(0, group_bits, 8, device=t.device, dtype=torch.int32)
        words = (data.reshape(groups, group_bytes).to(torch.int32) << byte_shifts).sum(dim=1, dtype=torch.int32)
        code_shifts = torch.arange(0, group_bits, bits, device=t.device, dtype=torch.int32)
        codes = ((words[:, None] >> code_shifts) & ((1 << bits) - 1)).reshape(-1)[:count]
    else:
        stream = ((t.to(torch.int64)[:, None] >> torch.arange(8, device=t.device)) & 1).reshape(-1)[: count * bits]
        codes = (stream.reshape(count, bits) << torch.arange(bits, device=t.device)).sum(dim=1)
    codes = codes.to(torch.uint8 if bits <= 8 else torch.uint16)
    return codes.cpu().numpy() if is_numpy else codes
