"""Gaussian diffusion: noise schedules, the forward process, and training losses.

The network knows nothing of diffusion and the samplers (`mmdiffusion.sampling`) own the
reverse-time updates; this module holds the tables and formulas they share. Everything works
on any tensor layout; where the model predicts a variance too, `channel_dim` says on which axis
its output stacks `[prediction, variance]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Schedule = Literal["linear", "cosine"]
FixedVariance = Literal["fixed_small", "fixed_large"]
Prediction = Literal["epsilon", "v"]
PREDICTIONS: tuple[str, ...] = ("epsilon", "v")


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process. Defaults are the released ones: 1000 linear steps 1e-4 → 0.02."""

    steps: int = 1000
    schedule: Schedule = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    learn_sigma: bool = False
    """The model also predicts an interpolation between the posterior and the prior variance."""
    fixed_variance: FixedVariance = "fixed_large"
    """Reverse-step variance when it is not learned (ancestral sampling)."""
    prediction: Prediction = "epsilon"
    """What the network's (first) output predicts: `epsilon`, the noise (released), or `v` =
    sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x0 (Salimans & Ho 2022). Near t = T the ε target is almost x_t
    itself, so an ε network must reproduce its input to about SNR(t) to see the clip at all;
    v is about −x0 there, which a network learns quickly (docs/training.md, *Learning check*)."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"diffusion steps must be positive, got {self.steps}")
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown beta schedule {self.schedule!r}; use 'linear' or 'cosine'")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; use 'epsilon' or 'v'")


def make_betas(config: DiffusionConfig) -> np.ndarray:
    """Betas in float64. The linear schedule is rescaled so any step count spans the same noise."""
    if config.schedule == "linear":
        scale = 1000 / config.steps
        return np.linspace(scale * config.beta_start, scale * config.beta_end, config.steps, dtype=np.float64)

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = config.steps
    return np.array(
        [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)], dtype=np.float64
    )


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 levels, elementwise, in nats."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def mean_over_sample(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the batch axis: `[B, ...] -> [B]`."""
    return x.flatten(1).mean(dim=1)


