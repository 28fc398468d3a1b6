"""The canary: a fixed reference workload timed through a sweep, so a slower *machine* is told
apart from a slower *configuration*.

Per-row checks (`timing.Contention`, `steal.py`) catch what the guest can see. A host that
throttles, or a neighbour on the same physical cores that the hypervisor does not report as
steal, makes every step slower without a trace inside the guest. The canary is one matmul and
one SDPA call of fixed shapes on the run's device, dtype and threads, timed in the worker
process at the start of a sweep, about every CANARY_INTERVAL_S seconds of it, and at the end:

    reading = measure(unit)              # in the worker: {"ms", "iqr_ms", "mad_ms", ...}
    log = CanaryLog(previous_readings)   # in the parent
    log.add(reading)                     # ratio to the reference, drift or not

Reference: the run's typical speed, the (lower) median reading of the run (of the readings so
far while it runs; of all of them when it ends, which decides the rows' marks). Drift rule: a
reading has drifted when its median differs from the reference's by more than DRIFT_LIMIT (10%:
the same line `noisy` draws for a row, so a drift the rows could not show is not reported) *and*
by more than DRIFT_MADS median absolute deviations of the reference's samples (a canary whose
own samples scatter widely, e.g. on a loaded machine, needs a larger move). With 6 samples, 3
MADs is about 4 standard errors of a median. A reading is timed as a row is (blocks of >= 20
ms, the first steady window of 6) after WARMUP_S of untimed work.

Transient changes. A quiet 2-core cloud VM (nothing else in the guest, steal 0) was measured
switching between two speeds: 45 readings over 60 s, most at 1.4-1.9 ms, 6 at 2.58-2.67 ms,
each of those steady within itself (MAD ~1%) and gone by the next reading ~1 s later (the host
sharing the vCPUs' physical cores for a moment), and two default runs back to back differed by
1.36x over the first 10 s of the second run and by < 10% after it. A reading that caught such a
moment is not a drift of the 30 s around it, and the start is not special: with the first
reading as the reference, one slow start reading marked 261 of 276 rows of a quiet run as
drift; with the median of three start readings, two slow ones did the same. So the run starts
with START_READINGS readings back to back, the reference is the run's median, and a reading
that drifted is confirmed by a second one taken at once: if that one is back within the
limits, the first is `transient` (recorded, shown, no row marked). When the sweep ends, rows
measured next to a confirmed drift (the windows just before and just after it) get `drift:
true`; a slowdown shorter than the interval is the per-row speed probe's to see
(measure/timing.py).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

CANARY_INTERVAL_S = 30.0  # sweep time between readings (checked between configs)
START_READINGS = 3  # back to back at the start; their median is the reference
DRIFT_LIMIT = 0.10
DRIFT_MADS = 3.0
WARMUP_S = 0.2  # the workload runs this long, untimed, before a reading's samples
BUDGET_S = 0.3  # timed seconds per reading, at most (a steady one stops at 6 blocks)

# Fixed shapes per device type: ~0.1 GFLOP a call on a CPU (a few ms in float32 on 2 cores, a
# reading ~100 ms; bfloat16 matmuls without AMX are ~10x slower, so the matmul stays small) and
# ~200 GFLOP on a GPU (ms per call: launch overhead negligible).
SPECS: dict[str, dict[str, Any]] = {
    "cpu": {"matmul": [256, 256, 256], "sdpa": [1, 2, 512, 64]},
    "cuda": {"matmul": [4096, 4096, 4096], "sdpa": [4, 16, 4096, 64]},
}


def spec_for(device: str, dtype: str, threads: int) -> dict[str, Any]:
    """What the canary runs; two canaries are comparable only when their specs are equal."""
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    return {**SPECS[kind], "device": kind, "dtype": dtype, "threads": threads}


# --- in the worker ------------------------------------------------------------------------

def measure(unit: dict[str, Any]) -> dict[str, Any]:
    """One reading of the canary (a `{"kind": "canary", "device", "dtype", "threads",
    "matmul_precision"}` unit): median per-call ms, IQR, MAD, the samples, and the steal over
    the reading."""
    import torch
    import torch.nn.functional as F
    from torch.utils.benchmark.utils.common import set_torch_threads
    from torch.utils.benchmark.utils.timer import timer as clock  # syncs CUDA

    from lsbench.measure.steal import StealWatch
    from lsbench.measure.timing import time_step

    spec = spec_for(unit["device"], unit["dtype"], unit["threads"])
    device, dtype = torch.device(unit["device"]), getattr(torch, unit["dtype"])
    torch.set_float32_matmul_precision(unit.get("matmul_precision", "highest"))
    g = torch.Generator(device="cpu").manual_seed(0)
    m, k, n = spec["matmul"]
    a = torch.randn(m, k, generator=g).to(device, dtype)
    b = torch.randn(k, n, generator=g).to(device, dtype)
    q, kk, v = (torch.randn(*spec["sdpa"], generator=g).to(device, dtype) for _ in range(3))

    def step():
        torch.mm(a, b)
        F.scaled_dot_product_attention(q, kk, v)

    with torch.no_grad(), set_torch_threads(unit["threads"]), StealWatch() as steal:
        # Warm-up, long: kernel selection and the allocator, but mostly the machine itself. A
        # reading taken after the CPU idled (the run's start, after a slow single-threaded
        # row) ran 1.2-1.5x slower for its first tenths of a second than one taken straight
        # after a busy config on a quiet 2-core VM (woken vCPUs and OpenMP threads): without
        # this the start and end readings read as drift against every reading between them.
        t0 = clock()
        while clock() - t0 < WARMUP_S:
            step()
        # then timed like a row: blocks of >= 20 ms, the steady window of 6 (measure/timing.py)
        t = time_step(step, BUDGET_S, unit["threads"])
    return summarise([s * 1e3 for s in t.samples_s], spec, steal.share, t.iters_per_sample)


def summarise(samples_ms: list[float], spec: dict[str, Any], steal: float | None = None,
              number: int = 1) -> dict[str, Any]:
    med = statistics.median(samples_ms)
    q = statistics.quantiles(samples_ms, n=4, method="inclusive") if len(samples_ms) > 1 \
        else [med, med, med]
    return {"ms": med, "iqr_ms": q[2] - q[0],
            "mad_ms": statistics.median(abs(s - med) for s in samples_ms),
            "samples_ms": [round(s, 4) for s in samples_ms], "number": number,
            "steal_share": None if steal is None else round(steal, 4), "spec": spec}


# --- in the parent ------------------------------------------------------------------------

def drifted(reading: dict[str, Any], ref: dict[str, Any]) -> bool:
    """The drift rule of the module docstring, reading against the reference `ref`."""
    if reading.get("ms") is None or not ref.get("ms"):
        return False
    diff = abs(reading["ms"] - ref["ms"])
    return diff > DRIFT_LIMIT * ref["ms"] and diff > DRIFT_MADS * (ref.get("mad_ms") or 0.0)


def reference(readings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The reading the others are compared with: the (lower) median by ms of the readings
    with the latest one's workload (a resumed run with other threads starts a new series)."""
    if not readings:
        return None
    same = [r for r in readings if r.get("spec") == readings[-1].get("spec")]
    return sorted(same, key=lambda r: r["ms"])[(len(same) - 1) // 2]


class CanaryLog:
    """The readings of one run (earlier ones included when resumed); the median reading is the
    reference. Rows are tagged with `window`, the index of the last reading before them."""

    def __init__(self, readings: list[dict[str, Any]] | None = None):
        self.readings: list[dict[str, Any]] = list(readings or [])

    @property
    def window(self) -> int | None:
        return len(self.readings) - 1 if self.readings else None

    @property
    def ref(self) -> dict[str, Any] | None:
        return reference(self.readings)

    def add(self, reading: dict[str, Any], label: str, t_s: float) -> dict[str, Any]:
        """Record a reading; returns it with index, t_s, ratio to the reference so far, drift
        (provisional: `evaluate` decides with the whole run's reference)."""
        r = {"index": len(self.readings), "label": label, "t_s": round(t_s, 2),
             "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **reading}
        self.readings.append(r)
        self._judge(r, self.ref)
        return r

    def evaluate(self) -> None:
        """Judge every reading against the whole run's reference; a drifted reading whose
        confirming reading (taken right after it) did not drift is `transient`."""
        ref = self.ref
        for r in self.readings:
            self._judge(r, ref)
        for r, nxt in zip(self.readings, self.readings[1:], strict=False):
            if r["drift"] and nxt.get("label") == "confirm" and not nxt["drift"]:
                r["drift"], r["transient"] = False, True

    @staticmethod
    def _judge(r: dict[str, Any], ref: dict[str, Any]) -> None:
        r["transient"] = False
        if ref.get("spec") != r.get("spec"):  # e.g. resumed with other threads
            r["ratio"], r["drift"] = None, False
        else:
            r["ratio"] = round(r["ms"] / ref["ms"], 4) if ref.get("ms") else None
            r["drift"] = drifted(r, ref)

    def drift(self, i: int | None) -> bool:
        return i is not None and 0 <= i < len(self.readings) and bool(self.readings[i]["drift"])

    def row_drift(self, window: int | None) -> bool:
        """A row between readings `window` and `window + 1` drifted if either of them did."""
        return window is not None and (self.drift(window) or self.drift(window + 1))

    def note(self, window: int | None) -> str:
        """Why a row in `window` is marked drift: the drifted reading(s) next to it."""
        parts = [_reading_text(self.readings[i]) for i in (window, (window or 0) + 1)
                 if window is not None and self.drift(i)]
        return ("drift: the canary (a fixed matmul + SDPA) ran at " + " and ".join(parts)
                + " of its median reading next to this row (confirmed by a second reading): "
                + "the machine was "
                + ("slower" if any(self.readings[i]["ratio"] > 1 for i in (window, window + 1)
                                   if self.drift(i)) else "faster")
                + " than it typically was during the run") if parts else ""

    def summary(self) -> dict[str, Any]:
        """For run.json: the rule, the spec and the series (t_s, ms, IQR, ratio, drift)."""
        drifts = [r["index"] for r in self.readings if r["drift"]]
        transient = [r["index"] for r in self.readings if r.get("transient")]
        return {
            "workload": "torch.mm + scaled_dot_product_attention of fixed shapes (spec), "
                        f"{WARMUP_S:g} s untimed, then the median of a row's steady window "
                        "(blocks of >= 20 ms) per reading",
            "spec": self.ref.get("spec") if self.ref else None,
            "drift_rule": f"|median - reference| > {DRIFT_LIMIT:.0%} of the reference and > "
                          f"{DRIFT_MADS:g} MADs of its samples (reference: the run's median "
                          "reading), confirmed by a second reading taken at once (else the "
                          "reading is transient and marks no row)",
            "readings": len(self.readings),
            "drifted": drifts,
            "transient": transient,
            "series": [{"t_s": r["t_s"], "label": r["label"], "ms": round(r["ms"], 4),
                        "iqr_ms": round(r["iqr_ms"], 4), "ratio": r["ratio"],
                        "drift": r["drift"], "transient": bool(r.get("transient")),
                        "steal_share": r.get("steal_share")}
                       for r in self.readings],
        }


def _reading_text(r: dict[str, Any]) -> str:
    return f"{r['ratio']:.2f}x (reading {r['index']}, {r['t_s']:.0f} s into the run)"


# --- for the report and compare ------------------------------------------------------------

def canary_series(run_dir: Any, meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The canary readings of a run directory, as data: one dict per reading with t_s, label,
    ms, iqr_ms, mad_ms, ratio, drift, steal_share, spec. From canary.jsonl (complete even for
    an interrupted run), else from run.json's `canary.series`; [] for runs without a canary
    (recorded before it existed)."""
    from pathlib import Path

    from lsbench.sweep.store import read_canary

    readings = read_canary(Path(run_dir) / "canary.jsonl")
    if readings:
        return readings
    series = ((meta or {}).get("canary") or {}).get("series") or []
    spec = ((meta or {}).get("canary") or {}).get("spec")
    return [{**r, "spec": spec} for r in series if isinstance(r, dict) and r.get("ms")]


def describe(series: list[dict[str, Any]]) -> str:
    """One line for the report's trust details."""
    if not series:
        return ""
    ms = [r["ms"] for r in series]
    drift = [r for r in series if r.get("drift")]
    transient = [r for r in series if r.get("transient")]
    ref = reference(series)
    return (f"{len(series)} readings, {ref['ms']:.3g} ms reference, {min(ms):.3g}–"
            f"{max(ms):.3g} ms; " + (f"{len(drift)} drifted (the machine changed speed "
                                     "mid-run: rows next to them are marked drift)"
                                     if drift else "no drift")
            + (f"; {len(transient)} transient (a moment, not confirmed by the next reading)"
               if transient else ""))


# --- the sweep's side (lsbench.sweep.runner) ------------------------------------------------

class SweepCanary:
    """Takes readings through a sweep and marks the rows next to a drifted one.

    `run_unit(unit, timeout_s)` runs a unit in the worker (the executor's slot 0); `store` is
    the run's RunStore (canary.jsonl, and results.jsonl for rows a later reading marks)."""

    TIMEOUT_S = 300.0

    def __init__(self, run_unit, store, unit: dict[str, Any], started_at: str | None,
                 interval_s: float = CANARY_INTERVAL_S):
        from lsbench.sweep.store import read_canary

        self.run_unit, self.store, self.unit = run_unit, store, unit
        self.interval_s = interval_s
        self.log = CanaryLog(read_canary(store.canary))
        self._written = len(self.log.readings)  # readings already in canary.jsonl
        self._session_rows: set[str] = set()  # config ids of the rows this session measured
        self.errors: list[str] = []
        self._t0 = _epoch(started_at)
        self._last = -math.inf

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval_s

    def read(self, label: str) -> dict[str, Any] | None:
        """Take a reading now (START_READINGS of them for "start"; one that drifted from a
        reading that had not is followed by a confirming one); returns the last, None (and a
        note in `errors`) when the canary failed."""
        self._last = time.monotonic()
        reading, before = None, self.log.readings[-1] if self.log.readings else None
        for _ in range(START_READINGS if label == "start" else 1):
            reading = self._measure(label) or reading
        if reading is not None and reading["drift"] and label != "start" \
                and not (before and before["drift"]):  # a change, not a drift going on
            confirm = self._measure("confirm")
            if confirm is not None and not confirm["drift"]:
                reading["drift"], reading["transient"] = False, True
            reading = confirm or reading
        new = [r for r in self.log.readings if r["index"] >= self._written]
        for r in new:
            self.store.append_canary(r)
        self._written += len(new)
        self._last = time.monotonic()
        return reading

    def finish(self) -> int:
        """When the sweep ends (or stops): every reading judged against the whole run's
        reference (canary.jsonl rewritten), and every row this session measured marked
        `drift` or not by the readings around it (results.jsonl rewritten when a mark changes;
        rows of an earlier session of a resumed run keep theirs). Returns how many rows are
        marked."""
        if not self.log.readings:
            return 0
        self.log.evaluate()
        self.store.rewrite_canary(self.log.readings)
        changes = {}
        for r in self.store.rows:
            if r.get("status") != "ok" or r.get("canary_window") is None \
                    or r["config_id"] not in self._session_rows:
                continue
            drift = self.log.row_drift(r["canary_window"])
            reason = _strip_drift(r.get("reason"))
            if drift:
                reason = _join(reason, self.log.note(r["canary_window"]))
            if r.get("drift") is not drift or (r.get("reason") or "") != (reason or ""):
                changes[r["config_id"]] = {"drift": drift, "reason": reason or ""}
        self.store.update_rows(changes)
        return sum(bool(r.get("drift")) for r in self.store.rows)

    def _measure(self, label: str) -> dict[str, Any] | None:
        try:
            out = self.run_unit(self.unit, self.TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a canary never fails the sweep; a dead worker
            self.errors.append(f"canary reading skipped: {type(e).__name__}: {e}")  # is met
            return None  # by the next config, which says so
        if out.get("error") or out.get("ms") is None:
            self.errors.append(str(out.get("error") or out.get("reason") or "no result"))
            return None
        return self.log.add(out, label, time.time() - self._t0)

    def row_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        """`canary_window` for a row about to be appended, and `drift` None: decided by
        `finish` with the whole run's readings (also None for failed rows and for runs whose
        canary never gave a reading)."""
        self._session_rows.add(row.get("config_id"))
        return {"canary_window": self.log.window, "drift": None}

    def summary(self) -> dict[str, Any] | None:
        if not self.log.readings:
            return {"readings": 0, "errors": self.errors[:3]} if self.errors else None
        return {**self.log.summary(), **({"errors": self.errors[:3]} if self.errors else {})}


def _join(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


def _strip_drift(reason: str | None) -> str:
    """A row's reason without an earlier session's drift note (finish decides it again)."""
    return _join(*[p for p in (reason or "").split("; ") if not p.startswith("drift: the canary")])


def _epoch(iso: str | None) -> float:
    parsed = _parse_epoch(iso)
    return time.time() if parsed is None else parsed


def _parse_epoch(iso: Any) -> float | None:
    from datetime import datetime

    try:
        return datetime.strptime(str(iso), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def steal_points(rows: Any, started_at: str | None) -> list[tuple[float, float]]:
    """(seconds since the run started, steal share) per measured row with a known share, as
    data (rows: the run's results as a DataFrame); [] where no row recorded steal."""
    import pandas as pd

    if rows is None or rows.empty or "steal_share" not in rows or "measured_at" not in rows:
        return []
    t0 = _epoch(started_at)
    out = []
    for at, share in zip(rows["measured_at"], pd.to_numeric(rows["steal_share"],
                                                             errors="coerce"), strict=True):
        t = _parse_epoch(at)
        if pd.notna(share) and t is not None:
            out.append((t - t0, float(share)))
    return sorted(out)
