"""Kernel distance with the unbiased MMD² estimator and a polynomial kernel (KVD, KID).

k(x, y) = (γ x·y + c)^d with the customary d = 3, γ = 1/D, c = 1 (as in KID and the FVD
paper's KVD). The unbiased estimator leaves out the diagonal of the within-set kernel
matrices:

    MMD²ᵤ = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m−1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(n(n−1)) − 2 Σ_{i,j} k(xᵢ,yⱼ)/(mn)

It can be slightly negative when the two sets come from the same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PolynomialKernel:
    degree: int = 3
    gamma: float | None = None
    """Scale of the dot product; None means 1 / feature dimension."""
    coef0: float = 1.0

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        gamma = 1.0 / x.shape[1] if self.gamma is None else self.gamma
        return (gamma * (x @ y.T) + self.coef0) ** self.degree


def mmd2_unbiased(first: np.ndarray, second: np.ndarray, kernel: PolynomialKernel = PolynomialKernel()) -> float:
    """Unbiased squared MMD between feature sets [M, D] and [N, D] (M, N ≥ 2)."""
    x = np.asarray(first, dtype=np.float64)
    y = np.asarray(second, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sets must be [M, D] and [N, D], got {x.shape} and {y.shape}")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples per set, got {m} and {n}")
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())
