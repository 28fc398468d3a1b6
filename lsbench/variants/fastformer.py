"""Fastformer: additive attention, computed exactly as the official `FastSelfAttention`.

Wu et al. 2021, "Fastformer: Additive Attention Can Be All You Need",
https://arxiv.org/abs/2108.09084; official code: https://github.com/wuch15/Fastformer
(`Fastformer.ipynb`, class `FastSelfAttention`). Parameters carry the official names (`query`,
`key`, `query_att`, `key_att`, `transform`) so an official state dict loads by name.

1. Q = query(x), K = key(x)                                         (B, N, D)
2. α = softmax over positions of query_att(Q) / √Dh (+ mask)        (B, H, N)
3. global query q_h = Σ_i α_{h,i} Q_{i,h}                           (B, H, 1, Dh)
4. P = K ⊙ q                                                        (B, N, D)
5. β = softmax over positions of key_att(P) / √Dh (+ mask); k_h = Σ_i β_{h,i} P_{i,h}
6. U = k ⊙ Q (the value is Q: query-value sharing)                  (B, H, N, Dh)
7. y = transform(U) + Q                                             (B, N, D)
8. out = dense(y)  (the official `BertSelfOutput.dense`)             (B, N, D)

Note that `query_att` / `key_att` are Linear(D, H) over the whole D-vector, so every head's score
sees all heads' features, as in the official code. The mask is the official additive
(1 − mask)·(−10000).

- The official attention layer is `FastAttention` = `FastSelfAttention` (steps 1-7) followed by
  BERT's `BertSelfOutput`: dense, dropout, LayerNorm(· + input). The dense (a D × D matrix:
  about 24% of this sublayer's FLOPs, 8% of an encoder layer's with a 4·D FFN) is part of this
  sublayer, as every variant's output projection is; dropout, LayerNorm and the residual are the
  encoder block's (pre-norm there, post-norm in the official layer), so they are not.
- Official weights: `Fastformer.load_official(state_dict)` loads a `FastAttention` state dict
  (`self.query.weight`, ..., `output.dense.weight`); its `output.LayerNorm.*` entries have no
  place in this sublayer and are returned, not loaded.
- Simplified: initialisation is PyTorch's default, not the official normal(0, 0.02), so all
  variants start alike. No dropout. No causal form (the official code has none).

Shape legend: B batch, N length, D d_model, H heads, Dh head dim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from lsbench.errors import LsbenchError
from lsbench.measure.flops import linear_flops
from lsbench.variants.base import Variant
from lsbench.variants.transformer import merge_heads, split_heads

MASK_VALUE = -10000.0  # official additive mask


class Fastformer(Variant):
    name = "fastformer"
    method = "additive attention: global query, then global key, each a softmax-weighted sum"
    paper = "Wu et al. 2021, https://arxiv.org/abs/2108.09084"
    time_complexity = "O(N·D²) (token mixing O(N·D))"
    memory_complexity = "O(N·D)"
    supports_causal = False

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params):
        super().__init__(d_model, n_heads, causal, **params)
        self.query = nn.Linear(d_model, d_model)
        self.query_att = nn.Linear(d_model, n_heads)
        self.key = nn.Linear(d_model, d_model)
        self.key_att = nn.Linear(d_model, n_heads)
        self.transform = nn.Linear(d_model, d_model)
        self.dense = nn.Linear(d_model, d_model)  # official `output.dense` (BertSelfOutput)

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        return 7.0 * batch_size * seq_len * d_model  # Q, K, P, U, transform(U), y, dense(y)

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        """Four D × D and two D × H dense layers, and two softmax-weighted sums over N.

        The ⊙ products (K ⊙ q, k ⊙ Q) are element-wise and not counted (lsbench.measure.flops).
        """
        rows = batch_size * seq_len
        linears = linear_flops(rows, d_model, 4 * d_model)  # query, key, transform, dense
        scores = linear_flops(rows, d_model, 2 * n_heads)  # query_att, key_att
        pooling = 2 * linear_flops(rows, d_model, 1)  # Σ α Q and Σ β P: N-long sums per feature
        return linears + scores + pooling

    def load_official(self, state_dict: Mapping[str, torch.Tensor],
                      prefix: str = "") -> dict[str, torch.Tensor]:
        """Load an official `FastAttention` state dict; return the entries that have no place here.

        Keys are read under `prefix` (e.g. "fastformer_model.encoders.0.attention." in the
        official `Model`): `self.<p>` -> `<p>` (FastSelfAttention), `output.dense.<p>` ->
        `dense.<p>`. `output.LayerNorm.*` is returned, not loaded: this sublayer has no norm.
        Raises LsbenchError naming any missing, unexpected or misshapen key.
        """
        ours, source, left_out, unexpected = {}, {}, {}, []
        for key, value in state_dict.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name.startswith("output.LayerNorm."):
                left_out[key] = value
                continue
            if name.startswith("self."):
                name = name.removeprefix("self.")
            elif name.startswith("output.dense."):
                name = "dense." + name.removeprefix("output.dense.")
            else:
                unexpected.append(key)
                continue
            ours[name], source[name] = value, key
        own = self.state_dict()
        unexpected += [source[k] for k in ours if k not in own]
        missing = [k for k in own if k not in ours]
        misshapen = [f"{k} {tuple(ours[k].shape)} != {tuple(v.shape)}"
                     for k, v in own.items() if k in ours and ours[k].shape != v.shape]
        if unexpected or missing or misshapen:
            raise LsbenchError(
                f"fastformer: not an official FastAttention state dict for d_model={self.d_model}, "
                f"n_heads={self.n_heads} under prefix {prefix!r}: missing {missing}, unexpected "
                f"{unexpected}, misshapen {misshapen}. Pass the prefix that precedes "
                f"'self.query.weight' and build with the checkpoint's d_model / n_heads."
            )
        self.load_state_dict(ours, strict=True)
        return left_out

    def pool(self, scores: torch.Tensor, values: torch.Tensor,
             mask_bias: torch.Tensor | None) -> torch.Tensor:
        """Softmax over positions, then the weighted sum of `values` per head.

        scores (B, N, H), values (B, N, D) -> (B, H, 1, Dh).
        """
        scores = scores.transpose(1, 2) / math.sqrt(self.head_dim)  # (B, H, N)
        if mask_bias is not None:
            scores = scores + mask_bias
        weights = torch.softmax(scores, dim=-1).unsqueeze(2)  # (B, H, 1, N)
        return weights @ split_heads(values, self.n_heads)  # (B, H, 1, Dh)

    def forward(self, x, mask=None):
        B, N, D = x.shape
        mask_bias = None
        if mask is not None:
            mask_bias = (1.0 - mask[:, None, :].to(x.dtype)) * MASK_VALUE  # (B, 1, N)
        q = self.query(x)  # (B, N, D)
        k = self.key(x)  # (B, N, D)
        global_q = self.pool(self.query_att(q), q, mask_bias)  # (B, H, 1, Dh)
        p = k * global_q.transpose(1, 2).reshape(B, 1, D)  # (B, N, D)
        global_k = self.pool(self.key_att(p), p, mask_bias)  # (B, H, 1, Dh)
        u = merge_heads(global_k * split_heads(q, self.n_heads))  # (B, N, D)
        return self.dense(self.transform(u) + q)  # (B, N, D)
