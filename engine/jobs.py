"""One file-job of a batch: what it is (:class:`Task`), its outcome and report row (:class:`FileResult`),
and running it (:func:`process`). The batch runs jobs in this process, in a helper process that can be
killed (:mod:`.child`) or on a Dask cluster (:mod:`.distributed`); all three share this module, so only
plain data crosses a process boundary and no runner imports another's module.
"""
from __future__ import annotations

import errno
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import Cancelled, QuietLensError
from .methods import get
from .pipeline import denoise_file
from .progress import CancelToken, Progress, no_progress

STATUSES = ("done", "skipped", "failed", "cancelled")
# Write errors that every later file would hit too: the batch stops rather than fail them one by one.
STOPPING_ERRNOS = {errno.ENOSPC, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


@dataclass
class Task:
    """One input to denoise: plain strings and numbers, so it crosses to a child process or a worker."""

    input: str
    output: str
    method: str
    params: dict[str, float]
    provider: str
    model: str = ""  # a model family made by `quietlens train`; empty: the method's shipped one
    options: dict[str, str] = field(default_factory=dict)  # the method's options, e.g. {"profile": NAME}


@dataclass
class FileResult:
    """The outcome of one input: a row of the batch report."""

    input: str
    output: str
    status: str  # done | skipped | failed | cancelled
    seconds: float = 0.0
    error: str = ""
    method: str = ""
    params: dict[str, float] = field(default_factory=dict)
    provider: str | None = None  # the provider that ran it (None when nothing ran)
    model_sha256: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. the result barely differs from the input, a noise profile did not fit
    stops_batch: bool = False  # the output disk is full or read-only: no later file can be written

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["stops_batch"]
        return data

    @classmethod
    def of(cls, task: Task, status: str, error: str = "", seconds: float = 0.0) -> "FileResult":
        """A result for ``task`` that no run produced (failed before it started, cancelled, timed out)."""
        return cls(task.input, task.output, status, seconds, error, task.method, dict(task.params))


def process(task: Task, progress: Progress = no_progress, cancel: CancelToken | None = None) -> FileResult:
    """Denoise one input and describe the outcome. Never raises: whoever runs it always gets an answer."""
    result = FileResult.of(task, "done")
    t0 = time.perf_counter()
    try:
        Path(task.output).parent.mkdir(parents=True, exist_ok=True)
        done = denoise_file(task.input, task.output, get(task.method, task.model, task.options), task.params,
                            provider=task.provider, progress=progress, cancel=cancel)
        result.provider, result.model_sha256, result.warnings = done.provider, done.model_sha256, done.warnings
    except Cancelled:
        result.status = "cancelled"
    except QuietLensError as exc:
        result.status, result.error, result.stops_batch = "failed", str(exc), stops_batch(exc)
    except OSError as exc:  # creating the output's folder
        result.status, result.stops_batch = "failed", stops_batch(exc)
        result.error = f"{Path(task.output).parent}: cannot be created ({exc.strerror or exc})"
    except Exception as exc:  # a bug must not cost the user the rest of the batch
        result.status, result.error = "failed", f"{task.input}: internal error: {exc!r}"
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def stops_batch(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or its cause) says the output disk is full or read-only."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in STOPPING_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
