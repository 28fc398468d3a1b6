"""Incremental decoding: `prefill(x) -> (y, state)` and `step(x_t, state) -> (y_t, state)`.

What one generated token costs when N tokens are already in context depends on what the context
is kept as: a KV cache that grows with N (`transformer`, `sdpa`), a window cache of w + 1 keys
(`local`, causal `longformer`), or a recurrent state of fixed size (`linear`, `performer`,
`mamba2`). A variant with an incremental form mixes in one of the classes below; prefill over N
tokens then one `step` per token reproduces the causal full forward (tests/test_decode.py).

- A state is tensors plus the number of tokens it holds (`pos`, a Python int: host-side
  bookkeeping, so a step needs no host sync and slices the cache to the actual depth, never to
  its capacity — timing attention over allocated capacity is the known pitfall).
- `step` writes the new token's keys/values in place and returns a state with `pos + 1`; the
  input state object keeps its `pos`, so calling `step` again on it re-decodes the same token at
  the same depth (what the timer does: per-token latency at a fixed depth).
- KV caches are preallocated at prefill to `capacity` tokens (default: the prefill length), so
  decoding never reallocates.

Shape legend: B batch, N prefill length, D d_model, H heads, Dh head dim, P cache capacity,
w one-sided window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from lsbench.errors import LsbenchError


class DecodeUnsupported(LsbenchError):
    """The variant (or this configuration of it) has no incremental form; says why."""


@dataclass
class DecodeState:
    """The context one layer keeps between tokens: named tensors and the tokens they hold."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    pos: int = 0  # tokens in context

    @property
    def nbytes(self) -> int:
        """Bytes of the state's tensors (measured from the tensors, not from a formula)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def advanced(self) -> DecodeState:
        return DecodeState(self.tensors, self.pos + 1)  # not dataclasses.replace: ~5 µs a step


class CaptureQKV:
    """Collects the fused q/k/v projection's output while the module's own forward runs, so a
    prefill is exactly the causal forward plus the copy into the cache (no second projection)."""

    def __init__(self, linear: torch.nn.Module):
        self.linear, self.out = linear, None

    def __enter__(self) -> CaptureQKV:
        self.handle = self.linear.register_forward_hook(self._hook)
        return self

    def _hook(self, module, args, output) -> None:
        self.out = output

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, N, D = t.shape
    return t.view(B, N, n_heads, D // n_heads).transpose(1, 2)  # (B, H, N, Dh)


class Decoder:
    """Mixin interface; the default says the variant has no incremental form.

    A decoding variant implements `prefill` and `step` (exact), and may implement
    `empty_state` + `fill`: append a chunk of tokens to a state without computing their
    attention outputs. Decode rows build their depth-N state that way, chunk by chunk (memory
    O(chunk), no O(N²) prefill at 128K tokens): a step's cost does not depend on the values in
    the state (no data-dependent control flow), and a state is the same whatever attention
    computed for the earlier tokens in its own layer (tests/test_decode.py checks one layer's).
    """

    decode_unsupported = ""  # why a causal variant has no prefill/step here ("" = generic)

    def decode_check(self) -> None:
        """Raise DecodeUnsupported with the reason when this module cannot decode."""
        if not getattr(self, "causal", False):
            raise DecodeUnsupported(f"variant {self.name!r}: decoding needs causal=True.")
        why = self.decode_unsupported or (
            "no incremental form (prefill/step, lsbench.variants._decode) is implemented for it")
        raise DecodeUnsupported(f"variant {self.name!r} cannot decode: {why}.")

    def prefill(self, x: torch.Tensor, capacity: int | None = None):
        """Causal forward over x (B, N, D) -> (y, state holding N tokens); `capacity`
        preallocates a KV cache for that many tokens (default N)."""
        self.decode_check()

    def step(self, x_t: torch.Tensor, state: DecodeState):
        """One token x_t (B, 1, D) at depth state.pos -> (y_t, the state one token deeper)."""
        self.decode_check()

    def empty_state(self, batch: int, capacity: int, like: torch.Tensor) -> DecodeState | None:
        """A state holding no tokens (on `like`'s device and dtype), or None when the variant
        can only build its state by `prefill`."""
        return None

    def fill(self, x: torch.Tensor, state: DecodeState):
        """Append x (B, C, D) to the state without its attention outputs -> (a stand-in output
        (B, C, D): each token attending only to itself, finite and of the right scale for the
        next layer; the state C tokens deeper). For states that are timed, never compared."""
        raise NotImplementedError

    @classmethod
    def decode_mem_elems(cls, batch_size: int, seq_len: int, d_model: int, n_heads: int,
                         params: dict) -> float:
        """Predicted elements a decode row keeps alive (its state, and the untimed prefill that
        builds it): by default the causal forward's `mem_elems`. Only used to skip."""
        from lsbench.variants.base import count

        return count(cls, "mem_elems", batch_size, seq_len, d_model, n_heads, params, True)

    @classmethod
    def state_bytes(cls, depth: int, d_model: int, n_heads: int, params: dict,
                    elem_bytes: int) -> float | None:
        """Analytic bytes of one sequence's state at `depth` tokens (per layer), or None."""
        return None


def standin_output(module, v: torch.Tensor) -> torch.Tensor:
    """out(v) for v (B, H, C, Dh): the output if each token attended only to itself."""
    B, H, C, Dh = v.shape
    return module.out(v.transpose(1, 2).reshape(B, C, H * Dh))  # (B, C, D)


class KVCacheDecoder(Decoder):
    """Full causal attention over a preallocated KV cache (transformer, sdpa).

    `decode_kernel`: "sdpa" attends with `scaled_dot_product_attention`, "math" with the
    explicit softmax(q·Kᵀ/√Dh)·V the materialising baseline uses.
    """

    decode_kernel = "sdpa"

    def decode_check(self) -> None:
        if not self.causal:
            super().decode_check()

    def prefill(self, x: torch.Tensor, capacity: int | None = None):
        self.decode_check()
        B, N, D = x.shape
        with CaptureQKV(self.qkv) as cap:
            y = self(x)
        _, k, v = (heads(t, self.n_heads) for t in cap.out.chunk(3, dim=-1))  # (B, H, N, Dh)
        state = self.empty_state(B, max(N, capacity or N), x)
        self._write(state, k, v)
        return y, replace(state, pos=N)

    def empty_state(self, batch, capacity, like):
        cache = like.new_zeros(2, batch, self.n_heads, capacity, self.head_dim)  # K and V
        return DecodeState({"kv": cache}, pos=0)

    def _write(self, state: DecodeState, k: torch.Tensor, v: torch.Tensor) -> None:
        kv, pos, n = state.tensors["kv"], state.pos, k.shape[2]
        if pos + n > kv.shape[3]:
            raise LsbenchError(f"KV cache full: capacity {kv.shape[3]} tokens, {pos + n} "
                               f"needed; prefill with a larger capacity.")
        kv[0, :, :, pos:pos + n] = k
        kv[1, :, :, pos:pos + n] = v

    def fill(self, x, state):
        _, k, v = self.project(x)  # 3 × (B, H, C, Dh)
        self._write(state, k, v)
        return standin_output(self, v), replace(state, pos=state.pos + x.shape[1])

    def step(self, x_t: torch.Tensor, state: DecodeState):
        q, k, v = self.project(x_t)  # 3 × (B, H, 1, Dh)
        self._write(state, k, v)
        kv, pos = state.tensors["kv"], state.pos
        keys, values = kv[0, :, :, :pos + 1], kv[1, :, :, :pos + 1]  # (B, H, pos+1, Dh)
        y = self._attend(q, keys, values)  # (B, H, 1, Dh)
        return self.out(y.transpose(1, 2).reshape(x_t.shape)), state.advanced()

    def _attend(self, q, keys, values):
        if self.decode_kernel == "sdpa":
            return F.scaled_dot_product_attention(q, keys, values)
        scores = q @ keys.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, 1, pos+1)
        return F.softmax(scores, dim=-1) @ values

    @classmethod
    def state_bytes(cls, depth, d_model, n_heads, params, elem_bytes):
        return 2.0 * depth * d_model * elem_bytes  # K and V, D per token each

    @classmethod
    def decode_mem_elems(cls, batch_size, seq_len, d_model, n_heads, params):
        return 2.0 * batch_size * seq_len * d_model  # the cache; `fill` works chunk by chunk


class WindowCacheDecoder(KVCacheDecoder):
    """Causal sliding window i-w … i over a ring buffer of w + 1 keys (local, longformer).

    Token p lives in slot p mod (w + 1); softmax attention is invariant to the order of its keys
    and these variants add no position information inside attention, so the ring needs no
    reordering. Memory stays w + 1 tokens at any depth.
    """

    # prefill is KVCacheDecoder's: the ring ignores `capacity`, and `_write` keeps the last w+1

    def empty_state(self, batch, capacity, like):
        W = int(self.params["window"]) + 1
        return DecodeState({"kv": like.new_zeros(2, batch, self.n_heads, W, self.head_dim)}, 0)

    def _write(self, state: DecodeState, k: torch.Tensor, v: torch.Tensor) -> None:
        """Tokens pos … pos+n-1 into their slots; only the last w + 1 of them can stay."""
        ring, pos, n = state.tensors["kv"], state.pos, k.shape[2]
        W = ring.shape[3]
        if n == 1:  # a decode step: one slot, a Python int (no index tensor, no host copy)
            ring[0, :, :, pos % W] = k[:, :, 0]
            ring[1, :, :, pos % W] = v[:, :, 0]
            return
        keep = min(n, W)
        slots = torch.arange(pos + n - keep, pos + n, device=k.device) % W
        ring[0, :, :, slots] = k[:, :, n - keep:]
        ring[1, :, :, slots] = v[:, :, n - keep:]

    def step(self, x_t: torch.Tensor, state: DecodeState):
        q, k, v = self.project(x_t)  # 3 × (B, H, 1, Dh)
        self._write(state, k, v)
        ring, filled = state.tensors["kv"], min(state.pos + 1, state.tensors["kv"].shape[3])
        y = F.scaled_dot_product_attention(q, ring[0, :, :, :filled], ring[1, :, :, :filled])
        return self.out(y.transpose(1, 2).reshape(x_t.shape)), state.advanced()

    @classmethod
    def state_bytes(cls, depth, d_model, n_heads, params, elem_bytes):
        return 2.0 * (params["window"] + 1) * d_model * elem_bytes  # the ring, at any depth

    @classmethod
    def decode_mem_elems(cls, batch_size, seq_len, d_model, n_heads, params):
        return 2.0 * batch_size * (params["window"] + 1) * d_model
