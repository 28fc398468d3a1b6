"""Plugins: installed entry points, and modules named in the environment variable LSBENCH_PLUGINS.

Installed packages register variants through the entry-point group `lsbench.variants`; they are
imported with `lsbench.variants` itself (see its docstring and examples/lsbench-plugin-example),
in the `lsbench run` process and in every worker. `load_plugins` refuses to start a run while an
entry point failed to load, naming it, so a sweep never silently lacks a variant.

For quick experiments without packaging, `LSBENCH_PLUGINS=mypkg.variants,/path/to/my_variant.py`
imports each module (or file) in the `lsbench run` process and in its worker processes, so
`Variant` subclasses defined there register themselves and can be swept like built-in ones
(tests use it for fault-injection variants).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from lsbench.errors import LsbenchError

ENV_VAR = "LSBENCH_PLUGINS"
_loaded: set[str] = set()


def load_plugins(spec: str | None = None) -> list[str]:
    """Import every plugin named in `spec` (default: $LSBENCH_PLUGINS); returns their names.

    Raises LsbenchError when an installed entry-point plugin could not be loaded.
    """
    from lsbench.variants import load_entry_points, plugin_errors_note

    load_entry_points()  # distributions installed since lsbench.variants was imported
    note = plugin_errors_note()
    if note:
        raise LsbenchError(note.strip())
    spec = os.environ.get(ENV_VAR, "") if spec is None else spec
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        if name in _loaded:
            continue
        try:
            if name.endswith(".py") or os.sep in name:
                _import_file(Path(name))
            else:
                importlib.import_module(name)
        except LsbenchError:
            raise
        except Exception as e:  # a broken plugin is the user's to fix, not a traceback
            raise LsbenchError(
                f"{ENV_VAR}: cannot import {name!r} ({type(e).__name__}: {e}); fix the module "
                f"or remove it from {ENV_VAR}."
            ) from None
        _loaded.add(name)
    return names


def _import_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    mod_name = f"lsbench_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
