"""Read run directories written by `lsbench run` and `lsbench extrapolate`.

The files are the contract in DESIGN.md (*Results on disk*). Reading is forgiving where a run can
legitimately be incomplete (interrupted runs, a truncated last JSONL line, missing optional
columns) and strict where the user pointed at the wrong place (missing or empty directory).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsbench.errors import LsbenchError
from lsbench.sweep.store import read_jsonl

LATENCY_COLUMNS = [
    "variant", "mode", "dtype", "device", "batch_size", "seq_len", "d_model", "n_heads",
    "n_layers", "status", "reason", "latency_ms", "latency_ms_iqr", "latency_ms_ci_low",
    "latency_ms_ci_high", "repeats", "peak_mem_mib", "tokens_per_s", "gflops_per_s",
    "pct_of_peak", "config_id",
]
EXTRA_COLUMNS = ["peak_rss_mib", "predicted_mem_mib", "noisy", "threads", "contended",
                 "contention", "retimed", "steal_share", "drift", "state_bytes",
                 "state_bytes_formula", "max_batch_in_budget", "variant_note"]
INT_COLUMNS = ["batch_size", "seq_len", "d_model", "n_heads", "n_layers", "repeats", "threads"]
FLOAT_COLUMNS = [
    "latency_ms", "latency_ms_iqr", "latency_ms_ci_low", "latency_ms_ci_high", "peak_mem_mib",
    "tokens_per_s", "gflops_per_s", "pct_of_peak", "peak_rss_mib", "predicted_mem_mib",
    "steal_share", "state_bytes", "state_bytes_formula", "max_batch_in_budget",
]
# The columns that identify a configuration when a row carries no `config_id`.
KEY_COLUMNS = ["variant", "mode", "dtype", "device", "batch_size", "seq_len", "d_model",
               "n_heads", "n_layers"]
STATUSES = ("ok", "oom", "skipped", "timeout", "error", "unsupported")
NOISE_LIMIT = 0.10  # IQR / median above this marks a row as noisy (DESIGN.md, Trust)
MIN_SAMPLES = 3  # fewer timed samples than this: the spread is unknown (measure/timing.py)

EXTRAPOLATION_COLUMNS = ["position", "train_len", "eval_len", "eval_mode", "stride",
                         "tokens_scored", "loss", "ppl"]
TRAINING_COLUMNS = ["position", "train_len", "params", "tokens_trained", "train_time_s",
                    "tokens_per_s", "peak_mem_mib", "final_train_loss"]

RUN_FILES = ("run.json", "results.jsonl", "results.csv", "extrapolation.csv", "training.csv",
             "quality.csv", "recall.csv")


@dataclass
class Run:
    """One run directory: its metadata and its result tables."""

    path: Path  # resolved (a `reports/latest` symlink points here)
    given: str  # as the user wrote it
    kind: str  # "run" (latency sweep) or "extrapolate"
    meta: dict[str, Any]
    rows: pd.DataFrame  # latency rows (empty for extrapolation runs)
    extrapolation: pd.DataFrame  # evaluated lengths (ppl present)
    training: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    failed_evals: pd.DataFrame = field(default_factory=pd.DataFrame)  # status != ok
    curve: pd.DataFrame = field(default_factory=pd.DataFrame)  # training_curve.csv
    quality_summary: pd.DataFrame = field(default_factory=pd.DataFrame)  # `lsbench quality`
    fidelity: pd.DataFrame = field(default_factory=pd.DataFrame)  # (lsbench.quality.run)
    recall: pd.DataFrame = field(default_factory=pd.DataFrame)  # `extrapolate --task recall`
    recall_meta: dict[str, Any] = field(default_factory=dict)  # its recall.json

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def interrupted(self) -> bool:
        return bool(self.meta) and not self.meta.get("finished_at")

    @property
    def env(self) -> dict[str, Any]:
        return self.meta.get("env") or {}

    @property
    def device_name(self) -> str:
        if self.meta.get("device_name"):
            return str(self.meta["device_name"])
        cuda = self.env.get("cuda")
        if self.meta.get("device") == "cuda" and isinstance(cuda, dict) and cuda.get("name"):
            return str(cuda["name"])
        return str(self.env.get("cpu_model") or self.meta.get("device") or "unknown device")

    @property
    def is_empty(self) -> bool:
        return (self.rows.empty and self.extrapolation.empty and self.training.empty
                and self.failed_evals.empty and self.quality_summary.empty and self.recall.empty)


def load_run(path: str | Path) -> Run:
    """Read one run directory; raise LsbenchError naming the fix when it is not one."""
    given = str(path)
    p = Path(path).expanduser()
    if p.is_symlink() and not p.exists():
        raise LsbenchError(
            f"{given} is a link to {p.readlink()}, which does not exist; run `lsbench run` "
            "to make a new run, or pass an existing run directory."
        )
    if not p.exists():
        raise LsbenchError(
            f"run directory {given} does not exist; pass a directory written by "
            "`lsbench run --out DIR` or `lsbench extrapolate --out DIR` (e.g. reports/latest)."
        )
    if not p.is_dir():
        raise LsbenchError(f"{given} is a file, not a run directory; pass the directory "
                           "that holds run.json and results.jsonl.")
    p = p.resolve()
    present = [f for f in RUN_FILES if (p / f).is_file()]
    if not present:
        runs = sorted(c.name for c in p.iterdir()
                      if c.is_dir() and any((c / f).is_file() for f in RUN_FILES))
        if runs:
            shown = ", ".join(runs[:5]) + (", ..." if len(runs) > 5 else "")
            raise LsbenchError(
                f"{given} holds run directories ({shown}), not results; pass one of them, "
                f"e.g. {Path(given) / runs[-1]}."
            )
        raise LsbenchError(
            f"{given} holds no lsbench results (no run.json, results.jsonl or "
            "extrapolation.csv); run `lsbench run --out DIR` first, or pass the right directory."
        )

    warnings: list[str] = []
    meta = _read_meta(p, given, warnings)
    kind = meta.get("kind")
    if kind not in ("run", "extrapolate", "quality"):
        kind = "extrapolate" if any((p / f).is_file() for f in (
            "extrapolation.csv", "training.csv", "recall.csv")) else "run"
        kind = "quality" if (p / "quality.csv").is_file() else kind
        if meta:
            warnings.append(f"run.json has no known 'kind'; read it as a {kind!r} run.")

    if kind == "quality":
        from lsbench.quality.summary import summary_frame

        quality = _read_csv(p / "quality.csv", ["variant", "task_form", "seq_len", "kv_pairs",
                                                 "status"], warnings, required=["variant"])
        fidelity = _read_csv(p / "fidelity.csv", ["variant", "seq_len", "status"], warnings,
                             required=["variant"])
        run = Run(p, given, kind, meta, normalise_rows(pd.DataFrame()), pd.DataFrame(),
                  pd.DataFrame(), warnings)
        run.quality_summary = summary_frame(quality) if not quality.empty else quality
        run.fidelity = fidelity
        return run
    rows = _read_latency(p, warnings) if kind == "run" else normalise_rows(pd.DataFrame())
    extrap = _read_csv(p / "extrapolation.csv", EXTRAPOLATION_COLUMNS, warnings,
                       required=["position", "eval_len"])
    extrap["eval_mode"] = extrap["eval_mode"].fillna("nonoverlapping").astype(str)
    # A length that could not be evaluated (e.g. out of memory) is a result with a status.
    status = extrap["status"].fillna("ok").astype(str) if "status" in extrap else \
        pd.Series("ok", index=extrap.index)
    failed = extrap[status != "ok"]
    cut = extrap[(status == "ok") & extrap["ppl"].isna()]
    if len(cut):
        warnings.append(f"extrapolation.csv: {len(cut)} row(s) without a perplexity skipped "
                        "(interrupted while writing?).")
    extrap = extrap[(status == "ok") & extrap["ppl"].notna()].reset_index(drop=True)
    training = _read_csv(p / "training.csv", TRAINING_COLUMNS, warnings, required=["position"])
    curve = _read_csv(p / "training_curve.csv", ["position", "step", "tokens", "loss"],
                      warnings, required=["position", "loss"])
    run = Run(p, given, kind, meta, rows, extrap, training, warnings,
              failed.reset_index(drop=True), curve)
    if (p / "recall.csv").is_file():  # retrieval at length, beside (or instead of) perplexity
        from lsbench.extrapolate.recall import read_rows

        run.recall = read_rows(p / "recall.csv")
        if (p / "recall.json").is_file():
            run.recall_meta = _read_meta_file(p / "recall.json", given)
    return run


def _read_meta(p: Path, given: str, warnings: list[str]) -> dict[str, Any]:
    f = p / "run.json"
    if not f.is_file():
        warnings.append("run.json is missing: the environment and command are unknown.")
        return {}
    return _read_meta_file(f, given)


def _read_meta_file(f: Path, given: str) -> dict[str, Any]:
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LsbenchError(f"{given}/{f.name} is not valid JSON ({e}); restore it or rerun "
                           "the benchmark.") from None
    if not isinstance(meta, dict):
        raise LsbenchError(f"{given}/{f.name} must hold a JSON object, not "
                           f"{type(meta).__name__}.")
    return meta


def _read_latency(p: Path, warnings: list[str]) -> pd.DataFrame:
    if (p / "results.jsonl").is_file():
        rows, problems = read_jsonl(p / "results.jsonl")  # the same reader --resume uses
        warnings.extend(problems)
        df = pd.DataFrame(rows)
    elif (p / "results.csv").is_file():
        df = _read_csv(p / "results.csv", [], warnings, required=[])
    else:
        df = pd.DataFrame()
    return normalise_rows(df)


def normalise_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Give latency rows every contract column with the right types; one row per config."""
    df = df.copy()
    for col in LATENCY_COLUMNS + EXTRA_COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in INT_COLUMNS + FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    for col in ("variant", "mode", "dtype", "device"):
        df[col] = df[col].where(df[col].notna(), "?").astype(str)
    status = df["status"].where(df["status"].notna(), None)
    status = status.fillna(pd.Series(np.where(df["latency_ms"].notna(), "ok", "error"),
                                     index=df.index))
    df["status"] = status.astype(str).str.lower()
    df["reason"] = df["reason"].where(df["reason"].notna(), "").astype(str)
    # Numbers only count for rows that ran; a failed row's leftovers are ignored.
    failed = df["status"] != "ok"
    for col in FLOAT_COLUMNS:
        df.loc[failed, col] = np.nan
    # `noisy` is True only for a known large spread; a row with fewer than MIN_SAMPLES samples
    # has no spread to judge (`spread_unknown`: the report marks it, never calls it steady).
    df["spread_unknown"] = ~failed & (df["repeats"].isna() | (df["repeats"] < MIN_SAMPLES))
    spread = df["latency_ms_iqr"] / df["latency_ms"]
    computed = (spread > NOISE_LIMIT) & ~failed & ~df["spread_unknown"]
    given = df["noisy"].map(_as_bool)
    df["noisy"] = given.where(given.notna(), computed).astype(bool) & ~failed
    df["contended"] = df["contended"].map(_as_bool).fillna(False).astype(bool) & ~failed
    df["drift"] = df["drift"].map(_as_bool).fillna(False).astype(bool) & ~failed
    df["variant_note"] = df["variant_note"].where(df["variant_note"].notna(), "").astype(str)
    missing_id = df["config_id"].isna() | (df["config_id"].astype(str) == "")
    if missing_id.any():
        df.loc[missing_id, "config_id"] = df.loc[missing_id, KEY_COLUMNS].apply(
            lambda r: _key_id(r.tolist()), axis=1)
    df["config_id"] = df["config_id"].astype(str)
    # A resumed run may append a config again; the last row is the one that counts.
    df = df.drop_duplicates("config_id", keep="last").reset_index(drop=True)
    return df


