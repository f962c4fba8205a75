"""The image view: zoom, pan, before/after split, residual, region drawing and window/level dragging.

It only paints 8-bit images the engine prepared; positions it reports are in *plane* pixels (x = column,
y = row, pixel c spanning [c, c+1)). Plane pixels may be non-square (``aspect`` = height / width).
"""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPen, QTransform
from PySide6.QtWidgets import QSizePolicy, QWidget

MIN_ZOOM, MAX_ZOOM = 0.02, 64.0


def to_qimage(pixels: np.ndarray) -> QImage:
    """uint8 ``H×W`` grey, ``H×W×3`` RGB or ``H×W×4`` RGBA as a QImage that owns its pixels."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w = pixels.shape[:2]
    if pixels.ndim == 2:
        fmt, stride = QImage.Format_Grayscale8, w
    elif pixels.shape[2] == 3:
        fmt, stride = QImage.Format_RGB888, 3 * w
    else:
        fmt, stride = QImage.Format_RGBA8888, 4 * w
    return QImage(pixels.data, w, h, stride, fmt).copy()


class Layer:
    def __init__(self, image: QImage, scale: float = 1.0):
        self.image, self.scale = image, scale  # scale: plane pixels per image pixel

    def draw(self, p: QPainter) -> None:
        w, h = self.image.width() * self.scale, self.image.height() * self.scale
        p.drawImage(QRectF(0, 0, w, h), self.image, QRectF(self.image.rect()))


class ImageView(QWidget):
    hovered = Signal(int, int)  # plane row, col; (-1, -1) when the pointer leaves the image
    shape_drawn = Signal(str, list, float)  # tool, [(x, y), ...] in plane pixels, brush radius
    window_dragged = Signal(float, float)  # pointer motion (dx, dy) in screen pixels with the right button
    slice_step = Signal(int)
    view_changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setMinimumSize(320, 240)
        self.before: Layer | None = None
        self.after: Layer | None = None
        self.residual: Layer | None = None
        self.residual_note = ""  # e.g. the grey scale of the residual, shown in its label
        self.overlay: Layer | None = None
        self.preview_box: tuple[int, int, int, int] | None = None
        self.plane_w, self.plane_h, self.aspect = 0, 0, 1.0
        self.zoom, self.cx, self.cy = 1.0, 0.0, 0.0
        self.fitted = True
        self.mode = "split"
        self.tool = "pan"
        self.brush_radius = 8.0
        self.divider = 0.5  # fraction of the widget width
        self.window_enabled = False
        self.hint = "Drop a photo, RAW file, DICOM file or series folder, or NIfTI volume here"
        self._drag: str | None = None
        self._last = QPointF()
        self._stroke: list[tuple[float, float]] = []
        self._pointer: QPointF | None = None

    # -- content -------------------------------------------------------------------------------------

    def set_plane(self, width: int, height: int, aspect: float = 1.0, refit: bool = False) -> None:
        changed = (width, height, aspect) != (self.plane_w, self.plane_h, self.aspect)
        self.plane_w, self.plane_h, self.aspect = width, height, aspect
        if changed or refit:
            self.fit()

    def set_before(self, pixels: np.ndarray | None, scale: float = 1.0) -> None:
        self.before = None if pixels is None else Layer(to_qimage(pixels), scale)
        self.update()

    def set_after(self, pixels: np.ndarray | None, scale: float = 1.0) -> None:
        self.after = None if pixels is None else Layer(to_qimage(pixels), scale)
        self.update()

    def set_residual(self, pixels: np.ndarray | None, note: str = "") -> None:
        self.residual = None if pixels is None else Layer(to_qimage(pixels), 1.0)
        self.residual_note = note if pixels is not None else ""
        self.update()

    def set_overlay(self, rgba: np.ndarray | None, scale: float = 1.0) -> None:
        self.overlay = None if rgba is None else Layer(to_qimage(rgba), scale)
        self.update()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.update()

    def set_tool(self, tool: str) -> None:
        self.tool = tool
        self.setCursor(Qt.OpenHandCursor if tool == "pan" else Qt.CrossCursor)
        self.update()

    # -- geometry ------------------------------------------------------------------------------------

    def transform(self) -> QTransform:
        t = QTransform()
        t.translate(self.width() / 2, self.height() / 2)
        t.scale(self.zoom, self.zoom * self.aspect)
        t.translate(-self.cx, -self.cy)
        return t

    def to_plane(self, pos: QPointF) -> tuple[float, float]:
        x = (pos.x() - self.width() / 2) / self.zoom + self.cx
        y = (pos.y() - self.height() / 2) / (self.zoom * self.aspect) + self.cy
        return x, y

    def fit(self) -> None:
        if self.plane_w and self.plane_h:
            self.zoom = max(min(self.width() / self.plane_w, self.height() / (self.plane_h * self.aspect)) * 0.98,
                            MIN_ZOOM)
        self.cx, self.cy = self.plane_w / 2, self.plane_h / 2
        self.fitted = True
        self.update()
        self.view_changed.emit()

    def actual_size(self) -> None:
        self.set_zoom(1.0)

    def set_zoom(self, zoom: float, anchor: QPointF | None = None) -> None:
        anchor = anchor if anchor is not None else QPointF(self.width() / 2, self.height() / 2)
        before = self.to_plane(anchor)
        self.zoom = min(max(zoom, MIN_ZOOM), MAX_ZOOM)
        after = self.to_plane(anchor)
        self.cx += before[0] - after[0]
        self.cy += before[1] - after[1]
        self.fitted = False
        self.update()
        self.view_changed.emit()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        self.set_zoom(self.zoom * factor, anchor)

    def visible_box(self) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) of the plane pixels on screen, clipped to the plane."""
        x0, y0 = self.to_plane(QPointF(0, 0))
        x1, y1 = self.to_plane(QPointF(self.width(), self.height()))
        return (max(int(np.floor(y0)), 0), max(int(np.floor(x0)), 0),
                min(int(np.ceil(y1)), self.plane_h), min(int(np.ceil(x1)), self.plane_w))

    def divider_x(self) -> float:
        return self.divider * self.width()

    def reveal(self, x0: float, x1: float) -> None:
        """In the split view, move the divider left of plane columns ``x0``…``x1`` (e.g. a region just
        drawn) so that they show the result; nothing moves when they already do."""
        left = min(self.transform().map(QPointF(x, 0)).x() for x in (x0, x1))
        if self.mode == "split" and self.after is not None and left < self.divider_x():
            self.divider = min(max((left - 12) / max(self.width(), 1), 0.0), 1.0)
            self.update()

    # -- painting ------------------------------------------------------------------------------------

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.fillRect(self.rect(), self.palette().base())
        if self.before is None:
            p.setPen(self.palette().placeholderText().color())
            p.drawText(self.rect(), Qt.AlignCenter | Qt.TextWordWrap, self.hint)
            return
        p.setRenderHint(QPainter.SmoothPixmapTransform, self.fitted or self.zoom < 2.0)
        split = self.mode == "split" and self.after is not None
        if split:
            dx = self.divider_x()
            p.setClipRect(QRectF(0, 0, dx, self.height()))
            p.setTransform(self.transform())
            self.before.draw(p)
            p.resetTransform()
            p.setClipRect(QRectF(dx, 0, self.width() - dx, self.height()))
            p.setTransform(self.transform())
            self.after.draw(p)
            p.resetTransform()
            p.setClipping(False)
        else:
            layer = {"after": self.after, "residual": self.residual}.get(self.mode) or self.before
            p.setTransform(self.transform())
            layer.draw(p)
        p.setTransform(self.transform())
        if self.overlay is not None:
            self.overlay.draw(p)
        cosmetic = QPen(QColor(255, 200, 60), 0, Qt.DashLine)
        cosmetic.setCosmetic(True)
        if self.preview_box is not None and self.mode != "before":
            y0, x0, y1, x1 = self.preview_box
            p.setPen(cosmetic)
            p.drawRect(QRectF(x0, y0, x1 - x0, y1 - y0))
        self._paint_tool(p)
        p.resetTransform()
        if split:
            self._paint_divider(p)
        else:
            self._label(p, self.label_text(), Qt.AlignLeft)

    def label_text(self) -> str:
        """What the single (unsplit) view shows, named truthfully: the input until there is a result."""
        if self.mode == "after" and self.after is not None:
            return "After"
        if self.mode == "residual" and self.residual is not None:
            return "Residual (input − output)" + (f"   {self.residual_note}" if self.residual_note else "")
        return "Before"

    def _paint_tool(self, p: QPainter) -> None:
        pen = QPen(QColor(80, 220, 255), 0)
        pen.setCosmetic(True)
        p.setPen(pen)
        if self._drag == "draw" and self.tool in ("rect", "ellipse") and len(self._stroke) == 2:
            (x0, y0), (x1, y1) = self._stroke
            box = QRectF(QPointF(x0, y0), QPointF(x1, y1)).normalized()
            p.drawRect(box) if self.tool == "rect" else p.drawEllipse(box)
        elif self._drag == "draw" and self.tool == "brush" and self._stroke:
            path = QPainterPath(QPointF(*self._stroke[0]))
            for pt in self._stroke[1:]:
                path.lineTo(QPointF(*pt))
            brush_pen = QPen(QColor(80, 220, 255, 120), 2 * self.brush_radius, Qt.SolidLine, Qt.RoundCap, Qt.RoundJoin)
            p.setPen(brush_pen)
            p.drawPath(path)
        if self.tool == "brush" and self._pointer is not None:
            p.setPen(pen)
            x, y = self.to_plane(self._pointer)
            p.drawEllipse(QPointF(x, y), self.brush_radius, self.brush_radius)

    def _paint_divider(self, p: QPainter) -> None:
        dx = self.divider_x()
        p.setPen(QPen(QColor(255, 255, 255, 200), 2))
        p.drawLine(QPointF(dx, 0), QPointF(dx, self.height()))
        p.setBrush(QColor(40, 40, 40, 200))
        p.drawEllipse(QPointF(dx, self.height() / 2), 9, 9)
        p.setPen(QPen(QColor(255, 255, 255), 2))
        cy = self.height() / 2
        p.drawLine(QPointF(dx - 4, cy), QPointF(dx - 1, cy - 3))
        p.drawLine(QPointF(dx - 4, cy), QPointF(dx - 1, cy + 3))
        p.drawLine(QPointF(dx + 4, cy), QPointF(dx + 1, cy - 3))
        p.drawLine(QPointF(dx + 4, cy), QPointF(dx + 1, cy + 3))
        self._label(p, "Before", Qt.AlignLeft)
        self._label(p, "After", Qt.AlignRight)

    def _label(self, p: QPainter, text: str, align) -> None:
        if not text:
            return
        font = QFont(p.font())
        font.setBold(True)
        p.setFont(font)
        rect = self.rect().adjusted(10, 8, -10, -8)
        bounds = p.boundingRect(rect, int(align | Qt.AlignTop), text).adjusted(-6, -3, 6, 3)
        p.setPen(Qt.NoPen)
        p.setBrush(QColor(0, 0, 0, 150))
        p.drawRoundedRect(bounds, 4, 4)
        p.setPen(QColor(240, 240, 240))
        p.drawText(rect, int(align | Qt.AlignTop), text)

    # -- interaction ---------------------------------------------------------------------------------

    def resizeEvent(self, event) -> None:  # noqa: N802
        if self.fitted:
            self.fit()
        super().resizeEvent(event)

    def mousePressEvent(self, event) -> None:  # noqa: N802
        pos = event.position()
        self._last = pos
        button = event.button()
        if button == Qt.LeftButton and self.mode == "split" and self.after is not None \
                and abs(pos.x() - self.divider_x()) < 8:
            self._drag = "divider"
        elif button == Qt.MiddleButton or (button == Qt.LeftButton and self.tool == "pan"):
            self._drag = "pan"
            self.setCursor(Qt.ClosedHandCursor)
        elif button == Qt.RightButton and self.window_enabled:
            self._drag = "window"
        elif button == Qt.LeftButton and self.before is not None:
            self._drag = "draw"
            start = self.to_plane(pos)
            self._stroke = [start, start] if self.tool in ("rect", "ellipse") else [start]
        event.accept()

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        pos = event.position()
        delta = pos - self._last
        self._last = pos
        self._pointer = pos
        if self._drag == "divider":
            self.divider = min(max(pos.x() / max(self.width(), 1), 0.0), 1.0)
        elif self._drag == "pan":
            self.cx -= delta.x() / self.zoom
            self.cy -= delta.y() / (self.zoom * self.aspect)
            self.fitted = False
            self.view_changed.emit()
        elif self._drag == "window":
            self.window_dragged.emit(delta.x(), delta.y())
        elif self._drag == "draw":
            pt = self.to_plane(pos)
            if self.tool == "brush":
                self._stroke.append(pt)
            else:
                self._stroke[1] = pt
        x, y = self.to_plane(pos)
        inside = 0 <= x < self.plane_w and 0 <= y < self.plane_h and self.before is not None
        self.hovered.emit(int(y) if inside else -1, int(x) if inside else -1)
        self.update()

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        if self._drag == "draw" and self._stroke:
            points = list(self._stroke)
            big_enough = self.tool == "brush" or (abs(points[1][0] - points[0][0]) >= 1 and abs(points[1][1] - points[0][1]) >= 1)
            if big_enough:
                self.shape_drawn.emit(self.tool, points, float(self.brush_radius))
        if self._drag == "pan":
            self.setCursor(Qt.OpenHandCursor if self.tool == "pan" else Qt.CrossCursor)
        self._drag = None
        self._stroke = []
        self.update()

    def leaveEvent(self, event) -> None:  # noqa: N802
        self._pointer = None
        self.hovered.emit(-1, -1)
        self.update()

    def wheelEvent(self, event) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(1.25 ** steps, event.position())
        event.accept()

    def keyPressEvent(self, event) -> None:  # noqa: N802
        key = event.key()
        if key in (Qt.Key_Up, Qt.Key_PageUp):
            self.slice_step.emit(1)
        elif key in (Qt.Key_Down, Qt.Key_PageDown):
            self.slice_step.emit(-1)
        else:
            super().keyPressEvent(event)
