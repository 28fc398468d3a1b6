"""Mean and 95% confidence interval of query accuracy over seeds (Student t)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from scipy import stats

GROUP = ["variant", "task_form", "seq_len", "kv_pairs"]
SUMMARY_COLUMNS = [*GROUP, "seeds", "accuracy_mean", "accuracy_sd", "accuracy_ci_low",
                   "accuracy_ci_high", "train_s_mean", "status", "reason"]


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sd, low, high); the interval is NaN below 2 values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def summary_frame(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for key, g in rows.groupby(GROUP, sort=False):
        ok = g[g["status"] == "ok"]
        base = dict(zip(GROUP, key, strict=True))
        if ok.empty:
            reason = str(g["reason"].dropna().iloc[0]) if g["reason"].notna().any() else ""
            out.append({**base, "seeds": 0, "status": str(g["status"].iloc[0]),
                        "reason": reason})
            continue
        mean, sd, lo, hi = t_interval([float(a) for a in ok["accuracy"]])
        out.append({**base, "seeds": len(ok), "accuracy_mean": mean, "accuracy_sd": sd,
                    "accuracy_ci_low": lo, "accuracy_ci_high": hi,
                    "train_s_mean": float(ok["train_s"].mean()), "status": "ok", "reason": ""})
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


def summarize(path: Path) -> pd.DataFrame:
    """Rewrite path/summary.csv from path/quality.csv; returns the summary."""
    csv_path = Path(path) / "quality.csv"
    if not csv_path.exists():
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    summary = summary_frame(pd.read_csv(csv_path))
    summary.to_csv(Path(path) / "summary.csv", index=False, float_format="%.5g")
    return summary
