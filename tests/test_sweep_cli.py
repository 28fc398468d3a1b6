"""`lsbench run` end to end: smoke suite, fault injection, kill + resume, bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.sweep import plugins
from lsbench.sweep.store import COLUMNS, STATUSES
from tests.procs import run_then_kill

runner = CliRunner()

FAULTS = '''
import os, signal, time
import torch
from torch import nn
from lsbench.variants.base import Variant


class Boom(Variant):
    name = "test_boom"

    def forward(self, x, mask=None):
        raise ValueError("injected failure")


class Hog(Variant):
    """Fine at N=16; from N=32 asks the allocator for 32 TiB (a real CPU out-of-memory)."""
    name = "test_hog"

    def __init__(self, d_model, n_heads, causal=False, **params):
        super().__init__(d_model, n_heads, causal, **params)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        if x.shape[1] >= 32:
            torch.empty(2**45, dtype=torch.uint8)
        return self.proj(x)


class Huge(Variant):
    """Predicts far more memory than any budget: must be skipped before running."""
    name = "test_huge"

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params):
        return 1e9 * seq_len

    def forward(self, x, mask=None):
        raise AssertionError("test_huge must never run")


class Sleepy(Variant):
    """Hangs at N=16 only."""
    name = "test_sleepy"

    def forward(self, x, mask=None):
        if x.shape[1] == 16:
            time.sleep(3600)
        return x


class Killed(Variant):
    """Its worker dies of SIGKILL at N=16 only."""
    name = "test_sigkill"

    def forward(self, x, mask=None):
        if x.shape[1] == 16:
            os.kill(os.getpid(), signal.SIGKILL)
        return x
'''

SUITE = """
[model]
d_model = 16
n_heads = 2
[sweep]
variants = {variants}
seq_lens = {seq_lens}
batch_sizes = [1]
modes = ["inference"]
[timing]
time_budget_s = 0.02
warmup = 1
timeout_s = 60
"""


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """Register the fault-injection variants (here and in workers); unregister afterwards."""
    from lsbench.variants import REGISTRY

    path = tmp_path / "faults.py"
    path.write_text(FAULTS)
    monkeypatch.setenv(plugins.ENV_VAR, str(path))
    before = dict(REGISTRY)
    yield path
    REGISTRY.clear()
    REGISTRY.update(before)
    plugins._loaded.discard(str(path))


def suite_file(tmp_path, variants, seq_lens):
    p = tmp_path / "suite.toml"
    p.write_text(SUITE.format(variants=json.dumps(variants), seq_lens=json.dumps(seq_lens)))
    return str(p)


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def by(rows, variant, n):
    [row] = [r for r in rows if r["variant"] == variant and r["seq_len"] == n]
    return row


def digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())
            if p.is_file()}


# --- the smoke suite end to end ------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    result = runner.invoke(app, ["run", "--suite", "smoke", "--out", str(out), "--threads", "1"])
    return out, result


def test_smoke_end_to_end(smoke_run):
    out, result = smoke_run
    assert result.exit_code == 0, result.output
    for name in ("run.json", "results.jsonl", "results.csv"):
        assert (out / name).is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "run" and info["suite"] == "smoke" and info["finished_at"]
    assert info["machine_peak_gflops"] > 0 and info["threads"] == 1
    assert info["device"] == "cpu" and info["env"]["torch"]
    assert info["matmul_precision_in_force"] == info["matmul_precision"] == "highest"
    rows = rows_of(out)
    assert len(rows) == 18 and len({r["config_id"] for r in rows}) == 18
    for r in rows:
        assert set(COLUMNS) <= set(r)
        assert r["status"] in STATUSES
        assert r["status"] == "ok", r
        assert r["latency_ms"] > 0 and r["peak_mem_mib"] > 0 and r["repeats"] >= 1
        assert r["latency_ms_ci_low"] <= r["latency_ms"] <= r["latency_ms_ci_high"]
        assert 0 < r["pct_of_peak"] and r["tokens_per_s"] > 0
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:len(COLUMNS)] == COLUMNS and len(csv_lines) == 19
    assert "median latency" in result.output and "results.jsonl" in result.output


def test_smoke_run_records_the_canary_and_steal(smoke_run):
    out, result = smoke_run
    readings = [json.loads(x) for x in (out / "canary.jsonl").read_text().splitlines()]
    labels = [r["label"] for r in readings]
    # three start readings; the last is the end reading, or the one confirming it (taken at once
    # when the end reading was 10% off the run's median, which a real machine may be)
    assert labels[:3] == ["start"] * 3
    assert [x for x in labels if x != "confirm"][-1] == "end" and labels[-2:] != ["confirm"] * 2
    assert all(r["ms"] > 0 and r["spec"]["threads"] == 1 for r in readings)
    info = json.loads((out / "run.json").read_text())
    assert len(info["canary"]["series"]) == len(readings)
    assert "steal_share" in info  # None off Linux
    rows = rows_of(out)
    assert all("steal_share" in r and "drift" in r for r in rows)
    if sys.platform.startswith("linux"):
        assert any(r["steal_share"] is not None for r in rows if r["status"] == "ok")
    assert "canary: " in " ".join(result.output.split())


def test_resume_of_a_complete_run_adds_nothing(smoke_run):
    out, _ = smoke_run
    before = (out / "results.jsonl").read_bytes()
    result = runner.invoke(app, ["run", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "results.jsonl").read_bytes() == before


def test_resume_on_another_machine_needs_force(smoke_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(smoke_run[0], out)
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text("".join(lines[:-1]))  # one config left to measure
    info = json.loads((out / "run.json").read_text())
    info["env"]["hostname"] = "some-other-host"
    (out / "run.json").write_text(json.dumps(info))
    before = digest(out)
    result = runner.invoke(app, ["run", "--resume", str(out)])
    assert result.exit_code == 1
    assert "--force" in result.output and "some-other-host" in result.output
    assert digest(out) == before


# --- failures are rows ----------------------------------------------------------------------

def test_faults_become_rows_and_the_sweep_continues(tmp_path, faults):
    out = tmp_path / "run"
    names = ["test_boom", "test_hog", "test_huge", "test_sleepy", "test_sigkill", "transformer"]
    s = suite_file(tmp_path, names, [16, 32, 64])
    t0 = time.monotonic()
    result = runner.invoke(app, ["run", "--suite", s, "--out", str(out), "--threads", "1",
                                 "--mem-budget", "256MiB", "--timeout", "20"])
    assert result.exit_code == 0, result.output
    rows = rows_of(out)
    assert len(rows) == 18, rows
    boom = by(rows, "test_boom", 16)
    assert boom["status"] == "error" and "injected failure" in boom["reason"]
    assert by(rows, "test_hog", 16)["status"] == "ok"
    assert by(rows, "test_hog", 32)["status"] == "oom"
    hog64 = by(rows, "test_hog", 64)
    assert hog64["status"] == "skipped" and "N=32" in hog64["reason"]
    sleepy = by(rows, "test_sleepy", 16)
    assert sleepy["status"] == "timeout" and "20 s" in sleepy["reason"]
    killed = by(rows, "test_sigkill", 16)
    assert killed["status"] == "error" and "SIGKILL" in killed["reason"]
    for n in (16, 32, 64):
        huge = by(rows, "test_huge", n)
        assert huge["status"] == "skipped" and "predicted" in huge["reason"]
        assert huge["predicted_mem_mib"] > 256 and huge["latency_ms"] is None
        assert by(rows, "transformer", n)["status"] == "ok"  # the sweep went on after each
    for n in (32, 64):
        later = by(rows, "test_sleepy", n)  # would only time out slower
        assert later["status"] == "skipped" and "timed out" in later["reason"]
        assert by(rows, "test_sigkill", n)["status"] == "ok"  # a fresh worker after the kill
    # the hour-long sleep was cut at its timeout: nowhere near an hour, on any machine
    assert time.monotonic() - t0 < 900


# --- kill the whole run, then resume ---------------------------------------------------------

def test_sigkill_mid_sweep_then_resume(tmp_path):
    out = tmp_path / "run"
    jsonl = out / "results.jsonl"
    run_then_kill(["run", "--suite", "smoke", "--seq-lens", "16,32,64,128", "--out", str(out),
                   "--threads", "1"], jsonl, rows=4, timeout_s=120)  # the parent and its worker
    first = jsonl.read_text()
    n_first = len(first.splitlines())
    assert 4 <= n_first < 24
    with open(jsonl, "a") as f:  # as if killed in the middle of writing a row
        f.write('{"variant": "transformer", "mode": "infer')
    info = json.loads((out / "run.json").read_text())
    assert info["finished_at"] is None

    result = runner.invoke(app, ["run", "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    text = jsonl.read_text()
    assert text.startswith(first)  # measured rows untouched
    rows = [json.loads(line) for line in text.splitlines()]  # every line valid JSON again
    ids = [r["config_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 3 * 4 * 2  # nothing missing, nothing twice
    info = json.loads((out / "run.json").read_text())
    assert info["finished_at"] and info["status"] == "complete" and len(info["resumes"]) == 1
    assert len((out / "results.csv").read_text().splitlines()) == 1 + len(rows)


# --- bad inputs: one clear line, exit 1, nothing damaged ----------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--suite", "smoke", "--variants", "transfomer"], "Did you mean 'transformer'"),
    (["--suite", "smoke", "--seq-lens", "0,128"], "not positive"),
    (["--suite", "smoke", "--seq-lens", "12a"], "not an integer"),
    (["--suite", "smoke", "--batch-sizes", "-2"], "not positive"),
    (["--suite", "smoke", "--mode", "trainig"], "Did you mean 'training'"),
    (["--suite", "smoke", "--dtype", "float16", "--device", "cpu"], "float16"),
    (["--suite", "smoke", "--dtype", "float8"], "unknown dtype"),
    (["--suite", "smoke", "--mem-budget", "12XB"], "--mem-budget"),
    (["--suite", "smoke", "--timeout", "0"], "--timeout"),
    (["some/dir"], "only for --resume"),
])
def test_bad_input_exits_1_with_message(tmp_path, args, needle):
    result = runner.invoke(app, ["run", *args, "--out", str(tmp_path / "never")])
    assert result.exit_code == 1, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "never").exists()


def test_cuda_request_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = runner.invoke(app, ["run", "--suite", "smoke", "--device", "cuda",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "CUDA is not available" in result.output
    assert "--device cpu" in result.output


def test_unknown_suite_key_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(textwrap.dedent("""
        [sweep]
        variants = ["transformer"]
        seq_lens = [16]
        modez = ["inference"]
    """))
    result = runner.invoke(app, ["run", "--suite", str(p)])
    assert result.exit_code == 1
    assert "bad.toml" in result.output and "Did you mean 'modes'" in result.output


@pytest.mark.parametrize("damage", ["missing", "no_run_json", "corrupt_run_json", "wrong_kind"])
def test_bad_resume_directory_changes_nothing(tmp_path, damage):
    d = tmp_path / "run"
    if damage != "missing":
        d.mkdir()
        (d / "results.jsonl").write_text('{"config_id": "a"}\n')
        if damage == "corrupt_run_json":
            (d / "run.json").write_text('{"kind": "run", ')
        if damage == "wrong_kind":
            (d / "run.json").write_text('{"kind": "extrapolate"}')
    before = digest(d) if d.exists() else None
    result = runner.invoke(app, ["run", "--resume", str(d)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--resume" in result.output or "run.json" in result.output
    assert (digest(d) if d.exists() else None) == before


def test_resume_refuses_grid_changes(smoke_run):
    out, _ = smoke_run
    result = runner.invoke(app, ["run", "--resume", str(out), "--seq-lens", "128"])
    assert result.exit_code == 1 and "--seq-lens" in result.output


def test_new_run_into_existing_run_dir_refused(smoke_run):
    out, _ = smoke_run
    before = digest(out)
    result = runner.invoke(app, ["run", "--suite", "smoke", "--out", str(out)])
    assert result.exit_code == 1 and "--resume" in result.output
    assert digest(out) == before


def test_help_documents_plugins_and_resume():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    assert "LSBENCH_PLUGINS" in result.output and "--resume" in result.output


@pytest.mark.slow
def test_ctrl_c_stops_after_the_current_config(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "from lsbench.cli import app; app()", "run", "--suite", "smoke",
           "--seq-lens", "16,32,64,128", "--out", str(out), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    jsonl = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            jsonl.exists() and len(jsonl.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: parent and worker
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert f"lsbench run --resume {out}" in output.replace("\n", "")
    rows = rows_of(out)  # every line complete JSON
    assert 2 <= len(rows) < 24
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and info["finished_at"] is None
