"""Where an output may go, and how it gets there without ever losing or half-writing a file.

Every output is written under a hidden temporary name beside it (:func:`temp_path`), flushed to disk and
renamed into place only when complete. Replacing a folder (a DICOM series) renames the old one aside
first, then the new one in, then deletes the old one, so a kill at any point leaves the old or the new
output whole; the next write of the same output (:func:`atomic_path`) or the next batch over the folder
(:func:`clean_leftovers`) settles what a killed run left: an old folder set aside comes back if the new
one never arrived, temporaries are removed.

Only names QuietLens makes are ever deleted (:data:`PARTIAL_NAME`: ``.NAME.quietlens-XXXXXXXX.part…``
and ``.NAME.quietlens-XXXXXXXX.old``), and a folder is only replaced after its owner's check (for a
series: every file in it is a DICOM that QuietLens wrote). Writers hold a shared lock on the output
folder and cleaning takes it exclusively without waiting, so cleaning never removes the temporary file
of a write in progress (POSIX; where folders cannot be locked, it cleans as if alone).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

from ..errors import OutputError
from .formats import full_suffix

# The hidden names QuietLens makes beside an output NAME: a temporary being written (".part", ending in
# NAME's own suffix so writers see the format) and an old folder set aside while it is replaced (".old").
PARTIAL_NAME = re.compile(r"^\.(?P<name>.+)\.quietlens-[0-9a-f]{8}\.(?:(?P<kind>part)(?:\.[A-Za-z0-9.]+)?|(?P<old>old))$")

Owned = Callable[[Path], None]  # raises OutputError unless QuietLens may replace this existing folder


def temp_path(final: Path, kind: str = "part") -> Path:
    """A fresh hidden name beside ``final`` that :data:`PARTIAL_NAME` recognises (``kind``: part | old)."""
    final = Path(final)
    suffix = full_suffix(final) if kind == "part" else ""
    return final.parent / f".{final.name}.quietlens-{uuid.uuid4().hex[:8]}.{kind}{suffix}"


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name the same file or folder (through links, case-insensitive file systems)."""
    try:
        return os.path.realpath(a) == os.path.realpath(b) or (os.path.exists(b) and os.path.samefile(a, b))
    except (OSError, ValueError):
        return False


def _within(path: Path, folder: Path) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output(source: Path | None, final: Path, overwrite: bool = False, owned: Owned | None = None) -> None:
    """Refuse an output that would touch the input ``source`` (the same file, inside an input series
    folder, or a folder holding the input) or an existing output QuietLens may not replace."""
    final = Path(final)
    if source is not None:
        if same_file(source, final):
            raise OutputError("refusing to overwrite the input: the output must not be the input", final)
        if os.path.isdir(source) and _within(final, source):
            raise OutputError(f"the output must not be inside the input folder {source}", final)
        if os.path.isdir(final) and _within(source, final):
            raise OutputError(f"the output folder holds the input {source}; QuietLens never replaces it", final)
    if not os.path.lexists(final):
        return
    if not overwrite:
        raise OutputError("the output already exists (use overwrite to replace it)", final)
    if final.is_dir():
        if final.is_symlink():
            raise OutputError("is a link to a folder; QuietLens replaces only a folder it wrote", final)
        if owned is None:
            raise OutputError("is a folder; QuietLens replaces only a DICOM series folder it wrote", final)
        owned(final)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY if os.path.isdir(path) else os.O_RDWR)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # a file system without fsync: nothing to flush
            raise
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable (Windows cannot open a folder for this; the output is whole
    either way)."""
    if os.name == "posix":
        with contextlib.suppress(OSError):
            fsync(folder)


def flush_to_disk(tmp: Path) -> None:
    """Flush a finished file (or every file of a finished folder) before it is renamed into place:
    otherwise a power loss can leave the new name pointing at empty or partial data."""
    for f in (p for p in tmp.rglob("*") if p.is_file()) if tmp.is_dir() else [tmp]:
        fsync(f)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


class _FolderLock:
    """An advisory lock on a folder: writers share it, cleaning takes it alone (POSIX flock)."""

    def __init__(self, folder: Path):
        self.fd: int | None = None
        try:
            import fcntl

            self.fcntl = fcntl
            self.fd = os.open(folder, os.O_RDONLY)
        except (ImportError, OSError):  # Windows, or a folder that cannot be opened: no locking
            pass

    def _flock(self, how: int) -> bool:
        if self.fd is None:
            return True
        try:
            self.fcntl.flock(self.fd, how)
            return True
        except BlockingIOError:
            return False
        except OSError:  # a file system without flock (some network mounts): as if alone
            return True

    def exclusive_now(self) -> bool:
        """Take the lock alone if no one holds it; False while another writer is at work in the folder."""
        return self._flock(self.fcntl.LOCK_EX | self.fcntl.LOCK_NB) if self.fd is not None else True

    def share(self) -> None:
        if self.fd is not None:
            self._flock(self.fcntl.LOCK_SH)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None


def _settle(folder: Path, name: str | None) -> list[Path]:
    """Settle the leftovers in ``folder`` (of output ``name`` only, when given); the caller holds the lock."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    removed = []
    for entry in names:
        match = PARTIAL_NAME.match(entry)
        if not match or (name is not None and match["name"] != name):
            continue
        path, target = folder / entry, folder / match["name"]
        try:
            if match["old"] and not os.path.lexists(target):
                os.rename(path, target)  # the replacement never arrived: the old output comes back
                continue
            _remove(path)
            removed.append(path)
        except OSError:  # e.g. a read-only folder: left for a later run, never a reason to fail this one
            pass
    return removed


