"""Running methods from the window: full and preview runs, region sliders, cancel, errors, noise, batch."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("pytestqt")

from test_app import TIMEOUT, QtWidgets, drag, open_and_wait, settings_path, window  # noqa: E402,F401 (fixtures)

from quietlens.engine import methods  # noqa: E402
from quietlens.engine.image import KINDS  # noqa: E402
from quietlens.engine.methods import STRENGTH, Method, NoiseModel, Param, blend  # noqa: E402


class Flatten(Method):
    """Replaces the image by its mean (from ``prepare``), blended by strength: every pixel visibly changes."""

    name, title, summary, kinds, user_facing = "test-flatten", "Flatten", "test method", KINDS, False
    params = (STRENGTH, Param("detail", 0.5, 0.0, 1.0, "unused second parameter"))

    def __init__(self):
        self.prepared = self.runs = 0

    def prepare(self, image, progress, cancel, provider="auto"):
        self.prepared += 1
        return {"mean": float(image.data.mean())}

    def noise_model(self, state):
        return NoiseModel(2.0, 3.0, np.array([1.0, 2.0, 4.0]), np.array([13.0, 13.5, 17.0]))

    def run(self, image, state, params, regions, progress, cancel):
        self.runs += 1
        flat = np.full_like(image.data, state["mean"])
        return image.with_data(blend(image.data, flat, params["strength"], (regions or {}).get("strength")))

    def artifacts(self, state):
        return {"sigma": np.full((8, 8), state["mean"], np.float32) + np.eye(8, dtype=np.float32)}


class Box3(Flatten):
    """A local 3×3 mean (reflected borders): its result depends only on a pixel's neighbourhood."""

    name = "test-box3"

    def run(self, image, state, params, regions, progress, cancel):
        a = image.data
        p = np.pad(a, [(1, 1), (1, 1)] + [(0, 0)] * (a.ndim - 2), mode="reflect")
        out = sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9
        return image.with_data(out.astype(np.float32))


class Slow(Flatten):
    name = "test-slow"

    def __init__(self):
        super().__init__()
        self.started = threading.Event()

    def prepare(self, image, progress, cancel, provider="auto"):
        self.started.set()
        for i in range(500):
            cancel.check()
            progress(i / 500, "thinking")
            time.sleep(0.01)
        return super().prepare(image, progress, cancel, provider)


class Broken(Flatten):
    name = "test-broken"

    def run(self, image, state, params, regions, progress, cancel):
        progress(0.5, "half way")
        raise RuntimeError("deliberate failure in run")


@pytest.fixture
def fake(monkeypatch):
    methods.available()  # load the built-in methods first
    made = {cls.name: cls() for cls in (Flatten, Box3, Slow, Broken)}
    for name, m in made.items():
        monkeypatch.setitem(methods._REGISTRY, name, m)
    return made


def run_and_wait(qtbot, window, full=True):
    assert window.run_task is None
    window.run_full() if full else window.run_preview()
    qtbot.waitUntil(lambda: window.run_task is None, timeout=TIMEOUT)
    assert not window.errors, window.errors


def test_passthrough_runs_and_shows_split_result(qtbot, window, pydicom_ct):
    image = open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("passthrough")
    run_and_wait(qtbot, window)
    assert window.result is not None and window.result_target == ("full",)
    np.testing.assert_array_equal(window.result.data, image.data)
    assert window.view.after is not None and window.view.mode == "split"
    assert window.method_panel.progress.value() == 1000 and window.method_panel.preview_button.isEnabled()
    window.set_mode("residual")
    assert window.view.residual is not None


def test_registered_f2n_runs(qtbot, window, pydicom_ct, tmp_path):
    if "f2n" not in [m.name for m in methods.available()]:
        pytest.skip("f2n is not registered in this build")
    from quietlens.engine import io
    from quietlens.engine.noise.ct import simulate_low_dose

    # A low-dose scan of the slice: on the nearly noise-free original the fit rightly changes ~nothing.
    source = io.load(pydicom_ct)
    low = io.save(source.with_data(simulate_low_dose(source.data, pixel_mm=source.spacing[-1])[1]),
                  tmp_path / "low_dose.dcm")
    image = open_and_wait(qtbot, window, low)
    if not window.method_panel.select("f2n"):
        pytest.skip("f2n does not take CT images")
    window.run_full()
    qtbot.waitUntil(lambda: window.run_task is None, timeout=120000)
    assert not window.errors, window.errors
    assert window.result.data.shape == image.data.shape
    assert not np.array_equal(window.result.data, image.data)


