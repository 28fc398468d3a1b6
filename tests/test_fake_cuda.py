"""CUDA code paths traced on this CPU-only build (issue 17): the GPU suites' steps on
`device="cuda"` under `FakeTensorMode` (shapes, dtypes and devices without data; a device
mismatch raises) with `torch.autocast("cuda")` applying CUDA's dtype rules.

What this build allows, and how the harness gets there:
- `torch.autocast("cuda")` disables itself when `torch.cuda.is_available()` is False: the
  fixture says True (and bf16 supported) for the test's duration.
- `Tensor.to("cuda")` / `Module.to("cuda")` are refused before dispatch ("not linked with
  support for cuda devices"): tensors are moved with `aten._to_copy`, which fake mode handles.
- Autograd on fake CUDA tensors aborts the process (autograd asks for a CUDA device guard), so
  a training step is traced through its forward under the step's autocast with gradients off;
  its backward's N×N tensors take the dtypes of the forward's.
- Some ops (`torch.arange(device=...)`, basic slicing) also ask for a CUDA device guard: a
  variant that uses them is skipped with that reason; it runs in `pytest -m gpu` instead.
- SDPA's kernel choice needs a real GPU: on fake tensors it picks the math fallback (float32
  N×N scores), so for `sdpa` only devices are checked here (test_sweep_gpu.py checks the
  kernel each row records, and its memory).

Checked per suite × variant × mode: no device mismatch, every floating N×N tensor in the
suite's dtype (the `transformer` baseline keeps no float32 softmax: item 3), and the forward's
peak of live bytes within [1/4, 3] × the variant's predicted `mem_elems` × the dtype's size
(the prediction the runner skips configs by).
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lsbench.models import Encoder, EncoderConfig
from lsbench.sweep import grid, suite
from lsbench.sweep.worker import make_step
from lsbench.variants import REGISTRY, count

CUDA = torch.device("cuda")
N = 2048  # long enough that no other dimension of the suites' shapes equals it
MEM_FACTOR = (0.25, 3.0)  # measured forward peak / predicted bytes
NO_GUARD = "not linked with support for cuda devices"


def _to_copy(t: torch.Tensor, device=None, dtype=None) -> torch.Tensor:
    dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
    return torch.ops.aten._to_copy(t, device=device or t.device, dtype=dtype)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    original = torch.Tensor.to

    def tensor_to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if self.device.type == "cuda" or (device is not None and device.type == "cuda"):
            return torch.ops.aten._to_copy(self, device=device or self.device,
                                           dtype=dtype or self.dtype)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", tensor_to)
    with FakeTensorMode():
        yield


def to_fake_cuda(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`model.to(device="cuda", dtype=dtype)` as the worker does, through aten._to_copy."""
    for mod in model.modules():
        for k, p in mod._parameters.items():
            if p is not None:
                mod._parameters[k] = torch.nn.Parameter(_to_copy(p.detach(), CUDA, dtype),
                                                        requires_grad=p.requires_grad)
        for k, b in mod._buffers.items():
            if b is not None:
                mod._buffers[k] = _to_copy(b, CUDA, dtype)
    return model


