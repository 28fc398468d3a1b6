"""`lsbench report`: a thin wrapper over lsbench.report.build_report."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated

import typer

from lsbench.cli._app import app, console, err_console, friendly
from lsbench.errors import LsbenchError


class ReportFormat(str, Enum):
    html = "html"
    md = "md"
    csv = "csv"


@app.command()
@friendly
def report(
    run_dirs: Annotated[list[str], typer.Argument(
        help="Run directories written by `lsbench run` or `lsbench extrapolate` "
             "(e.g. reports/latest).", show_default=False, metavar="RUN_DIR")],
    html: Annotated[str | None, typer.Option(
        "--html", help="Where to write the HTML page (default: RUN_DIR/report.html).",
        show_default=False, metavar="FILE")] = None,
    fmt: Annotated[ReportFormat, typer.Option(
        "--format", "-f", help="html: one self-contained page; md: GitHub Markdown tables "
        "with PNG plot links; csv: the pivot and summary tables.")] = ReportFormat.html,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Output for md (a file, or - to print it) or csv (a directory) "
        "(default: md is printed when stdout is a pipe or file, else RUN_DIR/report.md; csv: "
        "RUN_DIR/tables/).", show_default=False,
        metavar="PATH")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open the HTML page in a browser.")]
    = False,
) -> None:
    """Turn runs into tables, Fig-2-style plots and one self-contained HTML page.

    Plots are also saved as PNG and SVG under RUN_DIR/plots/.

    [bold]Exit codes[/]: 0 the report was written (also when every configuration failed: the
    page says so and lists the reasons); 1 a RUN_DIR is missing or holds no results yet, or
    the output cannot be written.
    """
    import webbrowser

    from lsbench.report import build_report

    if open_ and fmt is not ReportFormat.html:
        raise LsbenchError(f"--open opens the HTML page but --format is {fmt.value}; drop "
                           "--open, or use --format html.")
    if html and fmt is not ReportFormat.html:
        raise LsbenchError(f"--html writes an HTML page but --format is {fmt.value}; use "
                           "--out for Markdown or CSV output.")
    if fmt is ReportFormat.md and out is None and not sys.stdout.isatty():
        out = "-"  # `lsbench report RUN -f md > report.md` and pipes get the Markdown itself
    result = build_report(run_dirs, fmt.value, html or out)
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    if result.text is not None:
        print(result.text)
        return
    written = [f for f in result.files if f.suffix != ".png"]
    for f in written:
        console.print(f"wrote [bold]{f}[/] ({_size(f.stat().st_size)})", highlight=False)
    console.print(f"{result.n_plots} plot(s) (PNG + SVG under plots/), {result.n_tables} "
                  f"table(s), built in {result.seconds:.1f} s", highlight=False)
    if result.all_failed:
        console.print("[yellow]every configuration failed[/]: the report lists the reasons.")
    if open_ and fmt is ReportFormat.html:
        webbrowser.open(written[0].resolve().as_uri())


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
