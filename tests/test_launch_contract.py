"""GPU-true contracts checked on CPU: the properties that decide a variant's speed on CUDA.

On a GPU every aten op is (at least) one kernel launch of ~5-10 µs, so a forward whose op count
grows with the batch or the number of blocks is launch-bound at the short-N end of Fig. 2. These
tests count dispatched aten ops with a TorchDispatchMode and require, for every registered
variant (a new one is checked the moment it is added):

- the same ops for B=2 and B=64, and B=1 within a few layout ops of B=64 (same N);
- at most a small constant more ops at N=16384 than at N=1024 (no loop over blocks/positions);
- no `aten::_local_scalar_dense` (`.item()`, `if tensor.any()`: a device-to-host sync) in a
  forward without padding.

Op counts run on the `meta` device (shapes only, no arithmetic), so N=16384 costs nothing even
for full attention; a forward that syncs to the host cannot run on meta at all. The host-sync
check runs on real CPU tensors.
"""

from __future__ import annotations

import pytest
import torch

from lsbench.measure.ops import OpCounter
from lsbench.variants import REGISTRY, build

D, H = 64, 4
LAYOUT_SLACK = 8  # B=1 may take view where B>1 takes clone + _unsafe_view (merge_heads)
N_GROWTH_SLACK = 4  # e.g. one extra pad when N is not a block multiple


def _names() -> list:
    """Every variant; one whose `devices` lacks "cpu" (flex_*: a compiled kernel that runs
    neither on meta nor under a dispatch mode) is skipped here with a visible reason."""
    params = []
    for name in sorted(REGISTRY):
        devices = getattr(REGISTRY[name], "devices", ("cpu", "cuda"))
        marks = [] if "cpu" in devices else [pytest.mark.skip(
            reason=f"{name} runs on {', '.join(devices)} only: op counts need eager aten ops "
                   f"on meta/CPU (its block-mask builder is counted in test_modern_variants)")]
        params.append(pytest.param(name, id=name, marks=marks))
    return params


NAMES = _names()


def _model(name: str, n: int, device: str, causal: bool = False) -> torch.nn.Module:
    params = {"max_len": n} if "max_len" in REGISTRY[name].defaults else {}
    torch.manual_seed(0)
    return build(name, D, H, causal=causal, **params).to(device)


def count_ops(name: str, batch: int, n: int, device: str = "meta",
              causal: bool = False) -> OpCounter:
    model = _model(name, n, device, causal)
    x = torch.randn(batch, n, D, device=device)
    with torch.no_grad(), OpCounter() as counter:
        model(x)
    return counter


@pytest.mark.parametrize("name", NAMES)
def test_op_count_does_not_grow_with_batch(name):
    one, two, many = (count_ops(name, b, 128) for b in (1, 2, 64))
    assert two.ops == many.ops, f"{name}: ops differ between B=2 and B=64: {many.ops - two.ops}"
    assert abs(one.total - many.total) <= LAYOUT_SLACK, (
        f"{name}: {one.total} aten ops at B=1 but {many.total} at B=64 (a loop over the batch?)"
    )


@pytest.mark.parametrize("name", NAMES)
def test_op_count_does_not_grow_with_length(name):
    short, long = count_ops(name, 1, 1024), count_ops(name, 1, 16384)
    assert long.total <= short.total + N_GROWTH_SLACK, (
        f"{name}: {short.total} aten ops at N=1024 but {long.total} at N=16384 "
        f"(a loop over blocks or positions?): {long.ops - short.ops}"
    )


@pytest.mark.parametrize("name", [p for p in NAMES if REGISTRY[p.values[0]].supports_causal])
def test_causal_op_count_flat_in_batch_and_length(name):
    """The causal path (prefix sums, causal windows, chunked scans) is held to the same rule."""
    one, many = count_ops(name, 2, 1024, causal=True), count_ops(name, 64, 1024, causal=True)
    long = count_ops(name, 2, 16384, causal=True)
    assert one.ops == many.ops, f"{name} causal: ops differ between B=2 and B=64"
    assert long.total <= one.total + N_GROWTH_SLACK, (
        f"{name} causal: {one.total} aten ops at N=1024 but {long.total} at N=16384: "
        f"{long.ops - one.ops}"
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [200, 1024])
def test_no_host_sync_without_padding(name, n):
    counter = count_ops(name, 2, n, device="cpu")
    assert counter.ops["aten._local_scalar_dense"] == 0, (
        f"{name}: the forward syncs to the host (.item() / if tensor) at N={n}"
    )


def test_counter_sees_a_loop_and_a_sync():
    """The counter itself can fail: a per-sequence loop and an .item() are both visible."""
    x = torch.randn(4, 8)
    with OpCounter() as looped:
        torch.stack([row * 2 for row in x])
    with OpCounter() as fused:
        x * 2
    assert looped.total > fused.total + 3
    with OpCounter() as synced:
        bool((x > 0).any())
    assert synced.ops["aten._local_scalar_dense"] == 1
