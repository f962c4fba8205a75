"""Spread batch files over a Dask cluster (``dask.distributed``): an existing one by address, or a
LocalCluster of worker processes on this machine.

Only plain task descriptions travel (paths, a method name, numbers). Each worker process resolves the
method and loads its models itself, and :func:`..runtime.session` caches them per process, so a worker
loads each graph once for all the files it gets. Workers must see the input and output folders under
the same paths (one machine, or a shared file system) and have the same QuietLens installed.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import uuid
from typing import Iterator

from .jobs import FileResult, Task, process
from .errors import QuietLensError
from .progress import CancelToken

CONNECT_TIMEOUT = 20  # seconds to reach an existing scheduler
_local = threading.local()


def run_task(task: Task, timeout: float | None) -> FileResult:
    """On a worker: one file, in the worker process or, with a timeout, in a helper it can kill."""
    if timeout is None:
        return process(task)
    from .child import Child

    child = getattr(_local, "child", None)  # one per worker thread, kept for its cached models
    if child is None:
        child = _local.child = Child()
        atexit.register(child.close)
    return child.run(task, timeout)


def run_tasks(tasks: dict[int, Task], *, scheduler: str | None, workers: int | None, timeout: float | None,
              cancel: CancelToken) -> Iterator[tuple[int, FileResult]]:
    """(index, result) as files finish on the cluster. Only a few files per worker thread are queued at
    a time, so that cancelling (or closing this generator) leaves little to call back."""
    with _client(scheduler, workers) as client:
        from distributed import wait

        window = max(2, 2 * sum(client.nthreads().values()))
        todo = iter(tasks.items())
        pending: dict = {}
        batch_id = uuid.uuid4().hex[:8]
        try:
            while not cancel.cancelled:
                while len(pending) < window and (item := next(todo, None)):
                    i, task = item
                    future = client.submit(run_task, task, timeout, key=f"quietlens-{batch_id}-{i}", pure=False)
                    pending[future] = i
                if not pending:
                    return
                try:
                    done, _ = wait(list(pending), timeout=0.2, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue  # look at the cancel token again
                for future in done:
                    i = pending.pop(future)
                    yield i, _result(future, tasks[i])
        finally:
            client.cancel(list(pending))


def _result(future, task: Task) -> FileResult:
    try:
        return future.result()
    except Exception as exc:  # the worker died on it (Dask retried it elsewhere first) or it could not run
        return FileResult.of(task, "failed", f"{task.input}: the worker running it failed: {exc!r}")


@contextlib.contextmanager
def _client(scheduler: str | None, workers: int | None) -> Iterator:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise QuietLensError('--scheduler and --workers need Dask: pip install "dask[distributed]"') from None
    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise QuietLensError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from exc
        with client:
            yield client
        return
    if not workers or workers < 1:
        raise QuietLensError(f"the number of workers must be a positive integer, got {workers!r}")
    # Each worker runs one file at a time; split the cores between their inference threads.
    threads = os.environ.get("QUIETLENS_THREADS") or str(max(1, (os.cpu_count() or 1) // workers))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                      env={"QUIETLENS_THREADS": threads}) as cluster, Client(cluster) as client:
        yield client
