"""``quietlens train``: adapt C-BSN or SDAP to a user's own camera from noisy photos alone.

The blind-spot methods learn from the noise itself, so a folder of the user's ordinary noisy photos is
all the training data needed. :func:`train_model` fine-tunes a teacher (by default the shipped one),
distils a fresh fast student from it on the same photos, exports both to ONNX (checked against
PyTorch), and registers them in the user's data folder (:func:`catalogue.register_user_model`) as
``NAME`` and ``NAME.student``, never inside the installation. Select them with the method's ``--model``.

Budgets: ``steps`` fixes the teacher's steps (the student gets proportionally more, being ~30× cheaper);
``minutes`` times a few steps first and turns the budget into fixed step counts (70 % teacher, 20 %
student, the rest for the teacher's outputs and the export), so the run itself stays reproducible.
Checkpoints go to ``<user data>/training/NAME``; running the same command again after an interruption
(Ctrl-C, a crash) resumes where it stopped, with the same result as an uninterrupted run.

PyTorch is imported only here, inside the functions, so the rest of the engine never needs it.
"""
from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from . import catalogue, io
from .catalogue import student_id
from .errors import ModelError, QuietLensError
from .progress import CancelToken, Progress, no_progress, sub_progress

METHODS = ("cbsn", "sdap")
MAX_SIDE = 2048  # px: larger photos contribute their centre (bounded memory; crops are small anyway)
MAX_PIXELS = 48_000_000  # all photos together (~0.6 GB as float32 RGB): many photos get smaller centres
MIN_SIDE = 48  # px: smaller images cannot hold a training crop
TEACHER_SHARE, STUDENT_SHARE = 0.70, 0.20
STUDENT_STEPS_PER_TEACHER_STEP = 4  # with --steps
FINE_TUNE_LR = 2e-4  # fine-tuning starts close to a solution: a smaller step than training from scratch
# (and C-BSN's non-blind terms are on from the first step: the base model was trained with them)


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
    data = catalogue.verified_bytes(entry)
    if "architecture" not in entry.provenance:
        raise ModelError(f"model {model_id!r} does not record its architecture; it cannot be fine-tuned")
    return entry, data


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
    """Fine-tune ``base`` (default: the shipped ``method`` model) on the photos in ``data``, distil a
    student, and register both as ``name`` / ``name.student``. Returns the two manifest entries."""
    import torch

    from quietlens.models import bsn_export, bsn_train
    from quietlens.models.bsn import DBSN, INFERENCE, BSNConfig
    from quietlens.models.bsn_student import Student, StudentConfig

    if method not in METHODS:
        raise QuietLensError(f"train works for {', '.join(METHODS)}, not {method!r}")
    if minutes is not None and steps is not None:
        raise QuietLensError("give either minutes or steps, not both")
    if steps is not None and steps < 1 or minutes is not None and not minutes > 0:
        raise QuietLensError("the training budget must be positive")
    cancel = cancel or CancelToken()
    name = name or f"{method}-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data).resolve().name).strip("-.") or "custom")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name) or name.endswith(".student"):
        raise QuietLensError(f"model name {name!r} must be letters, digits, '.', '_' or '-' (not ending in .student)")
    dev = _device(device)
    base = base or method
    entry, onnx_bytes = _base_weights(base, method)
    arch = entry.provenance["architecture"]
    net_config = BSNConfig(int(arch["width"]), int(arch["modules"]))
    images, skipped, files = load_folder(data, sub_progress(progress, 0.0, 0.02))

    # The plan: fixed step counts and everything the result depends on. A saved plan with the same
    # inputs means an interrupted run of this very command: resume it.
    workdir = catalogue.user_data_dir() / "training" / name
    # Crops and batch as the base model was trained (the shipped ones: CPU-sized), else the paper's.
    trained = entry.provenance.get("training", {})
    preset = bsn_train.PRESETS[method]
    chw = [im.transpose(2, 0, 1) for im in images]
    teacher_cfg = replace(preset, width=net_config.width, modules=net_config.modules, lr=FINE_TUNE_LR,
                          halvings=2, ramp=0.0, seed=seed, checkpoint_every=50,
                          batch=int(trained.get("batch", preset.batch)),
                          crop=bsn_train.usable_crop(chw, int(trained.get("crop", preset.crop)), 10))
    student_init = None
    student_arch = StudentConfig()
    if student_id(base) in catalogue.load():
        s_entry, s_bytes = _base_weights(student_id(base), method)
        student_arch = StudentConfig(int(s_entry.provenance["architecture"]["width"]))
        student_init = bsn_export.load_weights_from_onnx(Student(student_arch), s_bytes).state_dict()
    student_cfg = replace(bsn_train.DistilConfig(width=student_arch.width, seed=seed, lr=5e-4, halvings=2),
                          checkpoint_every=200)
    student_cfg = replace(student_cfg, crop=bsn_train.usable_crop(chw, student_cfg.crop, 8))
    inputs = {"method": method, "base": base, "base_sha256": entry.sha256, "data": _fingerprint(files),
              "device": dev, "seed": seed, "budget": {"minutes": minutes, "steps": steps}}
    plan_path = workdir / "plan.json"
    plan = None
    if plan_path.is_file():
        try:
            saved = json.loads(plan_path.read_text())
            plan = saved if saved.get("inputs") == inputs else None
        except ValueError:
            plan = None
    if plan is None:
        shutil.rmtree(workdir, ignore_errors=True)
        if steps is not None:
            t_steps, s_steps = steps, steps * STUDENT_STEPS_PER_TEACHER_STEP
        else:
            budget = 60.0 * (minutes if minutes is not None else 10.0)
            progress(0.02, "timing a few training steps")
            t_steps = max(1, int(TEACHER_SHARE * budget / bsn_train.teacher_step_seconds(teacher_cfg, dev)))
            s_steps = max(1, int(STUDENT_SHARE * budget / bsn_train.student_step_seconds(student_cfg, dev)))
        plan = {"inputs": inputs, "teacher_steps": t_steps, "student_steps": s_steps}
        workdir.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps(plan, indent=2))
    teacher_cfg = replace(teacher_cfg, steps=plan["teacher_steps"])
    student_cfg = replace(student_cfg, steps=plan["student_steps"])

    start = time.perf_counter()
    init = bsn_export.load_weights_from_onnx(INFERENCE[method](DBSN(net_config)), onnx_bytes).net.state_dict()
    net, t_info = bsn_train.train_teacher(images, teacher_cfg, init=init, checkpoint=workdir / "teacher.pt",
                                          device=dev, progress=sub_progress(progress, 0.05, 0.75), cancel=cancel)
    teacher = INFERENCE[method](net)
    pairs = bsn_train.teacher_outputs(teacher, images, dev, sub_progress(progress, 0.75, 0.8), cancel)
    student, s_info = bsn_train.train_student(pairs, student_cfg, init=student_init, checkpoint=workdir / "student.pt",
                                              device=dev, progress=sub_progress(progress, 0.8, 0.97), cancel=cancel)
    del pairs
    progress(0.97, "exporting")
    common = {
        "script": "quietlens train " + method, "base": base, "base_sha256": entry.sha256,
        "data": {"folder": str(Path(data).resolve()), "images": len(images), "skipped": skipped,
                 "megapixels": round(sum(im.shape[0] * im.shape[1] for im in images) / 1e6, 2)},
        "seed": seed, "device": dev, "hardware": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "wall_seconds": round(time.perf_counter() - start, 1),
    }
    registered = []
    for model_id, module, cfg, info, extra in (
        (name, teacher, teacher_cfg, t_info, {}),
        (student_id(name), student, student_cfg, s_info, {"teacher": name}),
    ):
        cancel.check()
        tmp = workdir / f"{model_id}.onnx"
        tmp.write_bytes(bsn_export.export_checked(module))
        provenance = {**common, **extra, "training": {**asdict(cfg), **info}}
        registered.append(catalogue.register_user_model(
            tmp, bsn_export.entry_fields(module, model_id, method, provenance)))
    shutil.rmtree(workdir, ignore_errors=True)
    progress(1.0, f"registered {name} and {student_id(name)}")
    return registered
