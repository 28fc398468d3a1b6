"""Learned absolute positions: one trained vector per position, added to the token embeddings.

Gehring et al. 2017 / GPT-2 style, https://arxiv.org/abs/1705.03122. The table only covers
positions 0 .. max_len-1; asking for a later position raises instead of wrapping around, so
evaluation past the training length is reported as not applicable rather than silently wrong.
"""

from __future__ import annotations

import torch
from torch import nn

from lsbench.errors import LsbenchError
from lsbench.positions.base import Position


class Learned(Position):
    name = "learned"
    kind = "absolute"
    method = "trained embedding per absolute position (table of max_len rows, no wrapping)"
    paper = "Gehring et al. 2017, https://arxiv.org/abs/1705.03122"
    learned = True
    defaults = {"max_len": 512}

    def __init__(self, n_heads: int, head_dim: int, **params):
        super().__init__(n_heads, head_dim, **params)
        self.table = nn.Embedding(self.params["max_len"], self.d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    @property
    def max_len(self) -> int:
        return self.params["max_len"]

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        if len(pos) and int(pos.max()) >= self.max_len:
            raise LsbenchError(
                f"position 'learned' has a table of {self.max_len} positions and cannot embed "
                f"position {int(pos.max())}; evaluate at lengths <= {self.max_len} or use a "
                "relative method (alibi, t5, rotary)."
            )
        return self.table(pos)  # (N, D)
