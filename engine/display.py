"""Turn an Image into 8-bit pixels for viewing and previews (window/level for CT and MR)."""
from __future__ import annotations

import numpy as np

from .image import Image

# Common CT windows (centre, width) in HU.
CT_PRESETS = {
    "brain": (40.0, 80.0),
    "soft tissue": (50.0, 400.0),
    "abdomen": (60.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}


def window(data: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Linear window/level to uint8: ``centre ± width/2`` maps to 0..255."""
    lo = centre - width / 2.0
    scaled = (data.astype(np.float32) - lo) * (255.0 / max(width, 1e-6))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def auto_window(data: np.ndarray) -> tuple[float, float]:
    """A robust window from the 0.5th–99.5th percentiles of the finite values."""
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return float(lo + hi) / 2.0, float(max(hi - lo, 1e-6))


def to_display(image: Image, index: int = 0, win: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 ``H×W`` (grey) or ``H×W×3`` (colour) for plane ``index`` of the image."""
    plane = image.slices()[index]
    if image.kind == "photo":
        rgb = np.clip(np.rint(plane * 255.0), 0, 255).astype(np.uint8)
        return rgb[..., 0] if rgb.shape[-1] == 1 else rgb
    if image.kind == "raw":
        from .io import raw

        rendered = raw.render(image, half_size=True)
        return np.clip(np.rint(rendered * 255.0), 0, 255).astype(np.uint8)
    centre, width = win or image.window or auto_window(plane)
    return window(plane, centre, width)
