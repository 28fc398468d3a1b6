"""`torch.nn.functional.scaled_dot_product_attention`: the same maths as `transformer`, through
PyTorch's fused kernels (FlashAttention / memory-efficient on CUDA), today's practical ceiling.

Dao et al. 2022, "FlashAttention", https://arxiv.org/abs/2205.14135.
"""

from __future__ import annotations

import torch.nn.functional as F

from lsbench.variants._decode import KVCacheDecoder
from lsbench.variants.transformer import QKVAttention, Transformer, merge_heads, score_mask


class SDPA(KVCacheDecoder, QKVAttention):
    name = "sdpa"
    method = "fused softmax attention (torch scaled_dot_product_attention)"
    paper = "Dao et al. 2022 (FlashAttention), https://arxiv.org/abs/2205.14135"
    time_complexity = "O(N²·D)"
    memory_complexity = "O(N·D) with flash/mem-efficient kernels; O(H·N²) with the math kernel"
    accepts_bias = True

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        return Transformer.flops(batch_size, seq_len, d_model, n_heads, params, causal)

    # computed_flops = flops: the flash / memory-efficient kernels skip key tiles above the
    # causal diagonal (only the diagonal tiles do masked extra work, not counted here)

    def forward(self, x, mask=None, bias=None):
        q, k, v = self.project(x)
        if mask is None and bias is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            allowed = score_mask(mask, x.shape[1], self.causal, x.device)
            attn_mask = allowed
            if bias is not None:
                attn_mask = bias.to(q.dtype)
                if allowed is not None:
                    attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(merge_heads(y))  # (B, N, D)
