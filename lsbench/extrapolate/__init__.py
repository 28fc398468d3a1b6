"""Train short, test long: corpora + byte tokenizer, training loop, perplexity evaluation.

    from lsbench.extrapolate import run_extrapolate
    result = run_extrapolate(train_len=512, positions="alibi,sinusoidal", preset="tiny")

`run_extrapolate` is imported lazily so `lsbench.extrapolate.analysis` (pure Python, used by the
report) does not pull in torch.
"""

from typing import Any

__all__ = ["ExtrapolationResult", "run_extrapolate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lsbench.extrapolate import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
