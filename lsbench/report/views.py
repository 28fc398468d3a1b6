"""What a report shows, independent of the output format: one Section per run, made of plots,
tables (rows of display cells) and the trust details. html.py and markdown.py render it.

Why one module of ~500 lines: every display decision (formatting, banners, trust details)
for both the HTML and the Markdown renderers lives here, so the two never disagree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lsbench.extrapolate.analysis import CONTROL, control_warnings
from lsbench.measure.canary import canary_series
from lsbench.measure.canary import describe as canary_describe
from lsbench.report import decode, plots, tables
from lsbench.report.load import NOISE_LIMIT, Run
from lsbench.report.tables import STATUS_MARK, fmt_num


@dataclass
class Cell:
    text: str
    cls: str = ""  # CSS class: ok, noisy, st-oom, st-skipped, ...
    sort: Any = None  # sort key for the sortable-table script (numbers sort as numbers)


@dataclass
class TableView:
    id: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    group: str = ""  # heading the table sits under

    @property
    def empty(self) -> bool:
        return not self.rows


@dataclass
class Section:
    run: Run
    anchor: str
    title: str
    kind: str
    banners: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    headlines: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    plots: list[plots.Plot] = field(default_factory=list)
    tables: list[TableView] = field(default_factory=list)
    failures: TableView | None = None
    noisy: TableView | None = None
    contended: TableView | None = None
    trust: list[tuple[str, str]] = field(default_factory=list)
    env: list[tuple[str, str]] = field(default_factory=list)
    command: str = ""
    suite_json: str = ""
    args_json: str = ""
    exports: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> table for CSV


# --- tables -> views ----------------------------------------------------------------------

def pivot_view(pivot: tables.Pivot, tid: str, unit: str, caption: str,
               mark_noisy: bool = True) -> TableView:
    cols = ["variant"] + [f"{n:,}" for n in pivot.values.columns]
    rows = []
    for variant in pivot.values.index:
        row = [Cell(variant, "name")]
        for n in pivot.values.columns:
            status = pivot.status.at[variant, n]
            value = pivot.values.at[variant, n]
            if status == "ok" and pd.notna(value):
                marks = pivot.marks.at[variant, n] if mark_noisy else ""
                row.append(Cell(fmt_num(value) + marks, "num noisy" if marks else "num",
                                float(value)))
            elif status in ("", None):
                row.append(Cell("—", "na", None))
            else:
                row.append(Cell(STATUS_MARK.get(status, status), f"st-{_css(status)}", None))
        rows.append(row)
    return TableView(tid, f"{pivot.title} ({unit})", cols, rows, caption)


Fmt = Callable[[Any], str]


def frame_view(df: pd.DataFrame, tid: str, title: str, columns: dict[str, tuple[str, Fmt]],
               caption: str = "") -> TableView:
    """Rows of `df` shown through `columns`: {column: (heading, formatter)}."""
    heads = [h for h, _ in columns.values()]
    rows = []
    for _, r in df.iterrows():
        cells = []
        for col, (_, fmt) in columns.items():
            value = r.get(col)
            numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            sort = float(value) if numeric and pd.notna(value) else None
            cells.append(Cell(fmt(value), "num" if numeric else "", sort))
        rows.append(cells)
    return TableView(tid, title, heads, rows, caption)


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)


def _int(v: Any) -> str:
    return "" if v is None or pd.isna(v) else f"{int(v):,}"


def _num(v: Any) -> str:
    return fmt_num(v)


def _exp(v: Any) -> str:
    return "" if v is None or pd.isna(v) else f"{float(v):.2f}"


def _times(v: Any) -> str:
    return "" if v is None or pd.isna(v) else f"{fmt_num(v)}×"


def _css(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]", "", str(text).lower()) or "x"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


# --- sections -----------------------------------------------------------------------------

def latency_section(run: Run, anchor: str, plot_dir: Path | None) -> Section:
    rows = run.rows
    sec = Section(run, anchor, f"Speed and memory · {run.name}", "run")
    _common(sec, run)
    sec.counts = tables.status_counts(rows) if not rows.empty else {}
    n_ok = sec.counts.get("ok", 0)
    if rows.empty:
        sec.banners.append(("warn", "This run recorded no configurations yet (interrupted "
                                    "before the first one finished?)."))
    elif n_ok == 0:
        sec.banners.append(("bad", f"Every one of the {len(rows)} configurations failed — "
                                   "no latency or memory was measured. The reasons are listed "
                                   "under Failed configurations."))
    sec.headlines = tables.headlines(rows)
    sets = tables.settings(rows)
    for i, (setting, sub) in enumerate(sets):
        # File names carry only what differs between settings (e.g. latency-bfloat16.svg).
        varying = [c for c in tables.SETTING_COLUMNS if len({str(x[c]) for x, _ in sets}) > 1]
        suffix = "".join(f"-{slug(setting[c])}" for c in varying)
        where = tables.setting_label(setting)
        for metric, (title, _, _) in plots.METRICS.items() if plot_dir else ():
            fig = plots.metric_figure(sub, metric, f"{title} · {where}")
            if fig is not None:
                cap = _PLOT_CAPTIONS[metric]
                sec.plots.append(plots.render(fig, _PLOT_NAMES[metric] + suffix,
                                              f"{title} · {where}", cap, plot_dir))
        prefix = f"{anchor}-{i}"
        group = where if len(sets) > 1 else ""
        sec.tables += _latency_tables(sub, prefix, group, sec.exports, suffix)
    canary = plots.canary_plot(run, plot_dir) if plot_dir else None  # issue 21
    sec.plots += [canary] if canary else []
    _decode_views(sec, rows, anchor, plot_dir)  # issue 18
    _variant_notes(sec, rows)
    sec.failures = frame_view(
        tables.failed_rows(rows), f"{anchor}-failed", "Failed configurations",
        {"variant": ("variant", _text), "mode": ("mode", _text),
         "batch_size": ("batch", _int), "seq_len": ("N", _int), "status": ("status", _text),
         "reason": ("reason", _text), "predicted_mem_mib": ("predicted MiB", _num)},
        "A failure is a result: OOM and skipped rows mark where a variant stops fitting."
    ) if not rows.empty else None
    if sec.failures is not None:
        for row in sec.failures.rows:  # colour the status cell
            row[4].cls = f"st-{_css(row[4].text)}"
    sec.noisy = frame_view(
        tables.noisy_rows(rows), f"{anchor}-noisy", "Noisy measurements",
        {"variant": ("variant", _text), "mode": ("mode", _text),
         "batch_size": ("batch", _int), "seq_len": ("N", _int),
         "latency_ms": ("median ms", _num), "latency_ms_iqr": ("IQR ms", _num),
         "iqr_pct": ("IQR / median %", _num), "repeats": ("repeats", _int)},
        f"Rows whose IQR is more than {NOISE_LIMIT:.0%} of the median (marked † in the tables)."
        " Rerun them on a quieter machine before drawing conclusions from them."
    ) if not rows.empty else None
    contended = tables.contended_rows(rows) if not rows.empty else None
    sec.contended = frame_view(
        contended, f"{anchor}-contended", "Contended measurements",
        {"variant": ("variant", _text), "mode": ("mode", _text),
         "batch_size": ("batch", _int), "seq_len": ("N", _int),
         "latency_ms": ("median ms", _num), "retimed": ("re-timed", _int),
         "threads": ("threads", _int), "contention": ("what the OS saw", _text)},
        "Rows timed while another process took the CPU (marked ‡ in the tables, hollow in the "
        "plots, left out of the summary sentences): each was timed again after a pause, up to "
        "twice, and the least contended timing is kept; when every attempt with several "
        "threads was contended, the row was timed once more with one thread and the faster "
        "kept (threads = 1). Their latency is likely too high; rerun on a quiet machine."
    ) if contended is not None and not contended.empty else None
    return sec


def _decode_views(sec: Section, rows: pd.DataFrame, anchor: str, plot_dir: Path | None) -> None:
    """Decode rows: state vs depth, tokens/s vs batch at one depth, and the per-depth table
    (decode latency vs depth and its crossover depth are the Fig-2 panels and crossover table
    of the decode mode)."""
    table = decode.depth_table(rows)
    if table.empty:
        return
    if plot_dir:
        fig = decode.state_figure(rows)
        if fig is not None:
            sec.plots.append(plots.render(
                fig, "decode-state", "Decoding state per sequence vs depth",
                "Bytes one sequence's context keeps, measured from the state's tensors (lines) "
                "and by each variant's formula (dotted): a KV cache grows with the depth, a "
                "window ring or a recurrent state does not.", plot_dir))
        batch = decode.batch_figure(rows)
        if batch is not None:
            fig, depth = batch
            sec.plots.append(plots.render(
                fig, "decode-batch", f"Decode throughput vs batch size at depth {depth:,}",
                "Generated tokens per second (batch / per-token latency) at the deepest depth "
                "measured at several batch sizes.", plot_dir))
    sec.tables.append(frame_view(
        table, f"{anchor}-decode", "Decode at depth",
        {"seq_len": ("depth", _int), "batch_size": ("batch", _int), "variant": ("variant", _text),
         "latency_ms": ("ms / token", _num), "tokens_per_s": ("tokens / s", _num),
         "state_mib": ("state MiB / seq", _num), "state_mib_formula": ("formula MiB", _num),
         "max_batch_in_budget": ("sequences that fit", _int)},
        "One generated token at depth N (the state already holds N - 1 tokens). State bytes "
        "are per sequence, all layers; 'sequences that fit' is the run's memory budget over "
        "them."))
    sec.exports["decode"] = table


def _variant_notes(sec: Section, rows: pd.DataFrame) -> None:
    """A banner per variant whose rows ran something other than what was configured."""
    if rows.empty or "variant_note" not in rows:
        return
    noted = rows[(rows["status"] == "ok") & (rows["variant_note"] != "")]
    for variant, sub in noted.groupby("variant"):
        for note, at in sub.groupby("variant_note"):
            lens = ", ".join(f"{n:,}" for n in sorted(at["seq_len"].unique()))
            sec.banners.append(("info", f"{variant} at N = {lens}: {note}."))


_PLOT_NAMES = {"latency_ms": "latency", "peak_mem_mib": "memory",
               "tokens_per_s": "throughput", "pct_of_peak": "pct_of_peak"}
_PLOT_CAPTIONS = {
    "latency_ms": "Median time per step, both axes log (Fastformer Fig. 2 style). The band is "
                  "median ± IQR/2; a line ends at its variant's first OOM (✕), skip (×) or "
                  "timeout (▼), drawn at the last measured height.",
    "peak_mem_mib": "Measured peak memory the step adds (not a prediction).",
    "tokens_per_s": "Tokens processed per second (batch × N / latency).",
    "pct_of_peak": "Achieved FLOP/s (analytic FLOPs / latency) as a share of this machine's "
                   "measured matmul peak.",
}


def _latency_tables(rows: pd.DataFrame, prefix: str, group: str,
                    exports: dict[str, pd.DataFrame], suffix: str) -> list[TableView]:
    out: list[TableView] = []
    for metric, unit, name in (("latency_ms", "ms", "latency"),
                               ("peak_mem_mib", "MiB", "memory")):
        pivs = tables.pivots(rows, metric)
        frames = []
        for p in pivs:
            out.append(pivot_view(p, f"{prefix}-{name}-{p.mode}-b{p.batch_size}", unit,
                                  "" if name == "memory" else
                                  "† noisy (IQR > 10% of the median), ‡ contended (another "
                                  "process took the CPU), § drift (the canary moved next "
                                  "to this row), ? fewer than 3 samples (spread "
                                  "unknown). OOM / skip / timeout / error: the configuration "
                                  "did not produce a number.",
                                  mark_noisy=name == "latency"))
            out[-1].group = _join(group, "Latency (ms)" if name == "latency"
                                  else "Peak memory (MiB)")
            frames.append(p.export().reset_index().assign(mode=p.mode, batch_size=p.batch_size))
        if frames:
            df = pd.concat(frames, ignore_index=True)
            lead = ["mode", "batch_size", "variant"]
            exports[f"{name}_pivot{suffix}"] = df[lead + [c for c in df.columns
                                                          if c not in lead]]

    cross = tables.crossovers(rows)
    exports[f"crossover{suffix}"] = cross
    if not cross.empty:
        out.append(_crossover_view(cross, f"{prefix}-crossover"))
    exps = tables.scaling_exponents(rows)
    exports[f"scaling{suffix}"] = exps
    if not exps.empty:
        out.append(frame_view(
            exps, f"{prefix}-scaling", "Scaling exponents",
            {"mode": ("mode", _text), "batch_size": ("batch", _int),
             "variant": ("variant", _text), "time_exponent": ("time ∝ N^k", _exp),
             "time_fit_range": ("fitted over", _text),
             "memory_exponent": ("memory ∝ N^k", _exp),
             "memory_fit_range": ("fitted over", _text)},
            "Log-log slope over the three longest lengths each variant reached: 2 is "
            "quadratic, 1 linear. Short lengths are left out because fixed costs dominate "
            "there."))
    speed = tables.speedups(rows)
    exports[f"speedup{suffix}"] = speed
    if not speed.empty:
        out.append(frame_view(
            speed, f"{prefix}-speedup", "Speed-up vs transformer at the longest common length",
            {"mode": ("mode", _text), "batch_size": ("batch", _int),
             "variant": ("variant", _text), "seq_len": ("N", _int),
             "latency_ms": ("ms", _num), "transformer_ms": ("transformer ms", _num),
             "speedup": ("speed-up", _times), "memory_ratio": ("memory / transformer", _times)},
            "Longest N at which both the variant and full attention ran."))
    for t in out:
        t.group = t.group or _join(group, "Crossover, scaling and speed-up")
    return out


def _crossover_view(cross: pd.DataFrame, tid: str) -> TableView:
    """One row per (mode, batch, variant), one column per baseline."""
    bases = list(dict.fromkeys(cross["vs"]))
    cols = ["mode", "batch", "variant"] + [f"faster than {b} from N" for b in bases] + ["note"]
    rows = []
    order = {v: i for i, v in enumerate(tables.ordered(cross["variant"].unique()))}
    modes = {m: i for i, m in enumerate(dict.fromkeys(cross["mode"]))}  # already in order
    cross = cross.assign(_o=cross["variant"].map(order), _m=cross["mode"].map(modes))
    cross = cross.sort_values(["_m", "batch_size", "_o"], kind="stable")
    for (mode, batch, _, variant), g in cross.groupby(["mode", "batch_size", "_o", "variant"],
                                                      sort=False):
        by_base = g.set_index("vs")
        row = [Cell(mode), Cell(_int(batch), "num", batch), Cell(variant, "name")]
        for b in bases:
            if b not in by_base.index:
                row.append(Cell("—", "na"))
                continue
            n = by_base.at[b, "crossover_len"]
            kind = by_base.at[b, "kind"]
            row.append(Cell(by_base.at[b, "crossover"], f"cross-{kind}",
                            None if pd.isna(n) else float(n)))
        notes = [x for x in dict.fromkeys(g["note"]) if x]
        row.append(Cell("; ".join(notes)))
        rows.append(row)
    return TableView(tid, "Crossover length", cols, rows,
                     "The shortest N from which the variant is faster than the baseline at "
                     "every longer measured N, interpolated in log-log between measured "
                     "lengths. The note says where a baseline itself stopped running.")


def _join(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def extrapolation_section(run: Run, anchor: str, plot_dir: Path | None) -> Section:
    sec = Section(run, anchor, f"Length extrapolation · {run.name}", "extrapolate")
    _common(sec, run)
    ex = run.extrapolation
    if ex.empty and run.recall.empty:
        sec.banners.append(("warn", "No perplexity was recorded yet (extrapolation.csv is "
                                    "missing or empty): training may still be running or was "
                                    "interrupted."))
    fig = plots.extrapolation_figure(ex) if plot_dir else None
    if fig is not None:
        sec.plots.append(plots.render(
            fig, "extrapolation", "Perplexity vs evaluation length",
            "ALiBi Fig. 1 style: each position method trained at L (dashed line), evaluated "
            "at longer lengths. Lower is better; a method that extrapolates stays flat.",
            plot_dir))
    tabs = tables.extrapolation_tables(ex)
    sec.headlines = tables.extrapolation_headlines(tabs)
    _control_banners(sec, ex)
    _extrapolation_trust(sec, run.meta)
    for i, t in enumerate(tabs):
        cols = ["position"] + [f"{n:,}" for n in t.ppl.columns] + [
            "best length", t.ratio_label, "95% CI at L"]
        rows = []
        summary = t.summary.set_index("position")
        for pos in t.ppl.index:
            best = summary.at[pos, "best_len"]
            row = [Cell(pos, "name")]
            for n in t.ppl.columns:
                v = t.ppl.at[pos, n]
                cls = "num best" if best is not None and n == best else "num"
                row.append(Cell(fmt_num(v) if pd.notna(v) else "—", cls,
                                float(v) if pd.notna(v) else None))
            row.append(Cell(_int(best), "num", best))
            ratio = summary.at[pos, "ratio"]
            row.append(Cell(_times(ratio), "num", None if pd.isna(ratio) else float(ratio)))
            row.append(Cell(_ci_at(t, pos), "num"))
            rows.append(row)
        view = TableView(f"{anchor}-ppl-{i}", f"Perplexity · {t.title}", cols, rows,
                         " ".join(["Perplexity per position method and evaluation length "
                                   "(bold: its best length); 95% interval from the standard "
                                   "error of the mean loss over 32 contiguous blocks of the "
                                   "scored tokens."] + t.notes))
        view.group = "Perplexity tables"
        sec.tables.append(view)
        if t.ratio is not None:
            sec.tables.append(_ratio_view(t, f"{anchor}-ratio-{i}"))
        if t.ci_low is not None and t.ci_high is not None:
            sec.tables.append(_ci_view(t, f"{anchor}-ci-{i}"))
        export = t.ppl.reset_index().assign(train_len=t.train_len, eval_mode=t.eval_mode)
        lead = ["train_len", "eval_mode", "position"]
        sec.exports[f"extrapolation-{slug(t.eval_mode)}-L{t.train_len}"] = export[
            lead + [c for c in export.columns if c not in lead]]
    if not run.recall.empty:  # `lsbench extrapolate --task recall` wrote recall.csv here
        from lsbench.report.recall import add_recall  # it imports this module

        add_recall(sec, anchor, plot_dir)
    if not run.failed_evals.empty:
        fe = run.failed_evals.sort_values(["position", "eval_mode", "eval_len"])
        sec.failures = frame_view(
            fe, f"{anchor}-failed", "Failed evaluations",
            {"position": ("position", _text), "train_len": ("L", _int),
             "eval_mode": ("mode", _text), "eval_len": ("length", _int),
             "status": ("status", _text), "reason": ("reason", _text)},
            "Lengths that could not be evaluated; they are missing from the table above.")
        for row in sec.failures.rows:
            row[4].cls = f"st-{_css(row[4].text)}"
    fig = plots.training_curve_figure(run.curve) if plot_dir and not run.curve.empty else None
    if fig is not None:
        sec.plots.append(plots.render(
            fig, "training_loss", "Training loss",
            "Loss on the training stream while training at L (faint: every step; solid: "
            "running mean). Methods should end close together; a method far above the rest "
            "did not train as well, and its extrapolation numbers mean less.", plot_dir))
    if not run.training.empty:
        tr = run.training
        view = frame_view(tr, f"{anchor}-training", "Per position method", {
            "position": ("position", _text), "train_len": ("L", _int),
            "params": ("params", _int), "tokens_trained": ("tokens", _int),
            "train_time_s": ("time s", _num), "tokens_per_s": ("tokens/s", _num),
            "peak_mem_mib": ("peak MiB", _num), "final_train_loss": ("final loss", _num)},
            "Every method trains with the same seed, data order and token budget.")
        view.group = "Training"
        sec.tables.append(view)
        sec.exports["training"] = tr
    return sec


def _ci_at(t: tables.ExtrapolationTable, pos: str) -> str:
    if t.ci_low is None or t.ci_high is None or t.train_len not in t.ci_low.columns:
        return ""
    lo, hi = t.ci_low.at[pos, t.train_len], t.ci_high.at[pos, t.train_len]
    return "" if pd.isna(lo) or pd.isna(hi) else f"{fmt_num(lo)}–{fmt_num(hi)}"


def _ci_view(t: tables.ExtrapolationTable, tid: str) -> TableView:
    """The 95% interval of every perplexity in the table above, per method and length."""
    rows = []
    for pos in t.ppl.index:
        row = [Cell(pos, "name")]
        for n in t.ppl.columns:
            lo = t.ci_low.at[pos, n] if n in t.ci_low.columns else None
            hi = t.ci_high.at[pos, n] if n in t.ci_high.columns else None
            known = lo is not None and hi is not None and pd.notna(lo) and pd.notna(hi)
            row.append(Cell(f"{fmt_num(lo)}–{fmt_num(hi)}" if known else "—", "num"))
        rows.append(row)
    view = TableView(tid, f"95% intervals of the perplexity · {t.title}",
                     ["position"] + [f"{n:,}" for n in t.ppl.columns], rows,
                     "From the standard error of the mean loss over contiguous blocks of the "
                     "scored tokens: two methods whose intervals overlap at a length are not "
                     "told apart there by this evaluation.")
    view.group = "Perplexity tables"
    return view


def _ratio_view(t: tables.ExtrapolationTable, tid: str) -> TableView:
    """ppl(n)/ppl(L) with the loss difference in bits per byte, per method and length."""
    rows = []
    for pos in t.ratio.index:
        row = [Cell(pos, "name")]
        for n in t.ratio.columns:
            r, b = t.ratio.at[pos, n], t.delta_bits.at[pos, n]
            row.append(Cell("—" if pd.isna(r) else f"{r:.2f}× ({b:+.2f} bits)", "num",
                            None if pd.isna(r) else float(r)))
        rows.append(row)
    view = TableView(tid, f"Ratio to L · {t.title}",
                     ["position"] + [f"{n:,} ({n / t.train_len:g}L)" for n in t.ratio.columns],
                     rows, "ppl(n)/ppl(L) and, in brackets, the loss difference in bits per "
                     "byte (token). Byte tokens cap the ratio: see the unigram ceiling in the "
                     "provenance table.")
    view.group = "Perplexity tables"
    return view


def _group_text(g: dict[str, Any]) -> str:
    mult = f" (×{g['lr_mult']:g} the model's)" if g["lr_mult"] != 1 else ""
    return (f"{g['group']}: {fmt_num(g['params'])} params, peak lr {g['peak_lr']:.3g}{mult}, "
            f"weight decay {g['weight_decay']:g}")


def _control_banners(sec: Section, ex: pd.DataFrame) -> None:
    """Warn per method whose ppl at L is not clearly below the `none` (NoPE) control's."""
    if ex.empty:
        return
    for train_len in sorted(ex["train_len"].dropna().unique()):
        sub = ex[ex["train_len"] == train_len]
        if CONTROL not in set(sub["position"].astype(str)):
            sec.banners.append(("warn", f"No `{CONTROL}` control was trained at "
                                        f"L={int(train_len):,}: nothing shows whether a flat "
                                        "curve means a method extrapolates or never learned to "
                                        "use position."))
            continue
        rows = [{"position": str(r.position), "eval_mode": str(r.eval_mode),
                 "eval_len": int(r.eval_len), "ppl": float(r.ppl)} for r in sub.itertuples()]
        for w in control_warnings(rows, int(train_len)):
            sec.banners.append(("warn", w["message"]))


