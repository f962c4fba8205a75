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
* **Volumes in 3-D.** On a volume the predictor sees each slice with its two neighbours and adds a
  through-plane width ``sigma_z``; each stage also weighs the ``±RADIUS_Z`` neighbouring slices. All
  spatial widths are in in-plane pixels and a slice ``k`` away counts ``k · slice_step`` pixels away
  (slice spacing ÷ pixel spacing), so anisotropic voxels are weighed by their real distances.
* **Crops.** Each fit iteration evaluates the loss on one random crop of at most ``crop``² pixels
  (``crop_3d`` of a volume), so the cost per iteration does not grow with the image.
* **Noise-relative range width.** ``sigma_r`` is predicted in units of the image's noise std (measured
  by the engine) and bounded to ``(0, RANGE_CAP]`` of it. The loss is scale-free too (SURE is divided
  by the noise variance; every pair-loss term scales linearly with intensity), so nothing depends on
  how the image was normalised.

Two self-supervised losses. :func:`sure_loss` (MR) is Stein's unbiased estimate of the filter's mean
squared error at full resolution, from the noise level. :func:`f2n_loss` (the published one; CT) compares
the denoiser's results on two half-size sub-images ``d1``, ``d2`` of the (locally shuffled) image and on
the image itself, plus an edge term that keeps the band-pass energy of the input. Where the sub-images
differ more by signal than by noise — small, sharp MR slices, whose real noise is often correlated along
the readout — that loss is smallest at the identity, and the fit used to slide there and stay (its
sigmas underflow, their gradients vanish). :func:`fit` minimises either with Adam and stops on a plateau.

Run ``python -m quietlens.models.f2n --out assets/models`` to (re)write the 2-D and 3-D filter graphs;
the predictor graph holds per-image weights and is exported at fitting time (:func:`export_predictor`).
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
RADIUS_Z = 1  # through-plane radius (slices) of the 3-D filter: each stage weighs 3 × 7 × 7 voxels
PATCH = 8  # predictor token = one PATCH×PATCH patch
DIM = 8  # token feature width
TOKEN_RADIUS = 3  # attention reaches ±3 tokens (a 7×7-token neighbourhood)
STAGES = 2
SPATIAL_CAP = float(RADIUS)  # sigma_x, sigma_y ∈ (0, 3] px: wider would mostly be cut by the window
RANGE_CAP = 8.0  # sigma_r ∈ (0, 8] × noise level: 8 already weighs almost like a plain Gaussian blur
SIGMA_FLOOR = 1e-4  # keeps every sigma > 0 so the filter weights stay finite
INIT_SIGMA = (1.0, 1.0, 2.0)  # starting sigma_x, sigma_y (px) and sigma_r (× noise level)
OPSET = 17


# -- the filter --------------------------------------------------------------------------------------

