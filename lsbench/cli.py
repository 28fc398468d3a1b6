"""The lsbench command line: thin typer wrappers over library functions.

This is the only module that prints or exits. Library code raises `LsbenchError`, which is shown
as one red line (no traceback) with exit code 1.
"""

from __future__ import annotations

import json
from enum import Enum
from functools import wraps
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import lsbench
from lsbench.errors import LsbenchError

app = typer.Typer(
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    help="Benchmark attention mechanisms for long sequences: speed, memory, extrapolation.",
)
console = Console()
err_console = Console(stderr=True)


def friendly(fn):
    """Turn LsbenchError into a clean message and exit code 1."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LsbenchError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        console.print(f"lsbench {lsbench.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """lsbench: latency, memory and length extrapolation of attention variants."""


class ListWhat(str, Enum):
    variants = "variants"
    positions = "positions"
    suites = "suites"
    corpora = "corpora"


def _print_rows(rows: list[dict], title: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=title, show_lines=False)
    for col in rows[0] if rows else []:
        table.add_column(col.replace("_", " "), overflow="fold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    console.print(table)


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    return str(value)


def _list_rows(what: ListWhat) -> list[dict]:
    if what is ListWhat.variants:
        from lsbench.variants import REGISTRY

        return [
            {
                "name": name,
                "method": cls.method,
                "paper": cls.paper,
                "time": cls.time_complexity,
                "memory": cls.memory_complexity,
                "causal": cls.supports_causal,
                "parameters": dict(cls.defaults),
            }
            for name, cls in sorted(REGISTRY.items())
        ]
    if what is ListWhat.positions:
        from lsbench.positions import list_rows

        return list_rows()
    if what is ListWhat.suites:
        from lsbench.sweep.suite import list_rows

        return list_rows()
    from lsbench.extrapolate.corpus import list_rows

    return list_rows()


@app.command("list")
@friendly
def list_(
    what: Annotated[ListWhat, typer.Argument(help="What to list.")] = ListWhat.variants,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
) -> None:
    """List attention variants, position methods, suites or corpora."""
    _print_rows(_list_rows(what), f"lsbench {what.value}", as_json)


@app.command()
@friendly
def env(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
) -> None:
    """Show the environment fingerprint, as a run would record it."""
    from lsbench.measure.env import fingerprint

    fp = fingerprint()
    if as_json:
        print(json.dumps(fp, indent=2))
        return
    table = Table(title="lsbench environment", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in fp.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


# --- lsbench run (sweep) -------------------------------------------------------------------

# --- lsbench extrapolate -------------------------------------------------------------------

# --- lsbench report / compare --------------------------------------------------------------
