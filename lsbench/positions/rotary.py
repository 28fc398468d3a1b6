"""Rotary position embedding (RoPE): rotate q and k by an angle proportional to the position.

Su et al. 2021, "RoFormer", https://arxiv.org/abs/2104.09864. θ_i = base^(-2i/Dh), GPT-NeoX
"rotate half" layout (the first and second halves of each head form the rotated pairs), so
q_m·k_n depends only on m - n.
"""

from __future__ import annotations

import torch

from lsbench.errors import LsbenchError
from lsbench.positions.base import Position


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(Position):
    name = "rotary"
    kind = "rotary"
    method = "rotate q and k by position-dependent angles (GPT-NeoX rotate-half layout)"
    paper = "Su et al. 2021, https://arxiv.org/abs/2104.09864"
    defaults = {"base": 10000}

    @classmethod
    def check_params(cls, n_heads, head_dim, params):
        super().check_params(n_heads, head_dim, params)
        if head_dim % 2:
            raise LsbenchError(f"position 'rotary' needs an even head_dim, got {head_dim}.")

    def angles(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) positions -> cos, sin of shape (N, Dh), computed in float64 for long N."""
        d = self.head_dim
        inv_freq = self.params["base"] ** (
            -torch.arange(0, d, 2, dtype=torch.float64, device=pos.device) / d
        )
        freqs = pos.to(torch.float64)[:, None] * inv_freq  # (N, Dh/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (N, Dh)
        return emb.cos(), emb.sin()

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cos, sin = (t.to(x.dtype) for t in self.angles(pos))
        return x * cos + rotate_half(x) * sin  # (B, H, N, Dh)
