"""QuietLens desktop app entry point: ``quietlens-gui [FILE_OR_FOLDER]``.

``--self-test`` runs the engine self-test, then opens the main window (offscreen works) on a built-in
photo and runs one preview through the window's own machinery; exit status 0 when all of it passed.
``--startup-probe FILE`` (for ``tests/benchmarks/bench_startup.py``) opens FILE, runs one preview with the
default method, prints one JSON line of epoch times (window shown, preview finished) and quits.
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from quietlens.engine import __version__

from .settings import Settings
from .startup import window_problem
from .window import MainWindow

__all__ = ["MainWindow", "app_icon", "main"]

TASK_TIMEOUT_S = 300


def app_icon() -> QIcon:
    """The QuietLens icon at every rendered size (from the installed assets)."""
    icon = QIcon()
    folder = Path(str(importlib.resources.files("quietlens.assets") / "icons"))
    for png in sorted(folder.glob("quietlens-*.png")):
        icon.addFile(str(png))
    return icon


def _parse(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="quietlens-gui", description="QuietLens desktop app.")
    parser.add_argument("path", nargs="?", help="a file or DICOM series folder to open")
    parser.add_argument("--version", action="version", version=f"QuietLens {__version__}")
    parser.add_argument("--self-test", action="store_true", help="check the install headless, exit 0 if it works")
    parser.add_argument("--startup-probe", metavar="FILE", help=argparse.SUPPRESS)
    return parser.parse_known_args(args)[0]  # Qt has already taken its own options


def main(argv: list[str] | None = None) -> int:
    entered = time.time()
    argv = sys.argv if argv is None else argv
    if QApplication.instance() is None:
        _parse(argv[1:])  # --help and --version answer even where no window can open
        env = dict(os.environ)
        if "-platform" in argv[:-1]:  # Qt's own option wins over the environment
            env["QT_QPA_PLATFORM"] = argv[argv.index("-platform") + 1]
        problem = window_problem(env)
        if problem:  # say what is missing and how to install it, rather than Qt's abort
            print(f"quietlens-gui: {problem}", file=sys.stderr)
            return 1
    app = QApplication.instance() or QApplication(argv)
    app.setApplicationName("QuietLens")
    app.setOrganizationName("QuietLens")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("quietlens")  # lets Wayland shells match the window to quietlens.desktop
    app.setWindowIcon(app_icon())
    opts = _parse(app.arguments()[1:])
    if opts.self_test:
        return _self_test(app)
    if opts.startup_probe:
        return _startup_probe(app, Path(opts.startup_probe), entered)
    window = MainWindow()
    window.show()
    if opts.path:
        window.load(Path(opts.path))
    return app.exec()


def _wait(task, seconds: float = TASK_TIMEOUT_S) -> bool:
    """Run the event loop until ``task`` has reported (its slots, e.g. ``_run_finished``, have run)."""
    done: list[bool] = []
    loop = QEventLoop()
    task.when_done(lambda: (done.append(True), loop.quit()))
    if not done:
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()
    return bool(done)


def _self_test(app: QApplication) -> int:
    import numpy as np

    from quietlens.engine import selftest

    print(f"QuietLens {__version__} self-test (desktop app)", flush=True)
    failed = selftest.main() != 0
    with tempfile.TemporaryDirectory(prefix="quietlens-selftest-") as tmp:
        window = MainWindow(Settings(Path(tmp) / "settings.ini"), show_internal=False)
        window.show()
        checks = [selftest.Check("gui window", not app.windowIcon().isNull() and window.isVisible(), 0.0,
                                 f"platform {app.platformName()}, icon sizes "
                                 f"{[s.width() for s in app.windowIcon().availableSizes()]}")]

        def preview() -> str:
            s = selftest.sample("photo")
            window.set_image(s.noisy)
            method = window.method_panel.method()
            window.run_preview()
            if window.run_task is None:
                raise AssertionError("the preview did not start")
            if not _wait(window.run_task):
                raise AssertionError(f"the preview did not finish within {TASK_TIMEOUT_S} s")
            if window.errors:
                raise AssertionError(window.errors[-1])
            out = window.result.data
            before, after = (float(np.mean((x - s.clean) ** 2)) for x in (s.noisy.data, out))
            if out.shape != s.noisy.data.shape or not after < before:
                raise AssertionError(f"preview output {out.shape}, MSE {before:.4g} -> {after:.4g}")
            return f"{method.name}: MSE {before:.4g} -> {after:.4g}"

        checks.append(selftest.timed("gui preview", preview))
        window.close()
    for check in checks:
        print(check.line(), flush=True)
    failed = failed or not all(c.ok for c in checks)
    print("desktop app self-test " + ("FAILED" if failed else "passed"), flush=True)
    return 1 if failed else 0


def _startup_probe(app: QApplication, path: Path, entered: float) -> int:
    """Open ``path`` like a user would, preview it with the default method, print the timings."""
    tmp = tempfile.TemporaryDirectory(prefix="quietlens-probe-")
    window = MainWindow(Settings(Path(tmp.name) / "settings.ini"), show_internal=False)
    facts: dict = {"main": entered}
    window.show()
    QTimer.singleShot(0, lambda: facts.setdefault("shown", time.time()))  # once the show is processed

    def finish(ok: bool, error: str = "") -> None:
        facts.update(preview=time.time(), ok=ok and not window.errors, torch="torch" in sys.modules)
        if error or window.errors:
            facts["error"] = error or window.errors[-1]
        print(json.dumps(facts), flush=True)
        app.exit(0 if facts["ok"] else 1)

    def loaded() -> None:  # runs once the window shows the image
        facts["loaded"] = time.time()
        method = window.method_panel.method()
        facts["method"] = method.name if method else None
        window.run_preview()
        if window.run_task is None:
            finish(False, "no preview started")
            return
        window.run_task.when_done(lambda: finish(True))

    window.load(path, then=loaded).when_done(  # a failed load has reported its error to the window
        lambda: window.image is None and finish(False, window.errors[-1] if window.errors else "not opened"))
    QTimer.singleShot(TASK_TIMEOUT_S * 1000, lambda: finish(False, "timed out"))
    try:
        return app.exec()
    finally:
        window.close()
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
