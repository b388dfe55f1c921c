"""kuosan.images: exact uint8 round trips, grids, atomic PNG writes with text chunks."""

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.errors import KuosanError
from kuosan.images import (
    from_pil,
    make_grid,
    pil_to_uint8,
    save_grid,
    save_images,
    save_png,
    to_pil,
    to_rgb_or_l,
)


def test_every_uint8_value_round_trips_exactly():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    gray = Image.fromarray(values)
    x = from_pil(gray)
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    back = to_pil(x)
    assert back.mode == "L"
    np.testing.assert_array_equal(np.asarray(back), values)

    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    x = from_pil(Image.fromarray(rgb))
    assert x.shape == (3, 7, 9)
    back = to_pil(x)
    assert back.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(back), rgb)
    torch.testing.assert_close(from_pil(back), x, rtol=0, atol=0)


def test_to_pil_rounds_and_clamps():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0, float("nan")]).reshape(1, 1, 6)
    assert list(np.asarray(to_pil(x))[0]) == [0, 0, 128, 255, 255, 128]
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_pil(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError):
        to_pil(torch.zeros(4, 4))


def test_from_pil_channels_and_transparency():
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    assert from_pil(red, channels=3)[:, 0, 0].tolist() == [1.0, -1.0, -1.0]
    # Luma of pure red: 0.299 * 255 = 76.2 -> 76.
    assert pil_to_uint8(red, channels=1).unique().tolist() == [76]
    assert pil_to_uint8(Image.new("L", (3, 3), 40), channels=3).unique().tolist() == [40]
    # A fully transparent pixel becomes white; half-transparent black becomes mid gray.
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    v = pil_to_uint8(rgba)
    assert v.shape == (3, 1, 2)
    assert v[:, 0, 0].tolist() == [255, 255, 255]
    assert all(abs(c - 127) <= 1 for c in v[:, 0, 1].tolist())
    # Gray with alpha stays one channel.
    assert pil_to_uint8(Image.new("LA", (2, 2), (0, 0))).tolist() == [[[255, 255], [255, 255]]]


def test_palette_transparency_and_16_bit_gray():
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    v = pil_to_uint8(pal)
    assert v[:, 0, 0].tolist() == [255, 255, 255]
    assert v[:, 1, 1].tolist() == [200, 100, 50]

    wide = Image.fromarray(np.array([[0, 25700, 65535]], dtype=np.uint16))
    assert wide.mode.startswith("I;16")
    assert np.asarray(to_rgb_or_l(wide, 1)).tolist() == [[0, 100, 255]]


def test_make_grid_shapes_and_layout():
    x = torch.arange(5, dtype=torch.float32).reshape(5, 1, 1, 1).expand(5, 3, 4, 6) / 10
    g = make_grid(x)  # ceil(sqrt(5)) = 3 per row, 2 rows
    assert g.shape == (3, 2 * (4 + 1) + 1, 3 * (6 + 1) + 1)
    assert make_grid(x, nrow=5).shape == (3, 4 + 2, 5 * 7 + 1)
    assert make_grid(x, nrow=1, padding=0).shape == (3, 20, 6)
    # Cell 4 is row 1, column 1; the sixth cell is empty and keeps the pad value.
    assert torch.all(g[:, 1 + 5 : 1 + 5 + 4, 1 + 7 : 1 + 7 + 6] == 0.4)
    assert torch.all(g[:, 6:10, 15:21] == 1.0)
    assert torch.all(g[:, 0, :] == 1.0) and torch.all(g[:, :, 0] == 1.0)
    # Without padding the grid is the tiling itself.
    y = torch.randn(4, 1, 2, 3)
    top = torch.cat([y[0], y[1]], dim=2)
    bottom = torch.cat([y[2], y[3]], dim=2)
    torch.testing.assert_close(make_grid(y, nrow=2, padding=0), torch.cat([top, bottom], dim=1),
                               rtol=0, atol=0)  # a copy: exact
    with pytest.raises(ValueError):
        make_grid(torch.zeros(0, 1, 2, 2))


def test_save_grid_upscales_with_nearest(tmp_path):
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    path = save_grid(x, tmp_path / "grid.png", nrow=2, upscale=3)
    img = Image.open(path)
    assert img.size == (3 * (2 * 9 + 1), 3 * (2 * 9 + 1)) and img.mode == "L"
    small = np.asarray(to_pil(make_grid(x, nrow=2)))
    np.testing.assert_array_equal(np.asarray(img)[::3, ::3], small)
    np.testing.assert_array_equal(np.asarray(img)[2::3, 1::3], small)
    jpg = save_grid(x, tmp_path / "grid.jpg")
    assert Image.open(jpg).format == "JPEG"
    with pytest.raises(KuosanError, match="grid.xyz"):
        save_grid(x, tmp_path / "grid.xyz")


def test_save_images_numbering_and_no_leftovers(tmp_path):
    x = torch.rand(3, 3, 5, 5) * 2 - 1
    paths = save_images(x, tmp_path / "out")
    assert [p.name for p in paths] == ["0000.png", "0001.png", "0002.png"]
    for p, xi in zip(paths, x, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), np.asarray(to_pil(xi)))
    more = save_images(x[:1], tmp_path / "out", start=3, text={"seed": "7"})
    assert more[0].name == "0003.png" and Image.open(more[0]).text == {"seed": "7"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "0000.png", "0001.png", "0002.png", "0003.png"
    ]


def test_png_text_chunks_survive(tmp_path):
    text = {
        "parameters": "a red circle\nSteps: 20, Sampler: dpmpp_2m, Seed: 0",
        "kuosan": '{"prompt": "a red circle", "seed": 0}',
        "prompt": "一只红色的圆",  # not Latin-1: goes into an iTXt chunk
    }
    path = save_png(to_pil(torch.zeros(3, 4, 4)), tmp_path / "a.png", text)
    with Image.open(path) as img:
        assert img.text == text
    with pytest.raises(ValueError, match="Latin-1"):
        save_png(Image.new("L", (1, 1)), tmp_path / "b.png", {"提示": "x"})


def test_failed_write_keeps_the_old_file(tmp_path):
    path = save_png(Image.new("L", (2, 2), 9), tmp_path / "keep.png")
    before = path.read_bytes()
    with pytest.raises(OSError):
        save_png(Image.new("CMYK", (2, 2)), path)  # PNG cannot hold CMYK
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]
