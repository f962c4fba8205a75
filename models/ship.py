"""Reproduce every shipped photo graph with one command, on a CPU or a GPU.

    python -m quietlens.models.ship prepare --profile gpu --data ship-data/gpu.npz   # pack the training crops
    python -m quietlens.models.ship --profile gpu --only cbsn sdap --data ship-data/gpu.npz --out DIR \
        --device cuda --workers 15 --minutes 7 --skip-metrics                      # the teachers, on a GPU
    python -m quietlens.models.ship evaluate --profile gpu --data ship-data/gpu.npz --out DIR   # measure them
    python -m quietlens.models.ship --profile cpu-distil --teachers DIR --only cbsn sdap   # the students
    python -m quietlens.models.ship --profile cpu-refine --teachers DIR --base DIR --only cbsn   # C-BSN's, refined
    python -m quietlens.models.ship --profile gpu-teacher --base assets/models --data ship-data/gpu.npz --out DIR \
        --device cuda --workers 15 --minutes 7 --skip-metrics    # C-BSN's teacher trained on, then cpu-refine
    python -m quietlens.models.ship --profile smoke --out /tmp/smoke               # a minute-long check
    python -m quietlens.models.ship --profile gpu --estimate                       # step costs, no training

``prepare`` packs the training data into one .npz (lossless PNG crops of the clean corpus and of the real
noisy photos, :mod:`quietlens.models.synth`); the ``gpu`` profile's pack stays under 50 MiB so that it
travels with the code to a GPU machine that has no shared data (synthesis runs there, in ``--workers``
processes). Without ``--data`` the command prepares its pack in the work folder first.

Each recipe in :data:`RECIPES` (name → profiles → config, and the function that trains and exports)
writes its graphs into ``--out``; the command then measures every graph through the engine's own
inference path (:func:`quietlens.models.recipe.engine_metrics`: the graphs registered in a private
user folder, ``pipeline.denoise`` on the dev pairs and the evaluation sets) and records recipe, data,
seed, steps, hardware, timings and those metrics in ``--out``/manifest.json (through the one manifest
writer, :func:`quietlens.engine.catalogue.add`). Checkpoints in ``--work`` make an interrupted run
resumable: run the same command again.

Adding a recipe (e.g. YOND's ``snrnet-raw``): an entry ``RECIPES[name] = Recipe(configs, train)`` where
``train(config, ctx)`` trains on ``ctx.data`` (its ``clean`` crops serve raw synthesis as well, through
:func:`quietlens.models.synth.raw_pair`), writes ONNX files into ``ctx.out`` and returns
``[(path, manifest fields without file and sha256)]``, an optional ``evaluate(graphs, ctx)`` returns
metrics per model id, and an optional ``estimate(config, workers, step_floor)`` its GPU time for
``--estimate``; :func:`main` does the rest. ``snrnet-raw`` (:mod:`quietlens.models.train_snrnet`) is one:
its GPU profile is a run of its own (``--only snrnet-raw``, about 1.5 min), as the photo networks fill
one 9-minute run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quietlens.engine import catalogue

from . import recipe, train_snrnet
from .recipe import Phase, PhotoConfig, StudentPlan

REPO = Path(__file__).resolve().parents[1]
MAX_FILES, MAX_FILE_MIB, GPU_DATA_MIB = 8, 16, 50
PROFILES = ("smoke", "cpu", "cpu-distil", "cpu-refine", "gpu", "gpu-teacher")
GPU_PROFILES = ("gpu", "gpu-teacher")  # what one GPU lease runs: a pack that travels, few files back


# -- the photo recipes per profile -----------------------------------------------------------------

def _plan(role: str, arch: dict, pretrain: Phase, distil: Phase, anchor: float = 1.0,
          tune: Phase | None = None) -> StudentPlan:
    level = {"level": 1} if tune is not None else {}
    return StudentPlan(role, {"channels": 3, **arch, **level}, pretrain, distil, anchor, tune=tune)


STUDENT = {"width": 32, "full": 16, "levels": 3, "depth": 2}  # the CPU default (see bench_student_sizes.py)
FAST = {"width": 16, "full": 0, "levels": 3, "depth": 2}  # ≥ 2 MP/s for batch and previews
DISTIL_ANCHOR = 2.0  # weight of the supervised term when distilling from a GPU teacher (README: 1, 2 and 4 measured)
# C-BSN's CPU student is told the noise level (FFDNet's knob, set by the level network; README): the
# plain pretrained student learns the level input in TUNE, the level network trains in LEVEL.
TUNE = Phase(4000, 8, 96, 3e-4, 2)
LEVEL = Phase(2800, 8, 96, 1e-3, 2)
GPU_TUNE = Phase(4000, 64, 128, 3e-4, 2)  # the same steps on the GPU profile's batches
# cpu-refine: the C-BSN student (--base) distilled on, its supervised crops told mismatched levels half the
# time (StudentPlan.mismatch), so that noise_scale acts both ways and low-noise photos keep their detail.
REFINE = Phase(1000, 8, 96, 1.5e-4, 1)  # continues at the rate the cpu-distil phase ended with
# The fast student (plain in --base) is told the level too: TUNE teaches it the level input, then it distils.
FAST_REFINE = Phase(1000, 8, 96, 3e-4, 1)
MISMATCH = (0.5, 0.5, 2.0)
GPU_LEVEL = Phase(2800, 64, 128, 1e-3, 2)
# gpu-teacher: C-BSN's teacher trained on from --base's (a 9-minute gpu run stops it at about 2,150 of its
# 9,000 steps), the whole lease to it: restarted at half the gpu profile's rate after a warm-up, its
# invariance terms on at once. Its students are then distilled on with cpu-refine; a smaller bank leaves
# the teacher more time.
TEACHER_ON = Phase(9000, 16, 120, 2e-4, 2, warmup=500)
TEACHER_ON_BANK = 60_000


def photo_configs(method: str) -> dict[str, PhotoConfig]:
    """The shipped recipe of ``method`` per profile. The students' pretraining is the same for C-BSN and
    SDAP (trained once per run, see :func:`quietlens.models.recipe.run`)."""
    cbsn = method == "cbsn"
    common = dict(supervised=1.0 if cbsn else 0.0, real_share=0.5, ramp=0.3 if cbsn else 0.0, seed=0)
    # cpu-refine: the students of --base, all told the level (a plain one tuned first), half their supervised
    # crops told mismatched levels. C-BSN's are distilled on; SDAP's stay undistilled (its teacher is under them).
    refine = {"student": REFINE, "fast": FAST_REFINE} if cbsn else {"student": Phase(0, 8, 96, 3e-4, 1),
                                                                  "fast": Phase(0, 8, 96, 3e-4, 1)}
    refined = tuple(replace(_plan(role, arch, Phase(10000, 8, 96, 1e-3, 2), refine[role],
                                  DISTIL_ANCHOR if cbsn else 1.0, tune=TUNE), mismatch=MISMATCH)
                    for role, arch in (("student", STUDENT), ("fast", FAST)))
    teacher_on = {"gpu-teacher": PhotoConfig(method, {"width": 64, "modules": 9}, TEACHER_ON, (), checkpoint_every=1000,
                                             bank=TEACHER_ON_BANK, bank_side=128, init="base", **{**common, "ramp": 0.0})}
    return {
        **(teacher_on if cbsn else {}),
        "smoke": PhotoConfig(method, {"width": 12, "modules": 1}, Phase(4, 2, 40, 1e-3), (
            _plan("student", {"width": 8, "full": 4, "levels": 2, "depth": 1}, Phase(4, 2, 32, 1e-3), Phase(3, 2, 32, 1e-3),
                  tune=Phase(3, 2, 32, 1e-3) if cbsn else None),
            _plan("fast", {"width": 4, "full": 0, "levels": 2, "depth": 1}, Phase(4, 2, 32, 1e-3), Phase(3, 2, 32, 1e-3)),
        ), checkpoint_every=2, bank=32, bank_side=64, level=Phase(3, 2, 32, 1e-3) if cbsn else None, **common),
        # No distillation on a CPU: a 1,000-step teacher is worse than the supervised students (distilling
        # the C-BSN student from it cost 0.9 dB on the Canon pairs and 12 dB on clean Kodak photos).
        "cpu": PhotoConfig(method, {"width": 32, "modules": 9}, Phase(1000, 4, 80, 5e-4, 2), (
            _plan("student", STUDENT, Phase(10000, 8, 96, 1e-3, 2), Phase(0, 8, 96, 3e-4, 1), tune=TUNE if cbsn else None),
            _plan("fast", FAST, Phase(10000, 8, 96, 1e-3, 2), Phase(0, 8, 96, 3e-4, 1)),
        ), checkpoint_every=50, level=LEVEL if cbsn else None, **common),
        # The CPU students distilled from a GPU run's teacher graph (--teachers DIR): C-BSN's teacher is worth it
        # on real noise; the anchor keeps what the supervised pretraining gives low-noise photos. SDAP's
        # teacher stays below the students on the Canon pairs: its students are not distilled.
        "cpu-distil": PhotoConfig(method, {"width": 64, "modules": 9}, Phase(9000, 16, 120, 4e-4, 3), (
            _plan("student", STUDENT, Phase(10000, 8, 96, 1e-3, 2), Phase(1500 if cbsn else 0, 8, 96, 3e-4, 1), DISTIL_ANCHOR,
                  tune=TUNE if cbsn else None),
            _plan("fast", FAST, Phase(10000, 8, 96, 1e-3, 2), Phase(1500 if cbsn else 0, 8, 96, 3e-4, 1), DISTIL_ANCHOR),
        ), checkpoint_every=50, level=LEVEL if cbsn else None, **common),
        "cpu-refine": PhotoConfig(method, {"width": 64, "modules": 9}, Phase(9000, 16, 120, 4e-4, 3), refined,
                                  checkpoint_every=50, level=LEVEL, **common),
        "gpu": PhotoConfig(method, {"width": 64, "modules": 9}, Phase(9000, 16, 120, 4e-4, 3), (
            _plan("student", STUDENT, Phase(10000, 64, 128, 1e-3, 3), Phase(3000, 64, 128, 3e-4, 2), tune=GPU_TUNE),
            _plan("fast", FAST, Phase(10000, 64, 128, 1e-3, 3), Phase(3000, 64, 128, 3e-4, 2), tune=GPU_TUNE),
        ), checkpoint_every=1000, bank=200_000, bank_side=128, level=GPU_LEVEL, **common),
    }


# -- the registry ----------------------------------------------------------------------------------

@dataclass
class Context:
    """What a recipe's training function gets."""

    profile: str
    data: "Prepared"
    out: Path
    work: Path
    device: str
    workers: int
    log: Callable[[float, str], None]
    provenance: dict = field(default_factory=dict)  # common fields for every entry (hardware, data, command)
    budget: recipe.Budget | None = None  # --minutes: the photo networks' phases share it
    teachers: Path | None = None  # --teachers: the photo recipes distil from these graphs
    base: Path | None = None  # --base: the students start from these graphs (and their level network)


