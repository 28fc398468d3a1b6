"""The report's numbers, as pandas DataFrames: pivots, crossover lengths, scaling exponents,
speed-ups and the extrapolation table. Pure functions of the result rows (no I/O).

A *group* is one panel of the Fig-2 plots: a setting (device, dtype, d_model, n_heads, n_layers),
a mode and a batch size. Variants are compared only inside a group.

Why one module of ~450 lines: the pandas computations behind every report table (pivots,
crossovers, slopes, failures) share the same grouping rules and stay together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lsbench.extrapolate.analysis import MIN_TRUSTED_TOKENS

KNOWN_VARIANTS = ["transformer", "sdpa", "longformer", "bigbird", "linformer", "linear",
                  "poolingformer", "fastformer"]
KNOWN_POSITIONS = ["sinusoidal", "learned", "rotary", "rotary+pi", "rotary+ntk", "rotary+yarn",
                   "rope_pi", "rope_ntk", "rope_yarn", "xpos", "xpos+bca", "xpos_bca", "t5",
                   "t5_bias", "alibi",
                   "kerple", "kerple_log", "kerple_power", "fire", "none"]
SETTING_COLUMNS = ["device", "dtype", "d_model", "n_heads", "n_layers"]
MODES = ["inference", "training", "prefill", "decode"]
BASELINES = ("transformer", "sdpa")
STOP_STATUSES = ("oom", "skipped", "timeout")  # the line of a variant ends at the first of these
STATUS_MARK = {"oom": "OOM", "skipped": "skip", "timeout": "timeout", "error": "error",
               "unsupported": "n/a"}


def ordered(names, known: list[str] = KNOWN_VARIANTS) -> list[str]:
    """Known names in their fixed order, then the others alphabetically."""
    names = set(names)
    return [n for n in known if n in names] + sorted(names - set(known))


def _mode_key(mode: str) -> tuple[int, str]:
    return (MODES.index(mode) if mode in MODES else len(MODES), mode)


def settings(rows: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """Split rows by setting; each setting gets its own figures and tables."""
    if rows.empty:
        return []
    out = []
    for key, sub in rows.groupby(SETTING_COLUMNS, dropna=False, sort=True):
        out.append((dict(zip(SETTING_COLUMNS, key, strict=True)), sub))
    return out


def setting_label(setting: dict) -> str:
    parts = [f"{setting['device']}", f"{setting['dtype']}"]
    for col, short in (("d_model", "d"), ("n_heads", "h"), ("n_layers", "layers")):
        value = setting.get(col)
        if value is not None and not pd.isna(value):
            parts.append(f"{short}={int(value)}")
    return " · ".join(parts)


def groups(rows: pd.DataFrame) -> Iterator[tuple[str, int, pd.DataFrame]]:
    """(mode, batch_size, rows) for each panel, modes first in their natural order."""
    if rows.empty:
        return
    modes = sorted(rows["mode"].unique(), key=_mode_key)
    for mode in modes:
        sub = rows[rows["mode"] == mode]
        for batch in sorted(sub["batch_size"].dropna().unique()):
            yield mode, int(batch), sub[sub["batch_size"] == batch]


# --- pivots -------------------------------------------------------------------------------

@dataclass
class Pivot:
    """variant x seq_len for one (mode, batch size): values where ok, the status elsewhere."""

    mode: str
    batch_size: int
    values: pd.DataFrame  # float, NaN where not ok
    status: pd.DataFrame  # "ok" / "oom" / ... ; "" where not measured
    marks: pd.DataFrame  # "" or footnote marks: † noisy, ‡ contended, ? spread unknown

    @property
    def title(self) -> str:
        return f"{self.mode} · batch {self.batch_size}"

    def export(self) -> pd.DataFrame:
        """Numbers where ok, the status word elsewhere (for CSV)."""
        out = self.values.astype(object).copy()
        failed = (self.status != "ok") & (self.status != "")
        out[failed] = self.status[failed]
        return out


def pivots(rows: pd.DataFrame, value: str) -> list[Pivot]:
    out = []
    for mode, batch, sub in groups(rows):
        variants = ordered(sub["variant"].unique())
        lens = sorted(int(n) for n in sub["seq_len"].dropna().unique())
        idx = pd.Index(variants, name="variant")
        cols = pd.Index(lens, name="seq_len")
        values = pd.DataFrame(np.nan, index=idx, columns=cols)
        status = pd.DataFrame("", index=idx, columns=cols)
        marks = pd.DataFrame("", index=idx, columns=cols)
        for r in sub.dropna(subset=["seq_len"]).itertuples(index=False):
            n = int(r.seq_len)
            values.loc[r.variant, n] = getattr(r, value)
            status.loc[r.variant, n] = r.status
            marks.loc[r.variant, n] = row_marks(r)
        out.append(Pivot(mode, batch, values, status, marks))
    return out


# --- crossover length ---------------------------------------------------------------------

@dataclass
class Crossover:
    length: float | None  # N* (NaN-free); None when there is no crossing in range
    kind: str  # "crossing", "always", "never", "no-overlap"
    lo: int | None = None  # measured range shared by both
    hi: int | None = None

    def describe(self) -> str:
        if self.kind == "crossing":
            return f"≈{_fmt_len(self.length)}"
        if self.kind == "always":
            return f"≤{self.lo:,} (faster at every length)"
        if self.kind == "never":
            return f"never in range ({self.lo:,}–{self.hi:,})"
        return "no common lengths"


def crossover_length(ns, t_variant, t_base) -> Crossover:
    """The shortest N from which the variant is faster than the baseline.

    Works on the lengths where both ran; between the last measured length where the variant
    was not faster and the next one, N* is interpolated linearly in log N of log(t_v / t_b)
    (exact when both times are power laws, as the complexity classes predict).
    """
    triples = zip(ns, t_variant, t_base, strict=True)
    data = sorted((int(n), float(a), float(b)) for n, a, b in triples
                  if _finite(a) and _finite(b) and a > 0 and b > 0)
    if not data:
        return Crossover(None, "no-overlap")
    n = np.array([d[0] for d in data], dtype=float)
    r = np.log([d[1] / d[2] for d in data])
    lo, hi = int(n[0]), int(n[-1])
    if r[-1] >= 0:
        return Crossover(None, "never", lo, hi)
    not_faster = np.nonzero(r >= 0)[0]
    if len(not_faster) == 0:
        return Crossover(float(lo), "always", lo, hi)
    i = int(not_faster[-1])
    x0, x1 = math.log(n[i]), math.log(n[i + 1])
    x = x0 + (0.0 - r[i]) / (r[i + 1] - r[i]) * (x1 - x0)
    return Crossover(float(math.exp(x)), "crossing", lo, hi)


def crossovers(rows: pd.DataFrame, baselines=BASELINES) -> pd.DataFrame:
    """Crossover length of every variant against each baseline, per mode and batch size."""
    records = []
    for mode, batch, sub in groups(rows):
        ok = sub[sub["status"] == "ok"]
        for base in baselines:
            b = ok[ok["variant"] == base].set_index("seq_len")["latency_ms"]
            if b.empty:
                continue
            base_stop = _first_stop(sub[sub["variant"] == base])
            for variant in ordered(sub["variant"].unique()):
                if variant == base:
                    continue
                v = ok[ok["variant"] == variant].set_index("seq_len")["latency_ms"]
                common = b.index.intersection(v.index)
                c = crossover_length(common, v[common], b[common])
                note = ""
                v_lens = set(v.index)
                if base_stop is not None and any(n >= base_stop[0] for n in v_lens):
                    note = f"{base} {base_stop[1]} from {base_stop[0]:,}"
                busy = _contended_lens(ok, (variant, base)) & set(common)
                if busy:  # an upper-bound time on either side can move the crossing
                    lens = ", ".join(f"{n:,}" for n in sorted(busy))
                    note = "; ".join(filter(None, [note, f"uses contended rows ‡ (N={lens})"]))
                records.append({
                    "mode": mode, "batch_size": batch, "variant": variant, "vs": base,
                    "crossover_len": c.length, "kind": c.kind, "crossover": c.describe(),
                    "note": note,
                })
    return pd.DataFrame(records, columns=["mode", "batch_size", "variant", "vs",
                                          "crossover_len", "kind", "crossover", "note"])


def _contended_lens(ok: pd.DataFrame, variants: tuple[str, ...]) -> set[int]:
    if "contended" not in ok:
        return set()
    flagged = ok["contended"].fillna(False).astype(bool) & ok["variant"].isin(variants)
    return {int(n) for n in ok[flagged]["seq_len"]}


def _first_stop(rows: pd.DataFrame) -> tuple[int, str] | None:
    stops = rows[rows["status"].isin(STOP_STATUSES)].sort_values("seq_len")
    if stops.empty:
        return None
    first = stops.iloc[0]
    return int(first["seq_len"]), str(first["status"])


# --- scaling exponents --------------------------------------------------------------------

def scaling_exponent(ns, values, last: int = 3) -> tuple[float | None, int | None, int | None]:
    """Log-log slope of value vs N over the `last` longest measured lengths (at least 2)."""
    pts = sorted((float(n), float(v)) for n, v in zip(ns, values, strict=True)
                 if _finite(v) and v > 0 and _finite(n) and n > 0)
    pts = pts[-last:]
    if len(pts) < 2:
        return None, None, None
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    slope = float(np.polyfit(x, y, 1)[0])
    return slope, int(pts[0][0]), int(pts[-1][0])


def scaling_exponents(rows: pd.DataFrame, last: int = 3) -> pd.DataFrame:
    records = []
    for mode, batch, sub in groups(rows):
        ok = sub[sub["status"] == "ok"]
        for variant in ordered(sub["variant"].unique()):
            v = ok[ok["variant"] == variant]
            t, t_lo, t_hi = scaling_exponent(v["seq_len"], v["latency_ms"], last)
            m, m_lo, m_hi = scaling_exponent(v["seq_len"], v["peak_mem_mib"], last)
            records.append({
                "mode": mode, "batch_size": batch, "variant": variant,
                "time_exponent": t, "time_fit_range": _range(t_lo, t_hi),
                "memory_exponent": m, "memory_fit_range": _range(m_lo, m_hi),
            })
    return pd.DataFrame(records, columns=["mode", "batch_size", "variant", "time_exponent",
                                          "time_fit_range", "memory_exponent",
                                          "memory_fit_range"])


def _range(lo: int | None, hi: int | None) -> str:
    return "" if lo is None else f"{lo:,}–{hi:,}"


# --- speed-up at the longest common length -------------------------------------------------

def speedups(rows: pd.DataFrame, baseline: str = "transformer") -> pd.DataFrame:
    """Speed-up and memory ratio vs `baseline` at the longest N where both ran."""
    records = []
    for mode, batch, sub in groups(rows):
        ok = sub[sub["status"] == "ok"]
        b = ok[ok["variant"] == baseline].set_index("seq_len")
        if b.empty:
            continue
        for variant in ordered(sub["variant"].unique()):
            if variant == baseline:
                continue
            v = ok[ok["variant"] == variant].set_index("seq_len")
            common = b.index.intersection(v.index)
            if common.empty:
                continue
            n = common.max()
            records.append({
                "mode": mode, "batch_size": batch, "variant": variant, "seq_len": int(n),
                "latency_ms": v.at[n, "latency_ms"], f"{baseline}_ms": b.at[n, "latency_ms"],
                "speedup": b.at[n, "latency_ms"] / v.at[n, "latency_ms"],
                "memory_ratio": _ratio(v.at[n, "peak_mem_mib"], b.at[n, "peak_mem_mib"]),
            })
    return pd.DataFrame(records, columns=["mode", "batch_size", "variant", "seq_len",
                                          "latency_ms", f"{baseline}_ms", "speedup",
                                          "memory_ratio"])


def _ratio(a, b) -> float:
    return float(a) / float(b) if _finite(a) and _finite(b) and b > 0 else float("nan")


# --- headlines ----------------------------------------------------------------------------

def headlines(rows: pd.DataFrame) -> list[str]:
    """A few plain sentences: who is fastest at the longest length each variant reached.

    Contended rows (‡: another process took the CPU, the time is an upper bound) are left out
    and named; where every row at that length is contended, the sentence says it used them."""
    out = []
    for mode, batch, sub in groups(rows):
        ok = sub[sub["status"] == "ok"]
        if ok.empty:
            continue
        n = int(ok["seq_len"].max())
        at_n = ok[ok["seq_len"] == n].sort_values("latency_ms")
        contended = at_n["contended"].fillna(False).astype(bool) if "contended" in at_n \
            else pd.Series(False, index=at_n.index)
        used_contended = bool(contended.all())
        left_out = [] if used_contended else sorted(at_n[contended]["variant"])
        at_n = at_n if used_contended else at_n[~contended]
        best = at_n.iloc[0]
        line = (f"{mode}, batch {batch}: at N={n:,} the fastest is {best['variant']} "
                f"({fmt_num(best['latency_ms'])} ms)")
        if len(at_n) > 1:
            second = at_n.iloc[1]
            line += (f", {fmt_num(second['latency_ms'] / best['latency_ms'])}× ahead of "
                     f"{second['variant']}")
        if used_contended:
            line += (" — from contended timings only (‡: every row at this length was timed "
                     "while another process took the CPU; treat them as upper bounds)")
        elif left_out:
            line += f" (contended rows ‡ left out: {', '.join(left_out)})"
        failed = sorted(set(sub[sub["status"].isin(STOP_STATUSES)]["variant"]))
        if failed:
            line += f"; stopped early (OOM / skipped / timeout): {', '.join(failed)}"
        out.append(line + ".")
    return out


# --- noise and failures -------------------------------------------------------------------

MARKS = {"noisy": "†", "contended": "‡", "drift": "§", "spread_unknown": "?"}


def row_marks(r: Any) -> str:
    """Footnote marks for one latency cell: † noisy, ‡ contended, ? fewer than 3 samples."""
    return "".join(m for col, m in MARKS.items() if bool(getattr(r, col, False)))


def contended_rows(rows: pd.DataFrame) -> pd.DataFrame:
    df = rows[rows["contended"] & (rows["status"] == "ok")]
    cols = ["variant", "mode", "batch_size", "seq_len", "latency_ms", "retimed", "threads",
            "contention"]
    return df.reindex(columns=cols).reset_index(drop=True)


def noisy_rows(rows: pd.DataFrame) -> pd.DataFrame:
    df = rows[rows["noisy"] & (rows["status"] == "ok")].copy()
    df["iqr_pct"] = 100 * df["latency_ms_iqr"] / df["latency_ms"]
    cols = ["variant", "mode", "batch_size", "seq_len", "latency_ms", "latency_ms_iqr",
            "iqr_pct", "repeats"]
    return df.sort_values("iqr_pct", ascending=False)[cols].reset_index(drop=True)


def failed_rows(rows: pd.DataFrame) -> pd.DataFrame:
    df = rows[rows["status"] != "ok"]
    cols = ["variant", "mode", "batch_size", "seq_len", "status", "reason", "predicted_mem_mib"]
    return df.sort_values(["variant", "mode", "batch_size", "seq_len"])[cols].reset_index(
        drop=True)


def status_counts(rows: pd.DataFrame) -> dict[str, int]:
    counts = rows["status"].value_counts()
    known = ["ok", "oom", "skipped", "timeout", "error", "unsupported"]
    return {s: int(counts[s]) for s in known if s in counts} | {
        s: int(c) for s, c in counts.items() if s not in known}


# --- extrapolation ------------------------------------------------------------------------

@dataclass
class ExtrapolationTable:
    train_len: int
    eval_mode: str
    ppl: pd.DataFrame  # position x eval_len
    summary: pd.DataFrame  # position: ppl at L, best length, best ppl, ratio
    ratio_label: str
    notes: list[str] = field(default_factory=list)
    ratio: pd.DataFrame | None = None  # position x eval_len: ppl(n)/ppl(L)
    delta_bits: pd.DataFrame | None = None  # position x eval_len: (loss(n) - loss(L)) / ln 2
    ci_low: pd.DataFrame | None = None  # position x eval_len: 95% interval of the ppl
    ci_high: pd.DataFrame | None = None

    @property
    def title(self) -> str:
        return f"trained at L={self.train_len:,} · {self.eval_mode}"


def extrapolation_tables(ex: pd.DataFrame) -> list[ExtrapolationTable]:
    """Perplexity per position method x evaluation length, nonoverlapping first."""
    out = []
    if ex.empty:
        return out
    ex = ex.dropna(subset=["eval_len", "ppl"])
    modes = sorted(ex["eval_mode"].unique(),
                   key=lambda m: (m != "nonoverlapping", m != "sliding", m))
    for train_len in sorted(ex["train_len"].dropna().unique()):
        for mode in modes:
            sub = ex[(ex["train_len"] == train_len) & (ex["eval_mode"] == mode)]
            if sub.empty:
                continue
            out.append(_extrapolation_table(int(train_len), mode, sub))
    return out


def _extrapolation_table(train_len: int, mode: str, sub: pd.DataFrame) -> ExtrapolationTable:
    positions = ordered(sub["position"].astype(str).unique(), KNOWN_POSITIONS)
    sub = sub.assign(position=sub["position"].astype(str), eval_len=sub["eval_len"].astype(int))
    ppl = sub.pivot_table(index="position", columns="eval_len", values="ppl", aggfunc="last")
    ppl = ppl.reindex(positions)
    lens = list(ppl.columns)
    multiples = [n // train_len for n in lens if n % train_len == 0 and n > train_len]
    target = 16 if 16 in multiples else (max(multiples) if multiples else None)
    ratio_label = f"ppl({target}L)/ppl(L)" if target else "ppl(longest)/ppl(L)"
    notes = []
    if target is None or target != 16:
        notes.append("16×L was not evaluated; the ratio uses the longest evaluated length.")
    records = []
    for pos in positions:
        row = ppl.loc[pos]
        at_l = row.get(train_len, np.nan)
        valid = row.dropna()
        far = row.get(target * train_len, np.nan) if target else (
            valid.iloc[-1] if len(valid) else np.nan)
        records.append({
            "position": pos,
            "ppl_at_L": at_l,
            "best_len": int(valid.idxmin()) if len(valid) else None,
            "best_ppl": float(valid.min()) if len(valid) else np.nan,
            "longest_len": int(valid.index.max()) if len(valid) else None,
            "ratio": _ratio(far, at_l),
        })
    summary = pd.DataFrame(records)
    if train_len not in lens:
        notes.append(f"L={train_len:,} itself was not evaluated, so ratios are blank.")
    loss = sub.pivot_table(index="position", columns="eval_len", values="loss",
                           aggfunc="last").reindex(index=positions, columns=lens)
    base = loss[train_len] if train_len in loss.columns else pd.Series(np.nan, index=positions)
    diff = loss.sub(base, axis=0)
    ci = {}
    for col in ("ppl_ci_low", "ppl_ci_high"):
        have = col in sub.columns and sub[col].notna().any()
        ci[col] = (sub.pivot_table(index="position", columns="eval_len", values=col,
                                   aggfunc="last").reindex(index=positions, columns=lens)
                   if have else None)
    low = sub["low_precision"].fillna(False).astype(bool) if "low_precision" in sub.columns \
        else sub["tokens_scored"].astype(float) < MIN_TRUSTED_TOKENS
    if low.any():
        notes.append(f"LOW PRECISION: fewer than {MIN_TRUSTED_TOKENS:,} tokens were scored at "
                     "some lengths; differences of a few percent are within the noise.")
    return ExtrapolationTable(train_len, mode, ppl, summary, ratio_label, notes,
                              ratio=np.exp(diff), delta_bits=diff / math.log(2),
                              ci_low=ci["ppl_ci_low"], ci_high=ci["ppl_ci_high"])


def extrapolation_headlines(tabs: list[ExtrapolationTable]) -> list[str]:
    """Per table: the best method at the longest evaluated length, and the worst blow-up."""
    out = []
    for t in tabs:
        if t.ppl.empty:
            continue
        n = max(t.ppl.columns)
        at_n = t.ppl[n].dropna().sort_values()
        if at_n.empty:
            continue
        line = (f"{t.eval_mode}, trained at L={t.train_len:,}: at {n:,} tokens "
                f"({n / t.train_len:g}×L) the best is {at_n.index[0]} "
                f"(ppl {fmt_num(at_n.iloc[0])})")
        if len(at_n) > 1:
            line += f", the worst {at_n.index[-1]} (ppl {fmt_num(at_n.iloc[-1])})"
        out.append(line + ".")
    return out


# --- formatting ---------------------------------------------------------------------------

def fmt_num(x, digits: int = 3) -> str:
    """Three significant digits, thousands separated; '' for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def _fmt_len(n: float) -> str:
    return f"{round(n):,}"


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
