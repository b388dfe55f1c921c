"""EmojiWorld (kuosan.data.emoji_scenes) and its scorer (kuosan.metrics.emoji_scenes), on
stand-in emoji: each concept is a disc of its own colour, so a stand-in recogniser can read a
crop's concept from its colour, and the scorer's logic is checked without the emoji sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kuosan.data.emoji import EmojiEntry
from kuosan.data.emoji_scenes import (
    GAP,
    SIDES,
    format_caption,
    is_held_out_pair,
    make_scene_dataset,
    random_scene,
    render_scene,
    scene_concepts,
)
from kuosan.data.shapes import POSITIONS
from kuosan.errors import KuosanError
from kuosan.metrics.emoji import RecogniserConfig, _hex, concept_key
from kuosan.metrics.emoji_scenes import (
    SceneSpec,
    concept_index,
    find_emoji,
    parse,
    score_scene,
    summarise_scenes,
)

NAMES = ["red apple", "fox face", "fire engine", "sun with face", "dog face", "pizza", "rocket",
         "tulip", "ice cube", "owl"]
COLOURS = [(220, 30, 30), (240, 140, 20), (200, 0, 0), (240, 210, 0), (150, 90, 40),
           (250, 180, 60), (40, 70, 220), (230, 60, 160), (60, 200, 230), (110, 70, 30)]
STYLES = ("flat", "glossy")


def _entry(i: int, style: str, name: str | None = None, tone: str | None = None,
           held_out: bool = False) -> EmojiEntry:
    cps = (0x1F400 + i,)
    name = name or NAMES[i]
    return EmojiEntry(cps, chr(cps[0]), name, style, (), tone, held_out, f"{name}, {style} style")


def _world(size: int = 64) -> tuple[list[EmojiEntry], torch.Tensor]:
    """Stand-in entries (every concept in both styles) and their pictures: a disc of the
    concept's colour (darker in glossy) on white, filling the frame less its margin."""
    entries = [_entry(i, s) for i in range(len(NAMES)) for s in STYLES]
    yy, xx = np.mgrid[:size, :size] + 0.5
    disc = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 <= (0.44 * size) ** 2
    pictures = torch.full((len(entries), 3, size, size), 255, dtype=torch.uint8)
    for n, e in enumerate(entries):
        colour = np.array(COLOURS[NAMES.index(e.name)]) * (0.8 if e.style == "glossy" else 1)
        for c in range(3):
            pictures[n, c][torch.from_numpy(disc)] = int(colour[c])
    return entries, pictures


class ColourRecogniser:
    """A stand-in for kuosan.metrics.emoji.Recogniser: a crop's concept is the colour nearest
    its ink's mean (flat colours), its style glossy when darker than the flat colour."""

    def __init__(self, entries: list[EmojiEntry]):
        keys = sorted({_hex(concept_key(e.code_points)) for e in entries})
        self.config = RecogniserConfig(styles=STYLES, concepts=tuple(keys), size=32)

    def predict(self, pictures: torch.Tensor) -> dict[str, torch.Tensor]:
        x = pictures.float().permute(0, 2, 3, 1).reshape(len(pictures), -1, 3)
        ink = (255 - x.min(-1).values) > 24
        median = torch.stack([x[i][ink[i]].median(0).values for i in range(len(x))])
        palette = torch.tensor(COLOURS, dtype=torch.float32)[:, None] * torch.tensor([1.0, 0.8])[:, None]
        d = ((median[:, None, None] - palette[None]) ** 2).sum(-1)  # (N, concept, style)
        return {"concept": -d.min(2).values, "style": -d.min(1).values}


def _scenes(n: int, size: int = 64, **kw) -> list:
    entries, _ = _world(size)
    concepts = scene_concepts(entries)
    return [random_scene(np.random.default_rng(i), entries, concepts, size, **kw) for i in range(n)]


