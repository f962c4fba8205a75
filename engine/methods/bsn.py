"""C-BSN and SDAP: self-supervised blind-spot denoisers for real camera noise in sRGB photos.

Both were trained without clean images, so users can adapt them to their own camera with
``quietlens train`` (see :mod:`quietlens.engine.train`). Every model comes as a pair of ONNX graphs:

* the **teacher**, the blind-spot network itself (C-BSN: one non-blind pass; SDAP: stride-2
  pixel-shuffle pass plus a full-resolution blind pass), best on a GPU;
* the **student**, a compact U-Net trained supervised on simulated camera noise (and distilled from the
  teacher where that measured better), the CPU default;
* the **fast** student, a smaller U-Net for batches and previews.

A student may be *told the noise level* (FFDNet's knob; its entry names the level network in
``provenance.inference.level_model``): a small network estimates the photo's noise σ per pixel, its
per-channel median over the photo (on the guard's sample tiles above 1 MP, so a preview is told what the
export is) × ``noise_scale`` (per region with a region map) is given to the student as three more input
planes. The shipped students are (C-BSN's and SDAP's): ``noise_scale`` above 1 smooths more, below 1 keeps
more texture.

The ``network`` choice picks one: ``auto`` (default) chooses by provider (the student on the CPU; on CUDA
the teacher, unless the manifests measured it below the student on any set both were measured on),
``teacher``, ``student`` or ``fast`` forces one. A model family ``NAME`` is the teacher id ``NAME``
plus ``NAME.student`` and ``NAME.fast`` in the manifests (:func:`catalogue.graph_id`); the shipped
families are ``cbsn`` and ``sdap``, and :meth:`BlindSpotMethod.with_model` (CLI ``--model NAME``)
selects a user-trained one.

Pipeline: per-channel standardisation with the whole image's mean and standard deviation (the networks
were trained on standardised crops), tiled inference with a halo of the graph's receptive-field radius
(reflect padding; tile origins aligned to what the graph needs, so the result equals one untiled pass),
de-standardisation, the input's low-pass band in place of the network's (noise is zero-mean: this keeps
colours and local brightness where the networks drift), the detail guard (``guard=on``: where the removed
part carries far more energy than the photo's noise, it was detail, and is scaled back), then ``strength``
blending towards the input, optionally per region.

Grayscale photos are accepted: the single channel is replicated to RGB for the network and the three
outputs are averaged back to one channel.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from .. import catalogue
from ..catalogue import ROLES, graph_id
from ..errors import InvalidImageError, ModelError
from ..image import channel_stats
from ..noise.guard import GUARD_RADIUS, detail_guard, guard_boxes, noise_energy_curve, take_low_band
from ..progress import sub_progress
from . import STRENGTH, Method, NoiseModel, Param, blend, choice, register

NETWORK = choice("network", ("auto",) + ROLES,
                 "auto: by provider (the student on a CPU, on CUDA the teacher unless it measured worse); "
                 "teacher; student; "
                 "fast (a smaller student for batches and previews)")
GUARD = choice("guard", ("on", "off"),
               "on: where the network removed far more than the photo's noise (fine texture, a clean photo), "
               "give the detail back; off: the network's output as it is")
PASSES = choice("passes", ("auto", "1", "2"),
                "auto: the student runs a second pass where its first removed heavy noise (a phone in low "
                "light, a very high ISO), which one pass takes out only in part; 1; 2")
# Removed noise (σ per channel, of the photo's brightness range) from which `passes=auto` runs the student
# again on its own result. One pass of the students leaves part of heavy noise; two passes everywhere
# (C-BSN student) gave +1.12 dB on the SIDD pairs (every image +0.48 to +1.49) and +0.12 / +0.18 dB on
# Kodak24 / McMaster at ISO 25600, but −0.15 / −0.31 dB on Canon / McMaster at ISO 3200, where the first
# pass removed 1.1–2.7 and 0.1–7.3 /255 (SIDD 9.4–32, ISO 25600 4.3–25). With this threshold: SIDD 31.10 →
# 32.29 dB, Canon unchanged, McMaster ISO 3200 −0.07 (bench_cbsn_sdap). The others stay at one pass: a blind-spot
# teacher's second pass takes detail (SDAP's: Canon −0.8 dB), and so does the fast student's on textured
# photos (McMaster ISO 3200, worst image −0.37 → −1.89 dB), which must stay fast. The C-BSN student told the
# noise level needs it as much (SIDD 31.07 → 32.73 dB); its second pass is told the same level.
HEAVY_NOISE = 6.0 / 255
NOISE_SCALE = Param("noise_scale", 1.0, 0.25, 3.0,
                    "multiplies the noise level the student is told (1: its own estimate of the photo's); "
                    "more smooths more, less keeps more texture. Only for networks told the level (the "
                    "shipped students); the others ignore it")
MIN_SIDE = 8  # px: below this there is no neighbourhood left to predict a pixel from
DEFAULT_BYTES_PER_PIXEL = 4096.0  # used when a manifest entry does not say (conservative)
# Noise is zero-mean, so the input's local mean is an unbiased estimate of the clean one, while networks
# trained on noisy photos alone drift there (colour casts of up to 5/255 on real photos). The band below
# this Gaussian's cut-off is then taken from the input: +0.6 to +2.5 dB on the SIDD and Canon pairs for
# the first self-supervised models. A graph's manifest entry may set its own σ (provenance.inference.
# lowpass_sigma; 0 = keep the network's whole output), as the recipe measures what suits its networks.
REAL_PAIRS = ("sidd", "cc")  # the manifest metrics measured on real noisy/clean photos
LOWPASS_SIGMA = 8.0  # px: wider than sRGB noise's correlation (~2–3 px), so little noise comes back


@dataclasses.dataclass
class State:
    """What :meth:`BlindSpotMethod.prepare` returns: the provider and the network results so far."""

    provider: str
    mean: np.ndarray  # per-channel standardisation of the image ``prepare`` saw (float64, 3 values)
    std: np.ndarray
    results: dict[tuple, np.ndarray] = dataclasses.field(default_factory=dict)  # by (model id, shape, passes, level)
    image: np.ndarray | None = None  # the photo ``prepare`` saw (where the guard measures its noise)
    noise_energy: dict[tuple, tuple] = dataclasses.field(default_factory=dict)  # by (model id, passes, level)
    levels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # by level model id: σ per channel
    model: str | None = None  # the model id of the last run
    model_sha256: str | None = None  # its graph's hash (recorded in outputs' provenance)
    passes: int = 1  # network passes of the last run


@dataclasses.dataclass(frozen=True)
class BlindSpotMethod(Method):
    name: str
    title: str
    summary: str
    model: str = ""  # model family; empty: the shipped one named like the method
    min_pad: int = 0  # extra context beyond the receptive field, as the method's own inference pads
    kinds: tuple[str, ...] = ("photo",)
    params: tuple[Param, ...] = (STRENGTH, NETWORK, GUARD, PASSES)
    user_facing: bool = True
    whole_image_prepare: bool = True  # prepare only measures the photo: a preview crop uses its numbers

    @property
    def family(self) -> str:
        return self.model or self.name

    def families(self) -> list[str]:
        """The model families this method can run: the shipped one first, then those made by ``train``."""
        return catalogue.families(self.name)

    def with_model(self, model: str) -> "BlindSpotMethod":
        """The same method running another model family (e.g. one made by ``quietlens train``)."""
        known = self.families()
        if model not in known:
            entries = catalogue.load()
            other = next((entries[graph_id(model, r)] for r in ROLES if graph_id(model, r) in entries), None)
            if other is not None:
                raise ModelError(f"model {model!r} was made for {other.method}, not {self.name}")
            raise ModelError(f"no model named {model!r} for {self.name} (available: {', '.join(known) or 'none'})")
        return dataclasses.replace(self, model=model)

    @property
    def preview_context(self) -> tuple[int, int]:
        """What a preview crop needs for its pixels to equal the export's: context (the larger receptive
        field of the family's two graphs) and origin alignment (their tile multiples)."""
        entries = catalogue.load()
        found = [entries[graph_id(self.family, r)] for r in ROLES if graph_id(self.family, r) in entries]
        band = max([_lowpass_radius(e) for e in found] + [0])
        one_pass = max([e.receptive_field for e in found] + [self.min_pad, band])
        return (2 * one_pass  # a second pass runs on the first one's result
                + GUARD_RADIUS + band,  # the guard's window, and its band taken out again
                int(np.lcm.reduce([e.tile_multiple for e in found] + [1])))

    def model_sha256(self, state: State) -> str | None:
        return state.model_sha256

    # -- prepare and run -----------------------------------------------------------------------------

    def prepare(self, image, progress, cancel, provider="auto"):
        """Checks the image and measures its standardisation; the network runs in :meth:`run` (once per
        network choice and image size, then cached)."""
        from .. import runtime

        _check_image(image, self.name)
        mean, std = channel_stats(image.data)
        progress(1.0, "ready")
        return State(runtime.resolve_provider(provider), mean, std, image=image.data)

    def run(self, image, state, params, regions, progress, cancel):
        network = int(params.get("network", NETWORK.default))
        if network == 0:
            network = ROLES.index(self._auto_role(state.provider)) + 1
        role = ROLES[network - 1]
        model_id = graph_id(self.family, role)
        guard = int(params.get("guard", GUARD.default)) == 0
        passes = int(params.get("passes", PASSES.default))  # 0: auto
        told = _level_model(self._entry(model_id)) is not None
        if passes == 0 and role != "student":
            passes = 1  # see HEAVY_NOISE
        # The measures (noise level, guard curve, removed noise) come first on the bar: on sample tiles ~a
        # tenth of the work each; a photo measured whole is measured by the run itself (then cached for it).
        share = 0.1 if len(guard_boxes(state.image.shape)) > 1 else 0.5 if passes == 0 else 1.0
        done = 0.0
        level = None
        if told:
            level = self._level(model_id, state, float(params.get("noise_scale", NOISE_SCALE.default)),
                                (regions or {}).get("noise_scale"), sub_progress(progress, 0.0, 0.05), cancel)
            done = 0.05
        measured = level.whole() if level is not None else None  # the guard measures at the slider's value
        if passes == 0 or (guard and passes == 1):
            self._measure(state, model_id, 1, measured, sub_progress(progress, done, done + share), cancel)
            done += share
        if passes == 0:
            _, top, removed = state.noise_energy[(model_id, 1, _key(measured))]
            passes = 2 if removed >= HEAVY_NOISE * top else 1
        if guard and passes == 2:
            self._measure(state, model_id, 2, measured, sub_progress(progress, done, done + share), cancel)
            done += share
        result = self._cached(image.data, model_id, state, sub_progress(progress, min(done, 1.0), 1.0), cancel,
                              passes, level)
        state.model, state.model_sha256, state.passes = model_id, self._entry(model_id).sha256, passes
        if guard:
            curve, top, _ = state.noise_energy[(model_id, passes, _key(measured))]
            result = detail_guard(image.data, result, curve, top, _lowpass_sigma(self._entry(model_id)))
        strength = float(params.get("strength", 1.0))
        strength_map = (regions or {}).get("strength")
        cancel.check()
        if strength == 1.0 and strength_map is None:
            out = result if guard else result.copy()
        else:
            out = blend(image.data, result, strength, strength_map)
        progress(1.0, "done")
        return image.with_data(out)

    def noise_level(self, state: State) -> dict[str, np.ndarray]:
        """The noise level (σ per channel, in the photo's values) each level network estimated so far."""
        return {k: v * state.std for k, v in state.levels.items()}

    def noise_model(self, state: State) -> NoiseModel | None:
        """The level the student was told (its level network's estimate), for the noise panel."""
        found = self.noise_level(state) if state is not None else {}
        if not found:
            return None
        name, sigma = next(iter(found.items()))
        scale = 255.0 if state.image.max() <= 1 else 1.0
        # the student is told one σ per channel, whatever the brightness: K = 0
        return NoiseModel(0.0, float(np.mean(sigma)), units="of the photo's values",
                          source=f"noise level told the student ({name}; × noise_scale)",
                          facts={"σ per channel" + (" (/255)" if scale == 255 else ""):
                                 " / ".join(f"{v * scale:.2f}" for v in sigma)})

    # -- inference -----------------------------------------------------------------------------------

    def _auto_role(self, provider: str) -> str:
        """The student on a CPU; on CUDA the teacher, unless the manifests measured it below the student on
        any set both were measured on (the real dev pairs, and synthetic and clean photos: a blind-spot
        teacher that wins on real noise can still smooth low-noise photos the student leaves alone).
        Without dev-pair measurements (e.g. a user's family) the teacher."""
        if provider != "cuda":
            return "student"
        entries = catalogue.load()
        teacher, student = (_recorded_psnr(entries.get(graph_id(self.family, role))) for role in ROLES[:2])
        if not (set(REAL_PAIRS) <= set(teacher) and set(REAL_PAIRS) <= set(student)):
            return "teacher"
        return "student" if any(teacher[k] < student[k] for k in set(teacher) & set(student)) else "teacher"

    def _measure(self, state: State, model_id: str, passes: int, level: "Level | None", progress, cancel) -> None:
        key = (model_id, passes, _key(level))
        if key not in state.noise_energy:
            state.noise_energy[key] = self._noise_energy(model_id, state, progress, cancel, passes, level)

    def _level(self, model_id: str, state: State, scale: float, scale_map, progress, cancel) -> "Level":
        """What the graph ``model_id`` is told: its level network's estimate for the photo ``prepare`` saw
        (the per-channel median of its map, on the guard's sample tiles so that a preview is told what
        the export is), × ``scale`` (× ``scale_map`` per pixel, a region map)."""
        from .. import runtime, tiling

        level_id = _level_model(self._entry(model_id))
        if level_id not in state.levels:
            entry = catalogue.entry(level_id)
            sess = runtime.session(level_id, state.provider)
            boxes = guard_boxes(state.image.shape)
            pad = entry.receptive_field if len(boxes) > 1 else 0
            maps = []
            for i, box in enumerate(boxes):
                cancel.check()
                crop, core = _with_context(state.image, box, pad)
                m = tiling.run_tiled(sess, _standardised(crop, state.mean, state.std), halo=entry.receptive_field,
                                     bytes_per_pixel=entry.memory_per_pixel(DEFAULT_BYTES_PER_PIXEL),
                                     multiple_of=entry.tile_multiple, cancel=cancel)[0]
                maps.append(m[(slice(None),) + core].reshape(3, -1))
                progress((i + 1) / len(boxes), "estimating the noise level")
            state.levels[level_id] = np.median(np.concatenate(maps, axis=1), axis=1).astype(np.float64)
        return Level(state.levels[level_id], scale, scale_map)

    def _noise_energy(self, model_id: str, state: State, progress, cancel,
                      passes: int = 1, level: "Level | None" = None) -> tuple[np.ndarray, float, float]:
        """The measure of what ``passes`` network passes remove from the photo ``prepare`` saw — the guard's
        curve and the removed noise level (:func:`noise_energy_curve`), and the brightness range — up to
        1 MP whole, larger on a 4×4 grid of 256² tiles with the passes' receptive fields around them, so a
        preview and the export use the same one. On a small photo the whole result is kept for the export."""
        x = state.image
        top = max(1.0, float(x.max()))  # display-referred photos: [0, 1]
        boxes = guard_boxes(x.shape)
        pad = 0 if len(boxes) == 1 else passes * self._entry(model_id).receptive_field + GUARD_RADIUS  # for a statistic
        noisy, results = [], []
        for i, box in enumerate(boxes):
            cancel.check()
            crop, core = _with_context(x, box, pad)
            if len(boxes) == 1:  # the export's own run (done already if the guard was off before)
                result = self._cached(x, model_id, state, progress, cancel, passes, level)
            else:
                result = self._denoise(crop, model_id, state, lambda f, *_, i=i: progress(
                    (i + f) / len(boxes), f"measuring the noise (sample {i + 1}/{len(boxes)})"), cancel, passes,
                    level=level)
            noisy.append(crop[core])
            results.append(result[core])
        curve, level = noise_energy_curve(noisy, results, top)
        return curve, top, level

    def _entry(self, model_id: str):
        try:
            return catalogue.entry(model_id, self.name)
        except ModelError as exc:
            hint = "train one with `quietlens train`" if self.model else "reinstall QuietLens"
            raise ModelError(f"{exc.reason} ({hint})") from None

    def _cached(self, x: np.ndarray, model_id: str, state: State, progress, cancel, passes: int,
                level: "Level | None" = None) -> np.ndarray:
        """The network's result for the photo (or preview crop) ``x``, kept in ``state`` so that slider moves
        re-blend without running it again; a second pass starts from the first one's result if kept."""
        told = _key(level)
        key = (model_id, x.shape, passes, told)
        if key not in state.results:
            state.results[key] = self._denoise(x, model_id, state, progress, cancel, passes,
                                               state.results.get((model_id, x.shape, 1, told)), level)
        return state.results[key]

    def _denoise(self, x: np.ndarray, model_id: str, state: State, progress, cancel, passes: int = 1,
                 first: np.ndarray | None = None, level: "Level | None" = None) -> np.ndarray:
        """The network's result for an HWC image (float32, its channel count); with ``passes=2`` the network
        runs again on its own result (``first``: that of the first pass, if known)."""
        if first is not None and passes > 1:
            x, passes, progress = first, passes - 1, sub_progress(progress, 0.5, 1.0)
        for n in range(passes):
            x = self._one_pass(x, model_id, state, sub_progress(progress, n / passes, (n + 1) / passes), cancel,
                               level)
        return x

    def _one_pass(self, x: np.ndarray, model_id: str, state: State, progress, cancel,
                  level: "Level | None" = None) -> np.ndarray:
        """One pass of the graph over an HWC image. Graphs take the photo standardised with the statistics
        in ``state`` (those of the whole photo, also for a preview crop), or as it is where their entry says
        ``inference.input: "srgb"``; a graph told the noise level gets it as more input planes (``level``),
        made tile by tile (a region map of it travels with the tiles as one more plane)."""
        from .. import runtime, tiling

        entry = self._entry(model_id)
        sess = runtime.session(model_id, state.provider)
        gray = x.shape[2] == 1
        if entry.provenance.get("inference", {}).get("input", "standardised") == "srgb":
            mu, sigma = np.zeros(3), np.ones(3)
        else:
            mu, sigma = state.mean, state.std
        mapped = level is not None and level.map is not None
        z = _standardised(x, mu, sigma, extra=int(mapped))
        if mapped:
            z[0, 3] = level.map
        fn = sess if level is None else level.feeding(sess)
        y = tiling.run_tiled(fn, z, halo=max(entry.receptive_field, self.min_pad),
                             bytes_per_pixel=entry.memory_per_pixel(DEFAULT_BYTES_PER_PIXEL),
                             multiple_of=entry.tile_multiple, progress=progress, cancel=cancel)
        del z
        out = np.empty(x.shape[:2] + (3,), np.float32)
        plane = np.empty(x.shape[:2], np.float32)  # in place, plane by plane: 5× faster on 24 MP than temporaries
        for c in range(3):
            np.multiply(y[0, c], np.float32(sigma[c]), out=plane)
            np.add(plane, np.float32(mu[c]), out=out[..., c])
        del y
        if gray:
            out = out.mean(axis=2, keepdims=True, dtype=np.float32)
        take_low_band(x, out, _lowpass_sigma(entry), plane)
        return out


