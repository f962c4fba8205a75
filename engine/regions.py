"""Regions drawn in the viewer: shapes and intensity ranges turned into per-pixel parameter maps.

A :class:`Region` is the union of its shapes (rectangles, ellipses, brush strokes), each drawn on a 2-D
view plane and extruded through the volume along that plane's normal, optionally intersected with an
intensity interval of the input (e.g. an HU range). A region without shapes but with an interval is the
interval alone. Each region carries multipliers on the method's parameters; :func:`region_maps`
turns a list of regions into the ``regions`` argument of ``Method.run`` (later regions win where they
overlap).

Which multipliers are allowed is decided here for the CLI (``--region NAME=X``), the GUI's sliders and
any other caller (:func:`check_region_params`): NAME must be one of the method's numeric parameters
(:func:`regional_params`; a choice such as the network cannot vary per pixel), and X must keep
the parameter within its documented range, ``X · default ∈ [minimum, maximum]`` with ``X ≥ 0``
(:func:`multiplier_range`). Methods clip ``value × map`` to the parameter's range in the same way, and
strength maps to [0, 1] (``methods.blend``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from . import viewmath
from .errors import QuietLensError
from .image import Image
from .methods import Method, Param

SHAPES = ("rect", "ellipse", "brush")


@dataclass
class Shape:
    kind: str  # rect | ellipse | brush
    points: list[tuple[float, float]]  # (x, y) in view-plane pixels (pixel c spans [c, c+1)): corners or a stroke
    radius: float = 0.0  # brush half-width in pixels
    orientation: str = "axial"

    def __post_init__(self) -> None:
        if self.kind not in SHAPES:
            raise ValueError(f"unknown shape {self.kind!r}")
        if not self.points:
            raise ValueError("a shape needs at least one point")


@dataclass
class Region:
    name: str
    shapes: list[Shape] = field(default_factory=list)
    intensity: tuple[float, float] | None = None  # inclusive interval in the image's data units
    multipliers: dict[str, float] = field(default_factory=dict)  # parameter name -> factor (1 = unchanged)

    @property
    def empty(self) -> bool:
        return not self.shapes and self.intensity is None


def regional_params(params: Iterable[Param]) -> tuple[Param, ...]:
    """The parameters a region may scale (``Param.regional``: not a choice) that have a positive default."""
    return tuple(p for p in params if p.regional and p.default > 0)


def multiplier_range(p: Param) -> tuple[float, float]:
    """The multipliers allowed on ``p`` inside a region: ``[max(0, minimum/default), maximum/default]``."""
    lo, hi = max(p.minimum / p.default, 0.0), p.maximum / p.default
    return lo, (hi if hi > lo else lo + 1.0)


def check_region_params(method: Method, values: Mapping[str, str | float]) -> dict[str, float]:
    """``{name: multiplier}`` checked against :func:`regional_params` and :func:`multiplier_range`;
    a :class:`QuietLensError` names the valid choices otherwise."""
    allowed = {p.name: p for p in regional_params(method.params)}
    choices = ", ".join(f"{n} in [{lo:g}, {hi:g}]" for n, (lo, hi) in
                        ((n, multiplier_range(p)) for n, p in allowed.items())) or "none"
    out = {}
    for name, text in values.items():
        if name not in allowed:
            raise QuietLensError(f"method {method.name} has no parameter {name!r} that a region can scale "
                                 f"(it has: {choices})")
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise QuietLensError(f"the region multiplier for {name} needs a number, got {text!r}") from None
        lo, hi = multiplier_range(allowed[name])
        if not lo <= value <= hi:  # also refuses NaN
            raise QuietLensError(f"the region multiplier for {name} must be in [{lo:g}, {hi:g}] (so that "
                                 f"{name} × multiplier stays in its range), got {text}")
        out[name] = value
    return out


def rasterise(shape: Shape, plane_shape: tuple[int, int]) -> np.ndarray:
    """The shape as a boolean ``(rows, cols)`` mask of a view plane."""
    h, w = plane_shape
    canvas = np.zeros((h, w), np.uint8)
    pts = np.asarray(shape.points, np.float64)
    if shape.kind == "brush":
        return _stroke(pts, max(float(shape.radius), 0.0), h, w)
    (x0, y0), (x1, y1) = pts[0], pts[-1]
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if shape.kind == "rect":
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w)
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h)
        if c1 > c0 and r1 > r0:
            canvas[r0:r1, c0:c1] = 1
        return canvas.astype(bool)
    # Ellipse inscribed in the box: pixel centres (c + 0.5, r + 0.5) inside the boundary.
    cx, cy, ax, ay = (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    rows = (np.arange(h) + 0.5 - cy) / ay
    cols = (np.arange(w) + 0.5 - cx) / ax
    return rows[:, None] ** 2 + cols[None, :] ** 2 <= 1.0


def _stroke(pts: np.ndarray, radius: float, h: int, w: int) -> np.ndarray:
    """Pixels whose centre lies within ``radius`` (+ half a pixel) of the polyline through ``pts``."""
    mask = np.zeros((h, w), bool)
    reach = radius + 0.5
    segments = zip(pts, pts[1:]) if len(pts) > 1 else [(pts[0], pts[0])]
    for a, b in segments:
        c0, c1 = max(int(np.floor(min(a[0], b[0]) - reach)), 0), min(int(np.ceil(max(a[0], b[0]) + reach)), w)
        r0, r1 = max(int(np.floor(min(a[1], b[1]) - reach)), 0), min(int(np.ceil(max(a[1], b[1]) + reach)), h)
        if c1 <= c0 or r1 <= r0:
            continue
        ys, xs = np.mgrid[r0:r1, c0:c1].astype(np.float64) + 0.5  # pixel centres
        d = b - a
        length2 = float(d @ d)
        t = np.zeros_like(xs) if length2 == 0 else np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2, 0, 1)
        dist2 = (xs - a[0] - t * d[0]) ** 2 + (ys - a[1] - t * d[1]) ** 2
        mask[r0:r1, c0:c1] |= dist2 <= reach * reach
    return mask


def spatial_shape(image: Image) -> tuple[int, ...]:
    """``(H, W)`` or ``(Z, H, W)``: the shape of a region map for this image."""
    return tuple(n for n, axis in zip(image.data.shape, image.axes) if axis in "ZHW")


def intensity_source(image: Image) -> np.ndarray:
    """The values an intensity interval is tested on: grey level (channel mean) for colour, frame 0 of 4-D."""
    data = image.data
    if image.axes.endswith("C"):
        data = data.mean(axis=-1)
    if image.axes.startswith("T"):
        data = data[0]
    return data


def region_mask(region: Region, image: Image) -> np.ndarray:
    """Boolean mask of the region over the image's spatial shape."""
    shape = spatial_shape(image)
    if region.shapes:
        mask = np.zeros(shape, bool)
        for s in region.shapes:
            flat = rasterise(s, viewmath.plane_shape(image, s.orientation))
            mask |= viewmath.extrude(flat, image, s.orientation)
    else:
        mask = np.ones(shape, bool) if region.intensity is not None else np.zeros(shape, bool)
    if region.intensity is not None:
        lo, hi = sorted(region.intensity)
        values = intensity_source(image)
        mask &= (values >= lo) & (values <= hi)
    return mask


def region_maps(image: Image, regions: list[Region], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{parameter: float32 multiplier map}`` for every parameter some region changes (1 elsewhere)."""
    wanted = {k for r in regions for k, v in r.multipliers.items() if v != 1.0}
    if names is not None:
        wanted &= set(names)
    maps: dict[str, np.ndarray] = {}
    masks = {id(r): region_mask(r, image) for r in regions if any(k in wanted for k in r.multipliers)}
    for name in sorted(wanted):
        out = np.ones(spatial_shape(image), np.float32)
        for r in regions:
            if name in r.multipliers and id(r) in masks:
                out[masks[id(r)]] = np.float32(r.multipliers[name])
        maps[name] = out
    return maps
