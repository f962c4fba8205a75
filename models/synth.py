"""Training data for every photo and RAW network: the shared corpora and one camera simulation.

Corpora (read from ``$QUIETLENS_SHARED_DATA``, else ``<repo>/../shared/data``; never shipped):

* :func:`clean_corpus` — ``"train"``: ``clean/urban100`` + ``clean/bsd100`` + scikit-image's bundled
  photographs; ``"eval"``: ``clean/kodak24`` + ``clean/mcmaster`` (evaluation only, never trained on);
* :func:`real_noisy` — real noisy photos without references (DND crops, RNI15, real9, NC12);
* :func:`dev_pairs` — the real noisy/clean sRGB development pairs (SIDD, Canon 5D Mark III).

The camera simulation walks a clean sRGB photo back to a sensor and forward again (after Brooks et al.,
"Unprocessing Images for Learned Raw Denoising", CVPR 2019):

* raw half — :func:`random_camera` (colour matrix, white-balance gains), :func:`unprocess` (sRGB → linear
  RGGB planes), :func:`raw_pair` (the project's physics noise, :mod:`quietlens.engine.noise.physics`:
  Poisson shot noise, read noise with Tukey-λ tails, row noise, quantisation; or a calibrated PNNP
  profile, :mod:`quietlens.engine.noise.pnnp`) over ISO-100 … 25600-like (K, σ);
* sRGB half — :func:`isp` (demosaicking by one of several algorithms, white balance, colour matrix,
  digital gain, gamma, tone curve, sharpening, chroma smoothing, 8-bit quantisation, JPEG) and
  :func:`srgb_pair`: noisy, clean and the per-pixel noise level.

Everything random is drawn from the ``numpy.random.Generator`` passed in, so a seed reproduces the data
bit for bit. ``tests/benchmarks/synth_vs_real.py`` compares the statistics with real noise.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.fft import dctn, idctn

from quietlens.engine.errors import QuietLensError
from quietlens.engine.noise.physics import PhysicsNoise, add_noise, iso_like

REPO = Path(__file__).resolve().parents[1]
TRAIN_FOLDERS = ("clean/urban100", "clean/bsd100")
EVAL_FOLDERS = ("clean/kodak24", "clean/mcmaster")
REAL_NOISY_FOLDERS = ("real_noisy/dnd_patches", "real_noisy/rni15", "real_noisy/real9", "real_noisy/nc12")
# scikit-image's bundled photographs (no download); grey ones become neutral colour images.
SKIMAGE_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                   "retina", "colorwheel", "stereo_motorcycle", "camera", "brick", "grass", "gravel",
                   "coins", "moon", "clock", "page", "text")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
ISO_RANGE = (50.0, 25600.0)  # of the typical (full-frame) sensor in engine.noise.physics
# sRGB training also covers small sensors (phones): ISO 100k–200k of the full-frame sensor has about the
# noise of a phone at ISO 3200–6400 (SIDD's level, up to σ ≈ 50/255 in mid-tones).
SRGB_ISO_RANGE = (50.0, 204800.0)


# -- corpora -------------------------------------------------------------------------------------------

def shared_data() -> Path:
    """The development data folder, or a clear error when it is not there."""
    env = os.environ.get("QUIETLENS_SHARED_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    if not root.is_dir():
        raise QuietLensError("the shared development data is not there (set QUIETLENS_SHARED_DATA to the "
                             "folder holding clean/, real_noisy/ and srgb_pairs/)", root)
    return root


def read_rgb(path: Path) -> np.ndarray:
    """An 8- or 16-bit image file as float32 RGB in [0, 1] (grey replicated, alpha dropped)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise QuietLensError("cannot read this image", path)
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., 2::-1] if img.shape[2] >= 3 else np.repeat(img[..., :1], 3, 2),
                                dtype=np.float32) / np.float32(scale)


def _folder_images(folder: Path) -> list[np.ndarray]:
    if not folder.is_dir():
        raise QuietLensError("a corpus folder is missing from the shared data", folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [read_rgb(p) for p in files]


def skimage_photo(name: str) -> np.ndarray:
    """A scikit-image bundled photo as float32 RGB in [0, 1]; ``name:i`` picks item i of a tuple
    (``stereo_motorcycle`` alone is its left view)."""
    import skimage.data

    base, _, index = name.partition(":")
    img = getattr(skimage.data, base)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[int(index or 0)]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    return (img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else float(img.max()))).clip(0, 1)