@dataclass(frozen=True)
class Recipe:
    configs: dict[str, Any]  # profile → config
    train: Callable[[Any, Context], list[tuple[Path, dict]]]
    evaluate: Callable[[list[tuple[Path, dict]], Context], dict[str, dict]] | None = None
    # (config, GPU workers, step floor) → [(phase, estimated seconds)], for recipes that are not PhotoConfigs
    estimate: Callable[[Any, int, float], list[tuple[str, float]]] | None = None


def _train_photo(method: str) -> Callable[[PhotoConfig, Context], list[tuple[Path, dict]]]:
    def train(cfg: PhotoConfig, ctx: Context) -> list[tuple[Path, dict]]:
        corpus = ctx.data.corpus()
        given, teacher = [], None
        if ctx.teachers is not None:  # distil from a teacher graph trained elsewhere; it ships as it was
            path, fields_ = teacher_graph(ctx.teachers, method)
            given = [(path, fields_)]
            teacher = recipe.GraphTeacher(path, fields_["receptive_field"], fields_["tile_multiple"])
        base, level_net, based = _base_students(ctx.base, method, cfg) if ctx.base is not None else ({}, None, {})
        result = recipe.run(cfg, corpus, ctx.work / method, shared=ctx.work, device=ctx.device, workers=ctx.workers,
                            progress=ctx.log, budget=ctx.budget, teacher=teacher, base=base, level_net=level_net)
        prov = {**ctx.provenance, "config": cfg.to_dict(), "data": {**ctx.provenance.get("data", {}),
                                                                     **corpus.source},
                **({"base_graphs": based} if based else {})}
        if given:
            prov["teacher_graph"] = {"file": given[0][0].name, "sha256": hashlib.sha256(given[0][0].read_bytes()).hexdigest(),
                                     "command": given[0][1]["provenance"].get("command")}
        return given + recipe.export(result, method, method, prov, ctx.out)
    return train


