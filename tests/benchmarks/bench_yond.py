"""YOND and PNNP on this machine: raw denoising against VST+BM3D, noise estimation, speed, synthesis.

Test images (clean references, packed RGGB planes in [0, 1]):
  * ``raw`` — the three real RAW files in ../shared/data/raw, made nearly noise-free (binned 2×2 as a
    mosaic, which quarters the noise variance, then VST+BM3D; cached), a centred 512² packed crop;
  * ``raw-binned`` — the same files binned 4×4 as a mosaic and nothing else (their own noise 16× lower in
    variance, far below the added noise; no denoiser's look in the reference, which the ``raw`` set's
    VST+BM3D references give to VST+BM3D), a centred crop of at most 512² packed pixels. Binned "as a
    mosaic" (``rawgen.bin_mosaic``): each colour's bins sit where a Bayer sensor with larger pixels
    would sample it, not all four colours at one place;
  * ``raw-halves`` — the ``raw`` set's scenes (binned 2×2 as a mosaic, the same crop) scored noise-to-noise:
    each 2×2 block's two checkerboard halves give two images of one scene with independent noise of their
    own (both centred on the block); the noise is added to one and the output scored against the other.
    The reference's own noise adds the same expected error to every output, so the ranking is unbiased
    and no denoiser's look is in the reference; the PSNR shown has that error taken out (the mean square
    difference of the halves, halved, per image: an upper bound, so it reads slightly low). SSIM is
    against the noisy half;
  * ``kodak24``, ``mcmaster`` — the evaluation photos unprocessed to raw by the training data's own camera
    simulation (``models.synth``: a random camera and exposure per photo, seeded), whole photos.

Noise: one "bench sensor" (14-bit, black 512, white 16383) at ISO 1600/6400/25600-like (K, σ) of the
typical sensor (``engine.noise.physics.iso_like``), with Tukey-λ read noise (λ = −0.1) and row noise
(0.15 σ). Each noisy image is written as a DNG of that sensor (with its ISO) and loaded back, as a user's
file would be. The sensor's profile is calibrated once by ``quietlens calibrate`` from dark and flat
frames of the same recipe (cached), and is what "yond profile" uses.

Rows per set and ISO (mean raw-domain PSNR dB / SSIM over images, peak = white): noisy; VST+BM3D given
yond's blind estimate (so only the denoiser differs); yond blind (the method's defaults, no profile);
yond without the fine estimation step (its first estimate kept); yond with the true (K, σ); yond with the
profile. Every yond column averages the views ``views=auto`` takes on this machine's provider. Noise
estimation: median |relative error| of K and σ of yond's first and final blind estimate.

Also: a full 9 MP frame through the CLI in a fresh process (seconds, MP/s, peak RSS) with BM3D's MP/s from
the crops; ``noise_scale`` monotonicity (residual energy and PSNR for 0.5…1.5); PNG renderings of each
real RAW file before/after `yond` at its own ISO (real noise); and PNNP dark-frame synthesis fidelity.

    .venv/bin/python tests/benchmarks/bench_yond.py [--sections dfnrs] [--sets raw,kodak24,mcmaster]
        [--limit N] [--threads N] [--cache DIR] [--out DIR]     (sets: raw, raw-binned, raw-halves, kodak24,
        mcmaster)

Timings are of this machine under whatever else runs on it.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/rawgen.py
from rawgen import bin_mosaic  # noqa: E402

ISOS = (1600, 6400, 25600)
CROP = 512  # packed pixels per side of the real-RAW crops
BLACK, WHITE = 512, 16383
SPAN = WHITE - BLACK
CAMERA = "QuietLens bench sensor"
TUKEY, ROW = -0.1, 0.15  # read-noise shape and row noise (× read σ) of the bench sensor
PROFILE_ISOS = (800, 1600, 3200, 6400, 12800, 25600, 51200)
SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


def shared_data() -> Path:
    return Path(os.environ.get("QUIETLENS_SHARED_DATA", HERE.parents[2] / "shared" / "data"))


def shared_raw() -> list[Path]:
    return sorted(p for p in (shared_data() / "raw").iterdir() if p.is_file())


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)), flush=True)


# -- test images and noise ---------------------------------------------------------------------------

def clean_reference(path: Path, cache: Path) -> np.ndarray:
    """A real RAW file's packed planes, binned 2×2 as a mosaic (:func:`rawgen.bin_mosaic`) and denoised by
    VST+BM3D (cached: it takes minutes)."""
    import bm3d

    from quietlens.engine.noise import estimate, vst

    cached = cache / f"{path.name}.mosaic2.clean.npy"
    if cached.is_file():
        return np.load(cached)
    binned = binned_reference(path, 2)
    fit = estimate.classical(binned, 1.0)
    t = vst.Vst(fit.gain, fit.read)
    clean = t.inverse(np.stack([bm3d.bm3d(z, t.nsr) for z in t.forward(binned)]))
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cached, clean)
    return clean


def binned_reference(path: Path, factor: int = 4, half: int | None = None) -> np.ndarray:
    """A real RAW file's packed planes binned ``factor``×``factor`` as a mosaic (:func:`rawgen.bin_mosaic`;
    ``half``: one checkerboard half of each block) and nothing else: its own noise variance falls
    ``factor``²-fold (half that for a half), and no denoiser's look is in the reference (the ``raw`` set's
    VST+BM3D references favour VST+BM3D)."""
    from quietlens.engine import io
    from quietlens.engine.noise import cfa

    image = io.load(path)
    return bin_mosaic(cfa.pack(image.data, image.meta["cfa_pattern"]), factor, half)


def test_sets(names: list[str], cache: Path, limit: int | None) -> dict[str, list[tuple]]:
    """{set: [(image name, clean packed planes[, the reference they are scored against when not those])]}."""
    from quietlens.models import synth

    def centred(planes: np.ndarray) -> np.ndarray:
        _, h, w = planes.shape
        y, x = max((h - CROP) // 2, 0), max((w - CROP) // 2, 0)
        return np.ascontiguousarray(np.clip(planes[:, y:y + CROP, x:x + CROP], 0, None))

    sets = {}
    for name in names:
        if name in ("raw", "raw-binned"):
            items = [(path.stem, centred(clean_reference(path, cache) if name == "raw" else binned_reference(path)))
                     for path in shared_raw()]
        elif name == "raw-halves":
            items = [(path.stem, *(centred(binned_reference(path, 2, half)) for half in (0, 1))) for path in shared_raw()]
        else:
            folder = shared_data() / "clean" / name
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in synth.IMAGE_SUFFIXES)
            items = []
            for i, path in enumerate(files[:limit]):
                rng = np.random.default_rng(1000 + i)  # the camera and exposure of this photo
                camera = synth.random_camera(rng)
                exposure = float(np.exp(-rng.uniform(0.0, np.log(12.0))))
                items.append((path.stem, synth.unprocess(synth.read_rgb(path), camera) * np.float32(exposure)))
        sets[name] = items[:limit]
    return sets


def sensor_noise(iso: float):
    from quietlens.engine.noise.physics import PhysicsNoise, iso_like

    gain, read = iso_like(iso)
    return PhysicsNoise(gain, read, tukey_lambda=TUKEY, row=ROW * read)


def as_dng(planes: np.ndarray, iso: float, path: Path):
    """Packed RGGB planes (normalised) → a 14-bit DNG of the bench sensor → the loaded Image."""
    from rawgen import write_dng

    from quietlens.engine import io
    from quietlens.engine.noise import cfa

    mosaic = cfa.unpack(planes, "RGGB", (2 * planes.shape[1], 2 * planes.shape[2]))
    write_dng(path, np.clip(np.rint(mosaic * SPAN + BLACK), 0, 65535), "RGGB", (BLACK,) * 4, WHITE, iso=int(iso))
    image = io.load(path)
    image.meta["summary"]["camera"] = CAMERA  # rawgen writes "Synthetic"; name the bench sensor
    return image


def bench_profile(cache: Path, steps: int) -> Path:
    """The bench sensor's profile from `quietlens calibrate` on dark and flat frames of its recipe (cached)."""
    from rawgen import write_dng

    from quietlens.engine.noise import pnnp
    from quietlens.engine.noise.physics import add_noise

    folder = cache / "profiles" / "bench-sensor"
    if (folder / "profile.json").is_file():
        return folder
    frames = cache / "calibration-frames"
    (frames / "dark").mkdir(parents=True, exist_ok=True)
    (frames / "flat").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(77)
    shape = (256, 384)
    for iso in PROFILE_ISOS:
        noise = sensor_noise(iso)
        for i in range(8):
            dark = add_noise(np.zeros(shape), noise, rng) * SPAN + BLACK
            write_dng(frames / "dark" / f"d{iso}_{i}.dng", np.clip(np.rint(dark), 0, WHITE), blacks=(BLACK,) * 4, white=WHITE, iso=iso)
        for level in (0.05, 0.2):
            for j in range(2):
                flat = add_noise(np.full(shape, level), noise, rng) * SPAN + BLACK
                write_dng(frames / "flat" / f"f{iso}_{level}_{j}.dng", np.clip(np.rint(flat), 0, WHITE), blacks=(BLACK,) * 4,
                          white=WHITE, iso=iso)
    before = os.environ.get("QUIETLENS_DATA")
    os.environ["QUIETLENS_DATA"] = str(cache)  # calibrate writes into the user data folder's profiles
    try:
        folder = pnnp.calibrate(frames / "dark", frames / "flat", name="bench-sensor", steps=steps)
    finally:
        if before is None:
            os.environ.pop("QUIETLENS_DATA")
        else:
            os.environ["QUIETLENS_DATA"] = before
    doc = pnnp.Profile.load(folder).doc
    doc["camera"] = CAMERA
    (folder / "profile.json").write_text(__import__("json").dumps(doc, indent=2) + "\n")
    return folder


