"""The sweep: plan (validate everything, touch nothing), then execute config by config.

    plan = plan_run(RunRequest(suite="quick", ...))     # LsbenchError for any bad input
    outcome = execute(plan, events, should_stop)         # rows on disk as each config ends

Before a config runs, its memory is predicted from the variant's complexity; configs over the
budget are recorded as `skipped` with the prediction, and after an `oom` (or a `timeout`) at
(variant, mode, B, N) the larger N of that group are `skipped` without trying.

Why one module of ~550 lines: it is the sweep's one control loop (plan, probe, skip rules,
append, resume, end-of-run checks and summary data), each part short and used only here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lsbench
from lsbench.errors import LsbenchError
from lsbench.sweep import grid
from lsbench.sweep.executors import Pool, check_executor, make_executor
from lsbench.sweep.plugins import load_plugins
from lsbench.sweep.store import RunStore, default_run_dir, make_row, now_iso, update_latest
from lsbench.sweep.suite import Suite, load_suite, override
from lsbench.sweep.worker import MIB, WorkerStartError

CPU_BUDGET_FRACTION = 0.5  # of available RAM: the machine is shared, RSS has allocator slack
CUDA_BUDGET_FRACTION = 0.85  # of free GPU memory
PROBE_TIMEOUT_S = 600.0
ENV_KEYS = ("hostname", "cpu_model", "torch", "python")
GRID_OPTIONS = ("suite", "variants", "seq_lens", "batch_sizes", "modes", "dtype", "device",
                "threads", "compile")
TIMING_METHOD = ("blocks of calls >= 20 ms each (torch.utils.benchmark's synchronising clock, gc "
                 "off), added until IQR/median < 10% over >= 6 blocks or the time budget is "
                 "spent; samples are per-step means of a block; median, IQR, 95% CI of the "
                 "median by order statistics (binomial; latency_ci_level is its exact coverage, "
                 "below 0.95 under 6 samples); CPU: freed memory kept in the heap while timing "
                 "(run.json env.allocator)")


@dataclass
class RunRequest:
    """What the user asked for; None means "the suite's value" (or an automatic default)."""

    suite: str | None = None
    out: Path | None = None
    resume: Path | None = None  # run directory to continue
    force: bool = False
    variants: list[str] | None = None
    seq_lens: list[int] | None = None
    batch_sizes: list[int] | None = None
    modes: list[str] | None = None
    dtype: str | None = None
    device: str | None = None
    compile: str | None = None  # torch.compile mode of the timed step (suite.COMPILE_MODES)
    mem_budget_bytes: int | None = None
    timeout_s: float | None = None
    threads: int | None = None
    executor: str = "local"  # lsbench.sweep.executors: local, gpus, ray
    workers: int | None = None  # --executor ray: actors (default: one per GPU, 1 on CPU)
    command: str = "lsbench run"
    args: dict[str, Any] = field(default_factory=dict)
    reports_root: Path = Path("reports")


@dataclass
class Plan:
    request: RunRequest
    suite: Suite
    device: str
    threads: int
    timeout_s: float
    configs: list[dict[str, Any]]
    run_dir: Path
    store: RunStore
    resume_info: dict[str, Any] | None = None  # run.json of the run being resumed
    warnings: list[str] = field(default_factory=list)

    @property
    def done_ids(self) -> set[str]:
        return {r["config_id"] for r in self.store.rows}

    @property
    def todo(self) -> list[dict[str, Any]]:
        done = self.done_ids
        return [c for c in self.configs if c["config_id"] not in done]


class Events(Protocol):
    def status(self, message: str) -> None: ...
    def start(self, plan: Plan, todo: int) -> None: ...
    def config(self, config: dict[str, Any], index: int, total: int) -> None: ...
    def row(self, row: dict[str, Any]) -> None: ...


@dataclass
class Outcome:
    run_dir: Path
    rows: list[dict[str, Any]]  # every row in the run, earlier ones included
    new_rows: int
    complete: bool
    info: dict[str, Any]


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        built = (f"built with CUDA {torch.version.cuda}" if torch.version.cuda
                 else "a CPU-only build")
        raise LsbenchError(
            f"device {requested!r} requested but CUDA is not available (torch {torch.__version__}, "
            f"{built}); use --device cpu, or run on a machine with an NVIDIA GPU and a CUDA torch."
        )
    return requested


def check_dtype(dtype: str, device: str) -> None:
    if device == "cpu" and dtype == "float16":
        raise LsbenchError(
            "dtype float16 cannot run on the CPU here (half-precision CPU kernels are partial and "
            "slow, so timings would mislead); use --dtype float32 or bfloat16, or --device cuda."
        )


def plan_run(req: RunRequest) -> Plan:
    """Validate every input and work out the configs; writes nothing."""
    load_plugins()
    if req.timeout_s is not None and req.timeout_s <= 0:
        raise LsbenchError(f"--timeout {req.timeout_s:g} must be a positive number of seconds.")
    if req.threads is not None and req.threads <= 0:
        raise LsbenchError(f"--threads {req.threads} must be >= 1.")
    check_executor(req.executor, req.workers)
    if req.resume is not None:
        return _plan_resume(req)
    import torch

    device_hint = req.device or "auto"
    name = req.suite or ("fastformer-fig2" if device_hint != "cpu" and torch.cuda.is_available()
                         else "quick")
    suite = load_suite(name)
    suite = override(suite, variants=req.variants, seq_lens=req.seq_lens,
                     batch_sizes=req.batch_sizes, modes=req.modes, dtype=req.dtype,
                     device=req.device, compile=req.compile)
    device = resolve_device(suite.device)
    check_dtype(suite.dtype, device)
    run_dir = req.out if req.out is not None else default_run_dir(req.reports_root, suite.name)
    RunStore.check_new(run_dir)
    threads = req.threads or torch.get_num_threads()
    return Plan(req, suite, device, threads, req.timeout_s or suite.timeout_s,
                grid.build_grid(suite, device), run_dir, RunStore(run_dir))


def _plan_resume(req: RunRequest) -> Plan:
    given = [k for k in GRID_OPTIONS if getattr(req, k) is not None]
    if given:
        flags = ", ".join("--" + k.replace("_", "-").replace("modes", "mode") for k in given)
        raise LsbenchError(
            f"--resume continues the recorded sweep, so {flags} cannot change it; drop "
            f"{flags}, or start a new run with --out DIR."
        )
    run_dir = req.resume.resolve() if req.resume.is_symlink() else req.resume  # reports/latest
    store = RunStore.open(run_dir)
    info = store.read_info()
    suite = Suite.from_dict(info["suite_config"], f"{req.resume}/run.json")
    device = resolve_device(str(info.get("device") or suite.device))
    check_dtype(suite.dtype, device)
    threads = int(info.get("threads") or 1)
    timeout_s = req.timeout_s or float(info.get("timeout_s") or suite.timeout_s)
    plan = Plan(req, suite, device, threads, timeout_s, grid.build_grid(suite, device),
                run_dir, store, resume_info=info, warnings=list(store.warnings))
    unknown = {r["config_id"] for r in store.rows} - {c["config_id"] for c in plan.configs}
    if unknown:
        plan.warnings.append(
            f"{len(unknown)} recorded row(s) match no config of the suite as this lsbench "
            "builds it (changed variant defaults?); they are kept, and not measured again.")
    return plan


def env_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = []
    for key in ENV_KEYS:
        if old.get(key) != new.get(key):
            diffs.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    old_gpu, new_gpu = (old.get("cuda") or {}).get("name"), (new.get("cuda") or {}).get("name")
    if old_gpu != new_gpu:
        diffs.append(f"GPU {old_gpu!r} -> {new_gpu!r}")
    return diffs


def execute(plan: Plan, events: Events, should_stop=lambda: False,
            executor: Pool | None = None) -> Outcome:
    """Run the plan's remaining configs; every config is on disk the moment its result is back.

    With several executor slots, configs run concurrently, but never two of one OOM group (same
    variant, mode, batch rule): a group's lengths run in ascending order, so an OOM at N still
    skips the larger N. Ctrl-C (should_stop) dispatches nothing more and waits for the units in
    flight."""
    from lsbench.measure.env import device_name
    from lsbench.measure.steal import StealWatch

    store, suite = plan.store, plan.suite
    if plan.resume_info is not None and not plan.todo:
        return _finish_without_work(plan, events)
    info: dict[str, Any] = {}
    written = complete = False
    new_rows = 0
    canary, steal = None, StealWatch().__enter__()  # steal over the whole sweep (Linux)
    try:
        if executor is None:
            executor = make_executor(plan.request.executor, plan.threads, plan.device,
                                     plan.request.workers)
        events.status("starting the worker process (imports torch) ..." if executor.slots == 1
                      else f"starting {executor.slots} workers ({executor.name}: "
                           f"{', '.join(executor.labels)}) ...")
        probe = _probe(executor, plan)
        env = probe["env"]
        executor_info = {"executor": executor.name, "workers": list(executor.labels)}
        if plan.resume_info is not None:
            info = plan.resume_info
            diffs = env_differences(info.get("env") or {}, env)
            if diffs and not plan.request.force:
                raise LsbenchError(
                    f"--resume {plan.run_dir}: this machine differs from the one that recorded "
                    f"the run ({'; '.join(diffs)}); mixing them would make rows incomparable. "
                    "Add --force to continue anyway, or start a new run with --out DIR."
                )
            store.repair_tail()
            info.setdefault("resumes", []).append(
                {"at": now_iso(), "command": plan.request.command,
                 "env_differences": diffs, "timeout_s": plan.timeout_s, **executor_info})
            info.update(finished_at=None, status="running")
            peak = info.get("machine_peak_gflops")
        else:
            peak = probe["machine_peak"]["gflops"]
            info = {
                "kind": "run",
                "suite": suite.name,
                "suite_config": suite.to_dict(),
                "command": plan.request.command,
                "args": plan.request.args,
                "env": env,
                "lsbench_version": lsbench.__version__,
                "device": plan.device,
                "device_name": device_name(env, plan.device),
                "dtype": suite.dtype,
                "matmul_precision": suite.matmul_precision,  # float32 matmuls (TF32 = "high")
                # what the worker's torch reports after setting it (CUDA: TF32 on or off)
                "matmul_precision_in_force": probe.get("matmul_precision_in_force"),
                "threads": plan.threads,
                **executor_info,
                "machine_peak_gflops": peak,
                "machine_peak": probe["machine_peak"],
                "n_configs": len(plan.configs),
                "timeout_s": plan.timeout_s,
                "timing_method": TIMING_METHOD,
                "memory_method": probe["memory_method"],
                "peak_rss_method": probe["rss_method"],
                "mem_prediction": "variant mem_elems × dtype bytes (× n_layers × 3 in training) "
                                  "+ params (× 4 in training), an upper bound, scaled down by "
                                  "measured/predicted at the largest N already measured for "
                                  "the same variant, mode and shape; used only to skip",
                "started_at": now_iso(),
                "finished_at": None,
                "status": "running",
                "resumes": [],
            }
        busy = _busy_cpu_warning(plan, probe)
        if busy:
            events.status(f"warning: {busy}")
        budget, budget_rule = _mem_budget(plan, probe)
        budget_info = {"mem_budget_mib": round(budget / MIB, 1), "mem_budget_rule": budget_rule,
                       "cpu_load_at_start": probe.get("cpu_load"), "warnings": [busy] if busy
                       else []}
        if plan.resume_info is None:
            info.update(budget_info)
            store.create(info)
        else:
            info["resumes"][-1].update(budget_info)
            store.write_info(info)
        written = True
        if _is_default_dir(plan):
            update_latest(plan.run_dir)
        canary = _start_canary(plan, executor, info, events)

        todo = plan.todo
        events.start(plan, len(todo))
        limits = _size_limits(store.rows)
        predictor = grid.MemoryPredictor(store.rows)
        queue, flying, stopped = list(todo), set(), False

        def record(cfg: dict[str, Any], result: dict[str, Any], predicted: float | None):
            nonlocal new_rows
            row = make_row(cfg, result, threads=result.get("threads") or plan.threads,
                           predicted_mem_mib=None if predicted is None
                           else round(predicted / MIB, 2))
            if row["status"] == "ok" and peak and row.get("gflops_per_s") is not None:
                row["pct_of_peak"] = row["gflops_per_s"] / peak * 100
            row.update(canary.row_fields(row))
            if row["status"] == "ok" and row.get("state_bytes"):  # decode: how many sequences'
                row["max_batch_in_budget"] = int(budget // row["state_bytes"])  # states fit
            _note_limit(limits, row)
            predictor.observe(row)
            store.append(row)
            new_rows += 1
            events.row(row)

        while queue or executor.busy:
            if queue and not executor.busy and not stopped and canary.due():
                _canary_reading(canary, "interval", info, events)
            while queue and executor.idle and not stopped:
                if should_stop():
                    stopped = True
                    break
                cfg = next((c for c in queue if grid.oom_group(c) not in flying), None)
                if cfg is None:  # every remaining group has a smaller N in flight
                    break
                queue.remove(cfg)
                try:
                    predicted, how = predictor.predict(cfg)
                except Exception:  # noqa: BLE001 - a plugin's mem_elems: no prediction, no skip
                    predicted, how = None, ""
                result = _skip_reason(cfg, predicted, how, budget, limits)
                if result is not None:
                    record(cfg, result, predicted)
                    continue
                events.config(cfg, new_rows, len(todo))
                executor.submit((cfg, predicted), _unit(plan, cfg), plan.timeout_s)
                flying.add(grid.oom_group(cfg))
            if not executor.busy:
                break
            try:
                finished = executor.wait()
            except WorkerStartError as e:  # not this config's fault: record nothing
                raise LsbenchError(
                    f"cannot restart the measurement worker ({e}); the {new_rows} rows "
                    f"measured so far are saved. Continue later with `lsbench run --resume "
                    f"{plan.run_dir}`.") from None
            for (cfg, predicted), result in finished:
                flying.discard(grid.oom_group(cfg))
                record(cfg, result, predicted)
        if new_rows:
            _canary_reading(canary, "end", info, events)
        if not queue:
            complete = True
            if new_rows and peak:
                _recheck_peak(executor, plan, peak, info, events)
    finally:
        if executor is not None:
            executor.close()
        if written:
            steal.__exit__()
            share = None if steal.share is None else round(steal.share, 4)
            (info["resumes"][-1] if plan.resume_info is not None else info)["steal_share"] = share
            if canary is not None:
                canary.finish()  # rows marked drift by the whole run's readings
            if canary is not None and canary.summary() is not None:
                info["canary"] = canary.summary()  # the whole series, every session
            info["status"] = "complete" if complete else "interrupted"
            info["finished_at"] = now_iso() if complete else None
            store.write_info(info)
    return Outcome(plan.run_dir, list(store.rows), new_rows, complete, info)


def _start_canary(plan: Plan, executor: Pool, info: dict[str, Any], events: Events):
    """The first canary reading of this session (lsbench.measure.canary)."""
    from lsbench.measure.canary import CANARY_INTERVAL_S, SweepCanary

    unit = {"kind": "canary", "device": plan.device, "dtype": plan.suite.dtype,
            "matmul_precision": plan.suite.matmul_precision, "threads": plan.threads}
    canary = SweepCanary(executor.run, plan.store, unit, info.get("started_at"),
                         CANARY_INTERVAL_S)
    _canary_reading(canary, "resume" if plan.resume_info is not None else "start", info, events)
    return canary


def _canary_reading(canary, label: str, info: dict[str, Any], events: Events) -> None:
    """One reading; run.json is rewritten with the series so far (an interrupted run keeps
    it); a drift is said as it happens."""
    reading = canary.read(label)
    if reading is None:
        return
    info["canary"] = canary.summary()
    canary.store.write_info(info)
    if reading["drift"]:
        events.status(f"warning: the canary (fixed matmul + SDPA) ran {reading['ratio']:.2f}x "
                      f"its median reading so far at {reading['t_s']:.0f} s, twice in a row: "
                      "the machine changed speed; rows measured next to it will be marked "
                      "drift")


PEAK_DROP_WARN = 0.20  # the machine lost this much of its matmul peak during the run


def _recheck_peak(executor: Pool, plan: Plan, peak: float, info: dict[str, Any],
                  events: Events) -> None:
    """Measure the matmul peak again after the sweep: a machine that got busier (or hotter)
    meanwhile shows a lower peak, and every row's % of peak is then in doubt."""
    unit = {"kind": "probe", "device": plan.device, "dtype": plan.suite.dtype,
            "matmul_precision": plan.suite.matmul_precision,
            "threads": plan.threads, "measure_peak": True}
    try:
        end = executor.run(unit, PROBE_TIMEOUT_S).get("machine_peak") or {}
    except Exception:  # noqa: BLE001 - a failed re-check leaves the run as measured
        return
    if not end.get("gflops"):
        return
    info["machine_peak_end_gflops"] = end["gflops"]
    drop = 1 - end["gflops"] / peak
    if drop > PEAK_DROP_WARN:
        warning = (f"the matmul peak fell {drop:.0%} during the run ({peak:.1f} -> "
                   f"{end['gflops']:.1f} GFLOP/s): the machine got busier or slower, so later "
                   "rows may be slow for reasons of their own; rerun on a quiet machine")
        info.setdefault("warnings", []).append(warning)
        events.status(f"warning: {warning}")


