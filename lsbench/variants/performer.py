"""Performer: softmax attention approximated with positive orthogonal random features (FAVOR+).

Choromanski et al. 2021, "Rethinking Attention with Performers", https://arxiv.org/abs/2009.14794
(official code: google-research/google-research `performer/fast_attention`; PyTorch port:
lucidrains/performer-pytorch `FastAttention`, which tests/test_modern_variants.py matches on a
copied projection matrix).

exp(qᵀk/√Dh) ≈ φ(q)ᵀφ(k) with φ(x) = exp(Wx' − |x'|²/2) / √m, x' = x / Dh^¼, where the m rows of
W (m = `nb_features`) are blocks of orthogonal vectors with χ-distributed norms (§3, "ORFs").
Then y_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j φ(k_j): O(N·m·Dh) time, O(N·m) memory.

Numerics exactly as the official code / performer-pytorch (`softmax_kernel`, eps = 1e-4 as in
performer-pytorch; the JAX code uses 1e-6): each query's exponent is shifted by its own max over
features, every key's by the max over all (real) keys and features, and eps is added to every
feature. Shifts that are the same for all keys (or all features of one query) cancel in the
ratio; the 1/√m factors cancel too and are left out.

- Causal: output i is the non-causal output over keys 0..i, whose key shift is the running
  max M_i = max_{j<=i} m_j of the per-key maxima m_j; so a later key never changes an earlier
  output (through the shift and eps it would: performer-pytorch's causal mode, which shifts by
  the max over all keys, leaks the future). Every exponential is of a difference <= 0, so
  nothing overflows or flushes to zero at any input scale: each key keeps its own shift,
  φ(k_j) = exp(e_j − m_j)·exp(m_j − M_i) + eps. In chunks of `chunk` positions (as `linear.py`):
  inside a chunk the masked quadratic form with the (C, C) factor exp(m_j − M_i); each chunk's
  state Σ φ(k_j) v_jᵀ is taken relative to its own max μ_c; chunk states are passed on by an
  (M, M) matrix exp(μ_c' − Q_c), c' < c, Q_c = max of μ before chunk c (the state passing of
  Mamba-2's SSD: cumulative max, no loop over chunks or positions), and read out with
  exp(Q_c − M_i). The eps part, eps·Σ_r φ(q_i)·(Σ_{j<=i} v_j, i + 1), needs no shift at all.
- Redraw: while training, W is redrawn every `redraw_interval` forward calls (performer-pytorch's
  `feature_redraw_interval`, default 1000; 0 never redraws). Evaluation never redraws.
- Padding: masked keys are excluded from every sum and from the key max.
- Features and sums run in float32 (exp and the sums overflow in half precision).

Shape legend: B batch, N length, D d_model, H heads, Dh head dim, R random features (m),
C chunk, M = ceil(N / C) chunks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lsbench.measure.flops import linear_flops
from lsbench.variants._decode import CaptureQKV, Decoder, DecodeState, heads, standin_output
from lsbench.variants.transformer import QKVAttention, merge_heads

EPS = 1e-4  # performer-pytorch `softmax_kernel` default


def orthogonal_features(n_features: int, dim: int, device: torch.device | None = None
                        ) -> torch.Tensor:
    """(n_features, dim) Gaussian orthogonal random matrix with χ(dim) row norms (scaling=0).

    Blocks of `dim` orthonormal rows (QR of a Gaussian matrix), the last block truncated, each
    row rescaled to the norm of an independent Gaussian vector, as the paper's ORF construction
    and performer-pytorch's `gaussian_orthogonal_random_matrix`.
    """
    n_blocks = -(-n_features // dim)
    gauss = torch.randn(n_blocks, dim, dim, device=device)
    q, _ = torch.linalg.qr(gauss)  # (n_blocks, dim, dim), orthonormal columns
    rows = q.transpose(-2, -1).reshape(n_blocks * dim, dim)[:n_features]  # (R, Dh)
    norms = torch.randn(n_features, dim, device=device).norm(dim=1)  # (R,)
    return norms[:, None] * rows


def query_features(q: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """φ(q) up to a per-query factor: (B, H, N, Dh) -> (B, H, N, R)."""
    x = q * q.shape[-1] ** -0.25
    dash = x @ proj.t()  # (B, H, N, R)
    diag = 0.5 * (x * x).sum(-1, keepdim=True)  # (B, H, N, 1)
    return torch.exp(dash - diag - dash.amax(-1, keepdim=True).detach()) + EPS


def key_exponents(k: torch.Tensor, proj: torch.Tensor, keep: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(exponent W k' − |k'|²/2 (B, H, N, R), per-key max of W k' (B, H, N), global shift G).

    G is the max of W k' over real keys and features per (batch, head), as the official code
    shifts keys (the non-causal path); the per-key max is that of every key, real or not.
    """
    x = k * k.shape[-1] ** -0.25
    dash = x @ proj.t()  # (B, H, N, R)
    expo = dash - 0.5 * (x * x).sum(-1, keepdim=True)
    key_max = dash.amax(-1).detach()  # (B, H, N)
    real_max = key_max if keep is None else key_max.masked_fill(~keep, float("-inf"))
    shift = real_max.amax(-1, keepdim=True)  # (B, H, 1)
    shift = torch.where(torch.isfinite(shift), shift, 0.0)  # a sequence with no real token
    return expo, key_max, shift