def _base_students(folder: Path, method: str, cfg: PhotoConfig) -> tuple[dict, Any, dict]:
    """``cfg``'s students as ``folder``'s graphs of ``method`` hold them (state dicts by role, in place of
    their pretraining) and its teacher when ``cfg`` starts the teacher from the base's, the level network
    beside them (when a student is told the level), and what they were (file, sha256, the command that
    made them) for the provenance."""
    entries = catalogue.read(folder / "manifest.json")
    roles = {"teacher": method, **{p.role: catalogue.graph_id(method, p.role) for p in cfg.students}}
    missing = [i for i in roles.values() if i not in entries]
    if missing:
        raise SystemExit(f"{folder}: no {', '.join(missing)} in its manifest (--base needs the {method} family)")
    found = {role: (entries[i], catalogue.verified_bytes(entries[i])) for role, i in roles.items()}
    recorded, states = recipe.base_weights(found, method)
    trains_on = cfg.init == "base"
    if trains_on and recorded.teacher != cfg.teacher:
        raise SystemExit(f"{folder}: its {method} teacher is {recorded.teacher}, the recipe's {cfg.teacher}")
    level = None
    if any(p.level for p in cfg.students):
        if recipe.LEVEL_ID not in entries:
            raise SystemExit(f"{folder}: no {recipe.LEVEL_ID} graph for the students told the noise level")
        level = recipe.shipped_level_net(entries[recipe.LEVEL_ID])
    based = {entries[i].id: {"file": entries[i].file, "sha256": entries[i].sha256,
                             "command": entries[i].provenance.get("command")}
             for role, i in roles.items() if role != "teacher" or trains_on}
    wanted = (["teacher"] if trains_on else []) + [p.role for p in cfg.students]
    return {role: states[role] for role in wanted}, level, based


