"""Blind estimation of Poisson–Gaussian raw noise from a single image.

Model, in the loader's normalised units (x in [0, 1] between black and white): a pixel with expected
value x has variance ``var(x) = gain·x + read_var``. In sensor units that is the familiar
``K·x_DN + σ²`` with ``K = gain·span`` (DN per electron) and ``σ = √read_var·span`` (DN), where
``span = white − black``.

Estimators (all take the packed planes of :mod:`.cfa`, shape ``(4, h, w)``):

* :func:`cne_coarse` — the coarse step of YOND's noise estimator: local mean and variance over 29×29
  windows, a texture map that picks flat windows with an adaptive threshold, then a least-squares line.
* :func:`cne_fine` — the fine step: the local variance of the noisy image minus that of a first denoised
  image (so residual texture cancels), fitted again — by default robustly (binned medians over the
  flattest windows), which on textured photos is far more stable than the published least squares.
* :func:`initial` and :func:`refine` — what the ``yond`` method uses: the quieter of CNE coarse and
  the classical estimator to start, then, when texture disturbed that fit, the classical estimator on
  the residual of a first denoising.
* :func:`classical` — an independent fallback in the spirit of Foi et al. (2008): the finest diagonal
  Haar coefficients measure the noise, the coarse ones the signal; robust (MAD) variances per intensity
  bin of smooth pixels, then a weighted line fit.
* :func:`pixel_sigma` — one robust noise std for any image (MR, CT, photos; no noise model), from the
  same Haar details: what Filter2Noise fits against and what the pipeline's "nothing was removed" check
  compares a result with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..errors import InvalidImageError

WINDOW = 29  # local statistics window (packed pixels)
TEXTURE_BLUR = 19  # pre-blur of the texture map: WINDOW // 3 * 2 + 1
MEAN_RANGE = (1e-4, 0.8)  # fit only where the local mean is above black and safely below clipping
PERCENTILES = np.arange(10, 101, 5)  # candidate flat-pixel thresholds
HIST_BINS = 1000
MAX_SAMPLES = 2_000_000  # the local statistics are smooth: a strided subset of this size suffices
MIN_SAMPLES = 200
ROBUST_PERCENTILE = 30  # flat windows of the robust fit: the flattest 30 %


@dataclass
class NoiseFit:
    """``var = gain·x + read_var`` in normalised units, with how it was obtained."""

    gain: float
    read_var: float
    span: float  # white − black in DN, to express the model in sensor units
    method: str  # "cne-coarse", "cne-fine" or "classical"
    r2: float  # coefficient of determination of the line over the samples used
    samples: int  # flat samples (pixels or bins) the line was fitted on
    points: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 3), np.float32))
    notes: list[str] = field(default_factory=list)

    @property
    def read(self) -> float:
        """Read-noise standard deviation σ in normalised units."""
        return float(np.sqrt(max(self.read_var, 0.0)))

    @property
    def K(self) -> float:
        """System gain in DN per electron."""
        return self.gain * self.span

    @property
    def sigma(self) -> float:
        """Read noise in DN."""
        return self.read * self.span

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary; ``points`` are (mean, variance, weight) of the binned scatter."""
        return {
            "method": self.method, "K": self.K, "sigma": self.sigma, "gain": self.gain,
            "read_var": self.read_var, "span": self.span, "r2": self.r2, "samples": self.samples,
            "points": np.round(self.points, 10).tolist(), "notes": list(self.notes),
        }


# -- local statistics ------------------------------------------------------------------------------

def _box(x: np.ndarray, k: int) -> np.ndarray:
    """k×k box mean of one plane (float64: variances are differences of nearly equal numbers)."""
    return cv2.blur(x, (k, k), borderType=cv2.BORDER_REFLECT)


