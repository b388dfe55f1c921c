"""kuosan.data: digits, 2-D toys and image folders, loaded into memory."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits as sklearn_digits
from sklearn.datasets import make_swiss_roll

from kuosan.data import (
    DATASET_NAMES,
    ArrayDataset,
    DataInfo,
    denormalize,
    load_dataset,
    normalize,
)
from kuosan.data.toys import RING_STD, make_toy, ring_means, ring_weights
from kuosan.errors import KuosanError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def test_dataset_names():
    assert set(DATASET_NAMES) == {"digits", "shapes", "emoji", "emojiworld", "moons", "swissroll", "gaussians"}


# --- digits ---------------------------------------------------------------------------------


def test_digits_are_sklearn_digits_with_16_at_plus_one():
    ds = load_dataset("digits")
    ref = sklearn_digits()
    assert len(ds) == 1797 and ds.info.num_items == 1797
    assert ds.info.kind == "image" and ds.info.shape == (1, 8, 8)
    assert ds.info.normalization == {"type": "image", "range": [-1, 1]}
    x = ds.data
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0
    expected = torch.as_tensor(ref.images, dtype=torch.float32) / 8 - 1  # 0 -> -1, 16 -> +1
    torch.testing.assert_close(x[:, 0], expected, rtol=0, atol=0)  # exact: k/16·2 − 1 is dyadic
    assert torch.equal(ds.labels, torch.as_tensor(ref.target))
    # Ink is bright: the blank border of the images is -1, the strokes reach +1.
    assert (x[:, 0, :, 0] == -1.0).float().mean() > 0.9 and (x == 1.0).any()  # fixed data: 0.998


def test_digits_resized_and_three_channels():
    ds = load_dataset("digits", size=16, channels=3)
    assert ds.info.shape == (3, 16, 16) and ds.data.shape == (1797, 3, 16, 16)
    x = ds.data
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    # Bilinear upsampling keeps each digit's mean brightness close to the original.
    small = load_dataset("digits").data
    # Exact: 2× bilinear weights are 1/4, 3/4, every source pixel gets weight 4 in all, and all
    # values are multiples of 2⁻⁸ in [0, 1], so no sum rounds.
    torch.testing.assert_close(x[:, 0].mean((1, 2)), small[:, 0].mean((1, 2)), atol=0, rtol=0)


def test_batch_matches_getitem():
    ds = load_dataset("digits")
    idx = torch.tensor([5, 0, 1796, 5])
    b = ds.batch(idx)
    assert b.shape == (4, 1, 8, 8)
    assert torch.equal(b, torch.stack([ds[int(i)] for i in idx]))


# --- toys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["moons", "swissroll", "gaussians"])
def test_toys_standardised_seeded_and_invertible(name):
    ds = load_dataset(name, seed=3)
    assert ds.info.kind == "vector" and ds.info.shape == (2,)
    x = ds.data
    assert x.shape == (len(ds), 2) and len(ds) >= 10_000 and x.dtype == torch.float32
    # float32 cascade sums of n ≈ 1e4 values |x| < 3: ≈ log2(n)·2⁻²⁴·3 ≈ 3e-6 < 1e-5
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(2), atol=1e-5, rtol=0)
    assert torch.equal(load_dataset(name, seed=3).data, x)
    assert not torch.allclose(load_dataset(name, seed=4).data, x)
    norm = json.loads(json.dumps(ds.info.normalization))
    assert norm["type"] == "affine" and len(norm["mean"]) == len(norm["std"]) == 2
    raw, _ = make_toy(name, len(ds), seed=3)
    # a few float32 roundings of |raw| ≤ ~15: ≈ 4·2⁻²⁴·15 ≈ 4e-6, well inside the bounds
    torch.testing.assert_close(denormalize(x, norm), raw, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(normalize(raw, norm), x, atol=1e-5, rtol=1e-5)


def test_swissroll_is_sklearns_x_and_z():
    raw, labels = make_toy("swissroll", 500, seed=1)
    ref, _ = make_swiss_roll(n_samples=500, noise=0.5, random_state=1)
    np.testing.assert_allclose(raw.numpy(), ref[:, [0, 2]], rtol=1e-6)  # one cast: ≤ 2⁻²⁴ ≈ 6e-8
    assert labels is None


def test_gaussian_ring_weights_and_components():
    raw, labels = make_toy("gaussians", 20_000, seed=0)
    freq = torch.bincount(labels, minlength=8).double() / len(labels)
    # fixed seed; standard error √(p(1−p)/n) ≤ √(0.14/20000) = 0.0026: 0.012 is 4.5 of them
    torch.testing.assert_close(freq, torch.as_tensor(ring_weights()), atol=0.012, rtol=0)
    assert ring_weights()[-1] == pytest.approx(2 * ring_weights()[0])  # float64 rounding only
    dist = (raw.double() - torch.as_tensor(ring_means())[labels]).norm(dim=1)
    # Rayleigh: mean RING_STD·√(π/2), relative standard error √((4−π)/π)/√n = 0.0037: 5 of them
    assert dist.mean().item() == pytest.approx(RING_STD * math.sqrt(math.pi / 2), rel=0.02)


def test_toys_reject_image_options():
    with pytest.raises(KuosanError, match="size=16.*moons"):
        load_dataset("moons", size=16)
    with pytest.raises(KuosanError, match="channels"):
        load_dataset("gaussians", channels=3)


def test_denormalize_image_and_unknown_type():
    norm = {"type": "image", "range": [-1, 1]}
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0])
    assert denormalize(x, norm).tolist() == [0.0, 0.0, 0.5, 1.0]
    assert normalize(torch.tensor([0.0, 1.0]), norm).tolist() == [-1.0, 1.0]
    with pytest.raises(KuosanError, match="'zscore'"):
        denormalize(x, {"type": "zscore"})


def test_data_info_round_trips_through_json():
    info = load_dataset("digits").info
    back = DataInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert back == info


def test_array_dataset_checks_and_uint8_storage():
    info = DataInfo("t", "image", (1, 1, 2), 2, {"type": "image", "range": [-1, 1]})
    ds = ArrayDataset(torch.tensor([[[[0, 255]]], [[[128, 51]]]], dtype=torch.uint8), info)
    assert ds.batch(torch.tensor([0])).tolist() == [[[[-1.0, 1.0]]]]
    assert ds.data.dtype == torch.float32
    with pytest.raises(ValueError, match="disagree"):
        ArrayDataset(torch.zeros(3, 1, 1, 2), info)
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(torch.zeros(2, 1, 1, 2), info, labels=torch.zeros(3))


# --- image folders --------------------------------------------------------------------------


def _solid(mode, size, color):
    return Image.new(mode, size, color)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    _solid("RGB", (40, 30), RED).save(root / "a_red.png")
    _solid("RGB", (20, 50), GREEN).save(root / "sub" / "b_green.jpg", quality=95)
    _solid("RGB", (17, 17), BLUE).save(root / "c_blue.bmp")
    _solid("RGB", (33, 21), BLUE).save(root / "d_blue.webp", lossless=True)
    _solid("RGBA", (16, 16), (0, 0, 0, 0)).save(root / "sub" / "deeper" / "e_clear.png")
    _solid("L", (9, 12), 100).save(root / "f_gray.PNG")
    pal = Image.new("P", (24, 24), 0)
    pal.putpalette([255, 255, 0] + [0] * 765)
    pal.save(root / "g_palette.png")
    # Ignored: sidecars, hidden files and folders.
    (root / "a_red.txt").write_text("a red square")
    (root / "meta.json").write_text("{}")
    _solid("RGB", (8, 8), GREEN).save(root / ".hidden.png")
    (root / ".cache").mkdir()
    _solid("RGB", (8, 8), GREEN).save(root / ".cache" / "x.png")
    return root


def test_folder_loads_recursively_with_content(image_folder):
    ds = load_dataset(str(image_folder), size=16)
    names = [p.relative_to(image_folder).as_posix() for p in ds.paths]
    assert names == [
        "a_red.png", "c_blue.bmp", "d_blue.webp", "f_gray.PNG", "g_palette.png",
        "sub/b_green.jpg", "sub/deeper/e_clear.png",
    ]
    assert ds.info.kind == "image" and ds.info.shape == (3, 16, 16) and len(ds) == 7
    assert ds.info.normalization == {"type": "image", "range": [-1, 1]}
    x = ds.data
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    expected = {
        "a_red.png": (1, -1, -1),
        "c_blue.bmp": (-1, -1, 1),
        "d_blue.webp": (-1, -1, 1),
        "f_gray.PNG": (100 / 127.5 - 1,) * 3,
        "g_palette.png": (1, 1, -1),
        "sub/b_green.jpg": (-1, 1, -1),
        "sub/deeper/e_clear.png": (1, 1, 1),  # transparent -> white
    }
    for name, xi in zip(names, x, strict=True):
        target = torch.tensor(expected[name]).view(3, 1, 1).expand(3, 16, 16)
        # lossless files: three float32 roundings of values ≤ 2 (≤ 4·2⁻²⁴); JPEG q95 of a flat
        # colour: the YCbCr round trip rounds each way (±1 level) plus < 1 level of DC quantisation
        atol = 3 / 127.5 if name.endswith(".jpg") else 2**-22
        torch.testing.assert_close(xi, target.float(), atol=atol, rtol=0, msg=name)


def test_folder_gray_auto_and_forced_channels(tmp_path):
    root = tmp_path / "gray"
    root.mkdir()
    _solid("L", (10, 10), 0).save(root / "a.png")
    _solid("LA", (12, 10), (0, 0)).save(root / "b.png")  # transparent -> white
    _solid("1", (10, 14), 1).save(root / "c.bmp")
    ds = load_dataset(str(root), size=8)
    assert ds.info.shape == (1, 8, 8)
    assert ds.data[:, 0, 0, 0].tolist() == [-1.0, 1.0, 1.0]
    assert load_dataset(str(root), size=8, channels=3).info.shape == (3, 8, 8)
    _solid("RGB", (10, 10), RED).save(root / "d.png")
    assert load_dataset(str(root), size=8).info.shape == (3, 8, 8)
    forced = load_dataset(str(root), size=8, channels=1)
    assert forced.info.shape == (1, 8, 8)
    assert forced.items[3].unique().tolist() == [76]  # luma of red


def test_folder_centre_crop_and_exif_orientation(tmp_path):
    root = tmp_path / "crop"
    root.mkdir()
    strip = Image.new("RGB", (48, 16))
    for i, color in enumerate((RED, GREEN, BLUE)):
        strip.paste(color, (16 * i, 0, 16 * i + 16, 16))
    strip.save(root / "a_strip.png")
    # Stored landscape, left half red and right half blue; EXIF 6 says "rotate 90° clockwise
    # to display", so displayed it is portrait with red on top.
    photo = Image.new("RGB", (40, 20), BLUE)
    photo.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(root / "b_photo.jpg", quality=95, exif=exif.tobytes())
    ds = load_dataset(str(root), size=16)
    strip_x, photo_x = ds.data
    torch.testing.assert_close(  # exact: a PNG, its centre 16×16 crop needs no resampling
        strip_x, torch.tensor([-1.0, 1, -1]).view(3, 1, 1).expand(3, 16, 16), atol=0, rtol=0
    )
    top, bottom = photo_x[:, :6].mean((1, 2)), photo_x[:, -6:].mean((1, 2))
    # JPEG ringing is encoder-specific; 0.1 only has to tell red from blue (2 apart per channel)
    torch.testing.assert_close(top, torch.tensor([1.0, -1, -1]), atol=0.1, rtol=0)
    torch.testing.assert_close(bottom, torch.tensor([-1.0, -1, 1]), atol=0.1, rtol=0)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_file_is_named(image_folder, kind):
    bad = image_folder / "sub" / "bad.png"
    if kind == "garbage":
        bad.write_bytes(b"this is not an image")
    else:
        Image.effect_noise((64, 64), 50).save(bad)
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])  # header fine, pixel data cut short
    with pytest.raises(KuosanError, match=r"cannot read image '.*sub[/\\]bad\.png'"):
        load_dataset(str(image_folder), size=16)


def test_skip_bad_warns_and_loads_the_rest(image_folder):
    (image_folder / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(str(image_folder), size=16, skip_bad=True)
    messages = [str(w.message) for w in record]
    assert any("bad.jpg" in m and "skipping" in m for m in messages)
    assert any("skipped 1 of 8" in m for m in messages)
    assert len(ds) == 7 and all(p.name != "bad.jpg" for p in ds.paths)


def test_all_bad_with_skip_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(KuosanError, match="no readable images"):
        load_dataset(str(tmp_path), size=8, skip_bad=True)


def test_decompression_bomb_is_a_kuosan_error(tmp_path, monkeypatch):
    _solid("RGB", (64, 64), RED).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(KuosanError, match="big.png.*decompression"):
        load_dataset(str(tmp_path), size=8)


def test_empty_folder_names_folder_and_extensions(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(KuosanError) as err:
        load_dataset(str(tmp_path), size=8)
    assert str(tmp_path) in str(err.value) and ".png" in str(err.value)
    assert ".webp" in str(err.value)


def test_missing_path_and_unknown_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KuosanError, match="nope/imgs"):
        load_dataset("nope/imgs")
    with pytest.raises(KuosanError) as err:
        load_dataset("foo")
    assert str(err.value) == (
        "unknown dataset 'foo': expected digits, shapes, emoji, emojiworld, moons, swissroll, gaussians or a folder of images"
    )
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(KuosanError, match="file.png.*expected a folder"):
        load_dataset("file.png")


def test_bad_size_and_channels(tmp_path):
    with pytest.raises(KuosanError, match="channels"):
        load_dataset("digits", channels=2)
    with pytest.raises(KuosanError, match="size"):
        load_dataset("digits", size=0)


def test_shapes_dataset_has_captions():
    import kuosan.data as kd

    old = kd.SHAPES_ITEMS
    kd.SHAPES_ITEMS = 40
    try:
        ds = kd.load_dataset("shapes", size=32, seed=3)
    finally:
        kd.SHAPES_ITEMS = old
    assert ds.info.shape == (3, 32, 32) and len(ds) == 40 and ds.data.min() >= -1
    assert ds.captions is not None and len(ds.captions) == 40
    assert ds.to("cpu").captions == ds.captions
    with pytest.raises(KuosanError, match="multiple of 16"):
        kd.load_dataset("shapes", size=20)
