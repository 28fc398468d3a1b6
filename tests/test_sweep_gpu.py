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
    assert info["matmul_precision_in_force"].endswith(
        "(full fp32 matmul, cuDNN TF32 off)")  # smoke: highest
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


# --- measurement correctness on CUDA (catch unsynchronised timing, leaks between configs) --------

def _event_ms(fn, repeats=5):
    """Best of a few CUDA-event timings of fn(): the GPU's own clock, immune to async launches."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end))
    return best


def test_cuda_timing_waits_for_the_gpu():
    """A step that only launches a ~2 ms GPU kernel: unsynchronised timing would see the
    microseconds of the launch (or, once the launch queue is full, one huge block)."""
    from lsbench.measure.timing import CI_SAMPLES, _time_block, time_step

    cycles = 1_000_000
    cycles = int(cycles * 2.0 / _event_ms(lambda: torch.cuda._sleep(cycles)))  # about 2 ms
    kernel_ms = _event_ms(lambda: torch.cuda._sleep(cycles))

    def step():
        torch.cuda._sleep(cycles)

    t = time_step(step, budget_s=2.0, threads=1)
    assert 0.85 * kernel_ms <= t.median_s * 1e3 <= 1.2 * kernel_ms, (t, kernel_ms)
    assert t.repeats >= CI_SAMPLES and t.iters_per_sample <= 1000
    one = _time_block(step, 1, 1) * 1e3  # the top-up blocks use the same synchronising clock
    assert 0.85 * kernel_ms <= one <= 2 * kernel_ms, (one, kernel_ms)


def test_cuda_machine_peak_is_synchronised_and_in_the_run_dtype():
    from lsbench.measure.peak import matmul_peak_gflops

    for dtype in (torch.float32, torch.bfloat16 if torch.cuda.is_bf16_supported()
                  else torch.float16):
        peak = matmul_peak_gflops("cuda", dtype, threads=1, budget_s=0.6)
        n = 4096
        a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
        measured = 2 * n**3 / (_event_ms(lambda a=a, b=b: a @ b) / 1e3) / 1e9
        # the peak is the best of three sizes, so at least this one; an unsynchronised timer
        # would report launch rate (many times the event-timed figure)
        assert 0.8 * measured <= peak["gflops"] <= 2.0 * measured, (dtype, peak, measured)
        assert str(dtype) in peak["method"]


def _cfg(variant, n, mode="inference", d=64, ffn=256, dtype="float32", device="cuda", **params):
    return {"kind": "config", "time_budget_s": 0.05, "warmup": 1, "threads": 1,
            "config": {"variant": variant, "params": params, "mode": mode, "dtype": dtype,
                       "device": device, "batch_size": 1, "seq_len": n, "d_model": d,
                       "n_heads": 8, "n_layers": 1, "ffn_dim": ffn, "causal": False}}


def test_cuda_training_memory_counts_the_steps_gradients():
    from lsbench.sweep.worker import run_config

    d, ffn = 1024, 4096  # ~48 MiB of weights; N = 8, so activations are negligible
    params_mib = 4 * (4 * d * d + 2 * d * ffn) / 2**20
    peak = run_config(_cfg("fastformer", 8, mode="training", d=d, ffn=ffn))["peak_mem_mib"]
    # While AdamW (foreach) steps, the fresh gradients (P) and its sqrt(v) temporaries (P) are
    # alive together: ~2P above the baseline. A baseline that still held the warm-up's
    # gradients nets them out and shows ~P (and the CPU tracker would disagree).
    assert peak >= 1.5 * params_mib, (peak, params_mib)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_half_precision_steps_run(dtype):
    from lsbench.sweep.worker import execute

    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    for mode in ("inference", "training"):
        r = execute(_cfg("transformer", 256, mode=mode, dtype=dtype))
        assert r["status"] == "ok", r
        assert r["peak_mem_mib"] > 0 and r["latency_ms"] > 0


def test_cuda_memory_is_released_after_each_config_even_after_oom():
    """The worker is reused: one config's tensors (kept alive by an exception's traceback, say)
    must not stay allocated or cached into the next config."""
    from lsbench.sweep.worker import execute
    from lsbench.variants import REGISTRY
    from lsbench.variants.base import Variant

    before = dict(REGISTRY)

    class LeakyHog(Variant):
        name = "test_cuda_leaky_hog"

        def __init__(self, d_model, n_heads, causal=False, **params):
            super().__init__(d_model, n_heads, causal, **params)
            self.proj = torch.nn.Linear(d_model, d_model)

        def forward(self, x, mask=None):
            held = torch.empty(2**30, dtype=torch.uint8, device=x.device)  # 1 GiB in this frame
            torch.empty(2**45, dtype=torch.uint8, device=x.device)  # then a real CUDA OOM
            return self.proj(x) + held[0]

    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        ok = execute(_cfg("transformer", 2048))
        assert ok["status"] == "ok", ok
        assert torch.cuda.memory_allocated() == allocated
        oom = execute(_cfg("test_cuda_leaky_hog", 64))
        assert oom["status"] == "oom", oom
        assert torch.cuda.memory_allocated() == allocated
        assert torch.cuda.memory_reserved() <= reserved + 64 * 2**20  # the 1 GiB went back
    finally:
        REGISTRY.clear()
        REGISTRY.update(before)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_config_on_a_second_device_makes_it_current():
    """torch.utils.benchmark synchronises the current device only; a config on cuda:1 in a
    fresh worker must switch to it, or its timings would not wait for its kernels."""
    from lsbench.sweep.worker import run_config

    last = torch.cuda.device_count() - 1
    previous = torch.cuda.current_device()
    try:
        r = run_config(_cfg("transformer", 256, device=f"cuda:{last}"))
        assert r["status"] == "ok" and torch.cuda.current_device() == last
    finally:
        torch.cuda.set_device(previous)


def _gpu_row(variant: str, dtype: str, n: int = 1024, mode: str = "inference") -> dict:
    from lsbench.sweep.worker import execute

    config = {"variant": variant, "params": {"max_len": n} if variant == "linformer" else {},
              "mode": mode, "dtype": dtype, "device": "cuda", "batch_size": 2, "seq_len": n,
              "d_model": 256, "n_heads": 4, "n_layers": 1, "ffn_dim": 1024, "causal": False,
              "batch_tokens": None}
    return execute({"kind": "config", "config": config, "time_budget_s": 0.2, "warmup": 1,
                    "threads": 1})


def test_cuda_sdpa_backend_is_recorded_flash_in_bf16():
    bf16 = _gpu_row("sdpa", "bfloat16")
    fp32 = _gpu_row("sdpa", "float32")
    assert bf16["status"] == fp32["status"] == "ok", (bf16, fp32)
    # fp16/bf16 with head dim 64: a fused kernel (flash, or cuDNN where torch prefers it)
    assert bf16["sdpa_backend"] in ("flash", "cudnn"), bf16["sdpa_backend"]
    assert fp32["sdpa_backend"] and fp32["sdpa_backend"] != "flash", fp32["sdpa_backend"]
    assert "matmul" in fp32["matmul_precision"] and bf16["device_name"]


@pytest.mark.parametrize("variant", ["longformer", "bigbird", "poolingformer", "linformer",
                                     "linear", "fastformer", "transformer"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cuda_every_fig2_variant_runs_each_dtype(variant, dtype):
    """Both modes; a dtype a variant cannot run must come back as an error row naming it."""
    for mode in ("inference", "training"):
        row = _gpu_row(variant, dtype, n=2048, mode=mode)
        assert row["status"] == "ok", (variant, dtype, mode, row.get("reason"))
        assert row["latency_ms"] > 0 and row["peak_mem_mib"] > 0


def test_cuda_executor_gpus_runs_one_worker_per_gpu(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--suite", "smoke", "--device", "cuda", "--out", str(out),
                                 "--executor", "gpus"])
    assert result.exit_code == 0, result.output
    rows = rows_of(out)
    assert {r["status"] for r in rows} == {"ok"}
    from lsbench.sweep.executors import visible_gpus

    workers = {r["worker"] for r in rows}
    assert workers <= {f"gpu {g}" for g in visible_gpus()}
    info = json.loads((out / "run.json").read_text())
    assert info["env"]["cuda"]["count"] == len(visible_gpus())  # not slot 0's view (1)
    assert len(workers) > 1 if len(visible_gpus()) > 1 else len(workers) == 1


@pytest.mark.parametrize("variant", ["flex_window", "flex_causal"])
def test_cuda_flex_variants_run_in_a_sweep(tmp_path, variant):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--suite", "smoke", "--device", "cuda", "--out", str(out),
                                 "--variants", variant, "--seq-lens", "256,1024"])
    assert result.exit_code == 0, result.output
    rows = rows_of(out)
    assert {r["status"] for r in rows} == {"ok"}, [r["reason"] for r in rows]


# --- issue 17: what status/latency/memory > 0 would not catch -------------------------------


@pytest.mark.parametrize("variant", ["flex_window", "flex_causal"])
def test_cuda_flex_contract(variant):
    """The registry contract of test_variants_contract.py, on CUDA (flex_* is CUDA only):
    shape and finiteness at odd N, gradients reach every parameter (flex backward), batch
    independence, padding invariance, and no causal leak."""
    from tests.test_variants_contract import D, make, randn

    for causal in (False, True):
        m = make(variant, causal).cuda()
        with torch.no_grad():
            for n in (1, 7, 130, 1023):
                y = m(randn(2, n, D).cuda())
                assert y.shape == (2, n, D) and torch.isfinite(y).all()
            x = randn(3, 300, D).cuda()
            y = m(x)
            torch.testing.assert_close(m(x[1:2]), y[1:2], atol=1e-4, rtol=1e-4)
            mask = torch.ones(3, 340, dtype=torch.bool, device="cuda")
            mask[:, 300:] = False
            padded = m(torch.cat([x, 3 * randn(3, 40, D, seed=3).cuda()], 1), mask=mask)
            torch.testing.assert_close(padded[:, :300], y, atol=1e-4, rtol=1e-4)
            if causal or variant == "flex_causal":
                x2 = x.clone()
                x2[:, 200] = 5 * randn(3, D, seed=9).cuda()
                torch.testing.assert_close(m(x2)[:, :200], y[:, :200], atol=1e-4, rtol=1e-4)
        m.train()
        xg = randn(2, 257, D).cuda().requires_grad_()
        (m(xg) * randn(2, 257, D, seed=2).cuda()).sum().backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", ["flex_window", "flex_causal"])
def test_cuda_flex_rows_ok_in_both_modes(variant):
    """Item 1: under the worker's SDPA probe, flex rows used to come back as error rows."""
    for mode in ("inference", "training"):
        row = _gpu_row(variant, "bfloat16", n=1024, mode=mode)
        assert row["status"] == "ok", (mode, row.get("reason"))
        assert row["sdpa_backend"] == ""


