"""Filter2Noise: the filter from first principles (2-D and 3-D), the self-supervised pairs and SURE, fitting,
ONNX parity, and the engine method (normalisation round-trip, region locality in-plane and through-plane,
spacing, tiling, bad inputs, learning on real MR). Fits are a few steps on small real images (pydicom's
CT_small 128², MR_small 64², emri_small 10×64²; slices of the toshiba_b0 series) so the file stays quick
on a 2-core CPU."""
from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from quietlens.engine import catalogue, runtime
from quietlens.engine.errors import Cancelled, InvalidImageError, QuietLensError
from quietlens.engine.image import Image
from quietlens.engine.methods import f2n as method_mod
from quietlens.engine.methods import get, resolve_params
from quietlens.engine.noise.estimate import pixel_sigma
from quietlens.engine.progress import CancelToken, no_progress
from quietlens.models import f2n

QUICK = f2n.FitConfig(iterations=8, min_iterations=8, crop=64, seed=0)


def _dicom(name: str, kind: str) -> Image:
    ds = pydicom.dcmread(get_testdata_file(name))
    return Image(apply_modality_lut(ds.pixel_array, ds).astype(np.float32), kind, "HW", "dicom")


@pytest.fixture(scope="module")
def ct() -> Image:
    return _dicom("CT_small.dcm", "ct")


@pytest.fixture(scope="module")
def method() -> method_mod.FilterToNoise:
    return method_mod.FilterToNoise(QUICK)


@pytest.fixture(scope="module")
def ct_state(ct, method):
    return method.prepare(ct, no_progress, CancelToken())


def _run(method, image, state, regions=None, **params):
    values = resolve_params(method, params)
    return method.run(image, state, values, regions, no_progress, CancelToken()).data


# -- the filter from first principles ------------------------------------------------------------------

def _sigmas(h, w, sx, sy, sr):
    return torch.tensor([sx, sy, sr], dtype=torch.float32).reshape(1, 3, 1, 1).expand(1, 3, h, w)


def test_infinite_range_width_is_a_truncated_gaussian_blur():
    rng = np.random.default_rng(1)
    x = rng.random((23, 31)).astype(np.float32)
    sx, sy, r = 1.3, 0.7, f2n.RADIUS
    got = f2n.bilateral(torch.from_numpy(x)[None, None], _sigmas(23, 31, sx, sy, 1e6)).numpy()[0, 0]
    d = np.arange(-r, r + 1)
    kernel = np.exp(-d[:, None] ** 2 / (2 * sy**2) - d[None, :] ** 2 / (2 * sx**2))
    kernel /= kernel.sum()
    padded = np.pad(x.astype(np.float64), r, mode="edge")
    want = sum(kernel[i, j] * padded[i:i + 23, j:j + 31] for i in range(2 * r + 1) for j in range(2 * r + 1))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_constant_image_is_unchanged_and_tiny_widths_are_identity():
    const = torch.full((1, 2, 9, 12), 0.3)
    s = torch.rand(1, 3, 9, 12) * 3 + 0.1
    np.testing.assert_allclose(f2n.bilateral(const, s).numpy(), 0.3, atol=1e-6)  # float32 rounding
    x = torch.rand(1, 1, 9, 12)
    assert torch.equal(f2n.bilateral(x, _sigmas(9, 12, 1e-4, 1e-4, 1.0)), x)  # no spatial reach
    ramp = torch.arange(108.0).reshape(1, 1, 9, 12) / 108  # all values distinct
    no_range = f2n.bilateral(ramp, _sigmas(9, 12, 2.0, 2.0, 1e-4))  # only equal values (edge copies) count
    np.testing.assert_allclose(no_range.numpy(), ramp.numpy(), rtol=1e-6)


