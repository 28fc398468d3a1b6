"""mean_pool: token mixing by the mean of the values (an example lsbench plugin).

Pooling as the token mixer, after PoolFormer (Yu et al. 2022, "MetaFormer Is Actually What You
Need for Vision", https://arxiv.org/abs/2111.11418), here a global mean over the real tokens
(a prefix mean when causal): y_i = out(mean_{j visible to i} v_j). O(N·D) time and memory.

Shape legend: B batch, N length, D d_model.
"""

from __future__ import annotations

import torch
from torch import nn

from lsbench.measure.flops import linear_flops
from lsbench.variants import Variant


class MeanPool(Variant):
    name = "mean_pool"
    method = "mean of the projected values over visible tokens (example plugin)"
    paper = "Yu et al. 2022 (PoolFormer), https://arxiv.org/abs/2111.11418"
    time_complexity = "O(N·D)"
    memory_complexity = "O(N·D)"
    supports_causal = True

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params):
        super().__init__(d_model, n_heads, causal, **params)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        return linear_flops(batch_size * seq_len, d_model, 2 * d_model)  # value and out

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        v = self.value(x)  # (B, N, D)
        keep = torch.ones_like(x[..., :1]) if mask is None else mask[..., None].to(x.dtype)
        v = v * keep
        if self.causal:
            total, count = v.cumsum(1), keep.cumsum(1)  # (B, N, D), (B, N, 1)
        else:
            total, count = v.sum(1, keepdim=True), keep.sum(1, keepdim=True)  # (B, 1, D)
        return self.out(total / count.clamp_min(1))  # (B, N, D)