def test_cuda_fp16_training_step_gradients_are_not_zero():
    """Item 2 on CUDA at the App. E shape (B=16, N=1024, 8x64 heads, attention sublayer)."""
    from lsbench.models import Encoder, EncoderConfig
    from lsbench.sweep.worker import make_step

    torch.manual_seed(0)
    model = Encoder(EncoderConfig("sdpa", 512, 8, 1, 2048, False, {}, "attention")).cuda()
    step = make_step(model, torch.randn(16, 1024, 512, device="cuda"), "training",
                     torch.float16)
    step()
    grads = [p.grad for p in model.parameters()]
    zero = sum(int((g == 0).sum()) for g in grads) / sum(g.numel() for g in grads)
    assert zero < 0.01 and all(torch.isfinite(g).all() for g in grads), zero


def test_cuda_transformer_half_training_memory_per_score():
    """Item 3: fp16 scores, probabilities and one gradient (~6 bytes per score at the peak);
    an fp32 softmax under autocast needs about twice that."""
    row = run_config_row("transformer", n=4096)
    per_score = row["peak_mem_mib"] * 2**20 / (2 * 8 * 4096 * 4096)
    assert row["status"] == "ok" and per_score <= 7.5, (row, per_score)


def run_config_row(variant: str, n: int) -> dict:
    from lsbench.sweep.worker import execute

    config = {"variant": variant, "params": {}, "mode": "training", "dtype": "float16",
              "device": "cuda", "batch_size": 2, "seq_len": n, "d_model": 512, "n_heads": 8,
              "n_layers": 1, "ffn_dim": 2048, "causal": False, "batch_tokens": None,
              "layer": "attention"}
    return execute({"kind": "config", "config": config, "time_budget_s": 0.2, "warmup": 1,
                    "threads": 1})