def _finish_without_work(plan: Plan, events: Events) -> Outcome:
    """A resumed run with every config recorded: no worker, nothing measured or mixed."""
    info = plan.resume_info
    events.status(f"all {len(plan.configs)} configs are already recorded in {plan.run_dir}")
    if not info.get("finished_at"):
        plan.store.repair_tail()
        info.update(status="complete", finished_at=now_iso())
        plan.store.write_info(info)
    return Outcome(plan.run_dir, list(plan.store.rows), 0, True, info)


def _probe(executor: Pool, plan: Plan) -> dict[str, Any]:
    unit = {"kind": "probe", "device": plan.device, "dtype": plan.suite.dtype,
            "matmul_precision": plan.suite.matmul_precision,
            "threads": plan.threads, "measure_peak": plan.resume_info is None}
    try:
        probe = executor.run(unit, PROBE_TIMEOUT_S)
    except WorkerStartError as e:
        raise LsbenchError(f"cannot start the measurement worker: {e}; check that `python -c "
                           "'import torch, lsbench'` works, and LSBENCH_PLUGINS.") from None
    if probe.get("status") in ("error", "oom", "timeout"):
        raise LsbenchError(f"the measurement worker failed while probing the device: "
                           f"{probe.get('reason')}.")
    if probe.get("error"):
        raise LsbenchError(probe["error"])
    if executor.slots > 1:
        _check_slots_agree(executor, plan, probe)
    return probe


