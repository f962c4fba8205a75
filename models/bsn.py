"""Blind-spot networks and self-supervised losses for real (spatially correlated) camera noise.

The network is AP-BSN's DBSNl, used by both C-BSN and SDAP: a 1×1 head, two branches that start with a
centre-masked convolution (3×3 in the dilation-2 branch, 5×5 in the dilation-3 branch) followed by
residual dilated 3×3 modules, and a 1×1 tail. With the centre taps masked, no output pixel can see the
input pixel at its own position (the first layer's offsets are not multiples of the branch's dilation,
so no sum of later offsets brings them back to zero): the network is *blind* and can be trained to
predict each noisy pixel from its neighbours. At the paper size (width 128, 9 modules) it has
3,656,131 parameters, 3.65 M multiply-adds per pixel and a receptive-field radius of 29 px.

Real sRGB noise is correlated over a few pixels, so a blind spot of one pixel is not enough: the noise
of the neighbours predicts the noise of the centre. Both methods therefore feed the blind network
sub-sampled images whose pixels lie 5 px apart in the original:

* C-BSN trains the blind network on a stride-5 pixel-shuffle down-sampling (``pd``) of the input and
  teaches the *same* weights without the mask (``blind=False``) to reproduce, at full resolution, what
  the blind network predicts on random 2×2 sub-samples. Inference is one non-blind pass.
* SDAP builds 25 random sub-images per crop (every 5×5 cell shuffled independently) and trains the
  blind network to map each sub-image to the next one. Inference is blind: stride-2 ``pd``, the
  network, the inverse, then one more blind pass at full resolution ("E").

Everything here works on standardised images ``z = (x − μ) / max(σ, 1/120)`` (per channel), so one set of
weights serves dark and bright, flat and busy photos alike.

The CPU students (:class:`Student`) are compact U-Nets: a thin full-resolution branch (``full``
channels, one 3×3 convolution in, two out, so fine detail is seen at its own scale) and a U-Net below it,
entered by space-to-depth (2×2 pixels → 12 channels at 1/2 resolution) and widening ×2 per level. They
output a correction added to the input (an untrained student is the identity), are trained supervised on
synthetic noisy/clean pairs and distilled from their teacher on real noisy photos
(:mod:`quietlens.models.recipe`).

The ONNX export of the inference paths and the students is checked against PyTorch. The exported graph takes ``x`` (N, 3, H, W), a standardised image, and returns ``y`` of the same shape; a student told the
noise level takes (N, 6, H, W): the image, then the noise σ per pixel in the same units (see
:class:`Student` and :class:`LevelNet`, the network that estimates it).
Blind-spot masks are baked in: the masked weights are constants of the graph (constant folding of
``weight × mask``), so nothing at run time can switch the blind spot off by mistake.

The ONNX file is the single artefact we ship and register, so fine-tuning starts from it too:
:func:`load_weights_from_onnx` reads the convolution weights back in the order the network calls its
convolutions (checked by shape). For SDAP graphs, where the network runs twice, the first run's nodes
are used; masked centre taps come back as zeros, which the always-blind SDAP network never reads.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from quietlens.engine.image import STD_FLOOR

SIGMA_FLOOR = STD_FLOOR  # σ floor of the standardisation: flat crops are not blown up into noise


@dataclass(frozen=True)
class BSNConfig:
    """Size of a :class:`DBSN`. ``PAPER`` is AP-BSN's; smaller ones trade quality for CPU time."""

    width: int = 128
    modules: int = 9
    channels: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


PAPER = BSNConfig(128, 9)


