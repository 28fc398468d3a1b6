"""`lsbench extrapolate --task recall`: train short, test long on retrieval.

Perplexity is known to overstate extrapolation: a model can keep a low perplexity past L while
it no longer retrieves anything from far back. So each position method's causal LM (the same
`lsbench.models.CausalLM` and position code as `--task lm`) is also trained on a retrieval task
at L and its query accuracy is scored at L × {1, 1.5, 2, 4, 8, 16}, with a 95% CI over seeds.

The task is MQAR (`lsbench.quality.tasks.MQAR`, Zoology's generator) in its causal (`lm`) form,
not a passkey: it fits the causal LM as it is (at a query key the next-token prediction is the
paired value, so the LM's own head and a loss over the labelled positions are all it needs), it
asks for several retrievals per sequence (P queries: a tighter accuracy per example), and it is
the task `lsbench quality` reports, so the two can be read together. The number of pairs stays
fixed at every length; the sequence grows with filler (random tokens), so a longer eval length
means queries farther from the context at positions never seen in training. One deliberate
change from Zoology's defaults: query slots are drawn *uniformly* (power_a = 1) rather than by
its power law (a = 0.01), under which half the queries fall within ~sqrt(slots) of the context,
i.e. inside L at every eval length, and accuracy would hardly depend on the length tested.

Each (position, seed) is trained from scratch for a fixed number of steps (no checkpoints: runs
are short, as in `lsbench quality`); weights come from `seed`, training batch k from (seed, k)
and test sequences at every length from a seed no training batch uses, the same for every
method. Eval lengths are rounded up to even (MQAR places a query on every second slot).

Run directory: recall.csv (one row per position, seed and eval length, appended and flushed as
each is scored; a rerun with the same --out skips what is there), recall_summary.csv (mean and
95% t-interval per position and eval length), recall.json (settings, preset, environment). It
may share the directory with an LM run (extrapolation.csv): `lsbench report` draws both.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import lsbench
from lsbench.errors import LsbenchError, unknown_choice
from lsbench.extrapolate.presets import (
    Preset,
    RecallPreset,
    get_preset,
    get_recall_preset,
)
from lsbench.extrapolate.run import (
    RESCORED,
    Events,
    _quiet,
    default_out,
    parse_eval_lens,
    parse_positions,
    resolve_device,
)
from lsbench.extrapolate.summary import TextTable
from lsbench.extrapolate.train import StepCallback, autocast_for, lr_at, make_optimizer
from lsbench.models import CausalLM, CausalLMConfig
from lsbench.quality.summary import t_interval
from lsbench.quality.tasks import MQAR
from lsbench.quality.train import accuracy, loss_and_hits
from lsbench.sweep.store import atomic_write, fs_error

TASKS = ("lm", "recall")
FORM = "lm"  # MQAR's causal form: the value is predicted at the query
RESUME = "the same `lsbench extrapolate --task recall` command (it skips rows already scored)"
RECALL_COLUMNS = ["position", "train_len", "eval_len", "seed", "accuracy", "n_queries",
                  "status", "reason", "kv_pairs", "vocab", "train_steps", "final_train_loss",
                  "train_s"]
SUMMARY_COLUMNS = ["position", "train_len", "eval_len", "eval_mult", "seeds", "accuracy_mean",
                   "accuracy_sd", "accuracy_ci_low", "accuracy_ci_high", "n_queries", "status",
                   "reason"]
LM_ONLY = ("--corpus", "--stride", "--eval-only", "--train-tokens", "--rope-scaling")


def parse_task(task: str) -> str:
    if task not in TASKS:
        raise unknown_choice("task", task, TASKS, "--task")
    return task


def recall_lens(spec: str | Sequence | None, train_len: int) -> list[int]:
    """parse_eval_lens, each rounded up to even (an MQAR sequence has an even length)."""
    return sorted({n + n % 2 for n in parse_eval_lens(spec, train_len)})


def make_task(rp: RecallPreset, seq_len: int) -> MQAR:
    return MQAR(vocab_size=rp.vocab, seq_len=seq_len, kv_pairs=rp.kv_pairs,
                power_a=rp.power_a)


def model_config(position: str, p: Preset, rp: RecallPreset, train_len: int) -> CausalLMConfig:
    return CausalLMConfig(position=position, vocab_size=rp.vocab, d_model=p.d_model,
                          n_heads=p.n_heads, n_layers=p.n_layers, train_len=train_len)


def train_recall(model: CausalLM, task: MQAR, p: Preset, rp: RecallPreset, seed: int,
                 dev: torch.device,
                 on_step: StepCallback | None = None) -> dict[str, Any]:
    """`rp.steps` AdamW steps on fresh MQAR batches (batch k from (seed, k)), the extrapolate
    optimizer groups (position parameters' own lr) and schedule; loss on the queries only."""
    sched = replace(p, lr=rp.lr)  # make_optimizer and lr_at read lr from the preset
    model.to(dev).train()
    opt = make_optimizer(model, sched)
    amp = autocast_for(dev, p)
    losses: list[float] = []
    t0 = time.perf_counter()
    for step in range(rp.steps):
        t_step = time.perf_counter()
        lr = lr_at(step, rp.steps, sched)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_mult"]
        x, y = task.sample(rp.batch_size, seed * 1_000_003 + step, FORM)
        with amp:
            loss, _, _ = loss_and_hits(model, x.to(dev), y.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        opt.step()
        value = loss.item()
        if not math.isfinite(value):
            raise LsbenchError(f"{model.cfg.position}: recall training loss became {value} at "
                               f"step {step}; lower the preset's lr or --train-len.")
        losses.append(value)
        if on_step:
            tokens = rp.batch_size * task.seq_len
            on_step(step + 1, rp.steps, value, tokens / (time.perf_counter() - t_step))
    tail = losses[-20:]
    return {"final_train_loss": round(sum(tail) / len(tail), 5),
            "train_s": round(time.perf_counter() - t0, 2)}


def score_recall(model: CausalLM, rp: RecallPreset, n: int, seed: int, p: Preset,
                 dev: torch.device) -> tuple[float, int]:
    """(query accuracy, queries scored) on rp.eval_examples held-out sequences of length n."""
    batch = max(1, p.eval_batch_tokens // n)
    with autocast_for(dev, p):
        acc = accuracy(model, make_task(rp, n), FORM, rp.eval_examples, seed, batch, dev)
    return acc, rp.eval_examples * rp.kv_pairs


def summary_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd and 95% Student-t interval over seeds per (position, train_len, eval_len)."""
    out = []
    for (pos, L, n), g in rows.groupby(["position", "train_len", "eval_len"], sort=False):
        base = {"position": pos, "train_len": int(L), "eval_len": int(n),
                "eval_mult": round(n / L, 3)}
        ok = g[g["status"] == "ok"]
        if ok.empty:
            reason = g["reason"].dropna()
            out.append({**base, "seeds": 0, "status": str(g["status"].iloc[0]),
                        "reason": str(reason.iloc[0]) if len(reason) else ""})
            continue
        mean, sd, lo, hi = t_interval([float(a) for a in ok["accuracy"]])
        out.append({**base, "seeds": len(ok), "accuracy_mean": mean, "accuracy_sd": sd,
                    "accuracy_ci_low": lo, "accuracy_ci_high": hi,
                    "n_queries": int(ok["n_queries"].sum()), "status": "ok", "reason": ""})
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def read_rows(path: Path) -> pd.DataFrame:
    """recall.csv, the last row of each (position, train_len, eval_len, seed) kept."""
    if not path.is_file():
        return pd.DataFrame(columns=RECALL_COLUMNS)
    try:
        df = pd.read_csv(path, on_bad_lines="skip")
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=RECALL_COLUMNS)
    for col in RECALL_COLUMNS:
        if col not in df.columns:
            df[col] = None
    df = df.dropna(subset=["position", "eval_len", "seed", "status"])
    df["position"] = df["position"].astype(str)
    key = ["position", "train_len", "eval_len", "seed"]
    return df.drop_duplicates(key, keep="last").reset_index(drop=True)


def _append_row(path: Path, row: dict) -> None:
    """Append one row and flush it, so an interrupt loses nothing already scored."""
    new = not path.is_file() or path.stat().st_size == 0
    try:
        with path.open("a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=RECALL_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: "" if row.get(k) is None else row[k] for k in RECALL_COLUMNS})
            f.flush()
    except OSError as e:
        raise fs_error(path, e, "write", RESUME) from None


@dataclass
class RecallResult:
    out: Path
    rows: pd.DataFrame  # recall.csv
    summary: pd.DataFrame  # recall_summary.csv
    meta: dict  # recall.json


def settings(train_len: int, p: Preset, rp: RecallPreset) -> dict:
    """What must match for rows already in recall.csv to be reused by a rerun."""
    return {"train_len": train_len, "recall": rp.as_dict(), "d_model": p.d_model,
            "n_heads": p.n_heads, "n_layers": p.n_layers, "grad_clip": p.grad_clip,
            "weight_decay": p.weight_decay,
            "position_lr_mult": [list(m) for m in p.position_lr_mult]}  # as JSON reads it back


def run_recall(
    train_len: int | None = None,
    positions: str | Sequence[str] | None = None,
    out: str | Path | None = None,
    preset: str | None = None,
    eval_lens: str | Sequence | None = None,
    device: str = "auto",
    seed: int = 0,
    seeds: int | None = None,
    threads: int = 0,
    command: str = "",
    events: Events = _quiet,
) -> RecallResult:
    """Train every position method on MQAR at `train_len` for seeds seed … seed+seeds-1 and
    score its query accuracy at every eval length; rows already in `out`/recall.csv are kept."""
    names = parse_positions(positions)
    dev = resolve_device(device)
    name = preset or ("gpu" if dev.type == "cuda" else "cpu")
    p, rp = get_preset(name), get_recall_preset(name)
    train_len = rp.train_len if train_len is None else train_len
    if not isinstance(train_len, int) or train_len < 4 * rp.kv_pairs:
        raise LsbenchError(
            f"--train-len must be an integer >= 4 × kv_pairs = {4 * rp.kv_pairs} for the recall "
            f"task (preset {name}: {rp.kv_pairs} pairs), got {train_len!r}.")
    lens = recall_lens(eval_lens, train_len)
    if lens[0] < 4 * rp.kv_pairs:
        raise LsbenchError(f"--eval-lens: {lens[0]} is shorter than the recall task allows "
                           f"(4 × kv_pairs = {4 * rp.kv_pairs}).")
    seeds = rp.seeds if seeds is None else seeds
    if seeds < 1:
        raise LsbenchError(f"--seeds must be >= 1 (3 or more give a CI), got {seeds}.")
    threads = threads or p.threads
    if threads < 0:
        raise LsbenchError(f"--threads must be >= 0 (0: torch's default), got {threads}.")
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(Path(out) if out is not None else default_out(), names, train_len, lens, p,
                    rp, dev, list(range(seed, seed + seeds)), command, events)
    finally:
        torch.set_num_threads(saved)


def _start(out: Path, meta: dict) -> None:
    """Check an existing recall.json agrees; write recall.json, and run.json if there is none
    (an LM run's run.json in the same directory is left as it is)."""
    old = out / "recall.json"
    if old.is_file():
        prev = json.loads(old.read_text(encoding="utf-8")).get("settings")
        if prev != meta["settings"]:
            diff = sorted(k for k in set(prev or {}) | set(meta["settings"])
                          if (prev or {}).get(k) != meta["settings"].get(k))
            raise LsbenchError(
                f"{out}/recall.csv was made with different settings ({', '.join(diff)}); rerun "
                "with the same --train-len and --preset, or use a new --out directory.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise fs_error(out, e, "create", RESUME) from None
    _write_meta(out, meta)


def _write_meta(out: Path, meta: dict) -> None:
    text = json.dumps(meta, indent=2, default=str)
    atomic_write(out / "recall.json", text, RESUME)
    run_json = out / "run.json"
    if not run_json.is_file() or json.loads(run_json.read_text(encoding="utf-8")).get(
            "task") == "recall":
        atomic_write(run_json, text, RESUME)


def _run(out: Path, names: list[str], train_len: int, lens: list[int], p: Preset,
         rp: RecallPreset, dev: torch.device, seed_list: list[int], command: str,
         events: Events) -> RecallResult:
    from lsbench.measure.env import fingerprint

    args = {"task": "recall", "train_len": train_len, "positions": names, "out": str(out),
            "preset": p.name, "eval_lens": lens, "device": str(dev), "seeds": seed_list,
            "threads": torch.get_num_threads()}
    meta = {"kind": "extrapolate", "task": "recall", "command": command, "args": args,
            "device": dev.type,
            "settings": settings(train_len, p, rp), "preset": p.as_dict(),
            "recall_preset": rp.as_dict(), "env": fingerprint(),
            "lsbench_version": lsbench.__version__,
            "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "finished_at": None, "wall_time_s": None}
    _start(out, meta)
    csv_path = out / "recall.csv"
    done = read_rows(csv_path)
    t0 = time.perf_counter()
    events("recall_start", out=str(out), args=args, preset=p.as_dict(), recall=rp.as_dict())
    for name in (n for n in names if n not in RESCORED):
        labels = [name] + [lab for lab, (base, _) in RESCORED.items()
                           if base == name and lab in names]
        for s in seed_list:
            todo = {lab: [n for n in lens if not _has(done, lab, train_len, n, s)]
                    for lab in labels}
            if not any(todo.values()):
                continue
            _train_and_score(out, name, todo, train_len, s, p, rp, dev, events)
    rows = read_rows(csv_path)
    summary = summary_frame(rows)
    buf = summary.to_csv(index=False, float_format="%.5g")
    atomic_write(out / "recall_summary.csv", buf, RESUME)
    meta["finished_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    meta["wall_time_s"] = round(time.perf_counter() - t0, 1)
    _write_meta(out, meta)
    events("finish", out=str(out))
    return RecallResult(out, rows, summary, meta)


def _has(done: pd.DataFrame, label: str, train_len: int, n: int, seed: int) -> bool:
    return bool(((done["position"] == label) & (done["train_len"] == train_len)
                 & (done["eval_len"] == n) & (done["seed"] == seed)).any())


def _train_and_score(out: Path, name: str, todo: dict[str, list[int]], train_len: int,
                     seed: int, p: Preset, rp: RecallPreset, dev: torch.device,
                     events: Events) -> None:
    """Train `name` with one seed, score it (and the labels rescoring its weights) at the
    lengths still missing, appending each row as it is measured."""
    label = f"{name} seed {seed}"
    torch.manual_seed(seed)  # same initial weights for every method where shapes agree
    model = CausalLM(model_config(name, p, rp, train_len))
    events("train_start", position=label, start_step=0, total_steps=rp.steps,
           params=model.num_params())
    trained = train_recall(
        model, make_task(rp, train_len), p, rp, seed, dev,
        lambda step, total, loss, rate: events("train_step", position=label, step=step,
                                               total_steps=total, loss=loss, tokens_per_s=rate))
    events("recall_trained", position=name, seed=seed, **trained)
    for lab, lens in todo.items():
        scored = model
        if lab != name:  # the same weights under an eval-time method (xpos+bca)
            scored = CausalLM(model_config(RESCORED[lab][1], p, rp, train_len)).to(dev)
            scored.load_state_dict(model.state_dict())
        for n in lens:
            row = {"position": lab, "train_len": train_len, "eval_len": n, "seed": seed,
                   "accuracy": None, "n_queries": 0, "status": "ok", "reason": None,
                   "kv_pairs": rp.kv_pairs, "vocab": rp.vocab, "train_steps": rp.steps,
                   **trained}
            if scored.max_len is not None and n > scored.max_len:
                row.update(status="not_applicable",
                           reason=f"{lab} covers positions < {scored.max_len} only")
            else:
                acc, queries = score_recall(scored, rp, n, seed, p, dev)
                row.update(accuracy=round(acc, 5), n_queries=queries)
            _append_row(out / "recall.csv", row)
            events("recall_scored", **row)


def _acc_cell(r: pd.Series) -> str:
    if r["status"] != "ok":
        return "n/a"
    if pd.isna(r["accuracy_ci_high"]):
        return f"{r['accuracy_mean']:.3f}"
    return f"{r['accuracy_mean']:.3f} ± {r['accuracy_ci_high'] - r['accuracy_mean']:.3f}"


def summary_tables(result: RecallResult) -> list[TextTable]:
    """The terminal summary: accuracy (mean ± 95% CI half-width) per position and length."""
    s, args = result.summary, result.meta["args"]
    rp = result.meta["recall_preset"]
    lens, L = args["eval_lens"], args["train_len"]
    cells = []
    for pos, g in s.groupby("position", sort=False):
        by_len = {int(r["eval_len"]): r for _, r in g.iterrows()}
        cells.append([pos, *(_acc_cell(by_len[n]) if n in by_len else "-" for n in lens)])
    return [TextTable(
        f"MQAR query accuracy, trained at L={L} ({rp['kv_pairs']} pairs, vocab {rp['vocab']}, "
        f"{rp['steps']} steps × {rp['batch_size']})",
        ["position", *(f"{n}\n{n / L:.3g}L" for n in lens)], cells,
        f"mean ± 95% CI half-width (Student t over {len(args['seeds'])} seeds); "
        f"{rp['eval_examples'] * rp['kv_pairs']:,} queries per seed and length")]
