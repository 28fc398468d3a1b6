"""What an extrapolation table means: confidence intervals, ratios and bits, n-gram ceilings,
the `none` control, per-group learning rates, and how the report shows them."""

from __future__ import annotations

import math

import pytest
import torch

from lsbench.extrapolate.analysis import (
    add_relative_columns,
    control_warnings,
    ngram_ceilings,
)
from lsbench.extrapolate.evaluate import NONOVERLAPPING, SLIDING, Score, block_stats, score
from lsbench.extrapolate.presets import get_preset
from lsbench.extrapolate.summary import summarize
from lsbench.extrapolate.train import checkpoint_meta, describe_groups, load_checkpoint, train
from lsbench.models import CausalLM, CausalLMConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_block_standard_error_sees_correlated_tokens():
    g = torch.Generator().manual_seed(0)
    iid = torch.randn(32 * 256, generator=g, dtype=torch.float64)
    naive = iid.std().item() / math.sqrt(len(iid))
    se, means = block_stats(iid)
    assert len(means) == 32 and sum(means) / 32 == pytest.approx(iid.mean().item())
    assert 0.5 * naive < se < 2 * naive  # independent tokens: about the per-token SE
    # runs of 64 identical losses (strongly correlated neighbours): the per-token formula is
    # 8× too small, the block means see it
    runs = torch.randn(128, generator=g, dtype=torch.float64).repeat_interleave(64)
    naive = runs.std().item() / math.sqrt(len(runs))
    assert block_stats(runs)[0] > 4 * naive
    assert block_stats(torch.ones(63))[0] is None  # too few tokens for 32 blocks of 2


def test_score_interval_brackets_the_ppl_and_matches_evaluate():
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig("alibi", d_model=16, n_heads=2, n_layers=1)).eval()
    stream = torch.randint(0, 256, (2001,))
    sc = score(model, stream, 100, NONOVERLAPPING)
    lo, hi = sc.ppl_ci()
    assert sc.tokens == 2000 and lo < sc.ppl < hi
    assert sc.low_precision  # 2,000 < 16,384 tokens
    assert sc.loss == pytest.approx(
        sum(sc.block_means) / len(sc.block_means), rel=1e-3)  # 2000 = 32 blocks of 62-63
    sl = score(model, stream, 100, SLIDING, stride=50, span=1900)
    assert sl.tokens == 1900 and sl.loss_se is not None
    assert Score(10, 1.0, None, []).ppl_ci() == (None, None)


def test_ngram_ceilings_by_hand():
    # train "abab…": unigram p(a)=p(b)~1/2, bigram a->b and b->a nearly certain
    train = torch.tensor([97, 98] * 5000)
    c = ngram_ceilings(train, torch.tensor([97, 98, 97, 98, 97]))
    v = 258
    p_uni = 5001 / (10_000 + v)  # add-one smoothing
    assert c["unigram_ppl"] == pytest.approx(1 / p_uni, rel=1e-3)
    p_ab = 5001 / (5000 + v)  # 5000 a->b pairs (and 4999 b->a: within 1e-3)
    assert c["bigram_ppl"] == pytest.approx(1 / p_ab, rel=1e-3)
    assert c["targets"] == 4


def _rows(ppl_at_l: dict[str, float], mode: str = NONOVERLAPPING) -> list[dict]:
    return [{"position": p, "eval_mode": mode, "eval_len": 64, "ppl": v, "loss": math.log(v)}
            for p, v in ppl_at_l.items()]


def test_control_warns_when_a_method_is_not_clearly_better_than_none():
    rows = _rows({"alibi": 9.4, "sinusoidal": 9.6, "t5": 11.0, "none": 10.0})
    warned = {w["position"]: w for w in control_warnings(rows, 64)}
    assert set(warned) == {"sinusoidal", "t5"}  # alibi is 6% below, the others are not 5%
    assert "has not learned to use position" in warned["t5"]["message"]
    # the headline (nonoverlapping) decides when both modes exist
    both = rows + _rows({"alibi": 9.9, "none": 10.0}, SLIDING)
    assert "alibi" not in {w["position"] for w in control_warnings(both, 64)}
    assert control_warnings(_rows({"alibi": 20.0}), 64) == []  # no control: nothing to compare
    # RoPE scalings re-score the rotary checkpoint: one warning for rotary, not one per scaling
    scaled = _rows({"rotary": 9.9, "rotary+pi": 9.9, "rotary+yarn": 9.9, "none": 10.0})
    assert [w["position"] for w in control_warnings(scaled, 64)] == ["rotary"]


