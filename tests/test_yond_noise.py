"""YOND's building blocks from first principles: CFA packing, noise estimation, EM-VST, physics noise."""
from __future__ import annotations

import numpy as np
import pytest

from quietlens.engine.errors import InvalidImageError
from quietlens.engine.noise import cfa, estimate, physics
from quietlens.engine.noise.vst import BiasTable, Vst, anscombe, closed_form_bias, switch_point
from rawgen import scene


@pytest.mark.parametrize("phase", cfa.PHASES)
@pytest.mark.parametrize("shape", [(6, 8), (7, 9), (2, 3)])
def test_pack_unpack_is_exact_and_puts_colours_in_order(phase: str, shape: tuple[int, int]) -> None:
    mosaic = np.random.default_rng(0).random(shape, dtype=np.float32)
    planes = cfa.pack(mosaic, phase)
    assert planes.shape == (4, (shape[0] + 1) // 2, (shape[1] + 1) // 2)
    np.testing.assert_array_equal(cfa.unpack(planes, phase, shape), mosaic)
    # A mosaic holding each pixel's colour code packs into constant planes R=0, G1=1, G2=2, B=3.
    code = {"R": 0.0, "B": 3.0}
    colours = np.empty((2, 2), np.float32)
    for (y, x), c in zip(np.ndindex(2, 2), phase):
        colours[y, x] = code.get(c, 1.0 if phase.index("R") // 2 == y else 2.0)
    tiled = np.tile(colours, (shape[0] // 2 + 1, shape[1] // 2 + 1))[: shape[0], : shape[1]]
    for i, plane in enumerate(cfa.pack(tiled, phase)):
        assert (plane == i).all(), (phase, i)


def test_each_view_of_rggb_planes_packs_the_mosaic_transposed_or_turned_and_undoes_itself() -> None:
    """The final pass averages views of an RGGB mosaic that are RGGB mosaics again: view k's planes are
    exactly what packing the transformed mosaic (as it is, transposed, turned half a turn, both) gives,
    so each colour sits where RGGB has it, and applying a view twice gives the planes back."""
    mosaic = np.random.default_rng(0).random((6, 10), dtype=np.float32)
    moved = (mosaic, mosaic.T, mosaic[::-1, ::-1], mosaic[::-1, ::-1].T)
    planes = cfa.pack(mosaic, "RGGB")
    assert cfa.VIEWS == len(moved)
    for k, m in enumerate(moved):
        view = cfa.rggb_view(planes, k)
        np.testing.assert_array_equal(view, cfa.pack(np.ascontiguousarray(m), "RGGB"))
        np.testing.assert_array_equal(cfa.rggb_view(view, k), planes)
        np.testing.assert_array_equal(cfa.rggb_view(planes[0], k), view[(0, 0, 3, 3)[k]])  # a map moves alike


def test_pack_refuses_what_is_not_a_bayer_mosaic() -> None:
    with pytest.raises(InvalidImageError):
        cfa.pack(np.zeros((4, 4)), "RGBG")
    with pytest.raises(InvalidImageError):
        cfa.pack(np.zeros((1, 8)), "RGGB")


def _noisy_planes(gain: float, read: float, texture: bool, seed: int = 0):
    clean = scene((512, 512), levels=(0.005, 0.6), texture=texture)
    rng = np.random.default_rng(seed)
    noisy = gain * rng.poisson(clean / gain) + rng.normal(0, read, clean.shape)
    return cfa.pack(noisy, "RGGB"), cfa.pack(clean, "RGGB")


@pytest.mark.parametrize("gain,read", [(2e-4, 1e-3), (2e-3, 3e-3)])
def test_estimators_recover_a_known_poisson_gaussian_model(gain: float, read: float) -> None:
    flat, _ = _noisy_planes(gain, read, texture=False)
    coarse = estimate.cne_coarse(flat, span=1000.0)
    assert coarse.gain == pytest.approx(gain, rel=0.05) and coarse.read == pytest.approx(read, rel=0.15)
    assert coarse.K == pytest.approx(coarse.gain * 1000.0) and coarse.sigma == pytest.approx(coarse.read * 1000.0)

    noisy, clean = _noisy_planes(gain, read, texture=True)
    fine = estimate.cne_fine(noisy, clean, coarse)  # with a perfect first denoising
    assert fine.method == "cne-fine"
    assert fine.gain == pytest.approx(gain, rel=0.05) and fine.read == pytest.approx(read, rel=0.35)
    classical = estimate.classical(noisy, span=1.0)
    assert classical.gain == pytest.approx(gain, rel=0.08) and classical.read == pytest.approx(read, rel=0.35)
    assert classical.points.shape[1] == 3 and 0 < classical.r2 <= 1


def test_clipped_variance_keeps_the_heavy_tails_of_read_noise_that_the_mad_misses() -> None:
    """Diagonal Haar details of Tukey-λ read noise (λ −0.1, heavier tails than a Gaussian; the bench
    sensor's): the squared MAD reads the variance ≈ 14 % low; the clipped variance is exact for a Gaussian
    and within a few % here."""
    rng = np.random.default_rng(0)
    tukey = physics.tukey_lambda_noise(rng, (4, 400_000), -0.1, 1.0)
    detail = (tukey[0] - tukey[1] - tukey[2] + tukey[3]) / 2  # unit variance
    gauss = rng.standard_normal(400_000)
    assert estimate._clipped_var(gauss) == pytest.approx(1.0, rel=0.01)
    assert estimate._mad_var(gauss) == pytest.approx(1.0, rel=0.02)
    assert estimate._clipped_var(detail) == pytest.approx(1.0, rel=0.04)
    assert estimate._mad_var(detail) < 0.9


def test_fine_estimates_recover_the_model_after_a_perfect_first_pass() -> None:
    """With a perfect first denoising both fine estimates recover the model on a textured scene, and so does
    what refine chooses. One noise realisation's read level scatters by 8–13 % (σ over 8 of them) and each
    estimate reads the gain 3–4 % low on this scene, so the model is checked on the mean of 8 realisations.
    A first pass that kept a share α of the noise hides (1 − α)² of its variance from the residual: the
    reason the residual estimate reads low where it errs; that holds for each realisation."""
    gain, read = 2e-3, 3e-3
    fits: dict[str, list] = {"residual": [], "flat": [], "refine": []}
    for seed in range(8):
        noisy, clean = _noisy_planes(gain, read, texture=True, seed=seed)
        fits["residual"].append(estimate.fine_residual(noisy, clean, 1.0))
        fits["flat"].append(estimate.fine_flat(noisy, clean, 1.0))
        fits["refine"].append(estimate.refine(noisy, clean, estimate.classical(noisy, 1.0)))
        for kept in (0.1, 0.3):
            low = estimate.fine_residual(noisy, clean + kept * (noisy - clean), 1.0)
            assert low.gain / fits["residual"][-1].gain == pytest.approx((1 - kept) ** 2, rel=0.03), (seed, kept)
    for name, found in fits.items():
        mean_gain, mean_read = np.mean([f.gain for f in found]), np.mean([f.read for f in found])
        assert mean_gain == pytest.approx(gain, rel=0.05) and mean_read == pytest.approx(read, rel=0.15), name


def test_fine_estimate_keeps_the_coarse_one_when_the_slope_is_not_positive() -> None:
    noisy, clean = _noisy_planes(2e-3, 3e-3, texture=False)
    coarse = estimate.cne_coarse(noisy, 1.0)
    fine = estimate.cne_fine(noisy, noisy, coarse)  # "denoised" = noisy: zero variance left
    assert fine.gain == coarse.gain and any("kept the coarse" in n for n in fine.notes)


def test_black_frame_cannot_be_estimated() -> None:
    with pytest.raises(InvalidImageError):
        estimate.initial(np.zeros((4, 64, 64), np.float32), 1.0)


def test_vst_forward_then_inverse_is_identity_without_noise() -> None:
    vst = Vst(gain=3e-3, read=4e-3)
    x = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(vst.inverse(vst.forward_clean(x)), x, atol=2e-6)
    assert vst.forward_clean(np.array([0.0, 1.0])) == pytest.approx([0.0, 1.0], abs=1e-6)


@pytest.mark.parametrize("gain,read", [(1e-2, 5e-3), (1e-3, 2e-2)])
def test_vst_is_unbiased_in_expectation(gain: float, read: float) -> None:
    """E[forward(y)] with the bias evaluated at the true signal inverts to the signal itself (within 4
    standard errors of the Monte-Carlo mean), and the transformed noise has unit standard deviation
    (``nsr`` once normalised)."""
    rng = np.random.default_rng(1)
    vst = Vst(gain, read)
    n, s = 400_000, read / gain
    for photons in (0.3, 2.0, 10.0, 80.0):
        lam = photons * gain
        y = gain * rng.poisson(photons, n) + rng.normal(0, read, n)
        z = vst.forward(y, bias_at=np.full_like(y, lam))
        back = float(vst.inverse(np.array([z.mean()]))[0])
        # f = 2√(u + 3/8 + s²) has unit noise, so one unit of f is √(u + 3/8 + s²) photons
        standard_error = gain * np.sqrt(photons + 0.375 + s * s) / np.sqrt(n)
        assert abs(back - lam) < 4 * standard_error + 1e-3 * lam, photons
        if photons >= 10:
            assert z.std() == pytest.approx(vst.nsr, rel=0.03)


def test_bias_table_matches_monte_carlo_and_the_closed_form() -> None:
    rng = np.random.default_rng(2)
    for s in (0.0, 1.5, 8.0):
        table = BiasTable(s)
        top = switch_point(s)
        assert float(table(np.array([top]))[0]) == pytest.approx(float(closed_form_bias(top, s)), abs=2e-4)
        for mu in (0.5, 4.0, 30.0):
            u = rng.poisson(mu, 1_000_000) + rng.normal(0, s, 1_000_000)
            mc = anscombe(u, s).mean() - anscombe(mu, s)
            assert float(table(np.array([mu]))[0]) == pytest.approx(mc, abs=4e-3), (s, mu)


def test_physics_noise_has_the_modelled_moments() -> None:
    rng = np.random.default_rng(3)
    clean = np.full((400, 500), 0.2)
    model = physics.PhysicsNoise(gain=1e-3, read=5e-3, tukey_lambda=-0.1, row=2e-3)
    noisy = physics.add_noise(clean, model, rng)
    row_means = noisy.mean(axis=1)
    pixel = noisy - row_means[:, None]
    assert noisy.mean() == pytest.approx(0.2, abs=1e-3)
    assert pixel.var() == pytest.approx(1e-3 * 0.2 + 5e-3**2, rel=0.03)
    assert row_means.std() == pytest.approx(np.sqrt(2e-3**2 + pixel.var() / 500), rel=0.15)
    lam_std = physics.tukey_lambda_noise(rng, (200_000,), 0.14, 2.0).std()
    assert lam_std == pytest.approx(2.0, rel=0.02)
