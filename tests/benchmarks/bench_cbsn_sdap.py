"""C-BSN and SDAP: quality on real noisy/clean sRGB pairs, adaptation, speed and memory, ORT vs PyTorch.

    .venv/bin/python tests/benchmarks/bench_cbsn_sdap.py [--threads 2] [--adapt-minutes 5]
        [--skip-bm3d] [--skip-adapt] [--skip-quality] [--skip-speed] [--teacher-max-mp 24]

Quality (../shared/data/srgb_pairs, SIDD and Canon 5D Mark III ISO 3200; mean PSNR dB / SSIM per set):
the noisy input; non-local means (skimage) and BM3D (the ``bm3d`` package), both with σ estimated
blindly and then scaled by a factor tuned per data set on the clean references (an oracle the learned
methods do not get; BM3D's factor is tuned on 128² centre crops, as it takes ~1 min per 512² image);
the shipped cbsn/sdap teacher and student; and both again after ``quietlens train`` on that data set's
own noisy images (self-supervised; the clean references are only used for scoring) for
``--adapt-minutes`` each (a wall-clock budget that the trainer turns into a fixed step count after
timing a few steps).

Speed: every row in a fresh process (so its peak RSS is its own), the full engine path (standardise,
tiled ONNX Runtime inference, de-standardise) on a 4:3 photo of 1, 12 and 24 MP. Teachers above
``--teacher-max-mp`` are extrapolated linearly from the largest size measured (tiling makes time linear
in the pixel count and memory flat). The CPU may be shared with other jobs: timings are upper bounds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
PAIRS = REPO.parent / "shared" / "data" / "srgb_pairs"
NETS = [("cbsn", 1, "cbsn teacher"), ("cbsn", 2, "cbsn student"), ("sdap", 1, "sdap teacher"),
        ("sdap", 2, "sdap student")]


def load_pairs() -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    from quietlens.engine import io

    sets = {}
    for folder in sorted(p for p in PAIRS.iterdir() if p.is_dir()):
        rows = []
        for noisy in sorted(folder.glob("*_noisy.png")):
            clean = noisy.with_name(noisy.name.replace("_noisy", "_clean"))
            rows.append((str(noisy), io.load(noisy).data, io.load(clean).data))
        sets[folder.name] = rows
    return sets


def scores(clean: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    out = np.clip(out, 0, 1)
    return (peak_signal_noise_ratio(clean, out, data_range=1),
            structural_similarity(clean, out, channel_axis=2, data_range=1))


def mean_scores(rows, outputs) -> tuple[float, float]:
    s = [scores(clean, out) for (_, _, clean), out in zip(rows, outputs)]
    return float(np.mean([a for a, _ in s])), float(np.mean([b for _, b in s]))


def sigma_estimate(noisy: np.ndarray) -> float:
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(noisy, channel_axis=-1, average_sigmas=True))


def nlm(noisy: np.ndarray, factor: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    sigma = sigma_estimate(noisy)
    return denoise_nl_means(noisy, h=factor * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                            channel_axis=-1, fast_mode=True).astype(np.float32)


def bm3d_rgb(noisy: np.ndarray, factor: float) -> np.ndarray:
    import bm3d

    return np.asarray(bm3d.bm3d_rgb(noisy, factor * sigma_estimate(noisy)), np.float32)


def tuned(rows, fn, factors, crop: int | None = None):
    """The factor with the best mean PSNR against the clean references (on centre crops if ``crop``),
    and that factor's outputs on the full images."""
    def centre(a):
        if crop is None:
            return a
        y, x = (a.shape[0] - crop) // 2, (a.shape[1] - crop) // 2
        return a[max(y, 0):y + crop, max(x, 0):x + crop]

    best = max(factors, key=lambda f: np.mean([scores(centre(c), fn(centre(n), f))[0] for _, n, c in rows]))
    return best, [fn(n, best) for _, n, _ in rows]


def engine_outputs(rows, method: str, network: int, model: str | None = None) -> list[np.ndarray]:
    from quietlens.engine import pipeline
    from quietlens.engine.image import Image
    from quietlens.engine.methods import get

    m = get(method).with_model(model) if model else get(method)
    return [pipeline.denoise(Image(n, "photo", "HWC", "png"), m, {"network": network}, provider="cpu").image.data
            for _, n, _ in rows]


