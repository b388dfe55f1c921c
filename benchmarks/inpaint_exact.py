"""Inpainting against an exact conditional: how close each method gets to p(x2 | x1).

Data: a 2-D Gaussian with unit variances and correlation ρ (default 0.95); the model is the
exact ε of its diffusion (``kuosan.gmm``, no training error), cosine schedule, T = 1000. Known:
x1 = 1.5, so the exact answer is x2 ~ N(ρ·1.5, 1 − ρ²). ``-n`` samples per method, generator
seeded 0; printed: the mean and variance of x2 and the error |Δmean| + |Δvar|.

    OMP_NUM_THREADS=1 python3 benchmarks/inpaint_exact.py
"""

from __future__ import annotations

import argparse
import sys

import torch

from kuosan.edit import inpaint
from kuosan.gmm import GaussianMixture
from kuosan.schedule import NoiseSchedule

METHODS = (  # (sampler, steps, resample, eta)
    ("dpmpp_2m", 20, 1, None), ("ddim", 20, 1, None), ("unipc", 20, 1, None),
    ("dpmpp_2m_sde", 20, 1, None), ("ddpm", 50, 1, None), ("ddpm", 200, 1, None),
    ("ddim", 20, 3, 1.0), ("ddpm", 20, 3, None), ("ddpm", 50, 5, None), ("ddpm", 50, 10, None),
    ("ddim", 20, 10, None),
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=4000)
    p.add_argument("--rho", type=float, default=0.95)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rho = args.rho
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1, rho], [rho, 1.0]]]))
    schedule = NoiseSchedule.cosine(1000)
    known = torch.zeros(args.n, 2, dtype=torch.float64)
    known[:, 0] = 1.5
    mask = torch.tensor([0.0, 1.0], dtype=torch.float64)
    exact_mean, exact_var = rho * 1.5, 1 - rho**2
    print(f"exact conditional: mean {exact_mean:.3f}, variance {exact_var:.3f}  (n = {args.n})\n")
    print("| sampler | steps | resample | eta | mean | variance | error |")
    print("|---|---|---|---|---|---|---|")
    for sampler, steps, resample, eta in METHODS:
        x = inpaint(gm.model(schedule, "eps"), known, mask, schedule=schedule, sampler=sampler,
                    steps=steps, resample=resample, eta=eta, clip_x0=False,
                    generator=torch.Generator().manual_seed(0)).double()[:, 1]
        mean, var = x.mean().item(), x.var().item()
        err = abs(mean - exact_mean) + abs(var - exact_var)
        print(f"| {sampler} | {steps} | {resample} | {'—' if eta is None else eta} | {mean:.3f} | "
              f"{var:.3f} | {err:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
