"""The one recipe for the photo networks (C-BSN, SDAP): train → distil → export → register.

Shipping (:mod:`quietlens.models.ship`) and a user's adaptation (``quietlens train``,
:mod:`quietlens.engine.train`) both call :func:`run`; everything they may vary is one validated
:class:`PhotoConfig` per method (its ``to_dict`` is recorded in every manifest entry, and an adaptation
starts from the base model's recorded config).

Phases, each a plain loop (Adam, step-decayed learning rate, checkpoint and resume, AMP on CUDA):

1. **student pretraining** — every student (``student``: the CPU default; ``fast``: batch and previews)
   learns supervised on synthetic noisy/clean pairs (:func:`quietlens.models.synth.srgb_pair`);
2. **teacher** — the blind-spot network: C-BSN's non-blind pass supervised on synthetic pairs
   (``supervised`` weight) plus C-BSN's self-supervised loss (blind pass on stride-5 sub-images,
   downsampled invariance tying the non-blind pass to it) on real and synthetic noisy crops; SDAP's
   blind network with the random-sub-samples cyclic loss on the same noisy crops;
3. **distillation** — each student learns the teacher's output on the real noisy photos (whole photos
   standardised as the engine does), plus the supervised synthetic term as an anchor (``anchor``);
4. **export** to ONNX (checked against PyTorch) and **register** through the model catalogue
   (:func:`quietlens.engine.catalogue.add`): shipping into its output folder's manifest, adaptation
   into the user's.

Data come as a :class:`Corpus` (clean photos for synthesis, real noisy photos). Every batch is a pure
function of (seed, phase, step), so a resumed run gives the same weights as an uninterrupted one, and
batches can be made by worker processes (``workers``) while the GPU trains.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zlib
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quietlens.engine.catalogue import ROLES, graph_id
from quietlens.engine.errors import Cancelled, QuietLensError
from quietlens.engine.progress import CancelToken, Progress, no_progress, sub_progress

from .synth import SRGB_ISO_RANGE

METHODS = ("cbsn", "sdap")
STUDENT_ROLES = ROLES[1:]  # "student" (the CPU default) and "fast" (batches, previews)


# -- the validated configuration -------------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    """One training loop: steps of ``batch`` random ``crop``² crops, Adam at ``lr`` halved ``halvings``
    times at evenly spaced steps, rising linearly to it over the first ``warmup`` steps (a trained network
    trained on: a fresh Adam moves every weight by the whole rate at first, which cost a C-BSN teacher
    5 dB in two steps at 2 × 10⁻⁴)."""

    steps: int
    batch: int
    crop: int
    lr: float
    halvings: int = 2
    warmup: int = 0

    def check(self, what: str, multiple: int) -> None:
        if self.steps < 0 or self.batch < 1 or not self.lr > 0 or self.halvings < 0 or self.warmup < 0:
            raise QuietLensError(f"{what}: steps ≥ 0, batch ≥ 1, lr > 0 and halvings, warmup ≥ 0 are needed ({self})")
        if self.crop < 2 * multiple or self.crop % multiple:
            raise QuietLensError(f"{what}: crop {self.crop} must be a multiple of {multiple}, at least {2 * multiple}")


INPUTS = ("standardised", "srgb")  # what a graph takes: the engine's per-channel standardisation, or the photo
TARGETS = ("network", "engine")  # what students distil to (PhotoConfig.targets)
LEVEL_ID = "photo-level"  # the level network's graph: every level student is told its estimate


@dataclass(frozen=True)
class StudentPlan:
    """A student: its architecture, supervised pretraining and distillation (``anchor`` weighs the
    supervised synthetic term during distillation; 0 distils from the teacher alone), and its input.
    A student told the noise level (``arch["level"] = 1``) is pretrained without it, then ``tune``
    teaches it the level planes (supervised, see :func:`train_student`), and it is distilled told the
    level network's estimate of each real photo."""

    role: str
    arch: dict  # a StudentConfig as a dict (kept plain so the config round-trips through JSON)
    pretrain: Phase
    distil: Phase
    anchor: float = 1.0
    input: str = "standardised"
    tune: Phase | None = None
    # A level student: (share, lowest, highest) — that share of its supervised crops is told s times the
    # level, s log-uniform over [lowest, highest], and learns synth.told_target's output for it, so that
    # noise_scale means what it says in both directions (None: always told the level as it is).
    mismatch: tuple[float, float, float] | None = None

    @property
    def level(self) -> bool:
        return bool(self.arch.get("level", 0))

    @property
    def plain_arch(self) -> dict:
        """The architecture without the level input (what is pretrained)."""
        return {k: v for k, v in self.arch.items() if k != "level"}


@dataclass(frozen=True)
class PhotoConfig:
    """Everything a C-BSN or SDAP training run depends on besides its data."""

    method: str
    teacher: dict  # a BSNConfig as a dict: width, modules
    train: Phase  # the teacher's phase
    students: tuple[StudentPlan, ...]
    supervised: float = 1.0  # C-BSN: weight of the supervised non-blind term (SDAP: must be 0, blind only)
    selfsup: float = 1.0  # weight of the method's self-supervised loss
    real_share: float = 0.5  # share of real noisy crops in self-supervised batches (the rest synthetic)
    ramp: float = 0.3  # C-BSN: the invariance terms' weight rises over this share of the steps (0: on at once)
    init: str = "neighbour_mean"  # teacher start: "neighbour_mean", "random", or the base model's weights
    iso_range: tuple[float, float] = SRGB_ISO_RANGE
    seed: int = 0
    checkpoint_every: int = 100
    lowpass_sigma: float = 8.0  # px: the engine keeps the input's band below this (0: the network's output)
    level: Phase | None = None  # the level network's training (LEVEL_ID), needed by level students
    bank: int = 0  # synthetic pairs rendered once and sampled (GPU: rendering every batch would starve it)
    bank_side: int = 128  # px: side of the banked pairs (crops are cut from them)
    # What students distil to: the teacher network's raw output, or "engine": that output as the engine
    # finishes it (the photo's low band, the detail guard; engine.noise.guard.finish), what a user gets.
    targets: str = "network"

    def __post_init__(self):
        from .bsn import BSNConfig, StudentConfig

        object.__setattr__(self, "students", tuple(
            replace(s, mismatch=tuple(float(v) for v in s.mismatch)) if s.mismatch is not None else s
            for s in self.students))
        object.__setattr__(self, "iso_range", tuple(float(v) for v in self.iso_range))
        if self.method not in METHODS:
            raise QuietLensError(f"unknown method {self.method!r} ({' or '.join(METHODS)})")
        try:
            net = BSNConfig(**self.teacher)
            archs = [StudentConfig(**s.arch) for s in self.students]
        except (TypeError, ValueError) as exc:
            raise QuietLensError(f"invalid network size in the {self.method} config: {exc}") from None
        self.train.check(f"{self.method} teacher", 10)  # stride-5 sub-sampling and 2×2 cells
        roles = [s.role for s in self.students]
        if len(set(roles)) != len(roles) or not set(roles) <= set(STUDENT_ROLES):
            raise QuietLensError(f"students must have distinct roles among {', '.join(STUDENT_ROLES)}, got {roles}")
        for plan, arch in zip(self.students, archs):
            m = 2 ** arch.levels
            plan.pretrain.check(f"{self.method} {plan.role} pretraining", m)
            plan.distil.check(f"{self.method} {plan.role} distillation", m)
            if plan.anchor < 0 or plan.input not in INPUTS:
                raise QuietLensError(f"{plan.role}: the anchor weight must be ≥ 0 and the input one of {INPUTS}")
            if plan.level and (plan.tune is None or plan.input != "standardised"):
                raise QuietLensError(f"{plan.role}: a student told the level needs a tune phase and standardised input")
            if plan.tune is not None:
                plan.tune.check(f"{self.method} {plan.role} level tuning", m)
            if plan.mismatch is not None:
                share, lo, hi = plan.mismatch
                if not plan.level or not 0 <= share <= 1 or not 0 < lo <= 1 <= hi:
                    raise QuietLensError(f"{plan.role}: a level mismatch (share in [0, 1], lowest ≤ 1 ≤ highest) "
                                         f"is for students told the level, got {plan.mismatch}")
        if self.method == "sdap" and self.supervised:
            raise QuietLensError("SDAP's network is blind: its supervised weight must be 0")
        if self.supervised < 0 or self.selfsup < 0 or not 0 <= self.real_share <= 1 or not 0 <= self.ramp <= 1:
            raise QuietLensError("weights must be ≥ 0 and real_share, ramp within [0, 1]")
        if self.init not in ("neighbour_mean", "random", "base"):
            raise QuietLensError(f"unknown teacher initialisation {self.init!r}")
        if self.init == "neighbour_mean" and net.width < 4 * net.channels:
            raise QuietLensError(f"neighbour-mean initialisation needs a teacher width ≥ {4 * net.channels}")
        if not 0 < self.iso_range[0] <= self.iso_range[1]:
            raise QuietLensError(f"invalid ISO range {self.iso_range}")
        if self.checkpoint_every < 1 or self.lowpass_sigma < 0 or self.bank < 0:
            raise QuietLensError("checkpoint_every must be ≥ 1, lowpass_sigma and bank ≥ 0")
        if self.targets not in TARGETS:
            raise QuietLensError(f"unknown distillation targets {self.targets!r} ({' or '.join(TARGETS)})")
        if self.level is not None:
            self.level.check(f"{self.method} level network", 1)
        crops = [self.train.crop] + [c for s in self.students for c in (s.pretrain.crop, s.distil.crop)]
        if self.bank and self.bank_side < max(crops):
            raise QuietLensError(f"bank_side {self.bank_side} is smaller than a training crop ({max(crops)})")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "PhotoConfig":
        """The inverse of :meth:`to_dict`; unknown or missing keys are an error (a typo is not ignored)."""
        def checked(kind, d: dict) -> dict:
            names = {f.name for f in fields(kind)}
            required = {f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING}
            if set(d) - names or required - set(d):
                raise QuietLensError(f"not a photo training config: {kind.__name__} has unknown "
                                     f"{sorted(set(d) - names)}, missing {sorted(required - set(d))}")
            return dict(d)

        top = checked(cls, data)
        students = []
        for s in top["students"]:
            s = checked(StudentPlan, s)
            students.append(StudentPlan(**{**s, **{k: Phase(**checked(Phase, s[k]))
                                                   for k in ("pretrain", "distil", "tune") if s.get(k) is not None}}))
        level = {"level": Phase(**checked(Phase, top["level"]))} if top.get("level") is not None else {}
        return cls(**{**top, "train": Phase(**checked(Phase, top["train"])), "students": tuple(students), **level})

    def student(self, role: str) -> StudentPlan:
        return next(s for s in self.students if s.role == role)