class MaskedConv2d(nn.Conv2d):
    """A convolution whose centre tap is ignored when ``blind`` (the stored weight keeps it, so the
    same module also runs non-blind, as C-BSN needs)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__(channels, channels, kernel, padding=kernel // 2)
        mask = torch.ones(1, 1, kernel, kernel)
        mask[..., kernel // 2, kernel // 2] = 0
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, blind: bool = True) -> torch.Tensor:  # type: ignore[override]
        weight = self.weight * self.mask if blind else self.weight
        return F.conv2d(x, weight, self.bias, padding=self.padding)


class DilatedModule(nn.Module):
    """``x + conv1×1(relu(dilated conv3×3(x)))``.

    The 1×1 conv starts at zero, so every module starts as the identity ("zero-init residual", as in
    Goyal et al. 2017 / ReZero): the untrained network behaves like a shallow one and learns to
    reproduce the signal from its neighbours within a few hundred steps instead of thousands, which
    is what makes CPU-sized training budgets usable. It changes the starting point, not the network.
    """

    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv2d(width, width, 1)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.relu(self.conv(x)))


class Branch(nn.Module):
    """Masked (2d−1)×(2d−1) conv, two 1×1 convs, ``modules`` dilated modules of dilation d, one 1×1."""

    def __init__(self, width: int, dilation: int, modules: int):
        super().__init__()
        self.masked = MaskedConv2d(width, 2 * dilation - 1)
        self.pre = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU())
        self.body = nn.Sequential(*[DilatedModule(width, dilation) for _ in range(modules)])
        self.post = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor, blind: bool) -> torch.Tensor:
        x = self.pre(F.relu(self.masked(x, blind)))
        return F.relu(self.post(self.body(x)))


class DBSN(nn.Module):
    """AP-BSN's DBSNl with ``width`` channels and ``modules`` dilated modules per branch.

    ``forward(x, blind=True)`` maps (N, C, H, W) to the same shape, any H and W (zero padding at the
    border). ``blind=False`` uses the centre taps too: C-BSN's conditional, non-blind mode.
    """

    def __init__(self, config: BSNConfig = PAPER):
        super().__init__()
        self.config = config
        w, c = config.width, config.channels
        self.head = nn.Conv2d(c, w, 1)
        self.branch2 = Branch(w, 2, config.modules)
        self.branch3 = Branch(w, 3, config.modules)
        self.tail = nn.Sequential(
            nn.Conv2d(2 * w, w, 1), nn.ReLU(),
            nn.Conv2d(w, w // 2, 1), nn.ReLU(),
            nn.Conv2d(w // 2, w // 2, 1), nn.ReLU(),
            nn.Conv2d(w // 2, c, 1),
        )

    @property
    def radius(self) -> int:
        """Receptive-field radius in pixels (the dilation-3 branch reaches furthest)."""
        return 2 + 3 * self.config.modules

    def forward(self, x: torch.Tensor, blind: bool = True) -> torch.Tensor:
        x = F.relu(self.head(x))
        return self.tail(torch.cat([self.branch2(x, blind), self.branch3(x, blind)], dim=1))

    @torch.no_grad()
    def init_neighbour_mean(self) -> "DBSN":
        """Start from a working blind denoiser instead of noise: set the weights so that the network
        outputs, per colour channel, the mean of the two masked rings (3×3 and 5×5 without the centre),
        while every other channel keeps its random initialisation and can learn from the first step.

        Channels 0–2 carry ``relu(x)`` and 3–5 ``relu(−x)`` through every layer (ReLUs pass them
        unchanged as they are non-negative), and the output takes their difference, ``x``. A randomly
        initialised DBSN needs thousands of steps to find even this much (its first outputs are flat,
        grey and pulled to the mean); from here the training refines a sensible prediction, which is
        what a CPU budget of a few hundred steps can afford. Needs ``width ≥ 12``.
        """
        c, w = self.config.channels, self.config.width
        k = 2 * c  # the carried channels
        if w // 2 < k:
            raise ValueError(f"neighbour-mean initialisation needs width >= {4 * c}, got {w}")

        def carry(conv: nn.Conv2d, weight: torch.Tensor) -> None:
            conv.weight[:k] = 0
            conv.weight[:k, : weight.shape[1]] = weight
            if conv.bias is not None:
                conv.bias[:k] = 0

        eye = torch.eye(k)[:, :, None, None]
        sign = torch.cat([torch.eye(c), -torch.eye(c)])[:, :, None, None]
        carry(self.head, sign)
        for branch in (self.branch2, self.branch3):
            kernel = branch.masked.kernel_size[0]
            ring = torch.ones(kernel, kernel)
            ring[kernel // 2, kernel // 2] = 0
            carry(branch.masked, eye * (ring / ring.sum()))
            carry(branch.pre[0], eye)
            carry(branch.pre[2], eye)
            carry(branch.post, eye)
        carry(self.tail[0], torch.cat([eye, torch.zeros(k, w - k, 1, 1), eye], dim=1) * 0.5)
        carry(self.tail[2], eye)
        carry(self.tail[4], eye)
        out = self.tail[6]
        out.weight.zero_()  # the random channels join in as they learn
        out.weight[:, :k] = torch.cat([torch.eye(c), -torch.eye(c)], dim=1)[:, :, None, None]
        out.bias.zero_()
        return self


def conv_macs_per_pixel(net: nn.Module, channels: int | None = None, size: int = 64) -> float:
    """Multiply-adds per input pixel of any convolutional network, counted on a ``size``² input of
    ``channels`` (default: the network's ``inputs``, else 3) (weights only: every conv output element
    costs ``cin/groups × kh × kw``)."""
    total = 0

    def count(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * module.in_channels // module.groups * kh * kw

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            net(torch.zeros(1, channels or _inputs(net), size, size))
    finally:
        for h in hooks:
            h.remove()
    return total / size**2


# -- the students ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudentConfig:
    width: int = 16  # channels at 1/2 resolution, doubling per level below
    channels: int = 3
    full: int = 0  # channels of the full-resolution branch (0: none)
    levels: int = 3
    depth: int = 2  # 3×3 convolutions per level, on the way down and on the way up
    level: int = 0  # 1: the input carries a noise-level map after the image (see Student)

    def __post_init__(self):
        if (self.width < 1 or self.full < 0 or self.levels < 1 or self.depth < 1 or self.channels < 1
                or self.level not in (0, 1)):
            raise ValueError(f"invalid student size {self}")

    @property
    def inputs(self) -> int:
        """Input channels: the image's, and as many of its noise-level map with ``level``."""
        return self.channels * (1 + self.level)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StudentConfig":
        optional = {"level"}  # added later: graphs recorded without it take no level map
        missing = set(cls.__dataclass_fields__) - set(data) - optional
        unknown = set(data) - set(cls.__dataclass_fields__)
        if missing or unknown:
            raise ValueError(f"not a student architecture of this version (missing {sorted(missing)}, "
                             f"unknown {sorted(unknown)})")
        return cls(**{k: int(v) for k, v in data.items()})


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU())


