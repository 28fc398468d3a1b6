"""Train one causal LM at a fixed length: AdamW, warm-up + cosine, gradient clipping,
checkpoints that resume exactly.

Every position method sees the same data: batch k is drawn from a generator seeded with
(seed, k), so the order does not depend on the method, on interruptions, or on resuming. There is
no dropout, so a resumed run repeats the uninterrupted one step for step.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lsbench.errors import LsbenchError
from lsbench.extrapolate.presets import Preset
from lsbench.measure.memory import track_peak
from lsbench.models import CausalLM, CausalLMConfig
from lsbench.sweep.store import fs_error

# how to continue after a write failed (disk full): training resumes from the last checkpoint
RESUME = "the same `lsbench extrapolate` command (it resumes from the last checkpoint)"

CKPT_FORMAT = 1
EVAL_ONLY_FIELDS = {"name", "description", "eval_windows", "sliding_tokens", "eval_batch_tokens",
                    "ckpt_every", "threads"}  # preset fields that do not change the weights
FINAL_LOSS_STEPS = 20  # final_train_loss = mean loss of the last steps (one batch is noisy)


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights and optimizer (all plain types)."""

    step: int = 0
    total_steps: int = 0
    train_time_s: float = 0.0
    peak_mem_mib: float | None = None
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    def summary(self, train_len: int, batch_size: int) -> dict[str, Any]:
        tokens = self.step * batch_size * train_len
        tail = self.losses[-FINAL_LOSS_STEPS:]
        return {
            "tokens_trained": tokens,
            "train_time_s": round(self.train_time_s, 3),
            "tokens_per_s": round(tokens / self.train_time_s, 1) if self.train_time_s else None,
            "peak_mem_mib": None if self.peak_mem_mib is None else round(self.peak_mem_mib, 2),
            "final_train_loss": round(sum(tail) / len(tail), 5) if tail else None,
        }