class Trace(TorchDispatchMode):
    """Every op's outputs: devices, the dtypes of N×N-sized ones, and the peak of live bytes
    of the storages the traced code created (freed when their last tensor dies)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n
        self.devices: set[str] = set()
        self.square: set[tuple[str, torch.dtype]] = set()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self._refs.pop(key, None)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            self.devices.add(t.device.type)
            if t.is_floating_point() and sum(s == self.n for s in t.shape) >= 2:
                self.square.add((str(func), t.dtype))
            st = t.untyped_storage()
            key = st._cdata
            if key in inputs or key in self._refs:
                continue
            nbytes = st.nbytes()
            self._refs[key] = weakref.ref(st, lambda _r, k=key, n=nbytes: self._freed(k, n))
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


def suite_cases() -> list:
    cases = []
    for name in ("flash-appendix-e", "fastformer-fig2-bf16"):
        s = suite.load_suite(name)
        for c in grid.build_grid(s, "cuda"):
            if c["seq_len"] == min(s.seq_lens) and c["batch_size"] == max(
                    x["batch_size"] for x in grid.build_grid(s, "cuda")
                    if x["variant"] == c["variant"] and x["seq_len"] == c["seq_len"]):
                cases.append(pytest.param(name, c, id=f"{name}-{c['variant']}-{c['mode']}"))
    return cases


def trace_step(c: dict, n: int) -> tuple[Trace, float]:
    """The suite's step at length n on fake CUDA, as the worker builds it: (trace, predicted
    bytes of the forward)."""
    dtype = getattr(torch, c["dtype"])
    batch = c["batch_size"] if not c.get("batch_tokens") else max(1, c["batch_tokens"] // n)
    params = dict(c["params"])
    if "max_len" in REGISTRY[c["variant"]].defaults:
        params["max_len"] = n
    torch.manual_seed(0)
    model = Encoder(EncoderConfig(c["variant"], c["d_model"], c["n_heads"], c["n_layers"],
                                  c["ffn_dim"], c["causal"], params, c.get("layer", "block")))
    # the worker's rule: inference in the run dtype; half training as autocast, fp32 weights
    amp = dtype if c["mode"] == "training" and dtype != torch.float32 else None
    weight_dtype = torch.float32 if amp is not None else dtype
    model = to_fake_cuda(model, weight_dtype)
    x = torch.randn(batch, n, c["d_model"], device=CUDA, dtype=weight_dtype)
    trace = Trace(n)
    if c["mode"] == "inference":
        step = make_step(model, x, "inference")
        with trace:
            step()
    else:  # the training step's forward (no autograd on fake CUDA: see the module docstring)
        model.train().requires_grad_(False)
        with torch.no_grad(), torch.autocast("cuda", dtype=amp), trace:
            model(x)
    cls = REGISTRY[c["variant"]]
    elems = count(cls, "mem_elems", batch, n, c["d_model"], c["n_heads"],
                  {**cls.defaults, **params}, c["causal"])
    return trace, elems * c["n_layers"] * dtype.itemsize


@pytest.mark.parametrize("name,config", suite_cases())
def test_suite_step_on_fake_cuda(fake_cuda, name, config):
    try:
        trace, predicted = trace_step(config, N)
    except RuntimeError as e:
        if NO_GUARD in str(e):
            pytest.skip(f"{config['variant']} uses an op that needs a CUDA device guard, which "
                        "this CPU-only build lacks; it runs in `pytest -m gpu`")
        raise
    assert trace.devices == {"cuda"}
    if config["variant"] == "sdpa":  # its kernel choice needs a real GPU (module docstring)
        return
    want = getattr(torch, config["dtype"])
    wrong = sorted((op, str(dt)) for op, dt in trace.square if dt != want)
    assert not wrong, f"N×N tensors not in {want}: {wrong}"
    lo, hi = MEM_FACTOR
    ratio = trace.peak / predicted
    assert lo <= ratio <= hi, f"forward peak {ratio:.2f}x the predicted mem_elems bytes"


@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16], ids=str)
def test_transformer_softmax_stays_half_under_cuda_autocast(fake_cuda, amp):
    """CUDA autocast runs softmax in float32: the baseline would keep an fp32 N×N matrix
    and a half copy. It computes softmax in the scores' dtype (transformer.py's docstring)."""
    config = {"variant": "transformer", "params": {}, "mode": "training",
              "dtype": str(amp).removeprefix("torch."), "batch_size": 2, "d_model": 64,
              "n_heads": 4, "n_layers": 1, "ffn_dim": 128, "causal": False,
              "layer": "attention"}
    trace, predicted = trace_step(config, 256)
    dtypes = {dt for _, dt in trace.square}
    assert dtypes == {amp}, sorted(map(str, trace.square))
    # scores + probabilities alive together: 2 N×N half matrices, under 3 predicted
    assert trace.peak <= predicted
