"""Latency of one step: blocks of calls long enough to swamp scheduler jitter, summarised robustly.

Each sample is one *block*: `number` back-to-back calls timed with torch.utils.benchmark's clock
(which synchronises the accelerator, so CUDA's asynchronous launches are not mistaken for
finished work), garbage collection off, `threads` threads, as `Timer.blocked_autorange` times
its blocks. `number` is chosen so a block lasts at least BLOCK_S (20 ms): a 0.5 ms step timed
one call at a time is at the mercy of a single 1-2 ms scheduler tick (IQR/median 0.1-0.33 on a
quiet 2-core VM), a 20 ms block is not.

Steady window: blocks are added until the newest CI_SAMPLES of them have IQR/median <
`threshold`; those are the row's samples. A VM's speed also wanders on its own, for 0.1-0.3 s
at a time, with nothing else running in the guest (20 ms blocks of one step, measured on a quiet
2-core EPYC VM: windows of 6 at IQR/median 0.02-0.06, then a stretch at 0.2-0.26, then steady
again), so a disturbed stretch at the start must not condemn the row: the blocks before the
steady window are dropped and counted (`unsteady_blocks`). A short step (6 blocks within the
budget) may look for a steady window for UNSTEADY_STRETCH x the budget; when none comes, every
block is used and the row is `noisy`. We report the median per-step time, the IQR and a
distribution-free 95% confidence interval of the median (order statistics, binomial method);
`ci_level` is the interval's exact coverage (below 0.95 under 6 samples).

    t = time_step(step, budget_s=1.0, threads=2)
    t.median_s, t.iqr_s, t.ci_low_s, t.ci_high_s, t.repeats

On CPU, `time_step_checked` also watches what the OS saw while the blocks ran (`Contention`)
and times a contended row again; when every attempt was contended and the step used several
threads, it is timed once more with one thread (OpenMP threads wait at barriers for a peer
the scheduler took away, so 2 threads under load run 10-20x slow, one thread ~1-2x). Around
each attempt a speed probe (`SpeedProbe`: 10 ms of a fixed matmul) says whether the machine
itself ran slow (a cloud host, invisible from the guest); such an attempt is contended too and
timed again, but never re-timed with one thread (that cures barrier waits, not a slow host).
"""

from __future__ import annotations

import gc
import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch.utils.benchmark.utils.common import set_torch_threads
from torch.utils.benchmark.utils.timer import timer as clock

from lsbench.measure.steal import describe_steal, read_cpu_jiffies, steal_share, stolen

NOISE_LIMIT = 0.10  # IQR / median above this flags the row as noisy


@dataclass
class TimingResult:
    median_s: float
    iqr_s: float
    ci_low_s: float
    ci_high_s: float
    ci_level: float  # exact coverage of [ci_low_s, ci_high_s]: >= 0.95 from 6 samples on
    repeats: int  # timed samples (blocks)
    iters_per_sample: int  # steps per block
    samples_s: list[float] = field(default_factory=list)  # per-step time of each block
    contention: Contention | None = None  # what the OS saw while the blocks ran
    retimed: int = 0  # times the step was timed again because the machine was busy
    threads: int | None = None  # threads the kept timing used (1 after a one-thread re-time)
    one_thread_retime: bool = False  # every attempt with `threads` threads was contended
    unsteady_blocks: int = 0  # blocks timed before the steady window, not used

    @property
    def noisy(self) -> bool | None:
        """IQR/median > 10%; None (unknown) with fewer than MIN_SAMPLES samples."""
        if self.repeats < MIN_SAMPLES or self.median_s <= 0:
            return None
        return self.iqr_s / self.median_s > NOISE_LIMIT

    @property
    def contended(self) -> bool:
        return self.one_thread_retime or bool(self.contention and self.contention.flagged(self))


