"""Linear attention with the feature map φ(x) = elu(x) + 1.

Katharopoulos et al. 2020, "Transformers are RNNs: Fast Autoregressive Transformers with Linear
Attention", https://arxiv.org/abs/2006.16236 (authors' code: idiap/fast-transformers).

y_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_j φ(k_j) + eps), the sums over all j (non-causal) or
j <= i (causal), with eps = 1e-6 as in fast-transformers' `LinearAttention`.

- Non-causal: S = φ(K)ᵀ V (Dh × Dh per head) once, then φ(Q) S: O(N·D·Dh) time, O(N·D) memory.
- Causal: the paper's prefix sums, computed in chunks of `chunk` positions so that no
  (N, Dh, Dh) cumulative sum is ever materialised: inside a chunk the masked quadratic form
  (chunk × chunk scores), across chunks the running state Σ φ(k) vᵀ carried by an exclusive
  cumulative sum over chunk totals. Memory O(N·H·chunk + N·H·Dh²/chunk). The paper's CUDA kernel
  streams the state instead; the arithmetic is the same.
- Padding: φ(k) and v of masked positions are zeroed, so they are excluded from every sum.
- Simplified: no dropout; the feature map is the paper's fixed elu + 1 (no learned maps).

Shape legend: B batch, N length, D d_model, H heads, Dh head dim, C chunk, M = ceil(N / C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lsbench.variants.transformer import QKVAttention, merge_heads

EPS = 1e-6


def feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal: q, k already feature-mapped, (B, H, N, Dh) each -> (B, H, N, Dh)."""
    kv = k.transpose(-2, -1) @ v  # (B, H, Dh, Dh)
    z = k.sum(dim=-2)  # (B, H, Dh)
    den = (q @ z.unsqueeze(-1)) + EPS  # (B, H, N, 1)
    return (q @ kv) / den


def causal_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            chunk: int) -> torch.Tensor:
    """Causal prefix sums in chunks: q, k feature-mapped, (B, H, N, Dh) -> (B, H, N, Dh)."""
    B, H, N, Dh = q.shape
    C = min(chunk, N)
    M = -(-N // C)
    pad = M * C - N
    if pad:  # zero φ(k), v at the tail add nothing to any sum; the tail outputs are cropped
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (t.reshape(B, H, M, C, Dh) for t in (q, k, v))  # (B, H, M, C, Dh)
    # state from all earlier chunks: exclusive cumulative sum of per-chunk totals
    kv = k.transpose(-2, -1) @ v  # (B, H, M, Dh, Dh)
    kv = kv.cumsum(dim=2) - kv  # (B, H, M, Dh, Dh)
    z = k.sum(dim=-2)  # (B, H, M, Dh)
    z = z.cumsum(dim=2) - z  # (B, H, M, Dh)
    # within the chunk: the masked quadratic form
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    a = (q @ k.transpose(-2, -1)).masked_fill(~tril, 0.0)  # (B, H, M, C, C)
    num = a @ v + q @ kv  # (B, H, M, C, Dh)
    den = a.sum(dim=-1, keepdim=True) + q @ z.unsqueeze(-1) + EPS  # (B, H, M, C, 1)
    y = (num / den).reshape(B, H, M * C, Dh)  # (B, H, N + pad, Dh)
    return y[:, :, :N]


class Linear(QKVAttention):
    name = "linear"
    method = "kernelised attention φ(Q)(φ(K)ᵀV), φ = elu + 1; causal by chunked prefix sums"
    paper = "Katharopoulos et al. 2020, https://arxiv.org/abs/2006.16236"
    time_complexity = "O(N·D·Dh)"
    memory_complexity = "O(N·D) (causal: O(N·H·(chunk + Dh²/chunk)))"
    supports_causal = True
    defaults = {"chunk": 64}  # causal only: positions per prefix-sum chunk (not in the paper)

    @classmethod
    def check_params(cls, d_model, n_heads, params):
        cls.require_positive(params, "chunk")

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params):
        base = 8.0 * batch_size * seq_len * d_model
        if not params.get("causal", False):
            return base
        chunk = params.get("chunk", cls.defaults["chunk"])
        head_dim = d_model // n_heads
        # chunk scores (B, H, M, C, C) and carried states (B, H, M, Dh, Dh)
        return base + batch_size * n_heads * seq_len * (chunk + head_dim**2 / chunk)

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params):
        head_dim = d_model // n_heads
        proj = 2.0 * batch_size * seq_len * 4 * d_model * d_model
        kernel = 2 * 2.0 * batch_size * seq_len * d_model * head_dim  # φ(K)ᵀV and φ(Q)S
        if params.get("causal", False):
            chunk = params.get("chunk", cls.defaults["chunk"])
            kernel += 2 * 2.0 * batch_size * seq_len * chunk * d_model  # intra-chunk QKᵀ, AV
        return proj + kernel

    def forward(self, x, mask=None):
        q, k, v = self.project(x)  # 3 × (B, H, N, Dh)
        q, k = feature_map(q), feature_map(k)
        if mask is not None:
            keep = mask[:, None, :, None].to(k.dtype)  # (B, 1, N, 1)
            k, v = k * keep, v * keep
        if self.causal:
            y = causal_linear_attention(q, k, v, self.params["chunk"])
        else:
            y = linear_attention(q, k, v)  # (B, H, N, Dh)
        return self.out(merge_heads(y))  # (B, N, D)
