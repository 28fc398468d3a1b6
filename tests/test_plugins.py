"""Plugins through the `lsbench.variants` entry-point group (and LSBENCH_PLUGINS beside it).

Fast tests put a hand-written distribution (a `.dist-info` with `entry_points.txt`) on sys.path,
which is exactly what importlib.metadata reads for an installed package. The slow test
pip-installs examples/lsbench-plugin-example into a temporary target (offline, no deps) and runs
`lsbench list variants` and a tiny `lsbench run` on it in subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lsbench.variants as variants
from lsbench.errors import LsbenchError
from lsbench.sweep.plugins import load_plugins
from lsbench.variants import PLUGIN_ERRORS, REGISTRY, build, get, load_entry_points

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lsbench-plugin-example"

GOOD = '''
"""A test plugin, https://example.org"""
import torch
from lsbench.variants import Variant


class Twice(Variant):
    name = "{name}"
    method = "y = 2x"
    paper = "none, https://example.org"
    time_complexity = memory_complexity = "O(N·D)"

    def forward(self, x, mask=None):
        return 2 * x
'''


def fake_distribution(root: Path, dist: str, entry: str, module: str, source: str) -> None:
    """What `pip install` leaves on disk, reduced to what importlib.metadata reads."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lsbench.variants]\n{entry}\n")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """tmp_path on sys.path; registry and plugin bookkeeping restored afterwards."""
    saved = dict(REGISTRY), dict(PLUGIN_ERRORS), set(variants._LOADED)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for store, old in zip((REGISTRY, PLUGIN_ERRORS, variants._LOADED), saved, strict=True):
        store.clear()
        store.update(old)
    for mod in [m for m in sys.modules if m.startswith("lsbtest_")]:
        del sys.modules[mod]


def test_entry_point_registers_a_variant(plugin_path):
    fake_distribution(plugin_path, "lsbtest-good", "twice = lsbtest_good",
                      "lsbtest_good", GOOD.format(name="lsbtest_twice"))
    assert "lsbtest_twice" not in REGISTRY
    assert load_entry_points() == ["lsbtest_twice"]
    assert load_entry_points() == []  # once only
    m = build("lsbtest_twice", d_model=8, n_heads=2)
    import torch

    x = torch.ones(1, 3, 8)
    assert torch.equal(m(x), 2 * x)
    load_plugins("")  # no error recorded: a run may start


def test_broken_entry_point_is_named_and_stops_a_run(plugin_path):
    fake_distribution(plugin_path, "lsbtest-broken", "broken = lsbtest_broken",
                      "lsbtest_broken", "raise ImportError('needs a missing library')\n")
    before = dict(REGISTRY)
    assert load_entry_points() == []
    assert REGISTRY == before
    (label, why), = PLUGIN_ERRORS.items()
    assert label == "broken = lsbtest_broken" and "needs a missing library" in why
    with pytest.raises(LsbenchError, match="broken = lsbtest_broken.*fix or uninstall"):
        load_plugins("")
    with pytest.raises(LsbenchError, match="needs a missing library"):
        get("twice")  # an unknown name points at the plugin that failed


def test_entry_point_cannot_replace_a_builtin(plugin_path):
    fake_distribution(plugin_path, "lsbtest-clash", "sdpa = lsbtest_clash",
                      "lsbtest_clash", GOOD.format(name="sdpa"))
    builtin = REGISTRY["sdpa"]
    load_entry_points()
    assert REGISTRY["sdpa"] is builtin
    assert "redefines the built-in variant(s) sdpa" in PLUGIN_ERRORS["sdpa = lsbtest_clash"]


def test_example_package_declares_the_entry_point():
    text = (EXAMPLE / "pyproject.toml").read_text()
    assert '[project.entry-points."lsbench.variants"]' in text
    assert 'mean_pool = "lsbench_plugin_example.mean_pool"' in text


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *map(str, paths)])
    env.pop("LSBENCH_PLUGINS", None)
    return env


def _lsbench(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from lsbench.cli import app; sys.argv[0] = 'lsbench'; app()"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_installed_example_plugin_end_to_end(tmp_path):
    """pip install (offline, no deps) -> `lsbench list variants` -> a tiny `lsbench run`."""
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    assert (target / "lsbench_plugin_example" / "mean_pool.py").is_file()
    env = _env(target)
    listed = _lsbench(["list", "variants", "--json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert "mean_pool" in rows and "PoolFormer" in rows["mean_pool"]["paper"]
    out = tmp_path / "run"
    run = _lsbench(["run", "--suite", "smoke", "--variants", "mean_pool", "--seq-lens", "16",
                    "--out", str(out)], env, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows and {r["variant"] for r in rows} == {"mean_pool"}
    assert all(r["status"] == "ok" and r["latency_ms"] > 0 for r in rows), rows
    # without the install the name is unknown: the run really used the entry point
    missing = _lsbench(["run", "--suite", "smoke", "--variants", "mean_pool", "--seq-lens",
                        "16", "--out", str(tmp_path / "run2")], _env(), tmp_path)
    assert missing.returncode != 0 and "mean_pool" in missing.stdout + missing.stderr
