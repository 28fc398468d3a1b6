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
- Half precision: Σ_j φ(k_j) grows with N and φ(q)·Σ φ(k) exceeds float16's 65504 near
  N = 4096 (Dh = 16), which made the denominator inf and the output silently 0. In float16 and
  bfloat16 the state Σ φ(k)[v 1]ᵀ, its products with φ(q) and the denominator are therefore
  computed in float32; the causal within-chunk C × C form (at most C terms) stays in the
  input dtype; the output is cast back.
- Simplified: no dropout; the feature map is the paper's fixed elu + 1 (no learned maps).

Shape legend: B batch, N length, D d_model, H heads, Dh head dim, C chunk, M = ceil(N / C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lsbench.measure.flops import linear_flops
from lsbench.variants._decode import CaptureQKV, Decoder, DecodeState, heads, standin_output
from lsbench.variants.transformer import QKVAttention, merge_heads

EPS = 1e-6
HALF = (torch.float16, torch.bfloat16)


def feature_map(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1


def accum_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs: sums over N positions outgrow float16's 65504."""
    return torch.float32 if dtype in HALF else dtype


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal: q, k already feature-mapped, (B, H, N, Dh) each -> (B, H, N, Dh).

    Every product here sums over N (state) or over Dh entries of an N-sized sum (numerator,
    denominator), so all of it runs in `accum_dtype`; it is O(N·D·Dh), 1/(2H) of the projections.
    """
    acc = accum_dtype(q.dtype)
    q, k, v = (t.to(acc) for t in (q, k, v))  # no copy unless half precision
    kv = k.transpose(-2, -1) @ v  # (B, H, Dh, Dh)
    z = k.sum(dim=-2)  # (B, H, Dh)
    den = (q @ z.unsqueeze(-1)) + EPS  # (B, H, N, 1)
    return (q @ kv) / den


def exclusive_cumsum(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of the entries before each one along `dim` (shift, not cumsum - t: no cancellation)."""
    total = t.cumsum(dim).narrow(dim, 0, t.shape[dim] - 1)
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [1, 0]  # one zero slice in front of `dim`
    return F.pad(total, pad)


def causal_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            chunk: int) -> torch.Tensor:
    """Causal prefix sums in chunks: q, k feature-mapped, (B, H, N, Dh) -> (B, H, N, Dh).

    The state carried across chunks (Σ φ(k) vᵀ, Σ φ(k)) grows with N and is kept, with its
    products, in `accum_dtype`; the within-chunk C × C form sums at most C terms and stays in
    the input dtype (it is the costly part: 4·N·C·D FLOPs).
    """
    B, H, N, Dh = q.shape
    C = min(chunk, N)
    M = -(-N // C)
    pad = M * C - N
    if pad:  # zero φ(k), v at the tail add nothing to any sum; the tail outputs are cropped
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    q, k, v = (t.reshape(B, H, M, C, Dh) for t in (q, k, v))  # (B, H, M, C, Dh)
    acc = accum_dtype(q.dtype)
    qa, ka, va = (t.to(acc) for t in (q, k, v))  # no copy unless half precision
    # state from all earlier chunks: exclusive cumulative sum of per-chunk totals
    kv = exclusive_cumsum(ka.transpose(-2, -1) @ va, dim=2)  # (B, H, M, Dh, Dh)
    z = exclusive_cumsum(ka.sum(dim=-2), dim=2)  # (B, H, M, Dh)
    # within the chunk: the masked quadratic form
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    a = (q @ k.transpose(-2, -1)).masked_fill(~tril, 0.0)  # (B, H, M, C, C)
    num = (a @ v).to(acc) + qa @ kv  # (B, H, M, C, Dh)
    den = a.sum(dim=-1, keepdim=True, dtype=acc) + qa @ z.unsqueeze(-1) + EPS  # (B, H, M, C, 1)
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
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        base = 8.0 * batch_size * seq_len * d_model
        if not causal:
            return base
        chunk = min(params.get("chunk", cls.defaults["chunk"]), seq_len)
        head_dim = d_model // n_heads
        # chunk scores (B, H, M, C, C) and carried states (B, H, M, Dh, Dh)
        return base + batch_size * n_heads * seq_len * (chunk + head_dim**2 / chunk)

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        """Projections + the prefix-sum form, causal or not (the same count).

        The normaliser is the state's extra column: S = φ(K)ᵀ[V 1] is (Dh × (Dh + 1)) per head,
        so building S and reading it (φ(Q) S) cost 2·N·D·(Dh + 1) each. Causal prefix sums do
        the same work position by position (S_i = S_{i-1} + φ(k_i)[v_i 1]ᵀ).
        """
        head_dim = d_model // n_heads
        rows = batch_size * seq_len
        proj = linear_flops(rows, d_model, 4 * d_model)  # qkv and out
        return proj + 2 * linear_flops(rows, d_model, head_dim + 1)  # build S, read S

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        """Causal: chunk states over the padded length, plus each chunk's C × C form."""
        if not causal:
            return cls.flops(batch_size, seq_len, d_model, n_heads, params, causal)
        head_dim = d_model // n_heads
        C = min(params.get("chunk", cls.defaults["chunk"]), seq_len)
        padded = batch_size * -(-seq_len // C) * C  # rows the chunked kernel multiplies
        proj = linear_flops(batch_size * seq_len, d_model, 4 * d_model)  # before the padding
        states = 2 * linear_flops(padded, d_model, head_dim + 1)  # per-chunk S, φ(Q)·S
        scores = linear_flops(padded, d_model, C)  # φ(Q)φ(K)ᵀ, C × C per chunk and head
        within = linear_flops(padded, C, n_heads * (head_dim + 1))  # A·[V 1]
        return proj + states + scores + within

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
        return self.out(merge_heads(y.to(x.dtype)))  # (B, N, D)

    # --- incremental decoding: the paper's RNN form (§3.4), S_i = S_{i-1} + φ(k_i)vᵀ_i ---------

    def decode_check(self) -> None:
        if not self.causal:
            Decoder.decode_check(self)

    def prefill(self, x, capacity=None):
        """The causal forward, then the state after its last token: S = Σ φ(k)vᵀ, z = Σ φ(k)
        in `accum_dtype` (one O(N·D·Dh) pass over the captured keys and values)."""
        self.decode_check()
        with CaptureQKV(self.qkv) as cap:
            y = self(x)
        _, k, v = (heads(t, self.n_heads) for t in cap.out.chunk(3, dim=-1))  # (B, H, N, Dh)
        state = self._add(self.empty_state(x.shape[0], 0, x), k, v)
        return y, state

    def empty_state(self, batch, capacity, like):
        acc = accum_dtype(like.dtype)
        s = like.new_zeros(batch, self.n_heads, self.head_dim, self.head_dim, dtype=acc)
        return DecodeState({"s": s, "z": s.new_zeros(batch, self.n_heads, self.head_dim)}, 0)

    def _add(self, state, k, v):
        """The state with keys/values (B, H, C, Dh) of C more tokens summed in (new tensors)."""
        acc = state.tensors["s"].dtype
        k, v = feature_map(k).to(acc), v.to(acc)
        s = state.tensors["s"] + k.transpose(-2, -1) @ v  # (B, H, Dh, Dh)
        z = state.tensors["z"] + k.sum(dim=-2)  # (B, H, Dh)
        return DecodeState({"s": s, "z": z}, pos=state.pos + k.shape[2])

    def fill(self, x, state):
        _, k, v = self.project(x)  # 3 × (B, H, C, Dh)
        return standin_output(self, v), self._add(state, k, v)

    def step(self, x_t, state):
        q, k, v = self.project(x_t)  # 3 × (B, H, 1, Dh)
        acc = accum_dtype(x_t.dtype)
        q, k, v = feature_map(q).to(acc), feature_map(k).to(acc), v.to(acc)
        s = state.tensors["s"] + k.transpose(-2, -1) @ v  # (B, H, Dh, Dh)
        z = state.tensors["z"] + k[:, :, 0]  # (B, H, Dh)
        y = (q @ s) / (q @ z.unsqueeze(-1) + EPS)  # (B, H, 1, Dh)
        out = self.out(merge_heads(y.to(x_t.dtype)))
        return out, DecodeState({"s": s, "z": z}, pos=state.pos + 1)

    @classmethod
    def state_bytes(cls, depth, d_model, n_heads, params, elem_bytes):
        head_dim = d_model // n_heads
        acc_bytes = max(elem_bytes, 4)  # the state is kept in float32 for half inputs
        return n_heads * head_dim * (head_dim + 1) * acc_bytes  # S and z, at any depth
