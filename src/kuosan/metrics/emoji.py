"""An emoji recogniser: which concept, style, skin tone and gender a 32×32 picture shows.

The scorer of ``benchmarks/emoji_probe.py`` (docs/emoji-32.md). A small CNN with four heads over
one shared feature vector f(x) (192 channels average-pooled to 2×2: 768 units):

- concept: softmax over the catalogue's concepts, where variants that differ only by skin tone or
  gender are one concept ("woman firefighter: dark skin tone" -> "firefighter"): tone and gender
  are scored by their own heads (``concept_key``);
- style: the styles it was trained on (flat, glossy, ...);
- tone: none or one of the five skin tones;
- gender: none, woman, man or person (``gender_of``; "person" = the neutral one of a concept that
  also comes as woman or man).

It is trained on every real picture of the catalogue, held-out (concept, style) and (role, tone)
pairs included (the scorer is not the generator), under random augmentation (``augment``): an
affine map (scale 0.9..1.1, shift ±2 px, white fill), a blur mix, Gaussian noise and a grey
brightness/contrast jitter that leaves hue alone (so skin tones keep their colour). The loss is
the sum of the four cross-entropies. ``load_or_train`` caches the weights (safetensors) and config
(JSON) under ``$KUOSAN_CACHE/emoji/recogniser-KEY/``, KEY hashing the emoji sources (as the data
cache does), the styles, the size and the training config.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from kuosan.data import emoji as emoji_data
from kuosan.data.emoji import DEFAULT_STYLES, TONES, EmojiEntry
from kuosan.defaults import cache_folder
from kuosan.errors import KuosanError
from kuosan.images import _atomic_write

__all__ = [
    "GENDERS",
    "TONE_NAMES",
    "Recogniser",
    "RecogniserConfig",
    "augment",
    "concept_key",
    "entry_labels",
    "evaluate",
    "gender_of",
    "load_or_train",
    "real_pictures",
    "train_recogniser",
]

TONE_NAMES = ("none", *TONES.values())
GENDERS = ("none", "woman", "man", "person")
PERSON = {0x1F468: "man", 0x1F469: "woman", 0x1F9D1: "person"}
SIGNS = {0x2640: "woman", 0x2642: "man"}
ZWJ, VS16 = 0x200D, 0xFE0F
CODE_VERSION = 2  # bump when the network, labels or augmentation change


def _people(cps: tuple[int, ...]) -> int:
    return sum(cp in PERSON or cp in (0x1F466, 0x1F467) for cp in cps)  # adults, boy, girl


def concept_key(cps: tuple[int, ...]) -> tuple[int, ...]:
    """The concept of an emoji, tone and gender set aside: skin-tone modifiers and U+FE0F dropped,
    a ZWJ gender sign (♀/♂) dropped, and woman/man (U+1F469/1F468) read as person (U+1F9D1) in
    one-person sequences. Families and couples keep their people."""
    out = [cp for cp in cps if cp not in TONES and cp != VS16] or list(cps)  # a lone modifier
    if _people(tuple(out)) > 1 or len(out) == 1:
        return tuple(out)
    kept: list[int] = []
    for cp in out:
        if cp in SIGNS and kept and kept[-1] == ZWJ:
            kept.pop()
        else:
            kept.append(0x1F9D1 if cp in (0x1F468, 0x1F469) else cp)
    return tuple(kept)


def gender_of(cps: tuple[int, ...]) -> str:
    """'woman'/'man' from a ZWJ gender sign or a woman/man base, 'person' for U+1F9D1, else
    'none' (one code point other than those three, or more than one person)."""
    cps = tuple(cp for cp in cps if cp not in TONES and cp != VS16) or cps
    if _people(cps) > 1:
        return "none"
    if len(cps) > 1 and (signs := [SIGNS[cp] for cp in cps if cp in SIGNS]):
        return signs[-1]
    return PERSON.get(cps[0], "none")


@dataclass(frozen=True)
class RecogniserConfig:
    """How the recogniser was built; saved as config.json next to its weights."""

    styles: tuple[str, ...] = DEFAULT_STYLES
    concepts: tuple[str, ...] = ()  # concept keys as "1f9d1-200d-1f692"
    concept_names: tuple[str, ...] = ()
    size: int = 32
    widths: tuple[int, ...] = (24, 48, 96, 96, 192)
    strides: tuple[int, ...] = (2, 1, 2, 1, 2)
    epochs: int = 7
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    data_key: str = ""
    train_seconds: float = 0.0  # wall clock; extra["train_cpu_seconds"]: CPU time of the process
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> RecogniserConfig:
        d = json.loads(text)
        tuples = ("styles", "concepts", "concept_names", "widths", "strides")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})


def _hex(key: tuple[int, ...]) -> str:
    return "-".join(f"{cp:x}" for cp in key)


def entry_labels(
    entries: list[EmojiEntry], styles: tuple[str, ...], concepts: tuple[str, ...] | None = None
) -> tuple[dict[str, np.ndarray], tuple[str, ...], tuple[str, ...]]:
    """({'concept', 'style', 'tone', 'gender'}: int64 (N,), concept keys, concept names).
    Concepts are the sorted ``concept_key``s of ``entries`` unless given (then unknown ones get
    -1). Gender 'none' becomes 'man'/'woman'/'person' (by its name's first word) in a concept
    that also has a gendered variant."""
    keys = [_hex(concept_key(e.code_points)) for e in entries]
    if concepts is None:
        concepts = tuple(sorted(set(keys)))
    best: dict[str, tuple[bool, int, str]] = {}  # the exact emoji's name, else the shortest
    for k, e in zip(keys, entries, strict=True):
        base = e.name.split(":")[0] if e.tone else e.name
        rank = (_hex(tuple(c for c in e.code_points if c != VS16)) != k, len(base), base)
        best[k] = min(best.get(k, rank), rank)
    names = {k: r[2] for k, r in best.items()}
    genders = [gender_of(e.code_points) for e in entries]
    gendered = {k for k, g in zip(keys, genders, strict=True) if g in ("woman", "man")}
    for i, (k, e) in enumerate(zip(keys, entries, strict=True)):
        if genders[i] == "none" and k in gendered:
            word = e.name.split()[0]
            genders[i] = word if word in ("woman", "man") else "person"
    index = {k: i for i, k in enumerate(concepts)}
    labels = {
        "concept": np.array([index.get(k, -1) for k in keys], dtype=np.int64),
        "style": np.array([styles.index(e.style) if e.style in styles else -1 for e in entries]),
        "tone": np.array([TONE_NAMES.index(e.tone or "none") for e in entries], dtype=np.int64),
        "gender": np.array([GENDERS.index(g) for g in genders], dtype=np.int64),
    }
    return labels, concepts, tuple(names.get(k, k) for k in concepts)


class RecogniserNet(nn.Module):
    """Conv3×3·BN·ReLU blocks (``widths``, ``strides``), average pool to 2×2 (where is kept:
    emoji are centred), four linear heads."""

    def __init__(self, cfg: RecogniserConfig):
        super().__init__()
        layers, c = [], 3
        for w, s in zip(cfg.widths, cfg.strides, strict=True):
            layers += [nn.Conv2d(c, w, 3, s, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2), nn.Flatten())
        c = 4 * c
        self.heads = nn.ModuleDict({
            "concept": nn.Linear(c, len(cfg.concepts)), "style": nn.Linear(c, len(cfg.styles)),
            "tone": nn.Linear(c, len(TONE_NAMES)), "gender": nn.Linear(c, len(GENDERS))})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        f = self.body(x * 2 - 1)
        return {"features": f, **{k: h(f) for k, h in self.heads.items()}}


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random views of pictures in [0, 1] (B, 3, H, W): scale 0.9..1.1 and shift ±2 px (white
    fill, bilinear), a mix with a 3×3 blur (weight 0..0.6), grey contrast ×0.95..1.05 and
    brightness ±0.02 (the same on R, G, B: hue untouched), Gaussian noise of std 0..0.03."""
    b, _, h, _ = x.shape
    u = torch.rand(b, 7, generator=generator)
    scale = 0.9 + 0.2 * u[:, 0]
    shift = (u[:, 1:3] * 2 - 1) * (2 * 2 / h)  # ±2 px in [-1, 1] grid units
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x - 1, grid, align_corners=False) + 1
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    a = (0.6 * u[:, 3]).view(b, 1, 1, 1)
    x = (1 - a) * x + a * blur
    contrast = (0.95 + 0.1 * u[:, 4]).view(b, 1, 1, 1)
    bright = (0.04 * u[:, 5] - 0.02).view(b, 1, 1, 1)
    x = 0.5 + (x - 0.5) * contrast + bright
    noise = torch.randn(x.shape, generator=generator) * (0.03 * u[:, 6]).view(b, 1, 1, 1)
    return (x + noise).clamp(0, 1)


