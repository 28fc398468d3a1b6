"""NoPE: no position information beyond the causal mask.

Kazemnejad et al. 2023, "The Impact of Positional Encoding on Length Generalization in
Transformers", https://arxiv.org/abs/2305.19466 (a causal decoder can infer positions itself).
"""

from __future__ import annotations

from lsbench.positions.base import Position


class NoPosition(Position):
    name = "none"
    kind = "none"
    method = "no position encoding (NoPE); order comes only from the causal mask"
    paper = "Kazemnejad et al. 2023, https://arxiv.org/abs/2305.19466"
