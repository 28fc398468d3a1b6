"""`lsbench compare RUN_A RUN_B` on synthetic runs with known changes."""

from __future__ import annotations

import json
import math

import pytest
from synthetic_runs import model_rows, write_extrapolation_run, write_latency_run
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.errors import LsbenchError
from lsbench.report.compare import compare_runs, parse_percent

runner = CliRunner()
VARIANTS = ["transformer", "linear", "fastformer"]
LENS = [256, 512, 1024, 2048]
SLOW = ("linear", "inference", 1024)  # the config made 2x slower in run B


def _rows(**kw):
    return model_rows(VARIANTS, LENS, modes=("inference", "training"), **kw)


def _scale(rows, key, factor, fields=("latency_ms", "latency_ms_ci_low", "latency_ms_ci_high")):
    for r in rows:
        if (r["variant"], r["mode"], r["seq_len"]) == key:
            for f in fields:
                r[f] *= factor
    return rows


@pytest.fixture
def runs(tmp_path):
    a = write_latency_run(tmp_path / "a", _rows())
    b_rows = _scale(_rows(), SLOW, 2.0)
    # Within noise: 3% slower but the confidence intervals (±10%) overlap.
    for r in b_rows:
        if r["variant"] == "fastformer" and r["status"] == "ok":
            r["latency_ms_ci_low"] = r["latency_ms"] * 0.9
            r["latency_ms_ci_high"] = r["latency_ms"] * 1.1 * 1.03
            r["latency_ms"] *= 1.03
    b = write_latency_run(tmp_path / "b", b_rows)
    return a, b


def test_finds_exactly_the_2x_regression(runs):
    a, b = runs
    cmp = compare_runs(a, b)
    bad = cmp.regressions(0.05)
    assert len(bad) == 1
    row = bad.iloc[0]
    assert (row["variant"], row["mode"], row["seq_len"]) == SLOW
    assert row["latency_ratio"] == pytest.approx(2.0)
    assert row["latency_significant"]
    assert cmp.table.iloc[0]["config_id"] == row["config_id"]  # worst first
    fast = cmp.table[cmp.table["variant"] == "fastformer"]
    assert (fast["latency_ratio"].dropna() > 1.02).all()
    assert not fast["latency_significant"].any()  # overlapping intervals: not significant
    assert cmp.counts()["slower"] == 1


def test_cli_exit_2_above_threshold(runs):
    a, b = runs
    res = runner.invoke(app, ["compare", str(a), str(b), "--fail-above", "5%"])
    assert res.exit_code == 2, res.output
    assert "1 significant regression(s) above 5.0%" in res.output
    assert "linear-inference-float32-b1-n1024" in res.output
    # A 2x slowdown is 100%: above 150% nothing fails; without --fail-above never exit 2.
    assert runner.invoke(app, ["compare", str(a), str(b), "--fail-above", "150%"]).exit_code == 0
    assert runner.invoke(app, ["compare", str(a), str(b)]).exit_code == 0


def test_cli_json_and_csv(runs, tmp_path):
    a, b = runs
    out = tmp_path / "cmp.csv"
    res = runner.invoke(app, ["compare", str(a), str(b), "--json", "--fail-above", "5",
                              "--csv", str(out)])
    assert res.exit_code == 2
    data = json.loads(res.stdout)
    assert data["regressions"] == ["linear-inference-float32-b1-n1024-d256h4l2"]
    assert len(data["rows"]) == len(VARIANTS) * len(LENS) * 2
    assert out.read_text().startswith("config_id,")


def test_new_failure_is_a_regression(tmp_path):
    a = write_latency_run(tmp_path / "a", _rows())
    b = write_latency_run(tmp_path / "b", _rows(errors=[("fastformer", 512)]))
    cmp = compare_runs(a, b)
    bad = cmp.regressions(0.5)
    assert list(bad["change"]) == ["now fails", "now fails"]  # inference and training


def test_no_shared_configs(tmp_path):
    a = write_latency_run(tmp_path / "a", _rows())
    b = write_latency_run(tmp_path / "b", model_rows(["sdpa"], [4096], modes=("inference",)))
    res = runner.invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code == 1
    assert "share no configurations" in res.output