def _as_float(pictures: Tensor) -> Tensor:
    return pictures.float() / 255 if pictures.dtype == torch.uint8 else pictures.float()


class Recogniser:
    """A trained ``RecogniserNet`` with its config; ``predict`` on uint8 or [0, 1] pictures."""

    def __init__(self, net: RecogniserNet, config: RecogniserConfig):
        self.net, self.config = net.eval(), config

    @torch.no_grad()
    def predict(self, pictures: Tensor, batch_size: int = 256) -> dict[str, Tensor]:
        """Logits of every head and the features, for (N, 3, size, size) pictures."""
        if pictures.shape[1:] != (3, self.config.size, self.config.size):
            raise KuosanError(f"the emoji recogniser takes (N, 3, {self.config.size}, "
                              f"{self.config.size}) pictures; got {tuple(pictures.shape)}")
        outs = [self.net(_as_float(pictures[i:i + batch_size]))
                for i in range(0, len(pictures), batch_size)]
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        data = save_safetensors({k: v.contiguous() for k, v in self.net.state_dict().items()})
        _atomic_write(folder / "model.safetensors", lambda f: f.write(data))
        text = self.config.to_json().encode("utf-8")
        _atomic_write(folder / "config.json", lambda f: f.write(text))

    @classmethod
    def load(cls, folder: Path) -> Recogniser:
        try:
            config = RecogniserConfig.from_json((folder / "config.json").read_text("utf-8"))
            net = RecogniserNet(config)
            net.load_state_dict(load_safetensors((folder / "model.safetensors").read_bytes()))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise KuosanError(f"unreadable emoji recogniser {folder} ({e})") from e
        return cls(net, config)


