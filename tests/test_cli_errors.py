"""Bad input and a hostile environment end in one clean line: exit code 1, the message names
what was wrong and the fix, no traceback, and nothing already on disk is damaged."""

from __future__ import annotations

import errno
import json

import pytest
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.sweep.store import RunStore

runner = CliRunner()
TINY = ["--variants", "fastformer", "--seq-lens", "16", "--threads", "1"]


def _bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[sweep\nvariants = 1")
    return str(p)


def _bad_run(tmp_path, text):
    d = tmp_path / "run"
    d.mkdir()
    (d / "run.json").write_text(text)
    (d / "results.jsonl").write_text("")
    return str(d)


def _file(tmp_path):
    p = tmp_path / "afile"
    p.write_text("x")
    return str(p)


CASES = [
    ("run", lambda t: ["run", *TINY[:2], "--seq-lens", "1" + "0" * 20], "out of range"),
    ("run", lambda t: ["run", *TINY[:2], "--seq-lens", "1e20"], "give values from 1 to"),
    ("run", lambda t: ["run", *TINY[:2], "--seq-lens", "12.5"], "not an integer"),
    ("run", lambda t: ["run", *TINY[:2], "--seq-lens", "-5"], "not positive"),
    ("run", lambda t: ["run", *TINY[:2], "--seq-lens", ","], "is empty"),
    ("run", lambda t: ["run", "--variants", "longformr", "--seq-lens", "16"], "longformer"),
    ("run", lambda t: ["run", "--variants", "../../etc/passwd", "--seq-lens", "16"],
     "unknown variant"),
    ("run", lambda t: ["run", *TINY, "--batch-sizes", "0"], "not positive"),
    ("run", lambda t: ["run", *TINY, "--batch-sizes", str(2**30)], "out of range"),
    ("run", lambda t: ["run", *TINY, "--dtype", "float64"], "float32"),
    ("run", lambda t: ["run", *TINY, "--mode", "train"], "training"),
    ("run", lambda t: ["run", *TINY, "--suite", "quik"], "quick"),
    ("run", lambda t: ["run", *TINY, "--suite", str(t / "missing.toml")], "does not exist"),
    ("run", lambda t: ["run", *TINY, "--suite", _bad_toml(t)], "not valid TOML"),
    ("run", lambda t: ["run", *TINY, "--out", "/proc/forbidden"], "/proc/forbidden"),
    ("run", lambda t: ["run", *TINY, "--out", _file(t)], "is a file"),
    ("run", lambda t: ["run", *TINY, "--mem-budget", "lots"], "not a size"),
    ("run", lambda t: ["run", *TINY, "--mem-budget", "10"], "below 1 MiB"),
    ("run", lambda t: ["run", "--resume", str(t / "nowhere")], "no such run directory"),
    ("run", lambda t: ["run", "--resume", _bad_run(t, "{not json")], "cannot be read"),
    ("run", lambda t: ["run", "--resume", _bad_run(t, "[1, 2]")], "JSON object"),
    ("report", lambda t: ["report", str(t / "nowhere")], "nowhere"),
    ("report", lambda t: ["report", _file(t)], "afile"),
    ("compare", lambda t: ["compare", str(t / "a"), str(t / "b")], "a"),
    ("list", lambda t: ["list", "varients"], "variants"),
    ("run", lambda t: ["run", *TINY, "--threads", "two"], "--threads"),
    ("run", lambda t: ["run", *TINY, "--no-such-option"], "no such option"),
    ("report", lambda t: ["report", str(t), "--format", "pdf"], "html"),
    ("report", lambda t: ["report", str(t), "--format", "md", "--open"], "drop --open"),
    ("extrapolate", lambda t: ["extrapolate", "--train-len", "0"], "train"),
    ("extrapolate", lambda t: ["extrapolate", "--positions", "alibbi"], "alibi"),
    ("extrapolate", lambda t: ["extrapolate", "--corpus", str(t / "missing")], "missing"),
    ("extrapolate", lambda t: ["extrapolate", "--preset", "tiny", "--out", "/proc/forbidden/x"],
     "cannot create /proc/forbidden/x"),
    ("extrapolate", lambda t: ["extrapolate", "--preset", "tiny", "--out", _file(t)], "afile"),
]


@pytest.mark.parametrize("command,make_args,needle", CASES,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_is_one_clean_error(tmp_path, command, make_args, needle):
    result = runner.invoke(app, make_args(tmp_path))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert needle.lower() in result.output.lower(), result.output


def test_disk_full_while_appending_keeps_the_rows_already_written(tmp_path, monkeypatch):
    store = RunStore(tmp_path / "run")
    store.create({"kind": "run"})
    store.append({"config_id": "a", "status": "ok"})
    before = store.jsonl.read_bytes()
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])  # a partial line reaches the disk
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Full(f) if "a" in mode else f

    monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(Exception) as e:
        store.append({"config_id": "b", "status": "ok"})
    monkeypatch.undo()
    assert "disk is full" in str(e.value) and "--resume" in str(e.value)
    assert store.jsonl.read_bytes() == before  # the half-written line is gone
    assert [json.loads(line)["config_id"] for line in before.decode().splitlines()] == ["a"]


def test_run_report_writes_the_page_and_prints_its_path(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", *TINY, "--mode", "inference", "--out", str(out),
                                 "--report"])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file()
    assert str(out / "report.html") in result.output.replace("\n", "")  # rich may wrap it


def test_open_needs_report(tmp_path):
    result = runner.invoke(app, ["run", *TINY, "--out", str(tmp_path / "r"), "--open"])
    assert result.exit_code == 1 and "--report" in result.output
