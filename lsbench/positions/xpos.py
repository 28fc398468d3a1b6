"""xPos: rotary with an exponential decay, so attention fades with distance as it does in ALiBi.

Sun et al. 2023, "A Length-Extrapolatable Transformer", https://arxiv.org/abs/2212.10554, §3.2
(reference code: microsoft/torchscale `XPOS`, and x-transformers `RotaryEmbedding(use_xpos)`).
Per rotated pair i: ζ_i = (2i/Dh + γ) / (1 + γ) with γ = 0.4, and
    q_m <- R(m) q_m · ζ^(m/scale_base),   k_n <- R(n) k_n · ζ^(-n/scale_base),
so q_m·k_n = (rotary score) · ζ^((m - n)/scale_base): a decay in the distance only. Positions are
centred on the window (m - N//2), as in both references, which keeps ζ^(±m/scale_base) inside
float range at long N without changing any score.
"""

from __future__ import annotations

import torch

from lsbench.positions.rotary import Rotary

GAMMA = 0.4


def xpos_zeta(head_dim: int, device=None) -> torch.Tensor:
    """ζ_i = (2i/Dh + γ)/(1 + γ) per rotated pair, float64 (Dh/2,)."""
    return (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim + GAMMA) \
        / (1 + GAMMA)


class XPos(Rotary):
    name = "xpos"
    method = "rotary with a per-frequency exponential decay ζ^((m-n)/scale_base) of the scores"
    paper = "Sun et al. 2023, https://arxiv.org/abs/2212.10554"
    defaults = {"base": 10000, "scale_base": 512}

    def qk_scale(self, pos: torch.Tensor, is_key: bool) -> torch.Tensor:
        power = (pos.to(torch.float64) - len(pos) // 2) / self.params["scale_base"]  # (N,)
        scale = xpos_zeta(self.head_dim, pos.device) ** power[:, None]  # (N, Dh/2)
        scale = torch.cat((scale, scale), dim=-1)  # (N, Dh): both halves of a rotated pair
        return 1 / scale if is_key else scale
