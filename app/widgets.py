"""Small reusable widgets: a parameter slider with its spin box, a choice box, a histogram, plots, and the
warning box every failure is shown in."""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QMessageBox, QSlider, QWidget

from quietlens.engine.image import readable_number

STEPS = 1000


def warn(parent: QWidget, title: str, message: str, details: str = "") -> QMessageBox:
    """Show a failure in a non-blocking dialog, with the details (e.g. a traceback) one click away."""
    box = QMessageBox(QMessageBox.Warning, title, message, QMessageBox.Ok, parent)
    if details:
        box.setDetailedText(details)
    box.setAttribute(Qt.WA_DeleteOnClose)
    box.open()
    return box


class ParamSlider(QWidget):
    """A labelled slider and spin box for one number; ``changed(name, value)`` fires on user edits."""

    changed = Signal(str, float)

    def __init__(self, name: str, label: str, value: float, minimum: float, maximum: float, *,
                 integer: bool = False, unit: str = "", doc: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.name, self.minimum, self.maximum, self.integer = name, float(minimum), float(maximum), integer
        self.label = QLabel(label + (f" ({unit})" if unit else ""))
        self.label.setMinimumWidth(90)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, self._steps())
        self.spin = QDoubleSpinBox()
        span = self.maximum - self.minimum
        self.spin.setDecimals(0 if integer else (3 if span <= 2 else 2 if span <= 100 else 1))
        self.spin.setRange(self.minimum, self.maximum)
        self.spin.setSingleStep(1 if integer else span / 100 if span else 0.01)
        self.spin.setKeyboardTracking(False)
        self.spin.setMinimumWidth(72)
        for w in (self.label, self.slider, self.spin):
            w.setToolTip(doc)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spin)
        self.set_value(value)
        self.slider.valueChanged.connect(self._from_slider)
        self.spin.valueChanged.connect(self._from_spin)

    def _steps(self) -> int:
        span = self.maximum - self.minimum
        return int(span) if self.integer and 0 < span <= 10 * STEPS else STEPS

    def _to_pos(self, value: float) -> int:
        span = self.maximum - self.minimum
        return 0 if span <= 0 else int(round((value - self.minimum) / span * self._steps()))

    def _from_pos(self, pos: int) -> float:
        value = self.minimum + (self.maximum - self.minimum) * pos / self._steps()
        return float(round(value)) if self.integer else value

    def value(self) -> float:
        v = self.spin.value()
        return float(round(v)) if self.integer else float(v)

    def set_value(self, value: float) -> None:
        """Show ``value`` without emitting ``changed``."""
        for w in (self.slider, self.spin):
            w.blockSignals(True)
        self.spin.setValue(value)
        self.slider.setValue(self._to_pos(value))
        for w in (self.slider, self.spin):
            w.blockSignals(False)

    def _from_slider(self, pos: int) -> None:
        self.spin.blockSignals(True)
        self.spin.setValue(self._from_pos(pos))
        self.spin.blockSignals(False)
        self.changed.emit(self.name, self.value())

    def _from_spin(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(self._to_pos(value))
        self.slider.blockSignals(False)
        self.changed.emit(self.name, self.value())


class ChoiceBox(QWidget):
    """A labelled drop-down for a parameter with named options (stored as their index 0, 1, …); the same
    interface as :class:`ParamSlider`, so panels treat both alike."""

    changed = Signal(str, float)

    def __init__(self, name: str, label: str, value: float, options: list[str], *, doc: str = "",
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.name = name
        self.label = QLabel(label)
        self.label.setMinimumWidth(90)
        self.combo = QComboBox()
        self.combo.addItems(options)
        for w in (self.label, self.combo):
            w.setToolTip(doc)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.combo, 1)
        self.set_value(value)
        self.combo.currentIndexChanged.connect(lambda i: self.changed.emit(self.name, float(i)))

    def value(self) -> float:
        return float(self.combo.currentIndex())

    def set_value(self, value: float) -> None:
        """Show ``value`` without emitting ``changed``."""
        self.combo.blockSignals(True)
        self.combo.setCurrentIndex(int(value))
        self.combo.blockSignals(False)


class HistogramWidget(QWidget):
    """Log-scaled histogram of the plane on screen, with the display window marked."""

    COLOURS = {1: [QColor(200, 204, 210)], 3: [QColor(235, 80, 80), QColor(90, 200, 90), QColor(90, 140, 245)]}

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumSize(200, 110)
        self.heights: np.ndarray | None = None
        self.edges: np.ndarray | None = None
        self.window: tuple[float, float] | None = None
        self.unit = ""

    def set_histogram(self, heights: np.ndarray | None, edges: np.ndarray | None,
                      window: tuple[float, float] | None = None, unit: str = "") -> None:
        self.heights, self.edges, self.window, self.unit = heights, edges, window, unit
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), self.palette().base())
        if self.heights is None or self.edges is None:
            p.setPen(self.palette().placeholderText().color())
            p.drawText(self.rect(), Qt.AlignCenter, "No image")
            return
        p.setRenderHint(QPainter.Antialiasing)
        plot = QRectF(self.rect()).adjusted(6, 6, -6, -20)
        bins = self.heights.shape[1]
        colours = self.COLOURS.get(self.heights.shape[0], self.COLOURS[1])
        for row, colour in zip(self.heights, colours):
            path = QPainterPath(QPointF(plot.left(), plot.bottom()))
            for i, h in enumerate(row):
                x = plot.left() + plot.width() * (i + 0.5) / bins
                path.lineTo(QPointF(x, plot.bottom() - float(h) * plot.height()))
            path.lineTo(QPointF(plot.right(), plot.bottom()))
            fill = QColor(colour)
            fill.setAlpha(90 if len(self.heights) > 1 else 150)
            p.setPen(QPen(colour, 1))
            p.setBrush(fill)
            p.drawPath(path)
        lo, hi = float(self.edges[0]), float(self.edges[-1])
        if self.window and hi > lo:
            c, w = self.window
            pen = QPen(QColor(255, 200, 60), 1, Qt.DashLine)
            p.setPen(pen)
            for v in (c - w / 2, c + w / 2):
                x = plot.left() + plot.width() * (v - lo) / (hi - lo)
                if plot.left() <= x <= plot.right():
                    p.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
        p.setPen(self.palette().text().color())
        unit = f" {self.unit}" if self.unit else ""
        text_rect = QRectF(plot.left(), plot.bottom() + 2, plot.width(), 16)
        p.drawText(text_rect, Qt.AlignLeft, readable_number(lo) + unit)
        p.drawText(text_rect, Qt.AlignRight, readable_number(hi) + unit)


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def axis_exponent(lo: float, hi: float) -> int:
    """The power of ten an axis' tick labels share (shown once, in its title): 0 when the numbers read
    well as they are (0.01 … 9999), else that of the largest magnitude."""
    top = max(abs(lo), abs(hi))
    e = int(np.floor(np.log10(top))) if top > 0 and np.isfinite(top) else 0
    return 0 if -2 <= e <= 3 else e


