"""Where config units run: one local worker (the default), one worker per visible GPU, or Ray.

Every executor runs the same JSON units (lsbench.sweep.worker) in isolated worker processes and
returns the same result dicts. The parent (`runner.execute`) still decides what runs next and
appends each row the moment its result comes back, so crash safety and `--resume` are the same
for all of them: a kill -9 of the parent loses only the configs in flight, which `--resume`
runs again; a row is never written twice.

    ex = make_executor("gpus", threads=4, device="cuda")
    ex.slots                        # units that may run at once
    ex.run(unit, timeout_s)         # one unit on slot 0, blocking (probes)
    ex.probe_all(unit, timeout_s)   # the same unit on every slot (do the GPUs agree?)
    ex.submit(key, unit, timeout_s); ex.wait() -> [(key, result), ...]
    ex.close()

- `local`: one `LocalExecutor` (a spawned worker, restarted after a crash or timeout).
- `gpus`: one `LocalExecutor` per visible GPU, each spawned with CUDA_VISIBLE_DEVICES naming
  its GPU, so `cuda` inside a worker is that GPU; configs are spread over them.
- `ray`: one Ray actor per slot (num_gpus=1 on CUDA, num_cpus=threads on CPU), each holding a
  `LocalExecutor` on its node, so an OOM or a segfault still costs one row. Connects to
  RAY_ADDRESS when set (a cluster), else starts a local Ray instance. Every node needs the
  same lsbench and torch as the driver (e.g. one shared environment or a Ray runtime_env).

Slurm is not here: submitit's one-job-per-call model would start a Python and import torch
per config; a Ray cluster on Slurm (`ray start` in the allocation, then RAY_ADDRESS) covers it.
"""

from __future__ import annotations

import os
import socket
import threading
from concurrent import futures
from typing import Any, Protocol

from lsbench.errors import LsbenchError, unknown_choice
from lsbench.sweep.worker import STARTUP_TIMEOUT_S, LocalExecutor, WorkerStartError

EXECUTORS = ("local", "gpus", "ray")
_SPAWN_ENV = threading.Lock()  # os.environ is process-wide: one spawn at a time changes it


class Runner(Protocol):
    """One slot: runs a unit to completion (a result dict, failures included), blocking."""

    def run(self, unit: dict[str, Any], timeout_s: float) -> dict[str, Any]: ...
    def close(self) -> None: ...


class EnvLocalExecutor(LocalExecutor):
    """A LocalExecutor whose worker starts with extra environment variables (one GPU)."""

    def __init__(self, threads: int, env: dict[str, str], label: str):
        super().__init__(threads)
        self.env, self.label = env, label

    def _spawn(self):
        # Only the spawn itself holds the lock (the child copies os.environ as it starts);
        # waiting for the worker's hello (imports, CUDA init: up to STARTUP_TIMEOUT_S) does
        # not, so the GPUs' workers start in parallel.
        with _SPAWN_ENV:
            saved = {k: os.environ.get(k) for k in self.env}
            os.environ.update(self.env)
            try:
                return super()._spawn()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


