"""Model size, token budget and evaluation size for `lsbench extrapolate`.

`cpu` must reproduce the *shape* of the ALiBi paper (Press et al. 2022, Fig. 1 / Table 1) at
L = 512 on a 2-core CPU in under 20 minutes for sinusoidal, rotary, t5, alibi and the `none`
control: sinusoidal blows up just past L, rotary degrades less than sinusoidal, T5 stays near
flat, ALiBi stays flat to 16L, and every method beats `none` at L. How it was sized (issue 9;
measured on this project's 2-core machine, 1 thread, stdlib corpus, ratios = ppl(n)/ppl(L)
nonoverlapping on the same 32k-token eval stream):

- The failure mode is *too little training*, not a bug: a method that has not learned to use
  position behaves like NoPE, which extrapolates gently, so the curves say nothing. The first
  cpu preset (4 layers × 128, 4 heads, 1.5M tokens in 732 steps of 4 × 512) gave sinusoidal
  only 1.34× at 16L. Sinusoidal's ratio grows with the number of optimizer steps (at L = 128:
  1.13 / 1.28 / 1.46 / 1.96 at 2L after 250×8 / 500×8 / 1000×8 / 2000×4 sequences), and at equal
  tokens more, smaller steps learn position faster. So: 2 layers (half the time per token of 4;
  the paper's effect needs position use, not depth) and batch 1 × 512, 6000 steps.
  At L = 512, 3.07M tokens: batch 2 × 3000 steps gave sinusoidal ppl(L) 7.0, 1.77× at 2L,
  2.31× at 4L; batch 1 × 6000 steps gave 5.6, 1.96×, 2.86×.
- Byte tokens cap every ratio: a model that lost all context falls to about the byte unigram
  perplexity (~27 here), so a method that is weaker at L has less room to blow up. With
  8 heads (head dim 16) sinusoidal was far behind rotary at L (5.6 vs 3.6) and both had
  collapsed to ~19 by 4L, so rotary's ratio (3.33×) exceeded sinusoidal's (2.86×) although
  neither was better there in absolute terms. 4 heads (head dim 32, closer to the paper's
  wide heads) let sinusoidal learn position faster (ppl(L) 4.9; 2.41× at 2L, 3.85× at 4L)
  while rotary gave 1.68× and 3.53×: the paper's order.
- T5's bias table starts at zero and AdamW moves an entry by about lr per step, so it gets
  its own 10× learning rate and no weight decay (`position_lr_mult`); with it T5 is the best
  method at L and flat to 16L (1.006× at batch 2).
- Result of the default command with this preset (2 threads): nonoverlapping ppl(L) none 10.1,
  sinusoidal 4.92, rotary 3.72, t5 3.44, alibi 4.19; ratio at 2L / 4L / 16L: sinusoidal 2.49 /
  4.27 / 6.51, rotary 1.73 / 3.83 / 6.74, t5 0.99 / 0.99 / 0.99, alibi 0.99 / 0.99 / 0.99.
- Time: 2 threads give ~30k tokens/s (rotary, alibi) and ~15k (t5: its bias needs a gradient,
  so attention takes the unfused path) at load ~1, i.e. ~10 min of training for the five
  methods plus ~1 min of evaluation each (sliding: 16k scored tokens per length), ~15 min in
  all. Measured: 974 s (training 150 / 170 / 211 / 125 / 108 s for sinusoidal / rotary / t5 /
  alibi / none) with the 1-min load average 1.07 at the start (an editor and short tests also
  ran); an earlier run took 1793 s with other processes holding the load at 1.2-4.6. The
  numbers above were reproduced exactly by that 974 s run (same seed, same data order).
- Issue 20 (a run reported at ~30 min, training 11.4k / 7.0k / 11.3k / 13.7k tokens/s for
  rotary / t5 / alibi / none): the profile of a step (torch.profiler, 1 thread) put T5's bias
  first (the embedding backward of the (N, N) bucket tensor and the logarithm building it,
  ~25% of a T5 step), then the CPU flash-attention backward and the GEMMs (not changed), the
  per-tensor AdamW loop (~7%) and rotary cos/sin recomputed for every layer and for q and k.
  Fixed: T5 reads a per-distance table (index_add backward), rotary tables once per forward,
  fused AdamW. Step tokens/s, old vs new alternating step by step in one process (1 thread,
  the machine at load 6-8 from other work, so only the ratios mean anything; two runs): t5
  1.30× (1.24× before the lookup table), rotary 1.04-1.07×, alibi 0.98-1.14×, sinusoidal and
  none ~1.03× (2-thread runs at that load were unusable: 80-1200 tokens/s). The token budget, model,
  data order and protocol are unchanged and 40 steps of t5 and rotary give the same losses to
  1e-6 (float rounding), so the ratios above are expected to hold; no full default run was
  repeated after the change (it takes the better part of an hour at that load). From the
  issue's rates: training ~1460 s -> ~1320 s; with evaluation, ~26 min under that load, ~15 min
  at the load of the 974 s run. The run now prints its expected duration from a warm-up
  (run.json `estimate`). The next step that would reach 20 min under such load is structural:
  train two methods at once in two 1-thread processes (small GEMMs scale poorly to 2 threads,
  and a 2-thread step stalls whenever another process takes one core).

`gpu` is closer to the paper (which trains a 16-layer, 1024-wide model on WikiText-103); `tiny`
runs in seconds and exists for tests and smoke checks. gpu's 100M tokens per method are ~8.9 passes
over the stdlib corpus's 11.24M train tokens, on purpose: the paper's WikiText-103 models follow
Baevski & Auli's adaptive-input recipe, 205 epochs of 103M tokens, and an 8 × 512 model needs
many more steps than one pass of stdlib gives to learn (or fail) to use position the way the
cpu preset's notes above describe. The run says so (a warning with the repeat factor, in the
terminal and the report) whenever the budget exceeds the corpus's train split, so a user who
points it at a small corpus sees how often each token is reused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lsbench.errors import unknown_choice

DEFAULT_EVAL_MULTS = (1.0, 1.5, 2.0, 4.0, 8.0, 16.0)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    d_model: int
    n_heads: int
    n_layers: int
    batch_size: int  # sequences of train_len tokens per step
    train_tokens: int  # budget, identical for every position method
    lr: float
    warmup_frac: float = 0.05  # linear warm-up over this share of the steps, then cosine
    min_lr_ratio: float = 0.1  # cosine decays to lr × min_lr_ratio
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_windows: int = 4  # held-out stream = eval_windows × the longest eval length
    # tokens scored per length in sliding mode (windows of `stride` scored tokens each); fewer
    # than evaluate.MIN_TRUSTED_TOKENS are marked low precision
    sliding_tokens: int = 16_384
    eval_batch_tokens: int = 16384  # windows of one length are batched up to this many tokens
    ckpt_every: int = 50  # steps between checkpoints
    dtype: str = "float32"  # compute dtype on CUDA (autocast); CPU always runs float32
    threads: int = 0  # CPU threads (0: torch's default); tiny ops run faster on one
    # Learned position parameters get their own AdamW group: lr × this multiplier, no weight
    # decay (keyed by position name; others: × 1). Why T5 needs it: its bias table starts at 0
    # and AdamW moves a parameter by at most ~lr per step, so over a short run it can reach
    # at most ~sum(lr) (0.8 in the first cpu preset), while ALiBi's steepest head already
    # applies -2.5 at distance 10. A 10× lr lets it learn a comparable distance penalty.
    position_lr_mult: tuple[tuple[str, float], ...] = (("t5", 10.0),)

    def lr_mult_for(self, position: str) -> float:
        return dict(self.position_lr_mult).get(position, 1.0)

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    p.name: p
    for p in (
        Preset(
            name="tiny",
            description="seconds: a 2-layer 32-wide model on 32k tokens (tests, smoke checks)",
            d_model=32, n_heads=4, n_layers=2, batch_size=4, train_tokens=32_768, lr=3e-3,
            eval_windows=1, sliding_tokens=16, ckpt_every=10, threads=1,
        ),
        Preset(
            name="cpu",
            description="< 20 min for 4 methods + the none control on 2 CPU cores: 2 layers "
                        "× 128 wide (4 heads), 6000 steps of 1 × 512 tokens (3.1M) per method",
            d_model=128, n_heads=4, n_layers=2, batch_size=1, train_tokens=3_072_000, lr=2e-3,
            ckpt_every=250,
        ),
        Preset(
            name="gpu",
            description="closer to the paper: 8 layers × 512 wide (8 heads), 100M training "
                        "tokens per method (~8.9 passes over stdlib, as the paper repeats "
                        "WikiText-103), bfloat16",
            d_model=512, n_heads=8, n_layers=8, batch_size=32, train_tokens=100_000_000,
            lr=6e-4, eval_windows=8, sliding_tokens=65_536, eval_batch_tokens=65536,
            ckpt_every=500, dtype="bfloat16",
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise unknown_choice("preset", name, PRESETS)
    return PRESETS[name]


def list_rows() -> list[dict]:
    return [
        {"name": p.name, "description": p.description, "d_model": p.d_model,
         "n_layers": p.n_layers, "n_heads": p.n_heads, "train_tokens": p.train_tokens}
        for p in PRESETS.values()
    ]


@dataclass(frozen=True)
class RecallPreset:
    """The retrieval budget of `lsbench extrapolate --task recall` (lsbench.extrapolate.recall);
    the model's width, depth and heads are the extrapolate preset of the same name's.

    MQAR sizes (Zoology's names): `vocab` tokens, `kv_pairs` pairs, queries placed uniformly
    (power_a = 1; see recall.py for why). Every (position method, seed) trains `steps` steps of
    `batch_size` fresh sequences of train_len tokens; each eval length is scored on
    `eval_examples` held-out sequences (kv_pairs queries each).
    """

    name: str
    train_len: int  # default L for --task recall (the LM task's is 512)
    vocab: int
    kv_pairs: int
    steps: int
    batch_size: int
    lr: float
    eval_examples: int
    seeds: int = 3  # the CI is Student's t over seeds (lsbench.quality.summary.t_interval)
    power_a: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)


# Sizing: `tiny` runs in seconds for tests. `cpu`: L = 64 keeps 16L at 1,024 tokens, so scoring
# 128 sequences at all six lengths is ~270k tokens per (method, seed). Measured on the 2-core
# EPYC VM (2 threads, quiet), rotary, one seed, accuracy at L / 2L / 8L:
#   1000 steps, lr 3e-3: 0.12 / 0.10 / 0.05 (3 seeds; alibi 0.12 / 0.12 / 0.08): not learned
#   1500 steps, lr 1e-3: 0.88 / 0.70 / 0.31 (99 s)
#   2000 steps, lr 1e-3: 1.00 / 0.92 / 0.41 (110 s, train loss 2e-5)
#   3000 steps, lr 1e-3: 1.00 / 0.97 / 0.48 (201 s)
# So 2000 steps at lr 1e-3, the fewest measured that solve the task at L: ~2 min per (method,
# seed), ~35 min for the 5 default methods x 3 seeds (over the 20 min the LM task's cpu preset
# keeps); `--positions` or `--seeds` shorten it.
RECALL_PRESETS = {
    r.name: r
    for r in (
        RecallPreset(name="tiny", train_len=32, vocab=32, kv_pairs=4, steps=20, batch_size=8,
                     lr=3e-3, eval_examples=16),
        RecallPreset(name="cpu", train_len=64, vocab=64, kv_pairs=8, steps=2000,
                     batch_size=32, lr=1e-3, eval_examples=128),
        RecallPreset(name="gpu", train_len=256, vocab=256, kv_pairs=32, steps=8000,
                     batch_size=64, lr=6e-4, eval_examples=1024),
    )
}


def get_recall_preset(name: str) -> RecallPreset:
    if name not in RECALL_PRESETS:
        raise unknown_choice("preset", name, RECALL_PRESETS)
    return RECALL_PRESETS[name]
