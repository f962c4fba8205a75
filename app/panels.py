"""Side panels: the method and its parameters (from the engine registry), regions, and the noise model."""
from __future__ import annotations

import re

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QListWidget,
    QListWidgetItem, QProgressBar, QPushButton, QSizePolicy, QToolButton, QVBoxLayout, QWidget,
)

from quietlens.engine.methods import Method, NoiseModel, Param
from quietlens.engine.regions import Region, Shape, multiplier_range, regional_params

from .viewer import to_qimage
from .widgets import ChoiceBox, ParamSlider, ScatterPlot

REGION_COLOURS = [(255, 99, 71), (65, 180, 255), (120, 220, 90), (250, 200, 40), (200, 110, 250), (60, 220, 200)]


def _clear(layout) -> None:
    while layout.count():
        item = layout.takeAt(0)
        if item.widget() is not None:
            item.widget().hide()  # gone now, not only when the event loop gets to the deletion
            item.widget().deleteLater()


def param_label(p: Param) -> str:
    return p.name.replace("_", " ").capitalize()


def param_control(p: Param) -> ParamSlider | ChoiceBox:
    """The control for one declared parameter: a drop-down of named options for a choice, else a slider."""
    if p.choices:
        return ChoiceBox(p.name, param_label(p), p.default, [c.capitalize() for c in p.choices], doc=p.doc)
    return ParamSlider(p.name, param_label(p), p.default, p.minimum, p.maximum, integer=p.integer,
                       unit=p.unit, doc=p.doc)


