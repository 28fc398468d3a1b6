"""Sliding-window attention through FlexAttention (CUDA): the same maths as `local`.

Dong et al. 2024, "Flex Attention: A Programming Model for Generating Optimized Attention
Kernels", https://arxiv.org/abs/2412.05496; window as Beltagy et al. 2020,
https://arxiv.org/abs/2004.05150. Token i sees keys i-w … i+w (i-w … i when causal); the block
mask and device rules are in `_flex.py`.

Shape legend: B batch, N length, D d_model, H heads, Dh head dim, w one-sided window.
"""

from __future__ import annotations

from lsbench.errors import LsbenchError
from lsbench.measure.flops import attention_flops, band_pairs, linear_flops
from lsbench.variants._flex import BLOCK, FlexWindowBase, window_blocks


def visited_pairs(n: int, left: int, right: int) -> int:
    """(query, key) pairs inside the key blocks flex_attention visits (whole 128×128 blocks)."""
    import torch
    kv_num, _, full_num, _ = window_blocks(n, left, right, torch.device("cpu"), False)
    blocks = int(kv_num.sum() + full_num.sum())
    return blocks * BLOCK * BLOCK


class FlexWindow(FlexWindowBase):
    name = "flex_window"
    method = "sliding window of ±w tokens, FlexAttention block mask (CUDA)"
    paper = "Dong et al. 2024 (FlexAttention), https://arxiv.org/abs/2412.05496"
    time_complexity = "O(N·w·D)"
    memory_complexity = "O(N·D)"  # fused kernel: scores live in tiles only
    supports_causal = True
    defaults = {"window": 256}  # one-sided, as `local` and `longformer`

    @classmethod
    def check_params(cls, d_model, n_heads, params):
        super().check_params(d_model, n_heads, params)
        if params["window"] < 1:
            raise LsbenchError(
                f"variant 'flex_window': parameter 'window' must be >= 1 (one-sided window w), "
                f"got {params['window']!r}; the default is 256."
            )

    def reach(self, n):
        w = self.params["window"]
        return w, 0 if self.causal else w

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        w = params["window"]
        return (linear_flops(batch_size * seq_len, d_model, 4 * d_model)
                + attention_flops(batch_size * band_pairs(seq_len, w, 0 if causal else w),
                                  d_model))

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        w = params["window"]
        pairs = visited_pairs(seq_len, w, 0 if causal else w)
        return (linear_flops(batch_size * seq_len, d_model, 4 * d_model)
                + attention_flops(batch_size * pairs, d_model))
