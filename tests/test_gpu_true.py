"""GPU-true provenance checked on CPU: the SDPA backend a row ran, float32 matmul precision,
the attention-only layer, and the GPU suites (bf16 companion, FlashAttention App. E shape)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lsbench.measure.sdpa import SdpaProbe, matmul_precision
from lsbench.models import Encoder, EncoderConfig
from lsbench.sweep import grid, suite
from lsbench.sweep.worker import execute


def test_probe_names_the_fused_cpu_kernel_and_the_math_fallback():
    q = torch.randn(1, 2, 16, 8)
    with SdpaProbe() as fused:
        F.scaled_dot_product_attention(q, q, q)
    assert fused.backends == "flash-cpu"
    with SdpaProbe() as math, torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        F.scaled_dot_product_attention(q, q, q)
    assert math.backends == "math"
    with SdpaProbe() as none:
        q @ q.transpose(-1, -2)
    assert none.backends == ""


def test_probe_leaves_torch_compile_working():
    """The probe's watch on aten ops is entered inside SDPA calls only: a dispatch mode over
    the whole forward makes dynamo refuse to compile (flex_attention then ran uncompiled and
    failed on the mode, so every flex row on CUDA was an error row)."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    fn = torch.compile(lambda t: torch.sin(t) + 1, backend=counter)
    q = torch.randn(1, 2, 16, 8)
    with SdpaProbe() as probe:
        fn(q)
        F.scaled_dot_product_attention(q, q, q)
    assert counter.frame_count == 1, "torch.compile did not compile under SdpaProbe"
    assert probe.backends == "flash-cpu"


def test_rows_record_backend_and_matmul_precision():
    config = {"variant": "sdpa", "params": {}, "mode": "inference", "dtype": "float32",
              "device": "cpu", "batch_size": 1, "seq_len": 64, "d_model": 32, "n_heads": 2,
              "n_layers": 1, "ffn_dim": 128, "causal": False, "batch_tokens": None,
              "matmul_precision": "high"}
    row = execute({"kind": "config", "config": config, "time_budget_s": 0.05, "warmup": 1,
                   "threads": 1})
    assert row["status"] == "ok", row
    assert row["sdpa_backend"] == "flash-cpu" and row["matmul_precision"] == "high"
    assert row["computed_flops"] >= row["flops"] > 0 and row["device_name"]
    plain = dict(config, variant="transformer")
    row = execute({"kind": "config", "config": plain, "time_budget_s": 0.05, "warmup": 1,
                   "threads": 1})
    assert row["sdpa_backend"] == ""  # materialised scores: no SDPA call at all


def test_matmul_precision_names_tf32_only_on_cuda():
    assert matmul_precision("cpu") == torch.get_float32_matmul_precision()


def test_attention_layer_is_the_sublayer_alone():
    cfg = EncoderConfig("sdpa", 32, 2, layer="attention")
    model = Encoder(cfg)
    assert not any("ffn" in n or "ln" in n for n, _ in model.named_parameters())
    x = torch.randn(2, 10, 32)
    assert torch.equal(model(x), model.blocks[0].attn(x))
    block = Encoder(EncoderConfig("sdpa", 32, 2))
    assert model.flops(2, 10) < block.flops(2, 10)


def test_new_config_keys_keep_old_ids():
    s = suite.load_suite("smoke")
    ids = {c["config_id"] for c in grid.build_grid(s, "cpu")}
    old = [{k: v for k, v in c.items() if k not in ("layer", "matmul_precision")}
           for c in grid.build_grid(s, "cpu")]
    assert {grid.config_id(c) for c in old} == ids  # defaults do not enter the id
    tf32 = suite.override(s, matmul_precision="high")
    assert not ids & {c["config_id"] for c in grid.build_grid(tf32, "cpu")}


