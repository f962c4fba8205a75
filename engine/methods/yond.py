"""YOND: blind raw denoising from the noise model the image itself reveals (or a calibrated profile).

1. pack the Bayer mosaic into R, G1, G2, B planes (any CFA phase);
2. estimate the Poisson–Gaussian model (CNE coarse, or the classical estimator when it fails or
   predicts less noise — texture only ever inflates these estimates, so the lower one is nearer);
   with a camera noise profile (``quietlens calibrate``) for the photo's camera and ISO, its K and σ
   are used instead, its dark shading is subtracted when the sensor area matches, and after the
   first pass its row noise is removed;
3. EM-VST: stabilise the variance, remove the transform's bias, normalise to [0, 1];
4. SNR-Net (ONNX, tiled) denoises, told the noise level t = 1.03·nsr; the final pass on ``views`` views
   of the mosaic that keep its colour layout (by default 2 on a CPU, 4 on CUDA), averaged;
5. refine once: of the first estimate and two fine ones from that first pass (its residual's details,
   and the noisy details where it is flat) the one predicting the least noise gives the blind model,
   and the image is denoised again;
6. exact inverse VST, unpack to the mosaic.

``prepare`` does steps 1–5's estimation on at most :data:`FIRST_PASS_PIXELS` (a full-height strip of a
large photo: every sensor row for the row noise, and plenty of samples for the estimates); ``run`` does the final pass, so moving the ``noise_scale`` slider costs one pass. ``noise_scale`` multiplies t (per pixel with a region map):
below 1 keeps more grain and detail, above 1 smooths more. ``strength`` blends with the input.
The ``profile`` option picks the noise model: ``auto`` (a matching profile from the user data folder,
else the blind estimate), ``none`` (always blind) or a profile's name or folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np

from ..errors import InvalidImageError, ModelError
from ..image import Image
from ..noise import cfa
from ..noise.estimate import NoiseFit, initial, refine
from ..noise.vst import Vst
from ..progress import CancelToken, no_progress, sub_progress
from . import STRENGTH, Method, NoiseModel, Option, Param, blend, choice, register

MODEL_ID = "snrnet-raw"
T_FACTOR = 1.03
# The shipped SNR-Net learnt mismatched levels over this range (models/train_snrnet.py): below 1 it keeps
# grain and detail, above 1 it smooths more, monotonically (measured: README, YOND).
NOISE_SCALE = Param("noise_scale", 1.0, 0.25, 1.5, "multiplies the noise level the network is told "
                    "(<1 keeps more grain and detail, up to 1.5 smooths a little more); a region map "
                    "scales it per pixel")
PROFILE = Option("profile", "auto", "camera noise profile made by `quietlens calibrate` (a name or folder): "
                 "its K, σ, row noise and dark shading replace the blind estimate; auto (default) takes a "
                 "profile of the photo's camera covering its ISO from the user data folder when there is "
                 "one, none always estimates the noise from the photo")
# The final pass averages the network's results on several views of the mosaic that keep its colour
# layout (as it is, transposed, turned half a turn, both): each view's errors are partly its own, and the
# average takes out part of what is not shared. Measured (README, YOND) on the real scenes: 2 views gain
# 0.1–0.4 dB over one, 4 views 0.15–0.6 dB; a 9 MP frame takes 5.8 / 7.4 / 11 s with 1 / 2 / 4 views on
# two CPU cores. ``auto`` takes 2 on a CPU (a full frame stays above 1 MP/s) and 4 on CUDA, where views
# cost little. The first pass, which only feeds the noise estimate, runs on one.
VIEWS = choice("views", ("auto", "1", "2", "4"), "the final pass denoises this many views of the mosaic "
               "that keep its colour layout and averages them: more views leave a little less noise and take "
               "longer; auto: 2 on a CPU, 4 on CUDA")
CPU_VIEWS, CUDA_VIEWS = 2, 4


def views_for(value: float, provider: str) -> int:
    """How many views the ``views`` parameter's ``value`` (a choice index) means on ``provider``."""
    from ..runtime import resolve_provider

    name = VIEWS.choices[int(value)]
    if name == "auto":
        return CUDA_VIEWS if resolve_provider(provider) == "cuda" else CPU_VIEWS
    return int(name)


FIRST_PASS_PIXELS = 600_000  # packed pixels the first pass sees at most (2.4 MP of mosaic)
BLACK_FRAME = 1e-3  # a frame whose local means never exceed 0.1 % of white holds no scene
SATURATED = 0.95  # fraction of pixels at white above which nothing is left to denoise


