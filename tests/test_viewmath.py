"""The viewer's array work: planes, read-outs, residuals, histograms, preview crops, noise models."""
from __future__ import annotations

import numpy as np
import pytest

from quietlens.engine import viewmath as vm
from quietlens.engine.image import Image
from quietlens.engine.methods import Method, NoiseModel
from quietlens.engine.methods.yond import noise_model_of
from quietlens.engine.noise.estimate import NoiseFit
from quietlens.engine.regions import Region, Shape, region_maps


def volume(fmt="dicom"):
    data = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    return Image(data, "ct", "ZHW", fmt, spacing=(3.0, 1.0, 0.5))


@pytest.mark.parametrize("orientation", vm.ORIENTATIONS)
@pytest.mark.parametrize("fmt", ["dicom", "nifti"])
def test_voxel_names_the_pixel_the_plane_shows(orientation, fmt):
    image = volume(fmt)
    view = vm.View(orientation, 1)
    pixels = vm.plane(image, view)
    assert pixels.shape == vm.plane_shape(image, orientation)
    for r in range(pixels.shape[0]):
        for c in range(pixels.shape[1]):
            assert image.data[vm.voxel(image, view, r, c)] == pixels[r, c]
    assert vm.voxel(image, view, -1, 0) is None


def test_coronal_shows_last_slice_on_top_and_aspect_from_spacing():
    image = volume()
    assert (vm.plane(image, vm.View("coronal", 2))[0] == image.data[2, 2]).all()
    assert vm.plane_count(image, "sagittal") == 5
    assert vm.plane_aspect(image, "axial") == 2.0
    assert vm.plane_aspect(image, "coronal") == 6.0
    assert vm.orientations(Image(np.zeros((4, 4), np.float32), "ct", "HW", "dicom")) == ("axial",)


def test_extrude_matches_the_plane():
    image = volume("nifti")
    for o in vm.ORIENTATIONS:
        mask = np.zeros(vm.plane_shape(image, o), bool)
        mask[0, 1] = True
        full = vm.extrude(mask, image, o)
        for i in range(vm.plane_count(image, o)):
            view = vm.View(o, i)
            assert (full[vm.plane_index(image, view)] == mask).all()


def test_readout_units():
    ct = Image(np.full((4, 4), -1000.0, np.float32), "ct", "HW", "dicom")
    assert vm.readout(ct, vm.View(), 1, 2).endswith("-1000.0 HU")
    photo = Image(np.full((2, 2, 3), 0.5, np.float32), "photo", "HWC", "png")
    assert "R 127.5" in vm.readout(photo, vm.View(), 0, 0)
    meta = {"raw_pattern": [[0, 1], [3, 2]], "black_level_per_channel": [100, 110, 120, 130],
            "white_level": 1100, "cfa_pattern": "RGGB"}
    raw = Image(np.full((4, 4), 0.5, np.float32), "raw", "HW", "raw", meta=meta)
    assert vm.readout(raw, vm.View(), 0, 1).endswith("605 DN (G)")  # 0.5 × (1100 − 110) + 110
    assert vm.readout(raw, vm.View(), 9, 9) == ""


def test_residual_units_are_the_readouts():
    """A data difference times ``value_units`` is the difference the read-out shows."""
    meta = {"raw_pattern": [[0, 1], [3, 2]], "black_level_per_channel": [110] * 4, "white_level": 1100,
            "cfa_pattern": "RGGB"}
    data = np.zeros((4, 4), np.float32)
    data[0, 1] = 0.25
    raw = Image(data, "raw", "HW", "raw", meta=meta)
    factor, unit = vm.value_units(raw)
    assert unit == "DN" and vm.raw_dn(raw, 0, 1) - vm.raw_dn(raw, 0, 0) == pytest.approx(0.25 * factor)
    photo = Image(np.full((2, 2, 3), 0.1, np.float32), "photo", "HWC", "png")
    assert "R 25.5" in vm.readout(photo, vm.View(), 0, 0) and vm.value_units(photo)[0] * 0.1 == pytest.approx(25.5)
    assert vm.value_units(Image(data, "ct", "HW", "dicom")) == (1.0, "HU")


def test_residual_is_centred_and_scaled():
    rng = np.random.default_rng(0)
    before = rng.normal(0, 1, (64, 64)).astype(np.float32)
    grey, spread = vm.residual(before, np.zeros_like(before))
    assert 4.0 < spread < 8.0  # about 4 σ
    assert abs(float(np.median(grey)) - 128) <= 2
    grey, spread = vm.residual(before, before)
    assert (grey == 128).all()


