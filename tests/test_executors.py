"""Executors (lsbench.sweep.executors): the concurrent scheduling of `runner.execute` with fake
slots (no torch in the slots, so the rules are checked exactly and fast), real spawned workers
in a two-slot pool, CLI checks, and `--executor ray` end to end with kill -9 + resume (slow:
it starts a local Ray instance; `.ci/run` installs the `ray` extra for it)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.sweep import grid
from lsbench.sweep.executors import EXECUTORS, Pool, check_executor, make_executor
from lsbench.sweep.runner import RunRequest, execute, plan_run
from lsbench.sweep.worker import LocalExecutor
from tests.procs import run_then_kill

cli = CliRunner()

PROBE = {"env": {"cpu_model": "fake cpu", "hostname": "h", "torch": "t", "python": "p"},
         "machine_peak": {"gflops": 10.0}, "free_mem_bytes": 8 * 2**30,
         "total_mem_bytes": 16 * 2**30, "memory_method": "fake", "rss_method": "fake",
         "cpu_load": [0.0, 0.0, 0.0], "threads": 1}


class FakeSlot:
    """Answers probes at once; a config sleeps a little and is ok, or oom from `oom_at`.
    Records which OOM groups were in flight together."""

    flying: dict = {}
    lock = threading.Lock()
    overlaps: list = []
    ran: list = []

    def __init__(self, oom_at: int = 10**9, delay: float = 0.02):
        self.oom_at, self.delay = oom_at, delay

    def run(self, unit, timeout_s):
        if unit["kind"] == "probe":
            return dict(PROBE)
        cfg = unit["config"]
        group = grid.oom_group(cfg)
        with self.lock:
            if self.flying.get(group):
                self.overlaps.append(group)
            self.flying[group] = self.flying.get(group, 0) + 1
            self.ran.append((cfg["variant"], cfg["seq_len"]))
        time.sleep(self.delay)
        with self.lock:
            self.flying[group] -= 1
        if cfg["seq_len"] >= self.oom_at:
            return {"status": "oom", "reason": "fake out of memory"}
        return {"status": "ok", "reason": "", "latency_ms": 1.0, "repeats": 3,
                "peak_mem_mib": 1.0}

    def close(self):
        pass


class Quiet:
    def status(self, message): pass
    def start(self, plan, todo): pass
    def config(self, config, index, total): pass
    def row(self, row): pass


def fresh_fakes():
    FakeSlot.flying, FakeSlot.overlaps, FakeSlot.ran = {}, [], []


def plan_for(tmp_path, **kw):
    req = RunRequest(suite="smoke", out=tmp_path / "run", threads=1,
                     seq_lens=[16, 32, 64, 128], **kw)
    return plan_run(req)


def test_pool_runs_every_config_once_and_a_group_in_length_order(tmp_path):
    fresh_fakes()
    plan = plan_for(tmp_path)
    pool = Pool("fake", [FakeSlot(oom_at=64), FakeSlot(oom_at=64), FakeSlot(oom_at=64)],
                ["a", "b", "c"])
    out = execute(plan, Quiet(), executor=pool)
    assert out.complete
    ids = [r["config_id"] for r in out.rows]
    assert len(ids) == len(set(ids)) == len(plan.configs)
    assert FakeSlot.overlaps == []  # never two configs of one OOM group at once
    assert {r["worker"] for r in out.rows if r["status"] != "skipped"} <= {"a", "b", "c"}
    assert len({r["worker"] for r in out.rows if r["status"] != "skipped"}) > 1
    for r in out.rows:  # oom at 64 in every group, so 128 is skipped without running
        want = {16: "ok", 32: "ok", 64: "oom", 128: "skipped"}[r["seq_len"]]
        assert r["status"] == want, r
    assert not any(n == 128 for _, n in FakeSlot.ran)
    info = json.loads((plan.run_dir / "run.json").read_text())
    assert info["executor"] == "fake" and info["workers"] == ["a", "b", "c"]


def test_pool_stop_waits_for_the_units_in_flight_then_resume_finishes(tmp_path):
    fresh_fakes()
    plan = plan_for(tmp_path)
    calls = {"n": 0}

    def stop_after_some():
        calls["n"] += 1
        return calls["n"] > 5

    pool = Pool("fake", [FakeSlot(), FakeSlot()], ["a", "b"])
    out = execute(plan, Quiet(), should_stop=stop_after_some, executor=pool)
    assert not out.complete and 0 < out.new_rows < len(plan.configs)
    assert out.new_rows == len(FakeSlot.ran)  # every unit started was recorded
    resumed = plan_run(RunRequest(resume=plan.run_dir))
    out2 = execute(resumed, Quiet(), executor=Pool("fake", [FakeSlot(), FakeSlot()],
                                                         ["a", "b"]))
    ids = [r["config_id"] for r in out2.rows]
    assert out2.complete and len(ids) == len(set(ids)) == len(plan.configs)


def test_pool_of_real_workers(tmp_path):
    plan = plan_for(tmp_path, variants=["sdpa", "linear"])
    pool = Pool("two", [LocalExecutor(1), LocalExecutor(1)], ["w0", "w1"])
    out = execute(plan, Quiet(), executor=pool)
    assert out.complete and {r["status"] for r in out.rows} == {"ok"}
    assert {r["worker"] for r in out.rows} == {"w0", "w1"}


def test_workers_on_different_devices_are_refused(tmp_path):
    class OtherCpu(FakeSlot):
        def run(self, unit, timeout_s):
            res = super().run(unit, timeout_s)
            if unit["kind"] == "probe":
                res["env"] = {**res["env"], "cpu_model": "another cpu"}
            return res

    from lsbench.errors import LsbenchError

    plan = plan_for(tmp_path)

    with pytest.raises(LsbenchError, match="different devices"):
        execute(plan, Quiet(), executor=Pool("fake", [FakeSlot(), OtherCpu()], ["a", "b"]))
    assert not (plan.run_dir / "run.json").exists()  # nothing written


def test_gpu_pool_probe_counts_the_gpus_the_run_uses():
    """Slot 0's worker sees one GPU (CUDA_VISIBLE_DEVICES); run.json's env.cuda.count is the
    number of GPUs the run uses, with what the worker saw kept apart."""

    class OneGpu(FakeSlot):
        def run(self, unit, timeout_s):
            res = super().run(unit, timeout_s)
            if unit["kind"] == "probe":
                res["env"] = {**res["env"], "cuda": {"name": "H200", "count": 1}}
            return res

    probe = {"kind": "probe", "device": "cuda"}
    pool = Pool("gpus", [OneGpu(), OneGpu(), OneGpu()], ["gpu 0", "gpu 1", "gpu 2"],
                gpu_slots=True)
    cuda = pool.run(probe, 5)["env"]["cuda"]
    assert (cuda["count"], cuda["count_in_worker"], cuda["name"]) == (3, 1, "H200")
    assert cuda["workers"] == ["gpu 0", "gpu 1", "gpu 2"]
    assert Pool("local", [OneGpu()], ["local"]).run(probe, 5)["env"]["cuda"]["count"] == 1


def test_gpu_workers_start_in_parallel_each_with_its_gpu(monkeypatch):
    """Only the spawn holds the environment lock; the wait for each worker's hello (imports,
    CUDA init: up to minutes) does not, so N GPUs' workers start in about one start-up."""
    import os

    from lsbench.sweep import worker
    from lsbench.sweep.executors import EnvLocalExecutor

    seen = []

    class Hello:
        def poll(self, timeout):
            time.sleep(0.6)  # a slow start-up
            return True

        def recv(self):
            return {"ready": True}

    def spawn(self):
        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        return Hello(), object()

    monkeypatch.setattr(worker.LocalExecutor, "_spawn", spawn)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = [EnvLocalExecutor(1, {"CUDA_VISIBLE_DEVICES": g}, f"gpu {g}") for g in "0123"]
    threads = [threading.Thread(target=s._start) for s in slots]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 < 1.8, "worker start-ups were serialised"
    assert sorted(seen) == ["0", "1", "2", "3"]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # restored after each spawn


