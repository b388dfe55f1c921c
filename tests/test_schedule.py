"""The forward process against closed forms and brute force."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kuosan import KuosanError, NoiseSchedule
from kuosan.schedule import target_for, x0_eps_from_output

SCHEDULES = [NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000), NoiseSchedule.linear(50)]


def test_linear_is_ddpm():
    s = NoiseSchedule.linear(1000)
    assert torch.equal(s.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    assert s.T == 1000
    assert torch.equal(s.alpha_bar, torch.cumprod(1 - s.betas, 0))  # the same float64 ops


def test_cosine_matches_formula_and_clip():
    s = NoiseSchedule.cosine(1000)
    assert s.betas.max() <= 0.999
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):
        # float64 cos and products: ~1e-15 per operation, 1e-9 leaves room for the clip's path
        assert s.alpha_bar[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)


@pytest.mark.parametrize("s", SCHEDULES, ids=lambda s: s.name)
def test_alpha_bar_at_continuous_monotone(s):
    ints = torch.arange(s.T, dtype=torch.float64)
    assert torch.allclose(s.alpha_bar_at(ints), s.alpha_bar, rtol=1e-12, atol=0)  # float64 interpolation
    fine = torch.linspace(0, s.T - 1, 20 * s.T, dtype=torch.float64)
    ab = s.alpha_bar_at(fine)
    assert (ab[1:] < ab[:-1]).all()
    # continuity: a twentieth of a step changes ᾱ by about a twentieth of the largest one-step
    # change (1.00–1.005× seen); 2× allows the interpolant's curvature, not a jump
    largest_step = (s.alpha_bar[:-1] - s.alpha_bar[1:]).abs().max()
    assert (ab[1:] - ab[:-1]).abs().max() < 2 * largest_step / 20


@pytest.mark.parametrize("s", SCHEDULES, ids=lambda s: s.name)
def test_sigma_and_log_snr_invert(s):
    t = torch.linspace(0, s.T - 1, 777, dtype=torch.float64)
    # float64 look-ups invert to ~10 ulps of t ≤ 999 (9e-13 seen); 1e-6 is ≪ a timestep
    assert torch.allclose(s.t_from_sigma(s.sigma_at(t)), t, rtol=0, atol=1e-6)
    assert torch.allclose(s.t_from_log_snr(s.log_snr_at(t)), t, rtol=0, atol=1e-6)
    assert torch.allclose(s.log_snr_at(t), -2 * torch.log(s.sigma_at(t)), rtol=0, atol=1e-9)
    assert s.sigma_min < s.sigma_max


@pytest.mark.parametrize("s", SCHEDULES, ids=lambda s: s.name)
def test_q_sample_equals_iterating_one_step_kernel(s):
    """Mean and variance of x_t by iterating q(x_t | x_{t−1}) = N(√(1−β_t) x_{t−1}, β_t) from x_0."""
    x0 = torch.tensor([0.7], dtype=torch.float64)
    mean, var = x0.clone(), torch.zeros(1, dtype=torch.float64)
    for t in range(s.T):
        mean = (1 - s.betas[t]).sqrt() * mean
        var = (1 - s.betas[t]) * var + s.betas[t]
        if t % 97 == 0 or t == s.T - 1:
            m, v = s.q_mean_variance(x0[None], torch.tensor([t]))
            # float64: 1000 iterated roundings ≈ 1000·2⁻⁵³ ≈ 1e-13 relative
            assert m.item() == pytest.approx(mean.item(), rel=1e-9, abs=1e-12)
            assert v.item() == pytest.approx(var.item(), rel=1e-9)


def test_q_sample_empirical_moments():
    s = NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.5, dtype=torch.float64)
    t = torch.full((n,), 300)
    x = s.q_sample(x0, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
    ab = s.alpha_bar[300].item()
    # fixed seed; standard errors √((1 − ᾱ)/n) = 0.0017 and √(2/n) = 0.0032 (relative): the
    # bounds are 5.7 and 5 of them
    assert x.mean().item() == pytest.approx(math.sqrt(ab) * 0.5, abs=0.01)
    assert x.var().item() == pytest.approx(1 - ab, rel=0.016)


@pytest.mark.parametrize("t", [1, 5, 200, 999])
def test_posterior_equals_bayes_on_a_grid(t):
    """q(x_{t−1}|x_t,x_0) ∝ q(x_t|x_{t−1})·q(x_{t−1}|x_0), evaluated numerically on a fine grid."""
    s = NoiseSchedule.linear(1000)
    x0, xt = 0.3, -0.4
    beta, ab_prev = s.betas[t].item(), s.alpha_bar[t - 1].item()
    grid = torch.linspace(-8, 8, 400_001, dtype=torch.float64)
    log_lik = -((xt - math.sqrt(1 - beta) * grid) ** 2) / (2 * beta)
    log_prior = -((grid - math.sqrt(ab_prev) * x0) ** 2) / (2 * (1 - ab_prev))
    w = torch.softmax(log_lik + log_prior, 0)
    mean = (w * grid).sum().item()
    var = (w * (grid - mean) ** 2).sum().item()
    post = s.q_posterior(torch.tensor([[x0]]), torch.tensor([[xt]]), torch.tensor([t]))
    # the grid has ≥ 180 points per posterior std, so the quadrature is exact to float64; the
    # posterior is float32: a few roundings (2⁻²⁴ ≈ 6e-8 each) of |mean| < 0.5, of β̃, and of
    # |log β̃| < 10 (an ulp is 1e-6 there)
    assert post.mean.item() == pytest.approx(mean, abs=1e-6)
    assert post.variance.item() == pytest.approx(var, rel=1e-6)
    assert post.log_variance.item() == pytest.approx(math.log(var), abs=1e-5)


def test_posterior_at_t0_is_the_data():
    s = NoiseSchedule.linear(100)
    x0, xt = torch.randn(3, 2), torch.randn(3, 2)
    post = s.q_posterior(x0, xt, torch.zeros(3, dtype=torch.long))
    assert torch.equal(post.mean, x0)
    assert (post.variance == 0).all()
    assert torch.isfinite(post.log_variance).all()


@settings(max_examples=200, deadline=None)
@given(ab=st.floats(1e-6, 1 - 1e-6), pred=st.sampled_from(["eps", "x0", "v"]), seed=st.integers(0, 9))
def test_eps_x0_v_round_trip(ab, pred, seed):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    alpha_bar = torch.full((2,), ab, dtype=torch.float64)
    x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
    target = target_for(pred, x0, eps, alpha_bar)
    x0_hat, eps_hat = x0_eps_from_output(target, x_t, alpha_bar, pred)
    # float64: the cancellation in x_t − √ᾱ·x_0 (or its twin) costs ≈ 2⁻⁵³·|x|/√min(ᾱ, 1 − ᾱ)
    assert torch.allclose(x0_hat, x0, rtol=0, atol=1e-12 / min(ab, 1 - ab) ** 0.5)
    assert torch.allclose(eps_hat, eps, rtol=0, atol=1e-12 / min(ab, 1 - ab) ** 0.5)


def test_v_definition():
    ab = torch.tensor([0.36], dtype=torch.float64)
    x0, eps = torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    assert target_for("v", x0, eps, ab).item() == pytest.approx(0.6 * 2.0 - 0.8 * 1.0)  # float64


def test_config_round_trip():
    for s in [NoiseSchedule.linear(123), NoiseSchedule.cosine(77), NoiseSchedule.from_betas(torch.full((5,), 0.1))]:
        r = NoiseSchedule.from_config(s.to_config())
        assert torch.equal(r.betas, s.betas)


@pytest.mark.parametrize("betas", [[0.1, 1.0], [0.0, 0.1], [0.1], [0.1, float("nan")]])
def test_bad_betas(betas):
    with pytest.raises(KuosanError):
        NoiseSchedule.from_betas(torch.tensor(betas))


def test_bad_T_and_timesteps():
    with pytest.raises(KuosanError):
        NoiseSchedule.linear(1)
    s = NoiseSchedule.linear(10)
    with pytest.raises(KuosanError):
        s.q_posterior(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([10]))
