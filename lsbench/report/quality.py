"""The quality section of a report: MQAR accuracy with its interval, accuracy against latency
and memory at each N (a Pareto plot, when a latency run is reported beside the quality run),
and fidelity to exact softmax attention against N.

`lsbench report RUN_DIR QUALITY_DIR` joins the two by variant name: a variant's accuracy (from
the quality run's hardest setting: the largest N, then the most pairs) is placed against its
latency and peak memory at each N of the latency run. The frontier is the set of variants no
other variant beats on both axes (lower cost, higher accuracy).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from lsbench.report import plots
from lsbench.report.load import Run
from lsbench.report.views import Cell, Section, TableView, _common, frame_view

MAX_PARETO_LENS = 4  # panels per row: the smallest, the largest and evenly spread ones between


def pareto_front(points: pd.DataFrame, cost: str, value: str = "accuracy") -> pd.DataFrame:
    """Rows not dominated by another (lower or equal cost and higher or equal value, one of
    them strictly), sorted by cost: the frontier a reader should choose from."""
    pts = points.dropna(subset=[cost, value]).sort_values([cost, value],
                                                          ascending=[True, False])
    keep, best = [], float("-inf")
    for idx, r in pts.iterrows():
        if r[value] > best:
            keep.append(idx)
            best = r[value]
    return pts.loc[keep]


def headline_accuracy(summary: pd.DataFrame) -> pd.DataFrame:
    """One accuracy per variant: its own form (lm, or masked for encoder-only variants) at the
    hardest setting; a masked-form reference row of a causal variant is left out."""
    ok = summary[summary["status"] == "ok"].copy()
    if ok.empty:
        return ok
    hardest = ok.sort_values(["seq_len", "kv_pairs"]).iloc[-1]
    ok = ok[(ok["seq_len"] == hardest["seq_len"]) & (ok["kv_pairs"] == hardest["kv_pairs"])]
    own = ok.groupby("variant")["task_form"].transform(lambda f: "lm" if "lm" in set(f)
                                                       else "masked")
    return ok[ok["task_form"] == own].reset_index(drop=True)


def pareto_points(latency: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Latency rows (status ok, one mode and batch size) joined with accuracy by variant."""
    rows = latency[latency["status"] == "ok"]
    if rows.empty or accuracy.empty:
        return pd.DataFrame()
    modes = list(rows["mode"].dropna().unique())
    mode = "inference" if "inference" in modes else (modes[0] if modes else None)
    if mode is not None:
        rows = rows[rows["mode"] == mode]
    batch = rows["batch_size"].min()
    rows = rows[rows["batch_size"] == batch]
    acc = accuracy[["variant", "task_form", "accuracy_mean", "accuracy_ci_low",
                    "accuracy_ci_high"]].rename(columns={"accuracy_mean": "accuracy"})
    pts = rows[["variant", "mode", "batch_size", "seq_len", "latency_ms", "peak_mem_mib"]]
    return pts.merge(acc, on="variant", how="inner")


def _pick_lens(lens: list[int]) -> list[int]:
    lens = sorted(set(lens))
    if len(lens) <= MAX_PARETO_LENS:
        return lens
    step = (len(lens) - 1) / (MAX_PARETO_LENS - 1)
    return [lens[round(i * step)] for i in range(MAX_PARETO_LENS)]


