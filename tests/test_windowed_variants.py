"""longformer, poolingformer (bigbird's own tests: test_bigbird.py): agreement with full attention
/ dense masked references, Hugging Face parity (longformer), padding invariance (bigbird too),
errors, and O(N·w) memory. Registry-wide checks live in test_variants_contract.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from lsbench.errors import LsbenchError
from lsbench.measure.memory import track_peak
from lsbench.variants import build
from lsbench.variants.transformer import merge_heads, split_heads

D, H = 32, 4
TOL = dict(atol=1e-5, rtol=1e-5)


def make(name: str, causal: bool = False, **params):
    torch.manual_seed(0)
    return build(name, d_model=D, n_heads=H, causal=causal, **params).eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def padding_mask(batch: int, n: int, n_real_last: int) -> torch.Tensor:
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[-1, n_real_last:] = False
    return mask


def transformer_like(m, causal: bool = False):
    """A full-attention `transformer` with m's qkv/out weights."""
    ref = make("transformer", causal)
    ref.qkv.load_state_dict(m.qkv.state_dict())
    ref.out.load_state_dict(m.out.state_dict())
    return ref


def dense_attention(q, k, v, allowed):
    """Plain masked softmax attention; rows with no allowed key give zeros."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~allowed, torch.finfo(s.dtype).min)
    return (s.softmax(-1) @ v) * allowed.any(-1, keepdim=True)


# --- longformer ----------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [1, 50, 130])
def test_longformer_window_covering_sequence_is_full_attention(causal, n):
    m = make("longformer", causal, window=n)  # every key within ±w
    x, mask = randn(2, n, D), padding_mask(2, n, max(1, n - 9))
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask), transformer_like(m, causal)(x, mask), **TOL)


def test_longformer_global_tokens_with_shared_weights_is_full_attention():
    # global rows see everything, local rows see the globals + a window covering the rest
    m = make("longformer", window=64, global_tokens=3)
    m.qkv_global.load_state_dict(m.qkv.state_dict())
    x, mask = randn(2, 60, D), padding_mask(2, 60, 41)
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask), transformer_like(m)(x, mask), **TOL)


def longformer_reference(m, x, mask):
    """Dense N×N version of Longformer's pattern (window ± w, symmetric global prefix)."""
    B, N, _ = x.shape
    q, k, v = m.project(x)
    i = torch.arange(N)
    dist = i[:, None] - i[None, :]
    band = ((dist >= 0) & (dist <= m.window)) if m.causal else dist.abs() <= m.window
    g = min(m.global_tokens, N)
    is_global = i < g
    allowed = (band & ~is_global[None, :]) | is_global[None, :]
    if m.causal:
        allowed = allowed & (dist >= 0)
    y = dense_attention(q, k, v, allowed[None, None] & mask[:, None, None, :])
    if g:
        wq, wk, wv = m.qkv_global.weight.chunk(3)
        bq, bk, bv = m.qkv_global.bias.chunk(3)
        qg, kg, vg = (split_heads(x @ w.T + b, m.n_heads) for w, b in
                      ((wq, bq), (wk, bk), (wv, bv)))
        allowed_g = mask[:, None, None, :] & ((dist >= 0) if m.causal else True)
        yg = dense_attention(qg, kg, vg, allowed_g)
        y = torch.cat([yg[:, :, :g], y[:, :, g:]], dim=2)
    return m.out(merge_heads(y))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,global_tokens", [(1, 0), (5, 0), (16, 0), (5, 2), (20, 1)])
def test_longformer_matches_dense_band(causal, window, global_tokens):
    m = make("longformer", causal, window=window, global_tokens=global_tokens)
    x, mask = randn(2, 117, D), padding_mask(2, 117, 90)
    with torch.no_grad():
        y, ref = m(x, mask), longformer_reference(m, x, mask)
    torch.testing.assert_close(y[mask], ref[mask], **TOL)


def test_longformer_causal_with_global_tokens_does_not_leak():
    m = make("longformer", causal=True, window=7, global_tokens=2)
    x = randn(1, 40, D)
    with torch.no_grad():
        y = m(x)
        for j in (0, 1, 2, 20, 39):
            x2 = x.clone()
            x2[:, j] += 5 * randn(D, seed=j)
            y2 = m(x2)
            torch.testing.assert_close(y2[:, :j], y[:, :j], **TOL)
            assert not torch.allclose(y2[:, j], y[:, j])


