"""One training loop for the C-BSN and SDAP teachers, and one for distilling their students.

Both loops are deliberately plain: sample a batch of random crops, compute the loss, take an Adam step,
now and then write a checkpoint. Everything random (initial weights, crop positions, flips, the random
sub-samples inside the losses) comes from the seed, through one ``torch.Generator`` whose state is part
of the checkpoint, so a run that is interrupted and resumed produces the same weights as one that is not.

Checkpoints are ``torch.save`` dicts of plain tensors and numbers (model and optimiser state dicts, step,
generator state, config), written atomically and read back with ``weights_only=True``. Cancelling (via
:class:`~quietlens.engine.progress.CancelToken`) writes a checkpoint at the current step first.

On CUDA the forward and backward passes run under float16 autocast with a gradient scaler (AMP).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from quietlens.engine.errors import Cancelled, QuietLensError
from quietlens.engine.image import channel_stats
from quietlens.engine.progress import CancelToken, Progress, no_progress
from .bsn import DBSN, INFERENCE, BSNConfig, cbsn_loss, sdap_loss, standardise
from .bsn_student import Student, StudentConfig


@dataclass(frozen=True)
class TrainConfig:
    """A teacher training run. The defaults are the papers' (C-BSN); :data:`PRESETS` has both."""

    method: str = "cbsn"  # "cbsn" or "sdap"
    width: int = 128
    modules: int = 9
    steps: int = 500_000
    batch: int = 4
    crop: int = 120  # a multiple of 10: stride-5 sub-sampling, and C-BSN's 2×2 cells
    lr: float = 1e-4
    halvings: int = 5  # the learning rate halves this many times, evenly spaced over the steps
    ramp: float = 0.4  # C-BSN: the non-blind terms' weight rises linearly over this fraction of the steps
    seed: int = 0
    init: str = "neighbour_mean"  # or "random" (PyTorch's default); see DBSN.init_neighbour_mean
    checkpoint_every: int = 200

    def network(self) -> BSNConfig:
        return BSNConfig(self.width, self.modules)


PRESETS = {
    "cbsn": TrainConfig("cbsn", crop=120, batch=4),
    "sdap": TrainConfig("sdap", crop=160, batch=16, ramp=0.0),
}


@dataclass(frozen=True)
class DistilConfig:
    """A student distillation run (L1 to the teacher's output on the same noisy crops)."""

    width: int = 24
    steps: int = 2000
    batch: int = 8
    crop: int = 96  # a multiple of 8
    lr: float = 1e-3
    halvings: int = 3
    seed: int = 0
    checkpoint_every: int = 500

    def network(self) -> StudentConfig:
        return StudentConfig(self.width)


# -- data ----------------------------------------------------------------------------------------------