def test_captions_parse_back_to_their_scenes():
    entries, _ = _world()
    for scene in _scenes(60):
        spec = parse(format_caption(scene, entries))
        assert spec.kind == scene.kind
        assert spec.names == tuple(entries[o.entry].name for o in scene.objects)
        assert spec.style == scene.style
        assert (spec.relation, spec.position) == (scene.relation, scene.position)


def test_caption_examples():
    entries, _ = _world()
    assert parse("an owl, a pizza and a rocket in a row, flat style") == SceneSpec(
        "row", ("owl", "pizza", "rocket"), "flat")
    assert parse("a red apple to the left of a fox face, glossy style") == SceneSpec(
        "pair", ("red apple", "fox face"), "glossy", relation="to the left of")
    assert parse("a tulip in the center, flat style").position == "center"
    assert parse("a tulip at the bottom right, flat style").position == "bottom right"
    for bad in ("red apple to the left of a fox face", "a red apple near a fox face, flat style",
                "a fox, an owl in a row, flat style"):
        with pytest.raises(KuosanError, match="cannot parse the scene caption"):
            parse(bad)
    scene = _scenes(1, kind="pair")[0]
    assert format_caption(scene, entries).startswith(("a ", "an "))


@pytest.mark.parametrize("kind", ["single", "pair", "row"])
def test_geometry(kind):
    size = 64
    gap = round(GAP * size)
    for scene in _scenes(40, size, kind=kind):
        lo, hi = SIDES[kind]
        tiles = scene.objects
        for o in tiles:
            assert 0 <= o.x and o.x + o.side <= size and 0 <= o.y and o.y + o.side <= size
            assert round(lo * size) <= o.side <= round(hi * size)
        for n, a in enumerate(tiles):  # tiles never overlap and keep the gap
            for b in tiles[n + 1:]:
                assert (a.x + a.side + gap <= b.x or b.x + b.side + gap <= a.x
                        or a.y + a.side + gap <= b.y or b.y + b.side + gap <= a.y)
        if kind == "single":
            col, row = POSITIONS[scene.position]
            cx, cy = tiles[0].centre
            assert (int(3 * cx / size), int(3 * cy / size)) == (col, row)
        elif kind == "row":
            assert tiles[0].x + tiles[0].side < tiles[1].x < tiles[1].x + tiles[1].side < tiles[2].x
        else:
            a, b = tiles
            assert {"to the left of": a.x + a.side < b.x, "to the right of": b.x + b.side < a.x,
                    "above": a.y + a.side < b.y, "below": b.y + b.side < a.y}[scene.relation]


def test_held_out_pairs_and_what_a_scene_may_hold():
    entries, _ = _world()
    entries += [_entry(20, "flat", "woman: dark skin tone", tone="dark skin tone"),
                _entry(21, "flat", "sun behind cloud and rain"), _entry(22, "glossy", "owl", held_out=True),
                _entry(23, "flat", "soon with rightwards arrow above"),
                EmojiEntry((0x1F3FB,), "", "light skin tone", "flat", (), None, False, "")]
    allowed = scene_concepts(entries)
    assert {entries[i].name for i in allowed["flat"]} == set(NAMES)
    assert len(allowed["glossy"]) == len(NAMES)
    pairs = [(a, b) for a in range(len(NAMES)) for b in range(a + 1, len(NAMES))
             if is_held_out_pair(entries[2 * a], entries[2 * b])]
    assert pairs, "the stand-ins need a held-out pair"
    for scene in _scenes(40, kind="pair") + _scenes(40, kind="row"):
        objs = [entries[o.entry] for o in scene.objects]
        assert not any(is_held_out_pair(a, b) for n, a in enumerate(objs) for b in objs[n + 1:])
    for scene in _scenes(20, kind="pair", holdout="only"):
        assert is_held_out_pair(*(entries[o.entry] for o in scene.objects))
    with pytest.raises(KuosanError, match="no pair to hold out"):
        _scenes(1, kind="single", holdout="only")


