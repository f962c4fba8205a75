"""QuietLens main window: open an image (file or DICOM series folder) and look at it.

Loading runs on a worker thread so the window never freezes; all pixel work is done by the engine.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QRunnable, Qt, QThreadPool, Signal, Slot
from PySide6.QtGui import QAction, QImage, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QApplication, QFileDialog, QLabel, QMainWindow, QMessageBox, QScrollArea, QSlider, QVBoxLayout, QWidget,
)

from quietlens.engine import __version__, display, io
from quietlens.engine.errors import QuietLensError
from quietlens.engine.image import Image

FILE_FILTER = "Images (*.png *.jpg *.jpeg *.tif *.tiff *.webp *.dng *.nef *.cr2 *.cr3 *.arw *.raf *.orf " \
              "*.rw2 *.pef *.kdc *.dcm *.nii *.nii.gz);;All files (*)"


class _LoadSignals(QObject):
    loaded = Signal(object)
    failed = Signal(str)


class _LoadTask(QRunnable):
    def __init__(self, path: Path):
        super().__init__()
        self.path, self.signals = path, _LoadSignals()

    def run(self) -> None:
        try:
            self.signals.loaded.emit(io.load(self.path))
        except QuietLensError as exc:
            self.signals.failed.emit(str(exc))
        except Exception as exc:  # shown, never swallowed
            self.signals.failed.emit(f"{self.path}: unexpected error: {exc!r}")


def to_qimage(pixels: np.ndarray) -> QImage:
    pixels = np.ascontiguousarray(pixels)
    h, w = pixels.shape[:2]
    if pixels.ndim == 2:
        return QImage(pixels.data, w, h, w, QImage.Format_Grayscale8).copy()
    return QImage(pixels.data, w, h, 3 * w, QImage.Format_RGB888).copy()


class MainWindow(QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.image: Image | None = None
        self.pool = QThreadPool.globalInstance()
        self.view = QLabel(alignment=Qt.AlignCenter)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(self.view)
        self.slider = QSlider(Qt.Horizontal, visible=False)
        self.slider.valueChanged.connect(self.show_plane)
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(scroll)
        layout.addWidget(self.slider)
        self.setCentralWidget(body)
        self._menus()
        self.setWindowTitle("QuietLens")
        self.resize(1000, 760)
        self.statusBar().showMessage("Open a photo, RAW file, DICOM file or series folder, or NIfTI volume")

    def _menus(self) -> None:
        menu = self.menuBar().addMenu("&File")
        for text, shortcut, slot in (("&Open file…", QKeySequence.Open, self.open_file),
                                     ("Open DICOM &folder…", "Ctrl+Shift+O", self.open_folder),
                                     ("&Quit", QKeySequence.Quit, self.close)):
            action = QAction(text, self, shortcut=shortcut)
            action.triggered.connect(slot)
            menu.addAction(action)
        about = QAction("&About QuietLens", self)
        about.triggered.connect(lambda: QMessageBox.about(self, "QuietLens", f"QuietLens {__version__}"))
        self.menuBar().addMenu("&Help").addAction(about)

    def open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", "", FILE_FILTER)
        if path:
            self.load(Path(path))

    def open_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open DICOM series folder")
        if path:
            self.load(Path(path))

    def load(self, path: Path) -> _LoadTask:
        self.statusBar().showMessage(f"Loading {path}…")
        task = _LoadTask(path)
        task.signals.loaded.connect(self.set_image)
        task.signals.failed.connect(self.show_error)
        self.pool.start(task)
        return task

    @Slot(object)
    def set_image(self, image: Image) -> None:
        self.image = image
        planes = image.slices().shape[0]
        self.slider.setVisible(planes > 1)
        self.slider.setRange(0, planes - 1)
        self.slider.setValue(planes // 2)
        self.show_plane(self.slider.value())
        facts = image.describe()
        self.setWindowTitle(f"QuietLens — {image.source.name if image.source else ''}")
        self.statusBar().showMessage(f"{facts['kind']} {facts['format']} {'×'.join(map(str, facts['shape']))}")

    @Slot(int)
    def show_plane(self, index: int) -> None:
        if self.image is not None:
            self.view.setPixmap(QPixmap.fromImage(to_qimage(display.to_display(self.image, index))))

    @Slot(str)
    def show_error(self, message: str) -> None:
        self.statusBar().showMessage("Could not open the file")
        QMessageBox.warning(self, "QuietLens", message)


def main(argv: list[str] | None = None) -> int:
    app = QApplication(sys.argv if argv is None else argv)
    window = MainWindow()
    window.show()
    args = app.arguments()[1:]
    if args:
        window.load(Path(args[0]))
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
