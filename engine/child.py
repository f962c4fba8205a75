"""Batch files in a helper process that can be killed: the per-file timeout, and a guard against a
decoder that crashes or hangs on a hostile file.

The helper (``python -m quietlens.engine.child``) reads one task per line as JSON on stdin and answers one
result per line on stdout. It stays up between files, so the models it loaded are reused. When a file
overruns its timeout the helper is killed (its output was never renamed into place, so nothing partial
is left under the final name) and the next file starts a fresh one.
"""
from __future__ import annotations

import faulthandler
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict

from .jobs import FileResult, Task, process
from .errors import Cancelled, QuietLensError
from .methods import available
from .progress import CancelToken

READY = "ready"
START_TIMEOUT = 120.0  # importing the engine on a cold, busy machine
GRACE = 30.0  # a helper whose parent is gone ends itself this long after its file's timeout


class Child:
    """A persistent helper process; use as a context manager so that it never outlives its owner."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, task: Task, timeout: float, cancel: CancelToken | None = None) -> FileResult:
        """The helper's result for ``task``; a failed result when it overruns ``timeout`` or dies."""
        cancel = cancel or CancelToken()
        t0 = time.perf_counter()
        try:
            if self._proc is None:
                self._start(cancel)
            self._send({"task": asdict(task), "timeout": timeout})
            return FileResult(**json.loads(self._receive(time.monotonic() + timeout, cancel)))
        except Cancelled:
            status, error = "cancelled", ""
        except TimeoutError:
            status, error = "failed", f"{task.input}: took longer than the {timeout:g} s timeout; stopped"
        except (EOFError, OSError, ValueError):
            proc = self._proc
            self.close()  # the exit code of a helper that died by itself, or -9 from this kill
            code = proc.returncode if proc else None
            status, error = "failed", f"{task.input}: the helper process died on it (exit code {code})"
        self.close()
        return FileResult.of(task, status, error, round(time.perf_counter() - t0, 3))

    def close(self) -> None:
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            pipe.close()
        self._proc = None

    def _start(self, cancel: CancelToken) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, encoding="utf-8")
        self._lines = lines = queue.Queue()  # each helper gets its own: a dead one's end-of-file stays there
        stdout = self._proc.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        try:
            if self._receive(time.monotonic() + START_TIMEOUT, cancel).strip() != READY:
                raise EOFError
        except (EOFError, TimeoutError):
            self.close()
            raise QuietLensError(f"the helper process ({sys.executable} -m {__name__}) did not start") from None

    def _send(self, message: dict) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(message) + "\n")
        self._proc.stdin.flush()

    def _receive(self, deadline: float, cancel: CancelToken) -> str:
        """The helper's next line, waiting until ``deadline``; raises TimeoutError, EOFError or Cancelled."""
        while True:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                cancel.check()
                if time.monotonic() > deadline:
                    raise TimeoutError from None
                continue
            if line is None:
                raise EOFError
            return line


def main() -> None:
    """The helper's loop: one JSON task per stdin line, one JSON result per stdout line."""
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the answers
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    watchdog = open(os.devnull, "w")
    available(include_internal=True)  # import every method now: the first file's timeout must not pay for it
    print(READY, file=answers, flush=True)
    for line in sys.stdin:  # ends when the parent closes the pipe or dies
        request = json.loads(line)
        # A hang in C code would outlive a dead parent: the interpreter's own timer thread ends it.
        faulthandler.dump_traceback_later(request["timeout"] + GRACE, exit=True, file=watchdog)
        result = process(Task(**request["task"]))
        faulthandler.cancel_dump_traceback_later()
        answers.write(json.dumps(asdict(result)) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
