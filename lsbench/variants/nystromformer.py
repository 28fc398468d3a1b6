"""Nyströmformer: softmax attention through the Nyström approximation with m landmarks.

Xiong et al. 2021, "Nyströmformer: A Nyström-Based Algorithm for Approximating Self-Attention",
https://arxiv.org/abs/2102.03902 (official code: mlpen/Nystromformer; PyTorch package:
lucidrains/nystrom-attention `NystromAttention`, which tests/test_modern_variants.py matches on
copied weights).

softmax(QKᵀ/√Dh) V ≈ softmax(Q K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · softmax(Q̃ Kᵀ) V  (paper eq. 15),
with Q̃, K̃ the m landmarks (segment means of the scaled queries / keys) and pinv the paper's
iterative Moore-Penrose approximation (§3.3, 6 iterations):
Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ))), Z₀ = Aᵀ / (max row sum · max column sum of |A|).
A depthwise convolution of the values (kernel 33 along the sequence, one kernel per head, as the
official code and the package) is added as a skip path.

- Segments as the package: a length-n sequence is cut into m segments of l = ceil(n / m)
  tokens, the first one shortened by m·l − n (the package front-pads with masked tokens); the
  segment mean is over real tokens only. With a padding mask the segments are laid over each
  sequence's *real* tokens (ranks from a cumulative sum of the mask, scattered into segments),
  so padding never changes the landmarks: outputs of real tokens do not depend on padding.
- Z₀'s scale is the max over the heads and landmarks of one sequence (the package takes it over
  the whole batch, which makes a sequence's output depend on the others in its batch; at B = 1
  the two are identical).
- Empty segments (whenever the shortfall m·l − n >= l, e.g. n < m, or n = 200 with m = 64:
  l = 4, the first 14 segments hold no token) are masked out of softmax(Q K̃ᵀ) and get an
  identity block in softmax(Q̃ K̃ᵀ), so they drop out exactly; the package lets them enter the
  pseudo-inverse as uniform rows, so outputs agree with it only where no segment is empty
  (n a multiple of m, or a shortfall below l).
- The product is evaluated as softmax(QK̃ᵀ) · (pinv · (softmax(Q̃Kᵀ) V)), O(N·m·Dh) per head,
  where the package and the official code form the (N, m) · (m, m) product first, O(N·m²).
- Simplified: no dropout; non-causal only (landmarks average over future tokens).

Shape legend: B batch, N length, D d_model, H heads, Dh head dim, m landmarks, l segment length.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lsbench.errors import LsbenchError
from lsbench.measure.flops import linear_flops
from lsbench.variants.transformer import QKVAttention, merge_heads


def iterative_pinv(a: torch.Tensor, iters: int) -> torch.Tensor:
    """Paper §3.3 Moore-Penrose approximation of (B, H, m, m) matrices, scaled per sequence."""
    abs_a = a.abs()
    col = abs_a.sum(-1).amax(dim=(-2, -1), keepdim=True)  # (B, 1, 1): max row sum
    row = abs_a.sum(-2).amax(dim=(-2, -1), keepdim=True)  # (B, 1, 1): max column sum
    z = a.transpose(-2, -1) / (col * row)[..., None]  # (B, H, m, m)
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    for _ in range(iters):  # fixed count (paper: 6), independent of N and B
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segments(n: int, m: int) -> tuple[int, int]:
    """(l, front): segment length and the shortfall of the first segment for length n."""
    seg = -(-n // m)
    return seg, m * seg - n


def landmark_means(q: torch.Tensor, k: torch.Tensor, m: int, keep: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Segment means of q and k over real tokens: (B, H, m, Dh) each, and a (B, m) count.

    keep: (B, N) bool or None. Without a mask the segments are static (pad + reshape); with one,
    each real token goes to segment (rank + front) // l of its own sequence (no host sync).
    """
    B, H, N, Dh = q.shape
    if keep is None:
        seg, front = segments(N, m)
        qs = F.pad(q, (0, 0, front, 0)).view(B, H, m, seg, Dh).sum(3)  # (B, H, m, Dh)
        ks = F.pad(k, (0, 0, front, 0)).view(B, H, m, seg, Dh).sum(3)
        start = torch.arange(m, device=q.device) * seg  # (m,) first padded position
        count = (start + seg - start.clamp_min(front)).clamp(0, seg).to(q.dtype)  # real tokens
        return qs, ks, count.expand(B, m)
    keep_f = keep.to(q.dtype)
    n_real = keep.sum(-1, keepdim=True)  # (B, 1)
    seg = (n_real + m - 1) // m  # (B, 1)
    front = m * seg - n_real
    rank = keep.cumsum(-1) - 1  # (B, N): position among the real tokens
    idx = ((rank + front) // seg.clamp_min(1)).clamp(0, m - 1)  # (B, N) segment of each token
    idx4 = idx[:, None, :, None].expand(B, H, N, Dh)
    qs = q.new_zeros(B, H, m, Dh).scatter_add_(2, idx4, q * keep_f[:, None, :, None])
    ks = k.new_zeros(B, H, m, Dh).scatter_add_(2, idx4, k * keep_f[:, None, :, None])
    count = keep_f.new_zeros(B, m).scatter_add_(1, idx, keep_f)  # (B, m)
    return qs, ks, count


def nystrom_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: int, iters: int,
                      keep: torch.Tensor | None) -> torch.Tensor:
    """q (scaled), k, v: (B, H, N, Dh); keep (B, N) or None -> (B, H, N, Dh)."""
    qs, ks, count = landmark_means(q, k, m, keep)
    q_l = qs / count.clamp_min(1)[:, None, :, None]  # (B, H, m, Dh)
    k_l = ks / count.clamp_min(1)[:, None, :, None]
    neg = torch.finfo(q.dtype).min
    sim1 = q @ k_l.transpose(-2, -1)  # (B, H, N, m)
    sim2 = q_l @ k_l.transpose(-2, -1)  # (B, H, m, m)
    sim3 = q_l @ k.transpose(-2, -1)  # (B, H, m, N)
    if keep is not None:
        sim3 = sim3.masked_fill(~keep[:, None, None, :], neg)
    # Without a mask, whether a segment is empty is known from N alone (no host sync); the
    # (N, m) masking pass is skipped when none is.
    seg, front = segments(q.shape[2], m)
    if keep is not None or front >= seg:
        # empty landmarks: masked out of sim1, identity block in the kernel, so the
        # pseudo-inverse (block-diagonal iterates) keeps them apart from the real ones
        has = count > 0  # (B, m)
        sim1 = sim1.masked_fill(~has[:, None, None, :], neg)
        pair = has[:, :, None] & has[:, None, :]  # (B, m, m)
        eye = torch.eye(m, device=q.device, dtype=q.dtype)
        attn2 = torch.where(pair[:, None], sim2.masked_fill(~pair[:, None], neg).softmax(-1),
                            eye)  # (B, H, m, m)
    else:
        attn2 = sim2.softmax(-1)
    context = iterative_pinv(attn2, iters) @ (sim3.softmax(-1) @ v)  # (B, H, m, Dh)
    return sim1.softmax(-1) @ context  # (B, H, N, Dh)


