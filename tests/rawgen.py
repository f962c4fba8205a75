"""Small synthetic raw files with known noise, for the YOND and PNNP tests and benchmarks.

DNGs are written directly with tifffile (independent of QuietLens' own DNG writer).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from quietlens.engine.noise.physics import tukey_lambda_noise

IDENTITY = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)


def bin_planes(planes: np.ndarray, factor: int, half: int | None = None) -> np.ndarray:
    """Packed planes (C, H, W) averaged over ``factor``×``factor`` blocks (edges that do not fill a block are
    dropped): the scene at lower resolution, its own noise variance ``factor``² times lower. ``half`` 0 or 1
    (``factor`` even): only that checkerboard half of each block (0: the block's top-left pixel's), so the
    two halves are two images of one scene with independent noise — both centred on the block, and each
    with twice the variance of the whole block's average."""
    c, h, w = planes.shape
    h, w = h // factor * factor, w // factor * factor
    blocks = planes[:, :h, :w].reshape(c, h // factor, factor, w // factor, factor)
    if half is None:
        return blocks.mean(axis=(2, 4))
    cells = np.add.outer(np.arange(factor), np.arange(factor)) % 2 == half
    return np.einsum("chywx,yx->chw", blocks, cells / cells.sum(), dtype=np.float64).astype(planes.dtype)


def bin_mosaic(planes: np.ndarray, factor: int, half: int | None = None) -> np.ndarray:
    """Packed planes (R, G1, G2, B) binned ``factor``×``factor`` (even) into the RGGB planes of a sensor with
    ``factor``× larger pixels: each plane's bins are shifted by half a bin to where its colour sits in the
    2×2 tile (G1 right of red, G2 below it, blue diagonally), the greens taken from both green planes.
    :func:`bin_planes` alone puts all four colours at one place, a layout no mosaic has (a network that
    learnt the Bayer layout does 0.5–0.8 dB worse on it). Own noise variance ``factor``² lower (greens 2×;
    half that with ``half``, see :func:`bin_planes`)."""
    half_bin = factor // 2
    green = (planes[1] + planes[2]) / 2
    binned = [bin_planes(src[None, dy * half_bin:, dx * half_bin:], factor, half)[0]
              for src, (dy, dx) in zip((planes[0], green, green, planes[3]), ((0, 0), (0, 1), (1, 0), (1, 1)))]
    h, w = min(b.shape[0] for b in binned), min(b.shape[1] for b in binned)
    return np.stack([b[:h, :w] for b in binned])


def write_dng(path: Path, mosaic: np.ndarray, cfa: str = "RGGB", blacks=(0, 0, 0, 0), white: int = 4095,
              iso: int | None = None, black_tag: bool = True, camera: str = "Synthetic") -> Path:
    """A minimal CFA DNG (UniqueCameraModel ``camera``); ``black_tag=False`` leaves the BlackLevel tags out."""
    tags = [
        (33421, 3, 2, (2, 2)),
        (33422, 1, 4, bytes("RGB".index(c) for c in cfa)),
        (50706, 1, 4, bytes((1, 4, 0, 0))),
        (50708, 2, 0, camera),
        (50717, 4, 1, white),
        (50721, 10, 9, IDENTITY),
        (50778, 3, 1, 21),
        (50728, 5, 3, (1, 2, 1, 1, 1, 2)),
    ]
    if black_tag:
        tags += [(50713, 3, 2, (2, 2)), (50714, 4, 4, tuple(blacks))]
    if iso is not None:
        tags.append((34855, 3, 1, int(iso)))
    tifffile.imwrite(path, np.asarray(mosaic, np.uint16), photometric=32803, extratags=[(*t, True) for t in tags])
    return path


def scene(shape: tuple[int, int], seed: int = 0, levels: tuple[float, float] = (0.02, 0.7),
          texture: bool = True) -> np.ndarray:
    """A clean normalised mosaic: on the left, 4×2 flat patches of random grey levels; on the right, a
    ramp under fine stripes — the mix of flat and textured areas a noise estimator meets in a photo.
    ``texture=False``: flat patches all over (4×4)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    ramp = levels[0] + (levels[1] - levels[0]) * (yy * 0.8 + 0.1) * (1 + 0.2 * np.sin(40 * xx + 25 * yy))
    patch = rng.uniform(levels[0], levels[1], (4, 4))
    blocks = np.kron(patch, np.ones((-(-h // 4), -(-w // 4))))[:h, :w]
    return np.where((xx < 0.5) | (not texture), blocks, ramp).astype(np.float32)


def noisy_dng(path: Path, shape=(192, 256), cfa="RGGB", gain=2e-3, read=3e-3, black=256, white=16383,
              seed=0, levels=(0.005, 0.6)) -> tuple[Path, np.ndarray]:
    """A DNG of :func:`scene` with Poisson–Gaussian noise of normalised ``gain`` and ``read``.

    Returns the path and the clean normalised mosaic."""
    rng = np.random.default_rng(seed)
    clean = scene(shape, seed, levels)
    noisy = gain * rng.poisson(clean / gain) + rng.normal(0, read, shape)
    span = white - black
    write_dng(path, np.clip(np.rint(noisy * span + black), 0, 65535), cfa, (black,) * 4, white)
    return path, clean


def dark_frames(folder: Path, iso: int, count: int, shape=(96, 128), black=512, white=16383, row=1.5,
                col=0.4, pixel=4.0, tukey_lambda=-0.15, shading=2.0, seed=0) -> list[Path]:
    """Dark frames (DN) with a fixed shading pattern, per-frame row and column offsets and Tukey-lambda
    pixel noise of the given standard deviations; the shading is the camera's (same for every seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = np.random.default_rng(12345).normal(0, shading, shape)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        frame = black + pattern + rng.normal(0, row, (shape[0], 1)) + rng.normal(0, col, (1, shape[1]))
        frame = frame + tukey_lambda_noise(rng, shape, tukey_lambda, pixel)
        paths.append(write_dng(folder / f"dark_iso{iso}_{seed}_{i:03d}.dng", np.rint(frame), blacks=(black,) * 4,
                               white=white, iso=iso))
    return paths


def flat_frames(folder: Path, iso: int, gain: float, levels=(1000.0, 4000.0), shape=(96, 128), black=512,
                white=16383, read=4.0, prnu=0.01, seed=0) -> list[Path]:
    """Pairs of uniformly lit frames per level (DN above black) with shot noise of ``gain`` DN/e⁻,
    1 % pixel response non-uniformity (fixed) and Gaussian read noise."""
    folder.mkdir(parents=True, exist_ok=True)
    response = 1 + np.random.default_rng(54321).normal(0, prnu, shape)
    rng = np.random.default_rng(seed)
    paths = []
    for level in levels:
        for j in range(2):
            frame = black + gain * rng.poisson(level * response / gain) + rng.normal(0, read, shape)
            paths.append(write_dng(folder / f"flat_iso{iso}_{int(level)}_{j}.dng", np.rint(frame),
                                   blacks=(black,) * 4, white=white, iso=iso))
    return paths