def _check_slots_agree(executor: Pool, plan: Plan, probe: dict[str, Any]) -> None:
    """Rows from several workers go into one table only if the workers are the same device;
    the memory budget follows the worker with the least free memory."""
    from lsbench.measure.env import device_name

    unit = {"kind": "probe", "device": plan.device, "dtype": plan.suite.dtype,
            "matmul_precision": plan.suite.matmul_precision, "threads": plan.threads,
            "measure_peak": False}
    try:
        probes = executor.probe_all(unit, PROBE_TIMEOUT_S)
    except WorkerStartError as e:
        raise LsbenchError(f"cannot start every worker of --executor {executor.name}: {e}.") \
            from None
    names = {}
    for label, p in zip(executor.labels, probes, strict=True):
        if p.get("error") or p.get("status") in ("error", "oom", "timeout"):
            raise LsbenchError(f"worker {label} failed while probing the device: "
                               f"{p.get('error') or p.get('reason')}.")
        names[label] = device_name(p["env"], plan.device)
    if len(set(names.values())) > 1:
        listed = "; ".join(f"{k}: {v}" for k, v in names.items())
        raise LsbenchError(f"the workers run on different devices ({listed}); their rows would "
                           "not be comparable. Limit the run to identical devices (e.g. "
                           "CUDA_VISIBLE_DEVICES) or use --executor local.")
    probe["free_mem_bytes"] = min(p["free_mem_bytes"] for p in probes)