def quality(args) -> None:
    sets = load_pairs()
    table: dict[str, dict[str, tuple[float, float]]] = {}
    notes = []

    def add(name, subset, value):
        table.setdefault(name, {})[subset] = value

    for subset, rows in sets.items():
        add("noisy input", subset, mean_scores(rows, [n for _, n, _ in rows]))
        t = time.perf_counter()
        factor, outs = tuned(rows, nlm, (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 14.0))
        add("NLM (σ est. × tuned factor)", subset, mean_scores(rows, outs))
        notes.append(f"NLM {subset}: factor {factor} ({time.perf_counter() - t:.0f} s with tuning)")
        if not args.skip_bm3d:
            t = time.perf_counter()
            factor, outs = tuned(rows, bm3d_rgb, (1.0, 2.0, 4.0, 6.0, 8.0, 11.0, 16.0, 24.0), crop=128)
            add("BM3D (σ est. × tuned factor)", subset, mean_scores(rows, outs))
            notes.append(f"BM3D {subset}: factor {factor} ({time.perf_counter() - t:.0f} s with tuning)")
        for method, network, label in NETS:
            t = time.perf_counter()
            add(f"shipped {label}", subset, mean_scores(rows, engine_outputs(rows, method, network)))
            notes.append(f"shipped {label} {subset}: {time.perf_counter() - t:.1f} s")
        print(f"[{subset} done]", flush=True)

    if not args.skip_adapt:
        from quietlens.engine.train import train_model

        data_root = Path(tempfile.mkdtemp(prefix="quietlens-bench-"))
        os.environ["QUIETLENS_DATA"] = str(data_root / "userdata")  # never the real user folder
        for subset, rows in sets.items():
            folder = data_root / subset
            folder.mkdir()
            for path, _, _ in rows:  # links, not copies: the noisy images only
                (folder / Path(path).name).symlink_to(path)
            for method in ("cbsn", "sdap"):
                t, c = time.perf_counter(), time.process_time()
                entries = train_model(method, folder, name=f"bench-{method}-{subset}", minutes=args.adapt_minutes)
                steps = entries[0].provenance["training"]["steps"], entries[1].provenance["training"]["steps"]
                notes.append(f"train {method} on {subset} noisy set: {time.perf_counter() - t:.0f} s wall, "
                             f"{time.process_time() - c:.0f} s CPU, teacher {steps[0]} steps, student {steps[1]} steps")
                for network, label in ((1, "teacher"), (2, "student")):
                    outs = engine_outputs(rows, method, network, f"bench-{method}-{subset}")
                    add(f"{method} {label} after train ({args.adapt_minutes:g} min)", subset, mean_scores(rows, outs))
                print(f"[{method} adapted on {subset}]", flush=True)

    subsets = list(sets)
    print("\n## Quality: mean PSNR (dB) / SSIM\n")
    print("| method | " + " | ".join(f"{s} ({len(sets[s])} images)" for s in subsets) + " |")
    print("|---|" + "---|" * len(subsets))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[s][0]:.2f} / {row[s][1]:.3f}" if s in row else "–" for s in subsets) + " |")
    print()
    for note in notes:
        print(f"- {note}")


# -- speed ------------------------------------------------------------------------------------------

def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def child(method: str, network: int, megapixels: float) -> None:
    """One timed run in this process: the engine path on a synthetic-noise photo of that size."""
    from quietlens.engine import pipeline
    from quietlens.engine.image import Image
    from quietlens.engine.methods import get

    h = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    w = int(megapixels * 1e6 / h)
    rng = np.random.default_rng(0)
    data = np.empty((h, w, 3), np.float32)
    ramp = np.linspace(0.2, 0.8, w, dtype=np.float32)[:, None]
    for y in range(0, h, 256):  # in strips: no full-size temporaries to inflate the peak RSS
        strip = data[y:y + 256]
        strip[:] = ramp + 0.05 * rng.standard_normal(strip.shape, dtype=np.float32)
        np.clip(strip, 0, 1, out=strip)
    image = Image(data, "photo", "HWC", "png")
    pipeline.denoise(Image(image.data[:64, :64].copy(), "photo", "HWC", "png"), get(method), {"network": network},
                     provider="cpu")  # warm-up: session creation and graph optimisation are not measured
    times = []
    for _ in range(2 if network == 2 or megapixels <= 1 else 1):  # best of two where it is cheap
        start = time.perf_counter()
        pipeline.denoise(image, get(method), {"network": network}, provider="cpu")
        times.append(time.perf_counter() - start)
    seconds = min(times)
    print(json.dumps({"seconds": seconds, "mp_s": h * w / 1e6 / seconds, "peak_mib": peak_rss_mib(),
                      "shape": f"{w}×{h}", "image_mib": data.nbytes / 2**20}))


