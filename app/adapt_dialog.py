"""*Adapt to my photos…*: teach C-BSN or SDAP the noise of the user's own camera, from the app.

The same engine call as ``quietlens train`` (:func:`quietlens.engine.train.train_model`) on a worker
thread, showing its progress, the training loss as it comes, and an ETA. Cancel stops after the current
step with a checkpoint saved, so starting again with the same settings resumes. When training is done, the
model is registered (in the user data folder, as the command does), the main window selects it, and the
dialog shows it on a crop of one of the photos, before and after.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QComboBox, QDialog, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit,
    QProgressBar, QPushButton, QSpinBox, QToolButton, QVBoxLayout, QWidget,
)

from quietlens.engine import io, methods, viewmath
from quietlens.engine.errors import QuietLensError
from quietlens.engine.session import Session

from .settings import Settings
from .viewer import to_qimage
from .widgets import LinePlot, warn
from .workers import Runner

METHODS = ("cbsn", "sdap")  # the self-supervised methods `quietlens train` adapts
# A training step's progress message, as the trainers report it: "step 12/300 blind 0.6808 self 0.5447".
STEP = re.compile(r"step (\d+)/(\d+)((?: [A-Za-z_]\w* [-+\d.eE]+)+)\s*$")
# What each loss tells a user, by the name the trainers give it (the first one reported is plotted).
LOSS_NAMES = {"blind": "network (blind-spot loss)", "cyclic": "network (cyclic loss)",
              "l1": "fast student (distillation)"}
SHOW_SIDE = 320  # px: the before/after crop


def parse_step(message: str) -> tuple[int, int, dict[str, float]] | None:
    """(step, steps, losses) from a training progress message; None for other messages."""
    found = STEP.search(message)
    if not found:
        return None
    words = found.group(3).split()
    try:
        losses = {name: float(value) for name, value in zip(words[::2], words[1::2])}
    except ValueError:
        return None
    return int(found.group(1)), int(found.group(2)), losses


def eta_text(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(5, int(round(seconds / 5.0)) * 5)} s left"
    return f"about {int(round(seconds / 60.0))} min left"


def before_after(folder: Path, method: str, model: str, ctx) -> tuple[Path, np.ndarray, np.ndarray]:
    """A centre crop of the first photo in ``folder`` (8-bit), before and after the adapted model."""
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            image = io.load(path)
        except QuietLensError:
            continue
        if image.kind != "photo":
            continue
        h, w = image.data.shape[:2]
        side_h, side_w = min(h, SHOW_SIDE), min(w, SHOW_SIDE)
        y0, x0 = (h - side_h) // 2, (w - side_w) // 2
        crop = viewmath.crop(image, viewmath.View(), (y0, x0, y0 + side_h, x0 + side_w))
        out = Session(crop).run(methods.get(method, model), {}, [], cancel=ctx.cancel)
        view = viewmath.View()
        return path, viewmath.display_plane(crop, view)[0], viewmath.display_plane(out.result, view)[0]
    raise QuietLensError("no photo to show the adapted model on", folder)


class AdaptDialog(QDialog):
    adapted = Signal(str, str, str)  # method, model, the photo it was shown on

    def __init__(self, settings: Settings, runner: Runner, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Adapt to my photos — QuietLens")
        self.resize(760, 640)
        self.settings, self.runner = settings, runner
        self.task = None
        self.started_at: tuple[float, float] | None = None  # (time, fraction) at this run's first report
        self.resumable: tuple | None = None  # the settings of a cancelled run: the same ones resume it
        self.photo: Path | None = None
        self.model_name = ""

        self.folder = QLineEdit(settings.last_dir("adapt"))
        self.folder.setPlaceholderText("a folder of noisy photos from your camera")
        browse = QToolButton(text="…")
        browse.setToolTip("Choose a folder")
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        self.method = QComboBox()
        for name in METHODS:
            m = methods.get(name)
            self.method.addItem(m.title, name)
            self.method.setItemData(self.method.count() - 1, m.summary, Qt.ToolTipRole)
        self.budget = QSpinBox(minimum=1, maximum=100000, value=10)
        self.unit = QComboBox()
        self.unit.addItems(["minutes", "steps"])
        self.unit.setToolTip("minutes: a time budget (a few steps are timed first and it becomes fixed step "
                             "counts); steps: the network's training steps, for a reproducible run")
        budget_row = QHBoxLayout()
        budget_row.addWidget(self.budget)
        budget_row.addWidget(self.unit)
        budget_row.addStretch(1)
        self.name = QLineEdit()
        self.name.setToolTip("The name the model is registered under (and NAME.student, its fast student)")
        form = QFormLayout()
        form.addRow("Your photos", folder_row)
        hint = QLabel("Ordinary noisy photos are all it needs: no clean references. Export RAW files to "
                      "TIFF or PNG first. More photos (and more time) adapt better.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: palette(placeholder-text);")
        form.addRow("", hint)
        form.addRow("Method", self.method)
        form.addRow("Budget", budget_row)
        form.addRow("Model name", self.name)
        for signal in (self.folder.textChanged, self.method.currentIndexChanged, self.budget.valueChanged,
                       self.unit.currentIndexChanged, self.name.textChanged):
            signal.connect(self._settings_changed)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.eta = QLabel("")
        status_row = QHBoxLayout()
        status_row.addWidget(self.status, 1)
        status_row.addWidget(self.eta)
        self.plot = LinePlot("step", "loss")
        self.plot.empty_text = "The training loss appears here, step by step."
        self.before, self.after = QLabel(alignment=Qt.AlignCenter), QLabel(alignment=Qt.AlignCenter)
        self.result_box = QGroupBox("Before / after")
        pictures = QHBoxLayout(self.result_box)
        for label, caption in ((self.before, "Before"), (self.after, "After (adapted)")):
            column = QVBoxLayout()
            column.addWidget(label, 1)
            column.addWidget(QLabel(caption, alignment=Qt.AlignCenter))
            pictures.addLayout(column)
        self.result_box.setVisible(False)

        self.start_button = QPushButton("Start")
        self.start_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.open_button = QPushButton("Open this photo")
        self.open_button.setToolTip("Open the photo in the main window, with the adapted model chosen")
        self.open_button.setVisible(False)
        close = QPushButton("Close")
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        close.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_button)
        buttons.addStretch(1)
        for b in (self.start_button, self.cancel_button, close):
            buttons.addWidget(b)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.progress)
        layout.addLayout(status_row)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.result_box, 1)
        layout.addLayout(buttons)
        self._settings_changed()

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder of your photos", self.folder.text())
        if path:
            self.folder.setText(path)

    def choices(self) -> tuple:
        """What this run depends on: a cancelled run resumes when these are the same."""
        return (self.method.currentData(), self.folder.text().strip(), self.budget.value(),
                self.unit.currentText(), self.name.text().strip())

    def _settings_changed(self, *_) -> None:
        folder = self.folder.text().strip()
        default = f"{self.method.currentData()}-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(folder).name)
                                                     .strip("-.") or "custom")
        self.name.setPlaceholderText(default)  # what train_model names it when left empty
        self.start_button.setText("Resume" if self.resumable == self.choices() else "Start")
        self.start_button.setEnabled(self.task is None and bool(folder))

    # -- running -------------------------------------------------------------------------------------

    def start(self) -> None:
        from quietlens.engine.train import train_model  # imports torch only when training starts

        method, folder, budget, unit, name = self.choices()
        if not folder:
            return
        self.settings.set_last_dir("adapt", folder)
        resuming = self.resumable == self.choices()
        self.plot.clear()
        self.result_box.setVisible(False)
        self.open_button.setVisible(False)
        self.started_at = None
        self.eta.setText("")
        self.status.setText("Resuming where it stopped…" if resuming else "Reading the photos…")
        minutes, steps = (budget, None) if unit == "minutes" else (None, budget)

        def work(ctx):
            entries = train_model(method, folder, name=name or None, minutes=minutes, steps=steps,
                                  progress=ctx.report, cancel=ctx.cancel)
            ctx.report(1.0, "showing the adapted model on one of your photos")
            return (entries[0].id, *before_after(Path(folder), method, entries[0].id, ctx))

        self.task = self.runner.start(work, finished=self._finished, failed=self._failed,
                                      cancelled=self._cancelled, progress=self._progress, name="adapt")
        self._set_running(True)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel.cancel()
            self.status.setText("Stopping after the current step (a checkpoint is saved)…")

    def _set_running(self, running: bool) -> None:
        self.cancel_button.setEnabled(running)
        for w in (self.folder, self.method, self.budget, self.unit, self.name):
            w.setEnabled(not running)
        self._settings_changed()

    def _progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(int(round(min(max(fraction, 0.0), 1.0) * 1000)))
        now = time.monotonic()
        step = parse_step(message)
        if step is None:
            self.status.setText(message[:1].upper() + message[1:] if message else "")
        else:
            k, n, losses = step
            first = next(iter(losses))
            label = LOSS_NAMES.get(first, first)
            self.plot.add_point(label, k, losses[first])
            self.status.setText(f"Training the {label.split(' (')[0]}: step {k} / {n}, {first} loss "
                                f"{losses[first]:.4f}")
        if self.started_at is None:
            self.started_at = (now, fraction)  # the rate counts from this run's start (a resumed one too)
        else:
            t0, f0 = self.started_at
            if fraction > f0 + 0.01 and now - t0 > 2.0:
                self.eta.setText(eta_text((now - t0) * (1.0 - fraction) / (fraction - f0)))

    def _finished(self, result) -> None:
        self.task = None
        self.resumable = None
        self.model_name, self.photo, before, after = result
        self._set_running(False)
        self.progress.setValue(1000)
        self.eta.setText("")
        self.status.setText(f"Registered “{self.model_name}”: it is chosen under Model for "
                            f"{methods.get(self.method.currentData()).title} (and offered in Batch). "
                            f"Shown on {self.photo.name}.")
        for label, pixels in ((self.before, before), (self.after, after)):
            label.setPixmap(QPixmap.fromImage(to_qimage(pixels)))
        self.result_box.setVisible(True)
        self.open_button.setVisible(True)
        self.adapted.emit(self.method.currentData(), self.model_name, str(self.photo))

    def _cancelled(self) -> None:
        self.task = None
        self.resumable = self.choices()
        self._set_running(False)
        self.eta.setText("")
        self.status.setText("Cancelled; the training so far is kept. Resume continues where it stopped "
                            "(with the same settings).")

    def _failed(self, message: str, details: str) -> None:
        self.task = None
        self._set_running(False)
        self.eta.setText("")
        self.status.setText(f"Could not adapt: {message}")
        warn(self, "Adapt to my photos", f"Could not adapt: {message}", details)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.cancel()
        super().closeEvent(event)