# -- the noise level a student is told --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Level:
    """The noise level a graph is told: ``sigma`` per channel (standardised units) × ``scale``, × ``map``
    per pixel when a region map of ``noise_scale`` is given."""

    sigma: np.ndarray
    scale: float
    map: np.ndarray | None = None

    def whole(self) -> "Level":
        """The same without the region map (what the guard measures with, on the whole photo's samples)."""
        return Level(self.sigma, self.scale)

    def feeding(self, sess):
        """``sess`` behind a function that appends the level planes to each (1, 3 [+ 1 map], h, w) tile."""
        told = (self.sigma * self.scale).astype(np.float32)[None, :, None, None]

        def run(tile: np.ndarray) -> np.ndarray:
            planes = np.broadcast_to(told, tile[:, :3].shape)
            if tile.shape[1] > 3:
                planes = planes * np.clip(tile[:, 3:], NOISE_SCALE.minimum / self.scale,
                                          NOISE_SCALE.maximum / self.scale)
            return sess(np.concatenate([tile[:, :3], planes], axis=1))

        return run


def _key(level: Level | None) -> tuple | None:
    """What a cached result depends on in ``level``."""
    if level is None:
        return None
    digest = None if level.map is None else hashlib.blake2b(np.ascontiguousarray(level.map).data,
                                                            digest_size=8).hexdigest()
    return tuple(np.round(level.sigma, 6)), round(level.scale, 6), digest


