"""An exact ε-predictor for Gaussian data, standing in for the network in sampler tests.

Video and audio elements are paired (element k of one with element k of the other, so both
must have the same number of elements per sample when `rho` is not 0). Each pair is
N((mu_video, mu_audio), sigma² [[1, rho], [rho, 1]]). With x_t = sqrt(ᾱ) x0 + sqrt(1 − ᾱ) ε,
x_t is Gaussian with covariance C = ᾱ Σ + (1 − ᾱ) I, and the exact (MMSE) noise prediction is
E[ε | x_t] = sqrt(1 − ᾱ) C⁻¹ (x_t − sqrt(ᾱ) μ). For rho = 0 this is
(x_t − sqrt(ᾱ) μ) · sqrt(1 − ᾱ) / (ᾱ σ² + 1 − ᾱ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmdiffusion.diffusion import GaussianDiffusion


@dataclass
class AnalyticJointDenoiser:
    diffusion: GaussianDiffusion
    mu_video: float
    mu_audio: float
    sigma: float
    rho: float = 0.0
    calls: int = 0

    def __call__(self, video: torch.Tensor, audio: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        alpha_bar = self.diffusion.tables["alphas_cumprod"][t.long().cpu()].to(video.dtype)
        ab_v = alpha_bar.reshape(-1, *([1] * (video.ndim - 1)))
        ab_a = alpha_bar.reshape(-1, *([1] * (audio.ndim - 1)))
        dv = video - ab_v.sqrt() * self.mu_video
        da = (audio.reshape(video.shape) if self.rho else audio) - (ab_v if self.rho else ab_a).sqrt() * self.mu_audio
        if not self.rho:
            eps_v = dv * (1 - ab_v).sqrt() / (ab_v * self.sigma**2 + 1 - ab_v)
            eps_a = da * (1 - ab_a).sqrt() / (ab_a * self.sigma**2 + 1 - ab_a)
            return eps_v, eps_a
        diag = ab_v * self.sigma**2 + 1 - ab_v
        off = ab_v * self.sigma**2 * self.rho
        det = diag**2 - off**2
        eps_v = (1 - ab_v).sqrt() * (diag * dv - off * da) / det
        eps_a = (1 - ab_v).sqrt() * (diag * da - off * dv) / det
        return eps_v, eps_a.reshape(audio.shape)
