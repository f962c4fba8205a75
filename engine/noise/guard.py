"""What the engine makes of a photo network's raw output: the photo's own low band in place of the
network's, the display range, and the detail guard (what a network removed far beyond the photo's noise
energy was detail: it is scaled back). Shared by the blind-spot method (:mod:`quietlens.engine.methods.bsn`)
and the training recipe, whose students distil to the teacher as the engine finishes it."""
from __future__ import annotations

import numpy as np

# A blind network cannot always tell fine texture from noise (McMaster's saturated patterns at ISO 400:
# one image came back 6.8 dB below its input; clean photos at 48 dB). What it removes where it only removed
# noise has about the energy of the noise at that brightness, and most of a photo is such; where the removed
# part carries more than GUARD_RATIO times that median energy, it is scaled back to it. Measured on the dev
# and evaluation sets (tests/benchmarks/bench_cbsn_sdap.py): clean photos 48.4 → 53.6 dB, no Kodak image
# below its input at ISO 400 (was −2.3 dB), the real pairs −0.04 to −0.08 dB.
GUARD_RATIO = 2.0
GUARD_SIGMA = 2.0  # px: the local window of the removed energy
GUARD_RADIUS = 8  # px: its truncation (4σ), context a preview crop needs
GUARD_BINS = 16  # brightness bins of the noise-energy curve
GUARD_SAMPLE_PIXELS = 1 << 20  # photos up to this size (or narrower than two tiles) are measured whole
GUARD_TILE = 256


def guard_boxes(shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """Where the guard measures a photo's noise: the whole photo up to GUARD_SAMPLE_PIXELS (or when narrower
    than two tiles), else a 4×4 grid of GUARD_TILE² tiles (y0, x0, y1, x1)."""
    h, w = shape[:2]
    if h * w <= GUARD_SAMPLE_PIXELS or min(h, w) < 2 * GUARD_TILE:
        return [(0, 0, h, w)]
    ys, xs = (np.linspace(0, n - GUARD_TILE, 4).astype(int) for n in (h, w))
    return [(y, x, y + GUARD_TILE, x + GUARD_TILE) for y in ys for x in xs]


def _residual_energy(removed: np.ndarray) -> np.ndarray:
    """Local energy (Gaussian window) of what was removed (HWC), summed over channels (HW float32)."""
    import cv2

    k = 2 * GUARD_RADIUS + 1
    return cv2.GaussianBlur(np.einsum("hwc,hwc->hw", removed, removed), (k, k), GUARD_SIGMA,
                            borderType=cv2.BORDER_REFLECT_101)


def _bins(result: np.ndarray, top: float) -> np.ndarray:
    """Each pixel's brightness bin (of GUARD_BINS over [0, top]), as uint8."""
    level = result.mean(axis=2, dtype=np.float32)
    level *= np.float32(GUARD_BINS / top)
    return np.clip(level, 0, GUARD_BINS - 1, out=level).astype(np.uint8)


def noise_energy_curve(noisy: list[np.ndarray], results: list[np.ndarray], top: float) -> tuple[np.ndarray, float]:
    """The median local energy of what was removed, per brightness bin (empty bins interpolated), and the
    removed noise level: σ per channel from the median local energy over the whole photo."""
    idx = np.concatenate([_bins(r, top).ravel() for r in results])
    energy = np.concatenate([_residual_energy(n - r).ravel() for n, r in zip(noisy, results)])
    curve = np.full(GUARD_BINS, np.nan)
    for b in np.unique(idx):
        curve[b] = np.median(energy[idx == b])
    known = np.flatnonzero(np.isfinite(curve))
    level = float(np.sqrt(np.median(energy) / noisy[0].shape[2]))
    return np.interp(np.arange(GUARD_BINS), known, curve[known]).astype(np.float32), level


def detail_guard(noisy: np.ndarray, result: np.ndarray, curve: np.ndarray, top: float,
                 band_sigma: float = 0.0) -> np.ndarray:
    """``result`` with what it removed scaled back where its local energy exceeds GUARD_RATIO × the photo's
    noise energy at that brightness (``curve`` from :func:`noise_energy_curve` with the same ``top``). A
    varying scale gives the removed part a low band; with ``band_sigma`` that band is taken out again,
    so the input's local means stay (see :data:`quietlens.engine.methods.bsn.LOWPASS_SIGMA`)."""
    removed = noisy - result
    energy = _residual_energy(removed)
    allowed = np.float32(GUARD_RATIO) * curve[_bins(result, top)]
    keep = np.sqrt(np.minimum(1.0, allowed / np.maximum(energy, np.float32(1e-12))), dtype=np.float32)
    removed *= keep[..., None]
    for c in range(removed.shape[2] if band_sigma > 0 else 0):
        removed[..., c] -= lowpass(np.ascontiguousarray(removed[..., c]), band_sigma)
    return np.subtract(noisy, removed, out=removed)


def take_low_band(x: np.ndarray, out: np.ndarray, band_sigma: float, plane: np.ndarray | None = None) -> None:
    """In place: the input ``x``'s band below ``band_sigma`` replaces the network output ``out``'s (see
    :data:`quietlens.engine.methods.bsn.LOWPASS_SIGMA`), and a display-referred photo's result stays in range. ``plane``: HW scratch."""
    plane = np.empty(x.shape[:2], np.float32) if plane is None else plane
    for c in range(out.shape[2] if band_sigma > 0 else 0):
        np.subtract(x[..., c], out[..., c], out=plane)
        out[..., c] += lowpass(plane, band_sigma)
    if x.min() >= 0 and x.max() <= 1:
        np.clip(out, 0, 1, out=out)


def finish(noisy: np.ndarray, result: np.ndarray, band_sigma: float) -> np.ndarray:
    """What a run with the guard on makes of one network pass's raw output ``result`` (HWC float32, back
    in the photo's values) on the whole photo ``noisy``: the photo's low band, the display range, and the
    detail guard, measured where the blind-spot method measures it (:func:`guard_boxes`). Students are
    distilled to this (what a user gets from the teacher), not to the network's raw output."""
    out = np.array(result, np.float32)
    take_low_band(noisy, out, band_sigma)
    top = max(1.0, float(noisy.max()))
    boxes = guard_boxes(noisy.shape)
    curve, _ = noise_energy_curve([noisy[a:c, b:d] for a, b, c, d in boxes], [out[a:c, b:d] for a, b, c, d in boxes],
                                  top)
    return detail_guard(noisy, out, curve, top, band_sigma)


def lowpass(plane: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass of one float32 plane (mirrored at the borders, truncated at 4σ)."""
    import cv2

    k = 2 * int(4 * sigma) + 1
    return cv2.GaussianBlur(plane, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)
