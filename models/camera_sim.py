"""Synthetic noisy sRGB photos: clean images through a simulated camera, for self-supervised training.

The clean sources are the colour (and a few textured grayscale) images that scikit-image ships in its
wheel, so the data set is regenerated offline, bit for bit, from a seed. Each source is

1. *unprocessed* into linear camera space (after Brooks et al., "Unprocessing Images for Learned Raw
   Denoising", 2019): inverse tone curve, inverse gamma, a random camera colour matrix and inverse
   white-balance gains, then sampled on an RGGB Bayer mosaic;
2. given heteroscedastic shot + read noise, ``var = a·x + b`` with ``a`` log-uniform and ``log b`` a
   noisy linear function of ``log a`` (the relation measured over real sensors), after an exposure cut
   that the camera's digital gain later undoes (so dark scenes come out noisier);
3. *processed* back like a camera would: demosaicking (bilinear or edge-aware, which is what makes real
   sRGB noise spatially correlated), white balance, colour matrix, gamma, an S-shaped tone curve,
   8-bit quantisation and, most of the time, JPEG compression.

Only the noisy results are kept for training (the methods are self-supervised); :func:`make_pair` also
returns the clean rendering for checks.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Sources bundled inside scikit-image (no download): colour photos, a micrograph, a space image, a
# fundus photo and grayscale textures (replicated to RGB) for fine detail.
COLOUR_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                  "retina", "colorwheel", "stereo_motorcycle", "logo")
GRAY_SOURCES = ("camera", "brick", "grass", "gravel", "coins", "moon")
MAX_SIDE = 640  # sources are area-downscaled to at most this (also removes their own noise and JPEG)


def load_source(name: str) -> np.ndarray:
    """A clean source as float32 RGB in [0, 1], downscaled so its longer side is at most MAX_SIDE."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:  # logo: composite the alpha channel over white
        alpha = img[..., 3:4] / 255.0
        img = img[..., :3] * alpha + 255.0 * (1 - alpha)
    img = img.astype(np.float32) / 255.0
    scale = MAX_SIDE / max(img.shape[:2])
    if scale < 1:
        size = (round(img.shape[1] * scale), round(img.shape[0] * scale))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    return np.clip(img, 0, 1)


@dataclass(frozen=True)
class Camera:
    """One random camera + exposure: everything that turns a clean scene into a noisy sRGB image."""

    rgb2cam: np.ndarray  # 3×3, rows sum to 1
    wb: tuple[float, float, float]  # red, green, blue gains
    shot: float  # variance per unit signal (linear, full scale 1)
    read: float  # signal-independent variance
    exposure: float  # scene brightness cut, undone by digital gain after the noise
    edge_aware: bool  # demosaicking algorithm
    jpeg: int  # JPEG quality, or 0 for none

    @staticmethod
    def random(rng: np.random.Generator, max_shot: float = 0.02) -> "Camera":
        mix = rng.uniform(0.0, 0.4)
        other = rng.uniform(0.1, 1.0, (3, 3))
        rgb2cam = (1 - mix) * np.eye(3) + mix * other / other.sum(1, keepdims=True)
        log_shot = rng.uniform(np.log(1e-4), np.log(max_shot))
        log_read = 2.18 * log_shot + 1.2 + rng.normal(0, 0.26)
        return Camera(
            rgb2cam=rgb2cam.astype(np.float32),
            wb=(float(rng.uniform(1.9, 2.4)), 1.0, float(rng.uniform(1.5, 1.9))),
            shot=float(np.exp(log_shot)),
            read=float(np.exp(log_read)),
            exposure=float(rng.uniform(0.3, 1.0)),
            edge_aware=bool(rng.random() < 0.5),
            jpeg=int(rng.integers(75, 99)) if rng.random() < 0.75 else 0,
        )


def _unprocess(srgb: np.ndarray, cam: Camera) -> np.ndarray:
    """sRGB → linear camera RGB (before white balance)."""
    tone = 0.5 - np.sin(np.arcsin(np.clip(1.0 - 2.0 * srgb, -1, 1)) / 3.0)  # inverse smoothstep
    linear = np.maximum(tone, 1e-8) ** 2.2
    camera = linear @ cam.rgb2cam.T
    return camera / np.asarray(cam.wb, np.float32)


def _process(camera: np.ndarray, cam: Camera) -> np.ndarray:
    """Linear camera RGB → sRGB in [0, 1] (float)."""
    balanced = np.clip(camera * np.asarray(cam.wb, np.float32), 0, 1)
    rgb = np.clip(balanced @ np.linalg.inv(cam.rgb2cam).T, 0, 1)
    gamma = np.maximum(rgb, 1e-8) ** (1 / 2.2)
    return 3 * gamma**2 - 2 * gamma**3  # smoothstep tone curve


def _mosaic(rgb: np.ndarray) -> np.ndarray:
    """RGGB Bayer samples of an (H, W, 3) image with even H and W."""
    bayer = np.empty(rgb.shape[:2], np.float32)
    bayer[0::2, 0::2] = rgb[0::2, 0::2, 0]
    bayer[0::2, 1::2] = rgb[0::2, 1::2, 1]
    bayer[1::2, 0::2] = rgb[1::2, 0::2, 1]
    bayer[1::2, 1::2] = rgb[1::2, 1::2, 2]
    return bayer


def _demosaic(bayer: np.ndarray, edge_aware: bool) -> np.ndarray:
    code = cv2.COLOR_BayerRGGB2RGB_EA if edge_aware else cv2.COLOR_BayerRGGB2RGB
    raw16 = np.round(np.clip(bayer, 0, 1) * 65535).astype(np.uint16)
    return cv2.cvtColor(raw16, code).astype(np.float32) / 65535


def _quantise(srgb: np.ndarray, jpeg: int) -> np.ndarray:
    img8 = np.round(np.clip(srgb, 0, 1) * 255).astype(np.uint8)
    if jpeg:
        ok, buf = cv2.imencode(".jpg", img8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg])
        img8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return img8.astype(np.float32) / 255


def make_pair(clean_srgb: np.ndarray, cam: Camera, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) sRGB renderings, float32 in [0, 1], of a clean source through ``cam``.
    The clean one goes through the same pipeline without noise (so colours match)."""
    h, w = (s // 2 * 2 for s in clean_srgb.shape[:2])
    src = clean_srgb[:h, :w].astype(np.float32)
    bayer = _mosaic(_unprocess(src, cam)) * cam.exposure
    variance = cam.shot * np.maximum(bayer, 0) + cam.read
    noisy = bayer + rng.normal(size=bayer.shape).astype(np.float32) * np.sqrt(variance).astype(np.float32)
    out = []
    for b in (noisy, bayer):
        rgb = _demosaic(b / cam.exposure, cam.edge_aware)  # digital gain: noise is amplified too
        out.append(_quantise(_process(rgb, cam), cam.jpeg))
    return out[0], out[1]


def synthetic_noisy_set(seed: int = 0, per_source: int = 2, sources: tuple[str, ...] | None = None,
                        with_clean: bool = False) -> list:
    """The shipped training recipe: every source × ``per_source`` random cameras, in a fixed order from
    ``seed``. Returns noisy float32 HWC images (or (noisy, clean) pairs with ``with_clean``)."""
    rng = np.random.default_rng(seed)
    names = sources or COLOUR_SOURCES + GRAY_SOURCES
    out = []
    for name in names:
        clean = load_source(name)
        for _ in range(per_source):
            cam = Camera.random(rng)
            noisy, ref = make_pair(clean, cam, rng)
            out.append((noisy, ref) if with_clean else noisy)
    return out
