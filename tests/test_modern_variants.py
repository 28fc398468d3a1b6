"""performer, nystromformer, local, flex_window/flex_causal, mamba2: parity with the reference
packages, the chunked forms against their plain definitions, FLOPs against hand counts.

The registry-wide contract (shapes, padding, causal leaks, op counts) is in
test_variants_contract.py / test_launch_contract.py. Parity with performer-pytorch and
nystrom-attention needs those packages (the `dev` extra); without them the tests FAIL saying so.
"""

from __future__ import annotations

import importlib
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsbench.errors import LsbenchError
from lsbench.measure.flops import attention_flops, linear_flops
from lsbench.measure.ops import OpCounter
from lsbench.variants import _flex, build
from lsbench.variants.flex_causal import FlexCausal
from lsbench.variants.flex_window import FlexWindow
from lsbench.variants.local import Local
from lsbench.variants.mamba2 import Mamba2, ssd_chunked
from lsbench.variants.nystromformer import Nystromformer
from lsbench.variants.performer import Performer, orthogonal_features
from lsbench.variants.transformer import merge_heads


def reference(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"parity test needs {module!r} ({e}); install the dev extra: "
                    f"pip install -e '.[dev]'")


def randn(*shape: int, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make(name: str, causal: bool = False, d: int = 64, h: int = 4, **params):
    torch.manual_seed(0)
    return build(name, d_model=d, n_heads=h, causal=causal, **params).eval()


# --- performer ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 200])
def test_performer_matches_performer_pytorch(n):
    fast_attention = reference("performer_pytorch").FastAttention
    m = make("performer", nb_features=48)
    ref = fast_attention(dim_heads=16, nb_features=48)
    ref.projection_matrix.copy_(m.projection)
    x = randn(2, n, 64)
    with torch.no_grad():
        q, k, v = m.project(x)
        expected = m.out(merge_heads(ref(q, k, v)))
        torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)


def performer_pair(chunk: int = 16, d: int = 64, h: int = 4):
    """A causal performer and a non-causal one with the same weights, in float64."""
    causal = make("performer", causal=True, d=d, h=h, chunk=chunk).double()
    full = make("performer", d=d, h=h).double()
    full.load_state_dict(causal.state_dict())
    return causal, full


def test_performer_causal_is_noncausal_over_each_prefix():
    """Causal output i is by definition the non-causal output over keys 0..i (float64: the two
    paths differ only in summation order, ~1e-15 relative)."""
    causal, full = performer_pair()
    x = randn(2, 70, 64, dtype=torch.float64)
    with torch.no_grad():
        y = causal(x)
        for i in (0, 1, 15, 16, 40, 69):
            torch.testing.assert_close(y[:, i], full(x[:, : i + 1])[:, i], atol=1e-10, rtol=1e-9)
        # the last token sees every key: its causal output is the full non-causal one
        torch.testing.assert_close(y[:, -1], full(x)[:, -1], atol=1e-10, rtol=1e-9)


