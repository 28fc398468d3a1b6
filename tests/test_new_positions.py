"""Position methods beyond the ALiBi paper against their published definitions: xPos, KERPLE (log
and power), FIRE, and the eval-time RoPE scalings (PI, NTK-aware, YaRN)."""

from __future__ import annotations

import math

import pytest
import torch

from lsbench import positions

pytestmark = pytest.mark.usefixtures("one_thread")
G = torch.Generator().manual_seed(0)


def rope_by_hand(x: torch.Tensor, m: float, inv_freq: list[float]) -> torch.Tensor:
    """RoFormer rotation of one (Dh,) vector at position m; pair i is (i, i + Dh/2)."""
    h = len(x) // 2
    out = x.clone()
    for i, f in enumerate(inv_freq):
        c, s = math.cos(m * f), math.sin(m * f)
        out[i], out[i + h] = x[i] * c - x[i + h] * s, x[i] * s + x[i + h] * c
    return out


def scores(pe, q, k, n: int) -> torch.Tensor:
    """(n, n) q_m·k_n of one head for a window of n positions (q, k: (Dh,))."""
    pos = torch.arange(n)
    qq = pe(q.expand(1, 1, n, -1), pos)[0, 0]  # (n, Dh)
    kk = pe(k.expand(1, 1, n, -1), pos, is_key=True)[0, 0]
    return qq @ kk.T