def _busy_cpu_warning(plan: Plan, probe: dict[str, Any]) -> str:
    """Other processes competing for the CPU inflate timings (multi-threaded ones the most)."""
    load, env = probe.get("cpu_load"), probe.get("env") or {}
    cores = env.get("cpu_affinity") or env.get("cpu_cores_logical") or 1
    if not load or load[0] < cores:
        return ""
    return (f"the CPU is busy (load average {load[0]:.1f} on {cores} cores): timings will be "
            "inflated and noisy" + (", and multi-threaded steps stall waiting for busy cores; "
                                    "try --threads 1 or a quiet machine" if plan.threads > 1
                                    else "; use a quiet machine for numbers to publish"))


def _mem_budget(plan: Plan, probe: dict[str, Any]) -> tuple[float, str]:
    if plan.request.mem_budget_bytes is not None:
        return float(plan.request.mem_budget_bytes), "--mem-budget"
    if plan.device.startswith("cuda"):
        frac, what = CUDA_BUDGET_FRACTION, "free GPU memory"
    else:
        frac, what = CPU_BUDGET_FRACTION, "available RAM"
    return frac * probe["free_mem_bytes"], f"{frac:.0%} of {what} at start"


LIMIT_TEXT = {"oom": "ran out of memory", "timeout": "timed out (--timeout)"}


