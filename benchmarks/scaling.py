"""How forward time of each attention variant grows with sequence length on this machine.

Times one no-grad forward of each registered variant (the attention sublayer alone) at several
lengths with `torch.utils.benchmark` and fits the log-log slope of median time vs N:
~2 means quadratic, ~1 linear. Not a test; run it on a quiet machine:

    python benchmarks/scaling.py                       # N = 1024 … 8192, every variant
    python benchmarks/scaling.py --lens 256,512 --variants linear,transformer
    python benchmarks/scaling.py --variants linformer --lens 1024,2048,4096 --heap default

`--heap retain` (the default, as lsbench's worker times CPU steps) keeps freed memory in the
heap; `--heap default` leaves glibc as it is, so each step's large blocks are fresh pages and
their page faults are timed too (lsbench.measure.memory).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils import benchmark

from lsbench.errors import LsbenchError
from lsbench.measure.memory import retain_freed_memory
from lsbench.variants import REGISTRY, build, get


def time_forward_ms(name: str, n: int, args: argparse.Namespace) -> float:
    """Median ms of one no-grad forward of `name` at length n."""
    params = {"max_len": n} if "max_len" in get(name).defaults else {}  # per-N projection
    torch.manual_seed(0)
    m = build(name, d_model=args.d_model, n_heads=args.n_heads, **params).eval()
    x = torch.randn(args.batch_size, n, args.d_model)
    with torch.no_grad():
        m(x)  # warm-up outside the timer (allocator, kernel selection)
        timer = benchmark.Timer("m(x)", globals={"m": m, "x": x}, num_threads=args.threads)
        result = timer.blocked_autorange(min_run_time=args.min_run_time)
    return result.median * 1e3


def loglog_slope(lens: list[int], times_ms: list[float]) -> float:
    """Slope of log(time) against log(N), least squares over the lengths that ran."""
    ns = np.array(lens, dtype=float)
    ts = np.array(times_ms, dtype=float)
    ok = ~np.isnan(ts)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(ns[ok]), np.log(ts[ok]), 1)[0])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lens", default="1024,2048,4096,8192", help="comma-separated lengths N")
    p.add_argument("--variants", default=",".join(sorted(REGISTRY)),
                   help="comma-separated variant names (default: all registered)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--min-run-time", type=float, default=1.0,
                   help="seconds of timing per (variant, N)")
    p.add_argument("--heap", choices=("retain", "default"), default="retain",
                   help="retain: freed memory stays in the heap (as lsbench times CPU steps)")
    args = p.parse_args()
    args.lens = [int(n) for n in args.lens.split(",") if n]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    return args


def main() -> None:
    args = parse_args()
    console = Console()
    allocator = retain_freed_memory() if args.heap == "retain" else "allocator defaults"
    console.log(f"allocator: {allocator}")
    for name in args.variants:
        get(name)  # unknown names fail before any timing
    table = Table(title=f"no-grad forward, B={args.batch_size}, d_model={args.d_model}, "
                        f"n_heads={args.n_heads}, threads={args.threads} (median ms)")
    table.add_column("variant")
    for n in args.lens:
        table.add_column(f"N={n}", justify="right")
    table.add_column("log-log slope", justify="right")
    for name in args.variants:
        times, notes = [], []
        for n in args.lens:
            try:
                times.append(time_forward_ms(name, n, args))
            except (LsbenchError, RuntimeError) as err:  # e.g. out of memory: a result, not a crash
                times.append(math.nan)
                notes.append(f"{name} N={n}: {str(err).splitlines()[0]}")
            console.log(f"{name} N={n}: {times[-1]:.2f} ms")
        cells = ["error" if math.isnan(t) else f"{t:.2f}" for t in times]
        table.add_row(name, *cells, f"{loglog_slope(args.lens, times):.2f}")
        for note in notes:
            console.print(f"[red]{note}[/red]")
    console.print(table)


if __name__ == "__main__":
    main()
