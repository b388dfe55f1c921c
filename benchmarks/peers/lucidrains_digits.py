"""The peer for the digits benchmark: lucidrains' denoising-diffusion-pytorch on the 1,797 digits.

Runs in its own venv (it needs torchvision; kuosan is not imported here), see README.md:

    .peer/venv/bin/python benchmarks/peers/lucidrains_digits.py --minutes 10 -n 1000 --out OUT

What it does, and where it departs from the library's defaults (every departure is a flag):

- Model: ``Unet(dim=32, dim_mults=(1, 2), channels=1)``. The library default ``dim_mults``
  (1, 2, 4, 8) needs sides divisible by 8 after 3 halvings; at 8×8 the two-level Unet is the
  smallest change (one halving, 8 → 4, full attention in the middle at 4×4).
- Diffusion: ``GaussianDiffusion(model, image_size=8)`` with its defaults: 1000 timesteps,
  sigmoid β schedule, ``pred_v`` objective, auto-normalise [0, 1] → [-1, 1].
- Data: ``load_digits().images / 16`` as N×1×8×8 in [0, 1] (ink bright), shuffled each epoch;
  no horizontal flips (the Trainer flips by default, which is wrong for digits).
- Loop: their ``Trainer``'s recipe without its folder dataset, Accelerate or FID hooks:
  Adam(lr 1e-4, betas (0.9, 0.99)), batch 16, gradient-norm clip 1.0, ``ema_pytorch.EMA``
  (beta 0.995, update_every 10), for ``--minutes`` of wall clock (checked after each step).
- Sampling: the EMA model, ``--sampling-steps`` 250 by default, i.e. their DDIM (eta 0) with the
  step count of their README's example (``sampling_timesteps = 250``). Their library default
  (``sampling_timesteps = timesteps``: 1000 ancestral DDPM steps) takes about an hour for 1,000
  images on one CPU core; pass ``--sampling-steps 1000`` to use it.
- Output: ``--out/0000.png`` … 8×8 grayscale PNGs, ``round(255·x)``; and a last stdout line
  ``RESULT {json}`` with steps, train_seconds, steps_per_s, sample_seconds, params, versions.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from denoising_diffusion_pytorch import GaussianDiffusion, Unet
from denoising_diffusion_pytorch.version import __version__ as ddp_version
from ema_pytorch import EMA
from PIL import Image
from sklearn.datasets import load_digits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget")
    p.add_argument("-n", "--num-samples", type=int, default=1000)
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG samples")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--dim-mults", default="1,2")
    p.add_argument("--batch-size", type=int, default=16, help="their Trainer's default")
    p.add_argument("--lr", type=float, default=1e-4, help="their Trainer's default")
    p.add_argument(
        "--sampling-steps",
        type=int,
        default=250,
        help="DDIM steps; 1000 = their library default, ancestral DDPM",
    )
    p.add_argument("--sample-batch", type=int, default=250)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dim_mults = tuple(int(m) for m in args.dim_mults.split(","))

    data = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0).unsqueeze(1)
    model = Unet(dim=args.dim, dim_mults=dim_mults, channels=1)
    diffusion = GaussianDiffusion(model, image_size=8, sampling_timesteps=args.sampling_steps)
    ema = EMA(diffusion, beta=0.995, update_every=10)
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=args.lr, betas=(0.9, 0.99))
    params = sum(p.numel() for p in model.parameters())
    print(
        f"lucidrains denoising-diffusion-pytorch {ddp_version}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, Unet params {params:,}, "
        f"timesteps {diffusion.num_timesteps}, objective {diffusion.objective}",
        flush=True,
    )

    budget = args.minutes * 60.0
    step, epoch_order, cursor = 0, torch.randperm(len(data)), 0
    start = time.perf_counter()
    last_print = start
    diffusion.train()
    while time.perf_counter() - start < budget:
        if cursor >= len(data):  # a new epoch, like DataLoader(shuffle=True)
            epoch_order, cursor = torch.randperm(len(data)), 0
        batch = data[epoch_order[cursor : cursor + args.batch_size]]
        cursor += args.batch_size
        loss = diffusion(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(diffusion.parameters(), 1.0)
        optimizer.step()
        ema.update()
        step += 1
        now = time.perf_counter()
        if now - last_print > 30:
            print(
                f"step {step}  loss {loss.item():.4f}  {step / (now - start):.2f} steps/s",
                flush=True,
            )
            last_print = now
    train_seconds = time.perf_counter() - start
    print(
        f"trained {step} steps in {train_seconds:.1f} s ({step / train_seconds:.2f} steps/s)",
        flush=True,
    )

    args.out.mkdir(parents=True, exist_ok=True)
    sampler = ema.ema_model
    sampler.eval()
    torch.manual_seed(args.seed + 1)
    start = time.perf_counter()
    written = 0
    for _ in range(math.ceil(args.num_samples / args.sample_batch)):
        size = min(args.sample_batch, args.num_samples - written)
        images = sampler.sample(batch_size=size)  # (size, 1, 8, 8) in [0, 1]
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
        for image in pixels:
            Image.fromarray(image).save(args.out / f"{written:04d}.png")
            written += 1
    sample_seconds = time.perf_counter() - start
    print(f"sampled {written} images in {sample_seconds:.1f} s", flush=True)
    result = {
        "system": "lucidrains/denoising-diffusion-pytorch",
        "version": ddp_version,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "minutes": args.minutes,
        "steps": step,
        "batch_size": args.batch_size,
        "train_seconds": train_seconds,
        "steps_per_s": step / train_seconds,
        "sampler": "ddpm" if args.sampling_steps >= diffusion.num_timesteps else "ddim",
        "sampling_steps": args.sampling_steps,
        "sample_seconds": sample_seconds,
        "num_samples": written,
        "params": params,
    }
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
