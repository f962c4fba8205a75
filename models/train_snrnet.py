"""Train the shipped SNR-Net on synthetic raw data and export it to ONNX with its manifest entry.

Data recipe (all regenerated from the seed; nothing is downloaded):
  clean: random crops of scikit-image's bundled photographs, unprocessed to linear RGGB raw through a
         random camera and exposure (:mod:`.synth`), packed to four planes;
  noise: physics noise (:mod:`quietlens.engine.noise.physics`) — Poisson shot noise with log-uniform gain,
         read noise tied to the gain (Gaussian, or Tukey-lambda for 30 % of samples), row noise for 30 %,
         quantisation to a random bit depth, clipping at white;
  input: the EM-VST of the noisy planes with the true noise model perturbed by the error of an
         estimate (±5 % gain, ±10 % read noise), bias evaluated at the noisy value (the method's first
         pass) or at a near-clean value (its refined pass), normalised to [0, 1];
  target: the same transform of the clean planes; t = 1.03 · nsr; L1 loss divided by t (so low noise
         levels weigh as much as high ones).

    .venv/bin/python -m quietlens.models.train_snrnet --out assets/models --steps 5000 --seed 0
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from quietlens.engine import catalogue
from quietlens.engine.noise.physics import PhysicsNoise, add_noise, sample_gain_read
from quietlens.engine.noise.vst import Vst
from .snrnet import SNRNet, export_onnx, parameter_count, receptive_radius
from .synth import mosaic_to_planes, planes_to_mosaic, random_camera, skimage_photo, unprocess

MODEL_ID = "snrnet-raw"
T_FACTOR = 1.03  # the bias-corrected VST leaves slightly more than unit variance at low counts
GAIN_RANGE = (1e-5, 0.1)  # normalised K: ISO ~50 on a 14-bit sensor up to extreme low light
VALID_GAINS = (2e-5, 3.2e-4, 2.56e-3, 2e-2)  # ISO 100, 1600, 12800-like and a very dark scene
BIT_DEPTHS = (10, 12, 14, 16)
# scikit-image's bundled photographs (no download). Grey ones become neutral colour images.
TRAIN_IMAGES = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                "stereo_motorcycle:0", "stereo_motorcycle:1", "colorwheel", "grass", "gravel", "camera",
                "coins", "moon", "clock", "cell", "page", "text")
VALID_IMAGES = ("coffee", "chelsea", "brick")


class PhotoPool:
    """The source photos at a few scales (downscaling removes demosaicing and JPEG softness)."""

    def __init__(self, names: tuple[str, ...], scales: tuple[float, ...] = (0.5, 0.71, 1.0)):
        self.images = []
        for name in names:
            photo = skimage_photo(name)
            for s in scales:
                size = (max(int(photo.shape[1] * s), 64), max(int(photo.shape[0] * s), 64))
                self.images.append(cv2.resize(photo, size, interpolation=cv2.INTER_AREA) if s != 1 else photo)
        self.weights = np.array([im.shape[0] * im.shape[1] for im in self.images], np.float64)
        self.weights /= self.weights.sum()

    def crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """A random ``size``×``size`` RGB crop (size even), flipped/rotated at random, area-weighted."""
        image = self.images[rng.choice(len(self.images), p=self.weights)]
        h, w = image.shape[:2]
        if min(h, w) < size:
            image = cv2.resize(image, (max(w, size), max(h, size)), interpolation=cv2.INTER_LINEAR)
            h, w = image.shape[:2]
        y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        patch = image[y:y + size, x:x + size]
        patch = np.rot90(patch, rng.integers(4))
        return np.ascontiguousarray(patch[:, ::-1] if rng.random() < 0.5 else patch)


def clean_planes(pool: PhotoPool, rng: np.random.Generator, patch: int) -> np.ndarray:
    """A random crop unprocessed through a random camera, at a random exposure (1/12 … 1)."""
    crop = pool.crop(rng, 2 * patch)
    camera = random_camera(rng)
    return unprocess(crop, camera) * np.float32(math.exp(-rng.uniform(0.0, math.log(12.0))))


def noisy_sample(clean: np.ndarray, rng: np.random.Generator, gain: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Vst]:
    """From clean packed planes (4, h, w): the input z, the target, the noisy planes and the VST used
    (whose ``nsr`` gives t and whose inverse turns a denoised z back into raw values)."""
    sampled_gain, read = sample_gain_read(rng, GAIN_RANGE)
    gain = sampled_gain if gain is None else gain
    read = read * (gain / sampled_gain) ** 0.61  # keep the read-to-gain relation when the gain is fixed
    noise = PhysicsNoise(
        gain, read,
        tukey_lambda=float(rng.uniform(-0.25, 0.25)) if rng.random() < 0.3 else None,
        row=read * float(rng.uniform(0.0, 0.3)) if rng.random() < 0.3 else 0.0,
        quant=1.0 / (2 ** int(rng.choice(BIT_DEPTHS)) - 1),
    )
    noisy = np.minimum(mosaic_to_planes(add_noise(planes_to_mosaic(clean), noise, rng)), 1.0)  # white clips
    vst = Vst(gain * math.exp(rng.normal(0, 0.05)), read * math.exp(rng.normal(0, 0.1)))
    if rng.random() < 0.5:
        bias_at = noisy
    else:  # the refined pass evaluates the bias at a first denoised image: clean plus a little error
        bias_at = clean + rng.normal(0, 0.3, clean.shape) * np.sqrt(gain * np.maximum(clean, 0) + read**2)
    return vst.forward(noisy, bias_at), vst.forward_clean(clean), noisy, vst


def batch(pool: PhotoPool, rng: np.random.Generator, size: int, patch: int) -> tuple[torch.Tensor, ...]:
    """``size`` samples of ``patch``×``patch`` packed planes: tensors z, t (maps), target."""
    zs, ts, targets = [], [], []
    for _ in range(size):
        clean = clean_planes(pool, rng, patch)
        z, target, _, vst = noisy_sample(clean, rng)
        zs.append(z)
        targets.append(target)
        ts.append(np.full((1, patch, patch), T_FACTOR * vst.nsr, np.float32))
    return tuple(torch.from_numpy(np.stack(a)) for a in (zs, ts, targets))


def validation_set(seed: int = 1234, crops: int = 4, patch: int = 128) -> list[dict]:
    """Fixed noisy/clean pairs from photos never trained on, at each of :data:`VALID_GAINS`."""
    rng = np.random.default_rng(seed)
    pool = PhotoPool(VALID_IMAGES, scales=(0.71,))
    items = []
    for gain in VALID_GAINS:
        for _ in range(crops):
            clean = clean_planes(pool, rng, patch)
            z, _, noisy, vst = noisy_sample(clean, rng, gain)
            items.append(dict(gain=gain, clean=clean, noisy=noisy, z=z, vst=vst))
    return items


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-20)))


@torch.no_grad()
def evaluate(model: SNRNet, items: list[dict]) -> dict[str, dict[str, float]]:
    """Raw-domain PSNR (peak = white) of noisy and denoised planes, averaged per validation gain.

    The denoised planes go through the inverse of the VST that made the input.
    """
    model.eval()
    out: dict[str, dict[str, list[float]]] = {}
    for it in items:
        z = torch.from_numpy(it["z"])[None]
        t = torch.full((1, 1, *it["z"].shape[1:]), T_FACTOR * it["vst"].nsr)
        den = it["vst"].inverse(model(z, t)[0].numpy())
        row = out.setdefault(f"{it['gain']:g}", {"noisy": [], "snrnet": []})
        row["noisy"].append(psnr(it["noisy"], it["clean"]))
        row["snrnet"].append(psnr(den, it["clean"]))
    model.train()
    return {g: {k: round(float(np.mean(v)), 2) for k, v in r.items()} for g, r in out.items()}


def train(steps: int, seed: int, batch_size: int, patch: int, lr: float, log_every: int = 100
          ) -> tuple[SNRNet, dict]:
    """Adam with cosine decay on the L1 loss; returns the model and a record of the run."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = PhotoPool(TRAIN_IMAGES)
    model = SNRNet()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    items = validation_set()
    start, losses = time.time(), []
    for step in range(1, steps + 1):
        z, t, target = batch(pool, rng, batch_size, patch)
        loss = ((model(z, t) - target).abs() / t).mean()  # error in noise units: every level counts
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # no normalisation layers: guard spikes
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            print(f"step {step:5d}  loss {np.mean(losses[-log_every:]):.5f}  {time.time() - start:7.1f} s", flush=True)
        if step % (10 * log_every) == 0:
            print("  validation PSNR (dB):", evaluate(model, items), flush=True)
    seconds = time.time() - start
    record = {"steps": steps, "seed": seed, "batch": batch_size, "patch": patch, "lr": lr,
              "train_seconds": round(seconds, 1), "final_loss": round(float(np.mean(losses[-100:])), 6),
              "validation_psnr_db": evaluate(model, items)}
    return model.eval(), record


