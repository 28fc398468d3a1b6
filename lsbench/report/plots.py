"""Fig-2-style plots (matplotlib, Agg): saved as PNG + SVG and returned as inline SVG.

Every variant and position method keeps one colour and marker in every plot of every report:
a fixed table for the known names, a hash of the name for the rest.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from markupsafe import escape  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from lsbench.errors import LsbenchError  # noqa: E402
from lsbench.report.tables import (  # noqa: E402
    KNOWN_POSITIONS,
    STOP_STATUSES,
    groups,
    ordered,
)

_TAB10 = plt.get_cmap("tab10").colors
_TAB20 = plt.get_cmap("tab20").colors
_TAB20B = plt.get_cmap("tab20b").colors
FIXED_STYLES: dict[str, tuple[str, str]] = {
    # variants (Fastformer Fig. 2 set)
    "transformer": (matplotlib.colors.to_hex(_TAB10[0]), "o"),
    "sdpa": (matplotlib.colors.to_hex(_TAB10[7]), "D"),
    "longformer": (matplotlib.colors.to_hex(_TAB10[1]), "s"),
    "bigbird": (matplotlib.colors.to_hex(_TAB10[2]), "^"),
    "linformer": (matplotlib.colors.to_hex(_TAB10[4]), "v"),
    "linear": (matplotlib.colors.to_hex(_TAB10[5]), "P"),
    "poolingformer": (matplotlib.colors.to_hex(_TAB10[6]), "h"),
    "fastformer": (matplotlib.colors.to_hex(_TAB10[3]), "*"),
    # modern mixers (issue 10): colours no Fig. 2 variant or position method uses (tab10's
    # cyan, tab20b's dark shades); the two sliding windows share a light orange
    "performer": (matplotlib.colors.to_hex(_TAB10[9]), "d"),
    "nystromformer": (matplotlib.colors.to_hex(_TAB20B[0]), "p"),
    "mamba2": (matplotlib.colors.to_hex(_TAB20B[8]), "H"),
    "local": (matplotlib.colors.to_hex(_TAB20[3]), "<"),
    "flex_window": (matplotlib.colors.to_hex(_TAB20[3]), ">"),
    "flex_causal": (matplotlib.colors.to_hex(_TAB20B[12]), "8"),
    # position methods (ALiBi Fig. 1 set)
    "sinusoidal": (matplotlib.colors.to_hex(_TAB10[0]), "o"),
    "rotary": (matplotlib.colors.to_hex(_TAB10[1]), "s"),
    "t5": (matplotlib.colors.to_hex(_TAB10[2]), "^"),
    "t5_bias": (matplotlib.colors.to_hex(_TAB10[2]), "^"),
    "alibi": (matplotlib.colors.to_hex(_TAB10[3]), "*"),
    "learned": (matplotlib.colors.to_hex(_TAB10[4]), "v"),
    "xpos": (matplotlib.colors.to_hex(_TAB10[5]), "P"),
    "kerple": (matplotlib.colors.to_hex(_TAB10[6]), "h"),
    "fire": (matplotlib.colors.to_hex(_TAB10[8]), "X"),
    "none": (matplotlib.colors.to_hex(_TAB10[7]), "D"),
}
# Names outside the table (plugins, new position methods): tab20b shades the fixed table does
# not use, so a plugin never takes a built-in's colour.
_EXTRA_COLORS = [c for c in (matplotlib.colors.to_hex(c) for c in _TAB20B)
                 if c not in {colour for colour, _ in FIXED_STYLES.values()}]
_EXTRA_MARKERS = ["o", "s", "^", "v", "D", "P", "h", "*", "<", ">", "p", "d"]
FAIL_MARKERS = {"oom": "X", "skipped": "x", "timeout": "v", "error": "$!$"}


def style(name: str) -> tuple[str, str]:
    """(colour, marker) for a variant or position method, the same in every plot."""
    if name in FIXED_STYLES:
        return FIXED_STYLES[name]
    h = int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16)
    return _EXTRA_COLORS[h % len(_EXTRA_COLORS)], _EXTRA_MARKERS[(h // 97) % len(_EXTRA_MARKERS)]


def label(text: str) -> str:
    """Text from a results file, shown literally (no mathtext, not hidden by a leading _)."""
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


@dataclass
class Plot:
    name: str  # file stem under RUN_DIR/plots/
    title: str
    caption: str
    svg: str  # inline-ready <svg> element
    png_path: Path
    svg_path: Path


# --- latency-type plots (Fig. 2) -----------------------------------------------------------

METRICS = {
    # column: (title, y label, draw the IQR band)
    "latency_ms": ("Latency vs sequence length", "latency per step (ms)", True),
    "peak_mem_mib": ("Peak memory vs sequence length", "peak memory (MiB)", False),
    "tokens_per_s": ("Throughput vs sequence length", "tokens / s", False),
    "pct_of_peak": ("Share of the machine's matmul peak", "% of measured peak FLOP/s", False),
}


def metric_figure(rows: pd.DataFrame, metric: str, title: str) -> plt.Figure | None:
    """One panel per batch size (rows) x mode (columns); None when nothing to draw."""
    if rows.empty or rows[metric].notna().sum() == 0 and metric != "latency_ms":
        return None
    panels = list(groups(rows))
    modes = sorted({m for m, _, _ in panels}, key=lambda m: (m != "inference", m))
    batches = sorted({b for _, b, _ in panels})
    fig, axes = _grid(len(batches), len(modes))
    _, ylabel, band = METRICS[metric]
    seen_variants: list[str] = []
    seen_fails: set[str] = set()
    with_lines = set()
    for mode, batch, sub in panels:
        ax = axes[batches.index(batch)][modes.index(mode)]
        for variant in ordered(sub["variant"].unique()):
            v = sub[sub["variant"] == variant].sort_values("seq_len")
            drawn, fails = _draw_variant(ax, v, variant, metric, band)
            if drawn or fails:
                seen_variants.append(variant)
            if drawn:
                with_lines.add(ax)
            seen_fails |= fails
        ax.set_title(f"{mode} · batch {batch}", fontsize=10)
    for (r, c), ax in np.ndenumerate(axes):
        # log y only where a line was drawn (failure markers alone have no height)
        _format_axes(ax, ylabel if c == 0 else None, "sequence length N" if r == len(batches) - 1
                     else None, log_y=metric != "pct_of_peak" and ax in with_lines)
        if ax not in with_lines:
            ax.text(0.5, 0.5, "no measurement", ha="center", va="center",
                    transform=ax.transAxes, color="0.5")
    handles = [_variant_handle(v) for v in ordered(set(seen_variants))]
    handles += [Line2D([], [], color="0.3", marker=FAIL_MARKERS[s], linestyle="none",
                       markersize=8, label=_FAIL_LABELS[s]) for s in FAIL_MARKERS
                if s in seen_fails]
    if UNSTEADY in seen_fails:
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white",
                              linestyle="none", markersize=6,
                              label="hollow: contended ‡ or noisy †"))
    if band and handles:
        handles.append(matplotlib.patches.Patch(color="0.5", alpha=0.25, label="IQR"))
    fig.suptitle(label(title), fontsize=11, y=1 - 0.15 / fig.get_figheight())
    if handles:
        fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    return fig


_FAIL_LABELS = {"oom": "out of memory", "skipped": "skipped (would not fit)",
                "timeout": "timed out", "error": "error"}


# Panel grid with fixed margins in inches (tight_layout costs ~0.5 s per figure): room for
# tick labels on the left, the shared legend on the right, the titles on top.
PANEL_W, PANEL_H, LEFT, RIGHT, TOP, BOTTOM, GAP_W, GAP_H = 4.0, 2.7, 0.8, 1.9, 0.65, 0.55, 0.6, 0.6


def _grid(nrows: int, ncols: int):
    width = LEFT + ncols * PANEL_W + (ncols - 1) * GAP_W + RIGHT
    height = TOP + nrows * PANEL_H + (nrows - 1) * GAP_H + BOTTOM
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(width, height))
    fig.subplots_adjust(left=LEFT / width, right=1 - RIGHT / width, bottom=BOTTOM / height,
                        top=1 - TOP / height, wspace=GAP_W / PANEL_W, hspace=GAP_H / PANEL_H)
    return fig, axes


def _draw_variant(ax, v: pd.DataFrame, variant: str, metric: str,
                  band: bool) -> tuple[bool, set[str]]:
    """Draw one variant's line, ending at its first OOM/skip/timeout; returns what was drawn."""
    color, marker = style(variant)
    stops = v[v["status"].isin(STOP_STATUSES)]
    stop_n = stops["seq_len"].min() if not stops.empty else np.inf
    ok = v[(v["status"] == "ok") & (v["seq_len"] < stop_n) & v[metric].notna()]
    ok = ok[ok[metric] > 0] if metric != "pct_of_peak" else ok
    if not ok.empty:
        ax.plot(ok["seq_len"], ok[metric], color=color, marker=marker, markersize=5,
                linewidth=1.6, label=label(variant))
        if band:
            half = ok["latency_ms_iqr"].fillna(0) / 2
            lo = (ok[metric] - half).clip(lower=ok[metric] * 0.05)
            ax.fill_between(ok["seq_len"], lo, ok[metric] + half, color=color, alpha=0.2,
                            linewidth=0)
    fails: set[str] = set()
    unsteady = ok[_unsteady(ok)] if metric in TIMED_METRICS else ok.iloc[:0]
    if not unsteady.empty:  # hollow: the time is an upper bound (‡) or spread widely (†)
        ax.plot(unsteady["seq_len"], unsteady[metric], color=color, marker=marker,
                markersize=6, markerfacecolor="white", markeredgewidth=1.3, linestyle="none")
        fails.add(UNSTEADY)
    marks = []
    if not stops.empty:
        first = stops.sort_values("seq_len").iloc[0]
        marks.append((first["seq_len"], first["status"]))
    errors = v[(v["status"] == "error") & (v["seq_len"] < stop_n)]
    marks += [(n, "error") for n in errors["seq_len"]]
    for n, status in marks:
        before = ok[ok["seq_len"] < n]
        if not before.empty and status != "error":
            ax.plot([n], [before[metric].iloc[-1]], marker=FAIL_MARKERS[status], color=color,
                    markersize=9, linestyle="none")
        else:  # no height to draw it at: mark it on the bottom edge
            trans = blended_transform_factory(ax.transData, ax.transAxes)
            ax.plot([n], [0.04], marker=FAIL_MARKERS[status], color=color, markersize=9,
                    linestyle="none", transform=trans, clip_on=False)
        fails.add(status)
    return not ok.empty, fails


