"""CPU time of lsbench's `linformer`, `fastformer`, `performer` and `nystromformer` against
their reference implementations, same weights and shapes (not a test; the peers come with the
dev extra: `linformer`, `performer-pytorch`, `nystrom-attention`).

- linformer vs lucidrains `linformer` 0.2.3 `LinformerSelfAttention` (k = 256, headwise E/F):
  lucidrains' q/k/v projections have no bias, so ours runs with its qkv bias zeroed and the two
  outputs agree (max |Δ| column). lucidrains projects all N rows to keys/values, then
  compresses; ours compresses x first, as fairseq's authors' code does. Below N = k both use
  k = N rows (lsbench caps k at N; the peer is built with that k).
- fastformer vs the official `FastSelfAttention` + `BertSelfOutput.dense` (wuch15/Fastformer),
  restated below line by line as in tests/test_linear_family.py, sharing our Linear modules.
- performer vs performer-pytorch `FastAttention` (FAVOR+, 256 features, the same projection
  matrix) between our q/k/v and output projections (the package has no layer of this shape).
- nystromformer vs nystrom-attention `NystromAttention` (64 landmarks, 6 pinv iterations,
  conv skip 33), whole layers with copied weights (its qkv has no bias: ours zeroed).

Each cell: forward (no grad) or forward + backward (autograd.grad of the sum w.r.t. every
parameter), torch.utils.benchmark median over `--rounds` interleaved rounds (ours, peer; peer,
ours; ...) so that load from other processes falls on both sides. The load average is printed
before and after each table: the CPU may be shared. Cells predicted above --max-mem-gib are
skipped and say so.

    python benchmarks/vs_reference.py                            # the full grid
    python benchmarks/vs_reference.py --only fastformer --lens 1024
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils import benchmark

from lsbench.variants import REGISTRY, build

PEERS = {"linformer": "lucidrains", "fastformer": "official", "performer": "performer-pytorch",
         "nystromformer": "nystrom-attention"}


class OfficialFastAttention(nn.Module):
    """wuch15/Fastformer `FastSelfAttention.forward` then `BertSelfOutput.dense`, restated with
    `ours`'s Linear modules (dropout and LayerNorm(· + input) belong to the encoder block)."""

    def __init__(self, ours: nn.Module) -> None:
        super().__init__()
        self.ours = ours
        self.num_attention_heads = ours.n_heads
        self.attention_head_size = ours.head_dim
        self.softmax = nn.Softmax(dim=-1)

    def transpose_for_scores(self, x):
        new_x_shape = x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)
        x = x.view(*new_x_shape)
        return x.permute(0, 2, 1, 3)

    def forward(self, hidden_states, attention_mask):
        m = self.ours
        batch_size, seq_len, _ = hidden_states.shape
        mixed_query_layer = m.query(hidden_states)
        mixed_key_layer = m.key(hidden_states)
        query_for_score = (m.query_att(mixed_query_layer).transpose(1, 2)
                           / self.attention_head_size**0.5)
        query_for_score += attention_mask
        query_weight = self.softmax(query_for_score).unsqueeze(2)
        query_layer = self.transpose_for_scores(mixed_query_layer)
        pooled_query = torch.matmul(query_weight, query_layer).transpose(1, 2).view(
            -1, 1, self.num_attention_heads * self.attention_head_size)
        pooled_query_repeat = pooled_query.repeat(1, seq_len, 1)
        mixed_query_key_layer = mixed_key_layer * pooled_query_repeat
        query_key_score = (m.key_att(mixed_query_key_layer)
                           / self.attention_head_size**0.5).transpose(1, 2)
        query_key_score += attention_mask
        query_key_weight = self.softmax(query_key_score).unsqueeze(2)
        key_layer = self.transpose_for_scores(mixed_query_key_layer)
        pooled_key = torch.matmul(query_key_weight, key_layer)
        weighted_value = (pooled_key * query_layer).transpose(1, 2)
        weighted_value = weighted_value.reshape(
            weighted_value.size()[:-2] + (self.num_attention_heads * self.attention_head_size,))
        weighted_value = m.transform(weighted_value) + mixed_query_layer
        return m.dense(weighted_value)  # FastAttention.output.dense


def pair(name: str, n: int, args) -> tuple[nn.Module, Callable, Callable]:
    """(ours, ours(x), peer(x)) with the same weights."""
    torch.manual_seed(0)
    if name == "linformer":
        from linformer import LinformerSelfAttention

        ours = build("linformer", args.d_model, args.n_heads, k=args.k, max_len=n).eval()
        k = ours.effective_k(n, ours.params)  # ours caps k at N below k: the peer too
        peer = LinformerSelfAttention(args.d_model, seq_len=n, k=k, heads=args.n_heads).eval()
        with torch.no_grad():
            ours.qkv.bias.zero_()  # lucidrains' to_q/to_k/to_v are bias-free
            wq, wk, wv = ours.qkv.weight.chunk(3, dim=0)
            peer.to_q.weight.copy_(wq)
            peer.to_k.weight.copy_(wk)
            peer.to_v.weight.copy_(wv)
            peer.proj_k.copy_(ours.E[:k].t())  # lucidrains stores E as (seq_len, k)
            peer.proj_v.copy_(ours.F[:k].t())
            peer.to_out.load_state_dict(ours.out.state_dict())
        return ours, ours, peer
    if name == "performer":
        from performer_pytorch import FastAttention

        from lsbench.variants.transformer import merge_heads

        ours = build("performer", args.d_model, args.n_heads).eval()
        fast = FastAttention(dim_heads=args.d_model // args.n_heads,
                             nb_features=ours.projection.shape[0])
        fast.projection_matrix.copy_(ours.projection)

        def peer(x):
            q, k, v = ours.project(x)
            return ours.out(merge_heads(fast(q, k, v)))

        return ours, ours, peer
    if name == "nystromformer":
        from nystrom_attention import NystromAttention

        ours = build("nystromformer", args.d_model, args.n_heads).eval()
        peer = NystromAttention(dim=args.d_model, dim_head=args.d_model // args.n_heads,
                                heads=args.n_heads, num_landmarks=64).eval()
        with torch.no_grad():
            ours.qkv.weight.copy_(peer.to_qkv.weight)
            ours.qkv.bias.zero_()
            ours.out.load_state_dict(peer.to_out[0].state_dict())
            ours.conv.weight.copy_(peer.res_conv.weight)
        mask = {}

        def run_peer(x):  # an all-True mask: the package then masks its own front padding
            if x.shape[:2] not in mask:
                mask[x.shape[:2]] = torch.ones(*x.shape[:2], dtype=torch.bool)
            return peer(x, mask=mask[x.shape[:2]])

        run_peer.parameters = peer.parameters
        return ours, ours, run_peer
    ours = build("fastformer", args.d_model, args.n_heads).eval()
    official = OfficialFastAttention(ours).eval()
    no_mask = torch.zeros(1, 1, n)  # the official extended mask for all-real tokens

    def peer(x):
        return official(x, no_mask)

    return ours, ours, peer


