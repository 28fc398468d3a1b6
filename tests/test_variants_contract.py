"""The contract every registered attention variant keeps (see lsbench/variants/base.py).

Parametrized over the registry, so a new variant file is covered the moment it exists.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from lsbench.errors import LsbenchError
from lsbench.measure.memory import track_peak
from lsbench.variants import REGISTRY, build

D, H = 32, 4
NAMES = sorted(REGISTRY)
CAUSAL = [n for n in NAMES if REGISTRY[n].supports_causal]


def device_marks(name: str) -> list:
    """A variant that declares `devices` without "cpu" (e.g. flex_*: CUDA only) is skipped in
    these CPU tests with a visible reason; its contract (shape, gradients, batch independence,
    padding, causal leak) runs on CUDA in the `gpu` job (test_sweep_gpu.py,
    test_cuda_flex_contract), and its compiled forward through the worker in the `slow` job
    (test_fake_cuda_flex.py)."""
    devices = getattr(REGISTRY[name], "devices", ("cpu", "cuda"))
    if "cpu" in devices:
        return []
    return [pytest.mark.skip(reason=f"{name} runs on {', '.join(devices)} only "
                                    f"(declares devices={devices!r}); see its module docstring")]


CASES = [pytest.param(n, False, id=n, marks=device_marks(n)) for n in NAMES] + [
    pytest.param(n, True, id=f"{n}-causal", marks=device_marks(n)) for n in CAUSAL
]
CPU_NAMES = [pytest.param(n, id=n, marks=device_marks(n)) for n in NAMES]
# memory_complexity is the variant's own claim; `sdpa`'s depends on the kernel (tested apart)
QUADRATIC = {n for n in NAMES if "N²" in REGISTRY[n].memory_complexity} - {"sdpa"}
SUBQUADRATIC = [n for n in NAMES if n not in QUADRATIC and n != "sdpa"]
INT_PARAMS = [
    pytest.param(n, key, id=f"{n}-{key}")
    for n in NAMES
    for key, value in REGISTRY[n].defaults.items()
    if isinstance(value, int) and not isinstance(value, bool)
]


def make(name: str, causal: bool = False, d_model: int = D, n_heads: int = H, **params):
    torch.manual_seed(0)
    return build(name, d_model=d_model, n_heads=n_heads, causal=causal, **params).eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- declarations -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_declares_paper_and_complexity(name):
    cls = REGISTRY[name]
    assert cls.__module__.rsplit(".", 1)[-1] == name  # registry name = file name
    for attr in ("method", "paper", "time_complexity", "memory_complexity"):
        assert getattr(cls, attr), f"{name} must declare {attr}"
    doc = inspect.getmodule(cls).__doc__ or ""
    assert "http" in doc, f"{name}'s module docstring must link the paper"
    args = dict(batch_size=2, d_model=64, n_heads=4, params=dict(cls.defaults))
    mem = [cls.mem_elems(seq_len=n, **args) for n in (2048, 4096)]
    flops = [cls.flops(seq_len=n, **args) for n in (2048, 4096)]
    assert 0 < mem[0] < mem[1] and 0 < flops[0] < flops[1]
    if name in SUBQUADRATIC:
        assert mem[1] / mem[0] <= 2.5, f"{name} predicts super-linear memory"


# --- shape, gradients, independence --------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 130, 1023])
@pytest.mark.parametrize("name,causal", CASES)
def test_shape_and_finite(name, causal, n):
    m = make(name, causal)
    with torch.no_grad():
        for b in (1, 3):
            y = m(randn(b, n, D))
            assert y.shape == (b, n, D)
            assert torch.isfinite(y).all()


@pytest.mark.parametrize("name,causal", CASES)
def test_gradients_reach_every_parameter(name, causal):
    m = make(name, causal).train()
    x = randn(2, 37, D).requires_grad_()
    (m(x) * randn(2, 37, D, seed=2)).sum().backward()
    missing = [p for p, t in m.named_parameters() if t.grad is None]
    assert not missing, f"{name}: no gradient reaches {missing}"
    for p, t in m.named_parameters():
        assert torch.isfinite(t.grad).all(), f"{name}: non-finite gradient in {p}"
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name,causal", CASES)
def test_batch_independence(name, causal):
    m = make(name, causal)
    x = randn(3, 50, D)
    with torch.no_grad():
        y = m(x)
        for b in range(3):
            torch.testing.assert_close(m(x[b : b + 1]), y[b : b + 1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_real,n_pad", [(1, 5), (61, 70)])
@pytest.mark.parametrize("name,causal", CASES)
def test_padding_does_not_change_real_tokens(name, causal, n_real, n_pad):
    m = make(name, causal)
    x = randn(2, n_real, D)
    junk = 3 * randn(2, n_pad, D, seed=3)
    mask = torch.ones(2, n_real + n_pad, dtype=torch.bool)
    mask[:, n_real:] = False
    with torch.no_grad():
        ref = m(x)
        padded = m(torch.cat([x, junk], dim=1), mask=mask)
    torch.testing.assert_close(padded[:, :n_real], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [p for p in CPU_NAMES if p.values[0] in CAUSAL])
def test_causal_no_future_leak(name):
    m = make(name, causal=True)
    n = 150  # crosses block / chunk boundaries of the default sizes used here
    x = randn(2, n, D)
    with torch.no_grad():
        y = m(x)
        for j in (0, 1, 63, 64, 100, n - 1):
            x2 = x.clone()
            x2[:, j] = randn(2, D, seed=10 + j) * 5
            y2 = m(x2)
            torch.testing.assert_close(y2[:, :j], y[:, :j], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(y2[:, j], y[:, j]), "token j must influence its own output"


# --- agreement with the plain reference ----------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_equals_transformer(causal, masked):
    ref, fused = make("transformer", causal), make("sdpa", causal)
    fused.load_state_dict(ref.state_dict())
    x = randn(2, 70, D)
    mask = None
    if masked:
        mask = torch.ones(2, 70, dtype=torch.bool)
        mask[1, 50:] = False
    with torch.no_grad():
        torch.testing.assert_close(fused(x, mask=mask), ref(x, mask=mask), atol=1e-5, rtol=1e-5)


# --- complexity, as measured relations -----------------------------------------------------


def peak_mib(m, n: int) -> float:
    x = randn(1, n, m.d_model)
    with torch.no_grad(), track_peak("cpu") as mem:
        m(x)
    return mem.peak_mib


def memory_ratio(name: str, causal: bool = False) -> float:
    m = make(name, causal, d_model=64, n_heads=2)
    return peak_mib(m, 4096) / peak_mib(m, 2048)


def test_transformer_memory_is_quadratic():
    assert memory_ratio("transformer") >= 3.0


def test_sdpa_fused_cpu_kernel_keeps_no_quadratic_tensor():
    # Without a mask, SDPA on CPU runs the flash kernel: its per-thread tiles do not grow with N,
    # so only O(N·D) tensors are visible; a fallback to the math kernel would show N² here.
    assert memory_ratio("sdpa") <= 2.5


@pytest.mark.parametrize(
    "name,causal",
    [pytest.param(n, False, id=n, marks=device_marks(n)) for n in SUBQUADRATIC]
    + [pytest.param(n, True, id=f"{n}-causal", marks=device_marks(n))
       for n in SUBQUADRATIC if n in CAUSAL],
)
def test_subquadratic_memory(name, causal):
    ratio = memory_ratio(name, causal)
    assert ratio <= 2.5, f"{name}: peak memory grew {ratio:.2f}x from N=2048 to 4096"


# --- errors --------------------------------------------------------------------------------


def test_unknown_variant_lists_names():
    with pytest.raises(LsbenchError) as err:
        build("nope", d_model=D, n_heads=H)
    for name in NAMES:
        assert name in str(err.value)


def test_unknown_variant_suggests_closest():
    with pytest.raises(LsbenchError, match="Did you mean 'transformer'"):
        build("transformr", d_model=D, n_heads=H)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameter_is_named(name):
    with pytest.raises(LsbenchError, match="bogus_param"):
        build(name, d_model=D, n_heads=H, bogus_param=1)


@pytest.mark.parametrize("name,key", INT_PARAMS)
def test_negative_integer_parameter_is_named(name, key):
    with pytest.raises(LsbenchError, match=key):
        build(name, d_model=D, n_heads=H, **{key: -1})


@pytest.mark.parametrize("name", NAMES)
def test_heads_must_divide_d_model(name):
    with pytest.raises(LsbenchError, match="n_heads"):
        build(name, d_model=30, n_heads=4)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in CAUSAL])
def test_causal_refused_where_unsupported(name):
    with pytest.raises(LsbenchError, match="causal"):
        build(name, d_model=D, n_heads=H, causal=True)
