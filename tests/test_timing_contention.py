"""Per-row contention: rows timed while another process took the CPU are flagged and re-timed;
rows with too few samples are never called steady."""

from __future__ import annotations

import re
import time

import pytest

from lsbench.measure import timing
from lsbench.measure.timing import Contention, summarise


def test_few_samples_leave_noisy_unknown():
    assert summarise([1.0, 1.0], 1).noisy is None
    assert summarise([1.0, 1.0, 1.0], 1).noisy is False
    assert summarise([1.0, 2.0, 3.0], 1).noisy is True


def test_preemption_or_a_slow_block_flags_the_row():
    steady = summarise([1.0, 1.01, 0.99, 1.0], 1)
    quiet = Contention(wall_s=2.0, cpu_s=3.9, involuntary_switches=10, threads=2)
    busy = Contention(wall_s=2.0, cpu_s=1.1, involuntary_switches=600, threads=2)
    assert not quiet.flagged(steady) and busy.flagged(steady)
    assert "300 involuntary context switches/s" in busy.describe(steady)
    spiky = summarise([1.0, 1.0, 1.0, 5.0], 1)
    assert quiet.flagged(spiky)  # one block 5x the median: something else ran
    # one busy thread of two on a quiet machine (an op too small to parallelise) is not contention
    single = Contention(wall_s=2.0, cpu_s=2.0, involuntary_switches=4, threads=2)
    assert not single.flagged(steady)
    # many switches while the threads still got ~all their CPU (seen on a quiet 2-core VM)
    served = Contention(wall_s=2.0, cpu_s=3.96, involuntary_switches=330, threads=2)
    assert not served.flagged(steady)


def test_a_contended_row_is_timed_again_and_the_least_contended_kept(monkeypatch):
    rates = iter([900, 300, 500])
    monkeypatch.setattr(timing, "QUIET_WAIT_S", 0.0)

    class FakeUsage:
        def __init__(self, threads):
            self.threads = threads

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.result = Contention(1.0, 0.5, next(rates), self.threads)

    monkeypatch.setattr(timing, "_Usage", FakeUsage)
    monkeypatch.setattr(timing, "time_step", lambda *a, **k: summarise([1.0, 1.0, 1.0], 1))
    t = timing.time_step_checked(lambda: None, 0.1, 1)
    assert t.contended and t.retimed == timing.MAX_RETIMES
    assert t.contention.involuntary_switches == 300


def test_a_quiet_row_is_timed_once(monkeypatch):
    t = timing.time_step_checked(lambda: sum(range(1000)), 0.05, 1)
    assert t.contention is not None and t.contention.wall_s > 0 and t.retimed in (0, 1, 2)


