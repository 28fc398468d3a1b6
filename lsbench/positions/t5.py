"""T5 relative position bias: one learned scalar per (distance bucket, head) added to the scores.

Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", https://arxiv.org/abs/1910.10683, §2.1. Causal buckets (bidirectional=False) as in
mesh-tensorflow / Hugging Face `_relative_position_bucket`: half the buckets are exact distances,
the rest grow logarithmically up to `max_distance`, after which everything shares the last bucket.
One module is shared by all layers, as in T5.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lsbench.errors import LsbenchError
from lsbench.positions.base import Position, relative_distance


def relative_position_bucket(
    distance: torch.Tensor, num_buckets: int = 32, max_distance: int = 128
) -> torch.Tensor:
    """Causal bucket of the distance i - j >= 0 (query minus key position)."""
    n = distance.clamp(min=0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        torch.log(n.float().clamp(min=1) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = large.clamp(max=num_buckets - 1)
    return torch.where(is_small, n, large)


class T5Bias(Position):
    name = "t5"
    kind = "bias"
    method = "learned scalar per (log-bucketed causal distance, head) added to the scores"
    paper = "Raffel et al. 2020, https://arxiv.org/abs/1910.10683"
    learned = True
    defaults = {"num_buckets": 32, "max_distance": 128}

    @classmethod
    def check_params(cls, n_heads, head_dim, params):
        super().check_params(n_heads, head_dim, params)
        if params["max_distance"] <= params["num_buckets"] // 2 or params["num_buckets"] < 2:
            raise LsbenchError(
                "position 't5' needs num_buckets >= 2 and max_distance > num_buckets / 2, got "
                f"num_buckets={params['num_buckets']}, max_distance={params['max_distance']}."
            )

    def __init__(self, n_heads: int, head_dim: int, **params):
        super().__init__(n_heads, head_dim, **params)
        self.emb = nn.Embedding(self.params["num_buckets"], n_heads)
        nn.init.zeros_(self.emb.weight)
        # bucket of every distance 0 .. max_distance; every longer distance is in the last
        # bucket, which is also the bucket of max_distance itself, so bucket(d) =
        # lut[min(d, max_distance)] exactly (no logarithm of an (Nq, Nk) tensor per forward)
        md = self.params["max_distance"]
        self.register_buffer("lut", relative_position_bucket(
            torch.arange(md + 1), self.params["num_buckets"], md), persistent=False)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        dist = relative_distance(q_pos, k_pos).clamp(max=self.params["max_distance"])  # (Nq, Nk)
        per_dist = self.emb.weight.T[:, self.lut]  # (H, max_distance + 1)
        # = self.emb(bucket(dist)).permute(2, 0, 1), laid out (H, Nq·Nk) directly; its backward
        # is an index_add into the (H, max_distance + 1) table, ~7x faster on CPU than the
        # embedding's backward (the largest single cost of a T5 training step before)
        return per_dist.index_select(1, dist.flatten()).view(-1, *dist.shape)  # (H, Nq, Nk)