def test_performer_causal_gradient_is_the_noncausal_one_at_the_last_token():
    """The last causal output is the non-causal one as a function of x, so are its gradients
    (float64; the in-place feature computation must not disturb autograd)."""
    causal, full = performer_pair()
    x = randn(2, 70, 64, dtype=torch.float64).requires_grad_()
    g = randn(2, 64, seed=3, dtype=torch.float64)
    (gc,) = torch.autograd.grad((causal(x)[:, -1] * g).sum(), x)
    (gf,) = torch.autograd.grad((full(x)[:, -1] * g).sum(), x)
    torch.testing.assert_close(gc, gf, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("scale", [30.0, 1e3])
def test_performer_causal_is_exact_at_any_input_scale(scale):
    """Scaling token j's input never changes outputs 0..j-1 (relative 1e-6; float64), every
    output stays finite and non-zero, and output 0 is v_0 (one key: softmax weight 1). A shift
    shared by the whole sequence fails this: a large later key moves or zeroes earlier outputs."""
    torch.manual_seed(0)
    m = build("performer", d_model=64, n_heads=1, causal=True, chunk=8).double().eval()
    x = randn(1, 41, 64, dtype=torch.float64)
    with torch.no_grad():
        y = m(x)
        for j in range(41):
            x2 = x.clone()
            x2[:, j] *= scale
            y2 = m(x2)
            assert torch.isfinite(y2).all() and (y2.abs().amax(-1) > 0).all()
            torch.testing.assert_close(y2[:, :j], y[:, :j], rtol=1e-6, atol=0)
        x2 = x.clone()
        x2[:, 0] *= scale
        v0 = m.project(x2)[2][:, :, :1]  # (1, H, 1, Dh)
        torch.testing.assert_close(m(x2)[:, :1], m.out(merge_heads(v0)), rtol=1e-6, atol=1e-12)


def test_performer_chunk_size_does_not_change_the_result():
    a, b = make("performer", causal=True, chunk=7), make("performer", causal=True, chunk=64)
    b.load_state_dict(a.state_dict())
    x = randn(1, 100, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-4)


def chi_cdf(r: torch.Tensor, d: int) -> torch.Tensor:
    """CDF of the χ(d) distribution: P(d/2, r²/2), the regularised lower incomplete gamma."""
    return torch.special.gammainc(torch.tensor(d / 2, dtype=r.dtype), r * r / 2)


def test_performer_features_are_orthogonal_blocks_with_chi_norms():
    torch.manual_seed(0)
    w = orthogonal_features(40, 16)  # blocks of 16 rows: 16 + 16 + 8
    assert w.shape == (40, 16)
    for lo, hi in ((0, 16), (16, 32), (32, 40)):
        rows = w[lo:hi] / w[lo:hi].norm(dim=1, keepdim=True)
        torch.testing.assert_close(rows @ rows.t(), torch.eye(hi - lo), atol=1e-5, rtol=0)
    # Row norms ~ χ(16): Kolmogorov–Smirnov against the χ CDF on n = 4096 norms. The 0.1%
    # critical value is 1.95/√n = 0.030; constant √d norms (the plain "orthogonal" variant)
    # give D ≈ 0.5, rescaled-to-mean norms D ≈ 0.5 as well. Seeded, so the test is fixed.
    n, d = 4096, 16
    r = orthogonal_features(n, d).double().norm(dim=1).sort().values
    cdf = chi_cdf(r, d)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max().item()
    assert ks < 1.95 / math.sqrt(n), f"row norms are not χ({d}): KS statistic {ks:.3f}"


def test_performer_redraws_only_in_training_at_the_interval():
    m = make("performer", redraw_interval=2)
    x = randn(1, 8, 64)
    first = m.projection.clone()
    with torch.no_grad():
        m(x), m(x), m(x)  # eval: never
        assert torch.equal(m.projection, first)
        m.train()
        m(x), m(x)  # calls 1 and 2 count up
        assert torch.equal(m.projection, first)
        m(x)  # the third call redraws (performer-pytorch's ProjectionUpdater schedule)
        assert not torch.equal(m.projection, first)
    never = make("performer", redraw_interval=0).train()
    before = never.projection.clone()
    for _ in range(3):
        never(x)
    assert torch.equal(never.projection, before)


def test_performer_flops_hand_count():
    p = dict(Performer.defaults, nb_features=10, chunk=4)
    B, N, D, H, R = 2, 6, 8, 2, 10
    proj = 2 * B * N * D * 4 * D
    feats = 2 * (2 * B * H * N * (D // H) * R)  # φ(q), φ(k)
    state = 2 * B * H * N * R * (D // H)  # Σ φ(k) vᵀ
    read = 2 * B * H * N * R * (D // H) + 2 * B * H * N * R  # φ(q)ᵀS, φ(q)ᵀz
    assert Performer.flops(B, N, D, H, p) == proj + feats + state + read
    assert Performer.flops(B, N, D, H, p, causal=True) == proj + feats + state + read
    # causal chunks: N = 6 padded to 8 rows of 2 chunks of 4
    padded = B * 8
    chunked = (2 * padded * 4 * H * R + 2 * padded * 4 * D  # φ(q)φ(k)ᵀ, A·V per chunk
               + 2 * 2 * padded * R * D + 2 * padded * H * R  # states, read-outs
               + 2 * B * 2 * 2 * (R * D + H * R))  # (M, M) = (2, 2) passing of states, sums
    assert Performer.computed_flops(B, N, D, H, p, causal=True) == proj + feats + chunked
    assert Performer.computed_flops(B, N, D, H, p) == Performer.flops(B, N, D, H, p)


# --- nystromformer --------------------------------------------------------------------------


@pytest.mark.parametrize("n,m", [(256, 64), (200, 16), (199, 16)])
def test_nystromformer_matches_nystrom_attention(n, m):
    """Copied weights; the package's qkv has no bias. Cases where no segment is empty."""
    nystrom = reference("nystrom_attention").NystromAttention
    ours = make("nystromformer", landmarks=m)
    torch.manual_seed(1)
    ref = nystrom(dim=64, dim_head=16, heads=4, num_landmarks=m).eval()
    with torch.no_grad():
        ours.qkv.weight.copy_(ref.to_qkv.weight)
        ours.qkv.bias.zero_()
        ours.out.load_state_dict(ref.to_out[0].state_dict())
        ours.conv.weight.copy_(ref.res_conv.weight)
        x = randn(1, n, 64)
        # an all-True mask makes the package mask its own front padding (n % m != 0)
        expected = ref(x, mask=torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(ours(x), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("n", [5, 64, 200, 333])
def test_nystromformer_mask_path_equals_static_segments(n):
    m = make("nystromformer", d=32, landmarks=16)
    x = randn(2, n, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask=torch.ones(2, n, dtype=torch.bool)), m(x),
                                   atol=1e-5, rtol=1e-5)


def test_nystromformer_is_exact_when_every_token_is_a_landmark():
    """m = N with l = 1: Q̃ = Q, K̃ = K, so the approximation is softmax attention itself once
    the Newton–Schulz pseudo-inverse has converged. With inputs x·0.1 the 8 × 8 kernel
    softmax(Q̃K̃ᵀ) is nearly rank-one (condition number ~6e4 per head): the iteration converges
    in about 22 steps (30 given; 15 leave 2e-6), and the result is exact to about cond·ε. In
    float32 (ε = 6e-8) that is ~4e-3, a tolerance that would test nothing (this CPU shows 2e-4
    and fails 1e-4); in float64 (ε = 1.1e-16) it is ~7e-12 (3e-13 seen), so 1e-9 holds on any
    CPU kernel path (checked with ATEN_CPU_CAPABILITY=default, MKL_ENABLE_INSTRUCTIONS=SSE4_2)."""
    n = 8
    m = make("nystromformer", d=16, h=2, landmarks=n, pinv_iterations=30).double()
    x = randn(1, n, 16, dtype=torch.float64) * 0.1
    with torch.no_grad():
        q, k, v = m.project(x)
        exact = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1) @ v + m.conv(v)
        torch.testing.assert_close(m(x), m.out(merge_heads(exact)), atol=1e-9, rtol=1e-9)


def test_nystromformer_flops_hand_count():
    p = dict(Nystromformer.defaults)  # m = 64, 6 iterations, kernel 33
    B, N, D, H, m = 1, 128, 32, 4, 64
    count = (2 * B * N * D * 4 * D + 2 * 2 * B * N * D  # projections, landmark sums
             + 4 * 2 * B * N * m * D  # QK̃ᵀ, Q̃Kᵀ, softmax(Q̃Kᵀ)V, softmax(QK̃ᵀ)·context
             + 2 * 2 * B * m * m * D + 6 * 4 * 2 * B * H * m**3  # Q̃K̃ᵀ, pinv·, pinv iterations
             + 2 * B * N * D * 33)  # value conv
    assert Nystromformer.flops(B, N, D, H, p) == count
    assert Nystromformer.computed_flops(B, N, D, H, p) == count
    # N < m: only N segments are real, the kernel still multiplies all m
    assert Nystromformer.flops(B, 10, D, H, p) < Nystromformer.computed_flops(B, 10, D, H, p)


# --- local, flex ----------------------------------------------------------------------------


def banded_reference(m, x, window: int, causal: bool) -> torch.Tensor:
    q, k, v = m.project(x)
    n = x.shape[1]
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    allowed = ((i - j).abs() <= window) & ((j <= i) if causal else True)
    s = (q @ k.transpose(-2, -1) / math.sqrt(m.head_dim)).masked_fill(~allowed, float("-inf"))
    return m.out(merge_heads(torch.softmax(s, -1) @ v))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n,w", [(1, 4), (50, 4), (300, 40)])
def test_local_equals_masked_full_attention(causal, n, w):
    m = make("local", causal=causal, window=w)
    x = randn(2, n, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), banded_reference(m, x, w, causal), atol=1e-5,
                                   rtol=1e-5)


def brute_pairs(n: int, left: int, right: int) -> int:
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return int(((j >= i - left) & (j <= i + right)).sum())


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [1, 20, 300, 1000])
def test_window_flops_count_allowed_pairs(causal, n):
    p = {"window": 16}
    B, D, H = 2, 32, 4
    proj = linear_flops(B * n, D, 4 * D)
    useful = proj + attention_flops(B * brute_pairs(n, 16, 0 if causal else 16), D)
    for cls in (Local, FlexWindow):
        assert cls.flops(B, n, D, H, p, causal=causal) == useful
        assert cls.computed_flops(B, n, D, H, p, causal=causal) >= useful
    # local's blocks: L = 16 (w/2 rounded up to >= 16), span L + 2w (L + w causal)
    L = min(16, n)
    span = L + (16 if causal else 32) if n > 16 else L + (min(16, n - 1) * (1 if causal else 2))
    blocks = -(-n // L)
    assert Local.computed_flops(B, n, D, H, p, causal=causal) == proj + attention_flops(
        B * blocks * L * span, D)
    full = proj + attention_flops(B * n * (n + 1) // 2, D)
    assert FlexCausal.flops(B, n, D, H, {}) == full  # always causal


@pytest.mark.parametrize("n", [1, 127, 128, 129, 700])
@pytest.mark.parametrize("left,right", [(0, 0), (3, 3), (130, 130), (300, 0), (10**6, 0)])
def test_flex_block_lists_match_brute_force(n, left, right):
    kv_num, kv_idx, full_num, full_idx = _flex.window_blocks(n, left, right,
                                                             torch.device("cpu"), False)
    nb = -(-n // _flex.BLOCK)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    allowed = (j >= i - left) & (j <= i + right)
    for qb in range(nb):
        rows = allowed[qb * 128:(qb + 1) * 128]
        want_visit = {kb for kb in range(nb) if rows[:, kb * 128:(kb + 1) * 128].any()}
        want_full = {kb for kb in range(nb) if rows[:, kb * 128:(kb + 1) * 128].all()}
        got_partial = set(kv_idx[0, 0, qb, : kv_num[0, 0, qb]].tolist())
        got_full = set(full_idx[0, 0, qb, : full_num[0, 0, qb]].tolist())
        assert got_full == want_full and got_partial == want_visit - want_full
    # flex_causal's computed pairs are whole visited 128×128 blocks
    if (left, right) == (10**6, 0):
        visited = int(kv_num.sum() + full_num.sum()) * 128 * 128
        assert FlexCausal.computed_flops(1, n, 8, 1, {}) == linear_flops(n, 8, 32) + \
            attention_flops(visited, 8)


def test_flex_block_mask_builder_op_count_is_flat_in_n():
    def ops(n):
        with OpCounter() as c:
            _flex.window_block_mask(n, 256, 256, torch.device("cpu"))
        return c.total

    assert ops(16384) <= ops(1024) + 4
    assert ops(16384) < 200


@pytest.mark.parametrize("causal", [False, True])
def test_flex_block_mask_semantics_equal_local_on_cpu_eager(causal):
    """flex_attention's unfused eager path on CPU (small N) with our block mask = `local`."""
    loc = make("local", causal=causal, d=32, window=40)
    flex = make("flex_window", causal=causal, d=32, window=40)
    flex.load_state_dict(loc.state_dict())
    x = randn(2, 300, 32)
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 200:] = False
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        for mk in (None, mask):
            q, k, v = flex.project(x)
            bm = _flex.window_block_mask(300, *flex.reach(300), x.device, mk)
            y = flex.out(merge_heads(_flex.flex(q, k, v, bm, compiled=False)))
            ref = loc(x, mask=mk)
            torch.testing.assert_close(y[0], ref[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(y[1, :200], ref[1, :200], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["flex_window", "flex_causal"])
def test_flex_on_cpu_is_a_clear_error(name):
    with pytest.raises(LsbenchError, match="cuda only.*'local'"):
        make(name)(randn(1, 8, 64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("causal", [False, True])
def test_flex_on_cuda_equals_local_and_sdpa(causal):
    loc = make("local", causal=causal, window=256).cuda()
    flex = make("flex_window", causal=causal, window=256).cuda()
    flex.load_state_dict(loc.state_dict())
    x = randn(2, 1500, 64).cuda()
    mask = torch.ones(2, 1500, dtype=torch.bool, device="cuda")
    mask[1, 1000:] = False
    with torch.no_grad():
        torch.testing.assert_close(flex(x), loc(x), atol=1e-4, rtol=1e-4)
        y, ref = flex(x, mask=mask), loc(x, mask=mask)
        torch.testing.assert_close(y[1, :1000], ref[1, :1000], atol=1e-4, rtol=1e-4)
        sdpa, fc = make("sdpa", causal=True).cuda(), make("flex_causal").cuda()
        fc.load_state_dict(sdpa.state_dict())
        torch.testing.assert_close(fc(x), sdpa(x), atol=1e-4, rtol=1e-4)


# --- mamba2 ---------------------------------------------------------------------------------


def ssd_sequential(X, dA, Bm, Cm):
    """The SSM one token at a time (float64 reference; no code shared with `ssd_chunked`)."""
    Bsz, N, H, P = X.shape
    h = X.new_zeros(Bsz, H, P, Bm.shape[-1])  # (B, H, P, S), as the official step's ssm_state
    ys = []
    for t in range(N):
        h = h * torch.exp(dA[:, t])[:, :, None, None] + torch.einsum(
            "bhp,bn->bhpn", X[:, t], Bm[:, t])
        ys.append(torch.einsum("bhpn,bn->bhp", h, Cm[:, t]))
    return torch.stack(ys, dim=1)


def ssd_inputs(n: int, dtype=torch.float64):
    B, H, P, S = 2, 3, 4, 5
    return (randn(B, n, H, P, seed=1, dtype=dtype), -2 * torch.rand(
        B, n, H, generator=torch.Generator().manual_seed(2), dtype=dtype),
        randn(B, n, S, seed=3, dtype=dtype), randn(B, n, S, seed=4, dtype=dtype))


@pytest.mark.parametrize("n", [1, 37, 128])
@pytest.mark.parametrize("chunk", [1, 8, 32, 256])
def test_ssd_chunked_equals_the_recurrence(n, chunk):
    X, dA, Bm, Cm = ssd_inputs(n)
    torch.testing.assert_close(ssd_chunked(X, dA, Bm, Cm, chunk), ssd_sequential(X, dA, Bm, Cm),
                               atol=1e-10, rtol=1e-9)


def test_ssd_chunked_float32_stays_close():
    X, dA, Bm, Cm = ssd_inputs(300, torch.float32)
    ref = ssd_sequential(*(t.double() for t in (X, dA, Bm, Cm))).float()
    torch.testing.assert_close(ssd_chunked(X, dA, Bm, Cm, 64), ref, atol=1e-4, rtol=1e-4)


def official_mamba2_weights(m) -> dict[str, torch.Tensor]:
    """Our parameters under mamba_ssm `Mamba2`'s names (norm = its gated RMSNorm)."""
    return {"in_proj.weight": m.in_proj.weight, "conv1d.weight": m.conv1d.weight,
            "conv1d.bias": m.conv1d.bias, "dt_bias": m.dt_bias, "A_log": m.A_log, "D": m.D,
            "norm.weight": m.norm_weight, "out_proj.weight": m.out_proj.weight}


def official_mamba2_forward(w: dict[str, torch.Tensor], u: torch.Tensor, headdim: int = 64,
                            d_state: int = 128) -> torch.Tensor:
    """mamba_ssm `Mamba2.forward` restated (ngroups 1, rmsnorm, norm_before_gate=False), with the
    SSD as the sequential recurrence of `Mamba2.step`, written from the official code, not ours.
    """
    B, N, _ = u.shape
    H = w["A_log"].shape[0]
    d_inner = H * headdim
    zxbcdt = u @ w["in_proj.weight"].t()  # order [z, x, B, C, dt]
    z, xBC, dt = zxbcdt.split([d_inner, d_inner + 2 * d_state, H], dim=-1)
    kernel = w["conv1d.weight"][:, 0, :]  # (channels, d_conv): causal depthwise conv
    K = kernel.shape[-1]
    past = torch.cat([xBC.new_zeros(B, K - 1, xBC.shape[-1]), xBC], dim=1)
    conv = w["conv1d.bias"] + sum(past[:, k:k + N] * kernel[:, k] for k in range(K))
    xBC = conv * torch.sigmoid(conv)  # SiLU
    x, Bm, Cm = xBC.split([d_inner, d_state, d_state], dim=-1)
    dt = F.softplus(dt + w["dt_bias"])  # (B, N, H)
    A = -torch.exp(w["A_log"])
    state = u.new_zeros(B, H, headdim, d_state)
    ys = []
    for t in range(N):
        xt = x[:, t].reshape(B, H, headdim)
        dA = torch.exp(dt[:, t] * A)  # (B, H)
        dBx = torch.einsum("bh,bn,bhp->bhpn", dt[:, t], Bm[:, t], xt)
        state = state * dA[:, :, None, None] + dBx
        y = torch.einsum("bhpn,bn->bhp", state, Cm[:, t]) + w["D"][:, None] * xt
        ys.append(y.reshape(B, d_inner))
    y = torch.stack(ys, dim=1)
    y = y * (z * torch.sigmoid(z))  # gate first (norm_before_gate=False) ...
    y = y / torch.sqrt((y * y).mean(-1, keepdim=True) + 1e-5) * w["norm.weight"]  # ... then norm
    return y @ w["out_proj.weight"].t()


def test_mamba2_has_the_official_layout_whatever_n_heads():
    """d_model 256: 8 heads of 64 channels (expand 2, headdim 64), as mamba_ssm `Mamba2`; the
    suite's n_heads changes nothing."""
    shapes = {}
    for n_heads in (4, 16):
        m = build("mamba2", d_model=256, n_heads=n_heads)
        assert m.ssd_n_heads == 8 and m.head_dim == 64
        shapes[n_heads] = {k: tuple(v.shape) for k, v in official_mamba2_weights(m).items()}
    assert shapes[4] == shapes[16]
    assert shapes[4] == {"in_proj.weight": (2 * 512 + 2 * 128 + 8, 256),
                         "conv1d.weight": (512 + 2 * 128, 1, 4), "conv1d.bias": (768,),
                         "dt_bias": (8,), "A_log": (8,), "D": (8,), "norm.weight": (512,),
                         "out_proj.weight": (256, 512)}
    assert Mamba2.defaults == {"d_state": 128, "expand": 2, "d_conv": 4, "headdim": 64,
                               "chunk": 256}
    assert build("mamba2", d_model=256, n_heads=4, headdim=128).ssd_n_heads == 4
    assert "8 SSD heads" in Mamba2.notes(2048, {}, d_model=256, n_heads=16)
    assert Mamba2.notes(2048, {}, d_model=256, n_heads=8) == ""
    with pytest.raises(LsbenchError, match="headdim"):
        build("mamba2", d_model=16, n_heads=4)  # expand·d_model = 32 < 64


@pytest.mark.parametrize("chunk", [16, 256])
def test_mamba2_layer_equals_the_official_forward(chunk):
    """Whole layer, copied weights, float64 on both sides: the chunked SSD and the sequential
    recurrence differ only in summation order (~1e-15 relative), so 1e-9 is loose."""
    m = make("mamba2", d=64, h=4, chunk=chunk).double()  # 2 heads of 64, d_state 128
    with torch.no_grad():
        m.D.copy_(torch.linspace(0.5, 1.5, 2))  # not all ones: D must be per head
        m.norm_weight.copy_(1 + 0.1 * randn(128, seed=5, dtype=torch.float64))
        x = randn(2, 50, 64, dtype=torch.float64)
        expected = official_mamba2_forward(official_mamba2_weights(m), x)
        torch.testing.assert_close(m(x), expected, atol=1e-9, rtol=1e-9)


def test_mamba2_flops_hand_count():
    p = dict(Mamba2.defaults, d_state=4, chunk=8, headdim=8)
    B, N, D, H = 1, 20, 8, 2  # E = 16, heads = E / headdim = 2
    E, S = 16, 4
    layer = 2 * B * N * D * (2 * E + 2 * S + H) + 2 * B * N * (E + 2 * S) * 4 + 2 * B * N * E * D
    assert Mamba2.flops(B, N, D, 7, p) == layer + 4 * B * N * E * S  # n_heads (7) is ignored
    M, padded = 3, 24  # 20 tokens in chunks of 8
    chunked = (2 * padded * 8 * S + 2 * padded * 8 * E + 4 * padded * S * E
               + 2 * B * M * M * S * E)
    assert Mamba2.computed_flops(B, N, D, 7, p) == layer + chunked
    assert Mamba2.flops(B, N, D, H, p, causal=True) == Mamba2.flops(B, N, D, H, p)


def test_flex_compile_keeps_oom_and_refuses_a_silent_eager_fallback(monkeypatch):
    """An OOM inside the compiled kernel stays an OOM (an `oom` row, larger N skipped), and the
    recompile limit is raised and made fatal, so that a sweep's many shapes never fall back to
    the unfused eager flex_attention unnoticed."""
    import torch._dynamo.config as dynamo_config

    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(dynamo_config, limit, 8)
    if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):
        monkeypatch.setattr(dynamo_config, "fail_on_recompile_limit_hit", False)
    monkeypatch.setattr(_flex, "_compiled", None)

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=None: out_of_memory)
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(torch.OutOfMemoryError):
        _flex.flex(q, q, q, block_mask=None)
    assert getattr(dynamo_config, limit) >= 256
    if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):
        assert dynamo_config.fail_on_recompile_limit_hit

    def broken(*args, **kwargs):
        raise RuntimeError("triton not found")

    monkeypatch.setattr(_flex, "_compiled", broken)
    with pytest.raises(LsbenchError, match="could not be compiled"):
        _flex.flex(q, q, q, block_mask=None)
