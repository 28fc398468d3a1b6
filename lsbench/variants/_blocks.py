"""Blocked local attention shared by the windowed variants (longformer, poolingformer).

Shape legend: B batch, H heads, Dh head dim, N (padded) query length, L queries per block,
nb = N // L blocks, S keys per block (the span), G extra keys every query sees (global tokens).

Queries are cut into blocks of L; block c looks at one contiguous span of S keys starting at
`k_start + c * k_step`, gathered with `unfold` (a strided view, no copy). A (L, S) boolean
`band` says which (query, key) pairs inside a block's span are allowed; it is the same for every
block because the span slides with the block. All blocks of all sequences are the batch of ONE
`scaled_dot_product_attention` call (no Python loop, so the op count is independent of B and N):
with the fused CPU/CUDA kernels the (L, S) scores exist only tile by tile; with the math fallback
they are (B·nb, H, L, S) — O(N·S) either way, never N×N.
This is the "split into chunks, attend to the neighbouring chunks" scheme of
Longformer's `sliding_chunks` (https://arxiv.org/abs/2004.05150, §3), with chunk = query block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pad_seq(t: torch.Tensor, length: int, dim: int, value: float | bool = 0) -> torch.Tensor:
    """Right-pad `t` along `dim` to `length` (no-op when already that long)."""
    extra = length - t.shape[dim]
    if extra <= 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [0, extra]
    return F.pad(t, pad, value=value)


def key_validity(mask: torch.Tensor | None, batch: int, n: int, length: int,
                 device: torch.device) -> torch.Tensor:
    """(B, length) bool: real tokens True, user padding (mask False) and internal padding False."""
    if mask is None:
        valid = torch.ones(batch, n, dtype=torch.bool, device=device)
    else:
        valid = mask.to(device=device, dtype=torch.bool)
    return pad_seq(valid, length, dim=1, value=False)


def window_band(block: int, window: int, causal: bool, device: torch.device) -> torch.Tensor:
    """(L, S) band for a token-level sliding window of one-sided size `window`.

    Block c holds queries i = c·L + r and sees keys j = c·L - window + t, so i - j = r + window - t;
    allowed is |i - j| <= window (i - j in [0, window] when causal). S = L + 2w (L + w causal).
    """
    span = block + window if causal else block + 2 * window
    r = torch.arange(block, device=device)[:, None]
    t = torch.arange(span, device=device)[None, :]
    dist = r + window - t  # i - j
    if causal:
        return (dist >= 0) & (dist <= window)
    return dist.abs() <= window


def banded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor,
    band: torch.Tensor,
    k_start: int,
    k_step: int,
    extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Softmax attention where query block c sees keys [k_start + c·k_step, … + S) ∩ band.

    q: (B, H, N, Dh), already scaled, N a multiple of L = band.shape[0].
    k, v: (B, H, Nk, Dh) with Nk <= (N / L)·k_step; key_valid: (B, Nk) bool (False = padding,
    never attended).
    extra: optional (k_x (B, H, G, Dh), v_x (B, H, G, Dh), valid_x (B, G)) keys that every query
    sees in addition (Longformer's global keys), normalised in the same softmax.
    Queries with no allowed key at all output zeros (e.g. the first tokens of a causal pooled
    level), so they never average over masked values.
    Returns (B, H, N, Dh).

    Batch and blocks are folded into the batch of ONE `scaled_dot_product_attention` call, so
    the op count depends on neither B nor N (one kernel launch each on CUDA). The key windows
    are strided views: each sequence's keys are laid out in a region of P = nb·k_step rows of
    one flat (B·P, H, Dh) buffer, so window m = b·nb + c starts at row m·k_step + k_start and
    one `unfold` over the flat rows yields all B·nb windows. A window may run into the
    neighbouring sequence's region; those keys are masked by `allowed`, which is built from
    each sequence's own validity.
    """
    B, H, N, Dh = q.shape
    L, S = band.shape
    nb = N // L
    Nk = k.shape[2]
    P = nb * k_step  # rows per sequence in the flat key buffer
    if Nk > P:
        raise ValueError(f"banded_attention: {Nk} keys do not fit {nb} blocks of step {k_step}")
    left = max(0, -k_start)  # rows before the first sequence
    right = max(0, k_start + (nb - 1) * k_step + S - P)  # rows after the last one
    shift = k_start + left  # first window's first row in the padded flat buffer

    def windows(t: torch.Tensor) -> torch.Tensor:  # (B, H, Nk, Dh) -> (B·nb, H, S, Dh) view
        t = pad_seq(t.transpose(1, 2), P, dim=1)  # (B, P, H, Dh)
        t = F.pad(t.reshape(B * P, H, Dh), (0, 0, 0, 0, left, right))  # (left + B·P + right, H, Dh)
        t = t[shift:].unfold(0, S, k_step)[: B * nb]  # (B·nb, H, Dh, S)
        return t.transpose(-1, -2)  # (B·nb, H, S, Dh)

    kw, vw = windows(k), windows(v)
    valid = F.pad(pad_seq(key_valid, P, dim=1), (left, right), value=False)  # (B, left+P+right)
    valid = valid[:, shift:].unfold(1, S, k_step)[:, :nb]  # (B, nb, S)
    allowed = band & valid[:, :, None, :]  # (B, nb, L, S)
    if extra is not None:
        k_x, v_x, valid_x = extra
        G = k_x.shape[2]
        k_x, v_x = (t[:, None].expand(B, nb, H, G, Dh).reshape(B * nb, H, G, Dh)
                    for t in (k_x, v_x))  # (B·nb, H, G, Dh)
        kw, vw = torch.cat([k_x, kw], dim=2), torch.cat([v_x, vw], dim=2)  # (B·nb, H, G+S, Dh)
        allowed = torch.cat([valid_x[:, None, None, :].expand(B, nb, L, G), allowed], dim=-1)
    has_key = allowed.any(-1)  # (B, nb, L)
    qb = q.transpose(1, 2).reshape(B * nb, L, H, Dh).transpose(1, 2)  # (B·nb, H, L, Dh)
    y = F.scaled_dot_product_attention(qb, kw, vw, attn_mask=allowed.flatten(0, 1)[:, None],
                                       scale=1.0)  # (B·nb, H, L, Dh)
    y = torch.where(has_key.view(B * nb, 1, L, 1), y, 0.0)
    return y.transpose(1, 2).reshape(B, N, H, Dh).transpose(1, 2)  # (B, H, N, Dh)


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor,
    window: int,
    causal: bool,
    extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """Each query i sees keys i-window … i+window (… i when causal), O(N·window) memory.

    q, k, v: (B, H, N, Dh) with q already scaled; key_valid (B, N). Any N: queries are padded to
    a multiple of the block internally and the padded rows dropped. Returns (B, H, N, Dh).
    """
    B, H, N, Dh = q.shape
    window = max(0, min(window, N - 1))  # a window past both ends is the whole sequence
    if block is None:
        block = default_block(window)
    block = max(1, min(block, N))
    n_pad = ceil_div(N, block) * block
    q = pad_seq(q, n_pad, dim=2)  # (B, H, n_pad, Dh)
    band = window_band(block, window, causal, q.device)
    y = banded_attention(q, k, v, key_valid, band, k_start=-window, k_step=block, extra=extra)
    return y[:, :, :N]


def default_block(window: int) -> int:
    """Query block size for a window of one-sided size w: about w/2, at least 16.

    The span is block + 2w keys per query against 2w + 1 useful, so a block below the window
    wastes fewer scores (block = w/2: 2.5w per query; block = w: 3w) while keeping each batched
    matmul large enough to run efficiently.
    """
    return max(16, 1 << max(0, window.bit_length() - 2))