@dataclass
class YondState:
    """What ``prepare`` learnt about the image. ``noise`` is the model the final pass uses: the
    profile's (``noise.method == "profile"``) or the blind estimate; ``blind`` is always the blind
    estimate (so the two can be compared), ``initial`` its first step, ``profile`` the calibrated
    model that was applied (None: blind)."""

    noise: NoiseFit
    initial: NoiseFit
    first: np.ndarray = field(repr=False)  # first-pass estimate of the clean planes (4, h, w') in ``columns``
    planes: np.ndarray = field(repr=False)  # the noisy planes (less dark shading and row noise with a profile)
    provider: str = "cpu"
    notes: list[str] = field(default_factory=list)
    model_sha256: str | None = None  # the SNR-Net graph that ran, for the output's provenance
    blind: NoiseFit | None = None
    profile: Any = None  # engine.noise.pnnp.ProfileNoise
    warnings: list[str] = field(default_factory=list)  # what the user must be told (e.g. an unusable profile)
    columns: slice = field(default_factory=lambda: slice(None))  # the packed columns of the first pass

    @property
    def source(self) -> str:
        """Where the noise model came from: "profile" or "blind"."""
        return "profile" if self.profile is not None else "blind"

    def summary(self) -> dict[str, Any]:
        """The noise model as JSON-ready facts (for ``quietlens info --noise`` and the GUI)."""
        blind = self.blind or self.noise
        return {"source": self.source, "final": self.noise.to_dict(), "blind": blind.to_dict(),
                "initial": self.initial.to_dict(),
                "profile": self.profile.to_dict() if self.profile is not None else None,
                "notes": list(self.notes), "warnings": list(self.warnings)}


def span_of(image: Image) -> float:
    """White minus the mean black level, in DN: converts the normalised model to sensor units."""
    meta = image.meta
    return float(meta["white_level"] - np.mean(meta["black_level_per_channel"]))


def check_frame(image: Image, planes: np.ndarray) -> list[str]:
    """Refuse frames with nothing to denoise; return notes on documented fallbacks."""
    data = image.data
    if float(data.max() - data.min()) < 1e-6:
        raise InvalidImageError("the frame is constant: there is nothing to estimate or denoise", image.source)
    if np.mean(data >= 0.999) > SATURATED:
        raise InvalidImageError("the frame is saturated (nearly every pixel at the white level): "
                                "no detail is left to denoise", image.source)
    step = max(1, int(np.sqrt(planes[0].size / 250_000)))  # a coarse local-mean map is enough here
    local = [cv2.blur(p[::step, ::step], (9, 9)) for p in planes]
    if np.percentile(np.stack(local), 99.9) < BLACK_FRAME:
        raise InvalidImageError("the frame is black (no signal above 0.1 % of the white level), so the "
                                "noise cannot be measured; for dark frames use `quietlens calibrate`",
                                image.source)
    notes = []
    if not any(image.meta.get("black_level_per_channel", [])):
        notes.append("the file declares no black level: zero is assumed; an offset in the data shifts the "
                     "fitted read-noise term (a negative one falls back to one electron, σ = K)")
    return notes


def _session(provider: str):
    """The SNR-Net session and its manifest entry (halo, tile grid, memory per pixel)."""
    from .. import catalogue, runtime

    try:
        entry = catalogue.entry(MODEL_ID, "yond")
    except ModelError as exc:
        raise ModelError(f"{exc.reason}; reinstall QuietLens") from None
    return runtime.session(MODEL_ID, provider), entry


def denoise_planes(planes: np.ndarray, fit: NoiseFit, provider: str, pattern: str,
                   t_scale: np.ndarray | float = 1.0, bias_at: np.ndarray | None = None,
                   progress=None, cancel=None, views: int | None = None) -> np.ndarray:
    """SNR-Net in the VST domain: noisy planes (4, h, w) of a ``pattern`` mosaic → clean estimate, same
    units. The network runs on the planes in RGGB's layout (:func:`cfa.rggb_flip`), on ``views`` views of
    them that keep that layout (:func:`cfa.rggb_view`; None: as ``views=auto``), and the views' results
    are averaged (see VIEWS)."""
    from ..tiling import run_tiled

    sess, entry = _session(provider)
    views = views_for(VIEWS.default, provider) if views is None else views
    vst = Vst(fit.gain, fit.read)
    flip = cfa.rggb_flip(pattern)
    z = np.flip(vst.forward(planes, bias_at), flip)
    t = np.flip(np.broadcast_to(np.float32(T_FACTOR * vst.nsr) * np.asarray(t_scale, np.float32),
                                planes.shape[1:]), flip)

    def net(tile: np.ndarray) -> np.ndarray:
        return sess.run({"z": tile[:, :4], "t": tile[:, 4:]})[0]

    out = np.zeros(z.shape, np.float32)
    for k in range(views):
        x = np.concatenate([cfa.rggb_view(z, k), cfa.rggb_view(t, k)[None]])[None]
        out += cfa.rggb_view(run_tiled(net, x, halo=entry.receptive_field, multiple_of=entry.tile_multiple,
                                       bytes_per_pixel=entry.memory_per_pixel(500),
                                       progress=sub_progress(progress or no_progress, k / views, (k + 1) / views),
                                       cancel=cancel)[0], k)
    return vst.inverse(np.flip(out / np.float32(views), flip))


