"""Mamba-2: a selective state-space mixer computed by the chunked SSD algorithm, pure PyTorch.

Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality", https://arxiv.org/abs/2405.21060 (official code:
state-spaces/mamba, the `Mamba2` class of `mamba_ssm/modules/mamba2.py` for the layer,
`ssd_minimal.py` for the chunked algorithm).

Layout and defaults are the official `Mamba2` class's (not `Mamba2Simple`'s, whose defaults are
d_state 64 and headdim 128): d_state 128, d_conv 4, expand 2, headdim 64, ngroups 1,
chunk_size 256, gated RMSNorm with norm_before_gate=False, no in/out projection bias, conv bias.
The number of SSD heads is expand·d_model / headdim (d_model 256: 8 heads of 64 channels).
**The suite's `n_heads` is ignored**: Mamba-2 fixes the channels per head, not the head count;
pass `headdim` to change it (expand·d_model must be a multiple of headdim).

Layer: in_proj(x) -> z, xBC, dt; xBC <- silu(causal depthwise conv(xBC), kernel `d_conv`);
x, B, C = split(xBC); dt <- softplus(dt + dt_bias); per head h (P = headdim channels) the
scalar-decay SSM

    h_t = exp(dt_t·A) h_{t-1} + dt_t · B_t x_tᵀ,   y_t = C_tᵀ h_t + D·x_t   (h_t: d_state × P),

then y <- RMSNorm(y · silu(z)) (norm after the gate), out_proj(y). A = -exp(A_log) and dt, D
are initialised as the official code (A ~ U[1, 16], dt log-uniform in [1e-3, 0.1]).

SSD, chunked (paper §6, `ssd_minimal_discrete`): the sequence is cut into chunks of `chunk`
tokens; inside a chunk the SSM is a masked quadratic form (C Bᵀ ∘ decay) X; each chunk's final
state is a sum over its tokens; states pass between chunks through an (M, M) decay matrix built
by the stable segment sum (as `state_passing_ref`: no loop over chunks, O(M²) small products);
the outputs add C·(state entering the chunk). Decays are exponentials of differences of
cumulative sums of dt·A <= 0, so they never overflow. The SSD runs in float32 (or float64).

- Causal by construction: a recurrence only looks back. `causal=False` builds the same causal
  mixer (bidirectional variants such as Hydra are other methods).
- Padding: a masked token is removed from the recurrence (dt = 0: no decay, no input) and is a
  zero in the convolution window, so right padding never changes real tokens.
- Simplified: no initial states, no dt clamping range (the official default dt_limit is
  (0, inf), i.e. none), ngroups = 1, no fused kernels.

Shape legend: B batch, N length, D d_model, E = expand·D inner width, H = E / headdim heads,
P = headdim channels per head, S d_state, C chunk, M = ceil(N / C) chunks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lsbench.errors import LsbenchError
from lsbench.measure.flops import linear_flops
from lsbench.variants._decode import CaptureQKV, DecodeState
from lsbench.variants.base import Variant


def segsum(x: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: (..., T) -> (..., T, T), [i, j] = x[j+1] + … + x[i], -inf for j > i.

    As `ssd_minimal.segsum`: masked cumulative sums rather than differences of one cumulative
    sum, which lose precision once that sum is large.
    """
    T = x.shape[-1]
    rep = x[..., :, None].expand(*x.shape, T)  # (..., T, T): [i, j] = x[i]
    below = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    sums = rep.masked_fill(~below, 0.0).cumsum(-2)  # [i, j] = Σ_{j < k <= i} x[k]
    keep = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return sums.masked_fill(~keep, float("-inf"))


