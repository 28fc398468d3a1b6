"""`lsbench compare RUN_A RUN_B`: which configurations got faster or slower, and is it real.

Configurations are matched by `config_id`. A latency change is *significant* only when the two
confidence intervals of the median do not overlap (median ± IQR/2 where a row has no CI).
Peak memory is a deterministic measurement (tensor allocations), so a memory change counts as
significant once it exceeds MEM_TOLERANCE.

Before any row, the *machine* is compared (issue 21): each run's canary (a fixed matmul + SDPA
timed through the sweep, lsbench.measure.canary) and environment. When the canaries differ
beyond their noise, the machine itself ran faster or slower, and every latency ratio is divided
by the canary's ratio (`normalize="canary"`; the factor's own uncertainty widens the intervals).
Independently, when nearly all rows moved together (MOVED_SHARE of the shared rows significantly
in one direction, the median ratio beyond the rows' typical noise) the comparison says so first:
with a canary that did not move, that is a change of code or libraries; without a canary (runs
recorded before it existed), machine and code cannot be told apart and a `--fail-above` gate
cannot be decided (`comparable` is False).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lsbench.errors import LsbenchError
from lsbench.measure.canary import canary_series
from lsbench.report.load import Run, load_run
from lsbench.report.tables import ordered

MEM_TOLERANCE = 0.02  # relative; allocator rounding and RSS jitter stay below this
# The canaries differ when their ratio is beyond CANARY_SIGMAS × its noise (the readings'
# scatter, both runs) and beyond CANARY_MIN_CHANGE: below 5%, the smallest slowdown a CI gate is
# usually set to catch, dividing by the canary would add its noise to every row for nothing.
CANARY_SIGMAS = 3.0
CANARY_MIN_CHANGE = 0.05
MOVED_SHARE = 0.8  # this share of the shared rows changed significantly in one direction ...
MOVED_MIN_ROWS = 5  # ... of at least this many: the machine (or everything) moved
NORMALIZE = ("canary", "none")
ENV_KEYS = ("cpu_model", "torch", "python", "hostname", "lsbench")

COLUMNS = ["config_id", "variant", "mode", "dtype", "batch_size", "seq_len", "status_a",
           "status_b", "latency_a_ms", "latency_b_ms", "latency_ratio", "latency_significant",
           "mem_a_mib", "mem_b_mib", "mem_ratio", "mem_significant", "change",
           "latency_noise", "latency_ratio_normalized", "latency_significant_normalized",
           "drift_a", "drift_b"]


@dataclass
class MachineCheck:
    """Did the machine change between the runs? What `compare` says before any row."""

    canary_a: dict | None  # {"ms", "noise", "readings"}: median of the readings' medians
    canary_b: dict | None
    canary_note: str  # why a canary cannot be used ("" when both can)
    factor: float | None  # canary B/A
    factor_noise: float  # relative (1 sigma)
    canary_moved: bool
    moved: dict  # the all-rows test: n, slower, faster (shares), median_ratio, noise, fired
    env_diffs: list[str]
    normalized: bool
    comparable: bool
    messages: list[str]


@dataclass
class Comparison:
    a: Run
    b: Run
    table: pd.DataFrame  # one row per shared config, sorted by change (worst first)
    only_a: int  # configs only in A
    only_b: int
    device_note: str = ""  # set when --force compared different devices
    machine: MachineCheck | None = None

    @property
    def normalized(self) -> bool:
        return bool(self.machine and self.machine.normalized)

    def regressions(self, threshold: float) -> pd.DataFrame:
        """Significant slowdowns or memory growth above `threshold` (0.05 = 5%), and configs
        that ran in A but fail in B; latency relative to the canary when normalized."""
        t = self.table
        ratio, sig = (("latency_ratio_normalized", "latency_significant_normalized")
                      if self.normalized else ("latency_ratio", "latency_significant"))
        slower = t[sig].astype(bool) & (t[ratio] > 1 + threshold)
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


def compare_runs(path_a: str | Path, path_b: str | Path, force: bool = False,
                 normalize: str | None = None) -> Comparison:
    """`normalize`: "canary" (latency relative to the machine's canary), "none" (raw), or None:
    canary when the two canaries differ beyond their noise, else raw."""
    if normalize not in (None, *NORMALIZE):
        raise LsbenchError(f"--normalize {normalize!r}: choose canary or none.")
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
    machine = _machine_check(a, b, table, normalize)
    machine.messages.extend(_condition_messages(a, b, ra.loc[shared], rb.loc[shared]))
    if machine.normalized:
        _normalize(table, machine.factor, machine.factor_noise, ra, rb)
    table = _sort(table, machine.normalized)
    return Comparison(a, b, table, len(ra.index.difference(rb.index)),
                      len(rb.index.difference(ra.index)), note, machine)


def _condition_messages(a: Run, b: Run, ra: pd.DataFrame, rb: pd.DataFrame) -> list[str]:
    """Rows whose two timings ran under other conditions: contended in either run, or timed
    with other thread counts (a contended row re-timed with one thread). Their ratios compare
    conditions, not code; the canary cannot correct that (it runs with the run's threads)."""
    ok = (ra["status"] == "ok") & (rb["status"] == "ok")
    msgs = []
    if "threads" in ra and "threads" in rb:
        other = ok & (pd.to_numeric(ra["threads"], errors="coerce")
                      != pd.to_numeric(rb["threads"], errors="coerce"))
        if other.any():
            msgs.append(f"{int(other.sum())} of the {int(ok.sum())} rows measured in both runs "
                        "were timed with other thread counts in A and B (a contended row is "
                        "re-timed with one thread): their ratios compare setups, not code")
    for run, rows in ((a, ra), (b, rb)):
        if "contended" in rows:
            n = int((ok & rows["contended"].map(_flag)).sum())
            if n:
                msgs.append(f"{run.given}: {n} of those rows were timed while another process "
                            "took the CPU (contended): rerun them on a quiet machine")
    return msgs


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
    return {
        "config_id": cid, "variant": a["variant"], "mode": a["mode"], "dtype": a["dtype"],
        "batch_size": a["batch_size"], "seq_len": a["seq_len"], "status_a": a["status"],
        "status_b": b["status"], "latency_a_ms": lat_a, "latency_b_ms": lat_b,
        "latency_ratio": lat_ratio, "latency_significant": lat_sig,
        "mem_a_mib": a["peak_mem_mib"], "mem_b_mib": b["peak_mem_mib"], "mem_ratio": mem_ratio,
        "mem_significant": mem_sig,
        "change": _change(a["status"], b["status"], lat_ratio, lat_sig, mem_ratio, mem_sig),
        "latency_noise": math.hypot(_rel_half_width(a), _rel_half_width(b)),
        "latency_ratio_normalized": math.nan, "latency_significant_normalized": None,
        "drift_a": _flag(a.get("drift")), "drift_b": _flag(b.get("drift")),
    }


def _change(status_a: str, status_b: str, lat_ratio: float, lat_sig: bool, mem_ratio: float,
            mem_sig: bool) -> str:
    if status_a == "ok" and status_b != "ok":
        change = "now fails"
    elif status_a != "ok" and status_b == "ok":
        change = "now runs"
    elif status_a != "ok":
        change = "fails in both"
    elif lat_sig and lat_ratio > 1:
        change = "slower"
    elif lat_sig and lat_ratio < 1:
        change = "faster"
    else:
        change = "same"
    if change == "same" and mem_sig:
        change = "more memory" if mem_ratio > 1 else "less memory"
    return change


def _flag(v) -> bool:
    return v is True or (isinstance(v, np.bool_) and bool(v))


def _rel_half_width(r: pd.Series) -> float:
    """Half the row's interval over its median: the row's own relative noise."""
    iv = _interval(r)
    med = r["latency_ms"]
    if iv is None or not _finite(med) or med <= 0:
        return math.nan
    return (iv[1] - iv[0]) / 2 / float(med)


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


def _sort(t: pd.DataFrame, normalized: bool = False) -> pd.DataFrame:
    """Worst first: new failures, then by latency ratio (largest slowdown first)."""
    ratio = t["latency_ratio_normalized"] if normalized else t["latency_ratio"]
    t = t.assign(_o=t["change"].map(_ORDER).fillna(9),
                 _r=-ratio.fillna(1.0),
                 _v=t["variant"].map({v: i for i, v in enumerate(ordered(t["variant"]))}))
    t = t.sort_values(["_o", "_r", "_v", "mode", "batch_size", "seq_len"])
    return t.drop(columns=["_o", "_r", "_v"]).reset_index(drop=True)


# --- the machine (issue 21) -------------------------------------------------------------------

def canary_level(run: Run) -> tuple[dict | None, str]:
    """A run's canary as one number: the median of its readings' medians, with a relative
    noise (the larger of the readings' scatter and a typical reading's MAD, over the level,
    over sqrt(readings)); (None, why) when it has none."""
    series = canary_series(run.path, run.meta)
    if not series:
        return None, f"{run.given} has no canary (recorded before lsbench measured one)"
    ms = np.array([r["ms"] for r in series], dtype=float)
    level = float(np.median(ms))
    scatter = float(np.median(np.abs(ms - level))) if len(ms) > 1 else 0.0
    within = float(np.median([r.get("mad_ms") or r.get("iqr_ms", 0) / 2 for r in series]))
    noise = max(scatter, within) * 1.4826 / level / math.sqrt(len(ms))
    return {"ms": level, "noise": noise, "readings": len(ms), "spec": series[0].get("spec"),
            "drifted": sum(bool(r.get("drift")) for r in series)}, ""


def _machine_check(a: Run, b: Run, table: pd.DataFrame, normalize: str | None) -> MachineCheck:
    ca, why_a = canary_level(a)
    cb, why_b = canary_level(b)
    note = why_a or why_b
    if not note and ca["spec"] != cb["spec"]:
        note = (f"the canaries ran different workloads ({ca['spec']} vs {cb['spec']}: other "
                "threads or dtype), so they cannot be compared")
    factor = noise = None
    moved_canary = False
    if not note:
        factor = cb["ms"] / ca["ms"]
        noise = math.hypot(ca["noise"], cb["noise"])
        moved_canary = (abs(math.log(factor)) > CANARY_SIGMAS * noise
                        and abs(factor - 1) > CANARY_MIN_CHANGE)
    moved = _rows_moved(table)
    env = _env_diffs(a, b)
    if normalize == "canary" and note:
        normalized = False
    else:
        normalized = normalize == "canary" or (normalize is None and moved_canary)
    comparable = not (moved["fired"] and note and normalize != "none")
    msgs = _machine_messages(a, b, ca, cb, note, factor, noise, moved_canary, moved, env,
                             normalized, normalize, comparable)
    return MachineCheck(ca, cb, note, factor, noise or 0.0, moved_canary, moved, env,
                        normalized, comparable, msgs)


def _rows_moved(t: pd.DataFrame) -> dict:
    """Did (nearly) all shared rows move together? Share of significantly slower / faster
    rows among those measured in both runs, and the median ratio against the rows' noise."""
    ok = t[(t["status_a"] == "ok") & (t["status_b"] == "ok") & t["latency_ratio"].notna()]
    n = len(ok)
    if n == 0:
        return {"n": 0, "slower": 0.0, "faster": 0.0, "median_ratio": math.nan,
                "noise": math.nan, "fired": False}
    sig = ok["latency_significant"].astype(bool)
    slower = float((sig & (ok["latency_ratio"] > 1)).mean())
    faster = float((sig & (ok["latency_ratio"] < 1)).mean())
    median = float(ok["latency_ratio"].median())
    noise = float(ok["latency_noise"].median()) if ok["latency_noise"].notna().any() else 0.0
    fired = (n >= MOVED_MIN_ROWS and max(slower, faster) >= MOVED_SHARE
             and abs(median - 1) > noise)
    return {"n": n, "slower": slower, "faster": faster, "median_ratio": median,
            "noise": noise, "fired": bool(fired)}


def _env_diffs(a: Run, b: Run) -> list[str]:
    diffs = []
    for key in ENV_KEYS:
        va, vb = a.env.get(key), b.env.get(key)
        if va != vb and not (va is None and vb is None):
            diffs.append(f"{key} {va} -> {vb}")
    for key in ("threads", "dtype"):
        if a.meta.get(key) != b.meta.get(key):
            diffs.append(f"{key} {a.meta.get(key)} -> {b.meta.get(key)}")
    return diffs


def _speed(f: float) -> str:
    return f"{f:.2f}x slower" if f >= 1 else f"{1 / f:.2f}x faster"


def _machine_messages(a, b, ca, cb, note, factor, noise, moved_canary, moved, env,
                      normalized, normalize, comparable) -> list[str]:
    msgs = []
    way = "slower" if moved["slower"] >= moved["faster"] else "faster"
    rows = (f"{max(moved['slower'], moved['faster']):.0%} of the {moved['n']} rows measured in "
            f"both runs are significantly {way} in B, median ratio "
            f"{moved['median_ratio']:.2f}x") if moved["fired"] else ""
    if moved_canary:
        msgs.append(f"the machine ran {_speed(factor)} in run B: canary {ca['ms']:.3g} ms -> "
                    f"{cb['ms']:.3g} ms ({ca['readings']} and {cb['readings']} readings, noise "
                    f"±{noise:.1%})" + (f"; {rows}" if rows else ""))
    elif moved["fired"] and not note:
        msgs.append(f"nearly all rows moved together ({rows}) but the canary did not "
                    f"({ca['ms']:.3g} -> {cb['ms']:.3g} ms, {factor:.2f}x): not the machine — "
                    "a change in lsbench, the model or the libraries")
    elif moved["fired"]:
        msgs.append(f"nearly all rows moved together ({rows}): the machine probably changed "
                    f"speed, but {note}, so a slower machine cannot be told from slower code")
    elif factor is not None:
        msgs.append(f"the machine's speed did not change beyond noise: canary {ca['ms']:.3g} -> "
                    f"{cb['ms']:.3g} ms ({factor:.2f}x, noise ±{noise:.1%})")
    else:
        msgs.append(f"machine speed checked only by the all-rows test: {note}")
    if normalized:
        msgs.append(f"latency ratios below are relative to the canary (B/A ÷ {factor:.2f}); "
                    "--normalize none shows them raw")
    elif normalize == "canary" and note:
        msgs.append(f"--normalize canary: {note}; the ratios are raw")
    elif moved_canary and normalize == "none":
        msgs.append("--normalize none: the ratios below are raw, the machine's change included")
    for run, c in ((a, ca), (b, cb)):
        if c and c["drifted"]:
            msgs.append(f"{run.given}: the canary drifted in {c['drifted']} of its "
                        f"{c['readings']} readings (the machine changed speed during that run; "
                        "its rows marked drift are in doubt)")
    if env:
        msgs.append("environment: " + "; ".join(env))
    if not comparable:
        msgs.append("not comparable: rerun both on the same quiet machine (lsbench now "
                    "records a canary), or pass --normalize none to gate on the raw times")
    return msgs


def _normalize(t: pd.DataFrame, factor: float, noise: float, ra: pd.DataFrame,
               rb: pd.DataFrame) -> None:
    """B's latency divided by the canary factor; its interval widened by 2 sigma of the
    factor; `change` recomputed from the normalized ratio and significance."""
    lo_f, hi_f = factor * (1 - 2 * noise), factor * (1 + 2 * noise)
    ratios, sigs, changes = [], [], []
    for r in t.itertuples(index=False):
        ratio = r.latency_ratio / factor if _finite(r.latency_ratio) else math.nan
        ia, ib = _interval(ra.loc[r.config_id]), _interval(rb.loc[r.config_id])
        ib = None if ib is None else (ib[0] / hi_f, ib[1] / max(lo_f, 1e-12))
        sig = _intervals_apart(ia, ib)
        ratios.append(ratio)
        sigs.append(sig)
        changes.append(_change(r.status_a, r.status_b, ratio, sig, r.mem_ratio,
                               r.mem_significant))
    t["latency_ratio_normalized"] = ratios
    t["latency_significant_normalized"] = sigs
    t["change"] = changes
