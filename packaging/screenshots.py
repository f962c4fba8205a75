"""Render screenshots (offscreen): the main window on a CT slice, an MRI volume, a RAW photo and a region
edit on a photo, the batch dialog after a batch, and the *Adapt to my photos* dialog mid-run.

    python packaging/screenshots.py OUT_DIR [--data ../shared/data] [--size 1400x900]

Each main-window screenshot opens a file, runs the first denoiser offered for its kind (falling back to the
next one, and finally to the pass-through method, when a method cannot run here, e.g. its model is not
installed), and saves the window as a PNG in OUT_DIR. Nothing is written outside OUT_DIR and a temporary
folder (settings, the adaptation's user data).
"""
from __future__ import annotations

import argparse
import os
import shutil
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


def save(widget, out: Path) -> Path:
    widget.grab().save(str(out))
    print(out)
    return out


def shoot(app, window, path: Path, out: Path, setup=None, edit=None, divider: float = 0.55) -> Path:
    """Open ``path``, ``setup`` the window, run the full image, ``edit`` the result, save the window."""
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
    window.view.divider = divider
    if edit is not None:
        edit(window)
        wait(app, lambda: not window.rerun_timer.isActive() and window.run_task is None, 600)
    window.view.update()
    wait(app, lambda: True)
    return save(window, out)


def batch_dialog(app, window, photos: list[Path], tmp: Path, out: Path) -> Path:
    """The batch dialog after denoising a folder of real photos (one of them damaged)."""
    src = tmp / "batch-in"
    src.mkdir()
    for p in photos:
        shutil.copy(p, src / p.name)
    (src / "damaged.png").write_bytes(photos[0].read_bytes()[:3000])
    dialog = window.open_batch()
    dialog.resize(820, 640)
    dialog.input.setText(str(src))
    dialog.output.setText(str(tmp / "batch-out"))
    dialog.start_button.click()
    if not wait(app, lambda: dialog.task is None, 900):
        raise SystemExit("timed out running the batch")
    wait(app, lambda: True)
    save(dialog, out)
    dialog.close()
    return out


def adapt_dialog(app, window, photos: list[Path], tmp: Path, out: Path, steps: int = 6) -> Path:
    """The adaptation dialog mid-run: a few training steps on real noisy photos, then cancelled."""
    from quietlens.engine import io

    folder = tmp / "my camera"
    folder.mkdir()
    for p in photos:  # centre crops keep the run short
        image = io.load(p)
        h, w = image.data.shape[:2]
        io.save(image.with_data(image.data[h // 2 - 128:h // 2 + 128, w // 2 - 128:w // 2 + 128]),
                folder / p.name)
    dialog = window.open_adapt()
    dialog.resize(760, 640)
    dialog.folder.setText(str(folder))
    dialog.unit.setCurrentText("steps")
    dialog.budget.setValue(40)
    dialog.start_button.click()
    series = dialog.plot.series
    if not wait(app, lambda: sum(map(len, series.values())) >= steps and dialog.eta.text() or dialog.task is None,
                900):
        raise SystemExit("timed out adapting")
    wait(app, lambda: True)
    save(dialog, out)
    dialog.cancel()
    wait(app, lambda: dialog.task is None, 600)
    dialog.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--size", default="1400x900")
    parser.add_argument("--only", nargs="+", choices=["ct", "mri", "raw", "region", "batch", "adapt"],
                        help="render only these")
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

        def region_edit(w):  # drawn with the rectangle tool on the left ("Before") half, as a user would
            w.set_mode("split")
            w.set_tool("rect")
            w._shape_drawn("rect", [(60.0, 140.0), (230.0, 380.0)], 0.0)
            w.region_panel.set_multiplier("strength", 0.3)
            w.set_tool("pan")

        def mri():
            shoot(app, window, args.data / "mr_series" / "toshiba_b0", args.out / "mri.png", mr_setup)
            window.orientation.setCurrentText("coronal")
            wait(app, lambda: True)
            save(window, args.out / "mri-coronal.png")

        def raw():
            shoot(app, window, args.data / "raw" / "colorchart.dng", args.out / "raw.png")
            window.set_mode("residual")
            wait(app, lambda: True)
            save(window, args.out / "raw-residual.png")

        def adapt():
            os.environ["QUIETLENS_DATA"] = str(Path(tmp) / "userdata")  # nothing registered for the user
            real = sorted((args.data / "real_noisy" / "dnd_patches").glob("*.png"))[:4]
            adapt_dialog(app, window, real, Path(tmp), args.out / "adapt.png")

        shots = {
            "ct": lambda: shoot(app, window, Path(get_testdata_file("CT_small.dcm")), args.out / "ct.png", ct_setup),
            "mri": mri,
            "raw": raw,
            "region": lambda: shoot(app, window, args.data / "srgb_pairs" / "cc" / "5dmark3_iso3200_1_noisy.png",
                                    args.out / "region-edit.png", edit=region_edit, divider=0.6),
            "batch": lambda: batch_dialog(app, window, sorted((args.data / "srgb_pairs").rglob("*_noisy.png"))[:4],
                                          Path(tmp), args.out / "batch.png"),
            "adapt": adapt,
        }
        for name in args.only or shots:
            shots[name]()
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
