"""xPos with blockwise causal attention at evaluation (`xpos+bca`, Sun et al. 2023 §3.3): blocks
of L/2, each query sees its own block and the previous one; the xpos checkpoint is rescored."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.models import CausalLM, CausalLMConfig
from lsbench.positions.xpos_bca import blockwise_causal_attention

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
L = 32  # training length in these tests: blocks of 16


def dense_reference(q, k, v, block):
    """softmax over an (N, N) mask written from the paper's rule: key j <= i is seen iff
    j // block >= i // block - 1."""
    n = q.shape[2]
    i = torch.arange(n)
    seen = (i[None, :] <= i[:, None]) & (i[None, :] // block >= i[:, None] // block - 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return scores.masked_fill(~seen, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("n", [1, 15, 16, 17, 48, 61])
@pytest.mark.parametrize("max_elems", [2**24, 2 * 3 * 16 * 32])  # one call; one block per call
def test_blockwise_attention_equals_the_masked_reference(n, max_elems):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) * 2 for _ in range(3))
    got = blockwise_causal_attention(q, k, v, 16, max_elems)
    torch.testing.assert_close(got, dense_reference(q, k, v, 16), atol=1e-12, rtol=1e-12)
    if n <= 32:  # two blocks cover everything: plain causal attention
        full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(got, full, atol=1e-12, rtol=1e-12)


def lm(name, n_layers=1):
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig(name, d_model=32, n_heads=2, n_layers=n_layers,
                                    train_len=L)).double().eval()
    for block in model.blocks:  # sharp attention, so every visible key matters
        torch.nn.init.normal_(block.attn.qkv.weight, std=0.5)
    return model


def test_up_to_the_training_length_it_is_plain_xpos():
    xpos, bca = lm("xpos", 2), lm("xpos_bca", 2)
    bca.load_state_dict(xpos.state_dict())  # strict: the same weights, nothing of its own
    x = torch.randint(0, 256, (2, L), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for n in (1, L // 2 + 3, L):
            assert torch.equal(bca(x[:, :n]), xpos(x[:, :n]))
        longer = torch.cat((x, x), dim=1)
        assert not torch.allclose(bca(longer), xpos(longer))  # past L the window cuts in


@pytest.mark.parametrize("n_layers", [1, 2])
def test_past_the_training_length_a_token_sees_back_one_block_per_layer(n_layers):
    """Perturb token j; output i may change only if j is in i's block or the n_layers blocks
    before it (information moves one block back per layer), and must change for j in the
    furthest of those (so the window is not narrower than the paper's)."""
    model, block, n = lm("xpos_bca", n_layers), L // 2, 5 * L // 2 + 5  # 5 blocks + 5
    x = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = model(x)
        for j in (0, 7, block + 3, 2 * block):
            y = x.clone()
            y[0, j] = (y[0, j] + 101) % 256
            changed = (model(y) - base)[0].abs().amax(-1) > 1e-12  # (n,)
            for i in range(n):
                reach = i // block - j // block  # blocks back from i to j
                assert changed[i].item() == (j <= i and reach <= n_layers), (j, i)


def test_score_memory_grows_linearly_in_the_window():
    """Doubling N doubles the peak (O(N·L) scores), where any (N, N) tensor would quadruple
    its part; at N = 8192 one fp32 (H, N, N) tensor alone would be 1 GiB."""
    from lsbench.measure.memory import track_peak

    model = CausalLM(CausalLMConfig("xpos_bca", d_model=16, n_heads=4, n_layers=1,
                                    train_len=128)).eval()
    peaks = []
    for n in (4096, 8192):
        with torch.no_grad(), track_peak("cpu") as mem:
            model(torch.randint(0, 256, (1, n)))
        peaks.append(mem.peak_mib)
    assert peaks[1] < 2.5 * peaks[0] and peaks[1] < 1024 / 16


def test_cli_xpos_bca_rescores_the_xpos_checkpoint(tmp_path):
    out = tmp_path / "r"
    res = runner.invoke(app, ["extrapolate", "--preset", "tiny", "--train-len", "16",
                              "--train-tokens", "4096", "--positions", "xpos+bca,none",
                              "--stride", "0", "--eval-lens", "1x,4x", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with open(out / "extrapolation.csv") as f:
        ppl = {(r["position"], int(r["eval_len"])): float(r["ppl"]) for r in csv.DictReader(f)}
    assert {p for p, _ in ppl} == {"xpos", "xpos+bca", "none"}  # xpos brought in, trained once
    assert ppl["xpos+bca", 16] == ppl["xpos", 16]
    assert ppl["xpos+bca", 64] != ppl["xpos", 64]
    with open(out / "training.csv") as f:
        assert [t["position"] for t in csv.DictReader(f)] == ["xpos", "none"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["none.pt", "xpos.pt"]
    res = runner.invoke(app, ["list", "positions"])
    assert "xpos_bca" in res.output
