"""Filter2Noise (F2N): a two-stage bilateral filter whose sigmas are fitted to one image, self-supervised.

The denoiser is deliberately tiny and interpretable. A predictor looks at the image in 8×8 patches and
emits, for every pixel and each of two filter stages, three positive, bounded numbers: the spatial
widths ``sigma_x``, ``sigma_y`` (pixels) and the range width ``sigma_r`` (intensity units). Two
bilateral filters with those per-pixel sigmas make the output. Nothing else is learned, so the sigma
maps *are* the model: they can be saved, inspected and edited region by region.

Design, and where it departs from the published Filter2Noise (github.com/sypsyp97/Filter2Noise):

* **Local attention.** Patch tokens attend to the 7×7 tokens around them (56×56 px), not to all
  tokens. Memory is linear in the image size, the predictor applies unchanged to crops and tiles, and
  the sigma maps stay spatially adaptive instead of being averaged flat by one global softmax.
* **Both stages read the input.** The predictor sees the input image and gives both stages' sigmas,
  so the ONNX *predictor* graph contains no filter and the *filter* graph (image + sigma maps → output)
  is all a region edit has to re-run. (The published method predicts stage 2 from stage 1's output.)
* **Fixed window.** Each stage weighs a fixed ``(2·RADIUS+1)²`` window with replicated edges. A
  data-dependent window size cannot be exported; a fixed one makes training and inference identical.
* **Crops.** Each fit iteration evaluates the loss on one random crop of at most ``crop``² pixels
  (and its two half-size sub-images), so the cost per iteration does not grow with the image.
* **Noise-relative range width.** ``sigma_r`` is predicted in units of a robust noise estimate of the
  image (``noise_level``) and bounded to ``(0, RANGE_CAP]`` of it. Every loss term scales linearly
  with intensity, so their balance does not depend on how the image was normalised.

The self-supervised loss (:func:`f2n_loss`) compares the denoiser's results on two half-size
sub-images ``d1``, ``d2`` of the (locally shuffled) image and on the image itself, plus an edge term
that keeps the band-pass energy of the input; :func:`fit` minimises it with Adam and stops on a plateau.

Run ``python -m quietlens.models.f2n --out assets/models`` to (re)write the filter graph; the predictor
graph holds per-image weights and is exported at fitting time (:func:`export_predictor`).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

RADIUS = 3  # filter window radius (px): each stage weighs a 7×7 neighbourhood
PATCH = 8  # predictor token = one PATCH×PATCH patch
DIM = 8  # token feature width
TOKEN_RADIUS = 3  # attention reaches ±3 tokens (a 7×7-token neighbourhood)
STAGES = 2
SPATIAL_CAP = float(RADIUS)  # sigma_x, sigma_y ∈ (0, 3] px: wider would mostly be cut by the window
RANGE_CAP = 8.0  # sigma_r ∈ (0, 8] × noise level: 8 already weighs almost like a plain Gaussian blur
SIGMA_FLOOR = 1e-4  # keeps every sigma > 0 so the filter weights stay finite
INIT_SIGMA = (1.0, 1.0, 2.0)  # starting sigma_x, sigma_y (px) and sigma_r (× noise level)
OPSET = 17
SIGMA_NAMES = ("sigma_x", "sigma_y", "sigma_r")


# -- the filter --------------------------------------------------------------------------------------

def bilateral(x: torch.Tensor, sigma: torch.Tensor, radius: int = RADIUS) -> torch.Tensor:
    """Bilateral filter with per-pixel, axis-aligned widths over a fixed ``(2r+1)²`` window.

    ``x`` is ``(N, C, H, W)``; ``sigma`` is ``(N, 3, H, W)`` holding ``sigma_x``, ``sigma_y`` (pixels) and
    ``sigma_r`` (units of ``x``) for the *centre* pixel. Pixel ``p``'s output is the average of its
    window, each neighbour ``q`` weighted by ``exp(−dx²/2σx² − dy²/2σy² − ‖x(p) − x(q)‖²/2σr²)``,
    the range distance summed over channels. Edges are replicated. The centre weighs 1, so the normaliser
    never vanishes; with ``σr → ∞`` this is a truncated Gaussian blur, and a constant image is unchanged.
    The offsets are an explicit loop: on whole slices in ONNX Runtime it is ~3× faster than gathering all
    offsets at once, and no intermediate is ``(2r+1)²`` times the image.
    """
    _, _, h, w = x.shape
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    inv = -0.5 / sigma.square()  # one division per pixel, not one per pixel and offset
    ax, ay, ar = inv[:, 0:1], inv[:, 1:2], inv[:, 2:3]
    num = torch.zeros_like(x)
    den = torch.zeros_like(ax)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            nb = padded[:, :, radius + dy:radius + dy + h, radius + dx:radius + dx + w]
            dist2 = (nb - x).square().sum(1, keepdim=True)
            weight = torch.exp(ax * float(dx * dx) + ay * float(dy * dy) + ar * dist2)
            num = num + weight * nb
            den = den + weight
    return num / den


def filter_stages(x: torch.Tensor, sigma1: torch.Tensor, sigma2: torch.Tensor,
                  radius: int = RADIUS) -> torch.Tensor:
    """The two filter stages: ``bilateral(bilateral(x, sigma1), sigma2)``. Its support is ``2·radius``."""
    return bilateral(bilateral(x, sigma1, radius), sigma2, radius)


class FilterGraph(nn.Module):
    """The exported filter: image ``(N, C, H, W)`` + two ``(N, 3, H, W)`` sigma maps → output."""

    def __init__(self, radius: int = RADIUS):
        super().__init__()
        self.radius = radius

    def forward(self, image: torch.Tensor, sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
        return filter_stages(image, sigma1, sigma2, self.radius)


# -- the sigma predictor -----------------------------------------------------------------------------

def _neighbours(t: torch.Tensor, radius: int) -> torch.Tensor:
    """``(N, D, h, w)`` → ``(N, D, (2r+1)², h, w)``: every token's neighbours at each offset, edges
    replicated. One convolution with one-hot kernels: a single op to run, differentiate and export."""
    n, d, h, w = t.shape
    k = 2 * radius + 1
    onehot = torch.eye(k * k, dtype=t.dtype, device=t.device).reshape(k * k, 1, k, k)
    padded = F.pad(t.reshape(n * d, 1, h, w), (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, onehot).reshape(n, d, k * k, h, w)


class NeighbourhoodAttention(nn.Module):
    """Single-head attention of every token to the ``(2r+1)²`` tokens around it.

    Tokens are channels-first maps ``(N, D_in, h, w)``; queries, keys and values are per-token linear
    maps (1×1 convolutions) to ``dim`` features.
    """

    def __init__(self, dim_in: int, dim: int, radius: int = TOKEN_RADIUS):
        super().__init__()
        self.qkv = nn.Conv2d(dim_in, 3 * dim, 1)
        self.radius = radius
        self.scale = dim ** -0.5

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(t).chunk(3, dim=1)
        logits = (q.unsqueeze(2) * _neighbours(k, self.radius)).sum(1) * self.scale
        attn = logits.softmax(1)  # (N, neighbours, h, w)
        return (attn.unsqueeze(1) * _neighbours(v, self.radius)).sum(2)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class SigmaPredictor(nn.Module):
    """Image ``(N, C, H, W)`` → sigma maps ``(N, 3·STAGES, H, W)``: per stage ``sigma_x, sigma_y, sigma_r``.

    Patch tokens (``PATCH``² · C raw values) → local attention to ``DIM`` features → local attention
    with a residual → LayerNorm → linear head → ``cap · sigmoid``, which keeps every sigma positive and
    bounded with a gradient everywhere → bilinear upsampling to pixels. ``H`` and ``W`` need not be
    multiples of ``PATCH`` (the image is edge-padded, the maps cropped). ``noise`` (the image's noise
    level) converts ``sigma_r`` from noise units to intensity units. 1 846 parameters for C = 1.
    """

    def __init__(self, channels: int = 1, noise: float = 1.0, stages: int = STAGES):
        super().__init__()
        self.stages = stages
        self.attn1 = NeighbourhoodAttention(PATCH * PATCH * channels, DIM)
        self.attn2 = NeighbourhoodAttention(DIM, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Conv2d(DIM, 3 * stages, 1)
        caps = torch.tensor([SPATIAL_CAP, SPATIAL_CAP, RANGE_CAP * noise] * stages)
        self.register_buffer("caps", caps.reshape(1, -1, 1, 1))
        # Start from flat, moderate maps: a tiny head weight, a bias at INIT_SIGMA.
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            init = [INIT_SIGMA[0] / SPATIAL_CAP, INIT_SIGMA[1] / SPATIAL_CAP, INIT_SIGMA[2] / RANGE_CAP]
            self.head.bias.copy_(torch.tensor([_logit(p) for p in init] * stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x = F.pad(x, (0, -w % PATCH, 0, -h % PATCH), mode="replicate")
        t = self.attn1(F.pixel_unshuffle(x, PATCH))
        t = t + self.attn2(t)
        t = self.norm(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        s = self.caps * torch.sigmoid(self.head(t)) + SIGMA_FLOOR
        return F.interpolate(s, scale_factor=PATCH, mode="bilinear", align_corners=False)[:, :, :h, :w]


class F2N(nn.Module):
    """The whole denoiser: ``filter_stages(x, *predictor(x))``."""

    def __init__(self, channels: int = 1, noise: float = 1.0):
        super().__init__()
        self.predictor = SigmaPredictor(channels, noise)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.predictor(x)
        return filter_stages(x, s[:, 0:3], s[:, 3:6])


# -- self-supervised pairs and loss ------------------------------------------------------------------

def pair_downsample(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-size sub-images from each 2×2 block: ``d1`` = mean of the anti-diagonal (top-right,
    bottom-left), ``d2`` = mean of the diagonal (top-left, bottom-right). H and W must be even."""
    d1 = 0.5 * (x[:, :, 0::2, 1::2] + x[:, :, 1::2, 0::2])
    d2 = 0.5 * (x[:, :, 0::2, 0::2] + x[:, :, 1::2, 1::2])
    return d1, d2


