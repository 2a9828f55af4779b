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
        alpha_bar = self.diffusion.tables["alphas_cumprod"][t.long().cpu()].to(video.dtype).to(video.device)
        if not self.rho:
            return self._independent(video, self.mu_video, alpha_bar), self._independent(
                audio, self.mu_audio, alpha_bar
            )
        ab = alpha_bar.reshape(-1, *([1] * (video.ndim - 1)))
        dv = video - ab.sqrt() * self.mu_video
        da = audio.reshape(video.shape) - ab.sqrt() * self.mu_audio
        diag = ab * self.sigma**2 + 1 - ab
        off = ab * self.sigma**2 * self.rho
        det = diag**2 - off**2
        eps_v = (1 - ab).sqrt() * (diag * dv - off * da) / det
        eps_a = (1 - ab).sqrt() * (diag * da - off * dv) / det
        return eps_v, eps_a.reshape(audio.shape)

    def _independent(self, x: torch.Tensor, mu: float, alpha_bar: torch.Tensor) -> torch.Tensor:
        ab = alpha_bar.reshape(-1, *([1] * (x.ndim - 1)))
        return (x - ab.sqrt() * mu) * (1 - ab).sqrt() / (ab * self.sigma**2 + 1 - ab)