def test_a_model_adapted_with_train_is_selectable(qtbot, window, srgb_pairs, tmp_path, monkeypatch):
    """A model family registered in the user data folder appears under the method and runs, with a
    result of its own; with only the shipped family the Model row stays hidden."""
    from quietlens.engine import catalogue

    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "userdata"))
    open_and_wait(qtbot, window, srgb_pairs[0][0])
    panel = window.method_panel
    assert panel.select("cbsn") and panel.model.count() == 1 and not panel.top.isRowVisible(panel.model)
    shipped = catalogue.load()
    for model_id in ("cbsn", "cbsn.student"):  # the shipped pair under a new name, as `train` registers one
        entry = shipped[model_id]
        fields = {k: getattr(entry, k) for k in ("method", "modality", "receptive_field", "tile_multiple")}
        catalogue.register_user_model(entry.path, {**fields, "id": model_id.replace("cbsn", "mine"),
                                                 "provenance": entry.provenance})
    assert panel.select("sdap") and panel.select("cbsn")  # the list is re-read when the method is chosen
    assert [panel.model.itemText(i) for i in range(panel.model.count())] == ["cbsn", "mine"]
    assert panel.top.isRowVisible(panel.model)
    run_and_wait(qtbot, window)
    shipped_result = window.result.data
    panel.model.setCurrentText("mine")
    assert window.result is None  # another model: the old result is not shown as this one's
    run_and_wait(qtbot, window)
    key = window._state_key(window.result_target)
    assert key[1] == "mine" and window.states[key].model == "mine.student"
    np.testing.assert_allclose(window.result.data, shipped_result, atol=1e-6)  # same weights, same pixels

    # the batch dialog offers it too, and the report names it
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(srgb_pairs[0][0], src / "a.png")
    dialog = window.open_batch()
    qtbot.addWidget(dialog)
    dialog.input.setText(str(src))
    dialog.output.setText(str(tmp_path / "out"))
    dialog.method.setCurrentIndex(dialog.method.findData("cbsn"))
    assert dialog.form.isRowVisible(dialog.model) and dialog.model.count() == 2
    dialog.model.setCurrentText("mine")
    dialog.start_button.click()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=TIMEOUT)
    report = json.loads((tmp_path / "out" / "quietlens-report.json").read_text())
    assert report["model"] == "mine" and report["counts"]["done"] == 1


def test_region_slider_changes_only_that_region_and_reuses_the_state(qtbot, window, fake, pydicom_ct):
    image = open_and_wait(qtbot, window, pydicom_ct)
    flatten = fake["test-flatten"]
    assert window.method_panel.select("test-flatten")
    run_and_wait(qtbot, window)
    mean = image.data.mean()
    np.testing.assert_allclose(window.result.data, mean, rtol=1e-5)

    window.set_tool("rect")
    drag(window.view, (20.5, 30.5), (59.5, 69.5))  # plane x 20..59, y 30..69
    region = window.region_panel.current()
    assert region is not None and len(region.shapes) == 1
    runs = flatten.runs
    window.region_panel.sliders["strength"].spin.setValue(0.0)  # no denoising inside the region
    qtbot.waitUntil(lambda: flatten.runs > runs and window.run_task is None, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not window.rerun_timer.isActive() and window.run_task is None, timeout=TIMEOUT)

    inside = np.zeros(image.data.shape, bool)
    inside[30:70, 20:60] = True
    np.testing.assert_array_equal(window.result.data[inside], image.data[inside])
    np.testing.assert_allclose(window.result.data[~inside], mean, rtol=1e-5)
    assert flatten.prepared == 1  # the slider re-ran only ``run``
    assert window.view.overlay is not None

    window.region_panel.delete_current()  # removing the region restores the full effect
    qtbot.waitUntil(lambda: window.run_task is None and not window.rerun_timer.isActive(), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: np.allclose(window.result.data, mean, rtol=1e-5), timeout=TIMEOUT)