def test_histogram_counts_every_sample_per_channel():
    pixels = np.random.default_rng(1).random((20, 30, 3)).astype(np.float32)
    counts, edges = vm.histogram(pixels, bins=16, value_range=(0, 1))
    assert counts.shape == (3, 16) and edges.shape == (17,)
    assert (counts.sum(axis=1) == 600).all()


def test_preview_boxes_are_grid_tiles_with_even_context():
    core, box = vm.preview_boxes((1000, 1200), (300, 10, 400, 20), tile=256, halo=32)
    assert core == (256, 0, 512, 256)
    assert box == (224, 0, 544, 288)
    assert all(v % 2 == 0 for v in box)
    whole, _ = vm.preview_boxes((100, 120), (0, 0, 100, 120))
    assert whole == (0, 0, 100, 120)


def test_preview_crop_and_paste_of_a_local_filter_equal_the_full_run():
    rng = np.random.default_rng(2)
    image = Image(rng.random((300, 340)).astype(np.float32), "ct", "HW", "dicom")

    def box3(a):  # a local 3×3 mean with reflected borders
        p = np.pad(a, 1, mode="reflect")
        return sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9

    full = box3(image.data)
    view = vm.View()
    core, box = vm.preview_boxes((300, 340), (100, 100, 150, 150), tile=64, halo=4)
    sub = vm.crop(image, view, box)
    pasted = vm.paste(image, view, sub.with_data(box3(sub.data)), core, box)
    y0, x0, y1, x1 = core
    np.testing.assert_allclose(pasted.data[y0:y1, x0:x1], full[y0:y1, x0:x1], rtol=1e-6)
    assert (pasted.data[:y0] == image.data[:y0]).all()


def test_crop_maps_follow_the_crop():
    image = volume("nifti")
    maps = region_maps(image, [Region("r", [Shape("rect", [(1, 1), (3, 2)])], multipliers={"strength": 0.5})])
    view = vm.View("axial", 2)
    sub = vm.crop(image, view, (0, 0, 4, 5))
    cut = vm.crop_maps(maps, image, view, (0, 0, 4, 5))
    assert cut["strength"].shape == sub.data.shape
    assert (cut["strength"][1, 1:3] == 0.5).all() and cut["strength"].sum() == 20 - 2 * 0.5


def test_noise_model_line_spans_the_measured_means():
    nm = NoiseModel(2.0, 3.0, np.array([1.0, 2, 3]), np.array([11.0, 13, 15]))
    assert nm.K == 2.0 and nm.sigma == 3.0
    xs, ys = nm.line()
    assert list(xs) == [1, 3] and list(ys) == [11, 15]
    assert NoiseModel(0.5, 2.0).line()[1].tolist() == [4.0, 4.5]  # no scatter: over 0–1
    assert NoiseModel(1.0, None).line() is None


def test_artifacts_become_grey_images():
    class M(Method):
        def artifacts(self, state):
            return {"sigma": np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4), "bad": np.zeros(3)}

    out = vm.grey_maps(M().artifacts(object()))
    assert list(out) == ["sigma"] and out["sigma"].dtype == np.uint8
    assert vm.grey_maps(Method().artifacts(object())) == {}


def test_histogram_heights_are_log_scaled_to_one():
    h = vm.histogram_heights(np.array([[0, 9, 99]]))
    assert h[0, 0] == 0 and h[0, 2] == 1.0 and abs(h[0, 1] - 0.5) < 1e-9
    assert (vm.histogram_heights(np.zeros((1, 4))) == 0).all()


def test_noise_model_from_a_fit_is_in_sensor_units():
    fit = NoiseFit(gain=0.01, read_var=0.0004, span=1000.0, method="cne-fine", r2=0.98, samples=2,
                   points=np.array([[0.1, 0.0014, 1.0], [0.5, 0.0054, 1.0]]))  # normalised units
    nm = noise_model_of(fit, "blind estimate")
    assert nm.K == 10.0 and abs(nm.sigma - 20.0) < 1e-9 and nm.units == "DN"
    np.testing.assert_allclose(nm.means, [100, 500])
    np.testing.assert_allclose(nm.variances, [1400, 5400])
    np.testing.assert_allclose(nm.line()[1], [1400, 5400])  # the line goes through the points it fits
    assert nm.source == "blind estimate (cne-fine)" and nm.facts == {"R²": 0.98, "samples": 2}
