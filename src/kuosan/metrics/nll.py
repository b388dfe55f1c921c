"""Negative log-likelihood of data under a trained model: the variational bound (Ho et al. 2020,
eq. 5), in bits/dim for images and nats/dim for vectors.

    −log p(x_0) ≤ L = L_T (prior) + Σ_{t>1} L_{t−1} (diffusion) + L_0 (decoder)

```python
from kuosan import Pipeline
from kuosan.metrics.nll import nll_bound
result = nll_bound(Pipeline.load("runs/digits"), examples=256)   # what `kuosan eval --nll` prints
result["nll"], result["stderr"], result["terms"]
```

The terms are :func:`kuosan.objectives.variational_bound`'s; images are scored on their 8-bit
grid with the discretised decoder. A text model is scored given each image's caption, or the
empty one, or both with the same t and noise (``captions="gain"``: the caption's worth, paired).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from ..data import load_dataset
from ..errors import KuosanError
from ..objectives import variational_bound
from ..train_config import TrainConfig

CAPTIONS = ("own", "empty", "gain")


def nll_bound(pipe: Any, *, data: str | None = None, data_seed: int | None = None,
              examples: int = 256, timesteps: int | None = None, batch_size: int = 256,
              captions: str = "own", seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """The NLL bound of ``pipe`` (a :class:`kuosan.Pipeline`) on ``examples`` items of ``data``
    (default: the dataset it was trained on; ``data_seed`` default: its training seed, so its
    training data) drawn with ``seed``; ``timesteps``: estimate the KL sum from this many random
    t (unbiased; default all T). ``captions`` for a text model: "own", "empty" or "gain".

    Returns a dict: model, data, examples, unit, data_seed, nll, stderr, terms (prior,
    diffusion, decoder), timesteps, captions (text models), and with "gain": nll_empty,
    stderr_empty, caption_gain (empty − own), caption_gain_stderr (paired)."""
    if captions not in CAPTIONS:
        raise KuosanError(f"captions must be one of {', '.join(CAPTIONS)}, got {captions!r}")
    text = pipe.is_text_conditioned
    if captions != "own" and not text:
        raise KuosanError(f"captions={captions!r} applies to text models, and '{pipe.source}' "
                          f"is not one")
    stored = pipe.config.get("train")
    train_cfg = TrainConfig.from_dict(stored).to_flat() if stored else {}  # nested or flat
    spec = data or train_cfg.get("data")
    if spec is None:
        raise KuosanError(f"'{pipe.source}' does not name its training data: pass data")
    shape, image = tuple(pipe.info.shape), pipe.info.kind == "image"
    data_seed = train_cfg.get("seed", 0) if data_seed is None else data_seed
    ds = load_dataset(spec, size=shape[-1] if image else None, channels=shape[0] if image else None,
                      seed=data_seed)
    if tuple(ds.info.shape) != shape:
        raise KuosanError(f"data '{spec}' has items of shape {ds.info.shape}, the model expects {shape}")
    if text and ds.captions is None:
        raise KuosanError(f"'{pipe.source}' is a text model and data '{spec}' has no captions")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:examples]
    passes = ("own", "empty") if captions == "gain" else (captions,)
    bounds: dict[str, list] = {name: [] for name in passes}
    for start in range(0, len(idx), batch_size):
        batch = idx[start:start + batch_size]
        x0 = ds.batch(batch).to(pipe.device)
        if image:  # the discretised decoder scores the 8-bit grid
            x0 = torch.round((x0 + 1) * 127.5) / 127.5 - 1
        state = g.get_state()
        for name in passes:  # every pass draws the same t and noise (paired)
            g.set_state(state)
            model = pipe.model
            if text:  # each image's caption (or the empty one), encoded once for all timesteps
                texts = ["" if name == "empty" else ds.captions[i] for i in batch.tolist()]
                with torch.no_grad():
                    model = functools.partial(pipe.model, **pipe.model.encode(texts))
            bounds[name].append(variational_bound(
                model, x0, pipe.schedule, prediction=pipe.prediction,
                decoder="discretized" if image else "gaussian", clip_x0=image,
                timesteps=timesteps, generator=g, progress=progress))
    scale = math.prod(shape) * (math.log(2) if image else 1.0)
    per_dim = {name: {k: torch.cat([getattr(b, k) for b in bs]).cpu() / scale
                      for k in ("prior", "diffusion", "decoder", "total")} for name, bs in bounds.items()}
    first = per_dim[passes[0]]
    total = first["total"]
    result = {
        "model": pipe.source, "data": spec, "examples": len(idx),
        "unit": "bits/dim" if image else "nats/dim", "data_seed": data_seed,
        "nll": total.mean().item(), "stderr": stderr(total),
        "terms": {k: first[k].mean().item() for k in ("prior", "diffusion", "decoder")},
        "timesteps": timesteps or pipe.schedule.T - 1,
        **({"captions": passes[0]} if text else {}),
    }
    if captions == "gain":  # empty − own, per image: what its caption is worth
        empty = per_dim["empty"]["total"]
        result.update({"nll_empty": empty.mean().item(), "stderr_empty": stderr(empty),
                       "caption_gain": (empty - total).mean().item(),
                       "caption_gain_stderr": stderr(empty - total)})
    return result


def stderr(values: torch.Tensor) -> float:
    """The standard error of the mean of ``values``: std / √n."""
    return (values.std() / math.sqrt(len(values))).item()