def test_intensity_region_limits_to_an_hu_interval(qtbot, window, fake, pydicom_ct):
    image = open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("test-flatten")
    run_and_wait(qtbot, window)
    panel = window.region_panel
    panel.add_region("dense")
    panel.lo.setValue(100.0)
    panel.hi.setValue(3000.0)
    panel.use_range.setChecked(True)
    panel.set_multiplier("strength", 0.0)
    qtbot.waitUntil(lambda: window.run_task is None and not window.rerun_timer.isActive(), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: window.run_task is None and not window.pending_rerun, timeout=TIMEOUT)
    dense = (image.data >= 100) & (image.data <= 3000)
    assert dense.any() and (~dense).any()
    np.testing.assert_array_equal(window.result.data[dense], image.data[dense])
    assert not np.allclose(window.result.data[~dense], image.data[~dense])


def test_preview_is_whole_tiles_and_agrees_with_the_full_run(qtbot, window, fake, srgb_pairs):
    image = open_and_wait(qtbot, window, srgb_pairs[0][0])
    assert window.method_panel.select("test-box3")
    window.view.set_zoom(4.0)
    window.view.cx = window.view.cy = 120.0  # look at the top-left tile of the grid
    run_and_wait(qtbot, window, full=False)
    kind, view, core, box = window.result_target
    assert kind == "preview" and core != (0, 0, *image.data.shape[:2])
    preview = window.result.data.copy()
    assert window.view.preview_box == core
    run_and_wait(qtbot, window, full=True)
    y0, x0, y1, x1 = core
    np.testing.assert_allclose(preview[y0:y1, x0:x1], window.result.data[y0:y1, x0:x1], rtol=1e-6)
    outside = np.ones(image.data.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(preview[outside], image.data[outside])  # untouched outside the preview


def test_volume_preview_touches_only_the_plane_on_screen(qtbot, window, fake, mr_series_dir):
    image = open_and_wait(qtbot, window, mr_series_dir)
    assert window.method_panel.select("test-flatten")
    window.orientation.setCurrentText("coronal")
    index = window.view_state.index
    run_and_wait(qtbot, window, full=False)
    kind, view, core, box = window.result_target
    assert kind == "preview" and view.orientation == "coronal"
    changed = np.argwhere(window.result.data != image.data)
    assert changed.size and (changed[:, 1] == index).all()  # H is the coronal plane's normal
    assert fake["test-flatten"].prepared == 1


def test_cancel_resets_progress_and_enables_run(qtbot, window, fake, pydicom_ct):
    open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("test-slow")
    window.run_full()
    assert fake["test-slow"].started.wait(10)
    qtbot.waitUntil(lambda: window.method_panel.progress.value() > 0, timeout=TIMEOUT)
    assert window.method_panel.cancel_button.isEnabled() and not window.method_panel.full_button.isEnabled()
    t0 = time.monotonic()
    window.method_panel.cancel_button.click()
    qtbot.waitUntil(lambda: window.run_task is None, timeout=TIMEOUT)
    assert time.monotonic() - t0 < 3
    panel = window.method_panel
    assert panel.progress.value() == 0 and panel.full_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert window.result is None and not window.errors and panel.status.text() == "Cancelled"


def test_failing_method_shows_details_and_resets(qtbot, window, fake, pydicom_ct):
    open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("test-broken")
    window.run_full()
    qtbot.waitUntil(lambda: bool(window.errors), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: window.run_task is None, timeout=TIMEOUT)
    assert "deliberate failure" in window.errors[0]
    panel = window.method_panel
    assert panel.progress.value() == 0 and panel.preview_button.isEnabled() and panel.full_button.isEnabled()
    boxes = [w for w in window.findChildren(QtWidgets.QMessageBox)]
    assert boxes and "Traceback" in boxes[-1].detailedText()


def test_noise_panel_shows_the_model_and_maps(qtbot, window, fake, pydicom_ct):
    open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("test-flatten")
    run_and_wait(qtbot, window)
    panel = window.noise_panel
    assert "K = 2" in panel.facts.text() and "σ = 3" in panel.facts.text()
    assert panel.plot.points is not None and panel.plot.line is not None
    assert panel.maps.count() == 1 and panel.maps.currentText() == "sigma"
    assert panel.map_view.pixmap() is not None and not panel.map_view.pixmap().isNull()


def test_batch_with_a_corrupt_file_finishes_and_reports(qtbot, window, srgb_pairs, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, (noisy, _) in enumerate(srgb_pairs[:2]):
        shutil.copy(noisy, src / f"good{i}.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    dialog = window.open_batch()
    qtbot.addWidget(dialog)
    dialog.input.setText(str(src))
    dialog.output.setText(str(out))
    dialog.include.setText("*.png")
    dialog.method.setCurrentIndex(dialog.method.findData("passthrough"))
    dialog.start_button.click()
    assert dialog.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=TIMEOUT)
    statuses = {dialog.table.item(r, 0).text(): dialog.table.item(r, 1).text() for r in range(dialog.table.rowCount())}
    assert statuses == {"broken.png": "failed", "good0.png": "done", "good1.png": "done"}
    row = [r for r in range(3) if dialog.table.item(r, 0).text() == "broken.png"][0]
    assert "broken.png" in dialog.table.item(row, 3).text()
    assert dialog.overall.value() == 3 and dialog.start_button.isEnabled()
    assert "Open the report" in dialog.report.text() and "1 failed" in dialog.file_label.text()
    report = json.loads((out / "quietlens-report.json").read_text())
    assert report["counts"]["failed"] == 1 and report["counts"]["done"] == 2
    assert (out / "good0.png").exists()



def test_batch_that_cannot_start_says_why(qtbot, window, tmp_path):
    dialog = window.open_batch()
    qtbot.addWidget(dialog)
    dialog.input.setText(str(tmp_path))
    dialog.output.setText(str(tmp_path / "inside"))  # the output may not be inside the input
    dialog.method.setCurrentIndex(dialog.method.findData("passthrough"))
    dialog.start_button.click()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=TIMEOUT)
    assert "outside the input folder" in dialog.file_label.text() and dialog.start_button.isEnabled()
    assert dialog.findChildren(QtWidgets.QMessageBox)


def test_batch_cancel_stops_and_reports_the_rest(qtbot, window, fake, srgb_pairs, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, (noisy, _) in enumerate(srgb_pairs[:2]):
        shutil.copy(noisy, src / f"photo{i}.png")
    dialog = window.open_batch()
    qtbot.addWidget(dialog)
    dialog.input.setText(str(src))
    dialog.output.setText(str(tmp_path / "out"))
    dialog.method.setCurrentIndex(dialog.method.findData("test-slow"))
    dialog.start_button.click()
    assert fake["test-slow"].started.wait(10)
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=TIMEOUT)
    assert [dialog.table.item(r, 1).text() for r in range(dialog.table.rowCount())] == ["cancelled", "cancelled"]
    report = json.loads((tmp_path / "out" / "quietlens-report.json").read_text())
    assert report["counts"]["cancelled"] == 2 and not list((tmp_path / "out").glob("*.png"))


def test_save_after_a_slider_move_records_the_moved_parameters(qtbot, window, pydicom_ct, tmp_path):
    """A slider re-run goes through the same provenance stamping as the first run: the saved DICOM names
    the method and the parameters of what is on screen."""
    import pydicom

    open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("passthrough")
    run_and_wait(qtbot, window)
    window.method_panel.set_param("strength", 0.25)
    qtbot.waitUntil(lambda: window.result_target is not None and not window.rerun_timer.isActive()
                    and window.run_task is None, timeout=TIMEOUT)
    assert window.session.last.reused_state
    out = tmp_path / "saved.dcm"
    window.save_to(out)
    qtbot.waitUntil(out.exists, timeout=TIMEOUT)
    assert "method passthrough (strength=0.25)" in pydicom.dcmread(out).DerivationDescription
