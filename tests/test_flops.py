"""FLOP counts follow one convention (lsbench/measure/flops.py): useful pairs, causal halves.

Pair counts are checked two independent ways: against the Jacobian of the real forward (output
token i depends on input token j exactly when the pair (i, j) is allowed, for generic weights)
and against hand counts; computed FLOPs are never below useful ones.
"""

from __future__ import annotations

import pytest
import torch

from lsbench.measure.flops import attention_flops, band_pairs, full_pairs, linear_flops
from lsbench.variants import REGISTRY, build
from lsbench.variants.longformer import Longformer
from lsbench.variants.poolingformer import Poolingformer


def jacobian_pairs(name: str, n: int, causal: bool, **params) -> int:
    """Number of (i, j) with ∂y_i/∂x_j != 0 for the real forward (d=8, 2 heads)."""
    torch.manual_seed(0)
    model = build(name, 8, 2, causal=causal, **params).double()
    x = torch.randn(1, n, 8, dtype=torch.double)
    jac = torch.autograd.functional.jacobian(lambda t: model(t), x)  # (1, n, 8, 1, n, 8)
    return int((jac[0, :, :, 0].abs().sum(dim=(1, 3)) > 0).sum())


def test_band_pairs_hand_counts():
    assert band_pairs(5, 1, 1) == 13  # 2 + 3 + 3 + 3 + 2
    assert band_pairs(5, 1, 0) == 9  # 1 + 2 + 2 + 2 + 2
    assert band_pairs(4, 10, 10) == 16 and band_pairs(4, 10, 0) == 10
    assert full_pairs(4, False) == 16 and full_pairs(4, True) == 10


@pytest.mark.parametrize("causal", [False, True])
def test_full_attention_pairs_match_the_forward(causal):
    assert jacobian_pairs("transformer", 9, causal) == full_pairs(9, causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,g", [(2, 0), (3, 2), (20, 0), (1, 1)])
def test_longformer_pairs_match_the_forward(window, g, causal):
    params = {"window": window, "global_tokens": g}
    expected = Longformer.pairs(13, {**Longformer.defaults, **params}, causal)
    assert jacobian_pairs("longformer", 13, causal, **params) == expected


def test_longformer_hand_count():
    # N=6, w=1, first token global, non-causal: rows see 2,3,3,3,3,2 band keys; the global row
    # sees all 6 (+4 beyond its band); rows 2..5 also see key 0 (+4; row 1 has it in its band)
    p = {**Longformer.defaults, "window": 1, "global_tokens": 1}
    assert Longformer.pairs(6, p, causal=False) == 16 + 4 + 4
    # causal w=1: 1,2,2,2,2,2 band; global row 0 sees only itself; rows 2..5 add key 0
    assert Longformer.pairs(6, p, causal=True) == 11 + 4


def _poolingformer_pairs_by_definition(n, p, causal):
    h1 = min(p["window"] // 2, n - 1)
    kappa, xi, w2 = p["pool_kernel"], p["pool_stride"], p["pool_window"]
    level1 = sum(1 for i in range(n) for j in range(n)
                 if (j <= i if causal else True) and abs(i - j) <= h1)
    level2 = 0
    for i in range(n):
        for s in range(-(-n // xi)):
            centre2 = 2 * s * xi + kappa - 1  # doubled centre
            if abs(2 * i - centre2) <= w2 and (not causal or s * xi + kappa - 1 <= i):
                level2 += 1
    return level1, level2


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,window,pool_window,kappa,xi",
                         [(37, 8, 16, 5, 4), (64, 4, 40, 3, 3), (10, 128, 512, 5, 4)])
def test_poolingformer_pairs_by_definition(n, window, pool_window, kappa, xi, causal):
    p = {**Poolingformer.defaults, "window": window, "pool_window": pool_window,
         "pool_kernel": kappa, "pool_stride": xi}
    assert Poolingformer.pairs(n, p, causal) == _poolingformer_pairs_by_definition(n, p, causal)


def test_poolingformer_level1_matches_the_forward():
    # with the pooled level's projections zeroed, the forward is the first level alone
    torch.manual_seed(0)
    n, causal = 21, True
    model = build("poolingformer", 8, 2, causal=causal, window=6).double()
    with torch.no_grad():
        model.qkv2.weight.zero_()
        model.qkv2.bias.zero_()
    x = torch.randn(1, n, 8, dtype=torch.double)
    jac = torch.autograd.functional.jacobian(lambda t: model(t), x)
    found = int((jac[0, :, :, 0].abs().sum(dim=(1, 3)) > 0).sum())
    p = {**Poolingformer.defaults, "window": 6}
    assert found == Poolingformer.pairs(n, p, causal)[0]


def test_transformer_flops_hand_count():
    B, N, D = 2, 10, 16
    proj = 2 * B * N * 4 * D * D
    assert REGISTRY["transformer"].flops(B, N, D, 4, {}) == proj + 4 * B * N * N * D
    causal = REGISTRY["transformer"].flops(B, N, D, 4, {}, causal=True)
    assert causal == proj + 4 * B * 55 * D  # 10·11/2 pairs
    computed = REGISTRY["transformer"].computed_flops(B, N, D, 4, {}, causal=True)
    assert computed == proj + 4 * B * N * N * D
    assert REGISTRY["sdpa"].flops(B, N, D, 4, {}, causal=True) == causal


CASES = [(n, False) for n in sorted(REGISTRY)] + [
    (n, True) for n in sorted(REGISTRY) if REGISTRY[n].supports_causal]


@pytest.mark.parametrize("name,causal", CASES)
def test_computed_is_at_least_useful_and_causal_is_not_more(name, causal):
    cls = REGISTRY[name]
    params = dict(cls.defaults)
    for n in (1, 100, 4096):
        if "max_len" in params:
            params["max_len"] = n
        useful = cls.flops(2, n, 64, 4, params, causal=causal)
        assert 0 < useful <= cls.computed_flops(2, n, 64, 4, params, causal=causal) * (1 + 1e-12)
        if causal:
            assert useful <= cls.flops(2, n, 64, 4, params, causal=False)


@pytest.mark.parametrize("name", ["transformer", "sdpa", "longformer", "poolingformer"])
def test_causal_reaches_flops(name):
    cls = REGISTRY[name]
    args = (1, 4096, 64, 4, dict(cls.defaults))
    assert cls.flops(*args, causal=True) < cls.flops(*args, causal=False)


def test_helpers():
    assert attention_flops(10, 8) == 320 and linear_flops(3, 4, 5) == 120


# bigbird: tests/test_bigbird.py counts FLOPs against the dense per-head allowed mask, and
# checks the forward against that mask.
