"""The contract every attention variant implements.

Shape legend: B batch, N sequence length, D d_model, H heads, Dh = D // H head dim.

A variant is the whole attention sublayer: input projections, token mixing and output
projection, mapping x (B, N, D) -> y (B, N, D) for any N >= 1. `mask` (B, N) marks real tokens
(True) so that padded positions never influence real ones.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from lsbench.errors import LsbenchError
from lsbench.measure.flops import linear_flops
from lsbench.variants._decode import Decoder

REGISTRY: dict[str, type[Variant]] = {}
COUNTS = ("flops", "computed_flops", "mem_elems")


def count(cls: type[Variant], what: str, batch_size: int, seq_len: int, d_model: int,
          n_heads: int, params: dict[str, Any], causal: bool = False) -> float:
    """`cls.<what>(...)` (one of COUNTS) with `causal`, also for a plugin variant written before
    `causal` reached the counts (its override then ignores causal, as it always did)."""
    method = getattr(cls, what)
    args = (batch_size, seq_len, d_model, n_heads, params)
    try:
        takes_causal = "causal" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes_causal = True
    return method(*args, causal=causal) if takes_causal else method(*args)


class Variant(Decoder, nn.Module):
    """Base class; subclasses with a `name` register themselves in `REGISTRY`.

    Incremental decoding (`prefill`, `step`, `state_bytes`) comes from `Decoder`
    (lsbench.variants._decode); by default a variant says it has no incremental form.
    """

    name: ClassVar[str] = ""
    method: ClassVar[str] = ""  # one line: what it computes
    paper: ClassVar[str] = ""  # citation + link
    time_complexity: ClassVar[str] = ""  # e.g. "O(N²·D)"
    memory_complexity: ClassVar[str] = ""  # e.g. "O(H·N²)"
    supports_causal: ClassVar[bool] = True
    accepts_bias: ClassVar[bool] = False  # forward(..., bias=(H, N, N)) additive score bias
    defaults: ClassVar[dict[str, Any]] = {}  # variant parameters and their paper defaults

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            REGISTRY[cls.name] = cls

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, **params: Any):
        super().__init__()
        self.d_model, self.n_heads, self.causal = d_model, n_heads, causal
        self.head_dim = d_model // n_heads
        self.params = {**self.defaults, **params}

    @classmethod
    def check_params(cls, d_model: int, n_heads: int, params: dict[str, Any]) -> None:
        """Raise LsbenchError naming a parameter whose value is invalid. Override to add checks."""
        for key, value in params.items():
            default = cls.defaults[key]
            if isinstance(default, bool) or default is None:
                continue
            if isinstance(default, int) and (not isinstance(value, int) or value < 0):
                raise LsbenchError(
                    f"variant {cls.name!r}: parameter {key!r} must be a non-negative integer, "
                    f"got {value!r} (default {default})."
                )

    @classmethod
    def require_positive(cls, params: dict[str, Any], *keys: str) -> None:
        """Raise LsbenchError naming the first of `keys` that is not an integer >= 1."""
        for key in keys:
            value = params[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LsbenchError(
                    f"variant {cls.name!r}: parameter {key!r} must be a positive integer, "
                    f"got {value!r} (default {cls.defaults[key]})."
                )

    @classmethod
    def notes(cls, seq_len: int, params: dict[str, Any] | None = None,
              d_model: int | None = None, n_heads: int | None = None) -> str:
        """A note for the result row when what ran differs from what was configured (e.g.
        linformer's k capped at N); '' when it does not."""
        return ""

    @classmethod
    def mem_elems(cls, batch_size: int, seq_len: int, d_model: int, n_heads: int,
                  params: dict[str, Any], causal: bool = False) -> float:
        """Predicted number of activation elements one forward keeps alive (dominant term).

        `params` are merged with `defaults`. Used only to decide what to skip before running;
        reported as a prediction, never as a measurement.
        The default is linear in N; quadratic or windowed variants override it.
        """
        return 8.0 * batch_size * seq_len * d_model

    @classmethod
    def flops(cls, batch_size: int, seq_len: int, d_model: int, n_heads: int,
              params: dict[str, Any], causal: bool = False) -> float:
        """Useful FLOPs of one forward of this sublayer (see `lsbench.measure.flops`).

        Only the (query, key) pairs a query may see count (causal halves); multiply-add = 2.
        """
        return linear_flops(batch_size * seq_len, d_model, 4 * d_model)  # q, k, v, out

    @classmethod
    def computed_flops(cls, batch_size: int, seq_len: int, d_model: int, n_heads: int,
                       params: dict[str, Any], causal: bool = False) -> float:
        """FLOPs the kernels actually multiply (padding, blocked spans, masked entries).

        Equal to `flops` unless the implementation does extra work; override where it does.
        """
        return count(cls, "flops", batch_size, seq_len, d_model, n_heads, params, causal)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError
