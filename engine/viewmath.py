"""Array work behind the viewer: view planes and orientations, display pixels, residuals, histograms,
pixel read-outs, preview crops, and normalising what methods expose (noise models, maps) for display.

A *view* of an image is a 2-D plane: the image itself for ``HW``/``HWC``, or for a volume an ``axial``
(fixed Z), ``coronal`` (fixed H) or ``sagittal`` (fixed W) plane, of frame ``frame`` for ``TZHW``. In
coronal and sagittal planes the slice axis is shown top-down from the last slice (slices are stored in
ascending position, so superior ends up on top); NIfTI axial planes are flipped vertically (anterior on
top, as the file's row axis usually points anterior). Plane coordinates are (row, col) of that 2-D array.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import display
from .image import Image
from .tiling import plan_tiles

ORIENTATIONS = ("axial", "coronal", "sagittal")
PREVIEW_TILE = 256
PREVIEW_HALO = 32
_NORMAL = {"axial": "Z", "coronal": "H", "sagittal": "W"}


@dataclass(frozen=True)
class View:
    orientation: str = "axial"
    index: int = 0  # plane along the orientation's normal (ignored for 2-D images)
    frame: int = 0  # T of a TZHW image


# -- planes ------------------------------------------------------------------------------------------

def orientations(image: Image) -> tuple[str, ...]:
    return ORIENTATIONS if "Z" in image.axes else ("axial",)


def frame_count(image: Image) -> int:
    return image.data.shape[0] if image.axes.startswith("T") else 1


def _spatial(image: Image) -> str:
    return "".join(a for a in image.axes if a in "ZHW")


def _flipped(axes: str, fmt: str, orientation: str) -> set[str]:
    """The spatial axes shown reversed in this orientation."""
    if "Z" not in axes:
        return set()
    if orientation == "axial":
        return {"H"} if fmt == "nifti" else set()
    return {"Z"}


def _size(image: Image, axis: str) -> int:
    return image.data.shape[image.axes.index(axis)]


def plane_count(image: Image, orientation: str = "axial") -> int:
    if "Z" not in image.axes:
        return 1
    return _size(image, _NORMAL[orientation])


def plane_shape(image: Image, orientation: str = "axial") -> tuple[int, int]:
    axes = [a for a in _spatial(image) if a != _NORMAL[orientation] or "Z" not in image.axes]
    return _size(image, axes[0]), _size(image, axes[1])


def _index(axes: str, shape: tuple[int, ...], fmt: str, view: View) -> tuple:
    flips = _flipped(axes, fmt, view.orientation)
    normal = _NORMAL[view.orientation] if "Z" in axes else None
    index: list[Any] = []
    for axis, n in zip(axes, shape):
        if axis == "T":
            index.append(min(max(view.frame, 0), n - 1))
        elif axis == normal:
            index.append(min(max(view.index, 0), n - 1))
        elif axis in flips:
            index.append(slice(None, None, -1))
        else:
            index.append(slice(None))
    return tuple(index)


def plane_index(image: Image, view: View) -> tuple:
    """A basic-indexing tuple into ``image.data`` selecting the view's plane (a view, assignable)."""
    return _index(image.axes, image.data.shape, image.fmt, view)


def spatial_plane(array: np.ndarray, image: Image, view: View) -> np.ndarray:
    """The view's plane of an array over the image's spatial shape (a region mask or map)."""
    return array[_index("".join(a for a in image.axes if a in "ZHW"), array.shape, image.fmt, view)]


def plane(image: Image, view: View) -> np.ndarray:
    """The view's pixels: ``(rows, cols)`` or ``(rows, cols, C)``."""
    return image.data[plane_index(image, view)]


def voxel(image: Image, view: View, row: int, col: int) -> tuple[int, ...] | None:
    """The index into ``image.data`` (channels excluded) of a plane pixel; None outside the image."""
    h, w = plane_shape(image, view.orientation)
    if not (0 <= row < h and 0 <= col < w):
        return None
    flips = _flipped(image.axes, image.fmt, view.orientation)
    normal = _NORMAL[view.orientation] if "Z" in image.axes else None
    coords = iter((row, col))
    out = []
    for axis in image.axes:
        if axis == "C":
            continue
        if axis == "T":
            out.append(min(max(view.frame, 0), image.data.shape[0] - 1))
        elif axis == normal:
            out.append(min(max(view.index, 0), _size(image, axis) - 1))
        else:
            c = next(coords)
            out.append(_size(image, axis) - 1 - c if axis in flips else c)
    return tuple(out)


