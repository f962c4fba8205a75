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
  the classical estimator to start, then the quietest of it and two fine estimates from a first
  denoising (:func:`fine_residual`, :func:`fine_flat`).
* :func:`classical` — an independent fallback in the spirit of Foi et al. (2008): the finest diagonal
  Haar coefficients measure the noise, the coarse ones the signal; robust (MAD) variances per intensity
  bin of smooth pixels, then a weighted line fit.
* :func:`pixel_sigma` — one robust noise std for any image (MR, CT, photos; no noise model), from the
  same Haar details: what Filter2Noise fits against and what the pipeline's "nothing was removed" check
  compares a result with.
"""
from __future__ import annotations

import math
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

def _quads(p: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four pixels ``a b / c d`` of each 2×2 block of a plane (odd edges dropped)."""
    h, w = p.shape[0] // 2 * 2, p.shape[1] // 2 * 2
    return p[0:h:2, 0:w:2], p[0:h:2, 1:w:2], p[1:h:2, 0:w:2], p[1:h:2, 1:w:2]


def _haar_blocks(planes: np.ndarray, guide: np.ndarray | None = None, score: str = "edges") -> tuple[np.ndarray, ...]:
    """Per 2×2 block of each plane ``(N, H, W)``, flattened: the diagonal Haar detail ``(a − b − c + d)/2``
    of ``planes`` (the pixel noise's std for white noise, almost no smooth signal), whether that block is
    exactly constant, and of ``guide`` (default: ``planes``) the block mean blurred 3×3 (its level) and a
    score of its structure: ``edges``, the level's Sobel gradient magnitude, or ``texture``, the energy of
    its three Haar details blurred 3×3 (the finest scale)."""
    details, constant, levels, scores = [], [], [], []
    for p, g in zip(planes.astype(np.float64), (planes if guide is None else guide).astype(np.float64)):
        a, b, c, d = _quads(p)
        details.append(((a - b - c + d) / 2).ravel())
        constant.append(((a == b) & (b == c) & (c == d)).ravel())
        a, b, c, d = _quads(g)
        level = _box((a + b + c + d) / 4, 3)
        levels.append(level.ravel())
        if score == "texture":
            scores.append(_box((a + b - c - d) ** 2 + (a - b + c - d) ** 2 + (a - b - c + d) ** 2, 3).ravel())
        else:
            gx = cv2.Sobel(level, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
            gy = cv2.Sobel(level, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
            scores.append(np.hypot(gx, gy).ravel())
    return tuple(np.concatenate(v) for v in (details, constant, levels, scores))


def _mad_std(d: np.ndarray) -> float:
    """1.4826 · the median absolute deviation: a Gaussian's standard deviation, robust to outliers."""
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


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
    detail, constant, level, edge = _haar_blocks(planes)
    keep = ~constant
    if np.count_nonzero(keep) < 64:
        return 0.0
    keep &= level >= np.median(level[keep])
    keep &= edge <= np.median(edge[keep])
    d = detail[keep]
    return _mad_std(d)


def _mad_var(d: np.ndarray) -> float:
    """Squared MAD std: robust to the edges and texture that slip into a bin; reads a Gaussian's variance."""
    return _mad_std(d) ** 2


TAIL_CLIP = 4.0  # robust σ within which :func:`_clipped_var` keeps the details
_CLIP_KEPT = 1 - 2 * TAIL_CLIP * math.exp(-TAIL_CLIP**2 / 2) / math.sqrt(2 * math.pi) / math.erf(TAIL_CLIP / math.sqrt(2))


def _clipped_var(d: np.ndarray) -> float:
    """Variance of the details within :data:`TAIL_CLIP` MAD std of their median, divided by the share of a
    Gaussian's variance kept there: exact for Gaussian noise, and unlike the MAD it keeps the heavy tails of
    real read noise (Tukey λ −0.1, as on the bench sensor: the MAD reads a diagonal detail's std 7 % low;
    this 1.6 %), and nearly every detail counts (the MAD's efficiency is 37 %). Only for details with the
    texture taken out: texture in the tails counts too."""
    centre = np.median(d)
    dev = d - centre
    kept = dev[np.abs(dev) <= TAIL_CLIP * _mad_std(d)]
    return float(np.mean(kept**2) / _CLIP_KEPT) if kept.size else 0.0


def _fit_bins(level: np.ndarray, detail: np.ndarray, nbins: int, spread, span: float, method: str) -> NoiseFit:
    """Equal-count bins of the level; per bin the details' ``spread`` (a variance); the line through them
    weighted ``n / var²`` (the inverse variance of a variance estimate)."""
    if level.size < 16 * nbins:
        raise InvalidImageError("too few smooth areas with signal to estimate the noise")
    order = np.argsort(level)
    pts = np.asarray([(level[c].mean(), spread(detail[c]), c.size) for c in np.array_split(order, nbins)])
    b1, b2, r2 = _line(pts[:, 0], pts[:, 1], pts[:, 2] / np.maximum(pts[:, 1], 1e-20) ** 2)
    fit = NoiseFit(b1, b2, span, method, r2, len(pts), pts)
    if fit.gain <= 0:
        raise InvalidImageError("the noise does not grow with the signal here; cannot estimate a gain")
    return _read_fallback(fit)


def _lower_half(level: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Blocks with a usable level whose ``score`` (edges, texture) is at most its median among those."""
    usable = (level > MEAN_RANGE[0]) & (level < MEAN_RANGE[1])
    return usable & (score <= np.percentile(score[usable], 50)) if usable.any() else usable


def classical(planes: np.ndarray, span: float, nbins: int = 64) -> NoiseFit:
    """Wavelet-MAD local fit (after Foi et al., 2008).

    Per plane, the diagonal Haar detail ``(a − b − c + d)/2`` of each 2×2 block has the pixel noise's
    variance and almost no smooth signal; the 2×2 mean, blurred 3×3, estimates the block's intensity.
    Blocks whose intensity gradient is in the lower half are binned by intensity (equal counts); each
    bin's variance is the squared MAD of its details (robust to the edges that slip through), and the
    line is fitted with weights ``n / var²``.
    """
    detail, _, level, edge = _haar_blocks(planes)
    smooth = _lower_half(level, edge)
    return _fit_bins(level[smooth], detail[smooth], nbins, _mad_var, span, "classical")


def fine_residual(planes: np.ndarray, denoised: np.ndarray, span: float, nbins: int = 64) -> NoiseFit:
    """A fine estimate from a first denoised image: :func:`classical` on the residual ``planes − denoised``
    (level and edges of the denoised image). The texture the denoiser kept cancels; the noise it kept is
    missing, so it reads low where it errs."""
    detail, _, level, edge = _haar_blocks(planes - denoised, denoised)
    smooth = _lower_half(level, edge)
    return _fit_bins(level[smooth], detail[smooth], nbins, _mad_var, span, "fine-residual")


def fine_flat(planes: np.ndarray, denoised: np.ndarray, span: float, nbins: int = 64) -> NoiseFit:
    """A fine estimate from a first denoised image: the *noisy* details on the blocks where the denoised
    image is flattest at the finest scale (lower half), per bin :func:`_clipped_var`. All of the noise is
    there; texture the denoiser smoothed away where it looks flat reads as noise, so it reads high where it
    errs."""
    detail, _, level, texture = _haar_blocks(planes, denoised, "texture")
    flat = _lower_half(level, texture)
    return _fit_bins(level[flat], detail[flat], nbins, _clipped_var, span, "fine-flat")


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


FINE_FIT = 0.9  # R² a fine estimate's own line needs to be considered


def refine(planes: np.ndarray, denoised: np.ndarray, start: NoiseFit) -> NoiseFit:
    """The second estimate, from a first denoised image: of the first estimate and the two fine ones
    (:func:`fine_residual`, :func:`fine_flat`), the one predicting the least noise (:func:`_quietest`:
    texture only ever adds variance); a fine estimate takes part when its line fits its own points at
    least as well as the first estimate's and well in itself (R² ≥ :data:`FINE_FIT`: on a real scene of
    narrow tonal range, the Kodak DC50's, fine lines of lower R² moved K by 40–90 % and cost up to 2.6 dB).

    Measured on the bench's 36 images (``bench_yond.py``: real raw content and Kodak24 / McMaster
    unprocessed, ISO 1600–25600-like): median error of K / σ 4.2 / 8.4 %; on all of Kodak24 and McMaster
    and the binned real files (135 images) 5.3 / 11.0 % (before, the residual estimate alone and only
    where the first line fitted with R² < 0.97: 7.4 / 12.7 and 7.3 / 13.0 %); PSNR at most 0.01 dB under
    that on any of 156 images (the two sets, other crops of the real files).
    The squared MAD misses the heavy tails of read noise, the residual the noise the denoiser kept:
    with :func:`_clipped_var` there too, σ reads better on the bench (6.5 %) but the residual's line fits well
    while far too low on the Kodak DC50's narrow tonal range (K −46 %, −2.3 dB). The misses are
    synthetic texture at ISO 1600 that the first pass smoothed away. YOND's published fine step
    (:func:`cne_fine`, variance of noisy minus variance of denoised) stays biased by that texture too."""
    kept, notes = [start], []
    for estimator in (fine_residual, fine_flat):
        try:
            fit = estimator(planes, denoised, start.span)
        except InvalidImageError as exc:
            notes.append(f"{estimator.__name__} failed ({exc.reason})")
            continue
        if fit.r2 < max(start.r2, FINE_FIT):
            notes.append(f"{fit.method}: its line fits its points too poorly (R² {fit.r2:.3f}; "
                         f"first {start.r2:.3f}, needed ≥ {FINE_FIT})")
        else:
            kept.append(fit)
    best = _quietest(kept, planes)
    best.notes += notes
    return best


def _quietest(fits: list[NoiseFit], planes: np.ndarray) -> NoiseFit:
    """The fit with the least predicted variance at the planes' median level; the others are noted."""
    level = float(np.median(planes))
    ranked = sorted(fits, key=lambda f: f.gain * level + f.read_var)
    best = _copy(ranked[0])
    best.notes += [f"{f.method} predicted more noise (K {f.K:.3g} DN/e-, σ {f.sigma:.3g} DN)" for f in ranked[1:]]
    return best
