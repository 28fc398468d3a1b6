"""`lsbench quality`: train every variant on MQAR, score query accuracy, measure fidelity.

Run directory (the contract with `lsbench report`):
- run.json      kind "quality", command, args, preset, env fingerprint, lsbench version, times
- quality.csv   one row per (variant, task_form, seq_len, kv_pairs, seed), appended and flushed
                as each finishes: status ok | unsupported | error, reason, accuracy, final_loss,
                train_s, params, variant_params
- summary.csv   per (variant, task_form, seq_len, kv_pairs): seeds, accuracy_mean, accuracy_sd
                and the 95% t-interval over seeds (accuracy_ci_low..accuracy_ci_high)
- fidelity.csv  per (variant, seq_len, layer): status ok | undefined, rel_err, cosine, causal
- checkpoints/sdpa-<seq_len>x<kv_pairs>.pt   the softmax model fidelity reads

Rerunning with the same --out resumes: rows already in quality.csv are not trained again.
`task_form` is `lm` (causal: the value is predicted at the query) or `masked` (non-causal: the
token after the query is a mask and the value is predicted there); encoder-only variants get
the masked form, and the preset's `masked_reference` (sdpa) is trained on it too so their rows
have a softmax row beside them.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

import lsbench
from lsbench import variants as registry
from lsbench.errors import LsbenchError
from lsbench.quality.fidelity import fidelity_rows
from lsbench.quality.model import RecallConfig, RecallModel
from lsbench.quality.presets import QualityPreset, get_preset, variant_params
from lsbench.quality.summary import summarize
from lsbench.quality.tasks import MQAR
from lsbench.quality.train import train_one

QUALITY_COLUMNS = ["variant", "task_form", "causal", "seq_len", "kv_pairs", "vocab_size", "seed",
                   "steps", "batch_size", "lr", "d_model", "n_heads", "n_layers", "status",
                   "reason", "accuracy", "final_loss", "train_s", "cpu_s", "params",
                   "variant_params"]
FIDELITY_COLUMNS = ["variant", "seq_len", "layer", "status", "reason", "causal", "rel_err",
                    "cosine", "params", "note"]
KEY = ("variant", "task_form", "seq_len", "kv_pairs", "seed")
Events = Callable[..., None]


def plan(names: list[str], preset: QualityPreset, device: torch.device
         ) -> list[tuple[str, str, str]]:
    """(variant, task_form, reason) per row kind; reason != '' means unsupported."""
    jobs = []
    for name in names:
        cls = registry.get(name)
        devices = getattr(cls, "devices", ("cpu", "cuda"))
        form = "lm" if cls.supports_causal else "masked"
        reason = "" if device.type in devices else f"runs on {'/'.join(devices)} only"
        jobs.append((name, form, reason))
        if name in preset.masked_reference and form == "lm":
            jobs.append((name, "masked", reason))
    return jobs


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise LsbenchError(f"--device must be auto, cpu or cuda, got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise LsbenchError("--device cuda: no CUDA device is visible; use --device cpu.")
    return torch.device(device)


def run_quality(variants: list[str] | None = None, preset: str | None = None,
                out: str | Path | None = None, seeds: int | None = None,
                steps: int | None = None, device: str = "auto", threads: int = 0,
                fidelity: bool = True, workers: int | None = None,
                command: str = "lsbench quality",
                events: Events | None = None) -> dict[str, Any]:
    events = events or (lambda *a, **k: None)
    dev = resolve_device(device)
    p = get_preset(preset or ("gpu" if dev.type == "cuda" else "cpu"))
    names = list(variants or p.variants)
    for name in names:
        registry.get(name)  # unknown names fail before anything is written
    n_threads = threads or p.threads
    if n_threads:
        torch.set_num_threads(n_threads)
    seed_list = list(p.seeds if seeds is None else range(seeds))
    if len(seed_list) < 1:
        raise LsbenchError("--seeds must be >= 1 (3 or more for a confidence interval).")
    n_steps = steps or p.steps
    path = Path(out) if out else Path("reports") / (
        datetime.now().strftime("%Y%m%d-%H%M%S") + "-quality")
    path.mkdir(parents=True, exist_ok=True)
    done = _done_keys(path / "quality.csv")
    args = {"variants": names, "preset": p.name, "seeds": seed_list, "steps": n_steps,
            "device": dev.type, "threads": torch.get_num_threads(), "fidelity": fidelity,
            "workers": p.workers if workers is None else workers}
    info = _start_info(path, command, args, p)
    jobs = plan(names, p, dev)
    total = len(p.settings) * len(seed_list) * len(jobs)
    events("start", out=path, args=args, preset=p.as_dict(), total=total, done=len(done))
    t_start = time.perf_counter()
    todo = [(MQAR(p.vocab_size, seq_len, kv), name, form, reason, seed)
            for seq_len, kv in p.settings for seed in seed_list for name, form, reason in jobs
            if (name, form, seq_len, kv, seed) not in done]
    n_workers = p.workers if workers is None else workers
    for row in _rows(todo, p, n_steps, dev, path, events, n_workers, n_threads):
        _append(path / "quality.csv", QUALITY_COLUMNS, row)
        summarize(path)
        events("row", row=row)
    fid_rows = _fidelity(path, p, names, dev, events) if fidelity else []
    info.update(finished_at=datetime.now().isoformat(timespec="seconds"),
                wall_s=round(info.get("wall_s", 0) + time.perf_counter() - t_start, 1))
    _write_json(path / "run.json", info)
    return {"out": path, "summary": summarize(path), "fidelity": fid_rows}


def _rows(todo: list, p: QualityPreset, steps: int, dev: torch.device, path: Path,
          events: Events, workers: int, threads: int):
    """Finished rows, in order (one process) or as they finish (`workers` processes with
    `threads` torch threads each: small models use 2 cores better as 2 processes than as 2
    threads of one; the parent alone writes the files)."""
    if workers <= 1 or dev.type != "cpu" or len(todo) <= 1:
        for task, name, form, reason, seed in todo:
            yield _train_row(p, task, name, form, reason, seed, steps, dev, path, events)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=torch.set_num_threads,
                             initargs=(max(1, threads),)) as pool:
        futures = [pool.submit(_train_row, p, task, name, form, reason, seed, steps, dev,
                               path, None) for task, name, form, reason, seed in todo]
        try:
            for f in as_completed(futures):
                yield f.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _train_row(p: QualityPreset, task: MQAR, name: str, form: str, reason: str, seed: int,
               steps: int, dev: torch.device, path: Path, events: Events | None
               ) -> dict[str, Any]:
    events = events or (lambda *a, **k: None)
    params = variant_params(name, task.seq_len, p.overrides.get(name))
    row = {"variant": name, "task_form": form, "causal": form == "lm", "seq_len": task.seq_len,
           "kv_pairs": task.kv_pairs, "vocab_size": task.vocab_size, "seed": seed,
           "steps": steps, "batch_size": p.batch_size, "lr": p.lr, "d_model": p.d_model,
           "n_heads": p.n_heads, "n_layers": p.n_layers, "variant_params": json.dumps(params)}
    if reason:
        return {**row, "status": "unsupported", "reason": reason}
    cfg = RecallConfig(name, task.n_tokens, p.d_model, p.n_heads, p.n_layers,
                       causal=form == "lm", params=params)
    events("train_start", variant=name, form=form, seed=seed, steps=steps,
           seq_len=task.seq_len, kv_pairs=task.kv_pairs)
    try:
        model, res = train_one(cfg, task, form, seed, steps, p.batch_size, p.lr,
                               p.eval_examples, dev,
                               on_step=lambda s, t, loss: events("step", step=s, total=t,
                                                                 loss=loss))
    except (LsbenchError, RuntimeError) as e:  # a failure is a row, never a crashed run
        return {**row, "status": "error", "reason": f"{type(e).__name__}: {e}"[:500]}
    if name in ("sdpa", "transformer") and form == "lm" and seed == 0:
        ckpt = path / "checkpoints" / f"{name}-{task.seq_len}x{task.kv_pairs}.pt"
        ckpt.parent.mkdir(exist_ok=True)
        torch.save({"cfg": vars(cfg), "task": vars(task), "model": model.state_dict()}, ckpt)
    return {**row, "status": "ok", "reason": "", **res}


def _fidelity(path: Path, p: QualityPreset, names: list[str], dev: torch.device,
              events: Events) -> list[dict[str, Any]]:
    """Fidelity rows from the first setting's softmax model (sdpa, else transformer)."""
    seq_len, kv = p.settings[0]
    ckpts = [path / "checkpoints" / f"{n}-{seq_len}x{kv}.pt" for n in ("sdpa", "transformer")]
    ckpt = next((c for c in ckpts if c.exists()), None)
    if ckpt is None:
        events("fidelity_skipped", reason="no trained softmax model (add sdpa to --variants)")
        return []
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = RecallModel(RecallConfig(**saved["cfg"]))
    model.load_state_dict(saved["model"])
    task = MQAR(**saved["task"])
    csv_path = path / "fidelity.csv"
    if csv_path.exists():
        csv_path.unlink()  # cheap to recompute, and always from the saved model
    rows = []
    for n in p.fidelity_lens:
        events("fidelity", seq_len=n)
        new = fidelity_rows(model, task, names, [n])
        for r in new:
            r = {**r, "params": json.dumps(r.get("params", {}))}
            _append(csv_path, FIDELITY_COLUMNS, r)
            rows.append(r)
    return rows


