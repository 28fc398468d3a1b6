"""Forward time and peak memory of lsbench's `longformer` against Hugging Face's
`LongformerSelfAttention` with the same weights (not a test; needs `pip install transformers`).

Both sides do the same work: q/k/v projections, the ±w sliding window (plus g global tokens
with their own projections when --global-tokens > 0) and lsbench's output projection (HF keeps
that in `LongformerSelfOutput`, so it is applied to HF's output here). Lengths must be multiples
of 2w, which HF's layer requires (its model pads; the layer does not).

    python benchmarks/longformer_vs_hf.py                        # N = 1024 … 4096, w = 256
    python benchmarks/longformer_vs_hf.py --lens 2048 --global-tokens 1
    python benchmarks/longformer_vs_hf.py --batch-size 8 --backward   # forward + backward
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table
from torch.utils import benchmark

from lsbench.measure.memory import track_peak
from lsbench.variants import build


def hf_layer(ours, w: int, d_model: int, n_heads: int):
    """HF LongformerSelfAttention carrying `ours`'s q/k/v (and global q/k/v) weights."""
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    config = LongformerConfig(hidden_size=d_model, num_attention_heads=n_heads,
                              attention_window=[2 * w], attention_probs_dropout_prob=0.0)
    hf = LongformerSelfAttention(config, layer_id=0).eval()
    with torch.no_grad():
        for i, proj in enumerate(("query", "key", "value")):
            rows = slice(i * d_model, (i + 1) * d_model)
            getattr(hf, proj).weight.copy_(ours.qkv.weight[rows])
            getattr(hf, proj).bias.copy_(ours.qkv.bias[rows])
            if ours.global_tokens:
                getattr(hf, f"{proj}_global").weight.copy_(ours.qkv_global.weight[rows])
                getattr(hf, f"{proj}_global").bias.copy_(ours.qkv_global.bias[rows])
    return hf


def measure(fn, args) -> tuple[float, float, float]:
    """(median ms, IQR ms, peak MiB) of one no-grad call, or forward + backward (--backward)."""
    if args.backward:
        def step():
            fn().sum().backward()
    else:
        def step():
            with torch.no_grad():
                fn()
    step()  # warm-up
    with track_peak("cpu") as mem:
        step()
    timer = benchmark.Timer("step()", globals={"step": step}, num_threads=args.threads)
    m = timer.blocked_autorange(min_run_time=args.min_run_time)
    return m.median * 1e3, m.iqr * 1e3, mem.peak_mib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lens", default="1024,2048,3072,4096")
    p.add_argument("--window", type=int, default=256, help="one-sided w (HF window = 2w)")
    p.add_argument("--global-tokens", type=int, default=0)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--backward", action="store_true", help="time forward + backward")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per cell")
    args = p.parse_args()
    lens = [int(n) for n in args.lens.split(",")]
    bad = [n for n in lens if n % (2 * args.window)]
    if bad:
        p.error(f"lengths {bad} are not multiples of 2·window = {2 * args.window} (HF needs that)")

    torch.manual_seed(0)
    ours = build("longformer", args.d_model, args.n_heads, window=args.window,
                 global_tokens=args.global_tokens).eval()  # eval: no dropout on either side
    hf = hf_layer(ours, args.window, args.d_model, args.n_heads)
    g = args.global_tokens

    table = Table(title=f"longformer vs HF LongformerSelfAttention — B={args.batch_size}, "
                        f"d_model={args.d_model}, {args.n_heads} heads, w={args.window} one-sided, "
                        f"{g} global, {args.threads} threads, CPU float32, "
                        f"{'forward+backward' if args.backward else 'forward'}")
    for col in ("N", "ours ms", "HF ms", "HF / ours", "ours MiB", "HF MiB", "max |Δ|"):
        table.add_column(col, justify="right")
    for n in lens:
        x = torch.randn(args.batch_size, n, args.d_model)
        hf_mask = torch.zeros(args.batch_size, n)
        hf_mask[:, :g] = 10000.0  # HF layer convention: +10000 global, 0 local
        kwargs = dict(attention_mask=hf_mask, is_index_masked=hf_mask < 0,
                      is_index_global_attn=hf_mask > 0, is_global_attn=g > 0)

        def run_ours(x=x):
            return ours(x)

        def run_hf(x=x, kwargs=kwargs):
            return ours.out(hf(x, **kwargs)[0])

        with torch.no_grad():
            diff = (run_ours() - run_hf()).abs().max().item()
        t_ours, iqr_ours, mem_ours = measure(run_ours, args)
        t_hf, iqr_hf, mem_hf = measure(run_hf, args)
        table.add_row(str(n), f"{t_ours:.1f} ± {iqr_ours:.1f}", f"{t_hf:.1f} ± {iqr_hf:.1f}",
                      f"{t_hf / t_ours:.2f}x", f"{mem_ours:.0f}", f"{mem_hf:.0f}", f"{diff:.1e}")
    Console().print(table)


if __name__ == "__main__":
    main()