def test_dataset_is_deterministic_per_scene_and_checks_its_input():
    entries, pictures = _world()
    items, captions, scenes = make_scene_dataset(12, pictures, entries, seed=3)
    items2, captions2, _ = make_scene_dataset(5, pictures, entries, seed=3)
    assert items.shape == (12, 3, 64, 64) and items.dtype == torch.uint8
    assert torch.equal(items[:5], items2) and captions[:5] == captions2
    assert captions != make_scene_dataset(12, pictures, entries, seed=4)[1]
    for item, scene in zip(items, scenes, strict=True):  # white outside the tiles
        outside = torch.ones(64, 64, dtype=torch.bool)
        for o in scene.objects:
            outside[o.y:o.y + o.side, o.x:o.x + o.side] = False
        assert (item[:, outside] == 255).all()
    with pytest.raises(KuosanError, match="too small"):
        make_scene_dataset(2, pictures[:, :, :16, :16], entries)
    with pytest.raises(KuosanError, match="non-negative integer"):
        make_scene_dataset(-1, pictures, entries)
    with pytest.raises(KuosanError, match="unknown scene kind"):
        make_scene_dataset(1, pictures, entries, kind="crowd")


def test_find_emoji_boxes_each_tile_and_drops_specks():
    _, pictures = _world()
    for scene in _scenes(30):
        pixels = render_scene(scene, pictures)
        pixels[0, 0] = (0, 0, 0)  # a one-pixel speck is not an emoji
        boxes = find_emoji(pixels)
        assert len(boxes) == len(scene.objects)
        for o in scene.objects:  # each tile's disc has a box inside the tile
            assert any(o.x <= x0 and x1 <= o.x + o.side and o.y <= y0 and y1 <= o.y + o.side
                       for x0, y0, x1, y1 in boxes)
    pieces = np.full((64, 64, 3), 255, dtype=np.uint8)
    pieces[20:30, 20:26] = pieces[20:30, 27:33] = (0, 0, 200)  # one emoji in two pieces, 1 px apart
    assert find_emoji(pieces) == [(20, 20, 33, 30)]
    with pytest.raises(KuosanError, match="uint8"):
        find_emoji(pieces.astype(np.float32))


def test_score_scene_right_wrong_layout_wrong_emoji():
    entries, pictures = _world()
    recogniser = ColourRecogniser(entries)
    index = concept_index(entries, recogniser)
    assert set(index) == set(NAMES)
    right, layout, emoji = [], [], []
    for scene in _scenes(24, kind="pair") + _scenes(12, kind="row"):
        pixels = render_scene(scene, pictures)
        spec = parse(format_caption(scene, entries))
        right.append(score_scene(recogniser, pixels, spec, index, top_k=1))
        swapped = spec.names[::-1] if spec.kind == "pair" else (spec.names[1], spec.names[0],
                                                                spec.names[2])
        layout.append(score_scene(recogniser, pixels, SceneSpec(
            spec.kind, swapped, spec.style, spec.relation), index, top_k=1))
        other = next(n for n in NAMES if n not in spec.names)
        emoji.append(score_scene(recogniser, pixels, SceneSpec(
            spec.kind, (other, *spec.names[1:]), spec.style, spec.relation), index, top_k=1))
    assert summarise_scenes(right)["satisfied"] == 100
    s = summarise_scenes(layout)
    assert s["satisfied"] == 0 and s["concepts_any"] == 100 and s["count"] == 100
    s = summarise_scenes(emoji)
    assert s["satisfied"] == 0 and 0 < s["concepts_any"] < 100
    # the style is read: the same picture with the other style's caption is not satisfied
    scene = _scenes(1, kind="pair")[0]
    spec = parse(format_caption(scene, entries))
    other = "glossy" if spec.style == "flat" else "flat"
    result = score_scene(recogniser, render_scene(scene, pictures),
                         SceneSpec("pair", spec.names, other, spec.relation), index, top_k=1)
    assert not result.style and not result.satisfied and result.concepts == 1


