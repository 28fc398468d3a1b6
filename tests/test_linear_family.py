"""`linear`, `linformer` and `fastformer` against plain restatements of their papers / code.

References here are written the slow, obvious way (explicit N×N kernels, per-step code that
follows the official Fastformer implementation line by line) and compared in float64.
"""

from __future__ import annotations

import importlib
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


def reference(module: str):
    """A parity peer from the `dev` extra; missing, the test FAILS saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"parity test needs {module!r} ({e}); install the dev extra: "
                    f"pip install -e '.[dev]'")


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


def linformer_fairseq_forward(m, x, mask, rows: int | None = None):
    """fairseq `MultiheadLinearAttention.forward` (examples/linformer), self-attention branch.

    Restated line by line in its Time × Batch × Channel layout with our parameters:
    q_proj / k_proj / v_proj = rows [0, D), [D, 2D), [2D, 3D) of `qkv`, compress_k = E,
    compress_v = F (E when shared_kv_compressed), out_proj = `out`. The one addition is ours:
    padded positions of the compressed input are zeroed (fairseq's branch ignores the mask).
    """
    w, b = m.qkv.weight, m.qkv.bias
    query = x.transpose(0, 1)  # T x B x C
    tgt_len, bsz, embed_dim = query.size()
    num_heads, head_dim = H, DH
    scaling = head_dim**-0.5
    compress_k = m.E[:rows]  # rows: the compressed length (k, or N where lsbench caps it)
    compress_v = (m.E if m.F is None else m.F)[:rows]
    q = F.linear(query, w[:D], b[:D])
    kv_source = query if mask is None else query * mask.t()[:, :, None]
    k_input = kv_source.permute(1, 2, 0).contiguous()  # B * C * T
    k_input = F.linear(k_input, compress_k[:, 0:tgt_len]).permute(2, 0, 1).contiguous()
    k = F.linear(k_input, w[D : 2 * D], b[D : 2 * D])
    v_input = kv_source.permute(1, 2, 0).contiguous()  # B * C * T
    v_input = F.linear(v_input, compress_v[:, 0:tgt_len]).permute(2, 0, 1).contiguous()
    v = F.linear(v_input, w[2 * D :], b[2 * D :])
    q = q * scaling
    q = q.contiguous().view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * num_heads, head_dim).transpose(0, 1)
    attn_weights = torch.bmm(q, k.transpose(1, 2))
    attn_probs = torch.softmax(attn_weights, dim=-1)
    attn = torch.bmm(attn_probs, v)
    attn = attn.transpose(0, 1).contiguous().view(tgt_len, bsz, embed_dim)
    return m.out(attn).transpose(0, 1)  # back to B x T x C


def linformer_project_first(m, x):
    """The other order, E·(x W_Kᵀ + b_K): equal to fairseq's only when the biases are zero."""
    N = x.shape[1]
    q, k, v = (heads(t) for t in m.qkv(x).chunk(3, dim=-1))
    Fm = m.E if m.F is None else m.F
    k = torch.einsum("kn,bhnd->bhkd", m.E[:, :N], k)  # (B, H, k, Dh)
    v = torch.einsum("kn,bhnd->bhkd", Fm[:, :N], v)  # (B, H, k, Dh)
    p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(DH), dim=-1)  # (B, H, N, k)
    return m.out(unheads(p @ v))


@pytest.mark.parametrize("sharing", ["headwise", "key-value"])
@pytest.mark.parametrize("masked", [False, True])
def test_linformer_equals_fairseq_forward(sharing, masked):
    m = make("linformer", k=16, max_len=128, sharing=sharing)
    x = randn(2, 50, D)
    mask = padding_mask(2, 50) if masked else None
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask=mask), linformer_fairseq_forward(m, x, mask))


