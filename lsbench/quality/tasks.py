"""Multi-query associative recall (MQAR), as Zoology defines it.

Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models",
https://arxiv.org/abs/2312.04927; generator `multiquery_ar` in github HazyResearch/zoology
(zoology/data/associative_recall.py), followed here:

- keys are drawn from [1, V/2), values from [V/2, V), each without replacement within a
  sequence; the context is k1 v1 k2 v2 ... (2·P tokens for P pairs);
- the rest of the sequence (length N − 2P) has `space` = (N − 2P) / 2 even slots; each key is
  queried once, at slot g (token position 2P + 2g), with the P slots drawn without replacement
  from P(g) ∝ (g + 1)^(a − 1), a = 0.01 (a power law: most queries come soon after the
  context, a few far away);
- every other position is a random token from the whole vocabulary (Zoology's
  `random_non_queries`), so the filler carries no information;
- **causal** form (`lm`): at a query position the model predicts the next token, whose label is
  the queried key's value (the value itself is never shown after the query);
- **masked** form, for encoder-only (non-causal) variants: the token right after each query is
  replaced by a mask token (id V) and the value is predicted *at the mask*, from the whole
  sequence; no answer is anywhere in the input but the context pair.

Differences from Zoology, on purpose: data are drawn with torch from a seeded generator (the
same seed gives the same tensors; no global numpy state); query slots are drawn without
replacement by Gumbel top-k, which is the same distribution as numpy's sequential
`choice(replace=False, p=...)`; Zoology's `vocab_size > seq_len` assertion is not enforced
(it is not needed for the task to be well defined). Labels not scored are IGNORE (−100).

Shape legend: B examples, N sequence length, P kv pairs, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lsbench.errors import LsbenchError

IGNORE = -100  # label of unscored positions (F.cross_entropy's ignore_index)
FORMS = ("lm", "masked")


@dataclass(frozen=True)
class MQAR:
    vocab_size: int = 64
    seq_len: int = 128
    kv_pairs: int = 8
    power_a: float = 0.01

    def __post_init__(self) -> None:
        v, n, p = self.vocab_size, self.seq_len, self.kv_pairs
        if p < 1 or p > v // 2 - 1:
            raise LsbenchError(
                f"MQAR: kv_pairs={p} needs 1 <= kv_pairs <= vocab_size/2 - 1 = {v // 2 - 1} "
                f"(distinct keys from [1, V/2)); raise --vocab or lower --kv-pairs.")
        if n % 2 or 4 * p > n:
            raise LsbenchError(
                f"MQAR: seq_len={n} must be even and >= 4 × kv_pairs = {4 * p} (context plus "
                f"one query slot per pair, as Zoology requires).")
        if not 0 < self.power_a <= 1:
            raise LsbenchError(f"MQAR: power_a must be in (0, 1], got {self.power_a}.")

    @property
    def space(self) -> int:
        """Query slots after the context."""
        return (self.seq_len - 2 * self.kv_pairs) // 2

    @property
    def mask_token(self) -> int:
        return self.vocab_size

    @property
    def n_tokens(self) -> int:
        """Embedding size: the vocabulary plus the mask token."""
        return self.vocab_size + 1

    def gap_probs(self) -> torch.Tensor:
        """P(slot g), g = 0 .. space-1: ∝ (g + 1)^(a − 1) (Zoology's `p`)."""
        g = torch.arange(1, self.space + 1, dtype=torch.float64)
        p = self.power_a * g ** (self.power_a - 1)
        return p / p.sum()

    def sample(self, n: int, seed: int, form: str = "lm") -> tuple[torch.Tensor, torch.Tensor]:
        """n examples -> (inputs (n, N) int64, labels (n, N) int64 with IGNORE off-query)."""
        if form not in FORMS:
            raise LsbenchError(f"MQAR form must be one of {FORMS}, got {form!r}.")
        g = torch.Generator().manual_seed(int(seed))
        V, N, P = self.vocab_size, self.seq_len, self.kv_pairs
        half = V // 2
        # P distinct keys from [1, V/2) and values from [V/2, V): top-P of random scores
        keys = 1 + torch.rand(n, half - 1, generator=g).topk(P, dim=1).indices  # (n, P)
        values = half + torch.rand(n, V - half, generator=g).topk(P, dim=1).indices  # (n, P)
        # slots without replacement ∝ p: Gumbel top-k (= sequential draws ∝ p)
        u = torch.rand(n, self.space, generator=g, dtype=torch.float64).clamp_min(1e-300)
        gumbel = -torch.log(-torch.log(u))
        slots = (self.gap_probs().log() + gumbel).topk(P, dim=1).indices  # (n, P)
        x = torch.randint(0, V, (n, N), generator=g)  # random filler
        x[:, 0:2 * P:2], x[:, 1:2 * P:2] = keys, values
        qpos = 2 * P + 2 * slots  # (n, P) query positions
        x.scatter_(1, qpos, keys)
        y = torch.full((n, N), IGNORE, dtype=torch.long)
        if form == "lm":
            y.scatter_(1, qpos, values)  # predicted at the query: the next token
        else:
            x.scatter_(1, qpos + 1, torch.full_like(keys, self.mask_token))
            y.scatter_(1, qpos + 1, values)  # predicted at the mask
        return x, y


def answers_from_context(x: torch.Tensor, kv_pairs: int) -> dict[int, int]:
    """The key -> value map of one sequence's context (for checks)."""
    ctx = x[: 2 * kv_pairs].tolist()
    return dict(zip(ctx[0::2], ctx[1::2], strict=True))
