"""YaRN: per-frequency RoPE scaling ("NTK-by-parts") plus an attention temperature.

Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language Models",
https://arxiv.org/abs/2309.00071, §3.2-3.4, with the dimension ramp as the reference code
(jquesnelle/yarn, and Hugging Face `_compute_yarn_parameters`) computes it:
- a rotated pair with fewer than β_slow = 1 full turns over the training length L is
  interpolated (θ/s), one with more than β_fast = 32 turns is kept (θ), in between a linear ramp
  over the pair index, between the pairs where those turn counts are reached (rounded outwards);
- q and k are both multiplied by 0.1·ln(s) + 1 (so the logits by its square).
s = max(1, N/L) per window length (s = 1 is plain rotary); a rotary checkpoint loads as is.
"""

from __future__ import annotations

import math

import torch

from lsbench.positions.rope_pi import scale_factor
from lsbench.positions.rotary import Rotary, rope_inv_freq

BETA_FAST, BETA_SLOW = 32, 1


def correction_dim(turns: float, head_dim: int, base: float, train_len: int) -> float:
    """The pair index whose wavelength fits `turns` times into train_len."""
    return head_dim * math.log(train_len / (turns * 2 * math.pi)) / (2 * math.log(base))


def yarn_ramp(head_dim: int, base: float, train_len: int) -> torch.Tensor:
    """Share of each pair's frequency kept unscaled (1: extrapolate, 0: interpolate), (Dh/2,)."""
    low = max(math.floor(correction_dim(BETA_FAST, head_dim, base, train_len)), 0)
    high = min(math.ceil(correction_dim(BETA_SLOW, head_dim, base, train_len)), head_dim - 1)
    if low == high:
        high += 0.001  # the reference's guard against a zero-width ramp
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    return 1 - ((i - low) / (high - low)).clamp(0, 1)


def yarn_mscale(s: float) -> float:
    return 0.1 * math.log(s) + 1.0 if s > 1 else 1.0


class RopeYaRN(Rotary):
    name = "rope_yarn"
    method = "rotary, low frequencies interpolated by N/L and high ones kept, plus a logit " \
             "temperature (eval-time)"
    paper = "Peng et al. 2023, https://arxiv.org/abs/2309.00071"
    defaults = {"base": 10000, "train_len": 512}

    def inv_freq(self, n: int, device=None) -> torch.Tensor:
        p = self.params
        s = scale_factor(n, p["train_len"])
        theta = rope_inv_freq(self.head_dim, p["base"], device)
        keep = yarn_ramp(self.head_dim, p["base"], p["train_len"]).to(theta.device)
        return theta / s * (1 - keep) + theta * keep

    def qk_scale(self, pos: torch.Tensor, is_key: bool) -> float:
        return yarn_mscale(scale_factor(len(pos), self.params["train_len"]))