def favor_attention(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal: φ(q) (B, H, N, R), φ(k) (B, H, N, R), v (B, H, N, Dh) -> (B, H, N, Dh)."""
    kv = kf.transpose(-2, -1) @ v  # (B, H, R, Dh)
    z = kf.sum(-2).unsqueeze(-1)  # (B, H, R, 1)
    return (qf @ kv) / (qf @ z)


def causal_favor_attention(qf: torch.Tensor, expo: torch.Tensor, key_max: torch.Tensor,
                           v: torch.Tensor, keep: torch.Tensor | None, chunk: int
                           ) -> torch.Tensor:
    """Output i = non-causal FAVOR+ over keys 0..i (key shift: their running max), in chunks.

    qf: φ(q) (B, H, N, R); expo: key exponents W k' − |k'|²/2 (B, H, N, R), overwritten;
    key_max: per-key max of W k' (B, H, N); v: (B, H, N, Dh); keep: real keys (B, 1, N) or None.
    """
    B, H, N, R = qf.shape
    Dh = v.shape[-1]
    low = torch.finfo(qf.dtype).min  # "no real key": finite, so low − low = 0, never nan
    # (B, H, N, R): each key at its own max, <= 1; in place (expo is consumed): one N·R buffer
    kexp = expo.sub_(key_max[..., None]).exp_()
    m = key_max
    if keep is not None:
        kexp = kexp * keep[..., None]  # not in place: exp's backward needs its output
        v = v * keep[..., None]
        m = m.masked_fill(~keep, low)
    count = (torch.arange(1, N + 1, device=qf.device, dtype=qf.dtype).view(1, 1, N)
             if keep is None else keep.to(qf.dtype).cumsum(-1))  # real keys <= i
    # eps·φ(q_i)·1 weighs every earlier real key alike: no shift involved
    tail = EPS * qf.sum(-1, keepdim=True)  # (B, H, N, 1)
    num, den = tail * v.cumsum(2), tail[..., 0] * count  # (B, H, N, Dh), (B, H, N)
    C = min(chunk, N)
    M = -(-N // C)
    pad = M * C - N
    if pad:  # zero features at the tail add nothing; the tail rows are cropped
        qf, kexp, v = (F.pad(t, (0, 0, 0, pad)) for t in (qf, kexp, v))
        m = F.pad(m, (0, pad), value=low)
    run = m.cummax(-1).values  # (B, H, N'): M_i, the key shift of output i
    qc, kc, vc = (t.view(B, H, M, C, -1) for t in (qf, kexp, v))  # (B, H, M, C, R or Dh)
    mc, runc = m.view(B, H, M, C), run.view(B, H, M, C)
    # inside the chunk: φ(q_i)·kexp_j·exp(m_j − M_i) for j <= i
    tril = torch.ones(C, C, dtype=torch.bool, device=qf.device).tril()
    decay = (mc[..., None, :] - runc[..., :, None]).masked_fill_(~tril, float("-inf")).exp_()
    a = (qc @ kc.transpose(-2, -1)).mul_(decay)  # (B, H, M, C, C); in place: one buffer less
    # chunk states relative to the chunk's own max μ_c
    mu = mc.amax(-1)  # (B, H, M)
    kw = kc * torch.exp(mc - mu[..., None])[..., None]  # (B, H, M, C, R)
    states = kw.transpose(-2, -1) @ vc  # (B, H, M, R, Dh)
    sums = kw.sum(-2)  # (B, H, M, R)
    # pass them on: chunk c sees c' < c with weight exp(μ_c' − Q_c), Q_c = max_{c' < c} μ_c'
    Q = F.pad(mu.cummax(-1).values, (1, 0), value=low)[..., :M]  # (B, H, M)
    before = torch.ones(M, M, dtype=torch.bool, device=qf.device).tril(-1)
    W = torch.exp((mu[..., None, :] - Q[..., :, None]).masked_fill(~before, float("-inf")))
    entering = (W @ states.reshape(B, H, M, R * Dh)).view(B, H, M, R, Dh)
    entering_sums = W @ sums  # (B, H, M, R)
    g = torch.exp(Q[..., None] - runc)  # (B, H, M, C): from Q_c to each query's M_i, <= 1
    num_c = a @ vc + g[..., None] * (qc @ entering)  # (B, H, M, C, Dh)
    den_c = a.sum(-1) + g * (qc @ entering_sums[..., None])[..., 0]  # (B, H, M, C)
    num = num + num_c.view(B, H, M * C, Dh)[:, :, :N]
    den = den + den_c.view(B, H, M * C)[:, :, :N]
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)[..., None]


class Performer(QKVAttention):
    name = "performer"
    method = "FAVOR+: softmax kernel by positive orthogonal random features; causal by prefix sums"
    paper = "Choromanski et al. 2021, Performers, https://arxiv.org/abs/2009.14794"
    time_complexity = "O(N·m·D) (causal: + (N/chunk)²·m·D state passing)"
    memory_complexity = "O(H·N·m) (causal: + H·N·(chunk + m·Dh/chunk) + H·(N/chunk)²)"
    supports_causal = True
    # nb_features: m, the official code's default 256; redraw_interval: training calls between
    # redraws (performer-pytorch's default); chunk: causal prefix-sum chunk (not in the paper)
    defaults = {"nb_features": 256, "redraw_interval": 1000, "chunk": 64}

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params: Any):
        super().__init__(d_model, n_heads, causal, **params)
        proj = orthogonal_features(self.params["nb_features"], self.head_dim)
        self.register_buffer("projection", proj)  # (R, Dh), shared by heads as in the paper
        self.calls_since_redraw = 0

    @classmethod
    def check_params(cls, d_model, n_heads, params):
        super().check_params(d_model, n_heads, params)
        cls.require_positive(params, "nb_features", "chunk")

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        R, head_dim = params["nb_features"], d_model // n_heads
        elems = 8.0 * batch_size * seq_len * d_model + 3.0 * batch_size * n_heads * seq_len * R
        if causal:  # chunk scores and their decay factors (B, H, M, C, C), chunk states and the
            C = params["chunk"]  # states entering each chunk (B, H, M, R, Dh), (M, M) passing
            M = -(-seq_len // min(C, seq_len))
            elems += batch_size * n_heads * (seq_len * (2.0 * C + 2.0 * R * head_dim / C) + M * M)
        return elems

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        # The paper's algorithm, causal or not: per token the features (2 × Dh·R), the state
        # update φ(k)vᵀ (R·Dh), the read-out φ(q)ᵀS (R·Dh) and φ(q)ᵀz (R) multiply-adds per head.
        rows = batch_size * seq_len
        R = params["nb_features"]
        return (linear_flops(rows, d_model, 4 * d_model)
                + 8.0 * rows * d_model * R + 2.0 * rows * n_heads * R)

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        if not causal:
            return cls.flops(batch_size, seq_len, d_model, n_heads, params)
        rows, R = batch_size * seq_len, params["nb_features"]
        C = min(params["chunk"], seq_len)
        M = -(-seq_len // C)
        padded = batch_size * M * C  # rows after padding to whole chunks
        return (linear_flops(rows, d_model, 4 * d_model) + 4.0 * rows * d_model * R
                + 2.0 * padded * C * (n_heads * R + d_model)  # φ(q)φ(k)ᵀ and A·V in chunks
                + 4.0 * padded * d_model * R  # chunk states and their read-out
                + 2.0 * padded * n_heads * R  # read-out of the key sums
                + 2.0 * batch_size * M * M * (d_model * R + n_heads * R))  # (M, M) passing

    @torch.no_grad()
    def redraw(self) -> None:
        """Draw a new projection matrix (on the module's device)."""
        self.projection.copy_(orthogonal_features(*self.projection.shape,
                                                  device=self.projection.device))

    def forward(self, x, mask=None):
        interval = self.params["redraw_interval"]
        if self.training and interval:  # performer-pytorch's ProjectionUpdater schedule
            if self.calls_since_redraw >= interval:
                self.redraw()
                self.calls_since_redraw = 0
            else:
                self.calls_since_redraw += 1
        acc = torch.promote_types(x.dtype, torch.float32)  # exp and the sums: >= float32
        q, k, v = (t.to(acc) for t in self.project(x))  # 3 × (B, H, N, Dh)
        proj = self.projection.to(acc)
        keep = None if mask is None else mask[:, None, :].to(torch.bool)  # (B, 1, N)
        qf = query_features(q, proj)  # (B, H, N, R)
        expo, key_max, shift = key_exponents(k, proj, keep)  # key_max: (B, H, N)
        if self.causal:
            y = causal_favor_attention(qf, expo, key_max, v, keep, self.params["chunk"])
        else:
            if keep is not None:
                v = v * keep[..., None]
            kf = torch.exp(expo - shift[..., None]) + EPS  # (B, H, N, R)
            if keep is not None:
                kf = kf * keep[..., None]
            y = favor_attention(qf, kf, v)
        return self.out(merge_heads(y.to(x.dtype)))  # (B, N, D)

    # --- incremental decoding: the causal path as a recurrence over the running key max M ----
    # State per (batch, head): M, S = Σ_j exp(e_j − M) v_jᵀ (R, Dh), z = Σ_j exp(e_j − M) (R),
    # and Σ_j v_j (Dh) for the eps part; a new key with a larger max rescales S, z by
    # exp(M − M') <= 1, so nothing overflows at any input scale (as the chunked forward).

    def decode_check(self) -> None:
        if not self.causal:
            Decoder.decode_check(self)

    def empty_state(self, batch, capacity, like):
        acc = torch.promote_types(like.dtype, torch.float32)
        H, R, Dh = self.n_heads, self.params["nb_features"], self.head_dim
        s = like.new_zeros(batch, H, R, Dh, dtype=acc)
        low = like.new_full((batch, H), torch.finfo(acc).min, dtype=acc)  # no key yet
        return DecodeState({"m": low, "s": s, "z": s.new_zeros(batch, H, R),
                            "vsum": s.new_zeros(batch, H, Dh)}, pos=0)

    def _add(self, state: DecodeState, k: torch.Tensor, v: torch.Tensor) -> DecodeState:
        """The state with C more keys/values (B, H, C, Dh) summed in (new tensors)."""
        acc = state.tensors["s"].dtype
        k, v = k.to(acc), v.to(acc)
        expo, key_max, _ = key_exponents(k, self.projection.to(acc), None)  # (B, H, C, R)
        m_old = state.tensors["m"]
        m = torch.maximum(m_old, key_max.amax(-1))  # (B, H): the new running max
        kw = torch.exp(expo - key_max[..., None]) * torch.exp(key_max - m[..., None])[..., None]
        scale = torch.exp(m_old - m)  # (B, H), <= 1
        s = state.tensors["s"] * scale[..., None, None] + kw.transpose(-2, -1) @ v
        z = state.tensors["z"] * scale[..., None] + kw.sum(-2)
        return DecodeState({"m": m, "s": s, "z": z, "vsum": state.tensors["vsum"] + v.sum(-2)},
                           pos=state.pos + k.shape[2])

    def prefill(self, x, capacity=None):
        self.decode_check()
        with CaptureQKV(self.qkv) as cap:
            y = self(x)
        _, k, v = (heads(t, self.n_heads) for t in cap.out.chunk(3, dim=-1))  # (B, H, N, Dh)
        return y, self._add(self.empty_state(x.shape[0], 0, x), k, v)

    def fill(self, x, state):
        _, k, v = self.project(x)  # 3 × (B, H, C, Dh)
        return standin_output(self, v), self._add(state, k, v)

    def step(self, x_t, state):
        q, k, v = self.project(x_t)  # 3 × (B, H, 1, Dh)
        state = self._add(state, k, v)
        acc = state.tensors["s"].dtype
        qf = query_features(q.to(acc), self.projection.to(acc))  # (B, H, 1, R)
        tail = EPS * qf.sum(-1)  # (B, H, 1)
        num = qf @ state.tensors["s"] + tail[..., None] * state.tensors["vsum"][:, :, None]
        den = (qf @ state.tensors["z"][..., None])[..., 0] + tail * state.pos  # (B, H, 1)
        y = num / den.clamp_min(torch.finfo(den.dtype).tiny)[..., None]  # (B, H, 1, Dh)
        return self.out(merge_heads(y.to(x_t.dtype))), state

    @classmethod
    def state_bytes(cls, depth, d_model, n_heads, params, elem_bytes):
        R, Dh = params["nb_features"], d_model // n_heads
        acc = max(elem_bytes, 4)  # features and sums in float32 for half inputs
        return n_heads * (1 + R * Dh + R + Dh) * acc


__all__ = ["Performer", "orthogonal_features"]
