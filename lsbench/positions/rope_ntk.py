"""NTK-aware RoPE scaling: raise the rotary base instead of squeezing positions, so the high
frequencies (local order) are kept and the low ones are interpolated.

bloc97 2023, "NTK-Aware Scaled RoPE allows LLaMA models to have extended (8k+) context size
without any fine-tuning", https://www.reddit.com/r/LocalLLaMA/comments/14lz7j5/ ; formula as in
the YaRN paper (Peng et al. 2023, https://arxiv.org/abs/2309.00071, eq. 16):
base' = base · s^(Dh/(Dh-2)), s = L'/L. As with `rope_pi`, s = max(1, N/L) per window length,
and a rotary checkpoint loads as is.
"""

from __future__ import annotations

import torch

from lsbench.positions.rope_pi import scale_factor
from lsbench.positions.rotary import Rotary, rope_inv_freq


def ntk_base(base: float, s: float, head_dim: int) -> float:
    return base * s ** (head_dim / (head_dim - 2))


class RopeNTK(Rotary):
    name = "rope_ntk"
    method = "rotary with base·s^(Dh/(Dh-2)), s = N/L, for windows N > L (eval-time)"
    paper = "bloc97 2023 (NTK-aware scaling), as defined in https://arxiv.org/abs/2309.00071"
    defaults = {"base": 10000, "train_len": 512}

    def inv_freq(self, n: int, device=None) -> torch.Tensor:
        s = scale_factor(n, self.params["train_len"])
        return rope_inv_freq(self.head_dim, ntk_base(self.params["base"], s, self.head_dim),
                             device)
