"""Linformer: keys and values projected along the sequence to k rows, then softmax attention.

Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity",
https://arxiv.org/abs/2006.04768 (authors' code: fairseq `examples/linformer`).

head_i = softmax(Q_i (E K_i)ᵀ / √Dh) (F V_i), with E, F ∈ R^{k×n}.

Computed as the authors' code computes it (fairseq `MultiheadLinearAttention.forward`,
self-attention branch): the *input* is compressed along the sequence first, E·x (B, k, D), and
the key projection is applied to those k rows, k = (E x) W_Kᵀ + b_K (likewise v from F·x); only
the queries are projected over all N rows. With bias-free projections this is the paper's
E·(x W_Kᵀ); with biases it differs only in that b_K is added once per compressed row. The cost is
what the authors' code pays: 2·k·N·D per compression and 2·k·D² per key/value projection,
instead of 2·N·D² for projecting all N rows first.

- Projection sized per N: E and F are (k, max_len) parameters and a length-N input uses their
  first N columns, as the authors' code does (`compress_k.weight[:, 0:tgt_len]`). A sweep that
  passes `max_len=N` gives every length its own projection; N > max_len is an error.
- Short sequences, N <= k: k is capped at N (E[:N, :N], F[:N, :N]: "k capped at N"). The
  paper's setting is k < n; the authors' code would project a length-N input up to k > N rows,
  which compresses nothing and costs about twice full attention (2·k·N·D per compression,
  attention over k > N keys). With the cap a short input is still Linformer (a learned N × N
  sequence mixing), costing at most full attention plus the N × N compressions.
  `Linformer.effective_k(N, params)` gives the k used and `Linformer.notes(N, params)` says so
  in words ("" when the cap does not apply), for the result row / report; `flops` and
  `mem_elems` count the capped k.
- Sharing (paper §4, "parameter sharing"): `headwise` (default, as the authors' code: one E and
  one F per layer, shared by all heads) or `key-value` (one matrix, E = F, for keys and values).
  Layerwise sharing spans layers, so it is outside a single sublayer and not offered here.
- Parameters: `qkv` (rows [0, D) query, [D, 2D) key, [2D, 3D) value) and `out` as every QKV
  variant; E, F as above. Initialisation of E/F follows the authors' code (xavier-uniform,
  gain 1/√2). No dropout.
- Padding (right padding): masked positions of x are zeroed before the compression, so they add
  nothing to the k rows (the authors' self-attention branch ignores `key_padding_mask`; this is
  our addition); where the cap applies, a sample with n real tokens attends to its first
  min(k, n) compressed rows only, exactly what it gets run alone.

Shape legend: B batch, N length, D d_model, H heads, Dh head dim, k projected length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lsbench.errors import LsbenchError, unknown_choice
from lsbench.measure.flops import attention_flops, linear_flops
from lsbench.variants.transformer import QKVAttention, merge_heads, split_heads

SHARING = ("headwise", "key-value")


class Linformer(QKVAttention):
    name = "linformer"
    method = "softmax attention over keys/values projected along the sequence to k rows"
    paper = "Wang et al. 2020, https://arxiv.org/abs/2006.04768"
    time_complexity = "O(N·k·D)"
    memory_complexity = "O(H·N·k)"
    supports_causal = False  # the projection mixes all positions, future ones included
    defaults = {"k": 256, "max_len": 4096, "sharing": "headwise"}

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params):
        super().__init__(d_model, n_heads, causal, **params)
        k, max_len = self.params["k"], self.params["max_len"]
        self.E = nn.Parameter(torch.empty(k, max_len))
        nn.init.xavier_uniform_(self.E, gain=1 / math.sqrt(2))
        self.F = None
        if self.params["sharing"] == "headwise":
            self.F = nn.Parameter(torch.empty(k, max_len))
            nn.init.xavier_uniform_(self.F, gain=1 / math.sqrt(2))

    @classmethod
    def check_params(cls, d_model, n_heads, params):
        if params["sharing"] not in SHARING:
            raise unknown_choice("value of linformer parameter 'sharing'", params["sharing"],
                                 SHARING)
        cls.require_positive(params, "k", "max_len")

    @classmethod
    def effective_k(cls, seq_len: int, params: dict | None = None) -> int:
        """The number of compressed rows used at length `seq_len`: min(k, N) (see docstring)."""
        return min({**cls.defaults, **(params or {})}["k"], seq_len)

    @classmethod
    def notes(cls, seq_len: int, params: dict | None = None, d_model: int | None = None,
              n_heads: int | None = None) -> str:
        """A note for the result row when the configured k is not what ran, else ''."""
        k = {**cls.defaults, **(params or {})}["k"]
        if seq_len >= k:
            return ""
        return f"k capped at N={seq_len} (k={k} > N: nothing to compress)"

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        k = cls.effective_k(seq_len, params)
        # scores + probabilities (B, H, N, k); q/out activations (B, N, D); compressed
        # inputs and their keys/values (B, k, D)
        return (2.0 * batch_size * n_heads * seq_len * k + 4.0 * batch_size * seq_len * d_model
                + 4.0 * batch_size * k * d_model)

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        """q and out over N rows; E·x (and F·x) over N columns; k and v over the k rows
        (k capped at N)."""
        k = cls.effective_k(seq_len, params)
        n_compress = 1 if params.get("sharing", cls.defaults["sharing"]) == "key-value" else 2
        rows = batch_size * seq_len
        proj = linear_flops(rows, d_model, 2 * d_model)  # q and out
        compress = n_compress * linear_flops(batch_size * k, seq_len, d_model)  # E·x, F·x
        kv_proj = linear_flops(batch_size * k, d_model, 2 * d_model)  # k and v from k rows
        attend = attention_flops(rows * k, d_model)  # Q·Kᵀ and P·V over N × k pairs
        return proj + compress + kv_proj + attend

    def forward(self, x, mask=None):
        B, N, D = x.shape
        max_len = self.params["max_len"]
        if N > max_len:
            raise LsbenchError(
                f"linformer: sequence length {N} exceeds max_len={max_len}; build it with "
                f"max_len >= {N} (the E/F projections are k × max_len)."
            )
        w, b = self.qkv.weight, self.qkv.bias  # (3D, D), (3D,)
        q = F.linear(x, w[:D], b[:D])  # (B, N, D)
        if mask is not None:
            x = x * mask[:, :, None].to(x.dtype)  # (B, N, D) padding adds nothing below
        rows = self.effective_k(N, self.params)  # k, or N when N < k
        E = self.E[:rows, :N]  # (k, N)
        if self.F is None:  # key-value sharing: one compressed input feeds both
            k, v = F.linear(E @ x, w[D:], b[D:]).chunk(2, dim=-1)  # 2 × (B, k, D)
        else:
            k = F.linear(E @ x, w[D:2 * D], b[D:2 * D])  # (B, k, D)
            v = F.linear(self.F[:rows, :N] @ x, w[2 * D:], b[2 * D:])  # (B, k, D)
        q, k, v = (split_heads(t, self.n_heads) for t in (q, k, v))  # (B, H, N or k, Dh)
        q = q * self.head_dim**-0.5  # scale the (N, Dh) queries, not the (N, k) scores
        scores = q @ k.transpose(-2, -1)  # (B, H, N, k)
        if mask is not None:
            # a sample with n < k real tokens has only n compressed rows (the cap per sample)
            n_real = mask.sum(-1, keepdim=True)  # (B, 1)
            r = torch.arange(rows, device=x.device)
            row_ok = (r < n_real) | (r == 0)  # (B, k); row 0 keeps an all-padding sample finite
            scores = scores.masked_fill(~row_ok[:, None, None, :], float("-inf"))
        y = F.softmax(scores, dim=-1) @ v  # (B, H, N, Dh)
        return self.out(merge_heads(y))  # (B, N, D)
