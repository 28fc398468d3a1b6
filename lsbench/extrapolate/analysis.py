"""What an extrapolation table means: ratios to L, loss differences in bits, the n-gram ceilings
of the eval stream, and the `none` (NoPE) control. Pure functions of the result rows, shared by
`lsbench extrapolate` (terminal) and `lsbench report` (HTML / markdown).

Why a control: a method that has not yet learned to use position behaves like no position at
all, and NoPE extrapolates gently (Kazemnejad et al. 2023, https://arxiv.org/abs/2305.19466). A
flat curve then says nothing about the method. So `none` trains beside the others and a method
whose perplexity at L is not clearly (CONTROL_MARGIN) below `none`'s is flagged.

Why ceilings: tokens are bytes, so even a model that has lost all context is only as bad as a
byte unigram model (ppl ~27 on the stdlib stream); the ratio ppl(n)/ppl(L) of a total collapse
is therefore ~3-4×, not the hundreds of the ALiBi paper's word-level tables. The unigram and
bigram perplexities show how far a collapse could go.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the report reads results without importing torch
    import torch

CONTROL = "none"
MIN_TRUSTED_TOKENS = 16_384  # fewer scored tokens per length: numbers marked low precision
CONTROL_MARGIN = 0.05  # ppl at L must be at least 5% below the control's
LN2 = math.log(2)


def bits(nats: float) -> float:
    return nats / LN2


def ngram_ceilings(train: torch.Tensor, stream: torch.Tensor) -> dict:
    """Perplexity on `stream` of add-one-smoothed unigram and bigram models fit on `train`."""
    import torch

    from lsbench.extrapolate.tokenizer import VOCAB_SIZE

    tr, ev = train.long(), stream.long()
    uni = torch.bincount(tr, minlength=VOCAB_SIZE).double() + 1  # (V,)
    uni_logp = (uni / uni.sum()).log()
    pairs = torch.bincount(tr[:-1] * VOCAB_SIZE + tr[1:], minlength=VOCAB_SIZE**2)
    bi = pairs.double().view(VOCAB_SIZE, VOCAB_SIZE) + 1  # (V_prev, V_next)
    bi_logp = (bi / bi.sum(dim=1, keepdim=True)).log()
    uni_nll = -uni_logp[ev[1:]].mean().item()  # the targets every evaluation scores
    bi_nll = -bi_logp[ev[:-1], ev[1:]].mean().item()
    return {"unigram_ppl": round(math.exp(uni_nll), 3), "bigram_ppl": round(math.exp(bi_nll), 3),
            "unigram_bits": round(bits(uni_nll), 4), "bigram_bits": round(bits(bi_nll), 4),
            "fit_on": "train split, add-one smoothing", "targets": len(ev) - 1}


def repeat_warning(budget_tokens: int, corpus_tokens: int, corpus: str) -> str | None:
    """A warning when each method's training budget is more than one pass over the train split
    (batches are random windows, so each train token is then seen budget/corpus times on
    average), or None."""
    passes = budget_tokens / max(1, corpus_tokens)
    if passes <= 1:
        return None
    return (f"the training budget ({budget_tokens:,} tokens per method) is {passes:.1f}× the "
            f"{corpus_tokens:,} train tokens of corpus {corpus!r}: each train token is seen "
            f"~{passes:.1f} times, so a large model can start to memorise the train split and "
            "the perplexities mix extrapolation with overfitting; give a bigger --corpus, or "
            f"--train-tokens {corpus_tokens} or fewer for at most one pass.")


def add_relative_columns(rows: list[dict], train_len: int) -> None:
    """Set `ppl_ratio` = ppl(n)/ppl(L) and `delta_bits` = (loss(n) - loss(L)) / ln 2 on each row
    (bits per token; a token is a byte or an end-of-file marker), per position and eval mode."""
    base = {(r["position"], r["eval_mode"]): r for r in rows
            if r["eval_len"] == train_len and r.get("loss") is not None}
    for r in rows:
        b = base.get((r["position"], r["eval_mode"]))
        if b is None or r.get("loss") is None:
            r["ppl_ratio"] = r["delta_bits"] = None
            continue
        r["ppl_ratio"] = round(math.exp(r["loss"] - b["loss"]), 4)
        r["delta_bits"] = round(bits(r["loss"] - b["loss"]), 4)


def control_warnings(rows: Iterable[dict], train_len: int, margin: float = CONTROL_MARGIN
                     ) -> list[dict]:
    """One warning per method whose ppl at L is not at least `margin` below `none`'s in the
    headline (nonoverlapping) evaluation, or in the only mode evaluated.

    Rows need position, eval_mode, eval_len and ppl. No control row at L: no warnings (the
    caller says the control is missing).
    """
    at_l: dict[str, dict[str, float]] = {}  # position -> mode -> ppl at L
    for r in rows:
        # "rotary+yarn" etc. re-score the rotary checkpoint: at L the scaling is the identity,
        # so its warning would repeat rotary's once per scaling
        if r["eval_len"] == train_len and r.get("ppl") is not None and "+" not in r["position"]:
            at_l.setdefault(r["position"], {})[r["eval_mode"]] = r["ppl"]
    ref_modes = at_l.get(CONTROL, {})
    out = []
    for pos, modes in at_l.items():
        common = [m for m in modes if m in ref_modes]
        if pos == CONTROL or not common:
            continue
        mode = "nonoverlapping" if "nonoverlapping" in common else common[0]
        ppl, ref = modes[mode], ref_modes[mode]
        if ppl <= (1 - margin) * ref:
            continue
        out.append({
            "position": pos, "eval_mode": mode, "ppl": ppl, "control_ppl": ref,
            "message": (f"{pos}: ppl at L={train_len} ({mode}) is {ppl:.3g}, not clearly below "
                        f"the {CONTROL} control's {ref:.3g} (needs <= {(1 - margin) * ref:.3g}): "
                        "this method has not learned to use position; its extrapolation curve "
                        "says nothing about it."),
        })
    return out
