"""DDPM, DDIM with noise and DPM-Solver++ against loops written out from the formulas.

No trajectory of the released code exists for these (the golden file holds DDIM η = 0 only), so
the standard is the formula: the released `p_sample` / `ddim_sample` (tests/sampling/oracles.py)
and the DPM-Solver++(2M) update of the paper, with the same per-step noise injected into both.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from mmdiffusion.diffusion import DiffusionConfig, GaussianDiffusion
from mmdiffusion.sampling import ModalitySampler, SamplerConfig
from mmdiffusion.sampling.schedulers import log_snr_timesteps
from tests.golden_data import relative_error
from tests.sampling import oracles

VIDEO = (2, 3, 3, 4, 4)  # [B, F, C, H, W], channel axis 2
IMAGE = (2, 3, 8, 8)  # [B, C, H, W], channel axis 1
ORACLE_TOLERANCE = 1e-5
"""float32 sampling against the float64 formulas: measured ≤ 2e-6 (DPM-Solver++ 10 steps, DDIM,
DDPM 50 steps); the old DPM-Solver++ noise levels (diffusers' unrounded `use_lu_lambdas` ones
beside rounded network timesteps) were 6e-3 off at 10 steps."""
DDPM_1000_TOLERANCE = 1e-4
"""Measured 1.7e-5: diffusers recovers β_t as 1 − ᾱ_t/ᾱ_{t−1} from float32 ᾱ (up to 5e-4 relative
error at small β), and 1000 noisy steps accumulate it; the released tables are float64."""


def step_noise(index: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=step_generator(index))


def step_generator(index: int) -> torch.Generator:
    """The per-step noise, injected: step `index` draws from its own seed."""
    return torch.Generator().manual_seed(1000 + index)


def run_sampler(sampler: ModalitySampler, network: oracles.Network, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    for index, t in enumerate(sampler.timesteps):
        x = sampler.step(network(x, t), t, x, step_generator(index))
    return x, sampler.timesteps


def start_noise(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("steps", [1000, 50])
@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small", "learned_range"])
def test_ddpm_follows_the_released_p_sample_formula(variance, steps):
    learned = variance == "learned_range"
    diffusion = GaussianDiffusion(
        DiffusionConfig(learn_sigma=True) if learned else DiffusionConfig(fixed_variance=variance)
    )
    shape, channel_dim = (IMAGE, 1) if learned else (VIDEO, 2)
    network = oracles.toy_network(learn_sigma=learned)
    x = start_noise(shape)

    sampled, timesteps = run_sampler(ModalitySampler(SamplerConfig("ddpm", steps), diffusion, channel_dim), network, x)

    assert len(timesteps) == steps and timesteps[-1] == 0
    expected = oracles.released_ddpm(oracles.Run(network, diffusion, timesteps, x, step_noise), variance)
    assert relative_error(sampled.double(), expected) < (DDPM_1000_TOLERANCE if steps == 1000 else ORACLE_TOLERANCE)


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("learn_sigma", [False, True], ids=["fixed-variance", "learned-variance"])
def test_ddim_with_noise_follows_the_released_ddim_formula(eta, learn_sigma):
    diffusion = GaussianDiffusion(DiffusionConfig(learn_sigma=learn_sigma))
    network = oracles.toy_network(learn_sigma)
    x = start_noise(IMAGE)

    sampled, timesteps = run_sampler(ModalitySampler(SamplerConfig("ddim", 25, eta=eta), diffusion, 1), network, x)

    expected = oracles.released_ddim(oracles.Run(network, diffusion, timesteps, x, step_noise), eta)
    assert relative_error(sampled.double(), expected) < ORACLE_TOLERANCE


@pytest.mark.parametrize("clip", [True, False], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("steps", [10, 20, 50])
def test_dpm_solver_pp_is_the_multistep_second_order_update_of_the_paper(steps, clip):
    diffusion = GaussianDiffusion()
    network = oracles.toy_network()
    x = start_noise(VIDEO)

    sampled, timesteps = run_sampler(
        ModalitySampler(SamplerConfig("dpm-solver++", steps, clip_denoised=clip), diffusion, 2), network, x
    )

    expected = oracles.dpm_solver_pp_2m(oracles.Run(network, diffusion, timesteps, x, clip=clip))
    assert relative_error(sampled.double(), expected) < ORACLE_TOLERANCE


@pytest.mark.parametrize("steps", [1, 2, 10, 20, 50, 200, 990, 1000])
def test_dpm_solver_timesteps_are_distinct_and_span_the_schedule(steps):
    timesteps = log_snr_timesteps(GaussianDiffusion(), steps)
    assert len(timesteps) == steps and timesteps[0] == 999
    assert all(a > b for a, b in itertools.pairwise(timesteps))
    if steps > 1:
        assert timesteps[-1] == 0


@pytest.mark.parametrize("steps", [10, 20])
def test_dpm_solver_timesteps_are_those_of_diffusers_log_snr_spacing(steps):
    """Where rounding repeats no timestep, they are diffusers' own `use_lu_lambdas` timesteps."""
    from diffusers import DPMSolverMultistepScheduler

    diffusion = GaussianDiffusion()
    reference = DPMSolverMultistepScheduler(trained_betas=diffusion.tables["betas"].numpy(), use_lu_lambdas=True)
    reference.set_timesteps(steps)
    assert log_snr_timesteps(diffusion, steps) == reference.timesteps.tolist()
