"""Train the shipped SNR-Net on the shared synthetic raw pairs and export it to ONNX with its manifest entry.

Data recipe (all regenerated from the seed; nothing is downloaded):
  clean: random crops of the training corpus (:func:`quietlens.models.synth.clean_corpus` ``"train"``:
         Urban100, BSD100 less the validation photos, scikit-image's photographs), flipped, rotated and
         downscaled at random, unprocessed to RGGB planes by a random camera and exposure; with
         ``--optics`` a share of them is first blurred by the optics (Gaussian on the linear scene,
         σ log-uniform over a range of pixels), as a lens and anti-aliasing filter soften what a
         sensor records (``--optics 0`` for none; see :data:`OPTICS`); with ``--flat`` a share of
         the crops is a dead-leaves scene of large flat shapes instead (see :data:`FLAT`);
  noise: :func:`quietlens.models.synth.raw_pair` — the project's physics noise (Poisson shot, read
         noise with Tukey-λ tails, row noise, quantisation) at ISO 50 … 102400-like (K, σ) of the
         typical sensor with camera-to-camera scatter; real Poisson–Gaussian raw noise, so the EM-VST's
         residual non-Gaussianity at low counts is what the network learns from;
  input: the EM-VST of the noisy planes with the noise model perturbed by the error of a blind estimate
         (±5 % K, ±10 % σ, log-normal), the bias evaluated at the noisy value or at a near-clean one;
  level: ``t = 1.03 · nsr · s``: half the samples are told their level (``s = 1``), the other half a
         mismatched one, ``s`` log-uniform over the ``noise_scale`` range [0.25, 1.5];
  target: what "denoise as if the noise were ``s`` times what it is" means. ``s = 1``: the clean
         transform. ``s < 1``: only noise of ``s`` times the level is removed, so the minimum-error output
         keeps a ``1 − s²`` share of the noise, ``clean + (1 − s²)(noisy − clean)``. ``s > 1``: detail that
         the extra ``(s² − 1)·nsr²`` of noise would bury is removed too — the clean transform through an
         oracle Wiener shrinkage of its DCT coefficients. So the output is monotone in ``noise_scale``.
  loss:  L1 divided by ``nsr`` (every noise level weighs the same).

    .venv/bin/python -m quietlens.models.train_snrnet --out assets/models --steps 20000 --seed 0
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from quietlens.engine import catalogue
from quietlens.engine.noise.vst import Vst

from . import synth
from .snrnet import SNRNet, export_onnx, parameter_count, receptive_radius

MODEL_ID = "snrnet-raw"
T_FACTOR = 1.03  # the bias-corrected VST leaves slightly more than unit variance at low counts
ISO_RANGE = (50.0, 102400.0)  # of the typical full-frame sensor: ISO 100 daylight to very dark scenes
SCALE_RANGE = (0.25, 1.5)  # the method's noise_scale range
MATCHED = 0.5  # share of samples told their true level
VALID_FOLDER = "clean/bsd100"
VALID_COUNT = 6  # the last photos of VALID_FOLDER: held out of training, used for validation
VALID_ISOS = (400, 1600, 6400, 25600)
# Share of samples with an optics blur and its σ range (px of the mosaic). Measured (README, YOND): against
# the same recipe without it, +0.07 to +0.21 dB on real RAW content, −0.17 to −0.24 dB on Kodak24.
OPTICS = (0.5, 0.5, 1.5)
# Share of samples drawn from a dead-leaves scene instead of a photo, and its smallest shape radius (px of
# the mosaic): large truly flat surfaces, which the photos lack, so the network learns to average them
# out. Measured (README, YOND): small shapes (4 px) did nothing for real RAW content, large ones did.
FLAT = (0.5, 32.0)


# -- samples ----------------------------------------------------------------------------------------

def crop(photo: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """A random ``size``² RGB crop, downscaled by up to 2× first (less JPEG and demosaicking softness
    per pixel), flipped and rotated at random."""
    h, w = photo.shape[:2]
    scale = max(float(rng.uniform(0.5, 1.0)), size / min(h, w))  # a small photo is enlarged to fit
    if scale != 1.0:
        photo = cv2.resize(photo, (max(size, round(w * scale)), max(size, round(h * scale))),
                           interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    h, w = photo.shape[:2]
    y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    patch = np.rot90(photo[y:y + size, x:x + size], rng.integers(4))
    return np.ascontiguousarray(patch[:, ::-1] if rng.random() < 0.5 else patch)


@dataclass
class Sample:
    z: np.ndarray  # network input (4, h, w)
    t: float  # level told to the network
    target: np.ndarray
    nsr: float  # the true level, normalising the loss
    noisy: np.ndarray = field(repr=False)
    clean: np.ndarray = field(repr=False)
    vst: Vst = field(repr=False)


def optics_blur(rng: np.random.Generator, optics: tuple[float, float, float] | None) -> float:
    """σ (px) of a sample's optics blur: 0 (none) or log-uniform over ``optics[1:]`` with probability
    ``optics[0]``."""
    if not optics or optics[0] <= 0:  # no draw: without optics the recipe makes the samples it made before
        return 0.0
    share, low, high = optics
    return float(math.exp(rng.uniform(math.log(low), math.log(high)))) if rng.random() < share else 0.0


def sample(photo: np.ndarray, rng: np.random.Generator, patch: int, iso: float | None = None,
           s: float | None = None, optics: tuple[float, float, float] | None = None, flat: float = 0.0,
           flat_radius: float = FLAT[1]) -> Sample:
    """One training (or validation) sample of ``patch``² packed pixels from a clean sRGB photo
    (``optics``: see :func:`optics_blur`; validation samples have none), or with probability ``flat``
    from a dead-leaves scene of shapes at least ``flat_radius`` px across instead
    (:func:`quietlens.models.synth.dead_leaves`)."""
    if flat > 0 and rng.random() < flat:  # no draw at 0: the recipe makes the samples it made before
        patch_rgb = synth.dead_leaves(rng, 2 * patch, flat_radius)
    else:
        patch_rgb = crop(photo, rng, 2 * patch)
    noisy, clean, gain, read = synth.raw_pair(patch_rgb, rng, iso=iso, iso_range=ISO_RANGE,
                                              blur=optics_blur(rng, optics))
    vst = Vst(gain * math.exp(rng.normal(0, 0.05)), read * math.exp(rng.normal(0, 0.1)))
    if rng.random() < 0.5:
        bias_at = noisy
    else:  # a first denoised image: clean plus a little error
        bias_at = clean + rng.normal(0, 0.3, clean.shape) * np.sqrt(gain * np.maximum(clean, 0) + read**2)
    z, clean_z = vst.forward(noisy, bias_at), vst.forward_clean(clean)
    if s is None:
        s = 1.0 if rng.random() < MATCHED else float(np.exp(rng.uniform(*np.log(SCALE_RANGE))))
    return Sample(z, T_FACTOR * vst.nsr * s, synth.told_target(z, clean_z, vst.nsr**2, s), vst.nsr, noisy, clean, vst)


def training_photos() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training photos, validation photos): the training corpus less the held-out validation photos."""
    photos, names = synth.clean_corpus("train"), synth.clean_corpus_names("train")
    held = sorted(n for n in names if n.startswith(VALID_FOLDER))[-VALID_COUNT:]
    train = [p for p, n in zip(photos, names) if n not in held]
    valid = [p for p, n in zip(photos, names) if n in held]
    return train, valid