@functools.lru_cache(maxsize=2)
def _corpus(split: str) -> tuple[np.ndarray, ...]:
    root = shared_data()
    folders = TRAIN_FOLDERS if split == "train" else EVAL_FOLDERS
    images = [im for f in folders for im in _folder_images(root / f)]
    if split == "train":
        images += [skimage_photo(n) for n in SKIMAGE_SOURCES]
    for im in images:
        im.setflags(write=False)  # cached: callers must not change them
    return tuple(images)


def clean_corpus(split: str) -> list[np.ndarray]:
    """Clean photos, float32 RGB in [0, 1]: ``"train"`` (Urban100, BSD100, scikit-image's photographs)
    or ``"eval"`` (Kodak24, McMaster; for evaluation only). Read-only arrays, cached per process."""
    if split not in ("train", "eval"):
        raise QuietLensError(f"unknown corpus split {split!r} (train or eval)")
    return list(_corpus(split))


def clean_corpus_names(split: str) -> list[str]:
    """Names matching :func:`clean_corpus` item by item (``folder/file`` or ``skimage:name``)."""
    root = shared_data()
    folders = TRAIN_FOLDERS if split == "train" else EVAL_FOLDERS
    names = [f"{f}/{p.name}" for f in folders for p in sorted((root / f).iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES]
    return names + ([f"skimage:{n}" for n in SKIMAGE_SOURCES] if split == "train" else [])


def real_noisy() -> list[tuple[str, np.ndarray]]:
    """Real noisy photos without references: (``folder/file``, float32 RGB) for self-supervised training,
    adaptation tests and contact sheets."""
    root = shared_data()
    out = []
    for f in REAL_NOISY_FOLDERS:
        for p in sorted((root / f).iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                out.append((f"{f}/{p.name}", read_rgb(p)))
    return out


def dev_pairs() -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """The real paired development sets by folder (``sidd``, ``cc``): (name, noisy, clean), float32 RGB."""
    root = shared_data() / "srgb_pairs"
    sets = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        sets[folder.name] = [(n.name, read_rgb(n), read_rgb(n.with_name(n.name.replace("_noisy", "_clean"))))
                             for n in sorted(folder.glob("*_noisy.png"))]
    return sets


# -- the raw half --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Camera:
    """Colour of a random camera: its response to linear sRGB primaries and its white-balance gains."""

    rgb2cam: np.ndarray  # 3×3, rows sum to 1 (grey stays grey before white balance)
    wb: tuple[float, float, float]  # red, green, blue gains (green 1)


def random_camera(rng: np.random.Generator) -> Camera:
    """A plausible camera: diagonally dominant colour response with positive cross-talk, daylight-like
    white balance (red 1.7–2.4, blue 1.4–2.0)."""
    m = rng.uniform(0.02, 0.25, (3, 3))
    np.fill_diagonal(m, rng.uniform(0.55, 0.85, 3))
    m /= m.sum(axis=1, keepdims=True)
    return Camera(m.astype(np.float32), (float(rng.uniform(1.7, 2.4)), 1.0, float(rng.uniform(1.4, 2.0))))


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.maximum(x, 0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def smoothstep(x: np.ndarray) -> np.ndarray:
    return 3 * x * x - 2 * x * x * x


def inverse_smoothstep(x: np.ndarray) -> np.ndarray:
    """Inverse of the tone curve ``3x² − 2x³`` that cameras roughly apply after gamma."""
    return (0.5 - np.sin(np.arcsin(1.0 - 2.0 * np.clip(x, 0.0, 1.0)) / 3.0)).astype(np.float32)


def mosaic_planes(rgb: np.ndarray) -> np.ndarray:
    """RGGB sampling of an (H, W, 3) image (H, W even) as packed planes R, G1, G2, B: (4, H/2, W/2)."""
    return np.stack([rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1], rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]])


def planes_to_mosaic(planes: np.ndarray) -> np.ndarray:
    """(..., 4, h, w) packed RGGB planes → (..., 2h, 2w) mosaic (rows are the second-last axis)."""
    *lead, _, h, w = planes.shape
    out = np.empty((*lead, 2 * h, 2 * w), planes.dtype)
    out[..., 0::2, 0::2], out[..., 0::2, 1::2] = planes[..., 0, :, :], planes[..., 1, :, :]
    out[..., 1::2, 0::2], out[..., 1::2, 1::2] = planes[..., 2, :, :], planes[..., 3, :, :]
    return out


def mosaic_to_planes(mosaic: np.ndarray) -> np.ndarray:
    """Inverse of :func:`planes_to_mosaic`."""
    return np.stack([mosaic[..., 0::2, 0::2], mosaic[..., 0::2, 1::2],
                     mosaic[..., 1::2, 0::2], mosaic[..., 1::2, 1::2]], axis=-3)


def unprocess(srgb: np.ndarray, camera: Camera, blur: float = 0.0) -> np.ndarray:
    """sRGB (H, W, 3) in [0, 1] → linear RGGB planes (4, H/2, W/2) as ``camera`` would record the scene
    with white at 1: inverse tone curve, inverse sRGB gamma, colour response, inverse white balance.
    ``blur``: the standard deviation (px) of the camera's optics (lens, anti-aliasing filter) as a
    Gaussian on the linear scene before the colour filter samples it. Odd sizes lose their last row/column."""
    h, w = srgb.shape[0] // 2 * 2, srgb.shape[1] // 2 * 2
    lin = srgb_to_linear(inverse_smoothstep(srgb[:h, :w]))
    if blur > 0:
        lin = cv2.GaussianBlur(lin, (0, 0), blur, borderType=cv2.BORDER_REFLECT_101)
    cam = lin @ camera.rgb2cam.T / np.asarray(camera.wb, np.float32)
    return np.clip(mosaic_planes(cam), 0.0, 1.0).astype(np.float32)


def iso_noise(iso: float, rng: np.random.Generator, bits: int | None = None) -> PhysicsNoise:
    """Physics noise of a camera at ``iso`` (normalised units, white = 1): the typical sensor's (K, σ)
    (:func:`~quietlens.engine.noise.physics.iso_like`) with camera-to-camera scatter, Tukey-λ read noise
    half the time, row noise half the time, and a 12- or 14-bit ADC."""
    gain, read = iso_like(iso)
    gain *= math.exp(rng.normal(0.0, 0.25))
    read *= math.exp(rng.normal(0.0, 0.25))
    lam = float(rng.uniform(-0.3, 0.15)) if rng.random() < 0.5 else None
    row = read * float(rng.uniform(0.05, 0.3)) if rng.random() < 0.5 else 0.0
    bits = bits or int(rng.choice((12, 14)))
    return PhysicsNoise(gain, read, tukey_lambda=lam, row=row, quant=1.0 / (2**bits - 1))


def random_iso(rng: np.random.Generator, iso_range: tuple[float, float] = ISO_RANGE) -> float:
    """Log-uniform over ``iso_range``."""
    return float(math.exp(rng.uniform(math.log(iso_range[0]), math.log(iso_range[1]))))


def dead_leaves(rng: np.random.Generator, size: int, r_min: float = 4.0) -> np.ndarray:
    """A clean sRGB scene (size, size, 3) float32 of occluding flat shapes — discs and rotated rectangles,
    each a uniform colour under a gentle linear gradient — whose radii follow the scale-invariant
    ``p(r) ∝ r⁻³`` over [``r_min``, ``size``] (the dead-leaves model of natural images): what the training
    photographs hold little of — truly flat surfaces (theirs carry JPEG-origin texture) with sharp
    straight and curved edges between (``train_snrnet --flat``)."""
    out = np.zeros((size, size, 3), np.float32)
    free = np.ones((size, size), bool)  # drawn front to back: a shape shows only where nothing covers it
    a, b = r_min**-2, float(size) ** -2
    for _ in range(2000):
        r = (a - rng.random() * (a - b)) ** -0.5
        cy, cx = rng.uniform(-r, size + r, 2)
        disc = rng.random() < 0.7
        angle, aspect = rng.uniform(0, np.pi), rng.uniform(0.3, 1.0)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, size)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, size)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy -= cy
        dx -= cx
        if disc:
            inside = dy * dy + dx * dx <= r * r
        else:
            u = dx * np.cos(angle) + dy * np.sin(angle)
            v = -dx * np.sin(angle) + dy * np.cos(angle)
            inside = (np.abs(u) <= r) & (np.abs(v) <= r * aspect)
        shown = inside & free[y0:y1, x0:x1]
        if not shown.any():
            continue
        grey = rng.uniform(0.03, 0.97)
        colour = np.clip(grey + rng.uniform(-0.4, 0.4, 3) * rng.random(), 0.0, 1.0)
        slope = rng.normal(0, 0.1 / max(r, 1.0), 2)  # about ±0.1 across the shape
        shade = dy[shown] * slope[0] + dx[shown] * slope[1]
        out[y0:y1, x0:x1][shown] = np.clip(colour[None] + shade[:, None], 0.0, 1.0)
        free[y0:y1, x0:x1] &= ~inside
        if not free.any():
            break
    out[free] = rng.uniform(0.03, 0.97)
    return out


