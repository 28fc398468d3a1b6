"""flex_window / flex_causal through the real worker path (`worker.execute`), compiled by
inductor's C++ backend on this CPU with the variants' CUDA-only guard lifted: the CUDA path
minus triton (issue 17, item 1). Slow (an inductor compile per shape): `pytest -m slow`.

Under lsbench's SDPA probe the forward must still compile: a TorchDispatchMode active over the
whole forward made dynamo refuse, flex_attention ran uncompiled and failed on the mode, and
every flex row on CUDA was an `error` row. The CPU memory tracker (also a dispatch mode) cannot
see inside the compiled kernel, so it is replaced by a null reading here, as `track_peak` on
CUDA reads the allocator instead. torch 2.13 has no flex backward on CPU: flex training runs in
`pytest -m gpu` (test_sweep_gpu.py).
"""

from __future__ import annotations

import contextlib
import shutil

import pytest
import torch

import lsbench.measure.memory as memory
from lsbench.sweep.worker import execute
from lsbench.variants._flex import FlexWindowBase

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                       reason="inductor's CPU backend needs a C++ compiler (g++), none found"),
]


@contextlib.contextmanager
def _no_cpu_tracker(device):
    yield memory.PeakMemory(peak_mib=0.0, method="none (test: compiled kernel)")


def _unit(variant: str) -> dict:
    return {"kind": "config", "time_budget_s": 0.05, "warmup": 1, "threads": 1,
            "config": {"variant": variant, "params": {}, "mode": "inference",
                       "dtype": "float32", "device": "cpu", "batch_size": 1, "seq_len": 256,
                       "d_model": 64, "n_heads": 4, "n_layers": 1, "ffn_dim": 128,
                       "causal": False, "batch_tokens": None}}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("variant", ["flex_window", "flex_causal"])
def test_flex_row_compiles_under_the_worker(monkeypatch, variant):
    monkeypatch.setattr(FlexWindowBase, "devices", ("cuda", "cpu"))
    monkeypatch.setattr(memory, "track_peak", _no_cpu_tracker)
    row = execute(_unit(variant))
    assert row["status"] == "ok", (row.get("reason"), row.get("traceback"))
    assert row["latency_ms"] > 0 and row["sdpa_backend"] == ""
    # and a plain compiled function still compiles in the same process afterwards
    fn = torch.compile(lambda t: torch.sin(t) * 2)
    torch.testing.assert_close(fn(torch.ones(3)), torch.sin(torch.ones(3)) * 2)