def bilateral(x: torch.Tensor, sigma: torch.Tensor, radius: int = RADIUS, radius_z: int = 0,
              slice_step: torch.Tensor | float = 1.0, graph: bool = False) -> torch.Tensor:
    """Bilateral filter with per-pixel, axis-aligned widths over a fixed window, in 2-D or 3-D.

    2-D: ``x`` is ``(N, C, H, W)`` and ``sigma`` ``(N, 3, H, W)``: ``sigma_x``, ``sigma_y`` (pixels) and
    ``sigma_r`` (units of ``x``) for the *centre* pixel; the window is ``(2r+1)²``. Pixel ``p``'s output is
    the average of its window, each neighbour ``q`` weighted by
    ``exp(−dx²/2σx² − dy²/2σy² − ‖x(p) − x(q)‖²/2σr²)``, the range distance summed over channels.

    3-D: ``x`` is ``(N, C, D, H, W)`` and ``sigma`` ``(N, 4, D, H, W)``: ``sigma_x``, ``sigma_y``,
    ``sigma_z``, ``sigma_r``; the window adds ``±radius_z`` slices and the weight a factor
    ``exp(−(dz·slice_step)²/2σz²)``. ``slice_step`` is the slice spacing in in-plane pixels (slice spacing
    ÷ pixel spacing), so all three spatial widths are in in-plane pixels and σx = σy = σz is an isotropic
    Gaussian in space whatever the voxel shape.

    Edges are replicated. The centre weighs 1, so the normaliser never vanishes; with ``σr → ∞`` this is a
    truncated Gaussian blur, and a constant image is unchanged. The offsets are an explicit loop: on whole
    slices in ONNX Runtime it is ~3× faster than gathering all offsets at once, and no intermediate is
    window-size times the image. The spatial exponent depends only on ``|dx|, |dy|, |dz|``: eager PyTorch
    (fitting, small crops, per-op overhead) computes it once per distance, 30 % faster; the exported
    graphs (``graph=True``, whole slices, memory-bound) per offset from the scalars, 15–25 % faster there.
    """
    volume = x.dim() == 5
    h, w = x.shape[-2:]
    depth = x.shape[2] if volume else 1
    rz = radius_z if volume else 0
    pad = (radius, radius, radius, radius) + ((rz, rz) if volume else ())
    padded = F.pad(x, pad, mode="replicate")
    inv = -0.5 / sigma.square()  # one division per pixel, not one per pixel and offset
    ax, ay = inv[:, 0:1], inv[:, 1:2]
    ar = inv[:, 3:4] if volume else inv[:, 2:3]
    az = inv[:, 2:3] * slice_step * slice_step if volume else None
    spatial = None
    if not graph:
        ex = [ax * float(d * d) for d in range(radius + 1)]
        ey = [ay * float(d * d) for d in range(radius + 1)]
        spatial = [[[ey[j] + ex[i] + az * float(k * k) if k else ey[j] + ex[i] for i in range(radius + 1)]
                    for j in range(radius + 1)] for k in range(rz + 1)]
    num = torch.zeros_like(x)
    den = torch.zeros_like(ax)
    for dz in range(-rz, rz + 1):
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                rows, cols = slice(radius + dy, radius + dy + h), slice(radius + dx, radius + dx + w)
                nb = padded[:, :, rz + dz:rz + dz + depth, rows, cols] if volume else padded[:, :, rows, cols]
                dist2 = (nb - x).square().sum(1, keepdim=True)
                if spatial is not None:
                    exponent = spatial[abs(dz)][abs(dy)][abs(dx)] + ar * dist2
                else:
                    exponent = ax * float(dx * dx) + ay * float(dy * dy) + ar * dist2
                    if dz:
                        exponent = exponent + az * float(dz * dz)
                weight = torch.exp(exponent)
                num = num + weight * nb
                den = den + weight
    return num / den


def filter_stages(x: torch.Tensor, sigma1: torch.Tensor, sigma2: torch.Tensor, radius: int = RADIUS,
                  radius_z: int = 0, slice_step: torch.Tensor | float = 1.0, graph: bool = False) -> torch.Tensor:
    """The two filter stages: ``bilateral(bilateral(x, sigma1), sigma2)``. Its support is ``2·radius``
    in-plane and ``2·radius_z`` slices."""
    first = bilateral(x, sigma1, radius, radius_z, slice_step, graph)
    return bilateral(first, sigma2, radius, radius_z, slice_step, graph)


