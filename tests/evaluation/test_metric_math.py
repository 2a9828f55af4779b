"""Fréchet distance and unbiased polynomial-kernel MMD against scipy and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist

from mmdiffusion.metrics import (
    GaussianStatistics,
    PolynomialKernel,
    frechet_distance,
    frechet_distance_of_features,
    mmd2_unbiased,
)


def _random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.standard_normal((dim, dim))
    return factor @ factor.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form() -> None:
    mean1, mean2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    first = GaussianStatistics(mean1, np.diag(var1))
    second = GaussianStatistics(mean2, np.diag(var2))
    expected = np.sum((mean1 - mean2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(first, second) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_on_full_covariances() -> None:
    rng = np.random.default_rng(0)
    dim = 16
    sigma1, sigma2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
    mean1, mean2 = rng.standard_normal(dim), rng.standard_normal(dim)
    reference = (
        np.sum((mean1 - mean2) ** 2)
        + np.trace(sigma1)
        + np.trace(sigma2)
        - 2 * np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real
    )
    ours = frechet_distance(GaussianStatistics(mean1, sigma1), GaussianStatistics(mean2, sigma2))
    assert ours == pytest.approx(reference, rel=1e-9)


def test_frechet_distance_of_samples_converges_to_the_true_distance() -> None:
    rng = np.random.default_rng(1)
    dim = 4
    sigma1, sigma2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
    mean1, mean2 = np.zeros(dim), np.full(dim, 0.5)
    truth = frechet_distance(GaussianStatistics(mean1, sigma1), GaussianStatistics(mean2, sigma2))
    samples1 = rng.multivariate_normal(mean1, sigma1, size=20_000)
    samples2 = rng.multivariate_normal(mean2, sigma2, size=20_000)
    assert frechet_distance_of_features(samples1, samples2) == pytest.approx(truth, rel=0.05)


def test_frechet_distance_stays_real_and_near_zero_with_singular_covariances() -> None:
    """Fewer samples than dimensions (as with 400-d I3D logits of a few clips): the
    covariances are singular, where a general sqrtm loses precision."""
    rng = np.random.default_rng(2)
    features = rng.standard_normal((12, 400)) * 3.0
    tolerance = 1e-6 * np.trace(np.cov(features, rowvar=False))  # round-off of the eigenvalues' square roots
    same = frechet_distance_of_features(features, features.copy())
    assert np.isfinite(same) and same == pytest.approx(0.0, abs=tolerance)
    shifted = frechet_distance_of_features(features, features + 1.0)
    assert shifted == pytest.approx(400.0, abs=tolerance)  # only the means differ: |Δμ|² = 400


def test_frechet_distance_rejects_too_few_or_mismatched_features() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance_of_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance_of_features(np.random.rand(5, 3), np.random.rand(5, 4))


def _gaussian_kernel_mean(mean_a, cov_a, mean_b, cov_b, gamma: float, coef0: float) -> float:
    """E[(γ a·b + c)²] for independent Gaussians a, b: E[(a·b)²] = tr(M_a M_b), M = Σ + μμᵀ."""
    second_moment = np.trace((cov_a + np.outer(mean_a, mean_a)) @ (cov_b + np.outer(mean_b, mean_b)))
    return gamma**2 * second_moment + 2 * gamma * coef0 * mean_a @ mean_b + coef0**2


def test_unbiased_mmd_matches_the_closed_form_for_gaussians() -> None:
    rng = np.random.default_rng(3)
    dim = 3
    kernel = PolynomialKernel(degree=2, gamma=1.0 / dim, coef0=1.0)
    mean_x, mean_y = np.zeros(dim), np.array([0.5, -0.5, 0.25])
    cov_x, cov_y = np.eye(dim), np.diag([2.0, 0.5, 1.0])
    expected = (
        _gaussian_kernel_mean(mean_x, cov_x, mean_x, cov_x, kernel.gamma, kernel.coef0)
        + _gaussian_kernel_mean(mean_y, cov_y, mean_y, cov_y, kernel.gamma, kernel.coef0)
        - 2 * _gaussian_kernel_mean(mean_x, cov_x, mean_y, cov_y, kernel.gamma, kernel.coef0)
    )
    estimates = [
        mmd2_unbiased(rng.multivariate_normal(mean_x, cov_x, 400), rng.multivariate_normal(mean_y, cov_y, 400), kernel)
        for _ in range(20)
    ]
    assert np.mean(estimates) == pytest.approx(expected, rel=0.08)


def test_unbiased_mmd_equals_a_scipy_cdist_reference_for_the_kvd_kernel() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((30, 8)), rng.standard_normal((25, 8)) + 0.3
    kvd_kernel = lambda u, v: (u @ v / 8 + 1.0) ** 3  # noqa: E731
    k_xx, k_yy, k_xy = cdist(x, x, kvd_kernel), cdist(y, y, kvd_kernel), cdist(x, y, kvd_kernel)
    reference = (k_xx.sum() - np.trace(k_xx)) / (30 * 29) + (k_yy.sum() - np.trace(k_yy)) / (25 * 24) - 2 * k_xy.mean()
    assert mmd2_unbiased(x, y) == pytest.approx(reference, rel=1e-10)


def test_unbiased_mmd_is_centred_on_zero_for_one_distribution() -> None:
    rng = np.random.default_rng(5)
    estimates = [mmd2_unbiased(rng.standard_normal((50, 4)), rng.standard_normal((50, 4))) for _ in range(40)]
    assert min(estimates) < 0 < max(estimates)  # unbiased, so not clipped at zero
    assert abs(np.mean(estimates)) < 3 * np.std(estimates) / np.sqrt(len(estimates))