# -- data ----------------------------------------------------------------------------------------------

@dataclass
class Corpus:
    """Training photos, HWC RGB (uint8, or float32 in [0, 1]): ``clean`` for synthetic pairs and ``noisy``
    (real noisy photos) for the self-supervised and distillation terms. ``source`` describes them for
    the manifest."""

    clean: list[np.ndarray]
    noisy: list[np.ndarray]
    source: dict = field(default_factory=dict)
    bank: "PairBank | None" = None  # pre-rendered synthetic pairs, when the config asks for them

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for im in self.clean + [np.zeros(1)] + self.noisy:
            h.update(np.ascontiguousarray(im).view(np.uint8).data if im.size else b"")
        return h.hexdigest()[:16]


def _float(im: np.ndarray) -> np.ndarray:
    return im.astype(np.float32) / 255 if im.dtype == np.uint8 else im.astype(np.float32, copy=False)


def _rng(seed: int, phase: str, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(phase.encode()), step])


def _crop(images: list[np.ndarray], rng: np.random.Generator, size: int) -> tuple[int, np.ndarray]:
    """A random ``size``² crop (any of the 8 flips/rotations) of an image picked with probability
    proportional to its area, so that every pixel is equally likely. Images are (H, W, C)."""
    areas = np.array([im.shape[0] * im.shape[1] for im in images], np.float64)
    i = int(rng.choice(len(images), p=areas / areas.sum()))
    im = images[i]
    if min(im.shape[:2]) < size:
        raise QuietLensError(f"training crops are {size} px but an image is only {min(im.shape[:2])} px")
    y, x = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
    c = np.rot90(im[y:y + size, x:x + size], int(rng.integers(4)))
    return i, np.ascontiguousarray(c[:, ::-1] if rng.random() < 0.5 else c)


def _standardise(x: np.ndarray, like: np.ndarray | None = None, centred: bool = True) -> np.ndarray:
    """(H, W, 3) → (3, H, W) ``(x − μ)/max(σ, 1/120)`` with the per-channel statistics of ``like``
    (``centred=False``: ``x/max(σ, 1/120)``, for a noise level)."""
    from .bsn import SIGMA_FLOOR

    ref = x if like is None else like
    mu = ref.mean(axis=(0, 1), dtype=np.float64) if centred else 0.0
    sd = np.maximum(ref.std(axis=(0, 1), dtype=np.float64), SIGMA_FLOOR)
    return ((x - mu) / sd).astype(np.float32).transpose(2, 0, 1)


