"""Tiled inference speed and peak memory against image size and tile budget.

Runs the small test net from tests/test_tiling.py (5 conv layers, 16 channels, radius 6), exported to
ONNX, through ``run_tiled`` on the CPU. Each row runs in a fresh process so its peak RSS is its own;
seconds are the best of two runs after a small warm-up.

    .venv/bin/python tests/benchmarks/bench_tiling.py [--threads N]
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

SIZES_MP = (1, 4, 12)
BUDGETS_MIB = (64, 256, 1024)
BPP = 300  # peak bytes per padded pixel of the test net, as measured for test_tiling.py


def child(model: Path, megapixels: int, budget_mib: int) -> None:
    import numpy as np

    from quietlens.engine import runtime, tiling

    side_h = int((megapixels * 1e6 * 3 / 4) ** 0.5)  # a 4:3 photo
    side_w = int(megapixels * 1e6 / side_h)
    x = np.random.default_rng(0).random((1, 3, side_h, side_w), dtype=np.float32)
    sess = runtime.session(model, "cpu")
    sess(x[:, :, :64, :64])  # warm-up: graph optimisation is not part of the measure
    tiles: list[str] = []
    seconds = []
    for _ in range(2):
        tiles.clear()
        start = time.perf_counter()
        tiling.run_tiled(sess, x, halo=6, bytes_per_pixel=BPP, budget_bytes=budget_mib * 2**20,
                         progress=lambda f, m: tiles.append(m))
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"shape": f"{side_w}×{side_h}", "tiles": len(tiles), "seconds": min(seconds),
                      "mp_s": side_h * side_w / 1e6 / min(seconds), "peak_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's peak RSS. Not ru_maxrss: Linux carries the parent's (with torch loaded) across exec."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: ORT's choice)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), int(args.child[1]), int(args.child[2]))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    from test_tiling import TinyNet, export

    from quietlens.engine import runtime

    env = dict(os.environ, **({"QUIETLENS_THREADS": str(args.threads)} if args.threads else {}))
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = export(TinyNet(), Path(tmp) / "tiny.onnx")
        print(f"onnxruntime {runtime.describe()['onnxruntime']}, {os.cpu_count()} CPUs, "
              f"threads {args.threads or 'default'}, bytes_per_pixel {BPP}, halo 6")
        print(f"{'image':>12} {'MP':>3} {'budget MiB':>10} {'tiles':>5} {'seconds':>8} {'MP/s':>6} "
              f"{'peak RSS MiB':>12}")
        for mp in SIZES_MP:
            for budget in BUDGETS_MIB:
                done = subprocess.run([sys.executable, __file__, "--child", str(model), str(mp), str(budget)],
                                      capture_output=True, text=True, env=env, check=True)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{r['shape']:>12} {mp:>3} {budget:>10} {r['tiles']:>5} {r['seconds']:>8.2f} "
                      f"{r['mp_s']:>6.2f} {r['peak_mib']:>12.0f}")


if __name__ == "__main__":
    main()
