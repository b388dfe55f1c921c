"""Samplers: from noise to data through a trained model.

``sample()`` is the one entry point (the DESIGN's Sampling contract). A model is any callable
``model(x_t, t) -> output`` with ``t`` a float tensor (B,) of (possibly fractional) timesteps in
[0, T−1]; ``prediction`` says whether the output is ε, x_0 or v. Every sampler sees the model
through :class:`Denoiser`, which answers in the σ view: D(x; σ) = x̂_0 for x = x_0 + σ·ε.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import KuosanError
from .schedule import NoiseSchedule, Prediction, expand_as, x0_eps_from_output

ModelFn = Callable[[Tensor, Tensor], Tensor]


class Denoiser:
    """D(x; σ) = x̂_0 for the VE-scaled x = x_t/√ᾱ = x_0 + σ·ε, over a model of DDPM timesteps.

    The only place where a model output is turned into an x_0 estimate: x_t = x/√(1 + σ²),
    t = schedule.t_from_sigma(σ), then the ε/x_0/v conversion of :mod:`kuosan.schedule`.
    ``calls`` counts model evaluations (one per call, whatever the batch).
    """

    def __init__(
        self,
        model: ModelFn,
        schedule: NoiseSchedule,
        prediction: Prediction = "eps",
        clip_x0: bool = False,
    ) -> None:
        self.model, self.schedule, self.prediction, self.clip_x0 = model, schedule, prediction, clip_x0
        self.calls = 0

    def at_timestep(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂_0, ε̂) for the VP variable x_t at float timesteps t of shape (B,)."""
        self.calls += 1
        alpha_bar = self.schedule.alpha_bar_at(t).to(x_t.device)
        output = self.model(x_t, t.to(device=x_t.device, dtype=torch.float32))
        x0, eps = x0_eps_from_output(output.to(x_t.dtype), x_t, alpha_bar, self.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - expand_as(alpha_bar.sqrt(), x_t) * x0) / expand_as((1 - alpha_bar).sqrt(), x_t)
        return x0, eps

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x̂_0 for x = x_0 + σ·ε; ``sigma`` is a scalar or (B,)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        x_t = x / expand_as((1 + sigma**2).sqrt(), x)
        return self.at_timestep(x_t, self.schedule.t_from_sigma(sigma))[0]


def timesteps_uniform(schedule: NoiseSchedule, steps: int) -> Tensor:
    """``steps`` integer timesteps from T−1 down to 0, evenly spaced (both ends included)."""
    if steps < 1 or steps > schedule.T:
        raise KuosanError(f"steps must be in [1, {schedule.T}], got {steps}")
    if steps == 1:
        return torch.tensor([schedule.T - 1])
    return torch.linspace(schedule.T - 1, 0, steps, dtype=torch.float64).round().long()


@torch.no_grad()
def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    timesteps: Tensor,
    *,
    generator: torch.Generator | None = None,
    variance: str = "beta_tilde",
    progress: bool = False,
) -> Tensor:
    """Ancestral sampling (DDPM, Algorithm 2) on the chain ``timesteps`` (decreasing, ending at 0).

    From x_t to x_s (s the next timestep, s = −1 is the data, ᾱ_{−1} = 1) with the respaced
    β' = 1 − ᾱ_t/ᾱ_s: x_s = μ̃(x_t, x̂_0) + σ·z, σ² = β̃' ("beta_tilde") or β' ("beta"); no noise
    on the last step, which returns x̂_0. With all T timesteps this is exactly Algorithm 2.
    Model evaluations: len(timesteps).
    """
    schedule = denoiser.schedule
    ts = timesteps.tolist()
    for i, t in enumerate(tqdm(ts, disable=not progress, desc="ddpm", leave=False)):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        ab_t = schedule.alpha_bar[t]
        ab_s = schedule.alpha_bar[s] if s >= 0 else torch.ones((), dtype=torch.float64)
        x0, _ = denoiser.at_timestep(x, torch.full((x.shape[0],), float(t), dtype=torch.float64))
        if s < 0:
            return x0
        beta = 1 - ab_t / ab_s
        c_x0 = float(beta * ab_s.sqrt() / (1 - ab_t))
        c_xt = float((1 - ab_s) * (1 - beta).sqrt() / (1 - ab_t))
        var = beta * (1 - ab_s) / (1 - ab_t) if variance == "beta_tilde" else beta
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = c_x0 * x0 + c_xt * x + float(var.sqrt()) * noise
    return x


SAMPLERS: tuple[str, ...] = ("ddpm",)


@torch.no_grad()
def sample(
    model: ModelFn,
    shape: Sequence[int],
    *,
    schedule: NoiseSchedule,
    sampler: str = "ddpm",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    prediction: Prediction = "eps",
    x_T: Tensor | None = None,
    clip_x0: bool = False,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Tensor:
    """Draw samples of ``shape`` from ``model`` and return the final x_0 estimate.

    The initial noise is the first thing drawn: ``torch.randn(shape, generator=generator)`` on the
    CPU, then moved to ``device`` (so a seed gives the same samples on every device), unless
    ``x_T`` is given. ``steps`` defaults to T for "ddpm". ``clip_x0`` clamps x̂_0 to [−1, 1].
    """
    if sampler not in SAMPLERS:
        raise KuosanError(f"unknown sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if x_T is None:
        x_T = torch.randn(tuple(shape), generator=generator)
    elif tuple(x_T.shape) != tuple(shape):
        raise KuosanError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    x = x_T.to(device) if device is not None else x_T
    denoiser = Denoiser(model, schedule, prediction, clip_x0)
    steps = schedule.T if steps is None else steps
    return sample_ddpm(denoiser, x, timesteps_uniform(schedule, steps), generator=generator,
                       progress=progress)