def _stack(cin: int, cout: int, depth: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, stride), *[_conv(cout, cout) for _ in range(depth - 1)])


class _Up(nn.Module):
    """×2 up-sampling by a 1×1 conv to 4× the channels and depth-to-space (cheap, no checkerboard)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, 4 * cout, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class Student(nn.Module):
    """The compact U-Net (module docstring). With ``config.level`` it is told the noise level, FFDNet's
    knob: the input's last ``channels`` planes are the noise's standard deviation per pixel and channel
    (standardised like the image: noise σ / the channel's σ), added by 1×1 convolutions to the first layer
    of the U-Net (at 1/2 resolution) and of the full-resolution branch, before their ReLU. They start at zero, so a level student made from a plain
    one starts as that one (:meth:`load_plain`)."""

    def __init__(self, config: StudentConfig = StudentConfig()):
        super().__init__()
        self.config = config
        w, c, d, f = config.width, config.channels, config.depth, config.full
        widths = [w * 2**i for i in range(config.levels)]
        self.multiple = 2 ** config.levels
        self.inputs = config.inputs
        self.head = nn.Sequential(nn.Conv2d(c, f, 3, padding=1), nn.ReLU()) if f else None
        self.down = nn.PixelUnshuffle(2)
        self.enc = nn.ModuleList([_stack(4 * c, widths[0], d)] +
                                 [_stack(widths[i - 1], widths[i], d, stride=2) for i in range(1, len(widths))])
        self.mid = _stack(widths[-1], widths[-1], d)
        self.ups = nn.ModuleList([_Up(widths[i], widths[i - 1]) for i in range(len(widths) - 1, 0, -1)])
        self.dec = nn.ModuleList([_stack(2 * widths[i - 1], widths[i - 1], d) for i in range(len(widths) - 1, 0, -1)])
        if f:
            self.to_full = _Up(widths[0], f)
            self.tail = nn.Sequential(_conv(2 * f, f), nn.Conv2d(f, c, 3, padding=1))
        else:
            self.out = nn.Conv2d(widths[0], 4 * c, 3, padding=1)
            self.up = nn.PixelShuffle(2)
        last = self.tail[-1] if f else self.out
        zeroed = [last]  # starts as the identity: training learns only the correction
        self.level_enc = self.level_head = None
        if config.level:
            self.level_enc = nn.Conv2d(4 * c, widths[0], 1)
            self.level_head = nn.Conv2d(c, f, 1) if f else None
            zeroed += [m for m in (self.level_enc, self.level_head) if m is not None]
        for m in zeroed:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def load_plain(self, state: dict) -> "Student":
        """Start from a plain student's weights (same size, no level input): the level layers stay zero."""
        missing, unknown = self.load_state_dict(state, strict=False)
        if unknown or set(missing) != {k for k in self.state_dict() if k.startswith("level_")}:
            raise ValueError(f"not a plain student of this size (missing {missing}, unknown {unknown})")
        return self

    def _first(self, layer: nn.Sequential, x: torch.Tensor, level: torch.Tensor | None, join) -> torch.Tensor:
        """``layer`` (a stack whose first item is conv → ReLU) with ``join(level)`` added before that ReLU."""
        first = layer[0] if isinstance(layer[0], nn.Sequential) else layer
        h = first[0](x)
        if level is not None:
            h = h + join(level)
        h = first[1](h)
        return layer[1:](h) if first is not layer else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config.channels
        z, level = (x[:, :c], x[:, c:]) if self.config.level else (x, None)
        skips = []
        h = self._first(self.enc[0], self.down(z), None if level is None else self.down(level), self.level_enc)
        skips.append(h)
        for enc in self.enc[1:]:
            h = enc(h)
            skips.append(h)
        h = self.mid(h)
        for up, dec, skip in zip(self.ups, self.dec, reversed(skips[:-1])):
            h = dec(torch.cat([up(h), skip], dim=1))
        if self.head is not None:
            return z + self.tail(torch.cat([self.to_full(h), self._first(self.head, z, level, self.level_head)], dim=1))
        return z + self.up(self.out(h))


@dataclass(frozen=True)
class LevelConfig:
    width: int = 32
    depth: int = 5  # 3×3 convolutions: the first and last plain, those between dilated by 2

    def to_dict(self) -> dict:
        return asdict(self)


class LevelNet(nn.Module):
    """A photo's noise level per pixel and channel, as a :class:`Student` with ``level`` is told it (CBDNet's
    noise-estimation subnetwork): a standardised image in, the noise's σ in the same units out (softplus,
    so never negative). Trained on the synthesis' own per-pixel level (:func:`quietlens.models.synth.
    srgb_pair`); the engine feeds the students the per-channel median of its map over the photo."""

    def __init__(self, config: LevelConfig = LevelConfig(), channels: int = 3):
        super().__init__()
        self.config, self.inputs, self.multiple = config, channels, 1
        w = config.width
        layers = [nn.Conv2d(channels, w, 3, padding=1), nn.ReLU()]
        for _ in range(config.depth - 2):
            layers += [nn.Conv2d(w, w, 3, padding=2, dilation=2), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(w, channels, 3, padding=1))

    @property
    def radius(self) -> int:
        """Receptive-field radius: 1 px for each plain 3×3, 2 for each dilated one."""
        return 2 + 2 * (self.config.depth - 2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.body(z))


# -- pixel-shuffle down-sampling and random sub-sampling ---------------------------------------------

def pd(x: torch.Tensor, s: int) -> torch.Tensor:
    """Pixel-shuffle down-sampling as a batch: (N, C, H, W) → (N·s², C, H/s, W/s); sub-image ``i·s + j``
    holds the pixels at rows ≡ i and columns ≡ j (mod s). H and W must be multiples of ``s``."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(n * s * s, c, h // s, w // s)


def pd_inverse(x: torch.Tensor, s: int) -> torch.Tensor:
    """The inverse of :func:`pd`."""
    ns, c, h, w = x.shape
    n = ns // (s * s)
    x = x.reshape(n, s, s, c, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(n, c, h * s, w * s)


def _cells(x: torch.Tensor, s: int) -> torch.Tensor:
    """(N, C, H, W) → (N, C, H/s, W/s, s²): the pixels of every s×s cell along the last axis."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // s, s, w // s, s).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(n, c, h // s, w // s, s * s)


def random_subimages(x: torch.Tensor, s: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """SDAP's Random Sub-samples Generation: every s×s cell gets its own random permutation of its s²
    pixels (the same for all channels), and sub-image ``j`` takes the ``j``-th pixel of that order in
    every cell. Returns (s², N, C, H/s, W/s); together the sub-images hold each pixel exactly once."""
    n, _, h, w = x.shape
    cells = _cells(x, s)
    noise = torch.rand(n, 1, h // s, w // s, s * s, generator=generator, device="cpu").to(x.device)
    order = noise.argsort(dim=-1).expand_as(cells)  # vectorised: one permutation per cell
    return cells.gather(-1, order).permute(4, 0, 1, 2, 3)


def random_subsample(x: torch.Tensor, index: torch.Tensor, s: int = 2) -> torch.Tensor:
    """One pixel per s×s cell: ``index`` (N, H/s, W/s) in [0, s²) says which (row-major in the cell)."""
    cells = _cells(x, s)
    idx = index[:, None, :, :, None].expand(-1, cells.shape[1], -1, -1, 1)
    return cells.gather(-1, idx)[..., 0]


# -- losses --------------------------------------------------------------------------------------------

def cbsn_loss(net: DBSN, z: torch.Tensor, weight: float, generator: torch.Generator | None = None,
              stride: int = 5) -> tuple[torch.Tensor, dict[str, float]]:
    """C-BSN's objective on standardised crops ``z`` (H, W multiples of ``stride`` and 2).

    ``L_blind = |pd⁻¹(f_blind(pd(z, 5))) − z|`` trains the blind spot on noise-decorrelated pixels;
    ``L_self = |f(z) − z|`` and ``L_inv = |R(f(z)) − sg(f_blind(R(z)))|`` (``R``: a random pixel of every
    2×2 cell, ``sg``: no gradient) teach the non-blind network ``f`` to reproduce the blind prediction at
    full resolution. Total ``L_blind + weight·(L_self + 2·L_inv)``; ``weight`` ramps up from 0 over
    training, and the non-blind terms are skipped (not computed) while it is 0.
    """
    blind = pd_inverse(net(pd(z, stride), blind=True), stride)
    l_blind = (blind - z).abs().mean()
    parts = {"blind": l_blind.item()}
    if weight <= 0:
        return l_blind, parts
    full = net(z, blind=False)
    l_self = (full - z).abs().mean()
    n, _, h, w = z.shape
    index = torch.randint(0, 4, (n, h // 2, w // 2), generator=generator, device="cpu").to(z.device)
    with torch.no_grad():
        target = net(random_subsample(z, index), blind=True)
    l_inv = (random_subsample(full, index) - target).abs().mean()
    parts.update(self=l_self.item(), inv=l_inv.item())
    return l_blind + weight * (l_self + 2 * l_inv), parts


def sdap_loss(net: DBSN, z: torch.Tensor, generator: torch.Generator | None = None,
              stride: int = 5) -> tuple[torch.Tensor, dict[str, float]]:
    """SDAP's cyclic sample-difference loss ``Σ_j |f(s_j) − s_(j+1 mod 25)|`` over the 25 random
    sub-images of :func:`random_subimages` (a sum over j of per-pixel means). Neighbouring sub-images
    share the clean signal but have nearly independent noise, so the blind network learns the signal."""
    subs = random_subimages(z, stride, generator)  # (25, N, C, h, w)
    k, n = subs.shape[:2]
    out = net(subs.reshape(k * n, *subs.shape[2:]), blind=True).reshape(subs.shape)
    loss = (out - subs.roll(-1, dims=0)).abs().mean(dim=(1, 2, 3, 4)).sum()
    return loss, {"cyclic": loss.item()}


# -- inference paths (what the exported graphs compute) ----------------------------------------------

class CBSNInference(nn.Module):
    """C-BSN at inference: one non-blind pass on the standardised image."""

    def __init__(self, net: DBSN):
        super().__init__()
        self.net = net

    @property
    def radius(self) -> int:
        return self.net.radius

    multiple = 1

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z, blind=False)


class SDAPInference(nn.Module):
    """SDAP(E) at inference: stride-2 ``pd`` → blind net → inverse, then a blind pass at full resolution.
    H and W must be even; the radius is twice the network's (the ``pd`` pass) plus once (the E pass)."""

    def __init__(self, net: DBSN):
        super().__init__()
        self.net = net

    @property
    def radius(self) -> int:
        return 3 * self.net.radius

    multiple = 2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = pd_inverse(self.net(pd(z, 2), blind=True), 2)
        return self.net(y, blind=True)


INFERENCE = {"cbsn": CBSNInference, "sdap": SDAPInference}


def standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image, per-channel ``(x − μ) / max(σ, 1/120)`` of (N, C, H, W); returns ``z, μ, σ``."""
    mu = x.mean(dim=(2, 3), keepdim=True)
    sigma = x.std(dim=(2, 3), keepdim=True, unbiased=False).clamp_min(SIGMA_FLOOR)
    return (x - mu) / sigma, mu, sigma


# -- ONNX export ---------------------------------------------------------------------------------------

OPSET = 17


def export_onnx(module: nn.Module, channels: int | None = None, size: int = 64) -> bytes:
    """Serialised ONNX graph of ``module`` (eval mode, float32, CPU) with dynamic N, H and W; ``channels``:
    its input's (default: the module's ``inputs``, else 3)."""
    module = module.eval().cpu()
    channels = channels or _inputs(module)
    dummy = torch.zeros(1, channels, size, size)
    buf = io.BytesIO()
    axes = {0: "N", 2: "H", 3: "W"}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices are not actionable
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), buf, input_names=["x"], output_names=["y"], opset_version=OPSET,
                          dynamic_axes={"x": axes, "y": axes}, do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def onnx_output(data: bytes, x: np.ndarray) -> np.ndarray:
    """Run a serialised graph once on the CPU with one thread (for checks, not for speed)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0]


def _inputs(module: nn.Module) -> int:
    """A module's input channels: its ``inputs`` (students, the level network), else RGB."""
    return int(getattr(module, "inputs", 3))


def parity(module: nn.Module, data: bytes, size: int = 96, seed: int = 0, channels: int | None = None) -> float:
    """Largest |ONNX − PyTorch| on a random standardised input of ``size``² (a multiple of 8)."""
    x = torch.randn(1, channels or _inputs(module), size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = module.eval().cpu()(x).numpy()
    return float(np.abs(onnx_output(data, x.numpy()) - expected).max())


def export_checked(module: nn.Module, tolerance: float = 1e-4, size: int = 96) -> bytes:
    """:func:`export_onnx`, refusing graphs that differ from PyTorch by more than ``tolerance`` or whose
    weights do not read back exactly."""
    data = export_onnx(module)
    diff = parity(module, data, size)
    if not diff <= tolerance:
        raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.3g} (> {tolerance:g})")
    back = load_weights_from_onnx(_fresh_copy(module), data)
    for name, value in module.state_dict().items():
        if not _same_up_to_masked_centre(value, back.state_dict()[name]):
            raise RuntimeError(f"weight {name} does not read back from the ONNX graph")
    return data


def _fresh_copy(module: nn.Module) -> nn.Module:
    import copy

    fresh = copy.deepcopy(module)
    for p in fresh.parameters():
        p.data.zero_()
    return fresh


def _same_up_to_masked_centre(a: torch.Tensor, b: torch.Tensor) -> bool:
    if torch.equal(a, b):
        return True
    if a.ndim == 4 and a.shape[-1] == a.shape[-2] and a.shape[-1] > 1:  # a blind graph zeroes the centre
        c = a.shape[-1] // 2
        a = a.clone()
        a[..., c, c] = 0
        return torch.equal(a, b)
    return False


def _conv_call_order(module: nn.Module) -> list[nn.Conv2d]:
    """The convolution modules in the order one forward pass calls them (first call of each)."""
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m) if m not in order else None)
             for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, _inputs(module), 16, 16))
    finally:
        for h in hooks:
            h.remove()
    return order


