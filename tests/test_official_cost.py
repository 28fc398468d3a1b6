"""FLOPs of `linformer`, `fastformer`, `linear`: hand counts, and the matrix products the forward
really dispatches (torch's FlopCounterMode counts mm/bmm/addmm, 2 per multiply-add, and nothing
element-wise, the convention of lsbench.measure.flops).

Hand counts at B=2, N=50, D=32, H=4 (Dh=8); the arithmetic is spelled out next to each number.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lsbench.variants import REGISTRY, build

B, N, D, H = 2, 50, 32, 4
DH = D // H


def counted_flops(module: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def model(name: str, causal: bool = False, **params) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(name, d_model=D, n_heads=H, causal=causal, **params).eval()


def cost(name: str, causal: bool = False, computed: bool = False, n: int = N, **params) -> float:
    cls = REGISTRY[name]
    count = cls.computed_flops if computed else cls.flops
    return count(B, n, D, H, {**cls.defaults, **params}, causal=causal)


# --- linformer: fairseq's order (compress x, then project k rows) ---------------------------

LINFORMER_HEADWISE = (
    2 * 100 * 32 * 64  # q and out over B·N = 100 rows: 409600
    + 2 * (2 * 2 * 16 * 50 * 32)  # E·x and F·x: (k × N) · (N × D) per sample: 204800
    + 2 * (2 * 16) * 32 * 64  # k and v projections over B·k = 32 rows: 131072
    + 2 * 2 * 100 * 16 * 32  # Q·Kᵀ and P·V over 100 × 16 (query, key) pairs: 204800
)


@pytest.mark.parametrize("sharing", ["headwise", "key-value"])
def test_linformer_flops_hand_count_and_dispatched(sharing):
    expected = LINFORMER_HEADWISE - (2 * 2 * 16 * 50 * 32 if sharing == "key-value" else 0)
    params = {"k": 16, "max_len": 64, "sharing": sharing}
    assert cost("linformer", **params) == expected == 950272 - (102400 if sharing != "headwise"
                                                                else 0)
    assert cost("linformer", computed=True, **params) == expected
    m = model("linformer", **params)
    assert counted_flops(m, torch.randn(B, N, D)) == expected


@pytest.mark.parametrize("n", [10, 16])
def test_linformer_below_k_counts_and_dispatches_k_equal_n(n):
    """N <= k = 16: k is capped at N, in the counts (useful and computed) and in the matrix
    products the forward dispatches."""
    params = {"k": 16, "max_len": 64}
    expected = (2 * B * n * D * 2 * D  # q and out
                + 2 * (2 * B * n * n * D)  # E·x and F·x, (N × N) · (N × D) per sample
                + 2 * B * n * D * 2 * D  # k and v over B·N compressed rows
                + 2 * 2 * B * n * n * D)  # Q·Kᵀ and P·V over N × N pairs
    assert cost("linformer", n=n, **params) == expected
    assert cost("linformer", computed=True, n=n, **params) == expected
    assert counted_flops(model("linformer", **params), torch.randn(B, n, D)) == expected
    cls = REGISTRY["linformer"]
    mem = [cls.mem_elems(B, n, D, H, {**cls.defaults, **params, "k": k}) for k in (n, 16)]
    assert mem[0] == mem[1]  # the prediction uses the capped k too


def test_linformer_at_n_128_is_not_twice_full_attention():
    """The default k = 256 at N = 128 (d_model 256, 4 heads): capped, the count is full
    attention's plus the two N × N compressions (4·N²·D), not the ~2x of 256 rows."""
    lin, full = REGISTRY["linformer"], REGISTRY["transformer"]
    args = (1, 128, 256, 4)
    extra = 4 * 128 * 128 * 256
    assert lin.flops(*args, dict(lin.defaults)) == full.flops(*args, dict(full.defaults)) + extra


def test_linformer_costs_less_than_lucidrains_at_long_n():
    """lucidrains projects all N rows to keys/values and compresses after: 2·N·D² each instead
    of 2·k·D² (plus the same compression). `linformer` is in the dev extra: missing, the test
    fails saying so."""
    try:
        lucid = importlib.import_module("linformer")
    except ImportError as e:
        pytest.fail(f"needs 'linformer' ({e}); install the dev extra: pip install -e '.[dev]'")
    n, k = 1024, 64
    peer = lucid.LinformerSelfAttention(D, seq_len=n, k=k, heads=H).eval()
    ours = model("linformer", k=k, max_len=n)
    x = torch.randn(B, n, D)
    peer_flops, our_flops = counted_flops(peer, x), counted_flops(ours, x)
    # the difference is exactly the k/v projections over N rows instead of k rows
    assert peer_flops - our_flops == 2 * (2 * B * (n - k) * D * D)