@dataclass
class Contention:
    """CPU the process got while its blocks ran, against the wall time they took.

    A step preempted by another process shows involuntary context switches at a high rate
    (a quiet core gives a few per second) *and* less CPU than wall time × threads; both are
    required. CPU time alone cannot decide it: ops too small to parallelise use one thread of
    several on a quiet machine. The switch rate alone cannot either: on a 2-core VM a step
    whose 2 threads got 99% of their CPU still saw 100-180 switches/s (kernel work on the same
    cores), while a step next to a busy loop got 55-76% at 130-220/s.
    """

    wall_s: float
    cpu_s: float  # user + system, all threads of the process
    involuntary_switches: int
    threads: int
    steal_share: float | None = None  # hypervisor steal, system-wide (Linux; measure/steal.py)
    others_cpu_s: float | None = None  # CPU the rest of this machine used meanwhile (Linux)
    cores: int | None = None  # CPUs this process may run on
    speed_ratio: float | None = None  # the speed probe around the blocks / its typical time

    @property
    def others_cores(self) -> float | None:
        """Cores the other processes kept busy on average, less /proc/stat's tick slack."""
        if self.others_cpu_s is None or self.wall_s <= 0:
            return None
        slack = TICK_SLACK * (self.cores or 1)
        return max(0.0, self.others_cpu_s - slack) / self.wall_s

    @property
    def crowded(self) -> bool:
        """Other processes used more CPU than the cores this step leaves free (+ a margin).

        Seen where rusage is blind: OpenMP threads spinning at a barrier for a descheduled
        peer burn their CPU share, so the process looks served while the step runs 10x slow."""
        busy = self.others_cores
        return busy is not None and busy > max(0, (self.cores or 1) - self.threads) + CROWD_CORES

    @property
    def switch_rate(self) -> float:
        return self.involuntary_switches / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_share(self) -> float:
        """CPU time over wall time × threads: 1.0 = every thread busy all the time."""
        return self.cpu_s / (self.wall_s * self.threads) if self.wall_s > 0 else 1.0

    def flagged(self, t: TimingResult) -> bool:
        slow_block = (t.repeats >= MIN_SAMPLES
                      and max(t.samples_s) > SLOW_BLOCK_FACTOR * t.median_s)
        starved = self.switch_rate > MAX_SWITCH_RATE and self.cpu_share < STARVED_SHARE
        return (starved or slow_block or self.crowded or stolen(self.steal_share)
                or self.slow_machine)

    @property
    def slow_machine(self) -> bool:
        return self.speed_ratio is not None and self.speed_ratio > SLOW_MACHINE

    def describe(self, t: TimingResult) -> str:
        worst = max(t.samples_s) / t.median_s if t.median_s > 0 and t.samples_s else 1.0
        return (f"{self.switch_rate:.0f} involuntary context switches/s, CPU {self.cpu_share:.2f}"
                f" of {self.threads} thread(s), slowest block {worst:.1f}x the median"
                + (f", other processes busy on {self.others_cores:.1f} of {self.cores} cores"
                   if self.others_cores is not None else "")
                + (f", {describe_steal(self.steal_share)}" if self.steal_share is not None
                   else "")
                + (f", the machine {self.speed_ratio:.2f}x its typical time (speed probe)"
                   if self.speed_ratio is not None else ""))


MAX_SWITCH_RATE = 100.0  # involuntary switches per second: preempted, not merely noisy ...
STARVED_SHARE = 0.9  # ... and the threads got less than this share of the wall time
SLOW_BLOCK_FACTOR = 3.0  # a block this many times the median: something else ran
# Other processes busy on more than the free cores + this many cores: the step was crowded.
# Quiet, the rest of a 2-core VM (kernel threads, lsbench's parent) uses ~0.02 cores.
CROWD_CORES = 0.25
TICK_SLACK = 0.02  # s per CPU: /proc/stat counts 10 ms ticks, getrusage does not
# The speed probe ran this many times its typical time around the blocks: the machine itself
# was slow (a cloud VM's host), with nothing in the guest to show it. Measured on a quiet
# 2-core VM: 10 ms probe blocks within ±10% of their median most of the time, and stretches of
# 1.4-1.6x lasting seconds; 1.25 sits between the two.
SLOW_MACHINE = 1.25