TIMED_METRICS = ("latency_ms", "tokens_per_s", "pct_of_peak")  # memory is measured apart
UNSTEADY = "unsteady"


def _unsteady(df: pd.DataFrame) -> pd.Series:
    """Rows timed while another process took the CPU, or whose samples spread > 10%."""
    flag = pd.Series(False, index=df.index)
    for col in ("contended", "noisy"):
        if col in df:
            flag |= df[col].fillna(False).astype(bool)
    return flag


def _variant_handle(name: str) -> Line2D:
    color, marker = style(name)
    return Line2D([], [], color=color, marker=marker, markersize=5, label=label(name))


def _format_axes(ax, ylabel: str | None, xlabel: str | None, log_y: bool = True) -> None:
    ax.set_xscale("log", base=2)
    if log_y:
        # Plain tick labels: cheaper than mathtext powers of ten, and readable as numbers.
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_num_tick))
        lo, hi = ax.get_ylim()
        if hi / lo < 100:  # under two decades: label 2x and 5x too
            ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_num_tick))
        else:
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_len_tick))
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(which="both", labelsize=8)


def _num_tick(y: float, _pos) -> str:
    if y >= 1:
        return f"{y:,.0f}"
    return f"{y:.10f}".rstrip("0").rstrip(".")


def _len_tick(x: float, _pos) -> str:
    if x >= 1024 and x % 1024 == 0:
        return f"{int(x) // 1024}K"
    return f"{int(x)}" if x >= 1 else f"{x:g}"


# --- extrapolation plot (ALiBi Fig. 1) -----------------------------------------------------

def extrapolation_figure(ex: pd.DataFrame) -> plt.Figure | None:
    """Perplexity vs evaluation length, one line per position method; panels per eval mode
    (columns) and training length (rows); a vertical line at the training length."""
    ex = ex.dropna(subset=["eval_len", "ppl"])
    if ex.empty:
        return None
    modes = sorted(ex["eval_mode"].unique(), key=lambda m: (m != "nonoverlapping", m))
    train_lens = sorted(int(t) for t in ex["train_len"].dropna().unique()) or [None]
    fig, axes = _grid(len(train_lens), len(modes))
    names = ordered(ex["position"].astype(str).unique(), KNOWN_POSITIONS)
    for (r, c), ax in np.ndenumerate(axes):
        mode, train_len = modes[c], train_lens[r]
        sub = ex[ex["eval_mode"] == mode]
        if train_len is not None:
            sub = sub[sub["train_len"] == train_len]
        for name in names:
            p = sub[sub["position"].astype(str) == name].sort_values("eval_len")
            if p.empty:
                continue
            color, marker = style(name)
            ax.plot(p["eval_len"], p["ppl"], color=color, marker=marker, markersize=5,
                    linewidth=1.6)
        if train_len is not None:
            ax.axvline(train_len, color="0.3", linestyle="--", linewidth=1)
            ax.text(train_len, 0.98, f" L={train_len:,}", transform=blended_transform_factory(
                ax.transData, ax.transAxes), va="top", fontsize=8, color="0.3")
        title = mode + (f" · trained at {train_len:,}" if train_len is not None else "")
        ax.set_title(label(title), fontsize=10)
        _format_axes(ax, "perplexity" if c == 0 else None,
                     "evaluation length" if r == len(train_lens) - 1 else None)
    fig.suptitle("Perplexity vs evaluation length (train short, test long)", fontsize=11,
                 y=1 - 0.15 / fig.get_figheight())
    fig.legend(handles=[_variant_handle(n) for n in names], loc="center right", fontsize=8,
               frameon=False)
    return fig


