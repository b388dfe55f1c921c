"""Samplers against exact answers: Gaussian data, where the probability-flow ODE is solved in
closed form, and Gaussian mixtures, whose exact denoiser kuosan.gmm gives."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from kuosan import samplers as S
from kuosan.errors import KuosanError
from kuosan.gmm import GaussianMixture, random_mixture
from kuosan.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.linear(1000)

# ---- a 1-D Gaussian: the probability-flow ODE in closed form ----------------------------------------

MU, S2 = 0.3, 0.25  # x_0 ~ N(0.3, 0.5²)
GAUSS = GaussianMixture(torch.ones(1), torch.tensor([[MU]]), torch.tensor([[[S2]]]))
SIGMA_MAX, SIGMA_MIN = 80.0, 0.05


def log_grid(n: int) -> torch.Tensor:
    """n levels uniform in log σ from SIGMA_MAX to SIGMA_MIN, then 0."""
    levels = torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), n, dtype=torch.float64).exp()
    return torch.cat([levels, torch.zeros(1, dtype=torch.float64)])


def exact_flow(x: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """The exact probability-flow ODE of the 1-D Gaussian: x − μ scales by √(s² + σ²)."""
    return MU + (x - MU) * math.sqrt(S2 + sigma_next**2) / math.sqrt(S2 + sigma**2)


def exact_target(x: torch.Tensor, final: str) -> torch.Tensor:
    """The exact ODE from SIGMA_MAX to SIGMA_MIN, then the samplers' common last step to σ = 0
    (S.final_step with D(x; SIGMA_MIN)): the solvers' own error is what is left."""
    x_min = exact_flow(x, SIGMA_MAX, SIGMA_MIN)
    return S.final_step(x_min, GAUSS.denoise(x_min, SIGMA_MIN), SIGMA_MIN, final)


# (sampler, least observed order between 32 and 64 levels). DPM-Solver++(3M) is order 3 in its
# steady state, but its order-1 warm-up step holds the global error near order 2 on fine grids.
# float64 and no randomness, so every machine sees the same orders (1.00, 1.00, 2.09, 2.00, 2.27,
# 3.04): each bound is the theory's order less the pre-asymptotic gap of a 32 → 64 step.
ORDERS = [("euler", 0.9), ("ddim", 0.9), ("heun", 1.8), ("dpmpp_2m", 1.8), ("dpmpp_3m", 2.0),
          ("unipc", 2.7)]


@pytest.mark.parametrize("final", S.FINAL_STEPS)
@pytest.mark.parametrize("name, order", ORDERS)
def test_error_shrinks_at_the_stated_order(name: str, order: float, final: str) -> None:
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)[:, None] * SIGMA_MAX
    errors = []
    for n in (16, 32, 64):
        y = S.SAMPLERS[name].run(GAUSS.denoise, x, log_grid(n), final=final)
        errors.append(float((y - exact_target(x, final)).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert math.log2(errors[1] / errors[2]) >= order, errors
    assert errors[2] < 0.05  # at 64 levels every solver is this close (Euler's 0.043 the farthest)


@pytest.mark.parametrize("std", [1.0, 0.2])
def test_trapezoid_last_step_is_second_order_in_sigma_squared(std: float) -> None:
    """From σ to 0 along a Gaussian direction of std s the exact flow scales x − μ by
    s/√(s² + σ²). x̂_0 errs by O(σ²/s²), (x + x̂_0)/2 by O(σ⁴/s⁴): halving σ divides the errors
    by about 4 and 16, and the trapezoid's is the smaller one."""
    gauss = GaussianMixture(torch.ones(1), torch.tensor([[MU]]), torch.tensor([[[std**2]]]))
    x = MU + torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None] * std
    errors: dict[str, list[float]] = {rule: [] for rule in S.FINAL_STEPS}
    for sigma in (0.05, 0.025):
        x_sigma = MU + (x - MU) * math.sqrt(std**2 + sigma**2) / std  # the flow's point at σ
        for rule in S.FINAL_STEPS:
            y = S.final_step(x_sigma, gauss.denoise(x_sigma, sigma), sigma, rule)
            errors[rule].append(float((y - x).abs().max()))
    # the next terms are O(σ²/s²), 6% at s = 0.2: they move log₂ by ≈ 0.07 (0.05 seen), in float64
    assert errors["trapezoid"][0] < errors["denoise"][0] / 10
    assert math.log2(errors["denoise"][0] / errors["denoise"][1]) == pytest.approx(2, abs=0.1)
    assert math.log2(errors["trapezoid"][0] / errors["trapezoid"][1]) == pytest.approx(4, abs=0.1)


def test_denoise_last_step_is_better_for_data_much_thinner_than_sigma() -> None:
    """The trapezoid rule assumes dx/dσ → 0, i.e. a density smooth on the scale of σ_min. For a
    direction of std s ≪ σ the exact factor s/√(s² + σ²) is near 0 and x̂_0 (factor
    s²/(s² + σ²)) is closer than (x + x̂_0)/2 (factor near 1/2): the documented trade-off."""
    std, sigma = 0.002, 0.02
    thin = GaussianMixture(torch.ones(1), torch.tensor([[MU]]), torch.tensor([[[std**2]]]))
    x = MU + torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None] * std
    x_sigma = MU + (x - MU) * math.sqrt(std**2 + sigma**2) / std
    err = {rule: float((S.final_step(x_sigma, thin.denoise(x_sigma, sigma), sigma, rule) - x)
                       .abs().max()) for rule in S.FINAL_STEPS}
    assert err["denoise"] < err["trapezoid"]