def extrude(mask: np.ndarray, image: Image, orientation: str) -> np.ndarray:
    """A plane mask repeated along the orientation's normal: a mask of the image's spatial shape."""
    spatial = _spatial(image)
    shape = tuple(_size(image, a) for a in spatial)
    out = np.zeros(shape, mask.dtype)
    if "Z" not in spatial:
        out[...] = mask
        return out
    normal = _NORMAL[orientation]
    flips = _flipped(image.axes, image.fmt, orientation)
    index = tuple(slice(None, None, -1) if a in flips else slice(None) for a in spatial)
    out[index] = np.expand_dims(mask, spatial.index(normal))
    return out


def plane_aspect(image: Image, orientation: str = "axial") -> float:
    """Height of a plane pixel over its width (from the spacing), for undistorted display."""
    if not image.spacing:
        return 1.0
    spatial = [a for a in image.axes if a in "ZHW"]
    spacing = dict(zip(spatial, image.spacing[-len(spatial):]))
    rows_axis, cols_axis = [a for a in spatial if a != _NORMAL[orientation] or "Z" not in spatial][:2]
    try:
        ratio = float(spacing[rows_axis]) / float(spacing[cols_axis])
    except (KeyError, ZeroDivisionError, TypeError, ValueError):
        return 1.0
    return ratio if np.isfinite(ratio) and 0.05 < ratio < 20 else 1.0


# -- display pixels ----------------------------------------------------------------------------------

def _undo_flip(rgb: np.ndarray, flip: int) -> np.ndarray:
    """LibRaw rotates its rendering by the file's orientation flag; turn it back onto the mosaic's grid."""
    k = {3: 2, 5: -1, 6: 1}.get(int(flip or 0), 0)
    return np.ascontiguousarray(np.rot90(rgb, k)) if k else rgb


def display_plane(image: Image, view: View, win: tuple[float, float] | None = None) -> tuple[np.ndarray, float]:
    """8-bit pixels of the view and their size in plane pixels (2 for a half-size RAW rendering)."""
    if image.kind == "raw":
        rgb = _undo_flip(display.to_display(image), image.meta.get("flip", 0))
        scale = image.data.shape[0] / max(rgb.shape[0], 1)
        return rgb, float(scale)
    pixels = plane(image, view)
    if image.kind == "photo":
        rgb = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
        return (rgb[..., 0] if rgb.shape[-1] == 1 else rgb), 1.0
    centre, width = win or image.window or display.auto_window(pixels)
    return display.window(pixels, centre, width), 1.0


