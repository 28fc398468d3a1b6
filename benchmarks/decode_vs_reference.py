"""Is lsbench's decode step as fast as the obvious ways to write it? (issue 18)

Same weights and shapes (d_model 256, 16 heads, float32, CPU or CUDA), one token at depth N:

- `ours`: `sdpa`'s `step` (lsbench.variants._decode.KVCacheDecoder): fused qkv projection,
  in-place cache write, SDPA over the N cached keys, output projection.
- `minimal`: the same arithmetic written inline with torch.nn.functional on a preallocated
  cache slice: the floor for this layer (acceptance: ours <= 1.1x).
- `hf`: Hugging Face's `LlamaAttention` (sdpa attention) with a `StaticCache` of capacity N, the
  serving-style static cache (acceptance: ours <= 1.0x). It also applies rotary embeddings,
  which ours does not; that is part of what a user would otherwise run.

And for the recurrent and window variants, the log-log slope of decode latency in depth from
1K to 64K (acceptance: <= 0.1, i.e. flat).

    python benchmarks/decode_vs_reference.py [--depths 1024,8192,32768] [--batches 1,8]

Times are medians of torch.utils.benchmark's blocked_autorange (each sample a block of calls).
The three steps of one (B, depth) are timed *interleaved*: ROUNDS rounds, each timing ours,
minimal and hf for min_run_time / ROUNDS seconds in turn, so a machine whose speed wanders
(a cloud VM's does by 10-40% over seconds, measured) slows all three alike. The ratios are the
medians of the per-round ratios (paired), the milliseconds the medians of the rounds.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from lsbench.variants import build

D, H = 256, 16
DH = D // H


ROUNDS = 5


def median_ms(fn, min_run_time: float) -> float:
    timer = Timer("fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def interleaved(fns: dict, min_run_time: float) -> tuple[dict, dict]:
    """{name: median ms over rounds}, {name: median over rounds of ms / the first's ms}."""
    rounds = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            rounds[name].append(median_ms(fn, min_run_time / ROUNDS))
    first = next(iter(fns))
    med = {name: statistics.median(ms) for name, ms in rounds.items()}
    ratio = {name: statistics.median(a / b for a, b in zip(rounds[first], ms, strict=True))
             for name, ms in rounds.items()}
    return med, ratio


def filled(model, batch: int, depth: int, device):
    """A state holding depth - 1 tokens with room for one more."""
    model.decode_check()  # DecodeUnsupported, with the reason, for a variant without one
    state = model.empty_state(batch, depth, torch.empty(0, device=device))
    if state is None:
        _, state = model.prefill(torch.randn(batch, depth - 1, D, device=device), depth)
        return state
    x = torch.randn(batch, depth - 1, D, device=device)
    for i in range(0, depth - 1, 4096):
        _, state = model.fill(x[:, i:i + 4096], state)
    return state


def ours_and_minimal(batch: int, depth: int, device):
    torch.manual_seed(0)
    model = build("sdpa", D, H, causal=True).to(device).eval()
    state = filled(model, batch, depth, device)
    x_t = torch.randn(batch, 1, D, device=device)
    cache = state.tensors["kv"].clone()
    w, b, wo, bo = model.qkv.weight, model.qkv.bias, model.out.weight, model.out.bias
    pos = depth - 1

    def minimal():
        q, k, v = F.linear(x_t, w, b).view(batch, 1, 3, H, DH).permute(2, 0, 3, 1, 4)
        cache[0, :, :, pos] = k[:, :, 0]
        cache[1, :, :, pos] = v[:, :, 0]
        y = F.scaled_dot_product_attention(q, cache[0, :, :, :depth], cache[1, :, :, :depth])
        return F.linear(y.transpose(1, 2).reshape(batch, 1, D), wo, bo)

    with torch.no_grad():
        ours_y = model.step(x_t, state)[0]
        torch.testing.assert_close(minimal(), ours_y, atol=1e-5, rtol=1e-4)  # the same layer
    return (lambda: _no_grad(model.step, x_t, state)), (lambda: _no_grad(minimal))


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def hf(batch: int, depth: int, device):
    try:
        from transformers import LlamaConfig, StaticCache
        from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
    except ImportError:
        return None
    config = LlamaConfig(hidden_size=D, num_attention_heads=H, num_key_value_heads=H,
                         head_dim=DH, num_hidden_layers=1, attention_bias=True,
                         max_position_embeddings=max(depth, 2048))
    config._attn_implementation = "sdpa"
    attn = LlamaAttention(config, layer_idx=0).to(device).eval()
    rope = LlamaRotaryEmbedding(config).to(device)
    cache = StaticCache(config=config, max_cache_len=depth)
    x_t = torch.randn(batch, 1, D, device=device)
    with torch.no_grad():
        k = torch.randn(batch, H, depth - 1, DH, device=device)
        cache.update(k, k.clone(), 0)
        layer = cache.layers[0]
        position = torch.full((batch, 1), depth - 1, device=device)
        cos_sin = rope(x_t, position)

        def step():  # its static layer counts tokens in place: rewind it to decode at depth
            layer.cumulative_length.fill_(depth - 1)
            return attn(x_t, position_embeddings=cos_sin, attention_mask=None, cache=cache)
        step()
    return lambda: _no_grad(step)


def slope(name: str, batch: int, depths: list[int], device, min_run_time: float) -> float:
    torch.manual_seed(0)
    model = build(name, D, H, causal=True).to(device).eval()
    times = []
    for depth in depths:
        state = filled(model, batch, depth, device)
        x_t = torch.randn(batch, 1, D, device=device)
        with torch.no_grad():
            times.append(median_ms(lambda x_t=x_t, state=state: model.step(x_t, state),
                                   min_run_time))
    xs, ys = [math.log(d) for d in depths], [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="1024,8192,32768")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--slope-depths", default="1024,4096,16384,65536")
    ap.add_argument("--min-run-time", type=float, default=1.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"sdpa decode step, d_model {D}, {H} heads, float32, {device}; median ms per token")
    print(f"{'B':>3} {'depth':>7} {'ours':>8} {'minimal':>8} {'hf':>8} {'ours/min':>9} "
          f"{'ours/hf':>8}")
    for batch in map(int, args.batches.split(",")):
        for depth in map(int, args.depths.split(",")):
            ours, minimal = ours_and_minimal(batch, depth, device)
            ref = hf(batch, depth, device)
            fns = {"ours": ours, "minimal": minimal, **({"hf": ref} if ref else {})}
            ms, ratio = interleaved(fns, args.min_run_time * len(fns))
            hf_cell = f"{ms['hf']:8.3f}" if ref else f"{'n/a':>8}"
            hf_ratio = f"{ratio['hf']:8.2f}" if ref else f"{'n/a':>8}"
            print(f"{batch:>3} {depth:>7} {ms['ours']:8.3f} {ms['minimal']:8.3f} {hf_cell} "
                  f"{ratio['minimal']:9.2f} {hf_ratio}", flush=True)
    depths = [int(d) for d in args.slope_depths.split(",")]
    print(f"\nlog-log slope of decode latency in depth, {depths[0]}..{depths[-1]} (flat = 0)")
    for name in ("linear", "local", "longformer", "performer", "mamba2"):
        try:
            print(f"  {name:<12} B=1 {slope(name, 1, depths, device, args.min_run_time):+.3f}",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - a variant without decoding: say so
            print(f"  {name:<12} n/a ({type(e).__name__}: {str(e)[:80]})")


if __name__ == "__main__":
    main()
