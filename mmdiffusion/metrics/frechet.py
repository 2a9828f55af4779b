"""Fréchet distance between Gaussians fitted to two feature sets (FVD, FAD).

    d² = |μ₁ − μ₂|² + tr(Σ₁) + tr(Σ₂) − 2 tr((Σ₁ Σ₂)^½)

`(Σ₁ Σ₂)^½` is not symmetric and a general matrix square root of it (as
`scipy.linalg.sqrtm` computes) picks up imaginary parts and loses precision when the
covariances are singular, which they are whenever there are fewer samples than feature
dimensions. Its trace equals that of the symmetric positive semi-definite matrix
`(Σ₁^½ Σ₂ Σ₁^½)^½`, which needs only two symmetric eigendecompositions and whose
eigenvalues can be clipped at zero, so the result is real and stable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GaussianStatistics:
    """Mean and covariance of a feature set (float64)."""

    mean: np.ndarray
    covariance: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianStatistics:
        """Fit to `features` [N, D]; N ≥ 2 (an unbiased covariance needs two samples)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"features must be [N, D] with N >= 2, got shape {features.shape}")
        if not np.isfinite(features).all():
            raise ValueError("features contain NaN or infinite values")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], -1))


def symmetric_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    symmetric = (matrix + matrix.T) / 2
    eigenvalues, eigenvectors = np.linalg.eigh(symmetric)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((Σ₁ Σ₂)^½) via the symmetric form tr((Σ₁^½ Σ₂ Σ₁^½)^½)."""
    root1 = symmetric_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(first: GaussianStatistics, second: GaussianStatistics) -> float:
    """Squared Fréchet (2-Wasserstein) distance between two Gaussians."""
    if first.mean.shape != second.mean.shape:
        raise ValueError(f"feature dimensions differ: {first.mean.shape[0]} vs {second.mean.shape[0]}")
    mean_term = float(np.sum((first.mean - second.mean) ** 2))
    covariance_term = float(np.trace(first.covariance) + np.trace(second.covariance))
    distance = mean_term + covariance_term - 2.0 * trace_sqrt_product(first.covariance, second.covariance)
    return max(distance, 0.0)


def frechet_distance_of_features(first: np.ndarray, second: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D]."""
    return frechet_distance(GaussianStatistics.of(first), GaussianStatistics.of(second))
