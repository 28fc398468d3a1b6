"""Extra variant modules named in the environment variable LSBENCH_PLUGINS.

`LSBENCH_PLUGINS=mypkg.variants,/path/to/my_variant.py` imports each module (or file) in the
`lsbench run` process and in its worker processes, so `Variant` subclasses defined there register
themselves and can be swept like built-in ones (tests use it for fault-injection variants).
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
    """Import every plugin named in `spec` (default: $LSBENCH_PLUGINS); returns their names."""
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
