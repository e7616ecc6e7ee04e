"""The formats' backend contract (:class:`lowbit.formats.backends.Backend`)
over the extension's torch ops, for each build: ``lowbit_cuda`` (CUDA
tensors), ``lowbit_host`` (the host twin) and ``lowbit_emulated`` (CPU tensors).

Formats reach the kernels as the descriptors of :mod:`lowbit.formats.abi`,
whose field numbers the CUDA headers include (``cuda/abi.h``). Inputs may
have any strides: element formats read a contiguous copy of a
non-contiguous input; block formats read blocks through an (outer, axis,
inner) view where the strides allow one. Outputs are new contiguous
tensors on the input's device.
"""

from __future__ import annotations

import functools

import torch

from lowbit.formats import BlockFormat, CodebookFormat, Policy
from lowbit.formats.abi import (
    KernelBackend, block_params, element_descriptor, flush_threshold, microexponent_params, overflow_code,
    rounding_code,
)
from lowbit.formats.arrays import code_dtype, codes_range_error
from lowbit.formats.reference import quantize_through_codes

#: integer code dtypes the ops read as they are; others are read as int64
_CODE_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32, torch.int64)


def signed_key(key: int | None) -> int:
    """A stochastic key (0..2**64-1, None for 0) as the int64 with its bits (op arguments are int64)."""
    key = key or 0
    return key - (1 << 64) if key >= 1 << 63 else key


def _element_policy(t: torch.Tensor, policy: Policy) -> tuple[int, int, int, float]:
    """An element op's policy arguments: rounding, overflow, key, flush threshold."""
    return (rounding_code(policy.rounding, policy.sr_bits), overflow_code(policy.overflow), signed_key(policy.key),
            flush_threshold(t.dtype, policy.flush_subnormals))


def _block_policy(t: torch.Tensor, policy: Policy) -> tuple[int, int, float]:
    """A block op's policy arguments: rounding, key, flush threshold."""
    return (rounding_code(policy.rounding, policy.sr_bits), signed_key(policy.key),
            flush_threshold(t.dtype, policy.flush_subnormals))


@functools.lru_cache(maxsize=64)
def _cached_table(table: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(table, dtype=torch.float64, device=device)


def _table(table: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A codebook's values as the ops take them: float64 on the data's
    device, cached per table and device (64 of them). On a GPU the table is
    marked in use by the current stream, so that the caching allocator does
    not hand its memory out while a kernel of this call may read it (after
    the cache drops it, from a stream other than the one it was made on)."""
    values = _cached_table(table, device)
    if values.is_cuda:
        values.record_stream(torch.cuda.current_stream(device))
    return values


def _codebook_blocks(fmt) -> bool:
    """Whether fmt is a BlockFormat of codebook elements (fp32 scales: KernelBackend checks)."""
    return isinstance(fmt, BlockFormat) and isinstance(fmt.element, CodebookFormat)


def _fp32_bits(scales: torch.Tensor) -> torch.Tensor:
    """fp32 scales as the int32 bits the codebook block ops read: codes of
    any integer dtype (0 .. 2**32 - 1), or float32 values (the scales of a
    double quantization)."""
    if scales.is_floating_point():
        return scales.to(torch.float32).contiguous().view(torch.int32)
    wide = scales.to(torch.int64)
    return torch.where(wide >= 1 << 31, wide - (1 << 32), wide).to(torch.int32)


class ElementOps:
    """Element formats (FloatFormat, IntFormat, CodebookFormat) on one build's ops."""

    def __init__(self, ops) -> None:
        self.ops = ops

    def quantize(self, fmt, t: torch.Tensor, policy: Policy) -> tuple[torch.Tensor, bool]:
        """The rounded values in t's dtype and shape, and whether they all fit that dtype exactly."""
        if isinstance(fmt, CodebookFormat):
            out, inexact = self.ops.codebook_quantize(t, _table(fmt.table, t.device), *_block_policy(t, policy))
        else:
            out, inexact = self.ops.element_quantize(t, element_descriptor(fmt), *_element_policy(t, policy))
        return out, not bool(inexact)

    def encode(self, fmt, t: torch.Tensor, policy: Policy) -> tuple[torch.Tensor, int | None]:
        """The codes in t's shape, and the flat index of the first element
        the format cannot represent (None if every element encoded)."""
        bits = torch.iinfo(code_dtype(fmt.nbits)).bits
        if isinstance(fmt, CodebookFormat):
            codes, first_invalid = self.ops.codebook_encode(t, _table(fmt.table, t.device), *_block_policy(t, policy),
                                                            bits)
        else:
            codes, first_invalid = self.ops.element_encode(t, element_descriptor(fmt), *_element_policy(t, policy),
                                                           bits)
        bad = int(first_invalid)
        return codes, None if bad == -1 else bad

    def decode(self, fmt, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The values of integer codes in ``dtype``; ValueError for codes outside [0, 2**nbits)."""
        if codes.dtype not in _CODE_DTYPES:
            codes = codes.to(torch.int64)
        if isinstance(fmt, CodebookFormat):
            out, out_of_range = self.ops.codebook_decode(codes, _table(fmt.table, codes.device), fmt.nbits, dtype)
        else:
            out, out_of_range = self.ops.element_decode(codes, element_descriptor(fmt), fmt.nbits, dtype)
        if bool(out_of_range):
            raise codes_range_error(fmt.nbits)
        return out


class ScaledOps:
    """Scaled formats (BlockFormat, MicroexponentFormat) on one build's ops."""

    def __init__(self, ops) -> None:
        self.ops = ops

    def tensor_scale(self, fmt, t: torch.Tensor, policy: Policy) -> float | None:
        """NVFP4's per-tensor scale from the largest finite magnitude (None for formats without one)."""
        if not (isinstance(fmt, BlockFormat) and fmt.tensor_scale):
            return None
        magnitudes = t.abs()
        keep = torch.isfinite(magnitudes) & (magnitudes >= flush_threshold(t.dtype, policy.flush_subnormals))
        amax = float(torch.where(keep, magnitudes, 0).max()) if t.numel() else 0.0
        return fmt.tensor_scale_of(amax)

    def _arguments(self, fmt, rule, ts, device: torch.device):
        """The format's descriptors, as its ops take them."""
        if _codebook_blocks(fmt):
            return (_table(fmt.element.table, device), fmt.block_size, fmt.element_code_bits)
        if isinstance(fmt, BlockFormat):
            return (element_descriptor(fmt.element), element_descriptor(fmt.scale), block_params(fmt, rule, ts))
        return (microexponent_params(fmt),)

    def _op(self, fmt, operation: str):
        """The build's op for ``operation`` (quantize, encode, decode) on fmt."""
        if _codebook_blocks(fmt):
            return getattr(self.ops, f"codebook_block_{operation}")
        return getattr(self.ops, f"{'block' if isinstance(fmt, BlockFormat) else 'microexponent'}_{operation}")

    def quantize(self, fmt, t: torch.Tensor, layout, policy: Policy, ts: float | None,
                 rescale=None) -> tuple[torch.Tensor, bool]:
        """t encoded and decoded, in its shape and dtype, and whether the dtype
        held every result exactly. ``rescale`` (double-quantized codebook
        blocks, the only double quantization KernelBackend lets through):
        through encode and decode."""
        if rescale is not None:
            return quantize_through_codes(self.encode, self.decode, fmt, t, layout, policy, ts, rescale)
        out, inexact = self._op(fmt, "quantize")(t, layout.axis, *self._arguments(fmt, policy.scale_rule, ts, t.device),
                                                 *_block_policy(t, policy))
        return out, not bool(inexact)

    def encode(self, fmt, t: torch.Tensor, layout, policy: Policy, ts: float | None):
        """(packed element codes, scale codes in the blocked shape, packed sub-block shifts or None, zero points: None)."""
        arguments = (t, layout.axis, *self._arguments(fmt, policy.scale_rule, ts, t.device), *_block_policy(t, policy))
        if isinstance(fmt, BlockFormat):
            elements, scales = self._op(fmt, "encode")(*arguments)
            subscales = None
        else:
            elements, scales, subscales = self.ops.microexponent_encode(*arguments)
            subscales = subscales if fmt.subscales_per_block else None
        scales = scales.to(code_dtype(fmt.scale_code_bits)).reshape(layout.scales_shape)
        return elements, scales, subscales, None

    def decode(self, fmt, layout, elements: torch.Tensor, scales: torch.Tensor, subscales: torch.Tensor | None,
               ts: float | None, dtype: torch.dtype, zero_points: torch.Tensor | None = None) -> torch.Tensor:
        """The values in the layout's true shape."""
        rule = fmt.scale_rule if isinstance(fmt, BlockFormat) else None
        arguments = (list(layout.shape), layout.axis, *self._arguments(fmt, rule, ts, elements.device), dtype)
        if isinstance(fmt, BlockFormat):
            return self._op(fmt, "decode")(elements, _fp32_bits(scales) if _codebook_blocks(fmt) else scales,
                                           *arguments)
        if subscales is None:
            subscales = torch.empty(0, dtype=torch.uint8, device=elements.device)
        return self.ops.microexponent_decode(elements, scales, subscales, *arguments)


#: the BlockFormat schemes (lowbit.formats.abi.SCHEMES) the CUDA kernels implement
CUDA_SCHEMES = frozenset({"products rounded to float32"})


def backend(name: str, device_type: str, namespace: str) -> KernelBackend:
    """A loaded build's ops (``torch.ops.<namespace>``) as the backend ``name``
    for ``device_type`` data, with :func:`lowbit.cuda.mx_matmul`'s product."""
    from .matmul import gpu_takes_product, product, takes_product

    ops = getattr(torch.ops, namespace)
    takes = gpu_takes_product if device_type == "cuda" else takes_product
    return KernelBackend(name, device_type, ElementOps(ops), ScaledOps(ops), takes,
                         functools.partial(product, ops), schemes=CUDA_SCHEMES, codebooks=True)
