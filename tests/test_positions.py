"""Position methods against their papers' formulas, and the causal LM's contract for each."""

from __future__ import annotations

import math

import pytest
import torch

from lsbench import positions
from lsbench.errors import LsbenchError
from lsbench.models import CausalLM, CausalLMConfig
from lsbench.positions.alibi import alibi_slopes
from lsbench.positions.t5 import relative_position_bucket

ALL = sorted(positions.REGISTRY)


pytestmark = pytest.mark.usefixtures("one_thread")


def official_alibi_slopes(n):
    """Verbatim logic of get_slopes in github.com/ofirpress/attention_with_linear_biases."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (get_slopes_power_of_2(closest_power_of_2)
            + official_alibi_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])


def test_alibi_slopes_8_heads_are_half_to_1_over_256():
    assert alibi_slopes(8).tolist() == [2.0**-k for k in range(1, 9)]


@pytest.mark.parametrize("n", [1, 2, 4, 6, 12, 16, 20])
def test_alibi_slopes_match_official_formula(n):
    expected = torch.tensor(official_alibi_slopes(n), dtype=torch.float32)
    assert torch.equal(alibi_slopes(n), expected)


def test_alibi_slopes_non_power_of_two_interleave():
    # 6 heads: the 4-head slopes, then every other 8-head slope (1/2, 1/8)
    assert alibi_slopes(6).tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]


def test_alibi_bias_is_minus_slope_times_distance():
    pe = positions.build("alibi", n_heads=8, head_dim=4)
    q, k = torch.arange(10), torch.arange(10)
    bias = pe(q, k)
    assert bias.shape == (8, 10, 10)
    for h, m in enumerate(alibi_slopes(8).tolist()):
        for i in range(10):
            for j in range(i + 1):
                assert bias[h, i, j].item() == pytest.approx(-m * (i - j))


def t5_bucket_formula(n, num_buckets=32, max_distance=128):
    max_exact = num_buckets // 2
    if n < max_exact:
        return n
    b = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                        * (num_buckets - max_exact))
    return min(b, num_buckets - 1)


def test_t5_buckets_match_formula():
    d = [0, 1, 15, 16, 17, 100, 127, 128, 1000]
    got = relative_position_bucket(torch.tensor(d)).tolist()
    assert got == [t5_bucket_formula(n) for n in d]
    assert got == [0, 1, 15, 16, 16, 30, 31, 31, 31]


def test_t5_bias_is_per_bucket_and_head():
    pe = positions.build("t5", n_heads=3, head_dim=4)
    torch.nn.init.normal_(pe.emb.weight)
    pos = torch.arange(300)
    bias = pe(pos[-5:], pos)  # (H, 5, 300)
    assert bias.shape == (3, 5, 300)
    i, j = 299, 299 - 200  # distance 200 -> last bucket
    assert torch.equal(bias[:, 4, j], pe.emb.weight[31])
    assert torch.equal(bias[:, 4, i], pe.emb.weight[0])


@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (2, 3), (64, 1000)])
def test_t5_bias_at_every_distance_is_its_bucket_row(num_buckets, max_distance):
    """Up to 20000 back (far past max_distance), against the formula written in this file."""
    pe = positions.build("t5", n_heads=3, head_dim=4, num_buckets=num_buckets,
                         max_distance=max_distance)
    torch.nn.init.normal_(pe.emb.weight)
    d = torch.arange(20001)
    bias = pe(d[-1:], d)[:, 0].flip(-1)  # (H, 20001): distance 0 .. 20000
    buckets = [t5_bucket_formula(n, num_buckets, max_distance) for n in range(20001)]
    assert torch.equal(bias, pe.emb.weight[buckets].T)


def test_rotary_score_depends_only_on_offset():
    pe = positions.build("rotary", n_heads=2, head_dim=16)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 1, 16, generator=g), torch.randn(1, 2, 1, 16, generator=g)

    def score(m, n):
        return (pe(q, torch.tensor([m])) * pe(k, torch.tensor([n]))).sum(-1)

    for m, n, shift in [(5, 2, 100), (7, 7, 3000), (0, 0, 8191), (40, 1, 12345)]:
        torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(5, 2), score(5, 3))  # but it does depend on the offset


def test_sinusoidal_matches_formula():
    pe = positions.build("sinusoidal", n_heads=2, head_dim=8)  # D = 16
    table = pe(torch.tensor([0, 1, 7, 500, 8191]))
    for row, p in enumerate([0, 1, 7, 500, 8191]):
        for i in range(8):
            angle = p / 10000 ** (2 * i / 16)
            assert table[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_learned_fails_past_its_table_instead_of_wrapping():
    pe = positions.build("learned", n_heads=2, head_dim=4, max_len=16)
    assert pe(torch.arange(16)).shape == (16, 8)
    with pytest.raises(LsbenchError, match="table of 16 positions"):
        pe(torch.arange(17))


def test_registry_kinds_and_listing():
    kinds = {name: cls.kind for name, cls in positions.REGISTRY.items()}
    assert kinds == {"none": "none", "sinusoidal": "absolute", "learned": "absolute",
                     "rotary": "rotary", "t5": "bias", "alibi": "bias", "xpos": "rotary",
                     "kerple_log": "bias", "kerple_power": "bias", "fire": "bias",
                     "rope_pi": "rotary", "rope_ntk": "rotary", "rope_yarn": "rotary",
                     "xpos_bca": "rotary"}
    rows = positions.list_rows()
    assert [r["name"] for r in rows] == ALL
    assert all(r["paper"] and r["method"] for r in rows)


def test_build_rejects_unknown_name_and_parameters():
    with pytest.raises(LsbenchError, match="Did you mean 'alibi'"):
        positions.build("alibii", n_heads=2, head_dim=4)
    with pytest.raises(LsbenchError, match="num_buckets"):
        positions.build("t5", n_heads=2, head_dim=4, num_bucket=8)
    with pytest.raises(LsbenchError, match="takes no parameters"):
        positions.build("alibi", n_heads=2, head_dim=4, slope=1)
    with pytest.raises(LsbenchError, match="even head_dim"):
        positions.build("rotary", n_heads=2, head_dim=5)


def tiny_lm(name, chunk_elems=2**24):
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig(name, d_model=16, n_heads=4, n_layers=2, train_len=48,
                                    attn_chunk_elems=chunk_elems)).eval()
    if name == "t5":  # zero-initialised table: make the bias matter
        torch.nn.init.normal_(model.pe.emb.weight)
    return model


@pytest.mark.parametrize("name", ALL)
def test_causal_lm_never_looks_ahead(name):
    model = tiny_lm(name, chunk_elems=4 * 48 * 5)  # forces query chunks of 5 rows
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 48), generator=g)
    with torch.no_grad():
        base = model(x)
        for j in (0, 1, 17, 47):
            y = x.clone()
            y[:, j] = (y[:, j] + 101) % 256
            out = model(y)
            torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=0)
            assert not torch.allclose(out[:, j], base[:, j])


@pytest.mark.parametrize("name", ALL)
def test_query_chunks_equal_one_shot_attention(name):
    x = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = tiny_lm(name)(x)
        chunked = tiny_lm(name, chunk_elems=4 * 40 * 7)(x)  # 7-row chunks, first one shorter
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


def test_bias_chunks_without_translation_invariance_match():
    model = tiny_lm("alibi", chunk_elems=4 * 40 * 6)
    x = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        slab = model(x)
        model.pe.translation_invariant = False  # per-chunk bias, the path FIRE-like methods take
        per_chunk = model(x)
    torch.testing.assert_close(slab, per_chunk, atol=1e-6, rtol=1e-6)


def test_long_window_never_builds_a_full_score_matrix():
    """At N=2048 with a 2^16-element budget, no (H, N, N) tensor may be allocated."""
    from lsbench.measure.memory import track_peak

    n = 2048
    model = tiny_lm("alibi", chunk_elems=2**16)
    x = torch.randint(0, 256, (1, n))
    with torch.no_grad(), track_peak("cpu") as mem:
        model(x)
    full_scores_mib = 4 * n * n * 4 / 2**20  # one fp32 (H, N, N) tensor = 64 MiB
    assert mem.peak_mib < full_scores_mib / 4


# --- attention with each position method against a reference written from its paper ---------
# The reference never calls the position module: it restates each formula (from the paper and
# the code its authors published) and reads only the module's *learned* values (KERPLE's r1/r2,
# FIRE's c, threshold multiplier and MLP weights, T5's table). Float64 throughout, so the two
# sides differ only by rounding (~1e-16 per op, summed over Dh and N keys): 1e-10 is loose for
# that and far below the smallest effect a broken formula has (>= 1e-4 in these cases).
# name -> (d_model, n_heads, train_len, N, extra position params); N > train_len wherever a
# method changes past L (FIRE's max(i, L), the RoPE scalings' s = N/L), and head_dim 32 for the
# RoPE scalings: YaRN's ramp then runs from pair 1 to pair 8 (pairs strictly between "kept" and
# "interpolated"), and doubling β_fast or β_slow moves its ends.
REFERENCE_CASES = {
    "none": (16, 4, 48, 37, {}),
    "rotary": (32, 2, 48, 37, {}),
    "t5": (16, 4, 48, 37, {}),
    "alibi": (16, 4, 48, 37, {}),
    "xpos": (32, 2, 48, 37, {}),  # scale_base: the paper's 512
    "xpos_bca": (32, 2, 16, 37, {}),  # blocks of L/2 = 8: 5 blocks, the last one partial
    "kerple_log": (16, 4, 48, 37, {}),
    "kerple_power": (16, 4, 48, 37, {}),
    "fire": (16, 4, 16, 37, {}),  # L = 16 < i for most queries: the normaliser is ψ(i)
    "rope_pi": (32, 1, 512, 1100, {}),  # s = 1100/512
    "rope_ntk": (32, 1, 512, 1100, {}),
    "rope_yarn": (32, 1, 512, 1100, {}),
}
BASE = 10000.0


def rotate(x, angle):
    """Turn pair i = (x_i, x_{i+Dh/2}) (GPT-NeoX layout), as the complex x_i + j·x_{i+Dh/2}, by
    angle (N, Dh/2): x (B, H, N, Dh)."""
    h = x.shape[-1] // 2
    z = torch.complex(x[..., :h], x[..., h:]) * torch.exp(1j * angle)
    return torch.cat((z.real, z.imag), dim=-1)


def reference_qk(name, q, k, d, L):
    """q, k (B, H, N, Dh) rotated/scaled as the method's paper and reference code define it."""
    N = q.shape[2]
    m = torch.arange(N, dtype=torch.float64)[:, None]  # (N, 1)
    i = torch.arange(d // 2, dtype=torch.float64)  # pair index
    theta = BASE ** (-2 * i / d)  # RoFormer: θ_i = 10000^(-2i/d)
    s = max(1.0, N / L)
    q_scale = k_scale = 1.0
    if name in ("rotary", "xpos", "xpos_bca"):
        angle = m * theta
    elif name == "rope_pi":  # Chen et al. eq. 4: position m -> m·L/L'
        angle = m / s * theta
    elif name == "rope_ntk":  # bloc97, YaRN eq. 16: base' = base · s^(d/(d-2))
        angle = m * (BASE * s ** (d / (d - 2))) ** (-2 * i / d)
    elif name == "rope_yarn":  # HF _compute_yarn_parameters (β_fast 32, β_slow 1)
        def corr(turns):
            return d * math.log(L / (turns * 2 * math.pi)) / (2 * math.log(BASE))
        low, high = max(math.floor(corr(32)), 0), min(math.ceil(corr(1)), d - 1)
        extrapolate = 1 - ((i - low) / (high - low)).clamp(0, 1)
        angle = m * (theta / s * (1 - extrapolate) + theta * extrapolate)
        q_scale = k_scale = 0.1 * math.log(s) + 1  # on cos and sin, so on both q and k
    else:
        return q, k
    q, k = rotate(q, angle), rotate(k, angle)
    if name in ("xpos", "xpos_bca"):  # torchscale XPOS: ζ_i = (2i + 0.4d)/(1.4d),
        # q·ζ^(m/512), k·ζ^(-n/512)
        zeta = (2 * i + 0.4 * d) / (1.4 * d)
        up = torch.cat((zeta, zeta)) ** (m / 512)  # (N, Dh): both members of a pair
        q_scale, k_scale = up, 1 / up
    return q * q_scale, k * k_scale


def reference_bias(name, pe, N):
    """(H, N, N) additive bias for query i, key j <= i (Δ = i - j), or 0."""
    i = torch.arange(N, dtype=torch.float64)
    delta = (i[:, None] - i[None, :]).clamp(min=0)  # (N, N)
    if name == "alibi":
        slopes = torch.tensor(official_alibi_slopes(pe.n_heads), dtype=torch.float64)
        return -slopes[:, None, None] * delta
    if name == "t5":
        table = pe.emb.weight.double()[[t5_bucket_formula(n) for n in range(N)]]  # (N, H)
        return table[delta.long()].permute(2, 0, 1)
    if name in ("kerple_log", "kerple_power"):  # official clamps: r >= 0.01, power <= 2
        r1 = pe.r1.double().clamp(min=0.01)[:, None, None]
        if name == "kerple_log":  # ParallelKerpleLog: -p·log(1 + a·Δ)
            return -r1 * torch.log(1 + pe.r2.double().clamp(min=0.01)[:, None, None] * delta)
        return -r1 * delta ** pe.r2.double().clamp(0.01, 2)[:, None, None]  # -a·Δ^p
    if name == "fire":  # Li et al. eq. 3-4: f(ψ(Δ)/ψ(max(i, L))), ψ(x) = log(|c·x| + 1)
        c, threshold = pe.c.double(), abs(pe.l_mult.double() * pe.params["train_len"])
        x = torch.log(abs(c * delta) + 1) / (
            torch.log(abs(c * torch.maximum(i, threshold)) + 1)[:, None] + 1e-6)
        w1, b1 = pe.mlp[0].weight.double(), pe.mlp[0].bias.double()  # (W, 1), (W,)
        w2, b2 = pe.mlp[2].weight.double(), pe.mlp[2].bias.double()  # (H, W), (H,)
        return (torch.relu(x[..., None] * w1[:, 0] + b1) @ w2.T + b2).permute(2, 0, 1)
    return 0.0


def reference_attention(attn, name, pe, x, L):
    """softmax(q·k/√Dh + bias + causal mask)·v, every position formula written out."""
    B, N, D = x.shape
    q, k, v = (t.view(B, N, pe.n_heads, -1).transpose(1, 2) for t in attn.qkv(x).chunk(3, -1))
    q, k = reference_qk(name, q, k, pe.head_dim, L)
    scores = q @ k.transpose(-1, -2) / math.sqrt(pe.head_dim) + reference_bias(name, pe, N)
    i = torch.arange(N)
    hidden = i[None, :] > i[:, None]  # (N, N) future keys
    if name == "xpos_bca":  # Sun et al. §3.3: blocks of L/2, own block and the previous one
        hidden |= i[None, :] // (L // 2) < i[:, None] // (L // 2) - 1
    scores = scores.masked_fill(hidden, float("-inf"))
    return attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D))


