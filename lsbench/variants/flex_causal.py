"""Causal softmax attention through FlexAttention (CUDA): key blocks above the diagonal skipped.

Dong et al. 2024, "Flex Attention: A Programming Model for Generating Optimized Attention
Kernels", https://arxiv.org/abs/2412.05496. Full causal attention (token i sees keys 0 … i)
expressed as a block mask, the counterpart of `sdpa` with `is_causal`; block mask and device
rules are in `_flex.py`.

Causal by construction: `causal=False` builds the same causal attention (the name says what it
computes; a bidirectional full attention is `sdpa`), and its FLOPs count causal pairs.

Shape legend: B batch, N length, D d_model, H heads, Dh head dim.
"""

from __future__ import annotations

from lsbench.measure.flops import attention_flops, full_pairs, linear_flops
from lsbench.variants._flex import FlexWindowBase
from lsbench.variants.flex_window import visited_pairs


class FlexCausal(FlexWindowBase):
    name = "flex_causal"
    method = "causal softmax attention, FlexAttention block mask (CUDA); always causal"
    paper = "Dong et al. 2024 (FlexAttention), https://arxiv.org/abs/2412.05496"
    time_complexity = "O(N²·D)"
    memory_complexity = "O(N·D)"  # fused kernel: scores live in tiles only
    supports_causal = True

    def reach(self, n):
        return n, 0

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        return (linear_flops(batch_size * seq_len, d_model, 4 * d_model)
                + attention_flops(batch_size * full_pairs(seq_len, causal=True), d_model))

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        return (linear_flops(batch_size * seq_len, d_model, 4 * d_model)
                + attention_flops(batch_size * visited_pairs(seq_len, seq_len, 0), d_model))
