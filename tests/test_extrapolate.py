"""`lsbench extrapolate`: corpus, tokenizer, evaluation protocol, resume, CLI end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.errors import LsbenchError
from lsbench.extrapolate.corpus import load_corpus, stdlib_files, stdlib_root
from lsbench.extrapolate.evaluate import NONOVERLAPPING, SLIDING, evaluate, sliding_span
from lsbench.extrapolate.presets import get_preset
from lsbench.extrapolate.run import parse_eval_lens
from lsbench.extrapolate.tokenizer import EOS, ByteTokenizer
from lsbench.extrapolate.train import checkpoint_meta, load_checkpoint, train
from lsbench.models import CausalLM, CausalLMConfig

runner = CliRunner()
PAPER = ["sinusoidal", "rotary", "t5", "alibi"]
DEFAULT = [*PAPER, "none"]  # the paper's methods and the NoPE control


pytestmark = pytest.mark.usefixtures("one_thread")


def write_corpus(root: Path, n_files: int = 40, size: int = 600) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        lines = [f"def f_{i}_{k}(x):\n    return x * {k} + {i}  # é\n" for k in range(size // 40)]
        (root / f"mod_{i:03d}.py").write_text("".join(lines), encoding="utf-8")
    return root


def test_tokenizer_round_trips_utf8():
    tok = ByteTokenizer()
    text = "def f(x): return 'héllo ✓'\n"
    ids = tok.encode(text)
    assert ids.max() < 256 and tok.decode(ids) == text
    stream = tok.encode_documents([b"ab", b"c"])
    assert stream.tolist() == [97, 98, EOS, 99, EOS]


def test_stdlib_corpus_excludes_tests_and_is_stable():
    files = stdlib_files(stdlib_root())
    rels = [f.relative_to(stdlib_root()).as_posix() for f in files]
    assert rels == sorted(rels) and len(rels) > 100
    assert not any(part in ("test", "tests", "idle_test", "site-packages")
                   for r in rels for part in r.split("/"))
    a, b = load_corpus("stdlib"), load_corpus("stdlib")
    assert a.files_sha256 == b.files_sha256 and a.split_method == "by-file"
    assert all(a.n_bytes[s] > 0 for s in ("train", "valid", "test"))
    assert torch.equal(a.streams["valid"], b.streams["valid"])


def test_stdlib_docs_corpus_is_prose_split_and_hashed_like_stdlib():
    from lsbench.extrapolate.corpus import docstrings

    src = b'"""Module doc."""\nclass A:\n    """Class doc."""\n    def f(self):\n' \
          b'        """Method doc."""\n        return 1\ndef g():\n    return 2\n'
    assert docstrings(src) == ["Module doc.", "Class doc.", "Method doc."]
    assert docstrings(b"def broken(:\n") == []
    a, b = load_corpus("stdlib-docs"), load_corpus("stdlib-docs")
    code = load_corpus("stdlib")
    assert a.split_method == "by-file" and a.files_sha256 == b.files_sha256 != code.files_sha256
    assert all(a.n_bytes[s] > 0 for s in ("train", "valid", "test"))
    assert 1_000_000 < sum(a.n_bytes.values()) < sum(code.n_bytes.values())
    text = ByteTokenizer().decode(a.streams["train"][:200_000])
    assert text.count(" the ") > 500 and "def " not in text[:2000]
    assert "pydoc_data" not in text  # topics are prose, not the module's source
    assert any("Boolean operations" in ByteTokenizer().decode(a.streams[s])
               for s in ("train", "valid", "test"))  # a pydoc_data/topics.py topic


def test_user_corpus_directory_and_file(tmp_path):
    d = write_corpus(tmp_path / "c")
    c = load_corpus(str(d))
    assert c.split_method == "by-file" and sum(c.n_files.values()) == 40
    f = load_corpus(str(d / "mod_000.py"))
    assert f.split_method == "by-bytes" and sum(len(s) for s in f.streams.values()) > 0


def test_corpus_errors_name_the_fix(tmp_path):
    with pytest.raises(LsbenchError, match="neither a built-in corpus"):
        load_corpus(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LsbenchError, match="no non-empty text files"):
        load_corpus(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(LsbenchError, match="not UTF-8"):
        load_corpus(str(bad))


def test_parse_eval_lens():
    assert parse_eval_lens(None, 512) == [512, 768, 1024, 2048, 4096, 8192]
    assert parse_eval_lens("1x,100,2x", 64) == [64, 100, 128]
    for bad in ("0", "1x,-3", "abc", "0x"):
        with pytest.raises(LsbenchError, match="eval-lens"):
            parse_eval_lens(bad, 64)


def test_evaluation_scores_the_same_tokens_at_every_length():
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig("alibi", d_model=16, n_heads=2, n_layers=1)).eval()
    stream = torch.randint(0, 256, (201,))  # 200 targets
    for n in (16, 24, 64, 200):
        tokens, nll = evaluate(model, stream, n, NONOVERLAPPING, batch_tokens=50)
        assert tokens == 200 and math.isfinite(nll)
    span = sliding_span(200, longest=64, stride=8, windows=100)
    assert span == (200 - 64) // 8 * 8 + 8
    for n in (16, 64):
        tokens, _ = evaluate(model, stream, n, SLIDING, stride=8, span=span)
        assert tokens == span
    # one window covering everything == nonoverlapping at n = T == sliding at n = stride = T
    whole = evaluate(model, stream, 200, NONOVERLAPPING)[1]
    with torch.no_grad():
        logits = model(stream[None, :-1])
        ref = torch.nn.functional.cross_entropy(logits[0], stream[1:]).item()
    assert whole == pytest.approx(ref, rel=1e-5)
    assert evaluate(model, stream, 200, SLIDING, stride=200, span=200)[1] == pytest.approx(whole)


def test_evaluation_matches_a_window_by_window_reference():
    """Each window run on its own from position 0: nonoverlapping scores every target once;
    sliding scores the last `stride` targets of windows ending every `stride` tokens."""
    torch.manual_seed(0)
    model = CausalLM(CausalLMConfig("alibi", d_model=16, n_heads=2, n_layers=1)).eval()
    stream = torch.randint(0, 256, (101,))  # 100 targets

    def nll(a, b, score_from):  # window inputs stream[a:b], targets stream[a+1:b+1]
        with torch.no_grad():
            logits = model(stream[None, a:b])[0]
        return torch.nn.functional.cross_entropy(
            logits[score_from:], stream[a + 1 + score_from:b + 1], reduction="sum").item()

    for n in (7, 30, 100):  # 100 = 14×7 + 2, 3×30 + 10, one window
        ref = sum(nll(a, min(a + n, 100), 0) for a in range(0, 100, n)) / 100
        tokens, got = evaluate(model, stream, n, NONOVERLAPPING, batch_tokens=64)
        assert tokens == 100 and got == pytest.approx(ref, rel=1e-5)
    n, stride, span = 30, 6, 24  # windows end at 82, 88, 94, 100 and score 6 targets each
    ref = sum(nll(e - n, e, n - stride) for e in (82, 88, 94, 100)) / span
    tokens, got = evaluate(model, stream, n, SLIDING, stride=stride, span=span, batch_tokens=64)
    assert tokens == span and got == pytest.approx(ref, rel=1e-5)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    preset = get_preset("tiny")
    stream = torch.randint(0, 256, (5000,), dtype=torch.int16,
                           generator=torch.Generator().manual_seed(0))
    cfg = CausalLMConfig("t5", d_model=16, n_heads=2, n_layers=1, train_len=16)
    meta = checkpoint_meta(cfg, preset, 16, 25, 0, "sha")

    def fresh():
        torch.manual_seed(0)
        return CausalLM(cfg)

    straight = fresh()
    train(straight, stream, preset, 16, 25, 0, tmp_path / "a.pt", meta, torch.device("cpu"))

    def interrupt(step, total, loss, tps):
        if step == 13:  # between checkpoints (every 10 steps)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(fresh(), stream, preset, 16, 25, 0, tmp_path / "b.pt", meta,
              torch.device("cpu"), on_step=interrupt)
    assert load_checkpoint(tmp_path / "b.pt", meta)["state"]["step"] == 13
    resumed = fresh()
    state = train(resumed, stream, preset, 16, 25, 0, tmp_path / "b.pt", meta,
                  torch.device("cpu"))
    assert state.step == 25 and len(state.losses) == 25
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                         strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    with pytest.raises(LsbenchError, match="different settings"):
        train(fresh(), stream, preset, 16, 25, 1, tmp_path / "b.pt", {**meta, "seed": 1},
              torch.device("cpu"))


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


TINY = ["extrapolate", "--preset", "tiny", "--train-len", "16", "--train-tokens", "4096"]


def test_cli_tiny_end_to_end_and_eval_only_reproduces(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, [*TINY, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "perplexity, trained at L=16, nonoverlapping" in res.output
    run = json.loads((out / "run.json").read_text())
    assert run["kind"] == "extrapolate" and run["finished_at"] and run["env"]["torch"]
    assert run["wall_time_s"] > 0 and run["args"]["positions"] == DEFAULT
    assert run["corpus"]["name"] == "stdlib" and len(run["corpus"]["files_sha256"]) == 64
    assert run["command"].startswith("lsbench extrapolate --train-len 16")
    rows = read_csv(out / "extrapolation.csv")
    assert list(rows[0])[:8] == ["position", "train_len", "eval_len", "eval_mode", "stride",
                                 "tokens_scored", "loss", "ppl"]
    lens = [16, 24, 32, 64, 128, 256]
    got = {(r["position"], int(r["eval_len"]), r["eval_mode"]) for r in rows}
    assert got == {(p, n, m) for p in DEFAULT for n in lens for m in (NONOVERLAPPING, SLIDING)}
    for r in rows:  # the interval brackets the ppl; ratios and bits are relative to L
        if r["eval_mode"] == SLIDING:  # 16 tokens: too few for the block standard error
            assert r["ppl_ci_low"] == r["ppl_ci_high"] == ""
        else:
            assert float(r["ppl_ci_low"]) < float(r["ppl"]) < float(r["ppl_ci_high"])
        at_l = next(b for b in rows if (b["position"], b["eval_mode"], b["eval_len"]) ==
                    (r["position"], r["eval_mode"], "16"))
        ratio = float(r["ppl"]) / float(at_l["ppl"])
        assert float(r["ppl_ratio"]) == pytest.approx(ratio, rel=1e-3)
        assert float(r["delta_bits"]) == pytest.approx(math.log2(ratio), abs=1e-3)
        assert r["low_precision"] == "True"  # the tiny preset scores far fewer than 16k tokens
    assert "LOW PRECISION" in res.output and "ceilings on this eval stream" in res.output
    assert run["eval_ceilings"]["unigram_ppl"] > run["eval_ceilings"]["bigram_ppl"] > 1
    t5 = {g["group"]: g for g in run["optimizer"]["t5"]}
    assert t5["position"]["lr_mult"] == 10 and t5["position"]["weight_decay"] == 0
    assert t5["position"]["peak_lr"] == pytest.approx(10 * t5["weights"]["peak_lr"])
    assert "position" not in {g["group"] for g in run["optimizer"]["alibi"]}  # nothing learned
    assert all(math.isfinite(float(r["ppl"])) and float(r["ppl"]) > 1 for r in rows)
    assert len({r["tokens_scored"] for r in rows if r["eval_mode"] == NONOVERLAPPING}) == 1
    assert all(r["stride"] == "" for r in rows if r["eval_mode"] == NONOVERLAPPING)
    training = read_csv(out / "training.csv")
    assert [t["position"] for t in training] == DEFAULT
    assert {t["tokens_trained"] for t in training} == {"4096"}
    assert all(float(t["tokens_per_s"]) > 0 and t["final_train_loss"] for t in training)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(
        f"{p}.pt" for p in DEFAULT)

    mtimes = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    again = runner.invoke(app, [*TINY, "--out", str(out), "--eval-only"])
    assert again.exit_code == 0, again.output
    assert again.output.count("loaded checkpoint") == len(DEFAULT)
    assert mtimes == {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    for a, b in zip(rows, read_csv(out / "extrapolation.csv"), strict=True):
        assert a["ppl"] == b["ppl"] and a["tokens_scored"] == b["tokens_scored"]


def test_cli_learned_is_not_applicable_past_its_table(tmp_path):
    res = runner.invoke(app, [*TINY, "--positions", "learned,none", "--eval-lens", "1x,2x",
                              "--stride", "0", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    rows = {(r["position"], r["eval_len"]): r for r in read_csv(tmp_path / "r/extrapolation.csv")}
    assert rows["learned", "32"]["status"] == "not_applicable"
    assert rows["learned", "32"]["ppl"] == ""
    assert rows["learned", "16"]["status"] == "ok" and rows["none", "32"]["status"] == "ok"
    assert {r["eval_mode"] for r in rows.values()} == {NONOVERLAPPING}


@pytest.mark.parametrize("args, message", [
    (["--positions", "alibi,rotery"], "Did you mean 'rotary'"),
    (["--train-len", "0"], "--train-len must be a positive integer"),
    (["--eval-lens", "16,0"], "every length must be >= 1"),
    (["--corpus", "/nonexistent/corpus"], "neither a built-in corpus"),
    (["--stride", "100"], "--stride must be between 0"),
    (["--preset", "tiniest"], "Did you mean 'tiny'"),
])
def test_cli_bad_inputs_exit_1_with_a_clear_message(args, message, tmp_path):
    res = runner.invoke(app, [*TINY, "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 1, res.output
    assert message in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_cli_corpus_too_small(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("x = 1\n" * 200)  # 1200 bytes: valid split (5%) is 60 tokens
    res = runner.invoke(app, [*TINY, "--corpus", str(small), "--out", str(tmp_path / "r")])
    assert res.exit_code == 1
    assert "shorter than the longest eval length" in " ".join(res.output.split())
    res = runner.invoke(app, [*TINY, "--corpus", str(small), "--train-len", "4096",
                              "--train-tokens", "16384", "--out", str(tmp_path / "r")])
    assert res.exit_code == 1 and "too small" in res.output


def test_cli_eval_only_needs_checkpoints(tmp_path):
    res = runner.invoke(app, [*TINY, "--eval-only"])
    assert res.exit_code == 1 and "needs --out" in res.output
    res = runner.invoke(app, [*TINY, "--eval-only", "--out", str(tmp_path / "none")])
    assert res.exit_code == 1 and "train first" in res.output


def test_cli_list_positions_and_corpora():
    res = runner.invoke(app, ["list", "positions", "--json"])
    assert res.exit_code == 0
    assert {r["name"] for r in json.loads(res.output)} >= {"alibi", "t5", "rotary", "sinusoidal"}
    res = runner.invoke(app, ["list", "corpora", "--json"])
    assert res.exit_code == 0
    assert [r["name"] for r in json.loads(res.output)][:2] == ["stdlib", "stdlib-docs"]


@pytest.mark.gpu
def test_cuda_bfloat16_chunked_attention_and_tiny_run(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA: the gpu preset's bfloat16 autocast path")
    x = torch.randint(0, 256, (2, 300), device="cuda")
    for name in ("alibi", "t5", "rotary"):
        torch.manual_seed(0)
        model = CausalLM(CausalLMConfig(name, d_model=64, n_heads=4, n_layers=2,
                                        attn_chunk_elems=4 * 300 * 16)).cuda().eval()
        with torch.no_grad():
            ref = model(x[:, :-1]).float()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                low = model(x[:, :-1]).float()

        def nll(logits):
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())

        assert nll(low).item() == pytest.approx(nll(ref).item(), rel=0.02)
    res = runner.invoke(app, [*TINY, "--device", "cuda", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r/run.json").read_text())["args"]["device"] == "cuda"


def test_cli_rope_scaling_rescores_the_rotary_checkpoint(tmp_path):
    out = tmp_path / "r"
    res = runner.invoke(app, [*TINY, "--positions", "rotary,none", "--rope-scaling",
                              "pi,ntk,yarn", "--stride", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = read_csv(out / "extrapolation.csv")
    ppl = {(r["position"], int(r["eval_len"])): float(r["ppl"]) for r in rows}
    assert {p for p, _ in ppl} == {"rotary", "none", "rotary+pi", "rotary+ntk", "rotary+yarn"}
    for s in ("pi", "ntk", "yarn"):  # at L the scalings are plain rotary; beyond it they differ
        assert ppl[f"rotary+{s}", 16] == ppl["rotary", 16]
        assert ppl[f"rotary+{s}", 64] != ppl["rotary", 64]
    assert [t["position"] for t in read_csv(out / "training.csv")] == ["rotary", "none"]
    assert json.loads((out / "run.json").read_text())["args"]["rope_scaling"] == [
        "pi", "ntk", "yarn"]
    res = runner.invoke(app, [*TINY, "--positions", "alibi", "--rope-scaling", "pi",
                              "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "add rotary to --positions" in " ".join(res.output.split())
    res = runner.invoke(app, [*TINY, "--rope-scaling", "yarm", "--out", str(tmp_path / "y")])
    assert res.exit_code == 1 and "Did you mean 'yarn'" in res.output
