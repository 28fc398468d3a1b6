"""Rotary position embedding (RoPE): rotate q and k by an angle proportional to the position.

Su et al. 2021, "RoFormer", https://arxiv.org/abs/2104.09864. θ_i = base^(-2i/Dh), GPT-NeoX
"rotate half" layout (the first and second halves of each head form the rotated pairs), so
q_m·k_n depends only on m - n.

Subclasses change the frequencies per window length (`inv_freq`), the positions (`scale_pos`)
or scale q and k (`qk_scale`): xPos and the eval-time RoPE scalings (PI, NTK-aware, YaRN) are
one small file each on top of this one.
"""

from __future__ import annotations

import torch

from lsbench.errors import LsbenchError
from lsbench.positions.base import Position


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_inv_freq(head_dim: int, base: float, device=None) -> torch.Tensor:
    """θ_i = base^(-2i/Dh), i = 0 .. Dh/2 - 1, float64 (Dh/2,)."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)


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
            raise LsbenchError(f"position {cls.name!r} needs an even head_dim, got {head_dim}.")

    def inv_freq(self, n: int, device=None) -> torch.Tensor:
        """Frequencies (Dh/2,) float64 for a window of n positions (plain RoPE: any n)."""
        return rope_inv_freq(self.head_dim, self.params["base"], device)

    def scale_pos(self, pos: torch.Tensor) -> torch.Tensor:
        """The positions the angles use (plain RoPE: the positions themselves), float64."""
        return pos.to(torch.float64)

    def angles(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) positions -> cos, sin of shape (N, Dh), computed in float64 for long N."""
        # the window length comes from the shape (positions are 0..N-1): no host sync
        freqs = self.scale_pos(pos)[:, None] * self.inv_freq(len(pos), pos.device)  # (N, Dh/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (N, Dh)
        return emb.cos(), emb.sin()

    def qk_scale(self, pos: torch.Tensor, is_key: bool) -> torch.Tensor | float:
        """Multiplier of the rotated q (or k): a scalar or (N, Dh). Plain RoPE: 1."""
        return 1.0

    def tables(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple:
        """(cos, sin, q scale, k scale) for `pos` in `dtype`. The causal LM passes one `pos`
        tensor to every layer for q and k, so they are computed once per forward (float64
        cos/sin of (N, Dh) were ~2% of a training step when recomputed 4 times per step);
        the cache keeps only the last `pos` object, so a new tensor always recomputes."""
        cache = getattr(self, "_tables", None)
        if cache is not None and cache[0] is pos and cache[1] == dtype:
            return cache[2]
        cos, sin = (t.to(dtype) for t in self.angles(pos))
        scales = tuple(s.to(dtype) if isinstance(s, torch.Tensor) else s
                       for s in (self.qk_scale(pos, False), self.qk_scale(pos, True)))
        self._tables = (pos, dtype, (cos, sin, *scales))
        return self._tables[2]

    def forward(self, x: torch.Tensor, pos: torch.Tensor, is_key: bool = False) -> torch.Tensor:
        cos, sin, q_scale, k_scale = self.tables(pos, x.dtype)
        y = x * cos + rotate_half(x) * sin  # (B, H, N, Dh)
        scale = k_scale if is_key else q_scale
        if isinstance(scale, torch.Tensor):
            return y * scale
        return y if scale == 1.0 else y * scale