@pytest.mark.parametrize("sigma", [0.01, 1.0, 157.0])
def test_trapezoid_last_step_is_exact_for_data_of_std_sigma_data(sigma: float) -> None:
    """Its weight is the exact flow for N(μ, σ_d²): a last step from a large σ (a one-level grid)
    tends to x̂_0 instead of x/2, and the rule is the trapezoid's (x + x̂_0)/2 at small σ."""
    std = S.SIGMA_DATA
    gauss = GaussianMixture(torch.ones(1), torch.tensor([[MU]]), torch.tensor([[[std**2]]]))
    x = MU + torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None] * std
    x_sigma = MU + (x - MU) * math.sqrt(std**2 + sigma**2) / std
    y = S.final_step(x_sigma, gauss.denoise(x_sigma, sigma), sigma, "trapezoid")
    # the mixture holds μ = 0.3 in float32, 1.2e-8 off; the rest is float64 rounding
    torch.testing.assert_close(y, x, rtol=0, atol=1e-7)
    y1 = S.sample_dpmpp_2m(gauss.denoise, x_sigma, torch.tensor([sigma, 0.0], dtype=torch.float64),
                           final="trapezoid")
    torch.testing.assert_close(y1, x, rtol=0, atol=1e-7)
    # w = ½ − σ²/(8σ_d²) + … = 0.5 − 5e-5 at σ = 0.01; ≈ σ_d/σ = 0.003 at σ = 157
    assert S.final_weight(0.01, "trapezoid") == pytest.approx(0.5, abs=1e-4)
    assert S.final_weight(157.0, "trapezoid") < 0.01 and S.final_weight(0.01, "denoise") == 0


WITH_FINAL_STEP = [name for name, entry in S.SAMPLERS.items() if entry.final_step is not None]


@pytest.mark.parametrize("name", list(S.SAMPLERS))
def test_table_defaults_are_each_functions_defaults(name: str) -> None:
    """The table's η and last step are the sampler function's own defaults, so calling the
    function directly and through sample() agree."""
    entry = S.SAMPLERS[name]
    params = inspect.signature(entry.run).parameters
    assert ("final" in params) == (entry.final_step is not None)
    assert ("eta" in params) == (entry.eta is not None)
    assert ("generator" in params) == entry.noise
    if entry.final_step is not None:
        assert params["final"].default == entry.final_step
    if entry.eta is not None:
        assert params["eta"].default == entry.eta


@pytest.mark.parametrize("name", WITH_FINAL_STEP)
def test_default_final_step_is_each_functions_default(name: str) -> None:
    run, default = S.SAMPLERS[name].run, S.SAMPLERS[name].final_step
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)[:, None] * SIGMA_MAX
    torch.testing.assert_close(run(GAUSS.denoise, x, log_grid(6)),
                               run(GAUSS.denoise, x, log_grid(6), final=default),
                               rtol=0, atol=0)  # the same call


