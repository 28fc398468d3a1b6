"""The machine's dense matmul peak, measured once per run, so rows can show % of peak.

A square matmul of a few sizes in the run's dtype and thread count (torch.utils.benchmark's clock
synchronises CUDA around every block); the best achieved GFLOP/s
(2·n³ FLOPs per product, fastest timed block, so that a moment of contention on a shared machine
does not lower the ceiling) is the peak. It is a practical ceiling for this software stack, not the
vendor's datasheet number.
"""

from __future__ import annotations

import torch
from torch.utils.benchmark import Timer

SIZES = {"cpu": (256, 512, 1024), "cuda": (2048, 4096, 8192)}


def matmul_peak_gflops(device: str, dtype: torch.dtype, threads: int,
                       budget_s: float = 1.5) -> dict:
    """{'gflops': best GFLOP/s, 'size': n of the best, 'per_size': {n: GFLOP/s}, 'method'}."""
    dev = torch.device(device)
    sizes = SIZES["cuda" if dev.type == "cuda" else "cpu"]
    per_size: dict[int, float] = {}
    for n in sizes:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        timer = Timer(stmt="a @ b", globals={"a": a, "b": b}, num_threads=threads)
        m = timer.blocked_autorange(min_run_time=budget_s / len(sizes))
        per_size[n] = 2.0 * n**3 / min(m.times) / 1e9  # a peak: the fastest block
        del a, b
    if dev.type == "cuda":
        torch.cuda.empty_cache()  # give the worker's first config the memory back
    best = max(per_size, key=per_size.get)
    return {
        "gflops": per_size[best],
        "size": best,
        "per_size": {str(k): round(v, 2) for k, v in per_size.items()},
        "method": f"fastest block of torch.matmul n×n, n in {list(sizes)}, {dtype}, "
                  f"{threads} threads (torch.utils.benchmark blocked_autorange)",
    }
