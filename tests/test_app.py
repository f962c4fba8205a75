"""The main window opens real files off the UI thread and shows them (offscreen Qt)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets")


@pytest.fixture(scope="module")
def qapp():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def wait_for(qapp, condition, seconds=30.0):
    import time

    end = time.monotonic() + seconds
    while not condition() and time.monotonic() < end:
        qapp.processEvents()
        time.sleep(0.01)
    return condition()


def test_open_series_shows_middle_slice(qapp, mr_series_dir):
    from quietlens.app.main import MainWindow

    window = MainWindow()
    window.load(mr_series_dir)
    assert wait_for(qapp, lambda: window.image is not None)
    assert window.slider.maximum() == 39 and window.slider.value() == 20
    pixmap = window.view.pixmap()
    assert (pixmap.height(), pixmap.width()) == window.image.data.shape[1:]
    assert "toshiba_b0" in window.windowTitle()


def test_bad_file_reports_instead_of_crashing(qapp, tmp_path, monkeypatch):
    from quietlens.app.main import MainWindow

    shown = []
    monkeypatch.setattr(QtWidgets.QMessageBox, "warning", lambda *args: shown.append(args[2]))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    window = MainWindow()
    window.load(bad)
    assert wait_for(qapp, lambda: bool(shown))
    assert "bad.png" in shown[0] and window.image is None
