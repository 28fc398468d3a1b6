"""Retrieval at length in an extrapolation section: `lsbench extrapolate --task recall`'s MQAR
query accuracy per position method against the evaluation length (mean and 95% CI over seeds),
drawn beside the same run directory's perplexity curves when it has them (extrapolation.csv),
because perplexity alone overstates extrapolation: a flat perplexity curve can hide a model
that no longer retrieves anything past L.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.transforms import blended_transform_factory

from lsbench.extrapolate.recall import summary_frame
from lsbench.report import plots
from lsbench.report.tables import KNOWN_POSITIONS, fmt_num, ordered
from lsbench.report.views import Cell, Section, TableView

PPL_MODE = "nonoverlapping"  # the perplexity panel shows the ALiBi paper's headline mode


def _train_line(ax, train_len: int) -> None:
    ax.axvline(train_len, color="0.3", linestyle="--", linewidth=1)
    ax.text(train_len, 0.98, f" L={train_len:,}", va="top", fontsize=8, color="0.3",
            transform=blended_transform_factory(ax.transData, ax.transAxes))


def recall_figure(summary: pd.DataFrame, ex: pd.DataFrame) -> plt.Figure | None:
    """Right (or alone): accuracy vs eval length with a 95% CI band per position method;
    left, when the run has them: the nonoverlapping perplexity curves of the LM task."""
    ok = summary[summary["status"] == "ok"]
    if ok.empty:
        return None
    ppl = ex[ex["eval_mode"] == PPL_MODE] if not ex.empty else ex
    fig, axes = plots._grid(1, 2 if not ppl.empty else 1)
    acc_ax = axes[0][-1]
    names = ordered([*ok["position"].astype(str).unique(),
                     *(ppl["position"].astype(str).unique() if not ppl.empty else [])],
                    KNOWN_POSITIONS)
    for name in names:
        color, marker = plots.style(name)
        g = ok[ok["position"] == name].sort_values("eval_len")
        if not g.empty:
            acc_ax.plot(g["eval_len"], g["accuracy_mean"], color=color, marker=marker,
                        markersize=5, linewidth=1.6)
            band = g.dropna(subset=["accuracy_ci_low"])
            acc_ax.fill_between(band["eval_len"], band["accuracy_ci_low"].clip(lower=0),
                                band["accuracy_ci_high"].clip(upper=1), color=color, alpha=0.15,
                                linewidth=0)
        if not ppl.empty:
            p = ppl[ppl["position"].astype(str) == name].sort_values("eval_len")
            axes[0][0].plot(p["eval_len"], p["ppl"], color=color, marker=marker, markersize=5,
                            linewidth=1.6)
    for train_len in sorted({int(t) for t in ok["train_len"]}):
        _train_line(acc_ax, train_len)
    plots._format_axes(acc_ax, "MQAR query accuracy", "evaluation length", log_y=False)
    acc_ax.set_ylim(-0.02, 1.05)
    acc_ax.set_title("retrieval (mean, 95% CI over seeds)", fontsize=10)
    if not ppl.empty:
        for train_len in sorted({int(t) for t in ppl["train_len"].dropna()}):
            _train_line(axes[0][0], train_len)
        plots._format_axes(axes[0][0], "perplexity", "evaluation length")
        axes[0][0].set_title(f"language modelling ({PPL_MODE})", fontsize=10)
    fig.suptitle("Retrieval vs evaluation length (train short, test long)", fontsize=11,
                 y=1 - 0.15 / fig.get_figheight())
    fig.legend(handles=[plots._variant_handle(n) for n in names], loc="center right",
               fontsize=8, frameon=False)
    return fig


def _acc_text(r: pd.Series) -> str:
    if r["status"] != "ok":
        return str(r["status"])
    if pd.isna(r["accuracy_ci_high"]):
        return f"{r['accuracy_mean']:.3f}"
    return f"{r['accuracy_mean']:.3f} ± {r['accuracy_ci_high'] - r['accuracy_mean']:.3f}"


def accuracy_view(summary: pd.DataFrame, tid: str) -> TableView:
    lens = sorted({int(n) for n in summary["eval_len"]})
    L = int(summary["train_len"].iloc[0])
    rows = []
    for pos in ordered(summary["position"].astype(str).unique(), KNOWN_POSITIONS):
        by_len = {int(r["eval_len"]): r for _, r in summary[summary["position"] == pos].iterrows()}
        row = [Cell(pos, "name")]
        for n in lens:
            r = by_len.get(n)
            ok = r is not None and r["status"] == "ok"
            row.append(Cell("—" if r is None else _acc_text(r), "num" if ok else "na",
                            float(r["accuracy_mean"]) if ok else None))
        rows.append(row)
    seeds = int(summary["seeds"].max()) if summary["seeds"].notna().any() else 0
    view = TableView(tid, f"MQAR query accuracy vs evaluation length · trained at L={L:,}",
                     ["position"] + [f"{n:,} ({n / L:g}L)" for n in lens], rows,
                     f"Query accuracy on held-out sequences at each length: mean ± 95% CI "
                     f"half-width (Student's t over {seeds} seeds; each seed trains its own "
                     "model). The number of key-value pairs is the same at every length; longer "
                     "sequences put the queries farther from them, at positions never trained.")
    view.group = "Retrieval at length"
    return view


def beside_view(summary: pd.DataFrame, ex: pd.DataFrame, tid: str) -> TableView:
    """Per method: accuracy at L and at the longest length, and the perplexity ratio there."""
    L = int(summary["train_len"].iloc[0])
    longest = int(summary["eval_len"].max())
    ppl = ex[(ex["eval_mode"] == PPL_MODE) & (ex["train_len"] == L)] if not ex.empty else ex
    rows = []
    for pos in ordered(summary["position"].astype(str).unique(), KNOWN_POSITIONS):
        s = summary[(summary["position"] == pos) & (summary["status"] == "ok")]
        at = {int(r["eval_len"]): r for _, r in s.iterrows()}
        p = ppl[ppl["position"].astype(str) == pos] if not ppl.empty else ppl
        by_len = dict(zip(p["eval_len"].astype(int), p["ppl"], strict=True)) if len(p) else {}
        ratio = by_len[longest] / by_len[L] if L in by_len and longest in by_len else None
        rows.append([Cell(pos, "name"),
                     *(Cell(_acc_text(at[n]) if n in at else "—", "num",
                            float(at[n]["accuracy_mean"]) if n in at else None)
                       for n in (L, longest)),
                     Cell("—" if ratio is None else f"{fmt_num(ratio)}×", "num", ratio)])
    view = TableView(tid, "Retrieval beside perplexity",
                     ["position", f"accuracy at L={L:,}", f"accuracy at {longest:,}",
                      f"ppl({longest:,}) / ppl(L), {PPL_MODE}"], rows,
                     "A method can keep its perplexity past L while its retrieval collapses: "
                     "read the two together. The ratio needs an LM run with the same L in this "
                     "directory (`lsbench extrapolate --out DIR`).")
    view.group = "Retrieval at length"
    return view


def add_recall(sec: Section, anchor: str, plot_dir: Path | None) -> None:
    """Add the retrieval plot, tables, headline and settings of sec.run's recall.csv."""
    run = sec.run
    summary = summary_frame(run.recall)
    if summary.empty:
        return
    ex = run.extrapolation
    fig = recall_figure(summary, ex) if plot_dir is not None else None
    if fig is not None:
        beside = "; left, the same methods' perplexity (LM task)" if not ex.empty else ""
        sec.plots.append(plots.render(
            fig, "recall", "Retrieval accuracy vs evaluation length",
            "Each position method's causal LM trained on MQAR at L (dashed line) and scored at "
            f"longer lengths: query accuracy, mean and 95% CI band over seeds{beside}. Higher "
            "is better; a method that extrapolates keeps its accuracy past L.", plot_dir))
    for L, part in summary.groupby("train_len"):
        sec.tables.append(accuracy_view(part, f"{anchor}-recall-L{int(L)}"))
        sec.tables.append(beside_view(part, ex, f"{anchor}-recall-beside-L{int(L)}"))
        sec.exports[f"recall-L{int(L)}"] = part
    ok = summary[summary["status"] == "ok"]
    if not ok.empty:
        longest = ok[ok["eval_len"] == ok["eval_len"].max()].sort_values("accuracy_mean")
        best = longest.iloc[-1]
        sec.headlines.append(
            f"Retrieval at {int(best['eval_len']):,} ({best['eval_mult']:g}L): best "
            f"{best['position']} {_acc_text(best)}, worst {longest.iloc[0]['position']} "
            f"{_acc_text(longest.iloc[0])} (MQAR query accuracy, mean ± 95% CI).")
    rp = run.recall_meta.get("recall_preset")
    if rp and "recall_preset" not in run.meta:  # run.json is an LM run's: show the task too
        sec.trust.append(("recall task", ", ".join(f"{k}={v}" for k, v in rp.items())))