class SpeedProbe:
    """How fast the machine is right now: one block of >= PROBE_S of a fixed float32 matmul
    (256x256x256), timed before and after each timing attempt, against the median of this
    process's earlier probe blocks (its typical speed; the first call takes SEED_BLOCKS).

    It sees what the per-row checks cannot: a host that runs the guest's vCPUs slower for a
    while (two default runs back to back on a quiet VM: the second's first 10 s ran 1.36x
    slower, with no steal, no other process and steady blocks)."""

    PROBE_S = 0.01
    SEED_BLOCKS = 5
    HISTORY = 64

    def __init__(self) -> None:
        import torch

        g = torch.Generator().manual_seed(0)
        self._a = torch.randn(256, 256, generator=g)
        self._b = torch.randn(256, 256, generator=g)
        self._number = 0
        self.history: list[float] = []

    def read(self, threads: int) -> float:
        """Seconds per matmul in one block (recorded in the history)."""
        import torch

        with set_torch_threads(threads):
            if not self._number:  # calibrate once: calls for a block of PROBE_S
                t0 = clock()
                torch.mm(self._a, self._b)
                self._number = max(1, math.ceil(self.PROBE_S / max(clock() - t0, 1e-7)))
            t0 = clock()
            for _ in range(self._number):
                torch.mm(self._a, self._b)
            per_call = (clock() - t0) / self._number
        self.history = (self.history + [per_call])[-self.HISTORY:]
        return per_call

    def typical(self, threads: int) -> float:
        while len(self.history) < self.SEED_BLOCKS:
            self.read(threads)
        return float(np.median(self.history))


_PROBE: list[SpeedProbe] = []  # one per process, made on first use


def speed_probe() -> SpeedProbe:
    if not _PROBE:
        _PROBE.append(SpeedProbe())
    return _PROBE[0]


