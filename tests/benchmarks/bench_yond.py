"""YOND and PNNP on this machine: noise estimation, raw denoising, and dark-frame synthesis fidelity.

1. Estimation. Each real RAW file in ../shared/data/raw is made nearly noise-free (its packed planes
   binned 2×2, which quarters the noise variance, then VST+BM3D), and Poisson–Gaussian noise of known
   (K, σ) is added at ISO 100…12800-like levels of a typical 14-bit sensor (engine.noise.physics.iso_like).
   Relative errors of K and σ for CNE coarse (as published), the classical estimator, `initial` (the
   lower-noise one of those two, the method's start), CNE fine after the method's first SNR-Net pass
   fitted as published ("fine LS") and robustly ("fine"), and `yond`, the method's final choice (the
   fine estimate when it predicts less noise than the initial one).
2. Denoising. The same pairs, on a 512×512 packed crop: raw-domain PSNR/SSIM (peak = white, packed
   planes) of the noisy input, `yond` (blind: its own estimate) and VST+BM3D given yond's final noise
   estimate (so only the denoiser differs); seconds and megapixels (of mosaic) per second. Then one
   full-frame `yond` run through the CLI pipeline on the largest file.
3. Synthesis. Dark frames with a known recipe (dark shading + row noise + Tukey-lambda read noise,
   and a second recipe adding 0.3 % random-telegraph pixels) at two ISOs are calibrated into a profile;
   fresh frames of the same recipe are compared with frames synthesised by PNNP, a plain Gaussian of the
   same standard deviation and the ELD-style physics model (PPCC Tukey-lambda + row noise + rounding),
   all after subtracting the calibrated shading: quantile error in units of σ, row-noise std, KL.

    .venv/bin/python tests/benchmarks/bench_yond.py [--threads N] [--sections 123]

Timings are of this machine under whatever else runs on it.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/rawgen.py

ISOS = (100, 400, 1600, 6400, 12800)
CROP = 512  # packed pixels per side for the denoising comparison


def shared_raw() -> list[Path]:
    root = Path(os.environ.get("QUIETLENS_SHARED_DATA", HERE.parents[2] / "shared" / "data")) / "raw"
    return sorted(p for p in root.iterdir() if p.is_file())


def clean_reference(path: Path, cache: Path) -> np.ndarray:
    """The file's packed planes, binned 2×2 and denoised by VST+BM3D (cached: it takes minutes)."""
    import bm3d

    from quietlens.engine import io
    from quietlens.engine.noise import cfa, estimate, vst

    cached = cache / f"{path.name}.clean.npy"
    if cached.is_file():
        return np.load(cached)
    image = io.load(path)
    p = cfa.pack(image.data, image.meta["cfa_pattern"])
    h, w = p.shape[1] // 2 * 2, p.shape[2] // 2 * 2
    binned = 0.25 * (p[:, 0:h:2, 0:w:2] + p[:, 1:h:2, 0:w:2] + p[:, 0:h:2, 1:w:2] + p[:, 1:h:2, 1:w:2])
    fit = estimate.classical(binned, 1.0)
    t = vst.Vst(fit.gain, fit.read)
    clean = t.inverse(np.stack([bm3d.bm3d(z, t.nsr) for z in t.forward(binned)]))
    cache.mkdir(parents=True, exist_ok=True)
    np.save(cached, clean)
    return clean


def rel(a: float, b: float) -> float:
    return a / b - 1


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))


def pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


# -- 1 and 2: estimation and denoising ---------------------------------------------------------------

