"""Samplers on exact Gaussian mixtures: how far are the samples from the true distribution?

A Gaussian mixture stays a Gaussian mixture under the forward process, so its exact ε(x_t, t) is
known in closed form (kuosan.gmm): the only error left is the sampler's. Every sampler, ours and
diffusers' schedulers (the peer, optional), runs on the same exact model, the same schedule
(DDPM's linear betas, T = 1000) and the same initial noise x_T ~ N(0, I), at several numbers of
model evaluations (NFE). Reported for each run:

- ``kl``: KL(p ‖ q) in nats, p the sampler's output distribution, q the true mixture, for the
  deterministic samplers. The sampler is a map y = Φ(x_T), so by the change of variables
  log p(y) = log N(x_T; 0, I) − log|det ∂Φ/∂x_T|, and KL(p ‖ q) = E_{x_T}[log p(Φ(x_T)) −
  log q(Φ(x_T))], estimated on ``--n`` points; the Jacobian comes from forward-mode autograd in
  float64 (through diffusers' schedulers too). ± is the standard error. Its noise floor is the
  same quantity for the probability-flow ODE solved finely (DPM-Solver++(3M), ``--floor-steps``
  log-SNR steps), with each last step from σ_min to 0 (kuosan.samplers.final_step: "denoise",
  x̂_0 = D(x; σ_min), which diffusers and DDPM use, and "trapezoid", (x + x̂_0)/2): it is not 0,
  because the last step is not the exact flow and because x_T ~ N(0, I) is not exactly q at
  t = T−1. Two diagnostics separate the second cause: KL(N(0, I) ‖ q_{T−1}) by Monte Carlo (what
  the exact flow would turn into the KL of its output), and the same floor started from the
  exact marginal q_{T−1} (x_T = √ᾱ·x_0 + √(1 − ᾱ)·z with the same z, log q_{T−1}(x_T) in place
  of log N(x_T; 0, I)).
- ``nll_gap``: mean −log q(y) over the samples minus the entropy H(q) (0 for exact samples, not
  a divergence: it can be negative); floor: ``--n`` exact samples.
- ``sw``: sliced 2-Wasserstein distance to ``--n`` exact samples (128 fixed directions);
  floor: two independent sets of exact samples.
- ``nfe``: model evaluations actually made (counted by the model wrapper); ``seconds``: wall time
  of the run, Jacobian included for deterministic samplers.

The peer's model is evaluated at the σ each scheduler assigns to the step (its own ``sigmas``,
or ᾱ at its integer timestep), so diffusers' interpolation conventions never count against it.

    OMP_NUM_THREADS=1 python3 benchmarks/samplers.py --threads 1

diffusers is an optional benchmark dependency: ``pip install diffusers`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from kuosan import samplers as S
from kuosan.gmm import GaussianMixture, random_mixture
from kuosan.schedule import NoiseSchedule

NFES = (5, 10, 15, 20, 50)
SW_DIRECTIONS = 128


def ring_mixture() -> GaussianMixture:
    """8 components on a circle of radius 0.8, thin radially (std 0.015) and wider tangentially."""
    k = 8
    angle = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    radial = torch.stack([angle.cos(), angle.sin()], -1)
    tangent = torch.stack([-angle.sin(), angle.cos()], -1)
    rot = torch.stack([radial, tangent], -1)  # columns: radial, tangential
    stds = torch.tensor([0.015, 0.15], dtype=torch.float64)
    covs = rot @ torch.diag(stds**2) @ rot.transpose(-1, -2)
    weights = torch.linspace(1, 3, k, dtype=torch.float64)
    return GaussianMixture(weights, 0.8 * radial, covs, name="ring-2d")


MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "ring-2d": ring_mixture,
    "random-2d": lambda: random_mixture(2, 6, seed=1, mean_scale=1.5, std_range=(0.01, 0.5),
                                        name="random-2d"),
    "random-16d": lambda: random_mixture(16, 8, seed=2, mean_scale=2.0, std_range=(0.01, 0.5),
                                         name="random-16d"),
}


@dataclass
class Row:
    mixture: str
    family: str  # "kuosan", "diffusers" or "floor"
    sampler: str
    nfe_budget: int
    nfe: int
    kl: float
    kl_se: float
    nll_gap: float
    sw: float
    seconds: float


# ---- metrics ---------------------------------------------------------------------------------------


def kl_by_change_of_variables(mix: GaussianMixture, phi: Callable[[Tensor], Tensor],
                              x_T: Tensor, log_start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(y, per-point log p(y) − log q(y)) for y = Φ(x_T); Jacobian by forward-mode autograd.

    Each point is repeated d times with the tangents e_1…e_d, so one batched pass gives ∂Φ/∂x_T.
    ``log_start``: the log-density of the x_T points (default: log N(x_T; 0, I)).
    """
    n, d = x_T.shape
    with fwAD.dual_level():
        out = phi(fwAD.make_dual(x_T.repeat_interleave(d, 0), torch.eye(d, dtype=x_T.dtype).repeat(n, 1)))
        y_rep, jac_t = fwAD.unpack_dual(out)
    y = y_rep[::d].detach()
    _, logdet = torch.linalg.slogdet(jac_t.reshape(n, d, d).to(torch.float64))
    if log_start is None:
        log_start = -0.5 * (x_T**2).sum(1) - 0.5 * d * math.log(2 * math.pi)
    return y, log_start - logdet - mix.log_prob(y.to(torch.float64))


