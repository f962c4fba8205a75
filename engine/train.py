"""``quietlens train``: adapt C-BSN or SDAP to a user's own camera from noisy photos alone.

The blind-spot methods learn from the noise itself, so a folder of the user's ordinary noisy photos is
all the training data needed. :func:`train_model` reads the folder, checks the request and hands it to
the one training recipe (:func:`quietlens.models.recipe.adapt`): the teacher (by default the shipped one)
is fine-tuned on the photos, both students are distilled again from it, the graphs are exported (checked
against PyTorch) and registered in the user's data folder (:func:`catalogue.register_user_model`) as
``NAME``, ``NAME.student`` and ``NAME.fast``, never inside the installation. Select them with the
method's ``--model``.

Budgets: ``steps`` fixes the teacher's steps (each student gets twice as many); ``minutes`` times a few
steps first and turns the budget into fixed step counts, so the run itself stays reproducible. What does
not grow with the steps comes off the budget first (that timing, the teacher's output on every photo); a
budget they would use up is refused with the minutes it needs.
Checkpoints go to ``<user data>/training/NAME``; running the same command again after an interruption
(Ctrl-C, a crash) resumes where it stopped, with the same result as an uninterrupted run.

PyTorch is imported only here, inside the functions, so the rest of the engine never needs it.
"""
from __future__ import annotations

import hashlib
import platform
import re
from pathlib import Path

import numpy as np

from . import catalogue, io
from .catalogue import ROLES, graph_id
from .errors import QuietLensError
from .progress import CancelToken, Progress, no_progress, sub_progress

METHODS = ("cbsn", "sdap")
MAX_SIDE = 2048  # px: larger photos contribute their centre (bounded memory; crops are small anyway)
MAX_PIXELS = 48_000_000  # all photos together (~0.6 GB as float32 RGB): many photos get smaller centres
MIN_SIDE = 48  # px: smaller images cannot hold a training crop


def load_folder(folder: str | Path, progress: Progress = no_progress) -> tuple[list[np.ndarray], list[str], list[Path]]:
    """The photos of ``folder`` (and its subfolders) as RGB float32 HWC arrays, each cut to its centre
    square of at most ``MAX_SIDE`` px, less when there are so many photos that they would exceed
    ``MAX_PIXELS`` together (never below 256 px). Returns (images, reasons for skipped files, files used).

    Unreadable files, RAW mosaics, medical images and images under ``MIN_SIDE`` px are skipped with a
    reason; a folder with no usable photo is an error that lists them.
    """
    root = Path(folder)
    if not root.is_dir():
        raise QuietLensError("the training data must be a folder of noisy photos", root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    images, skipped, used = [], [], []
    side = int(min(MAX_SIDE, max(256, (MAX_PIXELS / max(len(files), 1)) ** 0.5)))
    for i, path in enumerate(files):
        progress((i + 1) / max(len(files), 1), f"reading {path.name}")
        try:
            image = io.load(path)
        except QuietLensError as exc:
            skipped.append(f"{path.name}: {exc.reason}")
            continue
        if image.kind != "photo" or image.axes != "HWC":
            skipped.append(f"{path.name}: a {image.kind} image, not a photo (export RAW files to TIFF/PNG first)")
            continue
        data = image.data
        if data.shape[2] == 1:
            data = np.repeat(data, 3, axis=2)
        if min(data.shape[:2]) < MIN_SIDE:
            skipped.append(f"{path.name}: {data.shape[1]}×{data.shape[0]} px is smaller than {MIN_SIDE} px")
            continue
        if not np.isfinite(data).all():
            skipped.append(f"{path.name}: contains NaN or infinite values")
            continue
        h, w = data.shape[:2]
        y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
        images.append(np.ascontiguousarray(data[y:y + side, x:x + side]))
        used.append(path)
    if not images:
        why = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        raise QuietLensError(f"no usable noisy photos found{' (' + why + ')' if why else ''}", root)
    return images, skipped, used


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _base_weights(model_id: str, method: str) -> tuple[catalogue.ModelEntry, bytes]:
    """A manifest entry and its sha256-verified ONNX bytes."""
    entry = catalogue.entry(model_id, method)
    return entry, catalogue.verified_bytes(entry)


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise QuietLensError("--device cuda was requested but this PyTorch build has no usable CUDA GPU "
                             "(install a CUDA build of torch, or use --device cpu)")
    if requested not in ("cpu", "cuda"):
        raise QuietLensError(f"unknown device {requested!r} (auto, cpu or cuda)")
    return requested


def train_model(method: str, data: str | Path, *, name: str | None = None, base: str | None = None,
                minutes: float | None = None, steps: int | None = None, device: str = "auto",
                seed: int = 0, progress: Progress = no_progress,
                cancel: CancelToken | None = None) -> list[catalogue.ModelEntry]:
    """Fine-tune ``base`` (default: the shipped ``method`` model) on the photos in ``data`` and register
    the family as ``name``. Returns the registered manifest entries (teacher first)."""
    import torch

    from quietlens.models import recipe

    if method not in METHODS:
        raise QuietLensError(f"train works for {', '.join(METHODS)}, not {method!r}")
    if minutes is not None and steps is not None:
        raise QuietLensError("give either minutes or steps, not both")
    if steps is not None and steps < 1 or minutes is not None and not minutes > 0:
        raise QuietLensError("the training budget must be positive")
    name = name or f"{method}-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data).resolve().name).strip("-.") or "custom")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name) or any(name.endswith(f".{r}") for r in ROLES[1:]):
        raise QuietLensError(f"model name {name!r} must be letters, digits, '.', '_' or '-' "
                             "(not ending in .student or .fast)")
    dev = _device(device)
    base = base or method
    entries = catalogue.load()
    found = {role: _base_weights(graph_id(base, role), method) for role in ROLES if graph_id(base, role) in entries}
    if "teacher" not in found:
        _base_weights(base, method)  # raises the right error
    images, skipped, files = load_folder(data, sub_progress(progress, 0.0, 0.02))
    inputs = {"method": method, "base": base, "base_sha256": found["teacher"][0].sha256, "data": _fingerprint(files),
              "device": dev, "seed": seed, "budget": {"minutes": minutes, "steps": steps}}
    provenance = {
        "script": "quietlens train " + method, "base": base, "base_sha256": found["teacher"][0].sha256,
        "data": {"folder": str(Path(data).resolve()), "images": len(images), "skipped": skipped,
                 "megapixels": round(sum(im.shape[0] * im.shape[1] for im in images) / 1e6, 2)},
        "seed": seed, "device": dev, "hardware": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    return recipe.adapt(method, images, found, name=name, workdir=catalogue.user_data_dir() / "training" / name,
                        inputs=inputs, minutes=minutes, steps=steps, device=dev, seed=seed,
                        register=catalogue.register_user_model, provenance=provenance,
                        progress=sub_progress(progress, 0.02, 1.0), cancel=cancel)
