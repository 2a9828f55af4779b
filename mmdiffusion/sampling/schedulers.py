"""Reverse-process update rules, one scheduler per modality.

The update rules are diffusers' schedulers (`DDPMScheduler`, `DDIMScheduler`,
`DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`), built from the betas of our
`GaussianDiffusion` through `trained_betas`, so the schedule the model was trained on is the
one that is inverted. A diffusers scheduler keeps state between steps (DPM-Solver++ keeps the
previous model outputs), so every modality gets its own instance: `ModalitySampler`.
diffusers is imported only when a sampler is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from mmdiffusion.diffusion import GaussianDiffusion

SamplerName = Literal["ddpm", "ddim", "dpm-solver++"]
DIFFUSERS_PREDICTION: dict[str, str] = {"epsilon": "epsilon", "v": "v_prediction"}
"""diffusers' `prediction_type` for each `DiffusionConfig.prediction`."""
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm-solver++")
DEFAULT_STEPS: dict[str, int] = {"ddpm": 1000, "ddim": 50, "dpm-solver++": 20}
"""Steps when none are asked for: full ancestral DDPM; DDIM and DPM-Solver++ at the step counts
where they are close to converged for the released models."""


@dataclass(frozen=True)
class SamplerConfig:
    """Which update rule and how many network evaluations (one per step)."""

    name: SamplerName = "dpm-solver++"
    steps: int | None = None
    """None: `DEFAULT_STEPS[name]`."""
    eta: float = 0.0
    """DDIM only: 0 is deterministic DDIM, 1 has the variance of ancestral DDPM."""
    clip_denoised: bool = True
    """Clip each predicted x0 to [-1, 1] (the data range) before it is used."""

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")
        if self.eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {self.eta}")
        if self.eta and self.name != "ddim":
            raise ValueError(f"eta applies to the ddim sampler only, not {self.name}")

    @property
    def num_steps(self) -> int:
        return DEFAULT_STEPS[self.name] if self.steps is None else self.steps


def build_scheduler(config: SamplerConfig, diffusion: GaussianDiffusion) -> Any:
    """A diffusers scheduler for `diffusion`'s betas, with its timesteps set."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if config.num_steps > diffusion.num_steps:
        raise ValueError(f"{config.name} with {config.num_steps} steps: the diffusion has only {diffusion.num_steps}")
    common: dict[str, Any] = {
        "num_train_timesteps": diffusion.num_steps,
        "trained_betas": diffusion.tables["betas"].numpy(),
        "prediction_type": DIFFUSERS_PREDICTION[diffusion.config.prediction],
    }
    if config.name == "ddpm":
        variance = "learned_range" if diffusion.config.learn_sigma else diffusion.config.fixed_variance
        scheduler = DDPMScheduler(
            **common, variance_type=variance, clip_sample=config.clip_denoised, clip_sample_range=1.0
        )
        scheduler.set_timesteps(timesteps=evenly_spaced_timesteps(diffusion.num_steps, config.num_steps))
    elif config.name == "ddim":
        # "leading" spacing with alpha_prev = 1 at the end is guided-diffusion's "ddimN" respacing.
        scheduler = DDIMScheduler(
            **common,
            clip_sample=config.clip_denoised,
            clip_sample_range=1.0,
            set_alpha_to_one=True,
            timestep_spacing="leading",
        )
        scheduler.set_timesteps(config.num_steps)
    else:
        # Thresholding with the quantile's range pinned to [1, 1] is a plain clip of x0 to [-1, 1].
        scheduler = DPMSolverMultistepScheduler(
            **common,
            algorithm_type="dpmsolver++",
            solver_order=2,
            lower_order_final=True,
            thresholding=config.clip_denoised,
            sample_max_value=1.0,
        )
        # Given as timesteps, the noise levels of the update are the schedule's at exactly the
        # timesteps the network sees (diffusers' own `use_lu_lambdas` steps with the unrounded ones).
        scheduler.set_timesteps(timesteps=log_snr_timesteps(diffusion, config.num_steps))
    return scheduler


def evenly_spaced_timesteps(diffusion_steps: int, steps: int) -> list[int]:
    """`steps` timesteps spread evenly over [0, T − 1], both ends included, last first: the
    released respacing of a plain step count (`timestep_respacing="250"`), rounded as it rounds
    (a running sum of the stride, each rounded half to even). 1000 of 1000 are all of them."""
    stride = (diffusion_steps - 1) / (steps - 1) if steps > 1 else 1.0
    position, kept = 0.0, []
    for _ in range(steps):
        kept.append(round(position))
        position += stride
    return kept[::-1]


def log_snr_timesteps(diffusion: GaussianDiffusion, steps: int) -> list[int]:
    """`steps` distinct timesteps from the last to 0, as evenly spaced in log-SNR as whole
    timesteps allow (the spacing of the DPM-Solver paper).

    On exact Gaussian scores, 10 DPM-Solver++ steps spaced so end 3 % from the solution of the
    probability-flow ODE, against 39 % with steps even in t (docs/sampling.md). Near t = 0 one
    timestep spans more log-SNR than a step does: there the rounded timesteps would repeat, so each
    is pushed up to one above the next (and, for step counts close to the diffusion's, capped
    below the previous).
    """
    alphas_cumprod = diffusion.tables["alphas_cumprod"].numpy()
    last = len(alphas_cumprod) - 1
    log_snr = np.log(alphas_cumprod / (1 - alphas_cumprod))  # decreasing in t
    targets = np.linspace(log_snr[last], log_snr[0], steps)
    rounded = np.rint(np.interp(targets, log_snr[::-1], np.arange(last, -1, -1))).astype(np.int64)
    index = np.arange(steps)
    distinct = np.maximum.accumulate((rounded + index)[::-1])[::-1] - index
    return np.minimum(distinct, last - index).tolist()


class ModalitySampler:
    """The reverse process of one modality: its own scheduler, and where the model output keeps
    its channels (`channel_dim`: 2 for video `[B, F, C, H, W]`, 1 for audio and images)."""

    def __init__(self, config: SamplerConfig, diffusion: GaussianDiffusion, channel_dim: int) -> None:
        self.config = config
        self.diffusion = diffusion
        self.channel_dim = channel_dim
        self.scheduler = build_scheduler(config, diffusion)
        # Only ancestral DDPM draws with the learned variance; DDIM and DPM-Solver++ use the
        # prediction (ε or v) alone.
        self.uses_learned_variance = diffusion.config.learn_sigma and config.name == "ddpm"

    @property
    def timesteps(self) -> list[int]:
        return [int(t) for t in self.scheduler.timesteps]

    def step(
        self, output: torch.Tensor, t: int, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """x at the next (less noisy) timestep from the model output at `t`."""
        extra: dict[str, Any] = (
            {"eta": self.config.eta, "use_clipped_model_output": True} if self.config.name == "ddim" else {}
        )
        if self.uses_learned_variance:
            # diffusers reads [eps, v] stacked on axis 1.
            prev = self.scheduler.step(
                output.movedim(self.channel_dim, 1), t, x.movedim(self.channel_dim, 1), generator=generator
            ).prev_sample
            return prev.movedim(1, self.channel_dim)
        prediction, _ = self.diffusion.split_output(output, self.channel_dim)
        return self.scheduler.step(prediction, t, x, generator=generator, **extra).prev_sample
