"""Isolated execution of config units: a plain dict in, a plain dict of measurements out.

`execute(unit)` runs one unit in the current process; `LocalExecutor` runs units in a reusable
worker process (multiprocessing "spawn": safe with CUDA) so that an OOM, a segfault, a SIGKILL or
a hang costs one row, never the sweep. The parent kills a worker that exceeds its timeout and
starts a fresh one for the next unit. Units are JSON-able dicts, so another executor (several
GPUs, a cluster) can run the same units.

Units:
    {"kind": "probe", "device", "dtype", "threads", "measure_peak": bool, "matmul_precision"}
        -> {"env", "threads", "free_mem_bytes", "total_mem_bytes", "machine_peak", "error"}
    {"kind": "config", "config": {...grid config...}, "time_budget_s", "warmup", "threads"}
        -> {"status", "reason", "latency_ms", ..., "peak_mem_mib", "peak_rss_mib", ...}
    {"kind": "canary", "device", "dtype", "threads", "matmul_precision"}
        -> {"ms", "iqr_ms", "mad_ms", "samples_ms", "steal_share", "spec"} (measure/canary.py)

Why one module of ~450 lines: everything that runs inside the worker process (one unit, the
probe) sits beside the parent's handle on that process (spawn, timeout, restart), so the
protocol between the two is read in one place; a second executor (issue 10) is the point to
split it.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import re
import signal
import time
import traceback
from typing import Any

import psutil

from lsbench.measure.memory import RssPeak

MIB = 2**20
STARTUP_TIMEOUT_S = 300.0


# --- inside the worker ----------------------------------------------------------------------

def is_oom(e: BaseException) -> bool:
    """An out-of-memory error, also when wrapped by another (torch.compile's errors carry the
    original as `inner_exception` or `__cause__`)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if _is_oom_one(cur):
            return True
        cur = getattr(cur, "inner_exception", None) or cur.__cause__ or cur.__context__
    return False


def _is_oom_one(e: BaseException) -> bool:
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
        "status_alloc_failed"))  # CUBLAS_/CUDNN_STATUS_ALLOC_FAILED: a GPU out of memory


def make_step(model, x, mode: str, amp_dtype=None):
    """The unit of work that is timed: one forward (inference) or one training step.

    Half-precision training runs as people train: fp32 weights and optimizer state, the
    forward/backward under autocast to `amp_dtype` (pure half AdamW would underflow).

    The backward starts from a fixed random output gradient of unit scale, `y.backward(g)`
    (g drawn once, on the first call: a warm-up), so every dtype times a backward over
    realistic values. A scalar loss such as `y.float().pow(2).mean()` hands the output a
    gradient of 2y/numel (1e-8 … 1e-10 at FlashAttention App. E shapes), below fp16's
    smallest subnormal: without loss scaling every gradient was exactly zero, and after a
    final LayerNorm mean(y²) has no gradient at all.
    """
    import contextlib

    import torch

    if mode == "inference":
        model.eval()

        def step():
            with torch.no_grad():
                return model(x)
        return step

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def amp():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=amp_dtype)

    grad: list = []  # the output gradient, made once

    def step():
        opt.zero_grad(set_to_none=True)
        with amp():
            y = model(x)  # (B, N, D)
        if not grad:
            grad.append(torch.randn_like(y))
        y.backward(grad[0])
        opt.step()
    return step


