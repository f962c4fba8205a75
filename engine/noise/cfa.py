"""Bayer mosaic ⇄ four half-resolution colour planes, for any of the four 2×2 CFA phases.

Noise estimation and the raw denoiser work on the packed planes in the fixed order R, G1, G2, B, where
G1 is the green sharing a row with red and G2 the green sharing a row with blue. So one network and one
estimator serve RGGB, BGGR, GRBG and GBRG sensors alike; a network, which also learns where each plane's
pixels sit inside the 2×2 tile, sees the planes flipped to RGGB's layout (:func:`rggb_flip`). A mosaic
with an odd height or width is first grown by one reflected row/column (numpy's ``reflect`` repeats row
H-2, which has the same colour phase as the missing row H), and :func:`unpack` crops it off again.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidImageError

PHASES = ("RGGB", "BGGR", "GRBG", "GBRG")


def offsets(cfa: str) -> list[tuple[int, int]]:
    """(dy, dx) of R, G1, G2 and B inside the 2×2 tile described by ``cfa`` (row-major, e.g. "GRBG")."""
    cfa = cfa.upper()
    if cfa not in PHASES:
        raise InvalidImageError(f"only Bayer mosaics (RGGB, BGGR, GRBG, GBRG) can be packed, not {cfa!r}")
    where = [divmod(i, 2) for i in range(4)]
    red, blue = where[cfa.index("R")], where[cfa.index("B")]
    greens = [where[i] for i, c in enumerate(cfa) if c == "G"]
    g1 = next(g for g in greens if g[0] == red[0])  # on the red row
    g2 = next(g for g in greens if g[0] == blue[0])  # on the blue row
    return [red, g1, g2, blue]


def rggb_flip(cfa: str) -> tuple[int, ...]:
    """The axes of packed planes ``(..., h, w)`` to flip so that their pixels sit as in an RGGB mosaic
    (red top-left, G1 right of it, G2 below it): flipping the planes flips the (even-sized) mosaic, which
    moves red to the top-left. The shipped SNR-Net lost 0.4–0.9 dB on mirrored layouts (README, YOND)."""
    dy, dx = offsets(cfa)[0]
    return tuple(axis for axis, off in ((-2, dy), (-1, dx)) if off)


# The plane order of each view of :func:`rggb_view`: transposing the mosaic trades G1 and G2, turning it
# half a turn makes it BGGR, read as RGGB with red and blue traded (and G1 and G2).
_VIEW_ORDER = ((0, 1, 2, 3), (0, 2, 1, 3), (3, 2, 1, 0), (3, 1, 2, 0))
VIEWS = len(_VIEW_ORDER)


def rggb_view(planes: np.ndarray, k: int) -> np.ndarray:
    """View ``k`` (0 … VIEWS-1) of packed RGGB planes ``(4, h, w)`` that is again an RGGB mosaic: 0 as it
    is, 1 the mosaic transposed, 2 turned half a turn, 3 both (flipped about the anti-diagonal); the planes
    are reordered so that each colour sits where RGGB has it. Each view is its own inverse. A single map
    ``(h, w)`` (e.g. the noise level) is moved alike."""
    x = planes[..., ::-1, ::-1] if k in (2, 3) else planes
    x = np.swapaxes(x, -1, -2) if k in (1, 3) else x
    return x[list(_VIEW_ORDER[k])] if planes.ndim == 3 else x


def pack(mosaic: np.ndarray, cfa: str) -> np.ndarray:
    """``(H, W)`` mosaic → ``(4, ceil(H/2), ceil(W/2))`` planes R, G1, G2, B (float32, a copy)."""
    if mosaic.ndim != 2:
        raise InvalidImageError(f"a Bayer mosaic is 2-D, got shape {mosaic.shape}")
    h, w = mosaic.shape
    if h < 2 or w < 2:
        raise InvalidImageError(f"a {h}×{w} mosaic is too small to hold one 2×2 CFA tile")
    grown = np.pad(mosaic, ((0, h % 2), (0, w % 2)), mode="reflect")
    return np.stack([grown[dy::2, dx::2] for dy, dx in offsets(cfa)]).astype(np.float32)


def unpack(planes: np.ndarray, cfa: str, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`pack`: the ``(4, h, w)`` planes back into a mosaic of ``shape`` (H, W)."""
    h, w = shape
    if planes.shape != (4, (h + 1) // 2, (w + 1) // 2):
        raise InvalidImageError(f"planes of shape {planes.shape} do not pack a {h}×{w} mosaic")
    out = np.empty((planes.shape[1] * 2, planes.shape[2] * 2), np.float32)
    for plane, (dy, dx) in zip(planes, offsets(cfa)):
        out[dy::2, dx::2] = plane
    return out[:h, :w]


def pack_map(values: np.ndarray) -> np.ndarray:
    """A per-pixel ``(H, W)`` map (e.g. a region multiplier) at packed resolution: the mean of each 2×2."""
    h, w = values.shape
    grown = np.pad(values.astype(np.float32), ((0, h % 2), (0, w % 2)), mode="edge")
    return 0.25 * (grown[0::2, 0::2] + grown[0::2, 1::2] + grown[1::2, 0::2] + grown[1::2, 1::2])