def total_steps(preset: Preset, train_len: int, train_tokens: int | None = None) -> int:
    tokens = preset.train_tokens if train_tokens is None else train_tokens
    return max(1, tokens // (preset.batch_size * train_len))


def lr_at(step: int, total: int, preset: Preset) -> float:
    """Linear warm-up, then cosine decay to lr × min_lr_ratio."""
    warmup = max(1, int(preset.warmup_frac * total))
    if step < warmup:
        return preset.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = preset.lr * preset.min_lr_ratio
    return floor + (preset.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_at(stream: torch.Tensor, step: int, batch_size: int, seq_len: int,
             seed: int) -> torch.Tensor:
    """(B, seq_len + 1) token windows for step `step`, the same for every method."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(stream) - seq_len, (batch_size,), generator=g)
    return stream[starts[:, None] + torch.arange(seq_len + 1)].long()


def param_groups(model: CausalLM, preset: Preset) -> list[dict]:
    """AdamW groups: weight matrices (decayed), biases and norms (not decayed), and the position
    method's learned parameters (own lr multiplier, never decayed; see Preset.position_lr_mult)."""
    decay, no_decay, pos = [], [], []
    for name, p in model.named_parameters():
        if name.startswith("pe."):
            pos.append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    mult = preset.lr_mult_for(model.cfg.position)
    groups = [{"name": "weights", "params": decay, "weight_decay": preset.weight_decay,
               "lr_mult": 1.0},
              {"name": "biases_norms", "params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
              {"name": "position", "params": pos, "weight_decay": 0.0, "lr_mult": mult}]
    return [g for g in groups if g["params"]]


def describe_groups(model: CausalLM, preset: Preset) -> list[dict]:
    """What run.json records per optimizer group: parameter count, peak lr, weight decay."""
    return [{"group": g["name"], "params": sum(p.numel() for p in g["params"]),
             "peak_lr": preset.lr * g["lr_mult"], "lr_mult": g["lr_mult"],
             "weight_decay": g["weight_decay"]} for g in param_groups(model, preset)]


def make_optimizer(model: CausalLM, preset: Preset) -> torch.optim.AdamW:
    # fused: one kernel for all parameters (on CPU torch otherwise loops over ~40 tensors one
    # op at a time, ~7% of a cpu-preset step); same update up to float rounding
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, preset), lr=preset.lr, betas=(0.9, 0.95),
                             fused=fused or None)


def autocast_for(device: torch.device, preset: Preset):
    if device.type == "cuda" and preset.dtype != "float32":
        return torch.autocast("cuda", dtype=getattr(torch, preset.dtype))
    return nullcontext()


def save_checkpoint(path: Path, model: CausalLM, opt, state: TrainState, meta: dict) -> None:
    """Write atomically (temp file + rename) so an interrupt never leaves a torn checkpoint."""
    payload = {"format": CKPT_FORMAT, "meta": meta, "state": asdict(state),
               "model": model.state_dict(), "optimizer": opt.state_dict()}
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise fs_error(path, e, "write", RESUME) from None


def load_checkpoint(path: Path, meta: dict | None = None) -> dict:
    """Load with weights_only=True; if `meta` is given it must match what the file was made with."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torn, foreign or from an incompatible version
        raise LsbenchError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to retrain."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT:
        raise LsbenchError(
            f"{path} is not an lsbench extrapolate checkpoint; delete it to retrain."
        )
    if meta is not None and ckpt["meta"] != meta:
        diff = sorted(k for k in set(meta) | set(ckpt["meta"])
                      if meta.get(k) != ckpt["meta"].get(k))
        raise LsbenchError(
            f"checkpoint {path} was trained with different settings ({', '.join(diff)}); "
            "rerun with the same settings to resume, or use a new --out directory."
        )
    return ckpt


def checkpoint_meta(model_cfg: CausalLMConfig, preset: Preset, train_len: int, steps: int,
                    seed: int, corpus_sha: str) -> dict:
    """Everything that must match for a checkpoint to be resumed or evaluated: the preset's
    training settings, not its evaluation ones (so changing those rescores the same weights)."""
    training = {k: v for k, v in preset.as_dict().items() if k not in EVAL_ONLY_FIELDS}
    return {"model": asdict(model_cfg), "preset": training, "train_len": train_len,
            "total_steps": steps, "seed": seed, "corpus_sha256": corpus_sha}


def backward(model: CausalLM, opt, batch: torch.Tensor, preset: Preset, amp) -> torch.Tensor:
    """Forward, next-token loss, backward and gradient clipping of one (B, L + 1) batch (the
    optimizer step is the caller's); returns the loss."""
    with amp:
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
    return loss


def step_time_s(model: CausalLM, stream: torch.Tensor, preset: Preset, train_len: int,
                seed: int, device: torch.device, steps: int = 5) -> float:
    """Median seconds of `steps` training steps (after one untimed) on `model`, which is
    changed: pass a throwaway copy. Used to predict a run's duration before it starts."""
    model.to(device).train()
    opt = make_optimizer(model, preset)
    amp = autocast_for(device, preset)
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        batch = batch_at(stream, step, preset.batch_size, train_len, seed).to(device)
        backward(model, opt, batch, preset, amp).item()
        opt.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


StepCallback = Callable[[int, int, float, float], None]  # (step, total, loss, tokens_per_s)


def train(model: CausalLM, stream: torch.Tensor, preset: Preset, train_len: int, steps: int,
          seed: int, ckpt_path: Path, meta: dict, device: torch.device,
          on_step: StepCallback | None = None) -> TrainState:
    """Train (or resume) until `steps`; returns the final state. Checkpoints every
    `preset.ckpt_every` steps, at the end, and when interrupted (KeyboardInterrupt)."""
    model.to(device).train()
    opt = make_optimizer(model, preset)
    state = TrainState(total_steps=steps)
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, meta)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
    tokens_per_step = preset.batch_size * train_len
    amp = autocast_for(device, preset)
    last_saved, updating = state.step, False
    try:
        while state.step < steps:
            t0 = time.perf_counter()
            lr = lr_at(state.step, steps, preset)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_mult"]
            batch = batch_at(stream, state.step, preset.batch_size, train_len, seed).to(device)
            measure = state.peak_mem_mib is None
            with track_peak(device) if measure else nullcontext() as mem:
                loss = backward(model, opt, batch, preset, amp)
            loss_value = loss.item()  # synchronises on CUDA, so the step time is real
            if not math.isfinite(loss_value):
                raise LsbenchError(
                    f"training loss became {loss_value} at step {state.step}; lower the learning "
                    "rate (preset lr) or the train length."
                )
            # weights and state change together; an interrupt in between is not saved
            updating = True
            opt.step()
            state.step += 1
            state.train_time_s += time.perf_counter() - t0
            state.losses.append(loss_value)
            state.lrs.append(lr)
            if measure:
                state.peak_mem_mib = mem.peak_mib
            updating = False
            if on_step:
                on_step(state.step, steps, loss_value, tokens_per_step / (time.perf_counter() - t0))
            if state.step % preset.ckpt_every == 0 or state.step == steps:
                save_checkpoint(ckpt_path, model, opt, state, meta)
                last_saved = state.step
    except KeyboardInterrupt:
        if not updating and state.step != last_saved:
            save_checkpoint(ckpt_path, model, opt, state, meta)
        raise
    return state