class Pool:
    """A thread per slot, each driving one blocking Runner; results in completion order."""

    def __init__(self, name: str, runners: list[Runner], labels: list[str],
                 gpu_slots: bool = False):
        self.name = name
        self.labels = labels
        self.gpu_slots = gpu_slots  # one GPU per slot: the run uses `slots` GPUs
        self._runners = runners
        self._free = list(range(len(runners)))
        self._threads = futures.ThreadPoolExecutor(max_workers=len(runners),
                                                   thread_name_prefix="lsbench-slot")
        self._flight: dict[futures.Future, tuple[Any, int]] = {}

    @property
    def slots(self) -> int:
        return len(self._runners)

    @property
    def idle(self) -> bool:
        return bool(self._free)

    @property
    def busy(self) -> int:
        return len(self._flight)

    def run(self, unit: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        result = self._runners[0].run(unit, timeout_s)
        if unit.get("kind") == "probe" and self.gpu_slots:
            result = _run_gpus(result, self)
        return result

    def probe_all(self, unit: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        jobs = [self._threads.submit(r.run, unit, timeout_s) for r in self._runners]
        return [j.result() for j in jobs]

    def submit(self, key: Any, unit: dict[str, Any], timeout_s: float) -> None:
        slot = self._free.pop(0)
        job = self._threads.submit(self._runners[slot].run, unit, timeout_s)
        self._flight[job] = (key, slot)

    def wait(self) -> list[tuple[Any, dict[str, Any]]]:
        """Block until at least one unit in flight ends; WorkerStartError passes through (not
        the config's fault: nothing is recorded for it, and --resume runs it again)."""
        done, _ = futures.wait(list(self._flight), return_when=futures.FIRST_COMPLETED)
        out = []
        for job in done:
            key, slot = self._flight.pop(job)
            self._free.append(slot)
            result = dict(job.result())
            result["worker"] = self.labels[slot]
            out.append((key, result))
        return out

    def close(self) -> None:
        for r in self._runners:
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing must reach every slot
                pass
        self._threads.shutdown(wait=False, cancel_futures=True)


def _run_gpus(probe: dict[str, Any], pool: Pool) -> dict[str, Any]:
    """A probe answered by slot 0 describes its one GPU; the run's fingerprint says how many
    the run uses (`count`) and which workers, and keeps what slot 0 saw apart."""
    cuda = (probe.get("env") or {}).get("cuda")
    if not cuda:
        return probe
    cuda = {**cuda, "count_in_worker": cuda.get("count"), "count": pool.slots,
            "workers": list(pool.labels)}
    return {**probe, "env": {**probe["env"], "cuda": cuda}}


def check_executor(name: str, workers: int | None) -> None:
    """What can be checked without starting anything (lsbench run validates before it runs)."""
    if name not in EXECUTORS:
        raise unknown_choice("executor", name, EXECUTORS, "--executor")
    if workers is not None and name != "ray":
        raise LsbenchError("--workers is for --executor ray (local runs 1 worker, gpus one per "
                           "visible GPU); drop --workers or use --executor ray.")
    if workers is not None and workers < 1:
        raise LsbenchError(f"--workers {workers} must be >= 1.")


def make_executor(name: str, threads: int, device: str, workers: int | None = None) -> Pool:
    """The executor `--executor NAME` asks for; starts workers lazily (gpus, local) or Ray."""
    check_executor(name, workers)
    if name == "local":
        return Pool("local", [LocalExecutor(threads)], ["local"])
    if name == "gpus":
        return _gpu_pool(threads, device)
    return _ray_pool(threads, device, workers)


def visible_gpus() -> list[str]:
    """GPU ids as CUDA_VISIBLE_DEVICES would name them to a child (respecting the parent's)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        ids = [g.strip() for g in given.split(",") if g.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


def _gpu_pool(threads: int, device: str) -> Pool:
    if device != "cuda":
        raise LsbenchError(
            f"--executor gpus runs one worker per visible GPU, so it needs --device cuda (got "
            f"{device}); pick the GPUs with CUDA_VISIBLE_DEVICES, or use --executor local.")
    ids = visible_gpus()
    if not ids:
        raise LsbenchError("--executor gpus found no visible GPU; check nvidia-smi and "
                           "CUDA_VISIBLE_DEVICES, or use --executor local.")
    runners = [EnvLocalExecutor(threads, {"CUDA_VISIBLE_DEVICES": g}, f"gpu {g}") for g in ids]
    return Pool("gpus", runners, [r.label for r in runners], gpu_slots=True)


class _RaySlot:
    """Lives in a Ray actor: a LocalExecutor on the actor's node (Ray sets its GPU)."""

    def __init__(self, threads: int):
        self.ex = LocalExecutor(threads)

    def where(self) -> str:
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
        return socket.gethostname() + (f" gpu {gpus}" if gpus else f" pid {os.getpid()}")

    def run(self, unit: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        try:
            return self.ex.run(unit, timeout_s)
        except WorkerStartError as e:
            return {"worker_start_error": str(e)}

    def close(self) -> None:
        self.ex.close()


class _RayRunner:
    def __init__(self, actor):
        self.actor = actor
        self.busy = False

    def run(self, unit: dict[str, Any], timeout_s: float) -> dict[str, Any]:

        self.busy = True
        try:
            return self._run(unit, timeout_s)
        finally:
            self.busy = False

    def _run(self, unit: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        import ray

        try:
            result = ray.get(self.actor.run.remote(unit, timeout_s),
                             timeout=timeout_s + STARTUP_TIMEOUT_S + 60)
        except ray.exceptions.GetTimeoutError:
            raise WorkerStartError("a Ray actor gave no answer within the unit's timeout plus "
                                   "the worker start-up time") from None
        except ray.exceptions.RayActorError as e:
            raise WorkerStartError(f"a Ray actor died ({type(e).__name__})") from None
        if "worker_start_error" in result:
            raise WorkerStartError(result["worker_start_error"])
        return result

    def close(self) -> None:
        import ray

        if not self.busy:  # an idle actor ends its worker cleanly; a busy one is killed
            try:
                ray.get(self.actor.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001
                pass
        ray.kill(self.actor)


def _ray_pool(threads: int, device: str, workers: int | None) -> Pool:
    try:
        import ray
    except ImportError:
        raise LsbenchError("--executor ray needs Ray: pip install 'lsbench[ray]' (or "
                           "pip install ray), or use --executor local.") from None
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, ignore_reinit_error=True)
        except Exception as e:  # noqa: BLE001
            where = f"RAY_ADDRESS={address}" if address else "a local Ray instance"
            raise LsbenchError(f"--executor ray could not connect to {where}: "
                               f"{type(e).__name__}: {e}") from None
    have = ray.cluster_resources()
    cuda = device.startswith("cuda")
    if cuda and ":" in device:
        raise LsbenchError(f"--executor ray gives each worker one GPU, so use --device cuda "
                           f"(not {device}).")
    need_key, per = ("GPU", 1) if cuda else ("CPU", threads)
    total = int(have.get(need_key, 0))
    n = workers or (total if cuda else 1)
    if n * per > total or n == 0:
        raise LsbenchError(
            f"--executor ray: {n or 1} worker(s) need {(n or 1) * per} {need_key} but the Ray "
            f"cluster has {total}; lower --workers" + ("" if cuda else " or --threads") + ".")
    options = {"num_gpus": 1, "num_cpus": 1} if cuda else {"num_cpus": threads}
    actor_cls = ray.remote(**options)(_RaySlot)
    actors = [actor_cls.remote(threads) for _ in range(n)]
    labels = ray.get([a.where.remote() for a in actors], timeout=STARTUP_TIMEOUT_S)
    return Pool("ray", [_RayRunner(a) for a in actors], [f"ray {w}" for w in labels],
                gpu_slots=cuda)
