"""Filter2Noise (``f2n``): a two-stage bilateral filter whose per-pixel sigmas are fitted to the image.

``prepare`` normalises the intensities, fits the sigma predictor (PyTorch, see
:mod:`quietlens.models.f2n`) on the image, or on a few representative planes of a volume, exports it to
ONNX and predicts the fitted sigma maps of every plane. ``run`` multiplies those maps by the user's
parameters and region maps and executes the filter graph (``f2n-filter-r3`` from the model manifest)
through ONNX Runtime, tiled. A region edit therefore re-runs only the filter, always starting from the
fitted maps: edits never compound.

Intensity rule (``Normalisation``): the filter works on ``(x − offset) / scale`` and the result is put
back as ``x + scale · (filtered − normalised)``, so a pixel the filter leaves unchanged keeps its exact
input value.

* **CT**: a fixed range, ``CT_RANGE`` = [−1024, 3071] HU, mapped to [0, 1]. Pixels outside it (padding
  such as −2000 or −3024, metal) are not processed and keep their exact value; inside the filter they
  count as clipped to the range.
* **MR and other medical images**: ``offset`` = 0.5th and ``offset + scale`` = 99.5th percentile of the
  whole volume (max − min when those coincide); every pixel is processed.
* **Photos**: already in [0, 1]; processed as they are (the range distance sums the colour channels).

Parameters: ``strength`` blends towards the input; ``stage{1,2}_sigma_{x,y,r}`` multiply the fitted
maps (0 turns that part of that stage off; effective multipliers, parameter × region map, are clipped
to [0, 4]). The same names key the ``regions`` maps.

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
from ..progress import CancelToken, Progress, sub_progress
from ..tiling import run_tiled
from . import STRENGTH, Method, Param, blend, check_kind, register

FILTER_MODEL = "f2n-filter-r3"
CT_RANGE = (-1024.0, 3071.0)
MR_PERCENTILES = (0.5, 99.5)
MIN_SIDE = 8
FIT_PLANES = 3  # a volume is fitted on the planes at 1/4, 1/2 and 3/4 of its depth
CT_DETAIL = 100.0  # the fit's edge-term weight for CT (see FitConfig); other kinds keep the default
MULTIPLIER_RANGE = (0.0, 4.0)
SIGMA_FLOOR = 1e-4  # no sigma reaches the filter below this (0 would make its weights 0/0)
SIGMA_CACHE_BYTES = 1 << 30  # fitted maps kept in memory; planes beyond are re-predicted when run
STAGE_SIGMAS = tuple(f"stage{s}_{n}" for s in (1, 2) for n in ("sigma_x", "sigma_y", "sigma_r"))
_DOCS = {
    "sigma_x": "multiplier on the fitted horizontal spatial width (px)",
    "sigma_y": "multiplier on the fitted vertical spatial width (px)",
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


@dataclass
class F2NState:
    """What ``prepare`` learnt. ``sigmas`` caches the fitted maps per plane: ``(6, H, W)`` = stage 1 then
    stage 2 ``sigma_x, sigma_y`` (px) and ``sigma_r`` (normalised units)."""

    norm: Normalisation | None  # None: constant image, returned unchanged
    planes: np.ndarray  # the input planes (a view of the image, not a copy)
    predictor: bytes = b""  # the fitted predictor as ONNX, for one (1, C, H, W) plane
    provider: str = "cpu"
    fit: dict[str, Any] = field(default_factory=dict)
    sigmas: dict[int, np.ndarray] = field(default_factory=dict)


class FilterToNoise(Method):
    name = "f2n"
    title = "Filter2Noise"
    summary = "self-supervised two-stage bilateral filter with fitted, editable per-pixel sigma maps"
    kinds = ("ct", "mr", "medical", "photo")
    params = (STRENGTH, *SIGMA_PARAMS)
    user_facing = True

    def __init__(self, fit_config: Any = None):
        # A quietlens.models.f2n.FitConfig; None = its defaults, with detail = CT_DETAIL for CT.
        self.fit_config = fit_config

    # -- prepare -------------------------------------------------------------------------------------

    def prepare(self, image: Image, progress: Progress, cancel: CancelToken, provider: str = "auto") -> F2NState:
        check_kind(self, image)
        _check_pixels(image)
        chosen = runtime.resolve_provider(provider)
        planes = _planes(image)
        norm = normalisation_for(image)
        state = F2NState(norm, planes, provider=chosen)
        if norm is None:
            progress(1.0, "constant image: nothing to denoise")
            return state

        import torch  # fitting only: the rest of the engine runs without torch

        from quietlens.models import f2n as model

        device = "cuda" if chosen == "cuda" and torch.cuda.is_available() else "cpu"
        config = self.fit_config or model.FitConfig(**({"detail": CT_DETAIL} if image.kind == "ct" else {}))
        config = dataclasses.replace(config, device=device)
        n = len(planes)
        picks = sorted({min(n - 1, int(n * q)) for q in (0.25, 0.5, 0.75)}) if n >= FIT_PLANES else range(n)
        fit_images = [norm.forward(planes[i]) for i in picks]
        result = model.fit(fit_images, config, sub_progress(progress, 0.0, 0.85), cancel)
        cancel.check()

        c, h, w = planes.shape[1:]
        state.predictor = model.export_predictor(result.model.predictor, c, h, w)
        # The graph must reproduce PyTorch on a real plane before its maps are trusted.
        with torch.no_grad():
            expected = result.model.predictor(torch.from_numpy(fit_images[0][None])).numpy()[0]
        got = self._predict(state, fit_images[0])
        caps = np.abs(expected).reshape(6, -1).max(1)[:, None, None]
        if not np.all(np.abs(got - expected) <= 1e-4 * caps + 1e-6):
            raise ModelError("the exported F2N sigma predictor does not reproduce the fitted one")
        state.fit = {
            "iterations": result.iterations, "stopped_early": result.stopped_early,
            "seconds": round(result.seconds, 2), "final_loss": result.losses[-1], "noise": result.noise,
            "planes": [int(i) for i in picks], "device": device, "seed": config.seed, "detail": config.detail,
        }
        progress(0.9, "predicting sigma maps")
        for i in range(n):
            cancel.check()
            if (len(state.sigmas) + 1) * 6 * h * w * 4 > SIGMA_CACHE_BYTES:
                break
            self._fitted_sigmas(state, i)
        progress(1.0, "fitted")
        return state

    def _predict(self, state: F2NState, normalised: np.ndarray) -> np.ndarray:
        return runtime.session(state.predictor, state.provider).run({"image": normalised[None]})[0][0]

    def _fitted_sigmas(self, state: F2NState, i: int) -> np.ndarray:
        """Plane ``i``'s fitted maps (6, H, W), from the cache or the predictor graph."""
        if i in state.sigmas:
            return state.sigmas[i]
        sig = self._predict(state, state.norm.forward(state.planes[i]))
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
        n, c = planes.shape[:2]
        maps = {k: _plane_map(v, image, n, k) for k, v in regions.items()}
        strength = float(params.get("strength", 1.0))
        session = runtime.session(FILTER_MODEL, state.provider)
        halo = catalogue.entry(FILTER_MODEL).receptive_field

        def filter_tile(t: np.ndarray) -> np.ndarray:
            return session.run({"image": t[:, :c], "sigma1": t[:, c:c + 3], "sigma2": t[:, c + 3:]})[0]

        out = np.empty_like(planes)
        for i in range(n):
            cancel.check()
            normalised = state.norm.forward(planes[i])
            sigmas = self._fitted_sigmas(state, i) * self._multipliers(params, maps, i)
            packed = np.concatenate([normalised, np.maximum(sigmas, np.float32(SIGMA_FLOOR))])[None]
            # Edge padding matches the filter's own border rule; ~20 float planes alive per pixel.
            filtered = run_tiled(filter_tile, packed, halo=halo, bytes_per_pixel=4 * (2 * c + 6 + 20),
                                 pad_mode="edge", progress=sub_progress(progress, i / n, (i + 1) / n),
                                 cancel=cancel)[0]
            result = state.norm.restore(planes[i], normalised, filtered)
            s_map = maps["strength"][i][None] if "strength" in maps else None
            out[i] = blend(planes[i], result, strength, s_map)
        progress(1.0, "done")
        return image.with_data(_from_planes(image, out))

    @staticmethod
    def _multipliers(params: Mapping[str, float], maps: Mapping[str, np.ndarray], i: int) -> np.ndarray:
        """``(6, H, W)`` or ``(6, 1, 1)`` multipliers: parameter × region map, clipped to MULTIPLIER_RANGE."""
        scalars = [float(params.get(k, 1.0)) for k in STAGE_SIGMAS]
        if not any(k in maps for k in STAGE_SIGMAS):
            return np.clip(np.array(scalars, np.float32), *MULTIPLIER_RANGE)[:, None, None]
        shape = next(maps[k][i].shape for k in STAGE_SIGMAS if k in maps)
        stack = [s * maps[k][i] if k in maps else np.full(shape, s, np.float32) for k, s in zip(STAGE_SIGMAS, scalars)]
        return np.clip(np.stack(stack), *MULTIPLIER_RANGE).astype(np.float32)

    # -- sigma maps for --save-sigmas ------------------------------------------------------------------

    def model_sha256(self, state: F2NState) -> str | None:
        """The shipped filter graph's (the predictor is fitted per image and described by ``state.fit``)."""
        return catalogue.entry(FILTER_MODEL).sha256 if state.norm is not None else None

    def artifacts(self, state: F2NState) -> dict[str, np.ndarray]:
        """The fitted sigma maps: ``stage{1,2}_sigma_{x,y}`` in pixels and ``stage{1,2}_sigma_r`` in the
        image's own units (HU for CT), each ``(H, W)`` for an image or ``(N, H, W)`` for a volume."""
        if state.norm is None:
            return {}
        n = len(state.planes)
        stack = np.stack([self._fitted_sigmas(state, i) for i in range(n)], 1)  # (6, N, H, W)
        out = {}
        for k, name in enumerate(STAGE_SIGMAS):
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
