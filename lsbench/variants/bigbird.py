"""BigBird (ITC): block-sparse attention = sliding blocks + global blocks + random blocks.

Zaheer et al. 2020, "Big Bird: Transformers for Longer Sequences",
https://arxiv.org/abs/2007.14062 (§2, App. D; ITC = internal transformer construction).
Official code: google-research/bigbird `bigbird/core/attention.py`; its PyTorch port is HF's
`BigBirdBlockSparseAttention` (transformers/models/big_bird/modeling_big_bird.py), which
tests/test_bigbird.py matches to 1e-5 with copied weights and the same random plan.
The sequence is cut into blocks of `block_size` tokens (paper: 64). Each query block attends to

- the window: itself and its two neighbouring blocks (3 blocks, as in HF and the official code);
- the global blocks: `num_global_blocks` = g blocks, the first ⌈g/2⌉ and the last ⌊g/2⌋
  (default 2 = first and last block, as in the paper's ITC and HF); global blocks attend to
  every token, so attention is symmetric for them;
- `num_random_blocks` = r random blocks (paper: 3), different for every head.

A key block never counts twice in a row (HF's 2nd block sees k0,k1,k2,k_last: block 0 is both
window and global), and rows of global blocks are dense, so with the official plan the output is
HF's exactly, the 2nd / 2nd-last blocks included (HF's five "parts" are one rule here).

`random_plan` chooses how the random blocks are drawn, per head, as a pure function of
(`seed`, number of blocks, heads, r, g), identical in training and evaluation:

- "official" (default): the official plan (`get_rand_attn_plan` +
  `bigbird_block_rand_mask_with_head`), drawn with a private `RandomState(seed)` making the same
  calls as the official code after `np.random.seed(seed)`, so the blocks equal HF's
  training-mode draw. Its quirks are kept: for nb > 2r + 5 blocks every row draws among blocks
  [0, 2r + 5) (the first "plan" segment), minus its window, block 0 and block 2r + 4; block 1
  never draws block 2r + 3 and vice versa. Not reproduced: the legacy plan the official code
  switches to at N ∈ {1024, 3072, 4096} (`bigbird_block_rand_mask` over MAX_SEQ_LEN = 4096 with
  last_idx = 1024, which can draw the last global block twice), so the pattern is one rule at
  every length; and HF's eval mode (transformers 5.24, the version checked), which draws no
  random blocks at all (all-zero ids: block 0, already global, gathered r more times).
- "uniform": the paper's text: r blocks uniformly without replacement among all blocks that
  are neither in the row's window nor global, also per head (an earlier lsbench version shared
  one draw across heads; per head is what the official code does, so the two plans differ only
  in the distribution, not in cost).

Computation (no Python loop over sequences or blocks; op count constant in B and N): the
pattern's index tensors are built once per (blocks, block size, valid tokens of the last block,
device) and cached on the module. All (head, query block) units of the batch are split into
three groups, each one gather (`index_select`) + one fused `scaled_dot_product_attention`:
global rows (dense over the N real keys, no mask), sparse rows whose K = 3 + g + r key blocks are
all distinct and real (no mask: the flash kernel on CUDA), and the few sparse rows with an
unused slot (a duplicate, a window past the ends, the padded tail of the last block) with a
boolean key mask (the memory-efficient kernel). Memory O(B·N·K·D) for gathered keys/values and
O(B·H·N·K·b) for scores in the math kernel, never N×N (plus the g·b global rows × N).

Padding: with a `mask` each sequence gets the pattern of its real length (blocks up to its last
real token), so a sequence's output does not depend on the padding that follows it. Reading the
lengths costs one host sync, taken only when a `mask` is passed (a mask without padding then
goes through the unmasked path); `mask=None` never syncs. Query blocks past a sequence's real
length attend to their own block only, so no row is empty. HF instead pads to a block multiple
and uses the padded length's pattern with padded keys masked; the two agree when the padding
stays inside the last block. No causal version (BigBird's random/global blocks are
bidirectional); HF switches to full attention below (5 + 2r)·b tokens, here the same sparse rule
is used at every length (small lengths are covered entirely).
Shape legend: B batch, N length, Np = nb·b padded length, D d_model, H heads, Dh head dim,
b block size, nb blocks, K = 3 + g + r key blocks per query block, G distinct global blocks,
U (head, query block) units of a group.

Why one file of ~490 lines: a variant is one file (DESIGN.md), and BigBird's official random
plan, its cached device index tensors and the three fused groups are one method; about half
of the length is this docstring and the comments that tie each step to the official code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from lsbench.errors import LsbenchError, unknown_choice
from lsbench.measure.flops import attention_flops, linear_flops
from lsbench.variants._blocks import ceil_div, key_validity
from lsbench.variants.transformer import QKVAttention, merge_heads

RANDOM_PLANS = ("official", "uniform")
WINDOW = 3  # window blocks per query block (fixed in HF and the official ITC code)
_PLAN_CACHE = 32  # device plans kept per module (one per distinct (nb, b, tail) seen)


# --- random blocks -------------------------------------------------------------------------


def rand_attn_plan(n_blocks: int, n_random: int) -> tuple[list[int], list[int]]:
    """Official `get_rand_attn_plan` in block units: segment ends and random blocks per segment."""
    if 2 * n_random + 5 < n_blocks:
        return [2 * n_random + 5, n_blocks], [n_random, 0]
    if n_random + 5 < n_blocks:
        return [n_random + 5, n_blocks], [n_random // 2, n_random - n_random // 2]
    return [n_blocks], [n_random]


def _row_picks(rng: np.random.RandomState, row: int, lo: int, hi: int, count: int,
               g_left: int, g_right: int) -> list[int]:
    """Official `get_single_block_row_attention`: the first `count` legal blocks of a
    permutation of [lo, hi). Illegal: the row's window, the first g_left and the last g_right
    blocks of [0, hi), and the 2nd/2nd-last quirk. May return fewer than `count`."""
    perm = rng.permutation(np.arange(lo, hi, dtype=np.int32))
    illegal = set(range(row - 1, row + 2)) | set(range(g_left)) | set(range(hi - g_right, hi))
    if row == 1:
        illegal.add(hi - 2)
    if row == hi - 2:
        illegal.add(1)
    return [int(j) for j in perm if int(j) not in illegal][:count]


def official_random_blocks(n_blocks: int, n_heads: int, n_random: int, seed: int,
                           g_left: int = 1, g_right: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-head random blocks as `bigbird_block_rand_mask_with_head` draws them.

    Same loops and RNG calls as the official code (rows, then heads, one permutation each), so
    `RandomState(seed)` here gives what `np.random.seed(seed)` gives there. Global rows get no
    draw (top/bottom = g_left/g_right; official: 1/1). Returns rand (H, nb, r) int64 and
    ok (H, nb, r) bool (False where fewer than r legal blocks exist, only for short inputs).
    """
    H, nb, r = n_heads, n_blocks, n_random
    rand = np.zeros((H, nb, r), dtype=np.int64)
    ok = np.zeros((H, nb, r), dtype=bool)
    ends, counts = rand_attn_plan(nb, r)
    rng = np.random.RandomState(seed)

    def fill(row: int, lo: int, hi: int, col: int, count: int) -> None:
        for h in range(H):
            picks = _row_picks(rng, row, lo, hi, count, g_left, g_right)
            rand[h, row, col : col + len(picks)] = picks
            ok[h, row, col : col + len(picks)] = True

    for p, (end, count) in enumerate(zip(ends, counts, strict=True)):
        if p > 0:
            prev = ends[p - 1]
            if count > 0:  # rows of earlier segments draw from this one
                for row in range(g_left, prev):
                    fill(row, prev, end, sum(counts[:p]), count)
            for q in range(p):  # this segment's rows draw from every earlier segment
                if counts[q] == 0:
                    continue
                for row in range(prev, end):
                    fill(row, ends[q - 1] if q else 0, ends[q], sum(counts[:q]), counts[q])
        if count == 0:
            continue
        start = ends[p - 1] if p else g_left
        for row in range(start, end):
            fill(row, ends[p - 1] if p else 0, end, sum(counts[:p]), count)
    return rand, ok


