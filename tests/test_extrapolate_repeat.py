"""A training budget larger than the corpus's train split repeats its tokens: the run says so,
with the repeat factor, in run.json, at the start and in the summary."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.extrapolate.analysis import repeat_warning
from lsbench.extrapolate.corpus import load_corpus
from lsbench.extrapolate.presets import get_preset

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def test_repeat_warning_only_past_one_pass():
    assert repeat_warning(1000, 1000, "c") is None
    message = repeat_warning(8_900, 1000, "c")
    assert "8.9×" in message and "1,000 train tokens" in message
    assert "--train-tokens 1000" in message


def test_gpu_preset_repeats_stdlib_about_nine_times_and_cpu_does_not():
    train = len(load_corpus("stdlib").streams["train"])
    assert get_preset("gpu").train_tokens / train == pytest.approx(8.9, abs=0.1)
    assert repeat_warning(get_preset("gpu").train_tokens, train, "stdlib")
    assert repeat_warning(get_preset("cpu").train_tokens, train, "stdlib") is None


def test_cli_warns_with_the_repeat_factor(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 400)  # 11,200 bytes
    out = tmp_path / "r"
    res = runner.invoke(app, ["extrapolate", "--preset", "tiny", "--train-len", "16",
                              "--train-tokens", "20480", "--positions", "none", "--eval-lens",
                              "1x,2x", "--stride", "0", "--corpus", str(corpus),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    train = len(load_corpus(str(corpus)).streams["train"])
    assert run["args"]["train_passes"] == pytest.approx(20480 / train, abs=1e-3)
    [warning] = run["warnings"]
    assert f"{20480 / train:.1f}×" in warning
    text = " ".join(res.output.split())
    assert text.count(f"warning: the training budget (20,480 tokens per method) is "
                      f"{20480 / train:.1f}×") == 2  # at the start, and in the summary