# --- fastformer: FastSelfAttention + BertSelfOutput.dense --------------------------------------

FASTFORMER = (
    2 * 100 * 32 * (4 * 32)  # query, key, transform, dense over 100 rows: 819200
    + 2 * 100 * 32 * (2 * 4)  # query_att, key_att (D -> H): 51200
    + 2 * (2 * 100 * 32)  # Σ α Q and Σ β P, an N-long weighted sum per feature: 12800
)  # K ⊙ q and k ⊙ Q are element-wise: not counted


def test_fastformer_flops_hand_count_and_dispatched():
    assert cost("fastformer") == cost("fastformer", computed=True) == FASTFORMER == 883200
    assert counted_flops(model("fastformer"), torch.randn(B, N, D)) == FASTFORMER


def test_fastformer_dense_is_its_share_of_the_cost():
    # d = 256, h = 16 (Fig. 2): the dense is one of four D × D layers beside two small D × H ones
    # and the pooling sums, just under a quarter of the sublayer; with the encoder's 4·D FFN
    # (16·D² per row) it is about 8% of a layer
    cls, n, d = REGISTRY["fastformer"], 4096, 256
    total, dense = cls.flops(1, n, d, 16, {}), 2 * n * d * d
    assert total == 2 * n * d * (4 * d + 2 * 16) + 2 * (2 * n * d)
    assert 0.23 < dense / total < 0.25
    assert 0.08 < dense / (total + 2 * n * 2 * d * 4 * d) < 0.085


# --- linear: prefix-sum form (useful) vs the chunked kernel (computed) ------------------------

LINEAR_USEFUL = (
    2 * 100 * 32 * 128  # qkv and out over 100 rows: 819200
    + 2 * (2 * 100 * 32 * (8 + 1))  # build S = φ(K)ᵀ[V 1] and read φ(Q)·S: 115200
)
# chunk 16: N = 50 padded to 64, so 2 · 64 = 128 rows in the chunked kernel
LINEAR_CAUSAL_COMPUTED = (
    2 * 100 * 32 * 128  # projections, before the padding: 819200
    + 2 * (2 * 128 * 32 * (8 + 1))  # per-chunk states and φ(Q)·state over padded rows: 147456
    + 2 * 128 * 32 * 16  # φ(Q)φ(K)ᵀ, a 16 × 16 block per chunk and head: 131072
    + 2 * 128 * 16 * (4 * (8 + 1))  # A·[V 1]: 147456
)


@pytest.mark.parametrize("causal", [False, True])
def test_linear_useful_flops_are_the_prefix_sum_form(causal):
    # causal prefix sums do the same work as the non-causal form: one state update and one
    # read per position
    assert cost("linear", causal=causal, chunk=16) == LINEAR_USEFUL == 934400


def test_linear_computed_flops_hand_count():
    assert cost("linear", computed=False, chunk=16) == cost("linear", computed=True, chunk=16)
    computed = cost("linear", causal=True, computed=True, chunk=16)
    assert computed == LINEAR_CAUSAL_COMPUTED == 1245184
    assert computed > cost("linear", causal=True, chunk=16)
    # one chunk holding everything is the quadratic form: computed grows with the chunk
    assert cost("linear", causal=True, computed=True, chunk=64) > computed


@pytest.mark.parametrize("causal", [False, True])
def test_linear_flops_match_dispatched_matmuls(causal):
    """FlopCounterMode sees the matmuls; the normaliser sums (φ(K) summed over positions, A
    summed over keys) run as `.sum`, which our count books as the state's extra column."""
    m = model("linear", causal=causal, chunk=16)
    counted = counted_flops(m, torch.randn(B, N, D))
    if causal:
        rows = 128  # padded
        sums = 2 * rows * D + 2 * rows * 16 * H  # Σ φ(k) per chunk, A·1 per chunk
        assert counted + sums == cost("linear", causal=True, computed=True, chunk=16)
    else:
        assert counted + 2 * B * N * D == cost("linear")  # Σ φ(k) over positions


def test_linear_memory_prediction_reads_causal():
    cls = REGISTRY["linear"]
    plain = cls.mem_elems(B, 4096, 256, 16, dict(cls.defaults), causal=False)
    causal = cls.mem_elems(B, 4096, 256, 16, dict(cls.defaults), causal=True)
    # chunk scores B·H·N·C and carried states B·H·N·Dh²/C come on top of the activations
    assert causal - plain == B * 16 * 4096 * (64 + 16**2 / 64)
