"""Filter2Noise on real MR volumes and simulated low-dose CT, side by side with BM3D, BM4D and non-local means.

MR (real data, ``--only repeated real rician``):

* ``repeated``: nibabel's ``example4d.nii.gz`` holds two acquisitions of one EPI volume. The first is
  denoised and scored against the second (noise-to-noise: E|D(x₁) − x₂|² = MSE + σ²; σ² from the two
  acquisitions), reported as that value and the implied PSNR.
* ``real``: the 40-slice Toshiba DTI b0 series in ``../shared/data/mr_series/toshiba_b0``, pydicom-data's
  multi-frame ``emri_small`` and dipy's anisotropic ``aniso_vox`` (4 × 4 × 5 mm) with no reference: the
  residual's RMS against the image's own noise estimate, and its correlation with the result where the
  signal is (~0 when only noise was removed).
* ``rician``: Rician noise of known σ on toshiba_b0 and aniso_vox, scored against the volume itself.

F2N runs through the engine method exactly as users get it (3-D on volumes; "2-D" forces plane-by-plane
fitting and filtering; "2-D, pair loss" is the published loss F2N used on MR before). BM3D (slice by
slice), BM4D and 3-D NLM get their noise parameter tuned on the reference (best of a grid: an oracle a
user does not have); on the unreferenced real volumes they get the same noise estimate F2N measures.

CT (``ct``): real 512² slices that pydicom-data ships (two heads, a neck, an abdomen), converted to
attenuation, forward-projected (``skimage.transform.radon``, 720 views over 180°), given Poisson noise at
``--photons`` incident photons per ray, and reconstructed by filtered back-projection (ramp filter), so
the noise has CT's real streaky, correlated texture. The reference is the FBP of the noiseless sinogram,
compared inside the reconstruction circle, in HU clipped to [−1024, 3071].

``speed``: F2N 3-D end to end (fit included) on series of 256² slices in fresh processes, with the peak
resident memory. Times are wall-clock seconds on this machine.

    .venv/bin/python tests/benchmarks/bench_f2n.py                      # everything (~1 h on 2 cores)
    .venv/bin/python tests/benchmarks/bench_f2n.py --only repeated real
    .venv/bin/python tests/benchmarks/bench_f2n.py --only ct --ct 1     # one CT slice

Needs the ``bench`` extra (bm3d, bm4d, dipy).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import data_store  # pydicom-data's package
import nibabel as nib
import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means
from skimage.transform import iradon, radon

from quietlens.engine import io
from quietlens.engine.errors import QuietLensError
from quietlens.engine.image import Image
from quietlens.engine.methods import f2n as f2n_method
from quietlens.engine.noise.estimate import pixel_sigma
from quietlens.engine.progress import CancelToken, no_progress
from quietlens.models.f2n import FitConfig

REPO = Path(__file__).resolve().parents[2]
MR_SERIES = REPO.parent / "shared" / "data" / "mr_series" / "toshiba_b0"
SECTIONS = ("repeated", "real", "rician", "ct", "speed")
HU_RANGE = (-1024.0, 3071.0)
MU_WATER = 0.0192  # linear attenuation of water near 70 keV, per mm


def ct_slices() -> dict[str, Path]:
    """Real 512² CT slices shipped by pydicom / pydicom-data, by a short name."""
    import pydicom.data

    store = Path(data_store.__file__).parent / "data"
    tests = Path(pydicom.data.__file__).parent / "test_files"
    return {
        "head (CQ500)": store / "693_UNCI.dcm",
        "abdomen": store / "explicit_VR-UN.dcm",
        "neck": store / "bad_sequence.dcm",
        "head 2": tests / "J2K_pixelrep_mismatch.dcm",
    }


def read_hu(path: Path) -> tuple[np.ndarray, float]:
    ds = pydicom.dcmread(path)
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32), float(ds.PixelSpacing[0])


def simulate_low_dose(hu: np.ndarray, spacing: float, photons: float, views: int = 720,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(full-dose FBP, low-dose FBP, mask of the reconstruction circle), both in HU."""
    h, w = hu.shape
    yy, xx = np.mgrid[:h, :w]
    circle = (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 <= (min(h, w) / 2 - 1) ** 2
    mu = np.where(circle, np.clip(MU_WATER * (1 + np.clip(hu, -1024, None) / 1000), 0, None), 0) * spacing
    theta = np.linspace(0.0, 180.0, views, endpoint=False)
    sino = radon(mu, theta=theta, circle=True)
    counts = np.random.default_rng(seed).poisson(photons * np.exp(-sino))
    noisy = -np.log(np.maximum(counts, 1) / photons)

    def fbp(s: np.ndarray) -> np.ndarray:
        mu_hat = iradon(s, theta=theta, filter_name="ramp", circle=True) / spacing
        return ((mu_hat / MU_WATER - 1) * 1000).astype(np.float32)

    return fbp(sino), fbp(noisy), circle


def add_rician(clean: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape)).astype(np.float32)


