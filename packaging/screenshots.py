"""Render screenshots of the main window (offscreen) with a CT slice, an MRI volume and a RAW photo.

    python packaging/screenshots.py OUT_DIR [--data ../shared/data] [--size 1400x900]

Each screenshot opens a file, runs the first denoiser offered for its kind (falling back to the next one,
and finally to the pass-through method, when a method cannot run here, e.g. its model is not installed),
and saves the window as a PNG in OUT_DIR.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def wait(app: QApplication, condition, seconds: float = 120.0) -> bool:
    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()
    return bool(condition())  # (few calls: each loop turn sleeps)


def shoot(app, window, path: Path, out: Path, setup=None) -> Path:
    window.load(path)
    if not wait(app, lambda: window.image is not None and window.load_task is None or bool(window.errors)):
        raise SystemExit(f"timed out loading {path}")
    if window.errors:
        raise SystemExit(f"could not open {path}: {window.errors[-1]}")
    offered = [m.name for m in window.method_panel.methods if m.user_facing]
    for name in offered + ["passthrough"]:
        window.method_panel.select(name)
        if setup is not None:
            setup(window)
        window.run_full()
        if not wait(app, lambda: window.run_task is None, 600):
            raise SystemExit(f"timed out denoising {path}")
        wait(app, lambda: not window.rerun_timer.isActive() and window.run_task is None)
        if not window.errors:
            break
        print(f"{path.name}: {name} failed ({window.errors[-1]}); trying the next method", file=sys.stderr)
        window.errors.clear()
        for box in window.findChildren(QMessageBox):
            box.close()
    else:
        raise SystemExit(f"no method could denoise {path}")
    window.view.divider = 0.55
    window.view.update()
    wait(app, lambda: True)
    window.grab().save(str(out))
    print(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--size", default="1400x900")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.lower().split("x"))

    app = QApplication.instance() or QApplication([sys.argv[0]])
    from quietlens.app.settings import Settings
    from quietlens.app.window import MainWindow
    from quietlens.engine.regions import Shape
    from pydicom.data import get_testdata_file

    with tempfile.TemporaryDirectory() as tmp:  # never touch the user's own settings
        window = MainWindow(Settings(Path(tmp) / "settings.ini"), show_internal=True)
        window.resize(width, height)
        window.show()

        def ct_setup(w):
            w.region_panel.add_region("soft tissue")
            w.region_panel.add_shape(Shape("ellipse", [(34.0, 40.0), (94.0, 92.0)]))
            w.region_panel.set_multiplier("strength", 0.5)
            w.set_window_preset("soft tissue")

        def mr_setup(w):
            w.orientation.setCurrentText("axial")

        shoot(app, window, Path(get_testdata_file("CT_small.dcm")), args.out / "ct.png", ct_setup)
        shoot(app, window, args.data / "mr_series" / "toshiba_b0", args.out / "mri.png", mr_setup)
        window.orientation.setCurrentText("coronal")
        wait(app, lambda: True)
        window.grab().save(str(args.out / "mri-coronal.png"))
        print(args.out / "mri-coronal.png")
        shoot(app, window, args.data / "raw" / "colorchart.dng", args.out / "raw.png")
        window.set_mode("residual")
        wait(app, lambda: True)
        window.grab().save(str(args.out / "raw-residual.png"))
        print(args.out / "raw-residual.png")
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
