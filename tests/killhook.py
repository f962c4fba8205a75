"""Stop QuietLens processes at chosen moments, for the crash-safety tests and the abuse script: the worst
moments for a kill reached on purpose instead of by luck, and a batch interrupted once it has written.

:func:`kill_env` writes a ``sitecustomize.py`` that every Python started with the returned environment
loads; ``KILL_AT`` picks the step:

* ``file`` / ``folder``: renaming the finished temporary file or folder into place;
* ``aside``: renaming the old folder aside, before a replacement;
* ``delete-old``: deleting the old folder once the new one is in place.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HOOK = '''
import os, shutil, signal
_rename, _replace, _rmtree = os.rename, os.replace, shutil.rmtree
def _at(point):
    if os.environ.get("KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
def _check(src, dst):
    if ".part" in os.path.basename(str(src)):
        _at("folder" if os.path.isdir(src) else "file")
    if os.path.basename(str(dst)).endswith(".old"):
        _at("aside")
def rename(src, dst, *a, **k):
    _check(src, dst)
    return _rename(src, dst, *a, **k)
def replace(src, dst, *a, **k):
    _check(src, dst)
    return _replace(src, dst, *a, **k)
def rmtree(path, *a, **k):
    if str(path).endswith(".old"):
        _at("delete-old")
    return _rmtree(path, *a, **k)
os.rename, os.replace, shutil.rmtree = rename, replace, rmtree
'''


def kill_env(folder: Path, point: str) -> dict[str, str]:
    """Environment variables that make a Python process started with them die at ``point``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "KILL_AT": point}


def interrupt_batch(src: Path, out: Path, sig: int, pattern: str = "*.png") -> tuple[int, str]:
    """Run ``quietlens batch SRC -o OUT`` (passthrough), send ``sig`` once its first output matching
    ``pattern`` appears; (exit status, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "quietlens.engine.cli", "batch", str(src), "-o", str(out),
                             "--method", "passthrough", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not list(out.glob(pattern)):
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err
