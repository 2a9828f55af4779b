"""Independent reverse-process loops, written out from the formulas, in float64.

- `released_ddpm`: the released `p_sample_loop` (guided-diffusion's): x0 from ε, clipped, the
  posterior mean, and noise of the fixed (`fixed_large`: β, with the posterior variance at the
  first index; `fixed_small`: the posterior variance) or learned (`learned_range`: an
  interpolation of the log posterior variance and log β) variance; no noise at the last step.
  With fewer steps than the diffusion, the process is respaced as in improved DDPM: over the kept
  timesteps S, ᾱ'_i = ᾱ_{S_i} and β'_i = 1 − ᾱ'_i / ᾱ'_{i−1}; the network still sees S_i.
- `released_ddim`: the released `ddim_sample_loop`: ε re-derived from the clipped x0, then
  x_prev = sqrt(ᾱ_prev) x0 + sqrt(1 − ᾱ_prev − σ²) ε + σ z with
  σ = η sqrt((1 − ᾱ_prev) / (1 − ᾱ)) sqrt(1 − ᾱ / ᾱ_prev), and ᾱ_prev = 1 after the last step.
- `dpm_solver_pp_2m`: the multistep second-order DPM-Solver++ of Lu et al. (2022, Algorithm 2),
  data prediction clipped to [-1, 1], the first step first order, and a last first-order step to
  σ = 0 (which returns the last data prediction).

Each loop takes a `Run`: the timesteps the sampler under test chose, the start noise, and the
per-step noise as `noise(index, shape)`, so the same draws can be injected into both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mmdiffusion.diffusion import GaussianDiffusion

Network = Callable[[torch.Tensor, int], torch.Tensor]
StepNoise = Callable[[int, tuple[int, ...]], torch.Tensor]


def toy_network(learn_sigma: bool = False) -> Network:
    """A fixed, nonlinear stand-in for a network, `[B, C, ...]` → ε (and v on the channel axis):
    large enough that x0 is clipped at high noise, and mixing neighbouring elements."""

    def predict(x: torch.Tensor, t: int) -> torch.Tensor:
        eps = 1.2 * torch.tanh(1.3 * x + 0.4 * x.roll(1, -1) + 0.5 * math.sin(t / 100))
        if not learn_sigma:
            return eps
        return torch.cat([eps, torch.tanh(0.7 * x - math.cos(t / 70))], dim=1)

    return predict


def _respaced_tables(diffusion: GaussianDiffusion, timesteps: Sequence[int]) -> dict[str, torch.Tensor]:
    """Tables indexed by position in the ascending kept timesteps."""
    kept = sorted(timesteps)
    alphas_cumprod = diffusion.tables["alphas_cumprod"].double()[kept]
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    betas = 1 - alphas_cumprod / alphas_cumprod_prev
    posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
    first_posterior = posterior_variance[1:2] if len(kept) > 1 else betas[:1]
    return {
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "betas": betas,
        "posterior_log_variance_clipped": torch.log(torch.cat([first_posterior, posterior_variance[1:]])),
        "log_variance_fixed_large": torch.log(torch.cat([first_posterior, betas[1:]])),
        "coef_x0": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
        "coef_xt": (1 - alphas_cumprod_prev) * (1 - betas).sqrt() / (1 - alphas_cumprod),
    }


def _clipped_x0(x: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, clip: bool) -> torch.Tensor:
    x0 = (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    return x0.clamp(-1, 1) if clip else x0


@dataclass(frozen=True)
class Run:
    """What a loop samples: the network, the process, the timesteps the sampler under test chose,
    the start noise, the per-step noise `noise(index, shape)` and whether x0 is clipped."""

    network: Network
    diffusion: GaussianDiffusion
    timesteps: Sequence[int]
    start: torch.Tensor
    noise: StepNoise | None = None
    clip: bool = True

    def step_noise(self, index: int, like: torch.Tensor) -> torch.Tensor:
        assert self.noise is not None, "this loop draws noise: give the run its per-step noise"
        return self.noise(index, tuple(like.shape)).double()


RespacedUpdate = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], int, int], torch.Tensor]
"""`update(x, output, tables, i, index)`: x at the next timestep; `i` indexes the respaced tables."""


def _respaced_loop(run: Run, update: RespacedUpdate) -> torch.Tensor:
    tables = _respaced_tables(run.diffusion, run.timesteps)
    x = run.start.double()
    for index, t in enumerate(run.timesteps):
        x = update(x, run.network(x.float(), t).double(), tables, len(run.timesteps) - 1 - index, index)
    return x


def released_ddpm(run: Run, variance: str) -> torch.Tensor:
    def update(x: torch.Tensor, output: torch.Tensor, tables: dict, i: int, index: int) -> torch.Tensor:
        eps, v = output.chunk(2, dim=1) if variance == "learned_range" else (output, None)
        x0 = _clipped_x0(x, eps, tables["alphas_cumprod"][i], run.clip)
        mean = tables["coef_x0"][i] * x0 + tables["coef_xt"][i] * x
        if variance == "learned_range":
            fraction = (v + 1) / 2
            log_variance = (
                fraction * torch.log(tables["betas"][i]) + (1 - fraction) * tables["posterior_log_variance_clipped"][i]
            )
        elif variance == "fixed_small":
            log_variance = tables["posterior_log_variance_clipped"][i]
        else:
            log_variance = tables["log_variance_fixed_large"][i]
        return mean if i == 0 else mean + torch.exp(0.5 * log_variance) * run.step_noise(index, x)

    return _respaced_loop(run, update)


def released_ddim(run: Run, eta: float) -> torch.Tensor:
    def update(x: torch.Tensor, output: torch.Tensor, tables: dict, i: int, index: int) -> torch.Tensor:
        alpha_bar, alpha_bar_prev = tables["alphas_cumprod"][i], tables["alphas_cumprod_prev"][i]
        x0 = _clipped_x0(x, output[:, : x.shape[1]], alpha_bar, run.clip)
        eps = (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)).sqrt() * (1 - alpha_bar / alpha_bar_prev).sqrt()
        x = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).sqrt() * eps
        return x + sigma * run.step_noise(index, x) if i > 0 else x

    return _respaced_loop(run, update)


def dpm_solver_pp_2m(run: Run) -> torch.Tensor:
    alphas_cumprod = run.diffusion.tables["alphas_cumprod"].double()
    timesteps = run.timesteps
    x = run.start.double()
    previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (data prediction, h) of the last step
    for index, t in enumerate(timesteps):
        alpha, sigma = alphas_cumprod[t].sqrt(), (1 - alphas_cumprod[t]).sqrt()
        x0 = _clipped_x0(x, run.network(x.float(), t).double()[:, : x.shape[1]], alphas_cumprod[t], run.clip)
        if index == len(timesteps) - 1:
            return x0  # first order to σ = 0: x = α·x0 with α = 1
        s = timesteps[index + 1]
        alpha_next, sigma_next = alphas_cumprod[s].sqrt(), (1 - alphas_cumprod[s]).sqrt()
        h = torch.log(alpha_next / sigma_next) - torch.log(alpha / sigma)
        if previous is None:
            direction = x0
        else:
            r = previous[1] / h
            direction = (1 + 1 / (2 * r)) * x0 - previous[0] / (2 * r)
        x = (sigma_next / sigma) * x - alpha_next * (torch.exp(-h) - 1) * direction
        previous = (x0, h)
    return x