def test_pair_downsample_and_local_shuffle():
    block = torch.tensor([[0.0, 10.0], [11.0, 30.0]]).reshape(1, 1, 2, 2)
    d1, d2 = f2n.pair_downsample(block)
    assert d1.item() == 10.5 and d2.item() == 15.0  # anti-diagonal, diagonal
    # The closest pair (10, 11) trades places; everything else stays.
    assert f2n.local_shuffle(block).flatten().tolist() == [0.0, 11.0, 10.0, 30.0]
    x = torch.rand(2, 3, 8, 10)
    y = f2n.local_shuffle(x)
    assert torch.equal(y, f2n.local_shuffle(x))
    blocks = lambda t: torch.nn.functional.pixel_unshuffle(t, 2).reshape(2, 3, 4, -1).sort(2).values  # noqa: E731
    assert torch.equal(blocks(x), blocks(y))  # a permutation inside each 2×2 block


def test_predictor_sigmas_are_positive_and_bounded():
    torch.manual_seed(0)
    p = f2n.SigmaPredictor(channels=3, noise=0.02)
    for m in p.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=50.0)  # drive the sigmoid to both ends
    s = p(torch.rand(2, 3, 21, 35)).detach()
    assert s.shape == (2, 6, 21, 35)
    caps = torch.tensor([f2n.SPATIAL_CAP, f2n.SPATIAL_CAP, f2n.RANGE_CAP * 0.02] * 2).reshape(1, 6, 1, 1)
    assert (s > 0).all() and (s <= (caps + f2n.SIGMA_FLOOR) * (1 + 1e-6)).all()


# -- fitting and export --------------------------------------------------------------------------------

def _ct_normalised(ct: Image) -> np.ndarray:
    return method_mod.normalisation_for(ct).forward(ct.data)[None]


def test_fit_is_deterministic_for_a_seed(ct):
    x = _ct_normalised(ct)
    noise = pixel_sigma(x)
    a, b = f2n.fit([x], noise, QUICK), f2n.fit([x], noise, QUICK)
    c = f2n.fit([x], noise, dataclasses.replace(QUICK, seed=1))
    assert a.losses == b.losses
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert a.losses != c.losses


def test_fit_stops_early_on_a_plateau_and_can_be_cancelled():
    flat = np.full((1, 32, 32), 0.5, np.float32)  # loss is 0 from the start: a plateau
    cfg = dataclasses.replace(QUICK, iterations=100, min_iterations=5, patience=3)
    r = f2n.fit([flat], 0.0, cfg)
    assert r.stopped_early and r.iterations == 5
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        f2n.fit([flat], 0.0, cfg, cancel=token)


def test_onnx_graphs_match_pytorch_on_a_real_slice(ct, ct_state):
    x = _ct_normalised(ct)[None]
    sigmas = runtime.session(ct_state.predictor).run({"image": x})[0]
    result = f2n.fit([x[0]], pixel_sigma(x[0]), QUICK)  # the same seed and noise: the state's predictor
    with torch.no_grad():
        want = result.model.predictor(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sigmas, want, rtol=1e-4, atol=1e-6)
    feeds = {"image": x, "sigma1": sigmas[:, :3], "sigma2": sigmas[:, 3:]}
    out = runtime.session(method_mod.FILTER_MODEL).run(feeds)[0]
    with torch.no_grad():
        ref = f2n.filter_stages(torch.from_numpy(x), torch.from_numpy(sigmas[:, :3]), torch.from_numpy(sigmas[:, 3:]))
    np.testing.assert_allclose(out, ref.numpy(), atol=2e-6)  # normalised units: 1e-2 HU
    assert np.abs(out - x).max() > 1e-3  # and it did filter


def test_shipped_filter_graph_is_what_the_export_script_writes():
    entry = catalogue.load()[method_mod.FILTER_MODEL]
    assert entry.receptive_field == 2 * f2n.RADIUS
    assert hashlib.sha256(f2n.export_filter()).hexdigest() == entry.sha256


# -- the engine method ---------------------------------------------------------------------------------

def test_registered_with_its_parameters():
    m = get("f2n")
    assert set(m.kinds) == {"ct", "mr", "medical", "photo"}
    assert [p.name for p in m.params] == ["strength", *method_mod.STAGE_SIGMAS]
    with pytest.raises(QuietLensError):
        resolve_params(m, {"stage1_sigma_r": "5"})  # outside [0, 4]


