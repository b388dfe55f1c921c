"""The table of samplers: one :class:`SamplerEntry` per name says how :func:`sample` runs it.

Adding a sampler: write ``sample_<name>(denoiser, x, sigmas, *, progress, ...)`` (in
:mod:`~kuosan.samplers.solvers`, or its own module) and add its entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from torch import Tensor

from ..errors import KuosanError
from ..schedule import NoiseSchedule
from .ancestral import sample_ddim, sample_ddpm
from .grids import SPACINGS, append_zero, timesteps_uniform
from .solvers import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m,
    sample_euler,
    sample_heun,
    sample_unipc,
)


@dataclass(frozen=True)
class SamplerEntry:
    """How :func:`kuosan.samplers.sample` runs one sampler.

    ``run(denoiser, x, grid, **options)`` is the sampler's function. ``eta``: its default η when
    it takes ``eta=`` (None: it takes none); ``noise``: it draws fresh noise, so it takes
    ``generator=``; ``final_step``: its default last step from σ_min to 0 when it takes
    ``final=`` (None: it returns x̂_0); ``spacing``: its default σ grid; ``timesteps``: it runs
    on DDPM's integer timesteps and the VP variable (its only spacing is "uniform_t");
    ``evaluations_per_step``: model evaluations per step, except the last step (to σ = 0),
    which costs one.
    """

    run: Callable[..., Tensor]
    eta: float | None = None
    noise: bool = False
    final_step: str | None = None
    spacing: str = "log_snr"
    timesteps: bool = False
    evaluations_per_step: int = 1

    @property
    def deterministic(self) -> bool:
        """Draws no noise at its default η (so a sample is a function of x_T alone)."""
        return not self.noise or self.eta == 0


# Default last steps: "trapezoid" where it gave the lower KL at both 10 and 20 evaluations on
# every mixture of the exact benchmark, "denoise" elsewhere; default spacing log_snr, chosen on
# the same benchmark (benchmarks/samplers.py, docs/samplers.md).
SAMPLERS: Mapping[str, SamplerEntry] = MappingProxyType({
    "ddpm": SamplerEntry(sample_ddpm, noise=True, spacing="uniform_t", timesteps=True),
    "ddim": SamplerEntry(sample_ddim, eta=0.0, noise=True, final_step="denoise"),
    "euler": SamplerEntry(sample_euler, final_step="denoise"),
    "heun": SamplerEntry(sample_heun, final_step="denoise", evaluations_per_step=2),
    "dpmpp_2m": SamplerEntry(sample_dpmpp_2m, final_step="denoise"),
    "dpmpp_3m": SamplerEntry(sample_dpmpp_3m, final_step="denoise"),
    "dpmpp_2m_sde": SamplerEntry(sample_dpmpp_2m_sde, eta=1.0, noise=True),
    "unipc": SamplerEntry(sample_unipc, final_step="trapezoid"),
})


def sampler_entry(sampler: str) -> SamplerEntry:
    """The entry of ``sampler``, or a KuosanError naming the samplers there are."""
    if sampler not in SAMPLERS:
        raise KuosanError(f"unknown sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler]


def samplers_where(test: Callable[[SamplerEntry], bool]) -> tuple[str, ...]:
    """The names of the samplers whose entry passes ``test``, in table order."""
    return tuple(name for name, entry in SAMPLERS.items() if test(entry))


def model_evaluations(sampler: str, steps: int) -> int:
    """How many times ``sample(sampler=…, steps=steps)`` calls the model (as each docstring
    states): k per step and one on the last, k = ``evaluations_per_step`` (Heun: 2n − 1)."""
    k = sampler_entry(sampler).evaluations_per_step
    return k * steps - (k - 1)


def sigmas_for(schedule: NoiseSchedule, sampler: str, steps: int, spacing: str | None = None) -> Tensor:
    """The σ grid (steps + 1 values, ending at 0) for ``sampler`` with the named ``spacing``
    (default: the sampler's); for one on integer timesteps ("ddpm"), σ at those timesteps
    (:func:`timesteps_uniform`), then 0."""
    entry = sampler_entry(sampler)
    check_spacing(sampler, spacing)
    if entry.timesteps:
        return append_zero(schedule.sigma_at(timesteps_uniform(schedule, steps).double()))
    return SPACINGS[entry.spacing if spacing is None else spacing](schedule, steps)


def check_spacing(sampler: str, spacing: str | None) -> None:
    """Raise unless ``spacing`` is None or a spacing ``sampler`` runs on."""
    if sampler_entry(sampler).timesteps and spacing not in (None, "uniform_t"):
        raise KuosanError(f"the {sampler} sampler runs on uniform integer timesteps, "
                          f"not spacing {spacing!r}")
    if spacing is not None and spacing not in SPACINGS:
        raise KuosanError(f"unknown spacing {spacing!r}: expected one of {', '.join(SPACINGS)}")
