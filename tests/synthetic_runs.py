"""Write run directories in the on-disk format of DESIGN.md from *synthetic* numbers.

For tests and for trying `lsbench report` / `lsbench compare` without running a sweep. Every
run written here says so: run.json carries `"synthetic": true` and the report shows a banner.
Latency follows simple power laws per variant (c·N^p), so tests know the right answers.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lsbench.report.load import EXTRA_COLUMNS, LATENCY_COLUMNS

# variant: (ms at N=1024, batch 1, inference; time exponent; MiB at N=1024; memory exponent)
MODEL = {
    "transformer": (40.0, 2.0, 60.0, 2.0),
    "sdpa": (18.0, 2.0, 20.0, 1.0),
    "longformer": (70.0, 1.0, 45.0, 1.0),
    "bigbird": (90.0, 1.0, 55.0, 1.0),
    "linformer": (45.0, 1.0, 30.0, 1.0),
    "linear": (50.0, 1.0, 25.0, 1.0),
    "poolingformer": (110.0, 1.0, 70.0, 1.0),
    "fastformer": (30.0, 1.0, 16.0, 1.0),
}
QUICK_SEQ_LENS = [128, 256, 512, 1024, 2048, 4096, 8192]


def config_id(variant: str, mode: str, dtype: str, batch_size: int, seq_len: int,
              d_model: int = 256, n_heads: int = 4, n_layers: int = 2) -> str:
    return f"{variant}-{mode}-{dtype}-b{batch_size}-n{seq_len}-d{d_model}h{n_heads}l{n_layers}"


def latency_row(variant: str, seq_len: int, latency_ms: float | None,
                peak_mem_mib: float | None = None, *, mode: str = "inference",
                batch_size: int = 1, status: str = "ok", reason: str = "",
                iqr_frac: float = 0.02, dtype: str = "float32", device: str = "cpu",
                d_model: int = 256, n_heads: int = 4, n_layers: int = 2, repeats: int = 20,
                peak_gflops: float = 2000.0, ci_frac: float | None = None) -> dict[str, Any]:
    """One result row; numeric fields are None unless status is ok."""
    ok = status == "ok"
    tokens = batch_size * seq_len
    gflops = 4 * 2 * tokens * d_model * d_model * n_layers / (latency_ms / 1e3) / 1e9 \
        if ok else None
    ci = ci_frac if ci_frac is not None else iqr_frac / 2
    row = {
        "variant": variant, "mode": mode, "dtype": dtype, "device": device,
        "batch_size": batch_size, "seq_len": seq_len, "d_model": d_model, "n_heads": n_heads,
        "n_layers": n_layers, "status": status, "reason": reason,
        "latency_ms": latency_ms if ok else None,
        "latency_ms_iqr": latency_ms * iqr_frac if ok else None,
        "latency_ms_ci_low": latency_ms * (1 - ci) if ok else None,
        "latency_ms_ci_high": latency_ms * (1 + ci) if ok else None,
        "repeats": repeats if ok else None,
        "peak_mem_mib": peak_mem_mib if ok else None,
        "tokens_per_s": tokens / (latency_ms / 1e3) if ok else None,
        "gflops_per_s": gflops,
        "pct_of_peak": 100 * gflops / peak_gflops if ok else None,
        "config_id": config_id(variant, mode, dtype, batch_size, seq_len, d_model, n_heads,
                               n_layers),
        "peak_rss_mib": (peak_mem_mib or 0) + 300 if ok and device == "cpu" else None,
        "predicted_mem_mib": peak_mem_mib,
        "noisy": bool(ok and iqr_frac > 0.10),
        "threads": 2,
    }
    return row


def model_rows(variants: Iterable[str] = tuple(MODEL), seq_lens: Iterable[int] = QUICK_SEQ_LENS,
               batch_sizes: Iterable[int] = (1,), modes: Iterable[str] = ("inference",
                                                                         "training"),
               mem_limit_mib: float = 1500.0, noisy: Iterable[tuple[str, int]] = (),
               errors: Iterable[tuple[str, int]] = (), **kw: Any) -> list[dict[str, Any]]:
    """Rows following MODEL's power laws; a config whose memory exceeds `mem_limit_mib` is
    `oom`, and longer lengths of that variant are `skipped` (as the sweep does)."""
    rows = []
    noisy, errors = set(noisy), set(errors)
    for mode in modes:
        for b in batch_sizes:
            for v in variants:
                t1024, tp, m1024, mp = MODEL.get(v, (60.0, 1.0, 40.0, 1.0))
                stopped = False
                for n in seq_lens:
                    scale = b * (3.0 if mode == "training" else 1.0)
                    t = scale * t1024 * (n / 1024) ** tp
                    mem = scale * m1024 * (n / 1024) ** mp
                    if stopped:
                        rows.append(latency_row(v, n, None, mode=mode, batch_size=b,
                                                status="skipped", reason="a shorter length "
                                                "ran out of memory", **kw))
                    elif mem > mem_limit_mib:
                        stopped = True
                        rows.append(latency_row(v, n, None, mode=mode, batch_size=b,
                                                status="oom", reason="CPU out of memory: "
                                                f"tried to allocate {mem:.0f} MiB", **kw))
                    elif (v, n) in errors:
                        rows.append(latency_row(v, n, None, mode=mode, batch_size=b,
                                                status="error", reason="RuntimeError: "
                                                "synthetic failure", **kw))
                    else:
                        rows.append(latency_row(v, n, t, mem, mode=mode, batch_size=b,
                                                iqr_frac=0.25 if (v, n) in noisy else 0.02,
                                                **kw))
    return rows


def env_fingerprint(device: str = "cpu") -> dict[str, Any]:
    return {
        "lsbench": "0.1.0", "git_commit": "synthetic", "python": "3.11.2",
        "torch": "2.13.0+cpu", "platform": "Linux-synthetic", "cpu_model": "Synthetic CPU",
        "cpu_cores_logical": 2, "torch_threads": 2, "ram_gib": 8.0,
        "cuda": None if device == "cpu" else {"name": "Synthetic GPU", "memory_gib": 80.0,
                                               "cuda": "12.4", "driver": "550.0"},
    }


def write_latency_run(path: str | Path, rows: list[dict[str, Any]], *, suite: str = "quick",
                      finished: bool = True, truncate_last: bool = False,
                      device: str = "cpu", device_name: str = "Synthetic CPU",
                      **meta: Any) -> Path:
    """A latency run directory: run.json, results.jsonl (optionally cut mid-line) and CSV."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    run = {
        "kind": "run", "suite": suite,
        "suite_config": {"name": suite, "variants": sorted({r["variant"] for r in rows}),
                         "seq_lens": sorted({r["seq_len"] for r in rows})},
        "command": f"lsbench run --suite {suite} --out {path}",
        "args": {"suite": suite, "out": str(path)}, "env": env_fingerprint(device),
        "lsbench_version": "0.1.0", "device": device, "device_name": device_name,
        "machine_peak_gflops": 2000.0, "started_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T00:05:00+00:00" if finished else None,
        "synthetic": True,
    }
    run.update(meta)
    (path / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    lines = [json.dumps(r) for r in rows]
    text = "\n".join(lines) + ("\n" if lines else "")
    if truncate_last and lines:
        text = text[: len(text) - len(lines[-1]) // 2 - 1]  # killed while writing the last row
    (path / "results.jsonl").write_text(text, encoding="utf-8")
    cols = LATENCY_COLUMNS + EXTRA_COLUMNS
    with open(path / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


# position: (ppl at L, growth per doubling beyond L) — the shape of the ALiBi paper's Fig. 1
EXTRAPOLATION_MODEL = {"sinusoidal": (20.0, 2.4), "rotary": (20.0, 1.6), "t5": (19.7, 1.05),
                       "alibi": (19.7, 0.97)}


def write_extrapolation_run(path: str | Path, train_len: int = 128,
                            multiples: Iterable[float] = (1, 1.5, 2, 4, 8, 16),
                            positions: Iterable[str] = tuple(EXTRAPOLATION_MODEL),
                            modes: Iterable[str] = ("nonoverlapping", "sliding")) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    run = {
        "kind": "extrapolate", "command": f"lsbench extrapolate --train-len {train_len}",
        "args": {"train_len": train_len}, "env": env_fingerprint(), "lsbench_version": "0.1.0",
        "corpus": {"name": "stdlib", "files": 1200, "sha256": "synthetic"},
        "preset": "tiny", "started_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T00:30:00+00:00", "synthetic": True,
    }
    (path / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    with open(path / "extrapolation.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["position", "train_len", "eval_len", "eval_mode", "stride",
                    "tokens_scored", "loss", "ppl", "status", "reason"])
        for mode in modes:
            for pos in positions:
                ppl0, growth = EXTRAPOLATION_MODEL.get(pos, (20.0, 1.2))
                for m in multiples:
                    n = int(train_len * m)
                    ppl = ppl0 * growth ** max(0.0, math.log2(m)) * (0.97 if mode == "sliding"
                                                                     else 1.0)
                    stride = n // 2 if mode == "sliding" else n
                    w.writerow([pos, train_len, n, mode, stride, 50_000, math.log(ppl), ppl,
                                "ok", ""])
    with open(path / "training.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["position", "train_len", "params", "tokens_trained", "train_time_s",
                    "tokens_per_s", "peak_mem_mib", "final_train_loss"])
        for pos in positions:
            w.writerow([pos, train_len, 1_200_000, 2_000_000, 120.0, 16_666.7, 210.0, 1.9])
    return path