def train_recogniser(
    pictures: Tensor, labels: dict[str, np.ndarray], config: RecogniserConfig,
    progress: bool = False,
) -> Recogniser:
    """Train on (N, 3, size, size) uint8 ``pictures`` with their ``entry_labels``: AdamW,
    one-cycle learning rate, ``config.epochs`` passes of fresh ``augment`` views, batches and
    weights drawn from ``config.seed``; labels of -1 are left out of their loss."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    net = RecogniserNet(config)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = len(pictures)
    per_epoch = max(1, -(-n // config.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.epochs * per_epoch)
    targets = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in labels.items()}
    start, cpu = time.perf_counter(), time.process_time()
    net.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, config.batch_size):
            idx = order[i:i + config.batch_size]
            out = net(augment(_as_float(pictures[idx]), gen))
            loss = sum(F.cross_entropy(out[k], t[idx], ignore_index=-1)
                       for k, t in targets.items() if (t[idx] >= 0).any())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if progress:
            print(f"recogniser epoch {epoch + 1}/{config.epochs}: loss {total / n:.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    config = replace(config, train_seconds=round(time.perf_counter() - start, 1),
                     extra={**config.extra, "train_cpu_seconds": round(time.process_time() - cpu, 1),
                            "threads": torch.get_num_threads()})
    return Recogniser(net, config)


def _topk_hits(logits: Tensor, target: Tensor, k: int) -> Tensor:
    return (logits.topk(min(k, logits.shape[1]), dim=1).indices == target[:, None]).any(1)


def score(recogniser: Recogniser, pictures: Tensor, labels: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """Per picture (bool tensors): 'top1', 'top5' (concept), 'style', 'tone', 'gender' right,
    and 'has_tone' / 'has_gender' (whether that attribute is scored: a tone, a woman/man/person)."""
    out = recogniser.predict(pictures)
    t = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in labels.items()}
    return {"top1": _topk_hits(out["concept"], t["concept"], 1),
            "top5": _topk_hits(out["concept"], t["concept"], 5),
            "style": out["style"].argmax(1) == t["style"],
            "tone": out["tone"].argmax(1) == t["tone"],
            "gender": out["gender"].argmax(1) == t["gender"],
            "has_tone": t["tone"] > 0, "has_gender": t["gender"] > 0}


def summarise(hits: dict[str, Tensor], mask: Tensor | None = None) -> dict[str, float]:
    """Percentages over the pictures in ``mask``: top1, top5, style; tone over those with a tone,
    gender over those with a gender (NaN where none); and n."""
    mask = torch.ones_like(hits["top1"]) if mask is None else mask

    def pct(key: str, where: Tensor) -> float:
        return 100 * float(hits[key][where].float().mean()) if where.any() else float("nan")

    return {"n": int(mask.sum()), "top1": pct("top1", mask), "top5": pct("top5", mask),
            "style": pct("style", mask), "tone": pct("tone", mask & hits["has_tone"]),
            "gender": pct("gender", mask & hits["has_gender"])}


def evaluate(
    recogniser: Recogniser, pictures: Tensor, labels: dict[str, np.ndarray],
    groups: dict[str, np.ndarray], seed: int = 1, views: int = 1,
) -> dict[str, dict[str, float]]:
    """``summarise`` of ``views`` fresh augmentations (seed 1 by default; training uses 0)
    of the real pictures, overall ('all') and for each boolean mask in ``groups``."""
    gen = torch.Generator().manual_seed(seed)
    hits: dict[str, list[Tensor]] = {}
    for _ in range(views):
        for k, v in score(recogniser, augment(_as_float(pictures), gen), labels).items():
            hits.setdefault(k, []).append(v)
    cat = {k: torch.cat(v) for k, v in hits.items()}
    rows = {"all": summarise(cat)}
    for name, m in groups.items():
        rows[name] = summarise(cat, torch.from_numpy(np.asarray(m, dtype=bool)).repeat(views))
    return rows


def _cache_root(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return cache_folder("emoji")


def real_pictures(
    styles: tuple[str, ...] = DEFAULT_STYLES, size: int = 32, cache_dir: Path | None = None,
    progress: bool = True, sources: emoji_data.EmojiSources | None = None,
) -> tuple[Tensor, list[EmojiEntry], str]:
    """Every picture of ``emoji_catalogue(styles)``, held-out ones included: ((N, 3, size, size)
    uint8, entries, data key); cached beside the data (``emoji-all-KEY``)."""
    return emoji_data.catalogue_pictures(size, styles, sources, _cache_root(cache_dir), progress,
                                         held_out=True)


def load_or_train(
    styles: tuple[str, ...] = DEFAULT_STYLES, size: int = 32, cache_dir: Path | None = None,
    config: RecogniserConfig | None = None, progress: bool = True,
    sources: emoji_data.EmojiSources | None = None,
) -> tuple[Recogniser, Tensor, list[EmojiEntry]]:
    """The recogniser of the installed sources (trained on first use, then read from the cache),
    with every real picture and its catalogue entry."""
    pictures, entries, data_key = real_pictures(styles, size, cache_dir, progress, sources)
    config = replace(config or RecogniserConfig(), styles=tuple(styles), size=size,
                     data_key=data_key, concepts=(), concept_names=())
    recipe = {**asdict(config), "code": CODE_VERSION, "torch": torch.__version__.split("+")[0]}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    folder = _cache_root(cache_dir) / f"recogniser-{key}"
    if (folder / "model.safetensors").is_file():
        return Recogniser.load(folder), pictures, entries
    labels, concepts, names = entry_labels(entries, tuple(styles))
    config = replace(config, concepts=concepts, concept_names=names)
    recogniser = train_recogniser(pictures, labels, config, progress)
    recogniser.save(folder)
    return recogniser, pictures, entries
