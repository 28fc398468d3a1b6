"""Latency of one step: torch.utils.benchmark's adaptive autorange, summarised robustly.

`torch.utils.benchmark.Timer` synchronises the accelerator around each timed block (so CUDA's
asynchronous launches are not mistaken for finished work), fixes the thread count, and picks a
block size that makes timer overhead negligible. `adaptive_autorange` keeps adding blocks until
IQR/median < `threshold` or the time budget is spent. Each sample is one block's mean per-step
time; we report the median, the IQR and a distribution-free 95% confidence interval of the
median (order statistics, binomial method).

    t = time_step(step, budget_s=1.0, threads=2)
    t.median_s, t.iqr_s, t.ci_low_s, t.ci_high_s, t.repeats
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.benchmark import Timer

NOISE_LIMIT = 0.10  # IQR / median above this flags the row as noisy


@dataclass
class TimingResult:
    median_s: float
    iqr_s: float
    ci_low_s: float
    ci_high_s: float
    repeats: int  # timed samples (blocks)
    iters_per_sample: int  # steps per block
    samples_s: list[float] = field(default_factory=list)  # per-step time of each block

    @property
    def noisy(self) -> bool:
        return self.iqr_s / self.median_s > NOISE_LIMIT if self.median_s > 0 else False


def median_ci(samples: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free CI of the median: [x_(l), x_(n-1-l)] for the largest l with
    P(Binomial(n, 1/2) <= l) <= (1 - level) / 2. With n < 6 no such l exists at 95%;
    then the range (min, max) is returned, whose coverage is only 1 - 2^(1-n)."""
    x = sorted(samples)
    n = len(x)
    if n == 0:
        raise ValueError("median_ci needs at least one sample")
    alpha = (1 - level) / 2
    cdf, lower = 0.0, 0
    for l in range(n // 2):
        cdf += math.comb(n, l) / 2**n
        if cdf > alpha:
            break
        lower = l
    return x[lower], x[n - 1 - lower]


def summarise(samples_s: Sequence[float], iters_per_sample: int) -> TimingResult:
    arr = np.asarray(samples_s, dtype=np.float64)
    q25, q50, q75 = np.quantile(arr, [0.25, 0.5, 0.75])
    low, high = median_ci(samples_s)
    return TimingResult(float(q50), float(q75 - q25), float(low), float(high), len(arr),
                        iters_per_sample, [float(s) for s in samples_s])


MIN_SAMPLES = 3  # a spread needs a few samples ...
MAX_STRETCH = 5.0  # ... worth stretching the budget up to this factor for


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
    return summarise(m.times, m.number_per_run)
