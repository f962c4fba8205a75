"""Exact-unbiased variance stabilisation of Poisson–Gaussian noise (EM-VST in YOND).

With signal ``λ``, gain ``K`` and read noise ``σ`` (any consistent units), a raw value is
``y = K·Poisson(λ/K) + N(0, σ²)``. In photon units ``u = y/K`` (read noise ``s = σ/K``) the generalised
Anscombe transform is ``f(u) = 2·√(u + 3/8 + s²)``; its output has unit variance wherever the signal is
not tiny. Two corrections make it usable down to zero photons:

* bias: ``E[f(u)]`` differs from ``f(λ/K)``; :class:`BiasTable` tabulates ``b(μ) = E[f(u) | μ] − f(μ)``
  once per image (K and σ are fixed) from the Poisson pmf convolved with the Gaussian, and uses a
  4th-order moment expansion where the Gaussian cannot reach the square root's kink;
* inverse: after subtracting the bias, the algebraic inverse ``u = (z/2)² − 3/8 − s²`` is unbiased.

:class:`Vst` also maps ``f`` to [0, 1] between ``f(0)`` and ``f(white)``, so the noise in the network's
input has standard deviation ``nsr = 1 / (f(1) − f(0))``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ANSCOMBE = 3.0 / 8.0
LOW_POINTS, HIGH_POINTS = 512, 1024  # bias table intervals below and above the switch point
QUAD_POINTS = 801  # Gaussian expectation on a uniform grid: exact enough across the sqrt's kink


def anscombe(u: np.ndarray, s: float) -> np.ndarray:
    """Generalised Anscombe transform in photon units: ``2√max(u + 3/8 + s², 0)``."""
    return 2.0 * np.sqrt(np.maximum(np.asarray(u, np.float64) + ANSCOMBE + s * s, 0.0))


def switch_point(s: float) -> float:
    """Mean photon count above which the closed-form bias is used.

    There the square root's argument sits 8 noise standard deviations above zero, so the kink at 0 is
    never reached and the moment expansion is accurate to about 1e-5; at least 50 photons regardless.
    """
    c = ANSCOMBE + s * s
    root = 4.0 + math.sqrt(max(16.0 + s * s - c, 0.0))
    return max(50.0, root * root - s * s)


def closed_form_bias(mu: np.ndarray, s: float) -> np.ndarray:
    """``E[f(u)] − f(μ)`` by a 4th-order Taylor expansion in the cumulants of ``u = Poisson(μ) + N(0, s²)``.

    With ``a = μ + 3/8 + s²``, variance ``V = μ + s²``, third and fourth cumulants ``μ``:
    ``b ≈ −V/(4a^{3/2}) + μ/(8a^{5/2}) − 15(μ + 3V²)/(192 a^{7/2})``.
    """
    mu = np.asarray(mu, np.float64)
    a = mu + ANSCOMBE + s * s
    v = mu + s * s
    return -v / (4 * a**1.5) + mu / (8 * a**2.5) - 15 * (mu + 3 * v * v) / (192 * a**3.5)


@dataclass
class BiasTable:
    """``b(μ)`` for one read-noise level ``s`` (photon units), tabulated below :func:`switch_point`."""

    s: float
    upto: float = 0.0  # also tabulate the closed form up to this many photons (one interpolation is faster)
    mu: np.ndarray = field(init=False, repr=False)
    bias: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.top = top = switch_point(self.s)
        self.mu = top * np.linspace(0.0, 1.0, LOW_POINTS + 1) ** 2  # dense near zero, where the bias varies fast
        n = np.arange(0, int(top + 10 * math.sqrt(top) + 20))
        self.bias = self._expected(n) - anscombe(self.mu, self.s)
        self.log_step = 1.0
        if self.upto > top:  # the smooth closed form on a log grid: linear interpolation errs < 1e-5
            high = np.geomspace(top, self.upto, HIGH_POINTS + 1)[1:]
            self.log_step = math.log(self.upto / top) / HIGH_POINTS
            self.mu = np.concatenate([self.mu, high])
            self.bias = np.concatenate([self.bias, closed_form_bias(high, self.s)])

    def _expected(self, n: np.ndarray) -> np.ndarray:
        """``E[f(u)]`` at each tabulated μ: Σ_n Poisson(n; μ) · E_g[f(n + g)]."""
        if self.s < 1e-6:
            fn = anscombe(n.astype(np.float64), 0.0)
        else:  # E_g over g ~ N(0, s²) on a uniform ±8s grid (the integrand has a kink, so no Gauss rule)
            g = np.linspace(-8.0, 8.0, QUAD_POINTS)
            w = np.exp(-0.5 * g * g)
            w /= w.sum()
            arg = n[:, None] + self.s * g[None, :] + ANSCOMBE + self.s**2
            fn = 2.0 * (np.sqrt(np.maximum(arg, 0.0)) @ w)
        mu = np.maximum(self.mu, 1e-300)[:, None]
        log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n[-1] + 1)))])
        log_pmf = n[None, :] * np.log(mu) - mu - log_factorial[None, :]
        pmf = np.exp(log_pmf)
        pmf[0] = 0.0
        pmf[0, 0] = 1.0  # μ = 0: all mass on n = 0
        return pmf @ fn

    def __call__(self, mu: np.ndarray) -> np.ndarray:
        """Bias at mean photon counts ``mu`` (negative values count as 0)."""
        mu = np.maximum(np.asarray(mu, np.float64), 0.0)
        # grid position computed, not searched: √ spacing up to the switch point, logarithmic above it
        pos = np.sqrt(np.minimum(mu, self.top) / self.top) * LOW_POINTS
        pos += np.log(np.maximum(mu, self.top) / self.top) / self.log_step
        i = np.minimum(pos.astype(np.intp), len(self.mu) - 2)
        frac = pos - i
        out = self.bias[i] * (1.0 - frac) + self.bias[i + 1] * frac
        high = mu > self.mu[-1]
        if high.any():
            out[high] = closed_form_bias(mu[high], self.s)
        return out


class Vst:
    """Forward and inverse transform for one image's noise model, in the loader's normalised units.

    ``gain`` and ``read`` are K and σ in the same units as the data (``var = gain·x + read²``).
    """

    def __init__(self, gain: float, read: float, white: float = 1.0):
        if not gain > 0:
            raise ValueError(f"the VST needs a positive gain, got {gain}")
        self.gain, self.read = float(gain), float(max(read, 0.0))
        self.s = self.read / self.gain
        self.table = BiasTable(self.s, upto=2.0 * white / self.gain)
        self.lower = float(anscombe(0.0, self.s))
        self.upper = float(anscombe(white / self.gain, self.s))

    @property
    def nsr(self) -> float:
        """Noise standard deviation in the normalised transformed domain."""
        return 1.0 / (self.upper - self.lower)

    def forward(self, y: np.ndarray, bias_at: np.ndarray | None = None) -> np.ndarray:
        """Normalised, bias-corrected transform of noisy ``y``.

        The bias is a function of the unknown clean signal; it is evaluated at ``bias_at`` (e.g. a first
        denoised estimate) or, without one, at the noisy value itself.
        """
        y = np.asarray(y, np.float64)
        ref = y if bias_at is None else np.asarray(bias_at, np.float64)
        z = anscombe(y / self.gain, self.s) - self.table(ref / self.gain)
        return ((z - self.lower) * self.nsr).astype(np.float32)

    def forward_clean(self, x: np.ndarray) -> np.ndarray:
        """Normalised transform of a clean signal (no bias): the target the denoiser should output."""
        return ((anscombe(np.asarray(x, np.float64) / self.gain, self.s) - self.lower) * self.nsr).astype(np.float32)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Clean-signal estimate from a denoised, normalised transform (exact algebraic inverse)."""
        f = np.maximum(np.asarray(z, np.float64) / self.nsr + self.lower, 0.0)
        u = (f / 2.0) ** 2 - ANSCOMBE - self.s**2
        return (self.gain * np.maximum(u, 0.0)).astype(np.float32)