def predicted_gib(name: str, batch: int, n: int, training: bool, args) -> float:
    cls = REGISTRY[name]
    params = {**cls.defaults, **({"k": args.k} if name == "linformer" else {})}
    if name in ("performer", "nystromformer"):  # the packages keep more than ours: (B,H,N,·)
        return 4 * cls.mem_elems(batch, n, args.d_model, args.n_heads, params) * 4 * (
            2 if training else 1) / 2**30
    elems = cls.mem_elems(batch, n, args.d_model, args.n_heads, params)
    # float32; training keeps activations for backward and adds their grads (measured: linformer
    # B=8, N=4096, forward+backward peaks at 1.6 GiB on both sides, this predicts 2.1)
    return elems * 4 * (2 if training else 1) / 2**30


def step(fn: Callable, x: torch.Tensor, params: list[torch.Tensor], training: bool) -> Callable:
    if not training:
        def run():
            with torch.no_grad():
                return fn(x)
        return run

    def run():
        return torch.autograd.grad(fn(x).sum(), params)
    return run


def timed(ours_run: Callable, peer_run: Callable, args) -> tuple:
    ours_runs, peer_runs = [], []
    ours_run(), peer_run()  # warm-up
    for r in range(args.rounds):
        order = [(ours_run, ours_runs), (peer_run, peer_runs)]
        for run, out in order if r % 2 == 0 else order[::-1]:
            timer = benchmark.Timer("run()", globals={"run": run}, num_threads=args.threads)
            out.append(timer.blocked_autorange(min_run_time=args.min_run_time))
    ours_m, peer_m = (benchmark.Measurement.merge(m)[0] for m in (ours_runs, peer_runs))
    return ours_m, peer_m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=PEERS, default=None)
    p.add_argument("--lens", default="1024,4096,16384")
    p.add_argument("--batch-sizes", default="1,8")
    p.add_argument("--modes", default="forward,forward+backward")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-heads", type=int, default=16)
    p.add_argument("--k", type=int, default=256, help="linformer projected length")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds per side")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per round and side")
    p.add_argument("--max-mem-gib", type=float, default=3.0,
                   help="skip cells whose predicted activation memory is larger")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lens = [int(n) for n in args.lens.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    modes = args.modes.split(",")
    console = Console()
    for name in [args.only] if args.only else list(PEERS):
        peer_name = PEERS[name]
        table = Table(title=f"{name} vs {peer_name} — d_model={args.d_model}, {args.n_heads} "
                            f"heads{f', k={args.k}' if name == 'linformer' else ''}, "
                            f"{args.threads} threads, CPU float32, median ms (IQR)")
        for col in ("mode", "B", "N", "ours ms", f"{peer_name} ms", "ours / peer", "max |Δ|"):
            table.add_column(col, justify="right")
        load_before = os.getloadavg()
        for mode in modes:
            training = mode != "forward"
            for batch in batches:
                for n in lens:
                    need = predicted_gib(name, batch, n, training, args)
                    if need > args.max_mem_gib:
                        table.add_row(mode, str(batch), str(n), "skipped", "skipped",
                                      f"predicted {need:.1f} GiB > {args.max_mem_gib}", "")
                        continue
                    ours, ours_fn, peer_fn = pair(name, n, args)
                    x = torch.randn(batch, n, args.d_model)
                    with torch.no_grad():
                        diff = (ours_fn(x) - peer_fn(x)).abs().max().item()
                    params = list(ours.parameters())
                    if name in ("linformer", "nystromformer"):  # each side's own parameters
                        peer_params = list(peer_fn.parameters())
                    else:
                        peer_params = params
                    ours_m, peer_m = timed(step(ours_fn, x, params, training),
                                           step(peer_fn, x, peer_params, training), args)
                    table.add_row(mode, str(batch), str(n),
                                  f"{ours_m.median * 1e3:.1f} ({ours_m.iqr * 1e3:.1f})",
                                  f"{peer_m.median * 1e3:.1f} ({peer_m.iqr * 1e3:.1f})",
                                  f"{ours_m.median / peer_m.median:.2f}x", f"{diff:.1e}")
                    console.print(f"  {name} {mode} B={batch} N={n} done "
                                  f"(load {os.getloadavg()[0]:.2f})")
        console.print(table)
        console.print(f"load average (1, 5, 15 min) before: "
                      f"{', '.join(f'{v:.2f}' for v in load_before)}; after: "
                      f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
