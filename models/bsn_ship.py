"""Reproduce the shipped C-BSN and SDAP models (teacher + distilled student) from scratch, offline.

    python -m quietlens.models.bsn_ship cbsn --threads 2
    python -m quietlens.models.bsn_ship sdap --threads 2
    python -m quietlens.models.bsn_ship cbsn --preset paper --device cuda   # the papers' network, on a GPU

Data: :func:`quietlens.models.camera_sim.synthetic_noisy_set` (scikit-image's bundled images through a
simulated camera, noisy renderings only: training is self-supervised). The teacher is a reduced-width
DBSN (width 32 instead of 128, all 9 modules; see :data:`SHIPPED`) trained for a CPU budget of about
15–20 minutes per teacher on 2 cores (C-BSN 1000 steps, SDAP 1600: ~0.3 % of the papers' 500 k), plus a
few minutes for the student; the paper-size network trains with the same code given a GPU and the time.
Both train from :meth:`~quietlens.models.bsn.DBSN.init_neighbour_mean`, without which this budget
gives flat, colourless outputs.
Writes ``METHOD.onnx`` and ``METHOD.student.onnx`` into ``--out`` (default: the repository's
assets/models) and records them, with the recipe, seed, steps, hardware, timings and metrics, in that
folder's manifest.json. Checkpoints in ``--workdir`` make an interrupted run resumable.

Metrics: PSNR on held-out synthetic images (other seed), and, when the real noisy/clean sRGB pairs are
found (``--pairs``, used for evaluation only), PSNR/SSIM on SIDD and Canon 5D Mark III crops.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from quietlens.engine import catalogue

from .bsn_train import DistilConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
DATA = {"seed": 0, "per_source": 2}
SHIPPED = {
    "cbsn": {"teacher": TrainConfig("cbsn", width=32, modules=9, steps=1000, batch=4, crop=120, lr=5e-4,
                                    halvings=1, ramp=0.4, seed=0, checkpoint_every=50),
             "student": DistilConfig(width=24, steps=8000, batch=8, crop=96, lr=1e-3, halvings=2, seed=0)},
    "sdap": {"teacher": TrainConfig("sdap", width=32, modules=9, steps=1600, batch=4, crop=120, lr=5e-4,
                                    halvings=1, ramp=0.0, seed=0, checkpoint_every=50),
             "student": DistilConfig(width=24, steps=8000, batch=8, crop=96, lr=1e-3, halvings=2, seed=0)},
}
# The papers' network and optimiser (width 128, Adam 1e-4, C-BSN 120² × 4 and SDAP 160² × 16 crops) for a
# GPU budget of 100 k steps instead of 500 k (the learning rate halves as often, over fewer steps), on
# four times as many simulated cameras per source; the student is wider to keep up with a better teacher.
PAPER = {
    "cbsn": {"teacher": TrainConfig("cbsn", width=128, modules=9, steps=100_000, batch=4, crop=120, lr=1e-4,
                                    halvings=4, ramp=0.4, seed=0, checkpoint_every=2000),
             "student": DistilConfig(width=48, steps=60_000, batch=16, crop=128, lr=1e-3, halvings=3, seed=0,
                                     checkpoint_every=2000)},
    "sdap": {"teacher": TrainConfig("sdap", width=128, modules=9, steps=100_000, batch=16, crop=160, lr=1e-4,
                                    halvings=0, ramp=0.0, seed=0, checkpoint_every=2000),
             "student": DistilConfig(width=48, steps=60_000, batch=16, crop=128, lr=1e-3, halvings=3, seed=0,
                                     checkpoint_every=2000)},
}
PRESET_DATA = {"cpu": DATA, "paper": {"seed": 0, "per_source": 8}}


def _denoise(module, noisy: np.ndarray) -> np.ndarray:
    """Whole-image inference in PyTorch, exactly as the engine runs the graph (standardise, run, undo)."""
    import torch

    from quietlens.engine.tiling import run_tiled
    from .bsn_train import standardise_image

    z, mu, sigma = standardise_image(noisy)

    def fn(tile):
        with torch.no_grad():
            return module(torch.from_numpy(tile)).numpy()

    y = run_tiled(fn, z[None], halo=max(32, module.radius if hasattr(module, "radius") else 64),
                  bytes_per_pixel=4096, multiple_of=getattr(module, "multiple", 1))[0]
    return np.clip(y.transpose(1, 2, 0) * sigma + mu, 0, 1).astype(np.float32)


def evaluate(modules: dict, pairs_root: Path | None, synthetic: list) -> dict:
    """PSNR (and SSIM on real pairs) of every module in ``modules`` by name."""
    import cv2
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def score(noisy, clean):
        row = {"noisy": peak_signal_noise_ratio(clean, noisy, data_range=1)}
        for name, module in modules.items():
            row[name] = peak_signal_noise_ratio(clean, _denoise(module, noisy), data_range=1)
        return row

    out = {"synthetic_psnr": _mean([score(n, c) for n, c in synthetic])}
    if pairs_root is not None and pairs_root.is_dir():
        for subset in sorted(p.name for p in pairs_root.iterdir() if p.is_dir()):
            rows = []
            for noisy_path in sorted((pairs_root / subset).glob("*_noisy.png")):
                load = lambda p: cv2.imread(str(p))[..., ::-1].astype(np.float32) / 255  # noqa: E731
                noisy, clean = load(noisy_path), load(noisy_path.with_name(noisy_path.name.replace("_noisy", "_clean")))
                row = {"noisy": (peak_signal_noise_ratio(clean, noisy, data_range=1),
                                 structural_similarity(clean, noisy, channel_axis=2, data_range=1))}
                for name, module in modules.items():
                    den = _denoise(module, noisy)
                    row[name] = (peak_signal_noise_ratio(clean, den, data_range=1),
                                 structural_similarity(clean, den, channel_axis=2, data_range=1))
                rows.append(row)
            out[f"{subset}_psnr_ssim"] = {k: [round(float(np.mean([r[k][i] for r in rows])), 4 if i else 2)
                                              for i in (0, 1)] for k in rows[0]}
    return out


def _mean(rows: list[dict]) -> dict:
    return {k: round(float(np.mean([r[k] for r in rows])), 2) for k in rows[0]}


def _hardware(threads: int, device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = None
    if device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(0)
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "gpu": gpu,
            "note": "CPU shared with other jobs during training: timings are upper bounds"}


def main(argv: list[str] | None = None) -> int:
    import onnx
    import torch

    from . import bsn_export
    from .bsn import INFERENCE
    from .bsn_train import teacher_outputs, train_student, train_teacher
    from .camera_sim import COLOUR_SOURCES, GRAY_SOURCES, synthetic_noisy_set

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("method", choices=sorted(SHIPPED))
    ap.add_argument("--out", type=Path, default=REPO / "assets" / "models")
    ap.add_argument("--workdir", type=Path, default=None, help="checkpoints (default: /tmp/quietlens-ship-METHOD-PRESET)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--preset", choices=["cpu", "paper"], default="cpu",
                    help="cpu: the shipped reduced-width recipe; paper: the papers' network (needs a GPU)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--pairs", type=Path, default=REPO.parent / "shared" / "data" / "srgb_pairs")
    ap.add_argument("--steps", type=int, nargs=2, metavar=("TEACHER", "STUDENT"),
                    help="override the step counts (smoke tests; the shipped files use the defaults)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = dict((SHIPPED if args.preset == "cpu" else PAPER)[args.method])
    data = PRESET_DATA[args.preset]
    if args.steps:
        recipe = {"teacher": replace(recipe["teacher"], steps=args.steps[0]),
                  "student": replace(recipe["student"], steps=args.steps[1])}
    work = args.workdir or Path(f"/tmp/quietlens-ship-{args.method}-{args.preset}")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def log(fraction: float, message: str = "") -> None:
        step = int(message.split()[1].split("/")[0])
        if step % 25 == 0 or fraction >= 1:
            print(f"{time.perf_counter() - started:7.0f} s  {message}", flush=True)

    wall0 = time.perf_counter()
    images = synthetic_noisy_set(**data)
    net, t_info = train_teacher(images, recipe["teacher"], checkpoint=work / "teacher.pt", device=args.device,
                                progress=log)
    teacher = INFERENCE[args.method](net)
    cpu1 = time.process_time()
    pairs = teacher_outputs(teacher, images, device=args.device)
    student, s_info = train_student(pairs, recipe["student"], checkpoint=work / "student.pt", device=args.device,
                                    progress=log)
    s_info["teacher_outputs_cpu_seconds"] = round(time.process_time() - cpu1 - (s_info["train_cpu_seconds"] or 0), 1)
    wall = time.perf_counter() - wall0
    del pairs

    held_out = synthetic_noisy_set(seed=1000, per_source=1, with_clean=True,
                                   sources=("astronaut", "coffee", "rocket", "brick", "immunohistochemistry"))
    metrics = evaluate({"teacher": teacher, "student": student}, args.pairs, held_out)
    print(json.dumps(metrics, indent=1), flush=True)

    common = {
        "script": f"python -m quietlens.models.bsn_ship {args.method} --threads {args.threads}"
                  + (f" --preset {args.preset} --device {args.device}" if args.preset != "cpu" else "")
                  + (f" --steps {args.steps[0]} {args.steps[1]}" if args.steps else ""),
        "data": {"recipe": "quietlens.models.camera_sim.synthetic_noisy_set", **data,
                 "sources": list(COLOUR_SOURCES + GRAY_SOURCES), "images": len(images),
                 "megapixels": round(sum(a.shape[0] * a.shape[1] for a in images) / 1e6, 2),
                 "pipeline": "skimage.data source (area-downscaled to ≤640 px) → inverse tone/gamma/CCM/WB → "
                             "RGGB mosaic → exposure cut → shot+read noise → digital gain → demosaic "
                             "(bilinear or edge-aware) → WB/CCM/gamma/tone curve → 8-bit → JPEG q75–98 (75 %)",
                 "noisy_only": True},
        "hardware": _hardware(args.threads, args.device),
        "software": {"torch": torch.__version__, "onnx": onnx.__version__, "python": sys.version.split()[0]},
        "wall_seconds_this_run": round(wall, 1),  # a resumed run counts only what it did itself
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "metrics": metrics,
    }
    for model_id, module, cfg, info, extra in (
        (args.method, teacher, recipe["teacher"], t_info, {}),
        (f"{args.method}.student", student, recipe["student"], s_info, {"teacher": args.method}),
    ):
        data = bsn_export.export_checked(module)
        fields = bsn_export.entry_fields(module, model_id, args.method,
                                         {**common, **extra, "training": {**asdict(cfg), **info}})
        entry = catalogue.add(args.out, data, fields)
        print(f"wrote {entry.path} ({len(data) / 1e6:.2f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
