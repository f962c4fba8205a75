"""Persistent preferences (QSettings) and the light/dark themes."""
from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

MAX_RECENT = 10


class Settings:
    """Typed access to the few things QuietLens remembers between runs."""

    def __init__(self, path: str | Path | None = None):
        if path is None:
            self.qs = QSettings("QuietLens", "QuietLens")
        else:  # tests and portable installs: one INI file
            self.qs = QSettings(str(path), QSettings.IniFormat)

    def get(self, key: str, default=None, kind: type | None = None):
        value = self.qs.value(key, default)
        if kind is bool and isinstance(value, str):
            return value.lower() in ("1", "true", "yes")
        if kind is not None and value is not None:
            try:
                return kind(value)
            except (TypeError, ValueError):
                return default
        return value

    def set(self, key: str, value) -> None:
        self.qs.setValue(key, value)

    def recent_files(self) -> list[str]:
        """Absolute paths of recently opened files that still exist, newest first (a relative path,
        as older versions stored, depends on where the app was started: it is dropped too)."""
        value = self.qs.value("recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in (value or []) if v and os.path.isabs(str(v)) and os.path.exists(str(v))]

    def add_recent(self, path: str | Path) -> None:
        path = os.path.abspath(path)
        recent = [p for p in self.recent_files() if p != path]
        self.qs.setValue("recent", [path, *recent][:MAX_RECENT])

    def clear_recent(self) -> None:
        self.qs.setValue("recent", [])

    def last_dir(self, key: str) -> str:
        return str(self.qs.value(f"dirs/{key}", "") or "")

    def set_last_dir(self, key: str, path: str | Path) -> None:
        path = Path(path)
        self.qs.setValue(f"dirs/{key}", str(path if path.is_dir() else path.parent))

    def sync(self) -> None:
        self.qs.sync()


def apply_theme(app: QApplication, theme: str) -> None:
    """``dark`` or ``light``: Fusion style with a matching palette."""
    app.setStyle("Fusion")
    if theme != "dark":
        app.setPalette(app.style().standardPalette())
        app.setStyleSheet("")
        return
    p = QPalette()
    base, window, text, accent = QColor(30, 31, 34), QColor(43, 45, 49), QColor(222, 224, 228), QColor(77, 144, 254)
    for role, colour in (
        (QPalette.Window, window), (QPalette.WindowText, text), (QPalette.Base, base),
        (QPalette.AlternateBase, window), (QPalette.ToolTipBase, window), (QPalette.ToolTipText, text),
        (QPalette.Text, text), (QPalette.Button, QColor(54, 57, 62)), (QPalette.ButtonText, text),
        (QPalette.BrightText, QColor(255, 90, 90)), (QPalette.Link, accent), (QPalette.Highlight, accent),
        (QPalette.HighlightedText, QColor(255, 255, 255)), (QPalette.PlaceholderText, QColor(130, 133, 140)),
    ):
        p.setColor(role, colour)
    for role in (QPalette.WindowText, QPalette.Text, QPalette.ButtonText):
        p.setColor(QPalette.Disabled, role, QColor(120, 122, 128))
    app.setPalette(p)
    app.setStyleSheet(
        "QToolTip { color: #dee0e4; background: #2b2d31; border: 1px solid #4d90fe; }"
        "QDockWidget::title { padding: 4px; background: #232428; }"
        "QGroupBox { border: 1px solid #3c3f45; border-radius: 4px; margin-top: 1.2em; padding-top: 4px; }"
        "QGroupBox::title { subcontrol-origin: margin; left: 8px; padding: 0 3px; }"
        # the chosen tool and view mode must stand out (Fusion's dark sunken look barely shows)
        "QToolButton:checked { background: #2f5da8; border: 1px solid #4d90fe; border-radius: 3px; }"
    )
