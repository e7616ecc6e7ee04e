"""Element formats on the CPU kernels (the ``elements`` operations of the
``"cpu"`` backend, :class:`lowbit.formats.backends.ElementOps`): tensors in,
tensors out (the caller gives them back in the input's kind), the same
errors as the reference implementation.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..abi import ELEMENT_FIELDS, element_descriptor, flush_threshold, overflow_code, rounding_code
from ..arrays import cast_exactly, code_dtype, codes_range_error
from ..backends import Policy
from ..codebook import CodebookFormat
from . import codebook_kernels
from . import element_kernels as kernels
from . import fast32
from .buffers import new_tensor
from .fast_element_decode import decoded
from .views import numpy_data, planes_rows_cols


def _flat(t: torch.Tensor) -> np.ndarray:
    return numpy_data(t)[0].reshape(-1)


def _kernel_policy(t: torch.Tensor, policy: Policy) -> tuple[int, int, np.uint64, float]:
    """The general kernels' policy arguments: rounding, overflow, stochastic key, flush threshold."""
    return (rounding_code(policy.rounding, policy.sr_bits), overflow_code(policy.overflow), np.uint64(policy.key or 0),
            flush_threshold(t.dtype, policy.flush_subnormals))


def _fast_float32(fmt, t: torch.Tensor, policy: Policy):
    """The fast32 kernels and parameters that serve this call, or None."""
    if (t.dtype not in (torch.float32, torch.bfloat16) or policy.rounding not in ("nearest_even", "stochastic")
            or not t.is_contiguous()):
        return None
    params = fast32.float_params(fmt, policy.overflow, policy.flush_subnormals)
    if params is not None:
        return fast32.quantize_float, fast32.encode_float, params
    params = fast32.int_params(fmt, policy.flush_subnormals)
    if params is not None:
        return fast32.quantize_int, fast32.encode_int, params
    return None


def _codebook(fmt: CodebookFormat, t: torch.Tensor, policy: Policy,
              values: bool) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    """A codebook's codes of t (t's shape), its float32 values when asked
    for, and the flat index of the first NaN (None without)."""
    wide = t.dtype == torch.float64
    flat = _flat(t.contiguous() if wide or t.dtype == torch.float32 else t.to(torch.float32))  # exact widening
    codes = new_tensor(tuple(t.shape), code_dtype(fmt.nbits))
    out = new_tensor(tuple(t.shape), torch.float32) if values else None
    first_nan = np.full(codebook_kernels.span_count(t.numel()), codebook_kernels.NO_INDEX, dtype=np.int64)
    table, table32 = _codebook_tables(fmt)
    codebook_kernels.codebook_elements(flat, _flat(codes), _flat(out) if values else np.empty(0, np.float32), table,
                                       table32, rounding_code(policy.rounding, policy.sr_bits),
                                       np.uint64(policy.key or 0), flush_threshold(t.dtype, policy.flush_subnormals),
                                       first_nan)
    bad = int(first_nan.min(initial=codebook_kernels.NO_INDEX))
    return codes, out, None if bad == codebook_kernels.NO_INDEX else bad


@functools.lru_cache(maxsize=64)
def _codebook_tables(fmt: CodebookFormat) -> tuple[np.ndarray, np.ndarray]:
    """The codebook's values as float64 and as float32."""
    table = np.array(fmt.table, dtype=np.float64)
    return table, table.astype(np.float32)


def quantize(fmt, t: torch.Tensor, policy: Policy) -> tuple[torch.Tensor, bool]:
    """The rounded values in t's dtype and shape, and whether they all fit
    that dtype exactly."""
    if isinstance(fmt, CodebookFormat):
        _, values, _ = _codebook(fmt, t, policy, values=True)
        return cast_exactly(values, t.dtype)
    out = new_tensor(tuple(t.shape), t.dtype)
    fast = _fast_float32(fmt, t, policy)
    if fast is not None:
        lost = fast[0](_flat(t), _flat(out), fast[2], np.uint64(policy.key or 0),
                       rounding_code(policy.rounding, policy.sr_bits))
        return out, lost == 0
    data, half = numpy_data(t)
    inexact = np.zeros(kernels.span_count(t.numel()), dtype=np.bool_)
    mode, overflow, key, tiny = _kernel_policy(t, policy)
    kernels.quantize_elements(planes_rows_cols(data), _flat(out), element_descriptor(fmt), mode, overflow, key, half,
                              tiny, inexact)
    return out, not inexact.any()


def encode(fmt, t: torch.Tensor, policy: Policy) -> tuple[torch.Tensor, int | None]:
    """The codes in t's shape, and the flat index of the first element the
    format cannot represent (None if every element encoded)."""
    if isinstance(fmt, CodebookFormat):
        codes, _, bad = _codebook(fmt, t, policy, values=False)
        return codes, bad
    out = new_tensor(tuple(t.shape), code_dtype(fmt.nbits))
    fast = _fast_float32(fmt, t, policy)
    if fast is not None and fast[1](_flat(t), out.numpy().reshape(-1), fast[2], np.uint64(policy.key or 0),
                                    rounding_code(policy.rounding, policy.sr_bits)) == 0:
        return out, None
    data, half = numpy_data(t)
    first_invalid = np.full(kernels.span_count(t.numel()), kernels.NO_INDEX, dtype=np.int64)
    mode, overflow, key, tiny = _kernel_policy(t, policy)
    kernels.encode_elements(planes_rows_cols(data), out.numpy().reshape(-1), element_descriptor(fmt), mode, overflow,
                            key, half, tiny, first_invalid)
    bad = int(first_invalid.min(initial=kernels.NO_INDEX))
    return out, None if bad == kernels.NO_INDEX else bad


@functools.lru_cache(maxsize=64)
def decode_table(fmt) -> np.ndarray:
    """The value (float64) of every code of a format of at most 16 bits;
    empty for wider formats, which the decode kernel computes code by code."""
    return fmt.codes_of_values()[1] if fmt.nbits <= 16 else np.empty(0)


def decode(fmt, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The values of integer codes (any integer dtype) in ``dtype``; raises
    ValueError for codes outside [0, 2**nbits)."""
    out = new_tensor(tuple(codes.shape), dtype)
    if decoded(fmt, codes, out):
        return out
    out_of_range = np.zeros(kernels.span_count(codes.numel()), dtype=np.int64)
    descriptor = (0,) * ELEMENT_FIELDS if isinstance(fmt, CodebookFormat) else element_descriptor(fmt)  # table only
    kernels.decode_elements(planes_rows_cols(numpy_data(codes)[0]), out.numpy().reshape(-1), descriptor, fmt.nbits,
                            decode_table(fmt), out_of_range)
    if out_of_range.any():
        raise codes_range_error(fmt.nbits)
    return out
