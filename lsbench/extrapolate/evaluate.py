"""Perplexity of a trained causal LM at evaluation lengths L_valid on one held-out stream.

The stream has T + 1 tokens, so there are T next-token targets.
- nonoverlapping (the ALiBi paper's headline): cut the inputs into windows of N (the last one
  shorter) and score every target once; each window starts again at position 0.
- sliding: windows of exactly N tokens ending every `stride` tokens over the last M targets, and
  only each window's last `stride` targets are scored, so every scored token has at least
  N - stride tokens of context. M is the same for every length (see `sliding_span`).

Uncertainty: the per-token losses are cut, in stream order, into `CI_BLOCKS` contiguous blocks
and the standard error of the mean loss is std(block means) / sqrt(blocks) (the batch-means
method: neighbouring tokens are correlated, so a per-token standard error would be too small).
The 95% interval of the perplexity is exp(mean ± 1.96 SE) (normal approximation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lsbench.extrapolate.analysis import MIN_TRUSTED_TOKENS
from lsbench.models import CausalLM

NONOVERLAPPING, SLIDING = "nonoverlapping", "sliding"


def sliding_span(n_targets: int, longest: int, stride: int, windows: int) -> int:
    """Targets M scored in sliding mode: `windows` × stride, but no more than the stream allows
    for full windows of the longest length; a multiple of stride."""
    room = (n_targets - longest) // stride + 1  # windows whose start is >= 0 at the longest N
    return max(0, min(windows, room)) * stride


CI_BLOCKS = 32  # contiguous blocks for the batch-means standard error
Z95 = 1.959964  # two-sided 95% normal quantile


@dataclass
class Score:
    """Scored tokens, mean NLL (nats) and its batch-means standard error for one length."""

    tokens: int
    loss: float
    loss_se: float | None  # None when there are too few tokens for CI_BLOCKS blocks
    block_means: list[float]  # per-block mean NLL, in stream order (for paired comparisons)

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)

    def ppl_ci(self) -> tuple[float, float] | tuple[None, None]:
        if self.loss_se is None:
            return None, None
        return (perplexity(self.loss - Z95 * self.loss_se),
                perplexity(self.loss + Z95 * self.loss_se))

    @property
    def low_precision(self) -> bool:
        return self.tokens < MIN_TRUSTED_TOKENS


def block_stats(losses: torch.Tensor, blocks: int = CI_BLOCKS) -> tuple[float | None, list[float]]:
    """(standard error of the mean, per-block means) of per-token losses in stream order."""
    if len(losses) < 2 * blocks:
        return None, []
    means = torch.stack([b.double().mean() for b in losses.tensor_split(blocks)])  # (blocks,)
    # blocks differ in size by at most one token, so their plain mean is ~ the overall mean
    return float(means.std() / math.sqrt(blocks)), [float(m) for m in means]


def _windows_losses(model: CausalLM, inputs: torch.Tensor, targets: torch.Tensor,
                    score_last: int, amp) -> torch.Tensor:
    """Per-target NLL of the last `score_last` targets of each (B, N) window -> (B·S,)."""
    with amp:
        logits = model(inputs)[:, -score_last:]  # (B, S, V)
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets[:, -score_last:].flatten(), reduction="none"
    ).cpu()


def _batched(starts: list[int], n: int, batch_tokens: int) -> list[list[int]]:
    per = max(1, batch_tokens // n)
    return [starts[i:i + per] for i in range(0, len(starts), per)]


def evaluate(model: CausalLM, stream: torch.Tensor, n: int, mode: str, stride: int = 0,
             span: int = 0, batch_tokens: int = 16384, amp=None,
             on_batch: Callable[[int, int], None] | None = None) -> tuple[int, float]:
    """Score `stream` (T + 1 tokens) at window length n; returns (tokens_scored, mean NLL)."""
    losses = token_losses(model, stream, n, mode, stride, span, batch_tokens, amp, on_batch)
    return len(losses), float(losses.double().mean())


def score(model: CausalLM, stream: torch.Tensor, n: int, mode: str, stride: int = 0,
          span: int = 0, batch_tokens: int = 16384, amp=None,
          on_batch: Callable[[int, int], None] | None = None) -> Score:
    """`evaluate` plus the standard error of the mean loss (see the module docstring)."""
    losses = token_losses(model, stream, n, mode, stride, span, batch_tokens, amp, on_batch)
    se, means = block_stats(losses)
    return Score(len(losses), float(losses.double().mean()), se, means)


@torch.inference_mode()
def token_losses(model: CausalLM, stream: torch.Tensor, n: int, mode: str, stride: int = 0,
                 span: int = 0, batch_tokens: int = 16384, amp=None,
                 on_batch: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Per-target NLL (nats) of every scored target, in stream order -> (tokens_scored,)."""
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
    parts = []
    for i, (starts, length, score_last) in enumerate(groups):
        idx = torch.tensor(starts, device=device)[:, None] + torch.arange(length + 1, device=device)
        win = s[idx]  # (B, length + 1)
        # windows of a group are consecutive in the stream, so the flattened rows stay in order
        parts.append(_windows_losses(model, win[:, :-1], win[:, 1:], score_last, amp))
        if on_batch:
            on_batch(i + 1, len(groups))
    return torch.cat(parts)


def perplexity(mean_nll: float) -> float:
    return math.exp(mean_nll) if mean_nll < 700 else math.inf