def test_gpu_suites():
    bf16 = suite.load_suite("fastformer-fig2-bf16")
    fp32 = suite.load_suite("fastformer-fig2")
    assert bf16.dtype == "bfloat16" and fp32.dtype == "float32"
    assert fp32.matmul_precision == "highest"  # the paper's era: no TF32
    assert (bf16.variants, bf16.seq_lens, bf16.batch_tokens) == (
        fp32.variants, fp32.seq_lens, fp32.batch_tokens)
    app_e = suite.load_suite("flash-appendix-e")
    assert (app_e.d_model // app_e.n_heads, app_e.n_heads, app_e.batch_sizes) == (64, 8, [16])
    assert app_e.dtype == "float16" and app_e.modes == ["training"] and app_e.layer == "attention"
    assert app_e.seq_lens[0] == 1024 and app_e.seq_lens[-1] == 65536
    assert {"transformer", "sdpa", "linformer", "longformer", "bigbird"} == set(app_e.variants)


class _Overflows(torch.nn.Module):
    def forward(self, x, mask=None):
        return x * float("inf")


def _config(variant: str, dtype: str = "float32") -> dict:
    return {"variant": variant, "params": {}, "mode": "inference", "dtype": dtype,
            "device": "cpu", "batch_size": 1, "seq_len": 16, "d_model": 8, "n_heads": 2,
            "n_layers": 1, "ffn_dim": 32, "causal": False, "batch_tokens": None}


def test_a_forward_that_overflows_is_an_error_row_not_a_timing(monkeypatch):
    from lsbench.variants import REGISTRY

    monkeypatch.setattr(REGISTRY["fastformer"], "forward", _Overflows.forward)
    row = execute({"kind": "config", "config": _config("fastformer"), "time_budget_s": 0.05,
                   "warmup": 1, "threads": 1})
    assert row["status"] == "error" and "not finite in float32" in row["reason"]
    assert "latency_ms" not in row


def test_an_unsupported_dtype_is_named(monkeypatch):
    from lsbench.variants import REGISTRY

    def forward(self, x, mask=None):
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'')

    monkeypatch.setattr(REGISTRY["fastformer"], "forward", forward)
    row = execute({"kind": "config", "config": _config("fastformer", "float16"),
                   "time_budget_s": 0.05, "warmup": 1, "threads": 1})
    assert row["status"] == "error"
    assert row["reason"].startswith("an op of this variant cannot run Half on this device")


def test_max_batch_tokens_leaves_out_costly_batches_but_keeps_batch_one():
    s = suite.load_suite("quick")
    assert s.batch_sizes == [1, 8] and s.max_batch_tokens
    configs = grid.build_grid(s, "cpu")
    pairs = {(c["batch_size"], c["seq_len"]) for c in configs if c["mode"] != "decode"}
    assert (8, 512) in pairs and (8, 1024) not in pairs and (1, 8192) in pairs
    listed = next(r for r in suite.list_rows() if r["name"] == "quick")
    assert listed["configs"] == len(configs)


# --- issue 17, item 5 ----------------------------------------------------------------------


def test_flex_oom_while_compiling_stays_an_oom_row(monkeypatch):
    """A CUDA OOM in inductor's autotuning reaches flex() wrapped in a compile error: it must
    still give an `oom` row (so the larger N are skipped), not "could not be compiled"."""
    from torch._dynamo.exc import BackendCompilerFailed

    from lsbench.sweep.worker import _failure
    from lsbench.variants import _flex

    def autotune_oom(*args, **kwargs):
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        except torch.OutOfMemoryError as e:
            raise BackendCompilerFailed(lambda *a: None, e) from e

    monkeypatch.setattr(_flex, "_compiled", autotune_oom)
    q = torch.randn(1, 1, 4, 2)
    try:
        _flex.flex(q, q, q, block_mask=None)
    except BaseException as e:  # noqa: BLE001 - the row the worker would write
        row = _failure(e)
    assert row["status"] == "oom", row

    def not_a_compile_error(*args, **kwargs):
        raise NotImplementedError("FlexAttention does not support backward on CPU.")

    monkeypatch.setattr(_flex, "_compiled", not_a_compile_error)
    with pytest.raises(Exception, match="flex_attention failed on cpu") as err:
        _flex.flex(q, q, q, block_mask=None)
    assert "triton" not in str(err.value)  # not misdiagnosed as a missing compiler


def test_highest_precision_turns_cudnn_tf32_off_too():
    from lsbench.measure.sdpa import set_precision

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        set_precision("highest")
        assert not torch.backends.cudnn.allow_tf32
        set_precision("high")
        assert torch.backends.cudnn.allow_tf32
        row = execute({"kind": "config", "config": _config("sdpa"), "time_budget_s": 0.05,
                       "warmup": 1, "threads": 1})  # the suite default: highest
        assert row["status"] == "ok" and not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def test_training_rows_probe_sdpa_with_gradients_on():
    """The SDPA kernel can differ with autograd on (backward support decides it on CUDA):
    a training row names the kernel of a forward that records gradients."""
    from lsbench.sweep.worker import _checked_forward

    modes = []

    class Probe:
        backends = "x"

        def __enter__(self):
            modes.append(torch.is_grad_enabled())
            return self

        def __exit__(self, *exc):
            pass

    model = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    _checked_forward(model.train(), x, None, Probe)
    _checked_forward(model.eval(), x, None, Probe)
    assert modes == [True, False]