def run_config(unit: dict[str, Any]) -> dict[str, Any]:
    import torch
    from torch.utils.benchmark.utils.timer import timer as clock

    from lsbench.errors import LsbenchError
    from lsbench.measure.decode import decode_step, finish_row
    from lsbench.measure.env import cpu_model
    from lsbench.measure.memory import fresh_heap, track_peak
    from lsbench.measure.sdpa import SdpaProbe, matmul_precision, set_precision
    from lsbench.measure.steal import RowWatch
    from lsbench.measure.timing import MIN_SAMPLES, time_step, time_step_checked
    from lsbench.models import Encoder, EncoderConfig

    c = unit["config"]
    device, dtype = torch.device(c["device"]), getattr(torch, c["dtype"])
    if device.type == "cuda" and device.index is not None:
        # torch.utils.benchmark's clock synchronises the *current* device only: make it ours
        # (a restarted worker never ran the probe's set_device).
        torch.cuda.set_device(device)
    B, N, D = c["batch_size"], c["seq_len"], c["d_model"]
    set_precision(c.get("matmul_precision", "highest"))  # matmuls and cuDNN
    torch.manual_seed(0)
    decoding = c["mode"] in ("prefill", "decode")  # lsbench.measure.decode
    try:
        model = Encoder(EncoderConfig(c["variant"], D, c["n_heads"], c["n_layers"],
                                      c["ffn_dim"], c["causal"], dict(c["params"]),
                                      c.get("layer", "block")))
        if decoding:
            model.blocks[0].attn.decode_check()
    except LsbenchError as e:
        if not decoding:
            raise
        from lsbench import variants

        reason = str(e)  # e.g. no incremental form
        cls = variants.REGISTRY.get(c["variant"])
        if cls is not None and not cls.supports_causal:
            reason = f"{c['variant']} has no causal form (a token's output uses later tokens)"
        return {"status": "unsupported", "reason": reason}
    # inference in the run dtype; half-precision training as mixed precision (fp32 weights)
    amp_dtype = dtype if c["mode"] == "training" and dtype != torch.float32 else None
    weight_dtype = torch.float32 if amp_dtype is not None else dtype
    model = model.to(device=device, dtype=weight_dtype)
    x = torch.randn(B, N, D, device=device, dtype=weight_dtype)
    if decoding:
        step, check, decode_fields = decode_step(model, x, c["mode"])
    else:
        step, check, decode_fields = make_step(model, x, c["mode"], amp_dtype), model, {}
    compile_s = None
    if c.get("compile", "none") != "none":  # compiled (and, reduce-overhead, graph-captured)
        t0 = clock()  # by its first call: recorded, never timed
        step = torch.compile(step, mode=None if c["compile"] == "default" else c["compile"])
        step()
        compile_s = clock() - t0
    # Warm-up keeps one-time costs (lazy kernel init, AdamW's state, allocator growth) out of
    # both the memory pass and the timed samples.
    for _ in range(max(1, unit.get("warmup", 1))):
        t0 = clock()
        step()
        step_s = clock() - t0  # synchronised on accelerators
    # The step allocates its gradients afresh (zero_grad(set_to_none=True) first): drop the
    # warm-up's before the baseline, so the CUDA number (peak minus baseline) counts them as
    # the CPU tracker (new storages only) does, instead of netting them out.
    sdpa_backend, finite = _checked_forward(  # decode: the step's output, not a forward
        (lambda _x: check()) if decoding else model, x, amp_dtype, SdpaProbe)
    if not finite:  # timing a computation that overflowed would describe a broken model
        return {"status": "error", "reason": (
            f"the forward's output is not finite in {c['dtype']} on {device.type} (overflow "
            f"in this precision); no time or memory is reported for it — use a wider dtype")}
    model.zero_grad(set_to_none=True)
    # the heap kept for timing goes back, large blocks mmapped: the RSS peak is the step's
    with fresh_heap(), RssPeak() as rss, track_peak(device) as mem:
        step()  # the memory pass, on its own
    timer = time_step_checked if device.type == "cpu" else time_step
    with RowWatch(device) as watch:  # hypervisor steal; GPU clocks (measure/steal.py)
        t = timer(step, unit["time_budget_s"], unit["threads"], step_s=step_s)
    passes = 3 if c["mode"] == "training" else 1  # backward ≈ 2 × forward
    flops = model.flops(B, N) * passes  # useful work (lsbench.measure.flops)
    return finish_row(watch.annotate({
        "status": "ok",
        "reason": _timing_note(t, MIN_SAMPLES),
        "latency_ms": t.median_s * 1e3,
        "latency_ms_iqr": t.iqr_s * 1e3,
        "latency_ms_ci_low": t.ci_low_s * 1e3,
        "latency_ms_ci_high": t.ci_high_s * 1e3,
        "latency_ci_level": round(t.ci_level, 4),
        "repeats": t.repeats,
        "iters_per_sample": t.iters_per_sample,
        "unsteady_blocks": t.unsteady_blocks,  # timed before the steady window, not used
        "noisy": t.noisy,
        "contended": t.contended if t.contention else None,
        "contention": t.contention.describe(t) if t.contention else None,
        "retimed": t.retimed,
        **({"threads": t.threads} if t.threads else {}),  # 1 after a one-thread re-time
        "peak_mem_mib": mem.peak_mib,
        "peak_rss_mib": rss.delta_mib if device.type == "cpu" else None,
        "tokens_per_s": B * N / t.median_s,
        "flops": flops,
        "computed_flops": model.flops(B, N, computed=True) * passes,
        "gflops_per_s": flops / t.median_s / 1e9,
        "precision": (f"autocast {c['dtype']}, fp32 weights" if amp_dtype is not None
                      else c["dtype"]),
        "mem_method": mem.method,
        "sdpa_backend": sdpa_backend,
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else cpu_model()),
        "matmul_precision": matmul_precision(device),
        "rss_method": rss.method if device.type == "cpu" else "",
        "compile_s": compile_s,
        "variant_note": type(model.blocks[0].attn).notes(N, dict(c["params"]), d_model=D,
                                                         n_heads=c["n_heads"]),
    }, t.contention), c["mode"], decode_fields, B)


