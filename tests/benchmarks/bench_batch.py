"""Batch figures: throughput in-process against a Dask LocalCluster, fuzzing, and kill-and-resume.

1. Files per minute over a folder of small mixed files made from the real captures (PNG, JPEG, 16-bit
   TIFF crops of the sRGB photos; the MR series' slices and pydicom's CT as single DICOM files), with the
   method ``passthrough``: the only method sure to be installed, so this measures the batch machinery
   (load, save, report, scheduling), not a denoiser. In-process, then ``workers=2`` (a LocalCluster
   started and closed inside the timing), then the same 2 workers already running.
2. The loader fuzz campaign (tests/test_fuzz_loaders.py) with N examples per format: cases and failures.
3. Kill-and-resume: the CLI is killed with SIGKILL at random points K times, every output present is
   checked after each kill, then the same command runs to the end: corrupt and missing outputs.

    .venv/bin/python tests/benchmarks/bench_batch.py [--files 200] [--kills 20] [--kill-files 200]
                                                     [--fuzz-examples 100] [--only throughput|fuzz|kill]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("QUIETLENS_SHARED_DATA") or REPO.parent / "shared" / "data")
CLI = [sys.executable, "-m", "quietlens.engine.cli"]


def make_folder(root: Path, count: int) -> None:
    """``count`` small real-content files of mixed formats, all in one folder (so DICOMs are single inputs)."""
    import tifffile
    from PIL import Image as PILImage
    from pydicom.data import get_testdata_file

    root.mkdir(parents=True)
    photos = [np.asarray(PILImage.open(p).convert("RGB")) for p in sorted((SHARED / "srgb_pairs").rglob("*.png"))]
    dicoms = sorted((SHARED / "mr_series").rglob("*.dcm")) + [Path(get_testdata_file("CT_small.dcm"))]
    for i in range(count):
        kind = i % 5
        photo = photos[i % len(photos)]
        y, x = (i * 37) % (photo.shape[0] - 128), (i * 53) % (photo.shape[1] - 128)
        crop = photo[y:y + 128, x:x + 128]
        if kind in (0, 1):
            PILImage.fromarray(crop).save(root / f"photo {i:03d}.png")
        elif kind == 2:
            PILImage.fromarray(crop).save(root / f"photo {i:03d}.jpg", quality=92)
        elif kind == 3:
            tifffile.imwrite(root / f"photo {i:03d}.tif", crop.astype(np.uint16) * 257, photometric="rgb")
        else:
            shutil.copy(dicoms[i % len(dicoms)], root / f"slice {i:03d}.dcm")


def throughput(files: int) -> None:
    from distributed import LocalCluster

    from quietlens.engine import batch

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        make_folder(src, files)
        rows = []
        for label, kwargs in (("in-process", {}), ("LocalCluster, 2 workers (start included)", {"workers": 2})):
            t0 = time.perf_counter()
            results = batch.run_batch(src, Path(tmp) / f"out-{len(rows)}", "passthrough", **kwargs)
            rows.append((label, time.perf_counter() - t0, results))
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0", silence_logs=40) as cluster:
            batch.run_batch(src, Path(tmp) / "warm-up", "passthrough", scheduler=cluster.scheduler_address)
            t0 = time.perf_counter()
            results = batch.run_batch(src, Path(tmp) / "out-warm", "passthrough",
                                      scheduler=cluster.scheduler_address)
            rows.append(("LocalCluster, 2 workers (already running)", time.perf_counter() - t0, results))
    print(f"\n## Throughput: {files} mixed small files, method passthrough, {os.cpu_count()} CPU cores")
    print(f"load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for label, seconds, results in rows:
        done = sum(r.status == "done" for r in results)
        print(f"{label:<45} {seconds:7.2f} s  {60 * done / seconds:8.0f} files/min  ({done} done)")


def fuzz(examples: int) -> None:
    env = {**os.environ, "QUIETLENS_FUZZ_EXAMPLES": str(examples)}
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging",
                          "--hypothesis-show-statistics",
                          str(REPO / "tests" / "test_fuzz_loaders.py")], env=env, capture_output=True, text=True,
                         cwd=REPO)
    counts = [tuple(map(int, m)) for m in re.findall(r"- (\d+) passing, (\d+) failing", run.stdout)]
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-500:]
    print(f"\n## Fuzzing the loaders: {examples} examples per format")
    print(f"cases run: {sum(p + f for p, f in counts)}, failing cases: {sum(f for _, f in counts)}, "
          f"tests: {summary} ({time.perf_counter() - t0:.0f} s)")


def outputs_ok(src: Path, out: Path) -> tuple[int, int, int]:
    """(whole outputs, corrupt outputs, partial temporary files present) in ``out``. Whole: it loads and
    holds the input's pixels (exactly; JPEG within its re-encoding loss, mean error under 1 %)."""
    from quietlens.engine import io

    whole = corrupt = 0
    for dst in (p for p in out.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".json"):
        try:
            a, b = io.load(dst).data, io.load(src / dst.name).data
            lossy = dst.suffix == ".jpg"
            same = a.shape == b.shape and (np.abs(a - b).mean() < 0.01 if lossy else np.array_equal(a, b))
        except Exception:
            same = False
        whole, corrupt = whole + same, corrupt + (not same)
    partial = sum(bool(io.PARTIAL_NAME.match(p.name)) for p in out.iterdir())
    return whole, corrupt, partial


def kill_and_resume(kills: int, files: int) -> None:
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in", Path(tmp) / "out"
        make_folder(src, files)
        command = [*CLI, "batch", str(src), "-o", str(out), "--method", "passthrough", "-q"]
        corrupt_seen = mid_write = 0
        for _ in range(kills):
            before = set(out.rglob("*")) if out.exists() else set()
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None and not (out.exists() and set(out.rglob("*")) - before):
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if out.exists():
                _, corrupt, partial = outputs_ok(src, out)
                corrupt_seen += corrupt
                mid_write += partial > 0
        final = subprocess.run(command, capture_output=True, text=True)
        whole, corrupt, partial = outputs_ok(src, out)
        counts = json.loads((out / "quietlens-report.json").read_text())["counts"]
    print(f"\n## Kill-and-resume: {kills} SIGKILLs of the CLI at random points, {files} files")
    print(f"kills that left a partial temporary file: {mid_write}; corrupt outputs seen after kills: {corrupt_seen}")
    print(f"after the final run (exit {final.returncode}, report {counts}): whole {whole}, corrupt {corrupt}, "
          f"missing {files - whole - corrupt}, partial files left {partial}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--kill-files", type=int, default=200)
    parser.add_argument("--fuzz-examples", type=int, default=100)
    parser.add_argument("--only", choices=["throughput", "fuzz", "kill"], help="run one part")
    args = parser.parse_args()
    if args.only in (None, "throughput"):
        throughput(args.files)
    if args.only in (None, "fuzz"):
        fuzz(args.fuzz_examples)
    if args.only in (None, "kill"):
        kill_and_resume(args.kills, args.kill_files)


if __name__ == "__main__":
    main()
