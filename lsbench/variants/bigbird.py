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
from lsbench.measure.flops import attention_flops, linear_flops
from lsbench.variants._blocks import ceil_div, key_validity, pad_seq
from lsbench.variants.transformer import QKVAttention


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
    """Shape legend of the forward: q, k, v are kept as (B, nb·b, H, Dh) so that blocks fold into
    the batch of one SDPA call, (B·nb, H, b, Dh) queries against (B·nb, H, K·b, Dh) keys."""

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

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params: Any):
        super().__init__(d_model, n_heads, causal, **params)
        self._patterns: dict[tuple, dict] = {}  # (nb, b, N, device) -> pattern tensors

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
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        b, g, K = cls._sizes(seq_len, params)
        # upper bound: scores as the math SDPA kernel keeps them (the fused kernels keep tiles)
        scores = batch_size * n_heads * (seq_len * K * b + g * b * seq_len)
        gathered = 2.0 * batch_size * seq_len * K * d_model  # selected key and value blocks
        return 3.0 * scores + 2.0 * gathered + 8.0 * batch_size * seq_len * d_model

    @classmethod
    def pairs(cls, seq_len: int, params: dict[str, Any]) -> tuple[int, int]:
        """(allowed, computed) (query, key) pairs under the pattern for this length.

        Allowed: real queries × real keys of the key blocks each query block really sees (its
        window, global and random blocks; global query blocks see every key). Computed: what
        the kernels multiply: every query block × all K·b gathered keys (unused slots and
        padding included), plus the global query blocks × the padded sequence.
        """
        n = seq_len
        b = max(1, min(params["block_size"], n))
        nb = ceil_div(n, b)
        idx, ok, glob = block_pattern(nb, params["num_global_blocks"],
                                      params["num_random_blocks"], params["seed"])
        real = np.minimum(b, n - np.arange(nb) * b)  # real tokens per block
        is_glob = np.zeros(nb, dtype=bool)
        is_glob[glob] = True
        seen = (real[idx] * ok).sum(axis=1)  # real keys each query block sees
        allowed = int((real * np.where(is_glob, n, seen)).sum())
        computed = nb * b * idx.shape[1] * b + int(is_glob.sum()) * b * nb * b
        return allowed, computed

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        proj = linear_flops(batch_size * seq_len, d_model, 4 * d_model)
        return proj + attention_flops(batch_size * cls.pairs(seq_len, params)[0], d_model)

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        proj = linear_flops(batch_size * seq_len, d_model, 4 * d_model)
        return proj + attention_flops(batch_size * cls.pairs(seq_len, params)[1], d_model)

    def pattern(self, n_blocks: int):
        """(idx, valid, glob) for `n_blocks` blocks; see `block_pattern`."""
        p = self.params
        return block_pattern(n_blocks, p["num_global_blocks"], p["num_random_blocks"], p["seed"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        H, Dh = self.n_heads, self.head_dim
        b = min(self.params["block_size"], N)
        nb = ceil_div(N, b)
        q, k, v = (pad_seq(t, nb * b, dim=2).transpose(1, 2) for t in self.project(x))
        q = q * Dh**-0.5  # 3 × (B, nb·b, H, Dh)
        if mask is None:  # one pattern for the whole batch, cached on the device: no host sync
            p = self._shared_pattern(nb, b, N, x.device)
            valid = p["valid"]  # (1, nb·b) or None when no key is padding
            idx, key_ok = p["idx"].expand(B, -1), p["key_ok"]  # (B, nb·K), (1 or B, nb, K·b)
            glob, slot, is_glob = (p[name].expand(B, -1) for name in ("glob", "slot", "is_glob"))
        else:  # each sequence's pattern is that of its real length (one host sync)
            valid = key_validity(mask, B, N, nb * b, x.device)  # (B, nb·b)
            idx, key_ok, glob, slot, is_glob = self._batch_pattern(valid, b, nb)
        K = idx.shape[1] // nb
        rows = torch.arange(B, device=x.device)[:, None]  # (B, 1) batch index for gathers
        qb = q.reshape(B * nb, b, H, Dh).transpose(1, 2)  # (B·nb, H, b, Dh)
        kb, vb = (t.reshape(B, nb, b, H, Dh)[rows, idx]  # (B, nb·K, b, H, Dh): one gather
                  .reshape(B * nb, K * b, H, Dh).transpose(1, 2) for t in (k, v))
        attn_mask = None if key_ok is None else key_ok.expand(B, nb, K * b).reshape(
            B * nb, 1, 1, K * b)
        y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=attn_mask, scale=1.0)
        y = y.transpose(1, 2).reshape(B, nb, b, H, Dh)  # (B, nb, b, H, Dh)
        if glob.shape[1]:  # global query blocks attend to every valid token, densely
            G = glob.shape[1]
            qg = q.reshape(B, nb, b, H, Dh)[rows, glob].reshape(B, G * b, H, Dh)
            full_mask = None if valid is None else valid[:, None, None, :]  # (B|1, 1, 1, nb·b)
            yg = F.scaled_dot_product_attention(qg.transpose(1, 2), k.transpose(1, 2),
                                                v.transpose(1, 2), attn_mask=full_mask,
                                                scale=1.0)  # (B, H, G·b, Dh)
            yg = yg.transpose(1, 2).reshape(B, G, b, H, Dh)[rows, slot]  # (B, nb, b, H, Dh)
            y = torch.where(is_glob[:, :, None, None, None], yg, y)
        return self.out(y.reshape(B, nb * b, D)[:, :N])  # (B, N, D)

    def _shared_pattern(self, nb: int, b: int, n: int, device: torch.device) -> dict:
        """The pattern of an unpadded batch as device tensors, built once per (nb, b, N, device).

        idx (1, nb·K) key block ids; key_ok (1, nb, K·b) allowed keys or None when all are;
        valid (1, nb·b) real keys or None; glob (1, G) unique global block ids; slot (1, nb)
        index into glob of each global block; is_glob (1, nb).
        """
        key = (nb, b, n, str(device))
        if key not in self._patterns:  # built on the host in numpy: no torch op, no sync
            valid = np.arange(nb * b) < n  # (nb·b,) the last block may be partly padding
            idx, ok, glob = self.pattern(nb)  # (nb, K), (nb, K), (G,)
            key_ok = ok[:, :, None] & valid.reshape(nb, b)[idx]  # (nb, K, b)
            uniq = sorted(set(glob.tolist()))
            slot = np.zeros(nb, dtype=np.int64)
            slot[uniq] = np.arange(len(uniq))
            is_glob = np.zeros(nb, dtype=bool)
            is_glob[uniq] = True

            def dev(a: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.array(a)[None]).to(device)  # (1, ...) on device

            self._patterns[key] = {
                "idx": dev(idx.reshape(-1)),
                "key_ok": None if key_ok.all() else dev(key_ok.reshape(nb, -1)),
                "valid": None if valid.all() else dev(valid),
                "glob": dev(np.array(uniq, dtype=np.int64)),
                "slot": dev(slot),
                "is_glob": dev(is_glob),
            }
        return self._patterns[key]

    def _batch_pattern(self, valid: torch.Tensor, b: int, nb: int):
        """Per-sequence patterns, each for the blocks up to its last real token.

        Returns idx (B, nb·K), key_ok (B, nb, K·b), glob (B, G), slot (B, nb) index into glob
        of each global block, is_glob (B, nb).
        """
        B = valid.shape[0]
        pos = torch.arange(1, valid.shape[1] + 1, device=valid.device)
        last = (valid * pos).amax(dim=1)
        n_real = [max(1, ceil_div(int(t), b)) for t in last.tolist()]  # the host sync
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
        idx, slot_ok, glob, slot, is_glob = (torch.from_numpy(a).to(dev)
                                             for a in (idx, slot_ok, glob, slot, is_glob))
        rows = torch.arange(B, device=dev)[:, None, None]
        key_ok = valid.view(B, nb, b)[rows, idx] & slot_ok[..., None]  # (B, nb, K, b)
        return idx.reshape(B, nb * K), key_ok.reshape(B, nb, K * b), glob, slot, is_glob
