"""The incremental-decoding contract (lsbench.variants._decode), over the whole registry.

For every causal variant that decodes: prefill of a random length, then token-by-token steps,
reproduce the causal full forward in float64 (1e-10: the same sums in another order, ~1e-15
relative per op, far below it; a wrong mask, a stale cache slot or a missing token is O(1)).
Lengths are not multiples of any chunk or window, and windows are small so ring caches wrap.
Variants without an incremental form must say why (DecodeUnsupported), never be silently absent.
"""

from __future__ import annotations

import random

import pytest
import torch

from lsbench.measure.ops import OpCounter
from lsbench.models import Encoder, EncoderConfig
from lsbench.variants import REGISTRY, build
from lsbench.variants._decode import DecodeUnsupported

D, H = 32, 4
# small windows / chunks so that rings wrap and chunk boundaries fall inside the sequence
SMALL = {"window": 5, "chunk": 8, "chunk_size": 8}


def _small_params(name: str) -> dict:
    return {k: v for k, v in SMALL.items() if k in REGISTRY[name].defaults}


def _causal_cpu_names() -> list[str]:
    return sorted(n for n, cls in REGISTRY.items()
                  if cls.supports_causal and "cpu" in getattr(cls, "devices", ("cpu", "cuda")))


def _decodes(name: str) -> bool:
    model = build(name, D, H, causal=True, **_small_params(name))
    try:
        model.decode_check()
    except DecodeUnsupported:
        return False
    return True


DECODING = [n for n in _causal_cpu_names() if _decodes(n)]


def test_the_variants_with_a_known_incremental_form_decode():
    assert {"transformer", "sdpa", "local", "longformer", "linear", "performer",
            "mamba2"} <= set(DECODING)


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - set(DECODING)))
def test_a_variant_without_an_incremental_form_says_why(name):
    cls = REGISTRY[name]
    model = build(name, D, H, causal=cls.supports_causal, **_small_params(name))
    with pytest.raises(DecodeUnsupported, match=name):
        model.prefill(torch.randn(1, 4, D))


@pytest.mark.parametrize("name", DECODING)
def test_prefill_then_steps_reproduce_the_causal_forward(name):
    rng = random.Random(name)
    n_prefill, n_steps = rng.randint(9, 29), rng.randint(11, 17)  # never a multiple of 8
    N = n_prefill + n_steps
    torch.manual_seed(0)
    model = build(name, D, H, causal=True, **_small_params(name)).double().eval()
    x = torch.randn(2, N, D, dtype=torch.float64)
    with torch.no_grad():
        full = model(x)
        y, state = model.prefill(x[:, :n_prefill], capacity=N)
        outs = [y]
        for t in range(n_prefill, N):
            y_t, state = model.step(x[:, t:t + 1], state)
            outs.append(y_t)
    assert state.pos == N
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", DECODING)
def test_a_step_from_the_same_state_decodes_the_same_token_again(name):
    """What the timer relies on: stepping twice from one state gives the same output and
    leaves that state's depth unchanged (per-token latency at a fixed depth)."""
    torch.manual_seed(0)
    model = build(name, D, H, causal=True, **_small_params(name)).double().eval()
    x = torch.randn(1, 20, D, dtype=torch.float64)
    with torch.no_grad():
        _, state = model.prefill(x[:, :19], capacity=20)
        a, after = model.step(x[:, 19:], state)
        b, _ = model.step(x[:, 19:], state)
    assert state.pos == 19 and after.pos == 20
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_an_encoder_stack_decodes_layer_by_layer():
    torch.manual_seed(0)
    model = Encoder(EncoderConfig("sdpa", D, H, n_layers=2, causal=True)).double().eval()
    x = torch.randn(2, 23, D, dtype=torch.float64)
    with torch.no_grad():
        full = model(x)
        y, states = model.prefill(x[:, :15], capacity=23)
        outs = [y]
        for t in range(15, 23):
            y_t, states = model.step(x[:, t:t + 1], states)
            outs.append(y_t)
    assert len(states) == 2
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-10, rtol=0)


def _state_bytes(name: str, n: int, capacity: int | None = None) -> int:
    torch.manual_seed(0)
    model = build(name, 64, 4, causal=True).eval()  # the variant's default parameters
    with torch.no_grad():
        _, state = model.prefill(torch.randn(1, n, 64), capacity=capacity)
    return state.nbytes


