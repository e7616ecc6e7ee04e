"""Shapes and dtypes of the extension's ops without running them
(torch.library fake implementations), so torch.compile can trace calls."""

from __future__ import annotations

import functools

import torch


def _rows(shape, axis: int, block: int) -> int:
    """How many blocks an input of ``shape`` has along ``axis``."""
    shape = list(shape) or [1]
    length = shape[axis]
    rest = 1
    for k, size in enumerate(shape):
        rest *= 1 if k == axis else size
    return rest * -(-length // block)


def _flag(x: torch.Tensor, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    return x.new_empty((), dtype=dtype)


def _bytes(x: torch.Tensor, bits: int) -> torch.Tensor:
    return x.new_empty((-(-bits // 8),), dtype=torch.uint8)


def _quantized(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A quantize's outputs: values in x's shape and dtype, and the inexact flag."""
    return torch.empty_like(x, memory_format=torch.contiguous_format), _flag(x)


def _codes(x: torch.Tensor, code_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An element encode's outputs: a code per element, and the first invalid index."""
    dtype = {8: torch.uint8, 16: torch.uint16, 32: torch.uint32}[code_bits]
    return x.new_empty(x.shape, dtype=dtype), _flag(x, torch.int64)


def _decoded(codes: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """An element decode's outputs: values in the codes' shape, and the out-of-range flag."""
    return codes.new_empty(codes.shape, dtype=dtype), _flag(codes)


def _packed_blocks(x: torch.Tensor, axis: int, block: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A block encode's outputs: the packed element codes, and a scale code per block."""
    rows = _rows(x.shape, axis, block)
    return _bytes(x, rows * block * bits), x.new_empty((rows,), dtype=torch.int32)


def element_quantize(x, desc, mode, overflow, key, tiny):
    return _quantized(x)


def element_encode(x, desc, mode, overflow, key, tiny, code_bits):
    return _codes(x, code_bits)


def element_decode(codes, desc, nbits, dtype):
    return _decoded(codes, dtype)


def block_quantize(x, axis, element, scale, params, mode, key, tiny):
    return _quantized(x)


def block_encode(x, axis, element, scale, params, mode, key, tiny):
    return _packed_blocks(x, axis, int(params[7]), int(params[8]))


def block_decode(elements, scales, shape, axis, element, scale, params, dtype):
    return elements.new_empty(shape, dtype=dtype)


def microexponent_quantize(x, axis, params, mode, key, tiny):
    return _quantized(x)


def microexponent_encode(x, axis, params, mode, key, tiny):
    man, block, sub_block, micro = params[0], params[1], params[2], params[4]
    rows = _rows(x.shape, axis, block)
    return (_bytes(x, rows * block * (man + 1)), x.new_empty((rows,), dtype=torch.int32),
            _bytes(x, rows * (block // sub_block) * micro))


def microexponent_decode(elements, scales, subscales, shape, axis, params, dtype):
    return elements.new_empty(shape, dtype=dtype)


def codebook_quantize(x, table, mode, key, tiny):
    return _quantized(x)


def codebook_encode(x, table, mode, key, tiny, code_bits):
    return _codes(x, code_bits)


def codebook_decode(codes, table, nbits, dtype):
    return _decoded(codes, dtype)


def codebook_block_quantize(x, axis, table, block, bits, mode, key, tiny):
    return _quantized(x)


def codebook_block_encode(x, axis, table, block, bits, mode, key, tiny):
    return _packed_blocks(x, axis, block, bits)


def codebook_block_decode(elements, scales, shape, axis, table, block, bits, dtype):
    return elements.new_empty(shape, dtype=dtype)


def mx_prepare(packed, scale_codes, element_table, scale_table, code_bits, rows, k):
    width = k * (element_table.shape[1] if element_table is not None else 1)
    blocks = scale_codes.numel() // rows if rows else 0
    return packed.new_empty((rows, width)), packed.new_empty((rows, blocks), dtype=torch.float32)


def mx_matmul(a, a_scales, b, b_scales, bias, a_type, b_type, block, out_dtype):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=out_dtype)


OPS = (element_quantize, element_encode, element_decode, block_quantize, block_encode, block_decode,
       microexponent_quantize, microexponent_encode, microexponent_decode, codebook_quantize, codebook_encode,
       codebook_decode, codebook_block_quantize, codebook_block_encode, codebook_block_decode, mx_prepare, mx_matmul)


@functools.cache
def register(namespace: str) -> None:
    """Register the fake implementations of a loaded build's ops (once)."""
    for op in OPS:
        torch.library.register_fake(f"{namespace}::{op.__name__}")(op)
