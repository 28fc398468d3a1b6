"""The run directory: run.json, results.jsonl (appended + fsynced per config), results.csv,
canary.jsonl (one line per canary reading, appended the same way).

Nothing measured is ever lost: each row is one JSON line written with a single `write`, flushed
and fsynced before the next config starts; results.csv is rewritten atomically from the same rows
after every append; run.json is replaced atomically. A run killed mid-write leaves at most a
truncated last JSONL line, which readers skip and `--resume` trims before appending. Rows a
later canary reading marks `drift` are updated by rewriting results.jsonl atomically.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from lsbench.errors import LsbenchError

COLUMNS = [
    "variant", "mode", "dtype", "device", "batch_size", "seq_len", "d_model", "n_heads",
    "n_layers", "status", "reason", "latency_ms", "latency_ms_iqr", "latency_ms_ci_low",
    "latency_ms_ci_high", "repeats", "peak_mem_mib", "tokens_per_s", "gflops_per_s",
    "pct_of_peak", "config_id",
]
EXTRA_COLUMNS = [
    "peak_rss_mib", "predicted_mem_mib", "latency_ci_level", "noisy", "threads",
    "iters_per_sample", "flops", "ffn_dim", "causal", "batch_tokens", "params", "measured_at",
    "precision", "detail", "layer", "computed_flops", "sdpa_backend", "matmul_precision",
    "device_name", "contended", "contention", "retimed", "worker", "steal_share", "drift",
    "canary_window", "unsteady_blocks", "sm_clock_mhz_start", "sm_clock_mhz_end",
    "sm_clock_mhz_max", "gpu_temp_c_start", "gpu_temp_c_end",
    # prefill/decode rows (lsbench.measure.decode): bytes per sequence, all layers
    "depth", "state_bytes", "state_bytes_formula", "max_batch_in_budget",
    "compile", "compile_s",  # --compile: the torch.compile mode, and its compile time
    "variant_note",  # what ran differs from the configuration (e.g. linformer's k capped at N)
]
MEASURED = ["latency_ms", "latency_ms_iqr", "latency_ms_ci_low", "latency_ms_ci_high", "repeats",
            "peak_mem_mib", "tokens_per_s", "gflops_per_s", "pct_of_peak", "peak_rss_mib",
            "latency_ci_level", "noisy", "iters_per_sample", "flops", "computed_flops",
            "sdpa_backend", "matmul_precision", "device_name", "contended", "contention",
            "retimed", "unsteady_blocks", "steal_share", "sm_clock_mhz_start", "sm_clock_mhz_end",
            "sm_clock_mhz_max", "gpu_temp_c_start", "gpu_temp_c_end", "depth", "state_bytes",
            "state_bytes_formula", "max_batch_in_budget", "compile_s"]
STATUSES = ("ok", "oom", "skipped", "timeout", "error", "unsupported")
CONFIG_KEYS = ("variant", "mode", "dtype", "device", "batch_size", "seq_len", "d_model",
               "n_heads", "n_layers", "config_id", "ffn_dim", "causal", "batch_tokens", "params",
               "layer", "compile")


def make_row(config: dict[str, Any], result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One result row with every column; measured numbers are null unless status is ok."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS + EXTRA_COLUMNS)
    row.update({k: config[k] for k in CONFIG_KEYS if k in config})
    row.update({k: v for k, v in result.items() if k in row})
    row.update(extra)
    row["detail"] = result.get("traceback")
    if row["status"] not in STATUSES:
        row["reason"] = f"unknown status {row['status']!r}: {row['reason']}"
        row["status"] = "error"
    if row["status"] != "ok":
        for key in MEASURED:
            row[key] = None
    row["reason"] = row["reason"] or ""
    row["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return {k: _finite(v) for k, v in row.items()}


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.run_json = self.path / "run.json"
        self.jsonl = self.path / "results.jsonl"
        self.csv = self.path / "results.csv"
        self.canary = self.path / "canary.jsonl"
        self.rows: list[dict[str, Any]] = []

    # -- new runs --
    @staticmethod
    def check_new(path: Path) -> None:
        """A new run may go into a missing or empty directory only (never over a run)."""
        if path.is_file():
            raise LsbenchError(f"--out {path} is a file; give a directory for the run.")
        if path.is_dir() and any(path.iterdir()):
            what = "a run" if (path / "run.json").exists() else "files"
            raise LsbenchError(
                f"--out {path} already holds {what}; continue it with `lsbench run --resume "
                f"{path}`, or choose a new --out directory."
            )

    def create(self, info: dict[str, Any]) -> None:
        self.check_new(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.jsonl.touch()
        except OSError as e:
            raise fs_error(self.path, e, "create the run directory") from None
        self.write_info(info)
        self.write_csv()

    # -- existing runs --
    @classmethod
    def open(cls, path: Path) -> RunStore:
        """Open an existing run for resuming; raises (and changes nothing) if it is not one."""
        store = cls(path)
        hint = ("pass a directory written by `lsbench run` (e.g. reports/latest), or start a "
                "new run without --resume")
        if not path.is_dir():
            raise LsbenchError(f"--resume {path}: no such run directory; {hint}.")
        if not store.run_json.is_file():
            raise LsbenchError(f"--resume {path}: not an lsbench run (no run.json); {hint}.")
        info = store.read_info()
        if info.get("kind") != "run" or not isinstance(info.get("suite_config"), dict):
            raise LsbenchError(
                f"--resume {path}: run.json is not from `lsbench run` (kind "
                f"{info.get('kind')!r}, or no suite_config); {hint}."
            )
        store.rows, store.warnings = read_jsonl(store.jsonl)
        return store

    def read_info(self) -> dict[str, Any]:
        try:
            info = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LsbenchError(
                f"{self.run_json} cannot be read ({e}); restore it, or start a new run."
            ) from None
        if not isinstance(info, dict):
            raise LsbenchError(f"{self.run_json} must hold a JSON object; restore it.")
        return info

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write(self.run_json, json.dumps(info, indent=2, default=str) + "\n")

    def repair_tail(self) -> bool:
        """Cut a truncated last line (a run killed mid-write) so appends start on a new line."""
        if not self.jsonl.exists():
            self.jsonl.touch()
            return False
        data = self.jsonl.read_bytes()
        if not data or data.endswith(b"\n"):
            return False
        with open(self.jsonl, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())
        return True

    # -- rows --
    def append(self, row: dict[str, Any]) -> None:
        """Append one row and flush it to disk; on failure (e.g. disk full) the file is cut back
        to its last complete row, so every row already recorded stays readable."""
        line = json.dumps(row, default=str, allow_nan=False) + "\n"
        size = self.jsonl.stat().st_size if self.jsonl.exists() else 0
        try:
            with open(self.jsonl, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):
                os.truncate(self.jsonl, size)
            raise fs_error(self.jsonl, e, "append a result to") from None
        self.rows.append(row)
        self.write_csv()

    def update_rows(self, changes: dict[str, dict[str, Any]]) -> None:
        """Set fields of rows already recorded (config_id -> fields): results.jsonl and the CSV
        are rewritten whole and atomically, so a kill leaves the old or the new file."""
        hit = [r for r in self.rows if r["config_id"] in changes]
        if not hit:
            return
        for r in hit:
            r.update(changes[r["config_id"]])
        atomic_write(self.jsonl, "".join(json.dumps(r, default=str, allow_nan=False) + "\n"
                                         for r in self.rows))
        self.write_csv()

    def rewrite_canary(self, readings: list[dict[str, Any]]) -> None:
        """canary.jsonl rewritten whole and atomically (the readings judged again at the end)."""
        atomic_write(self.canary, "".join(json.dumps(r, default=str, allow_nan=False) + "\n"
                                          for r in readings))

    def append_canary(self, reading: dict[str, Any]) -> None:
        """One canary reading, appended and fsynced like a row (an interrupted run keeps every
        reading taken)."""
        line = json.dumps(reading, default=str, allow_nan=False) + "\n"
        try:
            with open(self.canary, "a+b") as f:  # a line cut by a kill stays a line of its own
                f.seek(0, os.SEEK_END)
                if f.tell():
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
            with open(self.canary, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise fs_error(self.canary, e, "append a canary reading to") from None

    def write_csv(self) -> None:
        buf = io.StringIO()
        columns = COLUMNS + EXTRA_COLUMNS
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
        atomic_write(self.csv, buf.getvalue())


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)
    return v


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of results.jsonl; incomplete lines are skipped and reported, never fatal."""
    if not path.exists():
        return [], []
    rows, warnings = [], []
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            where = "the last line" if i >= len(lines) - 1 else f"line {i}"
            warnings.append(f"{path.name}: {where} is incomplete JSON (interrupted while "
                            "writing); skipped (lsbench run --resume measures it again).")
            continue
        if isinstance(obj, dict) and obj.get("config_id"):
            rows.append(obj)
    return rows, warnings