def _checked_forward(model, x, amp_dtype, probe_cls) -> tuple[str, bool]:
    """One untimed forward under the step's autocast and grad mode (a training row's SDPA
    kernel is the one a forward that records gradients picks): (the SDPA kernel(s) it
    dispatched to, "" when it calls none; whether its output is finite). Its host sync is
    outside timing."""
    import contextlib

    import torch

    amp = (torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None
           else contextlib.nullcontext())
    with torch.set_grad_enabled(getattr(model, "training", False)), amp, probe_cls() as probe:
        y = model(x)
    y = y.detach()
    return probe.backends, bool(torch.isfinite(y).all())


def _timing_note(t, min_samples: int) -> str:
    notes = []
    if t.one_thread_retime:  # lsbench.measure.timing.time_step_checked
        notes.append(f"contended: every timing with several threads was taken while another "
                     f"process took the CPU, so it was re-timed with 1 thread and the faster "
                     f"kept (threads={t.threads}; {t.contention.describe(t)}): treat the time "
                     "as an upper bound")
    elif t.contended:
        notes.append(f"contended: another process took the CPU while this row was timed "
                     f"({t.contention.describe(t)}; timed {t.retimed + 1}x, least contended "
                     "kept): treat the time as an upper bound")
    if t.repeats < min_samples:
        notes.append(f"only {t.repeats} timed sample(s) fit the time budget, so the spread "
                     "and CI say little (raise time_budget_s)")
    elif t.noisy:
        notes.append("noisy: IQR/median > 10%")
    return "; ".join(notes)


