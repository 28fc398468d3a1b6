"""Sinusoidal absolute positions added to the token embeddings.

Vaswani et al. 2017, "Attention Is All You Need", https://arxiv.org/abs/1706.03762, §3.5:
PE(p, 2i) = sin(p / 10000^(2i/D)), PE(p, 2i+1) = cos(p / 10000^(2i/D)) (interleaved).
"""

from __future__ import annotations

import torch

from lsbench.positions.base import Position


def sinusoidal_table(pos: torch.Tensor, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """(N,) integer positions -> (N, D) embeddings, even columns sin, odd columns cos."""
    i2 = torch.arange(0, d_model, 2, dtype=torch.float64, device=pos.device)  # 2i
    angle = pos.to(torch.float64)[:, None] / base ** (i2 / d_model)  # (N, ceil(D/2))
    pe = torch.zeros(len(pos), d_model, dtype=torch.float64, device=pos.device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.float()


class Sinusoidal(Position):
    name = "sinusoidal"
    kind = "absolute"
    method = "fixed sin/cos of the absolute position added to the token embeddings"
    paper = "Vaswani et al. 2017, https://arxiv.org/abs/1706.03762"

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return sinusoidal_table(pos, self.d_model)  # (N, D)
