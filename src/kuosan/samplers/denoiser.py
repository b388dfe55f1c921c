"""The denoiser every sampler sees, and the noise they draw.

A denoiser answers in two views of the same noisy point (DESIGN: one continuous-time view):

    VP   x_t = √ᾱ·x_0 + √(1 − ᾱ)·ε     at a float timestep t          ``at_timestep(x_t, t)``
    VE   x = x_t/√ᾱ = x_0 + σ·ε         at σ = √((1 − ᾱ)/ᾱ)            ``denoiser(x, σ)``

and returns x̂_0 in both. :class:`Denoiser` is one over a model of DDPM timesteps; wrappers
(:mod:`kuosan.edit`'s known-region pinning) are denoisers over a denoiser: they subclass
:class:`BaseDenoiser`, define ``at_timestep`` and get the σ view from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import KuosanError
from ..schedule import NoiseSchedule, Prediction, expand_as, x0_eps_from_output

ModelFn = Callable[[Tensor, Tensor], Tensor]
DenoiserFn = Callable[[Tensor, Tensor], Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None


class BaseDenoiser:
    """D(x; σ) = x̂_0 for x = x_0 + σ·ε, from ``at_timestep`` (x̂_0 for the VP x_t at t).

    Subclasses set ``schedule`` and define ``at_timestep``; ``calls`` counts model evaluations.
    """

    schedule: NoiseSchedule

    @property
    def calls(self) -> int:
        raise NotImplementedError

    def at_timestep(self, x_t: Tensor, t: Tensor) -> Tensor:
        """x̂_0 for the VP variable x_t at float64 timesteps t of shape (B,)."""
        raise NotImplementedError

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x̂_0 for x = x_0 + σ·ε; ``sigma`` is a scalar or (B,): x_t = x/√(1 + σ²) at
        t = schedule.t_from_sigma(σ)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        x_t = x / expand_as((1 + sigma**2).sqrt(), x)
        return self.at_timestep(x_t, self.schedule.t_from_sigma(sigma))


class Denoiser(BaseDenoiser):
    """The denoiser over a model ``model(x_t, t) -> output`` of DDPM timesteps that predicts
    ``prediction`` (ε, x_0 or v): the only place where a model output becomes an x_0 estimate
    (the ε/x_0/v conversion of :mod:`kuosan.schedule`); ``clip_x0`` clamps x̂_0 to [−1, 1]."""

    def __init__(
        self,
        model: ModelFn,
        schedule: NoiseSchedule,
        prediction: Prediction = "eps",
        clip_x0: bool = False,
    ) -> None:
        self.model, self.schedule, self.prediction, self.clip_x0 = model, schedule, prediction, clip_x0
        self._calls = 0

    @property
    def calls(self) -> int:
        return self._calls

    def at_timestep(self, x_t: Tensor, t: Tensor) -> Tensor:
        self._calls += 1
        alpha_bar = self.schedule.alpha_bar_at(t).to(x_t.device)
        output = self.model(x_t, t.to(device=x_t.device, dtype=torch.float32))
        x0, _ = x0_eps_from_output(output.to(x_t.dtype), x_t, alpha_bar, self.prediction)
        return x0.clamp(-1, 1) if self.clip_x0 else x0


def randn(shape: Sequence[int], generator: Generators, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise of ``shape``, drawn on the CPU. ``generator`` may be a list with one
    generator per batch row: row i is then drawn from generator i alone, so a sample does not
    depend on the batch it is drawn in (DESIGN: "image i is the same whatever the batch size")."""
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, dtype=dtype)
    if len(generator) != shape[0]:
        raise KuosanError(f"{len(generator)} generators for a batch of {shape[0]}")
    return torch.stack([torch.randn(shape[1:], generator=g, dtype=dtype) for g in generator])


def randn_like(x: Tensor, generator: Generators) -> Tensor:
    """:func:`randn` of x's shape and dtype, moved to x's device."""
    return randn(x.shape, generator, x.dtype).to(x.device)


def as_denoiser(
    model: ModelFn | BaseDenoiser,
    schedule: NoiseSchedule | None,
    prediction: Prediction = "eps",
    clip_x0: bool = False,
) -> BaseDenoiser:
    """``model`` itself when it is a denoiser (which holds its own schedule, prediction and
    clipping), else the :class:`Denoiser` over it."""
    if isinstance(model, BaseDenoiser):
        if schedule is not None and schedule is not model.schedule:
            raise KuosanError("schedule= differs from the denoiser's own schedule")
        if prediction != "eps" or clip_x0:
            raise KuosanError("prediction= and clip_x0= belong to the Denoiser, not to a call "
                              "that is given one")
        return model
    if schedule is None:
        raise KuosanError("a model needs schedule= (or pass a Denoiser)")
    return Denoiser(model, schedule, prediction, clip_x0)