# The 2×2 block as [top-left, top-right, bottom-left, bottom-right]; the 6 pairs and the permutation
# that swaps each pair.
_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
_SWAPS = torch.tensor([[j if k == i else i if k == j else k for k in range(4)] for i, j in _PAIRS])


def local_shuffle(x: torch.Tensor) -> torch.Tensor:
    """In every 2×2 block, swap the two pixels closest in value (Euclidean over channels).

    Deterministic. Swapping near-equal pixels hardly changes the signal but moves samples between the
    diagonal and the anti-diagonal, so ``d1`` and ``d2`` of the result are less tied to one fixed
    sampling pattern. H and W must be even.
    """
    n, c, h, w = x.shape
    blocks = F.pixel_unshuffle(x, 2).reshape(n, c, 4, h // 2, w // 2)
    dist = torch.stack([(blocks[:, :, i] - blocks[:, :, j]).square().sum(1) for i, j in _PAIRS], 1)
    perm = _SWAPS.to(x.device)[dist.argmin(1)]  # (N, h/2, w/2, 4)
    index = perm.permute(0, 3, 1, 2).unsqueeze(1).expand(n, c, 4, h // 2, w // 2)
    shuffled = blocks.gather(2, index).reshape(n, c * 4, h // 2, w // 2)
    return F.pixel_shuffle(shuffled, 2)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma * sigma))
    return g / g.sum()


DOG = (_gaussian(7, 9.0) - _gaussian(7, 10.0)).float()  # zero-sum, centre-surround band-pass


def dog(x: torch.Tensor) -> torch.Tensor:
    """``x`` filtered per channel with :data:`DOG` (replicated edges), same size."""
    c = x.shape[1]
    k = DOG.to(x.device).expand(c, 1, 7, 7)
    return F.conv2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), k, groups=c)


