"""Clean linear raw training data from ordinary photographs ("unprocessing", after Brooks et al. 2019).

An sRGB photo is walked back through a camera pipeline: sRGB decoding (inverse gamma), an inverse
global tone curve, an inverse colour matrix (a random plausible camera), inverse white balance and a
random exposure, then sampled on an RGGB mosaic and packed into four planes. The sources are the colour
and grey photographs that scikit-image ships inside its wheel, so the data set is regenerated offline and
bit-for-bit from a seed.
"""
from __future__ import annotations

import cv2
import numpy as np

# scikit-image's bundled photographs (no download). Grey ones become neutral colour images.
TRAIN_IMAGES = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                "stereo_motorcycle:0", "stereo_motorcycle:1", "colorwheel", "grass", "gravel", "camera",
                "coins", "moon", "clock", "cell", "page", "text")
VALID_IMAGES = ("coffee", "chelsea", "brick")


def load_photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as float32 RGB in [0, 1]; ``name:i`` picks item i of a tuple."""
    from skimage import data

    base, _, index = name.partition(":")
    image = getattr(data, base)()
    if index:
        image = image[int(index)]
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    return (image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else image.max())).clip(0, 1)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def inverse_smoothstep(x: np.ndarray) -> np.ndarray:
    """Inverse of the tone curve ``3x² − 2x³`` that cameras roughly apply before gamma."""
    x = np.clip(x, 0.0, 1.0)
    return (0.5 - np.sin(np.arcsin(1.0 - 2.0 * x) / 3.0)).astype(np.float32)


def random_rgb_to_camera(rng: np.random.Generator) -> np.ndarray:
    """A camera's response to linear sRGB primaries: diagonally dominant, positive cross-talk, rows
    summing to 1 (so grey stays grey before white balance). Processing inverts it; we apply it."""
    m = rng.uniform(0.02, 0.25, (3, 3))
    np.fill_diagonal(m, rng.uniform(0.55, 0.85, 3))
    return (m / m.sum(axis=1, keepdims=True)).astype(np.float32)


def unprocess(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """sRGB (H, W, 3) in [0, 1] → clean linear camera RGB, white-balance and exposure undone, in [0, 1]."""
    lin = srgb_to_linear(inverse_smoothstep(rgb))
    cam = lin @ random_rgb_to_camera(rng).T
    wb = np.array([1.0 / rng.uniform(1.7, 2.4), 1.0, 1.0 / rng.uniform(1.4, 2.0)], np.float32)
    exposure = np.exp(-rng.uniform(0.0, np.log(12.0)))  # most raw pixels sit far below white
    return np.clip(cam * wb * exposure, 0.0, 1.0)


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


class PhotoPool:
    """The source photos at a few scales (downscaling removes demosaicing and JPEG softness)."""

    def __init__(self, names: tuple[str, ...], scales: tuple[float, ...] = (0.5, 0.71, 1.0)):
        self.images = []
        for name in names:
            photo = load_photo(name)
            for s in scales:
                size = (max(int(photo.shape[1] * s), 64), max(int(photo.shape[0] * s), 64))
                self.images.append(cv2.resize(photo, size, interpolation=cv2.INTER_AREA) if s != 1 else photo)
        self.weights = np.array([im.shape[0] * im.shape[1] for im in self.images], np.float64)
        self.weights /= self.weights.sum()

    def crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A random ``size``×``size`` RGB crop (size even), flipped/rotated at random, area-weighted."""
        image = self.images[rng.choice(len(self.images), p=self.weights)]
        h, w = image.shape[:2]
        if min(h, w) < size:
            image = cv2.resize(image, (max(w, size), max(h, size)), interpolation=cv2.INTER_LINEAR)
            h, w = image.shape[:2]
        y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        patch = image[y:y + size, x:x + size]
        patch = np.rot90(patch, rng.integers(4))
        return np.ascontiguousarray(patch[:, ::-1] if rng.random() < 0.5 else patch)