@pytest.mark.parametrize("n", [1, 10, 16])
@pytest.mark.parametrize("sharing", ["headwise", "key-value"])
def test_linformer_caps_k_at_short_n(n, sharing):
    """N <= k: the compressed length is N (E[:N, :N]), never k > N rows; the result is fairseq's
    forward with compress_k/compress_v cut to N rows, and the row note says so."""
    m = make("linformer", k=16, max_len=64, sharing=sharing)
    x = randn(2, n, D)
    with torch.no_grad():
        torch.testing.assert_close(m(x), linformer_fairseq_forward(m, x, None, rows=n))
    assert m.effective_k(n, m.params) == n
    assert ("capped" in m.notes(n, m.params)) == (n < 16)
    assert m.effective_k(40, m.params) == 16 and m.notes(40, m.params) == ""


def test_linformer_padded_short_sample_equals_running_alone():
    """k = 16, padded length 40 (>= k), real lengths 40 and 10 (< k): the short sample uses its
    own min(k, 10) = 10 compressed rows, as when it runs alone."""
    m = make("linformer", k=16, max_len=64)
    x = randn(2, 40, D)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 10:] = False
    with torch.no_grad():
        y = m(x, mask=mask)
        torch.testing.assert_close(y[1, :10], m(x[1:, :10])[0])
        torch.testing.assert_close(y[0], m(x[:1])[0])


def test_linformer_compresses_before_projecting():
    # With biases the two orders differ (E·1 scales b_K); without, they agree. This pins the
    # order to fairseq's: the test above would also pass for "project first" with zero biases.
    m = make("linformer", k=16, max_len=64)
    x = randn(2, 40, D)
    with torch.no_grad():
        assert not torch.allclose(m(x), linformer_project_first(m, x))
        m.qkv.bias.zero_()
        torch.testing.assert_close(m(x), linformer_project_first(m, x))


def test_linformer_padding_does_not_reach_real_tokens():
    m = make("linformer", k=16, max_len=64)
    x, mask = randn(2, 40, D), padding_mask(2, 40)
    y = randn(2, 40, D, seed=7)
    x2 = torch.where(mask[:, :, None], x, y)  # same real tokens, different padding
    with torch.no_grad():
        torch.testing.assert_close(m(x, mask=mask)[mask], m(x2, mask=mask)[mask])


