"""Filter2Noise (``f2n``): a two-stage bilateral filter whose per-pixel sigmas are fitted to the image.

``prepare`` normalises the intensities, measures the noise (:func:`..noise.estimate.pixel_sigma`), fits
the sigma predictor (PyTorch, see :mod:`quietlens.models.f2n`) on the image, or on a few representative
planes or slabs of a volume, exports it to ONNX and predicts the fitted sigma maps of every plane.
``run`` multiplies those maps by the user's parameters and region maps and executes the filter graph
through ONNX Runtime, tiled. A region edit therefore re-runs only the filter, always starting from the
fitted maps: edits never compound.

**Volumes** (``ZHW`` with at least ``MIN_DEPTH`` slices, and each volume of a ``TZHW`` series) are
denoised in 3-D: the predictor sees every slice with its two neighbours, and the filter
(``f2n-filter3d-r3z1``) also weighs the ``±1`` neighbouring slices with a fitted through-plane width
``sigma_z``. All spatial widths are in in-plane pixels: a slice ``k`` away is ``k · slice_step`` pixels
away, ``slice_step = slice spacing / pixel spacing`` from the image's spacing (1 when unknown), so
anisotropic voxels are weighed by their real distances. Single planes and photos are denoised in 2-D
(``f2n-filter-r3``).

**Fit loss**: MR uses SURE, an unbiased estimate of the filter's mean squared error from the measured
noise level; CT, other medical images and photos the published pair loss (CT with ``CT_DETAIL``). See
:class:`quietlens.models.f2n.FitConfig` for why.

Intensity rule (``Normalisation``): the filter works on ``(x − offset) / scale`` and the result is put
back as ``x + scale · (filtered − normalised)``, so a pixel the filter leaves unchanged keeps its exact
input value.

* **CT**: a fixed range, ``CT_RANGE`` = [−1024, 3071] HU, mapped to [0, 1]. Pixels outside it (padding
  such as −2000 or −3024, metal) are not processed and keep their exact value; inside the filter they
  count as clipped to the range.
* **MR and other medical images**: ``offset`` = 0.5th and ``offset + scale`` = 99.5th percentile of the
  whole volume (max − min when those coincide); every pixel is processed.
* **Photos**: already in [0, 1]; processed as they are (the range distance sums the colour channels).

Parameters: ``strength`` blends towards the input; ``stage{1,2}_sigma_{x,y,z,r}`` multiply the fitted
maps (0 turns that part of that stage off; effective multipliers, parameter × region map, are clipped
to [0, 4]; ``sigma_z`` acts on volumes only). The same names key the ``regions`` maps.

Inputs handled on purpose: NaN/inf pixels, images thinner than ``MIN_SIDE`` px (e.g. 1 px wide) and
raw Bayer mosaics raise :class:`InvalidImageError`; a constant image (nothing to denoise) comes back
unchanged without fitting; a 16×16 image is fitted and filtered like any other.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .. import catalogue, runtime
from ..errors import InvalidImageError, ModelError, QuietLensError
from ..image import Image
from ..noise.estimate import pixel_sigma
from ..progress import CancelToken, Progress, sub_progress
from ..tiling import run_tiled
from . import STRENGTH, Method, Param, blend, check_kind, register

FILTER_MODEL = "f2n-filter-r3"
FILTER3D_MODEL = "f2n-filter3d-r3z1"
RADIUS_Z = 1  # through-plane radius of FILTER3D_MODEL (slices per stage)
CT_RANGE = (-1024.0, 3071.0)
MR_PERCENTILES = (0.5, 99.5)
MIN_SIDE = 8
MIN_DEPTH = 3  # fewer slices than this: planes are denoised one by one in 2-D
FIT_PLANES = 3  # a 2-D stack is fitted on the planes at 1/4, 1/2 and 3/4 of its depth...
FIT_SLAB = 16  # ...a volume on up to three slabs of this many slices around those depths
SLAB = 16  # slices the 3-D filter runs at once (plus 2·RADIUS_Z of context on each side)
CT_DETAIL = 100.0  # the pair loss's edge-term weight for CT (see FitConfig); other kinds keep the default
VOLUME_STEPS = 100  # fit steps on a volume: Rician-noised toshiba_b0 gains 35.33 dB at 80, 35.29 at 150
LOSS_BY_KIND = {"mr": "sure"}  # every other kind: "pair"
MULTIPLIER_RANGE = (0.0, 4.0)
SIGMA_FLOOR = 1e-4  # no sigma reaches the filter below this (0 would make its weights 0/0)
SIGMA_CACHE_BYTES = 1 << 30  # fitted maps kept in memory; planes beyond are re-predicted when run
AXES_2D = ("sigma_x", "sigma_y", "sigma_r")
AXES_3D = ("sigma_x", "sigma_y", "sigma_z", "sigma_r")
STAGE_SIGMAS = tuple(f"stage{s}_{n}" for s in (1, 2) for n in AXES_3D)
_DOCS = {
    "sigma_x": "multiplier on the fitted horizontal spatial width (px)",
    "sigma_y": "multiplier on the fitted vertical spatial width (px)",
    "sigma_z": "multiplier on the fitted through-plane width (volumes only)",
    "sigma_r": "multiplier on the fitted range width (how different a neighbour may be and still count)",
}
SIGMA_PARAMS = tuple(
    Param(name, 1.0, *MULTIPLIER_RANGE, f"stage {name[5]}: {_DOCS[name[7:]]}; 0 = off, 1 = as fitted")
    for name in STAGE_SIGMAS
)


@dataclass(frozen=True)
class Normalisation:
    """``normalised = (clip(x) − offset) / scale``; ``clip`` (CT only) bounds the processed range."""

    offset: float
    scale: float
    clip: tuple[float, float] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.clip is not None:
            x = np.clip(x, *self.clip)
        return ((x - np.float32(self.offset)) / np.float32(self.scale)).astype(np.float32)

    def restore(self, x: np.ndarray, normalised: np.ndarray, filtered: np.ndarray) -> np.ndarray:
        """The result in data units: ``x + scale·(filtered − normalised)``, ``x`` itself outside the range."""
        out = x + np.float32(self.scale) * (filtered - normalised)
        if self.clip is not None:
            out = np.where((x >= self.clip[0]) & (x <= self.clip[1]), out, x)
        return out.astype(np.float32)


def normalisation_for(image: Image) -> Normalisation | None:
    """The intensity rule for this image (module docstring), or None for a constant image."""
    data = image.data
    if image.kind == "ct":
        inside = data[(data >= CT_RANGE[0]) & (data <= CT_RANGE[1])]
        if inside.size == 0 or inside.min() == inside.max():
            return None
        return Normalisation(CT_RANGE[0], CT_RANGE[1] - CT_RANGE[0], CT_RANGE)
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        return None
    if image.kind == "photo":
        return Normalisation(0.0, 1.0)
    p_lo, p_hi = (float(v) for v in np.percentile(data, MR_PERCENTILES))
    return Normalisation(p_lo, p_hi - p_lo) if p_hi > p_lo else Normalisation(lo, hi - lo)


def volume_geometry(image: Image) -> tuple[int, float]:
    """``(depth, slice_step)``: slices per volume that are filtered together (1 = plane by plane, 2-D)
    and the slice spacing in in-plane pixels (``spacing_z / spacing_x``; 1 when the spacing is unknown)."""
    if "Z" not in image.axes or image.data.shape[image.axes.index("Z")] < MIN_DEPTH:
        return 1, 1.0
    depth = image.data.shape[image.axes.index("Z")]
    spacing = image.spacing
    if spacing and len(spacing) == len(image.axes) and spacing[-1] > 0 and spacing[-3] > 0:
        return depth, float(spacing[-3]) / float(spacing[-1])
    return depth, 1.0


def _planes(image: Image) -> np.ndarray:
    """The image as ``(N, C, H, W)`` planes (a view where possible)."""
    planes = image.slices()
    return planes.transpose(0, 3, 1, 2) if planes.ndim == 4 else planes[:, None]


def _from_planes(image: Image, planes: np.ndarray) -> np.ndarray:
    out = planes.transpose(0, 2, 3, 1) if image.axes.endswith("C") else planes[:, 0]
    return np.ascontiguousarray(out.reshape(image.data.shape), dtype=np.float32)


def _plane_map(m: np.ndarray, image: Image, n_planes: int, name: str) -> np.ndarray:
    """A region map of the spatial shape (or one H×W map for every plane) as ``(N, H, W)``."""
    h, w = image.height, image.width
    m = np.asarray(m, dtype=np.float32)
    if m.shape[-2:] != (h, w) or m.size % (h * w) or n_planes % (m.size // (h * w)):
        raise InvalidImageError(f"region map {name!r} has shape {m.shape}; the image's planes are {h}×{w}",
                                image.source)
    m = m.reshape(-1, h, w)
    return np.tile(m, (n_planes // m.shape[0], 1, 1))


def _quartiles(n: int) -> list[int]:
    return sorted({min(n - 1, int(n * q)) for q in (0.25, 0.5, 0.75)}) if n >= FIT_PLANES else list(range(n))


@dataclass
class F2NState:
    """What ``prepare`` learnt. ``sigmas`` caches the fitted maps per plane: ``(6, H, W)`` (2-D) or
    ``(8, H, W)`` (3-D) = stage 1 then stage 2 ``sigma_x, sigma_y[, sigma_z]`` (in-plane px) and ``sigma_r``
    (normalised units). ``depth`` > 1: planes are ``(volumes × depth)`` slices filtered in 3-D."""

    norm: Normalisation | None  # None: constant image, returned unchanged
    planes: np.ndarray  # the input planes (a view of the image, not a copy)
    predictor: bytes = b""  # the fitted predictor as ONNX, for (n, C_in, H, W) planes
    provider: str = "cpu"
    fit: dict[str, Any] = field(default_factory=dict)
    sigmas: dict[int, np.ndarray] = field(default_factory=dict)
    depth: int = 1
    slice_step: float = 1.0

    @property
    def axes(self) -> tuple[str, ...]:
        return AXES_3D if self.depth > 1 else AXES_2D

    @property
    def names(self) -> tuple[str, ...]:
        """The parameter names of the fitted maps, in map order."""
        return tuple(f"stage{s}_{a}" for s in (1, 2) for a in self.axes)


class FilterToNoise(Method):
    name = "f2n"
    title = "Filter2Noise"
    summary = "self-supervised two-stage bilateral filter (3-D on volumes) with fitted, editable per-pixel sigma maps"
    kinds = ("ct", "mr", "medical", "photo")
    params = (STRENGTH, *SIGMA_PARAMS)
    user_facing = True

    def __init__(self, fit_config: Any = None):
        # A quietlens.models.f2n.FitConfig; None = its defaults. Its loss None = by kind (LOSS_BY_KIND);
        # with no config, CT gets detail = CT_DETAIL and a volume VOLUME_STEPS steps.
        self.fit_config = fit_config

    # -- prepare -------------------------------------------------------------------------------------

    def prepare(self, image: Image, progress: Progress, cancel: CancelToken, provider: str = "auto") -> F2NState:
        check_kind(self, image)
        _check_pixels(image)
        chosen = runtime.resolve_provider(provider)
        planes = _planes(image)
        norm = normalisation_for(image)
        depth, slice_step = volume_geometry(image)
        state = F2NState(norm, planes, provider=chosen, depth=depth, slice_step=slice_step)
        if norm is None:
            progress(1.0, "constant image: nothing to denoise")
            return state

        import torch  # fitting only: the rest of the engine runs without torch

        from quietlens.models import f2n as model

        device = "cuda" if chosen == "cuda" and torch.cuda.is_available() else "cpu"
        defaults = {"detail": CT_DETAIL} if image.kind == "ct" else {}
        if depth > 1:
            defaults["iterations"] = VOLUME_STEPS
        config = self.fit_config or model.FitConfig(**defaults)
        config = dataclasses.replace(config, device=device, loss=config.loss or LOSS_BY_KIND.get(image.kind, "pair"))
        fit_images, where = self._fit_images(state)
        noise = pixel_sigma(np.concatenate([im.reshape(-1, *im.shape[-2:]) for im in fit_images]))
        progress(0.0, f"noise σ ≈ {noise * norm.scale:.3g} (image units)")
        result = model.fit(fit_images, noise, config, sub_progress(progress, 0.0, 0.85), cancel,
                           slice_step=slice_step)
        cancel.check()

        c, h, w = planes.shape[1:]
        state.predictor = model.export_predictor(result.model.predictor, h, w)
        # The graph must reproduce PyTorch on real planes before its maps are trusted.
        probe = self._predictor_input(state, where[0])
        with torch.no_grad():
            expected = result.model.predictor(torch.from_numpy(probe)).numpy()[0]
        got = self._predict(state, probe)
        caps = np.abs(expected).reshape(len(expected), -1).max(1)[:, None, None]
        if not np.all(np.abs(got - expected) <= 1e-4 * caps + 1e-6):
            raise ModelError("the exported F2N sigma predictor does not reproduce the fitted one")
        state.fit = {
            "iterations": result.iterations, "stopped_early": result.stopped_early,
            "seconds": round(result.seconds, 2), "final_loss": result.losses[-1], "noise": result.noise,
            "loss": config.loss, "planes": [int(i) for i in where], "device": device, "seed": config.seed,
            "detail": config.detail, "depth": depth, "slice_step": slice_step,
        }
        progress(0.9, "predicting sigma maps")
        for i in range(len(planes)):
            cancel.check()
            if (len(state.sigmas) + 1) * 2 * len(state.axes) * h * w * 4 > SIGMA_CACHE_BYTES:
                break
            self._fitted_sigmas(state, i)
        progress(1.0, "fitted")
        return state

    @staticmethod
    def _fit_images(state: F2NState) -> tuple[list[np.ndarray], list[int]]:
        """Normalised fit data, ``(C, H, W)`` planes or ``(C, D, H, W)`` slabs, and the plane index at the
        centre of each (for the export check and the record)."""
        planes, norm = state.planes, state.norm
        if state.depth == 1:
            picks = _quartiles(len(planes))
            return [norm.forward(planes[i]) for i in picks], picks
        n_vol = len(planes) // state.depth
        mid = n_vol // 2 * state.depth  # the middle volume of a series of volumes
        slab = min(FIT_SLAB, state.depth)
        starts = sorted({min(max(z - slab // 2, 0), state.depth - slab) for z in _quartiles(state.depth)})
        slabs = [norm.forward(planes[mid + z:mid + z + slab]).transpose(1, 0, 2, 3) for z in starts]
        return slabs, [mid + z + slab // 2 for z in starts]

    def _predictor_input(self, state: F2NState, i: int) -> np.ndarray:
        """Plane ``i`` as the predictor sees it, ``(1, C_in, H, W)``: itself (2-D) or with its neighbours
        in the same volume (3-D, edge slices repeated)."""
        if state.depth == 1:
            return state.norm.forward(state.planes[i])[None]
        first = i - i % state.depth
        around = [min(max(j, first), first + state.depth - 1) for j in (i - 1, i, i + 1)]
        return state.norm.forward(state.planes[around]).reshape(1, -1, *state.planes.shape[2:])

    def _predict(self, state: F2NState, stack: np.ndarray) -> np.ndarray:
        return runtime.session(state.predictor, state.provider).run({"image": stack})[0][0]

    def _fitted_sigmas(self, state: F2NState, i: int) -> np.ndarray:
        """Plane ``i``'s fitted maps (6 or 8, H, W), from the cache or the predictor graph."""
        if i in state.sigmas:
            return state.sigmas[i]
        sig = self._predict(state, self._predictor_input(state, i))
        if (len(state.sigmas) + 1) * sig.nbytes <= SIGMA_CACHE_BYTES:
            state.sigmas[i] = sig
        return sig

    # -- run -----------------------------------------------------------------------------------------

    def run(
        self,
        image: Image,
        state: F2NState,
        params: Mapping[str, float],
        regions: Mapping[str, np.ndarray] | None,
        progress: Progress,
        cancel: CancelToken,
    ) -> Image:
        _check_pixels(image)
        regions = dict(regions or {})
        unknown = set(regions) - {p.name for p in self.params}
        if unknown:
            raise QuietLensError(f"method f2n has no parameter {', '.join(sorted(unknown))} for a region map "
                                 f"(it has: {', '.join(p.name for p in self.params)})")
        planes = _planes(image)
        if planes.shape != state.planes.shape:
            raise QuietLensError(f"f2n was prepared for planes {state.planes.shape}, not {planes.shape}")
        if state.norm is None:
            progress(1.0, "done")
            return image.with_data(image.data.copy())
        n = len(planes)
        maps = {k: _plane_map(v, image, n, k) for k, v in regions.items()}
        filtered = self._filter_2d if state.depth == 1 else self._filter_3d
        out = np.empty_like(planes)
        strength = float(params.get("strength", 1.0))
        for first, last, result in filtered(state, planes, params, maps, progress, cancel):
            for i in range(first, last):
                s_map = maps["strength"][i][None] if "strength" in maps else None
                out[i] = blend(planes[i], result[i - first], strength, s_map)
        progress(1.0, "done")
        return image.with_data(_from_planes(image, out))

    def _sigmas(self, state: F2NState, params: Mapping[str, float], maps: Mapping[str, np.ndarray], i: int) -> np.ndarray:
        """Plane ``i``'s maps as the filter takes them: fitted × multipliers, floored."""
        sig = self._fitted_sigmas(state, i) * self._multipliers(state.names, params, maps, i)
        return np.maximum(sig, np.float32(SIGMA_FLOOR))

    def _filter_2d(self, state, planes, params, maps, progress, cancel):
        """Yield ``(i, i + 1, restored plane)`` for every plane, each filtered on its own."""
        n, c = planes.shape[:2]
        session = runtime.session(FILTER_MODEL, state.provider)
        entry = catalogue.entry(FILTER_MODEL)
        halo, graph_bytes = entry.receptive_field, entry.memory_per_pixel(4 * (2 * c + 6 + 20))

        def filter_tile(t: np.ndarray) -> np.ndarray:
            return session.run({"image": t[:, :c], "sigma1": t[:, c:c + 3], "sigma2": t[:, c + 3:]})[0]

        for i in range(n):
            cancel.check()
            normalised = state.norm.forward(planes[i])
            packed = np.concatenate([normalised, self._sigmas(state, params, maps, i)])[None]
            # Edge padding matches the filter's own border rule.
            filtered = run_tiled(filter_tile, packed, halo=halo, bytes_per_pixel=graph_bytes + 4 * (2 * c + 6),
                                 pad_mode="edge", progress=sub_progress(progress, i / n, (i + 1) / n),
                                 cancel=cancel)[0]
            yield i, i + 1, state.norm.restore(planes[i], normalised, filtered)[None]

    def _filter_3d(self, state, planes, params, maps, progress, cancel):
        """Yield ``(first, last, restored planes)`` slab by slab: each slab of a volume is filtered with
        ``2·RADIUS_Z`` slices of context on each side (edge slices repeated at the volume's ends, the
        filter's own border rule), and tiled in-plane, so the result equals one call on the whole volume."""
        n, c, h, w = planes.shape
        depth, halo_z = state.depth, 2 * RADIUS_Z
        session = runtime.session(FILTER3D_MODEL, state.provider)
        entry = catalogue.entry(FILTER3D_MODEL)
        halo, per_voxel = entry.receptive_field, entry.memory_per_pixel(4 * (2 * c + 8 + 20)) + 4 * (2 * c + 8)
        per_slice = c + 8  # image and both stages' maps, packed as channels per slice
        step = np.array([state.slice_step], np.float32)
        # Slabs of SLAB slices (plus the context), tiled in-plane to the memory budget: the in-plane halo
        # costs less than more context slices would.
        slab = min(depth, SLAB)

        def filter_tile(t: np.ndarray) -> np.ndarray:
            k = t.shape[1] // per_slice
            v = t.reshape(1, k, per_slice, *t.shape[2:]).transpose(0, 2, 1, 3, 4)
            out = session.run({"image": np.ascontiguousarray(v[:, :c]), "sigma1": np.ascontiguousarray(v[:, c:c + 4]),
                               "sigma2": np.ascontiguousarray(v[:, c + 4:]), "slice_step": step})[0]
            core = out[:, :, halo_z:k - halo_z]  # (1, C, slab, h, w)
            return core.transpose(0, 2, 1, 3, 4).reshape(1, -1, *t.shape[2:])

        for vol in range(0, n, depth):
            for z0 in range(0, depth, slab):
                cancel.check()
                z1 = min(z0 + slab, depth)
                around = [vol + min(max(z, 0), depth - 1) for z in range(z0 - halo_z, z1 + halo_z)]
                normalised = {i: state.norm.forward(planes[i]) for i in set(around)}
                packed = np.concatenate([np.concatenate([normalised[i], self._sigmas(state, params, maps, i)])
                                         for i in around])[None]
                done = (vol + z0) / n
                filtered = run_tiled(filter_tile, packed, halo=halo, bytes_per_pixel=len(around) * per_voxel,
                                     pad_mode="edge", progress=sub_progress(progress, done, (vol + z1) / n),
                                     cancel=cancel)[0].reshape(z1 - z0, c, h, w)
                first = vol + z0
                yield first, vol + z1, np.stack([state.norm.restore(planes[first + k], normalised[first + k], f)
                                                 for k, f in enumerate(filtered)])

    @staticmethod
    def _multipliers(names: tuple[str, ...], params: Mapping[str, float], maps: Mapping[str, np.ndarray],
                     i: int) -> np.ndarray:
        """``(K, H, W)`` or ``(K, 1, 1)`` multipliers for the maps ``names``: parameter × region map,
        clipped to MULTIPLIER_RANGE."""
        scalars = [float(params.get(k, 1.0)) for k in names]
        if not any(k in maps for k in names):
            return np.clip(np.array(scalars, np.float32), *MULTIPLIER_RANGE)[:, None, None]
        shape = next(maps[k][i].shape for k in names if k in maps)
        stack = [s * maps[k][i] if k in maps else np.full(shape, s, np.float32) for k, s in zip(names, scalars)]
        return np.clip(np.stack(stack), *MULTIPLIER_RANGE).astype(np.float32)

    # -- sigma maps for --save-sigmas ------------------------------------------------------------------

    def model_sha256(self, state: F2NState) -> str | None:
        """The shipped filter graph's, 2-D or 3-D (the predictor is fitted per image and described by
        ``state.fit``)."""
        if state.norm is None:
            return None
        return catalogue.entry(FILTER3D_MODEL if state.depth > 1 else FILTER_MODEL).sha256

    def artifacts(self, state: F2NState) -> dict[str, np.ndarray]:
        """The fitted sigma maps: ``stage{1,2}_sigma_{x,y}`` (and ``_z`` for a volume) in in-plane pixels and
        ``stage{1,2}_sigma_r`` in the image's own units (HU for CT), each ``(H, W)`` for an image or
        ``(N, H, W)`` for a volume."""
        if state.norm is None:
            return {}
        n = len(state.planes)
        stack = np.stack([self._fitted_sigmas(state, i) for i in range(n)], 1)  # (K, N, H, W)
        out = {}
        for k, name in enumerate(state.names):
            m = stack[k] * np.float32(state.norm.scale) if name.endswith("sigma_r") else stack[k]
            out[name] = np.ascontiguousarray(m[0] if n == 1 else m, dtype=np.float32)
        return out


def _check_pixels(image: Image) -> None:
    if not np.isfinite(image.data).all():
        raise InvalidImageError("the image contains NaN or infinite values; f2n needs finite pixels",
                                image.source)
    if min(image.height, image.width) < MIN_SIDE:
        raise InvalidImageError(f"f2n needs planes of at least {MIN_SIDE}×{MIN_SIDE} pixels, this one is "
                                f"{image.height}×{image.width}", image.source)


register(FilterToNoise())
