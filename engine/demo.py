"""The bundled default job: a real CT slice, a simulated low-dose scan of it, and its denoising.

pydicom ships a real 128² CT slice (``CT_small.dcm``). The demo simulates a low-dose acquisition of it
(projection-domain Poisson noise, see :mod:`quietlens.engine.noise.ct`), writes that as a DICOM file,
denoises it through the same path as ``quietlens denoise``, and prints the error against the matched
full-dose reconstruction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import display, io, pipeline
from .noise.ct import simulate_low_dose

SOFT_TISSUE = display.CT_PRESETS["soft tissue"]


def _errors(ref: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """RMSE in HU, and SSIM in the soft-tissue window (what a reader looks at)."""
    from skimage.metrics import structural_similarity

    rmse = float(np.sqrt(np.mean((ref - test) ** 2)))
    lo = SOFT_TISSUE[0] - SOFT_TISSUE[1] / 2
    a, b = (np.clip(x, lo, lo + SOFT_TISSUE[1]) for x in (ref, test))
    return rmse, float(structural_similarity(a, b, data_range=SOFT_TISSUE[1]))


def run_demo(out_dir: Path, method: str = "f2n", provider: str = "auto", photons: float = 2e4) -> dict:
    from pydicom.data import get_testdata_file

    out_dir.mkdir(parents=True, exist_ok=True)
    source = io.load(get_testdata_file("CT_small.dcm"))
    full, low = simulate_low_dose(source.data, photons=photons, pixel_mm=source.spacing[-1])
    reference = io.save(source.with_data(full), out_dir / "full_dose.dcm", overwrite=True)
    noisy = io.save(source.with_data(low), out_dir / "low_dose.dcm", overwrite=True)
    result = pipeline.denoise_file(noisy, out_dir / "denoised.dcm", method, provider=provider, overwrite=True)

    # Compare what was written, as a user reading the files back would.
    reference_hu, noisy_hu, denoised = (io.load(p).data for p in (reference, noisy, out_dir / "denoised.dcm"))
    rows = {"low dose": _errors(reference_hu, noisy_hu), method: _errors(reference_hu, denoised)}
    preview = np.hstack([display.window(x, *SOFT_TISSUE) for x in (reference_hu, noisy_hu, denoised)])
    import cv2

    cv2.imwrite(str(out_dir / "preview.png"), preview)
    print(f"QuietLens demo: pydicom CT_small.dcm, simulated low dose ({photons:g} photons/bin) → {method}")
    print(f"{'':<10} {'RMSE (HU)':>10} {'SSIM':>7}   (against the full-dose reconstruction)")
    for name, (rmse, ssim) in rows.items():
        print(f"{name:<10} {rmse:>10.1f} {ssim:>7.3f}")
    print(f"{method} ran on {result.provider}: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.seconds.items()))
    print(f"files in {out_dir}/: full_dose.dcm low_dose.dcm denoised.dcm preview.png (full | low | denoised)")
    return {name: {"rmse_hu": r, "ssim": s} for name, (r, s) in rows.items()}