def test_different_devices_need_force(tmp_path):
    a = write_latency_run(tmp_path / "a", _rows())
    b = write_latency_run(tmp_path / "b", _rows(), device_name="Another CPU")
    res = runner.invoke(app, ["compare", str(a), str(b)])
    assert res.exit_code == 1
    assert "not comparable" in res.output and "--force" in res.output
    res = runner.invoke(app, ["compare", str(a), str(b), "--force"])
    assert res.exit_code == 0, res.output
    assert "not comparable" in res.output  # still warned


def test_missing_run_and_extrapolation_run(tmp_path):
    a = write_latency_run(tmp_path / "a", _rows())
    res = runner.invoke(app, ["compare", str(a), str(tmp_path / "missing")])
    assert res.exit_code == 1 and "does not exist" in res.output
    ext = write_extrapolation_run(tmp_path / "ext")
    with pytest.raises(LsbenchError, match="extrapolation run"):
        compare_runs(a, ext)


@pytest.mark.parametrize("text, value", [("5%", 0.05), ("5", 0.05), ("12.5 %", 0.125)])
def test_parse_percent(text, value):
    assert parse_percent(text) == pytest.approx(value)


def test_parse_percent_rejects_garbage():
    with pytest.raises(LsbenchError, match="percentage"):
        parse_percent("five")


def test_compare_help_documents_exit_codes():
    res = runner.invoke(app, ["compare", "--help"])
    assert res.exit_code == 0 and "Exit codes" in res.output


# --- issue 21: a machine that changed speed between the runs --------------------------------

def _canary(path, ms, readings=5, jitter=0.01):
    """canary.jsonl as `lsbench run` writes it: readings of a fixed workload at `ms`."""
    spec = {"matmul": [256, 256, 256], "sdpa": [1, 2, 512, 64], "device": "cpu",
            "dtype": "float32", "threads": 2}
    lines = []
    for i in range(readings):
        m = ms * (1 + jitter * math.sin(i + 1))
        lines.append(json.dumps({"index": i, "label": "start" if i == 0 else "interval",
                                 "t_s": 30.0 * i, "ms": m, "iqr_ms": 0.04 * m, "mad_ms": 0.02 * m,
                                 "ratio": 1.0, "drift": False, "steal_share": 0.0,
                                 "spec": spec}))
    (path / "canary.jsonl").write_text("\n".join(lines) + "\n")
    return path


def _slow_machine_rows(factor, planted=None):
    """Every row `factor` x slower with a +-3% scatter (a slower machine is never exactly
    uniform); `planted` variant another 2x slower (a real regression)."""
    rows = _rows()
    for i, r in enumerate(rows):
        if r["status"] != "ok":
            continue
        f = factor * (1 + 0.03 * math.sin(7 * i)) * (2.0 if r["variant"] == planted else 1.0)
        for k in ("latency_ms", "latency_ms_ci_low", "latency_ms_ci_high", "latency_ms_iqr"):
            r[k] *= f
    return rows


@pytest.fixture
def machine_runs(tmp_path):
    a = _canary(write_latency_run(tmp_path / "a", _rows()), 3.0)
    slow = _canary(write_latency_run(tmp_path / "slow", _slow_machine_rows(1.5)), 4.5)
    planted = _canary(write_latency_run(tmp_path / "planted",
                                        _slow_machine_rows(1.5, planted="linear")), 4.5)
    return a, slow, planted