def _as_bool(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if isinstance(value, (int, float)) and not pd.isna(value):
        return bool(value)
    return None


def _key_id(values: list[Any]) -> str:
    return "k" + hashlib.sha1(json.dumps([str(v) for v in values]).encode()).hexdigest()[:12]


def _read_csv(path: Path, columns: list[str], warnings: list[str],
              required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    try:
        df = pd.read_csv(path, on_bad_lines="skip")
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=columns)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        warnings.append(f"{path.name} could not be read ({e}); it was left out.")
        return pd.DataFrame(columns=columns)
    for col in columns:
        if col not in df.columns:
            df[col] = None
    numeric = [c for c in df.columns if c not in ("position", "eval_mode", "variant", "mode",
                                                   "dtype", "device", "status", "reason",
                                                   "config_id")]
    for col in numeric:
        converted = pd.to_numeric(df[col], errors="coerce")
        if converted.notna().sum() >= df[col].notna().sum():
            df[col] = converted
    before = len(df)
    df = df.dropna(subset=required) if required else df
    if len(df) < before:
        warnings.append(f"{path.name}: {before - len(df)} incomplete row(s) skipped "
                        "(the run was probably interrupted while writing).")
    return df.reset_index(drop=True)


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Read several run directories; the same directory given twice is read once."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for path in paths:
        run = load_run(path)
        if run.path not in seen:
            seen.add(run.path)
            runs.append(run)
    return runs
