"""Start-up figures of the installed app and, when it has been built, the desktop bundle (dist/quietlens).

For each: seconds from launch to the window shown and to the first finished preview (default method) of a
real file, via the app's hidden ``--startup-probe`` (median of N runs, each a fresh process, offscreen
unless ``--platform`` says otherwise); ``quietlens --version`` wall time; and the bundle's size with its
largest parts.

    .venv/bin/python tests/benchmarks/bench_startup.py [--file PATH] [--runs 3] [--platform offscreen]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("QUIETLENS_SHARED_DATA") or REPO.parent / "shared" / "data")
BUNDLE = REPO / "dist" / "quietlens"
VENV_BIN = Path(sys.executable).parent


def default_file() -> Path:
    photo = SHARED / "srgb_pairs" / "sidd" / "sidd_34_noisy.png"
    if photo.is_file():
        return photo
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("MR_small.dcm"))


def probe(gui: Path, file: Path, platform: str) -> dict:
    """One launch: seconds to the window and to the first preview, from just before the process starts."""
    env = {**os.environ, "QT_QPA_PLATFORM": platform}
    t0 = time.time()
    done = subprocess.run([str(gui), "--startup-probe", str(file)], capture_output=True, text=True, env=env,
                          timeout=600)
    facts = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    if done.returncode != 0 or not facts.get("ok"):
        raise SystemExit(f"{gui} --startup-probe failed ({done.returncode}): {facts.get('error')}\n{done.stderr[-2000:]}")
    return {"main": facts["main"] - t0, "window": facts["shown"] - t0, "preview": facts["preview"] - t0,
            "method": facts["method"], "torch": facts["torch"]}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, check=True, timeout=120)
    return time.perf_counter() - t0


def du(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(du(p) for p in path.iterdir())


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=None, help="the file to open (default: a SIDD noisy crop)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--platform", default="offscreen", help="Qt platform plugin (offscreen, xcb, wayland)")
    args = ap.parse_args()
    file = args.file or default_file()

    targets = [("installed (.venv)", VENV_BIN / "quietlens-gui", VENV_BIN / "quietlens")]
    if (BUNDLE / "quietlens-gui").is_file():
        targets.append(("bundle (dist/quietlens)", BUNDLE / "quietlens-gui", BUNDLE / "quietlens"))
    else:
        print(f"no bundle at {BUNDLE} (run `make package`): measuring the installed app only\n")

    print(f"file: {file}  ·  {args.runs} runs each, median  ·  QT_QPA_PLATFORM={args.platform}\n")
    print("| app | to main() s | to window s | to first preview s | method | torch imported | `quietlens --version` s |")
    print("|---|---|---|---|---|---|---|")
    for name, gui, cli in targets:
        runs = [probe(gui, file, args.platform) for _ in range(args.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("main", "window", "preview")}
        version = statistics.median(wall([str(cli), "--version"]) for _ in range(args.runs))
        print(f"| {name} | {med['main']:.2f} | {med['window']:.2f} | {med['preview']:.2f} | {runs[0]['method']} "
              f"| {'yes' if any(r['torch'] for r in runs) else 'no'} | {version:.2f} |")
        each = ", ".join(f"{r['window']:.2f}/{r['preview']:.2f}" for r in runs)
        print(f"  {name} runs (window/preview s): {each}", file=sys.stderr)

    if (BUNDLE / "quietlens-gui").is_file():
        internal = BUNDLE / "_internal"
        parts = [(du(p), p.relative_to(BUNDLE)) for p in [*BUNDLE.iterdir(), *internal.iterdir()] if p != internal]
        total = du(BUNDLE)
        print(f"\nbundle size: {mib(total)} ({total / 1e9:.2f} GB), {sum(1 for _ in BUNDLE.rglob('*'))} files")
        print("| part | size |")
        print("|---|---|")
        for size, rel in sorted(parts, reverse=True)[:10]:
            print(f"| {rel} | {mib(size)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
