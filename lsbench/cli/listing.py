"""`lsbench list` and `lsbench env`."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer
from rich.table import Table

from lsbench.cli._app import app, console, friendly


class ListWhat(str, Enum):
    variants = "variants"
    positions = "positions"
    suites = "suites"
    corpora = "corpora"


def _print_rows(rows: list[dict], title: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    cells = [[_cell(v) for v in row.values()] for row in rows]
    cols = [c.replace("_", " ") for c in (rows[0] if rows else [])]
    widest = sum(max([len(c)] + [len(r[i]) for r in cells]) + 3 for i, c in enumerate(cols))
    if widest <= console.width:
        table = Table(title=title)
        for col in cols:
            table.add_column(col)
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    # Too wide for this terminal: one key/value card per entry rather than a crushed table.
    console.print(f"[bold]{title}[/]")
    for row in cells:
        card = Table(show_header=False, box=None, padding=(0, 1))
        card.add_column(style="bold", no_wrap=True)
        card.add_column(overflow="fold")
        for col, value in zip(cols[1:], row[1:], strict=True):
            card.add_row(col, value)
        console.print(f"\n[bold cyan]{row[0]}[/]")
        console.print(card)


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
