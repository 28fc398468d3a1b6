"""How long an extrapolation run will take, predicted from a short warm-up before it starts.

Per trained method: the median of a few training steps on a throwaway copy of the model times
the steps still to run (a resumed checkpoint counts only what is left). Per scored model
(trained, or rescored like rotary+pi and xpos+bca): forwards of one window at the shortest
and at the longest eval length give the cost per token at both ends; the cost per token of a
window of N tokens is interpolated linearly in N between them (attention costs O(N) per token,
the rest O(1)), times the tokens each length scores (nonoverlapping: the whole stream; sliding:
its windows of N tokens). Other processes on the CPU make the real run slower; the run records
both the prediction and the wall time.
"""

from __future__ import annotations

import time

import torch

from lsbench.extrapolate.train import autocast_for, step_time_s
from lsbench.models import CausalLM


@torch.inference_mode()
def forward_time_s(model: CausalLM, n: int, device: torch.device, amp) -> float:
    """Median seconds of 3 forwards of one window of n tokens (after one untimed): one sample
    is easily doubled by another process taking a core for a moment."""
    model.to(device).eval()
    idx = torch.randint(0, 256, (1, n), device=device)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        with amp:
            model(idx).float().sum().item()  # .item(): synchronises on CUDA
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[1]


def eval_time_s(model: CausalLM, lens: list[int], tokens: dict[int, int],
                device: torch.device, preset) -> float:
    """Predicted seconds to score `tokens[n]` window-tokens at each length n."""
    lens = [n for n in lens if model.max_len is None or n <= model.max_len]
    if not lens:
        return 0.0
    amp = autocast_for(device, preset)
    lo, hi = lens[0], lens[-1]
    c_lo = forward_time_s(model, lo, device, amp) / lo
    c_hi = forward_time_s(model, hi, device, amp) / hi if hi != lo else c_lo

    def per_token(n: int) -> float:
        return c_lo if hi == lo else max(0.0, c_lo + (c_hi - c_lo) * (n - lo) / (hi - lo))

    return sum(tokens[n] * per_token(n) for n in lens)


def train_time_s(model: CausalLM, stream: torch.Tensor, preset, train_len: int, seed: int,
                 device: torch.device, steps_left: int) -> float:
    return steps_left * step_time_s(model, stream, preset, train_len, seed, device) \
        if steps_left > 0 else 0.0
