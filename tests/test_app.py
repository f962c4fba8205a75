"""The main window opens every kind of file off the UI thread, shows it, and remembers its settings."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("pytestqt")
QtCore = pytest.importorskip("PySide6.QtCore")
QtGui = pytest.importorskip("PySide6.QtGui")
QtWidgets = pytest.importorskip("PySide6.QtWidgets")

from quietlens.app.settings import Settings  # noqa: E402
from quietlens.app.window import MainWindow  # noqa: E402
from quietlens.engine import display  # noqa: E402

TIMEOUT = 20000


@pytest.fixture
def settings_path(tmp_path):
    return tmp_path / "settings.ini"


@pytest.fixture
def window(qtbot, settings_path):
    w = MainWindow(Settings(settings_path), show_internal=True)
    qtbot.addWidget(w)
    w.resize(1100, 760)
    w.show()
    yield w
    w.cancel()
    w.runner.wait(10000)


def open_and_wait(qtbot, window, path):
    window.load(Path(path))
    qtbot.waitUntil(lambda: window.image is not None and window.load_task is None or bool(window.errors),
                    timeout=TIMEOUT)
    assert not window.errors, window.errors
    return window.image


def mouse(view, kind, plane_xy, button, buttons=None):
    pos = view.transform().map(QtCore.QPointF(*plane_xy))
    event = QtGui.QMouseEvent(kind, pos, view.mapToGlobal(pos), button,
                              button if buttons is None else buttons, QtCore.Qt.NoModifier)
    QtCore.QCoreApplication.sendEvent(view, event)


def drag(view, start, end, button=QtCore.Qt.LeftButton):
    mouse(view, QtCore.QEvent.MouseButtonPress, start, button)
    mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
    for p in (mid, end):
        mouse(view, QtCore.QEvent.MouseMove, p, QtCore.Qt.NoButton, button)
    mouse(view, QtCore.QEvent.MouseButtonRelease, end, button, QtCore.Qt.NoButton)


def test_open_series_shows_middle_slice_and_switches_orientation(qtbot, window, mr_series_dir):
    image = open_and_wait(qtbot, window, mr_series_dir)
    assert image.axes == "ZHW" and image.kind == "mr"
    assert window.slider.maximum() == 39 and window.slider.value() == 20
    assert "toshiba_b0" in window.windowTitle()
    layer = window.view.before.image
    assert (layer.height(), layer.width()) == image.data.shape[1:]
    window.view.setFocus()
    qtbot.keyClick(window.view, QtCore.Qt.Key_PageUp)
    assert window.view_state.index == 21
    window.orientation.setCurrentText("coronal")
    assert window.view_state.orientation == "coronal" and window.slider.maximum() == image.data.shape[1] - 1
    layer = window.view.before.image
    assert (layer.height(), layer.width()) == (image.data.shape[0], image.data.shape[2])
    assert window.view.aspect == pytest.approx(image.spacing[0] / image.spacing[2])


def test_open_png_photo_reads_rgb(qtbot, window, srgb_pairs):
    noisy, _ = srgb_pairs[0]
    image = open_and_wait(qtbot, window, noisy)
    assert image.kind == "photo" and noisy.name in window.windowTitle()
    assert window.histogram.heights.shape[0] == 3
    window._hovered(10, 20)
    assert "x 20, y 10" in window.readout.text() and "R " in window.readout.text()
    assert not window.preset.isEnabled()


def test_open_raw_shows_rendering_and_sensor_values(qtbot, window, raw_files):
    path = min(raw_files, key=lambda p: p.stat().st_size)
    image = open_and_wait(qtbot, window, path)
    assert image.kind == "raw"
    layer = window.view.before
    assert layer.scale == pytest.approx(2.0, rel=0.01)  # half-size rendering, placed on the mosaic grid
    assert (window.view.plane_h, window.view.plane_w) == image.data.shape
    window._hovered(3, 4)
    assert window.readout.text().endswith(")") and " DN (" in window.readout.text()
    assert window.method_panel.select("passthrough")
    window.run_full()
    qtbot.waitUntil(lambda: window.run_task is None, timeout=TIMEOUT)
    assert not window.errors, window.errors
    assert window.view.after is not None and window.view.after.scale == pytest.approx(layer.scale)
    np.testing.assert_array_equal(window.result.data, image.data)


def test_open_nifti_volumes(qtbot, window):
    nib_testing = pytest.importorskip("nibabel.testing")
    image = open_and_wait(qtbot, window, Path(nib_testing.data_path) / "anatomical.nii")
    assert image.axes == "ZHW" and [window.orientation.itemText(i) for i in range(3)] == ["axial", "coronal", "sagittal"]
    window.orientation.setCurrentText("sagittal")
    assert window.slider.maximum() == image.data.shape[2] - 1
    four_d = open_and_wait(qtbot, window, Path(nib_testing.data_path) / "example4d.nii.gz")
    assert four_d.axes == "TZHW" and window.frame.isVisibleTo(window) and window.frame.maximum() == 1
    window.frame.setValue(1)
    assert window.view_state.frame == 1


def test_ct_window_from_file_presets_and_right_drag(qtbot, window, pydicom_ct):
    image = open_and_wait(qtbot, window, pydicom_ct)
    assert image.kind == "ct" and window.win == image.window
    window.set_window_preset("lung")
    assert window.win == display.CT_PRESETS["lung"]
    width = window.win[1]
    drag(window.view, (30, 30), (60, 30), QtCore.Qt.RightButton)
    assert window.win[1] > width  # dragging right widens the window
    window._hovered(64, 64)
    assert window.readout.text().endswith(" HU")


def test_drop_a_folder_opens_the_series(qtbot, window, mr_series_dir):
    mime = QtCore.QMimeData()
    mime.setUrls([QtCore.QUrl.fromLocalFile(str(mr_series_dir))])
    event = QtGui.QDropEvent(QtCore.QPointF(50, 50), QtCore.Qt.CopyAction, mime, QtCore.Qt.LeftButton,
                             QtCore.Qt.NoModifier)
    window.dropEvent(event)
    qtbot.waitUntil(lambda: window.image is not None, timeout=TIMEOUT)
    assert window.image.source == mr_series_dir


def test_bad_file_reports_in_a_dialog(qtbot, window, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    window.load(bad)
    qtbot.waitUntil(lambda: bool(window.errors), timeout=TIMEOUT)
    assert "bad.png" in window.errors[0] and window.image is None
    boxes = [w for w in window.findChildren(QtCore.QObject) if type(w).__name__ == "QMessageBox"]
    assert boxes and "bad.png" in boxes[-1].text()


def test_settings_persist_across_restarts(qtbot, settings_path, pydicom_ct):
    first = MainWindow(Settings(settings_path), show_internal=True)
    qtbot.addWidget(first)
    first.show()
    open_and_wait(qtbot, first, pydicom_ct)
    first.docks["noise"].hide()
    first.set_mode("residual")
    first.actions_by_name["dark"].setChecked(False)
    first._toggle_theme()
    first.method_panel.provider.setCurrentText("cpu")
    first.close()

    second = MainWindow(Settings(settings_path), show_internal=True)
    qtbot.addWidget(second)
    assert second.settings.recent_files()[0] == str(pydicom_ct)
    assert second.view.mode == "split"  # the view mode is not remembered: a new file starts in the split view
    assert not second.actions_by_name["dark"].isChecked()
    assert second.method_panel.provider.currentText() == "cpu"
    assert second.docks["noise"].isHidden()  # the dock layout came back
    assert second.restoreGeometry(second.settings.get("window/geometry"))
    second._fill_recent()
    assert str(pydicom_ct) in second.recent_menu.actions()[0].text()
    second.actions_by_name["dark"].setChecked(True)
    second._toggle_theme()


def test_save_as_writes_result_and_never_overwrites_the_source(qtbot, window, pydicom_ct, tmp_path):
    open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("passthrough")
    out = tmp_path / "out.nii.gz"
    window.save_to(out)  # no result yet: runs the full image first, then saves
    qtbot.waitUntil(lambda: out.exists(), timeout=TIMEOUT)
    before = pydicom_ct.stat().st_mtime_ns
    window.save_to(pydicom_ct)
    assert window.errors and "never overwrites" in window.errors[-1]
    assert pydicom_ct.stat().st_mtime_ns == before
    from quietlens.engine import io

    np.testing.assert_allclose(io.load(out).data, window.image.data, atol=0.5)


def test_save_as_offers_the_kind_formats_and_adds_the_suffix(qtbot, window, pydicom_ct, tmp_path, monkeypatch):
    open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("passthrough")
    offered = {}

    def fake_dialog(parent, caption, start, filters, *args, **kwargs):
        offered["filters"] = filters.split(";;")
        return str(tmp_path / "result"), "NIfTI, compressed (*.nii.gz)"

    monkeypatch.setattr(QtWidgets.QFileDialog, "getSaveFileName", fake_dialog)
    window.save_as()
    assert offered["filters"][0] == "DICOM (*.dcm)" and "DICOM series folder (*)" in offered["filters"]
    qtbot.waitUntil(lambda: (tmp_path / "result.nii.gz").exists() or bool(window.errors), timeout=TIMEOUT)
    assert not window.errors, window.errors
    assert window.settings.last_dir("save") == str(tmp_path)


def test_every_main_action_has_a_shortcut(window):
    for name in ("open", "open_folder", "save", "batch", "quit", "preview", "full", "cancel", "zoom_in", "zoom_out",
                 "fit", "actual", "prev_slice", "next_slice", "mode_before", "mode_after", "mode_split",
                 "mode_residual", "tool_pan", "tool_brush", "tool_rect", "tool_ellipse", "regions", "dark",
                 "axial", "coronal", "sagittal", "win_lung", "shortcuts"):
        assert window.actions_by_name[name].shortcuts(), name
    keys = [k.toString() for a in window.actions_by_name.values() for k in a.shortcuts()]
    assert len(keys) == len(set(keys)), "two actions share a shortcut"



def test_qt_bindings_keep_refcounts(qapp):
    """PySide6 6.12.0 drops a reference to None on every void call (and to True on every signal emit):
    on Python < 3.12 the app then aborts after a few thousand calls. Fail readably instead."""
    import sys

    from PySide6.QtCore import QObject, Signal

    class Emitter(QObject):
        sig = Signal(float)

    e, label = Emitter(), QtWidgets.QLabel()
    none, true = sys.getrefcount(None), sys.getrefcount(True)
    for _ in range(200):
        label.setText("x")
        e.sig.emit(0.5)
    lost = none - sys.getrefcount(None), true - sys.getrefcount(True)
    assert max(lost) < 100, f"the installed PySide6 leaks references ({lost}); install another PySide6 version"
