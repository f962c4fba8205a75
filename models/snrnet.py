"""SNR-Net: a U-Net denoiser for variance-stabilised raw data, conditioned on the noise level.

Input: the four packed Bayer planes after the VST, normalised to [0, 1] (``z``, N×4×H×W), and a noise
level map ``t`` (N×1×H×W; a constant map for one noise level, or a spatially varying one so regions can
be denoised more or less). Output: the denoised ``z``.

Every block is ``x + conv(SiLU(conv(SiLU(x))·γ(t) + β(t)))``: the noise level modulates features per
pixel through 1×1 convolutions of ``t`` (average-pooled to each level's resolution). The output is
``z + t·r`` with ``r`` the network's residual, so it predicts the noise in units of its level and very
low noise levels need no precision from the weights. No normalisation layers, so the network is
translation-equivariant on the 16-pixel grid and tiled inference is exact.

With ``smoothers`` (Gaussian σ in packed pixels) the output is instead a per-pixel blend, by softmax
weights the network predicts, of that estimate and fixed Gaussian smoothings of ``z``: on a flat surface
averaging is then exact, where the estimate's own correction must match the noise to a few per cent (without
them the network leaves 1–4 % of the noise variance on a flat surface even when trained on flat scenes;
README, YOND).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CHANNELS = (16, 32, 64, 96, 128)
DEFAULT_BLOCKS = 1


class GuidedBlock(nn.Module):
    """Residual block whose inner features are scaled (γ) and shifted (β) by functions of ``t``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.gamma = nn.Sequential(nn.Conv2d(1, channels, 1), nn.SiLU(), nn.Conv2d(channels, channels, 1))
        self.beta = nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma(t)
        z = self.conv1(F.silu(x)) * gamma + self.beta(gamma)
        return x + self.conv2(F.silu(z))


class SNRNet(nn.Module):
    """A ``len(channels)``-level U-Net of :class:`GuidedBlock`; H and W must be multiples of
    ``2**(len(channels) - 1)``. ``t`` is scaled by ``t_scale`` inside so the conditioning sees O(1)."""

    def __init__(self, channels: tuple[int, ...] = DEFAULT_CHANNELS, blocks: int = DEFAULT_BLOCKS,
                 planes: int = 4, t_scale: float = 20.0, smoothers: tuple[float, ...] = ()):
        super().__init__()
        self.channels, self.blocks, self.t_scale = tuple(channels), blocks, t_scale
        self.smoothers = tuple(smoothers)
        self.head = nn.Conv2d(planes, channels[0], 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 2, stride=2) for a, b in zip(channels, channels[1:]))
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(channels, channels[1:]))
        self.enc = nn.ModuleList(self._stage(c) for c in channels)
        self.dec = nn.ModuleList(self._stage(c) for c in channels[:-1])
        self.tail = nn.Conv2d(channels[0], planes, 3, padding=1)
        if self.smoothers:
            self.mix = nn.Conv2d(channels[0], 1 + len(self.smoothers), 3, padding=1)
            with torch.no_grad():  # start from the network's own estimate
                self.mix.weight.zero_()
                self.mix.bias.zero_()
                self.mix.bias[0] = 4.0
            for i, sigma in enumerate(self.smoothers):
                g = gaussian(sigma)  # as a depthwise (planes, 1, 1, k) kernel: ONNX needs its shape fixed
                self.register_buffer(f"smoother{i}", g.view(1, 1, 1, -1).repeat(planes, 1, 1, 1), persistent=False)

    def _stage(self, c: int) -> nn.ModuleList:
        return nn.ModuleList(GuidedBlock(c) for _ in range(self.blocks))

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ts = [t * self.t_scale]
        for _ in self.down:
            ts.append(F.avg_pool2d(ts[-1], 2))
        x, skips = self.head(z), []
        for level, stage in enumerate(self.enc):
            for block in stage:
                x = block(x, ts[level])
            if level < len(self.down):
                skips.append(x)
                x = self.down[level](x)
        for level in reversed(range(len(self.dec))):
            x = self.up[level](x) + skips[level]
            for block in self.dec[level]:
                x = block(x, ts[level])
        out = z + t * self.tail(x)  # the correction in units of the noise level: exact at any level
        if not self.smoothers:
            return out
        weights = torch.softmax(self.mix(x), dim=1)
        out = weights[:, :1] * out
        for i in range(len(self.smoothers)):
            out = out + weights[:, i + 1:i + 2] * separable_blur(z, getattr(self, f"smoother{i}"))
        return out


def gaussian(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian kernel of ``sigma`` px, 3σ each side."""
    r = math.ceil(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def separable_blur(z: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each channel of ``z`` blurred along both axes by a depthwise (channels, 1, 1, k) ``kernel`` (edges
    replicated)."""
    r = (kernel.shape[-1] - 1) // 2
    z = F.pad(z, (r, r, r, r), mode="replicate")
    z = F.conv2d(z, kernel, groups=z.shape[1])
    return F.conv2d(z, kernel.transpose(2, 3), groups=z.shape[1])


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def receptive_radius(model: SNRNet, size: int = 512) -> int:
    """The farthest input pixel (in packed pixels, from the centre) that changes the centre output.

    Measured by perturbing: the gradient of the centre output with respect to both inputs.
    """
    with torch.enable_grad():
        z = torch.zeros(1, 4, size, size, requires_grad=True)
        t = torch.full((1, 1, size, size), 0.02, requires_grad=True)
        c = size // 2
        model(z, t)[0, :, c, c].sum().backward()
        touched = (z.grad.abs().sum(dim=(0, 1)) + t.grad.abs().sum(dim=(0, 1))) > 0
    ys, xs = torch.nonzero(touched, as_tuple=True)
    return int(max((ys - c).abs().max(), (xs - c).abs().max()))


def export_onnx(model: SNRNet, path: str | Path, opset: int = 17) -> Path:
    """Write ``model`` as ONNX with inputs ``z`` (N,4,H,W), ``t`` (N,1,H,W) and output ``out``."""
    path = Path(path)
    model = model.eval()
    m = model.multiple
    z, t = torch.rand(1, 4, 2 * m, 2 * m), torch.full((1, 1, 2 * m, 2 * m), 0.02)
    axes = {0: "N", 2: "H", 3: "W"}
    torch.onnx.export(model, (z, t), str(path), input_names=["z", "t"], output_names=["out"],
                      dynamic_axes={"z": axes, "t": axes, "out": axes}, opset_version=opset, dynamo=False)
    return path


def load_onnx_weights(model: SNRNet, path: str | Path) -> SNRNet:
    """Copy an exported graph's weights back into ``model`` (initialisers keep the parameter names), so
    a shipped ONNX file can be checked against PyTorch without shipping a checkpoint."""
    import onnx
    from onnx import numpy_helper

    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    state = {k: torch.from_numpy(weights[k].copy()) for k in model.state_dict()}
    model.load_state_dict(state)
    return model