# -- denoising and estimation -------------------------------------------------------------------------

def psnr(d: np.ndarray, c: np.ndarray) -> float:
    return 10 * np.log10(1 / max(float(np.mean((d - c) ** 2)), 1e-20))


def psnr_ssim(d: np.ndarray, c: np.ndarray, other_half: np.ndarray | None = None) -> tuple[float, float]:
    """PSNR and SSIM of ``d`` against ``c``; with ``other_half`` (a ``raw-halves`` item: ``c`` is the half
    the noise was added to) against that independent half, its own noise's expected error taken out."""
    from skimage.metrics import structural_similarity

    if other_half is None:
        return psnr(d, c), float(np.mean([structural_similarity(a, b, data_range=1.0) for a, b in zip(d, c)]))
    own = float(np.mean((c - other_half) ** 2)) / 2
    mse = max(float(np.mean((d - other_half) ** 2)) - own, 1e-20)
    return 10 * np.log10(1 / mse), float(np.mean([structural_similarity(a, b, data_range=1.0)
                                                   for a, b in zip(d, other_half)]))


def vst_bm3d(planes: np.ndarray, fit) -> np.ndarray:
    import bm3d

    from quietlens.engine.noise.vst import Vst

    v = Vst(fit.gain, fit.read)
    return v.inverse(np.stack([bm3d.bm3d(z, v.nsr) for z in v.forward(planes)]))