def probe(unit: dict[str, Any]) -> dict[str, Any]:
    import torch

    from lsbench.measure.env import fingerprint
    from lsbench.measure.peak import matmul_peak_gflops

    out: dict[str, Any] = {"error": None, "machine_peak": None,
                           "threads": torch.get_num_threads()}
    device = torch.device(unit["device"])
    dtype = getattr(torch, unit["dtype"])
    from lsbench.measure.sdpa import matmul_precision, set_precision

    set_precision(unit.get("matmul_precision", "highest"))  # the peak as the rows

    out["matmul_precision_in_force"] = matmul_precision(device)  # e.g. "high (TF32 matmul)"
    if device.type == "cuda":
        if device.index is not None and device.index >= torch.cuda.device_count():
            out["error"] = (f"device {device} does not exist ({torch.cuda.device_count()} "
                            "CUDA devices); use --device cuda or cuda:0.")
            return out
        if device.index is not None:
            torch.cuda.set_device(device)
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            out["error"] = (f"{torch.cuda.get_device_name(device)} cannot run bfloat16; "
                            "use --dtype float16 or float32.")
            return out
        free, total = torch.cuda.mem_get_info(device)
    else:
        vm = psutil.virtual_memory()
        free, total = vm.available, vm.total
    from lsbench.measure.memory import allocator_setting

    out.update(env={**fingerprint(), "allocator": allocator_setting()},
               free_mem_bytes=free, total_mem_bytes=total,
               cpu_load=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    if device.type == "cuda":
        out["memory_method"] = "torch.cuda.max_memory_allocated minus the step's baseline"
        out["rss_method"] = ""
    else:
        out["memory_method"] = "dispatch-mode tracker of live tensor storages (peak_mem_mib)"
        with RssPeak() as rss:
            pass
        out["rss_method"] = f"peak_rss_mib: {rss.method}"
    if unit.get("measure_peak"):
        out["machine_peak"] = matmul_peak_gflops(str(device), dtype, unit["threads"])
    return out


def execute(unit: dict[str, Any]) -> dict[str, Any]:
    """Run one unit in this process; a failure becomes a row, never an exception.

    A dtype an op cannot run on this device becomes an `error` row saying so, as does a
    forward whose output overflows (not finite) in the run's precision."""
    if unit.get("kind") == "probe":
        try:
            return probe(unit)
        except Exception as e:  # noqa: BLE001 - reported by the parent as a clean error
            return {"error": f"probing the device failed: {_failure(e)['reason']}"}
    if unit.get("kind") == "canary":
        from lsbench.measure.canary import measure

        try:
            return measure(unit)
        except Exception as e:  # noqa: BLE001 - a run without that reading, not a crash
            return {"error": f"the canary failed: {_failure(e)['reason']}"}
    try:
        result = run_config(unit)
    except BaseException as e:  # noqa: BLE001 - every failure is a result
        if isinstance(e, KeyboardInterrupt | SystemExit):
            raise
        result = _failure(e)
    # Outside the except block: the exception and its traceback, whose frames hold the model,
    # the inputs and the activations, are gone, so their memory can really be freed here.
    _free_memory(unit)
    return result


def _failure(e: BaseException) -> dict[str, Any]:
    status = "oom" if is_oom(e) else "error"
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    reason = f"{type(e).__name__}: {msg}"[:500]
    unsupported = re.search(r"not implemented for '(Half|BFloat16|Float8\w*)'", msg)
    if unsupported:
        reason = (f"an op of this variant cannot run {unsupported.group(1)} on this device "
                  f"({reason}); use another dtype or device")[:500]
    detail = "".join(traceback.format_exception(e)[-3:])[-2000:]
    return {"status": status, "reason": reason, "traceback": detail}


def _free_memory(unit: dict[str, Any]) -> None:
    """After every config (the worker is reused): nothing of it may weigh on the next one."""
    gc.collect()
    from lsbench.measure.memory import trim_heap

    trim_heap()  # the heap kept for timing goes back to the machine
    if _is_cuda(unit):
        import torch

        try:
            torch.cuda.empty_cache()
        except RuntimeError:  # a sticky CUDA error: the row says so; the parent restarts us
            pass


def _serve(conn, threads: int) -> None:
    """Worker process main loop: receive units, send results, until None or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        import torch

        # Import everything a unit needs now, so no unit's timeout pays for imports.
        import lsbench.measure.env  # noqa: F401
        import lsbench.measure.memory  # noqa: F401
        import lsbench.measure.peak  # noqa: F401
        import lsbench.measure.timing  # noqa: F401
        import lsbench.models  # noqa: F401
        from lsbench.sweep.plugins import load_plugins

        load_plugins()
        import torch._dynamo  # noqa: F401 - imported by the first optimizer step otherwise
        torch.set_num_threads(threads)
        lsbench.measure.memory.retain_freed_memory()  # CPU timings without page-fault cost
        # Everything imported so far lives as long as the worker: out of the collector's sight,
        # each config's gc.collect() scans what the config made (~0.2 s less per row: the
        # ~300k objects of torch's modules are never garbage).
        gc.collect()
        gc.freeze()
    except Exception as e:  # noqa: BLE001
        conn.send({"ready": False, "error": f"{type(e).__name__}: {e}"})
        return
    conn.send({"ready": True, "pid": os.getpid()})
    while True:
        try:
            unit = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if unit is None:
            return
        conn.send(execute(unit))


# --- in the parent --------------------------------------------------------------------------

class WorkerStartError(Exception):
    pass


class LocalExecutor:
    """Runs units in one reusable spawned worker; restarts it after a crash or timeout."""

    def __init__(self, threads: int, startup_timeout_s: float = STARTUP_TIMEOUT_S):
        self.threads = threads
        self.startup_timeout_s = startup_timeout_s
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._busy = False
        self.starts = 0

    def _spawn(self):
        """Start the worker process; it inherits os.environ as it is at this moment."""
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self.threads), daemon=True,
                                 name="lsbench-worker")
        proc.start()
        child.close()
        return parent, proc

    def _start(self) -> None:
        parent, proc = self._spawn()
        self.starts += 1
        if not parent.poll(self.startup_timeout_s):
            _kill(proc)
            raise WorkerStartError(
                f"the worker process did not start within {self.startup_timeout_s:.0f} s")
        try:
            hello = parent.recv()
        except EOFError:
            proc.join(5)
            raise WorkerStartError(
                f"the worker process exited while starting ({_exit_text(proc.exitcode)})"
            ) from None
        if not hello.get("ready"):
            proc.join(5)
            raise WorkerStartError(f"the worker process failed to start: {hello.get('error')}")
        self._proc, self._conn = proc, parent

    def run(self, unit: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The worker's result dict, or a failure dict (timeout, worker death)."""
        if self._proc is None or not self._proc.is_alive():
            self._discard()
            self._start()
        try:
            self._conn.send(unit)
        except (BrokenPipeError, OSError):
            self._discard()
            self._start()
            self._conn.send(unit)
        self._busy = True
        deadline = time.monotonic() + timeout_s
        watch = _MemoryWatch(self._proc.pid)
        while True:
            if self._conn.poll(0.2):
                try:
                    result = self._conn.recv()
                except (EOFError, OSError):
                    break
                self._busy = False
                if _is_cuda(unit) and result.get("status") in ("error", "oom"):
                    # a CUDA error can poison the context, an OOM leave the allocator
                    # fragmented: the next config starts in a fresh process
                    self._discard()
                return result
            if not self._proc.is_alive():
                if self._conn.poll(0):
                    continue
                break
            watch.sample()
            if time.monotonic() > deadline:
                self._discard()
                return {"status": "timeout",
                        "reason": f"no result within {timeout_s:g} s (--timeout); worker killed"}
        self._proc.join(5)
        code = self._proc.exitcode
        self._discard()
        return watch.death_row(code)

    def _discard(self) -> None:
        self._busy = False
        if self._proc is not None:
            _kill(self._proc)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive() and not self._busy:
            try:
                self._conn.send(None)
                self._proc.join(5)
            except (BrokenPipeError, OSError):
                pass
        self._discard()


def _is_cuda(unit: dict[str, Any]) -> bool:
    return str(unit.get("config", {}).get("device", "")).startswith("cuda")


def _kill(proc) -> None:
    if proc.is_alive():
        proc.kill()
    proc.join(10)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _MemoryWatch:
    """Samples the worker's RSS and the machine's free RAM while a unit runs, so a worker that
    the kernel's OOM killer took (SIGKILL while memory ran out) is recorded as `oom`."""

    def __init__(self, pid: int):
        self.pid = pid
        self.max_rss = 0
        self.min_available = None

    def sample(self) -> None:
        try:
            self.max_rss = max(self.max_rss, psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            pass
        avail = psutil.virtual_memory().available
        self.min_available = avail if self.min_available is None else min(self.min_available,
                                                                          avail)

    def death_row(self, code: int | None) -> dict[str, Any]:
        total = psutil.virtual_memory().total
        how = _exit_text(code)
        if code == -signal.SIGKILL and (self.max_rss > 0.5 * total or (
                self.min_available is not None and self.min_available < 0.05 * total)):
            return {"status": "oom",
                    "reason": f"worker {how} while RAM ran out (worker RSS up to "
                              f"{self.max_rss / MIB:.0f} MiB, available down to "
                              f"{(self.min_available or 0) / MIB:.0f} MiB): the kernel's OOM "
                              "killer"}
        return {"status": "error", "reason": f"worker process died: {how}"}
