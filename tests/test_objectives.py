"""Losses and the variational bound against closed forms."""

import math

import pytest
import torch

from kuosan import NoiseSchedule
from kuosan.objectives import (
    bound_term,
    discretized_gaussian_log_likelihood,
    loss_weight,
    normal_kl,
    prior_kl,
    training_loss,
    variational_bound,
)
from kuosan.schedule import target_for


def oracle_single_point(s: NoiseSchedule, point: torch.Tensor, prediction: str):
    """The exact model for data that is a single point: it knows x_0."""

    def model(x_t, t):
        ab = s.alpha_bar_at(t.double()).reshape(-1, *[1] * (x_t.ndim - 1)).to(x_t.dtype)
        x0 = point.expand_as(x_t).to(x_t.dtype)
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        return target_for(prediction, x0, eps, ab.flatten())

    return model


def test_discretized_gaussian_sums_to_one():
    grid = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in [(0.0, -3.0), (0.9, -1.0), (-0.33, -6.0), (2.0, 0.5)]:
        ll = discretized_gaussian_log_likelihood(grid, torch.tensor(mean, dtype=torch.float64),
                                                 torch.tensor(log_scale, dtype=torch.float64))
        # float64: 256 telescoping CDF differences, ≈ 256·2⁻⁵³ ≈ 3e-14
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-9)


def test_discretized_gaussian_far_tail_is_finite():
    x = torch.tensor([0.0], dtype=torch.float64)
    ll = discretized_gaussian_log_likelihood(x, torch.tensor([0.9]).double(), torch.tensor([-8.0]).double())
    assert torch.isfinite(ll).all() and ll.item() < -1000


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_bound_of_single_point_matches_closed_form(prediction):
    s = NoiseSchedule.linear(40)
    point = torch.tensor([[0.2, -0.6, 1.0]], dtype=torch.float64)  # on the 8-bit grid? use exact values
    point = torch.round((point + 1) * 127.5) / 127.5 - 1
    x0 = point.repeat(4, 1)
    model = oracle_single_point(s, point, prediction)
    b = variational_bound(model, x0, s, prediction=prediction, variance="beta_tilde",
                          generator=torch.Generator().manual_seed(0))
    # KL terms vanish: same mean, same variance β̃_t (float64 rounding: 7e-16 seen)
    assert b.diffusion.abs().max().item() < 1e-8
    # prior: KL(N(√ᾱ x, 1−ᾱ) ‖ N(0,1)) = ½(ᾱx² + (1−ᾱ) − 1 − log(1−ᾱ)) per dim
    ab = s.alpha_bar[-1].item()
    prior = sum(0.5 * (ab * v**2 + (1 - ab) - 1 - math.log(1 - ab)) for v in point.flatten().tolist())
    assert b.prior[0].item() == pytest.approx(prior, rel=1e-9)  # float64 (4e-13 seen)
    # decoder: mean x_0 exactly, variance β̃_1 → P(bin) = Φ(h/σ) − Φ(−h/σ) inside, Φ(h/σ) at the ends
    sd = math.sqrt(s.reverse_variance(torch.tensor([0]))[0].item())
    h = 1 / 255
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    nll = 0.0
    for v in point.flatten().tolist():
        p = phi(h / sd) if abs(v) == 1 else phi(h / sd) - phi(-h / sd)
        nll -= math.log(p)
    # float64 and erf throughout (6e-14 seen)
    assert b.decoder[0].item() == pytest.approx(nll, rel=1e-9)
    assert b.bits_per_dim[0].item() == pytest.approx((prior + nll) / (3 * math.log(2)), rel=1e-9)


