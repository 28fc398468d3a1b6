"""Fidelity: how far each approximate variant's attention output is from exact softmax attention
on the same queries, keys and values, taken from a trained softmax model.

Route: the trained model's sdpa layer l gives the input (the block's ln1 output on an MQAR
sequence of length N) and the weights; a variant with the same `qkv` / `out` Linear parameters
(a `QKVAttention` subclass) gets those weights copied, so it projects the very same q, k, v and
only its token mixing differs. Both run in float64; the reference is exact softmax attention,
computed in query chunks (no N×N tensor at 8K). Reported per (variant, N, layer): the relative
Frobenius error ||y − y_ref|| / ||y_ref|| and the mean per-token cosine similarity of the
sublayer outputs (after `out`).

Variants whose mixing has its own learned parameters a softmax model lacks get an `undefined`
row with the reason (fastformer, mamba2: other parametrisations; poolingformer: its pooled level
has its own projections). Two choices, stated in each row's `note`: nystromformer's value-conv
skip path is set to zero (a softmax layer has none; the paper adds it on top of the
approximation), and linformer's E, F stay at their initialisation (random projections, the
setting of the paper's Theorem 1), since no softmax model has them.

A variant that supports causal masking is compared in causal form against causal softmax (the
trained model is causal); an encoder-only one in non-causal form against non-causal softmax.

Shape legend: B batch, N length, D d_model, H heads, Dh head dim, C query chunk.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lsbench import variants
from lsbench.quality.model import RecallModel
from lsbench.quality.tasks import MQAR
from lsbench.variants.transformer import QKVAttention, merge_heads

EXACT = ("sdpa", "transformer")  # the reference itself
ZEROED = {"nystromformer": ("conv.weight", "value-conv skip path set to zero")}
KEPT_INIT = {"linformer": ("E", "F")}
UNDEFINED = {
    "poolingformer": "its pooled second level has its own projections (qkv2, pool_proj) that a "
                     "softmax layer has no counterpart for",
}


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                    chunk_elems: int = 2**24) -> torch.Tensor:
    """softmax(q kᵀ/√Dh [+ causal mask]) v over (B, H, N, Dh), in query chunks."""
    B, H, N, Dh = q.shape
    C = max(1, min(N, chunk_elems // (B * H * N)))
    out = []
    for s in range(0, N, C):
        e = min(N, s + C)
        scores = q[:, :, s:e] @ k.transpose(-2, -1) / math.sqrt(Dh)  # (B, H, C, N)
        if causal:
            future = torch.arange(N, device=q.device)[None, :] > torch.arange(
                s, e, device=q.device)[:, None]  # (C, N)
            scores = scores.masked_fill(future, float("-inf"))
        out.append(scores.softmax(-1) @ v)  # (B, H, C, Dh)
    return torch.cat(out, dim=2)


def why_undefined(name: str) -> str:
    """'' when fidelity is defined for `name`, else the reason."""
    cls = variants.get(name)
    if name in UNDEFINED:
        return UNDEFINED[name]
    if not issubclass(cls, QKVAttention):
        return (f"{name} has no qkv/out projections to copy from a softmax layer (another "
                f"parametrisation: {cls.method or cls.__name__})")
    if "cpu" not in getattr(cls, "devices", ("cpu", "cuda")):
        return f"{name} runs on CUDA only (fidelity is computed on the CPU in float64)"
    return ""


def layer_input(model: RecallModel, idx: torch.Tensor, layer: int) -> torch.Tensor:
    """The input of block `layer`'s attention sublayer (its ln1 output), (B, N, D)."""
    h = model.embed(idx)
    for block in model.encoder.blocks[:layer]:
        h = block(h)
    return model.encoder.blocks[layer].ln1(h)


def copy_into(name: str, ref: QKVAttention, causal: bool, params: dict[str, Any]):
    """A float64 `name` sublayer with ref's qkv/out weights -> (module, note)."""
    attn = variants.build(name, ref.d_model, ref.n_heads, causal, **params).double()
    own = {k for k, _ in attn.named_parameters()}
    state = {k: v.double() for k, v in ref.state_dict().items() if k in own}
    missing = own - set(state)
    notes = []
    with torch.no_grad():
        attn.load_state_dict(state, strict=False)
        if name in ZEROED:
            key, note = ZEROED[name]
            attn.get_parameter(key).zero_()
            missing.discard(key)
            notes.append(note)
    kept = missing & set(KEPT_INIT.get(name, ()))
    if kept:
        notes.append(f"{', '.join(sorted(kept))} at initialisation (random projections)")
        missing -= kept
    if missing:  # a registry change the tables above do not know about
        raise RuntimeError(f"{name}: parameters {sorted(missing)} have no softmax counterpart")
    return attn.eval(), "; ".join(notes)


@torch.no_grad()
def fidelity_rows(model: RecallModel, task: MQAR, variant_names: list[str], lens: list[int],
                  seed: int = 0, params: dict[str, dict[str, Any]] | None = None,
                  layers: list[int] | None = None) -> list[dict[str, Any]]:
    """One row per (variant, N, layer): rel_err and cosine against exact softmax, float64."""
    if model.cfg.variant not in ("sdpa", "transformer"):
        raise ValueError("fidelity needs a trained softmax model (sdpa or transformer)")
    params = params or {}
    ref_model = _double_copy(model)
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    rows = []
    for n in lens:
        t = MQAR(task.vocab_size, n, task.kv_pairs, task.power_a)
        idx, _ = t.sample(1, 2_000_000 + seed, "lm")
        for layer in layers:
            ref = ref_model.encoder.blocks[layer].attn
            x = layer_input(ref_model, idx, layer)  # (1, N, D) float64
            q, k, v = ref.project(x)
            cache = {}
            for name in variant_names:
                base = {"variant": name, "seq_len": n, "layer": layer}
                if name in EXACT:
                    continue
                reason = why_undefined(name)
                if reason:
                    rows.append({**base, "status": "undefined", "reason": reason})
                    continue
                causal = variants.get(name).supports_causal and model.cfg.causal
                if causal not in cache:
                    cache[causal] = ref.out(merge_heads(exact_attention(q, k, v, causal)))
                y_ref = cache[causal]
                p = _params_at(name, n, params.get(name, {}))
                attn, note = copy_into(name, ref, causal, p)
                y = attn(x)
                rows.append({**base, "status": "ok", "causal": causal,
                             "params": p, "note": note, **compare(y, y_ref)})
    return rows


def compare(y: torch.Tensor, y_ref: torch.Tensor) -> dict[str, float]:
    rel = float((y - y_ref).norm() / y_ref.norm())
    cos = float(torch.nn.functional.cosine_similarity(y, y_ref, dim=-1).mean())
    return {"rel_err": rel, "cosine": cos}


def _params_at(name: str, n: int, given: dict[str, Any]) -> dict[str, Any]:
    p = dict(given)
    if name == "linformer":
        p.setdefault("max_len", max(n, variants.get(name).defaults["max_len"]))
    return p


def _double_copy(model: RecallModel) -> RecallModel:
    import copy

    return copy.deepcopy(model).double().eval()
