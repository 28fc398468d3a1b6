"""`lsbench compare RUN_A RUN_B` on synthetic runs with known changes."""

from __future__ import annotations

import json

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
