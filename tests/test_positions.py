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
                     "rope_pi": "rotary", "rope_ntk": "rotary", "rope_yarn": "rotary"}
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


def naive_attention(attn, pe, x):
    """softmax(q·k/√Dh + bias + causal mask)·v written out in full, as the reference."""
    from lsbench.positions.base import relative_distance

    B, N, D = x.shape
    pos = torch.arange(N)
    q, k, v = (t.view(B, N, pe.n_heads, -1).transpose(1, 2) for t in attn.qkv(x).chunk(3, -1))
    if pe.kind == "rotary":
        q, k = pe(q, pos), pe(k, pos, is_key=True)
    scores = q @ k.transpose(-1, -2) / math.sqrt(pe.head_dim)  # (B, H, N, N)
    dist = relative_distance(pos, pos)
    if pe.name == "alibi":
        scores = scores - alibi_slopes(pe.n_heads)[:, None, None] * dist
    elif pe.name == "t5":
        scores = scores + pe.emb.weight[relative_position_bucket(dist)].permute(2, 0, 1)
    elif pe.kind == "bias":  # formulas tested on their own in test_new_positions.py
        scores = scores + pe(pos, pos)
    scores = scores.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
    return attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D))


@pytest.mark.parametrize("name", ["none", "rotary", "t5", "alibi", "xpos", "kerple_log",
                                  "kerple_power", "fire", "rope_yarn"])
@pytest.mark.parametrize("chunk_elems", [2**24, 4 * 37 * 5])
def test_attention_equals_naive_reference(name, chunk_elems):
    model = tiny_lm(name, chunk_elems=chunk_elems)
    attn = model.blocks[0].attn
    x = torch.randn(2, 37, 16, generator=torch.Generator().manual_seed(4))
    pos = torch.arange(37)
    with torch.no_grad():
        got = attn(x, model.pe, pos, model._bias_fn(pos, x.dtype))
        torch.testing.assert_close(got, naive_attention(attn, model.pe, x), atol=1e-6, rtol=1e-5)


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