def _level_model(entry) -> str | None:
    """The id of the level network whose estimate a graph is told (``provenance.inference.level_model``)."""
    return entry.provenance.get("inference", {}).get("level_model")


def _standardised(x: np.ndarray, mean: np.ndarray, std: np.ndarray, extra: int = 0) -> np.ndarray:
    """(1, 3 + ``extra``, H, W) float32: an HWC photo (grey replicated) standardised per channel, and
    ``extra`` planes left for the caller to fill."""
    z = np.empty((1, 3 + extra) + x.shape[:2], np.float32)
    for c in range(3):  # channel by channel, in place: no full-size temporaries on 24 MP photos
        np.subtract(x[..., c if x.shape[2] == 3 else 0], np.float32(mean[c]), out=z[0, c])
        np.divide(z[0, c], np.float32(std[c]), out=z[0, c])
    return z


def _with_context(x: np.ndarray, box: tuple[int, int, int, int], pad: int) -> tuple[np.ndarray, tuple]:
    """The crop of ``x`` around ``box`` (y0, x0, y1, x1) with ``pad`` px of context where the photo has it,
    and the slices of ``box`` within that crop."""
    h, w = x.shape[:2]
    y0, x0, y1, x1 = box
    cy0, cx0, cy1, cx1 = max(0, y0 - pad), max(0, x0 - pad), min(h, y1 + pad), min(w, x1 + pad)
    return np.ascontiguousarray(x[cy0:cy1, cx0:cx1]), (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))


