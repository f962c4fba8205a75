"""The one camera simulation (models/synth.py): first principles, determinism, and real noise in range."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from quietlens.engine.errors import QuietLensError
from quietlens.engine.noise.physics import PhysicsNoise
from quietlens.models import synth


def _scene(h: int = 96, w: int = 128) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    return np.stack([0.5 + 0.35 * np.sin(5 * xx + c) * np.cos(3 * yy) for c in range(3)], axis=2).astype(np.float32)


@pytest.mark.parametrize("method", synth.DEMOSAIC)
def test_flat_colour_survives_unprocessing_and_the_isp_exactly(method):
    rng = np.random.default_rng(0)
    camera = synth.random_camera(rng)
    srgb = np.broadcast_to(np.float32([0.7, 0.45, 0.2]), (32, 40, 3))
    planes = synth.unprocess(srgb, camera)
    assert planes.shape == (4, 16, 20) and planes.min() >= 0 and planes.max() <= 1
    settings = synth.ISP(demosaic=method, gamma=0.0, tone=1.0)
    out = synth.isp(planes, camera, settings, quantise=False)
    np.testing.assert_allclose(out, srgb, atol=2e-4)  # the ISP's default curves invert unprocess


def test_optics_blur_makes_the_colour_planes_alike_as_a_sensor_samples_them():
    """A photo unprocessed as is has more detail per pixel than a sensor behind a lens records: its two
    green planes (one pixel apart) differ in fine detail. The optics blur brings their high-pass
    correlation up towards a real RAW file's (0.3–0.7 on the bench's binned files) and keeps the mean."""
    camera = synth.random_camera(np.random.default_rng(0))
    photo = synth.skimage_photo("astronaut")[:256, :256]

    def greens_alike(planes: np.ndarray) -> float:
        hp = [p - cv2.blur(p, (3, 3)) for p in planes[1:3]]
        return float(np.corrcoef(hp[0].ravel(), hp[1].ravel())[0, 1])

    sharp, soft = synth.unprocess(photo, camera), synth.unprocess(photo, camera, blur=1.2)
    assert greens_alike(soft) > greens_alike(sharp) + 0.2, (greens_alike(sharp), greens_alike(soft))
    assert soft.mean() == pytest.approx(sharp.mean(), rel=0.01)


def test_raw_noise_follows_the_physics_model():
    """Poisson–Gaussian: on a flat raw the noise variance is K·x + σ² (+ the ADC's step²/12)."""
    rng = np.random.default_rng(1)
    srgb = np.full((256, 256, 3), 0.6, np.float32)
    noise = PhysicsNoise(gain=2e-3, read=4e-3, quant=1 / 4095)
    noisy, clean, k, sigma = synth.raw_pair(srgb, rng, noise=noise, exposure=0.5)
    assert (k, sigma) == (2e-3, 4e-3) and noisy.shape == clean.shape == (4, 128, 128)
    for c in range(4):
        x = float(clean[c].mean())
        expected = k * x + sigma**2 + (1 / 4095) ** 2 / 12
        assert noisy[c].var() == pytest.approx(expected, rel=0.05)
        assert noisy[c].mean() == pytest.approx(x, abs=3 * np.sqrt(expected / noisy[c].size))


def test_raw_pairs_span_iso_100_to_25600_like_levels():
    rng = np.random.default_rng(2)
    levels = []
    for iso in (100, 25600):
        ks = [synth.raw_pair(_scene(), rng, iso=iso)[2] for _ in range(8)]
        levels.append(np.median(ks))
    assert 1e-5 < levels[0] < 5e-5 and 2e-3 < levels[1] < 1e-2  # K of a full-frame sensor's ISO 100, 25600


def test_deterministic_with_a_seed():
    a = synth.srgb_pair(_scene(), np.random.default_rng(7))
    b = synth.srgb_pair(_scene(), np.random.default_rng(7))
    c = synth.srgb_pair(_scene(), np.random.default_rng(8))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    r1, r2 = synth.raw_pair(_scene(), np.random.default_rng(3)), synth.raw_pair(_scene(), np.random.default_rng(3))
    assert np.array_equal(r1[0], r2[0]) and r1[2:] == r2[2:]


def _flat_regions(scene: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A scene's largest absolute Laplacian over the channels, and the areas of its flat (or linear)
    connected regions."""
    lap = np.abs(cv2.Laplacian(scene, cv2.CV_32F, ksize=1)).max(axis=2)
    _, _, stats, _ = cv2.connectedComponentsWithStats((lap < 1e-3).astype(np.uint8))
    return lap, stats[1:, cv2.CC_STAT_AREA]


def test_dead_leaves_scenes_are_flat_shapes_with_sharp_edges_and_seeded():
    """Mostly flat (each shape a colour under a gentle gradient: its second differences vanish), with
    edges jumping far above that, shapes of many sizes, values in [0, 1], the same scene for the same seed."""
    scenes = [synth.dead_leaves(np.random.default_rng(i), 128) for i in range(8)]
    assert all(s.shape == (128, 128, 3) and s.dtype == np.float32 and 0 <= s.min() and s.max() <= 1 for s in scenes)
    assert np.array_equal(scenes[0], synth.dead_leaves(np.random.default_rng(0), 128))
    assert not np.array_equal(scenes[0], scenes[1])
    for s in scenes:
        lap, areas = _flat_regions(s)
        assert np.mean(lap < 1e-3) > 0.5  # flat (or linear) inside the shapes
        assert np.mean(lap > 0.05) > 0.02  # and edges between them
        # the flat regions: a few large, many small
        assert areas.max() > 400 and np.sum(areas >= 4) > 10, (areas.max(), np.sum(areas >= 4))


def test_dead_leaves_smallest_radius_sets_how_large_the_flat_regions_are():
    """``r_min`` bounds the shapes from below: at 32 px the scene is a few large flat regions (the large
    uniform surfaces a photo's sky or a colour chart has), at 4 px a busy mosaic of many small ones."""
    def regions(r_min: float) -> tuple[float, float]:
        flat, median = [], []
        for i in range(6):
            lap, areas = _flat_regions(synth.dead_leaves(np.random.default_rng(i), 128, r_min))
            flat.append(np.mean(lap < 1e-3))
            median.append(np.median(areas[areas >= 4]))
        return float(np.mean(flat)), float(np.median(median))

    (flat_small, area_small), (flat_large, area_large) = regions(4.0), regions(32.0)
    assert flat_large > 0.85 > flat_small, (flat_large, flat_small)
    assert area_large > 5 * area_small, (area_large, area_small)


def test_noise_level_map_matches_the_rendered_noise():
    """The predicted per-pixel standard deviation agrees with the spread of many noise draws (no JPEG,
    no sharpening: where the first-order propagation is exact up to demosaicking)."""
    scene = np.full((64, 64, 3), 0.45, np.float32)
    camera = synth.random_camera(np.random.default_rng(0))
    settings = synth.ISP(demosaic="bilinear", tone=0.5)
    draws, level = [], None
    for seed in range(40):
        noisy, clean, level = synth.srgb_pair(scene, np.random.default_rng(seed), iso=6400, camera=camera,
                                              settings=settings)
        draws.append(noisy - clean)
    measured = np.std(np.stack(draws), axis=0)[8:-8, 8:-8].mean(axis=(0, 1))
    predicted = level[8:-8, 8:-8].mean(axis=(0, 1))
    # demosaicking interpolates two of three colours per pixel, averaging noise down a little
    assert np.all(measured < predicted * 1.1) and np.all(measured > predicted * 0.6), (measured, predicted)


def test_camera_luminance_smoothing_correlates_the_noise_and_the_level_follows():
    """A camera's own luminance smoothing (``random_isp(…, luma_nr)``) leaves blotchier noise — higher
    correlation with the neighbour 1 px away — and less of it, and the level map says how much, colour
    by colour: it keeps agreeing with the spread of many draws as in the test above. Without it nothing is drawn,
    so the renderings without it stay what they were."""
    scene = np.full((64, 64, 3), 0.45, np.float32)
    camera = synth.random_camera(np.random.default_rng(0))

    def rendered(settings):
        draws, level = [], None
        for seed in range(30):
            noisy, clean, level = synth.srgb_pair(scene, np.random.default_rng(seed), iso=6400, camera=camera,
                                                  settings=settings)
            draws.append((noisy - clean)[8:-8, 8:-8])
        d = np.stack(draws)
        lag1 = np.corrcoef(d[:, :, :-1].ravel(), d[:, :, 1:].ravel())[0, 1]
        return d.std(axis=0).mean(axis=(0, 1)), level[8:-8, 8:-8].mean(axis=(0, 1)), lag1

    std0, level0, lag0 = rendered(synth.ISP(demosaic="malvar", tone=0.5))
    std1, level1, lag1 = rendered(synth.ISP(demosaic="malvar", tone=0.5, luma_nr=0.8, luma_nr_sigma=1.2))
    assert lag1 > lag0 + 0.1 and std1.mean() < 0.9 * std0.mean(), (lag0, lag1, std0, std1)
    assert np.allclose(std1 / level1, std0 / level0, rtol=0.15), (std1 / level1, std0 / level0)

    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert synth.random_isp(a, 800) == synth.random_isp(b, 800, luma_nr=0.0) and a.random() == b.random()
    smoothing = [synth.random_isp(np.random.default_rng(i), iso, luma_nr=1.0).luma_nr for iso in (100, 25600)
                 for i in range(20)]
    assert min(smoothing) > 0 and np.mean(smoothing[20:]) > np.mean(smoothing[:20])  # more at high ISO


def test_low_iso_is_nearly_clean_and_high_iso_is_not():
    settings = synth.ISP(demosaic="malvar", tone=0.7)  # lossless: JPEG's own error is not noise

    def level(iso):
        return np.median([np.std(n - c) for n, c, _ in (synth.srgb_pair(_scene(), np.random.default_rng(s), iso=iso,
                                                                         settings=settings) for s in range(4))])
    assert level(50) < 1.5 / 255 and level(51200) > 12 / 255


def test_corpora_and_a_clear_error_without_the_shared_data(monkeypatch, tmp_path, shared_data):
    with pytest.raises(QuietLensError, match="split"):
        synth.clean_corpus("test")
    names = synth.clean_corpus_names("eval")
    assert len(names) == len(synth.clean_corpus("eval")) == 42
    assert not any("urban100" in n or "bsd100" in n for n in names)
    assert all(im.dtype == np.float32 and im.ndim == 3 and im.shape[2] == 3 for im in synth.clean_corpus("eval"))
    monkeypatch.setenv("QUIETLENS_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(QuietLensError, match="QUIETLENS_SHARED_DATA"):
        synth.real_noisy()


def test_synthetic_noise_statistics_cover_the_real_pairs(shared_data):
    """Real noise (the dev pairs' noisy − clean) lies inside what the simulation produces: its level at
    mid-grey and its correlation with the neighbour 1 px away."""
    rng = np.random.default_rng(0)
    corpus = synth.clean_corpus("train")
    sims = []
    for iso in np.geomspace(*synth.SRGB_ISO_RANGE, 24):  # the training range, evenly in log ISO
        img = corpus[rng.integers(len(corpus))]
        y, x = rng.integers(0, img.shape[0] - 128 + 1), rng.integers(0, img.shape[1] - 128 + 1)
        noisy, clean, _ = synth.srgb_pair(img[y:y + 128, x:x + 128], rng, iso=iso)
        sims.append(synth.noise_stats(noisy - clean, clean, min_count=50))
    sim_level = np.array([np.nanmean(s["std"]) for s in sims if not np.isnan(s["std"]).all()])
    sim_lag1 = np.array([s["autocorr"][0] for s in sims])
    for subset, rows in synth.dev_pairs().items():
        for name, n, c in rows:
            real = synth.noise_stats(n - c, c)
            assert sim_level.min() < np.nanmean(real["std"]) < sim_level.max(), (name, real["std"])
            assert sim_lag1.min() < real["autocorr"][0] < sim_lag1.max(), (name, real["autocorr"])
