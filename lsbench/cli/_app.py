"""The typer app and what every command shares: consoles and the LsbenchError -> exit 1 rule.

The cli package is the only code that prints or exits. Library code raises `LsbenchError`,
which is shown as one red line (no traceback) with exit code 1. Usage errors that click finds
itself (an unknown option, a value that is not an int or not one of the choices) are shown as
typer shows them, also with exit code 1 (click's default is 2): one code for every bad input.
"""

from __future__ import annotations

from functools import wraps
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

import lsbench
from lsbench.errors import LsbenchError

# click's UsageError as this typer raises it (newer typer vendors click: typer._click)
UsageError = typer.BadParameter.__base__


class _Group(TyperGroup):
    """Usage errors exit with 1, like LsbenchError (see the module docstring)."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as e:
            e.exit_code = 1
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as e:  # a subcommand's own arguments
            e.exit_code = 1
            raise


app = typer.Typer(
    cls=_Group,
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