def profile_fit(model, blind: NoiseFit, span: float) -> NoiseFit:
    """A profile's noise model as a :class:`NoiseFit` in the loader's units (``span``: the photo's white
    minus black, for K and σ in its DN). Without a calibrated gain, K is the blind estimate's. The points
    are the photo's own (blind) variance-vs-mean scatter, and ``r2`` says how well the profile's line
    fits them."""
    gain = model.K / model.span if model.K else blind.gain
    read_var = (model.sigma / model.span) ** 2
    pts = blind.points
    r2 = float("nan")
    if len(pts) > 2:
        w = pts[:, 2] / np.maximum(pts[:, 1], 1e-30) ** 2
        resid = pts[:, 1] - (gain * pts[:, 0] + read_var)
        centred = pts[:, 1] - np.average(pts[:, 1], weights=w)
        r2 = 1.0 - float(np.sum(w * resid**2) / max(np.sum(w * centred**2), 1e-300))
    notes = [f"noise profile {model.name!r} at ISO {model.iso:g}"]
    if not model.K:
        notes.append("the profile has no gain (calibrated without flat frames): K from the blind estimate")
    return NoiseFit(gain, read_var, span, "profile", r2, 0, pts.copy(), notes)


def remove_rows(planes: np.ndarray, first: np.ndarray, pattern: str, row_std: float,
                columns: slice = slice(None)) -> np.ndarray:
    """Subtract one offset per sensor row, measured on the residual of a first denoising (of the packed
    ``columns`` only: a full-height strip sees every row).

    Rows of the mosaic hold two packed planes each (R, G1 or G2, B by CFA phase); the offset is the
    residual's mean over both, shrunk towards 0 by ``row² / (row² + var(mean))`` (Wiener), so a row
    whose mean is mostly pixel noise is left alone. ``row_std`` in the planes' units.
    """
    out = planes.copy()
    residual = planes[:, :, columns] - first
    for dy in (0, 1):
        idx = [i for i, (y, _) in enumerate(cfa.offsets(pattern)) if y == dy]
        r = residual[idx]
        mean = r.mean(axis=(0, 2))
        var_mean = r.var(axis=(0, 2)) / (r.shape[0] * r.shape[2])
        out[idx] -= (mean * row_std**2 / (row_std**2 + var_mean))[None, :, None].astype(np.float32)
    return out


