"""Count the aten ops one call dispatches: the CPU stand-in for GPU launch cost.

On a GPU every aten op is (at least) one kernel launch of ~5-10 µs, so a forward whose op count
grows with the batch or the number of blocks is launch-bound at the short-N end of Fig. 2. Used
by the launch-contract tests (tests/test_launch_contract.py) and benchmarks/op_counts.py.
"""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts aten ops (overload packets) dispatched inside the `with` block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())