def raw_pair(clean_srgb: np.ndarray, rng: np.random.Generator, *, camera: Camera | None = None,
             iso: float | None = None, iso_range: tuple[float, float] = ISO_RANGE,
             exposure: float | None = None, noise: PhysicsNoise | None = None, profile=None, blur: float = 0.0
             ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(noisy planes, clean planes, K, σ) of a clean sRGB photo through a random (or given) camera.

    The clean planes are :func:`unprocess` (with optics ``blur``) times ``exposure`` (default
    log-uniform 1/12 … 1: most raw pixels sit far below white). Noise: ``noise`` if given, else
    :func:`iso_noise` at ``iso`` (default :func:`random_iso` over ``iso_range``); with a PNNP ``profile``
    (:class:`quietlens.engine.noise.pnnp.Profile`) the calibrated camera's noise at one of its ISOs
    instead. Noisy planes are clipped at white (1), not at black. K is the gain (signal units per
    electron), σ the read noise's standard deviation, both in the planes' units.
    """
    camera = camera or random_camera(rng)
    if exposure is None:
        exposure = float(math.exp(-rng.uniform(0.0, math.log(12.0))))
    clean = unprocess(clean_srgb, camera, blur) * np.float32(exposure)
    mosaic = planes_to_mosaic(clean)
    if profile is not None:
        iso = float(profile.isos[rng.integers(len(profile.isos))]) if iso is None else iso
        scale = float(profile.doc["white_level"] - max(profile.doc["black_level_per_channel"]))
        noisy = profile.synthesize(mosaic * scale, iso, rng) / scale
        entry = profile.doc["isos"][int(np.argmin(np.abs(profile.isos - iso)))]
        k, sigma = (profile.gain(iso) or 0.0) / scale, float(entry["pixel_std"]) / scale
    else:
        if noise is None:
            noise = iso_noise(random_iso(rng, iso_range) if iso is None else iso, rng)
        noisy = add_noise(mosaic, noise, rng)
        k, sigma = noise.gain, noise.read
    noisy = np.minimum(mosaic_to_planes(noisy.astype(np.float32)), 1.0)
    return noisy, clean, float(k), float(sigma)


# -- the sRGB half (a camera's image processor) ---------------------------------------------------------

DEMOSAIC = ("bilinear", "malvar", "directional")
_PEDESTAL = 1.0 / 16.0  # OpenCV demosaics integers: keep negative noise through an offset


def _malvar_kernels() -> dict[str, np.ndarray]:
    g = np.array([[0, 0, -1, 0, 0], [0, 0, 2, 0, 0], [-1, 2, 4, 2, -1], [0, 0, 2, 0, 0], [0, 0, -1, 0, 0]])
    row = np.array([[0, 0, .5, 0, 0], [0, -1, 0, -1, 0], [-1, 4, 5, 4, -1], [0, -1, 0, -1, 0], [0, 0, .5, 0, 0]])
    diag = np.array([[0, 0, -1.5, 0, 0], [0, 2, 0, 2, 0], [-1.5, 0, 6, 0, -1.5], [0, 2, 0, 2, 0],
                     [0, 0, -1.5, 0, 0]])
    return {k: (v / 8.0).astype(np.float32) for k, v in (("g", g), ("row", row), ("col", row.T), ("diag", diag))}


_MALVAR = _malvar_kernels()


def _directional(m: np.ndarray) -> np.ndarray:
    """Hamilton–Adams: green at red/blue sites weighted towards the direction of the smaller gradient (with a
    second-order correction from the site's own colour), then red and blue by bilinear interpolation of
    their differences to green. What many camera pipelines do; its direction choices follow the noise."""
    p = np.pad(m, 2, mode="reflect")
    c = p[2:-2, 2:-2]
    left, right, up, down = p[2:-2, 1:-3], p[2:-2, 3:-1], p[1:-3, 2:-2], p[3:-1, 2:-2]
    left2, right2, up2, down2 = p[2:-2, :-4], p[2:-2, 4:], p[:-4, 2:-2], p[4:, 2:-2]
    gh = 0.5 * (left + right) + 0.25 * (2 * c - left2 - right2)
    gv = 0.5 * (up + down) + 0.25 * (2 * c - up2 - down2)
    dh = np.abs(left - right) + np.abs(2 * c - left2 - right2)
    dv = np.abs(up - down) + np.abs(2 * c - up2 - down2)
    wh, wv = 1.0 / (dh + 0.02), 1.0 / (dv + 0.02)  # soft choice: no hard flips between directions
    g_est = (wh * gh + wv * gv) / (wh + wv)
    g = m.copy()
    g[0::2, 0::2], g[1::2, 1::2] = g_est[0::2, 0::2], g_est[1::2, 1::2]
    out = np.empty(m.shape + (3,), np.float32)
    out[..., 1] = g
    kernel = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], np.float32)
    for ch, (y, x) in ((0, (0, 0)), (2, (1, 1))):
        diff = np.zeros_like(m)
        diff[y::2, x::2] = m[y::2, x::2] - g[y::2, x::2]
        out[..., ch] = g + cv2.filter2D(diff, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return out


def demosaic(mosaic: np.ndarray, method: str) -> np.ndarray:
    """An RGGB mosaic (H, W; float, may be < 0) → (H, W, 3) float32: ``bilinear`` (OpenCV), ``malvar``
    (Malvar–He–Cutler gradient-corrected linear) or ``directional`` (Hamilton–Adams)."""
    m = mosaic.astype(np.float32)
    if method == "malvar":
        f = {k: cv2.filter2D(m, -1, v, borderType=cv2.BORDER_REFLECT_101) for k, v in _MALVAR.items()}
        out = np.empty(m.shape + (3,), np.float32)
        r, g, b = out[..., 0], out[..., 1], out[..., 2]
        for (y, x), (rv, gv, bv) in {(0, 0): (m, f["g"], f["diag"]), (0, 1): (f["row"], m, f["col"]),
                                     (1, 0): (f["col"], m, f["row"]), (1, 1): (f["diag"], f["g"], m)}.items():
            r[y::2, x::2], g[y::2, x::2], b[y::2, x::2] = rv[y::2, x::2], gv[y::2, x::2], bv[y::2, x::2]
        return out
    if method == "directional":
        return _directional(m)
    if method != "bilinear":
        raise ValueError(f"unknown demosaicking {method!r}")
    raw16 = np.round(np.clip((m + _PEDESTAL) / (1 + _PEDESTAL), 0, 1) * 65535).astype(np.uint16)
    return cv2.cvtColor(raw16, cv2.COLOR_BayerRGGB2RGB).astype(np.float32) * np.float32((1 + _PEDESTAL) / 65535) \
        - np.float32(_PEDESTAL)


@dataclass(frozen=True)
class ISP:
    """One camera's rendering settings (see :func:`random_isp`)."""

    demosaic: str = "malvar"
    gamma: float = 0.0  # 0: the sRGB curve; else a pure power 1/gamma
    tone: float = 1.0  # 0 … 1: blend of identity and the smoothstep S-curve
    sharpen: float = 0.0  # unsharp-mask amount on luminance
    sharpen_sigma: float = 1.0
    chroma_blur: float = 0.0  # σ (px) of the in-camera chroma smoothing; 0 = none
    jpeg: int = 0  # quality, 0 = lossless 8-bit
    luma_nr: float = 0.0  # weight of the in-camera luminance smoothing, blended into Y (0 = none) …
    luma_nr_sigma: float = 1.0  # … by a Gaussian of this σ (px)


def random_isp(rng: np.random.Generator, iso: float = 800.0, luma_nr: float = 0.0) -> ISP:
    """Camera-like rendering choices. Sharpening and chroma smoothing grow with ISO as cameras do. With
    probability ``luma_nr`` the camera also smooths luminance (more at high ISO): cameras' own noise
    reduction, which leaves the blotchy, spatially correlated noise of real JPEGs (lag-1 autocorrelation
    0.55–0.6 on the Canon dev pairs, 0.4–0.65 on DND's flat patches, where demosaicking alone gives
    0.25–0.55). No draw is made when it is 0, so that the renderings without it stay what they were."""
    high = min(max(math.log(iso / 100.0) / math.log(256.0), 0.0), 1.0)  # 0 at ISO 100, 1 at 25600
    nr = {}
    if luma_nr > 0 and rng.random() < luma_nr:
        nr = {"luma_nr": float(rng.uniform(0.2, 0.4 + 0.5 * high)), "luma_nr_sigma": float(rng.uniform(0.6, 1.5))}
    return ISP(**nr,
        demosaic=str(rng.choice(DEMOSAIC)),
        gamma=0.0 if rng.random() < 0.6 else float(rng.uniform(2.0, 2.4)),
        tone=float(rng.uniform(0.3, 1.0)),
        sharpen=float(rng.uniform(0.0, 0.5)) if rng.random() < 0.4 else 0.0,
        sharpen_sigma=float(rng.uniform(0.6, 1.4)),
        chroma_blur=float(rng.uniform(0.5, 0.5 + 2.5 * high)) if rng.random() < 0.5 else 0.0,
        jpeg=int(rng.integers(80, 99)) if rng.random() < 0.5 else 0,
    )


def _tone(linear: np.ndarray, isp: ISP) -> np.ndarray:
    x = np.clip(linear, 0.0, 1.0)
    g = linear_to_srgb(x) if isp.gamma == 0 else np.power(x, np.float32(1.0 / isp.gamma))
    return ((1 - isp.tone) * g + isp.tone * smoothstep(g)).astype(np.float32)


def _ycc(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)


def _rgb(ycc: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)


def isp(planes: np.ndarray, camera: Camera, settings: ISP, exposure: float = 1.0,
        quantise: bool = True) -> np.ndarray:
    """Linear RGGB planes → sRGB (H, W, 3) float32 in [0, 1]: demosaic, white balance, colour matrix,
    digital gain ``1/exposure``, gamma and tone curve, luminance smoothing, sharpening, chroma smoothing,
    then (``quantise``) 8 bits and JPEG at ``settings.jpeg``."""
    return _written(_finished(_toned(planes, camera, settings, exposure), settings), settings, quantise)


def _toned(planes: np.ndarray, camera: Camera, settings: ISP, exposure: float) -> np.ndarray:
    rgb = demosaic(planes_to_mosaic(planes), settings.demosaic)
    rgb *= np.asarray(camera.wb, np.float32)
    rgb = rgb @ np.linalg.inv(camera.rgb2cam).T.astype(np.float32)
    return _tone(rgb / np.float32(exposure), settings)


def _luma_nr(ycc: np.ndarray, settings: ISP) -> None:
    """The camera's luminance smoothing, in place. Linear, so the noise it leaves is the same filter of the noise."""
    y = ycc[..., 0]
    ycc[..., 0] = y + settings.luma_nr * (cv2.GaussianBlur(y, (0, 0), settings.luma_nr_sigma) - y)


def _finished(out: np.ndarray, settings: ISP) -> np.ndarray:
    if settings.sharpen > 0 or settings.chroma_blur > 0 or settings.luma_nr > 0:
        ycc = _ycc(out)
        if settings.luma_nr > 0:
            _luma_nr(ycc, settings)
        if settings.sharpen > 0:
            y = ycc[..., 0]
            ycc[..., 0] = y + settings.sharpen * (y - cv2.GaussianBlur(y, (0, 0), settings.sharpen_sigma))
        if settings.chroma_blur > 0:
            for c in (1, 2):
                ycc[..., c] = cv2.GaussianBlur(ycc[..., c], (0, 0), settings.chroma_blur)
        out = _rgb(ycc)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _written(out: np.ndarray, settings: ISP, quantise: bool) -> np.ndarray:
    if not quantise:
        return out
    img8 = np.round(out * 255).astype(np.uint8)
    if settings.jpeg:
        ok, buf = cv2.imencode(".jpg", img8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg])
        img8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return img8.astype(np.float32) / 255


def _nr_ratio(noisy: np.ndarray, clean: np.ndarray, settings: ISP) -> np.ndarray:
    """Per channel: the noise's standard deviation after the luminance smoothing over before it."""
    before = noisy - clean
    ycc = _ycc(before)
    _luma_nr(ycc, settings)
    after = _rgb(ycc)  # the conversions are affine and each other's inverse: the smoothed difference, offset aside
    return (after.std(axis=(0, 1)) / np.maximum(before.std(axis=(0, 1)), 1e-12)).astype(np.float32)


def _noise_level(clean_planes: np.ndarray, k: float, sigma: float, camera: Camera, settings: ISP,
                 exposure: float) -> np.ndarray:
    """Per-pixel standard deviation of the rendered noise (H, W, 3): the raw variance ``K·x + σ²`` carried
    through white balance, colour matrix, digital gain and the local slope of the tone curve (first
    order; sharpening scales it by ``1 + amount``, 8-bit rounding adds 1/12 LSB²)."""
    var = np.moveaxis(k * np.maximum(clean_planes, 0) + sigma**2, 0, -1)  # (h, w, 4)
    var = np.stack([var[..., 0], 0.5 * (var[..., 1] + var[..., 2]), var[..., 3]], -1)  # per colour
    lin = np.stack([clean_planes[0], 0.5 * (clean_planes[1] + clean_planes[2]), clean_planes[3]], -1)
    wb = np.asarray(camera.wb, np.float32)
    ccm = np.linalg.inv(camera.rgb2cam).astype(np.float32)
    out_var = (var * wb**2) @ (ccm**2).T / exposure**2
    lin_out = (lin * wb) @ ccm.T / exposure
    eps = np.float32(1e-3)
    slope = (_tone(lin_out + eps, settings) - _tone(np.maximum(lin_out - eps, 0), settings)) / (2 * eps)
    std = np.sqrt(out_var) * np.abs(slope) * (1 + settings.sharpen)
    std = np.sqrt(std**2 + (1 / 255.0) ** 2 / 12)
    return cv2.resize(std.astype(np.float32), (2 * std.shape[1], 2 * std.shape[0]),
                      interpolation=cv2.INTER_NEAREST)


def srgb_pair(clean_srgb: np.ndarray, rng: np.random.Generator, *, iso: float | None = None,
              iso_range: tuple[float, float] = SRGB_ISO_RANGE, camera: Camera | None = None,
              settings: ISP | None = None, profile=None, luma_nr: float = 0.0
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(noisy, clean, noise level) sRGB renderings, float32 (H, W, 3), of a clean photo through a random
    camera at ``iso`` (default :func:`random_iso` over ``iso_range``).

    The noisy one is what the camera writes (8 bits, maybe JPEG); the clean one is what it would have
    written without noise, the target a denoiser should reach: the same rendering of the noise-free raw,
    before 8-bit rounding, or through the same JPEG when the noisy one is a JPEG (so that the target
    keeps the chroma subsampling a denoiser cannot undo). The noise level is the per-pixel standard
    deviation of the noise (:func:`_noise_level`). Sizes are cut to even. ``luma_nr``: the share of
    cameras that smooth luminance (:func:`random_isp`; not used when ``settings`` are given).
    """
    camera = camera or random_camera(rng)
    iso = random_iso(rng, iso_range) if iso is None else float(iso)
    settings = settings or random_isp(rng, iso, luma_nr)
    exposure = float(rng.uniform(0.6, 1.0))  # white sits below the raw's clipping point
    noisy, clean, k, sigma = raw_pair(clean_srgb, rng, camera=camera, iso=iso, exposure=exposure, profile=profile)
    level = _noise_level(clean, k, sigma, camera, settings, exposure)
    noisy, clean = _toned(noisy, camera, settings, exposure), _toned(clean, camera, settings, exposure)
    if settings.luma_nr > 0:  # measured on this crop's own noise: the smoothing's effect depends on its correlation
        level *= _nr_ratio(noisy, clean, settings)
    return (_written(_finished(noisy, settings), settings, True),
            _written(_finished(clean, settings), settings, bool(settings.jpeg)), level)


def wiener(z: np.ndarray, noise_var) -> np.ndarray:
    """Oracle Wiener shrinkage of each plane's DCT coefficients for extra white noise of ``noise_var``
    (a number, or one per plane shaped to broadcast over (planes, h, w))."""
    c = dctn(z.astype(np.float64), type=2, norm="ortho", axes=(-2, -1))
    c = c * (c * c / (c * c + noise_var))
    return idctn(c, type=2, norm="ortho", axes=(-2, -1)).astype(np.float32)


def told_target(noisy: np.ndarray, clean: np.ndarray, noise_var, s: float) -> np.ndarray:
    """What a denoiser told ``s`` times the noise level should output, planes first: ``s = 1`` the clean
    image; ``s < 1`` removes only noise of ``s`` times the level, so the least-error output keeps a
    ``1 − s²`` share of it; ``s > 1`` also removes the detail the extra ``(s² − 1)·noise_var`` of noise
    would bury (an oracle Wiener shrinkage of the clean image). So the output is monotone in ``s``."""
    if s < 1.0:
        return clean + np.float32(1.0 - s * s) * (noisy - clean)
    if s > 1.0:
        return wiener(clean, (s * s - 1.0) * noise_var)
    return clean


# -- statistics (for checking the simulation against real noise) -----------------------------------------

INTENSITY_BINS = (0.0, 0.15, 0.35, 0.6, 0.85, 1.01)


def noise_stats(residual: np.ndarray, signal: np.ndarray, min_count: int = 200) -> dict:
    """Noise statistics of an (H, W, 3) ``residual`` (noisy − clean) over its ``signal`` (clean):
    ``std`` — per intensity bin of the signal's mean over channels (:data:`INTENSITY_BINS`), the noise
    standard deviation per channel (NaN where fewer than ``min_count`` pixels); ``autocorr`` — the
    correlation of each channel's residual with itself shifted by 1, 2, 3 px (rows and columns averaged,
    then averaged over channels); ``channel_corr`` — mean correlation between the channels' residuals."""
    lum = signal.mean(axis=2)
    std = np.full((len(INTENSITY_BINS) - 1, 3), np.nan)
    for i, (lo, hi) in enumerate(zip(INTENSITY_BINS[:-1], INTENSITY_BINS[1:])):
        m = (lum >= lo) & (lum < hi)
        if m.sum() >= min_count:
            std[i] = residual[m].std(axis=0)
    r = residual - residual.mean(axis=(0, 1))
    var = np.maximum((r * r).mean(axis=(0, 1)), 1e-12)
    ac = []
    for lag in (1, 2, 3):
        h = (r[:, :-lag] * r[:, lag:]).mean(axis=(0, 1)) / var
        v = (r[:-lag] * r[lag:]).mean(axis=(0, 1)) / var
        ac.append(float(np.mean(0.5 * (h + v))))
    flat = r.reshape(-1, 3)
    sd = flat.std(axis=0)
    corr = [float((flat[:, a] * flat[:, b]).mean() / (sd[a] * sd[b])) if sd[a] * sd[b] > 0 else np.nan
            for a, b in ((0, 1), (0, 2), (1, 2))]
    return {"std": std, "autocorr": np.array(ac), "channel_corr": float(np.mean(corr))}


def flat_patches(noisy: np.ndarray, size: int = 24, keep: float = 0.05) -> list[tuple[np.ndarray, np.ndarray]]:
    """The flattest ``keep`` share of non-overlapping ``size``² patches of a noisy photo with no reference,
    as (residual, signal) pairs: the signal is a per-channel plane fitted to the patch, the residual what
    is left. Flatness: the standard deviation of the residual after a σ = 3 px blur (texture survives a
    blur, noise mostly does not). Patches touching 0 or 1 (clipped) are left out."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    basis = np.stack([np.ones_like(xx), xx, yy], -1).reshape(-1, 3)
    pinv = np.linalg.pinv(basis)
    found = []
    for y in range(0, noisy.shape[0] - size + 1, size):
        for x in range(0, noisy.shape[1] - size + 1, size):
            p = noisy[y:y + size, x:x + size].reshape(-1, 3)
            if (p.max(axis=0) > 0.98).any() or (p.min(axis=0) < 0.02).any():
                continue
            fit = basis @ (pinv @ p)
            res = (p - fit).reshape(size, size, 3)
            found.append((float(cv2.GaussianBlur(res, (0, 0), 3).std()), res, fit.reshape(size, size, 3)))
    found.sort(key=lambda t: t[0])
    return [(r, s) for _, r, s in found[:max(1, int(len(found) * keep))]]
