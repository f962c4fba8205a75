"""Run a fully convolutional graph over a large image in tiles that fit a memory budget.

Each tile is fed with ``halo`` pixels of real neighbouring context on every side (reflected at the image
border, exactly as if the whole image had been padded by ``halo``); only its core is kept. With ``halo`` at
least the graph's receptive-field radius the result equals one untiled call on the padded image.

Every tile has the same shape (the last row and column are shifted back rather than cut short), so a GPU
picks its convolution algorithms once and ONNX Runtime's memory arena is reused between tiles.
"""
from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple

import numpy as np

from .errors import ModelError, QuietLensError
from .progress import CancelToken, Progress, no_progress

DEFAULT_BUDGET_MB = 1024


class Tile(NamedTuple):
    """A core box in image coordinates; the graph sees it grown by ``pad`` on every side. The last tiles
    may run past the bottom/right edge (by less than ``multiple_of``): that part is padding, not kept."""

    y: int
    x: int
    h: int
    w: int
    pad: int


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def _grid_pad(halo: int, multiple_of: int) -> int:
    """The halo rounded up to the grid (checked here, as every entry point needs both)."""
    if multiple_of < 1 or halo < 0:
        raise QuietLensError(f"tiling needs multiple_of >= 1 and halo >= 0, got {multiple_of} and {halo}")
    return _ceil_to(halo, multiple_of)


def budget_from_env() -> int:
    """The tile memory budget in bytes: ``$QUIETLENS_TILE_BUDGET_MB``, else 1024 MiB."""
    text = os.environ.get("QUIETLENS_TILE_BUDGET_MB", "").strip()
    try:
        mb = float(text) if text else DEFAULT_BUDGET_MB
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise QuietLensError(f"QUIETLENS_TILE_BUDGET_MB must be a positive number of MiB, got {text!r}")
    return int(mb * 2**20)


def tile_side_for_budget(budget_bytes: int, bytes_per_pixel: float, halo: int, multiple_of: int) -> int:
    """The largest square core side (a multiple of ``multiple_of``) whose padded tile fits the budget."""
    pad = _grid_pad(halo, multiple_of)
    side = math.isqrt(int(budget_bytes / bytes_per_pixel))
    core = (side - 2 * pad) // multiple_of * multiple_of
    if core < multiple_of:
        need_mib = math.ceil(bytes_per_pixel * (multiple_of + 2 * pad) ** 2 / 2**20)  # up: so it suffices
        raise QuietLensError(
            f"a tile memory budget of {round(budget_bytes / 2**20, 2):g} MiB is too small for this model: "
            f"the smallest tile needs {need_mib} MiB (raise QUIETLENS_TILE_BUDGET_MB)"
        )
    return core


