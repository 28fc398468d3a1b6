"""Fast, in-process tests of the sweep's parts: suites, grid, statistics, store, worker units."""

from __future__ import annotations

import json

import pytest

from lsbench.errors import LsbenchError
from lsbench.measure.timing import CI_SAMPLES, median_ci, median_ci_level, summarise, time_step
from lsbench.sweep import grid, store, suite
from lsbench.sweep.worker import is_oom, run_config
from lsbench.variants import REGISTRY


def write(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


MINIMAL = """
[model]
d_model = 32
n_heads = 2
[sweep]
variants = ["transformer", "fastformer"]
seq_lens = [16, 32]
"""


# --- suites --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(suite.builtin_suites()))
def test_builtin_suites_load(name):
    s = suite.load_suite(name)
    assert s.variants and s.seq_lens and s.modes
    assert s.source.endswith(f"{name}.toml")


def test_quick_has_every_variant_and_lengths_128_to_8192():
    from lsbench.variants import REGISTRY

    s = suite.load_suite("quick")
    assert set(s.variants) == set(REGISTRY)
    assert min(s.seq_lens) == 128 and max(s.seq_lens) == 8192


def test_all_keeps_the_variants_that_run_on_the_device():
    s = suite.load_suite("quick")
    cuda_only = {n for n, cls in REGISTRY.items() if "cpu" not in getattr(cls, "devices", "cpu")}
    assert cuda_only, "expected a CUDA-only variant (flex_*) in the registry"
    on_cpu = {c["variant"] for c in grid.build_grid(s, "cpu")}
    assert on_cpu == set(REGISTRY) - cuda_only
    assert grid.device_variants(s, "cpu")[1] == sorted(cuda_only)
    assert {c["variant"] for c in grid.build_grid(s, "cuda:0")} == set(REGISTRY)
    # named explicitly, a CUDA-only variant is kept: its CPU row is an error saying why
    named = suite.override(s, variants=sorted(cuda_only))
    assert {c["variant"] for c in grid.build_grid(named, "cpu")} == cuda_only


def test_fig2_is_the_papers_sweep():
    s = suite.load_suite("fastformer-fig2")
    assert set(s.variants) == {"transformer", "longformer", "bigbird", "linformer", "linear",
                               "poolingformer", "fastformer", "sdpa"}
    assert s.seq_lens[0] == 128 and 32768 in s.seq_lens and s.seq_lens[-1] == 65535
    assert set(s.modes) == {"inference", "training"}
    assert len({b for n in s.seq_lens for b in s.batches_for(n)}) > 3  # several batch sizes


def test_unknown_key_names_file_section_and_suggestion(tmp_path):
    p = write(tmp_path, MINIMAL.replace("seq_lens", "seq_len"))
    with pytest.raises(LsbenchError) as e:
        suite.load_suite(str(p))
    msg = str(e.value)
    assert str(p) in msg and "[sweep]" in msg and "Did you mean 'seq_lens'" in msg


@pytest.mark.parametrize("bad, needle", [
    ("seq_lens = [16, 0]", "positive"),
    ("seq_lens = [16, -4]", "positive"),
    ("seq_lens = []", "empty"),
    ('seq_lens = [16]\nbatch_sizes = [0]', "positive"),
    ('seq_lens = [16]\nmodes = ["trainig"]', "Did you mean 'training'"),
    ('seq_lens = [16]\ndtype = "fp16"', "dtype"),
    ('seq_lens = [16]\n[params.transfomer]\nwindow = 1', "Did you mean 'transformer'"),
    ('seq_lens = [16]\nbatch_sizes = [1]\nbatch_tokens = 64', "both"),
])
def test_invalid_values(tmp_path, bad, needle):
    text = MINIMAL.replace("seq_lens = [16, 32]", bad)
    with pytest.raises(LsbenchError) as e:
        suite.load_suite(str(write(tmp_path, text)))
    assert needle in str(e.value)


def test_unknown_variant_in_list(tmp_path):
    text = MINIMAL.replace('"fastformer"]', '"fastfomer"]')
    with pytest.raises(LsbenchError, match="Did you mean 'fastformer'"):
        suite.load_suite(str(write(tmp_path, text)))


def test_bad_toml_and_unknown_variant_param(tmp_path):
    with pytest.raises(LsbenchError, match="not valid TOML"):
        suite.load_suite(str(write(tmp_path, "[sweep\n")))
    text = MINIMAL + "[params.fastformer]\nwindw = 3\n"
    with pytest.raises(LsbenchError, match="fastformer"):
        suite.load_suite(str(write(tmp_path, text, "p.toml")))


def test_parsers():
    assert suite.parse_size("512MiB") == 512 * 2**20
    assert suite.parse_size("8GiB") == 8 * 2**30
    assert suite.parse_size("1.5GB") == 1_500_000_000
    for bad in ("12XB", "lots", "10"):
        with pytest.raises(LsbenchError):
            suite.parse_size(bad)
    assert suite.parse_int_list("--seq-lens", "128, 256") == [128, 256]
    with pytest.raises(LsbenchError, match="not an integer"):
        suite.parse_int_list("--seq-lens", "128,x")
    with pytest.raises(LsbenchError, match="not positive"):
        suite.parse_int_list("--batch-sizes", "0")


def test_list_rows_covers_builtins():
    rows = suite.list_rows()
    assert {r["name"] for r in rows} >= {"smoke", "quick", "fastformer-fig2"}
    assert all(r["configs"] > 0 for r in rows)


# --- grid ----------------------------------------------------------------------------------

def test_config_ids_stable_and_distinct(tmp_path):
    s = suite.load_suite(str(write(tmp_path, MINIMAL)))
    a, b = grid.build_grid(s, "cpu"), grid.build_grid(s, "cpu")
    assert [c["config_id"] for c in a] == [c["config_id"] for c in b]
    assert len({c["config_id"] for c in a}) == len(a) == 4
    other = grid.build_grid(suite.override(s, dtype="bfloat16"), "cpu")
    assert not {c["config_id"] for c in a} & {c["config_id"] for c in other}


def test_max_len_follows_seq_len_unless_set(tmp_path):
    from lsbench.variants import REGISTRY

    if "linformer" not in REGISTRY:
        pytest.skip("linformer not registered")
    s = suite.load_suite(str(write(tmp_path, MINIMAL.replace('"fastformer"', '"linformer"'))))
    lin = [c for c in grid.build_grid(s, "cpu") if c["variant"] == "linformer"]
    assert [c["params"]["max_len"] for c in lin] == [16, 32]
    s.params["linformer"] = {"max_len": 64}
    lin = [c for c in grid.build_grid(s, "cpu") if c["variant"] == "linformer"]
    assert [c["params"]["max_len"] for c in lin] == [64, 64]


def test_repeated_values_give_each_config_once(tmp_path):
    s = suite.load_suite(str(write(tmp_path, MINIMAL)))
    s = suite.override(s, seq_lens=[16, 16, 32], batch_sizes=[1, 1], modes=["inference"] * 2)
    ids = [c["config_id"] for c in grid.build_grid(s, "cpu")]
    assert len(ids) == len(set(ids)) == 4


def test_batch_tokens_rule_and_ascending_lengths(tmp_path):
    text = MINIMAL.replace("seq_lens = [16, 32]", "seq_lens = [64, 16, 32]\nbatch_tokens = 64")
    configs = grid.build_grid(suite.load_suite(str(write(tmp_path, text))), "cpu")
    pairs = [(c["seq_len"], c["batch_size"]) for c in configs if c["variant"] == "transformer"]
    assert pairs == [(16, 4), (32, 2), (64, 1)]


def test_predicted_memory_grows_quadratically_for_transformer(tmp_path):
    s = suite.load_suite(str(write(tmp_path, MINIMAL)))
    cfg = grid.build_grid(s, "cpu")[0]
    small = grid.predict_mem_bytes({**cfg, "seq_len": 4096})
    big = grid.predict_mem_bytes({**cfg, "seq_len": 8192})
    assert big > 3.5 * small
    assert grid.predict_mem_bytes({**cfg, "mode": "training"}) > grid.predict_mem_bytes(cfg)


# --- statistics ----------------------------------------------------------------------------

def test_median_ci_order_statistics():
    xs = list(range(1, 21))  # n = 20: the 95% binomial interval is [x_(6), x_(15)]
    assert median_ci(xs) == (6, 15)
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few samples: the range
    t = summarise([1.0, 1.0, 1.0, 2.0], 10)
    assert t.median_s == 1.0 and t.repeats == 4 and t.iters_per_sample == 10
    assert t.noisy  # IQR 0.25 > 10% of 1.0


def test_median_ci_level_is_the_exact_binomial_coverage():
    assert median_ci_level(4) == 0.875  # (min, max) of 4: 1 - 2 / 2**4
    assert median_ci_level(5) < 0.95 <= median_ci_level(6)
    assert abs(median_ci_level(20) - (1 - 2 * 21700 / 2**20)) < 1e-12  # P(Bin(20) <= 5)
    assert all(median_ci_level(n) >= 0.95 for n in range(6, 60))
    assert summarise([1.0, 2.0, 3.0, 4.0], 1).ci_level == 0.875


def test_time_step_tops_up_to_a_real_95_percent_interval():
    t = time_step(lambda: sum(range(200)), budget_s=0.6, threads=1)
    assert t.repeats >= CI_SAMPLES and t.ci_level >= 0.95
    assert t.ci_low_s <= t.median_s <= t.ci_high_s


# --- memory tracker ------------------------------------------------------------------------

def test_cpu_tracker_counts_new_storages_not_views_or_in_place_updates():
    import torch

    from lsbench.measure.memory import track_peak

    lin = torch.nn.Linear(512, 512)  # 1 MiB weight; F.linear takes a view of it (weight.t())
    x = torch.randn(1, 512)
    with torch.no_grad(), track_peak("cpu") as mem:
        lin(x)
        lin.weight.mul_(1.0)  # in place: no new memory
    assert mem.peak_mib < 0.1  # the 2 KiB output (+ bias), not the weight


def test_training_memory_counts_gradients_but_not_params_or_adam_state():
    cfg = unit("fastformer", 8, mode="training", d=256)
    params_mib = 4 * (4 * 256 * 256 + 2 * 256 * 1024) / 2**20  # weights, without biases
    peak = run_config(cfg)["peak_mem_mib"]
    # gradients (params_mib) + AdamW's per-parameter temporaries; counting the parameters and
    # both moments too (storages the step only updates in place) would give > 4 × params_mib
    assert params_mib <= peak <= 2.5 * params_mib


# --- store ---------------------------------------------------------------------------------

def test_rows_have_every_column_and_failed_rows_no_numbers():
    cfg = {"variant": "x", "mode": "inference", "dtype": "float32", "device": "cpu",
           "batch_size": 1, "seq_len": 8, "d_model": 8, "n_heads": 1, "n_layers": 1,
           "config_id": "abc", "params": {}}
    row = store.make_row(cfg, {"status": "oom", "reason": "r", "latency_ms": 3.0})
    assert set(store.COLUMNS) <= set(row)
    assert row["latency_ms"] is None and row["status"] == "oom"
    row = store.make_row(cfg, {"status": "weird"})
    assert row["status"] == "error"


def test_truncated_last_line_is_skipped_and_repaired(tmp_path):
    s = store.RunStore(tmp_path)
    s.jsonl.write_text(json.dumps({"config_id": "a"}) + "\n" + '{"config_id": "b", "lat')
    rows, warnings = store.read_jsonl(s.jsonl)
    assert [r["config_id"] for r in rows] == ["a"] and "last line" in warnings[0]
    assert s.repair_tail()
    s.append({"config_id": "c"})
    rows, warnings = store.read_jsonl(s.jsonl)
    assert [r["config_id"] for r in rows] == ["a", "c"] and not warnings


def test_new_run_refuses_a_directory_with_files(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(LsbenchError, match="--resume"):
        store.RunStore.check_new(tmp_path)


def test_latest_symlink_is_relative(tmp_path):
    a, b = tmp_path / "20240101-000000-x", tmp_path / "20240101-000001-x"
    a.mkdir()
    b.mkdir()
    store.update_latest(a)
    store.update_latest(b)
    link = tmp_path / "latest"
    assert link.is_symlink() and str(link.readlink()) == b.name


# --- worker units (in-process) -------------------------------------------------------------

def unit(variant, n, mode="inference", d=32, h=4, budget=0.01, **params):
    cfg = {"variant": variant, "params": params, "mode": mode, "dtype": "float32",
           "device": "cpu", "batch_size": 1, "seq_len": n, "d_model": d, "n_heads": h,
           "n_layers": 1, "ffn_dim": 4 * d, "causal": False}
    return {"kind": "config", "config": cfg, "time_budget_s": budget, "warmup": 1, "threads": 1}


def test_training_unit_reports_everything():
    r = run_config(unit("fastformer", 64, mode="training"))
    assert r["status"] == "ok"
    for key in ("latency_ms", "latency_ms_iqr", "latency_ms_ci_low", "latency_ms_ci_high",
                "peak_mem_mib", "peak_rss_mib", "tokens_per_s", "gflops_per_s"):
        assert r[key] is not None and r[key] >= 0, key
    assert r["latency_ms_ci_low"] <= r["latency_ms"] <= r["latency_ms_ci_high"]


def test_memory_relations_transformer_quadratic_fastformer_linear():
    def peak(variant, n):
        return run_config(unit(variant, n))["peak_mem_mib"]

    assert peak("transformer", 2048) >= 3 * peak("transformer", 1024)
    assert peak("fastformer", 2048) <= 2.5 * peak("fastformer", 1024)


def test_a_failing_probe_is_an_error_message_not_a_dead_worker():
    from lsbench.sweep.worker import execute

    out = execute({"kind": "probe", "device": "cpu", "dtype": "no_such_dtype", "threads": 1})
    assert "probing the device failed" in out["error"] and "no_such_dtype" in out["error"]


def test_oom_classification():
    import torch

    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_oom(ValueError("out of memory"))  # only allocator errors count
    assert not is_oom(RuntimeError("shape mismatch"))


def test_memory_prediction_is_calibrated_by_measurements():
    """After a measured config, larger ones are predicted from measured/analytic, not the bound."""
    cfg = {"variant": "bigbird", "mode": "training", "dtype": "float32", "device": "cpu",
           "batch_size": 2, "seq_len": 1024, "d_model": 64, "n_heads": 2, "n_layers": 1,
           "ffn_dim": 256, "causal": False, "batch_tokens": None,
           "params": dict(REGISTRY["bigbird"].defaults)}
    predictor = grid.MemoryPredictor()
    bound, how = predictor.predict({**cfg, "seq_len": 4096})
    assert how == "analytic upper bound" and bound == grid.predict_mem_bytes(
        {**cfg, "seq_len": 4096})
    measured_mib = grid.predict_mem_bytes(cfg) / 2**20 / 5  # the bound was 5x too high
    predictor.observe({**cfg, "status": "ok", "peak_mem_mib": measured_mib})
    predictor.observe({**cfg, "seq_len": 512, "status": "ok", "peak_mem_mib": 1e9})  # smaller N
    calibrated, how = predictor.predict({**cfg, "seq_len": 4096, "batch_size": 4})
    expected = grid.predict_mem_bytes({**cfg, "seq_len": 4096, "batch_size": 4}) / 5 * 1.25
    assert calibrated == pytest.approx(expected) and "N=1024" in how
    # other shapes or modes are not calibrated by it; failures calibrate nothing
    assert predictor.predict({**cfg, "mode": "inference"})[1] == "analytic upper bound"
    predictor.observe({**cfg, "d_model": 128, "status": "oom", "peak_mem_mib": None})
    assert predictor.predict({**cfg, "d_model": 128})[1] == "analytic upper bound"
    # a bound that proved too low is raised, never kept
    low = grid.MemoryPredictor([{**cfg, "status": "ok",
                                 "peak_mem_mib": grid.predict_mem_bytes(cfg) / 2**20 * 2}])
    assert low.predict(cfg)[0] == pytest.approx(grid.predict_mem_bytes(cfg) * 2 * 1.25)