def test_cuda_gpus_executor_pins_each_worker(tmp_path):
    """Not trivially true on one GPU: two workers pinned to the same GPU both run configs,
    each sees exactly one device, and run.json counts the GPUs the run uses."""
    from lsbench.sweep.executors import EnvLocalExecutor, Pool, visible_gpus
    from lsbench.sweep.runner import RunRequest, execute, plan_run

    gpu = visible_gpus()[0]
    slots = [EnvLocalExecutor(1, {"CUDA_VISIBLE_DEVICES": gpu}, f"gpu {gpu}/{i}")
             for i in range(2)]
    probe = Pool("gpus", slots, [s.label for s in slots], gpu_slots=True)
    try:
        env = probe.run({"kind": "probe", "device": "cuda", "dtype": "float32", "threads": 1},
                        300)["env"]
        assert env["cuda"]["count_in_worker"] == 1 and env["cuda"]["count"] == 2
        plan = plan_run(RunRequest(suite="smoke", out=tmp_path / "run", device="cuda",
                                   threads=1))

        class Quiet:
            def __getattr__(self, name):
                return lambda *a, **k: None

        out = execute(plan, Quiet(), executor=probe)
    finally:
        probe.close()
    assert out.complete and {r["status"] for r in out.rows} == {"ok"}
    assert {r["worker"] for r in out.rows} == {s.label for s in slots}