def uniform_random_blocks(n_blocks: int, n_heads: int, n_random: int, seed: int,
                          glob: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per head, r blocks uniformly without replacement from blocks outside window ∪ globals.

    Vectorised over heads and rows: the t-th pick is a uniform u in [0, candidates - t), mapped
    to the u-th block not yet excluded (walk the sorted exclusions, u += 1 for each <= u).
    """
    H, nb, r = n_heads, n_blocks, n_random
    big = nb + 1  # sorts after every real block, never <= u
    c = np.arange(nb)
    excl = np.concatenate([c[:, None] + np.arange(-1, 2), np.broadcast_to(
        np.array(glob, dtype=np.int64), (nb, len(glob)))], axis=1)  # (nb, 3 + G)
    excl = np.sort(np.where((excl >= 0) & (excl < nb), excl, big), axis=1)
    excl[:, 1:][excl[:, 1:] == excl[:, :-1]] = big  # drop duplicates
    excl = np.sort(excl, axis=1)
    n_cand = nb - (excl < big).sum(1)  # (nb,)
    rng = np.random.default_rng([seed, nb, H])
    ex = np.broadcast_to(excl, (H, *excl.shape)).copy()  # (H, nb, E)
    rand = np.zeros((H, nb, r), dtype=np.int64)
    ok = np.zeros((H, nb, r), dtype=bool)
    for t in range(r):
        avail = n_cand - t
        u = np.floor(rng.random((H, nb)) * np.maximum(avail, 1)).astype(np.int64)
        for j in range(ex.shape[-1]):
            u += ex[..., j] <= u
        got = np.broadcast_to(avail > 0, (H, nb))
        rand[..., t], ok[..., t] = np.where(got, u, 0), got
        ex = np.sort(np.concatenate([ex, np.where(got, u, big)[..., None]], axis=-1), axis=-1)
    return rand, ok


# --- the pattern ---------------------------------------------------------------------------


class Pattern(NamedTuple):
    """Key blocks of every (head, query block); numpy, read-only.

    idx (H, nb, K) key-block ids, slots [window (3) | globals (g) | random (r)];
    ok (H, nb, K) False for unused slots (past the ends, a block already in the row, no draw);
    glob (G,) distinct global block ids, ascending. Rows of global blocks are all False (they
    attend densely).
    """

    idx: np.ndarray
    ok: np.ndarray
    glob: np.ndarray


def global_blocks(n_blocks: int, n_global: int) -> list[int]:
    """The first ⌈g/2⌉ and the last ⌊g/2⌋ blocks (distinct, ascending)."""
    front = range(min(ceil_div(n_global, 2), n_blocks))
    back = range(max(n_blocks - n_global // 2, 0), n_blocks)
    return sorted(set(front) | set(back))


@lru_cache(maxsize=128)
def block_pattern(n_blocks: int, n_heads: int, n_global: int, n_random: int, seed: int,
                  plan: str = "official") -> Pattern:
    """The BigBird pattern for `n_blocks` blocks (see the module docstring)."""
    H, nb, g = n_heads, n_blocks, n_global
    glob = global_blocks(nb, g)
    if plan == "official":
        rand, rand_ok = official_random_blocks(nb, H, n_random, seed, ceil_div(g, 2), g // 2)
    else:
        rand, rand_ok = uniform_random_blocks(nb, H, n_random, seed, glob)
    c = np.arange(nb)
    win = c[:, None] + np.arange(-1, 2)  # (nb, 3)
    gcol = np.array((glob + glob[:1] * g)[:g], dtype=np.int64)  # (g,) repeats are dropped below
    idx = np.concatenate([np.broadcast_to(win, (H, nb, WINDOW)),
                          np.broadcast_to(gcol, (H, nb, g)), rand], axis=-1)  # (H, nb, K)
    ok = np.concatenate([np.broadcast_to((win >= 0) & (win < nb), (H, nb, WINDOW)),
                         np.ones((H, nb, g), dtype=bool), rand_ok], axis=-1)
    for j in range(1, idx.shape[-1]):  # a block already in the row is not seen twice
        ok[..., j] &= ~((idx[..., :j] == idx[..., j : j + 1]) & ok[..., :j]).any(-1)
    ok[:, glob] = False
    idx = np.where(ok, idx, c[:, None])  # unused slots point at the row's own block
    pattern = Pattern(idx, ok, np.array(glob, dtype=np.int64))
    for a in pattern:
        a.setflags(write=False)
    return pattern


def block_tokens(seq_len: int, b: int) -> np.ndarray:
    """(nb,) real tokens in each block (b, except the last when b does not divide N)."""
    nb = ceil_div(seq_len, b)
    tokens = np.full(nb, b, dtype=np.int64)
    tokens[-1] = seq_len - (nb - 1) * b
    return tokens


@dataclass
class _Group:
    units: torch.Tensor  # (U,) query units h·nb + c
    keys: torch.Tensor  # (U·K,) key units h·nb + block, unit by unit
    mask: torch.Tensor | None  # (1, U, 1, K·b) allowed keys, None when all are


@dataclass
class _DevicePlan:
    glob: torch.Tensor  # (G,)
    groups: list[_Group]  # sparse rows: all slots used / some unused
    inv: torch.Tensor | None  # (H·nb,) restores unit order after [global, groups...]; None: id


def _device_plan(pattern: Pattern, b: int, tail: int, device: torch.device) -> _DevicePlan:
    """Index tensors of the unpadded forward for blocks of b tokens, `tail` real tokens in the
    last one: sparse (head, block) units split by whether every gathered key is used."""
    H, nb, K = pattern.idx.shape
    head = np.arange(H)[:, None] * nb
    unit = head + np.arange(nb)  # (H, nb)
    key_unit = pattern.idx + head[..., None]  # (H, nb, K)
    tok_ok = np.ones((nb, b), dtype=bool)
    tok_ok[-1, tail:] = False  # internal padding of the last block
    key_ok = pattern.ok[..., None] & tok_ok[pattern.idx]  # (H, nb, K, b)
    sparse = np.ones((H, nb), dtype=bool)
    sparse[:, pattern.glob] = False
    masked = ~key_ok.all(axis=(-1, -2))
    order, groups = [unit[:, pattern.glob].ravel()], []  # global units h-major, as (B, H, G·b)
    for sel in (sparse & ~masked, sparse & masked):
        if not sel.any():
            continue
        mask = None
        if (sel & masked).any():
            mask = torch.from_numpy(key_ok[sel].reshape(1, -1, 1, K * b)).to(device)
        groups.append(_Group(torch.from_numpy(unit[sel]).to(device),
                             torch.from_numpy(key_unit[sel].ravel()).to(device), mask))
        order.append(unit[sel])
    order = np.concatenate(order)
    inv = None if (order == np.arange(H * nb)).all() else torch.from_numpy(np.argsort(order))
    return _DevicePlan(torch.from_numpy(pattern.glob.copy()).to(device), groups,
                       None if inv is None else inv.to(device))


class BigBird(QKVAttention):
    name = "bigbird"
    method = "block-sparse: 3 sliding blocks + global blocks + seeded per-head random blocks"
    paper = "Zaheer et al. 2020, Big Bird (ITC), https://arxiv.org/abs/2007.14062"
    time_complexity = "O(N·b·(3+g+r)·D)"
    memory_complexity = "O(H·N·b·(3+g+r))"
    supports_causal = False
    defaults = {
        "block_size": 64,
        "num_random_blocks": 3,
        "num_global_blocks": 2,  # first ⌈g/2⌉ and last ⌊g/2⌋ blocks: 2 = first + last
        "seed": 0,  # random-block seed; same pattern in train and eval (models.py adds the layer)
        "random_plan": "official",  # "official" (Google/HF per-head plan) or "uniform" (paper)
    }

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params: Any):
        super().__init__(d_model, n_heads, causal, **params)
        self._plans: dict[tuple, _DevicePlan] = {}  # (nb, b, tail, device) -> index tensors
        self._padded: dict[tuple, tuple[torch.Tensor, ...]] = {}  # masked path, per length

    @classmethod
    def check_params(cls, d_model: int, n_heads: int, params: dict[str, Any]) -> None:
        super().check_params(d_model, n_heads, params)
        if params["block_size"] < 1:
            raise LsbenchError(
                f"variant 'bigbird': parameter 'block_size' must be >= 1 (tokens per block), "
                f"got {params['block_size']!r}; the paper uses 64."
            )
        if params["random_plan"] not in RANDOM_PLANS:
            raise unknown_choice("random_plan", params["random_plan"], RANDOM_PLANS,
                                 "variant 'bigbird'")

    # --- counts ----------------------------------------------------------------------------

    @classmethod
    def _layout(cls, seq_len: int, n_heads: int, params: dict[str, Any]):
        p = {**cls.defaults, **params}
        b = max(1, min(p["block_size"], seq_len))
        nb = ceil_div(seq_len, b)
        pattern = block_pattern(nb, n_heads, p["num_global_blocks"], p["num_random_blocks"],
                                p["seed"], p["random_plan"])
        return b, nb, pattern

    @classmethod
    def mem_elems(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        p = {**cls.defaults, **params}
        b = max(1, min(p["block_size"], seq_len))
        nb = ceil_div(seq_len, b)
        G = len(global_blocks(nb, p["num_global_blocks"]))
        K = WINDOW + p["num_global_blocks"] + p["num_random_blocks"]
        # upper bound: scores as the math SDPA kernel keeps them (the fused kernels keep tiles)
        scores = batch_size * n_heads * b * ((nb - G) * K * b + G * seq_len)
        gathered = 2.0 * batch_size * nb * b * K * d_model  # selected key and value blocks
        return 3.0 * scores + 2.0 * gathered + 10.0 * batch_size * seq_len * d_model

    @classmethod
    def flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        """Useful: each real query token × the distinct real key tokens its row sees (global
        rows: all N), averaged over heads (random blocks differ by head)."""
        b, nb, pat = cls._layout(seq_len, n_heads, params)
        tokens = block_tokens(seq_len, b)
        seen = (pat.ok * tokens[pat.idx]).sum(-1)  # (H, nb) real keys per sparse row
        seen[:, pat.glob] = seq_len
        pairs = float((seen * tokens).sum()) / n_heads
        proj = linear_flops(batch_size * seq_len, d_model, 4 * d_model)
        return proj + attention_flops(batch_size * pairs, d_model)

    @classmethod
    def computed_flops(cls, batch_size, seq_len, d_model, n_heads, params, causal=False):
        """What the kernels multiply: G·b global query rows × N keys, and b queries × K·b
        gathered keys for every other block (unused slots and the padded tail included)."""
        b, nb, pat = cls._layout(seq_len, n_heads, params)
        G, K = len(pat.glob), pat.idx.shape[-1]
        pairs = G * b * seq_len + (nb - G) * b * K * b
        proj = linear_flops(batch_size * seq_len, d_model, 4 * d_model)
        return proj + attention_flops(batch_size * pairs, d_model)

    # --- forward ---------------------------------------------------------------------------

    def pattern(self, n_blocks: int) -> Pattern:
        """This module's pattern for `n_blocks` blocks; see `block_pattern`."""
        p = self.params
        return block_pattern(n_blocks, self.n_heads, p["num_global_blocks"],
                             p["num_random_blocks"], p["seed"], p["random_plan"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        H, Dh = self.n_heads, self.head_dim
        b = min(self.params["block_size"], N)
        nb = ceil_div(N, b)
        Np = nb * b
        t = self.qkv(x).view(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
        if Np > N:
            t = F.pad(t, (0, 0, 0, Np - N))
        t = t.contiguous()  # (3, B, H, Np, Dh), one copy
        n_real = None
        if mask is not None:
            valid = key_validity(mask, B, N, Np, x.device)  # (B, Np)
            n_real = self._real_blocks(valid, N, b)  # one host sync
        if n_real is None:
            y = self._attend(t, N, b)
        else:
            y = self._attend_padded(*t.unbind(0), valid, n_real, b)
        return self.out(merge_heads(y[:, :, :N]))  # (B, N, D)

    def _attend(self, qkv: torch.Tensor, N: int, b: int) -> torch.Tensor:
        """No padding: cached groups, one gather of q and one of k and v together + one SDPA
        each, no host sync. qkv: (3, B, H, Np, Dh) contiguous."""
        q, k, v = qkv.unbind(0)  # 3 × (B, H, Np, Dh)
        B, H, Np, Dh = q.shape
        nb = Np // b
        plan = self._plan(nb, b, N - (nb - 1) * b, q.device)
        scale = Dh**-0.5
        outs = []
        G = plan.glob.shape[0]
        if G:  # global rows see every real key: no mask, flash-eligible
            qg = q.view(B, H, nb, b, Dh).index_select(2, plan.glob).view(B, H, G * b, Dh)
            yg = F.scaled_dot_product_attention(qg, k[:, :, :N], v[:, :, :N], scale=scale)
            outs.append(yg.view(B, H * G, b, Dh))
        qu = q.view(B, H * nb, b, Dh)  # units (head, block)
        kvu = qkv[1:].view(2, B, H * nb, b, Dh)
        for grp in plan.groups:
            U = grp.units.shape[0]
            qs = qu.index_select(1, grp.units)  # (B, U, b, Dh)
            ks, vs = kvu.index_select(2, grp.keys).view(2, B, U, -1, Dh).unbind(0)  # (B,U,K·b,Dh)
            outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=grp.mask,
                                                       scale=scale))
        y = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # (B, H·nb, b, Dh)
        if plan.inv is not None:
            y = y.index_select(1, plan.inv)
        return y.view(B, H, Np, Dh)

    def _plan(self, nb: int, b: int, tail: int, device: torch.device) -> _DevicePlan:
        key = (nb, b, tail, device)
        if key not in self._plans:
            if len(self._plans) >= _PLAN_CACHE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = _device_plan(self.pattern(nb), b, tail, device)
        return self._plans[key]

    @staticmethod
    def _real_blocks(valid: torch.Tensor, N: int, b: int) -> list[int] | None:
        """Blocks up to each sequence's last real token, or None when nothing is padding."""
        pos = torch.arange(1, valid.shape[1] + 1, device=valid.device)
        stats = torch.stack([(valid * pos).amax(1), valid.sum(1)]).tolist()  # host sync
        if all(last == N and count == N for last, count in zip(*stats, strict=True)):
            return None
        return [max(1, ceil_div(int(last), b)) for last in stats[0]]

    def _attend_padded(self, q, k, v, valid: torch.Tensor, n_real: list[int],
                       b: int) -> torch.Tensor:
        """Per-sequence patterns (each its real length's): every block of every sequence in
        one masked SDPA, the global rows in another, batch-indexed gathers."""
        B, H, Np, Dh = q.shape
        nb = Np // b
        lengths = sorted(set(n_real))
        tables = [self._padded_pattern(n, nb, q.device) for n in lengths]
        which = torch.tensor([lengths.index(n) for n in n_real], device=q.device)  # (B,)
        idx, ok, own, glob, slot, is_glob = (torch.stack(t)[which] for t in zip(*tables,
                                                                                strict=True))
        K, G = idx.shape[-1], glob.shape[-1]
        bi = torch.arange(B, device=q.device)
        key_units = idx + torch.arange(H, device=q.device).view(H, 1, 1) * nb  # (B, H, nb, K)
        flat = key_units.view(B, -1)  # (B, H·nb·K)
        ks = k.view(B, H * nb, b, Dh)[bi[:, None], flat].view(B, H * nb, K * b, Dh)
        vs = v.view(B, H * nb, b, Dh)[bi[:, None], flat].view(B, H * nb, K * b, Dh)
        key_ok = valid.view(B, nb, b)[bi.view(B, 1, 1, 1), idx] & ok[..., None]  # (B,H,nb,K,b)
        key_ok[..., 0, :] |= own[:, None, :, None]  # rows past the real length: own block
        y = F.scaled_dot_product_attention(q.view(B, H * nb, b, Dh), ks, vs, scale=Dh**-0.5,
                                           attn_mask=key_ok.view(B, H * nb, 1, K * b))
        y = y.view(B, H, nb, b, Dh)
        if not self.params["num_global_blocks"]:
            return y.reshape(B, H, Np, Dh)
        qg = q.view(B, H, nb, b, Dh)[bi[:, None], :, glob]  # (B, G, H, b, Dh)
        qg = qg.transpose(1, 2).reshape(B, H, G * b, Dh)
        yg = F.scaled_dot_product_attention(qg, k, v, attn_mask=valid[:, None, None, :],
                                            scale=Dh**-0.5)
        yg = yg.view(B, H, G, b, Dh)[bi[:, None], :, slot].transpose(1, 2)  # (B, H, nb, b, Dh)
        y = torch.where(is_glob[:, None, :, None, None], yg, y)
        return y.reshape(B, H, Np, Dh)

    def _padded_pattern(self, n: int, nb: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Pattern of an n-block sequence padded to nb blocks, on `device`: idx (H, nb, K),
        ok (H, nb, K), own (nb,) rows past n, glob (g,) (repeats of the first when fewer),
        slot (nb,) position in glob of each global block, is_glob (nb,)."""
        key = (n, nb, device)
        if key not in self._padded:
            if len(self._padded) >= _PLAN_CACHE:
                self._padded.pop(next(iter(self._padded)))
            pat = self.pattern(n)
            H, _, K = pat.idx.shape
            g = max(1, self.params["num_global_blocks"])
            idx = np.broadcast_to(np.arange(nb)[:, None], (H, nb, K)).copy()
            ok = np.zeros((H, nb, K), dtype=bool)
            idx[:, :n], ok[:, :n] = pat.idx, pat.ok
            own = np.arange(nb) >= n
            glob = list(pat.glob)
            glob_pad = np.array((glob + glob[:1] * g)[:g] if glob else [0] * g, dtype=np.int64)
            slot = np.zeros(nb, dtype=np.int64)
            slot[pat.glob] = np.arange(len(glob))
            is_glob = np.zeros(nb, dtype=bool)
            is_glob[pat.glob] = True
            self._padded[key] = tuple(torch.from_numpy(a).to(device) for a in
                                      (idx, ok, own, glob_pad, slot, is_glob))
        return self._padded[key]
