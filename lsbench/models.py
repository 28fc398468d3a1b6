"""Models built by name: the encoder stack the speed sweeps time, and the causal LM that
`lsbench extrapolate` trains.

Shape legend: B batch, N length, D d_model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lsbench import variants


@dataclass
class EncoderConfig:
    variant: str
    d_model: int = 256
    n_heads: int = 16
    n_layers: int = 1
    ffn_dim: int = 0  # 0 -> 4 * d_model
    causal: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # variant parameters

    def __post_init__(self) -> None:
        if self.ffn_dim == 0:
            self.ffn_dim = 4 * self.d_model
        variants.check(self.variant, self.d_model, self.n_heads, self.causal, **self.params)


class FFN(nn.Sequential):
    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + ffn(ln(x)), the same for every variant."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = variants.build(cfg.variant, cfg.d_model, cfg.n_heads, cfg.causal, **cfg.params)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FFN(cfg.d_model, cfg.ffn_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.ffn(self.ln2(x))


class Encoder(nn.Module):
    """n_layers blocks over already-embedded inputs (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)

    def flops(self, batch_size: int, seq_len: int) -> float:
        """Analytic forward FLOPs: attention sublayer (from the variant) + FFN, per layer."""
        c = self.cfg
        cls = variants.get(c.variant)
        attn = cls.flops(batch_size, seq_len, c.d_model, c.n_heads, {**cls.defaults, **c.params})
        ffn = 2.0 * batch_size * seq_len * 2 * c.d_model * c.ffn_dim
        return c.n_layers * (attn + ffn)