def _float(images: list[np.ndarray]) -> list[np.ndarray]:
    return [im.astype(np.float32) / 255 if im.dtype == np.uint8 else im.astype(np.float32, copy=False)
            for im in images]


def batch(photos: list[np.ndarray], rng: np.random.Generator, size: int, patch: int,
          optics: tuple[float, float, float], flat: float = 0.0,
          flat_radius: float = FLAT[1]) -> tuple[torch.Tensor, ...]:
    """``size`` samples: tensors z, t (constant maps), target, nsr."""
    weights = np.array([p.shape[0] * p.shape[1] for p in photos], np.float64)
    picks = rng.choice(len(photos), size, p=weights / weights.sum())
    items = [sample(photos[i], rng, patch, optics=optics, flat=flat, flat_radius=flat_radius) for i in picks]
    z = torch.from_numpy(np.stack([it.z for it in items]))
    t = torch.tensor([it.t for it in items], dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, patch, patch)
    target = torch.from_numpy(np.stack([it.target for it in items]))
    nsr = torch.tensor([it.nsr for it in items], dtype=torch.float32).view(-1, 1, 1, 1)
    return z, t.contiguous(), target, nsr


@dataclass(frozen=True)
class Config:
    """One training run: Adam at ``lr`` with cosine decay over ``steps`` of ``batch`` crops of ``patch``²
    packed pixels; the network's ``channels`` per level and ``blocks`` per stage."""

    steps: int
    batch: int = 16
    patch: int = 64
    lr: float = 1e-3
    channels: tuple[int, ...] = (16, 32, 64, 64)  # chosen by quality per ms (README, YOND)
    blocks: int = 1
    seed: int = 0
    optics: tuple[float, float, float] = OPTICS
    flat: float = FLAT[0]  # share of dead-leaves samples (see sample())
    flat_radius: float = FLAT[1]  # their smallest shape's radius (px of the mosaic)
    smoothers: tuple[float, ...] = ()  # the output's Gaussian smoothings, σ in packed px (see SNRNet)

    def to_dict(self) -> dict:
        return {**self.__dict__, "channels": list(self.channels), "optics": list(self.optics),
                "smoothers": list(self.smoothers)}


