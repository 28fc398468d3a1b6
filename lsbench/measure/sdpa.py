"""Which `scaled_dot_product_attention` kernel actually ran, and the float32 matmul precision.

`F.scaled_dot_product_attention` picks a backend at run time (FlashAttention, memory-efficient,
cuDNN, the CPU flash kernel, or the unfused "math" fallback) from dtype, shapes, mask and
device, silently. A row that calls it "flash" must have run flash: `SdpaProbe` watches one
forward and names the backends from the aten ops each call dispatched to. Calls that reach no
fused op ran the math fallback (it decomposes into matmul + softmax).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

FUSED_OPS = {
    "aten._scaled_dot_product_flash_attention": "flash",
    "aten._scaled_dot_product_flash_attention_for_cpu": "flash-cpu",
    "aten._scaled_dot_product_efficient_attention": "memory-efficient",
    "aten._scaled_dot_product_cudnn_attention": "cudnn",
    "aten._scaled_dot_product_fused_attention_overrideable": "fused-overrideable",
}


class _Kernels(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        backend = FUSED_OPS.get(str(func.overloadpacket))
        if backend:
            self.seen[backend] += 1
        return func(*args, **(kwargs or {}))


class _Calls(TorchFunctionMode):
    """Counts SDPA calls and watches the aten ops of each, and of nothing else: a dispatch
    mode active over the whole forward would stop torch.compile (dynamo refuses to trace
    under a non-infra TorchDispatchMode), so flex_attention would run uncompiled and then
    fail on the mode ("no rule registered for HigherOrderOperator flex_attention")."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.kernels = _Kernels()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not F.scaled_dot_product_attention:
            return func(*args, **(kwargs or {}))
        self.n += 1
        with self.kernels:
            return func(*args, **(kwargs or {}))


class SdpaProbe:
    """`with SdpaProbe() as p: model(x)`, then `p.backends`: e.g. "flash", "math",
    "memory-efficient+math", or "" when the forward made no SDPA call.

    Only a function-level mode is active over the forward; the dispatch-level watch is
    entered inside each SDPA call alone, so compiled code (flex_attention) runs as it would
    without the probe."""

    def __enter__(self) -> SdpaProbe:
        self._calls = _Calls()
        self._calls.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._calls.__exit__(*exc)

    @property
    def counts(self) -> Counter[str]:
        counts = Counter(self._calls.kernels.seen)
        math = self._calls.n - sum(counts.values())
        if math > 0:
            counts["math"] = math
        return counts

    @property
    def backends(self) -> str:
        return "+".join(sorted(self.counts))


def set_precision(setting: str) -> None:
    """The suite's float32 precision for matmuls *and* cuDNN (convolutions): "highest" turns
    TF32 off for both. `set_float32_matmul_precision` alone leaves cuDNN's TF32 on (its
    default), so a "highest" row could still run its convolutions in TF32."""
    torch.set_float32_matmul_precision(setting)
    torch.backends.cudnn.allow_tf32 = setting != "highest"


def matmul_precision(device: torch.device | str) -> str:
    """The float32 setting in force, e.g. "highest", "high (TF32 matmul, cuDNN TF32 on)"."""
    setting = torch.get_float32_matmul_precision()
    if torch.device(device).type != "cuda":
        return setting
    tf32 = torch.backends.cuda.matmul.allow_tf32
    cudnn = "on" if torch.backends.cudnn.allow_tf32 else "off"
    return f"{setting} ({'TF32' if tf32 else 'full fp32'} matmul, cuDNN TF32 {cudnn})"