def folder_graphs(folder: Path) -> dict[str, tuple[Path, dict]]:
    """The graphs ``folder``/manifest.json lists (a shipping run's --out): id → (graph, manifest fields
    without file and sha256, as :func:`quietlens.engine.catalogue.add` takes them back)."""
    return {model_id: (entry.path, {k: v for k, v in entry.to_json().items() if k not in ("file", "sha256")})
            for model_id, entry in catalogue.read(folder / "manifest.json").items()}


def teacher_graph(folder: Path, method: str) -> tuple[Path, dict]:
    """The teacher graph of ``method`` in ``folder`` (a shipping run's --out) and its manifest fields."""
    found = folder_graphs(folder).get(method)
    if found is None or found[1]["provenance"].get("role") != "teacher":
        raise SystemExit(f"{folder}: no {method} teacher graph in its manifest")
    return found


def _evaluate_photo(graphs: list[tuple[Path, dict]], ctx: Context) -> dict[str, dict]:
    sets = recipe.evaluation_sets(sources=ctx.data.evaluation_sources())
    ids = {f["id"] for _, f in graphs}
    if recipe.LEVEL_ID not in ids and (ctx.out / "manifest.json").is_file():  # the students' level network
        graphs = [*graphs, *(g for i, g in folder_graphs(ctx.out).items() if i == recipe.LEVEL_ID)]
    return recipe.engine_metrics(graphs, sets, log=ctx.log)


RECIPES: dict[str, Recipe] = {
    **{m: Recipe(photo_configs(m), _train_photo(m), _evaluate_photo) for m in recipe.METHODS},
    # YOND's raw denoiser: trained on the pack's clean crops through synth.raw_pair (no data of its own)
    "snrnet-raw": Recipe(train_snrnet.CONFIGS, train_snrnet.ship_train, train_snrnet.ship_evaluate,
                         train_snrnet.estimate),
}


# -- prepared data -------------------------------------------------------------------------------

