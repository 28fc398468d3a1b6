"""FlexAttention with a sliding-window block mask, shared by `flex_window` and `flex_causal`.

`torch.nn.attention.flex_attention` (PyTorch >= 2.5; https://pytorch.org/blog/flexattention/)
compiles one fused kernel from a `mask_mod`; a `BlockMask` lists, per 128-row query block, the
key blocks to visit (partial ones apply `mask_mod`, full ones skip it), so a window of w costs
O(N·w) and never touches an N×N mask.

The block lists are built here in closed form from the window reaches (left, right) with tensor
ops on the target device: O((N/128)²) booleans, no evaluation of `mask_mod` over N×N (as
`create_block_mask` without compile would do), no host sync. With a padding mask every visited
block is partial, so `mask_mod` also drops padded keys. Block masks without padding are cached
per (N, device) on the module.

Devices: CUDA only in lsbench. On CPU, torch 2.13 runs flex_attention either eagerly (an
unfused reference that materialises the N×N scores) or compiled by inductor's C++ backend; the
compiled kernel cannot run under lsbench's CPU memory tracker (a TorchDispatchMode, which sees
flex_attention as an opaque higher-order op), so a CPU row could not be measured honestly.
`local` is the same sliding window through SDPA and runs everywhere.

Shape legend: B batch, H heads, N length, Dh head dim, nq = nk = ceil(N / BS) blocks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lsbench.errors import LsbenchError
from lsbench.variants.transformer import QKVAttention, merge_heads

BLOCK = 128  # flex_attention's default BLOCK_SIZE
_compiled = None


def window_blocks(n: int, left: int, right: int, device: torch.device, all_partial: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block lists for keys j with i - left <= j <= i + right, 0 <= i, j < n.

    Returns (kv_num_blocks (1, 1, nq), kv_indices (1, 1, nq, nk), full_kv_num_blocks,
    full_kv_indices): the partial and the full key blocks of each query block, listed first in
    ascending order, as `BlockMask.from_kv_blocks` takes them.
    """
    nb = -(-n // BLOCK)
    start = torch.arange(nb, device=device) * BLOCK  # (nb,) first row of each block
    stop = torch.clamp(start + BLOCK, max=n) - 1  # (nb,) last row (the last block may be short)
    q_lo, q_hi = start[:, None], stop[:, None]  # (nq, 1)
    k_lo, k_hi = start[None, :], stop[None, :]  # (1, nk)
    visit = (k_lo <= q_hi + right) & (k_hi >= q_lo - left)  # some pair in the block is allowed
    full = (k_lo >= q_hi - left) & (k_hi <= q_lo + right)  # every pair is allowed
    if all_partial:
        full = torch.zeros_like(full)
    partial = visit & ~full

    def lists(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True)  # selected first
        return (sel.sum(-1, dtype=torch.int32)[None, None],
                order.to(torch.int32)[None, None])  # (1, 1, nq), (1, 1, nq, nk)

    return (*lists(partial), *lists(full))


def window_block_mask(n: int, left: int, right: int, device: torch.device,
                      key_valid: torch.Tensor | None = None):
    """A BlockMask for the window (and, if given, (B, n) key validity)."""
    from torch.nn.attention.flex_attention import BlockMask

    def mask_mod(b, h, q_idx, kv_idx):
        ok = (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)
        if key_valid is not None:
            ok = ok & key_valid[b, kv_idx]
        return ok

    kv_num, kv_idx, full_num, full_idx = window_blocks(n, left, right, device,
                                                       all_partial=key_valid is not None)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK,
                                    mask_mod=mask_mod, seq_lengths=(n, n))