def clean_leftovers(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries a killed write left in ``folder`` (for output ``name`` only, when given)
    and settle an interrupted folder replacement. Touches only :data:`PARTIAL_NAME` entries, and nothing
    while another process writes into the folder. Returns what was removed."""
    lock = _FolderLock(folder)
    try:
        return _settle(folder, name) if lock.exclusive_now() else []
    finally:
        lock.close()


def _move_into_place(tmp: Path, final: Path, overwrite: bool, owned: Owned | None) -> None:
    if os.path.lexists(final):  # it may have appeared, or changed, while the output was being made
        check_output(None, final, overwrite, owned)
        if tmp.is_dir() != final.is_dir():
            made, there = ("folder", "file") if tmp.is_dir() else ("file", "folder")
            raise OutputError(f"the output is a {made} but a {there} of that name exists", final)
    if tmp.is_dir() and final.is_dir():
        aside = temp_path(final, "old")
        os.rename(final, aside)  # a kill from here on leaves `aside`, which the next write settles
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(aside, final)
            raise
        _fsync_folder(final.parent)
        _remove(aside)
    else:
        os.replace(tmp, final)
    _fsync_folder(final.parent)


@contextlib.contextmanager
def atomic_path(final: Path, overwrite: bool = False, owned: Owned | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (same suffix); move it onto ``final`` on success.

    Leftovers of an earlier, killed write of ``final`` are settled first. On any exception the temporary
    file or folder is removed and ``final`` is left as it was. An existing ``final`` is replaced only
    with ``overwrite``, and an existing folder only when ``owned(final)`` accepts it (checked before and
    again just before the swap).
    """
    final = Path(final)
    parent = final.parent
    if not parent.is_dir():
        raise OutputError("the output folder does not exist", parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError("the output folder is not writable", parent)
    lock = _FolderLock(parent)
    try:
        if lock.exclusive_now():
            _settle(parent, final.name)
        lock.share()
        check_output(None, final, overwrite, owned)
        tmp = temp_path(final)
        try:
            yield tmp
            if not tmp.exists():
                raise OutputError("the writer produced no output", final)
            flush_to_disk(tmp)
            _move_into_place(tmp, final, overwrite, owned)
        except BaseException:
            _remove(tmp)
            raise
    finally:
        lock.close()
