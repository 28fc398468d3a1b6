"""`lsbench run` on CUDA: synchronised timing, CUDA peak memory, CUDA OOM as a row.

Run with `pytest -m gpu` on a machine with an NVIDIA GPU."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from lsbench.cli import app
from lsbench.sweep import plugins

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
runner = CliRunner()

CUDA_HOG = '''
import torch
from torch import nn
from lsbench.variants.base import Variant


class CudaHog(Variant):
    """Fine at N=16; from N=32 asks for 32 TiB on the GPU (a real CUDA out-of-memory)."""
    name = "test_cuda_hog"

    def __init__(self, d_model, n_heads, causal=False, **params):
        super().__init__(d_model, n_heads, causal, **params)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x, mask=None):
        if x.shape[1] >= 32:
            torch.empty(2**45, dtype=torch.uint8, device=x.device)
        return self.proj(x)
'''


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]


def test_cuda_smoke_run(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--suite", "smoke", "--device", "cuda", "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "run.json").read_text())
    assert info["device"] == "cuda" and info["device_name"] == torch.cuda.get_device_name(0)
    assert "max_memory_allocated" in info["memory_method"] and info["machine_peak_gflops"] > 0
    for r in rows_of(out):
        assert r["status"] == "ok", r
        assert r["device"] == "cuda" and r["peak_mem_mib"] > 0 and r["peak_rss_mib"] is None


def test_cuda_oom_is_a_row_and_larger_n_skipped(tmp_path, monkeypatch):
    from lsbench.variants import REGISTRY

    path = tmp_path / "cuda_hog.py"
    path.write_text(CUDA_HOG)
    monkeypatch.setenv(plugins.ENV_VAR, str(path))
    before = dict(REGISTRY)
    try:
        out = tmp_path / "run"
        result = runner.invoke(app, [
            "run", "--suite", "smoke", "--device", "cuda", "--mode", "inference",
            "--variants", "test_cuda_hog,transformer", "--seq-lens", "16,32,64", "--out", str(out),
        ])
        assert result.exit_code == 0, result.output
        rows = {(r["variant"], r["seq_len"]): r for r in rows_of(out)}
        assert rows["test_cuda_hog", 16]["status"] == "ok"
        assert rows["test_cuda_hog", 32]["status"] == "oom"
        assert rows["test_cuda_hog", 64]["status"] == "skipped"
        assert all(rows["transformer", n]["status"] == "ok" for n in (16, 32, 64))
    finally:
        REGISTRY.clear()
        REGISTRY.update(before)
        plugins._loaded.discard(str(path))


def test_cuda_memory_relations():
    from lsbench.sweep.worker import run_config

    def peak(variant, n):
        cfg = {"variant": variant, "params": {}, "mode": "inference", "dtype": "float32",
               "device": "cuda", "batch_size": 1, "seq_len": n, "d_model": 64, "n_heads": 8,
               "n_layers": 1, "ffn_dim": 256, "causal": False}
        row = run_config({"config": cfg, "time_budget_s": 0.05, "warmup": 1, "threads": 1})
        return row["peak_mem_mib"]

    assert peak("transformer", 4096) >= 3 * peak("transformer", 2048)
    assert peak("fastformer", 4096) <= 2.5 * peak("fastformer", 2048)
