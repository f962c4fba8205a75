"""The pipeline never silently does nothing: a result that barely differs from an input whose own noise
estimate says there is noise to remove carries a plain warning, which the CLI prints and the batch report
records (per file, and counted)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from quietlens.engine import batch, pipeline
from quietlens.engine.cli import main
from quietlens.engine.image import Image
from quietlens.engine.methods import f2n as method_mod
from quietlens.engine.methods import resolve_params
from quietlens.engine.noise.estimate import pixel_sigma
from quietlens.engine.progress import CancelToken, no_progress
from quietlens.models import f2n


@pytest.fixture(scope="module")
def mr_slice() -> Image:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # real MR, 64², real noise
    return Image(apply_modality_lut(ds.pixel_array, ds).astype(np.float32), "mr", "HW", "dicom")


def test_an_unchanged_noisy_image_is_flagged(mr_slice):
    assert pixel_sigma(mr_slice.data[None]) > 0.005 * np.ptp(mr_slice.data)  # it has noise to remove
    result = pipeline.denoise(mr_slice, "passthrough")
    assert np.array_equal(result.image.data, mr_slice.data)
    assert len(result.warnings) == 1 and "barely differs" in result.warnings[0]


def test_an_image_without_noise_is_not_flagged():
    yy, xx = np.mgrid[:96, :128].astype(np.float32)
    smooth = 100 + 40 * np.sin(xx / 15) * np.cos(yy / 23)  # no noise: nothing to remove
    assert pipeline.denoise(Image(smooth, "mr", "HW", "nifti"), "passthrough").warnings == []


def test_f2n_fit_is_not_flagged_and_strength_zero_is(mr_slice):
    method = method_mod.FilterToNoise(f2n.FitConfig(iterations=30, min_iterations=30))
    on = pipeline.denoise(mr_slice, method)
    assert on.warnings == [] and not np.array_equal(on.image.data, mr_slice.data)
    values = resolve_params(method, {"strength": 0})
    off = method.run(mr_slice, on.state, values, None, no_progress, CancelToken())
    assert np.array_equal(off.data, mr_slice.data) and pipeline.unchanged_warning(mr_slice, off)


def test_cli_prints_and_batch_reports_it(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), src / "mr.dcm")
    assert main(["denoise", str(src / "mr.dcm"), "-o", str(tmp_path / "one.dcm"), "--method", "passthrough",
                 "-q"]) == 0
    assert "warning:" in capsys.readouterr().err
    results = batch.run_batch(src, tmp_path / "out", "passthrough")
    assert results[0].status == "done" and results[0].warnings
    report = json.loads((tmp_path / "out" / batch.REPORT_NAME).read_text())
    assert report["warned"] == 1 and "barely differs" in report["files"][0]["warnings"][0]
