"""Batch dialog: a folder in, a mirrored folder out, through engine.batch.run_batch on a worker thread."""
from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QAbstractItemView, QComboBox, QDialog, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout,
    QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton, QSpinBox, QTableWidget,
    QTableWidgetItem, QToolButton, QVBoxLayout, QWidget,
)

from quietlens.engine import batch, methods

from .panels import param_control
from .settings import Settings
from .widgets import warn
from .workers import Runner

STATUS_COLOURS = {"done": Qt.darkGreen, "skipped": Qt.gray, "failed": Qt.red, "cancelled": Qt.darkYellow}


class BatchDialog(QDialog):
    """``method``/``model``: what the main window uses on its open image, offered first (else the
    method of the last batch)."""

    def __init__(self, settings: Settings, runner: Runner, providers: list[str], provider: str = "auto",
                 show_internal: bool = False, parent: QWidget | None = None, method: str | None = None,
                 model: str | None = None):
        super().__init__(parent)
        self.setWindowTitle("Batch denoise — QuietLens")
        self.resize(760, 560)
        self.settings, self.runner = settings, runner
        self.task = None
        self.results: list[batch.FileResult] = []
        self.report_path: Path | None = None
        self.sliders: dict = {}  # parameter name -> its control (slider or choice box)

        self.input = QLineEdit(settings.last_dir("batch_in"))
        self.output = QLineEdit(settings.last_dir("batch_out"))
        self.include = QLineEdit(str(settings.get("batch/include", "*") or "*"))
        self.include.setToolTip("File name patterns to include, separated by spaces or commas (e.g. *.dcm *.png)")
        self.method = QComboBox()
        self.methods = methods.available(include_internal=show_internal)
        for m in self.methods:
            self.method.addItem(f"{m.title} — {', '.join(m.kinds)}", m.name)
        self.method.currentIndexChanged.connect(self._method_changed)
        self.model = QComboBox()
        self.model.setToolTip("The shipped model, or one adapted to your photos (File → Adapt to my photos…, "
                              "or quietlens train)")
        self.provider = QComboBox()
        self.provider.addItems(["auto", *providers])
        self.provider.setCurrentText(provider if provider in providers else "auto")
        self.timeout = QDoubleSpinBox(minimum=0, maximum=24 * 3600, decimals=0, suffix=" s", singleStep=30)
        self.timeout.setSpecialValueText("none")
        self.timeout.setToolTip("Run each file in a helper process and fail it when it takes longer than this "
                                "(a decoder crash then fails only that file); none: no limit, in this process")
        self.timeout.setValue(settings.get("batch/timeout", 0, float) or 0)
        self.workers = QSpinBox(minimum=0, maximum=max(os.cpu_count() or 1, 1) * 4)
        self.workers.setSpecialValueText("none (this process)")
        self.workers.setToolTip("Spread the files over this many local worker processes (needs "
                                "pip install \"dask[distributed]\")")
        self.workers.setValue(settings.get("batch/workers", 0, int) or 0)
        self.params_box = QGroupBox("Parameters")
        self.params_layout = QVBoxLayout(self.params_box)

        form = QFormLayout()
        form.addRow("Input folder", self._with_browse(self.input, "batch_in"))
        form.addRow("Output folder", self._with_browse(self.output, "batch_out"))
        form.addRow("Include", self.include)
        form.addRow("Method", self.method)
        form.addRow("Model", self.model)
        self.form = form
        form.addRow("Provider", self.provider)
        limits = QHBoxLayout()
        limits.addWidget(self.timeout)
        limits.addWidget(QLabel("   Worker processes"))
        limits.addWidget(self.workers)
        limits.addStretch(1)
        form.addRow("Timeout per file", limits)

        self.overall = QProgressBar()
        self.overall.setFormat("%v / %m files")
        self.overall.setTextVisible(False)  # no count before a batch has found its files
        self.file_bar = QProgressBar()
        self.file_bar.setRange(0, 1000)
        self.file_bar.setTextVisible(False)
        self.file_bar.setVisible(False)  # the file in progress: only while a batch runs
        self.file_label = QLabel("")
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Input", "Status", "Time (s)", "Message"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(3, QHeaderView.Stretch)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.report = QLabel("")
        self.report.setTextInteractionFlags(Qt.TextBrowserInteraction)
        self.report.linkActivated.connect(lambda url: QDesktopServices.openUrl(QUrl(url)))

        self.start_button = QPushButton("Start")
        self.start_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.close_button = QPushButton("Close")
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)
        buttons = QHBoxLayout()
        buttons.addWidget(self.report, 1)
        for b in (self.start_button, self.cancel_button, self.close_button):
            buttons.addWidget(b)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.params_box)
        layout.addWidget(QLabel("Overall"))
        layout.addWidget(self.overall)
        layout.addWidget(self.file_label)
        layout.addWidget(self.file_bar)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        index = self.method.findData(method or "")
        if index < 0:
            index = self.method.findData(settings.get("batch/method", ""))
        self.method.setCurrentIndex(index if index >= 0 else 0)
        self._method_changed()
        if model and self.model.findText(model) >= 0:
            self.model.setCurrentText(model)
        for edit in (self.input, self.output):
            edit.textChanged.connect(self._update_start)
        self._update_start()

    def _with_browse(self, edit: QLineEdit, key: str) -> QWidget:
        button = QToolButton(text="…")
        button.setToolTip("Choose a folder")

        def browse() -> None:
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", edit.text() or self.settings.last_dir(key))
            if path:
                edit.setText(path)

        button.clicked.connect(browse)
        row = QWidget()
        h = QHBoxLayout(row)
        h.setContentsMargins(0, 0, 0, 0)
        h.addWidget(edit, 1)
        h.addWidget(button)
        return row

    def _method_changed(self, *_) -> None:
        while self.params_layout.count():
            w = self.params_layout.takeAt(0).widget()
            if w is not None:
                w.hide()
                w.deleteLater()
        self.sliders = {}
        name = self.method.currentData()
        if not name:
            self.params_layout.addWidget(QLabel("No method is available."))
            self._update_start()
            return
        m = methods.get(name)
        families = m.families()
        self.model.clear()
        self.model.addItems(families)
        self.form.setRowVisible(self.model, len(families) > 1)
        for p in m.params:
            s = param_control(p)
            self.params_layout.addWidget(s)
            self.sliders[p.name] = s
        self._update_start()

    def _update_start(self, *_) -> None:
        """Start needs an input folder, an output folder and a method (and no batch running)."""
        ready = bool(self.input.text().strip() and self.output.text().strip() and self.method.currentData())
        self.start_button.setEnabled(ready and self.task is None)
        self.start_button.setToolTip("" if ready else "Choose an input folder and an output folder first")

    def patterns(self) -> list[str]:
        return [p for p in self.include.text().replace(",", " ").split() if p] or ["*"]

    # -- running -------------------------------------------------------------------------------------

    def start(self) -> None:
        in_dir, out_dir = self.input.text().strip(), self.output.text().strip()
        name = self.method.currentData()
        if not in_dir or not out_dir or not name:
            self.file_label.setText("Choose an input folder, an output folder and a method.")
            return
        self.settings.set_last_dir("batch_in", in_dir)
        self.settings.set_last_dir("batch_out", out_dir)
        self.settings.set("batch/include", self.include.text())
        self.settings.set("batch/method", name)
        self.settings.set("batch/timeout", self.timeout.value())
        self.settings.set("batch/workers", self.workers.value())
        timeout, workers = (self.timeout.value() or None), (self.workers.value() or None)
        params = {k: s.value() for k, s in self.sliders.items()}
        include, provider = self.patterns(), self.provider.currentText()
        model = self.model.currentText() if self.model.currentText() != name else None
        self.results = []
        self.table.setRowCount(0)
        self.report.setText("")
        self.report_path = Path(out_dir) / batch.REPORT_NAME
        self.overall.setRange(0, max(len(batch.find_inputs(Path(in_dir), include)), 1)
                              if Path(in_dir).is_dir() else 1)
        self.overall.setValue(0)
        self.overall.setTextVisible(True)

        def work(ctx):
            return batch.run_batch(in_dir, out_dir, name, params, include=include, provider=provider,
                                   model=model, timeout=timeout, workers=workers,
                                   on_file=lambda i, n, r: ctx.item((i, n, r)),
                                   file_progress=ctx.progress, cancel=ctx.cancel)

        self.task = self.runner.start(work, finished=self._finished, failed=self._failed, cancelled=self._finished,
                                      progress=self._file_progress, item=self._file_done, name="batch")
        self._set_running(True)
        self.file_label.setText("Starting…")

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel.cancel()
            self.file_label.setText("Cancelling after the current step…")

    def _set_running(self, running: bool) -> None:
        self.cancel_button.setEnabled(running)
        self.file_bar.setVisible(running)
        for w in (self.input, self.output, self.include, self.method, self.model, self.provider, self.timeout,
                  self.workers, self.params_box):
            w.setEnabled(not running)
        self._update_start()

    def _file_progress(self, fraction: float, message: str) -> None:
        self.file_bar.setValue(int(fraction * 1000))

    def _file_done(self, payload) -> None:
        i, n, result = payload
        self.results.append(result)
        self.overall.setRange(0, max(n, 1))
        self.overall.setValue(i + 1)
        self.file_bar.setValue(0)
        self.file_label.setText(f"{i + 1} of {n}: {Path(result.input).name} — {result.status}")
        row = self.table.rowCount()
        self.table.insertRow(row)
        cells = [Path(result.input).name, result.status, f"{result.seconds:.2f}", result.error]
        for col, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setToolTip(result.input if col == 0 else text)
            if col == 1:
                item.setForeground(STATUS_COLOURS.get(result.status, Qt.black))
            self.table.setItem(row, col, item)

    def _finished(self, *_) -> None:
        self.task = None
        self._set_running(False)
        self.file_bar.setValue(0)
        counts = {s: sum(r.status == s for r in self.results) for s in ("done", "skipped", "failed", "cancelled")}
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no inputs found"
        self.file_label.setText(f"Finished: {summary}.")
        if self.report_path is not None and self.report_path.exists():
            url = QUrl.fromLocalFile(str(self.report_path)).toString()
            self.report.setText(f'<a href="{url}">Open the report</a> ({self.report_path})')

    def _failed(self, message: str, details: str) -> None:
        self.task = None
        self._set_running(False)
        self.file_bar.setValue(0)
        self.file_label.setText(f"The batch could not run: {message}")
        warn(self, "Batch", f"The batch could not run: {message}", details)

    def closeEvent(self, event) -> None:  # noqa: N802
        if self.task is not None:
            self.cancel()
        super().closeEvent(event)