def _skip_reason(cfg: dict[str, Any], predicted: float | None, how: str, budget: float,
                 limits: dict[tuple, tuple[int, str]]) -> dict[str, Any] | None:
    if predicted is not None and predicted > budget:
        return {"status": "skipped",
                "reason": f"predicted {predicted / MIB:,.0f} MiB ({how}) > memory budget "
                          f"{budget / MIB:,.0f} MiB (--mem-budget)"}
    limit = limits.get(grid.oom_group(cfg))
    if limit is not None and cfg["seq_len"] > limit[0]:
        return {"status": "skipped",
                "reason": f"{LIMIT_TEXT[limit[1]]} at N={limit[0]} (same variant, mode and "
                          "batch rule); larger N not tried"}
    return None


def _note_limit(limits: dict[tuple, tuple[int, str]], row: dict[str, Any]) -> None:
    """After an oom or a timeout at N, larger N of the same group would only fail slower."""
    if row.get("status") in LIMIT_TEXT and row.get("params") is not None:
        key = grid.oom_group(row)
        if key not in limits or row["seq_len"] < limits[key][0]:
            limits[key] = (row["seq_len"], row["status"])


def _size_limits(rows: list[dict[str, Any]]) -> dict[tuple, tuple[int, str]]:
    """Rebuild the follow-up skips from recorded rows (for --resume)."""
    limits: dict[tuple, tuple[int, str]] = {}
    for r in rows:
        _note_limit(limits, r)
    return limits


