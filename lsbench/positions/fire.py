"""FIRE: a learned function of the *normalised* distance, so longer windows map into the range
seen in training (progressive interpolation).

Li et al. 2024, "Functional Interpolation for Relative Positions Improves Long Context
Transformers", https://arxiv.org/abs/2310.04418, eq. (3)-(4): for query i and key j <= i,
    b(i, j) = f_θ( ψ(i - j) / ψ(max(i, L)) ),   ψ(x) = log(c·x + 1),
f_θ an MLP 1 -> 32 -> H (ReLU), c learned (init 0.1), L a learned threshold (|L0 · m|, m learned
from 1, L0 = the training length) that keeps short-range normalisation fixed. Follows the
reference code linked from the paper's authors' follow-ups (mcleish7/arithmetic, `FIRE`),
without its randomised positions.

The bias depends on i itself (through the normaliser), not only on i - j, so it is computed per
query chunk (`translation_invariant = False`): at long windows the MLP runs on every (i, j) pair
of every layer, which makes FIRE much slower to evaluate than ALiBi or T5 on CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from lsbench.positions.base import Position, relative_distance

EPS = 1e-6


class Fire(Position):
    name = "fire"
    kind = "bias"
    method = "learned MLP of log-distance normalised by log(max(i, L)) (progressive interpolation)"
    paper = "Li et al. 2024, https://arxiv.org/abs/2310.04418"
    learned = True
    translation_invariant = False
    defaults = {"mlp_width": 32, "train_len": 512}

    def __init__(self, n_heads: int, head_dim: int, **params):
        super().__init__(n_heads, head_dim, **params)
        width = self.params["mlp_width"]
        self.mlp = nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, n_heads))
        self.c = nn.Parameter(torch.tensor(0.1))
        self.l_mult = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("l0", torch.tensor(float(self.params["train_len"])),
                             persistent=False)

    def psi(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.abs(self.c * x) + 1)

    def normalized(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """ψ(i - j) / ψ(max(i, L)), shape (Nq, Nk)."""
        dist = relative_distance(q_pos, k_pos).to(self.c.dtype)  # (Nq, Nk)
        threshold = torch.abs(self.l_mult * self.l0)
        norm = torch.maximum(q_pos.to(self.c.dtype), threshold)  # (Nq,)
        return self.psi(dist) / (self.psi(norm)[:, None] + EPS)

    def forward(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        x = self.normalized(q_pos, k_pos)  # (Nq, Nk)
        return self.mlp(x[..., None]).permute(2, 0, 1)  # (H, Nq, Nk)
