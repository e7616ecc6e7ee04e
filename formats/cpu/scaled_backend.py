"""Scaled formats (BlockFormat, MicroexponentFormat) on the CPU kernels:
the ``scaled`` operations of the ``"cpu"`` backend
(:class:`lowbit.formats.backends.ScaledOps`). The input is
read in place through an (outer, axis, inner) view; outputs are new
tensors: values in the input's shape and dtype, or the packed codes and
scale codes of an :class:`~lowbit.formats.Encoded`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..abi import block_params, element_descriptor, flush_threshold, microexponent_params, rounding_code
from ..arrays import cast_exactly, code_dtype, numpy_view
from ..backends import Policy
from ..block_format import BlockFormat
from ..blocking import BlockLayout, Layout, TileLayout
from ..codebook import CodebookFormat
from ..packing import pack, unpack
from ..reference import quantize_through_codes
from . import (
    block_kernels, codebook_kernels, fast_amax, fast_block_decode, fast_int_blocks, fast_microexponent, fast_mx,
    microexponent_kernels,
)
from .bits import whole_bytes
from .buffers import new_tensor
from .fast32 import ROWS_PER_TASK
from .views import block_view, numpy_data, outer_axis_inner, planes_rows_cols


def tensor_scale(fmt, t: torch.Tensor, policy: Policy) -> float | None:
    """NVFP4's per-tensor scale (None for formats without one)."""
    if not (isinstance(fmt, BlockFormat) and fmt.tensor_scale):
        return None
    data, half = numpy_data(t)
    x = planes_rows_cols(data)
    amax = block_kernels.finite_amax(x, half, flush_threshold(t.dtype, policy.flush_subnormals)) if x.size else 0.0
    return fmt.tensor_scale_of(amax)


#: the scale rules the fast paths serve (``mse`` only with scales that have a mantissa: :mod:`.fast_amax`)
FAST_RULES = ("floor", "ceil", "rceil", "even", "amax", "minmax", "4over6", "mse")


def as_rows(t: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, BlockLayout]:
    """The input and a one-axis layout of it for the kernels: tiles copied
    out as contiguous rows of whole tiles (the kernels block one axis); any
    other layout as it is."""
    if not isinstance(layout, TileLayout):
        return t, layout
    rows = layout.to_blocks(t).reshape(layout.nrows, layout.block).contiguous()
    return rows, BlockLayout(tuple(rows.shape), 1, layout.block)


def block_arguments(fmt, rule: str, ts: float | None, block: int) -> tuple:
    """The block kernels' format arguments: element, scale and wide-integer
    descriptors (the integers zero-point blocks round x / s on) and the block parameters."""
    wide = fmt.zero_point_integers if fmt.zero_point else fmt.element
    return (element_descriptor(fmt.element), element_descriptor(fmt.scale), element_descriptor(wide),
            block_params(fmt, rule, ts, block))


def _common(t: torch.Tensor, layout: BlockLayout, policy: Policy):
    """The general kernels' arguments for t: its view, block count, mode, key, half type, flush threshold."""
    data, half = numpy_data(t)
    return (outer_axis_inner(data, layout.axis), layout.nblocks, rounding_code(policy.rounding, policy.sr_bits),
            np.uint64(policy.key or 0), half, flush_threshold(t.dtype, policy.flush_subnormals))


def _fast_rows(fmt, t: torch.Tensor, layout: Layout, policy: Policy):
    """The input as rows of whole blocks when the call can take a fast path
    (contiguous float32 or bfloat16 blocked along its last axis in whole
    blocks, nearest_even, no flushing), or as itself for tiles of its last
    two axes that divide their lengths; else None."""
    if (t.dtype not in (torch.float32, torch.bfloat16) or policy.rounding != "nearest_even" or policy.flush_subnormals
            or not t.is_contiguous() or (policy.scale_rule or "floor") not in FAST_RULES):
        return None
    data = numpy_data(t)[0]
    if isinstance(layout, TileLayout):
        (r, c), ndim = layout.tile, t.dim()
        return None if layout.axis != (ndim - 2, ndim - 1) or t.shape[-2] % r or t.shape[-1] % c else data
    if layout.axis != max(t.dim() - 1, 0) or layout.length % layout.block:
        return None
    return data.reshape(layout.nrows, layout.block)


