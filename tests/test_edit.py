"""Editing (kuosan.edit): masks, the pinned known region, RePaint against an exact conditional,
window plans for outpainting, SDEdit's strength ends; then the Pipeline and CLI on a tiny run."""

import json

import numpy as np
import pytest
import torch
from conftest import same_pixels
from PIL import Image

from kuosan import KuosanError, Pipeline
from kuosan.cli import main
from kuosan.edit import (
    PinnedDenoiser,
    composite,
    feather_mask,
    inpaint,
    mask_from_image,
    sdedit,
    strength_start,
    window_plan,
)
from kuosan.gmm import GaussianMixture
from kuosan.samplers import SAMPLERS, Denoiser, sample, sigmas_for
from kuosan.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule.cosine(1000)
RHO = 0.95  # correlation of the 2-D Gaussian whose conditional the inpainting must reach


def correlated_gaussian() -> GaussianMixture:
    return GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1, RHO], [RHO, 1.0]]]))


def mask_image(rows: slice, cols: slice, size=(8, 8), value=255) -> Image.Image:
    a = np.zeros(size[::-1], dtype=np.uint8)
    a[rows, cols] = value
    return Image.fromarray(a)


# ---- masks and compositing ----------------------------------------------------------------------


def test_mask_from_image_thresholds_and_refuses_bad_masks():
    m = mask_from_image(mask_image(slice(2, 5), slice(1, 3)), (8, 8))
    assert m.shape == (1, 8, 8) and m.dtype == torch.bool and int(m.sum()) == 6
    soft_edge = np.asarray(mask_image(slice(2, 5), slice(1, 3))).copy()
    soft_edge[1, 1] = 100  # one anti-aliased pixel, below the threshold
    assert int(mask_from_image(Image.fromarray(soft_edge), (8, 8)).sum()) == 6
    rgb = mask_image(slice(0, 4), slice(0, 8)).convert("RGB")
    assert int(mask_from_image(rgb, (8, 8)).sum()) == 32
    with pytest.raises(KuosanError, match="8×8 but the image is 16×16"):
        mask_from_image(mask_image(slice(0, 2), slice(0, 2)), (16, 16))
    with pytest.raises(KuosanError, match="not black-and-white"):
        mask_from_image(Image.fromarray(np.full((8, 8), 128, np.uint8)), (8, 8))
    with pytest.raises(KuosanError, match="nothing to repaint"):
        mask_from_image(Image.fromarray(np.zeros((8, 8), np.uint8)), (8, 8))


def test_feather_stays_inside_the_mask():
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, 2:14, 2:14] = True
    soft = feather_mask(mask, 4)
    assert torch.equal(soft[~mask], torch.zeros(int((~mask).sum())))
    # the edge pixel is the ramp's first step, 1/(feather + 1) = 0.2
    assert soft[0, 8, 8] == 1 and 0 < soft[0, 2, 8] < 0.5 and soft.min() >= 0 and soft.max() <= 1
    assert torch.equal(feather_mask(mask, 0), mask.float())
    with pytest.raises(KuosanError, match="feather"):
        feather_mask(mask, -1)


def test_composite_keeps_unmasked_pixels_exactly():
    g = torch.Generator().manual_seed(0)
    original = torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)
    generated = torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)
    soft = torch.zeros(1, 8, 8)
    soft[:, 2:6, 2:6] = torch.rand(1, 4, 4, generator=g)
    soft[:, 3:5, 3:5] = 1
    out = composite(original, generated, soft)
    keep = (soft == 0).expand(3, -1, -1)
    assert torch.equal(out[keep], original[keep])
    full = (soft == 1).expand(3, -1, -1)
    assert torch.equal(out[full], generated[full])


