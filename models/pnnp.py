"""PNNP pixel-wise noise proxy: a tiny network that turns Gaussian samples into a camera's read noise.

Signal-independent raw noise = dark shading + row/column offsets (calibrated statistically, see
``quietlens.engine.noise.pnnp``) + a pixel-wise part whose shape is rarely Gaussian. That last part is
modelled as

    N_pixel = pre(x₁)·g(ISO) + fol(x₂),    x₁, x₂ ~ N(0, 1) per pixel,

``pre`` and ``fol`` being stacks of 1×1 convolutions (1→16, SiLU, two residual blocks, →1): ``pre`` is
the part that scales with the analogue gain, ``fol`` what comes after it (e.g. the ADC).
``g(ISO) = (k·ISO + b)·exp(s_ISO)``: a line fixed from the calibration, times a learned correction per
calibrated ISO setting. About 2.3 k parameters.

The network is fitted to dark-frame residuals with :func:`distribution_loss`, which compares whole
distributions (samples are unpaired): an L1 loss between quantiles, spaced on the normal scale so the
tails count, plus an L1 loss between smoothed empirical CDFs at the real quantiles.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURES, BLOCKS = 16, 2


class _Res1x1(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(nf, nf, 1), nn.Conv2d(nf, nf, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(F.silu(self.a(x)))


class Branch(nn.Module):
    """Per-pixel map ℝ→ℝ. With ``skip`` it starts as the identity (a Gaussian stays Gaussian) and
    learns a deviation; without, it starts at zero."""

    def __init__(self, skip: bool, nf: int = FEATURES, blocks: int = BLOCKS):
        super().__init__()
        self.skip = skip
        self.body = nn.Sequential(nn.Conv2d(1, nf, 1), nn.SiLU(), *[_Res1x1(nf) for _ in range(blocks)],
                                  nn.Conv2d(nf, 1, 1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.skip else self.body(x)


class PixelProxy(nn.Module):
    """``pre(x_pre)·gain + fol(x_fol)`` in DN; ``gain`` is g(ISO), a tensor of shape (1,)."""

    def __init__(self):
        super().__init__()
        self.pre, self.fol = Branch(skip=True), Branch(skip=False)

    def forward(self, x_pre: torch.Tensor, x_fol: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return self.pre(x_pre) * gain + self.fol(x_fol)


def probit_levels(n: int = 129, reach: float = 3.5) -> torch.Tensor:
    """Probabilities Φ(u) for u evenly spaced in [−reach, reach]: quantiles dense in the tails."""
    return torch.distributions.Normal(0.0, 1.0).cdf(torch.linspace(-reach, reach, n))


def smooth_cdf(samples: torch.Tensor, at: torch.Tensor, width: float) -> torch.Tensor:
    """Empirical CDF of ``samples`` at points ``at``, each step softened to a logistic of ``width``
    (so it is differentiable in the samples)."""
    return torch.sigmoid((at[:, None] - samples[None, :]) / width).mean(dim=1)


def distribution_target(real: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What :func:`distribution_loss` compares against, computed once from the real samples:
    their quantiles at ``levels``, their smoothed CDF at those quantiles, and their standard deviation."""
    scale = real.std().clamp_min(1e-6)
    q_real = torch.quantile(real, levels)
    return q_real, smooth_cdf(real, q_real, 0.05 * float(scale)), scale


def distribution_loss(generated: torch.Tensor, target: tuple[torch.Tensor, ...], levels: torch.Tensor
                      ) -> torch.Tensor:
    """Quantile L1 (in units of the real standard deviation) + smoothed-CDF L1 at the real quantiles."""
    q_real, cdf_real, scale = target
    quantile_term = (torch.quantile(generated, levels) - q_real).abs().mean() / scale
    cdf_term = (smooth_cdf(generated, q_real, 0.05 * float(scale)) - cdf_real).abs().mean()
    return quantile_term + cdf_term


def fit_pixel_proxy(residuals: dict[float, np.ndarray], line: tuple[float, float], steps: int = 400,
                    seed: int = 0, samples: int = 4096, lr: float = 5e-3,
                    init_log_scale: list[float] | None = None) -> tuple[PixelProxy, dict]:
    """Fit the proxy and the per-ISO gain corrections to dark-frame pixel residuals (DN) per ISO.

    ``line`` = (k, b) of g(ISO) before correction; ``init_log_scale`` (ISO order) starts the corrections
    where g matches each ISO's noise level, so the network only has to learn the shape. Each step draws
    ``samples`` generated values per ISO and compares them with all the real ones. Returns the model and
    ``{"isos", "log_scale", "loss"}`` (the corrections s_ISO in ISO order, the final loss).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    isos = sorted(residuals)
    levels = probit_levels()
    targets = [distribution_target(torch.as_tensor(residuals[i], dtype=torch.float32), levels) for i in isos]
    base = torch.tensor([line[0] * i + line[1] for i in isos], dtype=torch.float32)
    model = PixelProxy()
    log_scale = nn.Parameter(torch.tensor(init_log_scale or [0.0] * len(isos), dtype=torch.float32))
    opt = torch.optim.Adam([*model.parameters(), log_scale], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    history = []
    for _ in range(steps):
        loss = torch.zeros(())
        for j, target in enumerate(targets):
            x = torch.randn(2, 1, 1, samples, 1, generator=gen)
            noise = model(x[0], x[1], (base[j] * log_scale[j].exp()).reshape(1)).flatten()
            loss = loss + distribution_loss(noise, target, levels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item() / len(targets))
    return model.eval(), {"isos": isos, "log_scale": log_scale.detach().tolist(),
                          "loss": float(np.mean(history[-20:]))}


def export_onnx(model: PixelProxy, path: str | Path, opset: int = 17) -> Path:
    """Inputs ``x_pre``, ``x_fol`` (N,1,H,W) and ``gain`` (1,); output ``noise`` (N,1,H,W) in DN."""
    path = Path(path)
    x = torch.randn(1, 1, 8, 8)
    axes = {0: "N", 2: "H", 3: "W"}
    torch.onnx.export(model.eval(), (x, x, torch.ones(1)), str(path), input_names=["x_pre", "x_fol", "gain"],
                      output_names=["noise"], dynamic_axes={"x_pre": axes, "x_fol": axes, "noise": axes},
                      opset_version=opset, dynamo=False)
    return path