def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, compiled: bool = True
         ) -> torch.Tensor:
    """flex_attention, compiled once per process (the fused kernel) unless `compiled=False`."""
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention
    if not compiled:
        return flex_attention(q, k, v, block_mask=block_mask)
    if _compiled is None:
        # A worker runs many configs: each new (B, N, dtype, grad mode) recompiles. Past dynamo's
        # recompile limit (8) it would silently run flex_attention eagerly (unfused, N×N
        # scores) and the row would time the wrong kernel; allow a sweep's worth of shapes and
        # make hitting the limit an error (an `error` row) rather than a quiet fallback.
        import torch._dynamo.config as dynamo_config

        limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") \
            else "cache_size_limit"  # its name before torch 2.6
        setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 256))
        if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):
            dynamo_config.fail_on_recompile_limit_hit = True
        _compiled = torch.compile(flex_attention, dynamic=False)
    try:
        return _compiled(q, k, v, block_mask=block_mask)
    except torch.OutOfMemoryError:
        raise  # an `oom` row (and the larger N skipped), not "could not be compiled"
    except Exception as e:  # inductor / triton failures: a result row, not a traceback
        oom = _oom_in_chain(e)
        if oom is not None:
            # a CUDA OOM while compiling or autotuning reaches us wrapped (InductorError,
            # BackendCompilerFailed): still an `oom` row, so the larger N are skipped
            raise torch.OutOfMemoryError(f"{type(oom).__name__}: {oom}"[:500]) from e
        text = f"{type(e).__name__}: {str(e)[:200]}"
        if not _is_compile_failure(e):
            raise LsbenchError(f"flex_attention failed on {q.device} ({text}).") from None
        raise LsbenchError(
            f"flex_attention could not be compiled on {q.device} ({text}); it needs a working "
            f"torch.compile (triton on CUDA). Use 'local' (the same window through SDPA) "
            f"instead."
        ) from None


def _oom_in_chain(e: BaseException) -> BaseException | None:
    """The out-of-memory error in `e`'s chain of causes (dynamo and inductor wrap them)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, torch.OutOfMemoryError | MemoryError) or (
                "out of memory" in str(cur).lower().split("\n", 1)[0]):
            return cur
        cur = getattr(cur, "inner_exception", None) or cur.__cause__ or cur.__context__
    return None


def _is_compile_failure(e: BaseException) -> bool:
    """Raised by dynamo / inductor / triton (compiling), not by the kernel's own checks."""
    module = type(e).__module__ or ""
    return (module.startswith(("torch._dynamo", "torch._inductor", "triton"))
            or "triton" in str(e).lower())


class FlexWindowBase(QKVAttention):
    """Sliding window of one-sided `window` through flex_attention; subclasses set the reach."""

    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    # One query against a cache is what `sdpa`/`local` decode measure; a FlexAttention step
    # would have to build a block mask per token, so no flex decode is claimed.
    decode_unsupported = ("FlexAttention's block masks are built for whole sequences; one "
                          "token against a cache is sdpa's (full) or local's (window) decode")

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params: Any):
        super().__init__(d_model, n_heads, causal, **params)
        self._masks: dict[tuple[int, str], Any] = {}

    def reach(self, n: int) -> tuple[int, int]:
        """(left, right) key reach of a query for length n."""
        raise NotImplementedError

    def forward(self, x, mask=None):
        if x.device.type not in self.devices:
            raise LsbenchError(
                f"variant {self.name!r} runs on {', '.join(self.devices)} only (got "
                f"{x.device.type}): on CPU torch runs flex_attention unfused (N×N scores) or "
                f"compiled where lsbench's CPU memory tracker cannot measure it. Use 'local' "
                f"(the same sliding window through SDPA) on CPU."
            )
        B, N, _ = x.shape
        left, right = self.reach(N)
        if mask is None:
            key = (N, str(x.device))
            if key not in self._masks:
                self._masks[key] = window_block_mask(N, left, right, x.device)
            block_mask = self._masks[key]
        else:
            block_mask = window_block_mask(N, left, right, x.device, mask.to(torch.bool))
        q, k, v = self.project(x)  # 3 × (B, H, N, Dh)
        y = flex(q, k, v, block_mask)  # (B, H, N, Dh), scale 1/√Dh
        return self.out(merge_heads(y))  # (B, N, D)
