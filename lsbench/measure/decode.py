"""The timed unit of `--mode prefill` and `--mode decode` (lsbench.variants._decode).

- prefill: the causal forward over N tokens that also builds each layer's state; what is timed
  is `Encoder.prefill` (the variant's own forward plus the copy into its cache).
- decode: one generated token at depth N. The state is built once, untimed, by a prefill of
  N - 1 tokens (KV caches preallocated to N, so no step reallocates), chunk by chunk without
  attention outputs where the variant can (`Encoder.fill_state`: a 128K-token context needs
  no O(N²) prefill first and memory O(chunk) beyond the state); the timed step then decodes
  token N from that state again and again. Each step reads exactly the N keys in context
  (never the cache's capacity), and re-decoding from the same state keeps the depth at N.

Per row: tokens/s (B·N / latency for prefill, B / latency for decode), the state's bytes per
sequence measured from its tensors (`state_bytes`), the variant's formula beside it
(`state_bytes_formula`, all layers), and for decode no FLOP figure (the Fig-2 FLOP convention
counts whole-sequence steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lsbench.errors import LsbenchError


def state_nbytes(states: list) -> int:
    return sum(s.nbytes for s in states)


def decode_step(model, x: torch.Tensor, mode: str) -> tuple[Callable, Callable, dict[str, Any]]:
    """(step to time, an untimed call returning the step's output, row fields)."""
    B, N, _ = x.shape
    model.eval()
    cfg = model.cfg
    cls = type(model.blocks[0].attn)
    formula = cls.state_bytes(N, cfg.d_model, cfg.n_heads, {**cls.defaults, **cfg.params},
                              x.element_size())
    fields: dict[str, Any] = {
        "depth": N,
        "state_bytes_formula": None if formula is None else formula * cfg.n_layers,
    }
    if mode == "prefill":
        def step():
            with torch.no_grad():
                return model.prefill(x, capacity=N)

        with torch.no_grad():
            _, states = step()
        fields["state_bytes"] = state_nbytes(states) / B
        return step, lambda: step()[0], fields

    if N < 2:
        raise LsbenchError("decode needs a depth of at least 2 tokens (a prefill of N - 1 >= 1).")
    with torch.no_grad():
        states = model.fill_state(x[:, :N - 1], capacity=N)
    x_t = x[:, N - 1:]  # (B, 1, D)

    def step():
        with torch.no_grad():
            return model.step(x_t, states)

    _, after = step()
    fields["state_bytes"] = state_nbytes(after) / B  # the state holding all N tokens
    return step, lambda: step()[0], fields


def finish_row(row: dict[str, Any], mode: str, fields: dict[str, Any],
               batch_size: int) -> dict[str, Any]:
    """A measured row made a prefill/decode row: the state fields; for decode, tokens/s counts
    generated tokens (B per step) and there is no FLOP figure."""
    row.update(fields)
    if mode == "decode" and row.get("latency_ms"):
        row["tokens_per_s"] = batch_size / (row["latency_ms"] / 1e3)
        for key in ("flops", "computed_flops", "gflops_per_s"):
            row[key] = None
    return row
