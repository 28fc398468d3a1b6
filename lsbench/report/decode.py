"""The decode-at-depth part of a run's report (issue 18; rows from `--mode decode`).

Decode latency vs depth is drawn by the Fig-2 panels (one per mode) and its crossover depth
against `sdpa` by the crossover table, like every mode. This module adds what only decode rows
have: the state each variant keeps per sequence vs depth (KV cache grows, a window or a
recurrent state does not), tokens/s vs batch size at one depth, and a table per depth.
"""

from __future__ import annotations

import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.lines import Line2D

from lsbench.report import plots
from lsbench.report.tables import ordered

MIB = 2**20


def decode_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The measured decode rows (those that carry a state size)."""
    if rows.empty or "state_bytes" not in rows:
        return rows.iloc[0:0]
    ok = rows[(rows["mode"] == "decode") & (rows["status"] == "ok")]
    return ok[ok["state_bytes"].notna()]


def state_figure(rows: pd.DataFrame) -> plt.Figure | None:
    """State MiB per sequence vs depth, log-log: measured (line) and formula (dotted)."""
    dec = decode_rows(rows)
    if dec.empty:
        return None
    fig, axes = plots._grid(1, 1)
    ax = axes[0][0]
    names = ordered(dec["variant"].unique())
    for name in names:
        v = dec[dec["variant"] == name].groupby("seq_len")[
            ["state_bytes", "state_bytes_formula"]].first().sort_index()
        color, marker = plots.style(name)
        ax.plot(v.index, v["state_bytes"] / MIB, color=color, marker=marker, markersize=5,
                linewidth=1.6, label=plots.label(name))
        formula = v["state_bytes_formula"].dropna()
        if not formula.empty:
            ax.plot(formula.index, formula / MIB, color=color, linestyle=":", linewidth=1.2)
    plots._format_axes(ax, "state per sequence (MiB)", "depth N (tokens in context)")
    handles = [plots._variant_handle(n) for n in names]
    handles.append(Line2D([], [], color="grey", linestyle=":", label="formula"))
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    return fig


def batch_depth(rows: pd.DataFrame) -> int | None:
    """The deepest depth measured at two or more batch sizes (None when there is none)."""
    dec = decode_rows(rows)
    counts = dec.groupby("seq_len")["batch_size"].nunique()
    deep = counts[counts >= 2]
    return int(deep.index.max()) if not deep.empty else None


def batch_figure(rows: pd.DataFrame) -> tuple[plt.Figure, int] | None:
    """Tokens/s vs batch size at `batch_depth`, one line per variant, log-log."""
    depth = batch_depth(rows)
    if depth is None:
        return None
    dec = decode_rows(rows)
    dec = dec[dec["seq_len"] == depth]
    fig, axes = plots._grid(1, 1)
    ax = axes[0][0]
    for name in ordered(dec["variant"].unique()):
        v = dec[dec["variant"] == name].sort_values("batch_size")
        color, marker = plots.style(name)
        ax.plot(v["batch_size"], v["tokens_per_s"], color=color, marker=marker, markersize=5,
                linewidth=1.6, label=plots.label(name))
    plots._format_axes(ax, "generated tokens / s", "batch size")
    ax.legend(fontsize=8, loc="upper left")
    return fig, depth


def depth_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (depth, batch, variant): ms per token, tokens/s, state MiB per sequence
    (measured and formula), and how many sequences' states fit the run's memory budget."""
    dec = decode_rows(rows)
    if dec.empty:
        return pd.DataFrame()
    order = {n: i for i, n in enumerate(ordered(dec["variant"].unique()))}
    out = dec.assign(
        state_mib=dec["state_bytes"] / MIB,
        state_mib_formula=dec["state_bytes_formula"] / MIB,
        _o=dec["variant"].map(order),
    ).sort_values(["seq_len", "batch_size", "_o"])
    cols = ["seq_len", "batch_size", "variant", "latency_ms", "tokens_per_s", "state_mib",
            "state_mib_formula", "max_batch_in_budget"]
    return out[[c for c in cols if c in out]].reset_index(drop=True)
