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
import fnmatch
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from . import __version__, io
from .errors import Cancelled, OutputError, QuietLensError
from .io.formats import DICOM_SUFFIXES, INPUT_SUFFIXES, default_output_path, full_suffix
from .jobs import STATUSES, FileResult, Task, process
from .methods import get, resolve_params
from .progress import CancelToken, Progress, no_progress

REPORT_NAME = "quietlens-report.json"
LOCK_NAME = ".quietlens-batch.lock"


def find_inputs(root: Path, include: Iterable[str] = ("*",),
                on_error: Callable[[OSError], None] | None = None) -> list[Path]:
    """Supported files and DICOM series folders under ``root``, in a stable order. A folder that cannot
    be read is passed to ``on_error`` (the batch reports it as failed)."""
    patterns = list(include)
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, onerror=on_error):  # symlinked folders are not followed: no loops
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        names = sorted(f for f in files if not f.startswith(".") and f != REPORT_NAME)
        candidates = [here / f for f in names if full_suffix(Path(f)) in INPUT_SUFFIXES]
        dicoms = [p for p in candidates if full_suffix(p) in DICOM_SUFFIXES]
        if len(dicoms) > 1 and len(dicoms) == len(candidates):
            found.append(here)  # one series: the loader sorts and checks its slices
            continue
        found.extend(p for p in candidates if any(fnmatch.fnmatch(p.name, pat) for pat in patterns))
    return found


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
    A KeyboardInterrupt (when nothing turns Ctrl-C into ``cancel``) still writes the report, then raises
    :class:`Cancelled` saying what was kept.
    """
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    cancel = cancel or CancelToken()
    if not in_dir.is_dir():
        raise QuietLensError("the input folder does not exist", in_dir)
    if out_dir == in_dir or in_dir in out_dir.parents:
        raise OutputError("the output folder must be outside the input folder", out_dir)
    if timeout is not None and not timeout > 0:
        raise QuietLensError(f"the timeout must be a positive number of seconds, got {timeout}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise QuietLensError(f"the number of workers must be a positive integer, got {workers!r}")
    # bad parameters, model or options fail before any file
    values = resolve_params(get(method, model, options), params or {})
    model, options = model or "", dict(options or {})
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot be created ({exc.strerror or exc})", out_dir) from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError("the output folder is not writable", out_dir)

    started = time.time()
    with _exclusive(out_dir):
        unreadable: list[OSError] = []
        inputs = find_inputs(in_dir, include, on_error=unreadable.append)
        outputs = [_output_of(src, in_dir, out_dir) for src in inputs]
        output_folders = _output_folders(out_dir, in_dir, outputs)
        for folder in output_folders:
            io.clean_leftovers(folder)  # what a killed run left, before finished outputs are counted
        results: list[FileResult | None] = [None] * len(inputs)
        finished = 0
        total = len(unreadable) + len(inputs)

        def record(i: int | None, result: FileResult) -> None:
            nonlocal finished
            if i is not None:
                results[i] = result
            if on_file:
                on_file(finished, total, result)
            finished += 1

        failed_folders = [_unreadable(exc, in_dir, out_dir, method, values) for exc in unreadable]
        for result in failed_folders:
            record(None, result)
        tasks: dict[int, Task] = {}
        for i, (src, dst) in enumerate(zip(inputs, outputs)):
            if isinstance(dst, str):  # cannot be named: the reason
                record(i, FileResult(str(src), str(out_dir / src.relative_to(in_dir)), "failed", error=dst,
                                     method=method, params=dict(values)))
            elif dst.exists():  # finished by an earlier run (outputs only ever appear complete)
                record(i, FileResult(str(src), str(dst), "skipped", method=method, params=dict(values)))
            else:
                tasks[i] = Task(str(src), str(dst), method, dict(values), provider, model, dict(options))

        stop: FileResult | None = None
        interrupted = False
        try:
            with contextlib.closing(_execute(tasks, timeout, scheduler, workers, file_progress, cancel)) as run:
                for i, result in run:
                    record(i, result)
                    if result.stops_batch:
                        stop = result
                        break  # closing the executor cancels what is still queued
        except KeyboardInterrupt:
            interrupted = True
        for i, task in tasks.items():
            if results[i] is None:  # never started: cancelled, or stopped by a full disk
                why = f"not started: {stop.error}" if stop else ""
                record(i, FileResult.of(task, "cancelled", why))
        for folder in output_folders:
            io.clean_leftovers(folder)  # a helper process killed on timeout leaves its temporary file

        report = failed_folders + [r for r in results if r is not None]
        try:
            write_report(out_dir / REPORT_NAME, in_dir, out_dir, method, values, provider, report, started,
                         model, options)
        except (OSError, QuietLensError):
            if stop is None and not interrupted:
                raise
    if interrupted:
        raise Cancelled(f"cancelled; {kept(report, out_dir)}")
    if stop is not None:
        raise OutputError(f"the batch stopped: {stop.error}. {kept(report, out_dir)}; free space (or make the "
                          "folder writable) and run the same command again to finish")
    return report


def kept(results: list[FileResult], out_dir: Path) -> str:
    """What a stopped or cancelled batch leaves: finished outputs kept, inputs not started, the report."""
    done = sum(r.status in ("done", "skipped") for r in results)
    left = sum(r.status == "cancelled" for r in results)
    return (f"{done} outputs were written and kept, {left} inputs were not started (report: "
            f"{out_dir / REPORT_NAME})")


def _output_of(src: Path, in_dir: Path, out_dir: Path) -> Path | str:
    """Where ``src`` goes, or why it cannot go anywhere (it vanished or cannot be read, or its mirror
    would land inside the input folder, as can happen when the output folder holds the input folder)."""
    try:
        dst = default_output_path(src, out_dir, in_dir)
    except QuietLensError as exc:
        return str(exc)
    if dst == in_dir or in_dir in dst.parents:
        return (f"{dst}: the output would land inside the input folder {in_dir}; choose an output folder "
                "that does not hold the input")
    return dst


def _output_folders(out_dir: Path, in_dir: Path, outputs: list[Path | str]) -> list[Path]:
    """The folders this batch writes into: the output folder and each output's folder, none inside the input."""
    folders = {out_dir} | {dst.parent for dst in outputs if isinstance(dst, Path)}
    return sorted(f for f in folders if f.is_dir() and not (f == in_dir or in_dir in f.parents))


def _unreadable(exc: OSError, in_dir: Path, out_dir: Path, method: str, values: dict[str, float]) -> FileResult:
    folder = Path(exc.filename or in_dir)
    rel = folder.relative_to(in_dir) if folder != in_dir and in_dir in folder.parents else Path()
    return FileResult(str(folder), str(out_dir / rel), "failed", method=method, params=dict(values),
                      error=f"{folder}: this folder cannot be read ({exc.strerror or exc}); its images were not "
                            "processed")


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


@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Hold a lock on the output folder, so that cleaning up partial files never races another batch."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one batch per output folder is up to the user
        yield
        return
    path = out_dir / LOCK_NAME
    while True:
        lock = open(path, "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise OutputError("another batch is writing to this output folder; wait for it to finish",
                              out_dir) from None
        try:
            if os.path.samestat(os.fstat(lock.fileno()), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        lock.close()  # a batch that just ended removed the file we locked: lock the new one
    try:
        yield  # the kernel drops the lock when the process ends, even when killed (the file then stays)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked, so no other batch holds a lock on the removed name
        lock.close()


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
        "warned": sum(bool(r.warnings) for r in results),
        "files": [r.to_json() for r in results],
    }
    with io.atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