def log_marginal_T(mix: GaussianMixture, schedule: NoiseSchedule, x_T: Tensor) -> Tensor:
    """log q_{T−1}(x_T), the exact VP marginal at t = T−1: x = x_T·√(1 + σ_max²) ~ p_{σ_max}."""
    scale2 = 1 + schedule.sigma_max**2
    return mix.log_prob(x_T * math.sqrt(scale2), schedule.sigma_max) + 0.5 * mix.dim * math.log(scale2)


def sliced_w2(a: Tensor, b: Tensor, directions: Tensor) -> float:
    """√(mean over unit directions of W2² between the 1-D projections), equal sample sizes."""
    pa, _ = (a.to(torch.float64) @ directions.T).sort(0)
    pb, _ = (b @ directions.T).sort(0)
    return float(((pa - pb) ** 2).mean().sqrt())


# ---- the samplers under test ------------------------------------------------------------------------


class Counter:
    """Wraps a model and counts its evaluations."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Tensor) -> Tensor:
        self.calls += 1
        return self.fn(*args)


def ours(name: str, steps: int, spacing: str | None = None, **kw: float | str) -> Callable:
    """Φ(x_T) for one of our samplers through the public pieces of kuosan.samplers."""

    def run(model: Callable, schedule: NoiseSchedule, x_T: Tensor,
            generator: torch.Generator | None) -> Tensor:
        entry, den, extra = S.SAMPLERS[name], S.Denoiser(model, schedule), dict(kw)
        if entry.noise:
            extra["generator"] = generator
        if entry.timesteps:
            return entry.run(den, x_T, S.timesteps_uniform(schedule, steps), **extra)
        sigmas = S.sigmas_for(schedule, name, steps, spacing)
        return entry.run(den, x_T * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, **extra)

    return run


def peer(cls_name: str, steps: int, **config: object) -> Callable:
    """Φ(x_T) for a diffusers scheduler driven as its pipelines drive it."""
    import diffusers

    diffusers.utils.logging.set_verbosity_error()

    def run(model: Callable, schedule: NoiseSchedule, x_T: Tensor,
            generator: torch.Generator | None) -> Tensor:
        sched = getattr(diffusers, cls_name)(num_train_timesteps=schedule.T,
                                             trained_betas=schedule.betas.numpy(), **config)
        sched.set_timesteps(steps)
        alphas_cumprod = sched.alphas_cumprod.to(torch.float64)
        x = x_T * sched.init_noise_sigma
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            if hasattr(sched, "sigmas"):  # the σ this scheduler believes it is at
                idx = 0 if sched.step_index is None else sched.step_index
                sigma = sched.sigmas[idx].to(torch.float64)
            else:
                ab = alphas_cumprod[int(t)]
                sigma = ((1 - ab) / ab).sqrt()
            eps = model.eps_at_sigma(x_in, sigma)
            x = sched.step(eps, t, x).prev_sample
        return x

    return run


class ExactModel:
    """The mixture's exact ε-model, for kuosan (timesteps) and for the peer (σ), with a counter."""

    def __init__(self, mix: GaussianMixture, schedule: NoiseSchedule) -> None:
        self.mix, self.calls = mix, 0
        self.vp_model = mix.model(schedule, "eps")

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.vp_model(x_t, t)

    def eps_at_sigma(self, x_t: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        x = x_t.to(torch.float64) * math.sqrt(1 + float(sigma) ** 2)
        return ((x - self.mix.denoise(x, sigma)) / sigma).to(x_t.dtype)


def our_runs(nfe: int) -> list[tuple[str, bool, Callable]]:
    """(label, deterministic, runner) for our samplers at a budget of ``nfe`` evaluations: each
    deterministic one with its default last step, then with the other rule ("<rule> last")."""
    runs: list[tuple[str, bool, Callable]] = []
    for name in (n for n, entry in S.SAMPLERS.items() if entry.deterministic):
        steps = (nfe + 1) // 2 if name == "heun" else nfe
        runs.append((name, True, ours(name, steps)))
    runs.append(("dpmpp_2m karras", True, ours("dpmpp_2m", nfe, "karras")))
    for name in ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"):  # ddim η = 0 is euler
        steps = (nfe + 1) // 2 if name == "heun" else nfe
        for final in S.FINAL_STEPS:
            if final != S.SAMPLERS[name].final_step:
                runs.append((f"{name} {final} last", True, ours(name, steps, final=final)))
    runs.append(("ddpm", False, ours("ddpm", nfe)))
    runs.append(("ddim eta=1", False, ours("ddim", nfe, eta=1.0)))
    runs.append(("dpmpp_2m_sde", False, ours("dpmpp_2m_sde", nfe)))
    return runs


def peer_runs(nfe: int) -> list[tuple[str, bool, Callable]]:
    runs = [
        # clip_sample (on by default) clamps x̂_0 to [−1, 1]: an image-range assumption that the
        # mixtures do not satisfy; trailing spacing starts at t = T−1, where x_T is drawn
        ("DDIM trailing", peer("DDIMScheduler", nfe, timestep_spacing="trailing",
                               clip_sample=False)),
        ("DPMSolverMultistep", peer("DPMSolverMultistepScheduler", nfe)),
        ("DPMSolverMultistep karras", peer("DPMSolverMultistepScheduler", nfe, use_karras_sigmas=True)),
        ("DPMSolverSinglestep", peer("DPMSolverSinglestepScheduler", nfe)),
        ("Euler", peer("EulerDiscreteScheduler", nfe)),
        ("Heun", peer("HeunDiscreteScheduler", (nfe + 1) // 2)),
        ("UniPC", peer("UniPCMultistepScheduler", nfe)),
        ("LMS", peer("LMSDiscreteScheduler", nfe)),
    ]
    return [(label, True, run) for label, run in runs]


# ---- the benchmark -------------------------------------------------------------------------------


def evaluate(mix: GaussianMixture, schedule: NoiseSchedule, family: str, label: str, budget: int,
             deterministic: bool, run: Callable, x_T: Tensor, exact: Tensor, entropy: float,
             directions: Tensor, log_start: Tensor | None = None) -> Row:
    model = ExactModel(mix, schedule)
    start = time.perf_counter()
    if deterministic:
        y, per_point = kl_by_change_of_variables(
            mix, lambda x: run(model, schedule, x, None), x_T, log_start)
        calls = model.calls
        kl, kl_se = float(per_point.mean()), float(per_point.std() / math.sqrt(len(per_point)))
    else:
        y = run(model, schedule, x_T.clone(), torch.Generator().manual_seed(1))
        calls, kl, kl_se = model.calls, float("nan"), float("nan")
    seconds = time.perf_counter() - start
    y = y.detach().to(torch.float64)
    nll_gap = float(-mix.log_prob(y).mean()) - entropy
    return Row(mix.name, family, label, budget, calls, kl, kl_se, nll_gap,
               sliced_w2(y, exact, directions), seconds)


def floors(mix: GaussianMixture, schedule: NoiseSchedule, x_T: Tensor, exact: Tensor,
           entropy: float, directions: Tensor, floor_steps: int) -> list[Row]:
    """The exact ODE's KL with each last step, the same started from the exact q_{T−1}, exact
    samples, and KL(N(0, I) ‖ q_{T−1}); the targets' 'excess' reads the lower exact-ODE floor."""
    rows = []
    ab = float(schedule.alpha_bar[-1])
    x0 = mix.sample(len(x_T), torch.Generator().manual_seed(6))
    x_T_exact = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * x_T  # q_{T−1}, sharing x_T's z
    log_exact = log_marginal_T(mix, schedule, x_T_exact)
    default = S.SAMPLERS["dpmpp_3m"].final_step
    for final in (default, *(f for f in S.FINAL_STEPS if f != default)):
        label = f"exact ODE (3M, {floor_steps} steps, last step {final})"
        run = ours("dpmpp_3m", floor_steps, "log_snr", final=final)
        rows.append(evaluate(mix, schedule, "floor", label, 0, True, run, x_T, exact, entropy,
                             directions))
        rows.append(evaluate(mix, schedule, "floor", label + " from exact q_{T-1}", 0, True, run,
                             x_T_exact, exact, entropy, directions, log_exact))
    other = mix.sample(len(exact), torch.Generator().manual_seed(3))
    rows.append(Row(mix.name, "floor", "exact samples", 0, 0, float("nan"), float("nan"),
                    float(-mix.log_prob(other).mean()) - entropy,
                    sliced_w2(other, exact, directions), 0.0))
    z = torch.randn(100_000, mix.dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    per_point = (-0.5 * (z**2).sum(1) - 0.5 * mix.dim * math.log(2 * math.pi)
                 - log_marginal_T(mix, schedule, z))
    rows.append(Row(mix.name, "floor", "start: KL(N(0, I) ‖ q_{T-1}), 100000 points", 0, 0,
                    float(per_point.mean()), float(per_point.std() / math.sqrt(len(z))),
                    float("nan"), float("nan"), 0.0))
    return rows


def fmt(v: float, se: float | None = None, digits: int = 4) -> str:
    if math.isnan(v):
        return "—"
    return f"{v:.{digits}f}" if se is None else f"{v:.{digits}f}±{se:.{digits}f}"


def print_tables(rows: list[Row], nfes: tuple[int, ...]) -> None:
    for mixture in dict.fromkeys(r.mixture for r in rows):
        mrows = [r for r in rows if r.mixture == mixture]
        print(f"\n### {mixture}\n")
        for r in (r for r in mrows if r.family == "floor"):
            kl = (f"{r.kl:.2e}±{r.kl_se:.1e}" if r.sampler.startswith("start")
                  else fmt(r.kl, r.kl_se))
            print(f"floor — {r.sampler}: kl {kl}, nll_gap {fmt(r.nll_gap)}, "
                  f"sw {fmt(r.sw)}, nfe {r.nfe}")
        for metric in ("kl", "nll_gap", "sw"):
            print(f"\n{metric} (nfe used)\n")
            print("| family | sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
            print("|---|---|" + "---|" * len(nfes))
            labels = dict.fromkeys((r.family, r.sampler) for r in mrows if r.family != "floor")
            for family, label in labels:
                cells = []
                for n in nfes:
                    match = [r for r in mrows if (r.family, r.sampler, r.nfe_budget) == (family, label, n)]
                    if not match:
                        cells.append("")
                        continue
                    r = match[0]
                    cells.append(f"{fmt(getattr(r, metric))} ({r.nfe})")
                print(f"| {family} | {label} | " + " | ".join(cells) + " |")


def _best(rows: list[Row], mixture: str, family: str, budget: int) -> Row | None:
    cands = [r for r in rows if r.mixture == mixture and r.family == family
             and r.nfe_budget == budget and not math.isnan(r.kl)]
    return min(cands, key=lambda r: r.kl) if cands else None


def check_targets(rows: list[Row]) -> bool:
    """At 10 and 20 NFE: our best deterministic KL < diffusers' best; at 20, at most half."""
    ok = True
    print("\n### targets (KL, best deterministic sampler within the budget; 'excess' is the KL"
          " above the exact ODE's floor, shown for information, not part of the target)\n")
    for mixture in dict.fromkeys(r.mixture for r in rows):
        for budget in (10, 20):
            a, b = (_best(rows, mixture, family, budget) for family in ("kuosan", "diffusers"))
            if a is None or b is None:
                continue
            ratio = a.kl / b.kl
            target = 0.5 if budget == 20 else 1.0
            passed = ratio <= target if budget == 20 else ratio < target
            ok &= passed
            floor = min(r.kl for r in rows if r.mixture == mixture and r.family == "floor"
                        and r.nfe > 0 and "from exact" not in r.sampler)  # the lower last step
            excess = (a.kl - floor) / (b.kl - floor)
            print(f"{mixture} NFE {budget}: kuosan {a.sampler} {a.kl:.4f} vs diffusers {b.sampler} "
                  f"{b.kl:.4f}: ratio {ratio:.2f} (target {'≤' if budget == 20 else '<'} {target}) "
                  f"{'PASS' if passed else 'FAIL'}; excess-over-floor ratio {excess:.2f}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=1000, help="points per mixture (2-D)")
    parser.add_argument("--n-high", type=int, default=250, help="points per mixture (d > 2)")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    parser.add_argument("--mixtures", nargs="+", default=list(MIXTURES), choices=list(MIXTURES))
    parser.add_argument("--floor-steps", type=int, default=200)
    parser.add_argument("--no-diffusers", action="store_true", help="skip the peer")
    parser.add_argument("--csv", type=Path, default=None, help="append every row to this CSV")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    schedule = NoiseSchedule.linear(1000)
    peer_ok = not args.no_diffusers
    if peer_ok:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("diffusers is not installed: the peer is skipped (pip install diffusers)")
            peer_ok = False
    rows: list[Row] = []
    total = time.perf_counter()
    for key in args.mixtures:
        mix = MIXTURES[key]()
        n = args.n if mix.dim <= 2 else args.n_high
        x_T = torch.randn(n, mix.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        exact = mix.sample(n, torch.Generator().manual_seed(2))
        entropy = mix.entropy(200_000, torch.Generator().manual_seed(4))
        g = torch.Generator().manual_seed(5)
        directions = torch.randn(SW_DIRECTIONS, mix.dim, generator=g, dtype=torch.float64)
        directions = directions / directions.norm(dim=1, keepdim=True)
        rows += floors(mix, schedule, x_T, exact, entropy, directions, args.floor_steps)
        for budget in args.nfe:
            runs = [("kuosan", *r) for r in our_runs(budget)]
            if peer_ok:
                runs += [("diffusers", *r) for r in peer_runs(budget)]
            for family, label, det, run in runs:
                rows.append(evaluate(mix, schedule, family, label, budget, det, run, x_T, exact,
                                     entropy, directions))
        print(f"[{mix.name}: done after {time.perf_counter() - total:.0f} s]", flush=True)
    print_tables(rows, tuple(args.nfe))
    if peer_ok:
        check_targets(rows)
    print(f"\ntotal {time.perf_counter() - total:.0f} s, torch {torch.__version__}, "
          f"threads {args.threads}")
    if args.csv:
        new = not args.csv.exists()
        with args.csv.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            if new:
                writer.writeheader()
            writer.writerows(asdict(r) for r in rows)


if __name__ == "__main__":
    main()
