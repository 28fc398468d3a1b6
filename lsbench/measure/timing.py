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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.benchmark import Timer
from torch.utils.benchmark.utils.common import set_torch_threads
from torch.utils.benchmark.utils.timer import timer as clock

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

    @property
    def noisy(self) -> bool:
        return self.iqr_s / self.median_s > NOISE_LIMIT if self.median_s > 0 else False


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