def test_ct_round_trip_is_exact_and_out_of_range_hu_untouched(ct, method):
    hu = ct.data.copy()
    hu[:3, :] = -3024.0  # outside-FOV padding
    hu[60:63, 60:63] = 3500.0  # metal
    image = ct.with_data(hu)
    state = method.prepare(image, no_progress, CancelToken())
    off = {k: 0.0 for k in method_mod.STAGE_SIGMAS}  # every width ~0: the filter is the identity
    assert np.array_equal(_run(method, image, state, **off), hu)
    out = _run(method, image, state)
    outside = (hu < -1024) | (hu > 3071)
    assert np.array_equal(out[outside], hu[outside])
    assert not np.array_equal(out[~outside], hu[~outside])
    assert np.array_equal(_run(method, image, state, strength=0.0), hu)


def test_flat_region_mean_hu_does_not_shift(method):
    rng = np.random.default_rng(3)
    hu = np.full((96, 96), 40.0, np.float32)
    hu[:, 48:] = 300.0
    noisy = (hu + rng.normal(0, 25, hu.shape)).astype(np.float32)
    image = Image(noisy, "ct", "HW", "dicom")
    out = _run(method, image, method.prepare(image, no_progress, CancelToken()))
    for cols in (slice(8, 40), slice(56, 88)):  # each flat half, away from the edge and borders
        region = (slice(8, 88), cols)
        assert abs(out[region].mean() - noisy[region].mean()) < 0.5  # HU
        assert out[region].std() < 0.8 * noisy[region].std()


def test_region_edit_changes_only_that_region(ct, ct_state, method):
    base = _run(method, ct, ct_state)
    inside = np.zeros(ct.data.shape, bool)
    inside[40:70, 50:90] = True
    support = np.zeros_like(inside)  # pixels within the two stages' reach (2 × radius) of the region
    r = 2 * f2n.RADIUS
    support[40 - r:70 + r, 50 - r:90 + r] = True
    for name in ct_state.names:  # a 2-D slice: no sigma_z
        regions = {name: np.where(inside, 3.0, 1.0).astype(np.float32)}
        t = time.perf_counter()
        edited = _run(method, ct, ct_state, regions)
        assert time.perf_counter() - t < 1.0
        assert np.array_equal(edited[~support], base[~support]), name
        assert not np.array_equal(edited[inside], base[inside]), name
    # strength acts per pixel: exact, no spatial reach at all
    edited = _run(method, ct, ct_state, {"strength": np.where(inside, 0.0, 1.0).astype(np.float32)})
    assert np.array_equal(edited[~inside], base[~inside])
    assert np.array_equal(edited[inside], ct.data[inside])
    # edits never compound: the same edit twice gives the same result
    regions = {"stage2_sigma_r": np.where(inside, 0.5, 1.0).astype(np.float32)}
    assert np.array_equal(_run(method, ct, ct_state, regions), _run(method, ct, ct_state, regions))
    with pytest.raises(QuietLensError):
        _run(method, ct, ct_state, {"sigma_q": np.ones(ct.data.shape, np.float32)})


def test_region_edit_of_a_512_slice_takes_well_under_a_second(method):
    # A prepared state with given maps: timing the filter graph needs no fit.
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 30, (512, 512)).astype(np.float32)
    image = Image(hu, "ct", "HW", "dicom")
    norm = method_mod.normalisation_for(image)
    sig = np.tile(np.array([1.0, 1.0, 0.01] * 2, np.float32)[:, None, None], (1, 512, 512))
    state = method_mod.F2NState(norm, method_mod._planes(image), sigmas={0: sig})
    _run(method, image, state)  # warm the session
    mask = np.ones((512, 512), np.float32)
    mask[100:300, 200:400] = 2.0
    t = time.perf_counter()
    _run(method, image, state, {"stage1_sigma_x": mask})
    # About 0.2 s on an idle 2-core CPU; the bound leaves room for a busy shared runner.
    assert time.perf_counter() - t < 2.0


