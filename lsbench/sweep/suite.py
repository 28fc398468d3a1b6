"""Sweep suites: TOML files that say what `lsbench run` measures, validated before anything runs.

A suite (all sections optional except `[sweep]`; unknown keys are errors):

    description = "one line"
    [model]   d_model, n_heads, n_layers, ffn_dim (0 = 4·d_model), causal,
              layer ("block": pre-norm residual block with FFN, the default; "attention": the
              attention sublayer alone, projections included, as attention-only benchmarks time)
    [sweep]   variants (list or "all"), seq_lens, batch_sizes (list) or batch_tokens
              (batch = max(1, batch_tokens // seq_len)), modes ("inference", "training"),
              dtype, device ("auto", "cpu", "cuda"), matmul_precision (float32 matmuls:
              "highest" = full fp32, the default; "high" = TF32 on CUDA; "medium"),
              max_batch_tokens (leave out configs with batch × seq_len above it, e.g. to sweep
              B=8 only where it stays cheap), compile ("none", the default; or a
              torch.compile mode: "default", "reduce-overhead" = CUDA graphs on CUDA,
              "max-autotune"; compile time is recorded per row, never timed)
    [timing]  time_budget_s (timed seconds per config), warmup (steps), timeout_s (per config)
    [decode]  depths, batch_sizes: the lengths (context depths) and batch sizes of the
              prefill/decode modes when they differ from [sweep]'s (e.g. a few deep contexts
              at B=1 beside a Fig-2 sweep); --seq-lens / --batch-sizes replace them too
    [params.<variant>]  variant parameters, e.g. [params.longformer] window = 256

Built-in suites live in `lsbench/suites/*.toml`; `--suite` takes a name or a path.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsbench import variants
from lsbench.errors import LsbenchError, unknown_choice

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
# inference / training: one forward / one training step over N tokens (Fastformer Fig. 2);
# prefill: the causal forward over N tokens that also builds the decoding state; decode: one
# generated token at depth N (lsbench.variants._decode). prefill and decode are causal always.
MODES = ("inference", "training", "prefill", "decode")
DECODE_MODES = ("prefill", "decode")
DTYPES = ("float32", "bfloat16", "float16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
DEVICES = ("auto", "cpu", "cuda")
LAYERS = ("block", "attention")
# Far beyond any machine (one float32 vector of d=64 per token at 2^24 tokens is 4 GiB per
# sequence before attention), so a typo like 1e20 fails up front instead of mid-sweep.
MAX_SEQ_LEN = 2**24
MAX_BATCH = 2**20
MATMUL_PRECISIONS = ("highest", "high", "medium")

SECTIONS: dict[str, tuple[str, ...]] = {
    "model": ("d_model", "n_heads", "n_layers", "ffn_dim", "causal", "layer"),
    "sweep": ("variants", "seq_lens", "batch_sizes", "batch_tokens", "modes", "dtype", "device",
              "matmul_precision", "max_batch_tokens", "compile"),
    "timing": ("time_budget_s", "warmup", "timeout_s"),
}
DECODE_KEYS = ("depths", "batch_sizes")  # [decode] -> Suite.decode_depths, decode_batch_sizes
TOP_KEYS = ("name", "description", "params", "decode", *SECTIONS)


@dataclass
class Suite:
    """A resolved suite: every field explicit, variants expanded, overrides applied."""

    name: str
    source: str  # file the suite came from ("" when rebuilt from run.json)
    description: str = ""
    d_model: int = 256
    n_heads: int = 16
    n_layers: int = 1
    ffn_dim: int = 0  # 0 -> 4 * d_model
    causal: bool = False
    layer: str = "block"
    variants: list[str] = field(default_factory=list)
    variants_all: bool = False  # "all": the grid keeps only those that run on the device
    seq_lens: list[int] = field(default_factory=list)
    batch_sizes: list[int] | None = None
    batch_tokens: int | None = None
    modes: list[str] = field(default_factory=lambda: ["inference"])
    dtype: str = "float32"
    device: str = "auto"
    matmul_precision: str = "highest"
    max_batch_tokens: int | None = None
    compile: str = "none"  # torch.compile mode of the timed step (COMPILE_MODES)
    time_budget_s: float = 1.0
    warmup: int = 1
    timeout_s: float = 300.0
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    decode_depths: list[int] | None = None  # prefill/decode lengths ([decode] depths)
    decode_batch_sizes: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Suite:
        """Rebuild a suite recorded in run.json (`suite_config`), validating it again."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise unknown_choice("suite field", unknown[0], names, where)
        suite = cls(**data)
        validate(suite, where)
        return suite

    def batches_for(self, seq_len: int) -> list[int]:
        if self.batch_tokens is not None:
            return [max(1, self.batch_tokens // seq_len)]
        return list(self.batch_sizes or [1])


def builtin_suites() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SUITES_DIR.glob("*.toml"))}


