"""The processing session without Qt: prepare once, re-run on slider and region changes, previews that equal
the export, and provenance on every save — also after a slider move."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from quietlens.engine import catalogue, io, viewmath
from quietlens.engine.errors import Cancelled, QuietLensError
from quietlens.engine.methods import STRENGTH, Method, Param, blend, get
from quietlens.engine.methods.f2n import FILTER_MODEL, FilterToNoise
from quietlens.engine.progress import CancelToken
from quietlens.engine.regions import Region, Shape
from quietlens.engine.session import FULL, Session
from quietlens.models import f2n

QUICK = f2n.FitConfig(iterations=8, min_iterations=8, crop=64, seed=0)


class LocalMean(Method):
    """A 3×3 mean whose ``prepare`` is counted: a local method, so previews can equal the export."""

    name, title, summary, kinds = "test-mean", "Local mean", "test method", ("ct", "photo")
    params = (STRENGTH, Param("unused", 1.0, 0.0, 2.0, "a second slider"))

    def __init__(self):
        self.prepared = 0

    def prepare(self, image, progress, cancel, provider="auto"):
        self.prepared += 1
        return {"provider": provider}

    def run(self, image, state, params, regions, progress, cancel):
        cancel.check()
        a = image.data
        p = np.pad(a, [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2), mode="reflect")
        mean = sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9
        return image.with_data(blend(a, mean.astype(np.float32), params["strength"], (regions or {}).get("strength")))


@pytest.fixture
def ct(pydicom_ct):
    return io.load(pydicom_ct)


def test_slider_moves_rerun_without_preparing_again(ct):
    method, session = LocalMean(), Session(ct)
    first = session.run(method, {}, [])
    assert method.prepared == 1 and not first.reused_state and first.provider == "cpu"
    again = session.run(method, {"strength": 0.5}, [])
    assert method.prepared == 1 and again.reused_state and again.provider == "cpu"  # never "auto"
    np.testing.assert_allclose(again.result.data, (ct.data + first.result.data) / 2, rtol=1e-5, atol=1e-3)
    assert session.last is again and session.prepared(method, "auto", FULL)


def test_region_edit_changes_only_its_region(ct):
    method, session = LocalMean(), Session(ct)
    whole = session.run(method, {}, []).result.data
    region = Region("r", [Shape("rect", [(10, 20), (40, 60)])], multipliers={"strength": 0.0})
    out = session.run(method, {}, [region]).result.data
    inside = np.zeros(ct.data.shape, bool)
    inside[20:60, 10:40] = True
    np.testing.assert_array_equal(out[inside], ct.data[inside])
    np.testing.assert_array_equal(out[~inside], whole[~inside])


def test_preview_equals_the_export_on_its_core(ct, srgb_pairs):
    photo = io.load(next(n for n, _ in srgb_pairs if "/cc/" in str(n)))  # a real 512² photo
    method, session = LocalMean(), Session(photo)
    view = viewmath.View("axial", 0, 0)
    target = session.preview_target(method, view, (0, 0, 40, 40))
    assert target[0] == "preview"
    _, _, (y0, x0, y1, x1), _ = target
    preview = session.run(method, {}, [], target).result.data
    full = session.run(method, {}, []).result.data
    np.testing.assert_allclose(preview[y0:y1, x0:x1], full[y0:y1, x0:x1], rtol=1e-6)
    assert Session(ct).preview_target(method, view, (0, 0, 128, 128)) == FULL  # the whole image: no crop


def test_save_after_a_slider_move_records_method_parameters_and_model(ct, tmp_path):
    """The written DICOM names what made it, with the parameters of the latest run, not the first."""
    method, session = FilterToNoise(QUICK), Session(ct)
    session.run(method, {}, [])
    session.run(method, {"strength": 0.5, "stage1_sigma_r": 2.0}, [])
    out = session.save(tmp_path / "denoised.dcm")
    ds = pydicom.dcmread(out)
    text = ds.DerivationDescription
    assert "method f2n" in text and "strength=0.5" in text and "stage1_sigma_r=2" in text
    assert catalogue.entry(FILTER_MODEL).sha256 in text
    np.testing.assert_allclose(io.load(out).data, session.last.result.data, atol=1.0)  # HU, integer storage


def test_saving_needs_a_full_image_result(srgb_pairs, tmp_path):
    method, session = LocalMean(), Session(io.load(srgb_pairs[0][0]))
    with pytest.raises(QuietLensError, match="no full-image result"):
        session.save(tmp_path / "x.png")
    target = session.preview_target(method, viewmath.View("axial", 0, 0), (0, 0, 30, 30))
    session.run(method, {}, [], target)
    assert session.last.target != FULL
    with pytest.raises(QuietLensError, match="run the full image first"):
        session.save(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_bad_parameters_and_cancel_leave_the_last_result(ct):
    method, session = LocalMean(), Session(ct)
    last = session.run(method, {}, [])
    with pytest.raises(QuietLensError, match="strength must be"):
        session.run(method, {"strength": 3}, [])
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        session.run(method, {"strength": 0.2}, [], cancel=cancel)
    assert session.last is last


def test_choice_parameters_are_not_region_multipliers():
    network = next(p for p in get("cbsn").params if p.name == "network")
    assert not network.regional and network.parse("Student") == 2 and network.parse("1") == 1
    assert network.label(0) == "auto"
    with pytest.raises(QuietLensError, match="one of auto, teacher, student"):
        network.parse("turbo")  # "fast" names the fast student


def test_region_multipliers_are_checked_like_the_command_line(ct):
    method, session = LocalMean(), Session(ct)
    region = Region("r", [Shape("rect", [(0, 0), (10, 10)])], multipliers={"strength": 5.0})
    with pytest.raises(QuietLensError, match=r"multiplier for strength must be in \[0, 1\]"):
        session.run(method, {}, [region])
    region.multipliers = {"sigma_r": 2.0}  # another method's parameter: ignored here
    assert session.run(method, {}, [region]).result is not None


def test_a_volume_filtered_in_3d_previews_whole(mr_series_dir):
    series = io.load(mr_series_dir)
    view = viewmath.View("axial", 20, 0)
    assert Session(series).preview_target(FilterToNoise(QUICK), view, (0, 0, 16, 16)) == FULL
    plane = viewmath.crop(series, view, (0, 0, 64, 64))  # one slice: 2-D, a crop suffices
    assert not FilterToNoise(QUICK).preview_whole(plane)


def test_a_slider_rerun_that_undoes_the_denoising_says_so(srgb_pairs):
    method, session = LocalMean(), Session(io.load(srgb_pairs[-1][0]))  # a real noisy SIDD crop
    assert not session.run(method, {}, []).warnings
    assert "barely differs from the input" in session.run(method, {"strength": 0.0}, []).warnings[0]
