"""The contract every position method implements, in one of four kinds (as in x-transformers).

Shape legend: B batch, H heads, Dh head dim, D = H·Dh model width, Nq queries, Nk keys.

- `bias`:     forward(q_pos (Nq,), k_pos (Nk,)) -> additive score bias (H, Nq, Nk)
- `rotary`:   forward(x (B, H, N, Dh), pos (N,)) -> x with q/k rotated by position
- `absolute`: forward(pos (N,)) -> (N, D) added to the token embeddings
- `none`:     does nothing (NoPE: only the causal mask tells the model about order)

Positions are absolute token indices inside the window, so a query chunk [s, e) of a long
window asks for exactly the rows it needs and no (H, N, N) tensor is ever built.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from lsbench.errors import LsbenchError

REGISTRY: dict[str, type[Position]] = {}

KINDS = ("bias", "rotary", "absolute", "none")


class Position(nn.Module):
    """Base class; subclasses with a `name` register themselves in `REGISTRY`."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # one of KINDS
    method: ClassVar[str] = ""  # one line: what it computes
    paper: ClassVar[str] = ""  # citation + link
    learned: ClassVar[bool] = False  # has trainable parameters
    defaults: ClassVar[dict[str, Any]] = {}  # method parameters and their paper defaults
    # bias kind: the bias depends only on i - j, so one slab of rows serves every query chunk
    translation_invariant: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            assert cls.kind in KINDS, f"{cls.__name__}.kind must be one of {KINDS}"
            REGISTRY[cls.name] = cls

    def __init__(self, n_heads: int, head_dim: int, **params: Any):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.d_model = n_heads * head_dim
        self.params = {**self.defaults, **params}

    @property
    def max_len(self) -> int | None:
        """The longest window this method can represent, or None for any length."""
        return None

    def attention_block(self, n: int) -> int | None:
        """Block length b when a window of n positions is scored with blockwise causal attention
        (each query sees keys of its own block of b and the previous block; `xpos_bca`), or
        None for plain causal attention. Rotary, absolute and none kinds only."""
        return None

    @classmethod
    def check_params(cls, n_heads: int, head_dim: int, params: dict[str, Any]) -> None:
        """Raise LsbenchError naming a parameter whose value is invalid. Override to add checks."""
        for key, value in params.items():
            default = cls.defaults[key]
            if isinstance(default, int) and not isinstance(default, bool):
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise LsbenchError(
                        f"position {cls.name!r}: parameter {key!r} must be a positive integer, "
                        f"got {value!r} (default {default})."
                    )


def relative_distance(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """(Nq, Nk) causal distance i - j, clamped at 0 for future keys (the mask removes them)."""
    return (q_pos[:, None] - k_pos[None, :]).clamp(min=0)