@pytest.mark.parametrize("n", [40, 64])
def test_linformer_equals_lucidrains_without_biases(n):
    """lucidrains `linformer` 0.2.3 `LinformerSelfAttention` (bias-free to_q/to_k/to_v, projects
    after to_k): with our qkv bias zeroed and weights copied, the outputs agree. Needs the
    dev dependency `linformer` (missing, the test fails saying so)."""
    lucid = reference("linformer")
    m = make("linformer", k=16, max_len=64)
    peer = lucid.LinformerSelfAttention(D, seq_len=64, k=16, heads=H).double().eval()
    with torch.no_grad():
        m.qkv.bias.zero_()
        wq, wk, wv = m.qkv.weight.chunk(3, dim=0)
        peer.to_q.weight.copy_(wq)
        peer.to_k.weight.copy_(wk)
        peer.to_v.weight.copy_(wv)
        peer.proj_k.copy_(m.E.t())  # lucidrains stores E transposed: (seq_len, k)
        peer.proj_v.copy_(m.F.t())
        peer.to_out.load_state_dict(m.out.state_dict())
        x = randn(2, n, D)
        torch.testing.assert_close(m(x), peer(x))


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
    """The official `FastSelfAttention.forward` (wuch15/Fastformer), restated step by step,
    followed by `BertSelfOutput.dense` (the part of `FastAttention.output` before its dropout
    and LayerNorm(· + input), which the encoder block supplies).

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
    weighted_value = m.transform(weighted_value) + mixed_query_layer
    return m.dense(weighted_value)  # FastAttention.output.dense


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


def official_fast_attention_state(prefix: str = "") -> dict[str, torch.Tensor]:
    """Random tensors under the official `FastAttention` names and shapes (D, H as above)."""
    shapes = {
        "self.query.weight": (D, D), "self.query.bias": (D,),
        "self.query_att.weight": (H, D), "self.query_att.bias": (H,),
        "self.key.weight": (D, D), "self.key.bias": (D,),
        "self.key_att.weight": (H, D), "self.key_att.bias": (H,),
        "self.transform.weight": (D, D), "self.transform.bias": (D,),
        "output.dense.weight": (D, D), "output.dense.bias": (D,),
        "output.LayerNorm.weight": (D,), "output.LayerNorm.bias": (D,),
    }
    gen = torch.Generator().manual_seed(3)
    return {prefix + k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}


@pytest.mark.parametrize("prefix", ["", "fastformer_model.encoders.0.attention."])
def test_fastformer_loads_official_fast_attention(prefix):
    m = build("fastformer", d_model=D, n_heads=H)
    state = official_fast_attention_state(prefix)
    if prefix:
        state["fastformer_model.LayerNorm.weight"] = torch.ones(D)  # outside the prefix: ignored
    left_out = m.load_official(state, prefix=prefix)
    assert sorted(left_out) == [prefix + f"output.LayerNorm.{p}" for p in ("bias", "weight")]
    assert torch.equal(m.key_att.weight, state[prefix + "self.key_att.weight"])
    assert torch.equal(m.dense.bias, state[prefix + "output.dense.bias"])
    loaded = dict(m.state_dict())
    assert len(loaded) == 12 and all(
        torch.equal(v, state[prefix + ("output." if k.startswith("dense") else "self.") + k])
        for k, v in loaded.items()
    )


@pytest.mark.parametrize("change", ["missing", "unexpected", "misshapen"])
def test_fastformer_official_load_names_what_is_wrong(change):
    m = build("fastformer", d_model=D, n_heads=H)
    state = official_fast_attention_state()
    if change == "missing":
        del state["output.dense.weight"]
    elif change == "unexpected":
        state["self.value.weight"] = torch.zeros(D, D)
    else:
        state["self.query_att.weight"] = torch.zeros(H + 1, D)
    with pytest.raises(LsbenchError, match="dense.weight|self.value|query_att"):
        m.load_official(state)


# --- half precision ------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_linear_half_precision_long_sequence_matches_float32(causal, dtype):
    # Dh = 16, N = 8192: φ(q)·Σ φ(k) ≈ 16 · 8192 > 65504. Computed in float16 the denominator
    # was inf and the output silently 0 (finite, so only the comparison catches it).
    n, d_model, n_heads = 8192, 64, 4
    torch.manual_seed(0)
    m = build("linear", d_model=d_model, n_heads=n_heads, causal=causal).eval()
    x = torch.randn(1, n, d_model, requires_grad=True)
    ref = m(x)
    ref.square().sum().backward()  # sum, not mean: float16 grads of 1/(N·D) underflow
    ref_grad = x.grad
    xh = x.detach().to(dtype).requires_grad_()
    y = m.to(dtype)(xh)
    y.float().square().sum().backward()
    assert y.dtype == dtype and torch.isfinite(y).all() and torch.isfinite(xh.grad).all()
    tol = {torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(y.float(), ref.detach(), atol=tol, rtol=tol)
    scale = ref_grad.abs().max()
    torch.testing.assert_close(xh.grad.float() / scale, ref_grad / scale, atol=tol, rtol=tol)


def test_fastformer_dispatches_the_official_matmuls():
    # same matrix products as the official layer up to its output dense (FlopCounterMode counts
    # mm/bmm/addmm only): nothing left out, nothing added
    from torch.utils.flop_counter import FlopCounterMode

    m, x = make("fastformer"), randn(2, 40, D)
    counts = []
    for run in (lambda: m(x), lambda: fastformer_official_steps(m, x, torch.zeros(2, 1, 40))):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            run()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0