def test_artifacts_are_the_fitted_maps_in_image_units(ct_state, method):
    maps = method.artifacts(ct_state)
    assert sorted(maps) == sorted(ct_state.names) == sorted(n for n in method_mod.STAGE_SIGMAS if "_z" not in n)
    for name, m in maps.items():
        assert m.shape == (128, 128) and m.dtype == np.float32 and (m > 0).all()
    hu_per_unit = method_mod.CT_RANGE[1] - method_mod.CT_RANGE[0]
    np.testing.assert_allclose(maps["stage1_sigma_r"], ct_state.sigmas[0][2] * hu_per_unit, rtol=1e-6)
    assert maps["stage1_sigma_x"].max() <= f2n.SPATIAL_CAP + f2n.SIGMA_FLOOR


def test_mr_volume_and_colour_photo(method):
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))  # real MR, 10 frames of 64²
    vol = Image(apply_modality_lut(ds.pixel_array, ds).astype(np.float32), "mr", "ZHW", "dicom")
    state = method.prepare(vol, no_progress, CancelToken())
    assert state.depth == 10 and state.fit["loss"] == "sure"  # a volume: fitted and filtered in 3-D
    assert state.fit["planes"] == [5]  # one slab: the whole (short) volume
    out = _run(method, vol, state)
    assert out.shape == vol.data.shape and np.isfinite(out).all() and not np.array_equal(out, vol.data)
    assert method.artifacts(state)["stage2_sigma_r"].shape == (10, 64, 64)
    off = {k: 0.0 for k in method_mod.STAGE_SIGMAS}
    assert np.array_equal(_run(method, vol, state, **off), vol.data)  # percentile rule restores exactly

    rng = np.random.default_rng(0)
    clean = np.zeros((48, 40, 3), np.float32)
    clean[:, :20] = (0.2, 0.5, 0.8)
    clean[:, 20:] = (0.7, 0.3, 0.1)
    photo = Image(np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32), "photo", "HWC", "png")
    out = _run(method, photo, method.prepare(photo, no_progress, CancelToken()))
    assert out.shape == (48, 40, 3)
    assert np.abs(out - clean).mean() < np.abs(photo.data - clean).mean()


def test_bad_inputs(ct, method):
    """NaN, 1-px-wide and raw images raise InvalidImageError; a constant image comes back unchanged
    (no fit); a 16×16 slice is denoised like any other."""
    nan = ct.data.copy()
    nan[5, 5] = np.nan
    for bad in (ct.with_data(nan), ct.with_data(ct.data[:, :1].copy()),
                Image(np.zeros((32, 32), np.float32), "raw", "HW", "raw")):
        with pytest.raises(InvalidImageError):
            method.prepare(bad, no_progress, CancelToken())
    const = ct.with_data(np.full((64, 64), 40.0, np.float32))
    state = method.prepare(const, no_progress, CancelToken())
    assert state.norm is None and np.array_equal(_run(method, const, state), const.data)
    assert method.artifacts(state) == {}
    small = ct.with_data(np.ascontiguousarray(ct.data[40:56, 40:56]))
    out = _run(method, small, method.prepare(small, no_progress, CancelToken()))
    assert out.shape == (16, 16) and np.isfinite(out).all()
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        method.prepare(ct, no_progress, token)


# -- volumes: the 3-D filter, spacing, region locality, tiling, learning on real MR ----------------------

