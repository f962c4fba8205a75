"""Typed, user-readable errors. Every failure the user can cause ends up as one of these.

The message always names the file (when there is one) and the reason in plain words; the original
library exception, if any, is chained as ``__cause__`` for the details view.
"""
from __future__ import annotations

from pathlib import Path


class QuietLensError(Exception):
    """Base class: ``str(err)`` is a complete sentence fit for a dialog or the CLI."""

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = Path(path) if path is not None else None
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class UnsupportedFormatError(QuietLensError):
    """The file is not of a kind QuietLens reads or writes (or its variant is not supported)."""


class CorruptFileError(QuietLensError):
    """The file claims a known format but cannot be decoded (empty, truncated, damaged)."""


class SeriesError(QuietLensError):
    """A DICOM folder holds no series, or more than one, or slices that do not fit together."""


class InvalidImageError(QuietLensError):
    """The pixels cannot be processed as asked (wrong kind for a method, too small, NaN, constant...)."""


class ModelError(QuietLensError):
    """A model graph is missing, unknown, or fails its integrity check."""


class OutputError(QuietLensError):
    """The result cannot be written (read-only folder, would overwrite an input, disk full...)."""


class Cancelled(QuietLensError):
    """The user cancelled a long operation. Nothing was written."""

    def __init__(self, reason: str = "cancelled by the user", path: str | Path | None = None):
        super().__init__(reason, path)