def test_a_kv_cache_holds_two_vectors_of_d_model_per_token():
    for name in ("transformer", "sdpa"):
        for n in (1024, 3000):
            assert _state_bytes(name, n) == 2 * n * 64 * 4
            formula = REGISTRY[name].state_bytes(n, 64, 4, REGISTRY[name].defaults, 4)
            assert formula == 2 * n * 64 * 4


@pytest.mark.parametrize("name", [n for n in DECODING if n not in ("transformer", "sdpa")])
def test_a_recurrent_or_window_state_does_not_grow_with_depth(name):
    short, long = _state_bytes(name, 1024), _state_bytes(name, 16384)
    assert short == long > 0
    cls = REGISTRY[name]
    assert cls.state_bytes(16384, 64, 4, cls.defaults, 4) == long


def _step_ops(name: str, batch: int, depth: int) -> OpCounter:
    torch.manual_seed(0)
    model = build(name, D, H, causal=True, **_small_params(name)).eval()
    with torch.no_grad():
        _, state = model.prefill(torch.randn(batch, depth, D), capacity=depth + 1)
        with OpCounter() as counter:
            model.step(torch.randn(batch, 1, D), state)
    return counter


@pytest.mark.parametrize("name", DECODING)
def test_a_step_launches_the_same_ops_at_any_depth_and_batch(name):
    base = _step_ops(name, 2, 40)
    for batch, depth in ((2, 700), (16, 40), (16, 700)):
        other = _step_ops(name, batch, depth)
        assert other.ops == base.ops, (name, batch, depth, other.ops - base.ops)
    assert "_local_scalar_dense" not in base.ops  # no host sync


@pytest.mark.parametrize("name", DECODING)
def test_a_filled_state_is_the_prefilled_one_and_decodes_exactly(name):
    """Decode rows build their state with `fill` in chunks (no attention outputs): for one
    layer it is the state an exact prefill leaves, and decoding from it gives the exact
    outputs. (Across layers fill feeds stand-in outputs to the next layer: timed, not compared.)"""
    torch.manual_seed(0)
    model = build(name, D, H, causal=True, **_small_params(name)).double().eval()
    x = torch.randn(2, 33, D, dtype=torch.float64)
    with torch.no_grad():
        full = model(x)
        _, exact = model.prefill(x[:, :30], capacity=33)
        filled = model.empty_state(2, 33, x)
        if filled is None:
            pytest.skip(f"{name} builds its decode state by prefill only (no fill)")
        for i in range(0, 30, 7):  # chunks of 7: not a divisor of the window ring or 30
            _, filled = model.fill(x[:, i:min(i + 7, 30)], filled)
        assert filled.pos == 30
        for key, t in exact.tensors.items():
            torch.testing.assert_close(filled.tensors[key], t, atol=1e-12, rtol=0)
        outs = []
        for t in range(30, 33):
            y_t, filled = model.step(x[:, t:t + 1], filled)
            outs.append(y_t)
    torch.testing.assert_close(torch.cat(outs, dim=1), full[:, 30:], atol=1e-10, rtol=0)


def test_an_encoder_fills_its_states_in_chunks_with_the_depth_it_was_given():
    model = Encoder(EncoderConfig("linear", D, H, n_layers=2, causal=True)).eval()
    with torch.no_grad():
        states = model.fill_state(torch.randn(1, 50, D), capacity=51, chunk=16)
    assert [s.pos for s in states] == [50, 50]


def test_performer_decodes_finite_outputs_at_any_input_scale():
    """The running key max rescales the state (<= 1), so a step never overflows, as the
    chunked causal forward; and it still matches that forward at a large scale."""
    torch.manual_seed(0)
    model = build("performer", D, H, causal=True, chunk=8).double().eval()
    x = torch.randn(1, 24, D, dtype=torch.float64) * 1e3
    with torch.no_grad():
        full = model(x)
        _, state = model.prefill(x[:, :10])
        outs = []
        for t in range(10, 24):
            y_t, state = model.step(x[:, t:t + 1], state)
            outs.append(y_t)
    y = torch.cat(outs, dim=1)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, full[:, 10:], atol=1e-8 * full.abs().max().item(), rtol=0)
