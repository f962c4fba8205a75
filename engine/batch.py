"""A folder in, a mirrored folder out: resumable, atomic, and one bad file never stops the batch.

Inputs are every file with a supported suffix under the input folder, recursively; a folder whose files
are all DICOM is one series input. Outputs that already exist are skipped, so re-running the same
command after a crash or a cancel finishes the rest. A JSON report lists every input with its status.
"""
from __future__ import annotations

import fnmatch
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from . import __version__, io
from .errors import Cancelled, OutputError, QuietLensError
from .methods import get, resolve_params
from .pipeline import default_output_path, denoise_file
from .progress import CancelToken

SUPPORTED_SUFFIXES = io.PHOTO_SUFFIXES + io.RAW_SUFFIXES + io.DICOM_SUFFIXES + io.NIFTI_SUFFIXES
REPORT_NAME = "quietlens-report.json"


@dataclass
class FileResult:
    input: str
    output: str
    status: str  # done | skipped | failed | cancelled
    seconds: float = 0.0
    error: str = ""


def find_inputs(root: Path, include: Iterable[str] = ("*",)) -> list[Path]:
    """Supported files and DICOM series folders under ``root``, in a stable order."""
    patterns = list(include)
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
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
) -> list[FileResult]:
    """Denoise every input under ``in_dir`` into a mirrored tree under ``out_dir``; write the report.

    ``on_file(i, n, result)`` is called after each input. Cancelling stops after the current step; the
    file in flight is not written, and the report says which inputs are left.
    """
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    cancel = cancel or CancelToken()
    if not in_dir.is_dir():
        raise QuietLensError("the input folder does not exist", in_dir)
    if out_dir == in_dir or in_dir in out_dir.parents:
        raise OutputError("the output folder must be outside the input folder", out_dir)
    values = resolve_params(get(method), params or {})  # bad parameters fail before any file
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError("the output folder is not writable", out_dir)

    inputs = find_inputs(in_dir, include)
    results: list[FileResult] = []
    started = time.time()
    for i, src in enumerate(inputs):
        try:
            dst = default_output_path(src, out_dir, in_dir)
        except QuietLensError as exc:
            dst, skip_reason = out_dir / src.relative_to(in_dir), str(exc)
        else:
            skip_reason = ""
        result = FileResult(str(src), str(dst), "done")
        t0 = time.perf_counter()
        if cancel.cancelled:
            result.status = "cancelled"
        elif skip_reason:
            result.status, result.error = "failed", skip_reason
        elif dst.exists():
            result.status = "skipped"  # finished by an earlier run
        else:
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                denoise_file(src, dst, method, values, provider=provider,
                             progress=file_progress or (lambda f, m="": None), cancel=cancel)
            except Cancelled:
                result.status = "cancelled"
            except QuietLensError as exc:
                result.status, result.error = "failed", str(exc)
            except Exception as exc:  # a bug must not cost the user the rest of the batch
                result.status, result.error = "failed", f"{src}: internal error: {exc!r}"
        result.seconds = round(time.perf_counter() - t0, 3)
        results.append(result)
        if on_file:
            on_file(i, len(inputs), result)

    write_report(out_dir / REPORT_NAME, in_dir, out_dir, method, values, provider, results, started)
    return results


def write_report(path: Path, in_dir: Path, out_dir: Path, method: str, params: Mapping[str, float],
                 provider: str, results: list[FileResult], started: float) -> None:
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed", "cancelled")}
    report = {
        "software": f"QuietLens {__version__}",
        "input": str(in_dir), "output": str(out_dir),
        "method": method, "params": dict(params), "provider": provider,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 3),
        "counts": counts,
        "files": [asdict(r) for r in results],
    }
    with io.atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
