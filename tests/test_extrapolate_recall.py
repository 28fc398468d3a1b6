"""`lsbench extrapolate --task recall`: the task, recall.csv and its CI summary, resume, the CLI
and the report's retrieval plot (tiny preset: a few seconds in all)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.errors import LsbenchError
from lsbench.extrapolate.presets import get_recall_preset
from lsbench.extrapolate.recall import (
    RECALL_COLUMNS,
    SUMMARY_COLUMNS,
    make_task,
    recall_lens,
    run_recall,
    summary_frame,
)
from lsbench.quality.summary import t_interval
from lsbench.quality.tasks import IGNORE, answers_from_context

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """alibi and learned (a table of L positions: n/a past L), 3 seeds, L × {1 … 16}."""
    out = tmp_path_factory.mktemp("recall") / "run"
    run_recall(positions="alibi,learned", out=out, preset="tiny", device="cpu", threads=1)
    return out


def test_every_answer_is_determined_by_the_context():
    rp = get_recall_preset("tiny")
    for n in recall_lens(None, rp.train_len):
        x, y = make_task(rp, n).sample(16, seed=3, form="lm")
        for xi, yi in zip(x, y, strict=True):
            pairs = answers_from_context(xi, rp.kv_pairs)
            scored = (yi != IGNORE).nonzero().flatten().tolist()
            assert len(scored) == rp.kv_pairs  # each key queried once, at any length
            for pos in scored:
                assert pos >= 2 * rp.kv_pairs and pairs[int(xi[pos])] == int(yi[pos])


def test_eval_lengths_are_the_multiples_of_L_rounded_to_even():
    assert recall_lens(None, 32) == [32, 48, 64, 128, 256, 512]
    assert recall_lens("1x,1.5x", 30) == [30, 46]  # 45 -> 46: MQAR needs an even length


def test_summary_is_mean_and_t_interval_over_seeds():
    rows = pd.DataFrame([{"position": "alibi", "train_len": 32, "eval_len": 64, "seed": s,
                          "accuracy": a, "n_queries": 64, "status": "ok", "reason": None}
                         for s, a in enumerate([0.5, 0.7, 0.9])])
    s = summary_frame(rows)
    assert list(s.columns) == SUMMARY_COLUMNS and len(s) == 1
    mean, sd, lo, hi = t_interval([0.5, 0.7, 0.9])
    r = s.iloc[0]
    assert r["accuracy_mean"] == pytest.approx(0.7) and r["seeds"] == 3
    assert (r["accuracy_ci_low"], r["accuracy_ci_high"]) == pytest.approx((lo, hi))
    assert r["eval_mult"] == 2.0 and r["n_queries"] == 192


def test_run_writes_rows_per_seed_and_length_and_a_summary(tiny_run):
    with (tiny_run / "recall.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == RECALL_COLUMNS
    assert len(rows) == 2 * 3 * 6  # positions × seeds × lengths
    for r in rows:
        if r["status"] == "ok":
            assert 0 <= float(r["accuracy"]) <= 1 and int(r["n_queries"]) == 16 * 4
    learned = [r for r in rows if r["position"] == "learned"]
    assert {r["status"] for r in learned if int(r["eval_len"]) > 32} == {"not_applicable"}
    summary = pd.read_csv(tiny_run / "recall_summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    alibi = summary[summary["position"] == "alibi"]
    assert alibi["eval_len"].tolist() == [32, 48, 64, 128, 256, 512]
    assert (alibi["seeds"] == 3).all() and alibi["accuracy_ci_high"].notna().all()


def test_rerun_skips_rows_already_scored_and_refuses_other_settings(tiny_run):
    before = (tiny_run / "recall.csv").read_text()
    run_recall(positions="alibi", out=tiny_run, preset="tiny", device="cpu", threads=1)
    assert (tiny_run / "recall.csv").read_text() == before
    with pytest.raises(LsbenchError, match="different settings.*train_len"):
        run_recall(train_len=40, positions="alibi", out=tiny_run, preset="tiny", device="cpu")


def test_cli_recall_on_a_tiny_config(tmp_path):
    out = tmp_path / "cli"
    res = runner.invoke(app, ["extrapolate", "--task", "recall", "--preset", "tiny",
                              "--positions", "rotary", "--seeds", "2", "--eval-lens", "1x,2x",
                              "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "MQAR query accuracy" in res.output and "recall.csv" in res.output
    assert len(pd.read_csv(out / "recall.csv")) == 2 * 2


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "recal"], "unknown task 'recal' in --task. Did you mean 'recall'?"),
    (["--task", "recall", "--stride", "8"], "--stride only applies to --task lm"),
    (["--seeds", "3"], "--seeds applies to --task recall"),
    (["--task", "recall", "--preset", "tiny", "--train-len", "8"], "--train-len must be"),
])
def test_cli_bad_input_is_one_clean_error(args, message):
    res = runner.invoke(app, ["extrapolate", *args])
    assert res.exit_code == 1
    assert message in " ".join(res.output.split()) and "Traceback" not in res.output


def test_report_draws_recall_beside_perplexity(tiny_run):
    # an LM run's perplexities in the same directory (as `lsbench extrapolate --out DIR` writes)
    ppl = [{"position": pos, "train_len": 32, "eval_len": n, "eval_mode": "nonoverlapping",
            "stride": "", "tokens_scored": 4096, "loss": math.log(p), "ppl": p, "status": "ok"}
           for pos, base in (("alibi", 5.0), ("learned", 6.0))
           for n, p in ((32, base), (512, base * 1.1))]
    pd.DataFrame(ppl).to_csv(tiny_run / "extrapolation.csv", index=False)
    res = runner.invoke(app, ["report", str(tiny_run)])
    assert res.exit_code == 0, res.output
    html = (tiny_run / "report.html").read_text()
    assert (tiny_run / "plots" / "recall.svg").is_file()
    assert "Retrieval accuracy vs evaluation length" in html
    assert "language modelling (nonoverlapping)" in html  # the perplexity panel beside it
    assert "MQAR query accuracy vs evaluation length" in html
    assert "Retrieval beside perplexity" in html and "1.10×" in html


@pytest.mark.parametrize(("task", "target", "kept"), [
    ("recall", "lsbench.extrapolate.recall.run_recall", "Scored rows are in recall.csv"),
    ("lm", "lsbench.extrapolate.run_extrapolate", "Checkpoints are saved"),
])
def test_ctrl_c_says_what_is_kept_and_how_to_resume(tmp_path, monkeypatch, task, target, kept):
    def interrupted(**kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    out = tmp_path / "x"
    res = CliRunner().invoke(app, ["extrapolate", "--task", task, "--out", str(out)])
    text = " ".join(res.output.split())
    assert res.exit_code == 130, res.output
    assert f"interrupted. {kept}; resume with:" in text and str(out) in text