def denoising(sets: dict, profile: Path, tmp: Path, with_bm3d: bool) -> None:
    from quietlens.engine.methods import get
    from quietlens.engine.methods.yond import denoise_planes
    from quietlens.engine.noise import cfa
    from quietlens.engine.noise.estimate import NoiseFit
    from quietlens.engine.noise.physics import add_noise
    from quietlens.engine.progress import CancelToken, no_progress

    blind, profiled = get("yond", options={"profile": "none"}), get("yond", options={"profile": str(profile)})
    columns = ["noisy", "VST+BM3D", "yond blind", "yond no fine", "yond true", "yond profile"]
    rows, est_rows, all_err = [], [], {k: ([], []) for k in ("first", "final")}
    speed = {"yond": [0.0, 0.0], "bm3d": [0.0, 0.0]}  # seconds, MP
    for set_name, items in sets.items():
        for iso in ISOS:
            noise = sensor_noise(iso)
            scores = {c: [] for c in columns}
            errors = {k: ([], []) for k in ("first", "final")}
            for i, (name, clean, *other_half) in enumerate(items):
                rng = np.random.default_rng([iso, i, sum(map(ord, set_name))])
                mosaic = cfa.unpack(clean, "RGGB", (2 * clean.shape[1], 2 * clean.shape[2]))
                noisy_mosaic = np.minimum(add_noise(mosaic, noise, rng), (WHITE - BLACK) / SPAN)
                image = as_dng(cfa.pack(noisy_mosaic, "RGGB"), iso, tmp / "noisy.dng")
                planes = cfa.pack(image.data, "RGGB")
                mp = image.data.size / 1e6
                t0 = time.perf_counter()
                state = blind.prepare(image, no_progress, CancelToken(), "cpu")
                out = blind.run(image, state, {"strength": 1.0, "noise_scale": 1.0}, None, no_progress, CancelToken())
                speed["yond"][0] += time.perf_counter() - t0
                speed["yond"][1] += mp
                results = {"noisy": planes, "yond blind": cfa.pack(out.data, "RGGB"),
                           "yond no fine": denoise_planes(state.planes, state.initial, "cpu", "RGGB")}
                truth = NoiseFit(noise.gain, noise.read**2, SPAN, "truth", 1.0, 0)
                results["yond true"] = denoise_planes(planes, truth, "cpu", "RGGB")
                pstate = profiled.prepare(image, no_progress, CancelToken(), "cpu")
                assert pstate.source == "profile", pstate.warnings
                results["yond profile"] = cfa.pack(profiled.run(image, pstate, {"strength": 1.0, "noise_scale": 1.0},
                                                                None, no_progress, CancelToken()).data, "RGGB")
                if with_bm3d:
                    t0 = time.perf_counter()
                    results["VST+BM3D"] = vst_bm3d(planes, state.blind)
                    speed["bm3d"][0] += time.perf_counter() - t0
                    speed["bm3d"][1] += mp
                for c, d in results.items():
                    scores[c].append(psnr_ssim(d, clean, *other_half))
                for k, fit in (("first", state.initial), ("final", state.blind)):
                    for store in (errors[k], all_err[k]):
                        store[0].append(abs(fit.gain / noise.gain - 1))
                        store[1].append(abs(fit.read / noise.read - 1))
            rows.append([set_name, iso, len(items)] + [
                f"{np.mean([s[0] for s in scores[c]]):.2f} / {np.mean([s[1] for s in scores[c]]):.4f}"
                if scores[c] else "—" for c in columns])
            est_rows.append([set_name, iso] + [f"{100 * np.median(errors[k][j]):.1f}%"
                                               for k in ("first", "final") for j in (0, 1)])
    table("Raw denoising: mean PSNR dB / SSIM (packed planes, peak = white)", ["set", "ISO", "n", *columns], rows)
    table("Blind noise estimation: median |relative error|",
          ["set", "ISO", "first K", "first σ", "final K", "final σ"],
          est_rows + [["all", "", *(f"{100 * np.median(all_err[k][j]):.1f}%" for k in ("first", "final")
                                    for j in (0, 1))]])
    table("Speed on these images (yond: prepare + run of the method; BM3D: 4 planes)", ["method", "MP", "s", "MP/s"],
          [[k, f"{mp:.1f}", f"{s:.1f}", f"{mp / s:.3f}"] for k, (s, mp) in speed.items() if s])