def test_volume_filter_from_first_principles():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.random((1, 1, 6, 9, 11)).astype(np.float32))

    def maps(sx, sz, sr):
        return torch.tensor([sx, sx, sz, sr], dtype=torch.float32).reshape(1, 4, 1, 1, 1).expand(1, 4, 6, 9, 11)

    # No in-plane reach and no range limit: a 3-tap Gaussian along z, weights exp(−(k·step)²/2σz²),
    # end slices repeated.
    for step, sz in ((1.0, 0.8), (2.5, 2.0)):
        got = f2n.bilateral(x, maps(1e-4, sz, 1e6), radius_z=1, slice_step=step).numpy()[0, 0]
        padded = np.pad(x.numpy()[0, 0].astype(np.float64), ((1, 1), (0, 0), (0, 0)), mode="edge")
        k = np.exp(-(np.array([-1.0, 0.0, 1.0]) * step) ** 2 / (2 * sz * sz))
        want = sum(k[i] * padded[i:i + 6] for i in range(3)) / k.sum()
        np.testing.assert_allclose(got, want, atol=1e-6)
    # Slices far apart (anisotropic voxels): the 3-D filter is the 2-D filter of each slice.
    s3 = maps(1.3, 1.0, 0.3)
    far = f2n.bilateral(x, s3, radius_z=1, slice_step=1e3)
    per_slice = f2n.bilateral(x[0].transpose(0, 1), s3[0, [0, 1, 3]].transpose(0, 1)).transpose(0, 1)[None]
    np.testing.assert_allclose(far.numpy(), per_slice.numpy(), atol=1e-6)
    # The exported 3-D graph is the same filter (the fitting path computes the spatial term differently).
    s1, s2 = maps(1.1, 0.9, 0.2), maps(0.7, 1.6, 0.5)
    step = np.array([1.7], np.float32)
    feeds = {"image": x.numpy(), "sigma1": s1.numpy().copy(), "sigma2": s2.numpy().copy(), "slice_step": step}
    out = runtime.session(method_mod.FILTER3D_MODEL).run(feeds)[0]
    ref = f2n.filter_stages(x, s1, s2, f2n.RADIUS, f2n.RADIUS_Z, 1.7)
    np.testing.assert_allclose(out, ref.numpy(), atol=2e-6)


@pytest.mark.slow
def test_shipped_3d_filter_graph_is_what_the_export_script_writes():
    entry = catalogue.load()[method_mod.FILTER3D_MODEL]
    assert entry.receptive_field == 2 * f2n.RADIUS and method_mod.RADIUS_Z == f2n.RADIUS_Z
    assert hashlib.sha256(f2n.export_filter3d()).hexdigest() == entry.sha256


def test_spacing_sets_the_slice_step(mr_series_dir):
    from quietlens.engine import io

    series = io.load(mr_series_dir)  # 3 mm slices of 3 mm pixels
    assert method_mod.volume_geometry(series) == (40, pytest.approx(1.0, rel=1e-6))
    from nibabel.testing import data_path

    nifti = io.load(Path(data_path) / "example4d.nii.gz")  # TZHW
    assert method_mod.volume_geometry(nifti) == (24, pytest.approx(2.2 / 2.0, rel=1e-5))
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))  # multi-frame, no spacing: isotropic
    vol = Image(apply_modality_lut(ds.pixel_array, ds).astype(np.float32), "mr", "ZHW", "dicom")
    assert method_mod.volume_geometry(vol) == (10, 1.0)
    thick = vol.with_data(vol.data, spacing=(5.0, 0.5, 0.5))
    assert method_mod.volume_geometry(thick) == (10, 10.0)
    assert method_mod.volume_geometry(vol.with_data(np.ascontiguousarray(vol.data[:2]))) == (1, 1.0)  # 2-D
    # The filter weighs neighbouring slices by their real distance: with slices 10 px apart σz = 1 px
    # gives them no weight, so the volume is filtered slice by slice.
    state = _volume_state(vol, step=1.0)
    far = dataclasses.replace(state, slice_step=10.0)
    method = method_mod.FilterToNoise()
    near_out, far_out = _run(method, vol, state), _run(method, vol, far)
    flat = dataclasses.replace(state, depth=1, sigmas={i: s[[0, 1, 3, 4, 5, 7]] for i, s in state.sigmas.items()})
    np.testing.assert_allclose(far_out, _run(method, vol, flat), atol=1e-3)  # scanner units 0–467
    assert np.abs(near_out - far_out).max() > 1.0


