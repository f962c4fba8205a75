"""A folder in, a mirrored folder out: resumable, atomic, and one bad file never stops the batch.

Inputs are every file with a supported suffix under the input folder, recursively; a folder whose files
are all DICOM is one series input. Outputs that already exist are skipped, so re-running the same
command after a crash, a kill or a cancel finishes the rest; hidden partial files a killed run left are
removed first. A JSON report lists every input with its status.

Files run in this process by default. With ``timeout`` each runs in a helper process that is killed when
it overruns (:mod:`.child`); with ``scheduler`` or ``workers`` they are spread over a Dask cluster
(:mod:`.distributed`). Results, report and resume are the same in every case. A full disk or a
destination that turned read-only stops the batch with an :class:`OutputError` (the report is written
when possible) instead of failing every remaining file.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from . import __version__, io
from .errors import Cancelled, OutputError, QuietLensError
from .methods import get, resolve_params
from .pipeline import default_output_path, denoise_file
from .progress import CancelToken, Progress, no_progress

SUPPORTED_SUFFIXES = io.PHOTO_SUFFIXES + io.RAW_SUFFIXES + io.DICOM_SUFFIXES + io.NIFTI_SUFFIXES
REPORT_NAME = "quietlens-report.json"
LOCK_NAME = ".quietlens-batch.lock"
STATUSES = ("done", "skipped", "failed", "cancelled")
# Write errors that every later file would hit too: stop rather than fail them one by one.
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
    input: str
    output: str
    status: str  # done | skipped | failed | cancelled
    seconds: float = 0.0
    error: str = ""
    method: str = ""
    params: dict[str, float] = field(default_factory=dict)
    provider: str | None = None  # the provider that ran it (None when nothing ran)
    model_sha256: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. a noise profile that did not fit the file
    stops_batch: bool = False  # the output disk is full or read-only: no later file can be written

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["stops_batch"]
        return data


def find_inputs(root: Path, include: Iterable[str] = ("*",)) -> list[Path]:
    """Supported files and DICOM series folders under ``root``, in a stable order."""
    patterns = list(include)
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):  # symlinked folders are not followed: no loops
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        names = sorted(f for f in files if not f.startswith(".") and f != REPORT_NAME)
        candidates = [here / f for f in names if io.full_suffix(Path(f)) in SUPPORTED_SUFFIXES]
        dicoms = [p for p in candidates if io.full_suffix(p) in io.DICOM_SUFFIXES]
        if len(dicoms) > 1 and len(dicoms) == len(candidates):
            found.append(here)  # one series: the loader sorts and checks its slices
            continue
        found.extend(p for p in candidates if any(fnmatch.fnmatch(p.name, pat) for pat in patterns))
    return found


def process(task: Task, progress: Progress = no_progress, cancel: CancelToken | None = None) -> FileResult:
    """Denoise one input and describe the outcome. Never raises: whoever runs it always gets an answer."""
    result = FileResult(task.input, task.output, "done", method=task.method, params=dict(task.params))
    t0 = time.perf_counter()
    try:
        Path(task.output).parent.mkdir(parents=True, exist_ok=True)
        done = denoise_file(task.input, task.output, get(task.method, task.model, task.options), task.params,
                            provider=task.provider, progress=progress, cancel=cancel)
        result.provider, result.model_sha256 = done.provider, done.model_sha256
        result.warnings = list(getattr(done.state, "warnings", ()))
    except Cancelled:
        result.status = "cancelled"
    except QuietLensError as exc:
        result.status, result.error, result.stops_batch = "failed", str(exc), _stops_batch(exc)
    except OSError as exc:  # creating the output's folder
        result.status, result.stops_batch = "failed", _stops_batch(exc)
        result.error = f"{Path(task.output).parent}: cannot be created ({exc.strerror or exc})"
    except Exception as exc:  # a bug must not cost the user the rest of the batch
        result.status, result.error = "failed", f"{task.input}: internal error: {exc!r}"
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _stops_batch(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in STOPPING_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_batch(
    in_dir: str | Path,
    out_dir: str | Path,
    method: str,
    params: Mapping[str, str | float] | None = None,
    *,
    include: Iterable[str] = ("*",),
    provider: str = "auto",
    on_file: Callable[[int, int, FileResult], None] | None = None,
    file_progress: Callable[[float, str], None] | None = None,
    cancel: CancelToken | None = None,
    timeout: float | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    model: str | None = None,
    options: Mapping[str, str] | None = None,
) -> list[FileResult]:
    """Denoise every input under ``in_dir`` into a mirrored tree under ``out_dir``; write the report.

    ``on_file(k, n, result)`` is called as each input finishes (``k`` counts from 0; on a cluster, in
    the order they finish). Cancelling stops after the current step; a file in flight is not written,
    and the report says which inputs are left. ``timeout`` (seconds) fails a file that takes longer;
    ``scheduler`` (a Dask address such as ``tcp://host:8786``) or ``workers`` (a local cluster of that
    many processes) spread the files; ``file_progress`` is only reported in this process. ``model``
    names a model family made by ``quietlens train`` (workers elsewhere must see the same user data);
    ``options`` the method's options (e.g. ``{"profile": NAME}``).
    """
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    cancel = cancel or CancelToken()
    if not in_dir.is_dir():
        raise QuietLensError("the input folder does not exist", in_dir)
    if out_dir == in_dir or in_dir in out_dir.parents:
        raise OutputError("the output folder must be outside the input folder", out_dir)
    if timeout is not None and not timeout > 0:
        raise QuietLensError(f"the timeout must be a positive number of seconds, got {timeout}")
    # bad parameters, model or options fail before any file
    values = resolve_params(get(method, model, options), params or {})
    model, options = model or "", dict(options or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError("the output folder is not writable", out_dir)

    started = time.time()
    with _exclusive(out_dir):
        remove_partial_outputs(out_dir)
        inputs = find_inputs(in_dir, include)
        results: list[FileResult | None] = [None] * len(inputs)
        finished = 0

        def record(i: int, result: FileResult) -> None:
            nonlocal finished
            results[i] = result
            if on_file:
                on_file(finished, len(inputs), result)
            finished += 1

        tasks: dict[int, Task] = {}
        for i, src in enumerate(inputs):
            planned = _plan(src, in_dir, out_dir, method, values, provider, model, options)
            if isinstance(planned, Task):
                tasks[i] = planned
            else:
                record(i, planned)

        stop: FileResult | None = None
        with contextlib.closing(_execute(tasks, timeout, scheduler, workers, file_progress, cancel)) as run:
            for i, result in run:
                record(i, result)
                if result.stops_batch:
                    stop = result
                    break  # closing the executor cancels what is still queued
        for i, task in tasks.items():
            if results[i] is None:  # never started: cancelled, or stopped by a full disk
                why = f"not started: {stop.error}" if stop else ""
                record(i, FileResult(task.input, task.output, "cancelled", error=why, method=method,
                                     params=dict(values)))
        remove_partial_outputs(out_dir)  # a helper process killed on timeout leaves its temporary file

        report = [r for r in results if r is not None]
        try:
            write_report(out_dir / REPORT_NAME, in_dir, out_dir, method, values, provider, report, started,
                         model, options)
        except (OSError, QuietLensError):
            if stop is None:
                raise
    if stop is not None:
        done = sum(r.status == "done" for r in report)
        left = sum(r.status == "cancelled" for r in report)
        raise OutputError(f"the batch stopped: {stop.error}. {done} outputs were written and kept, {left} "
                          "inputs were not started; free space (or make the folder writable) and run the "
                          "same command again to finish")
    return report


def _plan(src: Path, in_dir: Path, out_dir: Path, method: str, values: dict[str, float],
          provider: str, model: str = "", options: dict[str, str] | None = None) -> Task | FileResult:
    """The task for ``src``, or its final result when there is nothing to run (finished before, unnamed)."""
    try:
        dst = default_output_path(src, out_dir, in_dir)
    except QuietLensError as exc:  # e.g. the file vanished or cannot be read
        return FileResult(str(src), str(out_dir / src.relative_to(in_dir)), "failed", error=str(exc),
                          method=method, params=dict(values))
    if dst.exists():  # finished by an earlier run (outputs only ever appear complete)
        return FileResult(str(src), str(dst), "skipped", method=method, params=dict(values))
    return Task(str(src), str(dst), method, dict(values), provider, model, dict(options or {}))


def _execute(tasks: dict[int, Task], timeout: float | None, scheduler: str | None, workers: int | None,
             file_progress: Progress | None, cancel: CancelToken) -> Iterator[tuple[int, FileResult]]:
    """(index, result) for the tasks as they finish, on the chosen executor; stops early once cancelled."""
    if not tasks:  # all finished before: no helper or cluster to start
        return
    if scheduler or workers:
        from . import distributed

        yield from distributed.run_tasks(tasks, scheduler=scheduler, workers=workers, timeout=timeout,
                                         cancel=cancel)
        return
    if timeout is not None:
        from .child import Child

        with Child() as child:
            for i, task in tasks.items():
                if cancel.cancelled:
                    return
                yield i, child.run(task, timeout, cancel)
        return
    for i, task in tasks.items():
        if cancel.cancelled:
            return
        yield i, process(task, file_progress or no_progress, cancel)


def remove_partial_outputs(out_dir: Path) -> None:
    """Delete the hidden temporary files and folders a killed run left (named by ``io.atomic_path``)."""
    for folder, dirs, files in os.walk(out_dir):
        for name in [d for d in dirs if io.PARTIAL_NAME.match(d)]:
            shutil.rmtree(Path(folder) / name, ignore_errors=True)
            dirs.remove(name)
        for name in files:
            if io.PARTIAL_NAME.match(name):
                with contextlib.suppress(FileNotFoundError):
                    (Path(folder) / name).unlink()


@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Hold a lock on the output folder, so that cleaning up partial files never races another batch."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one batch per output folder is up to the user
        yield
        return
    with open(out_dir / LOCK_NAME, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutputError("another batch is writing to this output folder; wait for it to finish",
                              out_dir) from None
        yield  # the kernel drops the lock when the process ends, even when killed


def write_report(path: Path, in_dir: Path, out_dir: Path, method: str, params: Mapping[str, float],
                 provider: str, results: list[FileResult], started: float, model: str = "",
                 options: Mapping[str, str] | None = None) -> None:
    report = {
        "software": f"QuietLens {__version__}",
        "input": str(in_dir), "output": str(out_dir),
        "method": method, "model": model or method, "params": dict(params), "options": dict(options or {}),
        "provider": provider,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 3),
        "counts": {s: sum(r.status == s for r in results) for s in STATUSES},
        "files": [r.to_json() for r in results],
    }
    with io.atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