def test_a_falling_matmul_peak_warns_in_run_json_and_the_report(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    from lsbench.cli import app
    from lsbench.sweep import worker

    real_probe = worker.probe
    calls = {"n": 0}

    def probe(unit):
        out = real_probe(unit)
        if out.get("machine_peak"):  # fixed readings: a busy machine's own drift is not tested
            calls["n"] += 1
            out["machine_peak"]["gflops"] = 100.0 if calls["n"] == 1 else 50.0  # the re-check
        return out

    monkeypatch.setattr(worker, "probe", probe)
    monkeypatch.setattr("lsbench.sweep.executors.LocalExecutor", InProcess)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--variants", "fastformer", "--seq-lens", "16",
                                   "--mode", "inference", "--threads", "1", "--out", str(out),
                                   "--report"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert info["machine_peak_end_gflops"] < info["machine_peak_gflops"]
    assert any("matmul peak fell" in w for w in info["warnings"])
    assert "matmul peak fell" in (out / "report.html").read_text()


class InProcess:
    """Runs units in this process (so the monkeypatched probe is the one used)."""

    def __init__(self, threads):
        self.threads = threads

    def run(self, unit, timeout_s):
        from lsbench.sweep import worker

        return worker.execute(unit)

    def close(self):
        pass


def test_contended_rows_are_marked_and_warned_in_the_terminal(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lsbench.cli import app

    def always_busy(threads):
        class Busy:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.result = Contention(1.0, 0.6, 400, threads)
        return Busy()

    monkeypatch.setattr(timing, "_Usage", always_busy)
    monkeypatch.setattr(timing, "QUIET_WAIT_S", 0.0)
    monkeypatch.setattr("lsbench.sweep.executors.LocalExecutor", InProcess)
    res = CliRunner().invoke(app, ["run", "--variants", "fastformer", "--seq-lens", "16",
                                   "--mode", "inference", "--threads", "1",
                                   "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps the warning
    assert "2 row(s) were timed while another process (or a slow host) took the CPU" in text
    # the latency cell carries the mark, whatever this CPU's speed makes of the number
    assert re.search(r"│ ![^│ ]*[0-9]", text), text  # other marks (~ noisy, § drift) may follow


def test_other_processes_busy_on_our_cores_flag_the_row():
    steady = summarise([1.0, 1.01, 0.99, 1.0], 1)
    # spinning OpenMP threads look served (CPU 0.99, few switches) while a peer is descheduled
    crowded = Contention(2.0, 3.96, 10, 2, others_cpu_s=2.0, cores=2)
    assert crowded.flagged(steady) and "busy on 1.0 of 2 cores" in crowded.describe(steady)
    quiet = Contention(2.0, 3.96, 10, 2, others_cpu_s=0.05, cores=2)  # kernel threads, parent
    assert not quiet.flagged(steady)
    # one thread on two cores leaves a core free for the others
    assert not Contention(2.0, 1.98, 10, 1, others_cpu_s=2.0, cores=2).flagged(steady)


def test_busy_cpu_seconds_read_from_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  9 9 9 9 9 9 9 9 0 0\n"
                    "cpu0 100 0 50 1000 0 0 0 10 0 0\ncpu1 200 0 0 1000 5 0 0 0 0 0\n")
    monkeypatch.setattr(timing, "_cpus", lambda: {0, 1})
    monkeypatch.setattr(timing, "_TICK_S", 0.01)
    assert abs(timing.busy_cpu_s(str(stat)) - 3.6) < 1e-9  # idle and iowait left out
    assert timing.busy_cpu_s(str(tmp_path / "missing")) is None


def test_every_attempt_contended_retimes_with_one_thread(monkeypatch):
    monkeypatch.setattr(timing, "QUIET_WAIT_S", 0.0)

    class Crowded:
        def __init__(self, threads):
            self.threads = threads

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.result = Contention(1.0, 2.0, 10, self.threads, others_cpu_s=1.5, cores=2)

    def fake_time_step(step, budget_s, threads, step_s=None):
        t = summarise([0.2, 0.2, 0.2] if threads == 1 else [3.0, 3.0, 3.0], 1)
        t.threads = threads
        return t

    monkeypatch.setattr(timing, "_Usage", Crowded)
    monkeypatch.setattr(timing, "time_step", fake_time_step)
    t = timing.time_step_checked(lambda: None, 0.1, 2)
    assert t.threads == 1 and t.median_s == 0.2 and t.one_thread_retime and t.contended
    assert t.retimed == timing.MAX_RETIMES + 1


def test_short_steps_are_timed_in_blocks_of_at_least_20_ms():
    # a sleep never ends early, on any CPU and under any load: blocks can only come out longer
    t = timing.time_step(lambda: time.sleep(0.002), budget_s=0.2, threads=1, step_s=0.002)
    assert 2 <= t.iters_per_sample <= 10
    assert min(t.samples_s) * t.iters_per_sample >= timing.BLOCK_S / 2
    slow = timing.time_step(lambda: time.sleep(0.05), budget_s=0.1, threads=1, step_s=0.05)
    assert slow.iters_per_sample == 1  # a step of 2+ blocks is one call per block
    # a warm-up that overstated the step (first-call costs) does not make 1-call blocks
    fast = timing.time_step(lambda: time.sleep(0.002), budget_s=0.1, threads=1, step_s=0.5)
    assert fast.iters_per_sample > 1


def test_freed_memory_setting_is_recorded_and_the_heap_can_be_trimmed():
    from lsbench.measure import memory

    before = memory.allocator_setting()
    assert before  # e.g. "glibc 2.36 malloc defaults"
    memory.trim_heap()  # never fails, whatever the allocator


def _scripted_blocks(monkeypatch, blocks):
    """time_step with `_time_block` returning `blocks` (seconds per 1-call block) in order."""
    it = iter(blocks)
    monkeypatch.setattr(timing, "_block_size", lambda step, threads, step_s: (1, 0.02))
    monkeypatch.setattr(timing, "_time_block", lambda step, number, threads: next(it))


def test_a_disturbed_start_is_dropped_and_the_steady_window_kept(monkeypatch):
    # a VM's speed wanders for a few tenths of a second: slow blocks, then a steady stretch (a
    # window of 6 with one outlier is steady already: the IQR ignores it)
    _scripted_blocks(monkeypatch, [0.04, 0.03, 0.035, 0.020, 0.021, 0.020, 0.0205, 0.0202, 1.0])
    t = timing.time_step(lambda: None, budget_s=0.2, threads=1)
    assert t.unsteady_blocks == 2 and t.repeats == timing.CI_SAMPLES and not t.noisy
    assert 0.020 <= t.median_s <= 0.021 and 0.04 not in t.samples_s


def test_a_row_that_never_steadies_keeps_every_block_and_is_noisy(monkeypatch):
    blocks = [0.02, 0.04] * 50
    _scripted_blocks(monkeypatch, blocks)
    t = timing.time_step(lambda: None, budget_s=0.2, threads=1)
    assert t.unsteady_blocks == 0 and t.noisy
    # a short step looks for a steady window for UNSTEADY_STRETCH budgets, no longer
    assert 0.2 < sum(t.samples_s) <= timing.UNSTEADY_STRETCH * 0.2 + max(blocks)


def test_a_steady_row_stops_at_the_first_window(monkeypatch):
    _scripted_blocks(monkeypatch, [0.02] * 6 + [RuntimeError] * 10)
    t = timing.time_step(lambda: None, budget_s=0.2, threads=1)
    assert t.repeats == timing.CI_SAMPLES and t.unsteady_blocks == 0 and t.median_s == 0.02


class _FakeProbe:
    """A speed probe whose blocks take `times` (s per call) in order; typical 1.0."""

    def __init__(self, times):
        self.times = iter(times)

    def typical(self, threads):
        return 1.0

    def read(self, threads):
        return next(self.times)


def test_a_row_timed_while_the_host_ran_slow_is_contended_and_timed_again(monkeypatch):
    # no steal, no other process, steady blocks: only the speed probe sees the slow host
    monkeypatch.setattr(timing, "QUIET_WAIT_S", 0.0)
    monkeypatch.setattr(timing, "MAX_SWITCH_RATE", float("inf"))
    monkeypatch.setattr(timing, "CROWD_CORES", float("inf"))
    probe = _FakeProbe([1.5, 1.6, 1.0, 1.05])
    monkeypatch.setattr(timing, "speed_probe", lambda: probe)
    medians = iter([1.5, 1.0])
    monkeypatch.setattr(timing, "time_step",
                        lambda *a, **k: summarise([next(medians)] * 6, 1))
    t = timing.time_step_checked(lambda: None, 0.1, 2)
    assert t.retimed == 1 and t.median_s == 1.0 and not t.contended
    assert t.contention.speed_ratio == pytest.approx(1.025)


def test_a_host_slow_on_every_attempt_is_not_retimed_with_one_thread(monkeypatch):
    monkeypatch.setattr(timing, "QUIET_WAIT_S", 0.0)
    monkeypatch.setattr(timing, "MAX_SWITCH_RATE", float("inf"))
    monkeypatch.setattr(timing, "CROWD_CORES", float("inf"))
    probe = _FakeProbe([1.5] * 20)
    monkeypatch.setattr(timing, "speed_probe", lambda: probe)
    monkeypatch.setattr(timing, "time_step", lambda *a, **k: summarise([1.5] * 6, 1))
    t = timing.time_step_checked(lambda: None, 0.1, 2)
    assert t.contended and t.retimed == timing.MAX_RETIMES and not t.one_thread_retime
    assert "1.50x its typical time (speed probe)" in t.contention.describe(t)
    assert not Contention(1.0, 2.0, 0, 2, speed_ratio=1.2).slow_machine  # within the wander


def test_a_machine_that_stays_busy_stops_paying_for_retimes(monkeypatch):
    monkeypatch.setattr(timing, "QUIET_WAIT_S", 0.0)
    state = {"busy": True, "attempts": 0}

    class Usage:
        def __init__(self, threads):
            self.threads = threads

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            others = 1.5 if state["busy"] else 0.0  # a busy loop on one of 2 cores, or none
            self.result = Contention(1.0, 2.0, 10, self.threads, others_cpu_s=others, cores=2)

    def fake_time_step(step, budget_s, threads, step_s=None):
        state["attempts"] += 1
        return summarise([0.2] * 6, 1)

    monkeypatch.setattr(timing, "_Usage", Usage)
    monkeypatch.setattr(timing, "time_step", fake_time_step)
    counts = []
    for _ in range(timing.PERSISTENT_ROWS + 2):
        state["attempts"] = 0
        t = timing.time_step_checked(lambda: None, 0.1, 2)
        counts.append(state["attempts"])
        assert t.contended and t.one_thread_retime
    # retimes with 2 threads while the machine might be quiet again, then one attempt + the
    # one-thread re-time per row
    assert counts == [timing.MAX_RETIMES + 2] * timing.PERSISTENT_ROWS + [2, 2]
    state["busy"] = False  # the first quiet row ends it
    state["attempts"] = 0
    assert not timing.time_step_checked(lambda: None, 0.1, 2).contended
    assert timing.BUSY_STREAK[0] == 0 and state["attempts"] == 1