def pareto_figure(points: pd.DataFrame) -> plt.Figure | None:
    """Rows: latency, memory; columns: N. Each variant labelled; the frontier drawn."""
    if points.empty:
        return None
    lens = _pick_lens(points["seq_len"].tolist())
    costs = [c for c in ("latency_ms", "peak_mem_mib") if points[c].notna().any()]
    fig, axes = plots._grid(len(costs), len(lens))
    for i, cost in enumerate(costs):
        for j, n in enumerate(lens):
            ax = axes[i][j]
            pts = points[points["seq_len"] == n].dropna(subset=[cost])
            for _, r in pts.iterrows():
                color, marker = plots.style(r["variant"])
                err = [[r["accuracy"] - r["accuracy_ci_low"]],
                       [min(1.0, r["accuracy_ci_high"]) - r["accuracy"]]]  # t can pass 1
                ax.errorbar([r[cost]], [r["accuracy"]], yerr=err if pd.notna(err[0][0]) else
                            None, color=color, marker=marker, markersize=6, capsize=2,
                            linestyle="none")
                ax.annotate(plots.label(r["variant"]), (r[cost], r["accuracy"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
            front = pareto_front(pts, cost)
            if len(front):  # ringed points joined by a staircase
                ax.plot(front[cost], front["accuracy"], drawstyle="steps-post", color="0.3",
                        linewidth=1, linestyle="--", marker="o", markersize=11,
                        markerfacecolor="none", label="Pareto frontier")
            plots._format_axes(ax, "MQAR accuracy" if j == 0 else None,
                               "latency (ms)" if cost == "latency_ms" else "peak memory (MiB)",
                               log_y=False)
            ax.set_ylim(-0.02, 1.05)
            ax.set_title(f"N = {n:,}", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="lower right")
    return fig


def fidelity_figure(fid: pd.DataFrame) -> plt.Figure | None:
    """Relative error and 1 − cosine vs N (mean over layers), one line per variant."""
    ok = fid[fid["status"] == "ok"] if not fid.empty else fid
    if ok.empty:
        return None
    ok = ok.assign(one_minus_cos=1 - ok["cosine"].astype(float))
    mean = ok.groupby(["variant", "seq_len"], as_index=False)[["rel_err",
                                                               "one_minus_cos"]].mean()
    fig, axes = plots._grid(1, 2)
    for ax, col, ylabel in ((axes[0][0], "rel_err", "relative error"),
                            (axes[0][1], "one_minus_cos", "1 − cosine")):
        for variant, g in mean.groupby("variant", sort=False):
            color, marker = plots.style(variant)
            y = g[col].clip(lower=1e-17)  # an exact variant stays on the log axis
            ax.plot(g["seq_len"], y, color=color, marker=marker, markersize=4,
                    label=plots.label(variant))
        plots._format_axes(ax, ylabel, "sequence length N")
    axes[0][1].legend(fontsize=7, loc="best")
    return fig


def _acc_text(r) -> str:
    if pd.isna(r["accuracy_ci_high"]):
        return f"{r['accuracy_mean']:.3f}"
    return f"{r['accuracy_mean']:.3f} ± {r['accuracy_ci_high'] - r['accuracy_mean']:.3f}"


def quality_section(run: Run, anchor: str, plot_dir: Path | None, runs: list[Run]) -> Section:
    sec = Section(run, anchor, f"Recall quality · {run.name}", "quality")
    _common(sec, run)
    summary, fid = run.quality_summary, run.fidelity
    if summary.empty:
        sec.banners.append(("warn", "No MQAR accuracy was recorded yet (quality.csv is missing "
                                    "or empty): training may still be running."))
    acc = headline_accuracy(summary) if not summary.empty else summary
    if not acc.empty:
        best = acc.sort_values("accuracy_mean").iloc[-1]
        worst = acc.sort_values("accuracy_mean").iloc[0]
        sec.headlines.append(
            f"MQAR at N = {int(best['seq_len'])}, {int(best['kv_pairs'])} pairs: best "
            f"{best['variant']} {_acc_text(best)}, worst {worst['variant']} {_acc_text(worst)} "
            f"(mean ± 95% CI over seeds).")
    _control_banners(sec, summary)
    latency = [r for r in runs if r.kind == "run" and not r.rows.empty]
    if plot_dir is not None and latency and not acc.empty:
        pts = pareto_points(latency[0].rows, acc)
        fig = pareto_figure(pts)
        if fig is not None:
            sec.plots.append(plots.render(
                fig, "quality_pareto", "Accuracy vs latency and memory",
                f"MQAR accuracy (this run) against latency and peak memory at each N from "
                f"{latency[0].name} ({pts['mode'].iloc[0]}, batch "
                f"{int(pts['batch_size'].iloc[0])})."
                " Up and left is better; the dashed line is the frontier (no variant is both "
                "cheaper and more accurate than a point on it). Error bars: 95% CI over seeds. "
                "Accuracy is the quality run's (its N, pairs and variant budgets, in "
                "quality.csv's variant_params), the same at every N; the cost is the latency "
                "run's at that N with its own variant parameters.",
                plot_dir))
            sec.exports["quality_pareto"] = pts
    fig = fidelity_figure(fid) if plot_dir is not None and not fid.empty else None
    if fig is not None:
        sec.plots.append(plots.render(
            fig, "quality_fidelity", "Fidelity to exact softmax attention",
            "Each variant's attention output against exact softmax attention on the same q, k, "
            "v (weights and inputs from the trained softmax model), float64, mean over layers. "
            "Left: relative error ‖y − y_ref‖ / ‖y_ref‖; right: 1 − mean per-token cosine "
            "similarity. Lower is closer.", plot_dir))
    if not summary.empty:
        sec.tables.append(_summary_view(summary, f"{anchor}-quality"))
        sec.exports["quality_summary"] = summary
    if not fid.empty:
        sec.tables.append(_fidelity_view(fid, f"{anchor}-fidelity"))
        sec.exports["fidelity"] = fid
    return sec


def versus_softmax(summary: pd.DataFrame, r: pd.Series, ref: str = "sdpa") -> str:
    """How row r compares with `ref` on the same form and setting: 'below' / 'above' when
    the 95% intervals do not overlap, 'within CI' when they do, '' without a reference."""
    same = summary[(summary["variant"] == ref) & (summary["task_form"] == r["task_form"])
                   & (summary["seq_len"] == r["seq_len"]) & (summary["kv_pairs"] == r["kv_pairs"])
                   & (summary["status"] == "ok")]
    if r["variant"] == ref or same.empty or r["status"] != "ok":
        return ""
    s = same.iloc[0]
    if pd.isna(r["accuracy_ci_high"]) or pd.isna(s["accuracy_ci_low"]):
        return "no CI"
    if r["accuracy_ci_high"] < s["accuracy_ci_low"]:
        return f"below (gap {s['accuracy_mean'] - r['accuracy_mean']:.3f} > both CIs)"
    if r["accuracy_ci_low"] > s["accuracy_ci_high"]:
        return "above (CIs apart)"
    return "within CI"


CONTROL_MIN_ACCURACY = 0.9  # softmax below this has not learned the task in the budget


def _control_banners(sec: Section, summary: pd.DataFrame) -> None:
    """Warn where the softmax control (sdpa) did not learn a form: rows of that form then say
    the budget was too small, not that a mixer cannot recall."""
    if summary.empty:
        return
    ctrl = summary[(summary["variant"] == "sdpa") & (summary["status"] == "ok")]
    for _, r in ctrl.iterrows():
        if r["accuracy_mean"] < CONTROL_MIN_ACCURACY:
            sec.banners.append((
                "warn", f"The softmax control (sdpa) reached only {r['accuracy_mean']:.3f} on "
                f"the {r['task_form']} form at N = {int(r['seq_len'])}, {int(r['kv_pairs'])} "
                f"pairs: this budget is too small for that form, so its rows do not separate "
                f"the mixers (train longer, e.g. the gpu preset)."))


def _summary_view(summary: pd.DataFrame, tid: str) -> TableView:
    rows = []
    for _, r in summary.iterrows():
        ok = r["status"] == "ok"
        rows.append([
            Cell(str(r["variant"]), "name"), Cell(str(r["task_form"])),
            Cell(f"{int(r['seq_len']):,}", "num", int(r["seq_len"])),
            Cell(str(int(r["kv_pairs"])), "num", int(r["kv_pairs"])),
            Cell(str(int(r["seeds"])) if ok else "0", "num"),
            Cell(_acc_text(r) if ok else f"{r['status']}: {r['reason']}",
                 "num" if ok else f"st-{r['status']}",
                 float(r["accuracy_mean"]) if ok else None),
            Cell(versus_softmax(summary, r)),
        ])
    cols = ["variant", "form", "N", "pairs", "seeds", "accuracy (mean ± 95% CI)",
            "vs sdpa (same form)"]
    view = TableView(tid, "MQAR query accuracy", cols, rows,
                     "Query accuracy on held-out examples; the interval is Student's t over "
                     "seeds. form lm: causal, the value predicted at the query; masked: "
                     "encoder-only, predicted at a mask token after the query. 'below' when the "
                     "variant's 95% interval lies wholly under sdpa's on the same form.")
    view.group = "Recall"
    return view


def _fidelity_view(fid: pd.DataFrame, tid: str) -> TableView:
    ok = fid[fid["status"] == "ok"]
    table = ok.groupby(["variant", "seq_len"], as_index=False).agg(
        rel_err=("rel_err", "mean"), cosine=("cosine", "mean"), causal=("causal", "first"))
    undefined = fid[fid["status"] != "ok"].drop_duplicates("variant")
    table = pd.concat([table, undefined[["variant", "status", "reason"]]], ignore_index=True)
    view = frame_view(table, tid, "Fidelity to exact softmax attention", {
        "variant": ("variant", str), "seq_len": ("N", lambda v: "" if pd.isna(v) else
                                                 f"{int(v):,}"),
        "causal": ("causal", lambda v: "" if pd.isna(v) else str(v)),
        "rel_err": ("relative error", lambda v: "" if pd.isna(v) else f"{v:.3g}"),
        "cosine": ("cosine", lambda v: "" if pd.isna(v) else f"{v:.6f}"),
        "reason": ("undefined because", lambda v: "" if pd.isna(v) else str(v))},
        "Mean over layers; float64. Variants without qkv/out projections to copy from a softmax "
        "layer have no defined fidelity (reason given).")
    view.group = "Fidelity"
    return view