def test_ddim_eta0_is_euler_and_eta1_is_ancestral_ddpm() -> None:
    x = torch.randn(50, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    sigmas = log_grid(12)
    torch.testing.assert_close(S.sample_ddim(GAUSS.denoise, x, sigmas),  # float64: 4e-16 seen
                               S.sample_euler(GAUSS.denoise, x, sigmas), rtol=0, atol=1e-12)
    # σ_up of DDIM's η = 1 makes the step's variance that of DDPM's posterior q(x_s | x_t, x_0)
    sigma, sigma_next = 2.0, 1.0
    up = S.ddim_sigma_up(sigma, sigma_next, 1.0)
    ab_t, ab_s = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    beta_tilde = (1 - ab_t / ab_s) * (1 - ab_s) / (1 - ab_t)
    assert math.isclose(up**2, beta_tilde / ab_s, rel_tol=1e-12)  # float64: ~10 roundings


# ---- the public entry points on an exact mixture --------------------------------------------------

MIX = random_mixture(2, 4, seed=0, std_range=(0.1, 0.5))


class CountingModel:
    def __init__(self, prediction: str = "eps") -> None:
        self.fn, self.calls = MIX.model(SCHEDULE, prediction), 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fn(x_t, t)


@pytest.mark.parametrize("name", S.SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_model_evaluations_match_the_docstring(name: str, steps: int) -> None:
    finals = S.FINAL_STEPS if name in WITH_FINAL_STEP else (None,)
    for final in finals:  # the last step costs no evaluation, whichever rule
        model = CountingModel()
        x = S.sample(model, (8, 2), schedule=SCHEDULE, sampler=name, steps=steps,
                     final_step=final, generator=torch.Generator().manual_seed(0))
        assert x.shape == (8, 2) and torch.isfinite(x).all()
        assert model.calls == S.model_evaluations(name, steps)
        assert model.calls == (2 * steps - 1 if name == "heun" else steps)


@pytest.mark.parametrize("name", S.SAMPLERS)
def test_same_seed_same_samples(name: str) -> None:
    def draw(seed: int) -> torch.Tensor:
        return S.sample(MIX.model(SCHEDULE), (16, 2), schedule=SCHEDULE, sampler=name, steps=6,
                        generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


@pytest.mark.parametrize("name", S.SAMPLERS)
def test_eps_x0_and_v_models_give_the_same_samples(name: str) -> None:
    outs = [S.sample(MIX.model(SCHEDULE, p), (16, 2), schedule=SCHEDULE, sampler=name, steps=8,
                     prediction=p, generator=torch.Generator().manual_seed(0))
            for p in ("eps", "x0", "v")]
    # float32: each conversion to x̂_0 rounds by ~2⁻²⁴·|x|/√ᾱ, over 8 steps ≲ 1e-6 of |x| ≈ 1
    # (1e-6 seen), so 1e-4 leaves 100× room and is still ≪ a wrong conversion's O(1)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", S.SAMPLERS)
def test_guidance_wrapper(name: str) -> None:
    """A classifier-free-guidance closure is just another model: scale 1 is the conditional one."""
    cond, uncond = MIX.model(SCHEDULE), random_mixture(2, 3, seed=9).model(SCHEDULE)

    def guided(scale: float):
        return lambda x, t: uncond(x, t) + scale * (cond(x, t) - uncond(x, t))

    kw = {"schedule": SCHEDULE, "sampler": name, "steps": 5}
    plain = S.sample(cond, (8, 2), generator=torch.Generator().manual_seed(0), **kw)
    one = S.sample(guided(1.0), (8, 2), generator=torch.Generator().manual_seed(0), **kw)
    two = S.sample(guided(2.0), (8, 2), generator=torch.Generator().manual_seed(0), **kw)
    # u + 1·(c − u) is c up to a rounding of |u| per evaluation (≤ 5e-7 seen)
    torch.testing.assert_close(one, plain, rtol=0, atol=1e-5)
    assert torch.isfinite(two).all() and not torch.allclose(two, plain)


def test_good_samplers_reach_the_mixture() -> None:
    """At 20 evaluations the default-spaced multistep samplers put samples where the mixture is:
    their mean −log q is within 0.1 nats of exact samples' (a 20-step DDIM is far worse)."""
    # fixed seeds; the difference of two means of n = 20,000 has standard error 0.013, so 0.1 is
    # 4 of them above the worst sampler's 0.043 (at n = 2,000 the error was 0.042 alone)
    n, g = 20_000, torch.Generator().manual_seed(1)
    nll_exact = float(-MIX.log_prob(MIX.sample(n, g)).mean())
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        y = S.sample(MIX.model(SCHEDULE), (n, 2), schedule=SCHEDULE, sampler=name, steps=20,
                     generator=torch.Generator().manual_seed(2)).double()
        assert abs(float(-MIX.log_prob(y).mean()) - nll_exact) < 0.1, name


@pytest.mark.parametrize("final", S.FINAL_STEPS)
def test_ddim_inversion_round_trip(final: str) -> None:
    model = MIX.model(SCHEDULE)
    x0 = MIX.sample(64, torch.Generator().manual_seed(0))
    for iters, steps, tol in ((0, 100, 0.15), (5, 50, 1e-3)):
        x_T = S.invert(model, x0, schedule=SCHEDULE, steps=steps, fixed_point_iters=iters,
                       final_step=final)
        assert 0.7 < float(x_T.std()) < 1.3  # looks like N(0, I): ±0.3 = 4.8 SE (1/√256)
        back = S.sample(model, x0.shape, schedule=SCHEDULE, sampler="ddim", steps=steps, x_T=x_T,
                        final_step=final)
        # float64, no randomness: DDIM inversion is first order (0.062 seen at 100 steps); 5
        # fixed-point iterations solve the implicit step (3.5e-6 seen)
        assert float((back - x0).abs().max()) < tol, (iters, steps)


def test_invert_counts_evaluations() -> None:
    model = CountingModel()
    S.invert(model, MIX.sample(4), schedule=SCHEDULE, steps=6, fixed_point_iters=2)
    assert model.calls == 6 * 3


# ---- grids, the mixture, errors -------------------------------------------------------------------


@pytest.mark.parametrize("spacing", list(S.SPACINGS))
def test_sigma_grids(spacing: str) -> None:
    sigmas = S.SPACINGS[spacing](SCHEDULE, 10)
    assert sigmas.shape == (11,) and sigmas[-1] == 0
    assert (sigmas[:-1] > sigmas[1:]).all()
    assert math.isclose(float(sigmas[0]), SCHEDULE.sigma_max, rel_tol=1e-9)  # float64 rounding
    assert math.isclose(float(sigmas[-2]), SCHEDULE.sigma_min, rel_tol=1e-9)


def test_mixture_denoiser_is_tweedie() -> None:
    """D(x; σ) = x + σ²·∇ log p_σ(x) (Tweedie's formula), checked by autograd."""
    mix = random_mixture(5, 3, seed=4)
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    sigma = 0.7
    (score,) = torch.autograd.grad(mix.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(mix.denoise(x, sigma), x + sigma**2 * score, rtol=0,
                               atol=1e-12)  # float64: 2e-15 seen


def test_user_mistakes_raise() -> None:
    kw = {"schedule": SCHEDULE, "generator": torch.Generator().manual_seed(0)}
    model = MIX.model(SCHEDULE)
    with pytest.raises(KuosanError, match="unknown sampler"):
        S.sample(model, (2, 2), sampler="plms", **kw)
    with pytest.raises(KuosanError, match="unknown spacing"):
        S.sample(model, (2, 2), sampler="euler", spacing="cosine", **kw)
    with pytest.raises(KuosanError, match="eta"):
        S.sample(model, (2, 2), sampler="heun", eta=0.5, **kw)
    with pytest.raises(KuosanError, match="unknown final_step"):
        S.sample(model, (2, 2), sampler="unipc", final_step="exact", **kw)
    with pytest.raises(KuosanError, match="final_step applies"):
        S.sample(model, (2, 2), sampler="ddpm", final_step="denoise", **kw)
    with pytest.raises(KuosanError, match="unknown final_step"):
        S.sample_euler(MIX.denoise, torch.zeros(2, 2), torch.tensor([2.0, 0.0]), final="euler")
    with pytest.raises(KuosanError, match="end at 0"):
        S.sample_euler(MIX.denoise, torch.zeros(2, 2), torch.tensor([2.0, 1.0]))


def test_sample_takes_a_denoiser() -> None:
    model = CountingModel("v")
    denoiser = S.Denoiser(model, SCHEDULE, "v", clip_x0=True)
    for name in ("ddpm", "dpmpp_2m"):
        from_model = S.sample(model, (8, 2), schedule=SCHEDULE, sampler=name, steps=4,
                              prediction="v", clip_x0=True,
                              generator=torch.Generator().manual_seed(0))
        from_denoiser = S.sample(denoiser, (8, 2), sampler=name, steps=4,
                                 generator=torch.Generator().manual_seed(0))
        assert torch.equal(from_model, from_denoiser)
    assert denoiser.calls == 8 and model.calls == 16
    with pytest.raises(KuosanError, match="belong to the Denoiser"):
        S.sample(denoiser, (8, 2), sampler="euler", steps=4, prediction="x0")
    with pytest.raises(KuosanError, match="differs from the denoiser"):
        S.sample(denoiser, (8, 2), schedule=NoiseSchedule.linear(10), sampler="euler", steps=4)
    with pytest.raises(KuosanError, match="needs schedule="):
        S.sample(model, (8, 2), sampler="euler", steps=4)
