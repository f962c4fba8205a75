"""Background work for the GUI: a QRunnable that runs one engine call and reports through signals.

Every long call (load, prepare/run, save, batch) goes through :class:`Task`, so the window never freezes,
and every outcome arrives as exactly one of ``finished``, ``failed`` or ``cancelled``: a task that raises
always reports, so progress bars are reset and buttons re-enabled.
"""
from __future__ import annotations

import traceback
from typing import Any, Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from quietlens.engine.errors import Cancelled, QuietLensError
from quietlens.engine.progress import CancelToken


class TaskSignals(QObject):
    progress = Signal(float, str)
    item = Signal(object)  # intermediate results (e.g. one file of a batch)
    finished = Signal(object)
    failed = Signal(str, str)  # message, details
    cancelled = Signal()
    done = Signal()  # after any of the three above


class Context:
    """What a task function gets: ``progress(fraction, message)``, ``cancel`` and ``item(obj)``."""

    def __init__(self, signals: TaskSignals, cancel: CancelToken):
        self._signals, self.cancel = signals, cancel

    def progress(self, fraction: float, message: str = "") -> None:
        self.cancel.check()  # a cancelled task stops at its next progress report too
        self.report(fraction, message)

    def report(self, fraction: float, message: str = "") -> None:
        """Progress for work that checks ``cancel`` itself and must stop only where it chooses (training
        saves a checkpoint before it stops, so that running it again resumes)."""
        self._signals.progress.emit(float(fraction), str(message))

    def item(self, obj: Any) -> None:
        self._signals.item.emit(obj)


def error_details(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class Task(QRunnable):
    def __init__(self, fn: Callable[[Context], Any], name: str = ""):
        super().__init__()
        self.setAutoDelete(False)  # Python keeps it (and its signals) alive until ``done``
        self.fn, self.name = fn, name
        self.cancel = CancelToken()
        self.signals = TaskSignals()
        self.reported = False  # set on the GUI thread once ``done`` has been delivered there
        self._then: list[Callable[[], None]] = []

    def when_done(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the GUI thread once the task has reported, or now if it already has. Unlike
        connecting to ``signals.done`` after :meth:`Runner.start`, this cannot miss a task that finished
        before the caller got to it."""
        if self.reported:
            fn()
        else:
            self._then.append(fn)

    def _reported(self) -> None:
        self.reported = True
        for fn in self._then:
            fn()

    def run(self) -> None:
        try:
            result = self.fn(Context(self.signals, self.cancel))
        except Cancelled:
            outcome = (self.signals.cancelled, ())
        except QuietLensError as exc:
            outcome = (self.signals.failed, (str(exc), error_details(exc)))
        except MemoryError as exc:
            outcome = (self.signals.failed, ("not enough memory for this operation", error_details(exc)))
        except Exception as exc:  # a bug: shown with its traceback, never swallowed
            outcome = (self.signals.failed, (f"unexpected error: {exc!r}", error_details(exc)))
        else:
            outcome = (self.signals.finished, (result,))
        try:
            outcome[0].emit(*outcome[1])
            self.signals.done.emit()
        except RuntimeError:  # the window was closed meanwhile: nobody is listening any more
            pass


class Runner(QObject):
    """Starts tasks on the global thread pool and keeps them referenced until they report."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.pool = QThreadPool.globalInstance()
        self.active: set[Task] = set()

    def start(self, fn: Callable[[Context], Any], *, finished=None, failed=None, cancelled=None,
              progress=None, item=None, name: str = "") -> Task:
        task = Task(fn, name)
        s = task.signals
        for signal, slot in ((s.finished, finished), (s.failed, failed), (s.cancelled, cancelled),
                             (s.progress, progress), (s.item, item)):
            if slot is not None:
                signal.connect(slot)
        s.done.connect(lambda: (self.active.discard(task), task._reported()))
        self.active.add(task)
        self.pool.start(task)
        return task

    def busy(self) -> bool:
        return bool(self.active)

    def wait(self, msecs: int = 30000) -> bool:
        return self.pool.waitForDone(msecs)