def noise_scale(sets: dict, tmp: Path) -> None:
    """What ``noise_scale`` does: residual std (noisy − output, in units of the true noise) and PSNR."""
    from quietlens.engine.methods import get
    from quietlens.engine.noise import cfa
    from quietlens.engine.noise.physics import add_noise
    from quietlens.engine.progress import CancelToken, no_progress

    method = get("yond", options={"profile": "none"})
    rows = []
    for set_name, items in sets.items():
        iso = 6400
        noise = sensor_noise(iso)
        removed, psnrs = {s: [] for s in SCALES}, {s: [] for s in SCALES}
        for i, (_, clean, *other_half) in enumerate(items):
            rng = np.random.default_rng([iso, i, 7])
            mosaic = cfa.unpack(clean, "RGGB", (2 * clean.shape[1], 2 * clean.shape[2]))
            image = as_dng(cfa.pack(add_noise(mosaic, noise, rng), "RGGB"), iso, tmp / "scale.dng")
            state = method.prepare(image, no_progress, CancelToken(), "cpu")
            true_std = np.sqrt(noise.gain * np.maximum(mosaic, 0) + noise.read**2 + noise.row**2)
            for s in SCALES:
                out = method.run(image, state, {"strength": 1.0, "noise_scale": s}, None, no_progress, CancelToken())
                removed[s].append(float(np.std((image.data - out.data) / true_std)))
                psnrs[s].append(psnr_ssim(cfa.pack(out.data, "RGGB"), clean, *other_half)[0])
        rows.append([set_name, iso, *(f"{np.mean(removed[s]):.3f} / {np.mean(psnrs[s]):.2f}" for s in SCALES)])
    table("noise_scale: std of the removed part (units of the true noise) / PSNR dB",
          ["set", "ISO", *(f"×{s:g}" for s in SCALES)], rows)