def training_curve_figure(curve: pd.DataFrame) -> plt.Figure | None:
    """Training loss vs tokens seen, one line per position method (smoothed; raw faint)."""
    curve = curve.dropna(subset=["loss"])
    if curve.empty:
        return None
    x = "tokens" if curve["tokens"].notna().all() else "step"
    fig, axes = _grid(1, 1)
    ax = axes[0][0]
    for name in ordered(curve["position"].astype(str).unique(), KNOWN_POSITIONS):
        c = curve[curve["position"].astype(str) == name].sort_values(x)
        color, _ = style(name)
        window = max(1, len(c) // 25)
        ax.plot(c[x], c["loss"], color=color, alpha=0.2, linewidth=0.8)
        ax.plot(c[x], c["loss"].rolling(window, min_periods=1).mean(), color=color,
                linewidth=1.6)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("training tokens" if x == "tokens" else "step", fontsize=9)
    ax.set_ylabel("training loss (nats / token)", fontsize=9)
    ax.tick_params(which="both", labelsize=8)
    fig.suptitle("Training loss", fontsize=11, y=1 - 0.15 / fig.get_figheight())
    names = ordered(curve["position"].astype(str).unique(), KNOWN_POSITIONS)
    fig.legend(handles=[_variant_handle(n) for n in names], loc="center right", fontsize=8,
               frameon=False)
    return fig


# --- the canary (issue 21) -----------------------------------------------------------------

def canary_plot(run, out_dir: Path) -> Plot | None:
    """The canary's readings over the run (median with IQR bars, drifted ones in red,
    transient ones hollow, the reference ±10% shaded) above each row's hypervisor steal share;
    None without a canary. The data: lsbench.measure.canary.canary_series / steal_points."""
    from lsbench.measure.canary import DRIFT_LIMIT, canary_series, reference, steal_points
    from lsbench.measure.steal import MAX_STEAL_SHARE

    series = canary_series(run.path, run.meta)
    if not series:
        return None
    steal = steal_points(run.rows, run.meta.get("started_at"))
    fig, axes = plt.subplots(2 if steal else 1, 1, figsize=(7.5, 4.6 if steal else 2.8),
                             sharex=True, squeeze=False, constrained_layout=True)
    ax = axes[0][0]
    t = [r["t_s"] for r in series]
    ms = [r["ms"] for r in series]
    ref = reference(series)["ms"]
    ax.axhspan(ref * (1 - DRIFT_LIMIT), ref * (1 + DRIFT_LIMIT), color="0.85", alpha=0.6,
               label=f"reference ±{DRIFT_LIMIT:.0%}")
    ax.errorbar(t, ms, yerr=[r.get("iqr_ms", 0) / 2 for r in series], color="0.3",
                marker="o", markersize=4, linewidth=1, capsize=2, label="canary (median, IQR)")
    bad = [r for r in series if r.get("drift")]
    if bad:
        ax.plot([r["t_s"] for r in bad], [r["ms"] for r in bad], "o", color="#d62728",
                markersize=6, label="drifted")
    moment = [r for r in series if r.get("transient")]
    if moment:
        ax.plot([r["t_s"] for r in moment], [r["ms"] for r in moment], "o", color="#d62728",
                markerfacecolor="none", markersize=6, label="transient (not confirmed)")
    ax.set_ylabel("canary ms per call", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    if steal:
        ax2 = axes[1][0]
        ax2.plot([x for x, _ in steal], [100 * y for _, y in steal], "s", markersize=3,
                 color="#1f77b4", label="rows")
        ax2.axhline(100 * MAX_STEAL_SHARE, color="#d62728", linewidth=0.8, linestyle="--",
                    label=f"contended above {MAX_STEAL_SHARE:.0%}")
        ax2.set_ylabel("steal % of CPU", fontsize=9)
        ax2.set_ylim(bottom=0)
        ax2.legend(fontsize=7, frameon=False, loc="best")
        ax2.grid(True, alpha=0.3)
        ax2.tick_params(labelsize=8)
    axes[-1][0].set_xlabel("seconds since the run started", fontsize=9)
    return render(fig, "canary", "Canary and steal over the run",
                  "A fixed matmul + SDPA timed at the start, about every 30 s and at the end: "
                  "a reading outside the reference (the median of three start readings) by "
                  "> 10% and 3 MADs, and again in a second reading taken at once (red), means "
                  "the machine changed speed, and rows measured next to it are marked drift "
                  "(§); one not confirmed by the second reading (hollow) was a moment. "
                  "Below, each row's share of the CPU the hypervisor took (steal, /proc/stat).",
                  out_dir)


# --- output -------------------------------------------------------------------------------

def render(fig: plt.Figure, name: str, title: str, caption: str, out_dir: Path) -> Plot:
    """Save `fig` as PNG and SVG under out_dir and return it with an inline SVG."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # A salt per plot keeps matplotlib's clip-path/marker ids unique across one HTML page.
        with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"lsbench-{name}"}):
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata=_NO_METADATA)
        svg = buf.getvalue()
        svg_path, png_path = out_dir / f"{name}.svg", out_dir / f"{name}.png"
        svg_path.write_text(svg, encoding="utf-8")
        fig.savefig(png_path, format="png", dpi=100, metadata={"Software": None})
    except OSError as e:
        raise LsbenchError(f"cannot write plots to {out_dir} ({e.strerror}); make the run "
                           "directory writable or copy it somewhere that is.") from None
    finally:
        plt.close(fig)
    return Plot(name, title, caption, inline_svg(svg, title), png_path, svg_path)


_NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}


def inline_svg(svg: str, title: str = "") -> str:
    """An <svg> element fit for an HTML page: no XML prolog, DOCTYPE, namespaces (HTML does
    not need them, and the page then holds no http:// string at all) or unreferenced ids."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg, count=2)
    refs = set(re.findall(r'(?:href="#|url\(#)([^")]+)', svg))
    svg = re.sub(r' id="([^"]+)"', lambda m: m.group(0) if m.group(1) in refs else "", svg)
    # role/aria-label: screen readers announce the plot by its title.
    return svg.replace("<svg ", f'<svg role="img" aria-label="{escape(title)}" ', 1)
