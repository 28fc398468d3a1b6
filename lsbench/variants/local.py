"""Local attention: a pure sliding window (no global tokens) through fused SDPA calls.

The FlashAttention-style baseline for windowed methods: Beltagy et al. 2020's sliding window
(https://arxiv.org/abs/2004.05150, §3.1) without Longformer's global tokens, as Mistral 7B
(https://arxiv.org/abs/2310.06825) and FlashAttention-2's `window_size` run it. Token i attends
to keys i-w … i+w (i-w … i when causal), softmax over exactly those keys, queries scaled by
1/√Dh. The blocked computation (query blocks, key spans as strided views, one
`scaled_dot_product_attention` call with blocks as its batch) is `_blocks.sliding_window_attention`,
shared with longformer/poolingformer, so `local` measures what the window itself costs there.

Shape legend: B batch, N length, D d_model, H heads, Dh head dim, w one-sided window,
L query block, S = L + 2w keys per block (L + w causal).
"""

from __future__ import annotations

from typing import Any

import torch

from lsbench.errors import LsbenchError
from lsbench.measure.flops import attention_flops, band_pairs, linear_flops
from lsbench.variants._blocks import sliding_window_attention
from lsbench.variants._decode import WindowCacheDecoder
from lsbench.variants.transformer import QKVAttention, merge_heads


def query_block(window: int, seq_len: int) -> int:
    """Query block for a window of one-sided w: about w/2, at least 16, at most N.

    Passed to `sliding_window_attention` explicitly so that `computed_flops` counts exactly the
    spans the kernel multiplies (block = w/2 gives 2.5w scores per query for 2w + 1 useful).
    """
    return min(max(16, 1 << max(0, window.bit_length() - 2)), max(seq_len, 1))


class Local(WindowCacheDecoder, QKVAttention):
    name = "local"
    method = "sliding window of ±w tokens (no global tokens), blocked fused SDPA"
    paper = "Beltagy et al. 2020 (sliding window), https://arxiv.org/abs/2004.05150"
    time_complexity = "O(N·w·D)"
    memory_complexity = "O(H·N·w)"
    supports_causal = True
    defaults = {"window": 256}  # one-sided w, as longformer's default (total 2w = 512)

    @classmethod
    def check_params(cls, d_model: int, n_heads: int, params: dict[str, Any]) -> None:
        super().check_params(d_model, n_heads, params)
        if params["window"] < 1:
            raise LsbenchError(
                f"variant 'local': parameter 'window' must be >= 1 (one-sided window w; each "
                f"token sees i-w … i+w), got {params['window']!r}; the default is 256."
            )

    @classmethod
    def _span(cls, seq_len: int, params: dict[str, Any], causal: bool) -> tuple[int, int, int]:
        """(w clipped to N - 1, query block L, keys per block S) as the forward uses them."""
        w = max(0, min(params["window"], seq_len - 1))
        L = query_block(w, seq_len)
        return w, L, L + (w if causal else 2 * w)

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        _, _, S = cls._span(seq_len, params, causal)
        # upper bound: banded scores + probabilities (+ grads) as the math kernel keeps them
        return 3.0 * batch_size * n_heads * seq_len * S + 8.0 * batch_size * seq_len * d_model

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        w = params["window"]
        pairs = band_pairs(seq_len, w, 0 if causal else w)
        return (linear_flops(batch_size * seq_len, d_model, 4 * d_model)
                + attention_flops(batch_size * pairs, d_model))

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        _, L, S = cls._span(seq_len, params, causal)
        blocks = -(-seq_len // L)
        return (linear_flops(batch_size * seq_len, d_model, 4 * d_model)
                + attention_flops(batch_size * blocks * L * S, d_model))

    def forward(self, x, mask=None):
        B, N, _ = x.shape
        q, k, v = self.project(x)  # 3 × (B, H, N, Dh)
        q = q * self.head_dim**-0.5
        if mask is None:
            valid = torch.ones(B, N, dtype=torch.bool, device=x.device)
        else:
            valid = mask.to(device=x.device, dtype=torch.bool)  # (B, N)
        w, L, _ = self._span(N, self.params, self.causal)
        y = sliding_window_attention(q, k, v, valid, w, self.causal, block=L)
        return self.out(merge_heads(y))  # (B, N, D)