def initial_window(image: Image) -> tuple[float, float] | None:
    """The window stored in the file, else a robust one from the data; None for photos and RAW."""
    if image.kind in ("photo", "raw"):
        return None
    return image.window or display.auto_window(image.data[:: max(1, image.data.shape[0] // 16)])


def residual(before: np.ndarray, after: np.ndarray, spread: float | None = None) -> tuple[np.ndarray, float]:
    """``before − after`` as 8-bit grey centred on 128, ±4 robust σ to black/white (or ±``spread``).

    Returns the pixels and the spread used (data units), so the caption can say what full black means.
    """
    diff = before.astype(np.float32) - after.astype(np.float32)
    if diff.ndim == 3:
        diff = diff.mean(axis=-1)
    if spread is None:
        sample = diff.ravel()[:: max(1, diff.size // 500_000)]
        mad = float(np.median(np.abs(sample - np.median(sample)))) if sample.size else 0.0
        spread = 4.0 * 1.4826 * mad
        if not spread > 0:
            spread = float(np.abs(sample).max()) if sample.size else 0.0
        spread = spread if spread > 0 else 1.0
    grey = np.clip(np.rint(128.0 + diff * (127.0 / spread)), 0, 255).astype(np.uint8)
    return grey, float(spread)


def value_units(image: Image) -> tuple[float, str]:
    """The factor and unit that turn data differences into what the read-out shows: 8-bit levels for
    photos, sensor DN for RAW (white − black level), HU for CT, scanner units otherwise."""
    if image.kind == "photo":
        return 255.0, "levels of 255"
    if image.kind == "raw":
        meta = image.meta
        return float(meta["white_level"] - np.mean(meta["black_level_per_channel"])), "DN"
    return 1.0, "HU" if image.kind == "ct" else ""


def histogram(pixels: np.ndarray, bins: int = 256, value_range: tuple[float, float] | None = None,
              max_samples: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Counts ``(C, bins)`` (one row per colour channel, one for grey) and the ``bins + 1`` edges."""
    data = pixels.reshape(-1, pixels.shape[-1]) if pixels.ndim == 3 else pixels.reshape(-1, 1)
    data = data[:: max(1, data.shape[0] // max_samples)]
    finite = data[np.isfinite(data).all(axis=1)]
    if value_range is None:
        if finite.size:
            lo, hi = np.percentile(finite, [0.1, 99.9])
        else:
            lo, hi = 0.0, 1.0
        value_range = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    edges = np.linspace(value_range[0], value_range[1], bins + 1)
    counts = np.stack([np.histogram(finite[:, c], edges)[0] for c in range(finite.shape[1])])
    return counts, edges


def histogram_heights(counts: np.ndarray) -> np.ndarray:
    """Bar heights in [0, 1] on a log scale, so both a large background peak and the tissue show."""
    logs = np.log1p(np.asarray(counts, np.float64))
    top = logs.max() if logs.size else 0.0
    return (logs / top) if top > 0 else logs


def readout(image: Image, view: View, row: int, col: int) -> str:
    """What the status bar shows for a plane pixel: position (in-plane pixel coordinates from 0, the
    slice of a volume numbered from 1 as the slice slider shows it) and value in the image's own units."""
    at = voxel(image, view, row, col)
    if at is None:
        return ""
    value = image.data[at]
    named = dict(zip(image.axes.replace("C", ""), at))
    normal = _NORMAL[view.orientation] if "Z" in image.axes else None
    parts = [f"{label} {named[a]}" for a, label in (("W", "x"), ("H", "y"), ("Z", "z"), ("T", "t"))
             if a in named and a != normal]
    if normal is not None:  # numbered as the slice slider counts them (from 1)
        parts.append(f"slice {named[normal] + 1}")
    where = ", ".join(parts)
    if image.kind == "photo":
        chans = np.atleast_1d(value) * 255.0
        names = "RGB" if chans.size == 3 else "I"
        return f"{where}   " + "  ".join(f"{n} {v:.1f}" for n, v in zip(names, chans))
    if image.kind == "raw":
        return f"{where}   {raw_dn(image, at[-2], at[-1]):.0f} DN ({cfa_colour(image, at[-2], at[-1])})"
    unit = " HU" if image.kind == "ct" else ""
    return f"{where}   {float(value):.1f}{unit}"


def raw_dn(image: Image, y: int, x: int) -> float:
    """A normalised mosaic value back in the sensor's digital numbers."""
    meta = image.meta
    colour = int(np.asarray(meta["raw_pattern"])[y % 2, x % 2])
    black = float(meta["black_level_per_channel"][colour])
    return float(image.data[y, x]) * (meta["white_level"] - black) + black


def cfa_colour(image: Image, y: int, x: int) -> str:
    cfa = image.meta.get("cfa_pattern", "????")
    return cfa[(y % 2) * 2 + (x % 2)]


def to_grey8(array: np.ndarray) -> np.ndarray:
    """Any 2-D map (the middle plane of a 3-D one) as 8-bit grey over its robust range."""
    a = np.asarray(array, np.float32)
    while a.ndim > 2:
        a = a[a.shape[0] // 2] if a.shape[-1] not in (1, 3) or a.ndim > 3 else a.mean(axis=-1)
    centre, width = display.auto_window(a)
    return display.window(a, centre, width)


def overlay(masks: list[tuple[np.ndarray, tuple[int, int, int]]], alpha: int = 90, stride: int = 1) -> np.ndarray | None:
    """RGBA pixels tinting each mask in its colour (later ones on top), subsampled by ``stride``."""
    if not masks:
        return None
    h, w = masks[0][0][::stride, ::stride].shape
    out = np.zeros((h, w, 4), np.uint8)
    for mask, rgb in masks:
        m = mask[::stride, ::stride]
        out[m] = (*rgb, alpha)
    return out


# -- preview crops -----------------------------------------------------------------------------------

def preview_boxes(plane_hw: tuple[int, int], visible: tuple[int, int, int, int], tile: int = PREVIEW_TILE,
                  halo: int = PREVIEW_HALO, align: int = 2
                  ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """The tiles of the full-image grid that meet ``visible`` (y0, x0, y1, x1): their union (the *core*)
    and the core grown by at least ``halo`` pixels of context (the *crop* a method sees), both clipped to
    the image.

    The grid is :func:`~quietlens.engine.tiling.plan_tiles`' with even origins, and the crop's origin is a
    multiple of ``align`` (at least 2: a RAW crop keeps its CFA phase; a network that down-samples by 8
    sees the same pixel grid as on the whole image), so the preview is whole tiles with real context.
    """
    h, w = plane_hw
    y0, x0, y1, x1 = (max(v, 0) for v in visible)
    y1, x1 = min(y1, h), min(x1, w)
    if y1 <= y0 or x1 <= x0:
        y0, x0, y1, x1 = 0, 0, h, w
    tiles = [t for t in plan_tiles(h, w, tile, halo, multiple_of=2)
             if t.y < y1 and t.y + t.h > y0 and t.x < x1 and t.x + t.w > x0]
    cy0, cx0 = min(t.y for t in tiles), min(t.x for t in tiles)
    cy1, cx1 = min(max(t.y + t.h for t in tiles), h), min(max(t.x + t.w for t in tiles), w)
    pad = tiles[0].pad
    align = max(2, align)
    crop = (max((cy0 - pad) // align * align, 0), max((cx0 - pad) // align * align, 0),
            min(cy1 + pad, h), min(cx1 + pad, w))
    return (cy0, cx0, cy1, cx1), crop


def _plane_spacing(image: Image, orientation: str) -> tuple[float, float] | None:
    if not image.spacing:
        return None
    spatial = [a for a in image.axes if a in "ZHW"]
    spacing = dict(zip(spatial, image.spacing[-len(spatial):]))
    axes = [a for a in spatial if a != _NORMAL[orientation] or "Z" not in spatial][:2]
    return tuple(float(spacing[a]) for a in axes)  # type: ignore[return-value]


def crop(image: Image, view: View, box: tuple[int, int, int, int]) -> Image:
    """The box (y0, x0, y1, x1) of the view's plane as a 2-D image of the same kind and metadata."""
    y0, x0, y1, x1 = box
    pixels = np.ascontiguousarray(plane(image, view)[y0:y1, x0:x1])
    axes = "HWC" if pixels.ndim == 3 else "HW"
    return image.with_data(pixels, axes=axes, spacing=_plane_spacing(image, view.orientation))


def crop_maps(maps: dict[str, np.ndarray], image: Image, view: View, box: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
    """Region maps of the full image cut to a preview crop made by :func:`crop`."""
    y0, x0, y1, x1 = box
    return {name: np.ascontiguousarray(spatial_plane(m, image, view)[y0:y1, x0:x1]) for name, m in maps.items()}


def paste(image: Image, view: View, result: Image, core: tuple[int, int, int, int],
          crop_box: tuple[int, int, int, int]) -> Image:
    """A copy of ``image`` whose core box of the view's plane comes from a preview ``result`` of the crop."""
    out = image.data.copy()
    y0, x0, y1, x1 = core
    oy, ox = y0 - crop_box[0], x0 - crop_box[1]
    target = out[plane_index(image, view)]
    target[y0:y1, x0:x1] = result.data[oy:oy + (y1 - y0), ox:ox + (x1 - x0)]
    return image.with_data(out)


# -- what methods expose -----------------------------------------------------------------------------

def grey_maps(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A method's named maps (e.g. Filter2Noise sigma maps) as 8-bit grey images, for display."""
    out = {}
    for name, array in maps.items():
        a = np.asarray(array)
        if a.ndim >= 2 and a.size:
            out[str(name)] = to_grey8(a)
    return out
