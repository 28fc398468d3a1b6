"""KERPLE (logarithmic): a learned, conditionally positive definite distance penalty per head.

Chi et al. 2022, "KERPLE: Kernelized Relative Positional Embedding for Length Extrapolation",
https://arxiv.org/abs/2205.09921, eq. for the log kernel; official code github.com/chijames/KERPLE
(`ParallelKerpleLog`): bias = -r1 · log(1 + r2 · (i - j)) with r1, r2 > 0 per head, initialised
uniformly in (0, 2) and (0, 1) and kept >= 0.01. The official code clamps the parameters in
place before each use; here the clamp is applied to the value used (same bias, and the gradient
is zero while a parameter sits below the floor).
"""

from __future__ import annotations

import torch
from torch import nn

from lsbench.positions.base import Position, relative_distance

EPS = 1e-2  # the official floor for both parameters


class KerpleLog(Position):
    name = "kerple_log"
    kind = "bias"
    method = "learned -r1·log(1 + r2·(i-j)) per head (kernelized T5-like bias)"
    paper = "Chi et al. 2022, https://arxiv.org/abs/2205.09921"
    learned = True

    def __init__(self, n_heads: int, head_dim: int, **params):
        super().__init__(n_heads, head_dim, **params)
        self.r1 = nn.Parameter(torch.rand(n_heads) * 2)  # official bias_p: U(0, 2)
        self.r2 = nn.Parameter(torch.rand(n_heads))  # official bias_a: U(0, 1)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        dist = relative_distance(q_pos, k_pos).to(self.r1.dtype)  # (Nq, Nk)
        if self.training:  # as the official code: clamp the stored parameter, so a head that
            for p in (self.r1, self.r2):  # reaches the floor keeps its gradient and can recover
                p.data.clamp_(min=EPS)
        r1, r2 = (p.clamp(min=EPS)[:, None, None] for p in (self.r1, self.r2))  # (H, 1, 1)
        return -r1 * torch.log1p(r2 * dist)  # (H, Nq, Nk)
