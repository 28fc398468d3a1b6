"""Models built by name: the encoder stack the speed sweeps time, and the causal LM that
`lsbench extrapolate` trains.

Shape legend: B batch, N length, D d_model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lsbench import positions, variants
from lsbench.errors import LsbenchError
from lsbench.positions.xpos_bca import blockwise_causal_attention


@dataclass
class EncoderConfig:
    variant: str
    d_model: int = 256
    n_heads: int = 16
    n_layers: int = 1
    ffn_dim: int = 0  # 0 -> 4 * d_model
    causal: bool = False
    params: dict[str, Any] = field(default_factory=dict)  # variant parameters
    layer: str = "block"  # "attention": the attention sublayer alone (no norm, no FFN)

    def __post_init__(self) -> None:
        if self.ffn_dim == 0:
            self.ffn_dim = 4 * self.d_model
        if self.layer not in ("block", "attention"):
            raise LsbenchError(f"layer must be 'block' or 'attention', got {self.layer!r}.")
        variants.check(self.variant, self.d_model, self.n_heads, self.causal, **self.params)


class FFN(nn.Sequential):
    def __init__(self, d_model: int, ffn_dim: int):
        super().__init__(nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + ffn(ln(x)), the same for every variant."""

    def __init__(self, cfg: EncoderConfig, layer: int = 0):
        super().__init__()
        params = dict(cfg.params)
        if "seed" in variants.get(cfg.variant).defaults:
            # each layer its own random pattern (BigBird draws one per layer), reproducibly
            params["seed"] = params.get("seed", variants.get(cfg.variant).defaults["seed"]) + layer
        self.attn = variants.build(cfg.variant, cfg.d_model, cfg.n_heads, cfg.causal, **params)
        self.sublayer_only = cfg.layer == "attention"
        if not self.sublayer_only:
            self.ln1 = nn.LayerNorm(cfg.d_model)
            self.ln2 = nn.LayerNorm(cfg.d_model)
            self.ffn = FFN(cfg.d_model, cfg.ffn_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.sublayer_only:
            return self.attn(x, mask=mask)
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.ffn(self.ln2(x))

    def prefill(self, x: torch.Tensor, capacity: int | None = None):
        return self._decode_call(self.attn.prefill, x, capacity)

    def fill(self, x: torch.Tensor, state):
        return self._decode_call(self.attn.fill, x, state)

    def step(self, x_t: torch.Tensor, state):
        return self._decode_call(self.attn.step, x_t, state)

    def _decode_call(self, attend, x: torch.Tensor, arg):
        """The block around one of the sublayer's decoding calls -> (y, state)."""
        if self.sublayer_only:
            return attend(x, arg)
        a, state = attend(self.ln1(x), arg)
        x = x + a
        return x + self.ffn(self.ln2(x)), state



class Encoder(nn.Module):
    """n_layers blocks over already-embedded inputs (B, N, D) -> (B, N, D)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.layer == "block" else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)

    def prefill(self, x: torch.Tensor, capacity: int | None = None):
        """Causal forward over (B, N, D) that also returns each layer's decoding state
        (lsbench.variants._decode); `capacity` preallocates KV caches for that many tokens."""
        states = []
        for block in self.blocks:
            x, state = block.prefill(x, capacity)
            states.append(state)
        return self.ln_f(x), states

    def fill_state(self, x: torch.Tensor, capacity: int, chunk: int = 4096) -> list:
        """Each layer's state after the N tokens of x (B, N, D), for timing decode steps: built
        chunk by chunk with the variants' `fill` (no attention outputs, memory O(chunk)), or by
        an exact `prefill` where a variant has no `fill` (lsbench.variants._decode.Decoder)."""
        B, N, _ = x.shape
        states = [b.attn.empty_state(B, capacity, x) for b in self.blocks]
        if any(s is None for s in states):
            return self.prefill(x, capacity)[1]
        for i in range(0, N, chunk):
            h = x[:, i:i + chunk]
            for j, block in enumerate(self.blocks):
                h, states[j] = block.fill(h, states[j])
        return states

    def step(self, x_t: torch.Tensor, states: list):
        """One token (B, 1, D) at the depth the states hold -> (y_t, the states one deeper)."""
        new = []
        for block, state in zip(self.blocks, states, strict=True):
            x_t, state = block.step(x_t, state)
            new.append(state)
        return self.ln_f(x_t), new

    def flops(self, batch_size: int, seq_len: int, computed: bool = False) -> float:
        """Analytic forward FLOPs: attention sublayer (from the variant) + FFN, per layer.

        Useful FLOPs by default; `computed=True` counts what the kernels multiply instead
        (see `lsbench.measure.flops`).
        """
        c = self.cfg
        cls = variants.get(c.variant)
        attn = variants.count(cls, "computed_flops" if computed else "flops", batch_size,
                              seq_len, c.d_model, c.n_heads, {**cls.defaults, **c.params},
                              causal=c.causal)
        ffn = 2.0 * batch_size * seq_len * 2 * c.d_model * c.ffn_dim
        return c.n_layers * (attn + (ffn if c.layer == "block" else 0.0))


# --- Causal LM for `lsbench extrapolate` ---------------------------------------------------
# Shape legend: H heads, Dh head dim, V vocabulary, C query-chunk length.



@dataclass
class CausalLMConfig:
    position: str
    vocab_size: int = 258  # 256 bytes + specials
    d_model: int = 128
    n_heads: int = 8
    n_layers: int = 4
    ffn_dim: int = 0  # 0 -> 4 * d_model
    train_len: int = 512  # sizes tables of absolute methods that have one (learned)
    position_params: dict[str, Any] = field(default_factory=dict)
    # Most score elements (H × C × N_k) alive per attention call: long windows are computed
    # in query chunks of C rows so 16× the training length never needs an (H, N, N) tensor.
    attn_chunk_elems: int = 2**24

    def __post_init__(self) -> None:
        for key in ("vocab_size", "d_model", "n_heads", "n_layers", "train_len"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LsbenchError(f"causal LM: {key} must be a positive integer, got {value!r}.")
        if self.d_model % self.n_heads:
            raise LsbenchError(
                f"causal LM: n_heads={self.n_heads} must divide d_model={self.d_model}."
            )
        if self.ffn_dim == 0:
            self.ffn_dim = 4 * self.d_model
        cls = positions.get(self.position)
        # methods sized by the training length (learned table, FIRE threshold, RoPE scaling)
        for key in ("max_len", "train_len"):
            if key in cls.defaults and key not in self.position_params:
                self.position_params = {**self.position_params, key: self.train_len}
        positions.check(self.position, self.n_heads, self.head_dim, **self.position_params)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class CausalSelfAttention(nn.Module):
    """Causal multi-head attention taking its position information from a shared method."""

    def __init__(self, cfg: CausalLMConfig):
        super().__init__()
        self.n_heads, self.chunk_elems = cfg.n_heads, cfg.attn_chunk_elems
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor, pe: positions.Position, pos: torch.Tensor,
                bias_fn) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (
            t.view(B, N, self.n_heads, -1).transpose(1, 2)  # (B, H, N, Dh)
            for t in self.qkv(x).chunk(3, dim=-1)
        )
        if pe.kind == "rotary":
            q, k = pe(q, pos), pe(k, pos, is_key=True)
        block = pe.attention_block(N) if pe.kind != "bias" else None
        if block is not None:  # eval-time blockwise causal attention: O(N·block) scores
            y = blockwise_causal_attention(q, k, v, block, self.chunk_elems)
        elif pe.kind != "bias":
            # flash / memory-efficient kernels: O(N) memory, no N×N tensor at any length
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = torch.cat([
                # a 4-D mask keeps SDPA on its fused kernel (a 3-D one falls back to the math path)
                F.scaled_dot_product_attention(
                    q[:, :, s:e], k[:, :, :e], v[:, :, :e],
                    attn_mask=bias_fn(s, e)[None].to(q.dtype),  # no copy unless under autocast
                )  # (B, H, C, Dh): keys after the chunk's last query are all masked, so skipped
                for s, e in self.chunks(N)
            ], dim=2)
        return self.out(y.transpose(1, 2).reshape(B, N, D))

    def chunk_len(self, n: int) -> int:
        return max(1, min(n, self.chunk_elems // (self.n_heads * n)))

    def chunks(self, n: int) -> list[tuple[int, int]]:
        """Query chunks of chunk_len rows aligned to the end (only the first may be shorter)."""
        c = self.chunk_len(n)
        ends = list(range(n, 0, -c))[::-1]
        return [(max(0, e - c), e) for e in ends]


class CausalBlock(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, cfg: CausalLMConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FFN(cfg.d_model, cfg.ffn_dim)

    def forward(self, x, pe, pos, bias_fn):
        x = x + self.attn(self.ln1(x), pe, pos, bias_fn)
        return x + self.ffn(self.ln2(x))


class CausalLM(nn.Module):
    """Token embedding -> blocks with one shared position method -> tied output head.

    Every window starts at position 0, as in the ALiBi paper's evaluation.
    """

    def __init__(self, cfg: CausalLMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # position tables (learned, t5) draw from a forked RNG, so the weights every method
        # shares (embedding, blocks) start identical under the same seed
        with torch.random.fork_rng(devices=[]):
            self.pe = positions.build(cfg.position, cfg.n_heads, cfg.head_dim,
                                      **cfg.position_params)
        self.blocks = nn.ModuleList(CausalBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.embed_scale = cfg.d_model**0.5  # unit-scale token embeddings, as in fairseq
        for name, m in self.named_modules():
            if not name.startswith("pe"):  # a position method keeps its own init (FIRE's MLP)
                self._init(m)

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif m is getattr(self, "tok_emb", None):
            nn.init.normal_(m.weight, std=self.cfg.d_model**-0.5)

    @property
    def max_len(self) -> int | None:
        """The longest window the position method can represent (None: any)."""
        return self.pe.max_len

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, N) token ids -> logits (B, N, V)."""
        B, N = idx.shape
        pos = torch.arange(N, device=idx.device)
        x = self.tok_emb(idx) * self.embed_scale  # (B, N, D)
        if self.pe.kind == "absolute":
            x = x + self.pe(pos).to(x.dtype)
        bias_fn = self._bias_fn(pos, x.dtype)
        for block in self.blocks:
            x = block(x, self.pe, pos, bias_fn)
        return self.ln_f(x) @ self.tok_emb.weight.T  # (B, N, V), tied head

    def _bias_fn(self, pos: torch.Tensor, dtype: torch.dtype):
        """bias_fn(s, e) -> additive (H, e-s, e) mask (bias + causal), queries [s, e), keys [0, e).

        For a translation-invariant bias (a function of i - j) one (H, C, N) slab serves every
        chunk as a view (see `CausalSelfAttention.chunks`, which aligns chunks to the end), so
        the bias is computed once per forward, never per chunk and layer.
        """
        if self.pe.kind != "bias":
            return None
        n = len(pos)
        c = self.blocks[0].attn.chunk_len(n)

        def mask(s: int, e: int) -> torch.Tensor:
            q, k = pos[s:e], pos[:e]
            bias = self.pe(q, k).to(dtype)  # (H, e-s, e)
            return bias.masked_fill(k[None, :] > q[:, None], float("-inf"))

        if not self.pe.translation_invariant:
            return mask
        slab = mask(n - c, n)  # (H, C, N): the last chunk's rows
        # chunk [s, e): row i = s + a, key j  <->  slab row a + c - (e - s), key j + n - e
        return lambda s, e: slab[:, c - (e - s):, n - e:]