def estimation_and_denoising(files: list[Path], cache: Path, sections: str) -> None:
    import bm3d
    from skimage.metrics import structural_similarity

    from quietlens.engine.methods.yond import denoise_planes
    from quietlens.engine.noise import estimate, physics

    kinds = ("coarse", "classical", "initial", "fine LS", "fine", "yond")
    est_rows, den_rows, errors = [], [], {k: ([], []) for k in kinds}
    for path in files:
        clean = np.clip(clean_reference(path, cache), 0, None)
        for iso in ISOS:
            gain, read = physics.iso_like(iso)
            rng = np.random.default_rng(iso)
            noisy = physics.add_noise(clean, physics.PhysicsNoise(gain, read), rng)
            if "1" in sections:
                start = estimate.initial(noisy, 1.0)
                first = denoise_planes(noisy, start, "cpu")
                fits = {"coarse": estimate.cne_coarse(noisy, 1.0), "classical": estimate.classical(noisy, 1.0),
                        "initial": start, "fine LS": estimate.cne_fine(noisy, first, start, robust=False),
                        "fine": estimate.cne_fine(noisy, first, start), "yond": estimate.refine(noisy, first, start)}
                row = [path.name, iso, f"{gain:.2e}", f"{read:.2e}"]
                for k, f in fits.items():
                    errors[k][0].append(abs(rel(f.gain, gain)))
                    errors[k][1].append(abs(rel(f.read, read)))
                    row += [pct(rel(f.gain, gain)), pct(rel(f.read, read))]
                est_rows.append(row)
            if "2" in sections:
                den_rows.append([path.name, iso, *denoise_crop(noisy, clean, bm3d, structural_similarity)])
    if est_rows:
        table("Noise estimation: relative error of K and σ (synthetic noise on real raw content)",
              ["file", "ISO", "K", "σ", *(f"{k} {q}" for k in kinds for q in ("K", "σ"))], est_rows)
        table("Median |relative error|", ["estimator", "K", "σ"],
              [[k, f"{100 * np.median(g):.1f}%", f"{100 * np.median(s):.1f}%"] for k, (g, s) in errors.items()])
    if den_rows:
        table(f"Denoising on a {CROP}×{CROP} packed crop ({4 * CROP * CROP / 1e6:.2f} MP of mosaic): "
              "PSNR dB / SSIM / seconds / MP/s",
              ["file", "ISO", "noisy", "yond", "yond s", "yond MP/s", "VST+BM3D", "BM3D s", "BM3D MP/s"], den_rows)


def denoise_crop(noisy: np.ndarray, clean: np.ndarray, bm3d, ssim) -> list[str]:
    from quietlens.engine.methods.yond import denoise_planes
    from quietlens.engine.noise import estimate, vst

    _, h, w = noisy.shape
    y, x = max((h - CROP) // 2, 0), max((w - CROP) // 2, 0)
    n, c = noisy[:, y:y + CROP, x:x + CROP], clean[:, y:y + CROP, x:x + CROP]
    mp = 4 * n.shape[1] * n.shape[2] / 1e6

    def score(d: np.ndarray) -> str:
        psnr = 10 * np.log10(1 / np.mean((d - c) ** 2))
        s = np.mean([ssim(a, b, data_range=1.0) for a, b in zip(d, c)])
        return f"{psnr:.2f}/{s:.4f}"

    t0 = time.perf_counter()
    start = estimate.initial(n, 1.0)
    first = denoise_planes(n, start, "cpu")
    fit = estimate.refine(n, first, start)
    out = denoise_planes(n, fit, "cpu", bias_at=first)
    t_yond = time.perf_counter() - t0
    t0 = time.perf_counter()
    v = vst.Vst(fit.gain, fit.read)
    bm = v.inverse(np.stack([bm3d.bm3d(z, v.nsr) for z in v.forward(n)]))
    t_bm = time.perf_counter() - t0
    return [score(n), score(out), f"{t_yond:.1f}", f"{mp / t_yond:.2f}", score(bm), f"{t_bm:.1f}", f"{mp / t_bm:.3f}"]


def full_frame(files: list[Path]) -> None:
    from quietlens.engine import io, pipeline

    image = max((io.load(p) for p in files), key=lambda im: im.data.size)
    path = image.source
    t0 = time.perf_counter()
    result = pipeline.denoise(image, "yond", provider="cpu")
    seconds = time.perf_counter() - t0
    mp = image.data.size / 1e6
    noise = result.state.noise
    table("Full frame, `yond` through the pipeline (estimate + 2 SNR-Net passes)",
          ["file", "MP", "prepare s", "run s", "total s", "MP/s", "K (DN/e)", "σ (DN)"],
          [[path.name, f"{mp:.1f}", f"{result.seconds['prepare']:.1f}", f"{result.seconds['run']:.1f}",
            f"{seconds:.1f}", f"{mp / seconds:.2f}", f"{noise.K:.3g}", f"{noise.sigma:.3g}"]])


# -- 3: synthesis fidelity ---------------------------------------------------------------------------

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ORT's choice)")
    parser.add_argument("--sections", default="123", help="which parts to run: 1 estimation, 2 denoising, 3 synthesis")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "quietlens-bench")
    parser.add_argument("--steps", type=int, default=400, help="PNNP proxy training steps")
    args = parser.parse_args()
    from quietlens.engine import runtime

    if args.threads:
        runtime.set_threads(args.threads)
    files = shared_raw()
    if "1" in args.sections or "2" in args.sections:
        estimation_and_denoising(files, args.cache, args.sections)
    if "2" in args.sections:
        full_frame(files)
    if "3" in args.sections:
        with tempfile.TemporaryDirectory() as tmp:
            synthesis(Path(tmp), args.steps)


if __name__ == "__main__":
    main()
