"""bigbird: the official random plan (equal to HF's draw), HF `BigBirdBlockSparseAttention` parity
with copied weights, a dense per-head reference (plans, g, r, padding, ragged lengths), the
properties that decide GPU speed (fused SDPA calls, cached indices), and FLOP counts against
brute-force counts of the dense allowed mask. Registry-wide checks: test_variants_contract.py,
test_launch_contract.py; padding with junk: test_windowed_variants.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsbench.errors import LsbenchError
from lsbench.measure.flops import attention_flops, linear_flops
from lsbench.variants import bigbird as bb
from lsbench.variants import build
from lsbench.variants.bigbird import BigBird, block_pattern, official_random_blocks
from lsbench.variants.transformer import merge_heads

D, H = 32, 4
TOL = dict(atol=1e-5, rtol=1e-5)
PLANS = ["official", "uniform"]


def make(**params) -> BigBird:
    torch.manual_seed(0)
    return build("bigbird", d_model=D, n_heads=H, **params).eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- dense reference -----------------------------------------------------------------------


def dense_allowed(m: BigBird, n: int) -> torch.Tensor:
    """(H, n, n) allowed (query, key) pairs of m's pattern for n tokens, built from the block
    lists with a plain loop (global rows see everything)."""
    b = min(m.params["block_size"], n)
    nb = -(-n // b)
    pat = m.pattern(nb)
    blocks = torch.zeros(H, nb, nb, dtype=torch.bool)
    for h in range(H):
        for c in range(nb):
            for s in range(pat.idx.shape[-1]):
                if pat.ok[h, c, s]:
                    blocks[h, c, pat.idx[h, c, s]] = True
    blocks[:, torch.from_numpy(pat.glob.copy())] = True
    return blocks.repeat_interleave(b, 1).repeat_interleave(b, 2)[:, :n, :n]


def reference(m: BigBird, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Masked dense softmax per head; each sequence uses the pattern of its real length."""
    B, N, _ = x.shape
    mask = torch.ones(B, N, dtype=torch.bool) if mask is None else mask
    q, k, v = m.project(x)  # (B, H, N, Dh)
    ys = []
    for i in range(B):
        n = int(mask[i].nonzero().max()) + 1
        allowed = torch.zeros(H, N, N, dtype=torch.bool)
        allowed[:, :n, :n] = dense_allowed(m, n)
        allowed &= mask[i]
        s = q[i] @ k[i].transpose(-1, -2) / math.sqrt(D // H)
        ys.append(s.masked_fill(~allowed, -math.inf).softmax(-1).nan_to_num() @ v[i])
    return m.out(merge_heads(torch.stack(ys)))


CASES = [
    dict(block_size=4),
    dict(block_size=4, num_random_blocks=1),
    dict(block_size=3, num_global_blocks=3, num_random_blocks=2),
    dict(block_size=5, num_global_blocks=0, num_random_blocks=2),
    dict(block_size=4, num_global_blocks=1, num_random_blocks=0),
    dict(block_size=2, num_global_blocks=4, num_random_blocks=4),
]


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("params", CASES)
@pytest.mark.parametrize("n", [1, 9, 64, 77])
def test_matches_dense_reference(plan, params, n):
    m = make(random_plan=plan, seed=3, **params)
    x = randn(2, n, D)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference(m, x), **TOL)


@pytest.mark.parametrize("plan", PLANS)
def test_ragged_batch_matches_dense_reference(plan):
    m = make(block_size=4, random_plan=plan)
    x = randn(3, 90, D)
    mask = torch.ones(3, 90, dtype=torch.bool)
    mask[1, 41:] = False
    mask[2, 70:] = False
    mask[2, 10:13] = False  # a hole: masked keys inside the real length
    with torch.no_grad():
        y, ref = m(x, mask), reference(m, x, mask)
    torch.testing.assert_close(y[mask], ref[mask], **TOL)


def test_mixed_lengths_in_a_batch_equal_running_alone():
    m = make(block_size=4)
    x = randn(3, 90, D)
    mask = torch.ones(3, 90, dtype=torch.bool)
    mask[1, 41:] = False
    mask[2, 70:] = False
    with torch.no_grad():
        y = m(x, mask)
        for b, n in ((0, 90), (1, 41), (2, 70)):
            torch.testing.assert_close(y[b : b + 1, :n], m(x[b : b + 1, :n]), **TOL)


