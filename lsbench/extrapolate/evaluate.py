"""Perplexity of a trained causal LM at evaluation lengths L_valid on one held-out stream.

The stream has T + 1 tokens, so there are T next-token targets.
- nonoverlapping (the ALiBi paper's headline): cut the inputs into windows of N (the last one
  shorter) and score every target once; each window starts again at position 0.
- sliding: windows of exactly N tokens ending every `stride` tokens over the last M targets, and
  only each window's last `stride` targets are scored, so every scored token has at least
  N - stride tokens of context. M is the same for every length (see `sliding_span`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from lsbench.models import CausalLM

NONOVERLAPPING, SLIDING = "nonoverlapping", "sliding"


def sliding_span(n_targets: int, longest: int, stride: int, windows: int) -> int:
    """Targets M scored in sliding mode: `windows` × stride, but no more than the stream allows
    for full windows of the longest length; a multiple of stride."""
    room = (n_targets - longest) // stride + 1  # windows whose start is >= 0 at the longest N
    return max(0, min(windows, room)) * stride


def _windows_loss(model: CausalLM, inputs: torch.Tensor, targets: torch.Tensor, score_last: int,
                  amp) -> float:
    """Summed NLL of the last `score_last` targets of each (B, N) window."""
    with amp:
        logits = model(inputs)[:, -score_last:]  # (B, S, V)
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets[:, -score_last:].flatten(), reduction="sum"
    ).item()


def _batched(starts: list[int], n: int, batch_tokens: int) -> list[list[int]]:
    per = max(1, batch_tokens // n)
    return [starts[i:i + per] for i in range(0, len(starts), per)]


@torch.inference_mode()
def evaluate(model: CausalLM, stream: torch.Tensor, n: int, mode: str, stride: int = 0,
             span: int = 0, batch_tokens: int = 16384, amp=None,
             on_batch: Callable[[int, int], None] | None = None) -> tuple[int, float]:
    """Score `stream` (T + 1 tokens) at window length n; returns (tokens_scored, mean NLL)."""
    model.eval()
    amp = amp or nullcontext()
    device = next(model.parameters()).device
    s = stream.long().to(device)
    T = len(s) - 1
    if mode == NONOVERLAPPING:
        full = list(range(0, T - n + 1, n))  # window starts with n inputs each
        groups = [(g, n, n) for g in _batched(full, n, batch_tokens)]
        tail = len(full) * n
        if tail < T:
            groups.append(([tail], T - tail, T - tail))
    else:  # sliding: windows end at T - span + stride, ..., T (input index, exclusive)
        ends = list(range(T - span + stride, T + 1, stride))
        groups = [(g, n, stride) for g in _batched([e - n for e in ends], n, batch_tokens)]
    total, scored = 0.0, 0
    for i, (starts, length, score_last) in enumerate(groups):
        idx = torch.tensor(starts, device=device)[:, None] + torch.arange(length + 1, device=device)
        win = s[idx]  # (B, length + 1)
        total += _windows_loss(model, win[:, :-1], win[:, 1:], score_last, amp)
        scored += len(starts) * score_last
        if on_batch:
            on_batch(i + 1, len(groups))
    return scored, total / scored


def perplexity(mean_nll: float) -> float:
    return math.exp(mean_nll) if mean_nll < 700 else math.inf