class PairBank:
    """Synthetic (noisy, clean, noise level) triples rendered once and then sampled (random crop, flip,
    rotation): noisy as the camera's 8 bits, clean and level as float16; (N, side, side, 3) each."""

    def __init__(self, noisy: np.ndarray, clean: np.ndarray, level: np.ndarray, key: tuple):
        self.noisy, self.clean, self.level, self.key = noisy, clean, level, key

    @classmethod
    def render(cls, corpus: Corpus, n: int, side: int, iso_range: tuple[float, float], seed: int,
               workers: int = 0, progress: Progress = no_progress) -> "PairBank":
        """``n`` pairs from the corpus's clean photos, in chunks of 256 made by ``workers`` processes."""
        from .synth import srgb_pair

        chunk = 256

        def make(i: int):
            rng = _rng(seed, "bank", i)
            out = [srgb_pair(_float(_crop(corpus.clean, rng, side)[1]), rng, iso_range=iso_range)
                   for _ in range(min(chunk, n - i * chunk))]
            return (np.stack([np.round(a * 255).astype(np.uint8) for a, _, _ in out]),
                    np.stack([b.astype(np.float16) for _, b, _ in out]),
                    np.stack([c.astype(np.float16) for _, _, c in out]))

        noisy = np.empty((n, side, side, 3), np.uint8)
        clean = np.empty((n, side, side, 3), np.float16)
        level = np.empty((n, side, side, 3), np.float16)
        count = -(-n // chunk)
        for i, (a, b, c) in enumerate(_Batches(make, 0, count, workers)):
            at = slice(i * chunk, i * chunk + len(a))
            noisy[at], clean[at], level[at] = a, b, c
            progress((i + 1) / count, f"rendering synthetic pairs {min((i + 1) * chunk, n)}/{n}")
        return cls(noisy, clean, level, (n, side, tuple(iso_range), seed))

    def sample(self, rng: np.random.Generator, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i = int(rng.integers(len(self.noisy)))
        _, all_ = _crop([np.concatenate([self.noisy[i].astype(np.float32) / 255, self.clean[i].astype(np.float32),
                                         self.level[i].astype(np.float32)], axis=2)], rng, crop)
        return all_[..., :3], all_[..., 3:6], all_[..., 6:]


def _synthetic(corpus: Corpus, rng: np.random.Generator, crop: int,
               iso_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (noisy, clean, noise level) HWC triple: from the corpus's bank when it has one, else rendered now."""
    from .synth import srgb_pair

    if corpus.bank is not None:
        return corpus.bank.sample(rng, crop)
    _, c = _crop(corpus.clean, rng, crop)
    return srgb_pair(_float(c), rng, iso_range=iso_range)


def synthetic_pairs(corpus: Corpus, rng: np.random.Generator, n: int, crop: int, iso_range: tuple[float, float],
                    space: str = "standardised", level: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (noisy, clean) crops through random cameras: two (n, 3, crop, crop) arrays, both standardised
    with the noisy crop's statistics (as the engine standardises a photo by its own) or as rendered
    (``space="srgb"``). With ``level`` the noisy crops carry the noise's σ per pixel in 3 more planes, in
    the same units (what a level student is told)."""
    noisy, clean = [], []
    for _ in range(n):
        nz, cl, lv = _synthetic(corpus, rng, crop, iso_range)
        if space == "srgb":
            noisy.append(np.concatenate([nz, lv], axis=2).transpose(2, 0, 1) if level else nz.transpose(2, 0, 1))
            clean.append(cl.transpose(2, 0, 1))
        else:
            z = _standardise(nz)
            if level:
                z = np.concatenate([z, _standardise(lv, like=nz, centred=False)])
            noisy.append(z)
            clean.append(_standardise(cl, like=nz))
    return np.stack(noisy), np.stack(clean)


def supervised_l1(out, target):
    """L1 to the clean target. Its gradient is the error's sign, the same for every pixel, so a low-noise
    crop counts as much as a high-ISO one (weighting crops by their noise level, tried, only kept the
    network at the identity longer)."""
    return (out - target).abs().mean()


def noisy_crops(corpus: Corpus, rng: np.random.Generator, n: int, crop: int, real_share: float,
                iso_range: tuple[float, float]) -> np.ndarray:
    """``n`` standardised noisy crops: real ones with probability ``real_share``, else synthetic."""
    out = []
    for _ in range(n):
        if corpus.noisy and (rng.random() < real_share or not corpus.clean):
            _, c = _crop(corpus.noisy, rng, crop)
            out.append(_standardise(_float(c)))
        else:
            out.append(_standardise(_synthetic(corpus, rng, crop, iso_range)[0]))
    return np.stack(out)


def _teacher_renders_pairs(cfg: PhotoConfig, corpus: Corpus) -> bool:
    """Whether a teacher step renders synthetic pairs: C-BSN's supervised non-blind term, given clean photos."""
    return cfg.method == "cbsn" and cfg.supervised > 0 and bool(corpus.clean)


def _distillation_renders_pairs(plan: StudentPlan, corpus: Corpus) -> bool:
    """Whether a student's distillation step renders synthetic pairs: its supervised anchor term."""
    return plan.anchor > 0 and bool(corpus.clean)


# -- the training loop -----------------------------------------------------------------------------

def _lr_at(step: int, phase: Phase) -> float:
    """Step decay: ``lr`` halved ``halvings`` times at evenly spaced steps, after a linear warm-up."""
    rise = min((step + 1) / phase.warmup, 1.0) if phase.warmup else 1.0
    return rise * phase.lr * 0.5 ** math.floor(step * (phase.halvings + 1) / max(phase.steps, 1))


def _save(path: Path, state: dict) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class _Batches:
    """Batches ``make(step)`` for steps ``start … stop − 1`` in order, made in ``workers`` processes
    (a torch DataLoader over the step numbers) or, with none, here."""

    def __init__(self, make: Callable[[int], Any], start: int, stop: int, workers: int):
        self.make, self.start, self.stop, self.workers = make, start, stop, workers

    def __iter__(self):
        if self.workers <= 0:
            return (self.make(s) for s in range(self.start, self.stop))
        import torch

        class Steps(torch.utils.data.Dataset):
            def __len__(_):
                return self.stop - self.start

            def __getitem__(_, i):
                return self.make(self.start + i)

        return iter(torch.utils.data.DataLoader(Steps(), batch_size=None, shuffle=False, num_workers=self.workers,
                                                prefetch_factor=4, persistent_workers=False))


class Budget:
    """Wall-clock seconds shared by named training phases in proportion to their estimated seconds: each
    phase, when it starts, gets that share of what is left (:meth:`share`), so a slow phase shortens the
    later ones and a fast one lends them its time."""

    def __init__(self, seconds: float, estimates: dict[str, float]):
        self.end = time.perf_counter() + seconds
        self.pending = {k: max(float(v), 1e-3) for k, v in estimates.items()}

    def share(self, name: str) -> float | None:
        """The seconds phase ``name`` may take (None: not budgeted, or already started once)."""
        estimate = self.pending.pop(name, None)
        if estimate is None:
            return None
        left = max(self.end - time.perf_counter(), 0.0)
        return left * estimate / (estimate + sum(self.pending.values()))


def phase_name(kind: str, method: str = "", role: str = "") -> str:
    """The name of a training phase in estimates and budgets: ``kind`` is "bank", "level", "pretrain",
    "tune", "teacher" or "distil"."""
    return {"bank": "rendering the synthetic pairs", "level": "level network (shared)",
            "pretrain": f"{role} pretraining (shared)", "tune": f"{role} level tuning (shared)",
            "teacher": f"{method} teacher", "distil": f"{method} {role} distillation"}[kind]


OUTPUT_WEIGHT = 20  # a photo's teacher output, in the progress units of run() (~a student step each)
PACE_STEPS = (10, 60)  # a budgeted phase times these steps (after the batch makers' start) to set its length


def fit(net, phase: Phase, make_batch: Callable[[int], Any], loss_fn: Callable[[Any, int, Any], tuple],
        *, seed: int, checkpoint: Path | None, device: str, progress: Progress = no_progress,
        cancel: CancelToken | None = None, workers: int = 0, settings: dict | None = None,
        checkpoint_every: int = 100, seconds: float | None = None) -> dict:
    """Train ``net`` for ``phase.steps``: ``loss_fn(batch, step, generator)`` → (loss, numbers to report).

    ``seconds`` (a :class:`Budget`'s share): the phase times its steps :data:`PACE_STEPS` and stops after
    as many steps as fit, its learning-rate schedule compressed to match, and stops at once if it runs
    10 % over. Resumes from ``checkpoint`` (model, optimiser, scaler, generator, step, steps to do,
    times) when it exists and was written with the same ``settings``; cancelling writes it first.
    Returns a summary: steps, wall and CPU seconds spent in steps (over resumes), the last loss terms."""
    import torch

    cancel = cancel or CancelToken()
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=phase.lr)
    gen = torch.Generator().manual_seed(seed + 1)
    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    state = {"step": 0, "stop": phase.steps, "seconds": 0.0, "cpu": 0.0, "last": {}}
    settings = json.loads(json.dumps({"phase": asdict(phase), **(settings or {})}))
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved.get("settings") != settings:
            raise QuietLensError("the checkpoint was written by a run with other settings; delete it to start over",
                                 checkpoint)
        net.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        gen.set_state(saved["generator"])
        state = {k: saved.get(k, state[k]) for k in state}

    def save() -> None:
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            _save(checkpoint, {"model": net.state_dict(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                               "generator": gen.get_state(), "settings": settings, **state})

    net.train()
    began, first, paced = time.perf_counter(), state["step"], None
    for batch in _Batches(make_batch, state["step"], state["stop"], workers):
        step = state["step"]
        if step >= state["stop"]:  # shortened to fit its budget
            break
        if cancel.cancelled:
            save()
            raise Cancelled()
        start, cpu = time.perf_counter(), time.process_time()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, replace(phase, steps=state["stop"]))
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss, parts = loss_fn(batch, step, gen)
        if not torch.isfinite(loss):
            raise QuietLensError(f"training diverged at step {step} (loss {float(loss)})")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        state["step"] = step + 1
        state["last"] = {k: round(float(v), 5) for k, v in parts.items()}
        state["seconds"] += time.perf_counter() - start
        state["cpu"] += time.process_time() - cpu
        if seconds is not None:
            now, done = time.perf_counter(), state["step"] - first
            if done == PACE_STEPS[0]:
                paced = now
            elif done == PACE_STEPS[1] and paced is not None:
                pace = (now - paced) / (PACE_STEPS[1] - PACE_STEPS[0])
                state["stop"] = min(state["stop"], state["step"] + int(max(began + seconds - now, 0) / pace))
            if now > began + 1.1 * seconds:
                state["stop"] = state["step"]
        if state["step"] % checkpoint_every == 0 or state["step"] == state["stop"]:
            save()
        report = " ".join(f"{k} {v:.4f}" for k, v in state["last"].items())
        progress(state["step"] / max(state["stop"], 1), f"step {state['step']}/{state['stop']} {report}")
    net.eval().cpu()
    shortened = {"planned_steps": phase.steps} if state["step"] < phase.steps else {}
    return {"steps": state["step"], **shortened, "train_seconds": round(state["seconds"], 1),
            "train_cpu_seconds": round(state["cpu"], 1), "last_loss": state["last"]}


# -- the phases --------------------------------------------------------------------------------------

def _tensor(a: np.ndarray, device: str):
    import torch

    return torch.as_tensor(a).to(device, non_blocking=True)  # batches from worker processes come as tensors


def _ramp(cfg: PhotoConfig, step: int) -> float:
    return min(step / (cfg.ramp * cfg.train.steps), 1.0) if cfg.ramp > 0 and cfg.train.steps else 1.0


def train_teacher(cfg: PhotoConfig, corpus: Corpus, *, init: dict | None = None, checkpoint: Path | None = None,
                  device: str = "cpu", workers: int = 0, progress: Progress = no_progress,
                  cancel: CancelToken | None = None, seconds: float | None = None) -> tuple[Any, dict]:
    """The teacher phase (see the module docstring). Returns the inference module and a summary."""
    import torch

    from .bsn import DBSN, INFERENCE, BSNConfig, cbsn_loss, sdap_loss

    torch.manual_seed(cfg.seed)
    net = DBSN(BSNConfig(**cfg.teacher))
    if init is not None:
        net.load_state_dict(init)
    elif cfg.init == "neighbour_mean":
        net.init_neighbour_mean()
    p, supervised = cfg.train, _teacher_renders_pairs(cfg, corpus)

    def make(step: int):
        rng = _rng(cfg.seed, "teacher", step)
        pair = synthetic_pairs(corpus, rng, p.batch, p.crop, cfg.iso_range) if supervised else None
        return pair, noisy_crops(corpus, rng, p.batch, p.crop, cfg.real_share, cfg.iso_range)

    def loss_fn(batch, step, gen):
        pair, noisy = batch
        z = _tensor(noisy, device)
        if cfg.method == "cbsn":
            loss, parts = cbsn_loss(net, z, _ramp(cfg, step), gen)
        else:
            loss, parts = sdap_loss(net, z, gen)
        loss = cfg.selfsup * loss
        if pair is not None:
            sup = supervised_l1(net(_tensor(pair[0], device), blind=False), _tensor(pair[1], device))
            loss, parts = loss + cfg.supervised * sup, {**parts, "sup": sup.item()}
        return loss, parts

    teacher_settings = {k: v for k, v in cfg.to_dict().items()
                        if k not in ("students", "checkpoint_every", "lowpass_sigma", "targets")}  # what the teacher depends on
    info = fit(net, p, make, loss_fn, seed=cfg.seed, checkpoint=checkpoint, device=device, progress=progress,
               cancel=cancel, workers=workers, checkpoint_every=cfg.checkpoint_every, seconds=seconds,
               settings={"config": teacher_settings, "data": corpus.fingerprint(), "init": init is not None})
    return INFERENCE[cfg.method](net), info


def train_student(cfg: PhotoConfig, role: str, corpus: Corpus, *, stage: str, targets: list[np.ndarray] | None = None,
                  init: dict | None = None, checkpoint: Path | None = None, device: str = "cpu", workers: int = 0,
                  progress: Progress = no_progress, cancel: CancelToken | None = None,
                  seconds: float | None = None, level_net: Any = None) -> tuple[Any, dict]:
    """A student's ``stage``: ``"pretrain"`` (supervised on synthetic pairs, without the level input),
    ``"tune"`` (a level student started from the pretrained weights ``init``, supervised) or ``"distil"``
    (L1 to the teacher's output ``targets`` — arrays of the student's input and the teacher's output, see
    :func:`teacher_outputs` and :func:`told_targets` — plus ``anchor`` × the supervised term). Returns the
    student and a summary.

    A level student's supervised crops are told, half of them, the synthesis' own noise level (so that
    the level it is told means what it says: more smooths more), the other half ``level_net``'s estimate
    (what the engine tells it: the network learns what that estimate means, e.g. that the texture of a
    clean photo reads as a few grey levels of noise)."""
    import torch
    import torch.nn.functional as F

    from .bsn import Student, StudentConfig

    plan = cfg.student(role)
    p = {"pretrain": plan.pretrain, "tune": plan.tune, "distil": plan.distil}[stage]
    torch.manual_seed(cfg.seed)
    arch = plan.plain_arch if stage == "pretrain" else plan.arch
    net = Student(StudentConfig(**arch))
    told = net.config.level == 1
    if told and level_net is None:
        raise QuietLensError("a student told the noise level trains with a level network")
    if told:
        level_net = level_net.to(device).eval()
    if init is not None:
        net.load_plain(init) if stage == "tune" else net.load_state_dict(init)
    hwc = [t.transpose(1, 2, 0) for t in targets or []]  # crops are cut from (H, W, C) arrays
    sup = stage != "distil" or _distillation_renders_pairs(plan, corpus)

    def make(step: int):
        rng = _rng(cfg.seed, f"{role}-{stage}", step)
        pair = synthetic_pairs(corpus, rng, p.batch, p.crop, cfg.iso_range, plan.input, told) if sup else None
        scale = mismatched(pair, rng, plan.mismatch) if told and sup and plan.mismatch else np.ones(p.batch, np.float32)
        dist = np.stack([_crop(hwc, rng, p.crop)[1].transpose(2, 0, 1) for _ in range(p.batch)]) if hwc else None
        return pair, dist, scale

    def loss_fn(batch, step, gen):
        pair, dist, scale = batch
        loss, parts = 0.0, {}
        if dist is not None:
            d = _tensor(dist, device)
            loss = F.l1_loss(net(d[:, :net.inputs]), d[:, net.inputs:])
            parts["distil"] = loss.item()
        if pair is not None:
            x = _tensor(pair[0], device)
            if told:
                x = _told_estimate(x, level_net, net.config.channels, _tensor(scale, device))
            s = supervised_l1(net(x), _tensor(pair[1], device))
            loss = loss + (plan.anchor if stage == "distil" else 1.0) * s
            parts["sup"] = s.item()
        return loss, parts

    if stage == "distil" and not hwc and not sup:
        raise QuietLensError("distillation needs noisy photos or an anchor")
    settings = {"arch": arch, "input": plan.input, "stage": stage, "seed": cfg.seed, "iso_range": cfg.iso_range,
                "bank": [cfg.bank, cfg.bank_side] if cfg.bank else None,
                "anchor": plan.anchor if stage == "distil" else None, "data": corpus.fingerprint(),
                **({"mismatch": list(plan.mismatch)} if told and plan.mismatch else {}),
                **({"told": "half true, half estimated"} if told else {}),
                "targets": hashlib.sha256(b"".join(t.tobytes()[:4096] for t in targets or [])).hexdigest()[:16]}
    info = fit(net, p, make, loss_fn, seed=cfg.seed, checkpoint=checkpoint, device=device, progress=progress,
               cancel=cancel, workers=workers, checkpoint_every=cfg.checkpoint_every, settings=settings,
               seconds=seconds)
    return net, info


def train_level(cfg: PhotoConfig, corpus: Corpus, *, checkpoint: Path | None = None, device: str = "cpu",
                workers: int = 0, progress: Progress = no_progress, cancel: CancelToken | None = None,
                seconds: float | None = None) -> tuple[Any, dict]:
    """The level network (:class:`~quietlens.models.bsn.LevelNet`): L1 to the synthesis' own per-pixel
    noise level on synthetic crops. L1 reads the median, so neither over- nor under-estimates weigh more
    (CBDNet weighs under-estimates more; here that over-read clean photos' texture as noise)."""
    import torch

    from .bsn import LevelNet

    p = cfg.level
    torch.manual_seed(cfg.seed)
    net = LevelNet()

    def make(step: int):
        return synthetic_pairs(corpus, _rng(cfg.seed, "level", step), p.batch, p.crop, cfg.iso_range, level=True)[0]

    def loss_fn(batch, step, gen):
        x = _tensor(batch, device)
        loss = (net(x[:, :3]) - x[:, 3:]).abs().mean()
        return loss, {"level": loss.item()}

    settings = {"stage": "level", "seed": cfg.seed, "iso_range": cfg.iso_range, "data": corpus.fingerprint(),
                "bank": [cfg.bank, cfg.bank_side] if cfg.bank else None}
    info = fit(net, p, make, loss_fn, seed=cfg.seed, checkpoint=checkpoint, device=device, progress=progress,
               cancel=cancel, workers=workers, checkpoint_every=cfg.checkpoint_every, settings=settings,
               seconds=seconds)
    return net, info


def mismatched(pair: tuple[np.ndarray, np.ndarray], rng: np.random.Generator,
               mismatch: tuple[float, float, float]) -> np.ndarray:
    """Tell a share of a level batch's crops ``s`` times their level (see :attr:`StudentPlan.mismatch`), in
    place: their level planes scaled, their targets :func:`~quietlens.models.synth.told_target` with the
    crop's mean noise variance per channel. Returns each crop's ``s`` (1 where matched)."""
    from .synth import told_target

    share, lo, hi = mismatch
    x, y = pair
    c = y.shape[1]
    scale = np.ones(len(x), np.float32)
    for i in range(len(x)):
        if rng.random() < share:
            scale[i] = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            variance = (x[i, c:] ** 2).mean(axis=(1, 2))[:, None, None]
            y[i] = told_target(x[i, :c], y[i], variance, float(scale[i]))
            x[i, c:] *= scale[i]
    return scale


def _told_estimate(x, level_net, channels: int, scale=None):
    """A batch of level-student inputs (image, true level) with the second half told ``level_net``'s
    estimate instead (the per-channel median of its map, as the engine tells it), × ``scale`` per crop
    (:func:`mismatched`: the level told as the engine's ``noise_scale`` scales it) — see :func:`train_student`."""
    import torch

    half = x.shape[0] // 2
    with torch.no_grad():
        est = level_net(x[half:, :channels]).flatten(2).median(dim=2).values[:, :, None, None]
    if scale is not None:
        est = est * scale[half:, None, None, None]
    return torch.cat([x[:half], torch.cat([x[half:, :channels], est.expand_as(x[half:, channels:])], 1)])


def photo_level(level_net, z: np.ndarray) -> np.ndarray:
    """The level network's estimate for a standardised (3, H, W) photo: the per-channel median of its map
    (what the engine tells a level student), run tiled. ``level_net``: a LevelNet (:func:`shipped_level_net`
    reads the installed one back from its graph)."""
    import torch

    from quietlens.engine.tiling import run_tiled

    device = next(level_net.parameters()).device

    def fn(tile: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return level_net(torch.from_numpy(tile).to(device)).float().cpu().numpy()

    m = run_tiled(fn, z[None], halo=level_net.radius, bytes_per_pixel=1024, budget_bytes=256 * 2**20)[0]
    return np.median(m.reshape(3, -1), axis=1).astype(np.float32)


def told_targets(targets: list[np.ndarray], level_net) -> list[np.ndarray]:
    """Distillation targets (photo, teacher output) with the level planes a level student is told in
    between: each photo's estimate (:func:`photo_level`), constant over it."""
    out = []
    for t in targets:
        told = np.broadcast_to(photo_level(level_net, t[:3])[:, None, None], t[:3].shape)
        out.append(np.concatenate([t[:3], told, t[3:]]))
    return out


def standardise_image(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whole-image, per-channel standardisation of an HWC image, as the engine does at inference:
    (C, H, W) ``z`` and the per-channel ``μ``, ``σ``."""
    from quietlens.engine.image import channel_stats

    mu, sigma = channel_stats(image)
    z = ((image - mu.astype(np.float32)) / sigma.astype(np.float32)).astype(np.float32)
    return np.ascontiguousarray(z.transpose(2, 0, 1)), mu, sigma


def teacher_outputs(teacher, images: list[np.ndarray], device: str = "cpu", progress: Progress = no_progress,
                    cancel: CancelToken | None = None, space: str = "standardised",
                    band_sigma: float | None = None) -> list[np.ndarray]:
    """For every HWC photo: the photo and the teacher's output on it (the engine's whole-photo
    standardisation, or back in the photo's own values with ``space="srgb"``), stacked as a (6, H, W)
    array; with ``band_sigma`` (the graph's low-pass σ) the output as the engine finishes it
    (:func:`quietlens.engine.noise.guard.finish`). The teacher runs tiled with a halo of its receptive
    field, so big photos fit."""
    import torch

    from quietlens.engine.noise.guard import finish
    from quietlens.engine.tiling import run_tiled

    teacher = teacher.eval().to(device)

    def fn(tile: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return teacher(torch.from_numpy(tile).to(device)).float().cpu().numpy()

    out = []
    for i, img in enumerate(images):
        photo = _float(img)
        z, mu, sd = standardise_image(photo)
        y = run_tiled(fn, z[None], halo=teacher.radius, bytes_per_pixel=getattr(teacher, "bytes_per_pixel", 4096),
                      budget_bytes=None if isinstance(teacher, GraphTeacher) else 512 * 2**20,  # None: the engine's
                      multiple_of=teacher.multiple, cancel=cancel)[0]
        if band_sigma is not None or space == "srgb":
            y = (y * sd[:, None, None] + mu[:, None, None]).astype(np.float32)
            if band_sigma is not None:
                y = finish(photo, y.transpose(1, 2, 0), band_sigma).transpose(2, 0, 1)
            if space == "srgb":
                z = photo.transpose(2, 0, 1)
            else:
                y = ((y - mu[:, None, None]) / sd[:, None, None]).astype(np.float32)
        out.append(np.concatenate([z, y]))
        progress((i + 1) / len(images), f"teacher output {i + 1}/{len(images)}")
    teacher.cpu()
    return out


# -- budgets -------------------------------------------------------------------------------------------

def seconds_per_step(net, loss_of: Callable, device: str = "cpu", trial: int = 3, enough: float = 5.0) -> float:
    """Mean time of up to ``trial`` training steps of a throwaway copy of ``net`` (after one warm-up
    step), fewer once they took ``enough`` seconds (C-BSN's teacher takes 7 s a step on a CPU: the timing
    is paid from the budget it sets)."""
    import torch

    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=0.0)
    times = []
    for _ in range(trial + 1):
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.startswith("cuda")):
            loss = loss_of(net)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if sum(times[1:]) >= enough:
            break
    return float(np.mean(times[1:]))  # the mean, not the best: a busy machine should not overrun the budget


def step_seconds(cfg: PhotoConfig, device: str = "cpu") -> dict[str, float]:
    """Seconds per training step of the teacher and of each student's distillation (network and loss only:
    making the batches is not counted)."""
    import torch
    import torch.nn.functional as F

    from .bsn import DBSN, BSNConfig, Student, StudentConfig, cbsn_loss, sdap_loss

    gen = torch.Generator().manual_seed(0)
    p = cfg.train
    z = torch.randn(p.batch, 3, p.crop, p.crop, generator=gen).to(device)
    if cfg.method == "cbsn":
        def teacher_loss(net):
            loss = cbsn_loss(net, z, 1.0, gen)[0]
            return loss + F.l1_loss(net(z, blind=False), z) if cfg.supervised else loss
    else:
        def teacher_loss(net):
            return sdap_loss(net, z, gen)[0]
    out = {"teacher": seconds_per_step(DBSN(BSNConfig(**cfg.teacher)), teacher_loss, device)}
    for plan in cfg.students:
        d, arch = plan.distil, StudentConfig(**plan.arch)
        x = torch.randn(d.batch, arch.inputs + 3, d.crop, d.crop, generator=gen).to(device)
        terms = 1 + (plan.anchor > 0)
        out[plan.role] = terms * seconds_per_step(Student(arch), lambda net: F.l1_loss(net(x[:, :arch.inputs]),
                                                                                       x[:, arch.inputs:]), device)
    return out


def batch_seconds(cfg: PhotoConfig, corpus: Corpus, level_net: Any = None) -> dict[str, float]:
    """Seconds per step that :func:`step_seconds` leaves out, by its keys: rendering a batch's synthetic
    pairs (C-BSN's supervised teacher term, the students' anchor) and a told student's level estimate.
    Where no worker processes make the batches (adaptation) a step pays both: a fast student's anchor batch
    takes about as long as its network's step (8 × 96²: 0.042 s against 0.043 s here)."""
    rng = np.random.default_rng(0)
    synthetic_pairs(corpus, rng, 1, 32, cfg.iso_range)  # imports and caches: not a step's cost

    def timed(p: Phase, space: str = "standardised", told_channels: int = 0) -> float:
        import torch

        start = time.perf_counter()
        x = synthetic_pairs(corpus, rng, p.batch, p.crop, cfg.iso_range, space, bool(told_channels))[0]
        if told_channels and level_net is not None:
            _told_estimate(torch.as_tensor(x), level_net, told_channels)
        return time.perf_counter() - start

    from .bsn import StudentConfig

    out = {"teacher": timed(cfg.train) if _teacher_renders_pairs(cfg, corpus) else 0.0}
    for plan in cfg.students:
        channels = StudentConfig(**plan.arch).channels if plan.level else 0
        out[plan.role] = timed(plan.distil, plan.input, channels) if _distillation_renders_pairs(plan, corpus) else 0.0
    return out


# -- the whole recipe ------------------------------------------------------------------------------

class GraphTeacher:
    """A teacher's exported ONNX graph (a file, or its bytes), as :func:`teacher_outputs` uses a PyTorch
    teacher, on ONNX Runtime on the CPU: students can be distilled on a CPU from a teacher trained
    elsewhere (a GPU run's graph), and a teacher trained on the CPU gives its outputs as the engine runs
    it, 3× faster than PyTorch (SDAP's on a 512² photo: 5 s against 17 s). ``bytes_per_pixel``: the
    graph's, for tiles as large as the engine's (0: a conservative guess)."""

    def __init__(self, graph: Path | bytes, receptive_field: int, tile_multiple: int, threads: int = 0,
                 bytes_per_pixel: float = 0.0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph), options,
                                            providers=["CPUExecutionProvider"])
        self.radius, self.multiple = int(receptive_field), int(tile_multiple)
        self.bytes_per_pixel = float(bytes_per_pixel) or 4096.0

    def eval(self) -> "GraphTeacher":
        return self

    def to(self, device: str) -> "GraphTeacher":
        return self

    cpu = eval

    def __call__(self, x):
        import torch

        return torch.from_numpy(self.session.run(None, {self.session.get_inputs()[0].name: x.cpu().numpy()})[0])


@dataclass
class Result:
    """What :func:`run` made: per role ("teacher", "student", "fast") the module and its training summary."""

    modules: dict[str, Any]
    summaries: dict[str, dict]


def _needs_tune(plan: StudentPlan, state: dict | None) -> bool:
    """Whether a student told the noise level must first learn the level input: its starting weights
    (``state``; None: its own pretraining, which is plain) have no level layers."""
    return bool(plan.level) and not any(k.startswith("level_") for k in state or {})


def _state_digest(state: dict) -> str:
    """A short digest of a state dict's weights (names a checkpoint trained from them)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def run(cfg: PhotoConfig, corpus: Corpus, workdir: Path, *, base: dict[str, dict] | None = None,
        shared: Path | None = None, device: str = "cpu", workers: int = 0, progress: Progress = no_progress,
        cancel: CancelToken | None = None, budget: Budget | None = None, teacher: Any = None,
        level_net: Any = None) -> Result:
    """Train the teacher and every student of ``cfg`` on ``corpus``, with checkpoints in ``workdir``;
    with a ``budget``, each phase within its share (:func:`phase_name` names them). ``teacher``: a
    trained one (e.g. :class:`GraphTeacher`) to distil from instead of training one; it is not in the result.
    ``level_net``: the level network the level students are told the estimate of (adaptation: the
    shipped one); without it, ``cfg.level`` trains one (in the result as ``"level"``).

    ``base`` (adaptation): state dicts by role to start from — the teacher's with ``init == "base"``,
    students' in place of their pretraining (a plain one that ``cfg`` tells the noise level still learns
    the level input: the tune phase). ``shared``: a folder for the pretraining checkpoints, named
    by their settings, so that recipes with identical pretraining (C-BSN's and SDAP's students) train it
    once."""
    base = base or {}
    workdir.mkdir(parents=True, exist_ok=True)
    share = budget.share if budget is not None else (lambda name: None)
    share(phase_name("bank"))  # rendering is not shortened: the phases after it share what it leaves
    if cfg.bank and (corpus.bank is None or corpus.bank.key != (cfg.bank, cfg.bank_side, cfg.iso_range, cfg.seed)):
        corpus.bank = PairBank.render(corpus, cfg.bank, cfg.bank_side, cfg.iso_range, cfg.seed, workers, progress)
    shared = shared or workdir
    modules, summaries = {}, {}
    distilled = [s for s in cfg.students if s.distil.steps]
    spaces = sorted({s.input for s in distilled}) if corpus.noisy else []  # the teacher's outputs, one set each
    secs = {"pretrain": sum((s.pretrain.steps if s.role not in base else 0)
                            + (s.tune.steps if _needs_tune(s, base.get(s.role)) else 0) for s in cfg.students),
            "level": cfg.level.steps if cfg.level is not None and level_net is None else 0,
            "teacher": cfg.train.steps * 10 if teacher is None else 0, "distil": sum(s.distil.steps for s in cfg.students),
            "outputs": len(spaces) * len(corpus.noisy) * OUTPUT_WEIGHT}
    total = max(sum(secs.values()), 1)
    done = 0.0

    def part(weight: float) -> Progress:
        nonlocal done
        start, done = done, done + weight / total
        return sub_progress(progress, start, done)

    def cache_key(*parts) -> str:  # shared checkpoints are named by what they depend on
        return hashlib.sha256(json.dumps([*parts, cfg.seed, cfg.iso_range, cfg.bank, cfg.bank_side,
                                          corpus.fingerprint()]).encode()).hexdigest()[:12]

    if any(s.level for s in cfg.students) and level_net is None:
        if cfg.level is None:
            raise QuietLensError("students told the noise level need a level network: the config has no level phase")
        level_net, summaries["level"] = train_level(
            cfg, corpus, checkpoint=shared / f"level-{cache_key(asdict(cfg.level))}.pt", device=device,
            workers=workers, progress=part(cfg.level.steps), cancel=cancel, seconds=share(phase_name("level")))
        modules["level"] = level_net
    pretrained = {}
    for plan in cfg.students:
        if plan.role in base:
            pretrained[plan.role] = base[plan.role]
            origin = _state_digest(base[plan.role])
        else:
            key = cache_key(plan.plain_arch, plan.input, asdict(plan.pretrain))
            net, info = train_student(cfg, plan.role, corpus, stage="pretrain", checkpoint=shared / f"pretrain-{key}.pt",
                                      device=device, workers=workers, progress=part(plan.pretrain.steps), cancel=cancel,
                                      seconds=share(phase_name("pretrain", role=plan.role)))
            pretrained[plan.role] = net.state_dict()
            summaries[f"{plan.role}_pretrain"] = info
            origin = asdict(plan.pretrain)
        if _needs_tune(plan, pretrained[plan.role]):  # also a plain base student now told the level
            key = cache_key(plan.arch, plan.input, origin, asdict(plan.tune), plan.mismatch)
            net, info = train_student(cfg, plan.role, corpus, stage="tune", init=pretrained[plan.role], level_net=level_net,
                                      checkpoint=shared / f"tune-{key}.pt", device=device, workers=workers,
                                      progress=part(plan.tune.steps), cancel=cancel,
                                      seconds=share(phase_name("tune", role=plan.role)))
            pretrained[plan.role] = net.state_dict()
            summaries[f"{plan.role}_tune"] = info
    init = base.get("teacher") if cfg.init == "base" else None
    if cfg.init == "base" and init is None and teacher is None:
        raise QuietLensError("the config starts the teacher from a base model, but none was given")
    if teacher is None:
        teacher, summaries["teacher"] = train_teacher(cfg, corpus, init=init, checkpoint=workdir / "teacher.pt",
                                                      device=device, workers=workers,
                                                      progress=part(cfg.train.steps * 10), cancel=cancel,
                                                      seconds=share(phase_name("teacher", cfg.method)))
        modules["teacher"] = teacher
    band_sigma = cfg.lowpass_sigma if cfg.targets == "engine" else None
    source = teacher
    if spaces and not device.startswith("cuda") and not isinstance(teacher, GraphTeacher):
        from . import bsn  # on a CPU the teacher's graph gives its outputs 3× faster, as the engine runs it

        source = GraphTeacher(bsn.export_checked(teacher), teacher.radius, teacher.multiple,
                              bytes_per_pixel=bsn.bytes_per_pixel(teacher))
    outputs = part(secs["outputs"])
    targets = {space: teacher_outputs(source, corpus.noisy, device, cancel=cancel, space=space, band_sigma=band_sigma,
                                      progress=sub_progress(outputs, i / len(spaces), (i + 1) / len(spaces)))
               for i, space in enumerate(spaces)}
    if any(s.level for s in distilled) and targets.get("standardised"):
        targets["told"] = told_targets(targets["standardised"], level_net)
    for plan in cfg.students:
        net, info = train_student(cfg, plan.role, corpus, stage="distil", level_net=level_net,
                                  targets=targets.get("told" if plan.level else plan.input, []),
                                  init=pretrained[plan.role],
                                  checkpoint=workdir / f"{plan.role}.pt", device=device, workers=workers,
                                  progress=part(plan.distil.steps), cancel=cancel,
                                  seconds=share(phase_name("distil", cfg.method, plan.role)))
        modules[plan.role], summaries[plan.role] = net, info
    progress(1.0, "trained")
    return Result(modules, summaries)


def export(result: Result, family: str, method: str, provenance: dict, folder: Path,
           radii: dict[str, int] | None = None) -> list[tuple[Path, dict]]:
    """Each module of ``result`` as ``folder/<id>.onnx`` (checked against PyTorch) with its manifest fields
    (:class:`~quietlens.engine.catalogue.ModelEntry` minus file and sha256): a list of (path, fields).
    ``radii``: receptive fields by role where known (see :func:`bsn.entry_fields`)."""
    from . import bsn

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for role, module in result.modules.items():
        model_id = LEVEL_ID if role == "level" else graph_id(family, role)
        path = folder / f"{model_id}.onnx"
        data = bsn.export_checked(module)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        extra = {"teacher": family} if role in STUDENT_ROLES else {}
        earlier = {k: result.summaries[f"{role}_{s}"] for k, s in (("pretraining", "pretrain"), ("level_tuning", "tune"))
                   if f"{role}_{s}" in result.summaries}
        fields_ = bsn.entry_fields(module, model_id, LEVEL_ID if role == "level" else method, {
            **provenance, **extra, "role": role, "training": result.summaries.get(role, {}), **earlier},
            receptive_field=(radii or {}).get(role))
        cfg = provenance.get("config")
        if cfg is not None and role != "level":  # how the engine must run it (see engine.methods.bsn)
            inference = fields_["provenance"].setdefault("inference", {})
            inference["lowpass_sigma"] = cfg["lowpass_sigma"]
            plan = next((s for s in cfg["students"] if s["role"] == role), None)
            if plan is not None and plan["arch"].get("level"):
                inference["level_model"] = LEVEL_ID
            if plan is not None and plan["input"] == "srgb":
                inference["input"] = "srgb"
                for io_ in fields_["inputs"] + fields_["outputs"]:
                    io_["range"] = [0, 1]
        out.append((path, fields_))
    return out


# -- measuring through the engine ------------------------------------------------------------------

EVAL_ISOS = (400, 3200, 25600)  # full-frame-sensor ISO of the synthetic evaluation levels


def evaluation_sources(small: bool = False, crop: int | None = 256) -> dict[str, list[tuple]]:
    """What the evaluation sets are made of, from the shared data: the real dev pairs (``sidd``, ``cc``:
    (name, noisy, clean), whole) and the centre ``crop``² (None: whole) of the Kodak24 and McMaster
    originals (``kodak24``, ``mcmaster``: (name, image)). ``small``: two 128² crops of each."""
    from . import synth

    def centre(im: np.ndarray, side: int | None) -> np.ndarray:
        if side is None:
            return im
        y, x = max(0, (im.shape[0] - side) // 2), max(0, (im.shape[1] - side) // 2)
        return im[y:y + side, x:x + side]

    crop = 128 if small else crop
    out: dict[str, list] = {}
    for name, rows in synth.dev_pairs().items():
        out[name] = [(n, centre(a, 128 if small else None), centre(b, 128 if small else None))
                     for n, a, b in rows][: 2 if small else None]
    names, images = synth.clean_corpus_names("eval"), synth.clean_corpus("eval")
    for folder in ("kodak24", "mcmaster"):
        out[folder] = [(n.split("/")[-1], centre(im, crop)) for n, im in zip(names, images)
                       if f"/{folder}/" in n][: 2 if small else None]
    return out


def evaluation_rendering(image: np.ndarray, iso: float,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(noisy, clean, noise level) of a float RGB photo as the evaluation sets render it: a random camera
    at ``iso`` with lossless output (JPEG's own error would blur the measure)."""
    from . import synth

    settings = replace(synth.random_isp(rng, iso), jpeg=0)
    return synth.srgb_pair(image, rng, iso=iso, settings=settings)[:3]


def evaluation_sets(small: bool = False, crop: int | None = 256, seed: int = 1000,
                    sources: dict[str, list[tuple]] | None = None) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """Named lists of (image name, noisy, reference): the real dev pairs; the Kodak24 and McMaster crops
    through a random camera (seeded per image; lossless output, like the real sets: JPEG's own error would
    blur the measure) at each of :data:`EVAL_ISOS` (``small``: the middle one); and those originals as
    their own reference (``… clean``: a denoiser should pass them through). ``sources``: as
    :func:`evaluation_sources` returns them (default: read now)."""
    sources = sources if sources is not None else evaluation_sources(small, crop)
    sets: dict[str, list] = {name: list(sources[name]) for name in sources if name not in ("kodak24", "mcmaster")}
    for folder in ("kodak24", "mcmaster"):
        own = [(n, _float(im)) for n, im in sources[folder]]
        for iso in EVAL_ISOS[1:2] if small else EVAL_ISOS:
            sets[f"{folder} ISO {iso}"] = [
                (n, *evaluation_rendering(im, iso, np.random.default_rng([seed, iso, i]))[:2])
                for i, (n, im) in enumerate(own)]
        sets[f"{folder} clean"] = [(n, im, im) for n, im in own]
    return sets


def scores(reference: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    """PSNR (dB, data range 1) and SSIM of ``image`` against ``reference``, both HWC in [0, 1]."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    image = np.clip(image, 0, 1)
    return (float(peak_signal_noise_ratio(reference, image, data_range=1)),
            float(structural_similarity(reference, image, channel_axis=2, data_range=1)))


def _write_png16(path: Path, image: np.ndarray) -> None:
    import cv2

    cv2.imwrite(str(path), np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)[..., ::-1])


def _read_png16(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float32) / 65535


def engine_metrics(graphs: list[tuple[Path, dict]], sets: dict[str, list], log: Progress = no_progress,
                   provider: str = "cpu") -> dict[str, dict]:
    """Metrics per model id of freshly exported denoisers, measured through the product itself: the graphs
    are registered in a private user data folder, every set of :func:`evaluation_sets` is written as
    16-bit PNGs (8-bit values stay exact) and denoised by ``quietlens batch --method M --model FAMILY
    --param network=ROLE`` in a child process — the engine's whole path, low-pass step and all. Per set:
    mean PSNR and SSIM, and the worst image's PSNR gain over its input (``clean`` sets: the worst PSNR of
    the output against the untouched original)."""
    import subprocess
    import sys
    import tempfile

    from quietlens.engine import catalogue

    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="quietlens-eval-") as tmp:
        root = Path(tmp)
        for path, fields_ in graphs:
            catalogue.add(root / "userdata" / "models", path, fields_)
        for name, items in sets.items():
            folder = root / "in" / name.replace(" ", "_")
            folder.mkdir(parents=True)
            for i, (_, noisy, _) in enumerate(items):
                _write_png16(folder / f"{i:03d}.png", noisy)
        env = {**os.environ, "QUIETLENS_DATA": str(root / "userdata")}
        for path, fields_ in graphs:
            model_id, role = fields_["id"], fields_["provenance"]["role"]
            if role not in ROLES:  # a helper graph (a level network): measured through those that use it
                continue
            family = catalogue.ModelEntry(model_id, path.name, "0" * 64, fields_["method"], "photo").family
            done = root / "out" / model_id
            cmd = [sys.executable, "-m", "quietlens.engine.cli", "batch", str(root / "in"), "-o", str(done),
                   "--method", fields_["method"], "--model", family, "--param", f"network={role}",
                   "--provider", provider, "-q"]
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if run.returncode:
                raise QuietLensError(f"measuring {model_id} through `quietlens batch` failed: "
                                     f"{(run.stderr or run.stdout).strip()[-600:]}")
            row = {}
            for name, items in sets.items():
                outs = [_read_png16(done / name.replace(" ", "_") / f"{i:03d}.png") for i in range(len(items))]
                s = [scores(ref, o) for (_, _, ref), o in zip(items, outs)]
                key = "worst_psnr_vs_input" if name.endswith("clean") else "worst_gain_db"
                gain = [p if name.endswith("clean") else p - scores(ref, noisy)[0]
                        for (_, noisy, ref), (p, _) in zip(items, s)]
                row[name] = {"psnr": round(float(np.mean([p for p, _ in s])), 2),
                             "ssim": round(float(np.mean([q for _, q in s])), 4), key: round(float(min(gain)), 2)}
            out[model_id] = row
            log(1.0, f"measured {model_id}: " + ", ".join(f"{k} {v['psnr']:.2f}" for k, v in row.items()))
    return out


# -- adaptation to a user's photos -----------------------------------------------------------------

FINE_TUNE_LR = 5e-4  # at most: a CPU budget of minutes allows ~100 teacher steps, so they must count
TEACHER_SHARE, STUDENT_SHARE = 0.6, 0.3  # of what a time budget leaves after the fixed costs, as planned
MIN_TRAINING_SHARE = 0.2  # of a time budget, left after its fixed costs: less is refused
EXPORT_SHARE = 0.03  # of a time budget, kept for the export (C-BSN's three graphs: ~1 s on a CPU)
STUDENT_STEPS_PER_TEACHER_STEP = 2  # with a step budget, per student
# Batches at most on a CPU (the cpu profile's). Crops stay the base's: the GPU teacher adapted on the cpu
# profile's 80² lost 0.6 dB on the Canon pairs in 26 steps, on its own 120² it kept its quality (README).
CPU_BATCHES = {"teacher": 4, "student": 8}
ANCHOR_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "brick",
                  "grass", "gravel", "camera")  # scikit-image photographs every installation has


def base_weights(entries: dict[str, Any], method: str) -> tuple[PhotoConfig, dict[str, dict]]:
    """The recorded config and the state dicts (by role) of a model family's sha256-verified graphs
    (``entries``: role → (manifest entry, graph bytes))."""
    from . import bsn
    from .bsn import DBSN, INFERENCE, BSNConfig, Student, StudentConfig

    entry, data = entries["teacher"]
    recorded = entry.provenance.get("config")
    if recorded is None:
        raise QuietLensError(f"model {entry.id!r} does not record its training config; it cannot be fine-tuned "
                             f"(start from the shipped {method} model)")
    cfg = PhotoConfig.from_dict(recorded)
    # Each student as its own entry records it: a family's students may come from another run than its
    # teacher (the shipped C-BSN: GPU teacher, CPU students told the noise level), and a teacher trained
    # on alone (profile gpu-teacher) records no students at all.
    own = {role: PhotoConfig.from_dict(entries[role][0].provenance["config"]) for role in STUDENT_ROLES
           if role in entries and "config" in entries[role][0].provenance}
    planned = {p.role: p for p in cfg.students}
    plans = tuple(own[role].student(role) if role in own else planned[role] for role in STUDENT_ROLES
                  if role in own or role in planned)
    told = [own[p.role].level for p in plans if p.level and p.role in own]
    cfg = replace(cfg, students=plans, level=cfg.level or (told[0] if told else None))
    states = {"teacher": bsn.load_weights_from_onnx(INFERENCE[method](DBSN(BSNConfig(**cfg.teacher))),
                                                           data).net.state_dict()}
    for plan in cfg.students:
        if plan.role in entries:
            states[plan.role] = bsn.load_weights_from_onnx(Student(StudentConfig(**plan.arch)),
                                                                  entries[plan.role][1]).state_dict()
    return cfg, states


def output_seconds(teacher: tuple[Any, bytes], images: list[np.ndarray], device: str,
                   band_sigma: float | None, spaces: int = 1) -> float:
    """About how long :func:`run` takes for the ``teacher``'s (manifest entry, graph bytes) outputs on
    ``images`` in ``spaces`` input spaces on a CPU: its graph timed on a centre crop of the first photo
    (at most 384²: the halo weighs more on it than on a larger photo, so the estimate errs high), scaled
    by the pixels. On a GPU it is negligible beside the training steps: 0."""
    if device.startswith("cuda"):
        return 0.0
    entry, data = teacher
    graph = GraphTeacher(data, entry.receptive_field, entry.tile_multiple, bytes_per_pixel=entry.bytes_per_pixel)
    h, w = images[0].shape[:2]
    side = min(384, h, w)
    crop = images[0][(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    start = time.perf_counter()
    teacher_outputs(graph, [crop], band_sigma=band_sigma)
    return spaces * (time.perf_counter() - start) * sum(im.shape[0] * im.shape[1] for im in images) / side**2


def adaptation_config(base: PhotoConfig, images: list[np.ndarray], *, seed: int, teacher_steps: int,
                      student_steps: dict[str, int], device: str = "cpu") -> PhotoConfig:
    """The base model's config turned into a fine-tuning run on the user's photos: the teacher starts
    from the base weights with the method's self-supervised loss on the photos alone (C-BSN keeps its
    supervised anchor on synthetic pairs from scikit-image's photographs), every student is distilled
    again from its base weights, to the adapted teacher as the engine finishes it (``targets="engine"``:
    SDAP's raw teacher output smooths the detail of low-noise photos); crops shrink to fit the smallest
    photo, and on a CPU batches to
    :data:`CPU_BATCHES` (a base trained on a GPU records GPU-sized ones: minutes would buy a few steps)."""
    small = min(min(im.shape[:2]) for im in images)
    cpu = not device.startswith("cuda")

    def fit_crop(p: Phase, multiple: int, steps: int, kind: str) -> Phase:
        batch = min(p.batch, CPU_BATCHES[kind]) if cpu else p.batch
        crop = min(p.crop, small) // multiple * multiple
        if crop < 2 * multiple:
            raise QuietLensError(f"the training photos are too small ({small} px; at least {2 * multiple} needed)")
        # continue at the rate the base ended with: a converged network is knocked back by a larger one;
        # no warm-up (a base's 500 steps would outlast the run; a quarter of the steps did not help, README)
        return replace(p, batch=batch, crop=crop, steps=steps, lr=min(p.lr * 0.5 ** p.halvings, FINE_TUNE_LR),
                       halvings=1, warmup=0)

    from .bsn import StudentConfig

    students = tuple(replace(s, pretrain=replace(s.pretrain, steps=0),
                             distil=fit_crop(s.distil, 2 ** StudentConfig(**s.arch).levels, student_steps[s.role],
                                             "student"))
                     for s in base.students)
    return replace(base, train=fit_crop(base.train, 10, teacher_steps, "teacher"), students=students, init="base",
                   real_share=1.0, ramp=0.0, seed=seed, checkpoint_every=25, bank=0, targets="engine")


def shipped_level_net(entry: Any = None):
    """The installed level network (:data:`LEVEL_ID`; or the manifest ``entry`` given), read back from
    its sha256-verified graph."""
    from quietlens.engine import catalogue

    from .bsn import LevelConfig, LevelNet, load_weights_from_onnx

    entry = entry or catalogue.entry(LEVEL_ID)
    net = LevelNet(LevelConfig(**entry.provenance.get("architecture", {})))
    return load_weights_from_onnx(net, catalogue.verified_bytes(entry)).eval()


def anchor_corpus(images: list[np.ndarray]) -> Corpus:
    """The user's noisy photos plus clean scikit-image photographs for the supervised anchor terms."""
    from .synth import skimage_photo

    return Corpus(clean=[skimage_photo(n) for n in ANCHOR_SOURCES], noisy=images,
                  source={"anchor": "scikit-image: " + ", ".join(ANCHOR_SOURCES)})


def adapt(method: str, images: list[np.ndarray], base_entries: dict[str, Any], *, name: str, workdir: Path,
          inputs: dict, minutes: float | None, steps: int | None, device: str, seed: int,
          register: Callable[[Path, dict], Any], provenance: dict, progress: Progress = no_progress,
          cancel: CancelToken | None = None) -> list:
    """Fine-tune a model family on noisy photos and register its graphs as ``name`` (teacher),
    ``name.student`` and ``name.fast`` with ``register(path, fields)``.

    The step counts are fixed first — ``steps`` for the teacher (each student twice as many), or a time
    budget of ``minutes`` turned into steps by timing a few, the students' once the teacher is trained
    (from the time it left) — and saved with ``inputs`` (what the result depends on) in
    ``workdir/plan.json``: the same command after an interruption finds the plan and resumes from the
    checkpoints."""
    cancel = cancel or CancelToken()
    base_cfg, states = base_weights(base_entries, method)
    level_net = shipped_level_net() if any(s.level for s in base_cfg.students) else None
    corpus = anchor_corpus(images)
    plan_path = workdir / "plan.json"
    roles = [s.role for s in base_cfg.students]
    plan, deadline = None, None  # deadline: when the students must end (a run planned here from minutes)
    if plan_path.is_file():
        try:
            saved = json.loads(plan_path.read_text())
            plan = saved if saved.get("inputs") == inputs else None
        except ValueError:
            plan = None
    if plan is None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        if steps is not None:
            plan = {"teacher_steps": steps, "student_steps": {r: steps * STUDENT_STEPS_PER_TEACHER_STEP for r in roles}}
        else:
            budget = 60.0 * (minutes if minutes is not None else 10.0)
            started = time.perf_counter()
            progress(0.02, "timing a few training steps")
            probe = adaptation_config(base_cfg, images, seed=seed, teacher_steps=1, student_steps={r: 1 for r in roles},
                                      device=device)
            network, making = step_seconds(probe, device), batch_seconds(probe, corpus, level_net)
            secs = {k: network[k] + making[k] for k in network}
            # what does not scale with the steps comes off the budget first: this timing, and the teacher's
            # output on every photo (SDAP's: about 10 s per 512² photo on a 2-core CPU)
            outputs = output_seconds(base_entries["teacher"], images, device, base_cfg.lowpass_sigma,
                                     len({s.input for s in base_cfg.students}))
            fixed = time.perf_counter() - started + outputs  # the estimate's own run is spent too
            left = budget - fixed
            if left < MIN_TRAINING_SHARE * budget:
                need = math.ceil(fixed / (1 - MIN_TRAINING_SHARE) / 60)
                raise QuietLensError(f"{budget / 60:g} minutes are too few for {len(images)} photo(s): timing the "
                                     f"steps and the teacher's output on them take {fixed / 60:.1f} minutes before "
                                     f"any training; give at least {need} minute{'s' * (need > 1)} (or fewer photos)")
            # the students' steps are counted once the teacher is trained, from the time it leaves: a
            # teacher step's timing is the least sure (one or two 4-s steps), its error goes to the students
            plan = {"teacher_steps": max(1, int(TEACHER_SHARE * left / secs["teacher"])), "student_steps": None,
                    "student_seconds": STUDENT_SHARE * left, "step_seconds": secs}
            deadline = started + budget - outputs - EXPORT_SHARE * budget
        plan["inputs"] = inputs
        workdir.mkdir(parents=True, exist_ok=True)
        plan_path.write_text(json.dumps(plan, indent=2))
    cfg = adaptation_config(base_cfg, images, seed=seed, teacher_steps=plan["teacher_steps"],
                            student_steps=plan["student_steps"] or {r: 0 for r in roles}, device=device)
    start = time.perf_counter()
    split = 0.05 + 0.9 * TEACHER_SHARE / (TEACHER_SHARE + STUDENT_SHARE)  # the bar: the teacher's part
    trained = run(replace(cfg, students=()), corpus, workdir / "checkpoints", base=states, device=device,
                  progress=sub_progress(progress, 0.05, split), cancel=cancel)
    if plan["student_steps"] is None:
        # a resumed run has lost the clock it was planned on: it takes the seconds planned up front
        seconds = plan["student_seconds"] if deadline is None else max(0.0, deadline - time.perf_counter())
        plan["student_steps"] = {r: max(1, int(seconds / len(roles) / plan["step_seconds"][r])) for r in roles}
        plan_path.write_text(json.dumps(plan, indent=2))
        cfg = adaptation_config(base_cfg, images, seed=seed, teacher_steps=plan["teacher_steps"],
                                student_steps=plan["student_steps"], device=device)
    distilled = run(cfg, corpus, workdir / "checkpoints", base=states, device=device, teacher=trained.modules["teacher"],
                    progress=sub_progress(progress, split, 0.95), cancel=cancel, level_net=level_net)
    result = Result({"teacher": trained.modules["teacher"], **distilled.modules},
                    {**trained.summaries, **distilled.summaries})
    progress(0.95, "exporting")
    cancel.check()
    prov = {**provenance, "config": cfg.to_dict(), "wall_seconds": round(time.perf_counter() - start, 1)}
    from . import bsn

    radii = {role: entry.receptive_field for role, (entry, _) in base_entries.items()  # the base's, if the same
             if role in result.modules and entry.provenance.get("architecture") == bsn.architecture(result.modules[role])}
    graphs = export(result, name, method, prov, workdir / "graphs", radii)
    registered = [register(path, fields_) for path, fields_ in graphs]
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    progress(1.0, f"registered {', '.join(e.id for e in registered)}")
    return registered