# -- a full frame, renderings -------------------------------------------------------------------------

def full_frame(out: Path) -> None:
    """The largest real RAW file through the CLI in a fresh process: seconds, MP/s, peak RSS."""
    from quietlens.engine import io

    path = max(shared_raw(), key=lambda p: io.load(p).data.size)
    mp = io.load(path).data.size / 1e6
    dst = out / "full-frame.dng"
    dst.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "quietlens.engine.cli", "denoise", str(path), "-o", str(dst), "--method", "yond",
           "--profile", "none", "-q"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    table("Full frame through the CLI (fresh process: start-up, load, estimate, first pass on a strip, final "
          f"pass, DNG write; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
          ["file", "MP", "s", "MP/s", "CPU s", "peak RSS MiB"],
          [[path.name, f"{mp:.1f}", f"{seconds:.1f}", f"{mp / seconds:.2f}", f"{cpu:.1f}", f"{after.ru_maxrss / 1024:.0f}"]])


def renders(out: Path) -> None:
    """Each real RAW file before and after `yond` (its own noise and ISO) as a PNG pair."""
    import cv2

    from quietlens.engine import io, pipeline
    from quietlens.engine.io.raw import render

    rows = []
    for path in shared_raw():
        image = io.load(path)
        result = pipeline.denoise(image, "yond", {"strength": 1.0}, provider="cpu")
        for tag, im in (("before", image), ("after", result.image)):
            rgb = np.clip(render(im, half_size=False) * 255 + 0.5, 0, 255).astype(np.uint8)
            cv2.imwrite(str(out / f"{path.stem}_{tag}.png"), rgb[..., ::-1])
        n = result.state.noise
        rows.append([path.name, image.meta.get("iso") or "?", f"{n.K:.3g}", f"{n.sigma:.3g}", n.method,
                     f"{result.seconds['prepare'] + result.seconds['run']:.1f}"])
    table(f"Renderings (PNG pairs in {out})", ["file", "ISO", "K DN/e-", "σ DN", "estimate", "s"], rows)


