"""benchmarks/caption_probe.py: its caption draw, its pair-failure breakdown (on rendered images,
whose truth is known) and a run on a tiny text model (structure, not values)."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import benchmark_module

from kuosan.data.shapes import Scene, format_caption, render, sample_scene
from kuosan.guidance import parse_composition
from kuosan.metrics.shapes import parse, score

FLIP = {"to the left of": "to the right of", "to the right of": "to the left of",
        "above": "below", "below": "above"}


@pytest.fixture(scope="module")
def probe():
    yield from benchmark_module("caption_probe")


def test_draw_is_seeded_and_of_the_asked_kinds(probe):
    a = probe.draw_specs(3, {"pair": 5, "count": 2})
    assert {k: len(v) for k, v in a.items()} == {"pair": 5, "count": 2}
    assert all(parse(format_caption(s)).kind == k for k, specs in a.items() for s in specs)
    assert a == probe.draw_specs(3, {"pair": 5, "count": 2})
    assert a != probe.draw_specs(4, {"pair": 5, "count": 2})


def test_pair_breakdown_on_rendered_pairs(probe):
    rng = np.random.default_rng(0)
    specs = [s for s in probe.draw_specs(5, {"pair": 40})["pair"]
             if s.objects[0].shape != s.objects[1].shape]  # no "a circle above a circle"
    images = [render(sample_scene(s, rng)) for s in specs]
    true = probe.pair_breakdown([score(im, s) for im, s in zip(images, specs, strict=True)])
    assert true == {"two objects %": 100.0, "attributes % (of two)": 100.0, "relation % (of two)": 100.0}
    flipped = [dataclasses.replace(s, relation=FLIP[s.relation]) for s in specs]
    wrong = probe.pair_breakdown([score(im, s) for im, s in zip(images, flipped, strict=True)])
    assert wrong["two objects %"] == 100.0 and wrong["attributes % (of two)"] == 100.0
    assert wrong["relation % (of two)"] == 0.0
    blank = np.full((32, 32, 3), 255, np.uint8)  # nothing drawn: no two objects, nothing to split
    empty = probe.pair_breakdown([score(blank, specs[0])])
    assert empty["two objects %"] == 0.0 and np.isnan(empty["relation % (of two)"])


def test_bad_counts_name_the_kind(probe):
    import argparse

    assert probe.kind_counts("pair=3, single=1") == {"pair": 3, "single": 1}
    for text, word in (("pairs=3", "pairs"), ("pair=0", "pair"), ("pair", "KIND=N")):
        with pytest.raises(argparse.ArgumentTypeError, match=word):
            probe.kind_counts(text)


def test_probe_runs_on_a_tiny_model(probe, tiny_text_run, capsys):
    threads = str(torch.get_num_threads())  # the flag's path, without changing the process's state
    probe.main(["--model", str(tiny_text_run), "--counts", "pair=2,single=1,count=1", "--steps", "2",
                "--threads", threads, "--prompts", "layout", "--part-weight", "0.5", "--sampler", "ddim"])
    lines = capsys.readouterr().out.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    cells = [c.strip() for c in lines[top].strip("|").split("|")]
    row = dict(zip(cells, (c.strip() for c in lines[top + 2].strip("|").split("|")), strict=True))
    assert row["model"] == str(tiny_text_run)
    assert row["pair"].endswith("/2") and row["single"].endswith("/1") and row["count"].endswith("/1")
    assert {"two objects %", "attributes % (of two)", "relation % (of two)"} <= set(row)
    assert "2 steps, sampler ddim, guidance 3.0, pair prompts layout (part weight 0.5), caption seed 21" in lines[-1]


def test_composed_pair_prompts_state_the_same_picture(probe):
    for spec in probe.draw_specs(8, {"pair": 12})["pair"]:
        assert probe.prompt_for(spec) == format_caption(spec)
        mirror, = [parse(p) for p, _ in parse_composition(probe.prompt_for(spec, "paraphrase"))[1:]]
        assert mirror.objects == spec.objects[::-1] and mirror.relation == FLIP[spec.relation]
        parts = parse_composition(probe.prompt_for(spec, "caption+layout", 0.5))
        assert [w for _, w in parts] == [0.5] * 3 and parse(parts[0][0]) == spec
        alone = [parse(p) for p, _ in parts[1:]]
        assert all(a.kind == "single" and a.background == spec.background for a in alone)
        assert [dataclasses.replace(a.objects[0], position=None) for a in alone] == list(spec.objects)
        places = [a.objects[0].position for a in alone]
        assert places in (["left", "right"], ["right", "left"], ["top", "bottom"], ["bottom", "top"])
        # the places satisfy the relation: render them and score against the caption
        scene = [sample_scene(a, np.random.default_rng(0)).objects[0] for a in alone]
        if spec.objects[0].shape != spec.objects[1].shape:
            image = render(Scene(tuple(scene), spec.background, 32))
            assert score(image, spec).relation
    single = probe.draw_specs(8, {"single": 1})["single"][0]
    assert probe.prompt_for(single, "layout") == format_caption(single)
