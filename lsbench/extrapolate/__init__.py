"""Train short, test long: corpora + byte tokenizer, training loop, perplexity evaluation.

    from lsbench.extrapolate import run_extrapolate
    result = run_extrapolate(train_len=512, positions="alibi,sinusoidal", preset="tiny")
"""

from lsbench.extrapolate.run import ExtrapolationResult, run_extrapolate

__all__ = ["ExtrapolationResult", "run_extrapolate"]
