"""Aten ops dispatched by one no-grad forward of each variant: the CPU stand-in for GPU launch
cost (each op is at least one kernel launch on CUDA). Not a test; the contract tests in
tests/test_launch_contract.py assert the relations, this prints the table.

Counts run on the `meta` device (shapes only, so N=16384 full attention costs nothing); a
variant whose forward cannot run on meta (a host sync such as `.item()` needs real data) is
counted on CPU at a small width instead, and the table says so.

    python benchmarks/op_counts.py
    python benchmarks/op_counts.py --variants bigbird,longformer --batch-sizes 1,512
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from lsbench.measure.ops import OpCounter
from lsbench.variants import REGISTRY, build


def count(name: str, batch: int, n: int, d_model: int, n_heads: int) -> tuple[int | None, str]:
    """(aten ops in one forward, where it was counted); None when it cannot run here."""
    params = {"max_len": n} if "max_len" in REGISTRY[name].defaults else {}
    devices = getattr(REGISTRY[name], "devices", ("cpu", "cuda"))
    if "cpu" not in devices:
        return None, f"{'/'.join(devices)} only"
    for device, d, h in (("meta", d_model, n_heads), ("cpu", 64, 4)):
        torch.manual_seed(0)
        try:
            model = build(name, d, h, **params).to(device)
            x = torch.randn(batch, n, d, device=device)
            with torch.no_grad(), OpCounter() as counter:
                model(x)
        except (NotImplementedError, RuntimeError):
            continue  # meta cannot answer a host sync: count on real tensors
        return counter.total, device
    return None, "failed on meta and cpu"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(sorted(REGISTRY)))
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=16)
    args = p.parse_args()
    cells = [(1, 128), (512, 128), (1, 1024), (1, 16384)]
    table = Table(title=f"aten ops per forward (d_model={args.d_model}, {args.n_heads} heads)")
    table.add_column("variant")
    for b, n in cells:
        table.add_column(f"B={b} N={n}", justify="right")
    table.add_column("counted on")
    for name in args.variants.split(","):
        counts = [count(name, b, n, args.d_model, args.n_heads) for b, n in cells]
        where = sorted({w for _, w in counts})
        cols = [str(c) if c is not None else "-" for c, _ in counts]
        table.add_row(name, *cols, ", ".join(where))
    Console().print(table)


if __name__ == "__main__":
    main()
