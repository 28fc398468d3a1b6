"""Latency of one step: torch.utils.benchmark's adaptive autorange, summarised robustly.

`torch.utils.benchmark.Timer` synchronises the accelerator around each timed block (so CUDA's
asynchronous launches are not mistaken for finished work), fixes the thread count, and picks a
block size that makes timer overhead negligible. `adaptive_autorange` keeps adding blocks until
IQR/median < `threshold` or the time budget is spent. Each sample is one block's mean per-step
time; we report the median, the IQR and a distribution-free 95% confidence interval of the
median (order statistics, binomial method). That interval needs >= 6 samples; when
`adaptive_autorange` stops earlier (a steady step, after 4), more blocks are timed the same way
while the budget allows, and `ci_level` is the interval's exact coverage either way.

    t = time_step(step, budget_s=1.0, threads=2)
    t.median_s, t.iqr_s, t.ci_low_s, t.ci_high_s, t.repeats
"""

from __future__ import annotations

import gc
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.benchmark import Timer
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

    @property
    def noisy(self) -> bool | None:
        """IQR/median > 10%; None (unknown) with fewer than MIN_SAMPLES samples."""
        if self.repeats < MIN_SAMPLES or self.median_s <= 0:
            return None
        return self.iqr_s / self.median_s > NOISE_LIMIT

    @property
    def contended(self) -> bool:
        return bool(self.contention and self.contention.flagged(self))


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
        return starved or slow_block or stolen(self.steal_share)

    def describe(self, t: TimingResult) -> str:
        worst = max(t.samples_s) / t.median_s if t.median_s > 0 and t.samples_s else 1.0
        return (f"{self.switch_rate:.0f} involuntary context switches/s, CPU {self.cpu_share:.2f}"
                f" of {self.threads} thread(s), slowest block {worst:.1f}x the median"
                + (f", {describe_steal(self.steal_share)}" if self.steal_share is not None
                   else ""))


MAX_SWITCH_RATE = 100.0  # involuntary switches per second: preempted, not merely noisy ...
STARVED_SHARE = 0.9  # ... and the threads got less than this share of the wall time
SLOW_BLOCK_FACTOR = 3.0  # a block this many times the median: something else ran


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


class _Usage:
    """`with _Usage(threads) as u:` ... then `u.result`: a Contention over the block."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> _Usage:
        self._r0, self._t0 = resource.getrusage(resource.RUSAGE_SELF), clock()
        self._j0 = read_cpu_jiffies()
        return self

    def __exit__(self, *exc: Any) -> None:
        r1, wall = resource.getrusage(resource.RUSAGE_SELF), clock() - self._t0
        cpu = (r1.ru_utime - self._r0.ru_utime) + (r1.ru_stime - self._r0.ru_stime)
        self.result = Contention(wall, cpu, r1.ru_nivcsw - self._r0.ru_nivcsw, self.threads,
                                 steal_share(self._j0, read_cpu_jiffies()))


MAX_RETIMES = 2  # a contended row is timed again at most this often ...
QUIET_WAIT_S = 1.0  # ... after waiting this long for the other process to move on


def time_step_checked(step: Callable[[], Any], budget_s: float, threads: int,
                      step_s: float | None = None) -> TimingResult:
    """`time_step` watched for contention (CPU runs): a contended result is timed again, up to
    MAX_RETIMES times, and the least contended one is kept; it still says if it was contended."""
    best = None
    for attempt in range(MAX_RETIMES + 1):
        if attempt:
            time.sleep(QUIET_WAIT_S)
        with _Usage(threads) as usage:
            t = time_step(step, budget_s, threads, step_s)
        t.contention, t.retimed = usage.result, attempt
        if best is None or _rank(t.contention) < _rank(best.contention):
            best = t
        if not t.contended:
            return t
    best.retimed = MAX_RETIMES
    return best


def _rank(c: Contention) -> tuple[float, float]:
    """Least contended first: a timing the hypervisor did not rob (else the least robbed),
    then the fewest switches."""
    return (c.steal_share if stolen(c.steal_share) else 0.0, c.switch_rate)


def time_step(step: Callable[[], Any], budget_s: float, threads: int,
              step_s: float | None = None, threshold: float = NOISE_LIMIT) -> TimingResult:
    """Time `step()` for about `budget_s` seconds of samples (the block-size estimate, which
    also warms up, comes on top); stop early once IQR/median < `threshold` (>= 4 samples).

    `step_s`, one step's duration seen in the warm-up, stretches the budget so that slow steps
    still get MIN_SAMPLES samples, up to MAX_STRETCH × budget; beyond that fewer samples are
    taken and the row's `repeats` says so.
    """
    timer = Timer(stmt="step()", globals={"step": step}, num_threads=threads)
    max_run_time = budget_s
    if step_s is not None:
        max_run_time = min(max(budget_s, MIN_SAMPLES * step_s), MAX_STRETCH * budget_s)
    m = timer.adaptive_autorange(threshold=threshold, min_run_time=min(0.1, budget_s),
                                 max_run_time=max_run_time)
    raw, number = list(m.raw_times), m.number_per_run
    while len(raw) < CI_SAMPLES and sum(raw) + max(raw) <= max_run_time:
        raw.append(_time_block(step, number, threads))
    return summarise([t / number for t in raw], number)


def _time_block(step: Callable[[], Any], number: int, threads: int) -> float:
    """One more block timed as `Timer` times its blocks: its clock (which synchronises the
    accelerator) around `number` calls, garbage collection off, `threads` threads."""
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
