"""The app as a newcomer meets it: a truthful status bar and view labels, regions shown where one looks,
readable plots, only useful memories, self-explaining controls, the batch dialog, and *Adapt to my photos*."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("pytestqt")

from test_app import TIMEOUT, QtCore, QtWidgets, drag, open_and_wait, settings_path, window  # noqa: E402,F401
from test_app_processing import fake, run_and_wait  # noqa: E402,F401 (fixtures)

from quietlens.app.settings import Settings  # noqa: E402
from quietlens.app.widgets import ChoiceBox, ScatterPlot, axis_exponent, axis_title, tick_text  # noqa: E402
from quietlens.app.window import MainWindow  # noqa: E402
from quietlens.engine import batch, catalogue, io, regions, runtime  # noqa: E402


# -- telling the truth -------------------------------------------------------------------------------

def test_slice_readout_counts_like_the_slider_and_follows_the_keyboard(qtbot, window, mr_series_dir):
    open_and_wait(qtbot, window, mr_series_dir)
    window._hovered(10, 12)  # the pointer rests over the image
    n = window.slider.maximum() + 1
    shown = window.slider.value() + 1
    assert window.slice_label.text() == f"slice {shown} / {n}"
    assert window.readout.text().startswith(f"x 12, y 10, slice {shown}   ")
    window.view.setFocus()
    qtbot.keyClick(window.view, QtCore.Qt.Key_PageUp)  # no mouse move: the read-out follows anyway
    assert window.slice_label.text() == f"slice {shown + 1} / {n}"
    assert f"slice {shown + 1}   " in window.readout.text()
    value = window.image.data[shown, 10, 12]  # slice shown+1 counted from 1 is index ``shown``
    assert window.readout.text().endswith(f"{value:.1f}")


def test_residual_scale_goes_with_the_residual_view(qtbot, window, pydicom_ct):
    open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("passthrough")
    window.method_panel.set_param("strength", 0.5)
    run_and_wait(qtbot, window)
    window.set_mode("residual")
    label = window.view.label_text()
    assert label.startswith("Residual (input − output)") and "black −" in label and label.endswith("HU")
    for mode in ("after", "split", "before"):
        window.set_mode(mode)
        assert "Residual" not in window.statusBar().currentMessage()
    window.set_mode("after")
    assert window.view.label_text() == "After"
    window.set_window_preset("lung")
    assert "Residual" not in window.statusBar().currentMessage() and window.view.label_text() == "After"


def test_run_messages_name_the_provider_that_ran(qtbot, window, fake, pydicom_ct):
    ran_on = runtime.resolve_provider("auto")
    open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("test-flatten")
    assert window.method_panel.provider.currentText() == "auto"
    run_and_wait(qtbot, window)
    assert f"done on {ran_on} " in window.method_panel.status.text()
    window.set_tool("rect")
    drag(window.view, (20.5, 30.5), (59.5, 69.5))
    window.region_panel.sliders["strength"].spin.setValue(0.0)
    qtbot.waitUntil(lambda: window.session.last.reused_state and window.run_task is None
                    and not window.rerun_timer.isActive(), timeout=TIMEOUT)
    assert f"done on {ran_on} " in window.method_panel.status.text()


def test_status_bar_names_the_camera_and_format_once(qtbot, window, raw_files):
    path = min(raw_files, key=lambda p: p.stat().st_size)
    image = open_and_wait(qtbot, window, path)
    message = window.statusBar().currentMessage()
    camera = image.describe()["camera"]
    assert message == image.headline() and message.count(camera) == 1
    assert message.count(path.suffix.lstrip(".").upper()) == 1 and "raw · raw" not in message
    h, w = image.data.shape
    assert message.endswith(f"{w} × {h} px")


def test_region_drawn_on_the_before_half_shows_its_effect(qtbot, window, fake, pydicom_ct):
    open_and_wait(qtbot, window, pydicom_ct)
    assert window.method_panel.select("test-flatten")
    run_and_wait(qtbot, window)
    assert window.view.mode == "split"
    window.view.divider = 0.5
    window.set_tool("rect")
    drag(window.view, (10.5, 40.5), (40.5, 80.5))  # wholly on the left ("Before") half
    left = window.view.transform().map(QtCore.QPointF(10.5, 0)).x()
    assert window.view.divider_x() <= left  # the region is on the "After" side now
    divider = window.view.divider
    drag(window.view, (100.5, 40.5), (120.5, 60.5))  # already on the "After" side: nothing moves
    assert window.view.divider == divider


def test_noise_plot_labels_share_one_exponent(qtbot):
    assert axis_exponent(0.0, 6.9e-5) == -5 and tick_text(6.9e-5, -5) == "6.9"
    assert axis_title("variance", -5) == "variance (×10⁻⁵)"
    assert axis_exponent(0.0, 1350.0) == 0 and tick_text(1350.0, 0) == "1350"
    assert axis_exponent(14.5, 1.35e5) == 5 and tick_text(1.35e5, 5) == "1.35"
    plot = ScatterPlot()
    qtbot.addWidget(plot)
    plot.resize(230, 200)
    means = np.linspace(0.1, 0.9, 9)
    plot.set_data((means, 2e-5 * means + 5e-5), (means[[0, -1]], 2e-5 * means[[0, -1]] + 5e-5))
    picture = plot.grab().toImage()
    background = plot.palette().base().color()
    # no label runs off the left edge (as "6.9e-05" did, drawn into a fixed 42 px margin)
    edge = {picture.pixelColor(x, y).name() for x in (0, 1) for y in range(picture.height())}
    assert edge == {background.name()}


# -- remembering only what helps -------------------------------------------------------------------

def test_a_new_file_opens_in_the_split_view_labelled_truthfully(qtbot, settings_path, pydicom_ct):
    first = MainWindow(Settings(settings_path), show_internal=True)
    qtbot.addWidget(first)
    first.show()
    first.set_mode("residual")
    first.close()
    second = MainWindow(Settings(settings_path), show_internal=True)
    qtbot.addWidget(second)
    second.show()
    assert second.view.mode == "split" and second.actions_by_name["mode_split"].isChecked()
    second.set_mode("residual")
    open_and_wait(qtbot, second, pydicom_ct)
    assert second.view.mode == "split" and second.view.label_text() == "Before"  # no result yet
    second.cancel()
    second.runner.wait(10000)


def test_recent_files_are_absolute_and_existing(tmp_path, monkeypatch, pydicom_ct):
    settings = Settings(tmp_path / "settings.ini")
    gone = tmp_path / "gone.dcm"
    gone.write_bytes(b"")
    settings.add_recent(gone)
    monkeypatch.chdir(pydicom_ct.parent)
    settings.add_recent(Path(pydicom_ct.name))  # opened by a relative path
    settings.qs.setValue("recent", [*settings.qs.value("recent"), "out/demo/low_dose.dcm"])  # an old entry
    gone.unlink()
    monkeypatch.chdir(tmp_path)
    assert settings.recent_files() == [str(pydicom_ct)]


# -- controls that explain themselves --------------------------------------------------------------

def test_choice_parameters_are_named_options_never_region_multipliers(qtbot, window, srgb_pairs, tmp_path):
    open_and_wait(qtbot, window, srgb_pairs[0][0])
    panel = window.method_panel
    assert panel.select("cbsn")
    network = next(p for p in panel.method().params if p.choices)
    box = panel.sliders[network.name]
    assert isinstance(box, ChoiceBox)
    assert [box.combo.itemText(i) for i in range(box.combo.count())] == [c.capitalize() for c in network.choices]
    regional = [p.name for p in regions.regional_params(panel.method().params)]
    window.region_panel.add_region()
    assert sorted(window.region_panel.sliders) == sorted(regional) and network.name not in regional
    box.combo.setCurrentText("Student")
    assert panel.params()[network.name] == network.choices.index("student")
    run_and_wait(qtbot, window)
    key = window._state_key(window.result_target)
    assert window.states[key].model.endswith(".student")
    dialog = window.open_batch()
    qtbot.addWidget(dialog)
    assert dialog.method.currentData() == "cbsn"  # the open image's method
    assert isinstance(dialog.sliders[network.name], ChoiceBox)


def test_batch_dialog_starts_only_when_ready_and_passes_its_limits(qtbot, window, pydicom_ct, srgb_pairs, tmp_path,
                                                                   monkeypatch):
    dialog = window.open_batch()
    qtbot.addWidget(dialog)
    assert not dialog.overall.isTextVisible()  # no "0 / 100 files" before a batch
    dialog.input.setText("")
    dialog.output.setText("")
    assert not dialog.start_button.isEnabled()
    dialog.input.setText(str(tmp_path / "in"))
    assert not dialog.start_button.isEnabled()
    dialog.output.setText(str(tmp_path / "out"))
    assert dialog.start_button.isEnabled()
    dialog.close()

    open_and_wait(qtbot, window, pydicom_ct)
    expected = window.method_panel.method().name  # the default method for CT
    dialog = window.open_batch()
    qtbot.addWidget(dialog)
    assert dialog.method.currentData() == expected

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(srgb_pairs[0][0], src / "a.png")
    calls = []
    real = batch.run_batch
    monkeypatch.setattr(batch, "run_batch", lambda *a, **k: calls.append(k) or real(*a, **k))
    dialog.input.setText(str(src))
    dialog.output.setText(str(tmp_path / "out"))
    dialog.method.setCurrentIndex(dialog.method.findData("passthrough"))
    dialog.timeout.setValue(120)
    dialog.start_button.click()
    assert dialog.overall.isTextVisible() and not dialog.start_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=60000)
    assert calls[0]["timeout"] == 120 and calls[0]["workers"] is None
    report = json.loads((tmp_path / "out" / batch.REPORT_NAME).read_text())
    assert report["counts"]["done"] == 1 and dialog.overall.text() == "1 / 1 files"
    assert not (tmp_path / "out" / batch.LOCK_NAME).exists()
    assert dialog.workers.specialValueText() and dialog.workers.value() == 0


# -- adapt to my photos ----------------------------------------------------------------------------

def test_an_adapted_model_is_chosen_once_a_photo_opens(qtbot, window, pydicom_ct, srgb_pairs, tmp_path, monkeypatch):
    """Adapted while a CT is open (no C-BSN there): the next photo opens with C-BSN and the new model."""
    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "userdata"))
    shipped = catalogue.load()
    for model_id in ("cbsn", "cbsn.student"):  # the shipped pair under a new name, as training registers one
        entry = shipped[model_id]
        fields = {k: getattr(entry, k) for k in ("method", "modality", "receptive_field", "tile_multiple")}
        catalogue.register_user_model(entry.path, {**fields, "id": model_id.replace("cbsn", "mine"),
                                                 "provenance": entry.provenance})
    open_and_wait(qtbot, window, pydicom_ct)
    window._adapted("cbsn", "mine", str(srgb_pairs[0][0]))
    assert "when you open a photo" in window.statusBar().currentMessage()
    open_and_wait(qtbot, window, srgb_pairs[0][0])
    panel = window.method_panel
    assert panel.method().name == "cbsn" and panel.model.currentText() == "mine"
    panel.model.setCurrentText("cbsn")  # the user's own later choice sticks
    open_and_wait(qtbot, window, srgb_pairs[1][0])
    assert panel.model.currentText() == "cbsn"


@pytest.fixture
def my_photos(shared_data, tmp_path):
    """A tiny folder of real noisy photos: centre crops of three DND patches."""
    folder = tmp_path / "my photos"
    folder.mkdir()
    for path in sorted((shared_data / "real_noisy" / "dnd_patches").glob("*.png"))[:3]:
        image = io.load(path)
        h, w = image.data.shape[:2]
        io.save(image.with_data(image.data[h // 2 - 64:h // 2 + 64, w // 2 - 64:w // 2 + 64]), folder / path.name)
    return folder


@pytest.mark.slow  # a real (one-step) training of the shipped model, then its checked ONNX export
def test_adapt_to_my_photos_trains_resumes_registers_and_shows(qtbot, window, my_photos, srgb_pairs, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "userdata"))
    open_and_wait(qtbot, window, srgb_pairs[0][0])
    dialog = window.open_adapt()
    qtbot.addWidget(dialog)
    seen: list[list[str]] = [[]]  # the progress messages of each run (the first, then the resumed one)
    dialog.folder.setText(str(my_photos))
    dialog.method.setCurrentIndex(dialog.method.findData("cbsn"))
    dialog.unit.setCurrentText("steps")
    dialog.budget.setValue(1)  # one network step (and four of its student): a real run, briefly
    dialog.name.setText("mycam")
    show = dialog._progress

    def spy(fraction, message):
        seen[-1].append(message)
        show(fraction, message)

    dialog._progress = spy  # connected when a run starts
    dialog.start_button.click()
    qtbot.waitUntil(lambda: any(m.startswith("step 1/1") for m in seen[0]), timeout=180000)
    assert dialog.eta.text().startswith("about ")
    dialog.cancel_button.click()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=180000)
    assert "Cancelled" in dialog.status.text() and dialog.start_button.text() == "Resume"
    assert "mycam" not in catalogue.load()  # nothing registered by a cancelled run
    assert dialog.plot.series  # the loss of the steps that ran

    seen.append([])
    dialog.start_button.click()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=300000)
    assert dialog.model_name == "mycam", dialog.status.text()
    network = [m.split()[1] for run in seen for m in run if m.startswith("step") and m.split()[1].endswith("/1")]
    assert network == ["1/1"]  # resumed where it stopped: the network step did not run again
    assert [m for m in seen[1] if m.startswith("step")]  # and the resumed run went on training
    assert len(dialog.plot.series) >= 1 and all(dialog.plot.series.values())
    assert {"mycam", "mycam.student"} <= set(catalogue.load())
    panel = window.method_panel
    assert panel.method().name == "cbsn" and panel.model.currentText() == "mycam"  # chosen in the window
    before, after = dialog.before.pixmap().toImage(), dialog.after.pixmap().toImage()
    assert not before.isNull() and before.size() == after.size() and before != after
    assert dialog.photo.parent == my_photos and dialog.result_box.isVisible()
    panel.select("sdap")  # the user looked at something else meanwhile
    dialog.open_button.click()  # the photo in the main window, with the adapted model, previewed
    qtbot.waitUntil(lambda: window.image.source == dialog.photo and window.result is not None
                    and window.run_task is None, timeout=120000)
    assert not window.errors, window.errors
    assert panel.method().name == "cbsn" and panel.model.currentText() == "mycam"
    assert window._state_key(window.result_target)[1] == "mycam"


def test_adapting_on_a_folder_without_photos_says_why(qtbot, window, tmp_path, monkeypatch):
    monkeypatch.setenv("QUIETLENS_DATA", str(tmp_path / "userdata"))
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no photos here")
    dialog = window.open_adapt()
    qtbot.addWidget(dialog)
    dialog.folder.setText("")
    assert not dialog.start_button.isEnabled()
    dialog.folder.setText(str(folder))
    dialog.start_button.click()
    qtbot.waitUntil(lambda: dialog.task is None, timeout=120000)
    assert dialog.status.text().startswith("Could not adapt:") and "no usable noisy photos" in dialog.status.text()
    assert dialog.findChildren(QtWidgets.QMessageBox) and dialog.start_button.isEnabled()
    assert not (tmp_path / "userdata" / "models").exists()
