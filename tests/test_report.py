"""`lsbench report` on small synthetic run directories (tests/synthetic_runs.py)."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from synthetic_runs import (
    latency_row,
    model_rows,
    write_extrapolation_run,
    write_latency_run,
)
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.errors import LsbenchError
from lsbench.report import build_report, tables
from lsbench.report.load import load_run, normalise_rows
from lsbench.report.plots import FIXED_STYLES, inline_svg, style
from lsbench.report.tables import fmt_num

runner = CliRunner()
VARIANTS = ["transformer", "sdpa", "longformer", "linear", "fastformer"]
LENS = [256, 512, 1024, 2048, 4096, 8192]


class StrictHTML(HTMLParser):
    """Collects tags and checks that every non-void element is closed in order."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "source", "wbr", "area", "base"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.in_svg = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "svg":
            self.in_svg += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <path .../> inside SVG
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag == "svg":
            self.in_svg -= 1

    def handle_data(self, data):
        if not self.in_svg:
            self.text.append(data)


def parse(html: str) -> StrictHTML:
    p = StrictHTML()
    p.feed(html)
    p.close()
    assert not p.errors, p.errors[:5]
    assert not p.stack, f"unclosed: {p.stack[-5:]}"
    return p


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A latency run (with an OOM, a skip, an error and a noisy row) plus an extrapolation run,
    built once for the module."""
    root = tmp_path_factory.mktemp("runs")
    rows = model_rows(VARIANTS, LENS, modes=("inference", "training"), mem_limit_mib=1500,
                      noisy=[("linear", 512)], errors=[("longformer", 256)])
    lat = write_latency_run(root / "lat", rows)
    ext = write_extrapolation_run(root / "ext", train_len=64)
    result = build_report([lat, ext])
    html = (lat / "report.html").read_text()
    return lat, ext, result, html


def test_html_is_self_contained_and_complete(report):
    lat, ext, result, html = report
    page = parse(html)
    text = " ".join(page.text)
    for v in VARIANTS:
        assert v in text
    for pos in ("sinusoidal", "rotary", "t5", "alibi"):
        assert pos in text
    figures = [t for t, _ in page.tags if t == "figure"]
    svgs = [t for t, _ in page.tags if t == "svg"]
    assert len(figures) == result.n_plots == 5  # latency, memory, throughput, % peak, ppl
    assert len(svgs) == len(figures)
    # Nothing is fetched: no http(s) anywhere, no img/link/src/@import.
    assert not re.search(r"https?://", html)
    assert not [t for t, a in page.tags if t in ("img", "link", "iframe")]
    assert not [a for _, a in page.tags if "src" in a]
    assert "@import" not in html and "url(http" not in html
    # Only our own small sortable-table script.
    assert html.count("<script") == 1
    # Trust: environment, command, methodology, failure and noise sections.
    for needle in ("Synthetic CPU", "lsbench run --suite quick", "Methodology",
                   "Failed configurations", "Noisy measurements", "torch_threads",
                   "median ± IQR/2", "nonoverlapping"):
        assert needle in html, needle
    ids = {a.get("id") for t, a in page.tags if t == "table"}
    assert {"run1-0-crossover", "run1-0-scaling", "run1-0-speedup", "run1-failed"} <= ids


def test_plots_saved_as_png_and_svg(report):
    lat, ext, result, _ = report
    for name in ("latency", "memory", "throughput", "pct_of_peak"):
        assert (lat / "plots" / f"{name}.png").stat().st_size > 5000
        assert (lat / "plots" / f"{name}.svg").read_text().startswith("<?xml")
    assert (ext / "plots" / "extrapolation.png").is_file()


def test_failure_statuses_marked_in_tables(report):
    _, _, _, html = report
    assert 'class="st-oom">OOM<' in html
    assert 'class="st-skipped">skip<' in html
    assert 'class="st-error">error<' in html
    assert "25.0†" in html  # the noisy linear row at N=512: 50 ms * 512/1024 = 25 ms


def test_untrusted_strings_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    rows = [latency_row(v, n, t * n / 256) for v, t in
            (("transformer", 4.0), (evil, 2.0)) for n in (256, 512, 1024)]
    rows.append(latency_row(evil, 2048, None, status="error", reason=f"boom {evil}"))
    run = write_latency_run(tmp_path / "evil", rows, suite=evil,
                            command=f"lsbench run --suite '{evil}'")
    build_report([run])
    html = (run / "report.html").read_text()
    assert evil not in html
    assert html.count("<script") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = parse(html)
    assert evil in " ".join(page.text)  # shown to the reader, as text
    md = build_report([run], "md", "-").text
    outside_code = re.sub(r"`[^`]*`", "", md)  # a code span shows its text literally
    assert evil not in outside_code and "\\<script\\>" in outside_code
    assert "&lt;" not in md and "&gt;" not in md and "&amp;" not in md  # Markdown, not HTML


def test_inline_svg_has_no_namespaces_or_prolog():
    svg = ('<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "x" "http://www.w3.org/x.dtd">\n'
           '<svg xmlns:xlink="http://www.w3.org/1999/xlink" width="1" '
           'xmlns="http://www.w3.org/2000/svg"><!-- c --><g id="figure_1">'
           '<use xlink:href="#m1"/><path id="m1"/></g></svg>')
    out = inline_svg(svg, "t <b>")
    assert out.startswith('<svg role="img" aria-label="t &lt;b&gt;"')
    assert "http" not in out and "<!--" not in out
    assert 'id="m1"' in out and "figure_1" not in out  # referenced ids stay


# --- the numbers --------------------------------------------------------------------------

def _rows(spec: dict[str, callable], lens=(128, 256, 512, 1024, 2048, 4096)) -> pd.DataFrame:
    return normalise_rows(pd.DataFrame(
        [latency_row(v, n, f(n), f(n)) for v, f in spec.items() for n in lens]))


def test_crossover_of_quadratic_and_linear_is_exact():
    # transformer 1e-6 N^2 ms, linear 1e-3 N ms: equal at N = 1000.
    rows = _rows({"transformer": lambda n: 1e-6 * n * n, "linear": lambda n: 1e-3 * n,
                  "fastformer": lambda n: 1e-9 * n, "slow": lambda n: 1.0 * n})
    cross = tables.crossovers(rows, baselines=("transformer",)).set_index("variant")
    assert cross.at["linear", "kind"] == "crossing"
    assert cross.at["linear", "crossover_len"] == pytest.approx(1000, rel=1e-9)
    assert cross.at["linear", "crossover"] == "≈1,000"
    assert cross.at["fastformer", "kind"] == "always"
    assert cross.at["fastformer", "crossover"].startswith("≤128")
    assert cross.at["slow", "kind"] == "never"
    assert cross.at["slow", "crossover"] == "never in range (128–4,096)"


def test_crossover_uses_the_last_crossing_and_notes_baseline_oom():
    c = tables.crossover_length([256, 512, 1024, 2048], [1, 3, 3, 1], [2, 2, 2, 2])
    # faster at 256, slower at 512/1024, faster again from between 1024 and 2048
    assert c.kind == "crossing"
    frac = math.log(3 / 2) / (math.log(3 / 2) + math.log(2))  # r goes log 1.5 -> log 0.5
    assert c.length == pytest.approx(1024 * 2 ** frac)
    rows = normalise_rows(pd.DataFrame(
        [latency_row("transformer", n, 1e-6 * n * n, 1.0) for n in (512, 1024)]
        + [latency_row("transformer", 2048, None, status="oom")]
        + [latency_row("linear", n, 1.0 * n, 1.0) for n in (512, 1024, 2048)]))
    cross = tables.crossovers(rows, baselines=("transformer",))
    assert cross.iloc[0]["kind"] == "never"
    assert cross.iloc[0]["note"] == "transformer oom from 2,048"


def test_scaling_exponents_recover_the_power_laws():
    rows = _rows({"transformer": lambda n: 3e-6 * n ** 2, "linear": lambda n: 0.01 * n,
                  "odd": lambda n: 5.0 * n ** 1.5})
    exps = tables.scaling_exponents(rows).set_index("variant")
    assert exps.at["transformer", "time_exponent"] == pytest.approx(2.0)
    assert exps.at["linear", "time_exponent"] == pytest.approx(1.0)
    assert exps.at["odd", "memory_exponent"] == pytest.approx(1.5)
    assert exps.at["linear", "time_fit_range"] == "1,024–4,096"  # the three longest


def test_speedup_at_longest_common_length():
    rows = normalise_rows(pd.DataFrame(
        [latency_row("transformer", n, 1e-5 * n * n, 2.0) for n in (512, 1024, 2048)]
        + [latency_row("transformer", 4096, None, status="oom")]
        + [latency_row("linear", n, 0.01 * n, 1.0) for n in (512, 1024, 2048, 4096)]))
    s = tables.speedups(rows).iloc[0]
    assert s["seq_len"] == 2048
    assert s["speedup"] == pytest.approx(1e-5 * 2048 * 2048 / (0.01 * 2048))
    assert s["memory_ratio"] == pytest.approx(0.5)


def test_extrapolation_table_best_length_and_ratio(tmp_path):
    run = load_run(write_extrapolation_run(tmp_path / "ext", train_len=64))
    t = tables.extrapolation_tables(run.extrapolation)
    assert [(x.train_len, x.eval_mode) for x in t] == [(64, "nonoverlapping"), (64, "sliding")]
    s = t[0].summary.set_index("position")
    assert t[0].ratio_label == "ppl(16L)/ppl(L)"
    assert s.at["sinusoidal", "ratio"] == pytest.approx(2.4 ** 4)
    assert s.at["sinusoidal", "best_len"] == 64
    assert s.at["alibi", "best_len"] == 64 * 16  # ALiBi keeps improving
    assert list(t[0].ppl.index) == ["sinusoidal", "rotary", "t5", "alibi"]


def test_styles_are_fixed_and_distinct():
    known = ["transformer", "sdpa", "longformer", "bigbird", "linformer", "linear",
             "poolingformer", "fastformer"]
    assert len({FIXED_STYLES[v] for v in known}) == len(known)
    assert style("transformer") == FIXED_STYLES["transformer"]
    assert style("my_new_variant") == style("my_new_variant")
    assert style("my_new_variant")[0] not in {FIXED_STYLES[v][0] for v in known}
    taken = {colour for colour, _ in FIXED_STYLES.values()}  # modern mixers' shades included
    assert all(style(f"plugin_{i}")[0] not in taken for i in range(50))


# --- partial, failed, empty and missing runs (CLI exit codes) ------------------------------

def test_every_row_failed_still_makes_a_page(tmp_path):
    rows = [latency_row(v, n, None, status=s, reason=f"{s} at {n}")
            for v in ("transformer", "linear") for n, s in ((512, "error"), (1024, "oom"))]
    run = write_latency_run(tmp_path / "failed", rows)
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "every configuration failed" in res.output
    html = (run / "report.html").read_text()
    parse(html)
    assert "Every one of the 4 configurations failed" in html
    assert "oom at 1024" in html


def test_interrupted_run_with_truncated_line(tmp_path):
    rows = model_rows(["transformer", "linear"], [256, 512, 1024], modes=("inference",))
    run = write_latency_run(tmp_path / "cut", rows, finished=False, truncate_last=True)
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "last line is incomplete JSON" in res.output
    html = (run / "report.html").read_text()
    assert "did not finish" in html
    assert "ok: 5" in html  # the 6th row was cut mid-write


def test_reports_latest_symlink(tmp_path):
    run = write_latency_run(tmp_path / "reports" / "r1",
                            model_rows(["transformer"], [256, 512], modes=("inference",)))
    (tmp_path / "reports" / "latest").symlink_to(run)
    res = runner.invoke(app, ["report", str(tmp_path / "reports" / "latest"), "-f", "csv"])
    assert res.exit_code == 0, res.output
    assert (run / "tables" / "latency_pivot.csv").is_file()
    # Pointing at the parent of run directories names them.
    res = runner.invoke(app, ["report", str(tmp_path / "reports")])
    assert res.exit_code == 1
    assert "holds run directories" in res.output and "r1" in res.output


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "holds no lsbench results"),
    ("no-rows", "nothing to report"),
])
def test_nothing_to_report_exits_1(tmp_path, case, message):
    path = tmp_path / "run"
    if case == "empty":
        path.mkdir()
    elif case == "no-rows":
        write_latency_run(path, [], finished=False)
    res = runner.invoke(app, ["report", str(path)])
    assert res.exit_code == 1
    assert message in res.output
    assert "Traceback" not in res.output


def test_missing_dir_raises_lsbench_error(tmp_path):
    with pytest.raises(LsbenchError, match="lsbench run --out DIR"):
        load_run(tmp_path / "nope")


def test_resumed_run_keeps_the_last_row_per_config(tmp_path):
    first = latency_row("linear", 512, None, status="error", reason="killed")
    again = latency_row("linear", 512, 5.0, 1.0)
    run = load_run(write_latency_run(tmp_path / "r", [first, again]))
    assert len(run.rows) == 1 and run.rows.iloc[0]["status"] == "ok"


# --- markdown and csv ---------------------------------------------------------------------

def test_markdown_output(tmp_path):
    lat = write_latency_run(tmp_path / "lat", model_rows(VARIANTS[:2], LENS[:3],
                                                         modes=("inference",)))
    ext = write_extrapolation_run(tmp_path / "ext", train_len=64)
    out = tmp_path / "sub" / "report.md"
    res = runner.invoke(app, ["report", str(lat), str(ext), "--format", "md", "--out", str(out)])
    assert res.exit_code == 0, res.output
    md = out.read_text()
    assert "| variant | 256 | 512 |" in md
    assert re.search(r"\|---\|(---:\|)+", md)
    link = re.search(r"!\[Latency vs sequence length[^\]]*\]\(([^)]+\.png)\)", md).group(1)
    assert (out.parent / link).resolve() == (lat / "plots" / "latency.png").resolve()
    assert "ppl(16L)/ppl(L)" in md


def test_csv_output_holds_the_pivots(report, tmp_path):
    lat, _, _, _ = report
    res = runner.invoke(app, ["report", str(lat), "--format", "csv", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    piv = pd.read_csv(tmp_path / "latency_pivot.csv")
    row = piv[(piv["variant"] == "transformer") & (piv["mode"] == "inference")].iloc[0]
    assert float(row["1024"]) == pytest.approx(40.0)
    assert row["8192"] == "oom"
    cross = pd.read_csv(tmp_path / "crossover.csv")
    assert set(cross["vs"]) == {"transformer", "sdpa"}


def test_html_option_conflicts_with_other_formats(report):
    lat, _, _, _ = report
    res = runner.invoke(app, ["report", str(lat), "--html", "x.html", "--format", "md"])
    assert res.exit_code == 1 and "--html writes an HTML page" in res.output


def test_report_help_documents_exit_codes():
    res = runner.invoke(app, ["report", "--help"])
    assert res.exit_code == 0
    assert "Exit codes" in res.output


def test_run_json_is_read_as_given(tmp_path):
    run = write_latency_run(tmp_path / "r", [latency_row("linear", 512, 5.0, 1.0)])
    meta = json.loads((run / "run.json").read_text())
    assert load_run(run).meta == meta
    assert Path(load_run(run).path) == run.resolve()


def test_extrapolation_failed_lengths_and_training_curve(tmp_path):
    run = write_extrapolation_run(tmp_path / "ext", train_len=64, modes=("nonoverlapping",))
    with open(run / "extrapolation.csv", "a") as f:  # as `lsbench extrapolate` writes an OOM
        f.write("sinusoidal,64,2048,nonoverlapping,,0,,,oom,CPU out of memory\n")
    (run / "training_curve.csv").write_text(
        "position,step,tokens,loss,lr\n" + "".join(
            f"{p},{i},{i * 256},{5 - i / 10},0.001\n" for p in ("alibi", "rotary")
            for i in range(1, 21)))
    loaded = load_run(run)
    assert len(loaded.failed_evals) == 1 and not loaded.warnings
    assert loaded.extrapolation["ppl"].notna().all()
    result = build_report([run])
    html = (run / "report.html").read_text()
    assert "Failed evaluations" in html and "CPU out of memory" in html
    assert [p.name for p in result.sections[0].plots] == ["extrapolation", "training_loss"]
    assert "at 1,024 tokens (16×L) the best is alibi" in html


@pytest.mark.slow
def test_end_to_end_on_real_runs(tmp_path):
    """The real writers (`lsbench run`, `lsbench extrapolate`) feed report and compare."""
    run = tmp_path / "smoke"
    res = runner.invoke(app, ["run", "--suite", "smoke", "--out", str(run)])
    assert res.exit_code == 0, res.output
    ext = tmp_path / "ext"
    res = runner.invoke(app, ["extrapolate", "--train-len", "32", "--preset", "tiny",
                              "--positions", "alibi,sinusoidal", "--eval-lens", "1x,2x,4x",
                              "--out", str(ext)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["report", str(run), str(ext)])
    assert res.exit_code == 0, res.output
    html = parse((run / "report.html").read_text())
    text = " ".join(html.text)
    for name in ("transformer", "sdpa", "fastformer", "alibi", "sinusoidal"):
        assert name in text
    assert sum(t == "svg" for t, _ in html.tags) >= 5
    # every perplexity's 95% interval, not only the one at L
    ci = load_run(ext).extrapolation.query("eval_mode == 'nonoverlapping'")
    assert "95% intervals of the perplexity" in text
    for r in ci.itertuples():
        assert f"{fmt_num(r.ppl_ci_low)}–{fmt_num(r.ppl_ci_high)}" in text
    res = runner.invoke(app, ["compare", str(run), str(run), "--fail-above", "1%"])
    assert res.exit_code == 0, res.output
    assert "no significant regression" in res.output


def test_one_figure_set_per_setting(tmp_path):
    rows = (model_rows(["transformer", "linear"], [256, 512], modes=("inference",))
            + model_rows(["transformer", "linear"], [256, 512], modes=("inference",),
                         dtype="bfloat16"))
    result = build_report([write_latency_run(tmp_path / "r", rows)])
    names = [p.name for p in result.sections[0].plots]
    assert names[:2] == ["latency-bfloat16", "memory-bfloat16"]
    assert "latency-float32" in names and len(names) == 8


def test_markdown_goes_to_stdout_when_it_is_not_a_terminal(tmp_path):
    from synthetic_runs import model_rows, write_latency_run

    run = write_latency_run(tmp_path / "run", model_rows())
    res = runner.invoke(app, ["report", str(run), "--format", "md"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("# lsbench report") and "&gt;" not in res.output
    assert not (run / "report.md").exists()


def test_contended_and_few_sample_rows_are_marked_never_called_steady(tmp_path):
    steady = latency_row("linear", 256, 4.0, 1.0)
    contended = {**latency_row("linear", 512, 9.0, 2.0), "contended": True, "retimed": 2,
                 "contention": "450 involuntary context switches/s, CPU 0.51 of 2 thread(s)"}
    few = {**latency_row("linear", 1024, 20.0, 4.0, repeats=2, iqr_frac=0.0), "noisy": None}
    run = load_run(write_latency_run(tmp_path / "r", [steady, contended, few]))
    rows = run.rows.set_index("seq_len")
    assert not rows.at[1024, "noisy"] and rows.at[1024, "spread_unknown"]  # unknown, not steady
    assert rows.at[512, "contended"] and not rows.at[256, "contended"]
    build_report([tmp_path / "r"])
    html = (tmp_path / "r" / "report.html").read_text()
    assert "9.00‡" in html and "20.0?" in html and "4.00<" in html
    assert "Contended measurements" in html and "450 involuntary" in html


def _busy(row, **extra):
    return {**row, "contended": True, "retimed": 2, **extra,
            "contention": "other processes busy on 1.4 of 2 cores"}


def test_headlines_leave_contended_rows_out_or_say_they_used_them():
    rows = [latency_row("transformer", 4096, 50.0), latency_row("linear", 4096, 20.0),
            _busy(latency_row("fastformer", 4096, 5.0))]
    lines = tables.headlines(normalise_rows(pd.DataFrame(rows)))
    assert "the fastest is linear" in lines[0] and "left out: fastformer" in lines[0]
    all_busy = [_busy(latency_row(v, 4096, t)) for v, t in (("transformer", 50.0),
                                                              ("linear", 20.0))]
    line = tables.headlines(normalise_rows(pd.DataFrame(all_busy)))[0]
    assert "the fastest is linear" in line and "from contended timings only" in line


def test_crossover_notes_contended_rows_it_used():
    rows = [latency_row("transformer", n, 0.01 * n * n / 1024) for n in (512, 1024, 2048)]
    rows += [latency_row("linear", n, 10.0 * n / 1024) for n in (512, 2048)]
    rows.append(_busy(latency_row("linear", 1024, 10.0)))
    cross = tables.crossovers(normalise_rows(pd.DataFrame(rows)), baselines=("transformer",))
    assert "uses contended rows ‡ (N=1,024)" in cross.set_index("variant").at["linear", "note"]


def test_unsteady_points_are_hollow_with_a_legend_entry():
    import matplotlib

    matplotlib.use("Agg")
    from lsbench.report.plots import metric_figure

    rows = [latency_row("linear", n, 10.0 * n / 1024) for n in (512, 1024, 2048)]
    rows[1] = _busy(rows[1])
    rows[2] = {**rows[2], "noisy": True}
    fig = metric_figure(normalise_rows(pd.DataFrame(rows)), "latency_ms", "latency")
    hollow = [ln for ln in fig.axes[0].lines if ln.get_markerfacecolor() == "white"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [1024, 2048]
    assert any("contended" in t.get_text() for t in fig.legends[0].get_texts())
    steady = metric_figure(normalise_rows(pd.DataFrame(
        [latency_row("linear", n, 1.0) for n in (512, 1024)])), "latency_ms", "latency")
    assert not any("contended" in t.get_text() for t in steady.legends[0].get_texts())