# ---- the pinned model and inpainting over an exact model ----------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_pinned_denoiser_says_the_known_pixels(prediction):
    gm = correlated_gaussian()
    known = torch.tensor([[1.5, -0.3]], dtype=torch.float64).repeat(5, 1)
    mask = torch.tensor([0.0, 1.0], dtype=torch.float64)
    inner = Denoiser(gm.model(SCHEDULE, prediction), SCHEDULE, prediction)
    d = PinnedDenoiser(inner, known, mask, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    x0 = d(x, torch.tensor(2.0))
    assert torch.equal(x0[:, 0], known[:, 0])  # 0·x̂_0 + 1·known: no conversion after pinning
    assert not torch.allclose(x0[:, 1], known[:, 1])
    assert d.calls == inner.calls == 1


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_inpaints_and_keeps_the_known_part(sampler):
    gm = correlated_gaussian()
    known = torch.tensor([[1.5, 0.0]], dtype=torch.float64).repeat(64, 1)
    mask = torch.tensor([0.0, 1.0], dtype=torch.float64)
    x = inpaint(gm.model(SCHEDULE, "eps"), known, mask, schedule=SCHEDULE, sampler=sampler,
                steps=12, generator=torch.Generator().manual_seed(0), clip_x0=False)
    assert x.shape == known.shape and torch.isfinite(x).all()
    # the trapezoid last step (unipc) moves the pinned value by w·(x − x̂_0) = w·σ_min·ε with
    # w ≤ 1/2 and |ε| < 6 for 64 draws; the others only round: the float32 output (an ulp of 1.5
    # is 1.2e-7) after float64 steps that see t in float32 (~2e-7, above), ≪ 1e-5 ≪ σ_min
    tol = 0.5 * SCHEDULE.sigma_min * 6 if sampler == "unipc" else 1e-5
    torch.testing.assert_close(x[:, 0].double(), known[:, 0], rtol=0, atol=tol)
    # pulled towards E[x2 | x1 = 1.5] = 1.425: 4 standard errors (1/√64) above the unconditional 0
    assert x[:, 1].double().mean() > 0.5


def conditional_error(sampler: str, steps: int, resample: int, n: int = 4000) -> float:
    gm = correlated_gaussian()
    known = torch.zeros(n, 2, dtype=torch.float64)
    known[:, 0] = 1.5
    x = inpaint(gm.model(SCHEDULE, "eps"), known, torch.tensor([0.0, 1.0], dtype=torch.float64),
                schedule=SCHEDULE, sampler=sampler, steps=steps, resample=resample,
                generator=torch.Generator().manual_seed(0), clip_x0=False).double()[:, 1]
    exact_mean, exact_var = RHO * 1.5, 1 - RHO**2
    return abs(x.mean().item() - exact_mean) + abs(x.var().item() - exact_var)


def test_repaint_resampling_reaches_the_exact_conditional():
    """x2 | x1 = 1.5 of a ρ = 0.95 Gaussian is N(1.425, 0.0975). Replacing the known part alone
    lags behind it (seen: mean 1.07, var 0.17 with ddpm, 50 steps); RePaint with 10 resamplings
    gets close (seen: 1.40, 0.069)."""
    plain = conditional_error("ddpm", 50, 1)
    repaint = conditional_error("ddpm", 50, 10)
    # float64, fixed seed; sampling noise at n = 4000 is ≈ 0.005 (mean) + 0.002 (variance), so
    # 0.08 bounds RePaint's remaining bias (0.05 seen), and the 4× gain is far outside the noise
    assert repaint < 0.08 and repaint < plain / 4, (plain, repaint)


def test_resampling_needs_a_single_step_sampler():
    gm = correlated_gaussian()
    known = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(KuosanError, match="single-step sampler"):
        inpaint(gm.model(SCHEDULE), known, torch.tensor([0.0, 1.0]), schedule=SCHEDULE,
                sampler="dpmpp_2m", resample=3)
    with pytest.raises(KuosanError, match="resample"):
        inpaint(gm.model(SCHEDULE), known, torch.tensor([0.0, 1.0]), schedule=SCHEDULE, resample=0)
    with pytest.raises(KuosanError, match="eta must be >= 0"):
        inpaint(gm.model(SCHEDULE), known, torch.tensor([0.0, 1.0]), schedule=SCHEDULE,
                sampler="ddim", resample=2, eta=-1.0)
    with pytest.raises(KuosanError, match="final_step"):
        inpaint(gm.model(SCHEDULE), known, torch.tensor([0.0, 1.0]), schedule=SCHEDULE,
                sampler="ddim", resample=2, final_step="denoise")


def test_inpaint_passes_sampler_options_through():
    gm = correlated_gaussian()
    known = torch.tensor([[1.5, 0.0]], dtype=torch.float64).repeat(4, 1)
    mask = torch.tensor([0.0, 1.0], dtype=torch.float64)
    kwargs = {"schedule": SCHEDULE, "sampler": "unipc", "steps": 6, "clip_x0": False}
    a = inpaint(gm.model(SCHEDULE), known, mask, generator=torch.Generator().manual_seed(0), **kwargs)
    b = inpaint(gm.model(SCHEDULE), known, mask, generator=torch.Generator().manual_seed(0),
                final_step="denoise", **kwargs)
    assert not torch.equal(a, b)
    # as in the test above: a float32 output that only rounds, ≪ 1e-5 ≪ σ_min
    torch.testing.assert_close(b[:, 0].double(), known[:, 0], rtol=0, atol=1e-5)


# ---- windows ------------------------------------------------------------------------------------


def test_window_plan_covers_everything_with_the_most_context_first():
    todo = torch.zeros(32, 48, dtype=torch.bool)
    todo[:, 32:] = True  # a 32×32 image extended by 16 on the right
    assert window_plan(todo, 32) == [(0, 16)]  # half a window of context, all 16 columns painted
    assert window_plan(todo, 32, context=0.75) == [(0, 8), (0, 16)]  # 24 known columns first
    plan = window_plan(todo, 32)
    covered = torch.zeros_like(todo)
    for top, left in plan:
        covered[top:top + 32, left:left + 32] = True
    assert covered[todo].all()
    ring = torch.ones(50, 50, dtype=torch.bool)
    ring[9:41, 9:41] = False  # extended by 9 on every side
    covered = torch.zeros_like(ring)
    for top, left in window_plan(ring, 32):
        covered[top:top + 32, left:left + 32] = True
    assert covered[ring].all()
    with pytest.raises(KuosanError, match="smaller than the model's 32×32"):
        window_plan(torch.ones(16, 40, dtype=torch.bool), 32)


# ---- SDEdit ---------------------------------------------------------------------------------------


def test_sdedit_strength_ends_and_middle():
    gm = correlated_gaussian()
    model = gm.model(SCHEDULE, "eps")
    x0 = torch.tensor([[2.0, -2.0]], dtype=torch.float64).repeat(256, 1)
    assert torch.equal(sdedit(model, x0, 0.0, schedule=SCHEDULE, steps=10), x0)
    kwargs = {"schedule": SCHEDULE, "steps": 10, "sampler": "dpmpp_2m", "clip_x0": False}
    gens = [torch.Generator().manual_seed(i) for i in range(256)]
    full = sdedit(model, x0, 1.0, generator=gens, **kwargs)
    fresh = sample(model, x0.shape, generator=[torch.Generator().manual_seed(i) for i in range(256)],
                   **kwargs)
    assert torch.equal(full, fresh)  # strength 1 ignores the image
    dist = [(sdedit(model, x0, s, generator=torch.Generator().manual_seed(0), **kwargs).double()
             - x0).norm(dim=1).mean().item() for s in (0.2, 0.5, 0.8)]
    assert dist[0] < dist[1] < dist[2], dist
    assert strength_start(0.6, 20) == 8 and strength_start(1.0, 20) == 0
    assert strength_start(0.5, 5) == 2 and strength_start(0.01, 20) == 19  # ≥ 1 step when > 0
    assert strength_start(0.0, 20) == 20
    with pytest.raises(KuosanError, match="strength"):
        strength_start(1.5, 20)
    with pytest.raises(KuosanError, match="steps must be a positive integer"):
        strength_start(0.5, 0)


def test_start_step_runs_the_tail_of_the_grid():
    gm = correlated_gaussian()
    model = gm.model(SCHEDULE, "eps")
    x_T = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    full = sample(model, (8, 2), schedule=SCHEDULE, sampler="euler", steps=6, x_T=x_T)
    sigmas = sigmas_for(SCHEDULE, "euler", 6)
    # one Euler step by hand, then the rest with start_step=1
    d = Denoiser(model, SCHEDULE)
    x = x_T * (1 + sigmas[0] ** 2).sqrt()
    x = x + (x - d(x, sigmas[0])) / sigmas[0] * (sigmas[1] - sigmas[0])
    tail = sample(model, (8, 2), schedule=SCHEDULE, sampler="euler", steps=6,
                  x_T=x / (1 + sigmas[1] ** 2).sqrt(), start_step=1)
    torch.testing.assert_close(tail, full, rtol=0, atol=1e-12)  # float64: ~10 roundings of |x| < 2
    with pytest.raises(KuosanError, match="needs x_T"):
        sample(model, (8, 2), schedule=SCHEDULE, sampler="euler", steps=6, start_step=2)
    with pytest.raises(KuosanError, match="start_step"):
        sample(model, (8, 2), schedule=SCHEDULE, sampler="ddpm", steps=6, x_T=x_T, start_step=6)


# ---- the Pipeline and the CLI on a tiny text-to-image run ----------------------------------------


def shapes_image() -> Image.Image:
    from kuosan.data.shapes import Obj, Scene, render

    return render(Scene((Obj("circle", "red", "large", (10.0, 10.0), 14.0),), "white", 32))


def corner_mask(value: int = 255) -> Image.Image:
    a = np.zeros((32, 32), dtype=np.uint8)
    a[16:, 16:] = value
    return Image.fromarray(a)


def test_pipeline_inpaint_keeps_pixels_and_seeds(tiny_text_run):
    pipe = Pipeline.load(tiny_text_run, precision="fp32")  # batch shapes compared: same_pixels
    image = shapes_image()
    kwargs = {"num_inference_steps": 3, "guidance_scale": 2.0, "seed": 3}
    out = pipe.inpaint(image, corner_mask(), "a red circle to the left of a blue square",
                       num_images_per_prompt=3, **kwargs)
    assert len(out) == 3 and all(o.size == (32, 32) and o.mode == "RGB" for o in out)
    src = np.asarray(image)
    for o in out:
        a = np.asarray(o)
        assert np.array_equal(a[:16], src[:16]) and np.array_equal(a[16:, :16], src[16:, :16])
    alone = pipe.inpaint(image, corner_mask(), "a red circle to the left of a blue square",
                         num_images_per_prompt=3, batch_size=1, **kwargs)
    assert all(same_pixels(a, b) for a, b in zip(out, alone, strict=True))
    other = Image.fromarray(np.asarray(image)[::-1].copy())
    together = pipe.inpaint([image, other], [corner_mask(), corner_mask().transpose(Image.FLIP_LEFT_RIGHT)],
                            ["a red circle", "a blue square"], **kwargs)
    first = pipe.inpaint(image, corner_mask(), "a red circle", **kwargs)[0]
    second = pipe.inpaint(other, corner_mask().transpose(Image.FLIP_LEFT_RIGHT), "a blue square",
                          **{**kwargs, "seed": kwargs["seed"] + 1})[0]
    assert same_pixels(together[0], first) and same_pixels(together[1], second)
    with pytest.raises(KuosanError, match="2 prompts for 3 edits"):
        pipe.inpaint([image] * 3, corner_mask(), ["a", "b"])
    # the default: RePaint with ddpm, unless a multistep sampler is named
    explicit = pipe.inpaint(image, corner_mask(), "a red circle", sampler="ddpm", resample=5, **kwargs)
    assert np.array_equal(np.asarray(first), np.asarray(explicit[0]))
    multistep = pipe.inpaint(image, corner_mask(), "a red circle", sampler="dpmpp_2m", **kwargs)
    plain = pipe.inpaint(image, corner_mask(), "a red circle", sampler="dpmpp_2m", resample=1, **kwargs)
    assert np.array_equal(np.asarray(multistep[0]), np.asarray(plain[0]))
    feathered = pipe.inpaint(image, corner_mask(), feather=4, **kwargs)[0]
    assert np.array_equal(np.asarray(feathered)[:16], src[:16])
    repainted = pipe.inpaint(image, corner_mask(), sampler="ddpm", resample=2, **kwargs)[0]
    assert np.array_equal(np.asarray(repainted)[:16], src[:16])
    rgba = image.convert("RGBA")  # a documented conversion: alpha onto white
    assert np.array_equal(np.asarray(pipe.inpaint(rgba, corner_mask(), **kwargs)[0])[:16], src[:16])


def test_pipeline_edits_refuse_bad_inputs(tiny_text_run):
    pipe = Pipeline.load(tiny_text_run)
    image = shapes_image()
    with pytest.raises(KuosanError, match="mask_image is 16×16 but the image is 32×32"):
        pipe.inpaint(image, Image.new("L", (16, 16), 255))
    with pytest.raises(KuosanError, match="not black-and-white"):
        pipe.inpaint(image, Image.new("L", (32, 32), 128))
    with pytest.raises(KuosanError, match="nothing to repaint"):
        pipe.inpaint(image, Image.new("L", (32, 32), 0))
    with pytest.raises(KuosanError, match="smaller than the model's 32×32"):
        pipe.inpaint(image.resize((16, 16)), Image.new("L", (16, 16), 255))
    with pytest.raises(KuosanError, match="resize it first"):
        pipe.vary(image.resize((48, 48)))
    with pytest.raises(KuosanError, match="at least one of left"):
        pipe.outpaint(image)
    with pytest.raises(KuosanError, match="right must be"):
        pipe.outpaint(image, right=-4)
    with pytest.raises(KuosanError, match="extended image would be 28×20, smaller than the model's 32×32"):
        pipe.outpaint(image.crop((0, 0, 20, 20)), right=8)
    with pytest.raises(KuosanError, match="strength"):
        pipe.vary(image, strength=2.0)
    with pytest.raises(KuosanError, match="image must be a PIL image"):
        pipe.inpaint("scene.png", corner_mask())
    with pytest.raises(KuosanError, match="mask_image must be a PIL image"):
        pipe.inpaint(image, np.zeros((32, 32)))
    with pytest.raises(KuosanError, match="feather"):
        pipe.inpaint(image, corner_mask(), feather=-2)
    with pytest.raises(KuosanError, match="steps must be a positive integer"):
        pipe.img2img(image, "a red circle", num_inference_steps=0)
    with pytest.raises(KuosanError, match="batch_size"):
        pipe.inpaint(image, corner_mask(), batch_size=0)


def test_pipeline_outpaint_vary_img2img(tiny_text_run):
    pipe = Pipeline.load(tiny_text_run)
    image = shapes_image()
    src = np.asarray(image)
    wide = pipe.outpaint(image, right=16, top=4, prompt="a red circle", num_inference_steps=2, seed=1)[0]
    assert wide.size == (48, 36)
    assert np.array_equal(np.asarray(wide)[4:, :32], src)
    # a picture smaller than the model's size is fine when the extended one is not
    cut = pipe.outpaint(image.crop((0, 0, 20, 32)), right=12, num_inference_steps=2, seed=1)[0]
    assert cut.size == (32, 32) and np.array_equal(np.asarray(cut)[:, :20], src[:, :20])
    # on a canvas larger than the model, image i still does not depend on its batch-mates
    big = Image.fromarray(np.tile(np.asarray(image), (1, 2, 1)))  # 64×32
    left, right = np.zeros((32, 64), np.uint8), np.zeros((32, 64), np.uint8)
    left[4:12, 2:10], right[20:28, 50:60] = 255, 255
    masks = [Image.fromarray(left), Image.fromarray(right)]
    both = pipe.inpaint([big, big], masks, num_inference_steps=2, seed=3)
    alone = pipe.inpaint(big, masks[1], num_inference_steps=2, seed=4)
    assert np.array_equal(np.asarray(both[1]), np.asarray(alone[0]))
    same = pipe.vary(image, num_images=2, strength=0.0, num_inference_steps=4)
    assert all(np.array_equal(np.asarray(v), src) for v in same)
    ignored = pipe.img2img(image, "a blue square", strength=1.0, num_inference_steps=3,
                           guidance_scale=2.0, seed=5)[0]
    generated = pipe.generate("a blue square", num_inference_steps=3, guidance_scale=2.0, seed=5)[0]
    assert np.array_equal(np.asarray(ignored), np.asarray(generated))
    varied = pipe.vary(image, num_images=2, strength=0.5, num_inference_steps=4, seed=0)
    assert not np.array_equal(np.asarray(varied[0]), np.asarray(varied[1]))


def test_cli_edit_commands(tiny_text_run, tmp_path, capsys):
    image, mask = tmp_path / "in.png", tmp_path / "mask.png"
    shapes_image().save(image)
    corner_mask().save(mask)
    model = ["--model", str(tiny_text_run), "--steps", "2"]
    out = tmp_path / "inpainted.png"
    assert main(["inpaint", str(image), "--mask", str(mask), "a red circle", *model, "--out", str(out)]) == 0
    meta = json.loads(Image.open(out).text["kuosan"])
    assert meta["command"] == "inpaint" and meta["prompt"] == "a red circle" and meta["mask"] == str(mask)
    assert np.array_equal(np.asarray(Image.open(out))[:16], np.asarray(shapes_image())[:16])
    folder = tmp_path / "wide"
    assert main(["outpaint", str(image), "--right", "8", *model, "--out", str(folder)]) == 0
    assert Image.open(folder / "0000.png").size == (40, 32)
    assert main(["vary", str(image), "-n", "2", "--strength", "0.5", *model, "--out", str(tmp_path / "v")]) == 0
    assert len(list((tmp_path / "v").iterdir())) == 2
    assert main(["img2img", str(image), "a blue square", "--strength", "0.7", *model,
                 "--out", str(tmp_path / "i.png")]) == 0
    capsys.readouterr()
    assert main(["inpaint", str(image), "--mask", str(tmp_path / "missing.png"), *model]) == 2
    assert "--mask" in capsys.readouterr().err
    Image.new("L", (32, 32), 0).save(tmp_path / "black.png")
    assert main(["inpaint", str(image), "--mask", str(tmp_path / "black.png"), *model]) == 2
    assert "nothing to repaint" in capsys.readouterr().err
    assert main(["generate", "--from-png", str(out), *model]) == 2
    assert "kuosan inpaint" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(image.read_bytes()[:60])  # a truncated PNG
    assert main(["vary", str(broken), *model, "--out", str(tmp_path / "b.png")]) == 2
    assert "not a readable image" in capsys.readouterr().err
    before = image.read_bytes()
    assert main(["vary", str(image), *model, "--out", str(image)]) == 2
    assert "never writes over its input" in capsys.readouterr().err and image.read_bytes() == before
