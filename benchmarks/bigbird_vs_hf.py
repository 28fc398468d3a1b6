"""CPU time of lsbench's `bigbird` against Hugging Face's `BigBirdBlockSparseAttention` with the
same weights (not a test; needs `pip install transformers`).

Both sides do the same work: q/k/v projections, block-sparse attention (3 window blocks, first
and last block global, r random blocks per head) and lsbench's output projection (HF keeps that
in `BigBirdSelfOutput`, so it is applied to HF's context here). HF's band/from/to masks are
built once outside the timer (its model rebuilds them every forward). HF is timed twice:

- "HF eval": `.eval()`, where HF ≥ 4.5x draws no random blocks (all-zero ids: block 0 gathered
  r times), so no plan cost; the same kernels and shapes as with a real plan.
- "HF train": `.train()`, where HF reseeds numpy and redraws its plan (Python loops) on every
  forward, as in HF training. The block-sparse layer has no dropout.

Ours caches its plan, so it has one column. HF 5.24's layer also always returns the dense
(B, H, N, N) attention-probability matrix it rebuilds from the blocks (zeros + scatters): O(N²)
memory and most of its time at N = 4096 (the `fill_` of that matrix was ~60% of HF's forward in
a profile at B = 1). That is HF's real cost and is timed; cells whose matrix would exceed
--max-hf-probs-gib are skipped for HF (8 GiB at B = 8, N = 4096 with 16 heads).
Lengths must be block multiples with more than (5 + 2r) blocks (HF's
sparse path). At N in {1024, 3072, 4096} HF's training plan is its legacy one, which differs
from ours, so `max |Δ|` (ours vs HF train) is shown only at other lengths.

    python benchmarks/bigbird_vs_hf.py                       # B = 1, 8; N = 1024, 4096; 2 threads
    python benchmarks/bigbird_vs_hf.py --lens 2048 --batch-sizes 1 --threads 1
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils import benchmark

from lsbench.variants import build


def hf_layer(ours, args):
    """HF BigBirdBlockSparseAttention carrying `ours`'s q/k/v weights and seed."""
    from transformers import BigBirdConfig
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

    config = BigBirdConfig(hidden_size=args.d_model, num_attention_heads=args.n_heads,
                           block_size=args.block_size, num_random_blocks=args.random_blocks,
                           attention_type="block_sparse", max_position_embeddings=4096)
    hf = BigBirdBlockSparseAttention(config, seed=0)
    d = args.d_model
    with torch.no_grad():
        for i, proj in enumerate(("query", "key", "value")):
            getattr(hf, proj).weight.copy_(ours.qkv.weight[i * d : (i + 1) * d])
            getattr(hf, proj).bias.copy_(ours.qkv.bias[i * d : (i + 1) * d])
    return hf


def median_ms(fn, args, grad: bool) -> tuple[float, float]:
    """(median ms, IQR ms) of fn() under no_grad, or of fn() + backward when `grad`."""
    if grad:
        def step():
            y = fn()
            y.backward(torch.ones_like(y))
    else:
        def step():
            with torch.no_grad():
                fn()
    step()  # warm-up outside the timer (allocator, kernel selection, our plan cache)
    timer = benchmark.Timer("step()", globals={"step": step}, num_threads=args.threads)
    m = timer.blocked_autorange(min_run_time=args.min_run_time)
    return m.median * 1e3, m.iqr * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lens", default="1024,4096")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--random-blocks", type=int, default=3)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per cell")
    p.add_argument("--max-hf-probs-gib", type=float, default=2.0,
                   help="skip HF where its dense (B, H, N, N) float32 matrix is larger")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    b, r = args.block_size, args.random_blocks
    lens = [int(n) for n in args.lens.split(",")]
    bad = [n for n in lens if n % b or n // b <= 5 + 2 * r]
    if bad:
        p.error(f"lengths {bad}: HF's sparse path needs multiples of {b} with > {5 + 2 * r} blocks")

    from transformers import BigBirdModel

    torch.manual_seed(0)
    ours = build("bigbird", args.d_model, args.n_heads, block_size=b, num_random_blocks=r)
    hf = hf_layer(ours, args)
    load = os.getloadavg()
    table = Table(title=f"bigbird vs HF BigBirdBlockSparseAttention — d_model={args.d_model}, "
                        f"{args.n_heads} heads, b={b}, r={r}, {args.threads} threads, CPU float32, "
                        f"load avg {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    for col in ("B", "N", "pass", "ours ms", "HF eval ms", "HF train ms", "ours / best HF",
                "max |Δ|"):
        table.add_column(col, justify="right")
    for batch in (int(s) for s in args.batch_sizes.split(",")):
        for n in lens:
            x = torch.randn(batch, n, args.d_model, requires_grad=True)
            blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(
                torch.ones(batch, n), b)

            def run_ours(x=x):
                return ours(x)

            def run_hf(x=x, masks=(band, from_mask, to_mask, blocked, blocked)):
                return ours.out(hf(x, *masks)[0])

            probs_gib = batch * args.n_heads * n * n * 4 / 2**30
            skip_hf = probs_gib > args.max_hf_probs_gib
            diff = "legacy plan"
            if skip_hf:
                diff = f"HF skipped ({probs_gib:.0f} GiB probs)"
            elif n not in (1024, 3072, 4096):
                hf.train()
                with torch.no_grad():
                    diff = f"{(run_ours() - run_hf()).abs().max().item():.1e}"
            state = np.random.get_state()  # HF train reseeds the global numpy RNG
            for grad in (False, True):
                t_ours, iqr_ours = median_ms(run_ours, args, grad)
                cells = ["-", "-", "-"]
                if not skip_hf:
                    hf.eval()
                    t_eval, iqr_eval = median_ms(run_hf, args, grad)
                    hf.train()
                    t_train, iqr_train = median_ms(run_hf, args, grad)
                    cells = [f"{t_eval:.1f} ± {iqr_eval:.1f}", f"{t_train:.1f} ± {iqr_train:.1f}",
                             f"{t_ours / min(t_eval, t_train):.2f}x"]
                table.add_row(str(batch), str(n), "fwd+bwd" if grad else "fwd",
                              f"{t_ours:.1f} ± {iqr_ours:.1f}", *cells, diff)
            np.random.set_state(state)
    Console().print(table)
    load = os.getloadavg()
    Console().print(f"load average after: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")


if __name__ == "__main__":
    main()
