"""lsbench quality: the MQAR generator, fidelity where a variant is exact, the summary, the CLI."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.errors import LsbenchError
from lsbench.quality.fidelity import exact_attention, fidelity_rows
from lsbench.quality.model import RecallConfig, RecallModel
from lsbench.quality.summary import t_interval
from lsbench.quality.tasks import IGNORE, MQAR, answers_from_context


@pytest.mark.parametrize("form", ["lm", "masked"])
def test_every_answer_is_determined_by_the_context(form):
    task = MQAR(vocab_size=32, seq_len=64, kv_pairs=6)
    x, y = task.sample(200, seed=3, form=form)
    assert x.shape == y.shape == (200, 64)
    for xi, yi in zip(x, y, strict=True):
        kv = answers_from_context(xi, task.kv_pairs)
        assert len(kv) == task.kv_pairs  # distinct keys
        assert all(1 <= k < 16 <= v < 32 for k, v in kv.items())
        scored = (yi != IGNORE).nonzero().flatten().tolist()
        assert len(scored) == task.kv_pairs  # each key queried once
        queried = []
        for t in scored:
            q = t if form == "lm" else t - 1  # masked: the answer sits at the mask after the key
            if form == "masked":
                assert xi[t] == task.mask_token
            assert q >= 2 * task.kv_pairs and (q - 2 * task.kv_pairs) % 2 == 0
            assert yi[t] == kv[int(xi[q])]  # exact: the context's value for the queried key
            queried.append(int(xi[q]))
        assert sorted(queried) == sorted(kv)
        # the answer never appears in the input after its query (no leak)
        if form == "masked":
            assert (xi == task.mask_token).sum() == task.kv_pairs


def test_same_seed_same_data_and_different_seed_different_data():
    task = MQAR(64, 128, 8)
    a, b = task.sample(16, seed=7), task.sample(16, seed=7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = task.sample(16, seed=8)
    assert not torch.equal(a[0], c[0])


def test_query_gaps_follow_the_power_law():
    # one pair: the query slot is one draw from P(g) ∝ (g + 1)^(a - 1); chi-square on counts
    task = MQAR(vocab_size=16, seq_len=34, kv_pairs=1)
    n = 20_000
    x, y = task.sample(n, seed=0)
    slots = ((y != IGNORE).nonzero()[:, 1] - 2 * task.kv_pairs) // 2
    counts = torch.bincount(slots, minlength=task.space).double()
    expected = task.gap_probs() * n
    assert task.space == 16 and counts.sum() == n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert stats.chi2.sf(chi2, task.space - 1) > 1e-3, (counts, expected)
    assert counts[0] > counts[1] > counts[4] > counts[15]  # most queries come early


def test_several_pairs_use_distinct_slots_with_power_law_first_slot():
    task = MQAR(vocab_size=64, seq_len=64, kv_pairs=8)
    _, y = task.sample(4000, seed=1)
    pos = (y != IGNORE).nonzero()[:, 1].view(4000, 8)
    assert all(len(set(r.tolist())) == 8 for r in pos)
    slots = (pos - 16) // 2
    share_first = float((slots == 0).any(1).double().mean())
    assert share_first > 0.5  # slot 0 holds the largest weight, so it is usually taken


def test_invalid_settings_name_the_fix():
    with pytest.raises(LsbenchError, match="kv_pairs"):
        MQAR(vocab_size=16, seq_len=64, kv_pairs=8)
    with pytest.raises(LsbenchError, match="seq_len"):
        MQAR(vocab_size=64, seq_len=16, kv_pairs=8)


def _softmax_model() -> tuple[RecallModel, MQAR]:
    torch.manual_seed(0)
    task = MQAR(16, 32, 2)
    return RecallModel(RecallConfig("sdpa", task.n_tokens, 32, 2, 2, causal=True)), task


def test_fidelity_is_zero_where_a_variant_is_exact_by_construction():
    model, task = _softmax_model()
    n = 64
    params = {"local": {"window": n}, "nystromformer": {"landmarks": n, "pinv_iterations": 40}}
    rows = fidelity_rows(model, task, ["local", "nystromformer", "linear"], [n], params=params)
    by = {(r["variant"], r["layer"]): r for r in rows}
    for layer in (0, 1):
        assert by[("local", layer)]["causal"] is True
        assert by[("local", layer)]["rel_err"] < 1e-12
        assert by[("nystromformer", layer)]["causal"] is False  # encoder-only: non-causal ref
        assert by[("nystromformer", layer)]["rel_err"] < 1e-9
        assert abs(by[("nystromformer", layer)]["cosine"] - 1) < 1e-12
        assert by[("linear", layer)]["rel_err"] > 1e-3  # an approximation is not exact


def test_fidelity_rows_say_why_undefined():
    model, task = _softmax_model()
    rows = fidelity_rows(model, task, ["fastformer", "mamba2", "poolingformer", "sdpa"], [32],
                         layers=[0])
    assert {r["variant"]: r["status"] for r in rows} == {
        "fastformer": "undefined", "mamba2": "undefined", "poolingformer": "undefined"}
    assert all(r["reason"] for r in rows)


def test_exact_attention_chunks_match_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 50, 8, generator=g, dtype=torch.float64) for _ in range(3))
    for causal in (False, True):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        got = exact_attention(q, k, v, causal, chunk_elems=2 * 3 * 50 * 7)  # 7-row chunks
        assert torch.allclose(got, ref, atol=1e-12)


def test_t_interval():
    mean, sd, lo, hi = t_interval([0.9, 0.95, 1.0])
    assert mean == pytest.approx(0.95) and sd == pytest.approx(0.05)
    half = stats.t.ppf(0.975, 2) * 0.05 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((0.95 - half, 0.95 + half))
    assert math.isnan(t_interval([0.5])[2])


def test_cli_tiny_run_writes_rows_summary_and_fidelity(tmp_path):
    out = tmp_path / "q"
    res = CliRunner().invoke(app, ["quality", "--preset", "tiny", "--variants",
                                   "sdpa,linear,fastformer,flex_causal", "--steps", "3",
                                   "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(out / "quality.csv")
    forms = set(zip(rows["variant"], rows["task_form"], strict=True))
    assert forms == {("sdpa", "lm"), ("sdpa", "masked"), ("linear", "lm"),
                     ("fastformer", "masked"), ("flex_causal", "lm")}
    assert (rows[rows.variant == "flex_causal"]["status"] == "unsupported").all()
    assert len(rows) == 5 * 3
    summary = pd.read_csv(out / "summary.csv")
    ok = summary[summary.status == "ok"]
    assert (ok["seeds"] == 3).all() and ok["accuracy_ci_low"].notna().all()
    fid = pd.read_csv(out / "fidelity.csv")
    assert set(fid["variant"]) == {"linear", "fastformer", "flex_causal"}
    assert set(fid[fid.variant != "linear"]["status"]) == {"undefined"}
    assert "quality" in (out / "run.json").read_text()
    # rerunning the same command resumes: nothing is trained again
    again = CliRunner().invoke(app, ["quality", "--preset", "tiny", "--variants",
                                     "sdpa,linear,fastformer,flex_causal", "--steps", "3",
                                     "--out", str(out), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert len(pd.read_csv(out / "quality.csv")) == len(rows)


def test_cli_unknown_variant_is_one_red_line(tmp_path):
    res = CliRunner().invoke(app, ["quality", "--preset", "tiny", "--variants", "sdpaa",
                                   "--out", str(tmp_path / "q")])
    assert res.exit_code == 1 and "sdpa" in res.output


@pytest.mark.slow
def test_two_worker_processes_write_the_same_rows(tmp_path):
    from lsbench.quality import run_quality

    kw = dict(variants=["sdpa", "linear"], preset="tiny", steps=2, device="cpu",
              fidelity=False)
    one = run_quality(out=tmp_path / "one", workers=1, **kw)["summary"]
    two = run_quality(out=tmp_path / "two", workers=2, **kw)["summary"]
    key = ["variant", "task_form"]
    pd.testing.assert_frame_equal(
        one.sort_values(key).reset_index(drop=True)[key + ["accuracy_mean"]],
        two.sort_values(key).reset_index(drop=True)[key + ["accuracy_mean"]])
