"""Core attention for megatron.core's local layer spec, computed by torch's scaled_dot_product_attention.

megatron's local DotProductAttention materialises the [b, heads, s, s] scores and runs an unfused masked softmax;
on a CPU (and on a GPU without transformer-engine) torch's fused kernels compute the same attention faster and in
less memory. Same parameters (none), same math: checkpoints and exports are unchanged. Anything the fused call does
not cover (packed sequences, attention bias, softmax offsets, sliding windows, query-key layer scaling) goes to
megatron's own implementation - and so does attention dropout while training, which megatron draws from its
model-parallel RNG tracker, not from the global generator the fused kernel would use."""

from __future__ import annotations

import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SDPAttention(DotProductAttention):
    def _fused(self, attention_bias, packed_seq_params) -> bool:
        c = self.config
        return (packed_seq_params is None and attention_bias is None and self.softmax_offset is None
                and c.window_size is None and not c.apply_query_key_layer_scaling
                and not (self.training and self.attention_dropout.p > 0))

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if not self._fused(attention_bias, packed_seq_params):
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)
        sq, b = query.shape[0], query.shape[1]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [s, b, n, d] -> [b, n, s, d]
        if q.shape[1] != k.shape[1]:  # grouped-query attention: each key/value head serves several query heads
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        # megatron's convention: a given mask is True where attention is NOT allowed; none given + causal type
        # means the default causal mask (as FusedScaleMaskSoftmax builds it)
        causal = attention_mask is None and mask_type == AttnMaskType.causal and sq > 1
        mask = None if attention_mask is None else ~attention_mask
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.softmax_scale)
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, -1)