# -- the low band (taken from the photo: engine.noise.guard) -----------------------------------------------

def _lowpass_sigma(entry) -> float:
    """The graph's low-pass σ (see LOWPASS_SIGMA): its manifest entry's, else the default."""
    return float(entry.provenance.get("inference", {}).get("lowpass_sigma", LOWPASS_SIGMA))


def _lowpass_radius(entry) -> int:
    """The Gaussian's truncation (4σ): the context a preview crop needs for it."""
    return int(4 * _lowpass_sigma(entry))


def _recorded_psnr(entry) -> dict[str, float]:
    """The mean PSNR per evaluation set that a graph's manifest entry records (empty without one)."""
    metrics = entry.provenance.get("metrics", {}) if entry is not None else {}
    return {k: float(v["psnr"]) for k, v in metrics.items() if isinstance(v, dict) and "psnr" in v}


def _check_image(image, method: str) -> None:
    if image.axes != "HWC" or image.data.shape[2] not in (1, 3):
        raise InvalidImageError(f"{method} denoises RGB or grayscale photos; this image has axes "
                                f"{image.axes} and shape {image.data.shape}", image.source)
    h, w = image.data.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InvalidImageError(f"the image is {w}×{h} px; {method} needs at least {MIN_SIDE}×{MIN_SIDE}",
                                image.source)


register(BlindSpotMethod(
    "cbsn", "C-BSN (conditional blind-spot network)",
    "self-supervised real-noise denoiser for sRGB photos; adapt it to your camera with `quietlens train`",
    min_pad=32,  # C-BSN's inference reflect-pads 32 px
    params=(STRENGTH, NOISE_SCALE, NETWORK, GUARD, PASSES),
))
register(BlindSpotMethod(
    "sdap", "SDAP (random sub-samples, blind-spot network)",
    "self-supervised real-noise denoiser for sRGB photos (blind, with a full-resolution refinement pass)",
))
