"""The HTML report in a real browser: Debian's Chromium, headless, offline.

Marked `browser` and deselected by default (the README's setup installs no browser): run with
`python3 -m pytest -m browser` after `apt-get install -y chromium`, as `.ci/run` does in its
own step. Without Chromium that step fails and says how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_runs import model_rows, write_extrapolation_run, write_latency_run

from lsbench.report import build_report

pytestmark = pytest.mark.browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("LSBENCH_SKIP_BROWSER") == "1":
        pytest.skip("LSBENCH_SKIP_BROWSER=1: real-browser test skipped on purpose")
    pytest.fail("Chromium not found: install it (`apt-get install -y chromium`, as .ci/run "
                "does) before `pytest -m browser`.")


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"chromium exited {res.returncode}: {res.stderr[-2000:]}"
    return res


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    rows = model_rows(["transformer", "sdpa", "linear", "fastformer"], [256, 512, 1024, 2048],
                      modes=("inference", "training"), mem_limit_mib=400)
    lat = write_latency_run(root / "lat", rows)
    ext = write_extrapolation_run(root / "ext", train_len=64)
    build_report([lat, ext], "html", root / "report.html")
    return root / "report.html"


def test_dom_has_tables_and_plots(page, tmp_path):
    dom = run_chromium(["--dump-dom", page.as_uri()], tmp_path / "profile").stdout
    assert "<h1>lsbench report</h1>" in dom
    assert dom.count("<svg") == 5  # latency, memory, throughput, % of peak, perplexity
    assert 'id="run1-0-latency-inference-b1"' in dom
    assert 'id="run1-0-crossover"' in dom and 'id="run2-ppl-0"' in dom
    assert dom.count("<table") >= 10
    assert "<tbody>" in dom and "fastformer" in dom and "alibi" in dom
    # The inline script ran (no JavaScript error before its last line).
    assert 'data-sortable="' in dom


def test_screenshot_is_not_blank(page, tmp_path):
    shot = tmp_path / "shot.png"
    run_chromium([f"--screenshot={shot}", "--window-size=1280,2200", page.as_uri()],
                 tmp_path / "profile")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (2200, 1280)
    ink = (img.sum(axis=2) < 600)  # anything clearly darker than white
    assert ink.mean() > 0.01, "the page rendered (almost) blank"
    # Colour, not only text: the plot lines use the variants' colours.
    saturated = (img.max(axis=2) - img.min(axis=2)) > 80
    assert saturated.mean() > 0.002, "no coloured plot lines visible"
    # Content spans the page, not just a header: ink in the top and the bottom halves.
    assert ink[:1100].mean() > 0.005 and ink[1100:].mean() > 0.005


def test_quality_page_has_pareto_and_fidelity_plots(tmp_path):
    from test_quality_report import write_quality_run

    rows = model_rows(["transformer", "sdpa", "linear", "fastformer"], [256, 512, 1024],
                      modes=("inference",), mem_limit_mib=400)
    lat = write_latency_run(tmp_path / "lat", rows)
    q = write_quality_run(tmp_path / "q")
    build_report([lat, q], "html", tmp_path / "report.html")
    dom = run_chromium(["--dump-dom", (tmp_path / "report.html").as_uri()],
                       tmp_path / "profile").stdout
    assert 'aria-label="Accuracy vs latency and memory"' in dom
    assert 'aria-label="Fidelity to exact softmax attention"' in dom
    assert 'id="run2-quality"' in dom and 'id="run2-fidelity"' in dom
    assert 'data-sortable="' in dom  # the inline script ran