def _start_info(path: Path, command: str, args: dict, p: QualityPreset) -> dict[str, Any]:
    run_json = path / "run.json"
    if run_json.exists():
        info = json.loads(run_json.read_text(encoding="utf-8"))
        if info.get("kind") != "quality":
            raise LsbenchError(f"{path} holds a run that is not from `lsbench quality`; "
                               "choose another --out.")
        if info.get("preset", {}) != json.loads(json.dumps(p.as_dict())):
            raise LsbenchError(f"{path} was started with other preset settings; use a new "
                               "--out directory.")
        info.setdefault("resumed", []).append(datetime.now().isoformat(timespec="seconds"))
        info.pop("finished_at", None)
        info["args"] = args
    else:
        from lsbench.measure.env import fingerprint

        info = {"kind": "quality", "command": command, "lsbench_version": lsbench.__version__,
                "started_at": datetime.now().isoformat(timespec="seconds"), "args": args,
                "device": args["device"],
                "preset": p.as_dict(), "env": fingerprint()}
    _write_json(run_json, info)
    return info


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _append(path: Path, columns: list[str], row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def _done_keys(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    with path.open(newline="", encoding="utf-8") as f:
        return {(r["variant"], r["task_form"], int(r["seq_len"]), int(r["kv_pairs"]),
                 int(r["seed"])) for r in csv.DictReader(f)
                if r.get("status") in ("ok", "unsupported")}