def first_pass_columns(shape: tuple[int, ...], multiple: int = 16) -> slice:
    """The packed columns of the first pass: all of them up to :data:`FIRST_PASS_PIXELS`, else a centred
    full-height strip of that many pixels."""
    _, h, w = shape
    if h * w <= FIRST_PASS_PIXELS:
        return slice(None)
    width = min(w, max(4 * multiple, FIRST_PASS_PIXELS // h // multiple * multiple))
    left = (w - width) // 2
    return slice(left, left + width)


class Yond(Method):
    name = "yond"
    title = "YOND (blind raw denoising)"
    summary = "estimates the sensor's Poisson–Gaussian noise, stabilises it and denoises with SNR-Net"
    kinds = ("raw",)
    params = (STRENGTH, NOISE_SCALE, VIEWS)
    options = (PROFILE,)
    user_facing = True

    def __init__(self, profile: Any = "auto"):
        self.profile = profile  # "auto", "none" or an engine.noise.pnnp.Profile

    def with_options(self, values: dict[str, str]) -> "Yond":
        """This method with the ``profile`` option: a named or given profile is loaded now, so a missing
        or damaged one fails before any work."""
        from ..noise import pnnp

        choice = values.get("profile", PROFILE.default)
        if isinstance(choice, str) and choice.lower() not in ("auto", "none"):
            choice = pnnp.Profile.load(choice)
        return Yond(choice)

    def prepare(self, image, progress, cancel, provider="auto"):
        from ..noise import pnnp

        cancel.check()
        pattern = image.meta["cfa_pattern"]
        planes = cfa.pack(image.data, pattern)
        notes = check_frame(image, planes)
        span = span_of(image)
        calibrated, found, warnings = pnnp.profile_for(image.meta, image.data.shape, self.profile)
        notes += found
        progress(0.05, "estimating the noise")
        cols = first_pass_columns(planes.shape)
        start = initial(planes[:, :, cols], span)  # the strip holds samples enough, at a quarter of the time
        fit = start
        if calibrated is not None:
            if calibrated.shading is not None:
                planes = planes - cfa.pack(calibrated.shading / np.float32(calibrated.span), pattern)
                notes.append("the profile's dark shading was subtracted")
            fit = profile_fit(calibrated, start, span)
        cancel.check()
        first = denoise_planes(planes[:, :, cols], fit, provider, pattern,
                               progress=sub_progress(progress, 0.1, 0.9), cancel=cancel, views=1)
        progress(0.9, "refining the noise estimate")
        if calibrated is not None and calibrated.row > 0:
            planes = remove_rows(planes, first, pattern, calibrated.row / calibrated.span, cols)
        blind = refine(planes[:, :, cols], first, start)
        final = profile_fit(calibrated, blind, span) if calibrated is not None else blind
        progress(1.0, "noise estimated")
        return YondState(final, start, first, planes, provider, notes, _session(provider)[1].sha256,
                         blind=blind, profile=calibrated, warnings=warnings, columns=cols)

    def run(self, image, state: YondState, params, regions, progress, cancel):
        regions = regions or {}
        scale = np.float32(params.get("noise_scale", 1.0))
        if "noise_scale" in regions:
            scale = np.clip(scale * cfa.pack_map(regions["noise_scale"]), NOISE_SCALE.minimum, NOISE_SCALE.maximum)
        views = views_for(params.get("views", VIEWS.default), state.provider)
        planes = denoise_planes(state.planes, state.noise, state.provider, image.meta["cfa_pattern"], scale,
                                progress=progress, cancel=cancel, views=views)
        result = cfa.unpack(planes, image.meta["cfa_pattern"], image.data.shape)
        out = blend(image.data, result, params.get("strength", 1.0), regions.get("strength"))
        progress(1.0, "done")
        return image.with_data(out)

    def model_sha256(self, state: YondState) -> str | None:
        return state.model_sha256

    def warnings(self, state: YondState) -> list[str]:
        return list(state.warnings)

    def noise_model(self, state: YondState) -> NoiseModel:
        """The model the final pass used; with a profile, the blind estimate beside it as ``alternative``."""
        if state.profile is None:
            return noise_model_of(state.noise, "blind estimate")
        return replace(noise_model_of(state.noise, f"profile {state.profile.name!r} at ISO {state.profile.iso:g}"),
                       alternative=noise_model_of(state.blind, "blind estimate"))

    def artifacts(self, state: YondState) -> dict[str, np.ndarray]:
        """The predicted noise standard deviation per packed pixel (normalised units), per plane."""
        fit = state.noise
        level = np.stack([cv2.blur(p, (5, 5), borderType=cv2.BORDER_REFLECT) for p in state.planes])
        std = np.sqrt(np.maximum(fit.gain * np.maximum(level, 0) + fit.read_var, 0))
        return {f"noise_std_{name}": plane for name, plane in zip(("R", "G1", "G2", "B"), std)}


def noise_model_of(fit: NoiseFit, source: str) -> NoiseModel:
    """A fitted model in sensor units (DN), with its binned variance-vs-mean scatter."""
    pts = fit.points
    return NoiseModel(fit.K, fit.sigma, pts[:, 0] * fit.span, pts[:, 1] * fit.span ** 2, "DN",
                      f"{source} ({fit.method})", {"R²": round(fit.r2, 3), "samples": fit.samples})


def describe_noise(image: Image, provider: str = "auto", detailed: bool = False,
                   method: Yond | None = None) -> dict[str, Any]:
    """Facts about a raw image's noise for ``quietlens info --noise``: a few readable lines, or with
    ``detailed`` the whole model under ``"noise"`` (the model used, the blind estimate, the profile, their
    variance-vs-mean points and notes). ``method``: a configured :class:`Yond` (e.g. with a profile)."""
    from .. import runtime

    if image.kind != "raw":
        raise InvalidImageError(f"noise estimation works on raw images, this is a {image.kind} image",
                                image.source)
    state = (method or Yond()).prepare(image, no_progress, CancelToken(), runtime.resolve_provider(provider))
    if detailed:
        return {"noise": state.summary()}
    fit, blind, start = state.noise, state.blind, state.initial
    source = (f"profile {state.profile.name!r} at ISO {state.profile.iso:g}" if state.profile is not None
              else "blind estimate")
    notes = state.warnings + state.notes + fit.notes
    return {
        "noise_source": source,
        "noise_gain_K": f"{fit.K:.4g} DN/e- ({fit.method}, R² {fit.r2:.2f})",
        "noise_read": f"{fit.sigma:.4g} DN",
        **({"noise_blind": f"K {blind.K:.4g}, σ {blind.sigma:.4g} ({blind.method})"} if fit is not blind else {}),
        "noise_initial": f"K {start.K:.4g}, σ {start.sigma:.4g} ({start.method})",
        **({"noise_notes": "; ".join(notes)} if notes else {}),
    }


register(Yond())