def median_ci(samples: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the median: [x_(l), x_(n-1-l)] (0-based, sorted) for the largest
    l with P(Binomial(n, 1/2) <= l) <= (1 - level) / 2; its coverage is 1 - 2·P(Bin <= l).
    With n < 6 no such l exists at 95%; then the range (min, max) is returned, whose coverage
    is only 1 - 2^(1-n) (see `median_ci_level`)."""
    low, high, _ = _median_ci(samples, level)
    return low, high


def median_ci_level(n: int, level: float = 0.95) -> float:
    """The exact coverage of `median_ci` for n samples (any continuous distribution)."""
    return _median_ci(range(n), level)[2]


def _median_ci(samples: Sequence[float], level: float) -> tuple[float, float, float]:
    x = sorted(samples)
    n = len(x)
    if n == 0:
        raise ValueError("median_ci needs at least one sample")
    alpha = (1 - level) / 2
    cdf, lower, tail = 0.0, 0, 0.5**n
    for l in range(n // 2):
        cdf += math.comb(n, l) / 2**n
        if cdf > alpha:
            break
        lower, tail = l, cdf
    coverage = 1.0 - 2 * tail if n > 1 else 0.0
    return x[lower], x[n - 1 - lower], coverage


def summarise(samples_s: Sequence[float], iters_per_sample: int) -> TimingResult:
    arr = np.asarray(samples_s, dtype=np.float64)
    q25, q50, q75 = np.quantile(arr, [0.25, 0.5, 0.75])
    low, high, level = _median_ci(samples_s, 0.95)
    return TimingResult(float(q50), float(q75 - q25), float(low), float(high), level, len(arr),
                        iters_per_sample, [float(s) for s in samples_s])


MIN_SAMPLES = 3  # a spread needs a few samples ...
MAX_STRETCH = 5.0  # ... worth stretching the budget up to this factor for
CI_SAMPLES = 6  # the fewest for which the median's 95% interval exists
UNSTEADY_STRETCH = 2.0  # a short step may look for a steady window this many budgets long


class _Usage:
    """`with _Usage(threads) as u:` ... then `u.result`: a Contention over the block."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> _Usage:
        probe = speed_probe()
        self._typical = probe.typical(self.threads)  # before this attempt's own readings
        self._p0 = probe.read(self.threads)
        self._r0, self._t0 = resource.getrusage(resource.RUSAGE_SELF), clock()
        self._j0 = read_cpu_jiffies()
        self._b0 = busy_cpu_s()
        return self

    def __exit__(self, *exc: Any) -> None:
        r1, wall = resource.getrusage(resource.RUSAGE_SELF), clock() - self._t0
        cpu = (r1.ru_utime - self._r0.ru_utime) + (r1.ru_stime - self._r0.ru_stime)
        b1 = busy_cpu_s()
        others = None if self._b0 is None or b1 is None else max(0.0, b1 - self._b0 - cpu)
        self.result = Contention(wall, cpu, r1.ru_nivcsw - self._r0.ru_nivcsw, self.threads,
                                 steal_share(self._j0, read_cpu_jiffies()), others,
                                 len(_cpus()))
        p1 = speed_probe().read(self.threads)
        self.result.speed_ratio = round((self._p0 + p1) / 2 / self._typical, 3)


def _cpus() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def busy_cpu_s(path: str = "/proc/stat") -> float | None:
    """Seconds the CPUs this process may use have spent busy since boot (every process's
    user, nice, system, irq, softirq and steal time; Linux `cpuN` lines), or None."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    cpus, ticks = {f"cpu{i}" for i in _cpus()}, 0
    for line in lines:
        parts = line.split()
        if parts and parts[0] in cpus and len(parts) >= 9:
            u, n, sy, _idle, _io, irq, soft, steal = (int(x) for x in parts[1:9])
            ticks += u + n + sy + irq + soft + steal
    return ticks * _TICK_S if ticks else None


PERSISTENT_ROWS = 3  # fully contended rows in a row that make the machine "busy" (no retimes)
BUSY_STREAK = [0]  # this process's current run of fully contended rows
MAX_RETIMES = 2  # a contended row is timed again at most this often ...
QUIET_WAIT_S = 1.0  # ... after waiting as long as the attempt took, at most this long, for
# the other process to move on (a short row on a machine that stays busy must not spend
# seconds asleep: three attempts of a 0.2 s row wait 0.4 s, not 3 s)


def time_step_checked(step: Callable[[], Any], budget_s: float, threads: int,
                      step_s: float | None = None) -> TimingResult:
    """`time_step` watched for contention (CPU runs): a contended result is timed again, up to
    MAX_RETIMES times, and the least contended one is kept; it still says if it was contended.

    A machine that stays busy: after PERSISTENT_ROWS rows in a row whose every attempt was
    contended, a contended row is not re-timed with `threads` threads (the pauses and retries
    bought nothing: a default run next to a busy loop took 950 s, every one of its 261 rows
    contended after all its attempts), only once with one thread where that helps; the first
    row timed uncontended ends that."""
    retimes = 0 if BUSY_STREAK[0] >= PERSISTENT_ROWS else MAX_RETIMES
    best = None
    for attempt in range(retimes + 1):
        if attempt:
            time.sleep(min(QUIET_WAIT_S, best.contention.wall_s))
        with _Usage(threads) as usage:
            t = time_step(step, budget_s, threads, step_s)
        t.contention, t.retimed = usage.result, attempt
        if best is None or _rank(t.contention) < _rank(best.contention):
            best = t
        if not t.contended:
            BUSY_STREAK[0] = 0
            return t
    BUSY_STREAK[0] += 1
    best.retimed = retimes
    if threads > 1 and replace(best.contention, speed_ratio=None).flagged(best):
        # every attempt crowded: barrier waits for a descheduled peer dominate
        if retimes:
            time.sleep(min(QUIET_WAIT_S, best.contention.wall_s))
        with _Usage(1) as usage:
            single = time_step(step, budget_s, 1, step_s)
        single.contention, single.retimed = usage.result, retimes + 1
        single.one_thread_retime = best.one_thread_retime = True
        if single.median_s < best.median_s:
            return single
        best.retimed = retimes + 1
    return best


def _rank(c: Contention) -> tuple[float, float, float, float]:
    """Least contended first: a timing the hypervisor did not rob (else the least robbed),
    then the least crowded by other processes, then on the least slowed machine, then the
    fewest switches."""
    return (c.steal_share if stolen(c.steal_share) else 0.0,
            (c.others_cores or 0.0) if c.crowded else 0.0,
            (c.speed_ratio or 0.0) if c.slow_machine else 0.0, c.switch_rate)


BLOCK_S = 0.02  # a sample is a block of calls at least this long (scheduler ticks are 1-4 ms)


def time_step(step: Callable[[], Any], budget_s: float, threads: int,
              step_s: float | None = None, threshold: float = NOISE_LIMIT) -> TimingResult:
    """Time `step()` in blocks of >= BLOCK_S for about `budget_s` seconds; stop as soon as
    the newest CI_SAMPLES blocks have IQR/median < `threshold` (the steady window: the row's
    samples; earlier blocks are dropped and counted). A calibration block (also a warm-up)
    comes on top, except for steps that already take 2 blocks' length (`step_s`).

    `step_s`, one step's duration seen in the warm-up, also stretches the budget so that slow
    steps still get MIN_SAMPLES samples, up to MAX_STRETCH × budget; beyond that fewer
    samples are taken and the row's `repeats` says so.
    """
    number, block_s = _block_size(step, threads, step_s)
    max_run_time = _run_time(budget_s, block_s)
    raw: list[float] = []
    steady: list[float] | None = None
    while True:
        block = _time_block(step, number, threads)
        if number == 1 and not raw and block < BLOCK_S:  # the warm-up overstated the step
            number, block_s = _block_size(step, threads, block)
            max_run_time = _run_time(budget_s, block_s)
            continue
        raw.append(block)
        if len(raw) >= CI_SAMPLES and _spread(raw[-CI_SAMPLES:]) < threshold:
            steady = raw[-CI_SAMPLES:]
            break
        if sum(raw) + float(np.median(raw)) > max_run_time:  # the next block would overrun
            break
    kept = steady if steady is not None else raw
    t = summarise([b / number for b in kept], number)
    t.threads, t.unsteady_blocks = threads, len(raw) - len(kept)
    return t


def _run_time(budget_s: float, block_s: float) -> float:
    """Timed seconds allowed: the budget, stretched so a slow step gets MIN_SAMPLES blocks
    (up to MAX_STRETCH budgets), or, for a short step, UNSTEADY_STRETCH budgets to find a
    steady window (a steady row stops at CI_SAMPLES blocks, long before)."""
    if CI_SAMPLES * block_s <= budget_s:
        return UNSTEADY_STRETCH * budget_s
    return min(max(budget_s, MIN_SAMPLES * block_s), MAX_STRETCH * budget_s)


def _spread(raw: Sequence[float]) -> float:
    q25, q50, q75 = np.quantile(raw, [0.25, 0.5, 0.75])
    return float((q75 - q25) / q50) if q50 > 0 else math.inf


def _block_size(step: Callable[[], Any], threads: int,
                step_s: float | None) -> tuple[int, float]:
    """(calls per block, expected block seconds). A step known to take >= 2 blocks' length is
    one call per block, without a calibration call; else calibration blocks (which also warm
    the step up) until one lasts at least half a block."""
    if step_s is not None and step_s >= 2 * BLOCK_S:
        return 1, step_s
    number, per_call = (max(1, int(BLOCK_S / step_s)) if step_s else 1), math.inf
    for _ in range(4):
        elapsed = _time_block(step, number, threads)
        # the least per-call time seen: overheads and preemptions only ever add to it
        per_call = min(per_call, max(elapsed / number, 1e-9))
        if elapsed >= BLOCK_S / 2:
            break
        number = max(number + 1, math.ceil(BLOCK_S / per_call))
    number = max(1, math.ceil(BLOCK_S / per_call))
    return number, number * per_call


def _time_block(step: Callable[[], Any], number: int, threads: int) -> float:
    """One block timed as `torch.utils.benchmark.Timer` times its blocks: its clock (which
    synchronises the accelerator) around `number` calls, garbage collection off, `threads`
    threads."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with set_torch_threads(threads):
            t0 = clock()
            for _ in range(number):
                step()
            return clock() - t0
    finally:
        if enabled:
            gc.enable()