class Batches(torch.utils.data.Dataset):
    """The batch of each step, a pure function of (seed, step): resuming or making batches in worker
    processes gives the same run."""

    def __init__(self, photos: list[np.ndarray], cfg: Config, start: int):
        self.photos, self.cfg, self.start = photos, cfg, start

    def __len__(self) -> int:
        return self.cfg.steps - self.start

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng([self.cfg.seed, self.start + i])
        return batch(self.photos, rng, self.cfg.batch, self.cfg.patch, self.cfg.optics, self.cfg.flat,
                     self.cfg.flat_radius)


# -- validation -------------------------------------------------------------------------------------

def validation_set(photos: list[np.ndarray], seed: int = 1234, crops: int = 2, patch: int = 128) -> list[Sample]:
    """Fixed matched-level samples from the held-out photos at each of :data:`VALID_ISOS`."""
    rng = np.random.default_rng(seed)
    return [sample(p, rng, patch, iso=iso, s=1.0) for iso in VALID_ISOS for p in photos for _ in range(crops)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-20)))


@torch.no_grad()
def evaluate(model: SNRNet, items: list[Sample], device: str = "cpu") -> dict[str, dict[str, float]]:
    """Raw-domain PSNR (peak = white) of the noisy and denoised planes, mean per validation ISO."""
    model.eval()
    out: dict[str, dict[str, list[float]]] = {}
    for it, iso in zip(items, np.repeat(VALID_ISOS, len(items) // len(VALID_ISOS))):
        z = torch.from_numpy(it.z)[None].to(device)
        t = torch.full((1, 1, *it.z.shape[1:]), it.t, device=device)
        den = it.vst.inverse(model(z, t)[0].cpu().numpy())
        row = out.setdefault(f"{iso:g}", {"noisy": [], "snrnet": []})
        row["noisy"].append(psnr(it.noisy, it.clean))
        row["snrnet"].append(psnr(den, it.clean))
    model.train()
    return {g: {k: round(float(np.mean(v)), 2) for k, v in r.items()} for g, r in out.items()}


# -- training ---------------------------------------------------------------------------------------

def train(cfg: Config, photos: list[np.ndarray], held: list[np.ndarray], device: str = "cpu", workers: int = 0,
          checkpoint: Path | None = None, log_every: int = 100, until: int | None = None) -> tuple[SNRNet, dict]:
    """Train on ``photos`` (float32 sRGB), validate on ``held``; returns the model and a record of the run.
    With ``checkpoint`` the run saves itself every ``10·log_every`` steps and resumes from there;
    ``until`` stops (and saves) after that step, so a long run can be done in parts; ``workers``
    processes make the batches (a GPU needs them)."""
    torch.manual_seed(cfg.seed)
    model = SNRNet(cfg.channels, cfg.blocks, smoothers=cfg.smoothers).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.01)
    items = validation_set(held)
    step, elapsed, losses = 0, 0.0, []
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["config"] != cfg.to_dict():
            raise SystemExit(f"{checkpoint} was written by another configuration; delete it to start over")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"resumed after step {step}", flush=True)
    loader = torch.utils.data.DataLoader(Batches(photos, cfg, step), batch_size=None, num_workers=workers,
                                         prefetch_factor=4 if workers else None)
    start = time.time() - elapsed
    model.train()
    for z, t, target, nsr in loader:
        z, t, target, nsr = (x.to(device, non_blocking=True) for x in (z, t, target, nsr))
        loss = ((model(z, t) - target).abs() / nsr).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # no normalisation layers: guard spikes
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item())
        if step % log_every == 0 or step == cfg.steps:
            print(f"step {step:6d}  loss {np.mean(losses[-log_every:]):.5f}  {time.time() - start:8.1f} s", flush=True)
        if (step % (10 * log_every) == 0 or step == until) and step < cfg.steps:
            print("  validation PSNR (dB):", evaluate(model, items, device), flush=True)
            if checkpoint is not None:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                tmp = checkpoint.with_suffix(".tmp")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "config": cfg.to_dict(), "step": step, "elapsed": time.time() - start}, tmp)
                tmp.replace(checkpoint)
            if step == until:
                break
    model = model.cpu().eval()
    record = {**cfg.to_dict(), "train_seconds": round(time.time() - start, 1),
              "final_loss": round(float(np.mean(losses[-100:])), 6) if losses else None,
              "validation_psnr_db": evaluate(model, items)}
    return model, record