@pytest.mark.parametrize("t", [1, 10, 30])
def test_kl_term_of_exact_gaussian_model_matches_analytic(t):
    """Data x_0 ~ N(0, c²) in 1-D; the exact denoiser x̂_0 = E[x_0|x_t] is linear, and
    E[L_t] = c_x0²·Var(x_0|x_t)/(2σ²) + ½(β̃/σ² − 1 − log(β̃/σ²)) in closed form."""
    s = NoiseSchedule.linear(40)
    c2 = 0.25

    def model(x_t, tt):
        ab = s.alpha_bar_at(tt.double()).reshape(-1, 1).to(x_t.dtype)
        return ab.sqrt() * c2 / (ab * c2 + 1 - ab) * x_t  # x0 prediction

    g = torch.Generator().manual_seed(1)
    n = 400_000
    x0 = torch.randn(n, 1, generator=g, dtype=torch.float64) * math.sqrt(c2)
    for variance in ("beta", "beta_tilde"):
        terms = bound_term(model, x0, t, s, prediction="x0", variance=variance, generator=g)
        got, standard_error = terms.mean().item(), terms.std().item() / math.sqrt(n)
        ab = s.alpha_bar[t].item()
        c_x0, _, beta_tilde = (v.item() for v in s.posterior_coefficients(torch.tensor([t])))
        sigma2 = s.reverse_variance(torch.tensor([t]), variance).item()
        var_post = c2 * (1 - ab) / (ab * c2 + 1 - ab)
        want = c_x0**2 * var_post / (2 * sigma2) + 0.5 * (beta_tilde / sigma2 - 1 - math.log(beta_tilde / sigma2))
        assert abs(got - want) < 5 * standard_error  # fixed seed: 5 standard errors of the mean


def test_monte_carlo_bound_is_unbiased():
    s = NoiseSchedule.linear(30)
    point = torch.tensor([[0.5]], dtype=torch.float64)

    def model(x_t, t):  # a wrong model: predicts ε = 0, so every KL term is positive
        return torch.zeros_like(x_t)

    x0 = point.repeat(2000, 1)
    full = variational_bound(model, x0, s, generator=torch.Generator().manual_seed(0)).diffusion.mean()
    est = torch.stack([
        variational_bound(model, x0, s, timesteps=3, generator=torch.Generator().manual_seed(k)).diffusion.mean()
        for k in range(300)
    ])
    # fixed seeds; 4 standard errors of the mean of 300 estimates (≈ 0.16 of the bound: drawing 3
    # of 29 timesteps dominates), so a wrong (T − 1)/K scale or a missing term still fails
    assert abs(est.mean() - full).item() < 4 * (est.std() / math.sqrt(len(est))).item()


def test_prior_kl_is_zero_mean_for_zero_data():
    s = NoiseSchedule.linear(1000)
    # exactly ᾱ_T²/4 ≈ 4e-10; float32 rounding of 1 − ᾱ_T (≤ 2⁻²⁴) costs ≲ 3e-8 in the log
    assert prior_kl(torch.zeros(2, 3), s).max().item() < 1e-7


def test_normal_kl_zero_and_positive():
    m, lv = torch.randn(10), torch.randn(10)
    # float32: e^{lv − lv} − 1 + … rounds by ≲ 2⁻²⁴·|lv| ≤ 2e-7 (6e-8 seen)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(10), rtol=0, atol=1e-6)
    assert (normal_kl(m, lv, m + 0.1, lv - 0.2) > 0).all()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_training_loss_zero_for_oracle(prediction):
    s = NoiseSchedule.linear(100)
    point = torch.tensor([[0.3, -0.2]])
    loss = training_loss(oracle_single_point(s, point, prediction), point.repeat(8, 1), s,
                         prediction=prediction, generator=torch.Generator().manual_seed(0))
    # the oracle inverts x_t up to rounding: ≲ (2⁻²⁴/√(1 − ᾱ_1))² ≈ 4e-11 in float32 (4e-15 seen)
    assert loss.shape == (8,) and loss.max().item() < 1e-8


def test_min_snr_weights_agree_on_x0_error():
    """All three targets, weighted by min-SNR-γ, give the same loss: min(snr, γ)·‖x̂_0 − x_0‖²."""
    g = torch.Generator().manual_seed(0)
    ab = torch.tensor([0.999, 0.9, 0.5, 0.01], dtype=torch.float64)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x0_hat = x0 + 0.1 * torch.randn(4, 3, generator=g, dtype=torch.float64)
    a, b = ab.sqrt()[:, None], (1 - ab).sqrt()[:, None]
    x_t = a * x0 + b * eps
    eps_hat = (x_t - a * x0_hat) / b
    snr = ab / (1 - ab)
    want = snr.clamp(max=5) * (x0_hat - x0).pow(2).sum(1)
    for pred in ("eps", "x0", "v"):
        err = (target_for(pred, x0_hat, eps_hat, ab) - target_for(pred, x0, eps, ab)).pow(2).sum(1)
        # float64: ~10 roundings (1e-15) amplified by ≤ 1/(1 − ᾱ) = 1e3 at ᾱ = 0.999
        assert torch.allclose(loss_weight(pred, ab, "min_snr", 5.0) * err, want, rtol=1e-9, atol=0)