def _fast_path(fmt, t: torch.Tensor, layout: Layout, policy: Policy, ts: float | None):
    """(kernel family: "int", "mx", "amax" or "microexponent", the blocks as
    rows (for "amax": its 4-d view of blocks or tiles), the family's
    parameters) when a fast kernel serves the call, else None."""
    rows = _fast_rows(fmt, t, layout, policy)
    if rows is None:
        return None
    if isinstance(layout, TileLayout):
        amax = fast_amax.scaled_block_params(fmt, policy.scale_rule, ts, layout.block)
        return None if amax is None else ("amax", block_view(rows, layout.tile), amax)
    if isinstance(fmt, BlockFormat):
        integers = fast_int_blocks.int_block_params(fmt, policy.scale_rule, layout.block)
        if integers is not None:
            return "int", rows, integers
        if fmt.block_size not in (None, layout.block) or fmt.zero_point:
            return None
        mx = fast_mx.mx_params(fmt, policy.scale_rule) if fmt.block_size == layout.block else None
        if mx is not None:
            return "mx", rows, mx
        amax = fast_amax.scaled_block_params(fmt, policy.scale_rule, ts, layout.block)
        return None if amax is None else ("amax", block_view(rows, None), amax)
    return ("microexponent", rows, microexponent_params(fmt)) if fast_microexponent.microexponent_fits(fmt) else None


def _in_whole_blocks(fmt, t: torch.Tensor, layout: Layout, policy: Policy,
                     ts: float | None) -> tuple[torch.Tensor, BlockLayout] | None:
    """t zero-padded along its last axis to whole blocks, and its layout,
    when its last block is partial and the padded tensor takes a fast path
    (a 4096 x 688 tensor in blocks of 32 then costs a copy rather than the
    general kernel's 30x); else None. Exact: every fast path scales a block
    by its amax, or by its minimum and maximum with zero included, and
    rounds each element alone, so zeros change neither the block's scale nor
    its other elements."""
    if (isinstance(layout, TileLayout) or not layout.length % layout.block or t.dim() == 0
            or layout.axis != t.dim() - 1 or not t.is_contiguous()):
        return None
    padded = new_tensor((*t.shape[:-1], layout.nblocks * layout.block), t.dtype)
    padded_layout = BlockLayout(tuple(padded.shape), layout.axis, layout.block)
    if _fast_path(fmt, padded, padded_layout, policy, ts) is None:
        return None
    padded[..., :layout.length] = t
    padded[..., layout.length:] = 0
    return padded, padded_layout


def _rows_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype codebook blocks of t are read in: float64 as it is, other dtypes as float32 (exactly)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _codebook_in_float32(fmt, dtype: torch.dtype, policy: Policy, rescaled: bool = False) -> bool:
    """Whether codebook blocks read in ``dtype`` take :func:`codebook_kernels.nearest_float32_blocks`
    alone (``rescaled``: with no blocks left for :func:`codebook_kernels.codebook_blocks`,
    which multiplies by the blocks' own scales)."""
    table = fmt.element.table
    return (dtype == torch.float32 and policy.rounding == "nearest_even" and not policy.flush_subnormals
            and len(table) <= codebook_kernels.COUNTED_TABLE
            and (not rescaled or codebook_kernels.short_midpoints(table)))


def float32_bits(values: torch.Tensor) -> np.ndarray:
    """The bits of CPU ``values`` rounded to float32, as unsigned int64: fp32
    scale codes. In numpy, single-threaded: on a few cores, torch's OpenMP
    threads keep spinning for milliseconds after a parallel op, and slow the
    kernel that follows by a third."""
    return numpy_view(values.detach().contiguous()).astype(np.float32).view(np.uint32).astype(np.int64)


def _fp32_scale_codes(scales: torch.Tensor) -> torch.Tensor:
    """fp32 scale codes (:func:`float32_bits`) of float64 scales that are float32 numbers."""
    return torch.from_numpy(float32_bits(scales))