# -- synthesis fidelity -------------------------------------------------------------------------------

RECIPES = {
    "tukey": dict(row=2.0, col=0.3, pixel=5.0, tukey_lambda=-0.2, shading=2.0, rtn=0.0),
    "tukey+rtn": dict(row=2.0, col=0.3, pixel=5.0, tukey_lambda=-0.2, shading=2.0, rtn=0.003),
}
SYNTH_ISOS = (800, 3200)
SHAPE = (256, 384)


def dark_stack(recipe: dict, iso: int, count: int, seed: int) -> np.ndarray:
    """Dark frames (DN above black) of a recipe; noise std scales with ISO/800; RTN pixels jump ±6σ."""
    from quietlens.engine.noise.physics import tukey_lambda_noise

    k = iso / 800
    shading = np.random.default_rng(7).normal(0, recipe["shading"] * k, SHAPE)
    rtn_pixels = np.random.default_rng(8).random(SHAPE) < recipe["rtn"]
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        f = (shading + rng.normal(0, recipe["row"] * k, (SHAPE[0], 1)) + rng.normal(0, recipe["col"] * k, (1, SHAPE[1]))
             + tukey_lambda_noise(rng, SHAPE, recipe["tukey_lambda"], recipe["pixel"] * k))
        f += rtn_pixels * rng.choice([-6.0, 6.0], SHAPE) * recipe["pixel"] * k
        frames.append(np.rint(f))
    return np.stack(frames)


def compare(real: np.ndarray, synth: np.ndarray) -> list[str]:
    """Quantile error (mean and worst, units of the real σ), row std (real → synth), KL(real‖synth)."""
    from scipy import stats

    probs = np.array([0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999])
    sigma = real.std()
    err = np.abs(np.quantile(synth, probs) - np.quantile(real, probs)) / sigma
    row_real = stats.probplot(real.mean(axis=2).ravel())[1][0]
    row_syn = stats.probplot(synth.mean(axis=2).ravel())[1][0]
    edges = np.arange(np.floor(min(real.min(), synth.min())) - 0.5, np.ceil(max(real.max(), synth.max())) + 1.5)
    p = np.histogram(real, edges)[0] + 0.5
    q = np.histogram(synth, edges)[0] + 0.5
    p, q = p / p.sum(), q / q.sum()
    kl = float(np.sum(p * np.log(p / q)))
    return [f"{err.mean():.3f}", f"{err.max():.3f}", f"{row_real:.2f}→{row_syn:.2f}", f"{kl:.4f}"]


def synthesis(tmp: Path, steps: int) -> None:
    from rawgen import write_dng

    from quietlens.engine.noise import pnnp
    from quietlens.engine.noise.physics import PhysicsNoise, add_noise

    os.environ["QUIETLENS_DATA"] = str(tmp / "data")
    rows = []
    for name, recipe in RECIPES.items():
        dark = tmp / f"dark-{name}"
        dark.mkdir()
        for iso in SYNTH_ISOS:
            for i, f in enumerate(dark_stack(recipe, iso, 16, seed=iso)):
                write_dng(dark / f"d{iso}_{i:02d}.dng", f + 512, blacks=(512,) * 4, white=16383, iso=iso)
        t0 = time.perf_counter()
        profile = pnnp.Profile.load(pnnp.calibrate(dark, name=name, steps=steps))
        t_cal = time.perf_counter() - t0
        for iso in SYNTH_ISOS:
            entry = next(e for e in profile.doc["isos"] if e["iso"] == iso)
            shading = np.load(profile.folder / entry["shading"]).astype(np.float32)
            real = dark_stack(recipe, iso, 8, seed=iso + 1) - shading
            rng = np.random.default_rng(0)
            zero = np.zeros(SHAPE, np.float32)
            candidates = {
                "PNNP": np.stack([profile.synthesize(zero, iso, rng, gain=1.0, shading=False) for _ in range(8)]),
                "Gaussian": np.rint(rng.normal(0, real.std(), real.shape)),
                "ELD physics": np.stack([add_noise(zero, PhysicsNoise(
                    1.0, entry["tukey_std"], entry["tukey_lambda"], entry["row_std"], entry["col_std"], 1.0), rng)
                    for _ in range(8)]),
            }
            for method, synth in candidates.items():
                rows.append([name, iso, method, *compare(real, synth)])
        rows.append([name, "", f"calibration {t_cal:.1f} s", "", "", "", ""])
    table(f"Dark-frame synthesis fidelity (16 frames calibrated, 8 fresh frames compared; PNNP {steps} steps)",
          ["recipe", "ISO", "model", "quantile err", "worst q err", "row std", "KL"], rows)