@pytest.mark.parametrize("global_tokens", [0, 2])
def test_longformer_matches_huggingface(global_tokens):
    pytest.importorskip("transformers", reason="HF parity needs `pip install transformers`")
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    w = 8
    m = make("longformer", window=w, global_tokens=global_tokens)
    config = LongformerConfig(hidden_size=D, num_attention_heads=H, attention_window=[2 * w],
                              attention_probs_dropout_prob=0.0)
    hf = LongformerSelfAttention(config, layer_id=0).eval()
    with torch.no_grad():
        for i, proj in enumerate(("query", "key", "value")):
            rows = slice(i * D, (i + 1) * D)
            getattr(hf, proj).weight.copy_(m.qkv.weight[rows])
            getattr(hf, proj).bias.copy_(m.qkv.bias[rows])
            if global_tokens:
                getattr(hf, f"{proj}_global").weight.copy_(m.qkv_global.weight[rows])
                getattr(hf, f"{proj}_global").bias.copy_(m.qkv_global.bias[rows])
    n = 4 * w  # HF wants a multiple of attention_window (its model pads, the layer does not)
    x, mask = randn(2, n, D), padding_mask(2, n, 23)
    hf_mask = torch.zeros(2, n)  # HF layer convention: -10000 padding, 0 local, +10000 global
    hf_mask[~mask] = -10000.0
    hf_mask[:, :global_tokens] = 10000.0
    with torch.no_grad():
        hf_y = hf(x, attention_mask=hf_mask, is_index_masked=hf_mask < 0,
                  is_index_global_attn=hf_mask > 0, is_global_attn=global_tokens > 0)[0]
        ours = m(x, mask)
    torch.testing.assert_close(ours[mask], m.out(hf_y)[mask], **TOL)


# --- bigbird: tests/test_bigbird.py (HF parity, plans, dense reference, FLOPs) ------------


# --- poolingformer -------------------------------------------------------------------------