def tick_text(value: float, exponent: int) -> str:
    return f"{value / 10.0 ** exponent:.4g}"


def axis_title(title: str, exponent: int) -> str:
    return f"{title} (×10{str(exponent).translate(SUPERSCRIPT)})" if exponent else title


class PlotFrame(QWidget):
    """Axes for the small plots: a frame sized to its tick labels, the range's ends labelled with the
    power of ten shown once in each axis' title. Subclasses draw their data through ``at``."""

    def __init__(self, x_title: str, y_title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumSize(200, 160)
        self.x_title, self.y_title = x_title, y_title
        self.empty_text = "No data"

    def draw_frame(self, p: QPainter, x0: float, x1: float, y0: float, y1: float):
        """Draw the axes for x0…x1, y0…y1; returns ``at(x, y) -> QPointF`` and the plot rectangle."""
        ex, ey = axis_exponent(x0, x1), axis_exponent(y0, y1)
        fm = p.fontMetrics()
        y_ticks = [tick_text(v, ey) for v in (y1, y0)]
        left = max(fm.horizontalAdvance(t) for t in y_ticks) + fm.height() + 10  # ticks + rotated title
        plot = QRectF(self.rect()).adjusted(left, 8, -8, -(fm.height() + 8))

        def at(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + plot.width() * (x - x0) / (x1 - x0),
                           plot.bottom() - plot.height() * (y - y0) / (y1 - y0))

        p.setPen(QPen(self.palette().mid().color(), 1))
        p.drawRect(plot)
        p.setPen(self.palette().text().color())
        below = QRectF(plot.left(), plot.bottom() + 4, plot.width(), fm.height())
        p.drawText(below, Qt.AlignLeft, tick_text(x0, ex))
        p.drawText(below, Qt.AlignRight, tick_text(x1, ex))
        p.drawText(below, Qt.AlignHCenter, axis_title(self.x_title, ex))
        ticks = QRectF(0, 0, left - 4, fm.height())
        p.drawText(ticks.translated(0, plot.top()), Qt.AlignRight, y_ticks[0])
        p.drawText(ticks.translated(0, plot.bottom() - fm.height()), Qt.AlignRight, y_ticks[1])
        p.save()
        p.translate(fm.height() * 0.5 + 2, plot.center().y())
        p.rotate(-90)
        p.drawText(QRectF(-plot.height() / 2, -fm.height() / 2, plot.height(), fm.height()), Qt.AlignCenter,
                   axis_title(self.y_title, ey))
        p.restore()
        return at, plot

    def draw_empty(self, p: QPainter) -> None:
        p.setPen(self.palette().placeholderText().color())
        p.drawText(self.rect(), Qt.AlignCenter | Qt.TextWordWrap, self.empty_text)


class ScatterPlot(PlotFrame):
    """Variance against mean: the measured points and the fitted noise line."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("mean", "variance", parent)
        self.points: tuple[np.ndarray, np.ndarray] | None = None
        self.line: tuple[np.ndarray, np.ndarray] | None = None
        self.empty_text = "No noise model"

    def set_data(self, points, line, empty_text: str = "No noise model") -> None:
        self.points, self.line, self.empty_text = points, line, empty_text
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), self.palette().base())
        xs = [a for a in ((self.points[0],) if self.points else ()) + ((self.line[0],) if self.line else ())]
        ys = [a for a in ((self.points[1],) if self.points else ()) + ((self.line[1],) if self.line else ())]
        if not xs or not any(np.size(a) for a in xs):
            self.draw_empty(p)
            return
        x_all, y_all = np.concatenate([np.ravel(a) for a in xs]), np.concatenate([np.ravel(a) for a in ys])
        x0, x1 = float(x_all.min()), float(x_all.max())
        y0, y1 = min(float(y_all.min()), 0.0), float(y_all.max())
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
        p.setRenderHint(QPainter.Antialiasing)
        at, _ = self.draw_frame(p, x0, x1, y0, y1)
        if self.points:
            p.setPen(Qt.NoPen)
            p.setBrush(QColor(90, 160, 255, 160))
            for x, y in zip(*self.points):
                p.drawEllipse(at(float(x), float(y)), 2.5, 2.5)
        if self.line:
            p.setPen(QPen(QColor(255, 170, 50), 2))
            lx, ly = self.line
            p.drawLine(at(float(lx[0]), float(ly[0])), at(float(lx[-1]), float(ly[-1])))


class LinePlot(PlotFrame):
    """Named series of (x, y) points drawn as lines with a legend, e.g. training losses against steps."""

    COLOURS = [QColor(255, 170, 50), QColor(90, 160, 255), QColor(120, 220, 90), QColor(230, 90, 200)]

    def __init__(self, x_title: str, y_title: str, parent: QWidget | None = None):
        super().__init__(x_title, y_title, parent)
        self.series: dict[str, list[tuple[float, float]]] = {}

    def add_point(self, name: str, x: float, y: float) -> None:
        self.series.setdefault(name, []).append((float(x), float(y)))
        self.update()

    def clear(self) -> None:
        self.series = {}
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), self.palette().base())
        points = [pt for pts in self.series.values() for pt in pts]
        if not points:
            self.draw_empty(p)
            return
        xs, ys = np.array([x for x, _ in points]), np.array([y for _, y in points])
        x0, x1 = float(xs.min()), float(xs.max())
        y0, y1 = min(float(ys.min()), 0.0), float(ys.max())
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
        p.setRenderHint(QPainter.Antialiasing)
        at, plot = self.draw_frame(p, x0, x1, y0, y1)
        fm = p.fontMetrics()
        for i, (name, pts) in enumerate(self.series.items()):
            colour = self.COLOURS[i % len(self.COLOURS)]
            p.setPen(QPen(colour, 2))
            path = QPainterPath(at(*pts[0]))
            for pt in pts[1:]:
                path.lineTo(at(*pt))
            p.setBrush(Qt.NoBrush)
            p.drawPath(path) if len(pts) > 1 else p.drawEllipse(at(*pts[0]), 2.5, 2.5)
            p.drawText(QRectF(plot.left() + 8, plot.top() + 4 + i * fm.height(), plot.width() - 16, fm.height()),
                       Qt.AlignRight, name)