@pytest.mark.parametrize("args, needle", [
    (["--executor", "rya"], "Did you mean 'ray'"),
    (["--executor", "local", "--workers", "2"], "--workers is for --executor ray"),
    (["--executor", "gpus", "--device", "cpu"], "needs --device cuda"),
    (["--executor", "ray", "--workers", "0"], "must be >= 1"),
])
def test_bad_executor_input(tmp_path, args, needle):
    out = tmp_path / "run"
    result = cli.invoke(app, ["run", "--suite", "smoke", "--out", str(out), *args])
    assert result.exit_code == 1, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_executor_names():
    assert EXECUTORS == ("local", "gpus", "ray")
    check_executor("local", None)
    assert make_executor("local", 1, "cpu").slots == 1


@pytest.mark.slow
def test_ray_sweep_kill_9_then_resume(tmp_path):
    """`--executor ray` on a local Ray instance: kill -9 of the parent mid-sweep loses nothing
    recorded, and --resume (under ray again) finishes with every config exactly once."""
    import ray  # fails (not skips) without the `ray` extra: .ci/run installs it

    out = tmp_path / "run"
    jsonl = out / "results.jsonl"
    args = ["run", "--suite", "smoke", "--seq-lens", "16,32,64,128", "--out", str(out),
            "--threads", "1", "--executor", "ray"]
    # the parent only: nothing Ray still runs may write after it
    pid = run_then_kill(args, jsonl, rows=4, timeout_s=300, group=False)
    time.sleep(3)
    first = jsonl.read_text()
    assert 4 <= len(first.splitlines()) < 24
    result = cli.invoke(app, ["run", "--out", str(out), "--resume", "--executor", "ray"])
    assert result.exit_code == 0, result.output
    text = jsonl.read_text()
    assert text.startswith(first)
    rows = [json.loads(line) for line in text.splitlines()]
    ids = [r["config_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 3 * 4 * 2
    assert all(r["worker"].startswith("ray ") for r in rows if r["status"] != "skipped")
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["resumes"][-1]["executor"] == "ray"
    ray.shutdown()  # the resume above ran in this process and started Ray here
    try:
        os.killpg(pid, signal.SIGKILL)  # what the killed run's Ray left behind
    except ProcessLookupError:
        pass
