"""BigBird (ITC): block-sparse attention = sliding blocks + global blocks + random blocks.

Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences",
https://arxiv.org/abs/2007.14062 (§2, App. D; ITC = internal transformer construction).
The sequence is cut into blocks of `block_size` tokens (paper: 64). Each query block attends to

- the window: itself and its two neighbouring blocks (3 blocks, w = 3b in the paper);
- the global blocks: `num_global_blocks` = g blocks, the first ⌈g/2⌉ and the last ⌊g/2⌋
  (default 2 = first and last block, g = 2b global tokens, as in the paper's ITC and HF);
- `num_random_blocks` = r other blocks (paper: 3) drawn without replacement from the blocks
  that are neither in its window nor global.

Global blocks attend to every token, so attention is symmetric for them. The random pattern is
a pure function of (`seed`, number of blocks): generated on the fly for each length, cached,
identical in training and evaluation and across calls. With a padding mask, "the last block" and
the pattern are those of each sequence's real length (blocks up to its last real token), so a
sequence gives the same output however much padding follows it.

Simplified: each query block's K key blocks are gathered (index_select) and all blocks of a
sequence go through one fused `scaled_dot_product_attention` call (HF's hand-written
rolled/blocked kernels are an optimisation of the same pattern); no causal version; HF falls
back to full attention for short inputs, here the same sparse pattern is used at every length
(at small lengths it already covers every block). Memory O(N·b·(3+g+r)) + O(g·b·N).
Shape legend: B batch, N length, D d_model, H heads, Dh head dim, b block size, nb blocks,
K = 3 + g + r key blocks per query block, G = g global blocks.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lsbench.errors import LsbenchError
from lsbench.variants._blocks import ceil_div, key_validity, pad_seq
from lsbench.variants.transformer import QKVAttention, merge_heads


@lru_cache(maxsize=256)
def block_pattern(n_blocks: int, n_global: int, n_random: int, seed: int):
    """Key blocks of each query block for a sequence of `n_blocks` blocks.

    Returns numpy arrays (read-only): idx (n_blocks, K) int64 key-block ids, valid (n_blocks, K)
    bool (False = unused slot), glob (n_global,) int64 global block ids (padded by repeating the
    first one when the sequence has fewer distinct blocks). Rows of global blocks are unused:
    those blocks attend densely.
    """
    n, K = n_blocks, 3 + n_global + n_random
    front = range(min(ceil_div(n_global, 2), n))
    back = range(max(n - n_global // 2, 0), n)
    glob = sorted(set(front) | set(back))
    rng = np.random.default_rng([seed, n])
    idx = np.zeros((n, K), dtype=np.int64)
    valid = np.zeros((n, K), dtype=bool)
    for c in range(n):
        if c in glob:
            row = [c]
        else:
            base = sorted({j for j in (c - 1, c, c + 1) if 0 <= j < n} | set(glob))
            take = min(n_random, n - len(base))
            picks = rng.choice(n - len(base), size=take, replace=False) if take else []
            row = base + sorted(_skip(int(u), base) for u in picks)
        idx[c, : len(row)] = row
        idx[c, len(row):] = c
        valid[c, : len(row)] = True
    glob_arr = np.array((glob + glob[:1] * n_global)[:n_global], dtype=np.int64)
    for a in (idx, valid, glob_arr):
        a.setflags(write=False)
    return idx, valid, glob_arr


def _skip(u: int, excluded: list[int]) -> int:
    """The u-th (0-based) block id not in the sorted list `excluded`."""
    for e in excluded:
        if e <= u:
            u += 1
    return u


class BigBird(QKVAttention):
    name = "bigbird"
    method = "block-sparse: 3 sliding blocks + global blocks + seeded random blocks"
    paper = "Zaheer et al. 2020, Big Bird (ITC), https://arxiv.org/abs/2007.14062"
    time_complexity = "O(N·b·(3+g+r)·D)"
    memory_complexity = "O(H·N·b·(3+g+r))"
    supports_causal = False
    defaults = {
        "block_size": 64,
        "num_random_blocks": 3,
        "num_global_blocks": 2,  # first ⌈g/2⌉ and last ⌊g/2⌋ blocks: 2 = first + last
        "seed": 0,  # random-block pattern seed; same pattern in train and eval
    }

    @classmethod
    def check_params(cls, d_model: int, n_heads: int, params: dict[str, Any]) -> None:
        super().check_params(d_model, n_heads, params)
        if params["block_size"] < 1:
            raise LsbenchError(
                f"variant 'bigbird': parameter 'block_size' must be >= 1 (tokens per block), "
                f"got {params['block_size']!r}; the paper uses 64."
            )

    @classmethod
    def _sizes(cls, seq_len: int, params: dict[str, Any]) -> tuple[int, int, int]:
        b = max(1, min(params["block_size"], seq_len))
        g = min(params["num_global_blocks"], ceil_div(seq_len, b))
        return b, g, 3 + params["num_global_blocks"] + params["num_random_blocks"]

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params):
        b, g, K = cls._sizes(seq_len, params)
        # upper bound: scores as the math SDPA kernel keeps them (the fused kernels keep tiles)
        scores = batch_size * n_heads * (seq_len * K * b + g * b * seq_len)
        gathered = 2.0 * batch_size * seq_len * K * d_model  # selected key and value blocks
        return 3.0 * scores + 2.0 * gathered + 8.0 * batch_size * seq_len * d_model

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params):
        b, g, K = cls._sizes(seq_len, params)
        proj = 2.0 * batch_size * seq_len * 4 * d_model * d_model
        keys = min(K * b, seq_len)
        attn = 4.0 * batch_size * d_model * (seq_len * keys + g * b * seq_len)
        return proj + attn

    def pattern(self, n_blocks: int):
        """(idx, valid, glob) for `n_blocks` blocks; see `block_pattern`."""
        p = self.params
        return block_pattern(n_blocks, p["num_global_blocks"], p["num_random_blocks"], p["seed"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        H, Dh = self.n_heads, self.head_dim
        b = min(self.params["block_size"], N)
        nb = ceil_div(N, b)
        q, k, v = (pad_seq(t, nb * b, dim=2) for t in self.project(x))  # 3 × (B, H, nb·b, Dh)
        q = q * Dh**-0.5
        valid = key_validity(mask, B, N, nb * b, x.device)  # (B, nb·b)
        idx, slot_ok, glob, slot, is_glob = self._batch_pattern(valid, b, nb)

        K = idx.shape[-1]
        key_ok = valid.view(B, nb, b)[torch.arange(B, device=x.device)[:, None, None], idx]
        key_ok = (key_ok & slot_ok[..., None]).view(B, nb, 1, 1, K * b)  # (B, nb, 1, 1, K·b)
        ys = []
        for i in range(B):  # per sequence: the blocks become the batch of one fused SDPA call
            qb = q[i].view(H, nb, b, Dh).transpose(0, 1)  # (nb, H, b, Dh)
            sel = idx[i].flatten()  # (nb·K,) key block ids, query block by query block
            kb = k[i].view(H, nb, b, Dh).index_select(1, sel).view(H, nb, K * b, Dh)
            vb = v[i].view(H, nb, b, Dh).index_select(1, sel).view(H, nb, K * b, Dh)
            y = F.scaled_dot_product_attention(qb, kb.transpose(0, 1), vb.transpose(0, 1),
                                               attn_mask=key_ok[i], scale=1.0)
            y = y.transpose(0, 1)  # (H, nb, b, Dh)
            if glob.shape[1]:  # global query blocks attend to every valid token
                qg = q[i].view(H, nb, b, Dh).index_select(1, glob[i]).view(1, H, -1, Dh)
                yg = F.scaled_dot_product_attention(qg, k[i, None], v[i, None], scale=1.0,
                                                    attn_mask=valid[i, None, None, None])
                yg = yg.view(H, -1, b, Dh).index_select(1, slot[i])  # (H, nb, b, Dh)
                y = torch.where(is_glob[i, None, :, None, None], yg, y)
            ys.append(y.reshape(H, nb * b, Dh)[:, :N])
        return self.out(merge_heads(torch.stack(ys)))  # (B, N, D)

    def _batch_pattern(self, valid: torch.Tensor, b: int, nb: int):
        """Per-sequence patterns, each for the blocks up to its last real token.

        Returns idx (B, nb, K), slot_ok (B, nb, K), glob (B, G), slot (B, nb) index into glob
        of each global block, is_glob (B, nb).
        """
        B = valid.shape[0]
        if valid.all():
            n_real = [nb] * B
        else:  # blocks up to the last real token of each sequence (one host sync)
            pos = torch.arange(1, valid.shape[1] + 1, device=valid.device)
            last = (valid * pos).amax(dim=1)
            n_real = [max(1, ceil_div(int(t), b)) for t in last.tolist()]
        K = 3 + self.params["num_global_blocks"] + self.params["num_random_blocks"]
        G = self.params["num_global_blocks"]
        idx = np.tile(np.arange(nb)[:, None], (B, 1, K))  # padding blocks: only themselves
        slot_ok = np.zeros((B, nb, K), dtype=bool)
        slot_ok[:, :, 0] = True
        glob = np.zeros((B, G), dtype=np.int64)
        slot = np.zeros((B, nb), dtype=np.int64)
        is_glob = np.zeros((B, nb), dtype=bool)
        for i, n in enumerate(n_real):
            p_idx, p_ok, p_glob = self.pattern(n)
            idx[i, :n], slot_ok[i, :n], glob[i] = p_idx, p_ok, p_glob
            for j in range(G - 1, -1, -1):  # first occurrence wins for repeated ids
                slot[i, p_glob[j]] = j
            is_glob[i, p_glob] = True
        dev = valid.device
        return tuple(torch.from_numpy(a).to(dev) for a in (idx, slot_ok, glob, slot, is_glob))