def manifest_fields(model: SNRNet, record: dict, command: str, device: str = "cpu") -> dict:
    """This model's manifest fields (file and sha256 are derived when it is added to a catalogue)."""
    hardware = {"device": device, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                "threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.startswith("cuda"):
        hardware["gpu"] = torch.cuda.get_device_name(0)
    return {
        "id": MODEL_ID, "method": "yond", "modality": "raw",
        "inputs": [{"name": "z", "shape": ["N", 4, "H", "W"], "range": [0, 1]},
                   {"name": "t", "shape": ["N", 1, "H", "W"], "range": [0, 0.3]}],
        "outputs": [{"name": "out", "shape": ["N", 4, "H", "W"], "range": [0, 1]}],
        "receptive_field": receptive_radius(model), "tile_multiple": model.multiple,
        "bytes_per_pixel": 500,  # peak ORT (CPU) memory per padded packed pixel, measured ~480
        "provenance": {
            "script": "models/train_snrnet.py", "command": command,
            "architecture": {"name": "SNRNet", "channels": list(model.channels), "blocks": model.blocks,
                             "smoothers": list(model.smoothers),
                             "parameters": parameter_count(model)},
            "data": {"source": "models/synth.py: clean_corpus('train') unprocessed to RGGB by random cameras, "
                               "raw_pair physics noise",
                     "train_folders": list(synth.TRAIN_FOLDERS), "skimage": list(synth.SKIMAGE_SOURCES),
                     "held_out": f"last {VALID_COUNT} of {VALID_FOLDER} (validation)",
                     "iso_range": list(ISO_RANGE), "noise_scale_range": list(SCALE_RANGE), "matched": MATCHED,
                     "t_factor": T_FACTOR},
            "hardware": hardware,
            **record,
        },
    }


# -- shipping: the snrnet-raw recipe (profile → Config; train and evaluate on prepared crops) --------

CONFIGS = {
    "smoke": Config(steps=20, batch=4, patch=32),
    "cpu": Config(steps=12000, batch=16, patch=64),
    "gpu": Config(steps=4000, batch=32, patch=128),  # batch-making bound: see estimate()
}


def estimate(cfg: Config, workers: int, step_floor: float) -> list[tuple[str, float]]:
    """(phase, seconds) of a GPU run: making the batches dominates (timed here per sample, spread over
    ``workers`` processes); a step takes at least ``step_floor``."""
    photos, rng = [synth.skimage_photo(n) for n in ("astronaut", "coffee")], np.random.default_rng(0)
    per = 0.0
    for flat, share in ((0.0, 1.0 - cfg.flat), (1.0, cfg.flat)):  # a dead-leaves scene costs more than a crop
        if share <= 0:
            continue
        start = time.process_time()
        for i in range(8):
            sample(photos[i % 2], rng, cfg.patch, flat=flat, flat_radius=cfg.flat_radius)
        per += share * (time.process_time() - start) / 8
    return [(f"snrnet-raw ({per * 1e3:.1f} ms per sample here, {workers} processes)",
             cfg.steps * max(cfg.batch * per / workers, step_floor))]


def ship_train(cfg: Config, ctx) -> list[tuple[Path, dict]]:
    """Train ``cfg`` on the clean crops of a prepared shipping pack (``ctx.data.corpus().clean``; the last
    ones held out for validation), export ``ctx.out/snrnet-raw.onnx``; returns [(graph, manifest fields)]."""
    corpus = ctx.data.corpus()
    clean = _float(corpus.clean)
    held = max(2, len(clean) // 50)
    model, record = train(cfg, clean[:-held], clean[-held:], ctx.device, ctx.workers,
                          checkpoint=ctx.work / "snrnet-raw.pt")
    path = export_onnx(model, ctx.out / f"{MODEL_ID}.onnx")
    fields = manifest_fields(model, record, ctx.provenance.get("command", ""), ctx.device)
    fields["provenance"] = {**ctx.provenance, **fields["provenance"],
                            "data": {**fields["provenance"]["data"], **corpus.source,
                                     "held_out": f"the last {held} clean crops of the pack (validation)"}}
    return [(path, fields)]


def ship_evaluate(graphs: list[tuple[Path, dict]], ctx) -> dict[str, dict]:
    """Metrics of the exported graph: its validation PSNR (from training) and ONNX Runtime CPU speed on a
    1 MP mosaic (512² packed pixels, untiled, 2 threads)."""
    import onnxruntime as ort

    path, fields = graphs[0]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    z, t = np.random.default_rng(0).random((1, 4, 512, 512), dtype=np.float32), np.full((1, 1, 512, 512), 0.02, np.float32)
    sess.run(None, {"z": z, "t": t})
    start = time.perf_counter()
    for _ in range(3):
        sess.run(None, {"z": z, "t": t})
    seconds = (time.perf_counter() - start) / 3
    return {fields["id"]: {"validation_psnr_db": fields["provenance"]["validation_psnr_db"],
                           "cpu_mp_per_s_1mp": round(4 * 512 * 512 / 1e6 / seconds, 2)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train SNR-Net and export it to ONNX.")
    parser.add_argument("--out", type=Path, default=Path("assets/models"))
    parser.add_argument("--steps", type=int, default=CONFIGS["cpu"].steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=CONFIGS["cpu"].batch)
    parser.add_argument("--patch", type=int, default=CONFIGS["cpu"].patch, help="packed pixels per side")
    parser.add_argument("--lr", type=float, default=CONFIGS["cpu"].lr)
    parser.add_argument("--channels", default="16,32,64,64", help="channels per U-Net level")
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--optics", default=",".join(f"{v:g}" for v in OPTICS),
                        help="share of samples with an optics blur, its smallest and largest σ (px)")
    parser.add_argument("--flat", type=float, default=FLAT[0],
                        help="share of dead-leaves samples (flat shapes, sharp edges; 0 for none)")
    parser.add_argument("--flat-radius", type=float, default=FLAT[1], help="their smallest shape's radius (px)")
    parser.add_argument("--smoothers", default="", help="σ (packed px) of the output's Gaussian smoothings, "
                        "comma-separated (none by default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="processes making batches")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--checkpoint", type=Path, help="save here and resume from here")
    parser.add_argument("--until", type=int, help="stop after this step (with --checkpoint: resume later)")
    parser.add_argument("--no-export", action="store_true", help="train and validate only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = Config(args.steps, args.batch, args.patch, args.lr, tuple(int(c) for c in args.channels.split(",")),
                 args.blocks, args.seed, tuple(float(v) for v in args.optics.split(",")), args.flat,
                 args.flat_radius, tuple(float(v) for v in args.smoothers.split(",") if v))
    photos, held = training_photos()
    model, record = train(cfg, photos, held, args.device, args.workers, args.checkpoint, until=args.until)
    print(json.dumps(record["validation_psnr_db"], indent=1))
    if args.no_export or (args.until and args.until < cfg.steps):
        return
    with tempfile.TemporaryDirectory() as tmp:
        graph = export_onnx(model, Path(tmp) / f"{MODEL_ID}.onnx").read_bytes()
    smoothers = f"--smoothers {args.smoothers} " if args.smoothers else ""
    command = (f"python -m quietlens.models.train_snrnet --steps {args.steps} --seed {args.seed} "
               f"--batch {args.batch} --patch {args.patch} --lr {args.lr} --channels {args.channels} "
               f"--blocks {args.blocks} --optics {args.optics} --flat {args.flat:g} "
               f"--flat-radius {args.flat_radius:g} {smoothers}--threads {args.threads} --device {args.device}")
    entry = catalogue.add(args.out, graph, manifest_fields(model, record, command, args.device))
    print(f"wrote {entry.path} ({entry.sha256[:12]}…), receptive field {entry.receptive_field} px")


if __name__ == "__main__":
    main()