def test_score_scene_counts_and_positions():
    entries, pictures = _world()
    recogniser = ColourRecogniser(entries)
    index = concept_index(entries, recogniser)
    blank = np.full((64, 64, 3), 255, dtype=np.uint8)
    empty = score_scene(recogniser, blank, SceneSpec("single", ("owl",), "flat",
                                                     position="center"), index, top_k=1)
    assert empty.found == 0 and not empty.satisfied
    for scene in _scenes(20, kind="single"):
        pixels = render_scene(scene, pictures)
        spec = parse(format_caption(scene, entries))
        assert score_scene(recogniser, pixels, spec, index, top_k=1).satisfied
        col, row = POSITIONS[spec.position]
        moved = next(p for p, (c, r) in POSITIONS.items() if abs(c - col) + abs(r - row) >= 2)
        wrong = score_scene(recogniser, pixels, SceneSpec("single", spec.names, spec.style,
                                                          position=moved), index, top_k=1)
        assert not wrong.layout and not wrong.satisfied
        pair = score_scene(recogniser, pixels, SceneSpec("pair", (spec.names[0], "owl"),
                                                         spec.style, "above"), index, top_k=1)
        assert not pair.count and not pair.satisfied
    with pytest.raises(KuosanError, match="does not know"):
        score_scene(recogniser, blank, SceneSpec("single", ("unicorn",), "flat",
                                                 position="top"), index, top_k=1)


@pytest.fixture()
def bench():
    from conftest import benchmark_module

    yield from benchmark_module("emoji_scenes")


def test_benchmark_wrong_captions_differ_and_groups_summarise(bench):
    entries, _ = _world()
    concepts = scene_concepts(entries)
    drawn = bench.draw_scenes(3, 0, 64, entries, concepts)
    assert [(g, k) for g, k, _ in drawn[::3]] == [(g, k) for g, k, _ in bench.GROUPS]
    names = sorted(NAMES)
    rng = np.random.default_rng(0)
    for _, _, scene in drawn:
        spec = parse(format_caption(scene, entries))
        moved = bench.wrong_layout(spec)
        assert moved != spec and sorted(moved.names) == sorted(spec.names)
        other = bench.wrong_emoji(spec, rng, names)
        assert other.names[0] not in spec.names and other.names[1:] == spec.names[1:]
    center = SceneSpec("single", ("owl",), "flat", position="center")
    assert bench.wrong_layout(center).position == "top left"
    fake = [type("S", (), {k: (i % 2 == 0) for k in bench.KEYS})() for i in range(len(drawn))]
    rows = bench.rows_by_group(drawn, fake)
    assert rows["all"]["n"] == len(drawn) and rows["seen"]["n"] == 9 and rows["held-out pair, row"]["n"] == 3
    assert "| all | 15 |" in "\n".join(bench.table("t", rows))


def test_benchmark_generates_one_picture_per_caption_at_the_model_size(bench, tiny_text_run):
    captions = ["a red circle", "a blue square", "a green cross"]
    images = bench.generate(str(tiny_text_run), captions, steps=2, guidance=None, seed=0, size=32)
    assert len(images) == 3 and all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)
    again = bench.generate(str(tiny_text_run), captions[1:], steps=2, guidance=None, seed=1, size=32)
    assert np.array_equal(images[1], again[0])  # image i is seeded seed + i
    with pytest.raises(KuosanError, match="--size"):
        bench.generate(str(tiny_text_run), captions, steps=2, guidance=None, seed=0, size=64)


def test_benchmark_composes_scenes_with_a_model_of_single_emoji(bench):
    captions = ["a red apple to the left of a fox face, glossy style", "an owl at the top, flat style"]
    images = bench.generate("emoji-32", captions, steps=2, guidance=None, seed=0, size=64,
                            compose=True)
    assert len(images) == 2 and all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in images)
    # the same call again draws the same pictures (the same shapes and seeds: exact; how image i
    # is seeded is tested in test_scenes.py, in fp32, since this one runs in `auto` precision)
    again = bench.generate("emoji-32", captions, steps=2, guidance=None, seed=0, size=64,
                           compose=True)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))
    assert (images[1][40:] == 255).all()  # the owl at the top: the bottom stays white
