"""The lsbench command line: one module per command, each a thin typer wrapper over library
functions (`lsbench.cli:app` is the entry point).

This package is the only code that prints or exits. Library code raises `LsbenchError`, which is
shown as one red line (no traceback) with exit code 1.
"""

import importlib

from lsbench.cli._app import app

# Importing a command module registers its command; this order is the order of `lsbench --help`.
for _name in ("run", "extrapolate", "quality", "report", "compare", "listing"):
    importlib.import_module(f"lsbench.cli.{_name}")

__all__ = ["app"]