def reference_case_lm(name, chunk_rows=None):
    d_model, n_heads, train_len, n, params = REFERENCE_CASES[name]
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig(
        name, d_model=d_model, n_heads=n_heads, n_layers=1, train_len=train_len,
        position_params=params,
        attn_chunk_elems=n_heads * n * chunk_rows if chunk_rows else 2**24)).double().eval()
    attn = model.blocks[0].attn
    # scores of order 1-10 (the LM's init gives ~1e-3, where a wrong position formula changes
    # the output by less than float rounding): the position terms must decide the weights
    torch.nn.init.normal_(attn.qkv.weight, std=0.5)
    with torch.no_grad():
        if name == "t5":
            torch.nn.init.normal_(model.pe.emb.weight)
        if name == "fire":  # away from the initial values, so c and L are read, not assumed
            model.pe.c.fill_(0.3)
            model.pe.l_mult.fill_(1.25)
    return model, n


@pytest.mark.parametrize("name", sorted(REFERENCE_CASES))
@pytest.mark.parametrize("chunk_rows", [None, 5])  # one call, or query chunks of 5 rows
def test_attention_equals_reference_written_from_the_paper(name, chunk_rows):
    model, n = reference_case_lm(name, chunk_rows)
    attn = model.blocks[0].attn
    x = torch.randn(2, n, attn.qkv.in_features, generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64)
    pos = torch.arange(n)
    with torch.no_grad():
        got = attn(x, model.pe, pos, model._bias_fn(pos, x.dtype))
        ref = reference_attention(attn, name, model.pe, x, model.cfg.train_len)
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-10)


def test_reference_cases_cover_every_relative_method():
    """A new bias or rotary method must get a reference here, not pass by default."""
    relative = {n for n, c in positions.REGISTRY.items() if c.kind in ("bias", "rotary")}
    assert relative <= set(REFERENCE_CASES)


def test_same_seed_gives_every_method_the_same_shared_weights():
    def weights(name):
        torch.manual_seed(0)
        return CausalLM(CausalLMConfig(name, d_model=16, n_heads=4, n_layers=2,
                                       train_len=48)).state_dict()

    ref = weights("alibi")
    for name in ALL:
        sd = weights(name)
        for key in ref.keys() & sd.keys():
            assert torch.equal(sd[key], ref[key]), (name, key)
