"""Physics-based raw noise synthesis (the ELD-style model) and the sampling of its parameters.

A black-subtracted raw value with expected signal ``x`` (same units as the output) is

    D = K·Poisson(x/K) + N_read + N_row + N_col + N_q

shot noise with system gain ``K``; read noise, Gaussian or Tukey-lambda (heavy- or light-tailed, as
measured on real dark frames); one Gaussian offset per sensor row (and optionally per column); and
quantisation to the ADC step. Arrays are mosaics: rows are the second-last axis, so a batch
``(N, H, W)`` gets independent row offsets per image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PhysicsNoise:
    """Parameters of :func:`add_noise`, in the units of the signal (normalised or DN)."""

    gain: float  # K: signal units per electron
    read: float  # standard deviation of the read noise
    tukey_lambda: float | None = None  # shape of the read noise; None = Gaussian
    row: float = 0.0  # standard deviation of the per-row offset
    col: float = 0.0  # standard deviation of the per-column offset
    quant: float = 0.0  # ADC step (1 DN in the signal's units); 0 = continuous


def tukey_lambda_std(lam: float) -> float:
    """Standard deviation of the standard Tukey-lambda distribution (finite for λ > −1/2)."""
    return float(np.sqrt(stats.tukeylambda.var(lam)))


def tukey_lambda_noise(rng: np.random.Generator, shape: tuple[int, ...], lam: float, std: float) -> np.ndarray:
    """Tukey-lambda samples with standard deviation ``std``, through the quantile function
    ``Q(p) = (p^λ − (1−p)^λ)/λ`` (the logistic ``log(p/(1−p))`` at λ = 0)."""
    p = rng.uniform(1e-12, 1.0 - 1e-12, shape)
    if abs(lam) < 1e-6:
        q = np.log(p) - np.log1p(-p)
    else:
        q = (p**lam - (1.0 - p) ** lam) / lam
    return q * (std / tukey_lambda_std(lam))


def add_noise(clean: np.ndarray, noise: PhysicsNoise, rng: np.random.Generator) -> np.ndarray:
    """``clean`` (expected signal, ≥ 0 after clipping) with the full physics noise added (float32)."""
    x = np.maximum(np.asarray(clean, np.float64), 0.0)
    out = noise.gain * rng.poisson(x / noise.gain)
    shape = out.shape
    if noise.read > 0:
        if noise.tukey_lambda is None:
            out += rng.normal(0.0, noise.read, shape)
        else:
            out += tukey_lambda_noise(rng, shape, noise.tukey_lambda, noise.read)
    if noise.row > 0:
        out += rng.normal(0.0, noise.row, shape[:-1] + (1,))
    if noise.col > 0:
        out += rng.normal(0.0, noise.col, shape[:-2] + (1, shape[-1]))
    if noise.quant > 0:
        out = np.round(out / noise.quant) * noise.quant
    return out.astype(np.float32)


# Read noise follows the gain across ISO settings: log σ ≈ a·log K + b.
# The defaults describe a typical 14-bit sensor in normalised units (K = 2e-5 is ISO 100 with a
# ~50 000 e⁻ full well; σ ≈ 10 e⁻ there and ≈ 1.5 e⁻ at 128× the gain).
READ_SLOPE = 0.61
READ_OFFSET = float(np.log(2e-4) - READ_SLOPE * np.log(2e-5))


def iso_like(iso: float, base_gain: float = 2e-5) -> tuple[float, float]:
    """Nominal (K, σ) in normalised units for an ISO setting of the typical sensor above."""
    gain = base_gain * iso / 100.0
    return gain, float(np.exp(READ_SLOPE * np.log(gain) + READ_OFFSET))
