"""The emoji recogniser (kuosan.metrics.emoji) and benchmarks/emoji_probe.py, on tiny stand-in
data: synthetic catalogue entries with drawn pictures, and the stand-in sources of test_emoji
(no apt or npm source needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import benchmark_module

from kuosan.data.emoji import STYLES, TONES, EmojiEntry
from kuosan.errors import KuosanError
from kuosan.metrics.emoji import (
    GENDERS,
    TONE_NAMES,
    Recogniser,
    RecogniserConfig,
    concept_key,
    entry_labels,
    evaluate,
    gender_of,
    load_or_train,
    train_recogniser,
)

WOMAN, MAN, PERSON, ZWJ, FIRE_ENGINE, RAISING_HAND = 0x1F469, 0x1F468, 0x1F9D1, 0x200D, 0x1F692, 0x1F64B
DARK = 0x1F3FF
TINY = RecogniserConfig(widths=(16, 32, 32), strides=(2, 2, 2), epochs=60, batch_size=8, lr=1e-2)


@pytest.fixture(scope="module")
def probe():
    yield from benchmark_module("emoji_probe")


def entry(cps: tuple[int, ...], name: str, style: str, tone: str | None = None,
          held_out: bool = False) -> EmojiEntry:
    name = f"{name}: {tone}" if tone else name
    return EmojiEntry(cps, "".join(map(chr, cps)), name, style, (), tone, held_out,
                      f"{name}, {style} style")


def test_concept_key_and_gender_set_tone_and_gender_aside():
    firefighters = [(WOMAN, ZWJ, FIRE_ENGINE), (MAN, DARK, ZWJ, FIRE_ENGINE), (PERSON, ZWJ, FIRE_ENGINE)]
    assert {concept_key(k) for k in firefighters} == {(PERSON, ZWJ, FIRE_ENGINE)}
    assert [gender_of(k) for k in firefighters] == ["woman", "man", "person"]
    woman_raising = (RAISING_HAND, DARK, ZWJ, 0x2640, 0xFE0F)
    assert concept_key(woman_raising) == (RAISING_HAND,) and gender_of(woman_raising) == "woman"
    family = (MAN, ZWJ, WOMAN, ZWJ, 0x1F466)  # three people: no gender, its own concept
    assert concept_key(family) == family and gender_of(family) == "none"
    assert gender_of((0x2640,)) == "none"  # the female sign alone is a symbol
    assert concept_key((DARK,)) == (DARK,)  # a lone skin-tone swatch keeps its code point


def test_entry_labels_group_variants_and_name_the_neutral_one_person():
    entries = [entry((RAISING_HAND,), "happy person raising one hand", "flat"),
               entry((RAISING_HAND, ZWJ, 0x2640, 0xFE0F), "woman raising hand", "flat"),
               entry((RAISING_HAND, DARK), "happy person raising one hand", "glossy", TONES[DARK]),
               entry((0x1F34E,), "red apple", "glossy")]
    labels, concepts, names = entry_labels(entries, ("flat", "glossy"))
    assert concepts == ("1f34e", "1f64b") and names == ("red apple", "happy person raising one hand")
    assert labels["concept"].tolist() == [1, 1, 1, 0]
    assert [GENDERS[g] for g in labels["gender"]] == ["person", "woman", "person", "none"]
    assert [TONE_NAMES[t] for t in labels["tone"]] == ["none", "none", "dark skin tone", "none"]
    assert labels["style"].tolist() == [0, 0, 1, 1]
    unknown, _, _ = entry_labels(entries[3:], ("flat", "glossy"), concepts=("1f64b",))
    assert unknown["concept"].tolist() == [-1]


def tiny_world() -> tuple[torch.Tensor, list[EmojiEntry]]:
    """6 concepts (a coloured square at one of six places) × 2 styles (flat: filled; glossy: with
    a black frame) × tone none or one of two tones (the square's colour) for concept 0; held out
    as the contract says (U+1F44E never flat, U+1F44F never glossy) and the dark tone."""
    colours = [(220, 40, 40), (40, 160, 40), (40, 40, 220), (200, 160, 0), (150, 0, 150), (0, 150, 150)]
    tones = {None: None, 0x1F3FB: (250, 220, 190), DARK: (90, 55, 30)}
    pictures, entries = [], []
    for c in range(6):
        for style in ("flat", "glossy"):
            for tone_cp, tone_rgb in (tones.items() if c == 0 else [(None, None)]):
                x = np.full((32, 32, 3), 255, np.uint8)
                top, left = 4 + 12 * (c // 3), 2 + 10 * (c % 3)
                x[top:top + 12, left:left + 10] = tone_rgb or colours[c]
                if style == "glossy":
                    x[top:top + 12, left:left + 2] = 0
                    x[top:top + 12, left + 8:left + 10] = 0
                cps = (0x1F44D + c, tone_cp) if tone_cp else (0x1F44D + c,)
                held = cps[0] % 17 == STYLES.index(style) or tone_cp == DARK
                pictures.append(torch.from_numpy(x).permute(2, 0, 1))
                entries.append(entry(cps, f"thing {c}", style, TONES.get(tone_cp), held))
    return torch.stack(pictures), entries


@pytest.fixture(scope="module")
def tiny():
    pictures, entries = tiny_world()
    labels, concepts, names = entry_labels(entries, ("flat", "glossy"))
    config = RecogniserConfig(**{**TINY.__dict__, "concepts": concepts, "concept_names": names})
    return train_recogniser(pictures, labels, config), pictures, entries, labels


def test_recogniser_trains_scores_and_round_trips(tiny, tmp_path):
    recogniser, pictures, entries, labels = tiny
    concepts = recogniser.config.concepts
    rows = evaluate(recogniser, pictures, labels, {"glossy": np.array([e.style == "glossy"
                                                                        for e in entries])}, views=4)
    # 6 well-separated concepts and 2 styles, 120 steps: chance is 17 % (concept) and 50 %
    # (style); 80 % leaves room for an unlucky augmentation while still failing a broken head
    assert rows["all"]["n"] == 4 * len(entries) and rows["glossy"]["n"] == 2 * len(entries)
    assert rows["all"]["top1"] >= 80 and rows["all"]["style"] >= 80 and rows["all"]["tone"] >= 80
    assert rows["all"]["top5"] >= rows["all"]["top1"]
    assert np.isnan(rows["all"]["gender"])  # no woman/man/person in this world
    recogniser.save(tmp_path / "rec")
    again = Recogniser.load(tmp_path / "rec")
    assert again.config == recogniser.config
    assert json.loads((tmp_path / "rec" / "config.json").read_text())["concepts"] == list(concepts)
    torch.testing.assert_close(again.predict(pictures)["concept"], recogniser.predict(pictures)["concept"])


def test_load_or_train_on_stand_in_sources_is_cached(tmp_path):
    test_emoji = pytest.importorskip("test_emoji", reason="needs tests/test_emoji.py's stand-ins")
    (tmp_path / "src").mkdir()
    sources = test_emoji.make_sources(tmp_path / "src")
    tiny = RecogniserConfig(widths=(8, 8), strides=(2, 2), epochs=1, batch_size=8)
    rec, pictures, entries = load_or_train(cache_dir=tmp_path / "cache", config=tiny,
                                           progress=False, sources=sources)
    assert len(pictures) == len(entries) and any(e.held_out for e in entries)
    assert pictures.shape[1:] == (3, 32, 32) and len(rec.config.concepts) >= 1
    assert len(list((tmp_path / "cache").glob("recogniser-*/model.safetensors"))) == 1
    again, _, _ = load_or_train(cache_dir=tmp_path / "cache", config=tiny, progress=False,
                                sources=sources)
    assert again.config == rec.config  # read back, not trained again (train_seconds equal)


def catalogue() -> list[EmojiEntry]:
    """Singles of every residue mod 17 in flat and glossy, held out by the contract's rule, and a
    role with five tones, one of them held out."""
    out = []
    for cp in range(0x1F400, 0x1F400 + 68):
        for i, style in enumerate(("flat", "glossy")):
            out.append(entry((cp,), f"thing {cp:x}", style, held_out=cp % 17 == i))
    for t, tone in enumerate(TONES):
        for style in ("flat", "glossy"):
            held = t == sum((WOMAN, ZWJ, FIRE_ENGINE)) % 5
            out.append(entry((WOMAN, tone, ZWJ, FIRE_ENGINE), "woman firefighter", style,
                             TONES[tone], held_out=held))
    return out


def test_caption_draw_respects_the_held_out_rules(probe):
    cat = catalogue()
    counts = {"seen": 20, "held-out style": 6, "held-out tone": 50}
    draws = probe.draw_captions(cat, ("flat", "glossy"), seed=3, counts=counts)
    assert draws == probe.draw_captions(cat, ("flat", "glossy"), seed=3, counts=counts)
    assert draws != probe.draw_captions(cat, ("flat", "glossy"), seed=4, counts=counts)
    assert [len(draws[g]) for g in counts] == [20, 6, 2]  # only two held-out (role, tone) pictures
    for i in draws["seen"]:
        assert not cat[i].held_out
    for i in draws["held-out style"]:
        assert cat[i].code_points[0] % 17 == STYLES.index(cat[i].style) and cat[i].held_out
    for i in draws["held-out tone"]:
        assert cat[i].tone and cat[i].held_out and len(cat[i].code_points) > 1
    only_flat = probe.draw_captions(cat, ("flat",), seed=3, counts=counts)
    assert all(cat[i].style == "flat" for g in only_flat.values() for i in g)


def test_report_structure_targets_and_history(probe, tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "RESULTS", tmp_path)
    row = {"n": 4, "top1": 50.0, "top5": 100.0, "style": 75.0, "tone": 100.0, "gender": float("nan")}
    groups = {"seen": row, "held-out style": {**row, "top5": 25.0}, "held-out tone": row}
    targets = probe.check_targets(groups)
    assert [t["pass"] for t in targets] == [True, False, True, False]  # NaN gender fails
    assert "interval" in targets[1] and "interval" not in targets[2]  # top5 has n, tone not
    assert probe.wilson_interval(50.0, 100) == pytest.approx((40.38, 59.62), abs=0.01)
    low, high = probe.wilson_interval(0.0, 20)  # never a negative bound, unlike p ± 1.96·se
    assert low == pytest.approx(0.0, abs=1e-9) and high == pytest.approx(16.11, abs=0.01)
    samples = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    result = {"model": "tiny", "step": 200, "steps": 20, "guidance": 3.0, "sampler": "dpmpp_2m",
              "seed": 19, "sample_seed": 1000, "styles": ["flat", "glossy"], "groups": groups,
              "memorisation": {"real held-out median": 5.0}, "generate_seconds": 1.0,
              "threads": 1, "torch": torch.__version__, "targets": targets,
              "_grid": (samples, samples, np.array(["seen"] * 4 + ["held-out style"] * 4
                                                   + ["held-out tone"] * 4), ["c"] * 12)}
    md = probe.write_report(result, "t", "python3 benchmarks/emoji_probe.py --model tiny").read_text()
    assert "| seen | 4 | 50.0 | 100.0 | 75.0 | 100.0 | nan |" in md
    assert "- PASS seen top5 >= 80 %: 100.0 (95 % interval 51.0–100.0)" in md
    assert "- FAIL held-out style top5 >= 50 %: 25.0 (95 % interval 4.6–69.9)" in md
    assert "- PASS seen tone >= 70 %: 100.0\n" in md
    assert (tmp_path / "emoji_probe_t_grid.png").is_file()
    assert json.loads((tmp_path / "emoji_probe_t.json").read_text())["step"] == 200
    probe.append_history(result, "cmd", tmp_path / "h.jsonl")
    probe.append_history(result, "cmd", tmp_path / "h.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"date", "commit", "model", "step", "command"} <= rows[0].keys()
    assert rows[0]["benchmark"] == "emoji_probe" and "groups" in rows[0]["figures"]


def test_probe_runs_end_to_end_on_a_tiny_model(probe, tiny, tiny_text_run, tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "RESULTS", tmp_path)
    recogniser, pictures, entries, _ = tiny
    args = probe.argparse.Namespace(
        model=str(tiny_text_run), styles="flat,glossy", seed=0, sample_seed=5, steps=2,
        guidance=None, counts={"seen": 3, "held-out style": 2, "held-out tone": 1},
        save_samples=str(tmp_path / "fid"), editing=2, fid=0, sampler="ddim", precision="fp32")
    result = probe.probe(args, recogniser, pictures, entries)
    assert [r["n"] for r in result["groups"].values()] == [3, 2, 1]
    assert result["sampler"] == "ddim" and result["precision"] == "fp32"
    rows = result["per_caption"]
    assert [r["group"] for r in rows] == ["seen"] * 3 + ["held-out style"] * 2 + ["held-out tone"]
    assert 100 * sum(r["top5"] for r in rows[:3]) / 3 == result["groups"]["seen"]["top5"]
    assert {"real held-out median", "seen median", "held-out style % nearest is own concept"} \
        <= result["memorisation"].keys()
    edits = result["editing"]
    assert list(edits) == ["style transfer", "vary", "inpaint", "inpaint, half alone", "outpaint"]
    assert [r["n"] for r in edits.values()] == [2, 2, 2, 2, 2]
    assert {"source_top5"} <= set(edits["inpaint"]) and {"source_top5"} <= set(edits["inpaint, half alone"])
    assert edits["inpaint"]["kept"] == edits["outpaint"]["kept"] == 100.0  # exact outside the mask
    assert edits["vary"]["reference"] == 100.0  # the tiny recogniser knows its real pictures
    assert result["_edit_grid"].shape == (10, 3, 32, 32)  # sources + 4 edits, 2 cases each
    assert len(list((tmp_path / "fid" / "real" / "flat").glob("*.png"))) == 8
    assert len(list((tmp_path / "fid" / "samples").rglob("*.png"))) == 6
    md = probe.write_report(result, "e2e", "cmd").read_text()
    assert "| held-out tone | 1 |" in md and "| style transfer | 2 |" in md
    assert "| outpaint | 2 |" in md and (tmp_path / "emoji_probe_e2e_editing.png").is_file()


def test_fid_per_style_puts_real_pictures_on_their_floor(tiny):
    """Samples that are the floor's own pictures score exactly the floor; noise scores far above."""
    from emoji_fid import fid_lines, fid_per_style, split

    from kuosan.metrics.features import FeatureMap

    _, pictures, entries, _ = tiny
    fmap = FeatureMap("pool", "pool4", 48, 64,
                      lambda x: torch.nn.functional.avg_pool2d(x.float() / 255, 8).flatten(1))
    by_caption = {e.caption: pictures[i] for i, e in enumerate(entries)}

    def real(captions: list[str], seed: int) -> torch.Tensor:
        return torch.stack([by_caption[c] for c in captions])

    def noise(captions: list[str], seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (len(captions), 3, 32, 32), generator=g, dtype=torch.uint8)

    floor, ref = split(entries, "flat", 4, seed=0)
    assert len(floor) == 4 and not set(floor) & set(ref)
    assert {entries[i].style for i in floor + ref} == {"flat"}
    rows = fid_per_style(real, pictures, entries, ("flat", "glossy"), 4, 0, 0, fmap=fmap,
                         cache=False, progress=False)
    assert all(r["fid"] == r["fid_floor"] and r["kid"] == r["kid_floor"] for r in rows.values())
    bad = fid_per_style(noise, pictures, entries, ("flat",), 4, 0, 0, fmap=fmap, cache=False,
                        progress=False)
    assert bad["flat"]["fid"] > 2 * bad["flat"]["fid_floor"]  # 10.3 against 2.16 here
    assert "| flat | 4 |" in "\n".join(fid_lines(rows))
    with pytest.raises(KuosanError, match="--fid: n must be"):
        split(entries, "flat", 1, seed=0)


def test_the_everyday_group_takes_every_seen_picture_of_its_names(probe):
    apple = 0x1F34E
    entries = [entry((apple,), "red apple", "flat"), entry((apple,), "red apple", "glossy"),
               entry((apple,), "red apple", "3d"), entry((0x1F98A,), "fox face", "flat", held_out=True),
               entry((0x1F600,), "smirking face", "flat")]
    assert probe.everyday_captions(entries, ("flat", "glossy")) == [0, 1]
    assert len(probe.EVERYDAY) == len(set(probe.EVERYDAY)) == 83


def test_compare_probes_pairs_captions_and_tests_the_discordant_ones(tmp_path, capsys):
    compare = next(benchmark_module("compare_probes"))
    from scipy.stats import binomtest

    for a, b in ((0, 0), (3, 0), (5, 9), (12, 30)):  # exact McNemar = the two-sided sign test
        expected = 1.0 if a + b == 0 else binomtest(a, a + b, 0.5).pvalue
        assert compare.mcnemar_exact(a, b) == pytest.approx(expected)
    rows = [{"caption": f"c{i}", "group": "seen" if i < 10 else "everyday"} for i in range(14)]
    right_a = [True] * 8 + [False] * 2 + [True, False, False, False]
    right_b = [True] * 5 + [False] * 3 + [True] * 2 + [True, True, True, False]
    paths = []
    for name, right in (("a", right_a), ("b", right_b)):
        report = {"per_caption": [r | {"top1": x, "top5": x, "style": x}
                                  for r, x in zip(rows, right, strict=True)]}
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(report))
    table = compare.paired(*(json.loads(p.read_text())["per_caption"] for p in paths), "top5")
    assert table["seen"] | {"p": 0} == {"n": 10, "a": 80.0, "b": 70.0, "only_a": 3, "only_b": 2,
                                        "p": 0}
    assert table["everyday"]["only_b"] == 2 and table["everyday"]["p"] == 0.5
    assert compare.main([str(p) for p in paths]) == 0
    assert "| seen | 10 | 80.0 | 70.0 | 3 | 2 | 1.000 |" in capsys.readouterr().out
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"per_caption": [r | {"top5": True} for r in rows[:3]]}))
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"groups": {}}))
    for bad, says in ((other, "different captions"), (old, "per_caption"),
                      (tmp_path / "missing.json", "cannot read")):
        assert compare.main([str(paths[0]), str(bad)]) == 2
        assert says in capsys.readouterr().err


