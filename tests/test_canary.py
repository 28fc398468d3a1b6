"""Issue 21: a machine that slows down from outside the guest (hypervisor steal, host throttling)
is seen by the canary and the steal share, and the rows measured then are marked."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.measure import canary, steal, timing
from lsbench.measure.canary import CanaryLog, drifted, summarise
from lsbench.measure.steal import read_cpu_jiffies, steal_share

SUITE = """
[model]
d_model = 16
n_heads = 2
n_layers = 1
[sweep]
variants = ["fastformer"]
seq_lens = [16, 32, 64, 128]
batch_sizes = [1]
modes = ["inference"]
[timing]
time_budget_s = 0.02
warmup = 1
timeout_s = 60
"""


def test_proc_stat_steal_is_the_8th_field(tmp_path):
    stat = tmp_path / "stat"
    #          user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 0 50 800 10 0 0 40 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    assert read_cpu_jiffies(stat) == (40, 1000)  # guest is already inside user
    stat.write_text("cpu  150 0 60 900 10 0 0 120 7 0\n")
    assert steal_share((40, 1000), read_cpu_jiffies(stat)) == pytest.approx(80 / 240)
    assert read_cpu_jiffies(tmp_path / "missing") is None  # not Linux: unknown, not 0
    assert steal_share(None, (1, 2)) is None
    assert steal_share((5, 100), (5, 100)) is None  # no tick passed


def test_stolen_cpu_flags_a_row_that_looked_served():
    steady = timing.summarise([1.0, 1.01, 0.99, 1.0], 1)
    served = timing.Contention(wall_s=2.0, cpu_s=3.96, involuntary_switches=10, threads=2)
    assert not served.flagged(steady)
    robbed = timing.Contention(2.0, 3.96, 10, 2, steal_share=0.12)
    assert robbed.flagged(steady)
    assert "hypervisor steal 12.0% of the CPU" in robbed.describe(steady)
    assert not timing.Contention(2.0, 3.96, 10, 2, steal_share=0.01).flagged(steady)


def test_drift_needs_10_percent_and_3_mads():
    ref = summarise([10.0, 10.1, 9.9, 10.0, 10.2, 9.8, 10.0], {})
    assert not drifted(summarise([10.8] * 7, {}), ref)  # 8%: within the noise limit
    assert drifted(summarise([11.5] * 7, {}), ref)
    wide = summarise([10.0, 7.0, 13.0, 10.0, 6.0, 14.0, 10.0], {})  # MAD 3 ms
    assert not drifted(summarise([15.0] * 7, {}), wide)  # 50% but < 3 MADs of its scatter
    log = CanaryLog()
    for ms in (10.0, 10.0, 15.0, 10.0):
        log.add(summarise([ms] * 7, {"x": 1}), "interval", 0.0)
    assert [r["drift"] for r in log.readings] == [False, False, True, False]
    # rows between readings 1 and 2 and between 2 and 3 were measured next to the drift
    assert [log.row_drift(w) for w in range(4)] == [False, True, True, False]
    assert "1.50x" in log.note(2)


class InProcess:
    """Runs units in this process, so the patched steal source and canary are the ones used."""

    def __init__(self, threads):
        self.threads = threads

    def run(self, unit, timeout_s):
        from lsbench.sweep import worker

        return worker.execute(unit)

    def close(self):
        pass


@pytest.fixture
def throttled(monkeypatch):
    """From the sixth canary reading on (three start readings, then one before each config),
    the machine runs 1.5x slower and 20% of the CPU is stolen (as /proc/stat would count it);
    before it, 0% steal. `state["slow_at"]` picks the readings that run slow."""
    state = {"readings": 0, "slow": False, "steal": 0, "total": 0,
             "slow_at": lambda n: n >= 6}

    def jiffies(path=None):
        state["total"] += 1000
        state["steal"] += 200 if state["slow"] else 0
        return state["steal"], state["total"]

    def measure(unit):
        state["readings"] += 1
        state["slow"] = state["slow_at"](state["readings"])
        base = 10.0 * (1.5 if state["slow"] else 1.0)
        spec = canary.spec_for(unit["device"], unit["dtype"], unit["threads"])
        return summarise([base * f for f in (0.99, 1.0, 1.01, 1.0, 0.995, 1.005, 1.0)], spec,
                         0.2 if state["slow"] else 0.0)

    monkeypatch.setattr(steal, "read_cpu_jiffies", jiffies)
    monkeypatch.setattr(timing, "read_cpu_jiffies", jiffies)
    monkeypatch.setattr(canary, "measure", measure)
    monkeypatch.setattr(canary, "CANARY_INTERVAL_S", 0.0)  # a reading before every config
    monkeypatch.setattr(timing, "QUIET_WAIT_S", 0.0)
    # only the simulated steal may flag a row here, not how busy this machine really is
    monkeypatch.setattr(timing, "MAX_SWITCH_RATE", float("inf"))
    monkeypatch.setattr(timing, "SLOW_BLOCK_FACTOR", float("inf"))
    monkeypatch.setattr("lsbench.sweep.executors.LocalExecutor", InProcess)
    return state


def test_a_throttled_sweep_drifts_the_canary_and_flags_its_rows(tmp_path, throttled):
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--suite", str(suite), "--threads", "1",
                                   "--out", str(out), "--report"])
    assert res.exit_code == 0, res.output
    readings = [json.loads(line) for line in (out / "canary.jsonl").read_text().splitlines()]
    # 3 at the start, one before each of the 4 configs (interval 0 s), and the end; a drifted
    # reading is confirmed by a second one at once
    assert [r["label"] for r in readings] == (["start"] * 3 + ["interval"] * 3 + ["confirm"]
                                              + ["interval", "end"])
    assert [r["drift"] for r in readings] == [False] * 5 + [True] * 4
    assert readings[5]["ratio"] == pytest.approx(1.5)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["seq_len"] for r in rows] == [16, 32, 64, 128]
    # row 1 ran before the machine slowed; row 2 just before the first slow reading (marked
    # afterwards, results.jsonl rewritten); rows 3-4 after it
    assert [r["drift"] for r in rows] == [False, True, True, True]
    assert all("drift: the canary" in r["reason"] for r in rows[1:])
    csv_text = (out / "results.csv").read_text()
    assert "drift" in csv_text.splitlines()[0]
    # the slow rows also lost 20% of the CPU to steal: contended and re-timed, as the OS says
    assert [r["steal_share"] for r in rows] == [0.0, 0.0, 0.2, 0.2]
    assert [r["contended"] for r in rows] == [False, False, True, True]
    assert rows[2]["retimed"] == timing.MAX_RETIMES
    assert "hypervisor steal 20.0% of the CPU" in rows[2]["contention"]
    info = json.loads((out / "run.json").read_text())
    assert info["canary"]["drifted"] == [5, 6, 7, 8]
    assert len(info["canary"]["series"]) == 9
    assert info["steal_share"] > 0.1
    text = " ".join(res.output.split())
    assert "the canary (fixed matmul + SDPA) ran 1.50x its median reading so far" in text
    assert "canary: 9 readings" in text and "4 drifted" in text
    assert "3 row(s) were measured while the canary" in text
    assert "§" in text  # the terminal table marks them
    html = (out / "report.html").read_text()
    assert "Canary" in html and (out / "plots" / "canary.svg").is_file()


def test_a_moment_of_slowness_is_transient_and_marks_no_row(tmp_path, throttled):
    # a quiet VM's speed dips for a moment (seen: 6 of 45 readings at 1.5x, each gone by the
    # next one): one slow reading, and the confirming reading right after it is back to normal
    throttled["slow_at"] = lambda n: n == 5
    suite = tmp_path / "s.toml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--suite", str(suite), "--threads", "1",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    readings = [json.loads(line) for line in (out / "canary.jsonl").read_text().splitlines()]
    assert [r["label"] for r in readings][4:6] == ["interval", "confirm"]
    assert readings[4]["transient"] and not readings[4]["drift"]
    assert not any(r["drift"] for r in readings)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert not any(r["drift"] for r in rows)
    info = json.loads((out / "run.json").read_text())
    assert info["canary"]["transient"] == [4] and info["canary"]["drifted"] == []
    assert "1 transient" in " ".join(res.output.split())


def test_the_reference_is_the_runs_median_reading_not_the_start():
    # two default runs back to back: the second began on a slow machine (its first 10 s ran
    # 1.36x slower) and was normal after; its first readings must not make the rest "drift"
    log = CanaryLog()
    for label, ms in [("start", 15.0), ("start", 15.2), ("start", 10.0), ("interval", 10.1),
                      ("interval", 10.0), ("interval", 9.9), ("end", 10.2)]:
        log.add(summarise([ms] * 6, {"x": 1}), label, 0.0)
    log.evaluate()
    assert log.ref["ms"] == 10.1
    assert [r["drift"] for r in log.readings] == [True, True] + [False] * 5
    assert log.readings[0]["ratio"] == pytest.approx(15 / 10.1, abs=1e-4)
    assert "slower than it typically was" in log.note(0)


def test_canary_series_reads_an_interrupted_run(tmp_path):
    from lsbench.measure.canary import canary_series
    from lsbench.sweep.store import RunStore

    store = RunStore(tmp_path)
    store.append_canary({"index": 0, "t_s": 0.5, "ms": 3.0, "iqr_ms": 0.1, "drift": False})
    with open(store.canary, "a") as f:
        f.write('{"index": 1, "t_s": 30.1, "ms": 3.')  # killed while writing
    store.append_canary({"index": 1, "t_s": 31.0, "ms": 3.1, "iqr_ms": 0.1, "drift": False})
    assert [r["ms"] for r in canary_series(tmp_path)] == [3.0, 3.1]
    assert canary_series(tmp_path / "none") == []
