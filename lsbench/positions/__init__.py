"""Position methods, one per file, registered by name on import.

    from lsbench.positions import REGISTRY, build
    pos = build("alibi", n_heads=8, head_dim=64)
    bias = pos(torch.arange(n), torch.arange(n))  # (H, N, N) additive score bias

Kinds are kept apart (see `base.py`): `bias` methods add to the attention scores, `rotary`
methods rotate q and k, `absolute` methods add to the token embeddings, `none` does nothing.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from lsbench.errors import LsbenchError, unknown_choice
from lsbench.positions.base import KINDS, REGISTRY, Position

# Auto-discovery: importing each module registers the Position subclasses it defines.
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")


def get(name: str) -> type[Position]:
    if name not in REGISTRY:
        raise unknown_choice("position method", name, REGISTRY)
    return REGISTRY[name]


def check(name: str, n_heads: int, head_dim: int, **params: Any) -> type[Position]:
    """Validate a position configuration without building it; returns the class."""
    cls = get(name)
    for key, value in (("n_heads", n_heads), ("head_dim", head_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise LsbenchError(f"{key} must be a positive integer, got {value!r}.")
    unknown = set(params) - set(cls.defaults)
    if unknown:
        key = sorted(unknown)[0]
        if cls.defaults:
            raise unknown_choice(f"parameter of position {name!r}", key, cls.defaults)
        raise LsbenchError(f"position {name!r} takes no parameters, got {key!r}.")
    cls.check_params(n_heads, head_dim, {**cls.defaults, **params})
    return cls


def build(name: str, n_heads: int, head_dim: int, **params: Any) -> Position:
    """Build the position method `name`; raises LsbenchError for bad names or parameters."""
    cls = check(name, n_heads, head_dim, **params)
    return cls(n_heads=n_heads, head_dim=head_dim, **params)


def list_rows() -> list[dict]:
    """One row per method for `lsbench list positions`."""
    return [
        {
            "name": name,
            "kind": cls.kind,
            "method": cls.method,
            "learned": cls.learned,
            "paper": cls.paper,
            "parameters": dict(cls.defaults),
        }
        for name, cls in sorted(REGISTRY.items())
    ]


__all__ = ["KINDS", "REGISTRY", "Position", "build", "check", "get", "list_rows"]