def find_suite(name_or_path: str) -> Path:
    """A built-in suite name or a path to a TOML file."""
    builtins = builtin_suites()
    if name_or_path in builtins:
        return builtins[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or "/" in name_or_path or path.exists():
        if not path.is_file():
            raise LsbenchError(
                f"suite file {name_or_path} does not exist; give a built-in suite "
                f"({', '.join(builtins)}) or the path of a .toml file."
            )
        return path
    raise unknown_choice("suite", name_or_path, builtins)


def load_suite(name_or_path: str) -> Suite:
    path = find_suite(name_or_path)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise LsbenchError(f"{where} is not valid TOML: {e}; fix the file's syntax.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LsbenchError(f"cannot read suite {where}: {e}.") from None
    return parse_suite(data, name=str(data.get("name") or path.stem), where=where)


def parse_suite(data: dict[str, Any], name: str, where: str) -> Suite:
    """Turn parsed TOML into a validated Suite; `where` names the file in every error."""
    for key in data:
        if key not in TOP_KEYS:
            raise unknown_choice("key", key, TOP_KEYS, where)
    if "sweep" not in data:
        raise LsbenchError(f"{where} has no [sweep] section; add one with variants and seq_lens.")
    fields: dict[str, Any] = {}
    for section, keys in SECTIONS.items():
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise LsbenchError(f"{where}: [{section}] must be a table, got {table!r}.")
        for key, value in table.items():
            if key not in keys:
                raise unknown_choice("key", key, keys, f"{where} [{section}]")
            fields[key] = value
    decode = data.get("decode", {})
    if not isinstance(decode, dict):
        raise LsbenchError(f"{where}: [decode] must be a table, got {decode!r}.")
    for key, value in decode.items():
        if key not in DECODE_KEYS:
            raise unknown_choice("key", key, DECODE_KEYS, f"{where} [decode]")
        if not isinstance(value, list):
            raise LsbenchError(f"{where}: [decode] {key} must be a list, got {value!r}.")
        fields[f"decode_{key}"] = value
    params = data.get("params", {})
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise LsbenchError(f"{where}: parameters go in tables like [params.longformer].")
    fields["variants_all"] = fields.get("variants") in (None, "all")
    fields["variants"] = expand_variants(fields.get("variants"), where)
    for key in ("seq_lens", "batch_sizes", "modes"):
        if key in fields and not isinstance(fields[key], list):
            raise LsbenchError(f"{where}: [sweep] {key} must be a list, got {fields[key]!r}.")
    if "batch_sizes" in fields and "batch_tokens" in fields:
        raise LsbenchError(
            f"{where}: [sweep] has both batch_sizes and batch_tokens; keep one (a list of "
            "batch sizes, or a constant token count per batch)."
        )
    suite = Suite(name=name, source=where, description=str(data.get("description", "")),
                  params={k: dict(v) for k, v in params.items()}, **fields)
    validate(suite, where)
    return suite


def expand_variants(value: Any, where: str) -> list[str]:
    if value is None or value == "all":
        return sorted(variants.REGISTRY)
    if not isinstance(value, list) or not value:
        raise LsbenchError(f"{where}: variants must be a non-empty list of names or \"all\".")
    return [str(v) for v in value]


def _positive_ints(values: Any, what: str, where: str) -> None:
    if not values:
        raise LsbenchError(f"{where}: {what} is empty; give at least one positive integer.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise LsbenchError(
                f"{where}: {what} must be positive integers, got {v!r}; e.g. 128,256,512."
            )


def _at_most(values: Any, limit: int, what: str, where: str) -> None:
    for v in values:
        if v > limit:
            raise LsbenchError(f"{where}: {what} {v} is out of range; give values from 1 to "
                               f"{limit:,} (2^{limit.bit_length() - 1}).")


def validate(suite: Suite, where: str) -> None:
    """Raise LsbenchError (naming the fix) for anything that would fail later."""
    _positive_ints(suite.seq_lens, "seq_lens", where)
    _at_most(suite.seq_lens, MAX_SEQ_LEN, "seq_len", where)
    _at_most(suite.batch_sizes or [], MAX_BATCH, "batch size", where)
    if suite.decode_depths is not None:
        _positive_ints(suite.decode_depths, "[decode] depths", where)
        _at_most(suite.decode_depths, MAX_SEQ_LEN, "[decode] depth", where)
    if suite.decode_batch_sizes is not None:
        _positive_ints(suite.decode_batch_sizes, "[decode] batch_sizes", where)
        _at_most(suite.decode_batch_sizes, MAX_BATCH, "[decode] batch size", where)
    if suite.max_batch_tokens is not None:
        _positive_ints([suite.max_batch_tokens], "max_batch_tokens", where)
        if suite.max_batch_tokens < min(suite.seq_lens):
            raise LsbenchError(f"{where}: max_batch_tokens {suite.max_batch_tokens} is below "
                               f"the shortest length {min(suite.seq_lens)}, so nothing would "
                               "run; raise it or remove it.")
    if suite.batch_tokens is not None:
        _positive_ints([suite.batch_tokens], "batch_tokens", where)
    else:
        _positive_ints(suite.batch_sizes or [1], "batch_sizes", where)
    for key in ("d_model", "n_heads", "n_layers"):
        _positive_ints([getattr(suite, key)], key, where)
    if isinstance(suite.ffn_dim, bool) or not isinstance(suite.ffn_dim, int) or suite.ffn_dim < 0:
        raise LsbenchError(f"{where}: ffn_dim must be a non-negative integer (0 = 4·d_model).")
    if not isinstance(suite.causal, bool):
        raise LsbenchError(f"{where}: causal must be true or false, got {suite.causal!r}.")
    if not suite.modes:
        raise LsbenchError(f"{where}: modes is empty; use one or more of {', '.join(MODES)}.")
    for mode in suite.modes:
        if mode not in MODES:
            raise unknown_choice("mode", mode, MODES, where)
    if suite.layer not in LAYERS:
        raise unknown_choice("layer", suite.layer, LAYERS, where)
    if suite.matmul_precision not in MATMUL_PRECISIONS:
        raise unknown_choice("matmul_precision", suite.matmul_precision, MATMUL_PRECISIONS, where)
    if suite.compile not in COMPILE_MODES:
        raise unknown_choice("compile mode", suite.compile, COMPILE_MODES, where)
    if suite.dtype not in DTYPES:
        raise unknown_choice("dtype", suite.dtype, DTYPES, where)
    if suite.device not in DEVICES and not re.fullmatch(r"cuda:\d+", suite.device):
        raise unknown_choice("device", suite.device, DEVICES, where)
    for key, lo in (("time_budget_s", 0.0), ("timeout_s", 0.0)):
        value = getattr(suite, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= lo:
            raise LsbenchError(f"{where}: {key} must be a positive number, got {value!r}.")
    if isinstance(suite.warmup, bool) or not isinstance(suite.warmup, int) or suite.warmup < 1:
        raise LsbenchError(f"{where}: warmup must be an integer >= 1 (steps before measuring; "
                           "a cold first step would distort memory and time).")
    if len(set(suite.variants)) != len(suite.variants):
        raise LsbenchError(f"{where}: variants lists a name twice; list each variant once.")
    for name in suite.params:
        if name not in variants.REGISTRY:
            raise unknown_choice("variant", name, variants.REGISTRY, f"{where} [params.{name}]")
    for name in suite.variants:
        if name not in variants.REGISTRY:
            raise unknown_choice("variant", name, variants.REGISTRY, where)
        try:
            variants.check(name, suite.d_model, suite.n_heads, suite.causal,
                           **suite.params.get(name, {}))
        except LsbenchError as e:
            raise LsbenchError(f"{where}: {e}") from None


def override(suite: Suite, **changes: Any) -> Suite:
    """Apply CLI overrides (None = keep the suite's value) and validate the result."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if "batch_sizes" in changes:  # batch sizes asked for explicitly all run
        changes["batch_tokens"] = None
        changes["max_batch_tokens"] = None
        changes["decode_batch_sizes"] = None  # ... in every mode
    if "seq_lens" in changes:
        changes["decode_depths"] = None
    if "variants" in changes:  # named on the command line: each runs, or says why not
        changes["variants_all"] = False
    new = dataclasses.replace(suite, **changes)
    validate(new, "the command line" if changes else suite.source)
    return new


# --- command-line value parsing ---------------------------------------------------------------

def parse_list(option: str, text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise LsbenchError(f"{option} is empty; give comma-separated values, e.g. {option} a,b.")
    return items


def _whole_number(item: str) -> int:
    """int("4096"), and also "4e3" or "1e20" (a whole number written in scientific notation,
    so that the range check, not the parser, answers an absurd length)."""
    try:
        return int(item)
    except ValueError:
        value = float(item)  # ValueError for anything that is not a number
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(item) from None
        return int(value)


def parse_int_list(option: str, text: str | None) -> list[int] | None:
    items = parse_list(option, text)
    if items is None:
        return None
    out = []
    for item in items:
        try:
            value = _whole_number(item)
        except ValueError:
            raise LsbenchError(
                f"{option}: {item!r} is not an integer; give comma-separated positive "
                f"integers, e.g. {option} 128,256,512."
            ) from None
        if value <= 0:
            raise LsbenchError(f"{option}: {value} is not positive; lengths and batch sizes "
                               "must be >= 1.")
        out.append(value)
    return out


UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
         "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
         "tib": 2**40}


def parse_size(text: str) -> int:
    """'512MiB', '8GiB', '1.5GB', '1000000' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise LsbenchError(
            f"--mem-budget {text!r} is not a size; write a number with a unit, e.g. 512MiB, "
            "8GiB or 2GB."
        )
    value = float(m.group(1)) * UNITS[m.group(2).lower()]
    if value < 2**20:
        raise LsbenchError(f"--mem-budget {text!r} is below 1 MiB; give e.g. 512MiB or 8GiB.")
    return int(value)


# --- `lsbench list suites` --------------------------------------------------------------------

def list_rows() -> list[dict]:
    """One row per built-in suite; variant and config counts are for this machine's device
    (`variants = "all"` leaves out what cannot run on it)."""
    import torch

    from lsbench.sweep import grid

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name, path in builtin_suites().items():
        suite = load_suite(str(path))
        batches = (f"tokens/{suite.batch_tokens}" if suite.batch_tokens is not None
                   else ",".join(map(str, suite.batch_sizes or [1])))
        configs = grid.build_grid(suite, device)
        rows.append({
            "name": name,
            "description": suite.description,
            "variants": len({c["variant"] for c in configs}),
            "seq_lens": f"{min(suite.seq_lens)}..{max(suite.seq_lens)}",
            "batch": batches,
            "modes": ",".join(m[:5] for m in suite.modes),
            "model": f"d{suite.d_model} h{suite.n_heads} L{suite.n_layers} {suite.dtype}",
            "configs": len(configs),
        })
    return rows