class GaussianDiffusion:
    """Tables of a diffusion process and the formulas of DDPM built on them."""

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = config or DiffusionConfig()
        betas = make_betas(self.config)
        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.num_steps = len(betas)
        tables = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
            "posterior_variance": posterior_variance,
            # The posterior variance is 0 at t=0: clip the log there to the next value.
            "posterior_log_variance_clipped": np.log(np.append(posterior_variance[1], posterior_variance[1:])),
            "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
            "log_betas": np.log(betas),
            # "fixed_large": beta_t, with the posterior variance at t=0 for a finite log.
            "log_variance_fixed_large": np.log(np.append(posterior_variance[1], betas[1:])),
        }
        self.tables = {name: torch.from_numpy(values) for name, values in tables.items()}
        self._device_tables: dict[torch.device, dict[str, torch.Tensor]] = {torch.device("cpu"): self.tables}

    # ------------------------------------------------------------------ helpers
    def tables_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The tables on `device`, copied there once (not a host-to-device copy per lookup)."""
        device = torch.device(device)
        if device not in self._device_tables:
            self._device_tables[device] = {name: table.to(device) for name, table in self.tables.items()}
        return self._device_tables[device]

    def extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table values at timesteps `t`, shaped to broadcast against `like` `[B, ...]`."""
        values = self.tables_on(like.device)[name][t.to(like.device).long()].float()
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def sample_timesteps(
        self, batch: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform timesteps `[batch]`, drawn on `device` (`generator`, if given, must live there)."""
        return torch.randint(0, self.num_steps, (batch,), generator=generator, device=device)

    def quartile(self, t: torch.Tensor) -> torch.Tensor:
        """Which quarter of the schedule each timestep falls in (0..3), for per-quartile losses."""
        return (4 * t.long()) // self.num_steps

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        return (
            self.extract("sqrt_alphas_cumprod", t, x_start) * x_start
            + self.extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self.extract("posterior_mean_coef1", t, x_t) * x_start + self.extract("posterior_mean_coef2", t, x_t) * x_t
        )
        return mean, self.extract("posterior_variance", t, x_t), self.extract("posterior_log_variance_clipped", t, x_t)

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self.extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        return (self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x_start) / self.extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    def training_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network is trained to output at x_t = q_sample(x_start, t, noise)."""
        if self.config.prediction == "epsilon":
            return noise
        return (
            self.extract("sqrt_alphas_cumprod", t, x_start) * noise
            - self.extract("sqrt_one_minus_alphas_cumprod", t, x_start) * x_start
        )

    def x0_from_prediction(self, x_t: torch.Tensor, t: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        """x0 from the network's prediction (for v: x0 = sqrt(ᾱ)·x_t − sqrt(1 − ᾱ)·v, which does
        not divide by the vanishing sqrt(ᾱ) of the high-noise end)."""
        if self.config.prediction == "epsilon":
            return self.predict_x0_from_eps(x_t, t, prediction)
        return (
            self.extract("sqrt_alphas_cumprod", t, x_t) * x_t
            - self.extract("sqrt_one_minus_alphas_cumprod", t, x_t) * prediction
        )

    def prediction_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x_start: torch.Tensor) -> torch.Tensor:
        """The prediction that stands for `x_start` at x_t: the inverse of `x0_from_prediction`."""
        if self.config.prediction == "epsilon":
            return self.predict_eps_from_x0(x_t, t, x_start)
        return (self.extract("sqrt_alphas_cumprod", t, x_t) * x_t - x_start) / self.extract(
            "sqrt_one_minus_alphas_cumprod", t, x_t
        )

    # ------------------------------------------------------------------ reverse process
    def split_output(self, output: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(prediction, variance)` from a model output: the prediction (ε or v, as configured)
        and the variance interpolation, which is None unless the variance is learned."""
        if not self.config.learn_sigma:
            return output, None
        prediction, variance = output.chunk(2, dim=channel_dim)
        return prediction, variance

    def p_mean_variance(
        self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, channel_dim: int = 1, clip: bool = True
    ) -> dict[str, torch.Tensor]:
        """Mean and (log-)variance of p(x_{t-1} | x_t) from the model output."""
        prediction, variance = self.split_output(output, channel_dim)
        if variance is not None:
            min_log = self.extract("posterior_log_variance_clipped", t, x_t)
            max_log = self.extract("log_betas", t, x_t)
            fraction = (variance + 1) / 2
            log_variance = fraction * max_log + (1 - fraction) * min_log
        elif self.config.fixed_variance == "fixed_small":
            log_variance = self.extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        else:
            log_variance = self.extract("log_variance_fixed_large", t, x_t).expand_as(x_t)
        pred_x0 = self.x0_from_prediction(x_t, t, prediction)
        if clip:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior(pred_x0, x_t, t)
        return {"mean": mean, "log_variance": log_variance, "pred_x0": pred_x0}

    # ------------------------------------------------------------------ losses
    def loss_terms(
        self,
        output: torch.Tensor,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        channel_dim: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Per-sample `[B]` losses of one modality: `mse` on the prediction (ε or v), and with a
        learned variance the variational bound term `vb` (bits per dimension, gradient to the
        variance only) and their sum as `loss` (the hybrid loss of improved DDPM with λ = 0.001·T)."""
        prediction, variance = self.split_output(output, channel_dim)
        target = self.training_target(x_start.float(), t, noise.float())
        mse = mean_over_sample((prediction.float() - target) ** 2)
        if variance is None:
            return {"mse": mse, "loss": mse}
        frozen = torch.cat([prediction.detach(), variance], dim=channel_dim).float()
        vb = self.variational_bound(frozen, x_start.float(), x_t.float(), t, channel_dim)
        return {"mse": mse, "vb": vb, "loss": mse + vb}

    def variational_bound(
        self, output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, channel_dim: int = 1
    ) -> torch.Tensor:
        """The term L_t of the variational bound, per sample, in bits per dimension."""
        true_mean, _, true_log_variance = self.q_posterior(x_start, x_t, t)
        predicted = self.p_mean_variance(output, x_t, t, channel_dim=channel_dim, clip=False)
        kl = mean_over_sample(normal_kl(true_mean, true_log_variance, predicted["mean"], predicted["log_variance"]))
        nll = -mean_over_sample(
            discretized_gaussian_log_likelihood(x_start, predicted["mean"], 0.5 * predicted["log_variance"])
        )
        return torch.where(t == 0, nll, kl) / math.log(2.0)

    def joint_loss(
        self,
        model: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        video: torch.Tensor,
        audio: torch.Tensor,
        t: torch.Tensor,
        noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The joint loss of the coupled U-Net (on ε or v, as configured), per sample `[B]`.

        `loss` is the sum of the two modalities' terms, reported as `video_loss` and
        `audio_loss` (each the mean over its own elements, as the released trainer does).
        """
        video_noise, audio_noise = noise if noise is not None else (torch.randn_like(video), torch.randn_like(audio))
        video_t = self.q_sample(video, t, video_noise)
        audio_t = self.q_sample(audio, t, audio_noise)
        video_out, audio_out = model(video_t, audio_t, t)
        video_terms = self.loss_terms(video_out, video, video_t, t, video_noise, channel_dim=2)
        audio_terms = self.loss_terms(audio_out, audio, audio_t, t, audio_noise, channel_dim=1)
        return {
            "loss": video_terms["loss"] + audio_terms["loss"],
            "video_loss": video_terms["loss"],
            "audio_loss": audio_terms["loss"],
        }
