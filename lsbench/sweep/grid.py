"""The configs of a suite: plain dicts with a stable `config_id`, and their predicted memory.

A config is everything that decides what is measured (variant and its resolved parameters, mode,
dtype, device, shape); its `config_id` hashes exactly those fields, so the same config gets the
same id in every run and `--resume` can tell what is already recorded.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lsbench import variants
from lsbench.sweep.suite import DECODE_MODES, Suite
from lsbench.variants._decode import Decoder

ID_KEYS = ("variant", "params", "mode", "dtype", "device", "batch_size", "seq_len", "d_model",
           "n_heads", "n_layers", "ffn_dim", "causal")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TRAINING_ACTIVATION_FACTOR = 3  # activations kept for backward + their gradients (rough)
TRAINING_PARAM_FACTOR = 4  # weights, grads, AdamW's two moments


# Keys added after the first release enter the id only when not at their default, so configs
# recorded before them keep their ids (and `--resume` of an old run still recognises them).
OPTIONAL_ID_KEYS = {"layer": "block", "matmul_precision": "highest", "compile": "none"}


def config_id(config: dict[str, Any]) -> str:
    key = {k: config[k] for k in ID_KEYS}
    key.update({k: config[k] for k, default in OPTIONAL_ID_KEYS.items()
                if config.get(k, default) != default})
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def variant_params(suite: Suite, name: str, seq_len: int) -> dict[str, Any]:
    """The suite's parameters for `name` merged with the variant's defaults.

    A variant whose defaults include `max_len` (e.g. linformer's sequence projection) is sized to
    the config's length unless the suite fixes it.
    """
    cls = variants.get(name)
    params = {**cls.defaults, **suite.params.get(name, {})}
    if "max_len" in cls.defaults and "max_len" not in suite.params.get(name, {}):
        params["max_len"] = seq_len
    return params


def device_variants(suite: Suite, device: str) -> tuple[list[str], list[str]]:
    """(variants to sweep, variants left out). A suite that says variants = "all" keeps only
    those whose `devices` include the device's type (flex_* are CUDA only); a variant named
    explicitly always runs, so a CPU run of flex_window is an `error` row that says why."""
    if not suite.variants_all:
        return list(suite.variants), []
    kind = device.split(":")[0]
    keep, left = [], []
    for name in suite.variants:
        devices = getattr(variants.REGISTRY.get(name), "devices", ("cpu", "cuda"))
        (keep if kind in devices else left).append(name)
    return keep, left


def build_grid(suite: Suite, device: str) -> list[dict[str, Any]]:
    """All configs, lengths ascending within each (mode, batch rule) so that an OOM at N can
    skip the larger N after it; variants innermost so a partial sweep covers all of them."""
    ffn_dim = suite.ffn_dim or 4 * suite.d_model
    batch_rules: list[tuple[int | None, int | None]]  # (fixed batch, tokens per batch)
    if suite.batch_tokens is not None:
        batch_rules = [(None, suite.batch_tokens)]
    else:
        batch_rules = [(b, None) for b in (suite.batch_sizes or [1])]
    configs, seen = [], set()
    for mode in suite.modes:
        lens, rules = suite.seq_lens, batch_rules
        if mode in DECODE_MODES:  # the suite's [decode] depths / batch sizes, where given
            lens = suite.decode_depths or lens
            if suite.decode_batch_sizes:
                rules = [(b, None) for b in suite.decode_batch_sizes]
        for fixed, tokens in rules:
            for seq_len in sorted(lens):
                batch = fixed if fixed is not None else max(1, tokens // seq_len)
                if suite.max_batch_tokens and batch * seq_len > suite.max_batch_tokens:
                    if batch > 1:  # B=1 always runs: the suite asked for this length
                        continue
                for name in device_variants(suite, device)[0]:
                    cfg = {
                        "variant": name,
                        "params": variant_params(suite, name, seq_len),
                        "mode": mode,
                        "dtype": suite.dtype,
                        "device": device,
                        "batch_size": batch,
                        "seq_len": seq_len,
                        "d_model": suite.d_model,
                        "n_heads": suite.n_heads,
                        "n_layers": suite.n_layers,
                        "ffn_dim": ffn_dim,
                        "causal": suite.causal or mode in DECODE_MODES,  # decoding is causal
                        "layer": suite.layer,
                        "matmul_precision": suite.matmul_precision,
                        "compile": suite.compile,
                        "batch_tokens": tokens,
                    }
                    cfg["config_id"] = config_id(cfg)
                    if cfg["config_id"] not in seen:  # --seq-lens 128,128: measure it once
                        seen.add(cfg["config_id"])
                        configs.append(cfg)
    return configs


def oom_group(config: dict[str, Any]) -> tuple:
    """Configs in one group differ only in N (and, under a token rule, B): memory grows with N."""
    batch = ("tokens", config["batch_tokens"]) if config.get("batch_tokens") else (
        "batch", config["batch_size"])
    return (config["variant"], config["mode"], config["dtype"], batch,
            json.dumps({k: v for k, v in config["params"].items() if k != "max_len"},
                       sort_keys=True, default=str))


def predict_mem_bytes(config: dict[str, Any]) -> float:
    """A rough upper estimate of one step's memory, used only to skip configs that cannot fit."""
    c = config
    cls = variants.get(c["variant"])
    size = DTYPE_BYTES[c["dtype"]]
    if c["mode"] in DECODE_MODES and (not cls.supports_causal or cls.prefill is Decoder.prefill):
        return 0.0  # nothing runs: the worker answers `unsupported`, with the reason
    if c["mode"] == "decode":  # the state, and the untimed prefill that builds it
        elems = cls.decode_mem_elems(c["batch_size"], c["seq_len"], c["d_model"], c["n_heads"],
                                     {**cls.defaults, **c["params"]}) * c["n_layers"]
    else:
        elems = variants.count(cls, "mem_elems", c["batch_size"], c["seq_len"], c["d_model"],
                               c["n_heads"], c["params"], causal=bool(c.get("causal")))
    ffn = 0 if c.get("layer", "block") == "attention" else 2 * c["d_model"] * c["ffn_dim"]
    n_params = c["n_layers"] * (4 * c["d_model"] ** 2 + ffn)
    inputs = c["batch_size"] * c["seq_len"] * c["d_model"]
    if c["mode"] == "training":
        elems = elems * c["n_layers"] * TRAINING_ACTIVATION_FACTOR
        n_params *= TRAINING_PARAM_FACTOR
    return float((elems + n_params + inputs) * size)


def calibration_group(config: dict[str, Any]) -> tuple:
    """Configs whose memory differs only through B and N, which `mem_elems` models."""
    return (config["variant"], config["mode"], config["dtype"], config["device"],
            config["d_model"], config["n_heads"], config["n_layers"], config.get("ffn_dim"),
            config.get("layer", "block"),
            json.dumps({k: v for k, v in config["params"].items() if k != "max_len"},
                       sort_keys=True, default=str))


CALIBRATION_MARGIN = 1.25


class MemoryPredictor:
    """The analytic prediction, corrected by what this run has measured.

    `mem_elems` is a deliberately safe upper bound (it assumes, e.g., that a fused kernel keeps
    whole score blocks), up to several times the measured peak. Once a config of the same
    variant, mode and shape has been measured, the prediction for a larger one is the analytic
    estimate scaled by measured/analytic at the largest N measured so far: the formula supplies
    how memory grows with B and N, the measurement the constant. Still only used to skip.
    """

    def __init__(self, rows: list[dict[str, Any]] = ()):
        self.refs: dict[tuple, tuple[int, float, str]] = {}  # group -> (N, factor, where)
        for row in rows:
            self.observe(row)

    def observe(self, row: dict[str, Any]) -> None:
        if row.get("status") != "ok" or not row.get("peak_mem_mib") or row.get("params") is None:
            return
        key = calibration_group(row)
        if key in self.refs and self.refs[key][0] >= row["seq_len"]:
            return
        try:
            analytic = predict_mem_bytes(row)
        except Exception:  # noqa: BLE001 - a plugin's mem_elems: no calibration
            return
        factor = row["peak_mem_mib"] * 2**20 / analytic
        self.refs[key] = (row["seq_len"], factor,
                          f"B={row['batch_size']}, N={row['seq_len']}")

    def predict(self, config: dict[str, Any]) -> tuple[float, str]:
        """(bytes, how it was predicted)."""
        analytic = predict_mem_bytes(config)
        ref = self.refs.get(calibration_group(config))
        if ref is None:
            return analytic, "analytic upper bound"
        # a 25% margin over the measured constant (allocator slack, shape effects the formula
        # misses); never below the bound when the bound proved too low
        factor = ref[1] * CALIBRATION_MARGIN
        factor = factor if ref[1] > 1 else min(factor, 1.0)
        return analytic * factor, f"analytic, scaled by the peak measured at {ref[2]}"


def describe(config: dict[str, Any]) -> str:
    return (f"{config['variant']} {config['mode']} B={config['batch_size']} "
            f"N={config['seq_len']}")
