"""YOND: blind raw denoising from the noise model the image itself reveals.

1. pack the Bayer mosaic into R, G1, G2, B planes (any CFA phase);
2. estimate the Poisson–Gaussian model (CNE coarse, or the classical estimator when it fails or
   predicts less noise — texture only ever inflates these estimates, so the lower one is nearer);
3. EM-VST: stabilise the variance, remove the transform's bias, normalise to [0, 1];
4. SNR-Net (ONNX, tiled) denoises, told the noise level t = 1.03·nsr;
5. refine once: CNE fine (variance of noisy minus variance of the first result) gives the final model
   when it predicts less noise than step 2's, and the image is denoised again with the bias evaluated
   at the first result;
6. exact inverse VST, unpack to the mosaic.

``prepare`` does steps 1–5's estimation (one network pass); ``run`` does the final pass, so moving the
``noise_scale`` slider costs one pass. ``noise_scale`` multiplies t (per pixel with a region map):
below 1 keeps more grain and detail, slightly above 1 smooths a little more. ``strength`` blends with
the input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..errors import InvalidImageError, ModelError
from ..image import Image
from ..noise import cfa
from ..noise.estimate import NoiseFit, initial, refine
from ..noise.vst import Vst
from ..progress import CancelToken, no_progress, sub_progress
from . import STRENGTH, Method, NoiseModel, Param, blend, register

MODEL_ID = "snrnet-raw"
T_FACTOR = 1.03
# The shipped SNR-Net only ever saw its true noise level in training, so t is not scaled far above it:
# measured, values below 1 keep grain and detail monotonically, up to ~1.5 smooth slightly, beyond that
# the output gets worse rather than smoother.
NOISE_SCALE = Param("noise_scale", 1.0, 0.25, 1.5, "multiplies the noise level the network is told "
                    "(<1 keeps more grain and detail, up to 1.5 smooths a little more); a region map "
                    "scales it per pixel")
BLACK_FRAME = 1e-3  # a frame whose local means never exceed 0.1 % of white holds no scene
SATURATED = 0.95  # fraction of pixels at white above which nothing is left to denoise


@dataclass
class YondState:
    """What ``prepare`` learnt about the image; ``noise`` is the model the final pass uses."""

    noise: NoiseFit
    initial: NoiseFit
    first: np.ndarray = field(repr=False)  # first-pass estimate of the clean planes (4, h, w)
    planes: np.ndarray = field(repr=False)  # the noisy planes
    provider: str = "cpu"
    notes: list[str] = field(default_factory=list)
    model_sha256: str | None = None  # the SNR-Net graph that ran, for the output's provenance

    def summary(self) -> dict[str, Any]:
        """The noise model as JSON-ready facts (for ``quietlens info --noise`` and the GUI)."""
        return {"final": self.noise.to_dict(), "initial": self.initial.to_dict(), "notes": list(self.notes)}


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


def denoise_planes(planes: np.ndarray, fit: NoiseFit, provider: str, t_scale: np.ndarray | float = 1.0,
                   bias_at: np.ndarray | None = None, progress=None, cancel=None) -> np.ndarray:
    """One SNR-Net pass in the VST domain: noisy planes (4, h, w) → clean estimate, same units."""
    from ..tiling import run_tiled

    sess, entry = _session(provider)
    vst = Vst(fit.gain, fit.read)
    z = vst.forward(planes, bias_at)
    t = np.broadcast_to(np.float32(T_FACTOR * vst.nsr) * np.asarray(t_scale, np.float32), planes.shape[1:])
    x = np.concatenate([z, t[None]], axis=0)[None]

    def net(tile: np.ndarray) -> np.ndarray:
        return sess.run({"z": tile[:, :4], "t": tile[:, 4:]})[0]

    out = run_tiled(net, x, halo=entry.receptive_field, multiple_of=entry.tile_multiple,
                    bytes_per_pixel=entry.memory_per_pixel(500),
                    progress=progress or no_progress, cancel=cancel)
    return vst.inverse(out[0])


class Yond(Method):
    name = "yond"
    title = "YOND (blind raw denoising)"
    summary = "estimates the sensor's Poisson–Gaussian noise, stabilises it and denoises with SNR-Net"
    kinds = ("raw",)
    params = (STRENGTH, NOISE_SCALE)
    user_facing = True

    def prepare(self, image, progress, cancel, provider="auto"):
        cancel.check()
        planes = cfa.pack(image.data, image.meta["cfa_pattern"])
        notes = check_frame(image, planes)
        progress(0.05, "estimating the noise")
        start = initial(planes, span_of(image))
        cancel.check()
        first = denoise_planes(planes, start, provider, progress=sub_progress(progress, 0.1, 0.9), cancel=cancel)
        progress(0.9, "refining the noise estimate")
        final = refine(planes, first, start)
        progress(1.0, "noise estimated")
        return YondState(final, start, first, planes, provider, notes, _session(provider)[1].sha256)

    def run(self, image, state: YondState, params, regions, progress, cancel):
        regions = regions or {}
        scale = np.float32(params.get("noise_scale", 1.0))
        if "noise_scale" in regions:
            scale = np.clip(scale * cfa.pack_map(regions["noise_scale"]), NOISE_SCALE.minimum, NOISE_SCALE.maximum)
        planes = denoise_planes(state.planes, state.noise, state.provider, scale, bias_at=state.first,
                                progress=progress, cancel=cancel)
        result = cfa.unpack(planes, image.meta["cfa_pattern"], image.data.shape)
        out = blend(image.data, result, params.get("strength", 1.0), regions.get("strength"))
        progress(1.0, "done")
        return image.with_data(out)

    def model_sha256(self, state: YondState) -> str | None:
        return state.model_sha256

    def noise_model(self, state: YondState) -> NoiseModel:
        return noise_model_of(state.noise, "blind estimate")

    def artifacts(self, state: YondState) -> dict[str, np.ndarray]:
        """The predicted noise standard deviation per packed pixel (normalised units), per plane."""
        fit = state.noise
        std = np.sqrt(np.maximum(fit.gain * np.maximum(state.first, 0) + fit.read_var, 0))
        return {f"noise_std_{name}": plane for name, plane in zip(("R", "G1", "G2", "B"), std)}


def noise_model_of(fit: NoiseFit, source: str) -> NoiseModel:
    """A fitted model in sensor units (DN), with its binned variance-vs-mean scatter."""
    pts = fit.points
    return NoiseModel(fit.K, fit.sigma, pts[:, 0] * fit.span, pts[:, 1] * fit.span ** 2, "DN",
                      f"{source} ({fit.method})", {"R²": round(fit.r2, 3), "samples": fit.samples})


def describe_noise(image: Image, provider: str = "auto", detailed: bool = False) -> dict[str, Any]:
    """Facts about a raw image's noise for ``quietlens info --noise``: a few readable lines, or with
    ``detailed`` the whole model under ``"noise"`` (initial and final fits, their variance-vs-mean
    points and notes)."""
    from .. import runtime

    if image.kind != "raw":
        raise InvalidImageError(f"noise estimation works on raw images, this is a {image.kind} image",
                                image.source)
    state = Yond().prepare(image, no_progress, CancelToken(), runtime.resolve_provider(provider))
    if detailed:
        return {"noise": state.summary()}
    fit, start = state.noise, state.initial
    return {
        "noise_gain_K": f"{fit.K:.4g} DN/e- ({fit.method}, R² {fit.r2:.2f})",
        "noise_read": f"{fit.sigma:.4g} DN",
        "noise_initial": f"K {start.K:.4g}, σ {start.sigma:.4g} ({start.method})",
        **({"noise_notes": "; ".join(state.notes + fit.notes)} if state.notes or fit.notes else {}),
    }


register(Yond())