def test_mask_without_padding_is_the_unmasked_path():
    m = make(block_size=4)
    x = randn(2, 50, D)
    with torch.no_grad():
        torch.testing.assert_close(m(x, torch.ones(2, 50, dtype=torch.bool)), m(x), atol=0, rtol=0)


def test_padded_path_gradients_are_finite():
    m = make(block_size=4).train()
    x = randn(2, 40, D).requires_grad_()
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 9:] = False  # many blocks past the real length
    (m(x, mask)[mask]).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[mask].abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("n", [1, 20, 48, 45])
def test_uniform_pattern_covering_sequence_is_full_attention(n):
    # 6 blocks of 8: window (3) + globals (2) + 3 uniform random blocks cover every block.
    # (Not with the official plan: its 2nd block may not draw the 2nd-last one.)
    m = make(block_size=8, random_plan="uniform")
    ref = build("transformer", d_model=D, n_heads=H).eval()
    ref.load_state_dict(m.state_dict())
    x = randn(2, n, D)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), **TOL)


def test_dependencies_follow_the_pattern():
    b, nb = 4, 16
    m = make(block_size=b)
    pat = m.pattern(nb)
    x = randn(1, nb * b, D)
    with torch.no_grad():
        y = m(x)
        for j in (1, 5, 9, 14):
            x2 = x.clone()
            x2[:, j * b : (j + 1) * b] += 3 * randn(b, D, seed=j)
            changed = (m(x2) - y).abs().view(nb, b, D).amax((1, 2)) > 1e-6
            seen = (pat.ok & (pat.idx == j)).any(-1).any(0)  # any head's row sees block j
            expected = set(np.nonzero(seen)[0].tolist()) | set(pat.glob.tolist()) | {j}
            assert set(torch.nonzero(changed).flatten().tolist()) == expected


# --- random plans --------------------------------------------------------------------------


def hf_block_sparse(**config):
    """HF's layer; `transformers` is in the dev extra: missing, the test FAILS saying so."""
    try:
        from transformers import BigBirdConfig
    except ImportError as e:
        pytest.fail(f"HF parity needs 'transformers' ({e}); install the dev extra: "
                    f"pip install -e '.[dev]'")
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

    cfg = BigBirdConfig(attention_type="block_sparse", max_position_embeddings=4096, **config)
    return BigBirdBlockSparseAttention(cfg, seed=config.get("seed", 0))


