"""`make run`'s job: a simulated low-dose scan of pydicom's CT slice, denoised by Filter2Noise."""
from __future__ import annotations

import pydicom

from quietlens.engine import io
from quietlens.engine.demo import run_demo


def test_demo_denoises_and_writes_readable_dicom(tmp_path, capsys):
    rows = run_demo(tmp_path)
    assert rows["f2n"]["rmse_hu"] < 0.8 * rows["low dose"]["rmse_hu"]
    assert rows["f2n"]["ssim"] > rows["low dose"]["ssim"]
    for name in ("full_dose.dcm", "low_dose.dcm", "denoised.dcm"):
        assert io.load(tmp_path / name).kind == "ct"
    # only the method's output says it was denoised, once; the simulated scans do not
    described = {name: pydicom.dcmread(tmp_path / name).SeriesDescription
                 for name in ("full_dose.dcm", "low_dose.dcm", "denoised.dcm")}
    assert described["denoised.dcm"].count("QuietLens denoised") == 1
    assert "denoised" not in described["full_dose.dcm"] + described["low_dose.dcm"]
    assert "method f2n" in pydicom.dcmread(tmp_path / "denoised.dcm").DerivationDescription
    for name in ("full_dose.dcm", "low_dose.dcm"):  # written by QuietLens, not denoised by it
        assert pydicom.dcmread(tmp_path / name).DerivationDescription.startswith("Written by QuietLens")
    assert (tmp_path / "preview.png").stat().st_size > 0
    assert "RMSE (HU)" in capsys.readouterr().out
