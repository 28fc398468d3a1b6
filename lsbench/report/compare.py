"""`lsbench compare RUN_A RUN_B`: which configurations got faster or slower, and is it real.

Configurations are matched by `config_id`. A latency change is *significant* only when the two
confidence intervals of the median do not overlap (median ± IQR/2 where a row has no CI).
Peak memory is a deterministic measurement (tensor allocations), so a memory change counts as
significant once it exceeds MEM_TOLERANCE.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lsbench.errors import LsbenchError
from lsbench.report.load import Run, load_run
from lsbench.report.tables import ordered

MEM_TOLERANCE = 0.02  # relative; allocator rounding and RSS jitter stay below this

COLUMNS = ["config_id", "variant", "mode", "dtype", "batch_size", "seq_len", "status_a",
           "status_b", "latency_a_ms", "latency_b_ms", "latency_ratio", "latency_significant",
           "mem_a_mib", "mem_b_mib", "mem_ratio", "mem_significant", "change"]


@dataclass
class Comparison:
    a: Run
    b: Run
    table: pd.DataFrame  # one row per shared config, sorted by change (worst first)
    only_a: int  # configs only in A
    only_b: int
    device_note: str = ""  # set when --force compared different devices

    def regressions(self, threshold: float) -> pd.DataFrame:
        """Significant slowdowns or memory growth above `threshold` (0.05 = 5%), and configs
        that ran in A but fail in B."""
        t = self.table
        slower = t["latency_significant"] & (t["latency_ratio"] > 1 + threshold)
        bigger = t["mem_significant"] & (t["mem_ratio"] > 1 + threshold)
        broke = t["change"] == "now fails"
        return t[slower | bigger | broke]

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.table["change"].value_counts().items()}


def parse_percent(text: str) -> float:
    """'5%' or '5' -> 0.05 (a percentage, as --fail-above takes it)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", str(text))
    if not m:
        raise LsbenchError(f"--fail-above takes a percentage such as 5% or 12.5%, "
                           f"got {text!r}.")
    return float(m.group(1)) / 100


def compare_runs(path_a: str | Path, path_b: str | Path, force: bool = False) -> Comparison:
    a, b = load_run(path_a), load_run(path_b)
    for run in (a, b):
        if run.kind != "run":
            raise LsbenchError(f"{run.given} is an extrapolation run; compare works on latency "
                               "runs written by `lsbench run`.")
        if run.rows.empty:
            raise LsbenchError(f"{run.given} holds no result rows yet; nothing to compare.")
    note = _device_check(a, b, force)
    ra = a.rows.set_index("config_id")
    rb = b.rows.set_index("config_id")
    shared = [c for c in ra.index if c in rb.index]
    if not shared:
        raise LsbenchError(
            f"{a.given} and {b.given} share no configurations (no config_id in common): "
            "compare runs of the same suite, e.g. rerun with `lsbench run --suite "
            f"{a.meta.get('suite') or 'NAME'}`."
        )
    records = [_compare_row(cid, ra.loc[cid], rb.loc[cid]) for cid in shared]
    table = pd.DataFrame(records, columns=COLUMNS)
    table = _sort(table)
    return Comparison(a, b, table, len(ra.index.difference(rb.index)),
                      len(rb.index.difference(ra.index)), note)


def _device_check(a: Run, b: Run, force: bool) -> str:
    da = (a.meta.get("device") or _rows_device(a), a.device_name)
    db = (b.meta.get("device") or _rows_device(b), b.device_name)
    if da == db:
        return ""
    msg = (f"{a.given} ran on {da[0]} ({da[1]}) but {b.given} on {db[0]} ({db[1]}); "
           "timings from different devices are not comparable.")
    if not force:
        raise LsbenchError(msg + " Pass --force to compare them anyway.")
    return msg


def _rows_device(run: Run) -> str:
    devices = sorted(run.rows["device"].unique())
    return ",".join(devices)


def _compare_row(cid: str, a: pd.Series, b: pd.Series) -> dict:
    lat_a, lat_b = a["latency_ms"], b["latency_ms"]
    lat_ratio = _ratio(lat_b, lat_a)
    lat_sig = _intervals_apart(_interval(a), _interval(b))
    mem_ratio = _ratio(b["peak_mem_mib"], a["peak_mem_mib"])
    mem_sig = bool(np.isfinite(mem_ratio) and abs(mem_ratio - 1) > MEM_TOLERANCE)
    if a["status"] == "ok" and b["status"] != "ok":
        change = "now fails"
    elif a["status"] != "ok" and b["status"] == "ok":
        change = "now runs"
    elif a["status"] != "ok":
        change = "fails in both"
    elif lat_sig and lat_ratio > 1:
        change = "slower"
    elif lat_sig and lat_ratio < 1:
        change = "faster"
    else:
        change = "same"
    if change == "same" and mem_sig:
        change = "more memory" if mem_ratio > 1 else "less memory"
    return {
        "config_id": cid, "variant": a["variant"], "mode": a["mode"], "dtype": a["dtype"],
        "batch_size": a["batch_size"], "seq_len": a["seq_len"], "status_a": a["status"],
        "status_b": b["status"], "latency_a_ms": lat_a, "latency_b_ms": lat_b,
        "latency_ratio": lat_ratio, "latency_significant": lat_sig,
        "mem_a_mib": a["peak_mem_mib"], "mem_b_mib": b["peak_mem_mib"], "mem_ratio": mem_ratio,
        "mem_significant": mem_sig, "change": change,
    }


def _interval(r: pd.Series) -> tuple[float, float] | None:
    lo, hi = r["latency_ms_ci_low"], r["latency_ms_ci_high"]
    if _finite(lo) and _finite(hi):
        return float(lo), float(hi)
    med, iqr = r["latency_ms"], r["latency_ms_iqr"]
    if _finite(med):
        half = float(iqr) / 2 if _finite(iqr) else 0.0
        return float(med) - half, float(med) + half
    return None


def _intervals_apart(x: tuple[float, float] | None, y: tuple[float, float] | None) -> bool:
    if x is None or y is None:
        return False
    return x[1] < y[0] or y[1] < x[0]


def _ratio(num, den) -> float:
    return float(num) / float(den) if _finite(num) and _finite(den) and den > 0 else math.nan


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


_ORDER = {"now fails": 0, "slower": 1, "more memory": 2, "same": 3, "fails in both": 4,
          "less memory": 5, "faster": 6, "now runs": 7}


def _sort(t: pd.DataFrame) -> pd.DataFrame:
    """Worst first: new failures, then by latency ratio (largest slowdown first)."""
    t = t.assign(_o=t["change"].map(_ORDER).fillna(9),
                 _r=-t["latency_ratio"].fillna(1.0),
                 _v=t["variant"].map({v: i for i, v in enumerate(ordered(t["variant"]))}))
    t = t.sort_values(["_o", "_r", "_v", "mode", "batch_size", "seq_len"])
    return t.drop(columns=["_o", "_r", "_v"]).reset_index(drop=True)