@pytest.mark.parametrize("nb,r", [(12, 3), (13, 3), (40, 3), (9, 1), (20, 2), (30, 5)])
def test_official_plan_is_hf_draw(nb, r):
    """HF draws with np.random after np.random.seed(seed) in training mode (in eval it returns
    all zeros); ours replays the same calls on a private RandomState(seed)."""
    b, seed = 4, 11
    hf = hf_block_sparse(hidden_size=D, num_attention_heads=H, block_size=b,
                         num_random_blocks=r).train()
    plan = hf._get_rand_attn_plan(nb * b, b, r)
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        theirs = np.stack(hf._bigbird_block_rand_mask_with_head(nb * b, nb * b, b, b, H, *plan))
    finally:
        np.random.set_state(state)
    ours, ok = official_random_blocks(nb, H, r, seed)
    assert ok[:, 1:-1].all()
    np.testing.assert_array_equal(ours[:, 1:-1], theirs)  # rows of the global blocks: none


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("nb", [1, 2, 5, 8, 16, 40])
@pytest.mark.parametrize("g,r", [(2, 3), (0, 2), (3, 1), (4, 0), (2, 6)])
def test_pattern_structure(plan, nb, g, r):
    pat = block_pattern(nb, H, g, r, 0, plan)
    glob = set(pat.glob.tolist())
    assert glob == set(range(min(-(-g // 2), nb))) | set(range(max(nb - g // 2, 0), nb))
    assert pat.idx.shape == (H, nb, 3 + g + r)
    for h in range(H):
        for c in range(nb):
            row = pat.idx[h, c][pat.ok[h, c]].tolist()
            if c in glob:
                assert row == []  # dense rows
                continue
            assert len(row) == len(set(row)), "no key block twice"
            fixed = {j for j in (c - 1, c, c + 1) if 0 <= j < nb} | glob
            assert set(row[: len(fixed)]) == fixed
            rand = set(row[len(fixed) :])
            assert not rand & fixed
            legal = nb - len(fixed)
            if plan == "uniform":
                assert len(rand) == min(r, legal)
            else:
                assert len(rand) <= r
                if nb > 2 * r + 5 and g == 2:
                    assert len(rand) == r and max(rand) < 2 * r + 4  # first plan segment


def test_plans_are_per_head_seeded_and_fixed():
    for plan in PLANS:
        a = block_pattern(32, H, 2, 3, 0, plan)
        again = block_pattern.__wrapped__(32, H, 2, 3, 0, plan)  # without the cache
        assert all((x == y).all() for x, y in zip(a, again, strict=True))
        other = block_pattern.__wrapped__(32, H, 2, 3, 1, plan)
        assert not (a.idx == other.idx).all(), "another seed gives another pattern"
        assert not all((a.idx[0] == a.idx[h]).all() for h in range(1, H)), "heads differ"


def test_uniform_plan_spreads_over_the_sequence_official_plan_does_not():
    nb, r = 64, 3
    official = block_pattern(nb, H, 2, r, 0, "official")
    uniform = block_pattern(nb, H, 2, r, 0, "uniform")
    rand = slice(5, None)  # slots after window (3) + globals (2)
    assert official.idx[:, :, rand][official.ok[:, :, rand]].max() < 2 * r + 5
    assert uniform.idx[:, :, rand][uniform.ok[:, :, rand]].max() > nb // 2


def test_same_output_across_calls_and_train_eval():
    m = make(block_size=4)
    x = randn(2, 90, D)
    with torch.no_grad():
        first = m(x)
        torch.testing.assert_close(m(x), first, atol=0, rtol=0)
        m.train()
        torch.testing.assert_close(m(x), first, atol=0, rtol=0)
        full = build("transformer", d_model=D, n_heads=H)
        full.load_state_dict(m.state_dict())
        assert not torch.allclose(first, full(x), atol=1e-3), "pattern must be sparse"


def test_unknown_plan_suggests_close_match():
    with pytest.raises(LsbenchError, match="Did you mean 'uniform'"):
        build("bigbird", d_model=D, n_heads=H, random_plan="unifrom")


# --- Hugging Face parity -------------------------------------------------------------------


def copy_to_hf(m: BigBird, hf) -> None:
    with torch.no_grad():
        for i, proj in enumerate(("query", "key", "value")):
            rows = slice(i * D, (i + 1) * D)
            getattr(hf, proj).weight.copy_(m.qkv.weight[rows])
            getattr(hf, proj).bias.copy_(m.qkv.bias[rows])


@pytest.mark.parametrize("b,r,nb", [(4, 3, 12), (4, 3, 20), (8, 2, 10), (2, 1, 33)])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_huggingface_block_sparse(b, r, nb, padded):
    """HF `BigBirdBlockSparseAttention` with copied q/k/v weights and the same random plan.

    How the plans are made equal: HF's layer in training mode calls np.random.seed(its seed)
    and draws the official plan with np.random; ours draws the same plan from
    RandomState(seed) (test_official_plan_is_hf_draw). The block-sparse layer has no dropout,
    so training mode changes nothing else (eval mode would use all-zero random blocks).
    HF's lengths: a block multiple with nb > 2r + 5 (its sparse path), not 1024/3072/4096
    (its legacy plan). Padding (b - 1 tokens) stays inside the last block, where HF's pattern
    (that of the padded length) and ours (that of the real length) are the same.
    HF returns the context before the output projection: we apply ours to it.
    """
    from transformers import BigBirdModel

    seed = 5
    m = make(block_size=b, num_random_blocks=r, seed=seed)
    hf = hf_block_sparse(hidden_size=D, num_attention_heads=H, block_size=b,
                         num_random_blocks=r, seed=seed).train()
    copy_to_hf(m, hf)
    n, pad = nb * b, (b - 1 if padded else 0)
    x = randn(2, n, D)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n - pad :] = False
    blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(
        mask.float(), b)
    state = np.random.get_state()  # HF reseeds the global numpy RNG
    try:
        with torch.no_grad():
            hf_ctx = hf(x, band, from_mask, to_mask, blocked, blocked)[0]
    finally:
        np.random.set_state(state)
    with torch.no_grad():
        ours = m(x, mask if padded else None)
        torch.testing.assert_close(ours[mask], m.out(hf_ctx)[mask], **TOL)


# --- what decides GPU speed, checked on CPU -------------------------------------------------


class SdpaSpy:
    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, attn_mask=None, **kw):
        self.calls.append((q.dim(), k.dim(), q.shape, attn_mask is not None))
        return self.real(q, k, v, attn_mask=attn_mask, **kw)


@pytest.fixture
def spy(monkeypatch):
    s = SdpaSpy()
    s.real = F.scaled_dot_product_attention
    monkeypatch.setattr(bb.F, "scaled_dot_product_attention", s)
    return s


def test_unpadded_forward_is_three_4d_sdpa_calls_mostly_unmasked(spy):
    b, nb = 8, 16
    m = make(block_size=b)
    with torch.no_grad():
        m(randn(3, nb * b, D))
    assert len(spy.calls) == 3  # global rows, sparse rows, sparse rows with an unused slot
    assert all(qd == 4 and kd == 4 for qd, kd, _, _ in spy.calls), "flash needs 4-D inputs"
    masked = [shape for _, _, shape, has_mask in spy.calls if has_mask]
    assert len(masked) == 1
    # only the 2nd and 2nd-last blocks carry a duplicate slot (block 0 / nb-1 is window and
    # global at once), in every head: 2·H of H·nb units take the masked kernel
    assert masked[0][1] == 2 * H


def test_global_rows_are_never_masked_without_padding(spy):
    m = make(block_size=8)
    with torch.no_grad():
        m(randn(2, 100, D))  # 100 = 12·8 + 4: the last block is padded inside
    assert spy.calls[0][3] is False  # global rows read the N real keys directly
    assert len(spy.calls) == 2  # every sparse row sees the padded last block: one masked call


def test_index_tensors_are_built_once_per_length(monkeypatch):
    built = []
    real = bb._device_plan
    monkeypatch.setattr(bb, "_device_plan", lambda *a: built.append(a[1:3]) or real(*a))
    m = make(block_size=8)
    with torch.no_grad():
        for _ in range(3):
            m(randn(2, 128, D))
        m(randn(5, 128, D))  # batch size does not matter
        m(randn(2, 64, D))
    assert built == [(8, 8), (8, 8)]  # (b, valid tokens of the last block) for nb 16, then 8
    assert len(m._plans) == 2


# --- FLOPs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("params", CASES)
@pytest.mark.parametrize("n", [1, 9, 64, 77])
def test_flops_count_the_allowed_pairs(plan, params, n):
    params = {**BigBird.defaults, **params, "random_plan": plan}
    m = make(**params)
    pairs = dense_allowed(m, n).sum().item() / H  # per head on average
    expected = linear_flops(3 * n, D, 4 * D) + attention_flops(3 * pairs, D)
    assert BigBird.flops(3, n, D, H, params) == pytest.approx(expected, rel=1e-12)
    assert BigBird.computed_flops(3, n, D, H, params) >= BigBird.flops(3, n, D, H, params)


def test_flops_by_hand():
    p = {**BigBird.defaults, "block_size": 8, "random_plan": "uniform"}
    # 6 blocks cover everything: N² pairs
    assert BigBird.flops(1, 48, D, H, p) == 2 * 48 * D * 4 * D + 4 * 48 * 48 * D
    # computed: 2 global blocks × 8 rows × 48 keys + 4 blocks × 8 rows × K·b = 8·8 keys
    computed = 2 * 48 * D * 4 * D + 4 * D * (2 * 8 * 48 + 4 * 8 * 64)
    assert BigBird.computed_flops(1, 48, D, H, p) == computed
    # long sequence, official plan: every sparse row sees 5 + r distinct full blocks except
    # the 2nd and 2nd-last (4 + r); global rows see N
    n, b, r = 64 * 64, 64, 3
    q = {**BigBird.defaults}
    rows = 2 * b * n + (62 - 2) * b * (5 + r) * b + 2 * b * (4 + r) * b
    assert BigBird.flops(1, n, D, H, q) == 2 * n * D * 4 * D + 4 * rows * D


def test_memory_prediction_is_linear_in_n():
    p = dict(BigBird.defaults)
    a, b = (BigBird.mem_elems(2, n, 64, 4, p) for n in (8192, 16384))
    assert 1.9 < b / a < 2.1