def f2n_loss(model: nn.Module, y: torch.Tensor, detail: float) -> torch.Tensor:
    """The self-supervised loss on one image ``y`` (N, C, H, W; H, W even).

    With ``a, b = pair_downsample(local_shuffle(y))`` and ``D`` the denoiser::

        ⅓ |D(a) − D(b)|  +  ⅓ (|D(a) − d1 D(y)| + |D(b) − d2 D(y)|)  +  ⅓ |d1 D(y) − d2 D(y)|
          + detail · | |DoG ∗ y| − |DoG ∗ D(y)| |                              (all mean absolute errors)

    The first three terms ask the two sub-images to denoise to the same thing, at both scales, which
    rewards smoothing; the last keeps the band-pass energy of the input, the only tie to its detail.
    A smaller ``detail`` gives a smoother result.
    """
    a, b = pair_downsample(local_shuffle(y))
    da, db = model(torch.cat([a, b])).chunk(2)  # one batched call: half the per-op overhead
    dy = model(y)
    dy1, dy2 = pair_downsample(dy)
    pair = (F.l1_loss(da, db) + F.l1_loss(da, dy1) + F.l1_loss(db, dy2) + F.l1_loss(dy1, dy2)) / 3
    return pair + detail * F.l1_loss(dog(y).abs(), dog(dy).abs())


