"""The run predicts its duration from a warm-up before it starts: the library returns it in
run.json (`estimate`), the CLI prints it; resumed and --eval-only runs count only what is left."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.extrapolate.estimate import eval_time_s
from lsbench.extrapolate.presets import get_preset
from lsbench.models import CausalLM, CausalLMConfig

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
TINY = ["extrapolate", "--preset", "tiny", "--train-len", "16", "--train-tokens", "2048",
        "--eval-lens", "1x,4x", "--stride", "8"]


def test_eval_estimate_skips_lengths_past_a_learned_table():
    model = CausalLM(CausalLMConfig("learned", d_model=16, n_heads=2, n_layers=1, train_len=16))
    cpu, preset = torch.device("cpu"), get_preset("tiny")
    assert eval_time_s(model, [32, 64], {32: 100, 64: 100}, cpu, preset) == 0.0
    assert eval_time_s(model, [16, 64], {16: 100, 64: 100}, cpu, preset) > 0.0


def test_cli_prints_the_estimate_and_eval_only_has_no_training_left(tmp_path):
    out = tmp_path / "r"
    res = runner.invoke(app, [*TINY, "--positions", "alibi,none", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "expected duration ~" in " ".join(res.output.split())
    est = json.loads((out / "run.json").read_text())["estimate"]
    assert set(est["train_s"]) == set(est["eval_s"]) == {"alibi", "none"}
    assert all(v > 0 for v in [*est["train_s"].values(), *est["eval_s"].values()])
    assert est["total_s"] == pytest.approx(sum(est["train_s"].values())
                                           + sum(est["eval_s"].values()), abs=0.01)
    res = runner.invoke(app, [*TINY, "--positions", "alibi,none", "--out", str(out),
                              "--eval-only"])
    assert res.exit_code == 0, res.output
    est = json.loads((out / "run.json").read_text())["estimate"]
    assert est["train_s"] == {"alibi": 0.0, "none": 0.0} and est["eval_s"]["alibi"] > 0
