"""Position interpolation (PI): evaluate a rotary-trained model past its training length by
squeezing the positions back into the trained range, without retraining.

Chen et al. 2023, "Extending Context Window of Large Language Models via Positional
Interpolation", https://arxiv.org/abs/2306.15595, eq. (4): f'(x, m) = f(x, m·L/L') for a window
of L' > L positions. Here L' is the window being scored, so the factor s = max(1, N/L) is chosen
per window length (for N <= L it is plain rotary). Its weights are rotary's: a rotary checkpoint
loads as is (`lsbench extrapolate --rope-scaling pi`).
"""

from __future__ import annotations

import torch

from lsbench.positions.rotary import Rotary


def scale_factor(n: int, train_len: int) -> float:
    """s = L'/L, at least 1 (shorter windows are not compressed)."""
    return max(1.0, n / train_len)


class RopePI(Rotary):
    name = "rope_pi"
    method = "rotary with positions m·L/N for windows N > L (eval-time, no retraining)"
    paper = "Chen et al. 2023, https://arxiv.org/abs/2306.15595"
    defaults = {"base": 10000, "train_len": 512}

    def scale_pos(self, pos: torch.Tensor) -> torch.Tensor:
        return pos.to(torch.float64) / scale_factor(len(pos), self.params["train_len"])