def read_canary(path: Path) -> list[dict[str, Any]]:
    """The readings of canary.jsonl in order; an incomplete last line is skipped."""
    if not path.exists():
        return []
    readings = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("ms"), int | float):
            readings.append(obj)
    return readings


def atomic_write(path: Path, text: str, resume: str | None = None) -> None:
    """Write a whole file or nothing: the old file stays intact if writing fails (`resume`:
    how to continue after the disk fills, see `fs_error`)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise fs_error(path, e, "write", resume or RUN_RESUME) from None


FS_FIXES = {
    errno.ENOENT: "its parent directory does not exist; create it or choose another --out",
    errno.ENOTDIR: "a part of the path is a file; choose another --out",
    errno.EACCES: "it is not writable by you; choose a directory you can write to (--out)",
    errno.EPERM: "it is not writable by you; choose a directory you can write to (--out)",
    errno.EROFS: "the file system is read-only; choose --out on a writable disk",
    errno.ENOSPC: "the disk is full; free some space, then continue with {resume}",
    errno.EDQUOT: "the disk quota is exhausted; free some space, then continue with {resume}",
}
RUN_RESUME = "`lsbench run --resume DIR` (rows already written are kept)"


def fs_error(path: Path, e: OSError, doing: str, resume: str = RUN_RESUME) -> LsbenchError:
    """A one-line error naming the path, what failed and the fix (`resume`: how to continue
    after the disk fills)."""
    fix = FS_FIXES.get(e.errno, "check the path and its permissions, or choose another --out")
    return LsbenchError(f"cannot {doing} {path}: {e.strerror or e}; {fix.format(resume=resume)}.")


# -- run directory names and reports/latest --

def default_run_dir(root: Path, suite_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", suite_name).strip("-") or "suite"
    path = root / f"{stamp}-{safe}"
    n = 2
    while path.exists():
        path = root / f"{stamp}-{safe}-{n}"
        n += 1
    return path


def update_latest(run_dir: Path) -> Path:
    """Point `<parent>/latest` at `run_dir` (relative link, replaced atomically)."""
    link = run_dir.parent / "latest"
    if run_dir.name == "latest" or (link.exists() and not link.is_symlink()):
        return link  # a real file or directory named latest: leave it alone
    tmp = run_dir.parent / f".latest.{os.getpid()}.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)
    return link
