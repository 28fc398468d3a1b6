"""`lsbench run --mode prefill|decode`: suites, grid and rows (the contract is test_decode.py)."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.errors import LsbenchError
from lsbench.sweep import grid, suite

runner = CliRunner()


def _suite(tmp_path, extra: str = "") -> suite.Suite:
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent('''
        [model]
        d_model = 32
        n_heads = 2
        [sweep]
        variants = ["sdpa", "bigbird"]
        seq_lens = [128, 256]
        batch_sizes = [1, 4]
        modes = ["inference", "decode"]
    ''') + textwrap.dedent(extra))
    return suite.load_suite(str(path))


def test_decode_rows_are_causal_and_take_the_decode_depths(tmp_path):
    s = _suite(tmp_path, '''
        [decode]
        depths = [1000, 3000]
        batch_sizes = [1]
    ''')
    configs = grid.build_grid(s, "cpu")
    dec = [c for c in configs if c["mode"] == "decode"]
    inf = [c for c in configs if c["mode"] == "inference"]
    assert {(c["seq_len"], c["batch_size"]) for c in dec} == {(1000, 1), (3000, 1)}
    assert all(c["causal"] for c in dec) and not any(c["causal"] for c in inf)
    assert {(c["seq_len"], c["batch_size"]) for c in inf} == {(128, 1), (256, 1), (128, 4),
                                                            (256, 4)}
    # lengths or batch sizes asked for on the command line apply to every mode
    lens = suite.override(s, seq_lens=[64])
    assert {c["seq_len"] for c in grid.build_grid(lens, "cpu")} == {64}
    batches = suite.override(s, batch_sizes=[2])
    assert {c["batch_size"] for c in grid.build_grid(batches, "cpu")} == {2}


def test_a_bad_decode_section_names_the_fix(tmp_path):
    with pytest.raises(LsbenchError, match="depths, batch_sizes|batch_sizes, depths"):
        _suite(tmp_path, "[decode]\ndepth = [1]\n")
    with pytest.raises(LsbenchError, match="positive integers"):
        _suite(tmp_path, "[decode]\ndepths = [0]\n")


def test_decode_suites_load_and_cover_every_variant():
    for name in ("decode", "decode-gpu"):
        s = suite.load_suite(name)
        assert "decode" in s.modes and max(s.seq_lens) == 131072
        assert s.variants_all  # the unsupported ones say why in their rows


def test_a_decode_run_measures_decoders_and_says_why_the_others_cannot(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "run", "--suite", "smoke", "--variants", "sdpa,linear,local,bigbird", "--mode",
        "decode,prefill", "--seq-lens", "40", "--batch-sizes", "2", "--out", str(out),
        "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows = {(r["variant"], r["mode"]): r
            for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    for mode in ("decode", "prefill"):
        bigbird = rows["bigbird", mode]
        assert bigbird["status"] == "unsupported" and "causal" in bigbird["reason"]
        for name in ("sdpa", "linear", "local"):
            r = rows[name, mode]
            assert r["status"] == "ok", r
            assert r["causal"] and r["depth"] == 40 and r["latency_ms"] > 0
            assert r["state_bytes"] > 0 and r["state_bytes_formula"] > 0
    d = rows["sdpa", "decode"]["d_model"]
    n_layers = rows["sdpa", "decode"]["n_layers"]
    # a KV cache of the 40 tokens in context: K and V, d_model floats each, per layer
    assert rows["sdpa", "decode"]["state_bytes"] == 2 * 40 * d * 4 * n_layers
    dec = rows["linear", "decode"]
    assert dec["tokens_per_s"] == pytest.approx(2 / (dec["latency_ms"] / 1e3))
    assert dec["gflops_per_s"] is None and dec["max_batch_in_budget"] >= 1
    assert rows["sdpa", "prefill"]["tokens_per_s"] == pytest.approx(
        2 * 40 / (rows["sdpa", "prefill"]["latency_ms"] / 1e3))


def test_an_unknown_compile_mode_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["run", "--suite", "smoke", "--compile", "reduce_overhead",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "reduce-overhead" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_compiled_decode_step_is_timed_after_its_compile(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "run", "--suite", "smoke", "--variants", "linear", "--mode", "decode", "--seq-lens",
        "64", "--batch-sizes", "1", "--compile", "default", "--timeout", "600", "--out",
        str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    (row,) = map(json.loads, (out / "results.jsonl").read_text().splitlines())
    assert row["status"] == "ok", row
    assert row["compile"] == "default" and row["compile_s"] > 0 and row["latency_ms"] > 0


def test_the_report_shows_decode_state_and_the_per_depth_table(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "run", "--suite", "smoke", "--variants", "sdpa,linear,linformer", "--mode",
        "decode,inference", "--seq-lens", "24,48", "--batch-sizes", "1,2", "--out", str(out),
        "--threads", "1"])
    assert result.exit_code == 0, result.output
    from lsbench.report import build_report

    page = next(f for f in build_report([str(out)], "html", None).files if f.suffix == ".html")
    html = page.read_text()
    assert "Decode at depth" in html and "state MiB / seq" in html
    assert (out / "plots" / "decode-state.svg").is_file()
    assert (out / "plots" / "decode-batch.svg").is_file()
    # linformer's default k (256) is capped at these N: the report says so
    assert "linformer at N = 24: k capped at N=24" in html


def test_a_variant_that_cannot_decode_is_unsupported_never_skipped_by_the_prediction():
    """Its row must say why it cannot decode, not that it would not fit."""
    s = suite.load_suite("decode")
    big = [c for c in grid.build_grid(s, "cpu") if c["seq_len"] == 131072 and c["batch_size"] == 8]
    by_name = {c["variant"]: grid.predict_mem_bytes(c) for c in big}
    for name in ("bigbird", "linformer", "nystromformer", "fastformer", "poolingformer"):
        assert by_name[name] == 0.0
    assert by_name["sdpa"] >= 2 * 131072 * 256 * 4 * 8  # the KV cache of 8 sequences