def _extrapolation_trust(sec: Section, meta: dict[str, Any]) -> None:
    """Optimizer groups (per-method learning rates) and the eval stream's n-gram ceilings."""
    for pos, groups in (meta.get("optimizer") or {}).items():
        sec.trust.append((f"optimizer · {pos}", "; ".join(_group_text(g) for g in groups)))
    ceil = meta.get("eval_ceilings")
    if ceil:
        sec.trust.append(("eval stream ceilings",
                          f"byte unigram ppl {fmt_num(ceil['unigram_ppl'])}, bigram "
                          f"{fmt_num(ceil['bigram_ppl'])} ({ceil.get('fit_on', '')}); a model "
                          "that lost all context would score near the unigram"))
    if meta.get("train_len_note"):
        sec.banners.append(("info", str(meta["train_len_note"])))


def _common(sec: Section, run: Run) -> None:
    meta = run.meta
    if run.interrupted:
        sec.banners.append(("warn", "This run did not finish (run.json has no finished_at): "
                                    "it was interrupted or is still running, so some "
                                    "configurations are missing."))
    if meta.get("synthetic"):
        sec.banners.append(("warn", "Synthetic data (written by the test suite), "
                                    "not a measurement."))
    for w in run.warnings:
        sec.banners.append(("warn", w))
    for w in meta.get("warnings") or []:  # recorded by the run (busy CPU, a falling peak)
        sec.banners.append(("warn", str(w)))
    sec.command = str(meta.get("command") or "")
    suite = meta.get("suite_config") or meta.get("corpus") or {}
    sec.suite_json = json.dumps(suite, indent=2, default=str) if suite else ""
    sec.args_json = json.dumps(meta.get("args") or {}, indent=2, default=str)
    trust = [
        ("run directory", str(run.path)),
        ("kind", run.kind),
        ("suite" if run.kind == "run" else "preset",
         _env_value(meta.get("suite") or meta.get("preset") or "")),
        ("lsbench version", str(meta.get("lsbench_version") or "")),
        ("device", f"{meta.get('device') or ''} · {run.device_name}"),
        ("machine peak", _peak(meta)),
        ("started", str(meta.get("started_at") or "")),
        ("finished", str(meta.get("finished_at") or "not finished")),
    ]
    if run.kind == "run" and not run.rows.empty:
        threads = run.rows["threads"].dropna().unique()
        reps = run.rows["repeats"].dropna()
        trust.append(("threads", ", ".join(str(int(t)) for t in sorted(threads))))
        if not reps.empty:
            lo, hi = int(reps.min()), int(reps.max())
            trust.append(("timed repeats", f"{lo}{'' if lo == hi else f'–{hi}'} per config"))
    # Everything else the run recorded about itself (timing/memory methods, budgets, ...).
    shown = {"kind", "suite", "preset", "lsbench_version", "device", "device_name",
             "machine_peak_gflops", "machine_peak", "started_at", "finished_at", "threads", "env",
             "suite_config", "corpus", "args", "command", "synthetic", "optimizer",
             "control_warnings", "eval_ceilings", "train_len_note", "canary"}
    trust += [(k.replace("_", " "), _env_value(v)) for k, v in meta.items() if k not in shown]
    trust.append(("canary", canary_describe(canary_series(run.path, meta))))
    sec.trust = [(k, v) for k, v in trust if v]
    sec.env = [(k, _env_value(v)) for k, v in run.env.items()]


def _peak(meta: dict[str, Any]) -> str:
    if not meta.get("machine_peak_gflops"):
        return ""
    detail = meta.get("machine_peak")
    how = detail.get("method") if isinstance(detail, dict) else None
    return f"{fmt_num(meta['machine_peak_gflops'])} GFLOP/s ({how or 'measured matmul'})"


def _env_value(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, dict):
        return ", ".join(f"{k}={'—' if x is None else _env_value(x)}" for k, x in v.items())
    if isinstance(v, list):
        return json.dumps(v, default=str) if v else "none"
    return str(v)


def sections(runs: list[Run], with_plots: bool = True) -> list[Section]:
    """One section per run; plots are saved under each run's plots/ (skipped if not wanted)."""
    out = []
    for i, run in enumerate(runs):
        anchor = f"run{i + 1}"
        plot_dir = run.path / "plots" if with_plots else None
        if run.kind == "extrapolate":
            out.append(extrapolation_section(run, anchor, plot_dir))
        elif run.kind == "quality":
            from lsbench.report.quality import quality_section  # it imports this module

            out.append(quality_section(run, anchor, plot_dir, runs))
        else:
            out.append(latency_section(run, anchor, plot_dir))
    return out