def load_weights_from_onnx(module: nn.Module, data: bytes) -> nn.Module:
    """Copy the Conv weights and biases of an exported graph into ``module`` (same architecture)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_model_from_string(data).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # constant folding may leave weights as Constant nodes, and the exporter
        # stores identical tensors (e.g. zero-initialised ones) once, aliased through Identity nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    convs = [n for n in graph.node if n.op_type == "Conv"]
    targets = _conv_call_order(module)
    if len(convs) < len(targets):
        raise ValueError(f"the graph has {len(convs)} convolutions, the network needs {len(targets)}")
    with torch.no_grad():
        for node, conv in zip(convs, targets):
            weight = consts.get(node.input[1])
            if weight is None or tuple(weight.shape) != tuple(conv.weight.shape):
                got = None if weight is None else weight.shape
                raise ValueError(f"graph weight {node.input[1]} has shape {got}, expected {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(weight.copy()))
            if conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(consts[node.input[2]].copy()))
    return module


def receptive_radius(module: nn.Module, channels: int | None = None) -> int:
    """The largest distance (in pixels, along rows or columns) from an output pixel to an input pixel
    it depends on: the tiling halo that makes tiled inference exact.

    Measured structurally: on a copy with positive weights and biases every ReLU passes, so the input
    gradient of one output pixel is non-zero exactly on its dependency set (random weights could hide
    some of it behind inactive ReLUs). Every phase of the graph's ``multiple`` grid is probed.
    """
    import copy

    probe = copy.deepcopy(module).eval().double()
    with torch.no_grad():
        for conv in (m for m in probe.modules() if isinstance(m, nn.Conv2d)):
            conv.weight.copy_(conv.weight.abs() + 1e-3)
            if conv.bias is not None:
                conv.bias.fill_(1.0)
    m = getattr(module, "multiple", 1)
    channels = channels or _inputs(module)
    size = 64
    while True:
        x = torch.ones(1, channels, size, size, dtype=torch.float64, requires_grad=True)
        y = probe(x)
        radius, touches = 0, False
        centre = size // 2 // m * m
        for dy in range(m):
            for dx in range(m):
                (grad,) = torch.autograd.grad(y[0, :, centre + dy, centre + dx].sum(), x, retain_graph=True)
                rows, cols = torch.nonzero(grad[0].abs().sum(0), as_tuple=True)
                radius = max(radius, int((rows - centre - dy).abs().max()), int((cols - centre - dx).abs().max()))
                touches |= bool(rows.min() == 0 or cols.min() == 0 or rows.max() == size - 1 or cols.max() == size - 1)
        if not touches:
            return radius
        size *= 2


def bytes_per_pixel(module: nn.Module) -> float:
    """Peak ONNX Runtime memory per pixel of a (padded) tile, for the tiling budget: float32 activations
    alive at once, with margin. Blind-spot graphs keep about eight ``width``-channel maps alive (the head
    output, both branches, a residual module's input, output and temporaries, the concatenation);
    students about five ``full``-channel maps at full resolution (branch, up-sampled features, their
    concatenation, the tail) plus input and output, and the equivalent of ``width`` channels below."""
    inner = getattr(module, "net", module)
    cfg = inner.config
    if hasattr(inner, "branch2"):
        return float(4 * (8 * cfg.width + 16))
    if isinstance(inner, LevelNet):  # two width-channel maps at full resolution, input and output
        return float(4 * (2 * cfg.width + 2 * inner.inputs + 16))
    return float(4 * (5 * cfg.full + cfg.inputs + cfg.channels + cfg.width + 16))


def architecture(module: nn.Module) -> dict:
    """The architecture a graph's manifest entry records (its network's config)."""
    return getattr(module, "net", module).config.to_dict()


def entry_fields(module: nn.Module, model_id: str, method: str, provenance: dict,
                 receptive_field: int | None = None) -> dict:
    """Manifest fields (:class:`~quietlens.engine.catalogue.ModelEntry` minus file and sha256) for an
    exported teacher (a C-BSN/SDAP inference module) or student: tiling needs and architecture.
    ``receptive_field``: the radius when known (the same architecture's graph records it): measuring
    it takes a minute for SDAP's teacher."""
    inner = getattr(module, "net", module)
    image = "standardised: (x - mean) / std per channel"
    inputs = _inputs(module)
    if isinstance(module, LevelNet):
        role, out = "level", "the noise's std per pixel and channel, in the input's standardised units"
    else:
        role, out = "teacher" if inner is not module else "student", "standardised"
        if inputs > 3:
            image += "; then the noise's std per pixel and channel in the same units"
    return {
        "id": model_id, "method": method, "modality": "photo",
        "inputs": [{"name": "x", "shape": ["N", inputs, "H", "W"], "range": image}],
        "outputs": [{"name": "y", "shape": ["N", 3, "H", "W"], "range": out}],
        "receptive_field": receptive_radius(module) if receptive_field is None else int(receptive_field),
        "tile_multiple": int(getattr(module, "multiple", 1)),
        "bytes_per_pixel": bytes_per_pixel(module),
        "provenance": {**provenance, "role": provenance.get("role", role),
                       "architecture": architecture(module)},
    }
