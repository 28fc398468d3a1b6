"""Train and score one (variant, task, seed) on MQAR at a fixed step budget.

One training loop should serve extrapolate and quality (DESIGN.md). The learning-rate schedule
is `lsbench.extrapolate.train.lr_at` (warm-up + cosine), imported; its optimizer and step
helpers (`make_optimizer`, `backward`, `train`) are tied to `CausalLM` (position parameter
groups, next-token loss over a byte stream, checkpoints), so the loop below is the smallest one
MQAR needs: fresh batches per step drawn from (seed, step), AdamW, clipping, a loss over the
labelled positions only. Runs take seconds to minutes, so there are no checkpoints: an
interrupted run loses at most the (variant, seed) in progress.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lsbench.errors import LsbenchError
from lsbench.extrapolate.train import lr_at
from lsbench.quality.model import RecallConfig, RecallModel
from lsbench.quality.tasks import IGNORE, MQAR

EVAL_SEED_OFFSET = 1_000_000  # test examples come from seeds no training batch uses


@dataclass(frozen=True)
class Schedule:
    """What lr_at reads (the same field names as an extrapolate Preset)."""

    lr: float
    warmup_frac: float = 0.1
    min_lr_ratio: float = 0.1


def loss_and_hits(model: RecallModel, x: torch.Tensor, y: torch.Tensor):
    logits = model(x)  # (B, N, V+1)
    scored = y != IGNORE
    loss = F.cross_entropy(logits[scored].float(), y[scored])
    hits = (logits[scored].argmax(-1) == y[scored]).sum()
    return loss, hits, int(scored.sum())


@torch.no_grad()
def accuracy(model: RecallModel, task: MQAR, form: str, n: int, seed: int,
             batch_size: int, device: torch.device) -> float:
    """Query accuracy on n held-out examples (argmax over the whole vocabulary)."""
    model.eval()
    x, y = task.sample(n, EVAL_SEED_OFFSET + seed, form)
    hits = total = 0
    for i in range(0, n, batch_size):
        _, h, t = loss_and_hits(model, x[i:i + batch_size].to(device),
                                y[i:i + batch_size].to(device))
        hits, total = hits + int(h), total + t
    model.train()
    return hits / total


def train_one(cfg: RecallConfig, task: MQAR, form: str, seed: int, steps: int,
              batch_size: int, lr: float, eval_examples: int, device: torch.device,
              weight_decay: float = 0.1, grad_clip: float = 1.0,
              on_step: Callable[[int, int, float], None] | None = None,
              ) -> tuple[RecallModel, dict[str, Any]]:
    """Train a fresh model (weights from `seed`) for `steps` steps; returns it and its row."""
    torch.manual_seed(seed)
    model = RecallModel(cfg).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    sched = Schedule(lr=lr)
    t0, c0 = time.perf_counter(), time.process_time()
    losses: list[float] = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, sched)
        x, y = task.sample(batch_size, seed * 1_000_003 + step, form)
        loss, _, _ = loss_and_hits(model, x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        value = loss.item()
        if not math.isfinite(value):
            raise LsbenchError(f"{cfg.variant}: training loss became {value} at step {step}; "
                               "lower the learning rate (--lr).")
        losses.append(value)
        if on_step:
            on_step(step + 1, steps, value)
    train_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    acc = accuracy(model, task, form, eval_examples, seed, batch_size, device)
    tail = losses[-20:]
    return model, {"accuracy": round(acc, 5), "final_loss": round(sum(tail) / len(tail), 5),
                   "train_s": round(train_s, 2), "cpu_s": round(cpu_s, 2),
                   "params": sum(p.numel() for p in model.parameters())}