def test_pool_probes_adds_up_the_captions_of_separate_draws(tmp_path, capsys):
    pool = next(benchmark_module("pool_probes"))

    def report(seed, seen_n, seen_top5, held_n, held_top5, tone, gender):
        return {"seed": seed, "groups": {
            "seen": {"n": seen_n, "top5": seen_top5, "tone": tone, "gender": gender},
            "held-out style": {"n": held_n, "top5": held_top5}}}

    # 102/128 and 424/512 seen: 526/640 = 82.2 % pools to a PASS though the first alone fails
    a = report(19, 128, 100 * 102 / 128, 128, 100 * 78 / 128, 81.5, 86.3)
    b = report(7, 512, 100 * 424 / 512, 128, 100 * 71 / 128, 69.9, 83.0)
    seen, held, tone, gender = pool.pooled_targets([a, b])
    assert (seen["k"], seen["n"], seen["pass"]) == (526, 640, True)
    assert seen["value"] == pytest.approx(100 * 526 / 640)
    assert seen["interval"][0] < seen["value"] < seen["interval"][1]
    assert (held["k"], held["n"], held["pass"]) == (149, 256, True)
    assert tone["value"] == 69.9 and not tone["pass"]  # an attribute must pass in every draw
    assert gender["pass"]
    paths = []
    for name, r in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(r))
    assert pool.main([str(p) for p in paths]) == 0
    out = capsys.readouterr().out
    assert "526 of 640 captions" in out and "FAIL: 3 of 4 targets" in out
    no_tone = report(8, 64, 100.0, 0, float("nan"), float("nan"), 90.0)
    assert [t["pass"] for t in pool.pooled_targets([no_tone])] == [True, False, False, True]
    same = tmp_path / "same.json"
    same.write_text(json.dumps(report(19, 1, 100.0, 1, 100.0, 80.0, 80.0)))
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    for args, says in (([paths[0], same], "share a caption draw"), ([bad], "not an emoji probe"),
                       ([tmp_path / "missing.json"], "cannot read")):
        assert pool.main([str(p) for p in args]) == 2
        assert says in capsys.readouterr().err
