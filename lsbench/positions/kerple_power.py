"""KERPLE (power): a learned power-law distance penalty per head, ALiBi with a learned exponent.

Chi et al. 2022, "KERPLE: Kernelized Relative Positional Embedding for Length Extrapolation",
https://arxiv.org/abs/2205.09921, the power kernel; official code github.com/chijames/KERPLE
(`ParallelKerplePower`): bias = -r1 · (i - j)^r2 per head with r1 >= 0.01 and 0.01 <= r2 <= 2
(the kernel is conditionally positive definite only for r2 <= 2), initialised uniformly in
(0, 1) and (0, 2). As in `kerple_log`, the clamp is applied to the value used.
"""

from __future__ import annotations

import torch
from torch import nn

from lsbench.positions.base import Position, relative_distance

EPS, MAX_POWER = 1e-2, 2.0


class KerplePower(Position):
    name = "kerple_power"
    kind = "bias"
    method = "learned -r1·(i-j)^r2 per head, 0 < r2 <= 2 (kernelized ALiBi)"
    paper = "Chi et al. 2022, https://arxiv.org/abs/2205.09921"
    learned = True

    def __init__(self, n_heads: int, head_dim: int, **params):
        super().__init__(n_heads, head_dim, **params)
        self.r1 = nn.Parameter(torch.rand(n_heads))  # official bias_a: U(0, 1)
        self.r2 = nn.Parameter(torch.rand(n_heads) * 2)  # official bias_p: U(0, 2)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        dist = relative_distance(q_pos, k_pos).to(self.r1.dtype)  # (Nq, Nk)
        if self.training:  # as the official code: clamp the stored parameter, so a head that
            self.r1.data.clamp_(min=EPS)  # reaches a bound keeps its gradient and can recover
            self.r2.data.clamp_(min=EPS, max=MAX_POWER)
        r1 = self.r1.clamp(min=EPS)[:, None, None]  # (H, 1, 1)
        r2 = self.r2.clamp(min=EPS, max=MAX_POWER)[:, None, None]
        # 0^r2 = 0 on the diagonal; torch's pow gives a zero (not NaN) exponent gradient there
        return -r1 * dist.pow(r2)  # (H, Nq, Nk)