def cfa_phases(sets: dict, iso: float = 6400) -> None:
    """Each clean image's RGGB mosaic mirrored into the other three phases (the same scene), noise added:
    yond with the true (K, σ), its planes flipped to the layout the network learnt, and told RGGB's layout."""
    from quietlens.engine.methods.yond import denoise_planes
    from quietlens.engine.noise import cfa
    from quietlens.engine.noise.estimate import NoiseFit
    from quietlens.engine.noise.physics import add_noise

    noise = sensor_noise(iso)
    truth = NoiseFit(noise.gain, noise.read**2, SPAN, "truth", 1.0, 0)
    rows = []
    for set_name, items in sets.items():
        for phase, axes in (("RGGB", ()), ("GRBG", (1,)), ("GBRG", (0,)), ("BGGR", (0, 1))):
            scores = {"noisy": [], "layout": [], "as RGGB": []}
            for i, (_, clean, *_) in enumerate(items):
                mosaic = np.flip(cfa.unpack(clean, "RGGB", (2 * clean.shape[1], 2 * clean.shape[2])), axes)
                noisy = np.minimum(add_noise(mosaic, noise, np.random.default_rng([i, 7])), 1.0)
                planes, ref = cfa.pack(noisy, phase), cfa.pack(mosaic, phase)
                scores["noisy"].append(psnr(planes, ref))
                scores["layout"].append(psnr(denoise_planes(planes, truth, "cpu", phase), ref))
                scores["as RGGB"].append(psnr(denoise_planes(planes, truth, "cpu", "RGGB"), ref))
            rows.append([set_name, phase, *(f"{np.mean(v):.2f}" for v in scores.values())])
    table(f"CFA phases at ISO {iso:g} (yond with the true K, σ; mean PSNR dB): the network given the planes "
          "in its learnt layout, and in the file's own", ["set", "phase", "noisy", "flipped to RGGB",
                                                          "unflipped"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="dfnrs", help="d denoising + estimation, f full frame, "
                        "n noise_scale, c CFA phases, r renderings, s synthesis fidelity")
    parser.add_argument("--sets", default="raw,kodak24,mcmaster")
    parser.add_argument("--limit", type=int, help="at most this many images per set")
    parser.add_argument("--no-bm3d", action="store_true", help="leave VST+BM3D out (it takes most of the time)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ORT's choice)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "quietlens-bench")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "quietlens-bench" / "renders")
    parser.add_argument("--steps", type=int, default=400, help="PNNP proxy training steps")
    args = parser.parse_args()
    from quietlens.engine import runtime

    if args.threads:
        runtime.set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if any(c in args.sections for c in "dnc"):
            sets = test_sets(args.sets.split(","), args.cache, args.limit)
            if "d" in args.sections:
                denoising(sets, bench_profile(args.cache, args.steps), tmp, not args.no_bm3d)
            if "n" in args.sections:
                noise_scale(sets, tmp)
            if "c" in args.sections:
                cfa_phases(sets)
        if "f" in args.sections:
            full_frame(args.out)
        if "r" in args.sections:
            renders(args.out)
        if "s" in args.sections:
            synthesis(tmp, args.steps)


if __name__ == "__main__":
    main()