def noise_level(x: np.ndarray) -> float:
    """Robust noise scale of an image ``(C, H, W)``: 1.4826 · MAD of ``d1 − d2`` (its std for white noise:
    each sub-image averages two pixels). Correlated noise, as in CT, reads lower. 0 for a constant image."""
    c, h, w = x.shape
    x = x[:, : h - h % 2, : w - w % 2].astype(np.float64)
    if x.size == 0:
        return 0.0
    d = 0.5 * (x[:, 0::2, 1::2] + x[:, 1::2, 0::2]) - 0.5 * (x[:, 0::2, 0::2] + x[:, 1::2, 1::2])
    return float(1.4826 * np.median(np.abs(d - np.median(d))))


# -- fitting -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` runs. ``detail`` is the edge-term weight λ (smaller = smoother): 400 is the
    published choice and suits pixel-independent noise (MR, photos); spatially correlated noise such as
    CT's inflates the input's band-pass energy, so CT wants less (the engine uses 100)."""

    iterations: int = 150  # most optimiser steps
    min_iterations: int = 60  # never stop earlier
    lr: float = 2e-2
    detail: float = 400.0
    crop: int = 256  # side of the random crop each step sees
    patience: int = 30  # stop when the smoothed loss has not improved for this many steps...
    tolerance: float = 2e-3  # ...by this relative amount
    seed: int = 0
    device: str = "cpu"
    # Torch CPU threads while fitting. The tensors are one crop each: a second thread costs more in
    # synchronisation than it saves (MKL's threaded exp is ~1000× slower on them on a busy 2-core CPU).
    threads: int | None = 1


@dataclass
class FitResult:
    model: F2N
    noise: float
    losses: list[float] = field(default_factory=list)
    iterations: int = 0
    stopped_early: bool = False
    seconds: float = 0.0


def _crop(image: torch.Tensor, side: int, rng: np.random.Generator) -> torch.Tensor:
    """A random crop of at most ``side``² with even height, width and offsets (even: for the 2×2 pairs)."""
    _, h, w = image.shape
    ch, cw = min(side, h) // 2 * 2, min(side, w) // 2 * 2
    y0 = int(rng.integers(0, (h - ch) // 2 + 1)) * 2
    x0 = int(rng.integers(0, (w - cw) // 2 + 1)) * 2
    return image[None, :, y0:y0 + ch, x0:x0 + cw]


def fit(
    images: Sequence[np.ndarray],
    config: FitConfig = FitConfig(),
    progress: Callable[[float, str], None] | None = None,
    cancel=None,
) -> FitResult:
    """Fit an :class:`F2N` to one or a few images ``(C, H, W)`` (float32, same C; H, W ≥ 2).

    Deterministic for a given ``config.seed`` (and thread count): the weights are initialised from the
    seed, crops are drawn from a generator seeded with it, and step ``i`` uses image ``i mod len``.
    ``cancel`` (a ``CancelToken``) is checked every step; ``progress(fraction, message)`` is called every
    step. Stops after ``config.iterations`` steps, or earlier once an exponential average of the loss has
    not improved by ``tolerance`` (relative) for ``patience`` steps.
    """
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _fit(images, config, progress, cancel)
    finally:
        torch.set_num_threads(threads)


def _fit(images, config, progress, cancel) -> FitResult:
    """The body of :func:`fit`, run under the chosen thread count."""
    t0 = time.perf_counter()
    device = torch.device(config.device)
    channels = images[0].shape[0]
    noise = float(np.median([noise_level(im) for im in images]))
    noise = max(noise, 1e-6)  # a constant image still gets finite, positive range widths
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = F2N(channels, noise).to(device)
    data = [torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32)).to(device) for im in images]
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    # Cosine decay to a tenth: large steps first, fine ones by the time a plateau can be declared.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.iterations, eta_min=config.lr / 10)
    result = FitResult(model, noise)
    smooth, best, since_best = None, math.inf, 0
    for step in range(config.iterations):
        if cancel is not None:
            cancel.check()
        y = _crop(data[step % len(data)], config.crop, rng)
        loss = f2n_loss(model, y, config.detail)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = loss.item()
        result.losses.append(value)
        result.iterations = step + 1
        smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
        if smooth < best * (1 - config.tolerance):
            best, since_best = smooth, 0
        else:
            since_best += 1
        if progress is not None:
            progress((step + 1) / config.iterations, f"fitting F2N: step {step + 1}, loss {value:.3g}")
        if step + 1 >= config.min_iterations and since_best >= config.patience:
            result.stopped_early = True
            break
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


# -- ONNX export -------------------------------------------------------------------------------------

def _export(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
            dynamic_axes: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its own deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(module.cpu().eval(), args, buf, dynamo=False, opset_version=OPSET,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)
    return buf.getvalue()


def export_predictor(predictor: SigmaPredictor, channels: int, height: int, width: int) -> bytes:
    """The fitted predictor as an ONNX graph for images of exactly ``(1, channels, height, width)``:
    input ``image``, output ``sigmas`` ``(1, 6, H, W)`` = stage 1 then stage 2 ``sigma_x, sigma_y, sigma_r``.
    The shape is fixed: the padding to whole patches depends on it, and a fixed graph is simplest."""
    example = torch.zeros(1, channels, height, width)
    return _export(predictor, (example,), ["image"], ["sigmas"])


def export_filter(radius: int = RADIUS) -> bytes:
    """The filter graph (no weights): inputs ``image`` (N, C, H, W), ``sigma1``, ``sigma2`` (N, 3, H, W);
    output ``denoised`` (N, C, H, W). N, C, H and W are all free."""
    dims = {0: "n", 1: "c", 2: "h", 3: "w"}
    sig = {0: "n", 2: "h", 3: "w"}
    example = (torch.rand(1, 1, 16, 16), torch.ones(1, 3, 16, 16), torch.ones(1, 3, 16, 16))
    return _export(FilterGraph(radius), example, ["image", "sigma1", "sigma2"], ["denoised"],
                   {"image": dims, "sigma1": sig, "sigma2": sig, "denoised": dims})


def filter_manifest_entry(data: bytes, radius: int = RADIUS) -> dict:
    """The manifest fields (``quietlens.engine.catalogue.ModelEntry``; file and sha256 are derived) for an
    exported filter graph."""
    return {
        "id": f"f2n-filter-r{radius}",
        "method": "f2n",
        "modality": "any",
        "inputs": [
            {"name": "image", "shape": ["n", "c", "h", "w"], "range": None},
            {"name": "sigma1", "shape": ["n", 3, "h", "w"], "range": [SIGMA_FLOOR, None]},
            {"name": "sigma2", "shape": ["n", 3, "h", "w"], "range": [SIGMA_FLOOR, None]},
        ],
        "outputs": [{"name": "denoised", "shape": ["n", "c", "h", "w"], "range": None}],
        "receptive_field": 2 * radius,
        "tile_multiple": 1,
        "provenance": {
            "script": "python -m quietlens.models.f2n --out assets/models --manifest",
            "source": "models/f2n.py: FilterGraph (two bilateral stages, fixed window)",
            "opset": OPSET,
            "radius": radius,
            "weights": "none: sigma maps are inputs",
            "torch": torch.__version__,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write the filter graph into ``--out`` and print (or, with ``--manifest``, record) its entry."""
    parser = argparse.ArgumentParser(prog="python -m quietlens.models.f2n", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("assets/models"))
    parser.add_argument("--radius", type=int, default=RADIUS)
    parser.add_argument("--manifest", action="store_true",
                        help="add or replace the entry in OUT/manifest.json (schema 1)")
    args = parser.parse_args(argv)
    from quietlens.engine import catalogue

    data = export_filter(args.radius)
    fields = filter_manifest_entry(data, args.radius)
    if args.manifest:
        catalogue.add(args.out, data, fields)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{fields['id']}.onnx").write_bytes(data)
    print(json.dumps(fields, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