def _unit(plan: Plan, cfg: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "config", "config": cfg, "time_budget_s": plan.suite.time_budget_s,
            "warmup": plan.suite.warmup, "threads": plan.threads}


def _is_default_dir(plan: Plan) -> bool:
    root = plan.request.reports_root
    try:
        return os.path.samefile(plan.run_dir.parent, root)
    except OSError:
        return False


# --- the end-of-run summary (data; lsbench.cli.run renders it) ------------------------------

MARKS = {"oom": "OOM", "skipped": "skip", "timeout": "T/O", "error": "ERR", "unsupported": "n/a"}


def summary_tables(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, dtype, batch rule): a variants × seq_len table of median latency (~ noisy,
    ! contended, § measured next to a canary drift)
    and one of peak memory; failed configs show a mark (OOM, skip, T/O, ERR)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        batch = (f"{r['batch_tokens']} tokens/batch" if r.get("batch_tokens")
                 else f"batch {r['batch_size']}")
        groups.setdefault((r["mode"], r["dtype"], batch), []).append(r)
    tables = []
    for (mode, dtype, batch), group in groups.items():
        lens = sorted({r["seq_len"] for r in group})
        names = list(dict.fromkeys(r["variant"] for r in group))
        by_key = {(r["variant"], r["seq_len"]): r for r in group}
        for what, cell in (("median latency (ms)", _latency_cell),
                          ("peak memory (MiB)", _mem_cell)):
            tables.append({
                "title": f"{mode} · {dtype} · {batch}: {what}",
                "columns": ["variant", *[str(n) for n in lens]],
                "rows": [[v, *[cell(by_key[v, n]) if (v, n) in by_key else "" for n in lens]]
                         for v in names],
            })
    return tables


def _latency_cell(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return MARKS.get(r["status"], r["status"])
    return (("!" if r.get("contended") else "") + ("§" if r.get("drift") else "")
            + ("~" if r.get("noisy") else "") + _num(r["latency_ms"]))


def _mem_cell(r: dict[str, Any]) -> str:
    if r["status"] != "ok":
        return MARKS.get(r["status"], r["status"])
    return "?" if r.get("peak_mem_mib") is None else _num(r["peak_mem_mib"])


def _num(x: float) -> str:
    """Three significant figures without exponents: 0.527, 51.1, 1,110."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"
