"""The small model every variant is trained in: token embedding + sinusoidal positions ->
`lsbench.models.Encoder` (pre-norm blocks, the variant as the attention sublayer) -> linear head.

Sinusoidal (fixed) positions, not a learned table, so the same trained model can be run at any
N for fidelity (lsbench.quality.fidelity). Shape legend: B batch, N length, D d_model, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lsbench import positions
from lsbench.models import Encoder, EncoderConfig


@dataclass
class RecallConfig:
    variant: str
    n_tokens: int  # vocabulary + mask token
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    causal: bool = True
    params: dict[str, Any] = field(default_factory=dict)  # variant parameters


class RecallModel(nn.Module):
    def __init__(self, cfg: RecallConfig):
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(cfg.n_tokens, cfg.d_model)
        nn.init.normal_(self.emb.weight, std=cfg.d_model**-0.5)
        self.pe = positions.build("sinusoidal", n_heads=cfg.n_heads,
                                  head_dim=cfg.d_model // cfg.n_heads)
        self.encoder = Encoder(EncoderConfig(cfg.variant, cfg.d_model, cfg.n_heads,
                                             cfg.n_layers, causal=cfg.causal,
                                             params=dict(cfg.params)))
        self.head = nn.Linear(cfg.d_model, cfg.n_tokens)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, N) -> the first block's input (B, N, D)."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.emb(idx) * self.cfg.d_model**0.5  # unit-scale tokens, as the causal LM
        return x + self.pe(pos).to(x.dtype)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(idx)))  # (B, N, V+1)
