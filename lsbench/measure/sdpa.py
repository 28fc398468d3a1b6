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


class _Calls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.n += 1
        return func(*args, **(kwargs or {}))


class _Kernels(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        backend = FUSED_OPS.get(str(func.overloadpacket))
        if backend:
            self.seen[backend] += 1
        return func(*args, **(kwargs or {}))


class SdpaProbe:
    """`with SdpaProbe() as p: model(x)`, then `p.backends`: e.g. "flash", "math",
    "memory-efficient+math", or "" when the forward made no SDPA call."""

    def __enter__(self) -> SdpaProbe:
        self._calls, self._kernels = _Calls(), _Kernels()
        self._calls.__enter__()
        self._kernels.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._kernels.__exit__(*exc)
        self._calls.__exit__(*exc)

    @property
    def counts(self) -> Counter[str]:
        counts = Counter(self._kernels.seen)
        math = self._calls.n - sum(counts.values())
        if math > 0:
            counts["math"] = math
        return counts

    @property
    def backends(self) -> str:
        return "+".join(sorted(self.counts))


def matmul_precision(device: torch.device | str) -> str:
    """The float32 matmul setting in force, e.g. "highest", "high (TF32 matmul)"."""
    setting = torch.get_float32_matmul_precision()
    if torch.device(device).type != "cuda":
        return setting
    tf32 = torch.backends.cuda.matmul.allow_tf32
    return f"{setting} ({'TF32' if tf32 else 'full fp32'} matmul)"