def _volume_state(image: Image, step: float = 1.0, seed: int = 0) -> method_mod.F2NState:
    """A prepared 3-D state with given, spatially varying maps: filter tests need no fit."""
    rng = np.random.default_rng(seed)
    planes = method_mod._planes(image)
    norm = method_mod.normalisation_for(image)
    h, w = planes.shape[2:]
    sigmas = {}
    for i in range(len(planes)):
        spatial = rng.uniform(0.5, 1.5, (6, h, w)).astype(np.float32)
        ranges = rng.uniform(0.02, 0.1, (2, h, w)).astype(np.float32)
        sigmas[i] = np.concatenate([spatial[:3], ranges[:1], spatial[3:], ranges[1:]])
    return method_mod.F2NState(norm, planes, sigmas=sigmas, depth=len(planes), slice_step=step)


@pytest.fixture(scope="module")
def emri() -> Image:
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))  # real MR, 10 frames of 64²
    return Image(apply_modality_lut(ds.pixel_array, ds).astype(np.float32), "mr", "ZHW", "dicom")


def test_volume_region_edit_changes_only_its_reach(emri, method):
    state = _volume_state(emri)
    base = _run(method, emri, state)
    inside = np.zeros(emri.data.shape, bool)
    inside[4:6, 20:36, 16:40] = True
    rz, r = 2 * f2n.RADIUS_Z, 2 * f2n.RADIUS  # the two stages' reach through-plane and in-plane
    reach = np.zeros_like(inside)
    reach[4 - rz:6 + rz, 20 - r:36 + r, 16 - r:40 + r] = True
    for name in state.names:
        edited = _run(method, emri, state, {name: np.where(inside, 3.0, 1.0).astype(np.float32)})
        assert np.array_equal(edited[~reach], base[~reach]), name
        assert not np.array_equal(edited[inside], base[inside]), name
        slices = np.unique(np.argwhere(edited != base)[:, 0])
        # Stage 1's maps reach the neighbouring slices through stage 2; stage 2's act on their own voxels.
        assert list(slices) == ([3, 4, 5, 6] if name.startswith("stage1") else [4, 5]), name
    edited = _run(method, emri, state, {"strength": np.where(inside, 0.0, 1.0).astype(np.float32)})
    assert np.array_equal(edited[~inside], base[~inside]) and np.array_equal(edited[inside], emri.data[inside])


def test_volume_tiled_equals_untiled(emri, method, monkeypatch):
    vol = emri.with_data(np.ascontiguousarray(emri.data[2:8, 8:56, 8:56]))
    state = _volume_state(vol, step=1.3)
    whole = _run(method, vol, state)
    # One slice per slab, and a budget this small forces in-plane tiles (48² planes, ~1.5 kB per voxel).
    monkeypatch.setattr(method_mod, "SLAB", 1)
    monkeypatch.setenv("QUIETLENS_TILE_BUDGET_MB", "6")
    tiled = _run(method, vol, state)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)  # scanner units 0–467: float32 rounding
    assert not np.array_equal(whole, vol.data)


@pytest.mark.slow
def test_fit_learns_on_the_real_mr_series(mr_series_dir):
    """The series on which the fit used to collapse (sigmas ~0.05 px, output bit-identical to the input):
    a short 3-D fit on 12 of its slices removes a good part of the measured noise, and what it removes is
    not structure (uncorrelated with the result where the signal is)."""
    from quietlens.engine import io, pipeline

    series = io.load(mr_series_dir)
    vol = series.with_data(np.ascontiguousarray(series.data[12:24]))
    method = method_mod.FilterToNoise(f2n.FitConfig(iterations=20, min_iterations=20))
    result = pipeline.denoise(vol, method)
    state, out = result.state, result.image.data
    assert state.depth == 12 and state.fit["loss"] == "sure"
    sigma = pixel_sigma(vol.data)
    residual = out - vol.data
    assert np.sqrt(np.mean(residual ** 2)) > 0.25 * sigma  # it used to be exactly 0
    signal = vol.data > np.median(vol.data)
    assert abs(np.corrcoef(residual[signal], out[signal])[0, 1]) < 0.1
    maps = method.artifacts(state)
    assert maps["stage1_sigma_x"].mean() > 0.3 and maps["stage1_sigma_z"].shape == (12, 64, 64)
    assert result.warnings == []
