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


# --- the timed training step back-propagates real gradients (issue 17, item 2) ---------------


def _training_step(layer: str, b: int, n: int, d: int, h: int):
    from lsbench.models import Encoder, EncoderConfig
    from lsbench.sweep.worker import make_step

    torch.manual_seed(0)
    model = Encoder(EncoderConfig("sdpa", d, h, 1, 4 * d, False, {}, layer))
    x = torch.randn(b, n, d)
    return model, make_step(model, x, "training", torch.float16)


@pytest.mark.parametrize("layer", ["block", "attention"])
def test_fp16_training_step_gradients_are_not_zero(layer):
    """lsbench's own step under fp16 autocast (fp32 weights, no loss scaling): fewer than 1%
    of the gradient entries may be exactly zero. With the old `mean(y.float()²)` loss the
    block layer's were all zero (the output gradient 2y/numel flushed to zero in fp16, and
    mean(LN(x)²) has none at all); at App. E shapes the attention layer's were too."""
    model, step = _training_step(layer, 4, 64, 32, 2)
    step()  # AdamW leaves this step's gradients in .grad
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    zero = sum(int((g == 0).sum()) for g in grads) / sum(g.numel() for g in grads)
    assert zero < 0.01, f"{zero:.1%} of the fp16 step's gradients are exactly zero"


def test_training_step_output_gradient_is_fixed_and_unit_scale():
    """The backward starts from one random gradient of unit scale, drawn once (not in the
    timed step), in the dtype of the output."""
    model, step = _training_step("attention", 2, 16, 32, 2)
    seen = []

    def hook(module, inputs, y):
        y.register_hook(seen.append)

    model.register_forward_hook(hook)
    step()
    step()
    first, second = seen
    assert first is second or torch.equal(first, second)
    assert 0.8 < float(first.float().std()) < 1.2 and first.dtype == torch.float16