def _core_shape(h: int, w: int, budget: int, bpp: float, halo: int, m: int) -> tuple[int, int]:
    """Core (height, width) for a budget: the whole image when it fits; else the largest square,
    stretched along one axis when the image is narrower than it in the other (strips). Then each side
    shrinks to the smallest that needs no more tiles, so the tiles overlap (and recompute) little."""
    pad = _grid_pad(halo, m)
    full_h, full_w = _ceil_to(h, m), _ceil_to(w, m)
    if bpp * (full_h + 2 * pad) * (full_w + 2 * pad) <= budget:
        return full_h, full_w
    side = tile_side_for_budget(budget, bpp, halo, m)

    def stretch(fixed: int, full: int) -> int:
        return min(full, int(budget / bpp / (fixed + 2 * pad) - 2 * pad) // m * m)

    if full_w <= side:
        core_h, core_w = stretch(full_w, full_h), full_w
    elif full_h <= side:
        core_h, core_w = full_h, stretch(full_h, full_w)
    else:
        core_h, core_w = side, side
    return _balanced(full_h, core_h, m), _balanced(full_w, core_w, m)


def _balanced(full: int, core: int, m: int) -> int:
    count = -(-full // core)
    return _ceil_to(-(-full // count), m)  # never above ``core``: both are multiples of m


def _origins(n: int, core: int, step: int, m: int) -> list[int]:
    # The last tile ends at the image edge (rounded up to the grid), overlapping its neighbour if need be.
    last = _ceil_to(max(n - core, 0), m)
    return list(range(0, last, step)) + [last]


def plan_tiles(h: int, w: int, core: int | tuple[int, int], halo: int, multiple_of: int = 1,
               blend: int = 0) -> list[Tile]:
    """Tiles covering an ``h × w`` image, row by row. The halo and ``blend`` are rounded up, and the core
    down, to multiples of ``multiple_of``, so every tile's padded size and its origin in the padded image
    are multiples of it (the alignment a graph with downsampling sees in the untiled call)."""
    m = multiple_of
    pad, overlap = _grid_pad(halo, m), _ceil_to(max(blend, 0), m)
    core_h, core_w = (core, core) if isinstance(core, int) else core
    core_h, core_w = (min(max(c // m, 1) * m, _ceil_to(n, m)) for c, n in ((core_h, h), (core_w, w)))
    if overlap and (core_h - overlap < m and core_h < h or core_w - overlap < m and core_w < w):
        raise QuietLensError(f"blend of {blend} px leaves no room in tiles of {core_h}×{core_w} px")
    ys = _origins(h, core_h, max(core_h - overlap, m), m)
    xs = _origins(w, core_w, max(core_w - overlap, m), m)
    return [Tile(y, x, core_h, core_w, pad) for y in ys for x in xs]


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = i % period
    return np.where(i >= n, period - i, i)


def _symmetric(i: np.ndarray, n: int) -> np.ndarray:
    i = i % (2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def _edge(i: np.ndarray, n: int) -> np.ndarray:
    return np.clip(i, 0, n - 1)


# Index maps that equal numpy.pad's modes of the same name, however wide the padding.
_PAD_INDEX = {"reflect": _reflect, "symmetric": _symmetric, "edge": _edge}


def _window(n: int, ramp: int, rise: bool, fall: bool) -> np.ndarray:
    """1-D blend weights: a raised-cosine ramp over ``ramp`` px at the sides that meet another tile.
    Never exactly 0, so pixels covered by a single tile keep their value after normalising."""
    w = np.ones(n, np.float32)
    r = min(ramp, n)
    edge = (0.5 - 0.5 * np.cos(np.pi * (np.arange(r) + 0.5) / r)).astype(np.float32)
    if rise:
        w[:r] = edge
    if fall:
        w[n - r:] = np.minimum(w[n - r:], edge[::-1])
    return w


def run_tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    *,
    halo: int,
    bytes_per_pixel: float,
    budget_bytes: int | None = None,
    multiple_of: int = 1,
    tile: int | None = None,
    pad_mode: str = "reflect",
    blend: int = 0,
    progress: Progress = no_progress,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """``fn`` applied to ``x`` (N, C, H, W) tile by tile; ``fn`` maps (N, C, h, w) to (N, C', h, w).

    ``bytes_per_pixel``: the graph's peak memory per pixel of a padded tile, for the whole batch N
    (inputs, outputs and live activations; about 4 bytes × the channels alive at once). The tile is the
    largest that fits ``budget_bytes`` (default :func:`budget_from_env`); ``tile`` forces a core side
    instead. ``blend`` > 0 overlaps neighbouring cores by that many pixels with normalised raised-cosine
    weights, for graphs whose context exceeds the halo.
    """
    if x.ndim != 4:
        raise ValueError(f"run_tiled needs an (N, C, H, W) array, got shape {x.shape}")
    if pad_mode not in _PAD_INDEX:
        raise QuietLensError(f"unknown pad mode {pad_mode!r} (use {', '.join(_PAD_INDEX)})")
    if tile is None and not bytes_per_pixel > 0:
        raise QuietLensError(f"bytes_per_pixel must be positive, got {bytes_per_pixel}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, _, h, w = x.shape
    if tile is None:
        budget = budget_from_env() if budget_bytes is None else budget_bytes
        core: int | tuple[int, int] = _core_shape(h, w, budget, bytes_per_pixel, halo, multiple_of)
    else:
        core = tile
    tiles = plan_tiles(h, w, core, halo, multiple_of, blend)
    index = _PAD_INDEX[pad_mode]
    ramp = _ceil_to(max(blend, 0), multiple_of)
    out = weight = None
    for i, t in enumerate(tiles):
        if cancel is not None:
            cancel.check()
        rows = index(np.arange(t.y - t.pad, t.y + t.h + t.pad), h)
        cols = index(np.arange(t.x - t.pad, t.x + t.w + t.pad), w)
        fed = x[:, :, rows][:, :, :, cols]  # a copy of just this tile, padding included (one axis at a time: faster)
        result = np.asarray(fn(fed))
        if result.ndim != 4 or result.shape[0] != n or result.shape[2:] != fed.shape[2:]:
            raise ModelError(f"the model returned shape {result.shape} for a tile of shape {fed.shape}; "
                             "tiling needs the input's height and width")
        vh, vw = min(t.h, h - t.y), min(t.w, w - t.x)
        piece = result[:, :, t.pad:t.pad + vh, t.pad:t.pad + vw]
        if out is None:
            out = np.zeros((n, result.shape[1], h, w), np.float32)
            weight = np.zeros((h, w), np.float32) if ramp else None
        if weight is not None:
            wy = _window(t.h, ramp, t.y > 0, t.y + t.h < h)[:vh]
            wx = _window(t.w, ramp, t.x > 0, t.x + t.w < w)[:vw]
            wgt = wy[:, None] * wx[None, :]
            out[:, :, t.y:t.y + vh, t.x:t.x + vw] += piece * wgt
            weight[t.y:t.y + vh, t.x:t.x + vw] += wgt
        else:
            out[:, :, t.y:t.y + vh, t.x:t.x + vw] = piece
        progress((i + 1) / len(tiles), f"tile {i + 1}/{len(tiles)}")
    if weight is not None:
        out /= weight
    return out