def test_ratio_and_bits_are_relative_to_the_train_length():
    rows = [{"position": "x", "eval_mode": NONOVERLAPPING, "eval_len": n, "loss": loss}
            for n, loss in ((64, 2.0), (128, 2.0 + math.log(2)), (256, None))]
    add_relative_columns(rows, 64)
    assert [r["ppl_ratio"] for r in rows] == [1.0, 2.0, None]
    assert rows[1]["delta_bits"] == pytest.approx(1.0)  # twice the ppl = one more bit


def test_summary_says_when_the_control_is_missing():
    run = {"args": {"train_len": 64, "eval_lens": [64], "stride": 0, "eval_tokens": 100},
           "optimizer": {}, "control_warnings": []}
    rows = _rows({"alibi": 9.0})
    add_relative_columns(rows, 64)
    s = summarize(rows, [], run)
    assert any("no `none` control" in w for w in s.warnings)


def test_t5_bias_table_gets_its_own_lr_without_weight_decay(tmp_path):
    preset = get_preset("tiny")
    cfg = CausalLMConfig("t5", d_model=16, n_heads=2, n_layers=1, train_len=16)
    model = CausalLM(cfg)
    groups = {g["group"]: g for g in describe_groups(model, preset)}
    assert groups["position"]["params"] == model.pe.emb.weight.numel()
    assert groups["position"]["weight_decay"] == 0 and groups["weights"]["weight_decay"] > 0
    stream = torch.randint(0, 256, (3000,), dtype=torch.int16)
    meta = checkpoint_meta(cfg, preset, 16, 5, 0, "sha")
    train(model, stream, preset, 16, 5, 0, tmp_path / "t5.pt", meta, torch.device("cpu"))
    saved = {g["name"]: g for g in load_checkpoint(tmp_path / "t5.pt")["optimizer"]["param_groups"]}
    assert saved["position"]["lr"] == pytest.approx(10 * saved["weights"]["lr"])
    assert saved["position"]["weight_decay"] == 0


def test_report_shows_control_warnings_ratios_and_intervals(tmp_path):
    from synthetic_runs import write_extrapolation_run

    from lsbench.report import build_report

    run = write_extrapolation_run(tmp_path / "ext", train_len=64,
                                  positions=("sinusoidal", "alibi", "none"))
    result = build_report([run], out=tmp_path / "r.html")
    sec = result.sections[0]
    text = " ".join(t for _, t in sec.banners)
    # synthetic: sinusoidal and alibi are at 20.0 / 19.7 and none at 20.0 (the default model)
    assert "sinusoidal: ppl at L=64" in text and "alibi: ppl at L=64" in text
    titles = [t.title for t in sec.tables]
    assert any(t.startswith("Ratio to L") for t in titles)
    ratio = next(t for t in sec.tables if t.title.startswith("Ratio to L"))
    assert ratio.rows[0][1].text.startswith("1.00×") and "bits" in ratio.rows[0][2].text
    html = (tmp_path / "r.html").read_text()
    assert "Per-group learning rates" in html and "Control." in html


def test_checkpoint_meta_ignores_evaluation_settings():
    from dataclasses import replace

    p = get_preset("tiny")
    cfg = CausalLMConfig("alibi", d_model=16, n_heads=2, n_layers=1, train_len=16)
    meta = checkpoint_meta(cfg, p, 16, 5, 0, "sha")
    rescored = replace(p, name="x", sliding_tokens=999, eval_windows=3, eval_batch_tokens=7)
    assert checkpoint_meta(cfg, rescored, 16, 5, 0, "sha") == meta  # same weights, rescored
    assert checkpoint_meta(cfg, replace(p, lr=1.0), 16, 5, 0, "sha") != meta
    assert checkpoint_meta(cfg, replace(p, position_lr_mult=()), 16, 5, 0, "sha") != meta
