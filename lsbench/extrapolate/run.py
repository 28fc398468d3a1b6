"""`lsbench extrapolate`: train each position method at L, score it at L_valid ≥ L, write files.

Run directory (the contract with `lsbench report`):
- run.json           kind, command, args, env fingerprint, lsbench version, corpus, preset, times
- extrapolation.csv  position, train_len, eval_len, eval_mode, stride, tokens_scored, loss, ppl
                     (+ status: ok | not_applicable, reason; loss_se and the 95% interval
                     ppl_ci_low..ppl_ci_high; ppl_ratio = ppl/ppl(L) and delta_bits =
                     (loss - loss(L))/ln 2; low_precision when fewer than 16k tokens were scored)
- training.csv       position, train_len, params, tokens_trained, train_time_s, tokens_per_s,
                     peak_mem_mib, final_train_loss
- training_curve.csv position, step, tokens, loss, lr
- checkpoints/<position>.pt   resumable; evaluation can be rerun with --eval-only

Why one module of ~440 lines: it is the command's one pipeline (validate, train each method,
score it nonoverlapping and sliding, RoPE scalings of one checkpoint, write the files), each
step short; the pieces that stand alone live in train.py, evaluate.py and analysis.py.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import torch

import lsbench
from lsbench import positions as position_registry
from lsbench.errors import LsbenchError, unknown_choice
from lsbench.extrapolate.analysis import (
    add_relative_columns,
    control_warnings,
    ngram_ceilings,
    repeat_warning,
)
from lsbench.extrapolate.corpus import load_corpus
from lsbench.extrapolate.evaluate import (
    MIN_TRUSTED_TOKENS,
    NONOVERLAPPING,
    SLIDING,
    score,
    sliding_span,
)
from lsbench.extrapolate.presets import DEFAULT_EVAL_MULTS, PRESETS, Preset, get_preset
from lsbench.extrapolate.tokenizer import VOCAB_SIZE
from lsbench.extrapolate.train import (
    RESUME,
    TrainState,
    autocast_for,
    checkpoint_meta,
    describe_groups,
    load_checkpoint,
    total_steps,
    train,
)
from lsbench.models import CausalLM, CausalLMConfig
from lsbench.sweep.store import atomic_write, fs_error

PAPER_POSITIONS = ("sinusoidal", "rotary", "t5", "alibi")
# `none` (NoPE) is the control: a method not clearly better at L has not learned position
DEFAULT_POSITIONS = (*PAPER_POSITIONS, "none")
EXTRAPOLATION_COLUMNS = ["position", "train_len", "eval_len", "eval_mode", "stride",
                         "tokens_scored", "loss", "ppl", "status", "reason", "loss_se",
                         "ppl_ci_low", "ppl_ci_high", "ppl_ratio", "delta_bits", "low_precision"]
TRAINING_COLUMNS = ["position", "train_len", "params", "tokens_trained", "train_time_s",
                    "tokens_per_s", "peak_mem_mib", "final_train_loss"]


class Events(Protocol):
    """How the library reports progress; the CLI implements it with rich (library never prints)."""

    def __call__(self, event: str, **data: Any) -> None: ...


def _quiet(event: str, **data: Any) -> None:
    pass


@dataclass
class ExtrapolationResult:
    out: Path
    rows: list[dict] = field(default_factory=list)  # extrapolation.csv rows
    training: list[dict] = field(default_factory=list)  # training.csv rows
    run: dict = field(default_factory=dict)  # run.json

    def table(self, mode: str = NONOVERLAPPING) -> dict[str, dict[int, float | None]]:
        """position -> {eval_len: ppl (None when not applicable)} for one eval mode."""
        out: dict[str, dict[int, float | None]] = {}
        for r in self.rows:
            if r["eval_mode"] == mode:
                out.setdefault(r["position"], {})[r["eval_len"]] = r["ppl"]
        return out

    def summary(self, mode: str = NONOVERLAPPING) -> list[dict]:
        """Per position: best length, ppl there, and ppl(longest)/ppl(train_len)."""
        train_len = self.run["args"]["train_len"]
        rows = []
        for pos, by_len in self.table(mode).items():
            ok = {n: p for n, p in by_len.items() if p is not None}
            best = min(ok, key=ok.get) if ok else None
            longest = max(ok) if ok else None
            base = ok.get(train_len)
            rows.append({
                "position": pos,
                "best_len": best,
                "best_ppl": ok.get(best),
                "longest_len": longest,
                "ratio_longest_to_train": ok[longest] / base if base and longest else None,
            })
        return rows


def parse_eval_lens(spec: str | Sequence | None, train_len: int) -> list[int]:
    """'512,1024' (tokens) or '1x,1.5x,16x' (multiples of train_len); default L×{1,…,16}."""
    if spec is None or spec == "":
        items: list = [f"{m}x" for m in DEFAULT_EVAL_MULTS]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    lens = []
    for item in items:
        text = str(item).strip().lower()
        try:
            n = round(float(text[:-1]) * train_len) if text.endswith("x") else int(text)
        except ValueError:
            raise LsbenchError(
                f"--eval-lens: {item!r} is not a length; use tokens (512,1024) or multiples of "
                "--train-len (1x,2x,16x)."
            ) from None
        if n < 1:
            raise LsbenchError(f"--eval-lens: every length must be >= 1, got {item!r} -> {n}.")
        lens.append(n)
    if not lens:
        raise LsbenchError("--eval-lens is empty; give at least one length, e.g. 1x,2x,16x.")
    return sorted(set(lens))


# eval-time variants chosen in --positions that rescore another method's checkpoint without
# retraining: row label -> (trained method, registered position method used to score)
RESCORED = {"xpos+bca": ("xpos", "xpos_bca")}
_RESCORED_ALIASES = {method: label for label, (_, method) in RESCORED.items()}


def parse_positions(spec: str | Sequence | None) -> list[str]:
    """Position names in order; an eval-time variant (xpos+bca, or its registry name xpos_bca)
    brings in the method whose checkpoint it rescores, placed before it."""
    names = list(DEFAULT_POSITIONS) if not spec else (
        [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    )
    if not names:
        raise LsbenchError("--positions is empty; e.g. --positions alibi,rotary.")
    out: list[str] = []
    for name in names:
        name = _RESCORED_ALIASES.get(name, name)
        if name in RESCORED:
            out.append(RESCORED[name][0])
        elif name not in position_registry.REGISTRY:
            raise unknown_choice("position method", name,
                                 [*position_registry.REGISTRY, *RESCORED], "--positions")
        out.append(name)
    return list(dict.fromkeys(out))


# eval-time RoPE scalings of the rotary checkpoint: short name -> registered position method
ROPE_SCALINGS = {"pi": "rope_pi", "ntk": "rope_ntk", "yarn": "rope_yarn"}


def parse_rope_scaling(spec: str | Sequence | None, names: list[str]) -> list[str]:
    """'pi,ntk,yarn' -> short names; they rescore the trained rotary model, so it must be there."""
    if not spec:
        return []
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) \
        else list(spec)
    out = []
    for item in items:
        short = item.removeprefix("rope_")
        if short not in ROPE_SCALINGS:
            raise unknown_choice("RoPE scaling", item, ROPE_SCALINGS, "--rope-scaling")
        out.append(short)
    if out and "rotary" not in names:
        raise LsbenchError("--rope-scaling rescores the rotary model without retraining; add "
                           "rotary to --positions (e.g. --positions rotary,alibi,none).")
    return list(dict.fromkeys(out))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise unknown_choice("device", device, ["auto", "cpu", "cuda"])
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LsbenchError("--device cuda asked for, but CUDA is not available; use --device cpu.")
    return torch.device(device)


def default_out(root: Path = Path("reports")) -> Path:
    return root / f"{datetime.now():%Y%m%d-%H%M%S}-extrapolate"


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on every platform
        return None


def _round(x: float | None) -> float | None:
    return x if x is None or not math.isfinite(x) else round(x, 4)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r.get(k) for k in columns})
    atomic_write(path, buf.getvalue(), RESUME)


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=str), RESUME)


def run_extrapolate(
    train_len: int = 512,
    positions: str | Sequence[str] | None = None,
    corpus: str = "stdlib",
    out: str | Path | None = None,
    preset: str | None = None,
    eval_lens: str | Sequence | None = None,
    stride: int | None = None,
    eval_only: bool = False,
    device: str = "auto",
    seed: int = 0,
    threads: int = 0,
    train_tokens: int | None = None,
    rope_scaling: str | Sequence[str] | None = None,
    command: str = "",
    events: Events = _quiet,
) -> ExtrapolationResult:
    """Train every position method at `train_len` and score it at every eval length.

    Reuses checkpoints found in `out` (resume an interrupted run, or `eval_only`).
    """
    if not isinstance(train_len, int) or train_len < 1:
        raise LsbenchError(f"--train-len must be a positive integer, got {train_len!r}.")
    names = parse_positions(positions)
    scalings = parse_rope_scaling(rope_scaling, names)
    lens = parse_eval_lens(eval_lens, train_len)
    dev = resolve_device(device)
    p = get_preset(preset or ("gpu" if dev.type == "cuda" else "cpu"))
    if stride is None:
        stride = max(1, min(train_len // 2, lens[0]))
    if stride < 0 or stride > lens[0]:
        raise LsbenchError(
            f"--stride must be between 0 (no sliding evaluation) and the shortest eval length "
            f"{lens[0]}, got {stride}."
        )
    if train_tokens is not None and train_tokens < p.batch_size * train_len:
        raise LsbenchError(
            f"--train-tokens must be at least one batch ({p.batch_size} × {train_len} = "
            f"{p.batch_size * train_len}), got {train_tokens}."
        )
    if eval_only and out is None:
        raise LsbenchError("--eval-only needs --out DIR: the run directory holding checkpoints.")
    threads = threads or p.threads
    if threads < 0:
        raise LsbenchError(f"--threads must be >= 0 (0: torch's default), got {threads}.")
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(train_len, names, corpus, out, p, lens, stride, eval_only, dev, seed,
                    train_tokens, command, events, scalings)
    finally:
        torch.set_num_threads(saved_threads)


def _run(train_len: int, names: list[str], corpus: str, out: str | Path | None, p: Preset,
         lens: list[int], stride: int, eval_only: bool, dev: torch.device, seed: int,
         train_tokens: int | None, command: str, events: Events,
         scalings: list[str] = ()) -> ExtrapolationResult:
    data = load_corpus(corpus)
    train_stream, valid = data.streams["train"], data.streams["valid"]
    if len(train_stream) < train_len + 2:
        raise LsbenchError(
            f"corpus {data.name!r} is too small: its train split has {len(train_stream)} tokens, "
            f"fewer than --train-len + 2 = {train_len + 2}; use a bigger corpus or a shorter "
            "--train-len."
        )
    longest = lens[-1]
    n_targets = min(len(valid) - 1, max(p.eval_windows * longest, longest))
    if n_targets < longest:
        raise LsbenchError(
            f"corpus {data.name!r}: the validation stream has {len(valid)} tokens, shorter than "
            f"the longest eval length + 1 ({longest + 1}); lower --eval-lens or use a bigger "
            "corpus."
        )
    stream = valid[: n_targets + 1]
    span = sliding_span(n_targets, longest, stride, -(-p.sliding_tokens // stride)) if stride else 0
    steps = total_steps(p, train_len, train_tokens)

    out = Path(out) if out is not None else default_out()
    ckpt_dir = out / "checkpoints"
    if eval_only and not ckpt_dir.is_dir():
        raise LsbenchError(
            f"--eval-only: {ckpt_dir} does not exist; train first (drop --eval-only)."
        )
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fs_error(ckpt_dir, e, "create", RESUME) from None
    args = {"train_len": train_len, "positions": names, "corpus": corpus, "out": str(out),
            "preset": p.name, "eval_lens": lens, "stride": stride, "eval_only": eval_only,
            "device": str(dev), "seed": seed, "threads": torch.get_num_threads(),
            "train_tokens": steps * p.batch_size * train_len, "train_steps": steps,
            "eval_tokens": n_targets, "sliding_tokens": span,
            "min_trusted_tokens": MIN_TRUSTED_TOKENS, "rope_scaling": list(scalings),
            # passes over the train split (random windows: the mean times a token is seen)
            "train_passes": round(steps * p.batch_size * train_len / len(train_stream), 3)}
    from lsbench.measure.env import fingerprint

    run = {"kind": "extrapolate", "command": command, "args": args, "env": fingerprint(),
           "lsbench_version": lsbench.__version__, "corpus": data.info(), "preset": p.as_dict(),
           "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
           "finished_at": None, "wall_time_s": None,
           # other processes competing for the CPU make every timing slower: keep the evidence
           "load_avg_1m": {"start": _load_avg(), "end": None},
           # per method: AdamW groups (peak lr, weight decay), disclosed in the report
           "optimizer": {},
           "eval_ceilings": ngram_ceilings(train_stream, stream),
           "control_warnings": [],
           # shown by the terminal summary and as banners in the report
           "warnings": [w for w in [repeat_warning(args["train_tokens"], len(train_stream),
                                                   data.name)] if w]}
    t0 = time.perf_counter()
    _write_json(out / "run.json", run)
    result = ExtrapolationResult(out=out, run=run)
    events("start", out=str(out), args=args, corpus=data.info(), preset=p.as_dict(),
           warnings=run["warnings"])
    run["estimate"] = _estimate(names, scalings, train_stream, p, train_len, steps, seed, lens,
                                n_targets, stride, span, ckpt_dir, data.files_sha256, dev,
                                eval_only)
    _write_json(out / "run.json", run)
    events("estimate", **run["estimate"])

    curve: list[dict] = []
    for name in (n for n in names if n not in RESCORED):  # those rescore a trained checkpoint
        cfg = _model_config(name, p, train_len)
        meta = checkpoint_meta(cfg, p, train_len, steps, seed, data.files_sha256)
        torch.manual_seed(seed)  # same initial weights for every method where shapes agree
        model = CausalLM(cfg)
        run["optimizer"][name] = describe_groups(model, p)
        ckpt_path = ckpt_dir / f"{name}.pt"
        state = _train_or_load(model, name, train_stream, p, train_len, steps, seed, ckpt_path,
                               meta, dev, eval_only, events)
        model.to(dev)
        result.training.append({"position": name, "train_len": train_len,
                                "params": model.num_params(),
                                **state.summary(train_len, p.batch_size)})
        curve += [{"position": name, "step": i + 1,
                   "tokens": (i + 1) * p.batch_size * train_len, "loss": loss, "lr": lr}
                  for i, (loss, lr) in enumerate(zip(state.losses, state.lrs, strict=True))]
        result.rows += _evaluate_all(model, name, stream, lens, stride, span, train_len, p, dev,
                                     events)
        rescored = [(f"rotary+{short}", ROPE_SCALINGS[short])
                    for short in (scalings if name == "rotary" else ())]
        rescored += [(label, method) for label, (base, method) in RESCORED.items()
                     if base == name and label in names]
        for label, method in rescored:
            # the same trained weights, scored with another position method (no retraining):
            # scaled rotary angles, or xPos with blockwise causal attention
            other = CausalLM(_model_config(method, p, train_len))
            other.load_state_dict(model.state_dict())
            result.rows += _evaluate_all(other.to(dev), label, stream, lens, stride, span,
                                         train_len, p, dev, events)
        add_relative_columns(result.rows, train_len)
        run["control_warnings"] = control_warnings(result.rows, train_len)
        _write_json(out / "run.json", run)
        _write_csv(out / "training.csv", TRAINING_COLUMNS, result.training)
        _write_csv(out / "training_curve.csv", ["position", "step", "tokens", "loss", "lr"],
                   curve)
        _write_csv(out / "extrapolation.csv", EXTRAPOLATION_COLUMNS, result.rows)
        del model

    run["finished_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    run["wall_time_s"] = round(time.perf_counter() - t0, 1)
    run["load_avg_1m"]["end"] = _load_avg()
    _write_json(out / "run.json", run)
    events("finish", out=str(out))
    return result


def _model_config(name: str, p: Preset, train_len: int) -> CausalLMConfig:
    return CausalLMConfig(position=name, vocab_size=VOCAB_SIZE, d_model=p.d_model,
                          n_heads=p.n_heads, n_layers=p.n_layers, train_len=train_len)


def _estimate(names: list[str], scalings: list[str], train_stream: torch.Tensor, p: Preset,
              train_len: int, steps: int, seed: int, lens: list[int], n_targets: int,
              stride: int, span: int, ckpt_dir: Path, corpus_sha: str, dev: torch.device,
              eval_only: bool) -> dict:
    """Predicted seconds per method (training left + scoring), from a warm-up of a few steps and
    two forwards on throwaway models (see `lsbench.extrapolate.estimate`)."""
    from lsbench.extrapolate.estimate import eval_time_s, train_time_s

    t0 = time.perf_counter()
    tokens = {n: n_targets + (span // stride * n if stride else 0) for n in lens}
    train_s, eval_s = {}, {}
    for name in (n for n in names if n not in RESCORED):
        cfg = _model_config(name, p, train_len)
        ckpt = ckpt_dir / f"{name}.pt"
        done = 0 if not ckpt.exists() else load_checkpoint(
            ckpt, checkpoint_meta(cfg, p, train_len, steps, seed, corpus_sha))["state"]["step"]
        with torch.random.fork_rng(devices=[]):  # the real models are seeded; no RNG drawn
            model = CausalLM(cfg)
        scored = 1 + (len(scalings) if name == "rotary" else 0) + sum(
            base == name and label in names for label, (base, _) in RESCORED.items())
        eval_s[name] = round(scored * eval_time_s(model, lens, tokens, dev, p), 3)
        train_s[name] = round(train_time_s(model, train_stream, p, train_len, seed, dev,
                                           0 if eval_only else steps - done), 3)
        del model
    total = sum(train_s.values()) + sum(eval_s.values())
    return {"train_s": train_s, "eval_s": eval_s, "total_s": round(total, 3),
            "warmup_s": round(time.perf_counter() - t0, 1),
            "how": "median of 5 training steps per method × the steps left, plus 3 forwards "
                   "at the shortest and longest eval lengths interpolated over the tokens each "
                   "length scores; measured at the start, under the load of that moment"}


def _train_or_load(model: CausalLM, name: str, stream: torch.Tensor, p: Preset, train_len: int,
                   steps: int, seed: int, ckpt_path: Path, meta: dict, dev: torch.device,
                   eval_only: bool, events: Events) -> TrainState:
    if eval_only:
        if not ckpt_path.exists():
            raise LsbenchError(
                f"--eval-only: no checkpoint for {name!r} at {ckpt_path}; train it first "
                "(drop --eval-only) or leave it out of --positions."
            )
        ckpt = load_checkpoint(ckpt_path, meta)
        state = TrainState(**ckpt["state"])
        if not state.finished:
            raise LsbenchError(
                f"--eval-only: {name!r} stopped at step {state.step} of {state.total_steps}; "
                "rerun without --eval-only to finish training."
            )
        model.load_state_dict(ckpt["model"])
        events("loaded", position=name, step=state.step)
        return state
    start = load_checkpoint(ckpt_path, meta)["state"]["step"] if ckpt_path.exists() else 0
    events("train_start", position=name, start_step=start, total_steps=steps,
           params=model.num_params())

    def on_step(step: int, total: int, loss: float, tokens_per_s: float) -> None:
        events("train_step", position=name, step=step, total_steps=total, loss=loss,
               tokens_per_s=tokens_per_s)

    state = train(model, stream, p, train_len, steps, seed, ckpt_path, meta, dev, on_step)
    events("train_end", position=name, **state.summary(train_len, p.batch_size))
    return state


def _evaluate_all(model: CausalLM, name: str, stream: torch.Tensor, lens: list[int], stride: int,
                  span: int, train_len: int, p: Preset, dev: torch.device,
                  events: Events) -> list[dict]:
    modes = [(NONOVERLAPPING, 0)] + ([(SLIDING, stride)] if stride else [])
    rows = []
    amp = autocast_for(dev, p)
    for mode, s in modes:
        for n in lens:
            row = {"position": name, "train_len": train_len, "eval_len": n, "eval_mode": mode,
                   "stride": s or None, "tokens_scored": None, "loss": None, "ppl": None,
                   "status": "ok", "reason": None, "loss_se": None, "ppl_ci_low": None,
                   "ppl_ci_high": None, "low_precision": None}
            if model.max_len is not None and n > model.max_len:
                row.update(status="not_applicable",
                           reason=f"{name} covers positions < {model.max_len} only")
            else:
                events("eval_start", position=name, eval_len=n, eval_mode=mode)
                sc = score(
                    model, stream, n, mode, stride=s, span=span,
                    batch_tokens=p.eval_batch_tokens, amp=amp,
                    on_batch=lambda i, k, n=n, mode=mode: events(
                        "eval_batch", position=name, eval_len=n, eval_mode=mode, done=i, total=k),
                )
                low, high = sc.ppl_ci()
                row.update(tokens_scored=sc.tokens, loss=round(sc.loss, 6), ppl=_round(sc.ppl),
                           loss_se=None if sc.loss_se is None else round(sc.loss_se, 6),
                           ppl_ci_low=_round(low), ppl_ci_high=_round(high),
                           low_precision=sc.low_precision)
            rows.append(row)
            events("eval_end", **row)
    return rows


__all__ = ["PAPER_POSITIONS", "PRESETS", "ExtrapolationResult", "parse_eval_lens",
           "run_extrapolate"]