def manifest_fields(model: SNRNet, record: dict, command: str) -> dict:
    """This model's manifest fields (file and sha256 are derived when it is added to a catalogue)."""
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
                             "parameters": parameter_count(model)},
            "data": {"train_images": list(TRAIN_IMAGES), "valid_images": list(VALID_IMAGES),
                     "source": "scikit-image bundled photographs, unprocessed to RGGB raw",
                     "gain_range": list(GAIN_RANGE), "bit_depths": list(BIT_DEPTHS),
                     "t_factor": T_FACTOR},
            "hardware": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "threads": torch.get_num_threads(), "torch": torch.__version__},
            **record,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train SNR-Net and export it to ONNX.")
    parser.add_argument("--out", type=Path, default=Path("assets/models"))
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=48, help="packed pixels per side")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, record = train(args.steps, args.seed, args.batch, args.patch, args.lr)
    print(json.dumps(record["validation_psnr_db"], indent=1))
    with tempfile.TemporaryDirectory() as tmp:
        graph = export_onnx(model, Path(tmp) / f"{MODEL_ID}.onnx").read_bytes()
    command = (f"python -m quietlens.models.train_snrnet --steps {args.steps} --seed {args.seed} "
               f"--batch {args.batch} --patch {args.patch} --lr {args.lr} --threads {args.threads}")
    entry = catalogue.add(args.out, graph, manifest_fields(model, record, command))
    print(f"wrote {entry.path} ({entry.sha256[:12]}…), receptive field {entry.receptive_field} px")


if __name__ == "__main__":
    main()
