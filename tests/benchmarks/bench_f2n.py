"""Filter2Noise against BM3D and non-local means on simulated low-dose CT and noisy MRI.

CT: real 512² slices that pydicom-data ships (four patients: two heads, a neck, an abdomen). Each is
converted to attenuation, forward-projected (``skimage.transform.radon``, 720 views over 180°), given
Poisson noise at ``--photons`` incident photons per ray, and reconstructed by filtered back-projection
(ramp filter), so the noise has CT's real streaky, correlated texture. The reference is the FBP of the
noiseless sinogram (same discretisation), compared inside the reconstruction circle.

MR: the real 40-slice Toshiba DTI b0 series in ``../shared/data/mr_series/toshiba_b0`` (64² slices)
with Rician noise of known σ (a percentage of the series' 99.5th percentile).

F2N runs through the engine method exactly as users get it (default fit settings, nothing tuned per
image). BM3D and NLM get their noise parameter tuned *on the ground truth* (best of a grid), which
favours them. PSNR/SSIM: CT in HU clipped to [−1024, 3071] (range 4095); MR with the clean series'
maximum as the range. Times are wall-clock seconds per slice on this machine.

    .venv/bin/python tests/benchmarks/bench_f2n.py            # everything (~15 min on 2 cores)
    .venv/bin/python tests/benchmarks/bench_f2n.py --ct 1 --no-mr   # one CT slice
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means
from skimage.transform import iradon, radon

from quietlens.engine.image import Image
from quietlens.engine.methods import f2n as f2n_method
from quietlens.engine.progress import CancelToken, no_progress

REPO = Path(__file__).resolve().parents[2]
MR_SERIES = REPO.parent / "shared" / "data" / "mr_series" / "toshiba_b0"
HU_RANGE = (-1024.0, 3071.0)
MU_WATER = 0.0192  # linear attenuation of water near 70 keV, per mm


def ct_slices() -> dict[str, Path]:
    """Real 512² CT slices shipped by pydicom / pydicom-data, by a short name."""
    import data_store  # pydicom-data's package
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
        rows.append((f"CT {name}", "noisy", *scores(full, low, lo, hi, circle), "", "", f"σ {noise:.0f} HU"))
        out, fit_s, run_s, fit = run_f2n(Image(low, "ct", "HW", "dicom", spacing=(spacing, spacing)), edit=True)
        rows.append((f"CT {name}", "F2N", *scores(full, out, lo, hi, circle), fit_s, run_s,
                     f"{fit['iterations']} steps, fit CPU {fit['cpu']:.0f} s; region edit {fit['edit_s']:.2f} s, "
                     f"changed {fit['edit_changed_inside']} px inside, {fit['edit_changed_outside']} beyond reach"))
        scale = hi - lo  # BM3D and NLM work on the same [0, 1] mapping as F2N
        norm = lambda x: (np.clip(x, lo, hi) - lo) / scale  # noqa: E731
        s = noise / scale
        out, g, dt = tuned(lambda x, f: bm3d_slices(x, f * s), norm(low), norm(full), (1.0, 1.5, 2.0, 2.5, 3.0),
                           lambda r, o: psnr_of(r * scale + lo, o * scale + lo))
        rows.append((f"CT {name}", "BM3D (oracle σ)", *scores(full, out * scale + lo, lo, hi, circle), "", dt,
                     f"σ = {g:g}·σtrue"))
        out, g, dt = tuned(lambda x, f: nlm_slices(x, f * s, s), norm(low), norm(full), (0.6, 0.8, 1.0, 1.2, 1.5),
                           lambda r, o: psnr_of(r * scale + lo, o * scale + lo))
        rows.append((f"CT {name}", "NLM (oracle h)", *scores(full, out * scale + lo, lo, hi, circle), "", dt,
                     f"h = {g:g}·σtrue"))
        print_rows(rows[-4:])
    return rows


def bench_mr(levels: list[float]) -> list[tuple]:
    files = sorted(MR_SERIES.glob("*.dcm"))
    if not files:
        print(f"MR series not found at {MR_SERIES}; skipped")
        return []
    dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))
    clean = np.stack([apply_modality_lut(d.pixel_array, d).astype(np.float32) for d in dss])
    top = float(np.percentile(clean, 99.5))
    rows = []
    for pct in levels:
        sigma = pct / 100 * top
        noisy = add_rician(clean, sigma)
        tag = f"MR b0 {len(dss)}×64², σ={pct:g}%"
        psnr_of = lambda ref, out: scores(ref, out, 0.0, float(clean.max()))[0]  # noqa: E731
        rows.append((tag, "noisy", *scores(clean, noisy, 0.0, float(clean.max())), "", "", ""))
        out, fit_s, run_s, fit = run_f2n(Image(noisy, "mr", "ZHW", "dicom"))
        per = len(dss)
        rows.append((tag, "F2N", *scores(clean, out, 0.0, float(clean.max())), fit_s, run_s / per,
                     f"{fit['iterations']} steps on 3 slices, fit CPU {fit['cpu']:.0f} s; run s/slice"))
        s = sigma / top
        x, ref = noisy / top, clean / top
        out, g, dt = tuned(lambda v, f: bm3d_slices(v, f * s), x, ref, (0.75, 1.0, 1.25, 1.5),
                           lambda r, o: psnr_of(r * top, o * top))
        rows.append((tag, "BM3D (oracle σ)", *scores(clean, out * top, 0.0, float(clean.max())), "", dt / per,
                     f"σ = {g:g}·σtrue; s/slice"))
        out, g, dt = tuned(lambda v, f: nlm_slices(v, f * s, s), x, ref, (0.6, 0.8, 1.0, 1.2, 1.5),
                           lambda r, o: psnr_of(r * top, o * top))
        rows.append((tag, "NLM (oracle h)", *scores(clean, out * top, 0.0, float(clean.max())), "", dt / per,
                     f"h = {g:g}·σtrue; s/slice"))
        print_rows(rows[-4:])
    return rows


def print_rows(rows: list[tuple], header: bool = False) -> None:
    if header:
        print(f"| {'image':<26} | {'method':<16} | {'PSNR dB':>7} | {'SSIM':>6} | {'fit s':>6} | {'run s':>6} | note")
        print(f"|{'-' * 28}|{'-' * 18}|{'-' * 9}|{'-' * 8}|{'-' * 8}|{'-' * 8}|------")
        return
    for img, meth, p, s, fit, run, note in rows:
        fmt = lambda v: f"{v:6.2f}" if isinstance(v, float) else f"{v:>6}"  # noqa: E731
        print(f"| {img:<26} | {meth:<16} | {p:7.2f} | {s:6.4f} | {fmt(fit)} | {fmt(run)} | {note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=int, default=4, help="number of CT slices (at most 4)")
    parser.add_argument("--photons", type=float, default=1e5, help="incident photons per ray (dose)")
    parser.add_argument("--mr-levels", type=float, nargs="*", default=[3.0, 6.0], help="Rician σ, %% of p99.5")
    parser.add_argument("--no-mr", action="store_true")
    args = parser.parse_args()
    print_rows([], header=True)
    rows = bench_ct(args.ct, args.photons) if args.ct else []
    if not args.no_mr:
        rows += bench_mr(args.mr_levels)
    print("\nall rows:")
    print_rows([], header=True)
    print_rows(rows)


if __name__ == "__main__":
    main()
