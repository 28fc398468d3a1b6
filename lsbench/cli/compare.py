"""`lsbench compare`: a thin wrapper over lsbench.report.compare."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from lsbench.cli._app import app, console, err_console, friendly
from lsbench.errors import LsbenchError


@app.command()
@friendly
def compare(
    run_a: Annotated[str, typer.Argument(help="The baseline run directory.",
                                         show_default=False, metavar="RUN_A")],
    run_b: Annotated[str, typer.Argument(help="The new run directory.", show_default=False,
                                         metavar="RUN_B")],
    fail_above: Annotated[str | None, typer.Option(
        "--fail-above", help="Exit 2 when any significant slowdown or memory growth exceeds "
        "this, e.g. 5% (for CI); a config that ran in A but fails in B counts too. Gates on "
        "the normalized change when the ratios are relative to the canary.",
        show_default=False, metavar="PCT")] = None,
    normalize: Annotated[str | None, typer.Option(
        "--normalize", help="canary: latency ratios relative to the machine's canary (B/A ÷ "
        "canary B/A); none: raw. Default: canary when the two runs' canaries differ beyond "
        "their noise, else none.", show_default=False, metavar="canary|none")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Compare runs from different devices anyway.")] = False,
    limit: Annotated[int, typer.Option(help="Rows to show (0: all).")] = 40,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
    csv_file: Annotated[str | None, typer.Option(
        "--csv", help="Also write every compared config to this CSV file.",
        show_default=False, metavar="FILE")] = None,
) -> None:
    """Which configurations got faster or slower from RUN_A to RUN_B, with significance.

    Configs are matched by config_id. The ratio is B/A; a latency change is significant only
    when the two confidence intervals do not overlap; memory counts when it moves by more
    than 2%.

    First the machine is compared: each run's canary (a fixed matmul + SDPA timed through the
    sweep) and environment. When the canary moved beyond its noise, the machine ran faster or
    slower, and the ratios are shown relative to it (--normalize). When nearly all rows moved
    together, that is said too: with a canary that did not move, it is a change of code or
    libraries; without canaries (runs from before lsbench recorded one), machine and code
    cannot be told apart.

    [bold]Exit codes[/]: 0 compared (no regression above --fail-above); 1 a run is missing,
    the runs share no configs, or they came from different devices (without --force); 2 a
    significant regression exceeds --fail-above; 3 (with --fail-above) the runs are not
    comparable: nearly all rows moved together and a run has no usable canary, so a slower
    machine cannot be told from a regression (rerun both on a quiet machine, or gate on raw
    times with --normalize none).
    """
    from lsbench.report.compare import compare_runs, parse_percent

    threshold = parse_percent(fail_above) if fail_above is not None else None
    cmp = compare_runs(run_a, run_b, force=force, normalize=normalize)
    if cmp.device_note:
        err_console.print(f"[yellow]warning:[/] {cmp.device_note}", highlight=False)
    m = cmp.machine
    if not as_json:
        for i, msg in enumerate(m.messages):
            lead = "[bold yellow]machine:[/] " if i == 0 and (m.canary_moved or m.moved["fired"])\
                else "[dim]machine:[/] "
            console.print(lead + msg, highlight=False, soft_wrap=True)
    if csv_file:
        try:
            cmp.table.to_csv(csv_file, index=False)
        except OSError as e:
            raise LsbenchError(f"cannot write {csv_file} ({e.strerror}).") from None
    bad = cmp.regressions(threshold) if threshold is not None else cmp.table.iloc[0:0]
    if as_json:
        print(json.dumps({
            "run_a": str(cmp.a.path), "run_b": str(cmp.b.path), "counts": cmp.counts(),
            "only_in_a": cmp.only_a, "only_in_b": cmp.only_b, "fail_above": threshold,
            "machine": {"canary_a": m.canary_a, "canary_b": m.canary_b,
                        "canary_ratio": m.factor, "canary_noise": m.factor_noise,
                        "canary_moved": m.canary_moved, "canary_note": m.canary_note,
                        "rows_moved": m.moved, "environment": m.env_diffs,
                        "normalized": m.normalized, "comparable": m.comparable,
                        "messages": m.messages},
            "regressions": bad["config_id"].tolist(),
            "rows": json.loads(cmp.table.to_json(orient="records")),
        }, indent=2))
    else:
        _print_comparison(cmp, limit, threshold, bad)
    if threshold is not None and not m.comparable:
        raise typer.Exit(3)
    if threshold is not None and not bad.empty:
        raise typer.Exit(2)


def _print_comparison(cmp, limit: int, threshold: float | None, bad) -> None:
    from rich import box

    from lsbench.report.tables import fmt_num

    t = cmp.table
    norm = cmp.normalized
    table = Table(title=f"{cmp.b.name} vs {cmp.a.name} (ratio B/A"
                  + (f" and B/A ÷ canary {cmp.machine.factor:.2f}" if norm else "")
                  + ", worst first)", box=box.SIMPLE_HEAD, pad_edge=False)
    cols = ("variant", "mode", "B×N", "A ms", "B ms", "B/A", *(("÷ canary",) if norm else ()),
            "mem B/A", "change")
    for col in cols:
        table.add_column(col, justify="left" if col in ("variant", "mode", "change")
                         else "right", no_wrap=True, min_width=11 if col == "variant" else None)
    colours = {"slower": "red", "now fails": "bold red", "more memory": "red",
               "faster": "green", "now runs": "green", "less memory": "green"}
    shown = t if limit <= 0 else t.head(limit)
    for r in shown.itertuples(index=False):
        colour = colours.get(r.change)
        change = f"[{colour}]{r.change}[/]" if colour else r.change
        table.add_row(
            r.variant, {"inference": "infer", "training": "train"}.get(r.mode, r.mode),
            f"{r.batch_size}×{int(r.seq_len):,}",
            fmt_num(r.latency_a_ms) or r.status_a, fmt_num(r.latency_b_ms) or r.status_b,
            _ratio_cell(r.latency_ratio, r.latency_significant),
            *((_ratio_cell(r.latency_ratio_normalized, bool(r.latency_significant_normalized)),)
              if norm else ()),
            _ratio_cell(r.mem_ratio, r.mem_significant), change)
    console.print(table)
    if len(shown) < len(t):
        console.print(f"... {len(t) - len(shown)} more row(s); --limit 0 shows all.")
    counts = ", ".join(f"{k}: {v}" for k, v in cmp.counts().items())
    console.print(f"{len(t)} shared config(s) ({counts}); only in A: {cmp.only_a}, only in "
                  f"B: {cmp.only_b}. * = significant (confidence intervals do not overlap).",
                  highlight=False)
    if threshold is not None and not cmp.machine.comparable:
        console.print(f"[bold red]not comparable[/]: --fail-above {threshold:.1%} is not "
                      "decided (machine or code? see 'machine:' above)", highlight=False)
    elif threshold is not None:
        what = " (relative to the canary)" if norm else ""
        if bad.empty:
            console.print(f"[green]no significant regression above {threshold:.1%}{what}[/]")
        else:
            console.print(f"[bold red]{len(bad)} significant regression(s) above "
                          f"{threshold:.1%}{what}[/]: " + ", ".join(bad["config_id"].head(10)),
                          highlight=False)


def _ratio_cell(ratio: float, significant: bool) -> str:
    if ratio != ratio:  # NaN: one side did not run
        return "-"
    return f"{ratio:.2f}×" + ("*" if significant else "")