def test_xpos_is_rotary_times_a_per_pair_decay_in_distance():
    d, sb = 16, 64
    pe = positions.build("xpos", n_heads=1, head_dim=d, scale_base=sb)
    q, k = torch.randn(d, generator=G, dtype=torch.float64), torch.randn(d, generator=G,
                                                                         dtype=torch.float64)
    inv = [10000 ** (-2 * i / d) for i in range(d // 2)]
    zeta = [(2 * i / d + 0.4) / 1.4 for i in range(d // 2)]  # Sun et al. §3.2, γ = 0.4
    got = scores(pe.double(), q, k, 300)
    for m, n in [(5, 2), (299, 0), (150, 150), (200, 77)]:
        rq, rk = rope_by_hand(q, m, inv), rope_by_hand(k, n, inv)
        decay = torch.tensor(zeta * 2, dtype=torch.float64) ** ((m - n) / sb)
        assert got[m, n].item() == pytest.approx((rq * rk * decay).sum().item(), rel=1e-6)
    # windows of other lengths (other centring) give the same scores
    torch.testing.assert_close(scores(pe.double(), q, k, 120), got[:120, :120])


def test_kerple_log_and_power_match_the_kernels():
    log = positions.build("kerple_log", n_heads=2, head_dim=4)
    power = positions.build("kerple_power", n_heads=2, head_dim=4)
    with torch.no_grad():
        log.r1.copy_(torch.tensor([1.5, 0.001]))  # second head below the 0.01 floor
        log.r2.copy_(torch.tensor([0.3, 2.0]))
        power.r1.copy_(torch.tensor([0.5, 1.0]))
        power.r2.copy_(torch.tensor([1.0, 3.0]))  # above the cap of 2
    pos = torch.arange(20)
    b_log, b_pow = log(pos, pos), power(pos, pos)
    for i, j in [(19, 0), (7, 3), (5, 5)]:
        d = i - j
        assert b_log[0, i, j].item() == pytest.approx(-1.5 * math.log(1 + 0.3 * d), rel=1e-6)
        assert b_log[1, i, j].item() == pytest.approx(-0.01 * math.log(1 + 2.0 * d), rel=1e-6)
        assert b_pow[0, i, j].item() == pytest.approx(-0.5 * d, rel=1e-6, abs=1e-7)
        assert b_pow[1, i, j].item() == pytest.approx(-1.0 * d**2, rel=1e-6, abs=1e-7)
    b_pow.sum().backward()  # 0^r2 on the diagonal must not poison the exponent's gradient
    assert torch.isfinite(power.r2.grad).all() and torch.isfinite(power.r1.grad).all()


def test_kerple_head_at_its_floor_keeps_a_gradient():
    """As the official code clamps the stored parameter (bias_p.data.clamp_), a head pushed
    below the floor sits at it with a live gradient instead of a dead clamp."""
    pe = positions.build("kerple_log", n_heads=2, head_dim=4)
    with torch.no_grad():
        pe.r1.copy_(torch.tensor([1.0, -0.5]))
    pos = torch.arange(8)
    pe.train()
    pe(pos, pos).sum().backward()
    assert pe.r1[1].item() == pytest.approx(0.01)
    assert pe.r1.grad[1].item() != 0


def test_fire_is_an_mlp_of_the_progressively_normalised_log_distance():
    pe = positions.build("fire", n_heads=3, head_dim=4, train_len=16)
    x = pe.normalized(torch.arange(64), torch.arange(64))

    def psi(v):
        return math.log(0.1 * v + 1)  # c initialised to 0.1

    for i, j in [(10, 2), (15, 0), (40, 3), (63, 0)]:
        ref = psi(i - j) / (psi(max(i, 16)) + 1e-6)  # Li et al. eq. (3): max(i, L)
        assert x[i, j].item() == pytest.approx(ref, rel=1e-5)
    assert x.max().item() <= 1.0 and x[63, 0].item() == pytest.approx(1.0, rel=1e-5)
    bias = pe(torch.arange(64), torch.arange(64))  # (H, N, N)
    with torch.no_grad():
        ref = pe.mlp(x[40, 3].reshape(1, 1))[0]
    torch.testing.assert_close(bias[:, 40, 3], ref)


def test_rope_scalings_are_plain_rotary_up_to_the_training_length():
    q, k = torch.randn(16, generator=G), torch.randn(16, generator=G)
    ref = scores(positions.build("rotary", n_heads=1, head_dim=16), q, k, 32)
    for name in ("rope_pi", "rope_ntk", "rope_yarn"):
        pe = positions.build(name, n_heads=1, head_dim=16, train_len=32)
        torch.testing.assert_close(scores(pe, q, k, 32), ref, msg=name)


def test_pi_squeezes_positions_by_the_window_over_train_length():
    d, L = 16, 32
    pe = positions.build("rope_pi", n_heads=1, head_dim=d, train_len=L).double()
    q, k = torch.randn(d, generator=G, dtype=torch.float64), torch.randn(d, generator=G,
                                                                         dtype=torch.float64)
    inv = [10000 ** (-2 * i / d) for i in range(d // 2)]
    got = scores(pe, q, k, 4 * L)  # s = 4: position m is rotated as m / 4 (Chen et al. eq. 4)
    for m, n in [(127, 0), (64, 63), (9, 2)]:
        ref = (rope_by_hand(q, m / 4, inv) * rope_by_hand(k, n / 4, inv)).sum()
        assert got[m, n].item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-9)


def test_ntk_raises_the_base_so_the_lowest_frequency_is_interpolated_exactly():
    d, L, base = 16, 32, 10000
    pe = positions.build("rope_ntk", n_heads=1, head_dim=d, train_len=L)
    plain = positions.build("rotary", n_heads=1, head_dim=d).inv_freq(3 * L)
    got = pe.inv_freq(3 * L)  # s = 3
    new_base = base * 3 ** (d / (d - 2))  # bloc97 / YaRN eq. 16
    torch.testing.assert_close(got, torch.tensor(
        [new_base ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64))
    assert got[0] == plain[0]  # highest frequency kept
    assert got[-1].item() == pytest.approx(plain[-1].item() / 3, rel=1e-12)  # lowest: θ/s


def test_yarn_ramp_and_temperature_by_hand():
    from lsbench.positions.rope_yarn import yarn_ramp

    d, L, base = 64, 512, 10000
    # pair index where the wavelength fits r turns into L: d·ln(L/(2πr)) / (2 ln base)
    low = math.floor(d * math.log(L / (2 * math.pi * 32)) / (2 * math.log(base)))  # 3
    high = math.ceil(d * math.log(L / (2 * math.pi * 1)) / (2 * math.log(base)))  # 16
    assert (low, high) == (3, 16)
    keep = yarn_ramp(d, base, L)
    assert keep[: low + 1].tolist() == [1.0] * (low + 1)  # fast pairs: kept (extrapolated)
    assert keep[high:].tolist() == [0.0] * (d // 2 - high)  # slow pairs: interpolated
    assert keep[9].item() == pytest.approx(1 - (9 - low) / (high - low))
    pe = positions.build("rope_yarn", n_heads=1, head_dim=d, train_len=L)
    theta = positions.build("rotary", n_heads=1, head_dim=d).inv_freq(4 * L)
    got = pe.inv_freq(4 * L)  # s = 4
    assert got[0] == theta[0] and got[-1].item() == pytest.approx(theta[-1].item() / 4)
    # q and k both scaled by 0.1 ln s + 1 (Peng et al. §3.4): logits by its square
    pos = torch.arange(4 * L)
    x = torch.randn(1, 1, 4 * L, d, generator=G)
    plain = positions.build("rotary", n_heads=1, head_dim=d)
    ratio = pe(x, pos).norm() / plain(x, pos).norm()
    assert ratio.item() == pytest.approx(0.1 * math.log(4) + 1, rel=1e-5)


def test_rotary_checkpoint_loads_into_every_rope_scaling():
    from lsbench.models import CausalLM, CausalLMConfig

    torch.manual_seed(0)
    rotary = CausalLM(CausalLMConfig("rotary", d_model=16, n_heads=2, n_layers=1, train_len=8))
    x = torch.randint(0, 256, (1, 24))
    for name in ("rope_pi", "rope_ntk", "rope_yarn"):
        scaled = CausalLM(CausalLMConfig(name, d_model=16, n_heads=2, n_layers=1, train_len=8))
        scaled.load_state_dict(rotary.state_dict())  # strict: no position weights either side
        with torch.no_grad():
            torch.testing.assert_close(scaled(x[:, :8]), rotary(x[:, :8]))
            assert not torch.allclose(scaled(x), rotary(x))  # 3× L: scaled differently
