"""How lsbench counts FLOPs: one convention for every variant.

CONVENTION (also shown in the report's methodology):

- **Useful FLOPs** (`Variant.flops`, the `flops` / `gflops_per_s` / `pct_of_peak` columns) are the
  work the *algorithm* needs, as its paper's complexity counts it: 2 FLOPs per multiply-add of
  every matrix product (input/output projections, Q·Kᵀ, P·V, pooling and compression sums), over
  the (query, key) pairs a query is *allowed* to see. A sliding window near the sequence ends
  sees fewer keys; a causal query i sees i + 1 keys (so causal full attention is
  N(N+1)/2 pairs, about half of N²). Element-wise work (softmax, masks, feature maps, ⊙
  products, norms) is not counted, as in FlashAttention's and the usual MFU counts.
- **Computed FLOPs** (`Variant.computed_flops`, the `computed_flops` column) are what the
  implementation's kernels actually multiply: padded blocks, whole key spans of a blocked
  window, the masked upper triangle of a materialised causal score matrix, a linformer or
  pattern slot that is masked out. It equals the useful count where the kernel does no extra
  work. `computed_flops / flops` is the kernel's overhead.
- Both receive `causal`; training rows count forward + backward as 3 × the forward.

`% of peak` is useful FLOP/s over the machine's measured matmul peak: what the method achieves,
not how busy the kernels were.

Helpers below count allowed pairs exactly (vectorised over queries, no N×N mask), so each
variant's `flops` is a short formula over them.
"""

from __future__ import annotations

import numpy as np

CONVENTION = (
    "FLOPs are 2 per multiply-add of every matrix product (projections, Q·Kᵀ, P·V, pooling and "
    "compression sums); element-wise work (softmax, masks, feature maps) is not counted. "
    "flops / gflops_per_s / pct_of_peak count the algorithm's useful work: only the "
    "(query, key) pairs a query may see (window ends trimmed; causal queries see i + 1 keys, "
    "about half of N²). computed_flops counts what the kernels multiply, padding, blocked "
    "spans and masked entries included. Training = 3 × forward."
)


def band_pairs(n: int, left: int, right: int) -> int:
    """Number of pairs (i, j), 0 <= i, j < n, with i - left <= j <= i + right.

    left, right >= 0 are the one-sided reaches (right = 0 for a causal window).
    """
    if n <= 0:
        return 0
    i = np.arange(n, dtype=np.int64)
    lo = np.maximum(i - left, 0)
    hi = np.minimum(i + right, n - 1)
    return int((hi - lo + 1).sum())


def full_pairs(n: int, causal: bool) -> int:
    """All pairs a query may see in full attention: n² or n(n+1)/2 when causal."""
    return n * (n + 1) // 2 if causal else n * n


def attention_flops(pairs: float, d_model: int) -> float:
    """Q·Kᵀ and P·V over `pairs` (query, key) pairs, all heads: 2 products × 2 × D per pair."""
    return 4.0 * pairs * d_model


def linear_flops(rows: float, d_in: int, d_out: int) -> float:
    """A dense layer applied to `rows` vectors."""
    return 2.0 * rows * d_in * d_out
