"""Poolingformer: two-level attention — a sliding window, then pooling attention over a larger one.

Zhang et al. 2021, "Poolingformer: Long Document Modeling with Pooling Attention", ICML,
https://arxiv.org/abs/2105.04371 (§3).

1. First level: sliding-window attention, each token i sees the tokens within a window of
   `window` = w1 tokens centred on it (i - w1/2 … i + w1/2; w1 = 128, see below): y = SWA(x).
2. Second level, stacked on the first (it takes y as input — the paper's ablation "Mix", built on
   x instead, is worse): its own projections q', k', v' = W'(y); keys and values are pooled
   along the sequence with kernel κ = `pool_kernel` and stride ξ = `pool_stride`, and token i
   attends to the pooled segments whose centre lies within its larger window `pool_window` = w2
   (w2 = 512, see below): z = PoolAttn(y).
3. Output: the two levels joined by a residual connection, out(y + z).

Pooling (`pooling`): "ldconv" (lightweight dynamic convolution pooling,
LDConv(v_1..v_κ) = Σ δ_t·v_t with the kernel δ ∈ R^κ predicted per head and softmax-normalised
as in Wu et al. 2019's DynamicConv), "mean" or "max".

Where each default comes from (checked for issue 16; no authors' code is public to compare with):
- Checked against the paper's own abstract (arXiv 2105.04371 v2, ICML 2021 page): two levels,
  a smaller sliding window first, then a larger window whose keys/values are pooled.
- The paper's, as this file has stated them since it was written, but NOT re-checked against
  the paper's body: its sections and tables could not be reached from this machine (only the
  abstract could). These are w1 = 128 (`window`), w2 = 512 (`pool_window`), the second level
  stacked on the first ("Mix" ablation worse), LDConv as the pooling, mean/max as alternatives,
  and Poolingformer layers in a quarter of the layers. Treat them as unverified until someone
  reads §3–§4 of the paper.
- Ours, not from the paper: κ = 5 (`pool_kernel`) and ξ = 4 (`pool_stride`); δ predicted by
  one linear layer from the mean of the segment's first-level outputs, shared by keys and
  values; w1 and w2 read as total (two-sided) sizes; the causal extension below. Pass
  `pool_kernel` / `pool_stride` / `window` / `pool_window` explicitly to match a given
  configuration.

Simplified: no task-specific global tokens (the paper, like Longformer, makes question tokens
global), every layer is a Poolingformer layer (the paper uses it in a quarter of the layers).
Extension: `causal=True` makes level 1 a causal window and lets level 2 use only segments that
end at or before the query (so no pooled key mixes in the future).

Both levels are computed in blocks (see `_blocks.py`): O(N·(w1 + w2/ξ)) memory, never N×N.
Shape legend: B batch, N length, D d_model, H heads, Dh head dim, M = ⌈N/ξ⌉ pooled segments.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lsbench.errors import LsbenchError, unknown_choice
from lsbench.measure.flops import attention_flops, band_pairs, linear_flops
from lsbench.variants._blocks import (
    banded_attention,
    ceil_div,
    default_block,
    key_validity,
    pad_seq,
    sliding_window_attention,
)
from lsbench.variants.transformer import QKVAttention, merge_heads, split_heads

POOLINGS = ("ldconv", "mean", "max")
LEVEL2_BLOCK = 128  # queries per block in the pooled level (rounded to a multiple of the stride)


class Poolingformer(QKVAttention):
    name = "poolingformer"
    method = "sliding window (w1) + attention over pooled keys/values in a larger window (w2)"
    paper = "Zhang et al. 2021, Poolingformer, https://arxiv.org/abs/2105.04371"
    time_complexity = "O(N·(w1 + w2/ξ)·D)"
    memory_complexity = "O(H·N·(w1 + w2/ξ))"
    supports_causal = True
    defaults = {
        "window": 128,  # w1, first level, total (i ± 64)
        "pool_window": 512,  # w2, second level, total (segment centres within i ± 256)
        "pool_kernel": 5,  # κ, ours (see the module docstring)
        "pool_stride": 4,  # ξ, ours
        "pooling": "ldconv",
    }

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params: Any):
        super().__init__(d_model, n_heads, causal, **params)
        p = self.params
        self.window, self.pool_window = int(p["window"]), int(p["pool_window"])
        self.kernel, self.stride = int(p["pool_kernel"]), int(p["pool_stride"])
        self.pooling = p["pooling"]
        self.qkv2 = nn.Linear(d_model, 3 * d_model)  # second-level projections, on y
        if self.pooling == "ldconv":
            self.pool_proj = nn.Linear(d_model, n_heads * self.kernel)  # δ logits per head

    @classmethod
    def check_params(cls, d_model: int, n_heads: int, params: dict[str, Any]) -> None:
        super().check_params(d_model, n_heads, params)
        if params["pooling"] not in POOLINGS:
            raise unknown_choice("pooling", params["pooling"], POOLINGS, "variant 'poolingformer'")
        for key, low in (("window", 2), ("pool_window", 1), ("pool_kernel", 1), ("pool_stride", 1)):
            if params[key] < low:
                raise LsbenchError(
                    f"variant 'poolingformer': parameter {key!r} must be >= {low}, got "
                    f"{params[key]!r} (default {cls.defaults[key]})."
                )
        if params["pool_stride"] > params["pool_kernel"]:
            raise LsbenchError(
                f"variant 'poolingformer': parameter 'pool_stride' ({params['pool_stride']}) "
                f"must be <= 'pool_kernel' ({params['pool_kernel']}), or tokens between "
                f"segments would never be pooled."
            )

    @classmethod
    def level2_geometry(cls, seq_len: int, params: dict[str, Any], causal: bool):
        """How the pooled level is blocked: (w2, m, L, k_start, span).

        Block c holds L = m·ξ queries and sees pooled segments k_start + c·m … + span - 1.
        Segment s covers tokens [s·ξ, s·ξ + κ) and has centre s·ξ + (κ-1)/2; doubled
        coordinates keep everything integer.
        """
        n, kappa, xi = seq_len, params["pool_kernel"], params["pool_stride"]
        w2 = min(params["pool_window"], 2 * (n + kappa))  # wider than the sequence: no change
        m = max(1, min(LEVEL2_BLOCK // xi, ceil_div(n, xi)))
        L = m * xi
        k_start = ceil_div(-w2 - kappa + 1, 2 * xi)
        if causal:  # the whole segment must end at or before the query
            k_end = (L - kappa) // xi
        else:
            k_end = (2 * (L - 1) + w2 - kappa + 1) // (2 * xi)
        return w2, m, L, k_start, max(1, k_end - k_start + 1)

    @classmethod
    def _level1_geometry(cls, seq_len: int, params: dict[str, Any], causal: bool):
        """(one-sided window h1, block, span) of the first level, as `sliding_window_attention`."""
        h1 = min(params["window"] // 2, max(seq_len - 1, 0))
        block = max(1, min(default_block(h1), seq_len))
        return h1, block, block + (h1 if causal else 2 * h1)

    @classmethod
    def pairs(cls, seq_len: int, params: dict[str, Any], causal: bool) -> tuple[int, int]:
        """Allowed (query, key) pairs of level 1 (tokens) and level 2 (pooled segments)."""
        n, kappa, xi = seq_len, params["pool_kernel"], params["pool_stride"]
        h1, _, _ = cls._level1_geometry(n, params, causal)
        pairs1 = band_pairs(n, h1, 0 if causal else h1)
        w2 = cls.level2_geometry(n, params, causal)[0]
        i = np.arange(n, dtype=np.int64)
        # segment s is seen when |2i - (2sξ + κ - 1)| <= w2 (causal: also sξ + κ - 1 <= i)
        lo = np.maximum(-((w2 - 2 * i + kappa - 1) // (2 * xi)), 0)  # ceil((2i-κ+1-w2)/(2ξ))
        hi = (2 * i - kappa + 1 + w2) // (2 * xi)
        if causal:
            hi = np.minimum(hi, (i - kappa + 1) // xi)
        hi = np.minimum(hi, ceil_div(n, xi) - 1)
        return pairs1, int(np.clip(hi - lo + 1, 0, None).sum())

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        s1 = cls._level1_geometry(seq_len, params, causal)[2]
        s2 = cls.level2_geometry(seq_len, params, causal)[4]
        # upper bound: both levels' scores as the math SDPA kernel keeps them (fused: tiles)
        scores = 3.0 * batch_size * n_heads * seq_len * (s1 + s2)
        return scores + 14.0 * batch_size * seq_len * d_model

    @classmethod
    def _dense_flops(cls, batch_size, seq_len, d_model, n_heads, params) -> float:
        """Projections (qkv, qkv2, out) and pooling sums, the same useful and computed."""
        n, d = seq_len, d_model
        kappa = params["pool_kernel"]
        segments = ceil_div(n, params["pool_stride"])
        total = linear_flops(batch_size * n, d, 7 * d)
        total += 2 * linear_flops(batch_size * segments * d, kappa, 1)  # Σ δ·k and Σ δ·v
        if params["pooling"] == "ldconv":  # δ logits from each segment's mean
            total += linear_flops(batch_size * segments, d, n_heads * kappa)
        return total

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        pairs1, pairs2 = cls.pairs(seq_len, params, causal)
        return (cls._dense_flops(batch_size, seq_len, d_model, n_heads, params)
                + attention_flops(batch_size * (pairs1 + pairs2), d_model))

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        n = seq_len
        _, block1, span1 = cls._level1_geometry(n, params, causal)
        _, _, L, _, span2 = cls.level2_geometry(n, params, causal)
        pairs = ceil_div(n, block1) * block1 * span1 + ceil_div(n, L) * L * span2
        return (cls._dense_flops(batch_size, n, d_model, n_heads, params)
                + attention_flops(batch_size * pairs, d_model))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        valid = key_validity(mask, B, N, N, x.device)  # (B, N)
        q, k, v = self.project(x)  # 3 × (B, H, N, Dh)
        y = sliding_window_attention(q * self.head_dim**-0.5, k, v, valid, self.window // 2,
                                     self.causal)  # (B, H, N, Dh)
        z = self._pooled_level(merge_heads(y), valid)  # (B, H, N, Dh)
        return self.out(merge_heads(y + z))

    def _pooled_level(self, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Second level on the first level's output y (B, N, D) -> (B, H, N, Dh)."""
        B, N, D = y.shape
        q, k, v = (split_heads(t, self.n_heads) for t in self.qkv2(y).chunk(3, dim=-1))
        kp, vp, seg_ok = self._pool(y, k, v, valid)  # (B, H, M, Dh) ×2, (B, M)
        kappa, xi = self.kernel, self.stride
        w2, m, L, k_start, span = self.level2_geometry(N, self.params, self.causal)
        r = torch.arange(L, device=y.device)[:, None]
        s = k_start + torch.arange(span, device=y.device)[None, :]
        twice_dist = 2 * r - (2 * s * xi + kappa - 1)  # 2·(query - segment centre)
        band = twice_dist.abs() <= w2
        if self.causal:
            band = (s * xi + kappa - 1 <= r) & (twice_dist <= w2)
        n_pad = ceil_div(N, L) * L
        qp = pad_seq(q * self.head_dim**-0.5, n_pad, dim=2)  # (B, H, n_pad, Dh)
        z = banded_attention(qp, kp, vp, seg_ok, band, k_start=k_start, k_step=m)
        return z[:, :, :N]

    def _pool(self, y, k, v, valid):
        """Pool k, v (B, H, N, Dh) over segments [s·ξ, s·ξ + κ), ignoring padding tokens."""
        B, H, N, Dh = k.shape
        kappa, xi = self.kernel, self.stride
        M = ceil_div(N, xi)
        length = (M - 1) * xi + kappa
        tok_ok = pad_seq(valid, length, dim=1, value=False).unfold(1, kappa, xi)  # (B, M, κ)
        seg_ok = tok_ok.any(-1)  # (B, M)
        ks = pad_seq(k, length, dim=2).unfold(2, kappa, xi)  # (B, H, M, Dh, κ)
        vs = pad_seq(v, length, dim=2).unfold(2, kappa, xi)
        if self.pooling == "max":
            neg = torch.finfo(k.dtype).min
            drop = ~tok_ok[:, None, :, None, :]  # (B, 1, M, 1, κ)
            kp, vp = ks.masked_fill(drop, neg).amax(-1), vs.masked_fill(drop, neg).amax(-1)
        else:
            if self.pooling == "mean":
                wts = tok_ok / tok_ok.sum(-1, keepdim=True).clamp(min=1)  # (B, M, κ)
                wts = wts[:, None].to(k.dtype).expand(B, H, M, kappa)
            else:  # ldconv: δ predicted from the segment's mean first-level output
                ys = pad_seq(y, length, dim=1).unfold(1, kappa, xi)  # (B, M, D, κ)
                ok = tok_ok[:, :, None, :].to(y.dtype)
                y_mean = (ys * ok).sum(-1) / ok.sum(-1).clamp(min=1)  # (B, M, D)
                logits = self.pool_proj(y_mean).view(B, M, H, kappa).transpose(1, 2)  # (B,H,M,κ)
                logits = logits.masked_fill(~tok_ok[:, None], torch.finfo(logits.dtype).min)
                wts = F.softmax(logits, dim=-1)  # (B, H, M, κ)
            kp = torch.einsum("bhmdk,bhmk->bhmd", ks, wts)  # (B, H, M, Dh)
            vp = torch.einsum("bhmdk,bhmk->bhmd", vs, wts)
        # all-padding segments: finite zeros (they are masked as keys anyway)
        keep = seg_ok[:, None, :, None]
        return kp * keep, vp * keep, seg_ok