def test_a_slower_machine_is_said_first_and_normalized_away(machine_runs):
    a, slow, _ = machine_runs
    raw = runner.invoke(app, ["compare", str(a), str(slow), "--fail-above", "10%",
                              "--normalize", "none"])
    assert raw.exit_code == 2, raw.output  # raw: every row looks 1.5x slower
    res = runner.invoke(app, ["compare", str(a), str(slow), "--fail-above", "10%"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert text.index("the machine ran 1.50x slower in run B: canary 3 ms -> 4.5") \
        < text.index("ratio B/A")  # said before the rows
    assert "relative to the canary" in text
    cmp = compare_runs(a, slow)
    assert cmp.normalized and cmp.machine.factor == pytest.approx(1.5, rel=0.01)
    assert cmp.machine.moved["fired"]
    ok = cmp.table[cmp.table["status_a"] == "ok"]
    assert (ok["latency_ratio_normalized"] - 1).abs().max() < 0.10
    assert cmp.regressions(0.10).empty


def test_a_real_regression_on_a_slower_machine_is_still_found(machine_runs):
    a, _, planted = machine_runs
    res = runner.invoke(app, ["compare", str(a), str(planted), "--fail-above", "10%", "--json"])
    assert res.exit_code == 2, res.output
    data = json.loads(res.stdout)
    assert data["machine"]["normalized"] and data["machine"]["canary_moved"]
    bad = [r for r in data["rows"] if r["config_id"] in data["regressions"]]
    assert bad and {r["variant"] for r in bad} == {"linear"}
    assert all(r["latency_ratio_normalized"] == pytest.approx(2.0, rel=0.04) for r in bad)
    linear_ok = [r for r in data["rows"] if r["variant"] == "linear" and r["status_a"] == "ok"]
    assert len(bad) == len(linear_ok)  # every measured linear row, nothing else


def test_old_runs_without_canaries_fall_back_to_the_all_rows_test(tmp_path):
    a = write_latency_run(tmp_path / "a", _rows())
    b = write_latency_run(tmp_path / "b", _slow_machine_rows(1.5))
    res = runner.invoke(app, ["compare", str(a), str(b), "--fail-above", "10%"])
    assert res.exit_code == 3, res.output  # machine or code? cannot tell: not comparable
    text = " ".join(res.output.split())
    assert "nearly all rows moved together" in text and "has no canary" in text
    assert "not comparable" in text
    assert runner.invoke(app, ["compare", str(a), str(b)]).exit_code == 0  # no gate: a report
    raw = runner.invoke(app, ["compare", str(a), str(b), "--fail-above", "10%",
                              "--normalize", "none"])
    assert raw.exit_code == 2  # the user's choice: raw times gate
    # without a machine-wide move, old runs compare as before
    res = runner.invoke(app, ["compare", str(a), str(b := write_latency_run(
        tmp_path / "c", _scale(_rows(), SLOW, 2.0))), "--fail-above", "5%"])
    assert res.exit_code == 2 and "checked only by the all-rows test" in " ".join(
        res.output.split())


def test_all_rows_slower_with_a_steady_canary_is_a_real_change(tmp_path):
    a = _canary(write_latency_run(tmp_path / "a", _rows()), 3.0)
    b = _canary(write_latency_run(tmp_path / "b", _slow_machine_rows(1.5)), 3.0)
    res = runner.invoke(app, ["compare", str(a), str(b), "--fail-above", "10%"])
    assert res.exit_code == 2, res.output
    assert "but the canary did not" in " ".join(res.output.split())
    assert not compare_runs(a, b).normalized


def test_normalize_rejects_other_values(runs):
    a, b = runs
    res = runner.invoke(app, ["compare", str(a), str(b), "--normalize", "median"])
    assert res.exit_code == 1 and "canary or none" in res.output


def test_rows_timed_under_other_conditions_are_named_before_the_table(tmp_path):
    # run B was contended throughout: its rows were re-timed with one thread (run A: two)
    a_rows, b_rows = _rows(), _rows()
    for r in a_rows:
        r.update(threads=2, contended=False)
    for r in b_rows:
        r.update(threads=1, contended=r["status"] == "ok")
    a = write_latency_run(tmp_path / "a", a_rows)
    b = write_latency_run(tmp_path / "b", b_rows)
    msgs = compare_runs(a, b).machine.messages
    n = sum(r["status"] == "ok" for r in a_rows)
    assert any(f"{n} of the {n} rows measured in both runs were timed with other thread counts"
               in m for m in msgs)
    assert any(f"{n} of those rows were timed while another process" in m for m in msgs)
    quiet = compare_runs(a, a).machine.messages
    assert not any("thread counts" in m or "another process" in m for m in quiet)