class Nystromformer(QKVAttention):
    name = "nystromformer"
    method = "Nyström approximation of softmax attention with m landmarks + conv skip on values"
    paper = "Xiong et al. 2021, Nyströmformer, https://arxiv.org/abs/2102.03902"
    time_complexity = "O(N·m·D + H·m³)"
    memory_complexity = "O(H·N·m)"
    supports_causal = False  # landmarks average over future tokens
    # landmarks m, pseudo-inverse iterations and the value-conv kernel as in the paper / its code
    defaults = {"landmarks": 64, "pinv_iterations": 6, "conv_kernel": 33}

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params: Any):
        super().__init__(d_model, n_heads, causal, **params)
        kernel = self.params["conv_kernel"]
        # per-head depthwise conv along the sequence, shared over Dh (official code)
        self.conv = nn.Conv2d(n_heads, n_heads, (kernel, 1), padding=(kernel // 2, 0),
                              groups=n_heads, bias=False)

    @classmethod
    def check_params(cls, d_model, n_heads, params):
        super().check_params(d_model, n_heads, params)
        cls.require_positive(params, "landmarks", "pinv_iterations")
        if params["conv_kernel"] % 2 == 0:
            raise LsbenchError(
                f"variant 'nystromformer': parameter 'conv_kernel' must be odd (a centred "
                f"kernel keeps the length), got {params['conv_kernel']!r}; the paper uses 33."
            )

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        m = params["landmarks"]
        # sim1/sim3 and their softmaxes (B, H, N, m), plus the q/k/v/out activations
        return 4.0 * batch_size * n_heads * seq_len * m + 8.0 * batch_size * seq_len * d_model

    @classmethod
    def _count(cls, batch_size, seq_len, d_model, n_heads, m, iters, kernel):
        rows = batch_size * seq_len
        return (linear_flops(rows, d_model, 4 * d_model)
                + 2.0 * 2 * rows * d_model  # landmark sums of q and k
                + 2.0 * 3 * rows * m * d_model  # QK̃ᵀ, Q̃Kᵀ, softmax(Q̃Kᵀ)·V
                + 2.0 * rows * m * d_model  # softmax(QK̃ᵀ) · context
                + 2.0 * 2 * batch_size * m * m * d_model  # Q̃K̃ᵀ, pinv · (m, Dh)
                + iters * 4 * 2.0 * batch_size * n_heads * m**3  # 4 (m, m) products per step
                + 2.0 * rows * d_model * kernel)  # depthwise value conv

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        # landmarks beyond the sequence length are empty segments: no useful work
        m = min(params["landmarks"], seq_len)
        return cls._count(batch_size, seq_len, d_model, n_heads, m, params["pinv_iterations"],
                          params["conv_kernel"])

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        return cls._count(batch_size, seq_len, d_model, n_heads, params["landmarks"],
                          params["pinv_iterations"], params["conv_kernel"])

    def forward(self, x, mask=None):
        q, k, v = self.project(x)  # 3 × (B, H, N, Dh)
        keep = None if mask is None else mask.to(torch.bool)  # (B, N)
        if keep is not None:
            v = v * keep[:, None, :, None]  # padded values reach neither sums nor the conv
        q = q * self.head_dim**-0.5
        y = nystrom_attention(q, k, v, self.params["landmarks"], self.params["pinv_iterations"],
                              keep)
        y = y + self.conv(v)  # (B, H, N, Dh)
        return self.out(merge_heads(y))  # (B, N, D)