def scores(ref: np.ndarray, out: np.ndarray, lo: float, hi: float,
           mask: np.ndarray | None = None) -> tuple[float, float]:
    """PSNR (inside ``mask``) and SSIM of ``out`` against ``ref``, both clipped to [lo, hi]."""
    r, o = np.clip(ref, lo, hi), np.clip(out, lo, hi)
    m = np.ones(ref.shape, bool) if mask is None else mask
    psnr = peak_signal_noise_ratio(r[m], o[m], data_range=hi - lo)
    ssims = [structural_similarity(a, b, data_range=hi - lo) for a, b in zip(r.reshape(-1, *r.shape[-2:]),
                                                                             o.reshape(-1, *o.shape[-2:]))]
    return float(psnr), float(np.mean(ssims))


def run_f2n(image: Image, edit: bool = False) -> tuple[np.ndarray, float, float, dict]:
    """F2N's output, prepare (fit) and run seconds, and facts: fit steps, fit CPU seconds (the fit is
    single-threaded, so on a shared machine this is what it would take alone) and, with ``edit``, a
    region edit's seconds and how many pixels it changed beyond the filter's reach of the region."""
    method = f2n_method.FilterToNoise()
    t0, c0 = time.perf_counter(), time.process_time()
    state = method.prepare(image, no_progress, CancelToken())
    t1, c1 = time.perf_counter(), time.process_time()
    out = method.run(image, state, {"strength": 1.0}, None, no_progress, CancelToken()).data
    t2 = time.perf_counter()
    facts = dict(state.fit, cpu=c1 - c0)
    if edit:  # σr × 2 in a 128² box: only the filter graph runs again
        h, w = image.data.shape
        box = np.zeros((h, w), bool)
        box[h // 4:h // 4 + 128, w // 4:w // 4 + 128] = True
        r = f2n_method.catalogue.load()[f2n_method.FILTER_MODEL].receptive_field  # both stages
        reach = np.zeros_like(box)
        reach[h // 4 - r:h // 4 + 128 + r, w // 4 - r:w // 4 + 128 + r] = True
        regions = {"stage1_sigma_r": np.where(box, 2.0, 1.0).astype(np.float32),
                   "stage2_sigma_r": np.where(box, 2.0, 1.0).astype(np.float32)}
        t = time.perf_counter()
        edited = method.run(image, state, {"strength": 1.0}, regions, no_progress, CancelToken()).data
        facts["edit_s"] = time.perf_counter() - t
        facts["edit_changed_outside"] = int((edited != out)[~reach].sum())
        facts["edit_changed_inside"] = int((edited != out)[box].sum())
    return out, t1 - t0, t2 - t1, facts


def tuned(denoise, noisy: np.ndarray, ref: np.ndarray, grid, score) -> tuple[np.ndarray, float, float]:
    """The best result of ``denoise(noisy, g)`` over ``grid`` by ``score`` (oracle tuning), the chosen ``g``
    and the seconds of that one call."""
    best = None
    for g in grid:
        t = time.perf_counter()
        out = denoise(noisy, g)
        dt = time.perf_counter() - t
        s = score(ref, out)
        if best is None or s > best[0]:
            best = (s, out, g, dt)
    return best[1], best[2], best[3]


def bm3d_slices(x: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d

    return np.stack([bm3d.bm3d(s, sigma_psd=sigma) for s in x.reshape(-1, *x.shape[-2:])]).reshape(x.shape)


def nlm_slices(x: np.ndarray, h: float, sigma: float) -> np.ndarray:
    return np.stack([denoise_nl_means(s, h=h, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)
                     for s in x.reshape(-1, *x.shape[-2:])]).reshape(x.shape).astype(np.float32)


def bench_ct(n: int, photons: float) -> list[tuple]:
    rows = []
    lo, hi = HU_RANGE
    for name, path in list(ct_slices().items())[:n]:
        hu, spacing = read_hu(path)
        full, low, circle = simulate_low_dose(hu, spacing, photons)
        noise = float((low - full)[circle].std())
        psnr_of = lambda ref, out: scores(ref, out, lo, hi, circle)[0]  # noqa: E731
        rows.append((f"CT {name}", "noisy", *scores(full, low, lo, hi, circle), "", f"σ {noise:.0f} HU"))
        out, fit_s, run_s, fit = run_f2n(Image(low, "ct", "HW", "dicom", spacing=(spacing, spacing)), edit=True)
        rows.append((f"CT {name}", "F2N", *scores(full, out, lo, hi, circle), fit_s + run_s,
                     f"fit {fit_s:.0f} s ({fit['iterations']} steps, CPU {fit['cpu']:.0f} s) + run {run_s:.2f} s; "
                     f"region edit {fit['edit_s']:.2f} s, changed {fit['edit_changed_inside']} px inside, "
                     f"{fit['edit_changed_outside']} beyond reach"))
        scale = hi - lo  # BM3D and NLM work on the same [0, 1] mapping as F2N
        norm = lambda x: (np.clip(x, lo, hi) - lo) / scale  # noqa: E731
        s = noise / scale
        out, g, dt = tuned(lambda x, f: bm3d_slices(x, f * s), norm(low), norm(full), (1.0, 1.5, 2.0, 2.5, 3.0),
                           lambda r, o: psnr_of(r * scale + lo, o * scale + lo))
        rows.append((f"CT {name}", "BM3D (oracle σ)", *scores(full, out * scale + lo, lo, hi, circle), dt,
                     f"σ = {g:g}·σtrue"))
        out, g, dt = tuned(lambda x, f: nlm_slices(x, f * s, s), norm(low), norm(full), (0.6, 0.8, 1.0, 1.2, 1.5),
                           lambda r, o: psnr_of(r * scale + lo, o * scale + lo))
        rows.append((f"CT {name}", "NLM (oracle h)", *scores(full, out * scale + lo, lo, hi, circle), dt,
                     f"h = {g:g}·σtrue"))
        print_rows(rows[-4:])
    return rows




# -- MR volumes ----------------------------------------------------------------------------------------

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


@contextmanager
def planes_only():
    """F2N as it treats single planes (2-D predictor and filter), for the 2-D vs 3-D comparison."""
    saved = f2n_method.MIN_DEPTH
    f2n_method.MIN_DEPTH = 1 << 30
    try:
        yield
    finally:
        f2n_method.MIN_DEPTH = saved


def f2n_variants(image: Image) -> list[tuple[str, np.ndarray, float, str]]:
    """(label, result, seconds, note) for 3-D F2N (the default on volumes), 2-D F2N (SURE fit, plane by
    plane) and 2-D F2N with the published pair loss (what F2N did on MR before the SURE fit)."""
    rows = []
    for label, config, flat in (("F2N 3-D", None, False), ("F2N 2-D", None, True),
                                ("F2N 2-D, pair loss", FitConfig(loss="pair"), True)):
        with planes_only() if flat else nullcontext():
            method = f2n_method.FilterToNoise(config)
            t = time.perf_counter()
            state = method.prepare(image, no_progress, CancelToken())
            out = method.run(image, state, {"strength": 1.0}, None, no_progress, CancelToken()).data
            dt = time.perf_counter() - t
        maps = method.artifacts(state)
        note = (f"{state.fit['iterations']} steps; σx {maps['stage1_sigma_x'].mean():.2f} px"
                + (f", σz {maps['stage1_sigma_z'].mean():.2f} px" if "stage1_sigma_z" in maps else ""))
        rows.append((label, out, dt, note))
    return rows


def bm4d_volume(x: np.ndarray, sigma: float) -> np.ndarray:
    import bm4d

    return np.asarray(bm4d.bm4d(x, sigma_psd=sigma), np.float32)


def nlm_volume(x: np.ndarray, h: float, sigma: float) -> np.ndarray:
    return denoise_nl_means(x, h=h, sigma=sigma, patch_size=3, patch_distance=3, fast_mode=True,
                            channel_axis=None).astype(np.float32)


def anchors(noisy: np.ndarray, sigma: float, score, grids=None) -> list[tuple[str, np.ndarray, float, str]]:
    """Slice-wise BM3D, BM4D and 3-D NLM with their noise parameter tuned by ``score`` (higher is better)
    over a grid of multiples of ``sigma`` (oracle tuning when ``score`` sees the reference)."""
    grids = grids or {"bm3d": (0.75, 1.0, 1.25), "bm4d": (0.75, 1.0, 1.25), "nlm": (0.6, 0.8, 1.0)}
    rows = []
    for label, fn, grid, what in (("BM3D slices (oracle)", lambda v, f: bm3d_slices(v, f * sigma), grids["bm3d"], "σ"),
                                  ("BM4D (oracle)", lambda v, f: bm4d_volume(v, f * sigma), grids["bm4d"], "σ"),
                                  ("NLM 3-D (oracle)", lambda v, f: nlm_volume(v, f * sigma, sigma), grids["nlm"], "h")):
        out, g, dt = tuned(fn, noisy, None, grid, lambda _, o: score(o))
        rows.append((label, out, dt, f"{what} = {g:g}·σ"))
    return rows


def bench_repeated() -> list[tuple]:
    """nibabel's example4d: two acquisitions of one EPI volume (24 × 96 × 128, 2 × 2 × 2.2 mm). Denoise the
    first, score against the second inside the brain (both non-zero): E|D(x1) − x2|² = MSE + σ², with
    σ² = E|x1 − x2|² / 2; the implied PSNR is 10·log10(p99.5² / (E|D(x1) − x2|² − σ²))."""
    img = io.load(NIBABEL_DATA / "example4d.nii.gz")
    top = float(np.percentile(img.data, 99.5))
    x1, x2 = img.data[0] / top, img.data[1] / top
    brain = (x1 > 0) & (x2 > 0)
    sigma2 = float(np.mean((x1 - x2)[brain] ** 2) / 2)

    def implied(out: np.ndarray) -> tuple[float, float]:
        n2n = float(np.mean((out - x2)[brain] ** 2))
        return n2n, 10 * np.log10(1 / max(n2n - sigma2, 1e-12))

    tag = "example4d (repeated)"
    rows = [(tag, "noisy (acquisition 1)", *implied(x1), "", f"σ = {np.sqrt(sigma2) * top:.1f} ({np.sqrt(sigma2) * 100:.2f} % of p99.5)")]
    vol = Image(np.ascontiguousarray(img.data[0]), "mr", "ZHW", "nifti", spacing=img.spacing[1:])
    for label, out, dt, note in f2n_variants(vol):
        rows.append((tag, label, *implied(out / top), dt, note))
    for label, out, dt, note in anchors(x1, np.sqrt(sigma2), lambda o: implied(o)[1],
                                        {"bm3d": (0.75, 1.0, 1.5), "bm4d": (0.75, 1.0, 1.5), "nlm": (0.6, 1.0, 1.4)}):
        rows.append((tag, label, *implied(out), dt, note))
    estimate = pixel_sigma(x1)  # what a single volume says its noise is (F2N fits against it)
    t = time.perf_counter()
    out = bm4d_volume(x1, estimate)
    rows.append((tag, "BM4D (σ estimate)", *implied(out), time.perf_counter() - t,
                 f"σ estimate {estimate * top:.1f} = {estimate / np.sqrt(sigma2):.1f}× the acquisitions' σ"))
    return rows


def residual_facts(noisy: np.ndarray, out: np.ndarray, sigma: float) -> tuple[float, float]:
    """(RMS of the residual / σ, correlation of the residual with the result where the signal is)."""
    r = out - noisy
    signal = noisy > np.median(noisy)
    return float(np.sqrt(np.mean(r * r)) / sigma), float(np.corrcoef(r[signal], out[signal])[0, 1])


def bench_real(names: list[str]) -> list[tuple]:
    """Real MR volumes without a reference: how much of the measured noise each method removes and whether
    the residual carries structure (its correlation with the result, ~0 when only noise was removed)."""
    sources = {"toshiba_b0": lambda: io.load(MR_SERIES),
               "emri_small": lambda: io.load(Path(data_store.__file__).parent / "data" / "emri_small.dcm"),
               "dipy aniso_vox": lambda: _dipy("aniso_vox")}
    rows = []
    for name in names:
        try:
            image = sources[name]()
        except (ImportError, FileNotFoundError, QuietLensError) as exc:
            print(f"{name}: skipped ({exc})")
            continue
        top = float(np.percentile(image.data, 99.5))
        x = image.data / top
        sigma = pixel_sigma(x.reshape(-1, *x.shape[-2:]))
        tag = f"{name} {'×'.join(map(str, image.data.shape))} (real)"
        rows.append((tag, "noisy", None, None, "", f"σ estimate {sigma * top:.1f} ({sigma * 100:.2f} % of p99.5)"))
        for label, out, dt, note in f2n_variants(image):
            rows.append((tag, label, *residual_facts(x, out / top, sigma), dt, note))
        for label, fn in (("BM3D slices (σ estimate)", lambda v: bm3d_slices(v, sigma)),
                          ("BM4D (σ estimate)", lambda v: bm4d_volume(v, sigma))):
            t = time.perf_counter()
            out = fn(x)
            rows.append((tag, label, *residual_facts(x, out, sigma), time.perf_counter() - t, "blind: σ as estimated"))
        print_rows(rows[-6:])
    return rows


def _dipy(name: str) -> Image:
    from dipy.data import get_fnames

    return io.load(get_fnames(name=name))


def bench_rician(levels: list[float]) -> list[tuple]:
    """Rician noise of known σ (a percentage of p99.5) on real MR volumes, scored against the volume itself
    (which carries its own, smaller noise): PSNR over the volume's max, mean SSIM of the slices."""
    volumes = [("toshiba_b0", lambda: io.load(MR_SERIES)), ("dipy aniso_vox", lambda: _dipy("aniso_vox"))]
    rows = []
    for name, load in volumes:
        try:
            image = load()
        except (ImportError, FileNotFoundError, QuietLensError) as exc:
            print(f"{name}: skipped ({exc})")
            continue
        clean = image.data
        top, peak = float(np.percentile(clean, 99.5)), float(clean.max())
        for pct in levels:
            sigma = pct / 100 * top
            noisy = add_rician(clean, sigma)
            tag = f"{name} + Rician σ {pct:g} %"
            rows.append((tag, "noisy", *scores(clean, noisy, 0.0, peak), "", ""))
            for label, out, dt, note in f2n_variants(image.with_data(noisy)):
                rows.append((tag, label, *scores(clean, out, 0.0, peak), dt, note))
            for label, out, dt, note in anchors(noisy / top, sigma / top,
                                                lambda o: scores(clean, o * top, 0.0, peak)[0]):
                rows.append((tag, label, *scores(clean, out * top, 0.0, peak), dt, note))
            print_rows(rows[-7:])
    return rows


# -- speed and memory ----------------------------------------------------------------------------------

def speed_child(depth: int, side: int) -> None:
    """One fresh process: F2N 3-D on a ``depth × side²`` MR series (toshiba_b0's slices resized, Rician
    noise 3 %), prepare + run; prints JSON with the seconds and the peak resident memory."""
    import cv2

    base = io.load(MR_SERIES).data
    slices = [cv2.resize(base[i % len(base)], (side, side), interpolation=cv2.INTER_CUBIC) for i in range(depth)]
    clean = np.clip(np.stack(slices), 0, None)
    noisy = add_rician(clean, 0.03 * float(np.percentile(clean, 99.5)))
    image = Image(noisy, "mr", "ZHW", "dicom", spacing=(3.0, 3.0 * 64 / side, 3.0 * 64 / side))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    method = f2n_method.FilterToNoise()
    t0, c0 = time.perf_counter(), time.process_time()
    state = method.prepare(image, no_progress, CancelToken())
    t1 = time.perf_counter()
    method.run(image, state, {"strength": 1.0}, None, no_progress, CancelToken())
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"depth": depth, "side": side, "fit_s": t1 - t0, "run_s": t2 - t1, "cpu_s": time.process_time() - c0,
                      "peak_mib": peak / 1024, "added_mib": (peak - before) / 1024, "steps": state.fit["iterations"]}))