def _pack(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    blobs = [np.frombuffer(cv2.imencode(".png", im[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])[1], np.uint8)
             for im in images]
    offsets = np.cumsum([0] + [b.size for b in blobs]).astype(np.int64)
    return (np.concatenate(blobs) if blobs else np.zeros(0, np.uint8)), offsets


def _unpack(data: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    import cv2

    return [np.ascontiguousarray(cv2.imdecode(data[a:b], cv2.IMREAD_COLOR)[..., ::-1])
            for a, b in zip(offsets[:-1], offsets[1:])]


PREPARE = {  # profile → (clean crop side, crops per clean photo, real crop side, crops per real photo, MiB cap)
    "cpu-distil": (0, 0, 0, 0, None),  # the cpu profile's pack (same pretraining)
    "cpu-refine": (0, 0, 0, 0, None),
    "smoke": (96, 1, 96, 1, 2),
    "cpu": (0, 0, 0, 0, None),  # whole photos, no cap
    "gpu": (192, 3, 256, 2, GPU_DATA_MIB),
}
PREPARE["gpu-teacher"] = PREPARE["gpu"]  # the same pack


def _crops(images: list[np.ndarray], side: int, per: int, rng: np.random.Generator) -> list[np.ndarray]:
    if not side:
        return images
    out = []
    for im in images:
        h, w = im.shape[:2]
        if min(h, w) < side:
            continue
        for _ in range(per):
            y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            out.append(im[y:y + side, x:x + side])
    return out


def prepare(profile: str, path: Path, seed: int = 0, log: Callable[[str], None] = print) -> Path:
    """Pack the data of ``profile`` into one .npz at ``path``: 8-bit PNG crops of the clean training corpus
    (train split) and of the real noisy photos, within the profile's size cap, and the evaluation sources
    (:func:`quietlens.models.recipe.evaluation_sources`), so that the command needs no shared data."""
    from . import synth

    side, per, rside, rper, cap = PREPARE[profile]
    rng = np.random.default_rng(seed)
    to8 = lambda im: np.round(np.clip(im, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    clean = [to8(im) for im in _crops(synth.clean_corpus("train"), side, per, rng)]
    noisy = [to8(im) for im in _crops([im for _, im in synth.real_noisy()], rside, rper, rng)]
    if profile == "smoke":
        clean, noisy = clean[::20], noisy[::12]
    sources = recipe.evaluation_sources(small=profile == "smoke")
    names = {k: [row[0] for row in rows] for k, rows in sources.items()}
    eval_images = [to8(im) for rows in sources.values() for row in rows for im in row[1:]]
    eb, eo = _pack(eval_images)
    cb, co = _pack(clean)
    nb, no = _pack(noisy)
    if cap is not None:  # drop training crops evenly until the pack fits
        while (cb.nbytes + nb.nbytes + eb.nbytes) / 2**20 > cap - 0.5:
            clean, noisy = clean[: int(len(clean) * 0.95)], noisy[: int(len(noisy) * 0.97)]
            cb, co = _pack(clean)
            nb, no = _pack(noisy)
    meta = {"profile": profile, "seed": seed, "clean": len(clean), "noisy": len(noisy), "evaluation": names,
            "clean_sources": list(synth.TRAIN_FOLDERS) + ["scikit-image: " + ", ".join(synth.SKIMAGE_SOURCES)],
            "noisy_sources": list(synth.REAL_NOISY_FOLDERS),
            "crops": {"clean": side or "whole", "per_clean": per or 1, "noisy": rside or "whole", "per_noisy": rper or 1}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, clean=cb, clean_offsets=co, noisy=nb, noisy_offsets=no, evaluation=eb, evaluation_offsets=eo,
             meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    os.replace(tmp, path)
    log(f"packed {len(clean)} clean and {len(noisy)} real noisy crops into {path} "
        f"({path.stat().st_size / 2**20:.1f} MiB)")
    return path


@dataclass
class Prepared:
    path: Path

    def __post_init__(self):
        with np.load(self.path) as z:
            self.meta = json.loads(bytes(z["meta"]).decode())
            self._arrays = {k: z[k] for k in ("clean", "clean_offsets", "noisy", "noisy_offsets", "evaluation",
                                              "evaluation_offsets")}
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self._corpus = None

    def evaluation_sources(self) -> dict[str, list[tuple]]:
        """The packed evaluation sources, as :func:`quietlens.models.recipe.evaluation_sources` gives them."""
        images = iter(_unpack(self._arrays["evaluation"], self._arrays["evaluation_offsets"]))
        f = lambda im: im.astype(np.float32) / 255  # noqa: E731
        return {k: [(n, f(next(images)), f(next(images))) if k in ("sidd", "cc") else (n, f(next(images)))
                    for n in names] for k, names in self.meta["evaluation"].items()}

    def corpus(self) -> recipe.Corpus:
        if self._corpus is None:
            a = self._arrays
            self._corpus = recipe.Corpus(_unpack(a["clean"], a["clean_offsets"]), _unpack(a["noisy"], a["noisy_offsets"]),
                                         {"pack_sha256": self.sha256, **self.meta})
        return self._corpus


# -- estimates and hardware ----------------------------------------------------------------------

H200_TFLOPS = 150.0  # sustained fp16 conv throughput assumed for these small convolutions (~15 % of peak)
GPU_WORKERS = 15  # batch-making processes beside the training one on the GPU machine's 16 cores
STEP_FLOOR_S = 0.005  # a step's least time however small the network: kernel launches, optimiser, copies


def estimate(profile: str, names: list[str] | None = None) -> list[tuple[str, float]]:
    """(phase, estimated seconds on one H200) for every training phase of the profile: per step the larger
    of its multiply-adds (forward passes counted by hooks, backward ×2) over :data:`H200_TFLOPS` and
    :data:`STEP_FLOOR_S`; plus rendering the synthetic-pair bank, timed here per pair and spread over
    :data:`GPU_WORKERS`. Shared pretraining and the bank count once. ``names``: those recipes only."""

    def seconds(macs_per_step: float, steps: int) -> float:
        return steps * max(2 * macs_per_step / (H200_TFLOPS * 1e12), STEP_FLOOR_S)

    from .bsn import DBSN, BSNConfig, LevelNet, Student, StudentConfig, conv_macs_per_pixel
    from .synth import skimage_photo, srgb_pair

    rows, seen = [], set()
    for name, rec in RECIPES.items():
        cfg = rec.configs.get(profile)
        if names is not None and name not in names:
            continue
        if not isinstance(cfg, PhotoConfig):
            rows += rec.estimate(cfg, GPU_WORKERS, STEP_FLOOR_S) if cfg is not None and rec.estimate else []
            continue
        if cfg.bank and ("bank", cfg.bank, cfg.bank_side) not in seen:
            seen.add(("bank", cfg.bank, cfg.bank_side))
            photo, rng = skimage_photo("astronaut"), np.random.default_rng(0)
            start = time.process_time()
            for i in range(10):
                srgb_pair(photo[i * 30:i * 30 + cfg.bank_side, :cfg.bank_side], rng)
            per_pair = (time.process_time() - start) / 10
            rows.append((recipe.phase_name("bank"), cfg.bank * per_pair / GPU_WORKERS))
        if cfg.level is not None and ("level", json.dumps(cfg.level.__dict__)) not in seen:
            seen.add(("level", json.dumps(cfg.level.__dict__)))
            q = cfg.level
            rows.append((recipe.phase_name("level"), seconds(3 * conv_macs_per_pixel(LevelNet()) * q.batch * q.crop**2,
                                                             q.steps)))
        teacher = conv_macs_per_pixel(DBSN(BSNConfig(**cfg.teacher)))
        p = cfg.train
        # C-BSN: blind pass, non-blind pass, the invariance target at 1/4 of the pixels (no backward),
        # plus the supervised non-blind pass; SDAP: one blind pass over the 25 sub-images (= the crop)
        passes = (1 + 1 + 1 + 0.25 / 3) if name == "cbsn" else 1
        rows.append((recipe.phase_name("teacher", name), seconds(3 * passes * teacher * p.batch * p.crop**2, p.steps)))
        for plan in cfg.students:
            macs = conv_macs_per_pixel(Student(StudentConfig(**plan.arch)))
            key = json.dumps([plan.plain_arch, plan.pretrain.__dict__])
            if key not in seen:
                seen.add(key)
                q, plain = plan.pretrain, conv_macs_per_pixel(Student(StudentConfig(**plan.plain_arch)))
                rows.append((recipe.phase_name("pretrain", role=plan.role), seconds(3 * plain * q.batch * q.crop**2,
                                                                                    q.steps)))
                if plan.tune is not None:  # the level tuning is shared like the pretraining
                    q = plan.tune
                    rows.append((recipe.phase_name("tune", role=plan.role), seconds(3 * macs * q.batch * q.crop**2,
                                                                                    q.steps)))
            d = plan.distil
            rows.append((recipe.phase_name("distil", name, plan.role), seconds(3 * 2 * macs * d.batch * d.crop**2, d.steps)))
    return rows


def code_version() -> dict:
    """The commit the command runs from, whether the working tree differed from it, and a digest of the
    engine and models sources (what identifies the code where git is absent)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            run = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        except OSError:  # no git installed
            return ""
        return run.stdout.strip() if run.returncode == 0 else ""

    digest = hashlib.sha256()
    for path in sorted(p for folder in ("models", "engine") for p in (REPO / folder).rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return {"commit": git("rev-parse", "HEAD") or None, "modified": bool(git("status", "--porcelain", "--", "models", "engine")),
            "sources_sha256": digest.hexdigest()}


def hardware(threads: int, device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "gpu": gpu, "torch": torch.__version__,
            "load_average_at_start": [round(v, 1) for v in os.getloadavg()]}


# -- the command ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", nargs="?", choices=["train", "prepare", "evaluate"], default="train",
                    help="evaluate: measure the graphs in --out (as trained with --skip-metrics) into its manifest")
    ap.add_argument("--profile", choices=PROFILES, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "assets" / "models")
    ap.add_argument("--data", type=Path, help="the prepared .npz (default: prepared in the work folder)")
    ap.add_argument("--work", type=Path, help="checkpoints (default /tmp/quietlens-ship-PROFILE)")
    ap.add_argument("--only", nargs="*", choices=sorted(RECIPES), help="recipes to run (default: all)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="processes making batches (GPU: about the CPU cores)")
    ap.add_argument("--estimate", action="store_true", help="print the estimated H200 time of each phase and stop")
    ap.add_argument("--minutes", type=float, help="the photo networks' training phases share this wall-clock "
                    "time in proportion to their estimates, each stopping early (steps recorded) to fit")
    ap.add_argument("--skip-metrics", action="store_true", help="write the graphs unmeasured (then: evaluate)")
    ap.add_argument("--teachers", type=Path, help="a folder of teacher graphs (a gpu run's --out) to distil the "
                    "students from instead of training teachers (needed by cpu-distil); the teachers ship unchanged")
    ap.add_argument("--base", type=Path, help="a folder of graphs (a shipping run's --out, e.g. assets/models) whose "
                    "students the run starts from instead of pretraining them (needed by cpu-refine), and whose "
                    "teacher it trains on (needed by gpu-teacher)")
    args = ap.parse_args(argv)
    if args.estimate:
        total = 0.0
        for phase, seconds in estimate(args.profile, args.only):
            print(f"{phase:40s} {seconds / 60:6.2f} min")
            total += seconds
        print(f"{'total (at ' + str(H200_TFLOPS) + ' TFLOP/s)':40s} {total / 60:6.2f} min")
        return 0
    work = args.work or Path(f"/tmp/quietlens-ship-{'cpu' if args.profile == 'cpu-distil' else args.profile}")  # cpu-distil: the cpu pretraining
    if args.action == "prepare":
        prepare(args.profile, args.data or work / "data.npz")
        return 0
    if args.action == "train" and args.profile in ("cpu-distil", "cpu-refine") and args.teachers is None:
        raise SystemExit(f"--profile {args.profile} distils from given teachers: add --teachers DIR")
    if args.action == "train" and args.profile in ("cpu-refine", "gpu-teacher") and args.base is None:
        raise SystemExit(f"--profile {args.profile} continues from given graphs: add --base DIR")
    unknown = [n for n in args.only or [] if args.profile not in RECIPES[n].configs]
    if unknown:
        raise SystemExit(f"--profile {args.profile} has no recipe for {', '.join(unknown)}")
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(fraction: float, message: str = "") -> None:
        parts = message.split()
        step = int(parts[1].split("/")[0]) if len(parts) > 1 and parts[0] == "step" else 0
        if step % 50 == 0 or fraction >= 1 or not message.startswith("step"):
            print(f"{time.perf_counter() - started:8.0f} s  {message}", flush=True)

    data_path = args.data or work / "data.npz"
    if not data_path.is_file():
        prepare(args.profile, data_path)
    data = Prepared(data_path)
    if args.action == "evaluate":
        return evaluate_folder(args.out, data, args.profile, args.work or work, args.device, log, args.only)
    if args.profile in GPU_PROFILES and data_path.stat().st_size > GPU_DATA_MIB * 2**20:
        raise SystemExit(f"{data_path}: the GPU pack must stay under {GPU_DATA_MIB} MiB")
    args.out.mkdir(parents=True, exist_ok=True)
    command = (f"python -m quietlens.models.ship --profile {args.profile} --device {args.device} "
               f"--threads {args.threads} --workers {args.workers}"
               + (f" --only {' '.join(args.only)}" if args.only else "")
               + (f" --teachers {args.teachers.name}" if args.teachers else "")
               + (f" --base {args.base.name}" if args.base else ""))
    ctx = Context(args.profile, data, args.out, work, args.device, args.workers, log, teachers=args.teachers,
                  base=args.base, provenance={
        "script": "models/ship.py", "command": command, "profile": args.profile,
        "hardware": hardware(args.threads, args.device), "code": code_version(), "data": {"pack": data_path.name},
    })
    names = args.only or [n for n in RECIPES if args.profile in RECIPES[n].configs]
    if args.minutes:
        photo = [n for n in names if isinstance(RECIPES[n].configs[args.profile], PhotoConfig)]
        ctx.budget = recipe.Budget(args.minutes * 60, dict(estimate(args.profile, photo)))
        ctx.provenance["budget_minutes"] = args.minutes
    written = []
    for name in names:
        rec = RECIPES[name]
        t = time.perf_counter()
        graphs = rec.train(rec.configs[args.profile], ctx)
        wall = time.perf_counter() - t
        # a given teacher (--teachers) keeps its own record, measurements included
        trained = [g for g in graphs if g[0].parent.resolve() == args.out.resolve()]
        metrics = rec.evaluate(trained, ctx) if rec.evaluate and trained and not args.skip_metrics else {}
        for path, fields in graphs:
            data_bytes = path.read_bytes()
            if len(data_bytes) > MAX_FILE_MIB * 2**20:
                raise SystemExit(f"{path}: {len(data_bytes) / 2**20:.1f} MiB exceeds {MAX_FILE_MIB} MiB")
            prov = fields["provenance"]
            if (path, fields) in trained:
                prov = {**prov, "wall_seconds_this_run": round(wall, 1),
                        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                        "metrics": metrics.get(fields["id"], {})}
            written.append(catalogue.add(args.out, path, {**fields, "provenance": prov}))
            print(f"wrote {path} ({len(data_bytes) / 2**20:.2f} MiB)", flush=True)
    files = sorted(p.name for p in args.out.iterdir() if p.is_file() and not p.name.startswith("."))
    if args.profile in GPU_PROFILES and len(files) > MAX_FILES:  # what one GPU lease may bring back
        raise SystemExit(f"{args.out} holds {len(files)} files (at most {MAX_FILES}): {', '.join(files)}")
    print(json.dumps({e.id: e.provenance["metrics"] for e in written}, indent=1))
    return 0


def evaluate_folder(out: Path, data: Prepared, profile: str, work: Path, device: str,
                    log: Callable[[float, str], None], only: list[str] | None = None) -> int:
    """Measure every graph listed in ``out``/manifest.json (of the recipes ``only``, default all) by its
    recipe's ``evaluate`` (the pack's evaluation sources) and record the metrics in its entry: how a run
    made with ``--skip-metrics`` (a GPU machine's time is better spent training) gets the same manifest as
    one measured at once, and how shipped graphs are measured again after the engine's path changed."""
    ctx = Context(profile, data, out, work, device, 0, log)
    by_recipe: dict[str, list[tuple[Path, dict]]] = {}
    for model_id, (path, fields_) in folder_graphs(out).items():
        name = model_id if model_id in RECIPES else fields_["method"]
        if name not in RECIPES or (only and name not in only):  # e.g. Filter2Noise's graphs: no recipe here
            continue
        by_recipe.setdefault(name, []).append((path, fields_))
    for name, graphs in by_recipe.items():
        metrics = RECIPES[name].evaluate(graphs, ctx) if RECIPES[name].evaluate else {}
        for path, fields_ in graphs:
            prov = {**fields_["provenance"], "metrics": metrics.get(fields_["id"], {})}
            catalogue.add(out, path, {**fields_, "provenance": prov})
            print(f"measured {path.name}: {json.dumps(prov['metrics'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
