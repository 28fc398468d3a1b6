"""Linformer: keys and values projected along the sequence to k rows, then softmax attention.

Wang et al. 2020, "Linformer: Self-Attention with Linear Complexity",
https://arxiv.org/abs/2006.04768 (authors' code: fairseq `examples/linformer`).

head_i = softmax(Q_i (E K_i)ᵀ / √Dh) (F V_i), with E, F ∈ R^{k×n}.

- Projection sized per N: E and F are (k, max_len) parameters and a length-N input uses their
  first N columns, as the authors' code does (`compress_k.weight[:, 0:tgt_len]`). A sweep that
  passes `max_len=N` gives every length its own projection; N > max_len is an error.
- Sharing (paper §4, "parameter sharing"): `headwise` (default, as the authors' code: one E and
  one F per layer, shared by all heads) or `key-value` (one matrix, E = F, for keys and values).
  Layerwise sharing spans layers, so it is outside a single sublayer and not offered here.
- Simplified: E and F project the keys/values after their linear maps (the paper's E·K W^K form;
  the authors' code compresses the input first, which differs only in how the bias is mixed).
  Initialisation follows the authors' code (xavier-uniform, gain 1/√2). No dropout.
- Padding: masked positions are zeroed before the projection, so they add nothing to the k rows.

Shape legend: B batch, N length, D d_model, H heads, Dh head dim, k projected length.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lsbench.errors import LsbenchError, unknown_choice
from lsbench.variants.transformer import QKVAttention, merge_heads

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
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params):
        k = params.get("k", cls.defaults["k"])
        # scores + probabilities (B, H, N, k), plus the q/k/v/out activations
        return 2.0 * batch_size * n_heads * seq_len * k + 8.0 * batch_size * seq_len * d_model

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params):
        k = params.get("k", cls.defaults["k"])
        proj = 2.0 * batch_size * seq_len * 4 * d_model * d_model
        compress = 2 * 2.0 * batch_size * k * seq_len * d_model  # E·K and F·V
        attend = 2 * 2.0 * batch_size * seq_len * k * d_model  # Q·(EK)ᵀ and P·(FV)
        return proj + compress + attend

    def forward(self, x, mask=None):
        B, N, D = x.shape
        max_len = self.params["max_len"]
        if N > max_len:
            raise LsbenchError(
                f"linformer: sequence length {N} exceeds max_len={max_len}; build it with "
                f"max_len >= {N} (the E/F projections are k × max_len)."
            )
        q, k, v = self.project(x)  # 3 × (B, H, N, Dh)
        if mask is not None:
            keep = mask[:, None, :, None].to(k.dtype)  # (B, 1, N, 1)
            k, v = k * keep, v * keep
        E = self.E[:, :N]  # (k, N)
        Fm = E if self.F is None else self.F[:, :N]  # (k, N)
        k = E @ k  # (B, H, k, Dh)
        v = Fm @ v  # (B, H, k, Dh)
        q = q * self.head_dim**-0.5  # scale the (N, Dh) queries, not the (N, k) scores
        scores = q @ k.transpose(-2, -1)  # (B, H, N, k)
        y = F.softmax(scores, dim=-1) @ v  # (B, H, N, Dh)
        return self.out(merge_heads(y))  # (B, N, D)