def bench_speed(sizes: list[tuple[int, int]]) -> list[tuple]:
    rows = []
    for depth, side in sizes:
        out = subprocess.run([sys.executable, __file__, "--speed-child", str(depth), str(side)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        voxels = depth * side * side
        rows.append((f"{depth}×{side}² series", "F2N 3-D", r["fit_s"] + r["run_s"], r["peak_mib"], "",
                     f"fit {r['fit_s']:.1f} s ({r['steps']} steps) + run {r['run_s']:.1f} s; CPU {r['cpu_s']:.0f} s; "
                     f"memory added {r['added_mib']:.0f} MiB = {r['added_mib'] * 2**20 / voxels:.0f} B/voxel"))
        print_rows(rows[-1:])
    return rows


# -- output --------------------------------------------------------------------------------------------

HEADERS = {"ct": ("PSNR dB", "SSIM"), "rician": ("PSNR dB", "SSIM"), "repeated": ("E|D(x1)-x2|²", "PSNR dB"),
           "real": ("resid/σ", "corr"), "speed": ("s", "peak MiB")}


def print_rows(rows: list[tuple], header: tuple[str, str] | None = None) -> None:
    if header:
        print(f"| {'data':<34} | {'method':<24} | {header[0]:>12} | {header[1]:>8} | {'s':>6} | note")
        print(f"|{'-' * 36}|{'-' * 26}|{'-' * 14}|{'-' * 10}|{'-' * 8}|------")
    for data, meth, a, b, sec, note in rows:
        fa = f"{'—':>12}" if a is None else f"{a:12.3g}" if a < 1e-2 else f"{a:12.2f}" if a > 2 else f"{a:12.4f}"
        fb = f"{'—':>8}" if b is None else f"{b:8.4f}" if abs(b) < 2 else f"{b:8.2f}"
        fs = f"{sec:6.1f}" if isinstance(sec, float) else f"{sec:>6}"
        print(f"| {data:<34} | {meth:<24} | {fa} | {fb} | {fs} | {note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--ct", type=int, default=4, help="number of CT slices (at most 4)")
    parser.add_argument("--photons", type=float, default=1e5, help="incident photons per ray (dose)")
    parser.add_argument("--mr-levels", type=float, nargs="*", default=[3.0, 6.0], help="Rician σ, %% of p99.5")
    parser.add_argument("--real", nargs="*", default=["toshiba_b0", "emri_small", "dipy aniso_vox"])
    parser.add_argument("--speed-child", type=int, nargs=2, metavar=("DEPTH", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.speed_child:
        speed_child(*args.speed_child)
        return
    tables = {}
    runs = {"repeated": bench_repeated, "real": lambda: bench_real(args.real),
            "rician": lambda: bench_rician(args.mr_levels), "ct": lambda: bench_ct(args.ct, args.photons),
            "speed": lambda: bench_speed([(20, 256), (40, 256), (80, 256)])}
    for section in args.only:
        print(f"\n## {section}")
        tables[section] = runs[section]()
    for section, rows in tables.items():
        print(f"\n{section}:")
        print_rows(rows, HEADERS[section])


if __name__ == "__main__":
    main()
