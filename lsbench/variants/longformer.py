"""Longformer: sliding-window attention plus symmetric global attention on a few tokens.

Beltagy, Peters & Cohan 2020, "Longformer: The Long-Document Transformer",
https://arxiv.org/abs/2004.05150 (§3.1). Semantics follow Hugging Face's
`LongformerSelfAttention` (transformers/models/longformer/modeling_longformer.py) closely enough
that copied weights give the same output (tests/test_windowed_variants.py checks it):

- `window` is the ONE-SIDED w: token i attends to keys i-w … i+w (i-w … i when causal).
  HF's `attention_window` is the two-sided total, i.e. 2w; the paper's default 512 -> w = 256.
- `global_tokens` = g marks the first g tokens global (0 by default, as in HF when no
  `global_attention_mask` is given; use 1 for a [CLS]-style token). Global attention is
  symmetric: every token also attends to the g global keys (local projections, one softmax with
  its window, global positions removed from the window so no key counts twice), and each global
  token attends to all tokens through its own projections `qkv_global` (HF's query_global /
  key_global / value_global), overwriting its local row.
- Queries are scaled by 1/√Dh before the dot product; padded keys (mask False) are never seen.

Simplified: no dilated windows and one window size for all heads/layers (the paper varies w by
layer and dilates some heads for character LM); global positions are a leading prefix rather
than an arbitrary task-specific set. With `causal=True` global queries see only keys j <= i.

Memory is O(N·w): queries are processed in blocks (see `_blocks.py`), never as a masked N×N
matrix. Shape legend: B batch, N length, D d_model, H heads, Dh head dim, g global tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lsbench.errors import LsbenchError
from lsbench.measure.flops import attention_flops, band_pairs, linear_flops
from lsbench.variants._blocks import (
    ceil_div,
    default_block,
    key_validity,
    sliding_window_attention,
)
from lsbench.variants._decode import DecodeUnsupported, WindowCacheDecoder
from lsbench.variants.transformer import QKVAttention, merge_heads, split_heads


class Longformer(WindowCacheDecoder, QKVAttention):
    name = "longformer"
    method = "sliding window of ±w tokens + optional symmetric global tokens"
    paper = "Beltagy et al. 2020, Longformer, https://arxiv.org/abs/2004.05150"
    time_complexity = "O(N·w·D)"
    memory_complexity = "O(H·N·w)"
    supports_causal = True
    defaults = {"window": 256, "global_tokens": 0}  # w one-sided (HF attention_window = 2w = 512)

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params: Any):
        super().__init__(d_model, n_heads, causal, **params)
        self.window = int(self.params["window"])
        self.global_tokens = int(self.params["global_tokens"])
        if self.global_tokens:
            # rows [0:D) query_global, [D:2D) key_global, [2D:3D) value_global
            self.qkv_global = nn.Linear(d_model, 3 * d_model)

    def decode_check(self) -> None:
        super().decode_check()
        if self.global_tokens:  # a window ring cannot hold keys that stay visible forever
            raise DecodeUnsupported(
                "variant 'longformer' decodes with global_tokens=0 only (a window cache); "
                "global tokens would need their own cache, which is not implemented.")

    @classmethod
    def check_params(cls, d_model: int, n_heads: int, params: dict[str, Any]) -> None:
        super().check_params(d_model, n_heads, params)
        if params["window"] < 1:
            raise LsbenchError(
                f"variant 'longformer': parameter 'window' must be >= 1 (one-sided window w; "
                f"each token sees i-w … i+w), got {params['window']!r}; the paper uses 256."
            )

    @classmethod
    def _geometry(cls, seq_len: int, params: dict[str, Any], causal: bool):
        """(w, g, block, span) as the forward computes them (window clamped to N - 1)."""
        w = min(params["window"], max(seq_len - 1, 0))
        g = min(params["global_tokens"], seq_len)
        block = max(1, min(default_block(w), seq_len))
        return w, g, block, block + (w if causal else 2 * w)

    @classmethod
    def pairs(cls, seq_len: int, params: dict[str, Any], causal: bool) -> int:
        """(query, key) pairs allowed: the ±w band (causal: i-w … i), plus global rows that see
        every key (causal: j <= i) and the g global keys every other row sees."""
        n = seq_len
        w, g, _, _ = cls._geometry(n, params, causal)
        pairs = band_pairs(n, w, 0 if causal else w)
        if g:
            i = np.arange(n, dtype=np.int64)
            in_band = np.minimum(i + (0 if causal else w), n - 1) - np.maximum(i - w, 0) + 1
            sees_all = (i + 1) if causal else n
            extra = np.where(i < g, sees_all - in_band, np.clip(np.minimum(g, i - w), 0, None))
            pairs += int(extra.sum())
        return pairs

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        _, g, _, span = cls._geometry(seq_len, params, causal)
        # upper bound: banded scores + probabilities (+ grads) as the math SDPA kernel keeps
        # them (the fused kernels keep only tiles), plus q/k/v/out activations
        return (3.0 * batch_size * n_heads * seq_len * (span + g)
                + 8.0 * batch_size * seq_len * d_model)

    @classmethod
    def _projections(cls, batch_size, seq_len, d_model, g) -> float:
        proj = linear_flops(batch_size * seq_len, d_model, 4 * d_model)
        if g:  # key_global/value_global over all tokens, query_global over the g global ones
            proj += linear_flops(batch_size * (2 * seq_len + g), d_model, d_model)
        return proj

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        g = min(params["global_tokens"], seq_len)
        pairs = cls.pairs(seq_len, params, causal)
        return (cls._projections(batch_size, seq_len, d_model, g)
                + attention_flops(batch_size * pairs, d_model))

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        _, g, block, span = cls._geometry(seq_len, params, causal)
        n_pad = ceil_div(seq_len, block) * block
        # every padded query block multiplies its whole span (+ the g global keys), and the
        # global rows multiply all N keys (the causal half included)
        pairs = n_pad * (span + g) + g * seq_len
        return (cls._projections(batch_size, seq_len, d_model, g)
                + attention_flops(batch_size * pairs, d_model))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.project(x)  # 3 × (B, H, N, Dh)
        q = q * self.head_dim**-0.5
        valid = key_validity(mask, B, N, N, x.device)  # (B, N)
        g = min(self.global_tokens, N)
        if g == 0:
            y = sliding_window_attention(q, k, v, valid, self.window, self.causal)
        else:
            # global keys enter every row through the extra columns, so drop them from windows
            local_valid = valid.clone()
            local_valid[:, :g] = False
            extra = (k[:, :, :g], v[:, :, :g], valid[:, :g])
            y = sliding_window_attention(q, k, v, local_valid, self.window, self.causal, extra)
            y = torch.cat([self._global_rows(x, valid, g), y[:, :, g:]], dim=2)  # (B, H, N, Dh)
        return self.out(merge_heads(y))

    def _global_rows(self, x: torch.Tensor, valid: torch.Tensor, g: int) -> torch.Tensor:
        """The g global tokens attend to every (valid) token with the global projections."""
        D, N = self.d_model, x.shape[1]
        w, b = self.qkv_global.weight, self.qkv_global.bias
        qg = split_heads(F.linear(x[:, :g], w[:D], b[:D]), self.n_heads)  # (B, H, g, Dh)
        kg, vg = F.linear(x, w[D:], b[D:]).chunk(2, dim=-1)  # 2 × (B, N, D)
        kg, vg = split_heads(kg, self.n_heads), split_heads(vg, self.n_heads)  # (B, H, N, Dh)
        scores = (qg * self.head_dim**-0.5) @ kg.transpose(-1, -2)  # (B, H, g, N)
        allowed = valid[:, None, None, :]  # (B, 1, 1, N)
        if self.causal:
            pos = torch.arange(N, device=x.device)
            allowed = allowed & (pos[None, :] <= pos[:g, None])  # (B, 1, g, N)
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        return F.softmax(scores, dim=-1) @ vg  # (B, H, g, Dh)