def ssd_chunked(X: torch.Tensor, dA: torch.Tensor, Bm: torch.Tensor, Cm: torch.Tensor,
                chunk: int) -> torch.Tensor:
    """y_t = C_tᵀ h_t, h_t = exp(dA_t) h_{t-1} + B_t X_tᵀ, computed by chunks.

    X: (B, N, H, P) (already × dt); dA: (B, N, H) log decays (dt·A <= 0); Bm, Cm: (B, N, S)
    shared by the heads. Returns (B, N, H, P).
    """
    Bsz, N, H, P = X.shape
    S = Bm.shape[-1]
    C = min(chunk, N)
    M = -(-N // C)
    pad = M * C - N
    if pad:  # zero inputs and zero log-decay: the padded tail changes nothing before it
        X, dA, Bm, Cm = (F.pad(t, (0,) * (2 * (t.dim() - 2)) + (0, pad)) for t in (X, dA, Bm, Cm))
    Xc = X.view(Bsz, M, C, H, P).permute(0, 3, 1, 2, 4)  # (B, H, M, C, P)
    A = dA.view(Bsz, M, C, H).permute(0, 3, 1, 2)  # (B, H, M, C)
    Bc, Cc = Bm.view(Bsz, 1, M, C, S), Cm.view(Bsz, 1, M, C, S)  # (B, 1, M, C, S)
    A_cs = A.cumsum(-1)  # (B, H, M, C): log decay from the chunk start to each token
    # 1. inside each chunk: (C Bᵀ ∘ L) X with L[i, j] = exp(A_cs[i] - A_cs[j]) for j <= i
    tril = torch.ones(C, C, dtype=torch.bool, device=X.device).tril()
    L = torch.exp((A_cs[..., :, None] - A_cs[..., None, :]).masked_fill(~tril, float("-inf")))
    y = ((Cc @ Bc.transpose(-2, -1)) * L) @ Xc  # (B, H, M, C, P)
    # 2. each chunk's final state: Σ_j exp(A_cs[-1] - A_cs[j]) B_j X_jᵀ
    decay_to_end = torch.exp(A_cs[..., -1:] - A_cs)  # (B, H, M, C)
    states = Bc.transpose(-2, -1) @ (Xc * decay_to_end[..., None])  # (B, H, M, S, P)
    # 3. pass states between chunks: end-of-chunk states, then shift by one chunk
    E = torch.exp(segsum(A_cs[..., -1]))  # (B, H, M, M)
    ends = (E @ states.reshape(Bsz, H, M, S * P)).view(Bsz, H, M, S, P)
    entering = F.pad(ends, (0, 0, 0, 0, 1, 0))[:, :, :M]  # (B, H, M, S, P): state before chunk
    # 4. outputs from the entering state, decayed to each token
    y = y + (Cc @ entering) * torch.exp(A_cs)[..., None]  # (B, H, M, C, P)
    return y.permute(0, 2, 3, 1, 4).reshape(Bsz, M * C, H, P)[:, :N]  # (B, N, H, P)


class Mamba2(Variant):
    name = "mamba2"
    method = "Mamba-2 selective SSM (scalar decay per head), chunked SSD; causal by construction"
    paper = "Dao & Gu 2024, Mamba-2 / SSD, https://arxiv.org/abs/2405.21060"
    time_complexity = "O(N·E·(S + chunk))"
    memory_complexity = "O(N·H·chunk + N·E·S/chunk)"
    supports_causal = True
    # as mamba_ssm's `Mamba2` class: d_state 128, expand 2, d_conv 4, headdim 64, chunk_size 256
    defaults = {"d_state": 128, "expand": 2, "d_conv": 4, "headdim": 64, "chunk": 256}

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params: Any):
        super().__init__(d_model, n_heads, causal, **params)
        S, E = self.params["d_state"], self.params["expand"] * d_model
        H = self.ssd_heads(d_model, self.params)  # not the suite's n_heads (module docstring)
        self.d_inner, self.d_state, self.ssd_n_heads = E, S, H
        self.head_dim = self.params["headdim"]
        conv_dim = E + 2 * S
        self.in_proj = nn.Linear(d_model, 2 * E + 2 * S + H, bias=False)  # [z, x, B, C, dt]
        k = self.params["d_conv"]
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, k, groups=conv_dim, padding=k - 1)
        # dt log-uniform in [1e-3, 1e-1], floor 1e-4; dt_bias = softplus⁻¹(dt) (official init)
        dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        dt = dt.clamp_min(1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm_weight = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d_model, bias=False)

    @staticmethod
    def ssd_heads(d_model: int, params: dict[str, Any]) -> int:
        """SSD heads H = expand·d_model / headdim, as the official `Mamba2` (nheads)."""
        return params["expand"] * d_model // params["headdim"]

    @classmethod
    def notes(cls, seq_len: int, params: dict | None = None, d_model: int | None = None,
              n_heads: int | None = None) -> str:
        """A note for the result row: the head layout that ran, when it is not the suite's."""
        p = {**cls.defaults, **(params or {})}
        if d_model is None:
            return f"heads = expand·d_model / headdim ({p['headdim']}); n_heads is ignored"
        H = cls.ssd_heads(d_model, p)
        if H == n_heads:
            return ""
        return (f"{H} SSD heads of headdim {p['headdim']} (expand·d_model / headdim, as the "
                f"official Mamba2); n_heads={n_heads} is ignored")

    @classmethod
    def check_params(cls, d_model, n_heads, params):
        super().check_params(d_model, n_heads, params)
        cls.require_positive(params, "d_state", "expand", "d_conv", "headdim", "chunk")
        E, P = params["expand"] * d_model, params["headdim"]
        if E % P:
            fits = [p for p in (128, 64, 32, 16, 8) if E % p == 0]
            raise LsbenchError(
                f"variant 'mamba2': expand·d_model = {E} is not a multiple of headdim={P} "
                f"(heads = expand·d_model / headdim, as the official Mamba2); pass headdim="
                f"{fits[0] if fits else 1} or another divisor of {E}."
            )

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        E, S, C = params["expand"] * d_model, params["d_state"], params["chunk"]
        H = cls.ssd_heads(d_model, params)
        rows = batch_size * seq_len
        # projections and conv activations, chunk score matrices (L and C·Bᵀ∘L), chunk states
        return (6.0 * rows * (E + S) + 3.0 * rows * H * min(C, seq_len)
                + 2.0 * rows * E * S / min(C, seq_len))

    @classmethod
    def _layer(cls, rows, d_model, params):
        E, S, k = params["expand"] * d_model, params["d_state"], params["d_conv"]
        H = cls.ssd_heads(d_model, params)
        return (linear_flops(rows, d_model, 2 * E + 2 * S + H)  # in_proj
                + 2.0 * rows * (E + 2 * S) * k  # depthwise conv
                + linear_flops(rows, E, d_model))  # out_proj

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        # The SSM's own work, as the recurrence does it: per token and head the state update
        # B xᵀ and the read-out Cᵀh, S·P multiply-adds each.
        rows = batch_size * seq_len
        E, S = params["expand"] * d_model, params["d_state"]
        return cls._layer(rows, d_model, params) + 4.0 * rows * E * S

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        rows = batch_size * seq_len
        E, S = params["expand"] * d_model, params["d_state"]
        C = min(params["chunk"], seq_len)
        M = -(-seq_len // C)
        padded = batch_size * M * C
        return (cls._layer(rows, d_model, params)
                + 2.0 * padded * C * S  # C·Bᵀ per chunk (shared by heads)
                + 2.0 * padded * C * E  # (C·Bᵀ ∘ L) · X, upper triangle included
                + 2.0 * 2 * padded * S * E  # chunk states and the read-out of entering states
                + 2.0 * batch_size * M * M * S * E)  # (M, M) state passing

    def forward(self, x, mask=None):
        Bsz, N, _ = x.shape
        H, E, S = self.ssd_n_heads, self.d_inner, self.d_state
        z, xBC, dt = self.in_proj(x).split([E, E + 2 * S, H], dim=-1)
        if mask is not None:
            xBC = xBC * mask[..., None].to(xBC.dtype)  # a zero in every conv window
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :N].transpose(1, 2))  # (B, N, E+2S)
        xs, Bm, Cm = xBC.split([E, S, S], dim=-1)
        acc = torch.promote_types(x.dtype, torch.float32)  # half precision: the SSD in float32
        dt = F.softplus(dt.to(acc) + self.dt_bias.to(acc))  # (B, N, H)
        if mask is not None:
            dt = dt * mask[..., None].to(dt.dtype)  # no decay, no input at masked tokens
        A = -torch.exp(self.A_log.to(acc))  # (H,)
        X = xs.to(acc).view(Bsz, N, H, E // H)  # (B, N, H, P)
        y = ssd_chunked(X * dt[..., None], dt * A, Bm.to(acc), Cm.to(acc), self.params["chunk"])
        y = y + self.D.to(acc)[:, None] * X  # (B, N, H, P)
        y = y.reshape(Bsz, N, E) * F.silu(z.to(acc))  # gate, then RMSNorm (norm_before_gate=False)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * self.norm_weight.to(acc)
        return self.out_proj(y.to(x.dtype))  # (B, N, D)

    # --- incremental decoding, as mamba_ssm's `Mamba2.step`: a conv state (the last d_conv - 1
    # inputs of the depthwise conv) and the SSM state h (B, H, S, P); both fixed in size --------

    def decode_check(self) -> None:
        pass  # causal by construction, with or without causal=True

    def empty_state(self, batch, capacity, like):
        acc = torch.promote_types(like.dtype, torch.float32)
        H, S, P = self.ssd_n_heads, self.d_state, self.head_dim
        conv = like.new_zeros(batch, self.d_inner + 2 * S, self.params["d_conv"] - 1)
        h = like.new_zeros(batch, H, S, P, dtype=acc)
        return DecodeState({"conv": conv, "h": h}, pos=0)

    def _absorb(self, zxbcdt: torch.Tensor, state: DecodeState):
        """Run C tokens' in_proj outputs (B, C, ·) through the conv and the recurrence from
        `state`: -> (X (B, C, H, P), z (B, C, E), C_t (B, C, S), the state C tokens on)."""
        Bsz, C, _ = zxbcdt.shape
        H, E, S = self.ssd_n_heads, self.d_inner, self.d_state
        z, xBC, dt = zxbcdt.split([E, E + 2 * S, H], dim=-1)
        window = torch.cat([state.tensors["conv"], xBC.transpose(1, 2)], dim=-1)  # (B, E+2S, k-1+C)
        conv = F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=E + 2 * S)
        xs, Bm, Cm = F.silu(conv.transpose(1, 2)).split([E, S, S], dim=-1)  # (B, C, ·)
        acc = state.tensors["h"].dtype
        dt = F.softplus(dt.to(acc) + self.dt_bias.to(acc))  # (B, C, H)
        X = xs.to(acc).view(Bsz, C, H, E // H)  # (B, C, H, P)
        cs = (dt * -torch.exp(self.A_log.to(acc))).cumsum(1)  # (B, C, H) log decay, <= 0
        w = torch.exp(cs[:, -1:] - cs) * dt  # (B, C, H): decay to the last token, times dt
        h = (torch.exp(cs[:, -1])[..., None, None] * state.tensors["h"]
             + torch.einsum("bcs,bch,bchp->bhsp", Bm.to(acc), w, X))  # (B, H, S, P)
        k = self.params["d_conv"]
        new = DecodeState({"conv": window[..., window.shape[-1] - (k - 1):], "h": h},
                          pos=state.pos + C)
        return X, z, Cm.to(acc), new

    def _gate_out(self, y: torch.Tensor, z: torch.Tensor, dtype) -> torch.Tensor:
        """y (B, C, E) -> gated RMSNorm (norm after the gate), out_proj, as forward."""
        y = y * F.silu(z.to(y.dtype))
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * self.norm_weight.to(y.dtype)
        return self.out_proj(y.to(dtype))

    def prefill(self, x, capacity=None):
        with CaptureQKV(self.in_proj) as cap:
            y = self(x)
        _, _, _, state = self._absorb(cap.out, self.empty_state(x.shape[0], 0, x))
        return y, state

    def fill(self, x, state):
        X, z, _, state = self._absorb(self.in_proj(x), state)
        y = (self.D.to(X.dtype)[:, None] * X).flatten(2)  # stand-in: the skip term alone
        return self._gate_out(y, z, x.dtype), state

    def step(self, x_t, state):
        X, z, Cm, state = self._absorb(self.in_proj(x_t), state)  # X: (B, 1, H, P)
        y = torch.einsum("bs,bhsp->bhp", Cm[:, 0], state.tensors["h"])[:, None]  # (B, 1, H, P)
        y = (y + self.D.to(X.dtype)[:, None] * X).flatten(2)  # (B, 1, E)
        return self._gate_out(y, z, x_t.dtype), state

    @classmethod
    def state_bytes(cls, depth, d_model, n_heads, params, elem_bytes):
        E, S, k = params["expand"] * d_model, params["d_state"], params["d_conv"]
        H = cls.ssd_heads(d_model, params)
        acc = max(elem_bytes, 4)  # the SSM state is kept in float32 for half inputs
        return (E + 2 * S) * (k - 1) * elem_bytes + H * S * (E // H) * acc

    @classmethod
    def decode_mem_elems(cls, batch_size, seq_len, d_model, n_heads, params):
        E, S = params["expand"] * d_model, params["d_state"]
        return 2.0 * batch_size * E * S  # the state; `fill` works chunk by chunk
