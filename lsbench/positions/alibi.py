"""ALiBi: a fixed, head-specific linear penalty on the query-key distance, no embeddings.

Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", https://arxiv.org/abs/2108.12409. Slopes as the official `get_slopes`
(github.com/ofirpress/attention_with_linear_biases): for n a power of two a geometric sequence
starting at 2^(-8/n) with that ratio; otherwise the slopes of the closest smaller power of two c
plus every other slope of 2c. Bias = -slope · (i - j) for keys j <= i.
"""

from __future__ import annotations

import math

import torch

from lsbench.positions.base import Position, relative_distance


def _slopes_power_of_2(n: int) -> list[float]:
    start = 2 ** (-(2 ** -(math.log2(n) - 3)))  # = 2^(-8/n)
    return [start * start**i for i in range(n)]


def _slopes(n: int) -> list[float]:
    if math.log2(n).is_integer():
        return _slopes_power_of_2(n)
    c = 2 ** math.floor(math.log2(n))
    return _slopes_power_of_2(c) + _slopes(2 * c)[0::2][: n - c]


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """The official ALiBi slopes, in head order, shape (H,)."""
    return torch.tensor(_slopes(n_heads), dtype=torch.float32)


class ALiBi(Position):
    name = "alibi"
    kind = "bias"
    method = "fixed linear penalty -m_h·(i-j) on the scores, geometric slopes per head"
    paper = "Press et al. 2022, https://arxiv.org/abs/2108.12409"

    def __init__(self, n_heads: int, head_dim: int, **params):
        super().__init__(n_heads, head_dim, **params)
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        dist = relative_distance(q_pos, k_pos).to(self.slopes.dtype)  # (Nq, Nk)
        return -self.slopes[:, None, None] * dist  # (H, Nq, Nk)
