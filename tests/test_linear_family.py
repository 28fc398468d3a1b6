"""`linear`, `linformer` and `fastformer` against plain restatements of their papers / code.

References here are written the slow, obvious way (explicit N×N kernels, per-step code that
follows the official Fastformer implementation line by line) and compared in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lsbench.errors import LsbenchError
from lsbench.measure.memory import track_peak
from lsbench.variants import build

D, H = 32, 4
DH = D // H


def make(name: str, causal: bool = False, **params):
    torch.manual_seed(0)
    return build(name, d_model=D, n_heads=H, causal=causal, **params).double().eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def heads(t: torch.Tensor) -> torch.Tensor:
    B, N, _ = t.shape
    return t.view(B, N, H, DH).transpose(1, 2)  # (B, H, N, Dh)


def unheads(t: torch.Tensor) -> torch.Tensor:
    B, _, N, _ = t.shape
    return t.transpose(1, 2).reshape(B, N, D)  # (B, N, D)


def padding_mask(B: int, N: int) -> torch.Tensor:
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[-1, N // 2 :] = False  # the last sample is half padding
    return mask


# --- linear (Katharopoulos et al.) ---------------------------------------------------------


def linear_reference(m, x, mask, causal):
    """The explicit quadratic form: A = φ(Q)φ(K)ᵀ (N×N), y = A V / (A 1 + eps)."""
    q, k, v = (heads(t) for t in m.qkv(x).chunk(3, dim=-1))
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    a = phi_q @ phi_k.transpose(-2, -1)  # (B, H, N, N)
    N = x.shape[1]
    if mask is not None:
        a = a * mask[:, None, None, :]
    if causal:
        a = a * torch.ones(N, N, dtype=torch.bool).tril()
    y = (a @ v) / (a.sum(-1, keepdim=True) + 1e-6)
    return m.out(unheads(y))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n", [1, 9, 100])
def test_linear_equals_quadratic_form(n, masked):
    m = make("linear")
    x = randn(2, n, D)
    mask = padding_mask(2, n) if masked else None
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask=mask), linear_reference(m, x, mask, False))


@pytest.mark.parametrize("chunk", [1, 5, 16, 64, 500])
@pytest.mark.parametrize("masked", [False, True])
def test_causal_linear_chunks_equal_quadratic_form(chunk, masked):
    n = 77  # not a multiple of any chunk above: exercises the tail padding
    m = make("linear", causal=True, chunk=chunk)
    x = randn(3, n, D)
    mask = padding_mask(3, n) if masked else None
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask=mask), linear_reference(m, x, mask, True))


def test_causal_linear_never_holds_per_position_state():
    # A (B, H, N, Dh, Dh) prefix sum would need N·H·Dh² floats; the chunked form holds that
    # divided by the chunk, plus chunk × chunk scores.
    n, d_model, n_heads = 4096, 64, 1
    torch.manual_seed(0)
    m = build("linear", d_model=d_model, n_heads=n_heads, causal=True).eval()
    x = torch.randn(1, n, d_model)
    with torch.no_grad(), track_peak("cpu") as mem:
        m(x)
    full_state_mib = n * n_heads * (d_model // n_heads) ** 2 * 4 / 2**20  # 64 MiB
    assert mem.peak_mib < full_state_mib / 4


def test_linear_chunk_must_be_positive():
    with pytest.raises(LsbenchError, match="chunk"):
        build("linear", d_model=D, n_heads=H, chunk=0)


# --- linformer (Wang et al.) ---------------------------------------------------------------


def linformer_reference(m, x, mask):
    """Per head: softmax(Q_i (E K_i)ᵀ / √Dh) (F V_i), E and F cut to the first N columns."""
    N = x.shape[1]
    q, k, v = (heads(t) for t in m.qkv(x).chunk(3, dim=-1))
    if mask is not None:
        k = k * mask[:, None, :, None]
        v = v * mask[:, None, :, None]
    E = m.E[:, :N]
    Fm = m.E[:, :N] if m.F is None else m.F[:, :N]
    outs = []
    for h in range(H):
        kh = torch.einsum("kn,bnd->bkd", E, k[:, h])  # (B, k, Dh)
        vh = torch.einsum("kn,bnd->bkd", Fm, v[:, h])  # (B, k, Dh)
        p = torch.softmax(q[:, h] @ kh.transpose(1, 2) / math.sqrt(DH), dim=-1)  # (B, N, k)
        outs.append(p @ vh)
    return m.out(torch.cat(outs, dim=-1))


@pytest.mark.parametrize("sharing", ["headwise", "key-value"])
@pytest.mark.parametrize("masked", [False, True])
def test_linformer_equals_reference(sharing, masked):
    m = make("linformer", k=16, max_len=128, sharing=sharing)
    x = randn(2, 50, D)
    mask = padding_mask(2, 50) if masked else None
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask=mask), linformer_reference(m, x, mask))


def test_linformer_sharing_modes_have_their_parameters():
    headwise = make("linformer", k=8, max_len=64)
    shared = make("linformer", k=8, max_len=64, sharing="key-value")
    assert headwise.E.shape == headwise.F.shape == (8, 64)
    assert shared.F is None and "F" not in dict(shared.named_parameters())


def test_linformer_projection_sized_per_length():
    m = make("linformer", k=8, max_len=40)
    assert m.E.shape == (8, 40)
    assert m(randn(1, 40, D)).shape == (1, 40, D)  # N == max_len is fine
    with pytest.raises(LsbenchError, match="max_len"):
        m(randn(1, 41, D))


@pytest.mark.parametrize("key", ["k", "max_len"])
def test_linformer_sizes_must_be_positive(key):
    with pytest.raises(LsbenchError, match=key):
        build("linformer", d_model=D, n_heads=H, **{key: 0})


def test_linformer_unknown_sharing_suggests():
    with pytest.raises(LsbenchError, match="headwise"):
        build("linformer", d_model=D, n_heads=H, sharing="headwse")


# --- fastformer (official FastSelfAttention) -----------------------------------------------


def fastformer_official_steps(m, hidden_states, attention_mask):
    """The official `FastSelfAttention.forward` (wuch15/Fastformer), restated step by step.

    `attention_mask` is the official extended mask: (1 - mask) * -10000, shape (B, 1, N).
    """
    batch_size, seq_len, _ = hidden_states.shape
    mixed_query_layer = m.query(hidden_states)
    mixed_key_layer = m.key(hidden_states)
    query_for_score = m.query_att(mixed_query_layer).transpose(1, 2) / DH**0.5
    query_for_score = query_for_score + attention_mask
    query_weight = torch.softmax(query_for_score, dim=-1).unsqueeze(2)
    query_layer = heads(mixed_query_layer)
    pooled_query = torch.matmul(query_weight, query_layer).transpose(1, 2).reshape(-1, 1, D)
    pooled_query_repeat = pooled_query.repeat(1, seq_len, 1)
    mixed_query_key_layer = mixed_key_layer * pooled_query_repeat
    query_key_score = (m.key_att(mixed_query_key_layer) / DH**0.5).transpose(1, 2)
    query_key_score = query_key_score + attention_mask
    query_key_weight = torch.softmax(query_key_score, dim=-1).unsqueeze(2)
    key_layer = heads(mixed_query_key_layer)
    pooled_key = torch.matmul(query_key_weight, key_layer)
    weighted_value = (pooled_key * query_layer).transpose(1, 2)
    weighted_value = weighted_value.reshape(weighted_value.size()[:-2] + (D,))
    return m.transform(weighted_value) + mixed_query_layer


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n", [1, 33])
def test_fastformer_equals_official_steps(n, masked):
    m = make("fastformer")
    x = randn(3, n, D)
    mask = padding_mask(3, n) if masked else torch.ones(3, n, dtype=torch.bool)
    extended = (1.0 - mask[:, None, :].double()) * -10000.0
    with torch.no_grad():
        ours = m(x, mask=mask if masked else None)
        torch.testing.assert_close(ours, fastformer_official_steps(m, x, extended))


def test_fastformer_loads_official_parameter_names():
    official = {
        "query.weight": (D, D), "query.bias": (D,),
        "query_att.weight": (H, D), "query_att.bias": (H,),
        "key.weight": (D, D), "key.bias": (D,),
        "key_att.weight": (H, D), "key_att.bias": (H,),
        "transform.weight": (D, D), "transform.bias": (D,),
    }
    m = build("fastformer", d_model=D, n_heads=H)
    state = {k: torch.randn(shape) for k, shape in official.items()}
    m.load_state_dict(state, strict=True)  # raises on any missing / unexpected / misshapen key
    assert torch.equal(m.key_att.weight, state["key_att.weight"])