def _codebook_blocks(fmt, t: torch.Tensor, layout: Layout, policy: Policy, values: bool,
                     rescale: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A BlockFormat with codebook elements and fp32 scales: float32 values
    (``values``) or element codes, in rows of blocks, and float64 scales;
    the kernels read the blocks as contiguous rows. ``rescale`` (values
    of double-quantized blocks, where :func:`_codebook_in_float32` with
    ``rescaled``): the values are the elements times the scales it gives
    for the blocks' scale codes, which a pass of their own finds first."""
    in_place = (isinstance(layout, BlockLayout) and t.is_contiguous() and layout.axis == max(t.dim() - 1, 0)
                and layout.length % layout.block == 0)
    rows = (t if in_place else layout.to_blocks(t)).reshape(layout.nrows, layout.block)
    rows = rows.contiguous() if rows.dtype == _rows_dtype(rows) else rows.to(torch.float32)  # exact
    scales = new_tensor((layout.nrows,), torch.float64)
    code_type = code_dtype(fmt.element_code_bits)
    out = new_tensor(tuple(rows.shape), torch.float32 if values else code_type)
    table = np.array(fmt.element.table, dtype=np.float64)
    in_float32 = _codebook_in_float32(fmt, rows.dtype, policy)
    rescaled = np.zeros(0)
    if rescale is not None:
        codebook_kernels.block_scales(numpy_view(rows), scales.numpy(), fmt.element.max)
        rescaled = numpy_view(rescale(_fp32_scale_codes(scales))).astype(np.float64)  # in numpy: see float32_bits
    # the float32 kernel skips the codes when the values are asked for; the general one needs them
    codes = out if not values else new_tensor((0, 0) if in_float32 else tuple(rows.shape), code_type)
    values_out = out if values else new_tensor((0, 0), torch.float32)
    arguments = (numpy_view(rows), codes.numpy(), values_out.numpy(), scales.numpy(), table)
    if in_float32:
        codebook_kernels.nearest_float32_blocks(*arguments, (table[:-1] + table[1:]) / 2, fmt.element.max,
                                                fmt.zero_element_code, rescaled)
        if not codebook_kernels.short_midpoints(fmt.element.table):
            codebook_kernels.codebook_blocks(*arguments, fmt.element.max, fmt.zero_element_code,
                                             rounding_code("nearest_even", None), np.uint64(0), 0.0, True)
    else:
        codebook_kernels.codebook_blocks(*arguments, fmt.element.max, fmt.zero_element_code,
                                         rounding_code(policy.rounding, policy.sr_bits), np.uint64(policy.key or 0),
                                         flush_threshold(t.dtype, policy.flush_subnormals), False)
    return out, scales


def quantize(fmt, t: torch.Tensor, layout: Layout, policy: Policy, ts: float | None,
             rescale: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, bool]:
    """x encoded and decoded, in its shape and dtype, and whether the dtype
    held every result exactly. ``rescale``: as in
    :meth:`lowbit.formats.backends.ScaledOps.quantize`; codebook blocks
    take it in their float32 kernel, other formats encode and decode."""
    codebook = isinstance(fmt, BlockFormat) and isinstance(fmt.element, CodebookFormat)
    if rescale is not None and not (codebook and _codebook_in_float32(fmt, _rows_dtype(t), policy, rescaled=True)):
        return quantize_through_codes(encode, decode, fmt, t, layout, policy, ts, rescale)
    if codebook:
        values, _ = _codebook_blocks(fmt, t, layout, policy, values=True, rescale=rescale)
        out = layout.from_blocks(values).contiguous()
        return cast_exactly(out, t.dtype)
    rows, row_layout = _blocks_of(fmt, t, layout, policy, ts)
    out, exact = _quantize(fmt, rows, row_layout, policy, ts)
    return (out, exact) if rows is t else (layout.from_blocks(out).contiguous(), exact)


def _blocks_of(fmt, t: torch.Tensor, layout: Layout, policy: Policy, ts: float | None) -> tuple[torch.Tensor, Layout]:
    """The input and layout the kernels take: tiles as they are where a
    fast kernel reads them in place, else :func:`as_rows`."""
    if isinstance(layout, TileLayout) and _fast_path(fmt, t, layout, policy, ts) is not None:
        return t, layout
    return as_rows(t, layout)


def _quantize(fmt, t: torch.Tensor, layout: Layout, policy: Policy, ts: float | None) -> tuple[torch.Tensor, bool]:
    whole = _in_whole_blocks(fmt, t, layout, policy, ts)
    if whole is not None:
        out, exact = _quantize(fmt, *whole, policy, ts)
        return out[..., :layout.length].contiguous(), exact
    out = new_tensor(tuple(t.shape), t.dtype)
    fast = _fast_path(fmt, t, layout, policy, ts)
    if fast is not None:
        family, rows, params = fast
        values = numpy_data(out)[0].reshape(rows.shape)
        inexact = np.zeros(-(-layout.nrows // ROWS_PER_TASK), dtype=np.bool_)
        if family == "int":
            fast_int_blocks.quantize_int_blocks(rows, values, *params, inexact)
        elif family == "mx":
            fast_mx.quantize_mx(rows, values, *params, inexact)
        elif family == "amax":
            chosen = fast_amax.searched_scales(rows, params, fmt, policy.scale_rule)
            fast_amax.quantize_amax_blocks(rows, values, params, chosen, inexact)
        else:
            fast_microexponent.quantize_microexponent(rows.reshape(-1), values.reshape(-1), params, inexact)
        return out, not inexact.any()
    x, nblocks, mode, key64, half, tiny = _common(t, layout, policy)
    out_view = outer_axis_inner(numpy_data(out)[0], layout.axis, writeable=True)
    inexact = np.zeros(block_kernels.group_count(layout.nrows), dtype=np.bool_)
    if isinstance(fmt, BlockFormat):
        block_kernels.quantize_blocks(x, out_view, nblocks, *block_arguments(fmt, policy.scale_rule, ts, layout.block),
                                      mode, key64, half, tiny, inexact)
    else:
        microexponent_kernels.quantize_microexponent(x, out_view, nblocks, microexponent_params(fmt), mode, key64,
                                                     half, tiny, inexact)
    return out, not inexact.any()


def encode(fmt, t: torch.Tensor, layout: Layout, policy: Policy, ts: float | None):
    """(packed element codes, scale codes in the layout's scales shape,
    packed sub-block shifts or None, packed zero points or None) as CPU tensors."""
    if isinstance(fmt, BlockFormat) and isinstance(fmt.element, CodebookFormat):
        codes, scales = _codebook_blocks(fmt, t, layout, policy, values=False)
        scale_codes = _fp32_scale_codes(scales).to(code_dtype(fmt.scale_code_bits))
        bits = fmt.element_code_bits
        if whole_bytes(bits, layout.block):
            packed = new_tensor((-(-codes.numel() * bits // 8),), torch.uint8)
            codebook_kernels.pack_block_codes(codes.numpy(), packed.numpy(), bits)
        else:
            packed = pack(codes, bits)
        return packed, scale_codes.reshape(layout.scales_shape), None, None
    rows, row_layout = _blocks_of(fmt, t, layout, policy, ts)
    elements, scales, subscales, zeros = _encode(fmt, rows, row_layout, policy, ts)
    return elements, scales.reshape(layout.scales_shape), subscales, zeros


def _encode(fmt, t: torch.Tensor, layout: Layout, policy: Policy, ts: float | None):
    nrows = layout.nrows
    fast = _fast_path(fmt, t, layout, policy, ts)
    elements = _packed(fast is not None, nrows, layout.block, fmt.element_code_bits)
    subscales = _packed(fast is not None, nrows, fmt.subscales_per_block, fmt.subscale_code_bits)
    zeros = _packed(False, nrows, 1, fmt.zero_point_code_bits)
    scales = new_tensor((nrows,), code_dtype(fmt.scale_code_bits))
    if fast is not None:
        family, rows, params = fast
        if family == "int":
            fast_int_blocks.encode_int_blocks(rows, elements.numpy(), scales.numpy(), zeros.numpy(), *params)
        elif family == "mx":
            fast_mx.encode_mx(rows, elements.numpy(), scales.numpy(), *params)
        elif family == "amax":
            chosen = fast_amax.searched_scales(rows, params, fmt, policy.scale_rule)
            fast_amax.encode_amax_blocks(rows, elements.numpy(), scales.numpy(), params, chosen)
        else:
            fast_microexponent.encode_microexponent(rows.reshape(-1), elements.numpy(), scales.numpy(),
                                                    subscales.numpy(), params)
    elif isinstance(fmt, BlockFormat):
        x, nblocks, mode, key64, half, tiny = _common(t, layout, policy)
        block_kernels.encode_blocks(x, elements.numpy(), scales.numpy(), zeros.numpy(), nblocks,
                                    *block_arguments(fmt, policy.scale_rule, ts, layout.block), mode, key64, half,
                                    tiny)
    else:
        x, nblocks, mode, key64, half, tiny = _common(t, layout, policy)
        microexponent_kernels.encode_microexponent(x, elements.numpy(), scales.numpy(), subscales.numpy(), nblocks,
                                                   microexponent_params(fmt), mode, key64, half, tiny)
    return (elements, scales, subscales if fmt.subscales_per_block else None,
            zeros if fmt.zero_point else None)


def _packed(fast: bool, nrows: int, per_row: int, bits: int) -> torch.Tensor:
    """A buffer for nrows rows of per_row packed codes: uninitialised when a
    fast kernel writes every byte of it (rows that fill whole bytes), else
    zeroed for the kernels that OR codes in."""
    nbytes = -(-nrows * per_row * bits // 8)
    if fast and whole_bytes(bits, per_row):
        return new_tensor((nbytes,), torch.uint8)
    return torch.zeros(nbytes, dtype=torch.uint8)


def decode(fmt, layout: Layout, elements: torch.Tensor, scales: torch.Tensor, subscales: torch.Tensor | None,
           ts: float | None, dtype: torch.dtype, zero_points: torch.Tensor | None = None) -> torch.Tensor:
    """The values in the layout's true shape. Double-quantized scales come
    as their float32 values, which are fp32 scale codes as they are."""
    if isinstance(fmt, BlockFormat) and isinstance(fmt.element, CodebookFormat) and not _fast_decode(fmt, layout):
        return _decode_codebook_blocks(fmt, layout, elements, scales, dtype)
    if scales.is_floating_point():  # their bits as unsigned 32-bit codes (negative scales too), in numpy: see
        scales = torch.from_numpy(float32_bits(scales))  # _fp32_scale_codes
    if isinstance(layout, TileLayout) and not _fast_decode(fmt, layout):
        row_layout = BlockLayout((layout.nrows, layout.block), 1, layout.block)
        out = _decode(fmt, row_layout, elements, scales, subscales, zero_points, ts, dtype)
        return layout.from_blocks(out).contiguous()
    return _decode(fmt, layout, elements, scales, subscales, zero_points, ts, dtype)


def _decode_codebook_blocks(fmt, layout: Layout, elements: torch.Tensor, scales: torch.Tensor,
                            dtype: torch.dtype) -> torch.Tensor:
    """Codebook elements times fp32 scales (codes, or the float32 values of
    double-quantized scales), rounded to float32."""
    if not scales.is_floating_point():
        scales = scales.reshape(-1).to(torch.int64).to(torch.int32).view(torch.float32)
    bits = fmt.element_code_bits
    scales = scales.reshape(-1).to(torch.float32).contiguous()
    table = np.array(fmt.element.table, dtype=np.float64)
    if whole_bytes(bits, layout.block):
        values = new_tensor((layout.nrows, layout.block), torch.float32)
        packed, scale_values = numpy_view(elements.contiguous()), numpy_view(scales)
        _check_reads(fmt, BlockLayout((layout.nrows, layout.block), 1, layout.block), packed, scale_values,
                     np.zeros(0, np.uint8), np.zeros(0, np.uint8))
        codebook_kernels.decode_codebook_blocks(packed, scale_values, values.numpy(), table, bits)
    else:
        codes = unpack(elements, bits, layout.nrows * layout.block).to(torch.int64)
        by_code = torch.full((1 << bits,), torch.nan, dtype=torch.float64)
        by_code[: table.size] = torch.from_numpy(table)
        values = (by_code[codes].reshape(layout.nrows, layout.block) * scales.reshape(-1, 1).to(torch.float64))
        values = values.to(torch.float32)
    return layout.from_blocks(values).to(dtype).contiguous()


def _decode(fmt, layout: Layout, elements: torch.Tensor, scales: torch.Tensor, subscales: torch.Tensor | None,
            zero_points: torch.Tensor | None, ts: float | None, dtype: torch.dtype) -> torch.Tensor:
    out = new_tensor(layout.shape, dtype)
    packed, scale_codes = numpy_view(elements.contiguous()), numpy_view(scales.reshape(-1).contiguous())
    shifts = np.zeros(0, np.uint8) if subscales is None else numpy_view(subscales.contiguous())
    zeros = np.zeros(0, np.uint8) if zero_points is None else numpy_view(zero_points.contiguous())
    _check_reads(fmt, layout, packed, scale_codes, shifts, zeros)
    if _fast_decode(fmt, layout):
        if isinstance(layout, TileLayout):
            view = block_view(out.numpy(), layout.tile)
        else:
            view = block_view(out.numpy().reshape(layout.nrows, layout.block), None)
        if isinstance(fmt, BlockFormat):
            element_values, scale_values = fast_block_decode.decode_tables(fmt, fmt.scale.is_float32)
            fast_block_decode.decode_blocks(packed, scale_codes, zeros, view, element_values, scale_values, ts,
                                            fmt.element_code_bits, fmt.zero_point_code_bits, fmt.rounds_to_float32)
        else:
            fast_microexponent.decode_microexponent(packed, scale_codes, shifts, view.reshape(layout.nrows, -1),
                                                    microexponent_params(fmt))
        return out
    out_view = outer_axis_inner(out.numpy(), layout.axis, writeable=True)
    if isinstance(fmt, BlockFormat):
        ed, sd, _, bp = block_arguments(fmt, fmt.scale_rule, ts, layout.block)
        block_kernels.decode_blocks(packed, scale_codes, zeros, out_view, layout.nblocks, ed, sd, bp)
    else:
        microexponent_kernels.decode_microexponent(packed, scale_codes, shifts, out_view, layout.nblocks,
                                                   microexponent_params(fmt))
    return out


def _check_reads(fmt, layout: BlockLayout, packed: np.ndarray, scale_codes: np.ndarray, shifts: np.ndarray,
                 zeros: np.ndarray) -> None:
    """The kernels' own bound on what they read: bytes for every block's
    codes and shifts, one scale code per block (Encoded.validate checks
    more, and first; this keeps a direct call from reading past a buffer)."""
    rows = layout.nrows
    needed = {"elements": (packed, rows * layout.block * fmt.element_code_bits),
              "subscales": (shifts, rows * fmt.subscales_per_block * fmt.subscale_code_bits),
              "zero_points": (zeros, rows * fmt.zero_point_code_bits)}
    for name, (part, bits) in needed.items():
        if part.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 bytes, got {part.dtype}")
        if part.size * 8 < bits:
            raise ValueError(f"{name}: {part.size} bytes hold fewer than the {bits} bits of codes of the blocks")
    if scale_codes.size != rows:
        raise ValueError(f"scales: {scale_codes.size} codes for {rows} blocks")


def _fast_decode(fmt, layout: Layout) -> bool:
    """Whether the fast decode kernels serve this layout: whole blocks along
    the last axis, or tiles of the last two axes that divide them, whose
    codes (and shifts) fill whole bytes; element codes of at most 16 bits,
    scale codes of at most 16 bits or float32 ones; microexponents in
    sub-blocks of two."""
    if isinstance(layout, TileLayout):
        ndim = len(layout.shape)
        if (layout.axis != (ndim - 2, ndim - 1) or layout.shape[-2] % layout.tile[0]
                or layout.shape[-1] % layout.tile[1]):
            return False
    elif layout.axis != max(len(layout.shape) - 1, 0) or layout.length % layout.block:
        return False
    if not whole_bytes(fmt.element_code_bits, layout.block):
        return False
    if isinstance(fmt, BlockFormat):
        return (fmt.element_code_bits <= 16 and (fmt.scale_code_bits <= 16 or fmt.scale.is_float32)
                and (fmt.double_quant is None or fmt.scale.is_float32))
    return fmt.sub_block == 2 and whole_bytes(fmt.subscale_code_bits, fmt.subscales_per_block)
