"""Per-row contention: rows timed while another process took the CPU are flagged and re-timed;
rows with too few samples are never called steady."""

from __future__ import annotations

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
        calls["n"] += 1
        if out.get("machine_peak") and calls["n"] > 1:  # the end-of-run re-check
            out["machine_peak"]["gflops"] *= 0.5
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
    assert "2 row(s) were timed while another process took the CPU" in text  # B=1 and B=8
    assert "│ !0." in text  # the latency cell carries the mark
