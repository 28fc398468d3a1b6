"""Every registered variant runs in float16 and bfloat16 on CPU, forward and backward, and agrees
with its float32 self (a variant that cannot must raise LsbenchError naming dtype and device).

Small N here; the long-N overflow case (linear attention's sums) is in test_linear_family.py.
"""

from __future__ import annotations

import pytest
import torch

from lsbench.variants import REGISTRY, build
from tests.test_variants_contract import device_marks

N, D, H = 128, 64, 4
TOL = {torch.float16: 1e-2, torch.bfloat16: 6e-2}
CASES = [pytest.param(name, causal, marks=device_marks(name)) for name in sorted(REGISTRY)
         for causal in ((False, True) if REGISTRY[name].supports_causal else (False,))]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,causal", CASES)
def test_half_precision_forward_backward_on_cpu(name, causal, dtype):
    params = {"max_len": N} if "max_len" in REGISTRY[name].defaults else {}
    torch.manual_seed(0)
    m = build(name, d_model=D, n_heads=H, causal=causal, **params)
    x = torch.randn(2, N, D)
    mask = torch.ones(2, N, dtype=torch.bool)
    mask[1, N // 2 + 3 :] = False  # padding, not a block multiple
    with torch.no_grad():
        ref = m(x, mask=mask)
    m = m.to(dtype)
    y = m(x.to(dtype), mask=mask)
    y.float().sum().backward()
    assert y.dtype == dtype
    bad = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: no or non-finite {dtype} grads for {bad}"
    torch.testing.assert_close(y.float()[mask], ref[mask], atol=TOL[dtype], rtol=TOL[dtype])
