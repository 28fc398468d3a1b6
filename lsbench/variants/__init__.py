"""Attention variants, one per file, registered by name on import.

    from lsbench.variants import REGISTRY, build
    attn = build("longformer", d_model=256, n_heads=16, causal=False, window=256)
    y = attn(x)  # (B, N, d_model) -> (B, N, d_model)

Third-party variants register through the entry-point group `lsbench.variants`: an installed
distribution whose pyproject has

    [project.entry-points."lsbench.variants"]
    mean_pool = "lsbench_plugin_example.mean_pool"

is imported here (module or `module:Class`), so its `Variant` subclasses appear in the registry,
`lsbench list variants`, suites and worker processes with no other step (see
examples/lsbench-plugin-example). A plugin that fails to import, or that would replace a
built-in name, is left out and recorded in `PLUGIN_ERRORS`; `lsbench run` refuses to start
while any is recorded (lsbench.sweep.plugins), and an unknown-variant error names them.
`LSBENCH_PLUGINS` (lsbench.sweep.plugins) stays for quick experiments with a file or module.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from typing import Any

from lsbench.errors import LsbenchError, unknown_choice
from lsbench.variants.base import REGISTRY, Variant, count

ENTRY_POINT_GROUP = "lsbench.variants"
PLUGIN_ERRORS: dict[str, str] = {}  # entry point "name = value" -> why it was left out
_LOADED: set[str] = set()  # entry points imported

# Auto-discovery: importing each module registers the Variant subclasses it defines.
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):  # _helpers register nothing
        importlib.import_module(f"{__name__}.{_mod.name}")
BUILTIN = frozenset(REGISTRY)


def load_entry_points() -> list[str]:
    """Import every `lsbench.variants` entry point once; returns the variant names they added."""
    added: list[str] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        label = f"{ep.name} = {ep.value}"
        if label in _LOADED or label in PLUGIN_ERRORS:
            continue
        before = dict(REGISTRY)
        try:
            ep.load()  # importing the module (or class) registers its Variant subclasses
        except Exception as e:  # noqa: BLE001 - one broken plugin must not break lsbench
            REGISTRY.clear()
            REGISTRY.update(before)
            PLUGIN_ERRORS[label] = f"{type(e).__name__}: {e}"
            continue
        clashes = sorted(n for n in BUILTIN if REGISTRY[n] is not before[n])
        if clashes:
            REGISTRY.clear()
            REGISTRY.update(before)
            PLUGIN_ERRORS[label] = (f"it redefines the built-in variant(s) {', '.join(clashes)}; "
                                    f"give its variants other names")
            continue
        _LOADED.add(label)
        added += sorted(set(REGISTRY) - set(before))
    return added


load_entry_points()


def plugin_errors_note() -> str:
    """One sentence naming the entry-point plugins that failed, or '' when none did."""
    if not PLUGIN_ERRORS:
        return ""
    items = "; ".join(f"'{k}' ({v})" for k, v in sorted(PLUGIN_ERRORS.items()))
    return (f" Entry-point plugins in group '{ENTRY_POINT_GROUP}' that failed to load: {items}; "
            f"fix or uninstall them.")


def get(name: str) -> type[Variant]:
    if name not in REGISTRY:
        err = unknown_choice("variant", name, REGISTRY)
        note = plugin_errors_note()
        raise (LsbenchError(f"{err}{note}") if note else err)
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


__all__ = [
    "PLUGIN_ERRORS", "REGISTRY", "Variant", "build", "check", "count", "get", "load_entry_points",
]
