"""QuietLens desktop app entry point: ``quietlens-gui [FILE_OR_FOLDER]``."""
from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtWidgets import QApplication

from quietlens.engine import __version__

from .window import MainWindow

__all__ = ["MainWindow", "main"]


def main(argv: list[str] | None = None) -> int:
    app = QApplication.instance() or QApplication(sys.argv if argv is None else argv)
    app.setApplicationName("QuietLens")
    app.setOrganizationName("QuietLens")
    app.setApplicationVersion(__version__)
    window = MainWindow()
    window.show()
    args = [a for a in app.arguments()[1:] if not a.startswith("-")]
    if args:
        window.load(Path(args[0]))
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
