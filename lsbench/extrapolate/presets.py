"""Model size, token budget and evaluation size for `lsbench extrapolate`.

`cpu` is sized so the four paper methods (sinusoidal, rotary, t5, alibi) train at L = 512 and are
scored at L×{1, 1.5, 2, 4, 8, 16} in under 20 minutes on a 2-core laptop CPU; `gpu` is closer to
the ALiBi paper (which trains a 16-layer, 1024-wide model on WikiText-103); `tiny` runs in seconds
and exists for tests and smoke checks.
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
            description="< 20 min for 4 methods on 2 CPU cores: 4 layers × 128 wide, "
                        "1.5M training tokens per method",
            d_model=128, n_heads=4, n_layers=4, batch_size=4, train_tokens=1_500_000, lr=2e-3,
        ),
        Preset(
            name="gpu",
            description="closer to the paper: 8 layers × 512 wide (8 heads), 100M training "
                        "tokens per method, bfloat16",
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
