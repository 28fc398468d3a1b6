"""Full softmax attention with the N×N score matrix materialised (the Fastformer paper's baseline).

Vaswani et al. 2017, "Attention Is All You Need", https://arxiv.org/abs/1706.03762.
Shape legend: B batch, N length, D d_model, H heads, Dh head dim.

Half precision: the softmax runs in the dtype of the scores, also under autocast. CUDA
autocast would run it in float32 and cast the probabilities back for `@ v`, keeping an fp32
and a half copy of the N×N matrix (about 6 bytes per score instead of 4), so lsbench's
baseline would need 1.5-2× the memory of the one the papers compare against: FlashAttention's
"PyTorch Attention" (Dao et al. 2022, https://arxiv.org/abs/2205.14135, App. E) computes
scores, softmax and output in fp16. The softmax kernel still accumulates in float32 inside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lsbench.measure.flops import attention_flops, full_pairs, linear_flops
from lsbench.variants._decode import KVCacheDecoder
from lsbench.variants.base import Variant


def split_heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, N, D = t.shape
    return t.view(B, N, n_heads, D // n_heads).transpose(1, 2)  # (B, H, N, Dh)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    B, H, N, Dh = t.shape
    return t.transpose(1, 2).reshape(B, N, H * Dh)  # (B, N, D)


def score_mask(mask: torch.Tensor | None, n: int, causal: bool, device) -> torch.Tensor | None:
    """Boolean (B or 1, 1, N, N) mask of allowed (query, key) pairs, or None when all are."""
    allowed = None
    if mask is not None:
        allowed = mask[:, None, None, :]  # (B, 1, 1, N) keys that are real tokens
    if causal:
        tril = torch.ones(n, n, dtype=torch.bool, device=device).tril()
        allowed = tril if allowed is None else allowed & tril
    return allowed


class QKVAttention(Variant):
    """Shared projections: qkv = Linear(D, 3D), out = Linear(D, D)."""

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params):
        super().__init__(d_model, n_heads, causal, **params)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def project(self, x: torch.Tensor):
        # one view and one permute (the same strides as chunk + split_heads, in 2 ops instead
        # of 7: a decode step at B=1 is ~0.3 ms, where each op's dispatch shows)
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        return q, k, v  # 3 × (B, H, N, Dh)


class Transformer(KVCacheDecoder, QKVAttention):
    name = "transformer"
    method = "full softmax attention, N×N scores materialised"
    paper = "Vaswani et al. 2017, https://arxiv.org/abs/1706.03762"
    time_complexity = "O(N²·D)"
    memory_complexity = "O(H·N²)"
    accepts_bias = True
    decode_kernel = "math"  # decode step: explicit softmax over the cached keys, as forward

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        # scores + softmax probabilities (+ their grads in training) dominate; causal masks
        # the same N×N matrix, it does not shrink it
        return 3.0 * batch_size * n_heads * seq_len * seq_len + 8.0 * batch_size * seq_len * d_model

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        proj = linear_flops(batch_size * seq_len, d_model, 4 * d_model)
        return proj + attention_flops(batch_size * full_pairs(seq_len, causal), d_model)

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        # the whole N×N score matrix is multiplied, the causal upper triangle included
        return cls.flops(batch_size, seq_len, d_model, n_heads, params, causal=False)

    def forward(self, x, mask=None, bias=None):
        q, k, v = self.project(x)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, N, N)
        if bias is not None:
            scores = scores + bias
        allowed = score_mask(mask, x.shape[1], self.causal, x.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        # softmax in the scores' dtype even under autocast (which would run it in float32 and
        # keep a half copy beside it): the paper's baseline, see the module docstring
        y = F.softmax(scores, dim=-1, dtype=scores.dtype) @ v  # (B, H, N, Dh)
        return self.out(merge_heads(y))
