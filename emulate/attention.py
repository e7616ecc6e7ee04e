"""Attention computed from quantized products, for ``emulating``.

``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``
(what ``nn.MultiheadAttention`` and the ``nn.Transformer`` layers call) are
each dispatched to a function mode as one call, so the products inside them
would run in full precision. Here they are computed from their parts: the
projections with :func:`~lowbit.emulate.quantized_linear`, the two
attention products (q @ k.mT and probabilities @ v) with
:func:`~lowbit.emulate.quantized_matmul`, their operands in the spec's
attention formats (``query``, ``key``, ``probabilities``, ``value``: the
input format unless the spec names one); scaling, masks, softmax and
dropout stay in full precision, as in torch.

:class:`AttentionRouting` is the function mode that sends
``F.multi_head_attention_forward`` here, for
:class:`~lowbit.emulate.QuantMultiheadAttention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .linear import quantized_linear
from .matmul import quantized_matmul
from .spec import QuantSpec


def attention(spec: QuantSpec, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False):
    """F.scaled_dot_product_attention from quantized products (boolean masks: True attends)."""
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scores = _scores(q, k, spec) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    if is_causal:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probabilities = torch.softmax(scores, dim=-1)
    if dropout_p > 0:
        probabilities = F.dropout(probabilities, dropout_p)
    return _weighted_values(probabilities, v, spec)


def _scores(q: torch.Tensor, k: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """q @ k.mT with the query and key formats (blocked along the head dimension)."""
    return quantized_matmul(q, k.mT, spec.with_operands(spec.attention_format("query"), spec.attention_format("key")))


def _weighted_values(probabilities: torch.Tensor, v: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """probabilities @ v with the probabilities and value formats (blocked along the key positions)."""
    operands = spec.with_operands(spec.attention_format("probabilities"), spec.attention_format("value"))
    return quantized_matmul(probabilities, v, operands)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """An nn.MultiheadAttention mask as a float mask to add (boolean: True masks out)."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


def _projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: QuantSpec) -> torch.Tensor:
    """A projection of an (L, N, E) input: ``token_blocks="sample"`` blocks
    the weight gradient along axis -2, which must then be each sample's
    tokens (L), not the batch (N)."""
    if spec.token_blocks == "sample":
        return quantized_linear(x.transpose(0, 1), weight, bias, spec).transpose(0, 1)
    return quantized_linear(x, weight, bias, spec)


def multi_head_attention(spec: QuantSpec, query, key, value, embed_dim_to_check, num_heads, in_proj_weight,
                         in_proj_bias, bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias,
                         training=True, key_padding_mask=None, need_weights=True, attn_mask=None,
                         use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None, v_proj_weight=None,
                         static_k=None, static_v=None, average_attn_weights=True, is_causal=False):
    """F.multi_head_attention_forward (inputs (L, N, E), or (L, E) unbatched)
    from quantized products. add_bias_kv, add_zero_attn and static keys are
    not covered (ValueError)."""
    if bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None or static_v is not None:
        raise ValueError("lowbit computes MultiheadAttention without add_bias_kv, add_zero_attn or static keys")
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    length, batch, width = query.shape
    sources, heads, head_width = key.shape[0], num_heads, query.shape[-1] // num_heads
    if width != embed_dim_to_check:
        raise ValueError(f"query has {width} features; the attention expects {embed_dim_to_check}")
    weights = (q_proj_weight, k_proj_weight, v_proj_weight) if use_separate_proj_weight else in_proj_weight.chunk(3)
    biases = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    q, k, v = (_projection(t, w, b, spec) for t, w, b in zip((query, key, value), weights, biases))
    q = q.reshape(length, batch, heads, head_width).permute(1, 2, 0, 3)
    k, v = (t.reshape(sources, batch, heads, head_width).permute(1, 2, 0, 3) for t in (k, v))

    scores = _scores(q, k, spec) / math.sqrt(head_width)
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(length, sources, dtype=torch.bool, device=q.device).triu(1)
    mask = _additive(attn_mask, scores.dtype)
    if mask is not None:
        scores = scores + (mask.reshape(batch, heads, length, sources) if mask.dim() == 3 else mask)
    padding = _additive(key_padding_mask, scores.dtype)
    if padding is not None:
        scores = scores + padding[:, None, None, :]
    probabilities = torch.softmax(scores, dim=-1)
    if dropout_p > 0 and training:
        probabilities = F.dropout(probabilities, dropout_p)
    out = _weighted_values(probabilities, v, spec).permute(2, 0, 1, 3).reshape(length, batch, width)
    out = _projection(out, out_proj_weight, out_proj_bias, spec)
    attention_weights = None
    if need_weights:
        attention_weights = probabilities.mean(dim=1) if average_attn_weights else probabilities
    if not batched:
        out = out.squeeze(1)
        attention_weights = None if attention_weights is None else attention_weights.squeeze(0)
    return out, attention_weights


class AttentionRouting(TorchFunctionMode):
    """Within it, ``F.multi_head_attention_forward`` runs as
    :func:`multi_head_attention` under ``spec``; every other call as it is."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.spec = spec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.multi_head_attention_forward:
            return multi_head_attention(self.spec, *args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))
