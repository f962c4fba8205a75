"""The QuietLens main window: a view over an engine :class:`~quietlens.engine.session.Session`.

The session owns the processing (targets, prepared states, results with provenance, saving); the window
shows its results, turns widgets into its calls, and runs those calls on worker threads.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QByteArray, Qt, QTimer, QUrl
from PySide6.QtGui import QAction, QActionGroup, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QApplication, QComboBox, QDockWidget, QFileDialog, QHBoxLayout, QLabel, QMainWindow, QMessageBox, QSlider,
    QSpinBox, QVBoxLayout, QWidget,
)

from quietlens.engine import __version__, display, io, methods, regions, runtime, viewmath
from quietlens.engine.image import MEDICAL_KINDS, Image, readable_number
from quietlens.engine.io import formats
from quietlens.engine.regions import Shape
from quietlens.engine.session import FULL, Outcome, Session

from .adapt_dialog import AdaptDialog
from .batch_dialog import BatchDialog
from .panels import MethodPanel, NoisePanel, RegionPanel
from .settings import Settings, apply_theme
from .viewer import ImageView
from .widgets import HistogramWidget, warn
from .workers import Runner, Task

OPEN_FILTER = f"Images ({' '.join('*' + s for s in formats.INPUT_SUFFIXES)});;All files (*)"
RERUN_DELAY_MS = 120
UNITS = {"ct": "HU", "raw": "(normalised)", "photo": "(0–1)"}


@dataclass
class Shown:
    """A finished run and what the view needs to show it, prepared on the worker thread."""

    session: Session
    outcome: Outcome
    raw_after: Any  # RAW: the rendered result (LibRaw), else None
    maps: dict  # the method's maps as 8-bit grey images


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings | None = None, show_internal: bool | None = None):
        super().__init__()
        self.settings = settings or Settings()
        self.show_internal = (os.environ.get("QUIETLENS_SHOW_INTERNAL") == "1") if show_internal is None else show_internal
        self.runner = Runner(self)
        self.session: Session | None = None
        self.view_state = viewmath.View()
        self.win: tuple[float, float] | None = None
        self.raw_before = None
        self.raw_after = None
        self.run_task: Task | None = None
        self.load_task: Task | None = None
        self.pending_rerun = False
        self.then_save: tuple[Path, bool] | None = None
        self.hover: tuple[int, int] | None = None  # the plane pixel under the pointer
        self.errors: list[str] = []
        self.show_regions = True
        self.batch_dialog: BatchDialog | None = None
        self.adapt_dialog: AdaptDialog | None = None

        self.view = ImageView()
        self.view.hovered.connect(self._hovered)
        self.view.shape_drawn.connect(self._shape_drawn)
        self.view.window_dragged.connect(self._window_dragged)
        self.view.slice_step.connect(lambda d: self.slider.setValue(self.slider.value() + d))
        self.orientation = QComboBox()
        self.orientation.setToolTip("Plane orientation (Alt+1, Alt+2, Alt+3)")
        self.orientation.currentTextChanged.connect(self._orientation_changed)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setToolTip("Slice (Page Up / Page Down, or Up / Down over the image)")
        self.slider.valueChanged.connect(self._slice_changed)
        self.slice_label = QLabel("")
        self.slice_label.setMinimumWidth(90)
        self.frame = QSpinBox(prefix="frame ")
        self.frame.setToolTip("Time point of a 4-D volume")
        self.frame.valueChanged.connect(self._frame_changed)
        self.volume_bar = QWidget()
        bar = QHBoxLayout(self.volume_bar)
        bar.setContentsMargins(6, 0, 6, 0)
        for w, stretch in ((self.orientation, 0), (self.slider, 1), (self.slice_label, 0), (self.frame, 0)):
            bar.addWidget(w, stretch)
        self.volume_bar.setVisible(False)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 4)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.volume_bar)
        self.setCentralWidget(body)

        self.method_panel = MethodPanel()
        self.method_panel.set_providers(runtime.available_providers(), str(self.settings.get("provider", "auto")))
        self.method_panel.method_changed.connect(self._method_changed)
        self.method_panel.params_changed.connect(self.schedule_rerun)
        self.method_panel.provider_changed.connect(lambda p: self.settings.set("provider", p))
        self.method_panel.preview_requested.connect(self.run_preview)
        self.method_panel.full_requested.connect(self.run_full)
        self.method_panel.cancel_requested.connect(self.cancel)
        self.region_panel = RegionPanel()
        self.region_panel.changed.connect(self._regions_changed)
        self.region_panel.selection_changed.connect(self._update_overlay)
        self.region_panel.tool_changed.connect(self.set_tool)
        self.region_panel.brush_changed.connect(lambda r: setattr(self.view, "brush_radius", float(r)))
        self.histogram = HistogramWidget()
        self.noise_panel = NoisePanel()
        self.docks = {}
        for name, title, widget, area in (("method", "Method", self.method_panel, Qt.RightDockWidgetArea),
                                          ("regions", "Regions", self.region_panel, Qt.RightDockWidgetArea),
                                          ("histogram", "Histogram", self.histogram, Qt.LeftDockWidgetArea),
                                          ("noise", "Noise", self.noise_panel, Qt.LeftDockWidgetArea)):
            dock = QDockWidget(title, self)
            dock.setObjectName(f"dock-{name}")
            dock.setWidget(widget)
            self.addDockWidget(area, dock)
            self.docks[name] = dock
        self.resizeDocks([self.docks["method"], self.docks["histogram"]], [340, 250], Qt.Horizontal)

        self.readout = QLabel("")
        self.readout.setMinimumWidth(360)
        self.window_label = QLabel("")
        self.window_label.setToolTip("Window centre / width (right-drag on the image to change)")
        self.zoom_label = QLabel("")
        self.zoom_label.setMinimumWidth(60)
        self.statusBar().addPermanentWidget(self.readout)
        self.statusBar().addPermanentWidget(self.window_label)
        self.statusBar().addPermanentWidget(self.zoom_label)
        self.view.view_changed.connect(lambda: self.zoom_label.setText(f"{self.view.zoom * 100:.0f} %"))
        self.rerun_timer = QTimer(self, singleShot=True, interval=RERUN_DELAY_MS)
        self.rerun_timer.timeout.connect(self._rerun)

        self._actions()
        self.setAcceptDrops(True)
        self.setWindowTitle("QuietLens")
        self.resize(1280, 820)
        self._restore()
        self._update_actions()
        self.statusBar().showMessage("Open a photo, RAW file, DICOM file or series folder, or NIfTI volume (Ctrl+O)")

    # -- what the session holds ----------------------------------------------------------------------

    @property
    def image(self) -> Image | None:
        return self.session.image if self.session else None

    @property
    def result(self) -> Image | None:
        last = self.session.last if self.session else None
        return last.result if last else None

    @property
    def result_target(self) -> tuple | None:
        last = self.session.last if self.session else None
        return last.target if last else None

    @property
    def states(self) -> dict:
        return self.session.states if self.session else {}

    # -- actions and menus ---------------------------------------------------------------------------

    def _action(self, text: str, slot, shortcut=None, tip: str = "", checkable: bool = False) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            keys = shortcut if isinstance(shortcut, list) else [shortcut]
            action.setShortcuts([QKeySequence(k) for k in keys])
        action.setToolTip(tip or text.replace("&", "").rstrip("…"))
        action.setCheckable(checkable)
        action.triggered.connect(slot)
        self.addAction(action)  # shortcuts work even with the menu bar hidden
        return action

    def _actions(self) -> None:
        a = self.actions_by_name = {}
        a["open"] = self._action("&Open…", self.open_file, QKeySequence.Open)
        a["open_folder"] = self._action("Open DICOM &folder…", self.open_folder, "Ctrl+Shift+O")
        a["save"] = self._action("&Save result as…", self.save_as, ["Ctrl+Shift+S", "Ctrl+S"])
        a["batch"] = self._action("&Batch…", self.open_batch, "Ctrl+B", "Denoise a whole folder")
        a["adapt"] = self._action("&Adapt to my photos…", self.open_adapt, "Ctrl+Shift+A",
                                  "Teach C-BSN or SDAP the noise of your camera from a folder of your photos")
        a["quit"] = self._action("&Quit", self.close, QKeySequence.Quit)
        a["preview"] = self._action("&Preview", self.run_preview, ["F5", "Ctrl+R"], "Denoise the part on screen")
        a["full"] = self._action("Run &full image", self.run_full, ["Ctrl+F5", "Ctrl+Shift+R"])
        a["cancel"] = self._action("&Cancel", self.cancel, "Esc")
        a["zoom_in"] = self._action("Zoom &in", lambda: self.view.zoom_by(1.25), ["Ctrl+=", "+", "="])
        a["zoom_out"] = self._action("Zoom &out", lambda: self.view.zoom_by(0.8), ["Ctrl+-", "-"])
        a["fit"] = self._action("&Fit to window", self.view.fit, ["Ctrl+0", "F"])
        a["actual"] = self._action("&Actual size (1:1)", self.view.actual_size, ["Ctrl+1", "1"])
        a["prev_slice"] = self._action("Previous slice", lambda: self.slider.setValue(self.slider.value() - 1),
                                       ["PgDown", ","])
        a["next_slice"] = self._action("Next slice", lambda: self.slider.setValue(self.slider.value() + 1),
                                       ["PgUp", "."])
        self.mode_group = QActionGroup(self)
        for mode, text, key in (("before", "&Input", "I"), ("after", "&Result", "A"),
                                ("split", "&Split before/after", "S"), ("residual", "Resi&dual (input − output)", "D")):
            act = self._action(text, lambda _=False, m=mode: self.set_mode(m), key, checkable=True)
            self.mode_group.addAction(act)
            a[f"mode_{mode}"] = act
        self.tool_group = QActionGroup(self)
        for tool, text, key in (("pan", "&Pan", "H"), ("brush", "&Brush", "B"), ("rect", "&Rectangle", "M"),
                                ("ellipse", "&Ellipse", "E")):
            act = self._action(text, lambda _=False, t=tool: self.set_tool(t), key, checkable=True)
            self.tool_group.addAction(act)
            a[f"tool_{tool}"] = act
        a["tool_pan"].setChecked(True)
        a["regions"] = self._action("Show re&gions", self._toggle_regions, "O", checkable=True)
        a["regions"].setChecked(True)
        a["dark"] = self._action("&Dark theme", self._toggle_theme, "Ctrl+Shift+T", checkable=True)
        for i, o in enumerate(viewmath.ORIENTATIONS):
            a[o] = self._action(o.capitalize(), lambda _=False, o=o: self.orientation.setCurrentText(o), f"Alt+{i + 1}")
        a["win_file"] = self._action("From the &file", lambda: self.set_window_preset("file"), "Ctrl+Alt+0")
        a["win_auto"] = self._action("&Automatic", lambda: self.set_window_preset("auto"), "Ctrl+Alt+9")
        for i, name in enumerate(display.CT_PRESETS):
            a[f"win_{name}"] = self._action(f"CT {name}", lambda _=False, n=name: self.set_window_preset(n),
                                            f"Ctrl+Alt+{i + 1}")
        a["shortcuts"] = self._action("&Keyboard shortcuts", self.show_shortcuts, "F1")
        a["about"] = self._action("&About QuietLens", self.show_about)

        menu = self.menuBar().addMenu("&File")
        menu.addActions([a["open"], a["open_folder"]])
        self.recent_menu = menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        menu.addSeparator()
        menu.addActions([a["save"], a["batch"], a["adapt"]])
        menu.addSeparator()
        menu.addAction(a["quit"])
        menu = self.menuBar().addMenu("&View")
        menu.addActions([a["zoom_in"], a["zoom_out"], a["fit"], a["actual"]])
        menu.addSeparator()
        menu.addActions(self.mode_group.actions())
        menu.addSeparator()
        menu.addActions([a[o] for o in viewmath.ORIENTATIONS] + [a["prev_slice"], a["next_slice"]])
        self.window_menu = menu.addMenu("&Window / level")
        self.window_menu.addActions([a["win_file"], a["win_auto"]] + [a[f"win_{n}"] for n in display.CT_PRESETS])
        menu.addSeparator()
        menu.addActions([a["regions"], a["dark"]])
        panels = menu.addMenu("&Panels")
        panels.addActions([d.toggleViewAction() for d in self.docks.values()])
        menu = self.menuBar().addMenu("&Process")
        menu.addActions([a["preview"], a["full"], a["cancel"]])
        menu.addSeparator()
        menu.addActions(self.tool_group.actions())
        menu = self.menuBar().addMenu("&Help")
        menu.addActions([a["shortcuts"], a["about"]])

        tb = self.addToolBar("Main")
        tb.setObjectName("toolbar-main")
        tb.setToolButtonStyle(Qt.ToolButtonTextOnly)
        tb.addActions([a["open"], a["save"], a["batch"], a["adapt"]])
        tb.addSeparator()
        tb.addActions([a["preview"], a["full"], a["cancel"]])
        tb.addSeparator()
        tb.addActions(self.mode_group.actions())
        tb.addSeparator()
        tb.addActions([a["fit"], a["actual"]])
        tb.addSeparator()
        self.preset = QComboBox()
        self.preset.setToolTip("Window / level (right-drag on the image to adjust)")
        self.preset.addItems(["file", "auto", *display.CT_PRESETS])
        self.preset.textActivated.connect(self.set_window_preset)
        tb.addWidget(QLabel(" Window "))
        tb.addWidget(self.preset)
        a["mode_split"].setChecked(True)

    def _update_actions(self) -> None:
        has = self.image is not None
        busy = self.run_task is not None
        medical = has and self.image.kind in MEDICAL_KINDS
        for name in ("preview", "full"):
            self.actions_by_name[name].setEnabled(has and not busy and self.method_panel.method() is not None)
        self.actions_by_name["cancel"].setEnabled(busy)
        self.actions_by_name["save"].setEnabled(has and self.method_panel.method() is not None)
        for name in ["win_file", "win_auto", *(f"win_{n}" for n in display.CT_PRESETS)]:
            self.actions_by_name[name].setEnabled(medical and (self.image.kind == "ct" or not name[4:] in display.CT_PRESETS))
        self.window_menu.setEnabled(medical)
        self.preset.setEnabled(medical)
        volume = has and "Z" in self.image.axes
        for o in viewmath.ORIENTATIONS:
            self.actions_by_name[o].setEnabled(volume)
        self.method_panel.set_busy(busy)
        if not has:
            self.method_panel.preview_button.setEnabled(False)
            self.method_panel.full_button.setEnabled(False)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_files()
        for i, path in enumerate(recent):
            act = self.recent_menu.addAction(f"&{(i + 1) % 10} {path}")
            act.triggered.connect(lambda _=False, p=path: self.load(Path(p)))
        if recent:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear the list", self.settings.clear_recent)
        else:
            self.recent_menu.addAction("(none yet)").setEnabled(False)

    # -- settings ------------------------------------------------------------------------------------

    def _restore(self) -> None:
        geometry, state = self.settings.get("window/geometry"), self.settings.get("window/state")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        if isinstance(state, QByteArray):
            self.restoreState(state)
        dark = self.settings.get("theme", "dark") == "dark"
        self.actions_by_name["dark"].setChecked(dark)
        app = QApplication.instance()
        if app is not None:
            apply_theme(app, "dark" if dark else "light")

    def save_settings(self) -> None:
        self.settings.set("window/geometry", self.saveGeometry())
        self.settings.set("window/state", self.saveState())
        self.settings.set("provider", self.method_panel.provider.currentText())
        m = self.method_panel.method()
        if m is not None:
            self.settings.set("method", m.name)
        self.settings.sync()

    def closeEvent(self, event) -> None:  # noqa: N802
        self.cancel()
        for dialog in (self.batch_dialog, self.adapt_dialog):
            if dialog is not None:
                dialog.cancel()
        self.save_settings()
        self.runner.wait(15000)  # let a save in flight finish (cancelled runs stop at their next step)
        super().closeEvent(event)

    def _toggle_theme(self) -> None:
        theme = "dark" if self.actions_by_name["dark"].isChecked() else "light"
        self.settings.set("theme", theme)
        apply_theme(QApplication.instance(), theme)

    # -- opening -------------------------------------------------------------------------------------

    def open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", self.settings.last_dir("open"), OPEN_FILTER)
        if path:
            self.load(Path(path))

    def open_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open DICOM series folder", self.settings.last_dir("open"))
        if path:
            self.load(Path(path))

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.load(paths[0])

    def load(self, path: Path, then: Callable[[], None] | None = None) -> Task:
        """Open ``path`` in the background; ``then`` runs once the window shows it (connected before the
        task starts: a small file can finish before a caller could connect to the task)."""
        path = Path(path)
        self.statusBar().showMessage(f"Loading {path}…")

        def work(ctx):
            ctx.progress(0.1, "reading")
            image = io.load(path)
            raw = viewmath.display_plane(image, viewmath.View())[0] if image.kind == "raw" else None
            return image, raw

        self.load_task = self.runner.start(
            work, finished=lambda r: (self.set_image(*r), then and then()), name="load",
            failed=lambda msg, details: self.report_error("Could not open the file", msg, details))
        return self.load_task

    def set_image(self, image: Image, raw_pixels=None) -> None:
        self.cancel()
        self.load_task = None
        self.session = Session(image)
        self.raw_before = raw_pixels if image.kind == "raw" else None
        self._clear_result()
        self.win = viewmath.initial_window(image)
        self._show_window()
        self.hover = None
        self.readout.setText("")
        self.set_mode("split")  # a new file: the input, then before/after once a result comes
        self.region_panel.clear()
        lo, hi = (self.win[0] - self.win[1] / 2, self.win[0] + self.win[1] / 2) if self.win else (0.0, 1.0)
        self.region_panel.set_intensity_unit(UNITS.get(image.kind, ""), round(lo, 1), round(hi, 1))
        orientations = viewmath.orientations(image)
        self.orientation.blockSignals(True)
        self.orientation.clear()
        self.orientation.addItems(list(orientations))
        self.orientation.blockSignals(False)
        frames = viewmath.frame_count(image)
        self.frame.blockSignals(True)
        self.frame.setRange(0, frames - 1)
        self.frame.setValue(0)
        self.frame.blockSignals(False)
        self.frame.setVisible(frames > 1)
        self.orientation.setVisible(len(orientations) > 1)
        planes = viewmath.plane_count(image, "axial")
        self.view_state = viewmath.View("axial", planes // 2, 0)
        self._set_slider()
        self.volume_bar.setVisible(planes > 1 or frames > 1)
        self.view.window_enabled = image.kind in MEDICAL_KINDS
        self.preset.blockSignals(True)
        self.preset.clear()
        self.preset.addItems(["file", "auto", *(display.CT_PRESETS if image.kind == "ct" else ())])
        self.preset.setCurrentText("file")
        self.preset.blockSignals(False)
        keep = self.method_panel.method().name if self.method_panel.method() else self.settings.get("method", "")
        self.method_panel.set_methods(methods.available(image.kind, include_internal=self.show_internal), keep=keep,
                                      kind=image.kind)
        name = image.source.name if image.source else "untitled"
        self.setWindowTitle(f"{name} — QuietLens")
        if image.source is not None:
            self.settings.add_recent(image.source)
            self.settings.set_last_dir("open", image.source)
        self.statusBar().showMessage(image.headline())
        self.refresh(refit=True)
        self._update_actions()

    # -- display -------------------------------------------------------------------------------------

    def _set_slider(self) -> None:
        n = viewmath.plane_count(self.image, self.view_state.orientation)
        self.slider.blockSignals(True)
        self.slider.setRange(0, n - 1)
        self.slider.setValue(min(self.view_state.index, n - 1))
        self.slider.blockSignals(False)
        self.slider.setVisible(n > 1)
        self.slice_label.setText(f"slice {self.view_state.index + 1} / {n}" if n > 1 else "")

    def _plane_pixels(self, image: Image, raw_cached) -> tuple[Any, float]:
        if image.kind == "raw":
            return raw_cached, self.image.data.shape[0] / max(raw_cached.shape[0], 1)
        return viewmath.display_plane(image, self.view_state, self.win)

    def refresh(self, refit: bool = False) -> None:
        """Redraw everything that depends on the plane, the window or the result."""
        image = self.image
        if image is None:
            return
        h, w = viewmath.plane_shape(image, self.view_state.orientation)
        self.view.set_plane(w, h, viewmath.plane_aspect(image, self.view_state.orientation), refit=refit)
        before, scale = self._plane_pixels(image, self.raw_before)
        self.view.set_before(before, scale)
        self._refresh_after()
        self._update_overlay()
        self._refresh_histogram()

    def _refresh_after(self) -> None:
        if self.result is None:
            self.view.set_after(None)
            self.view.set_residual(None)
            self.view.preview_box = None
            return
        after, scale = self._plane_pixels(self.result, self.raw_after)
        self.view.set_after(after, scale)
        if self.view.mode == "residual":
            grey, spread = viewmath.residual(viewmath.plane(self.image, self.view_state),
                                             viewmath.plane(self.result, self.view_state))
            # on the view, not the status bar: it describes this picture and goes with it
            scale, unit = viewmath.value_units(self.image)  # the read-out's units
            self.view.set_residual(grey, f"black −{spread * scale:.3g}, white +{spread * scale:.3g} {unit}".rstrip())
        else:
            self.view.set_residual(None)
        target = self.result_target or ("full",)
        same_plane = target[0] == "preview" and target[1] == self.view_state
        self.view.preview_box = target[2] if same_plane else None

    def _refresh_histogram(self) -> None:
        pixels = viewmath.plane(self.image, self.view_state)
        counts, edges = viewmath.histogram(pixels, value_range=(0.0, 1.0) if self.image.kind == "photo" else None)
        self.histogram.set_histogram(viewmath.histogram_heights(counts), edges, self.win,
                                     UNITS.get(self.image.kind, "") if self.image.kind == "ct" else "")

    def _update_overlay(self) -> None:
        if self.image is None:
            return
        shown = [r for r in self.region_panel.regions if not r.empty] if self.show_regions else []
        if not shown:
            self.view.set_overlay(None)
            return
        h, w = viewmath.plane_shape(self.image, self.view_state.orientation)
        stride = max(1, int((h * w / 4e6) ** 0.5 + 0.999))
        masks = [(viewmath.spatial_plane(regions.region_mask(r, self.image), self.image, self.view_state),
                  self.region_panel.colour(r)) for r in shown]
        selected = self.region_panel.current()
        alpha = 70 if selected is None else 60
        self.view.set_overlay(viewmath.overlay(masks, alpha=alpha, stride=stride), float(stride))

    def set_mode(self, mode: str) -> None:
        self.view.set_mode(mode)
        self.actions_by_name[f"mode_{mode}"].setChecked(True)
        if self.image is not None:
            self._refresh_after()

    def set_tool(self, tool: str) -> None:
        self.view.set_tool(tool)
        self.actions_by_name[f"tool_{tool}"].setChecked(True)
        self.region_panel.tool_buttons[tool].setChecked(True)

    def _toggle_regions(self) -> None:
        self.show_regions = self.actions_by_name["regions"].isChecked()
        self._update_overlay()

    def _orientation_changed(self, orientation: str) -> None:
        if self.image is None or not orientation:
            return
        n = viewmath.plane_count(self.image, orientation)
        self.view_state = viewmath.View(orientation, n // 2, self.view_state.frame)
        self._set_slider()
        self.refresh(refit=True)
        self._hovered(-1, -1)  # another plane: the pointer is over other pixels now

    def _slice_changed(self, index: int) -> None:
        if self.image is None:
            return
        self.view_state = viewmath.View(self.view_state.orientation, index, self.view_state.frame)
        self._set_slider()
        self.refresh()
        self._show_readout()

    def _frame_changed(self, frame: int) -> None:
        if self.image is not None:
            self.view_state = viewmath.View(self.view_state.orientation, self.view_state.index, frame)
            self.refresh()
            self._show_readout()

    def set_window(self, centre: float, width: float) -> None:
        self.win = (float(centre), max(float(width), 1e-6))
        if self.image is not None:
            self.view.set_before(*self._plane_pixels(self.image, self.raw_before))
            self._refresh_after()
            self.histogram.window = self.win
            self.histogram.update()
        self._show_window()

    def _show_window(self) -> None:
        self.window_label.setText(f"W/L {readable_number(self.win[1])} / {readable_number(self.win[0])}"
                                  if self.win else "")

    def set_window_preset(self, name: str) -> None:
        if self.image is None or self.image.kind not in MEDICAL_KINDS:
            return
        if name == "file":
            win = viewmath.initial_window(self.image)
        elif name == "auto":
            win = display.auto_window(viewmath.plane(self.image, self.view_state))
        else:
            win = display.CT_PRESETS[name]
        self.preset.setCurrentText(name)
        self.set_window(*win)

    def _window_dragged(self, dx: float, dy: float) -> None:
        if self.win is None:
            return
        centre, width = self.win
        self.set_window(centre - dy * width * 0.005, width * (1.01 ** dx))

    def _hovered(self, row: int, col: int) -> None:
        self.hover = (row, col) if row >= 0 else None
        self._show_readout()

    def _show_readout(self) -> None:
        """The value under the pointer, on the plane shown now (it follows slice changes by keyboard)."""
        if self.image is None or self.hover is None:
            self.readout.setText("")
            return
        row, col = self.hover
        text = viewmath.readout(self.image, self.view_state, row, col)
        if self.result is not None and text:
            after = viewmath.readout(self.result, self.view_state, row, col).split("   ", 1)[-1]
            text += f"   → {after}"
        self.readout.setText(text)

    # -- regions -------------------------------------------------------------------------------------

    def _shape_drawn(self, tool: str, points: list, radius: float) -> None:
        if self.image is None:
            return
        self.region_panel.add_shape(Shape(tool, [tuple(p) for p in points], radius, self.view_state.orientation))
        reach = radius if tool == "brush" else 0.0
        self.view.reveal(min(p[0] for p in points) - reach, max(p[0] for p in points) + reach)

    def _regions_changed(self) -> None:
        self._update_overlay()
        self.schedule_rerun()

    # -- processing ----------------------------------------------------------------------------------

    def _method_changed(self) -> None:
        m = self.method_panel.method()
        self.region_panel.set_params(m.params if m else ())
        if self.result is not None:
            self._clear_result()
            self.refresh()
        self._update_actions()

    def _clear_result(self) -> None:
        if self.session is not None:
            self.session.forget()
        self.raw_after = None
        self.noise_panel.set_model(None, "")
        self.noise_panel.set_maps({})
        self.view.preview_box = None

    def _state_key(self, target: tuple) -> tuple | None:
        m = self.method_panel.method()
        return None if m is None else Session.state_key(m, self.method_panel.provider.currentText(), target)

    def preview_target(self) -> tuple:
        """("preview", view, core box, crop box) for the plane on screen; FULL when that is everything."""
        return self.session.preview_target(self.method_panel.method(), self.view_state, self.view.visible_box())

    def run_preview(self) -> None:
        if self.image is not None:
            self.start_run(self.preview_target())

    def run_full(self) -> None:
        if self.image is not None:
            self.start_run(FULL)

    def schedule_rerun(self) -> None:
        """A slider moved: re-run (run only, with the cached state) shortly, coalescing rapid moves."""
        m = self.method_panel.method()
        if self.result_target is not None and m is not None and self.session.prepared(
                m, self.method_panel.provider.currentText(), self.result_target):
            self.rerun_timer.start()

    def _rerun(self) -> None:
        if self.run_task is not None:
            self.pending_rerun = True
        elif self.result_target is not None:
            self.start_run(self.result_target)

    def start_run(self, target: tuple) -> Task | None:
        method = self.method_panel.method()
        if self.image is None or method is None or self.run_task is not None:
            return None
        session, view = self.session, self.view_state
        params = self.method_panel.params()
        provider = self.method_panel.provider.currentText()
        region_list = copy.deepcopy(self.region_panel.regions)
        prepared = session.prepared(method, provider, target)

        def work(ctx):
            out = session.run(method, params, region_list, target, provider, ctx.progress, ctx.cancel)
            raw_after = viewmath.display_plane(out.result, view)[0] if out.result.kind == "raw" else None
            return Shown(session, out, raw_after, viewmath.grey_maps(out.maps()))

        self.method_panel.set_progress(0.0, "Running…" if prepared else "Preparing…")
        self.run_task = self.runner.start(work, finished=self._run_finished, failed=self._run_failed,
                                          cancelled=self._run_cancelled, progress=self.method_panel.set_progress,
                                          name="run")
        self._update_actions()
        return self.run_task

    def cancel(self) -> None:
        self.pending_rerun = False
        self.then_save = None
        if self.run_task is not None:
            self.run_task.cancel.cancel()
            self.method_panel.status.setText("Cancelling…")

    def _run_done(self) -> None:
        self.run_task = None
        self._update_actions()

    def _run_finished(self, shown: Shown) -> None:
        self._run_done()
        if shown.session is not self.session:
            return  # another image was opened meanwhile
        out = shown.outcome
        first = self.view.after is None  # nothing was shown yet
        self.raw_after = shown.raw_after
        self.noise_panel.set_model(out.noise, out.method.title)
        self.noise_panel.set_maps(shown.maps)
        what = "Full image" if out.target == FULL else "Preview"
        times = ", ".join(f"{k} {v:.2f} s" if v >= 0.005 else f"{k} < 0.01 s" for k, v in out.seconds.items())
        self.method_panel.set_progress(1.0, f"{what} done on {out.provider} ({times})")
        message = f"{what} denoised with {out.method.title}"
        self.statusBar().showMessage("  ".join([message, *out.warnings]), 0 if out.warnings else 8000)
        if first and self.view.mode == "before":
            self.set_mode("split")  # show what the run did; later slider re-runs keep the user's choice
        self._refresh_after()
        self._show_readout()
        if self.pending_rerun:
            self.pending_rerun = False
            self.start_run(self.result_target)
        elif self.then_save is not None:
            if out.target == FULL:
                path, overwrite = self.then_save
                self.then_save = None
                self._save(path, overwrite)
            else:
                self.start_run(FULL)

    def _run_failed(self, message: str, details: str) -> None:
        self._run_done()
        self.pending_rerun = False
        self.then_save = None
        self.method_panel.reset_progress("Failed")
        self.report_error("The method failed", message, details)

    def _run_cancelled(self) -> None:
        self._run_done()
        self.then_save = None
        self.method_panel.reset_progress("Cancelled")
        self.statusBar().showMessage("Cancelled; nothing was changed")
        if self.pending_rerun and self.result_target is not None:
            self.pending_rerun = False
            self.start_run(self.result_target)

    # -- saving --------------------------------------------------------------------------------------

    def save_as(self) -> None:
        if self.image is None:
            return
        suffixes = [s for s in dict.fromkeys(formats.OUTPUT_SUFFIXES[self.image.kind])]
        filters = [f"{formats.FORMAT_NAMES.get(s, s)} ({'*' + s if s else '*'})" for s in suffixes]
        stem = formats.stem(self.image.source) if self.image.source else "image"
        start = Path(self.settings.last_dir("save") or (self.image.source.parent if self.image.source else "."))
        path, chosen = QFileDialog.getSaveFileName(self, "Save the denoised image", str(start / f"{stem}-denoised"),
                                                   ";;".join(filters), options=QFileDialog.DontConfirmOverwrite)
        if not path:
            return
        suffix = suffixes[filters.index(chosen)] if chosen in filters else suffixes[0]
        path = Path(path)
        if suffix and io.full_suffix(path) not in [s for s in suffixes if s]:
            path = path.with_name(path.name + suffix)  # the format picked in the dialog names the file
        self.save_to(path)

    def save_to(self, path: Path, overwrite: bool | None = None) -> None:
        """Save the full-image result to ``path``; runs the full image first when only a preview exists."""
        path = Path(path)
        if self.image is None:
            return
        if self.image.source is not None and io.same_file(self.image.source, path):
            self.report_error("Not saved", f"{path}: QuietLens never overwrites the file it opened. "
                                           "Choose another name or folder.")
            return
        if overwrite is None:
            overwrite = False
            if path.exists():
                answer = QMessageBox.question(self, "Replace?", f"{path} exists. Replace it?",
                                              QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
                if answer != QMessageBox.Yes:
                    return
                overwrite = True
        self.settings.set_last_dir("save", path)
        fresh = self.result_target == FULL and self.run_task is None \
            and not self.rerun_timer.isActive() and not self.pending_rerun
        if fresh:
            self._save(path, overwrite)
            return
        self.then_save = (path, overwrite)  # saved when the full-image run in flight or started here ends
        if self.run_task is None:
            self.rerun_timer.stop()
            self.start_run(FULL)

    def _save(self, path: Path, overwrite: bool) -> None:
        session = self.session
        self.statusBar().showMessage(f"Saving {path}…")
        self.runner.start(lambda ctx: session.save(path, overwrite), name="save",
                          finished=lambda p: self.statusBar().showMessage(f"Saved {p}"),
                          failed=lambda msg, details: self.report_error("Could not save", msg, details))

    # -- dialogs -------------------------------------------------------------------------------------

    def open_batch(self) -> BatchDialog:
        m = self.method_panel.method() if self.image is not None else None  # the open image's kind decides
        dialog = BatchDialog(self.settings, self.runner, runtime.available_providers(),
                             self.method_panel.provider.currentText(), self.show_internal, self,
                             method=m.name if m else None, model=self.method_panel.model.currentText() or None)
        dialog.show()
        self.batch_dialog = dialog
        return dialog

    def open_adapt(self) -> AdaptDialog:
        if self.adapt_dialog is None:  # one at a time: it may be training
            self.adapt_dialog = AdaptDialog(self.settings, self.runner, self)
            self.adapt_dialog.adapted.connect(self._adapted)
            self.adapt_dialog.open_button.clicked.connect(self._open_adapted_photo)
        self.adapt_dialog.show()
        self.adapt_dialog.raise_()
        return self.adapt_dialog

    def _open_adapted_photo(self) -> Task:
        """The photo the adaptation was shown on, in the main window: its method and new model chosen,
        previewed."""
        dialog = self.adapt_dialog
        method, model = dialog.method.currentData(), dialog.model_name
        def chosen() -> None:
            if self.method_panel.choose(method, model):
                self.run_preview()

        return self.load(dialog.photo, then=chosen)

    def _adapted(self, method: str, model: str, photo: str) -> None:
        """A model adapted to the user's photos: choose it (now, or when a photo is opened)."""
        now = self.method_panel.choose(method, model)
        self.statusBar().showMessage(f"Adapted model “{model}” registered" + (
            f" and chosen for {self.method_panel.method().title}" if now else
            f"; it is chosen when you open a photo (e.g. {Path(photo).name})"))

    def report_error(self, title: str, message: str, details: str = "") -> QMessageBox:
        """Show a failure in a dialog (with details), never silently; non-blocking."""
        self.errors.append(message)
        self.statusBar().showMessage(f"{title}: {message}")
        return warn(self, title, message, details)

    def show_shortcuts(self) -> None:
        rows = []
        for name, act in self.actions_by_name.items():
            keys = ", ".join(k.toString(QKeySequence.NativeText) for k in act.shortcuts())
            if keys:
                rows.append(f"<tr><td>{act.text().replace('&', '')}</td><td><b>{keys}</b></td></tr>")
        rows.append("<tr><td>Pan</td><td><b>middle-drag, or left-drag with the Pan tool</b></td></tr>")
        rows.append("<tr><td>Zoom</td><td><b>mouse wheel</b></td></tr>")
        rows.append("<tr><td>Window / level</td><td><b>right-drag (width ↔, level ↕)</b></td></tr>")
        box = QMessageBox(QMessageBox.NoIcon, "Keyboard shortcuts", f"<table>{''.join(rows)}</table>",
                          QMessageBox.Ok, self)
        box.setAttribute(Qt.WA_DeleteOnClose)
        box.open()

    def show_about(self) -> None:
        facts = runtime.describe()
        QMessageBox.about(self, "About QuietLens",
                          f"<b>QuietLens {__version__}</b><br>Denoising for photos, RAW, CT and MRI.<br>"
                          f"ONNX Runtime {facts['onnxruntime']}, providers: {', '.join(facts['available_providers'])}")

    def open_report(self, path: Path) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))
