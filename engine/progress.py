"""Progress reporting and cancellation shared by every long operation.

A long operation takes ``progress`` (a callable ``(fraction, message)``, fraction in [0, 1]) and ``cancel``
(a :class:`CancelToken`). It calls ``cancel.check()`` between units of work, which raises
:class:`~quietlens.engine.errors.Cancelled` once the token is set, so partial work is never written.
"""
from __future__ import annotations

import threading
from typing import Protocol

from .errors import Cancelled


class Progress(Protocol):
    def __call__(self, fraction: float, message: str = "") -> None: ...


def no_progress(fraction: float, message: str = "") -> None:
    """A progress sink that ignores everything."""


class CancelToken:
    """Thread-safe cancel flag: the GUI or a signal handler sets it, the worker checks it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()


def sub_progress(progress: Progress, start: float, stop: float) -> Progress:
    """Map a nested operation's [0, 1] onto [start, stop] of the parent's progress."""

    def report(fraction: float, message: str = "") -> None:
        progress(start + (stop - start) * min(max(fraction, 0.0), 1.0), message)

    return report