def _local_mean_var(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    mean = _box(x, k)
    return mean, np.maximum(_box(x * x, k) - mean * mean, 0.0)


def _samples(maps: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Flatten same-shaped maps, dropping a k//2 border (reflected windows) and striding to MAX_SAMPLES."""
    h, w = maps[0].shape
    b = k // 2 if min(h, w) > 4 * k else 0
    stride = max(1, int(np.sqrt((h - 2 * b) * (w - 2 * b) / MAX_SAMPLES)))
    return [m[b:h - b:stride, b:w - b:stride].ravel() for m in maps]


def _pooled(planes: np.ndarray, per_plane) -> tuple[np.ndarray, ...]:
    """Apply ``per_plane(plane) -> tuple of maps`` to each plane and concatenate the flattened samples."""
    parts = [_samples(list(per_plane(p.astype(np.float64))), WINDOW) for p in planes]
    return tuple(np.concatenate(col) for col in zip(*parts))


# -- the YOND estimator ------------------------------------------------------------------------------

def flat_threshold(texture: np.ndarray, mean: np.ndarray) -> tuple[float, float]:
    """The texture threshold separating flat windows, and its percentile.

    For each candidate percentile q the score is ``th_q / (q · nbins_q)``, where ``nbins_q`` counts the
    occupied bins of a 1000-bin histogram of the local means kept: a low threshold is preferred, but
    not at the price of covering few intensities (the line needs a wide range of means).
    """
    ths = np.percentile(texture, PERCENTILES)
    scores = []
    for q, th in zip(PERCENTILES, ths):
        kept = mean[texture <= th]
        bins = np.bincount((np.clip(kept, 0, 1) * HIST_BINS).astype(np.int64), minlength=HIST_BINS + 1)
        scores.append(th / (q * max(np.count_nonzero(bins), 1)))
    i = int(np.argmin(scores))
    return float(ths[i]), float(PERCENTILES[i])


def _binned(mean: np.ndarray, var: np.ndarray, nbins: int = 48) -> np.ndarray:
    """(mean, median variance, count) in equal-count bins of the mean: a readable summary of the scatter."""
    order = np.argsort(mean)
    rows = [(mean[c].mean(), np.median(var[c]), c.size) for c in np.array_split(order, nbins) if c.size]
    return np.asarray(rows, np.float64)


def _line(mean: np.ndarray, var: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float, float]:
    """Least-squares ``var = β1·mean + β2`` and its (weighted) R²."""
    w = np.ones_like(mean) if weights is None else weights
    sw = np.sqrt(w)
    design = np.stack([mean * sw, sw], axis=1)
    (b1, b2), *_ = np.linalg.lstsq(design, var * sw, rcond=None)
    resid = var - (b1 * mean + b2)
    centred = var - np.average(var, weights=w)
    r2 = 1.0 - float(np.sum(w * resid**2) / max(np.sum(w * centred**2), 1e-300))
    return float(b1), float(b2), r2


def _fit_flat(mean: np.ndarray, var: np.ndarray, texture: np.ndarray, span: float, method: str,
              robust: bool = False) -> NoiseFit:
    """Select flat windows in the usable mean range and fit the line.

    Published: the adaptive texture threshold of :func:`flat_threshold` and least squares through every
    window. ``robust``: the flattest :data:`ROBUST_PERCENTILE` % of windows and least squares through the
    median variance of equal-count intensity bins, weighted by ``count / median²``. Residual texture only
    ever adds variance, so contaminated windows move a median little and a mean a lot; the adaptive
    threshold, which rewards covering many intensities, lets many of them in on textured photos.
    """
    if robust:
        q = ROBUST_PERCENTILE
        th = float(np.percentile(texture, q))
    else:
        th, q = flat_threshold(texture, mean)
    keep = (texture < th) & (mean > MEAN_RANGE[0]) & (mean < MEAN_RANGE[1])
    if np.count_nonzero(keep) < MIN_SAMPLES:  # e.g. a threshold at the very bottom: take the flattest 25 %
        keep = (texture <= np.percentile(texture, 25)) & (mean > MEAN_RANGE[0]) & (mean < MEAN_RANGE[1])
    n = int(np.count_nonzero(keep))
    if n < MIN_SAMPLES:
        raise InvalidImageError(
            "too few flat areas with signal between black and white to estimate the noise "
            "(is the frame black or saturated?)"
        )
    m, v = mean[keep], var[keep]
    points = _binned(m, v)
    if robust:
        b1, b2, r2 = _line(points[:, 0], points[:, 1], points[:, 2] / np.maximum(points[:, 1], 1e-30) ** 2)
    else:
        b1, b2, r2 = _line(m, v)
    fit = NoiseFit(b1, b2, span, method, r2, n, points)
    fit.notes.append(f"flat windows: texture below its {q:g}th percentile")
    return fit


def _read_fallback(fit: NoiseFit) -> NoiseFit:
    """A negative intercept has no physical read noise: fall back to one electron (σ = K)."""
    if fit.read_var < 0 and fit.gain > 0:
        fit.notes.append(f"negative read-noise variance {fit.read_var:.3g}: using σ = K (one electron)")
        fit.read_var = fit.gain**2
    return fit


def cne_coarse(planes: np.ndarray, span: float) -> NoiseFit:
    """YOND's coarse estimate on the noisy packed planes (4, h, w) in normalised units."""
    def stats(p: np.ndarray) -> tuple[np.ndarray, ...]:
        mean, var = _local_mean_var(p, WINDOW)
        _, tex_var = _local_mean_var(_box(p, TEXTURE_BLUR), WINDOW)
        return mean, var, np.sqrt(tex_var)

    mean, var, texture = _pooled(planes, stats)
    return _read_fallback(_fit_flat(mean, var, texture, span, "cne-coarse"))


def cne_fine(planes: np.ndarray, denoised: np.ndarray, coarse: NoiseFit, robust: bool = True) -> NoiseFit:
    """YOND's fine estimate: ``var(noisy) − var(denoised)`` over windows where the denoised image is flat,
    fitted robustly (``robust=False``: as published, see :func:`_fit_flat`).

    Falls back to ``coarse`` when the new slope is not positive (the first denoising went wrong).
    """
    def stats(pair: np.ndarray) -> tuple[np.ndarray, ...]:
        noisy, clean = pair
        _, var_noisy = _local_mean_var(noisy, WINDOW)
        mean, var_clean = _local_mean_var(clean, WINDOW)
        return mean, var_noisy - var_clean, np.sqrt(var_clean)

    mean, var, texture = _pooled(np.stack([planes, denoised], axis=1), stats)
    try:
        fit = _fit_flat(mean, var, texture, coarse.span, "cne-fine", robust)
    except InvalidImageError:
        fit = None
    if fit is None or fit.gain <= 0:
        kept = _copy(coarse)
        kept.notes.append("fine estimate failed (no positive slope): kept the coarse estimate")
        return kept
    return _read_fallback(fit)


def _copy(fit: NoiseFit) -> NoiseFit:
    return NoiseFit(fit.gain, fit.read_var, fit.span, fit.method, fit.r2, fit.samples, fit.points.copy(),
                    list(fit.notes))


# -- classical fallback ------------------------------------------------------------------------------

def _haar_blocks(planes: np.ndarray, denoised: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Per 2×2 block of each plane ``(N, H, W)``: the diagonal Haar detail ``(a − b − c + d)/2`` (the pixel
    noise's std for white noise, almost no smooth signal), the block mean blurred 3×3 (its level), that
    level's Sobel gradient magnitude (edges), and whether the block is exactly constant. Flattened.
    With ``denoised``: the details of the residual ``planes − denoised``, level and edges of ``denoised``."""
    details, levels, edges, constant = [], [], [], []
    source = planes if denoised is None else denoised
    for p, q in zip(planes.astype(np.float64), source.astype(np.float64)):
        h, w = p.shape[0] // 2 * 2, p.shape[1] // 2 * 2
        r = p if denoised is None else p - q
        a, b, c, d = r[0:h:2, 0:w:2], r[0:h:2, 1:w:2], r[1:h:2, 0:w:2], r[1:h:2, 1:w:2]
        block = (q[0:h:2, 0:w:2] + q[0:h:2, 1:w:2] + q[1:h:2, 0:w:2] + q[1:h:2, 1:w:2]) / 4
        level = cv2.blur(block, (3, 3), borderType=cv2.BORDER_REFLECT)
        gx = cv2.Sobel(level, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
        gy = cv2.Sobel(level, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
        details.append(((a - b - c + d) / 2).ravel())
        levels.append(level.ravel())
        edges.append(np.hypot(gx, gy).ravel())
        constant.append(((a == b) & (b == c) & (c == d)).ravel())
    return tuple(np.concatenate(v) for v in (details, levels, edges, constant))


def pixel_sigma(planes: np.ndarray) -> float:
    """Robust std of the pixel-scale noise of ``planes`` ``(N, H, W)``, in their own units, for any kind of
    image (no noise model): 1.4826 · MAD of the diagonal Haar details of the blocks that

    * are not exactly constant (zero-filled MR backgrounds, CT clipped to a range: no noise there; counted,
      they drive the MAD to 0),
    * have a level above the median of those (where the signal is: suppressed or Rician backgrounds read
      low), and
    * have a gradient in the lower half among those (edges read high).

    0 when fewer than 64 blocks carry signal. Structure at the pixel scale reads as noise too, so this is an
    upper bound for white noise; spatially correlated noise reads lower than its pixel std.
    """
    if planes.size == 0 or min(planes.shape[-2:]) < 2:
        return 0.0
    detail, level, edge, constant = _haar_blocks(planes)
    keep = ~constant
    if np.count_nonzero(keep) < 64:
        return 0.0
    keep &= level >= np.median(level[keep])
    keep &= edge <= np.median(edge[keep])
    d = detail[keep]
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


def classical(planes: np.ndarray, span: float, nbins: int = 64, denoised: np.ndarray | None = None) -> NoiseFit:
    """Wavelet-MAD local fit (after Foi et al., 2008).

    Per plane, the diagonal Haar detail ``(a − b − c + d)/2`` of each 2×2 block has the pixel noise's
    variance and almost no smooth signal; the 2×2 mean, blurred 3×3, estimates the block's intensity.
    Blocks whose intensity gradient is in the lower half are binned by intensity (equal counts); each
    bin's variance is the squared MAD of its details (robust to the edges that slip through), and the
    line is fitted with weights ``n / var²`` (the inverse variance of a variance estimate).

    With ``denoised`` (a first denoised image of the same planes) the details are taken of the residual
    ``planes − denoised`` and intensity and gradient of ``denoised``: a denoiser keeps most of the texture
    that inflates the details of a photo while it removes all of the noise at the finest scale, so the
    residual's finest details are nearly pure noise ("fine", the method's second estimate).
    """
    detail, level, edge, _ = _haar_blocks(planes, denoised)
    usable = (level > MEAN_RANGE[0]) & (level < MEAN_RANGE[1])
    smooth = usable & (edge <= np.percentile(edge[usable], 50) if usable.any() else usable)
    if np.count_nonzero(smooth) < 16 * nbins:
        raise InvalidImageError("too few smooth areas with signal to estimate the noise")
    lv, dt = level[smooth], detail[smooth]
    order = np.argsort(lv)
    rows = []
    for chunk in np.array_split(order, nbins):
        d = dt[chunk]
        mad = 1.4826 * np.median(np.abs(d - np.median(d)))
        rows.append((lv[chunk].mean(), mad**2, chunk.size))
    pts = np.asarray(rows)
    var = np.maximum(pts[:, 1], 1e-20)
    b1, b2, r2 = _line(pts[:, 0], pts[:, 1], pts[:, 2] / var**2)
    fit = NoiseFit(b1, b2, span, "classical" if denoised is None else "fine", r2, len(rows), pts)
    if fit.gain <= 0:
        raise InvalidImageError("the noise does not grow with the signal here; cannot estimate a gain")
    return _read_fallback(fit)


def initial(planes: np.ndarray, span: float) -> NoiseFit:
    """CNE coarse checked against the classical estimator: the fit predicting less noise at the image's
    median level wins (texture and edges only ever add variance, so the lower estimate is nearer the
    truth); one that fails or finds a non-positive gain is skipped, and the choice is noted."""
    candidates, notes = [], []
    for estimator in (cne_coarse, classical):
        try:
            fit = estimator(planes, span)
        except InvalidImageError as exc:
            notes.append(f"{estimator.__name__} failed: {exc.reason}")
            continue
        if fit.gain > 0:
            candidates.append(fit)
        else:
            notes.append(f"{estimator.__name__} found a non-positive gain")
    if not candidates:
        raise InvalidImageError("could not estimate the noise: " + "; ".join(notes))
    best = _quietest(candidates, planes)
    best.notes += notes
    return best


TRUSTED_FIT = 0.97  # R² of a first estimate's line above which texture has not disturbed it
FINE_FIT = 0.9  # R² a fine estimate's own line needs to replace the first one


def refine(planes: np.ndarray, denoised: np.ndarray, start: NoiseFit) -> NoiseFit:
    """The fine estimate: :func:`classical` on the residual of a first denoised image (see there), kept
    when the first estimate's line fits its points poorly (R² below :data:`TRUSTED_FIT`: texture got into
    them), the fine one's line fits its own points at least as well and well in itself (R² ≥
    :data:`FINE_FIT`), and it predicts less noise. On a real scene of narrow tonal range (the Kodak DC50's)
    fine lines of R² 0.1–0.8 moved K by 40–90 % and cost 0.7–2.6 dB; with either raw network trained so
    far, the fine lines kept that helped (Kodak24, McMaster, ISO 1600–25600: up to +1.4 dB) all had R² ≥
    0.92. Measured with the shipped network (bench_yond): up to +0.6 dB over the first estimate on Kodak24 /
    McMaster, not taken on real raw content; blind within 0.16 dB of the true model on every row but one
    (0.31 dB). YOND's published fine step (:func:`cne_fine`, variance of noisy minus variance of denoised)
    stays biased by the texture the denoiser smoothed away."""
    if start.r2 >= TRUSTED_FIT:
        return _copy(start)
    try:
        fine = classical(planes, start.span, denoised=denoised)
    except InvalidImageError as exc:
        return _first_kept(start, f"fine estimate failed ({exc.reason})")
    if fine.r2 < max(start.r2, FINE_FIT):
        return _first_kept(start, f"the fine estimate's line fits its points too poorly "
                                  f"(R² {fine.r2:.3f}; first {start.r2:.3f}, needed ≥ {FINE_FIT})")
    return _quietest([start, fine], planes)


def _first_kept(start: NoiseFit, why: str) -> NoiseFit:
    kept = _copy(start)
    kept.notes.append(f"{why}: kept the first estimate")
    return kept


def _quietest(fits: list[NoiseFit], planes: np.ndarray) -> NoiseFit:
    """The fit with the least predicted variance at the planes' median level; the others are noted."""
    level = float(np.median(planes))
    ranked = sorted(fits, key=lambda f: f.gain * level + f.read_var)
    best = _copy(ranked[0])
    best.notes += [f"{f.method} predicted more noise (K {f.K:.3g} DN/e-, σ {f.sigma:.3g} DN)" for f in ranked[1:]]
    return best
