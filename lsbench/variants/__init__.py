"""Attention variants, one per file, registered by name on import.

    from lsbench.variants import REGISTRY, build
    attn = build("longformer", d_model=256, n_heads=16, causal=False, window=256)
    y = attn(x)  # (B, N, d_model) -> (B, N, d_model)
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from lsbench.errors import LsbenchError, unknown_choice
from lsbench.variants.base import REGISTRY, Variant, count

# Auto-discovery: importing each module registers the Variant subclasses it defines.
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):  # _helpers register nothing
        importlib.import_module(f"{__name__}.{_mod.name}")


def get(name: str) -> type[Variant]:
    if name not in REGISTRY:
        raise unknown_choice("variant", name, REGISTRY)
    return REGISTRY[name]


def check(name: str, d_model: int, n_heads: int, causal: bool = False,
          **params: Any) -> type[Variant]:
    """Validate a variant configuration without building it; returns the class."""
    cls = get(name)
    for key, value in (("d_model", d_model), ("n_heads", n_heads)):
        if not isinstance(value, int) or value <= 0:
            raise LsbenchError(f"{key} must be a positive integer, got {value!r}.")
    if d_model % n_heads:
        raise LsbenchError(
            f"n_heads={n_heads} must divide d_model={d_model}; choose n_heads from "
            f"{[h for h in range(1, min(d_model, 64) + 1) if d_model % h == 0]}."
        )
    unknown = set(params) - set(cls.defaults)
    if unknown:
        key = sorted(unknown)[0]
        if cls.defaults:
            raise unknown_choice(f"parameter of variant {name!r}", key, cls.defaults)
        raise LsbenchError(f"variant {name!r} takes no parameters, got {key!r}.")
    if causal and not cls.supports_causal:
        causal_ok = sorted(n for n, c in REGISTRY.items() if c.supports_causal)
        raise LsbenchError(
            f"variant {name!r} does not support causal masking; causal variants: "
            f"{', '.join(causal_ok)}."
        )
    cls.check_params(d_model, n_heads, {**cls.defaults, **params})
    return cls


def build(name: str, d_model: int, n_heads: int, causal: bool = False, **params: Any) -> Variant:
    """Build the attention sublayer `name`; raises LsbenchError for bad names or parameters."""
    cls = check(name, d_model, n_heads, causal, **params)
    return cls(d_model=d_model, n_heads=n_heads, causal=causal, **params)


__all__ = ["REGISTRY", "Variant", "build", "check", "count", "get"]
