"""The quality section of `lsbench report RUN_DIR QUALITY_DIR`: frontier, plots, tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from synthetic_runs import model_rows, write_latency_run

from lsbench.report import build_report
from lsbench.report.load import load_run
from lsbench.report.quality import headline_accuracy, pareto_front

ACCURACY = {"transformer": 0.99, "sdpa": 0.98, "linear": 0.4, "fastformer": 0.3,
            "nystromformer": 0.7}


def write_quality_run(path: str | Path, accuracy: dict[str, float] = ACCURACY) -> Path:
    """A quality run directory as `lsbench quality` writes it (synthetic numbers)."""
    path = Path(path)
    path.mkdir(parents=True)
    rows = []
    for v, acc in accuracy.items():
        form = "masked" if v in ("fastformer", "nystromformer") else "lm"
        for seed, d in enumerate((-0.01, 0.0, 0.01)):
            rows.append({"variant": v, "task_form": form, "causal": form == "lm",
                         "seq_len": 64, "kv_pairs": 8, "vocab_size": 64, "seed": seed,
                         "steps": 600, "status": "ok", "reason": "",
                         "accuracy": min(1.0, acc + d), "final_loss": 0.1, "train_s": 10.0})
    rows.append({"variant": "flex_causal", "task_form": "lm", "seq_len": 64, "kv_pairs": 8,
                 "seed": 0, "status": "unsupported", "reason": "runs on cuda only"})
    pd.DataFrame(rows).to_csv(path / "quality.csv", index=False)
    fid = [{"variant": v, "seq_len": n, "layer": layer, "status": "ok", "causal": True,
            "rel_err": e * n / 256, "cosine": 1 - e * e} for v, e in (("linear", 0.3),
                                                                     ("nystromformer", 0.05))
           for n in (256, 1024, 4096) for layer in (0, 1)]
    fid.append({"variant": "fastformer", "seq_len": 256, "layer": 0, "status": "undefined",
                "reason": "no qkv/out projections"})
    pd.DataFrame(fid).to_csv(path / "fidelity.csv", index=False)
    (path / "run.json").write_text(json.dumps({
        "kind": "quality", "command": "lsbench quality", "synthetic": True, "device": "cpu",
        "started_at": "2026-01-01T00:00:00", "finished_at": "2026-01-01T00:10:00"}))
    return path


def test_pareto_front_keeps_only_undominated_points():
    pts = pd.DataFrame({"variant": list("abcdef"),
                        "latency_ms": [1.0, 2.0, 2.0, 3.0, 4.0, 0.5],
                        "accuracy": [0.5, 0.4, 0.9, 0.9, 1.0, 0.1]})
    front = pareto_front(pts, "latency_ms")
    # b is beaten by a (cheaper, better); d ties c's accuracy at a higher cost
    assert front["variant"].tolist() == ["f", "a", "c", "e"]
    assert pareto_front(pts.iloc[:0], "latency_ms").empty


def test_headline_uses_each_variants_own_form_at_the_hardest_setting():
    summary = pd.DataFrame({
        "variant": ["sdpa", "sdpa", "sdpa", "fastformer"],
        "task_form": ["lm", "masked", "lm", "masked"], "seq_len": [64, 64, 32, 64],
        "kv_pairs": [8, 8, 4, 8], "status": "ok", "accuracy_mean": [0.9, 0.95, 1.0, 0.3]})
    got = headline_accuracy(summary)
    assert sorted(zip(got.variant, got.task_form, strict=True)) == [
        ("fastformer", "masked"), ("sdpa", "lm")]
    assert set(got.seq_len) == {64}


def test_report_of_a_latency_run_and_a_quality_run_has_the_pareto_plot(tmp_path):
    rows = model_rows(["transformer", "sdpa", "linear", "fastformer"], [256, 512, 1024],
                      modes=("inference",), mem_limit_mib=400)
    lat = write_latency_run(tmp_path / "lat", rows)
    q = write_quality_run(tmp_path / "q")
    assert load_run(q).kind == "quality"
    res = build_report([lat, q], "html", tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert 'aria-label="Accuracy vs latency and memory"' in html
    assert 'aria-label="Fidelity to exact softmax attention"' in html
    assert "Pareto frontier" in html and "MQAR query accuracy" in html
    assert "runs on cuda only" in html and "no qkv/out projections" in html
    assert "below (gap 0.580 &gt; both CIs)" in html  # linear vs sdpa, both lm
    sec = res.sections[1]
    assert sec.kind == "quality" and "best transformer" in sec.headlines[0]
    pts = sec.exports["quality_pareto"]
    assert set(pts.variant) == {"transformer", "sdpa", "linear", "fastformer"}
    md = build_report([lat, q], "md", tmp_path / "report.md")
    assert md.files and "MQAR" in (tmp_path / "report.md").read_text()


def test_quality_run_alone_still_reports(tmp_path):
    q = write_quality_run(tmp_path / "q")
    res = build_report([q], "html", tmp_path / "r.html")
    names = [p.name for p in res.sections[0].plots]
    assert names == ["quality_fidelity"]  # no latency run: no Pareto plot, no error
    assert not any("softmax control" in text for _, text in res.sections[0].banners)


def test_a_softmax_control_that_did_not_learn_is_a_banner(tmp_path):
    q = write_quality_run(tmp_path / "q", {"sdpa": 0.2, "linear": 0.1})
    sec = build_report([q], "html", tmp_path / "r.html").sections[0]
    assert any("softmax control (sdpa) reached only 0.200" in t for _, t in sec.banners)
