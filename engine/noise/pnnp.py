"""Camera noise profiles from dark frames (PNNP calibration) and realistic noisy raw synthesis.

Calibration, per ISO setting found in a folder of dark frames (lens cap on, same camera):

* dark shading — the per-pixel fixed pattern: the mean over the frames (subtracted from the rest);
* frame offset — each frame's mean, removed;
* row and column noise — one Gaussian offset per row (column): the standard deviation is the slope of
  the normal probability plot of the row means, less the share the pixel noise leaves in a mean;
* pixel noise — what remains; its Tukey-lambda shape is found by PPCC (for reference and for the plain
  physics model) and its whole distribution is learnt by the PNNP proxy network;
* gain K — from optional flat frames (pairs at the same exposure: their difference cancels the fixed
  patterns), fitted as ``var = K·mean + dark variance``.

A profile is a folder ``<user data>/profiles/<name>/`` with ``profile.json``, ``pixel_proxy.onnx`` and one
``shading_iso<N>.npy`` per ISO. Synthesis adds to a clean raw (in the profile camera's DN) Poisson shot
noise with gain K, the proxy's pixel noise, row and column offsets, the dark shading, and rounds to DN.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidImageError, ModelError, QuietLensError
from ..image import Image

PROFILE_SCHEMA = 1
PROXY_FILE = "pixel_proxy.onnx"
MAX_TUKEY_SAMPLES = 20_000  # PPCC is a 1-D optimisation over sorted samples: this many are plenty
PROXY_SAMPLES = 200_000


def profiles_dir() -> Path:
    from ..catalogue import user_data_dir

    return user_data_dir() / "profiles"


def black_map(meta: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel black level (DN) of a mosaic of ``shape``, from the 2×2 CFA tile's levels."""
    tile = np.asarray(meta["black_level_per_channel"], np.float32)[np.asarray(meta["raw_pattern"])]
    return np.tile(tile, ((shape[0] + 1) // 2, (shape[1] + 1) // 2))[: shape[0], : shape[1]]


def dn_scale(meta: dict[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel ``white − black`` (DN) for a mosaic of ``shape``: multiplies normalised data into DN."""
    return np.float32(meta["white_level"]) - black_map(meta, shape)


def to_dn(image: Image) -> np.ndarray:
    """A raw image's mosaic in black-subtracted DN."""
    return image.data * dn_scale(image.meta, image.data.shape)


# -- dark-frame statistics ---------------------------------------------------------------------------

def band_std(means: np.ndarray, pixel_var_share: float) -> float:
    """Standard deviation of a row (column) offset from the row means of many frames.

    The slope of the normal probability plot is the spread of the means; each mean also carries
    ``pixel_var_share`` (= pixel variance / pixels per row) of pixel noise, which is removed.
    """
    from scipy import stats  # here, not at the top: loading scipy.stats costs a denoise run ~0.6 s

    (_, _), (slope, _, _) = stats.probplot(means.ravel(), dist="norm")
    return float(np.sqrt(max(slope**2 - pixel_var_share, 0.0)))


def tukey_fit(samples: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """(λ, standard deviation) of the Tukey-lambda distribution that best straightens the probability
    plot (PPCC maximum); the deviation from that plot's slope, so outliers weigh little."""
    from scipy import stats

    x = rng.choice(samples.ravel(), min(samples.size, MAX_TUKEY_SAMPLES), replace=False)
    lam = float(np.clip(stats.ppcc_max(x, brack=(-0.5, 0.5), dist="tukeylambda"), -0.45, 1.0))
    (_, _), (slope, _, _) = stats.probplot(x, sparams=(lam,), dist="tukeylambda")
    return lam, float(slope * np.sqrt(stats.tukeylambda.var(lam)))


@dataclass
class DarkStats:
    """The signal-independent noise of one ISO setting (DN)."""

    iso: float
    frames: int
    shading: np.ndarray  # (H, W) fixed pattern
    row_std: float
    col_std: float
    pixel_std: float
    tukey_lambda: float
    tukey_std: float
    residual: np.ndarray  # a sample of the pixel noise, for fitting the proxy

    def to_json(self) -> dict[str, Any]:
        q = np.quantile(self.residual, [0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999])
        return {"iso": self.iso, "frames": self.frames, "row_std": self.row_std, "col_std": self.col_std,
                "pixel_std": self.pixel_std, "tukey_lambda": self.tukey_lambda, "tukey_std": self.tukey_std,
                "shading_std": float(self.shading.std()),
                "pixel_quantiles": dict(zip(["0.001", "0.01", "0.1", "0.5", "0.9", "0.99", "0.999"],
                                            q.round(4).tolist()))}


def dark_statistics(frames: np.ndarray, iso: float, rng: np.random.Generator) -> DarkStats:
    """Decompose dark frames ``(F, H, W)`` in DN into shading, row, column and pixel noise.

    Subtracting a shading estimated from the same F frames also removes 1/F of each frame's random
    variance; random components are scaled back by √(F/(F−1)). One frame: no shading can be separated.
    """
    f, h, w = frames.shape
    frames = frames.astype(np.float64)
    if f >= 2:
        shading = frames.mean(axis=0)
        restore = np.sqrt(f / (f - 1))
    else:
        shading, restore = np.zeros((h, w)), 1.0
    res = frames - shading
    res -= res.mean(axis=(1, 2), keepdims=True)  # frame-wise offset (black-level flicker)
    rows, cols = res.mean(axis=2), res.mean(axis=1)
    pixel = res - rows[:, :, None] - cols[:, None, :]
    pixel_std = float(pixel.std() * restore)
    row = band_std(rows * restore, pixel_std**2 / w)
    col = band_std(cols * restore, pixel_std**2 / h)
    sample = rng.choice(pixel.ravel(), min(pixel.size, PROXY_SAMPLES), replace=False) * restore
    lam, tukey_std = tukey_fit(sample, rng)
    shading = shading - shading.mean()  # the mean offset is the black level's business
    return DarkStats(iso, f, shading.astype(np.float32), row, col, pixel_std, lam, tukey_std,
                     sample.astype(np.float32))


def flat_gain(flats: list[np.ndarray], shading: np.ndarray | None, dark_var: float) -> tuple[float, list]:
    """System gain K (DN/e⁻) from flat frames of one ISO, and the (mean, variance) points used.

    Frames are paired by similar mean level (within 5 %): half the variance of a pair's difference is
    the temporal noise at that level, free of shading and pixel-response non-uniformity. A level with a
    single frame uses that frame's variance after removing the dark shading (slightly high).
    """
    levels = sorted(flats, key=lambda x: float(x.mean()))
    points, i = [], 0
    while i < len(levels):
        a = levels[i].astype(np.float64)
        b = levels[i + 1].astype(np.float64) if i + 1 < len(levels) else None
        if b is not None and abs(b.mean() - a.mean()) <= 0.05 * max(a.mean(), 1e-9):
            points.append((0.5 * (a.mean() + b.mean()), 0.5 * np.var(a - b)))
            i += 2
        else:
            points.append((a.mean(), np.var(a - (shading if shading is not None else 0))))
            i += 1
    pts = np.asarray(points)
    signal, extra = pts[:, 0], pts[:, 1] - dark_var
    if not (signal > 0).any():
        raise InvalidImageError("the flat frames hold no signal above black")
    gain = float(np.sum(signal * extra) / np.sum(signal**2))
    if not gain > 0:
        raise InvalidImageError("the flat frames' noise does not grow with the signal; cannot measure a gain")
    return gain, pts.tolist()


# -- reading folders ---------------------------------------------------------------------------------

def load_raw_folder(folder: str | Path, what: str) -> dict[float, list[Image]]:
    """Every raw file in ``folder`` (not recursive), grouped by ISO (0 when the file does not say)."""
    from .. import io

    folder = Path(folder)
    if not folder.is_dir():
        raise QuietLensError(f"the {what} folder does not exist", folder)
    groups: dict[float, list[Image]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if io.sniff(path) != "raw":
            continue
        image = io.load(path)
        groups.setdefault(float(image.meta.get("iso") or 0), []).append(image)
    if not groups:
        raise QuietLensError(f"no raw files in the {what} folder", folder)
    first = next(iter(groups.values()))[0]
    for images in groups.values():
        for im in images:
            if im.data.shape != first.data.shape or im.meta["white_level"] != first.meta["white_level"]:
                raise InvalidImageError(f"{what} frames must come from one camera mode: {im.source.name} is "
                                        f"{im.data.shape}, {first.source.name} is {first.data.shape}", im.source)
    return groups


def _safe_name(text: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", (text or "").strip()).strip("-.").lower() or "camera"


# -- calibration -------------------------------------------------------------------------------------

def calibrate(dark_dir: str | Path, flat_dir: str | Path | None = None, name: str | None = None,
              steps: int = 400, seed: int = 0, log: Callable[[str], None] = lambda m: None) -> Path:
    """Calibrate a camera noise profile from dark (and optionally flat) frames; returns its folder."""
    from quietlens.models import pnnp as proxy  # torch: only calibration trains a network

    rng = np.random.default_rng(seed)
    darks = load_raw_folder(dark_dir, "dark-frame")
    first = next(iter(darks.values()))[0]
    per_iso: dict[float, DarkStats] = {}
    for iso, images in sorted(darks.items()):
        per_iso[iso] = dark_statistics(np.stack([to_dn(im) for im in images]), iso, rng)
        s = per_iso[iso]
        log(f"ISO {iso:g}: {s.frames} frames, row {s.row_std:.3g} DN, column {s.col_std:.3g} DN, "
            f"pixel {s.pixel_std:.3g} DN (Tukey λ {s.tukey_lambda:.3f})")
    gains: dict[float, float] = {}
    flat_points: dict[str, list] = {}
    if flat_dir is not None:
        for iso, images in sorted(load_raw_folder(flat_dir, "flat-frame").items()):
            dark = per_iso.get(iso)
            dark_var = dark.pixel_std**2 + dark.row_std**2 + dark.col_std**2 if dark else 0.0
            gains[iso], flat_points[f"{iso:g}"] = flat_gain([to_dn(im) for im in images],
                                                            dark.shading if dark else None, dark_var)
            log(f"ISO {iso:g}: gain K = {gains[iso]:.4g} DN/e- from {len(images)} flat frames")
    line = _gain_line(per_iso, gains)
    init = [float(np.log(per_iso[i].pixel_std / max(line[0] * i + line[1], 1e-9))) for i in sorted(per_iso)]
    model, fit = proxy.fit_pixel_proxy({i: s.residual for i, s in per_iso.items()}, line, steps=steps,
                                       seed=seed, init_log_scale=init)
    log(f"pixel-noise proxy fitted: distribution loss {fit['loss']:.4f}")
    folder = profiles_dir() / _safe_name(name or first.meta.get("unique_camera_model") or first.meta.get("model"))
    folder.mkdir(parents=True, exist_ok=True)
    proxy.export_onnx(model, folder / PROXY_FILE)
    doc = {
        "schema": PROFILE_SCHEMA, "name": folder.name,
        "camera": first.meta.get("summary", {}).get("camera"),
        "cfa_pattern": first.meta["cfa_pattern"], "raw_pattern": first.meta["raw_pattern"],
        "black_level_per_channel": first.meta["black_level_per_channel"],
        "white_level": first.meta["white_level"], "shape": list(first.data.shape),
        "isos": [], "gain_curve": {"k": line[0], "b": line[1], "isos": fit["isos"],
                                   "log_scale": fit["log_scale"]},
        "proxy": {"file": PROXY_FILE, "sha256": hashlib.sha256((folder / PROXY_FILE).read_bytes()).hexdigest(),
                  "steps": steps, "seed": seed, "loss": fit["loss"]},
        "flat_points": flat_points,
    }
    for iso, s in sorted(per_iso.items()):
        shading_file = f"shading_iso{iso:g}.npy"
        np.save(folder / shading_file, s.shading.astype(np.float16))
        doc["isos"].append({**s.to_json(), "gain": gains.get(iso), "shading": shading_file})
    _fill_gains(doc, gains)
    tmp = folder / ".profile.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(folder / "profile.json")
    return folder


def _gain_line(per_iso: dict[float, DarkStats], gains: dict[float, float]) -> tuple[float, float]:
    """(k, b) of g(ISO) = k·ISO + b: the system gain's line when flats measured it, else the line of
    the pixel noise's standard deviation (a single ISO gives a line through the origin)."""
    values = gains or {i: s.pixel_std for i, s in per_iso.items()}
    isos = np.array(sorted(values), np.float64)
    ys = np.array([values[i] for i in isos])
    if len(isos) >= 2 and np.ptp(isos) > 0:
        k, b = np.polyfit(isos, ys, 1)
        if k * min(min(per_iso), isos.min()) + b > 0:  # positive at every calibrated ISO
            return float(k), float(b)
    if isos[0] > 0:
        return float(np.sum(isos * ys) / np.sum(isos**2)), 0.0
    return 0.0, float(ys.mean())


def _fill_gains(doc: dict[str, Any], gains: dict[float, float]) -> None:
    """ISO settings without flats get K by proportion to ISO from those with (K ∝ analogue gain)."""
    measured = {i: g for i, g in gains.items() if i > 0}
    if not measured:
        return
    per_iso = sum(g / i for i, g in measured.items()) / len(measured)
    for entry in doc["isos"]:
        if entry["gain"] is None and entry["iso"] > 0:
            entry["gain"], entry["gain_source"] = per_iso * entry["iso"], "proportional to ISO"


# -- profiles and synthesis --------------------------------------------------------------------------

class Profile:
    """A calibrated camera noise profile (see the module docstring)."""

    def __init__(self, folder: Path, doc: dict[str, Any]):
        self.folder, self.doc = folder, doc
        self.isos = np.array([e["iso"] for e in doc["isos"]], np.float64)
        self._session = None

    @property
    def name(self) -> str:
        return str(self.doc.get("name") or self.folder.name)

    @property
    def camera(self) -> str | None:
        """The calibrated camera's make and model, as the loader names it."""
        return self.doc.get("camera")

    def covers(self, iso: float) -> bool:
        """Whether ``iso`` lies within the calibrated ISO settings (interpolated between them)."""
        return bool(len(self.isos)) and (self.isos.min() * (1 - ISO_TOLERANCE) <= iso
                                          <= self.isos.max() * (1 + ISO_TOLERANCE))

    @classmethod
    def load(cls, where: str | Path) -> "Profile":
        """A profile by name (in the user's profiles folder), by folder or by its profile.json."""
        path = Path(where)
        if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
            path = profiles_dir() / str(where)
        if path.is_dir():
            path = path / "profile.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise QuietLensError("no such noise profile (run `quietlens calibrate` first)", path) from None
        except (OSError, ValueError) as exc:
            raise QuietLensError(f"the noise profile cannot be read ({exc})", path) from exc
        if doc.get("schema") != PROFILE_SCHEMA:
            raise QuietLensError(f"unsupported noise profile schema {doc.get('schema')!r}", path)
        return cls(path.parent, doc)

    def _entry_value(self, iso: float, key: str) -> float:
        """A per-ISO statistic at ``iso``: log–log interpolation between calibrated settings."""
        values = np.array([e[key] for e in self.doc["isos"]], np.float64)
        if len(values) == 1 or iso <= 0 or (self.isos <= 0).any():
            return float(values[np.argmin(np.abs(self.isos - iso))])
        return float(np.exp(np.interp(np.log(iso), np.log(self.isos), np.log(np.maximum(values, 1e-12)))))

    def gain(self, iso: float) -> float | None:
        """System gain K (DN/e⁻) at ``iso``, or None when the profile was calibrated without flats."""
        known = [(e["iso"], e["gain"]) for e in self.doc["isos"] if e.get("gain")]
        if not known:
            return None
        isos, gains = np.array(known).T
        if iso > 0 and (isos > 0).all():
            return float(np.exp(np.interp(np.log(iso), np.log(isos), np.log(gains))))
        return float(gains[np.argmin(np.abs(isos - iso))])

    def proxy_gain(self, iso: float) -> float:
        """g(ISO) = (k·ISO + b)·exp(s_ISO), s interpolated between the calibrated settings."""
        curve = self.doc["gain_curve"]
        s = float(np.interp(iso, curve["isos"], curve["log_scale"]))
        return (curve["k"] * iso + curve["b"]) * float(np.exp(s))

    def shading(self, iso: float, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """The nearest calibrated ISO's dark shading, tiled or cropped (at an even offset) to ``shape``."""
        entry = self.doc["isos"][int(np.argmin(np.abs(self.isos - iso)))]
        pattern = np.load(self.folder / entry["shading"]).astype(np.float32)
        reps = (-(-shape[0] // pattern.shape[0]) + 1, -(-shape[1] // pattern.shape[1]) + 1)
        tiled = np.tile(pattern, reps)
        y = 2 * int(rng.integers(0, (tiled.shape[0] - shape[0]) // 2 + 1))
        x = 2 * int(rng.integers(0, (tiled.shape[1] - shape[1]) // 2 + 1))
        return tiled[y:y + shape[0], x:x + shape[1]]

    def pixel_noise(self, shape: tuple[int, int], iso: float, rng: np.random.Generator) -> np.ndarray:
        """Pixel-wise noise (DN) from the proxy network, run by ONNX Runtime."""
        if self._session is None:
            from .. import runtime

            path = self.folder / self.doc["proxy"]["file"]
            data = path.read_bytes() if path.is_file() else b""
            if hashlib.sha256(data).hexdigest() != self.doc["proxy"]["sha256"]:
                raise ModelError("the profile's noise proxy is missing or damaged; recalibrate", path)
            self._session = runtime.session(data, "cpu")
        x = rng.standard_normal((2, 1, 1, *shape), dtype=np.float32)
        gain = np.array([self.proxy_gain(iso)], np.float32)
        return self._session.run({"x_pre": x[0], "x_fol": x[1], "gain": gain})[0][0, 0]

    def synthesize(self, clean_dn: np.ndarray, iso: float, rng: np.random.Generator,
                   gain: float | None = None, shading: bool = True) -> np.ndarray:
        """A noisy version (DN, black-subtracted, rounded, clipped to the sensor's range) of a clean
        mosaic in this camera's black-subtracted DN."""
        k = gain or self.gain(iso)
        if not k:
            raise QuietLensError("the profile has no gain: calibrate with --flat DIR or give --gain K")
        h, w = clean_dn.shape
        noisy = k * rng.poisson(np.maximum(clean_dn, 0) / k).astype(np.float32)
        noisy += self.pixel_noise((h, w), iso, rng)
        noisy += rng.normal(0, self._entry_value(iso, "row_std"), (h, 1)).astype(np.float32)
        noisy += rng.normal(0, self._entry_value(iso, "col_std"), (1, w)).astype(np.float32)
        if shading:
            noisy += self.shading(iso, (h, w), rng)
        black = max(self.doc["black_level_per_channel"])
        return np.clip(np.rint(noisy), -min(self.doc["black_level_per_channel"]), self.doc["white_level"] - black)


# -- profiles as the noise model of a photo --------------------------------------------------------

ISO_TOLERANCE = 0.02  # a file's ISO may be rounded (3199 for 3200): this much outside the range still matches


def camera_key(text: str | None) -> str:
    """A camera name for comparisons: case and spacing do not matter."""
    return " ".join((text or "").lower().split())


@dataclass
class ProfileNoise:
    """A profile's noise model at one ISO, in the profile camera's black-subtracted DN: shot noise of gain
    ``K`` (None when the profile was calibrated without flat frames), pixel noise ``sigma`` (column noise
    folded in: it is not removed), per-row offsets of ``row`` standard deviation, and the dark shading
    when the photo's sensor area is the calibrated one."""

    name: str
    folder: str
    iso: float
    K: float | None
    sigma: float
    row: float
    span: float  # white − black of the profile camera (DN): divides DN into the loader's units
    shading: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "folder": self.folder, "iso": self.iso, "K": self.K, "sigma": self.sigma,
                "row": self.row, "span": self.span, "shading": self.shading is not None}


def _profile_noise(profile: "Profile", iso: float, shape: tuple[int, ...], cfa: str | None) -> ProfileNoise:
    doc = profile.doc
    span = float(doc["white_level"] - np.mean(doc["black_level_per_channel"]))
    sigma = float(np.hypot(profile._entry_value(iso, "pixel_std"), profile._entry_value(iso, "col_std")))
    shading = None
    if list(shape) == list(doc.get("shape", [])) and cfa == doc.get("cfa_pattern"):
        entry = doc["isos"][int(np.argmin(np.abs(profile.isos - iso)))]
        path = profile.folder / entry["shading"]
        if path.is_file():
            shading = np.load(path).astype(np.float32)
    return ProfileNoise(profile.name, str(profile.folder), float(iso), profile.gain(iso),
                        sigma, profile._entry_value(iso, "row_std"), span, shading)


def installed() -> list["Profile"]:
    """The readable profiles in the user's profiles folder, by name (damaged ones are left out: they must
    not stop a photo from being denoised)."""
    root = profiles_dir()
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if (folder / "profile.json").is_file():
            try:
                found.append(Profile.load(folder))
            except QuietLensError:
                continue
    return found


def profile_for(meta: dict[str, Any], shape: tuple[int, ...], choice: "str | Profile | None" = "auto"
                ) -> tuple[ProfileNoise | None, list[str], list[str]]:
    """The calibrated noise model for a raw photo, with notes and warnings for the user.

    ``choice``: ``"auto"`` looks in the user's profiles folder for one calibrated on the photo's camera
    (make and model) whose ISO range covers the photo's ISO; ``None`` or ``"none"`` uses none; a
    :class:`Profile` (or a name or path) is used when it fits the photo — a profile of another camera, or a
    photo without an ISO or outside the calibrated range, gets a warning and no profile, so the caller
    falls back to the blind estimate.
    """
    if choice is None or (isinstance(choice, str) and choice.lower() == "none"):
        return None, [], []
    camera, iso = meta.get("summary", {}).get("camera"), meta.get("iso")
    if isinstance(choice, str) and choice.lower() == "auto":
        same = [p for p in installed() if camera and camera_key(p.camera) == camera_key(camera)]
        fitting = [p for p in same if iso and p.covers(float(iso))]
        if fitting:
            chosen = fitting[0]
            return _profile_noise(chosen, float(iso), shape, meta.get("cfa_pattern")), [
                f"noise profile {chosen.name!r} matched by camera and ISO"], []
        if same:
            return None, [f"the profiles of this camera ({', '.join(p.name for p in same)}) do not cover "
                          f"{'ISO ' + format(iso, 'g') if iso else 'a photo without an ISO'}: blind estimate"], []
        return None, [], []
    profile = choice if isinstance(choice, Profile) else Profile.load(choice)
    if camera_key(profile.camera) != camera_key(camera):
        return None, [], [f"noise profile {profile.name!r} was calibrated on {profile.camera or 'an unnamed camera'}, "
                          f"this photo is from {camera or 'an unnamed camera'}: using the blind estimate instead"]
    if not iso:
        return None, [], [f"the photo does not record its ISO, so noise profile {profile.name!r} cannot be "
                          "applied: using the blind estimate instead"]
    if not profile.covers(float(iso)):
        lo, hi = profile.isos.min(), profile.isos.max()
        return None, [], [f"noise profile {profile.name!r} covers ISO {lo:g}–{hi:g}, this photo is ISO {iso:g}: "
                          "using the blind estimate instead"]
    return _profile_noise(profile, float(iso), shape, meta.get("cfa_pattern")), [], []


def synthesize_folder(clean_dir: str | Path, profile: Profile, out_dir: str | Path, isos: list[float] | None = None,
                      fmt: str = "dng", seed: int = 0, gain: float | None = None,
                      log: Callable[[str], None] = lambda m: None) -> list[Path]:
    """Noisy raw training data: every clean raw in ``clean_dir`` at each ISO, as DNG or .npz.

    The clean mosaic (normalised) is expressed in the profile camera's DN, so the noise statistics are
    the calibrated ones; the output carries the profile camera's black and white levels and the ISO.
    """
    from .. import io

    if fmt not in ("dng", "npz"):
        raise QuietLensError(f"unknown output format {fmt!r} (use dng or npz)")
    isos = isos or [float(i) for i in profile.isos]
    if gain is None and any(profile.gain(iso) is None for iso in isos):
        raise QuietLensError("the profile has no gain (it was calibrated without flat frames): "
                             "calibrate with --flat DIR or give --gain K")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for _, images in sorted(load_raw_folder(clean_dir, "clean").items()):
        for image in images:
            meta = {**image.meta, "black_level_per_channel": list(profile.doc["black_level_per_channel"]),
                    "white_level": profile.doc["white_level"]}
            scale = dn_scale(meta, image.data.shape)
            for iso in isos:
                noisy = profile.synthesize(image.data * scale, iso, rng, gain)
                dst = out_dir / f"{image.source.stem}_iso{iso:g}.{fmt}"
                if fmt == "dng":
                    out = image.with_data(noisy / scale, meta={**meta, "iso": iso}, source=None)
                    io.save(out, dst, overwrite=True)
                else:  # raw DN as the sensor would store them, the clean normalised mosaic, the levels
                    raw_dn = np.clip(np.rint(noisy + black_map(meta, noisy.shape)), 0, 65535).astype(np.uint16)
                    with io.atomic_path(dst, overwrite=True) as tmp:
                        np.savez_compressed(
                            tmp, noisy=raw_dn, clean=image.data, iso=iso, gain=gain or profile.gain(iso),
                            black_level_per_channel=meta["black_level_per_channel"],
                            raw_pattern=meta["raw_pattern"], white_level=meta["white_level"],
                            cfa_pattern=meta["cfa_pattern"], profile=profile.doc["name"])
                log(f"wrote {dst}")
                written.append(dst)
    return written