class MethodPanel(QWidget):
    method_changed = Signal()
    params_changed = Signal()
    provider_changed = Signal(str)
    preview_requested = Signal()
    full_requested = Signal()
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.methods: list[Method] = []
        self.sliders: dict[str, ParamSlider | ChoiceBox] = {}
        self.combo = QComboBox()
        self.combo.currentIndexChanged.connect(self._method_changed)
        self.summary = QLabel(wordWrap=True)
        self.summary.setStyleSheet("color: palette(placeholder-text);")
        self.model = QComboBox()
        self.model.setToolTip("The shipped model, or one adapted to your photos (File → Adapt to my photos…, "
                              "or quietlens train)")
        self.model.currentIndexChanged.connect(self._model_changed)
        self.wanted_models: dict[str, str] = {}  # method -> the model family to use for it
        self.wanted_method: str | None = None  # chosen while the open image could not take it
        self.provider = QComboBox()
        self.provider.setToolTip("Where ONNX Runtime runs the model graphs")
        self.provider.currentTextChanged.connect(self.provider_changed)
        self.form = QVBoxLayout()
        self.form.setSpacing(4)
        reset = QToolButton(text="Reset")
        reset.setToolTip("Restore every parameter to its default")
        reset.clicked.connect(self.reset)
        self.preview_button = QPushButton("Preview")
        self.preview_button.setToolTip("Denoise the part of the image on screen (F5)")
        self.full_button = QPushButton("Run full image")
        self.full_button.setToolTip("Denoise the whole image (Ctrl+F5)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job (Esc)")
        self.cancel_button.setEnabled(False)
        self.preview_button.clicked.connect(self.preview_requested)
        self.full_button.clicked.connect(self.full_requested)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        top = QFormLayout()
        top.addRow("Method", self.combo)
        top.addRow("", self.summary)
        top.addRow("Model", self.model)
        self.top = top
        top.addRow("Provider", self.provider)
        params_box = QGroupBox("Parameters")
        box_layout = QVBoxLayout(params_box)
        box_layout.addLayout(self.form)
        box_layout.addWidget(reset, 0, Qt.AlignRight)
        buttons = QHBoxLayout()
        for b in (self.preview_button, self.full_button, self.cancel_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(params_box)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.set_methods([])

    # -- content -------------------------------------------------------------------------------------

    def set_providers(self, providers: list[str], current: str = "auto") -> None:
        self.provider.blockSignals(True)
        self.provider.clear()
        self.provider.addItems(["auto", *providers])
        self.provider.setCurrentText(current if current in ["auto", *providers] else "auto")
        self.provider.blockSignals(False)

    def set_methods(self, methods: list[Method], keep: str | None = None, kind: str | None = None) -> None:
        """The methods for an image of ``kind`` (None: no image is open), ``keep`` chosen if offered (a
        method just chosen with :meth:`choose` comes first)."""
        self.methods = list(methods)
        self.kind = kind
        if self.wanted_method in [m.name for m in self.methods]:
            keep, self.wanted_method = self.wanted_method, None
        self.combo.blockSignals(True)
        self.combo.clear()
        for m in self.methods:
            self.combo.addItem(m.title, m.name)
            self.combo.setItemData(self.combo.count() - 1, m.summary, Qt.ToolTipRole)
        names = [m.name for m in self.methods]
        if keep in names:
            self.combo.setCurrentIndex(names.index(keep))
        self.combo.blockSignals(False)
        self._method_changed()

    def select(self, name: str) -> bool:
        index = self.combo.findData(name)
        if index >= 0:
            self.combo.setCurrentIndex(index)
        return index >= 0

    def choose(self, method: str, model: str) -> bool:
        """Use ``model`` for ``method`` from now on (e.g. one just adapted to the user's photos): chosen now
        when the open image takes the method (returns True), else once an image that does is opened."""
        self.wanted_models[method] = model
        if self.combo.findData(method) < 0:
            self.wanted_method = method  # taken by the next set_methods that offers it
            return False
        if self.combo.currentData() == method:
            self._method_changed()  # re-read its models: the new one is among them now
        else:
            self.select(method)
        return True

    def _model_changed(self, *_) -> None:
        base = self._base()
        if base is not None and self.model.currentText():
            self.wanted_models[base.name] = self.model.currentText()
        self.method_changed.emit()

    def _base(self) -> Method | None:
        i = self.combo.currentIndex()
        return self.methods[i] if 0 <= i < len(self.methods) else None

    def method(self) -> Method | None:
        """The chosen method, running the chosen model family when it has several."""
        m = self._base()
        family = self.model.currentText()
        if m is not None and family and family != m.family:
            m = m.with_model(family)
        return m

    def params(self) -> dict[str, float]:
        return {name: s.value() for name, s in self.sliders.items()}

    def set_param(self, name: str, value: float) -> None:
        self.sliders[name].set_value(value)
        self.params_changed.emit()

    def reset(self) -> None:
        m = self.method()
        if m is not None:
            for p in m.params:
                self.sliders[p.name].set_value(p.default)
            self.params_changed.emit()

    def _method_changed(self) -> None:
        _clear(self.form)
        self.sliders = {}
        base = self._base()
        families = base.families() if base is not None else []
        self.model.blockSignals(True)
        self.model.clear()
        self.model.addItems(families)  # re-read each time: a model trained meanwhile shows up
        wanted = self.wanted_models.get(base.name) if base is not None else None
        if wanted in families:
            self.model.setCurrentText(wanted)
        self.model.blockSignals(False)
        self.top.setRowVisible(self.model, len(families) > 1)
        m = self.method()
        has = m is not None
        empty = (f"No denoising method works on {self.kind} images yet." if self.kind
                 else "Open an image to choose a method for it.")
        summary = re.sub(r"`([^`]*)`", r"“\1”", m.summary) if has else empty
        self.summary.setText(summary)  # (the registry's text marks commands up for the terminal)
        if has:
            for p in m.params:
                s = param_control(p)
                s.changed.connect(lambda *_: self.params_changed.emit())
                self.form.addWidget(s)
                self.sliders[p.name] = s
        self.combo.setEnabled(has)
        self.set_busy(False)
        self.method_changed.emit()

    # -- running -------------------------------------------------------------------------------------

    def set_busy(self, busy: bool) -> None:
        ready = self.method() is not None and not busy
        self.preview_button.setEnabled(ready)
        self.full_button.setEnabled(ready)
        self.cancel_button.setEnabled(busy)

    def set_progress(self, fraction: float, message: str = "") -> None:
        self.progress.setValue(int(round(min(max(fraction, 0.0), 1.0) * 1000)))
        if message:
            self.status.setText(message)

    def reset_progress(self, message: str = "") -> None:
        self.progress.setValue(0)
        self.status.setText(message)


class RegionPanel(QWidget):
    """The region list, its shapes and intensity range, and its per-parameter multipliers."""

    changed = Signal()  # something that changes the result
    selection_changed = Signal()
    tool_changed = Signal(str)
    brush_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.regions: list[Region] = []
        self.params: tuple[Param, ...] = ()
        self.sliders: dict[str, ParamSlider] = {}
        self._counter = 0

        tools = QHBoxLayout()
        self.tool_buttons: dict[str, QToolButton] = {}
        for tool, text, tip in (("pan", "Pan", "Navigate: drag to pan (H)"), ("brush", "Brush", "Paint a region (B)"),
                                ("rect", "Rectangle", "Draw a rectangular region (M)"),
                                ("ellipse", "Ellipse", "Draw an elliptical region (E)")):
            b = QToolButton(text=text, checkable=True, autoExclusive=True)
            b.setToolTip(tip)
            b.clicked.connect(lambda _=False, t=tool: self.tool_changed.emit(t))
            tools.addWidget(b)
            self.tool_buttons[tool] = b
        self.tool_buttons["pan"].setChecked(True)
        self.brush = QDoubleSpinBox(suffix=" px", decimals=0, minimum=1, maximum=500, value=8)
        self.brush.setToolTip("Brush radius in image pixels")
        self.brush.valueChanged.connect(self.brush_changed)
        brush_row = QHBoxLayout()
        brush_row.addWidget(QLabel("Brush radius"))
        brush_row.addWidget(self.brush)
        brush_row.addStretch(1)

        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        self.list.currentRowChanged.connect(self._selected)
        new = QPushButton("New")
        new.setToolTip("Add an empty region; shapes you draw go into the selected region")
        new.clicked.connect(lambda: self.add_region())
        self.delete = QPushButton("Delete")
        self.delete.clicked.connect(self.delete_current)
        self.clear_shapes = QPushButton("Clear shapes")
        self.clear_shapes.clicked.connect(self._clear_shapes)
        row = QHBoxLayout()
        for b in (new, self.delete, self.clear_shapes):
            row.addWidget(b)

        self.use_range = QCheckBox("Only where the input is between")
        self.use_range.setToolTip("Limit the region to an intensity interval (e.g. an HU range); "
                                  "without shapes it covers the whole image within the interval")
        self.lo = QDoubleSpinBox(decimals=1, minimum=-1e6, maximum=1e6)
        self.hi = QDoubleSpinBox(decimals=1, minimum=-1e6, maximum=1e6)
        self.unit = QLabel("")
        range_row = QHBoxLayout()
        for w in (self.lo, QLabel("and"), self.hi, self.unit):
            range_row.addWidget(w)
        self.use_range.toggled.connect(self._range_edited)
        self.lo.valueChanged.connect(self._range_edited)
        self.hi.valueChanged.connect(self._range_edited)

        self.mult_box = QGroupBox("In this region, multiply")
        self.mult_form = QVBoxLayout(self.mult_box)

        layout = QVBoxLayout(self)
        layout.addLayout(tools)
        layout.addLayout(brush_row)
        layout.addWidget(self.list)
        layout.addLayout(row)
        layout.addWidget(self.use_range)
        layout.addLayout(range_row)
        layout.addWidget(self.mult_box)
        layout.addStretch(1)
        self._selected(-1)

    # -- model ---------------------------------------------------------------------------------------

    def colour(self, region: Region) -> tuple[int, int, int]:
        return REGION_COLOURS[self.regions.index(region) % len(REGION_COLOURS)]

    def current(self) -> Region | None:
        i = self.list.currentRow()
        return self.regions[i] if 0 <= i < len(self.regions) else None

    def add_region(self, name: str | None = None) -> Region:
        self._counter += 1
        region = Region(name or f"Region {self._counter}")
        self.regions.append(region)
        self._refresh(select=len(self.regions) - 1)
        return region

    def add_shape(self, shape: Shape) -> Region:
        region = self.current() or self.add_region()
        region.shapes.append(shape)
        self._refresh()
        self.changed.emit()
        return region

    def delete_current(self) -> None:
        region = self.current()
        if region is not None:
            self.regions.remove(region)
            self._refresh(select=min(self.list.currentRow(), len(self.regions) - 1))
            self.changed.emit()

    def clear(self) -> None:
        self.regions.clear()
        self._counter = 0  # another image: its regions count from 1 again
        self._refresh(select=-1)

    def _clear_shapes(self) -> None:
        region = self.current()
        if region is not None and region.shapes:
            region.shapes.clear()
            self._refresh()
            self.changed.emit()

    def set_params(self, params: tuple[Param, ...]) -> None:
        self.params = tuple(params)
        self._selected(self.list.currentRow())

    def set_intensity_unit(self, unit: str, lo: float, hi: float) -> None:
        """The unit and a sensible default interval for this image's values."""
        self.unit.setText(unit)
        for w, v in ((self.lo, lo), (self.hi, hi)):
            w.blockSignals(True)
            w.setValue(v)
            w.blockSignals(False)

    def set_multiplier(self, name: str, value: float) -> None:
        region = self.current()
        if region is not None:
            region.multipliers[name] = float(value)
            if name in self.sliders:
                self.sliders[name].set_value(value)
            self._refresh()
            self.changed.emit()

    # -- view ----------------------------------------------------------------------------------------

    def _describe(self, r: Region) -> str:
        parts = [f"{len(r.shapes)} shape{'s' if len(r.shapes) != 1 else ''}"]
        if r.intensity is not None:
            parts.append(f"{r.intensity[0]:g}…{r.intensity[1]:g} {self.unit.text()}".strip())
        changed = [f"{k} ×{v:.2f}" for k, v in r.multipliers.items() if v != 1.0]
        return f"{r.name} — {', '.join(parts + changed)}"

    def _refresh(self, select: int | None = None) -> None:
        row = self.list.currentRow() if select is None else select
        self.list.blockSignals(True)
        self.list.clear()
        for r in self.regions:
            pix = QPixmap(12, 12)
            pix.fill(QColor(*self.colour(r)))
            self.list.addItem(QListWidgetItem(QIcon(pix), self._describe(r)))
        self.list.setCurrentRow(row)
        self.list.blockSignals(False)
        self._selected(self.list.currentRow())

    def _selected(self, row: int) -> None:
        region = self.regions[row] if 0 <= row < len(self.regions) else None
        for w in (self.delete, self.clear_shapes, self.use_range, self.lo, self.hi, self.mult_box):
            w.setEnabled(region is not None)
        self.use_range.blockSignals(True)
        self.use_range.setChecked(region is not None and region.intensity is not None)
        self.use_range.blockSignals(False)
        if region is not None and region.intensity is not None:
            self.set_intensity_unit(self.unit.text(), *region.intensity)
        _clear(self.mult_form)
        self.sliders = {}
        for p in regional_params(self.params):
            lo, hi = multiplier_range(p)
            value = region.multipliers.get(p.name, 1.0) if region else 1.0
            s = ParamSlider(p.name, param_label(p), value, lo, hi, unit="×",
                            doc=f"Multiplier on {p.name} inside this region (1 = as set for the image). {p.doc}")
            s.changed.connect(self.set_multiplier)
            self.mult_form.addWidget(s)
            self.sliders[p.name] = s
        self.selection_changed.emit()

    def _range_edited(self, *_) -> None:
        region = self.current()
        if region is None:
            return
        region.intensity = (self.lo.value(), self.hi.value()) if self.use_range.isChecked() else None
        self._refresh()
        self.changed.emit()


class NoisePanel(QWidget):
    """The method's estimated noise model (variance against mean) and its interpretable maps."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.plot = ScatterPlot()
        self.plot.empty_text = "Run a method to see its noise estimate."
        self.facts = QLabel("")
        self.facts.setWordWrap(True)
        self.facts.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        self.maps = QComboBox()
        self.maps.currentIndexChanged.connect(self._show_map)
        self.map_view = QLabel(alignment=Qt.AlignCenter)
        self.map_view.setMinimumHeight(160)
        self.map_view.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Ignored)  # the map fits the room, not v.v.
        self._images: dict[str, object] = {}
        layout = QVBoxLayout(self)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.facts)
        self.maps_box = QGroupBox("Maps")
        box = QVBoxLayout(self.maps_box)
        box.addWidget(self.maps)
        box.addWidget(self.map_view, 1)
        layout.addWidget(self.maps_box, 1)
        self.maps_box.setVisible(False)

    def set_model(self, model: NoiseModel | None, method_title: str = "") -> None:
        self.plot.setVisible(model is not None or not method_title)  # no empty plot taking the maps' room
        if model is None:
            self.plot.set_data(None, None, "Run a method to see its noise estimate.")
            self.facts.setText(f"{method_title} gives no noise model." if method_title else "")
            return
        points = (model.means, model.variances) if model.means is not None else None
        self.plot.set_data(points, model.line())
        lines = ["variance = K · mean + σ²" + (f"  ({model.units})" if model.units else "")]
        for m in (model, model.alternative):
            if m is None:
                continue
            parts = [f"K = {m.K:.4g}" if m.K is not None else "", f"σ = {m.sigma:.4g}" if m.sigma is not None else ""]
            parts += [f"{k} = {v}" for k, v in m.facts.items()]
            lines.append((f"{m.source}: " if m.source else "") + "    ".join(p for p in parts if p))
        self.facts.setText("\n".join(lines))

    def set_maps(self, maps: dict) -> None:
        self._images = {name: to_qimage(pixels) for name, pixels in maps.items()}
        self.maps.blockSignals(True)
        self.maps.clear()
        self.maps.addItems(list(self._images))
        self.maps.blockSignals(False)
        self.maps_box.setVisible(bool(self._images))
        self._show_map()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._show_map()  # the map fills the room it has now

    def _show_map(self, *_) -> None:
        image = self._images.get(self.maps.currentText())
        if image is None:
            self.map_view.clear()
            return
        pix = QPixmap.fromImage(image)
        self.map_view.setPixmap(pix.scaled(max(self.map_view.width(), 160), max(self.map_view.height(), 160),
                                           Qt.KeepAspectRatio, Qt.SmoothTransformation))