def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/rotations of (N, C, H, W) square crops."""
    x = torch.rot90(x, k % 4, dims=(2, 3))
    return x.flip(3) if k >= 4 else x


class Crops:
    """Random square crops of a list of (C, H, W) float32 arrays, with random flips and rotations.

    Images are picked with probability proportional to their area, so every pixel is equally likely.
    Arrays may stack several aligned images along C (noisy input and teacher target): they are cropped
    and transformed together.
    """

    def __init__(self, images: list[np.ndarray], crop: int):
        if not images:
            raise QuietLensError("no training images")
        small = min(min(a.shape[1:]) for a in images)
        if small < crop:
            raise QuietLensError(f"training crops are {crop} px but the smallest image is {small} px")
        self.images = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in images]
        self.crop = crop
        self.weights = torch.tensor([float(a.shape[1] * a.shape[2]) for a in images], dtype=torch.float64)

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        picks = torch.multinomial(self.weights, n, replacement=True, generator=gen).tolist()
        out = []
        for i in picks:
            img = self.images[i]
            y = int(torch.randint(0, img.shape[1] - self.crop + 1, (1,), generator=gen))
            x = int(torch.randint(0, img.shape[2] - self.crop + 1, (1,), generator=gen))
            k = int(torch.randint(0, 8, (1,), generator=gen))
            out.append(_dihedral(img[None, :, y:y + self.crop, x:x + self.crop], k))
        return torch.cat(out)


def usable_crop(images: list[np.ndarray], wanted: int, multiple: int) -> int:
    """The largest crop ≤ ``wanted``, a multiple of ``multiple``, that fits every (C, H, W) image."""
    small = min(min(a.shape[1:]) for a in images)
    crop = min(wanted, small) // multiple * multiple
    if crop < 4 * multiple:
        raise QuietLensError(f"the training images are too small ({small} px; at least {4 * multiple} needed)")
    return crop


# -- plumbing shared by both loops -----------------------------------------------------------------

def _lr_at(step: int, steps: int, lr: float, halvings: int) -> float:
    """Step decay: ``lr`` halved ``halvings`` times at evenly spaced steps (the papers' schedule)."""
    return lr * 0.5 ** math.floor(step * (halvings + 1) / max(steps, 1)) if halvings else lr


def _save(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _plain(config) -> dict:
    return {k: v for k, v in asdict(config).items() if k != "checkpoint_every"}


class _Loop:
    """Model, optimiser, generator and step, with checkpointing and resume. ``fit`` runs ``step_fn``
    (returns the loss tensor and a dict of numbers to report) until ``config.steps``."""

    def __init__(self, net: torch.nn.Module, config, device: str, checkpoint: Path | None):
        self.net, self.config, self.device, self.checkpoint = net.to(device), config, device, checkpoint
        self.opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        self.gen = torch.Generator().manual_seed(config.seed + 1)
        self.amp = device.startswith("cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        self.seconds = self.cpu_seconds = 0.0  # wall and process CPU time spent in steps, over resumes
        self.last: dict = {}  # the loss terms of the latest step
        if checkpoint is not None and checkpoint.is_file():
            self._resume(checkpoint)

    def _resume(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("config") != _plain(self.config):
            raise QuietLensError("the checkpoint was written by a run with other settings; "
                                 "delete it to start over", path)
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.gen.set_state(state["generator"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.cpu_seconds = state.get("cpu")  # None: a checkpoint that did not record it
        self.last = dict(state.get("last", {}))

    def save(self) -> None:
        if self.checkpoint is None:
            return
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        _save(self.checkpoint, {
            "model": self.net.state_dict(), "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
            "generator": self.gen.get_state(), "step": self.step, "seconds": self.seconds,
            "cpu": self.cpu_seconds, "last": self.last, "config": _plain(self.config),
        })

    def summary(self) -> dict:
        return {"steps": self.step, "train_seconds": round(self.seconds, 1),
                "train_cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 1),
                "last_loss": dict(self.last)}

    def fit(self, step_fn: Callable[[int], tuple[torch.Tensor, dict]], progress: Progress,
            cancel: CancelToken) -> None:
        cfg = self.config
        self.net.train()
        while self.step < cfg.steps:
            if cancel.cancelled:
                self.save()
                raise Cancelled()
            start, cpu = time.perf_counter(), time.process_time()
            for group in self.opt.param_groups:
                group["lr"] = _lr_at(self.step, cfg.steps, cfg.lr, cfg.halvings)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                loss, parts = step_fn(self.step)
            if not torch.isfinite(loss):
                raise QuietLensError(f"training diverged at step {self.step} (loss {float(loss)})")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.step += 1
            self.last = parts
            self.seconds += time.perf_counter() - start
            if self.cpu_seconds is not None:
                self.cpu_seconds += time.process_time() - cpu
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
            report = " ".join(f"{k} {v:.4f}" for k, v in parts.items())
            progress(self.step / cfg.steps, f"step {self.step}/{cfg.steps} {report}")
        self.net.eval()


# -- teacher -------------------------------------------------------------------------------------------

def train_teacher(images: list[np.ndarray], config: TrainConfig, *, init: dict | None = None,
                  checkpoint: Path | None = None, device: str = "cpu", progress: Progress = no_progress,
                  cancel: CancelToken | None = None) -> tuple[DBSN, dict]:
    """Train (or fine-tune from the state dict ``init``) a blind-spot teacher on noisy HWC images in [0, 1].

    Each crop is standardised on its own. Returns the network (eval mode, CPU) and a summary (steps,
    wall and CPU seconds of training, last loss terms). Resumes from ``checkpoint`` if it exists.
    """
    if config.method not in INFERENCE:
        raise QuietLensError(f"unknown method {config.method!r} (cbsn or sdap)")
    torch.manual_seed(config.seed)
    net = DBSN(config.network())
    if init is not None:
        net.load_state_dict(init)
    elif config.init == "neighbour_mean":
        net.init_neighbour_mean()
    elif config.init != "random":
        raise QuietLensError(f"unknown initialisation {config.init!r} (neighbour_mean or random)")
    loop = _Loop(net, config, device, checkpoint)
    crops = Crops([np.transpose(a, (2, 0, 1)) for a in images], config.crop)

    def step_fn(step: int) -> tuple[torch.Tensor, dict]:
        z, _, _ = standardise(crops.sample(config.batch, loop.gen).to(device))
        if config.method == "cbsn":
            weight = min(step / (config.ramp * config.steps), 1.0) if config.ramp > 0 else 1.0
            loss, parts = cbsn_loss(loop.net, z, weight, loop.gen)
        else:
            loss, parts = sdap_loss(loop.net, z, loop.gen)
        return loss, parts

    loop.fit(step_fn, progress, cancel or CancelToken())
    return loop.net.cpu(), loop.summary()


# -- student -------------------------------------------------------------------------------------------

def standardise_image(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole-image, per-channel standardisation of an HWC image, as the engine does at inference:
    returns (C, H, W) ``z`` and the per-channel ``μ``, ``σ`` (float64 sums: exact for 24 MP images)."""
    mu, sigma = channel_stats(image)
    z = ((image - mu.astype(np.float32)) / sigma.astype(np.float32)).astype(np.float32)
    return np.ascontiguousarray(z.transpose(2, 0, 1)), mu, sigma


def teacher_outputs(teacher: torch.nn.Module, images: list[np.ndarray], device: str = "cpu",
                    progress: Progress = no_progress, cancel: CancelToken | None = None) -> list[np.ndarray]:
    """For every HWC image: its standardised version and the teacher's output on it, stacked as a
    (6, H, W) array. The teacher runs tiled with a halo of its receptive field, so big images fit."""
    from quietlens.engine.tiling import run_tiled

    teacher = teacher.eval().to(device)

    def fn(tile: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return teacher(torch.from_numpy(tile).to(device)).float().cpu().numpy()

    out = []
    for i, img in enumerate(images):
        z, _, _ = standardise_image(img)
        y = run_tiled(fn, z[None], halo=teacher.radius, bytes_per_pixel=4096, budget_bytes=512 * 2**20,
                      multiple_of=teacher.multiple, cancel=cancel)[0]
        out.append(np.concatenate([z, y]))
        progress((i + 1) / len(images), f"teacher output {i + 1}/{len(images)}")
    teacher.cpu()
    return out


def train_student(pairs: list[np.ndarray], config: DistilConfig, *, init: dict | None = None,
                  checkpoint: Path | None = None, device: str = "cpu", progress: Progress = no_progress,
                  cancel: CancelToken | None = None) -> tuple[Student, dict]:
    """Distil a :class:`Student` from (6, H, W) arrays of standardised input and teacher output (see
    :func:`teacher_outputs`). Returns the student (eval mode, CPU) and a summary."""
    torch.manual_seed(config.seed)
    net = Student(config.network())
    if init is not None:
        net.load_state_dict(init)
    loop = _Loop(net, config, device, checkpoint)
    crops = Crops(pairs, config.crop)

    def step_fn(step: int) -> tuple[torch.Tensor, dict]:
        batch = crops.sample(config.batch, loop.gen).to(device)
        loss = F.l1_loss(loop.net(batch[:, :3]), batch[:, 3:])
        return loss, {"l1": loss.item()}

    loop.fit(step_fn, progress, cancel or CancelToken())
    return loop.net.cpu(), loop.summary()


def seconds_per_step(make: Callable[[], tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]],
                     device: str = "cpu", trial: int = 3) -> float:
    """Time of one training step of a throwaway network: ``make()`` returns (net, loss_of(net)).
    Used to turn a budget in minutes into a fixed number of steps, which keeps runs reproducible."""
    net, loss_of = make()
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=0.0)
    times = []
    for _ in range(trial + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
            loss = loss_of(net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.mean(times[1:]))  # the mean, not the best: a busy machine should not overrun the budget


def teacher_step_seconds(config: TrainConfig, device: str = "cpu") -> float:
    """:func:`seconds_per_step` for a teacher (C-BSN with all its terms on)."""
    def make():
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(config.batch, 3, config.crop, config.crop, generator=gen).to(device)
        if config.method == "cbsn":
            return DBSN(config.network()), lambda net: cbsn_loss(net, z, 1.0, gen)[0]
        return DBSN(config.network()), lambda net: sdap_loss(net, z, gen)[0]
    return seconds_per_step(make, device)


def student_step_seconds(config: DistilConfig, device: str = "cpu") -> float:
    def make():
        z = torch.randn(config.batch, 6, config.crop, config.crop).to(device)
        return Student(config.network()), lambda net: F.l1_loss(net(z[:, :3]), z[:, 3:])
    return seconds_per_step(make, device)