class FilterGraph(nn.Module):
    """The exported 2-D filter: image ``(N, C, H, W)`` + two ``(N, 3, H, W)`` sigma maps → output."""

    def __init__(self, radius: int = RADIUS):
        super().__init__()
        self.radius = radius

    def forward(self, image: torch.Tensor, sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
        return filter_stages(image, sigma1, sigma2, self.radius, graph=True)


class FilterGraph3D(nn.Module):
    """The exported 3-D filter: image ``(N, C, D, H, W)`` + two ``(N, 4, D, H, W)`` sigma maps + the
    slice step ``(1,)`` (slice spacing in in-plane pixels) → output."""

    def __init__(self, radius: int = RADIUS, radius_z: int = RADIUS_Z):
        super().__init__()
        self.radius, self.radius_z = radius, radius_z

    def forward(self, image: torch.Tensor, sigma1: torch.Tensor, sigma2: torch.Tensor,
                slice_step: torch.Tensor) -> torch.Tensor:
        return filter_stages(image, sigma1, sigma2, self.radius, self.radius_z, slice_step, graph=True)


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


def neighbour_slices(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, D, H, W)`` → ``(N·D, 3C, H, W)``: every slice with the one before and after it (edge
    slices repeated), the predictor's view of a volume."""
    n, c, d, h, w = x.shape
    padded = F.pad(x, (0, 0, 0, 0, 1, 1), mode="replicate")
    stack = torch.cat([padded[:, :, 0:d], x, padded[:, :, 2:d + 2]], 1)  # (N, 3C, D, H, W)
    return stack.transpose(1, 2).reshape(n * d, 3 * c, h, w)


class SigmaPredictor(nn.Module):
    """Image ``(N, C_in, H, W)`` → sigma maps ``(N, K·STAGES, H, W)``: per stage ``sigma_x, sigma_y``
    (``, sigma_z`` for a volume) ``, sigma_r``.

    Patch tokens (``PATCH``² · C_in raw values) → local attention to ``DIM`` features → local attention
    with a residual → LayerNorm → linear head → ``cap · sigmoid``, which keeps every sigma positive and
    bounded with a gradient everywhere → bilinear upsampling to pixels. ``H`` and ``W`` need not be
    multiples of ``PATCH`` (the image is edge-padded, the maps cropped). ``noise`` (the image's noise
    level) converts ``sigma_r`` from noise units to intensity units. For a volume (``volume=True``) the
    input of each slice is that slice and its two neighbours (:func:`neighbour_slices`, ``C_in = 3C``),
    and ``sigma_z`` (in-plane pixels, see :func:`bilateral`) is capped at ``SPATIAL_CAP · max(1,
    slice_step)``. 1 846 parameters for a 2-D grey image, 4 990 for a grey volume.
    """

    def __init__(self, channels: int = 1, noise: float = 1.0, stages: int = STAGES, volume: bool = False,
                 slice_step: float = 1.0):
        super().__init__()
        self.stages, self.volume = stages, volume
        self.per_stage = 4 if volume else 3
        self.attn1 = NeighbourhoodAttention(PATCH * PATCH * channels * (3 if volume else 1), DIM)
        self.attn2 = NeighbourhoodAttention(DIM, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Conv2d(DIM, self.per_stage * stages, 1)
        spatial = [SPATIAL_CAP, SPATIAL_CAP] + ([SPATIAL_CAP * max(1.0, slice_step)] if volume else [])
        caps = torch.tensor((spatial + [RANGE_CAP * noise]) * stages)
        self.register_buffer("caps", caps.reshape(1, -1, 1, 1))
        # Start from flat, moderate maps: a tiny head weight, a bias at INIT_SIGMA (σz as σx: isotropic).
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            init = torch.tensor(([INIT_SIGMA[0]] * (len(spatial)) + [INIT_SIGMA[2] * noise]) * stages)
            self.head.bias.copy_(torch.log(init / (caps - init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        x = F.pad(x, (0, -w % PATCH, 0, -h % PATCH), mode="replicate")
        t = self.attn1(F.pixel_unshuffle(x, PATCH))
        t = t + self.attn2(t)
        t = self.norm(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        s = self.caps * torch.sigmoid(self.head(t)) + SIGMA_FLOOR
        return F.interpolate(s, scale_factor=PATCH, mode="bilinear", align_corners=False)[:, :, :h, :w]


class F2N(nn.Module):
    """The whole denoiser: ``filter_stages(x, *predictor(x))``, on ``(N, C, H, W)`` images or, with
    ``volume=True``, on ``(N, C, D, H, W)`` volumes whose slices are ``slice_step`` in-plane pixels apart."""

    def __init__(self, channels: int = 1, noise: float = 1.0, volume: bool = False, slice_step: float = 1.0):
        super().__init__()
        self.volume, self.slice_step = volume, float(slice_step)
        self.predictor = SigmaPredictor(channels, noise, volume=volume, slice_step=slice_step)

    def sigmas(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted maps, ``(N, 6, H, W)`` or ``(N, 8, D, H, W)``."""
        if not self.volume:
            return self.predictor(x)
        n, _, d, h, w = x.shape
        s = self.predictor(neighbour_slices(x))
        return s.reshape(n, d, -1, h, w).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sigmas(x)
        k = self.predictor.per_stage
        radius_z = RADIUS_Z if self.volume else 0
        return filter_stages(x, s[:, :k], s[:, k:], RADIUS, radius_z, self.slice_step)


# -- self-supervised pairs and loss ------------------------------------------------------------------

def pair_downsample(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-size sub-images from each 2×2 block: ``d1`` = mean of the anti-diagonal (top-right,
    bottom-left), ``d2`` = mean of the diagonal (top-left, bottom-right). H and W must be even."""
    d1 = 0.5 * (x[..., 0::2, 1::2] + x[..., 1::2, 0::2])
    d2 = 0.5 * (x[..., 0::2, 0::2] + x[..., 1::2, 1::2])
    return d1, d2


# The 2×2 block as [top-left, top-right, bottom-left, bottom-right]; the 6 pairs and the permutation
# that swaps each pair.
_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
_SWAPS = torch.tensor([[j if k == i else i if k == j else k for k in range(4)] for i, j in _PAIRS])


def _slicewise(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply an ``(N, C, H, W)`` → same-shape function to every slice of ``(N, C, D, H, W)`` (or to ``x``)."""
    if x.dim() == 4:
        return fn(x)
    n, c, d, h, w = x.shape
    return fn(x.transpose(1, 2).reshape(n * d, c, h, w)).reshape(n, d, c, h, w).transpose(1, 2)


def local_shuffle(x: torch.Tensor) -> torch.Tensor:
    """In every 2×2 block, swap the two pixels closest in value (Euclidean over channels).

    Deterministic. Swapping near-equal pixels hardly changes the signal but moves samples between the
    diagonal and the anti-diagonal, so ``d1`` and ``d2`` of the result are less tied to one fixed
    sampling pattern. H and W must be even; a volume is shuffled slice by slice.
    """
    return _slicewise(_local_shuffle, x)


def _local_shuffle(x: torch.Tensor) -> torch.Tensor:
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
    """``x`` filtered per channel (and slice) with :data:`DOG` (replicated edges), same size."""
    def one(t: torch.Tensor) -> torch.Tensor:
        c = t.shape[1]
        k = DOG.to(t.device).expand(c, 1, 7, 7)
        return F.conv2d(F.pad(t, (3, 3, 3, 3), mode="replicate"), k, groups=c)

    return _slicewise(one, x)


def f2n_loss(model: nn.Module, y: torch.Tensor, detail: float) -> torch.Tensor:
    """The published self-supervised loss on one image ``y`` (N, C, H, W) or volume (N, C, D, H, W);
    H, W even.

    With ``a, b = pair_downsample(local_shuffle(y))`` (in-plane, slice by slice) and ``D`` the denoiser::

        ⅓ |D(a) − D(b)|  +  ⅓ (|D(a) − d1 D(y)| + |D(b) − d2 D(y)|)  +  ⅓ |d1 D(y) − d2 D(y)|
          + detail · | |DoG ∗ y| − |DoG ∗ D(y)| |                              (all mean absolute errors)

    The first three terms ask the two sub-images to denoise to the same thing, at both scales, which
    rewards smoothing; the last keeps the band-pass energy of the input, the only tie to its detail.
    A smaller ``detail`` gives a smoother result. It presumes that ``a`` and ``b`` carry the same signal
    and independent noise; :func:`sure_loss` does not, and is the one for MR (see :class:`FitConfig`).
    """
    a, b = pair_downsample(local_shuffle(y))
    da, db = model(torch.cat([a, b])).chunk(2)  # one batched call: half the per-op overhead
    dy = model(y)
    dy1, dy2 = pair_downsample(dy)
    pair = (F.l1_loss(da, db) + F.l1_loss(da, dy1) + F.l1_loss(db, dy2) + F.l1_loss(dy1, dy2)) / 3
    return pair + detail * F.l1_loss(dog(y).abs(), dog(dy).abs())


SURE_STEP = 1e-3  # probe step of the divergence estimate, in units of the noise: small against σr


def noise_map(y: torch.Tensor, noise: float) -> torch.Tensor:
    """Per-pixel noise std for :func:`sure_loss`: ``noise`` everywhere except where a pixel's 3×3
    neighbourhood (in-plane) is exactly constant — zero-filled MR background, CT clipped to its range —
    which carries no noise. Shape ``(N, 1, [D,] H, W)``."""
    def flat(t: torch.Tensor) -> torch.Tensor:
        lo = -F.max_pool2d(-t, 3, 1, 1)
        return (F.max_pool2d(t, 3, 1, 1) == lo).all(1, keepdim=True).to(t.dtype)

    return noise * (1 - _slicewise(flat, y))


def sure_loss(model: nn.Module, y: torch.Tensor, noise: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stein's unbiased risk estimate of ``mean |D(y) − clean|²`` for additive Gaussian noise, in units of
    ``noise²``, on ``y`` (N, C, H, W) or (N, C, D, H, W).

    With per-pixel noise std ``s`` (:func:`noise_map`) and one Monte-Carlo probe ``p = s·g``,
    ``g ~ N(0, 1)``::

        SURE = mean |D(y) − y|² − mean s² + 2 · mean p·(D(y + εp) − D(y)) / ε

    whose expectation is the true mean squared error of ``D`` — of the very filter that is run, at full
    resolution, with no sub-images and no weight to tune. It needs the noise level (the engine measures
    it) and takes the noise as pixel-independent: finer structure that the noise estimate counts as noise
    is smoothed as noise.
    """
    s = noise_map(y, noise)
    probe = s * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    step = SURE_STEP
    out, moved = model(torch.cat([y, y + step * probe])).chunk(2)
    divergence = (probe * (moved - out)).mean() / step
    return ((out - y).square().mean() - s.square().mean() + 2 * divergence) / (noise * noise)


# -- fitting -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` runs.

    ``loss``: ``"sure"`` (:func:`sure_loss`) or ``"pair"`` (:func:`f2n_loss`, the published loss); None
    lets the caller choose by image kind (the engine: ``sure`` for MR, ``pair`` for the rest: CT's
    filtered-back-projection noise is spatially correlated, which SURE's pixel-independent noise model
    misreads). ``detail`` is the pair loss's edge-term weight λ (smaller = smoother): 400 is the published
    choice; correlated noise such as CT's inflates the input's band-pass energy, so CT wants less (the
    engine uses 100)."""

    iterations: int = 150  # most optimiser steps
    min_iterations: int = 60  # never stop earlier
    lr: float = 2e-2
    loss: str | None = None
    detail: float = 400.0
    crop: int = 256  # side of the random crop each step sees (2-D)
    crop_3d: tuple[int, int] = (6, 64)  # slices and side of the random crop each step sees (volumes)
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


def _crop(image: torch.Tensor, config: FitConfig, rng: np.random.Generator) -> torch.Tensor:
    """A random crop of at most ``crop``² of an image ``(C, H, W)``, or of ``crop_3d`` of a volume
    ``(C, D, H, W)``, with even height, width and offsets (even: for the 2×2 pairs), batched:
    ``(1, C, [d,] h, w)``."""
    depth, side = config.crop_3d if image.dim() == 4 else (1, config.crop)
    h, w = image.shape[-2:]
    ch, cw = min(side, h) // 2 * 2, min(side, w) // 2 * 2
    y0 = int(rng.integers(0, (h - ch) // 2 + 1)) * 2
    x0 = int(rng.integers(0, (w - cw) // 2 + 1)) * 2
    if image.dim() == 3:
        return image[None, :, y0:y0 + ch, x0:x0 + cw]
    d = image.shape[1]
    cd = min(depth, d)
    z0 = int(rng.integers(0, d - cd + 1))
    return image[None, :, z0:z0 + cd, y0:y0 + ch, x0:x0 + cw]


def fit(
    images: Sequence[np.ndarray],
    noise: float,
    config: FitConfig = FitConfig(),
    progress: Callable[[float, str], None] | None = None,
    cancel=None,
    slice_step: float | None = None,
) -> FitResult:
    """Fit an :class:`F2N` to one or a few images ``(C, H, W)`` or volumes ``(C, D, H, W)`` (float32, same
    C; H, W ≥ 2). ``noise`` is their noise std in the same units (the engine's
    ``quietlens.engine.noise.estimate.pixel_sigma``): the unit of ``sigma_r`` and SURE's noise level.
    ``slice_step`` (volumes): slice spacing in in-plane pixels, 1 when None.

    Deterministic for a given ``config.seed`` (and thread count): the weights are initialised from the
    seed, crops and probes are drawn from generators seeded with it, and step ``i`` uses image
    ``i mod len``. ``cancel`` (a ``CancelToken``) is checked every step; ``progress(fraction, message)``
    is called every step. Stops after ``config.iterations`` steps, or earlier once an exponential average
    of the loss has not improved by ``tolerance`` (relative) for ``patience`` steps.
    """
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _fit(images, noise, config, progress, cancel, slice_step)
    finally:
        torch.set_num_threads(threads)


def _fit(images, noise, config, progress, cancel, slice_step) -> FitResult:
    """The body of :func:`fit`, run under the chosen thread count."""
    t0 = time.perf_counter()
    device = torch.device(config.device)
    channels = images[0].shape[0]
    volume = images[0].ndim == 4
    noise = max(float(noise), 1e-6)  # a noiseless image still gets finite, positive range widths
    loss_name = config.loss or "pair"
    if loss_name not in ("pair", "sure"):
        raise ValueError(f"unknown F2N loss {config.loss!r} (use 'pair' or 'sure')")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = F2N(channels, noise, volume, slice_step or 1.0).to(device)
    data = [torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32)).to(device) for im in images]
    rng = np.random.default_rng(config.seed)
    probes = torch.Generator(device=device).manual_seed(config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    # Cosine decay to a tenth: large steps first, fine ones by the time a plateau can be declared.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.iterations, eta_min=config.lr / 10)
    result = FitResult(model, noise)
    smooth, best, since_best = None, math.inf, 0
    for step in range(config.iterations):
        if cancel is not None:
            cancel.check()
        y = _crop(data[step % len(data)], config, rng)
        if loss_name == "sure":
            loss = sure_loss(model, y, noise, probes)
        else:
            loss = f2n_loss(model, y, config.detail)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = loss.item()
        result.losses.append(value)
        result.iterations = step + 1
        smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
        if best == math.inf or smooth < best - config.tolerance * abs(best):  # SURE may go negative
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


def export_predictor(predictor: SigmaPredictor, height: int, width: int) -> bytes:
    """The fitted predictor as an ONNX graph: input ``image`` ``(N, C_in, H, W)`` (a volume's slices each
    with its neighbours, see :func:`neighbour_slices`), output ``sigmas`` ``(N, K·2, H, W)``: stage 1 then
    stage 2 maps (:class:`SigmaPredictor`). H and W are fixed (the padding to whole patches depends on
    them), N is free."""
    c_in = predictor.attn1.qkv.in_channels // (PATCH * PATCH)
    example = torch.zeros(1, c_in, height, width)
    return _export(predictor, (example,), ["image"], ["sigmas"], {"image": {0: "n"}, "sigmas": {0: "n"}})


def export_filter(radius: int = RADIUS) -> bytes:
    """The 2-D filter graph (no weights): inputs ``image`` (N, C, H, W), ``sigma1``, ``sigma2``
    (N, 3, H, W); output ``denoised`` (N, C, H, W). N, C, H and W are all free."""
    dims = {0: "n", 1: "c", 2: "h", 3: "w"}
    sig = {0: "n", 2: "h", 3: "w"}
    example = (torch.rand(1, 1, 16, 16), torch.ones(1, 3, 16, 16), torch.ones(1, 3, 16, 16))
    return _export(FilterGraph(radius), example, ["image", "sigma1", "sigma2"], ["denoised"],
                   {"image": dims, "sigma1": sig, "sigma2": sig, "denoised": dims})


def export_filter3d(radius: int = RADIUS, radius_z: int = RADIUS_Z) -> bytes:
    """The 3-D filter graph (no weights): inputs ``image`` (N, C, D, H, W), ``sigma1``, ``sigma2``
    (N, 4, D, H, W), ``slice_step`` (1,); output ``denoised`` (N, C, D, H, W). All sizes free."""
    dims = {0: "n", 1: "c", 2: "d", 3: "h", 4: "w"}
    sig = {0: "n", 2: "d", 3: "h", 4: "w"}
    example = (torch.rand(1, 1, 5, 16, 16), torch.ones(1, 4, 5, 16, 16), torch.ones(1, 4, 5, 16, 16),
               torch.ones(1))
    return _export(FilterGraph3D(radius, radius_z), example, ["image", "sigma1", "sigma2", "slice_step"],
                   ["denoised"], {"image": dims, "sigma1": sig, "sigma2": sig, "denoised": dims})


def filter_manifest_entry(data: bytes, radius: int = RADIUS, radius_z: int | None = None) -> dict:
    """The manifest fields (``quietlens.engine.catalogue.ModelEntry``; file and sha256 are derived) for an
    exported filter graph: the 2-D one, or the 3-D one when ``radius_z`` is given."""
    volume = radius_z is not None
    name = f"f2n-filter3d-r{radius}z{radius_z}" if volume else f"f2n-filter-r{radius}"
    image = ["n", "c", "d", "h", "w"] if volume else ["n", "c", "h", "w"]
    sig = ["n", 4, "d", "h", "w"] if volume else ["n", 3, "h", "w"]
    inputs = [{"name": "image", "shape": image, "range": None},
              {"name": "sigma1", "shape": sig, "range": [SIGMA_FLOOR, None]},
              {"name": "sigma2", "shape": sig, "range": [SIGMA_FLOOR, None]}]
    if volume:
        inputs.append({"name": "slice_step", "shape": [1], "range": [0, None]})
    provenance = {
        "script": "python -m quietlens.models.f2n --out assets/models --manifest",
        "source": f"models/f2n.py: {'FilterGraph3D' if volume else 'FilterGraph'} (two bilateral stages, "
                  "fixed window)",
        "opset": OPSET,
        "radius": radius,
        "weights": "none: sigma maps are inputs",
        "torch": torch.__version__,
    }
    if volume:
        provenance["radius_z"] = radius_z
    return {
        "id": name,
        "method": "f2n",
        "modality": "any",
        "inputs": inputs,
        "outputs": [{"name": "denoised", "shape": image, "range": None}],
        "receptive_field": 2 * radius,  # in-plane; through-plane it is 2 · radius_z slices
        "tile_multiple": 1,
        # Peak ONNX Runtime (1.32, CPU) memory per pixel / voxel of a call: measured as the growth of the
        # peak resident set on a 1024² image / a 16 × 128² volume (the unrolled offsets keep many planes).
        "bytes_per_pixel": 1400 if volume else 520,
        "provenance": provenance,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Write the 2-D and 3-D filter graphs into ``--out`` and print (or, with ``--manifest``, record) their
    entries."""
    parser = argparse.ArgumentParser(prog="python -m quietlens.models.f2n", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("assets/models"))
    parser.add_argument("--radius", type=int, default=RADIUS)
    parser.add_argument("--radius-z", type=int, default=RADIUS_Z)
    parser.add_argument("--manifest", action="store_true",
                        help="add or replace the entry in OUT/manifest.json (schema 1)")
    args = parser.parse_args(argv)
    from quietlens.engine import catalogue

    graphs = [(export_filter(args.radius), None), (export_filter3d(args.radius, args.radius_z), args.radius_z)]
    entries = []
    for data, radius_z in graphs:
        fields = filter_manifest_entry(data, args.radius, radius_z)
        if args.manifest:
            catalogue.add(args.out, data, fields)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{fields['id']}.onnx").write_bytes(data)
        entries.append(fields)
    print(json.dumps(entries, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