def ort_vs_torch(method: str, network: int, threads: int) -> dict:
    """The same network on the same 1 MP input: ONNX Runtime (untiled) against PyTorch eager."""
    import torch

    from quietlens.engine import catalogue, runtime
    from quietlens.models import bsn_export
    from quietlens.models.bsn import DBSN, INFERENCE, BSNConfig
    from quietlens.models.bsn_student import Student, StudentConfig

    model_id = method if network == 1 else f"{method}.student"
    entry = catalogue.load()[model_id]
    arch = entry.provenance["architecture"]
    module = (INFERENCE[method](DBSN(BSNConfig(arch["width"], arch["modules"]))) if network == 1
              else Student(StudentConfig(arch["width"])))
    bsn_export.load_weights_from_onnx(module, entry.path.read_bytes())
    torch.set_num_threads(threads)
    x = np.random.default_rng(0).normal(size=(1, 3, 1024, 1024)).astype(np.float32)
    sess = runtime.session(model_id, "cpu")
    sess(x[:, :, :64, :64])
    with torch.no_grad():
        module.eval()(torch.from_numpy(x[:, :, :64, :64]))

    def best(fn, n=2):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    t_ort = best(lambda: sess(x))
    with torch.no_grad():
        t_torch = best(lambda: module(torch.from_numpy(x)))
    return {"ort_s": t_ort, "torch_s": t_torch}


def speed(args) -> None:
    env = {**os.environ, "QUIETLENS_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for method, network, label in NETS:
        measured = {}
        for mp in (1, 12, 24):
            if network == 1 and mp > args.teacher_max_mp:
                last = max(measured)
                r = measured[last]
                rows.append((label, mp, r["seconds"] * mp / last, mp / (r["seconds"] * mp / last),
                             r["peak_mib"], f"extrapolated from {last} MP"))
                continue
            out = subprocess.run([sys.executable, __file__, "--child", method, str(network), str(mp)],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            measured[mp] = r
            rows.append((label, mp, r["seconds"], r["mp_s"], r["peak_mib"],
                         f"{r['shape']}; the image itself is {r['image_mib']:.0f} MiB"))
            print(f"[{label} {mp} MP: {r['seconds']:.1f} s]", flush=True)
    print(f"\n## Speed and memory (engine path, ONNX Runtime CPU, {args.threads} threads)\n")
    print("| network | MP | seconds | MP/s | peak RSS (MiB) | note |\n|---|---|---|---|---|---|")
    for label, mp, s, rate, peak, note in rows:
        print(f"| {label} | {mp} | {s:.1f} | {rate:.3f} | {peak:.0f} | {note} |")

    print(f"\n## ONNX Runtime vs PyTorch eager (1024×1024, untiled, {args.threads} threads)\n")
    print("| network | ORT s | PyTorch s | PyTorch / ORT |\n|---|---|---|---|")
    for method, network, label in NETS:
        r = ort_vs_torch(method, network, args.threads)
        print(f"| {label} | {r['ort_s']:.2f} | {r['torch_s']:.2f} | {r['torch_s'] / r['ort_s']:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adapt-minutes", type=float, default=5.0)
    ap.add_argument("--teacher-max-mp", type=float, default=24)
    ap.add_argument("--skip-bm3d", action="store_true")
    ap.add_argument("--skip-adapt", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), float(args.child[2]))
        return
    import torch

    from quietlens.engine import runtime

    torch.set_num_threads(args.threads)
    runtime.set_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if not args.skip_quality:
        quality(args)
    if not args.skip_speed:
        speed(args)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