def poolingformer_reference(m, x, mask):
    """Dense, loop-based restatement: window attention, then attention over pooled segments."""
    B, N, _ = x.shape
    q, k, v = m.project(x)
    i = torch.arange(N)
    dist = i[:, None] - i[None, :]
    h1 = m.window // 2
    band = ((dist >= 0) & (dist <= h1)) if m.causal else dist.abs() <= h1
    y = dense_attention(q, k, v, band[None, None] & mask[:, None, None, :])
    Y = merge_heads(y)
    q2, k2, v2 = (split_heads(t, m.n_heads) for t in m.qkv2(Y).chunk(3, -1))
    kappa, xi = m.kernel, m.stride
    n_seg = -(-N // xi)
    kp, vp = torch.zeros(B, H, n_seg, D // H), torch.zeros(B, H, n_seg, D // H)
    seg_ok = torch.zeros(B, n_seg, dtype=torch.bool)
    for s in range(n_seg):
        toks = [t for t in range(s * xi, s * xi + kappa) if t < N]
        tv = mask[:, toks]  # (B, T)
        seg_ok[:, s] = tv.any(-1)
        if m.pooling == "max":
            fill = ~tv[:, None, :, None]
            ks = k2[:, :, toks].masked_fill(fill, -1e30).amax(2)
            vs = v2[:, :, toks].masked_fill(fill, -1e30).amax(2)
        else:
            if m.pooling == "mean":
                wts = (tv / tv.sum(-1, keepdim=True).clamp(min=1))[:, None].expand(B, H, -1)
            else:
                y_mean = (Y[:, toks] * tv[..., None]).sum(1) / tv.sum(-1, keepdim=True).clamp(min=1)
                logits = m.pool_proj(y_mean).view(B, H, kappa)[:, :, : len(toks)]
                wts = logits.masked_fill(~tv[:, None], -1e30).softmax(-1)
            ks = (k2[:, :, toks] * wts[..., None]).sum(2)
            vs = (v2[:, :, toks] * wts[..., None]).sum(2)
        kp[:, :, s], vp[:, :, s] = ks * seg_ok[:, None, s, None], vs * seg_ok[:, None, s, None]
    s = torch.arange(n_seg)
    twice_dist = 2 * i[:, None] - (2 * s[None, :] * xi + kappa - 1)  # 2·(query - centre)
    band2 = twice_dist.abs() <= m.pool_window
    if m.causal:
        band2 = (s[None, :] * xi + kappa - 1 <= i[:, None]) & (twice_dist <= m.pool_window)
    z = dense_attention(q2, kp, vp, band2[None, None] & seg_ok[:, None, None, :])
    return m.out(merge_heads(y + z))


POOLING_CASES = [
    dict(),  # paper defaults: w1 128, w2 512, ldconv
    dict(window=8, pool_window=20, pool_kernel=3, pool_stride=2),
    dict(window=8, pool_window=21, pool_kernel=4, pool_stride=4, pooling="max"),
    dict(window=6, pool_window=30, pool_kernel=5, pool_stride=3, pooling="mean"),
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("params", POOLING_CASES)
@pytest.mark.parametrize("n", [5, 77, 300])
def test_poolingformer_matches_dense_reference(params, causal, n):
    m = make("poolingformer", causal, **params)
    x, mask = randn(2, n, D), padding_mask(2, n, max(1, 2 * n // 3))
    with torch.no_grad():
        y, ref = m(x, mask), poolingformer_reference(m, x, mask)
    torch.testing.assert_close(y[mask], ref[mask], **TOL)


@pytest.mark.parametrize("params", POOLING_CASES[1:])
def test_poolingformer_causal_small_windows_do_not_leak(params):
    m = make("poolingformer", causal=True, **params)
    x = randn(1, 60, D)
    with torch.no_grad():
        y = m(x)
        for j in (0, 3, 17, 59):
            x2 = x.clone()
            x2[:, j] += 5 * randn(D, seed=j)
            torch.testing.assert_close(m(x2)[:, :j], y[:, :j], **TOL)


# --- padding invariance beyond the defaults (the contract test covers those) ---------------

PADDING_CASES = [
    ("longformer", False, dict(window=5, global_tokens=2)),
    ("longformer", True, dict(window=5, global_tokens=1)),
    ("bigbird", False, dict(block_size=4)),
    ("bigbird", False, dict(block_size=4, num_global_blocks=3, num_random_blocks=1)),
    ("bigbird", False, dict(block_size=4, random_plan="uniform")),
] + [("poolingformer", c, p) for c in (False, True) for p in POOLING_CASES[1:]]


@pytest.mark.parametrize("name,causal,params", PADDING_CASES)
def test_padding_with_junk_does_not_change_real_tokens(name, causal, params):
    m = make(name, causal, **params)
    n_real, n_pad = 53, 38  # crosses several blocks / segments
    x = randn(2, n_real, D)
    junk = 3 * randn(2, n_pad, D, seed=7)
    mask = torch.ones(2, n_real + n_pad, dtype=torch.bool)
    mask[:, n_real:] = False
    with torch.no_grad():
        torch.testing.assert_close(m(torch.cat([x, junk], 1), mask)[:, :n_real], m(x), **TOL)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,params,named",
    [
        ("longformer", dict(window=0), "window"),
        ("longformer", dict(window=-3), "window"),
        ("longformer", dict(global_tokens=-1), "global_tokens"),
        ("bigbird", dict(block_size=0), "block_size"),
        ("bigbird", dict(num_random_blocks=-1), "num_random_blocks"),
        ("bigbird", dict(seed=1.5), "seed"),
        ("bigbird", dict(random_plan="per-head"), "random_plan"),
        ("poolingformer", dict(window=1), "window"),
        ("poolingformer", dict(pool_kernel=0), "pool_kernel"),
        ("poolingformer", dict(pool_stride=6), "pool_stride"),
        ("poolingformer", dict(pooling="avg"), "pooling"),
    ],
)
def test_invalid_parameters_are_named(name, params, named):
    with pytest.raises(LsbenchError, match=named):
        build(name, d_model=D, n_heads=H, **params)


def test_unknown_pooling_suggests_close_match():
    with pytest.raises(LsbenchError, match="Did you mean 'max'"):
        build("poolingformer", d_model=D, n_heads=H, pooling="maxx")


# --- memory: O(N·w), measured ---------------------------------------------------------------


def peak_mib(m, x, mask=None) -> float:
    with torch.no_grad(), track_peak("cpu") as mem:
        m(x, mask)
    return mem.peak_mib


@pytest.mark.parametrize(
    "name,params",
    [("longformer", dict(window=256, global_tokens=1)), ("bigbird", {}), ("poolingformer", {})],
)
def test_memory_grows_linearly_with_padding_mask(name, params):
    torch.manual_seed(0)
    m = build(name, d_model=64, n_heads=4, **params).eval()
    peaks = []
    for n in (2048, 4096):
        mask = torch.ones(1, n, dtype=torch.bool)
        mask[:, -100:] = False  # exercises the masked paths (bigbird's per-sequence pattern)
        peaks.append(peak_mib(m, randn(1, n, 64), mask))
    assert peaks[1] / peaks[0] <= 2.5, f"{name}: {peaks[0]:.1f} -> {peaks[1]:.1f} MiB"
