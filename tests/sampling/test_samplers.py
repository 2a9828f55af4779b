"""Each sampler on an exact ε-predictor for Gaussian data lands on the data distribution."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import ks_2samp

from mmdiffusion.diffusion import GaussianDiffusion
from mmdiffusion.sampling import ModalitySampler, SamplerConfig, sample_joint
from tests.sampling.analytic import AnalyticJointDenoiser

MU_VIDEO, MU_AUDIO, SIGMA = 0.3, -0.2, 0.5
SHAPES = {"video": (256, 2, 1, 2, 2), "audio": (256, 1, 8)}  # 2048 values per modality
TOLERANCE = 0.035  # 3σ of a mean / std estimate from 2048 values is ~0.033 / 0.023


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion()


def draw(diffusion: GaussianDiffusion, sampler: SamplerConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    model = AnalyticJointDenoiser(diffusion, MU_VIDEO, MU_AUDIO, SIGMA)
    video, audio = sample_joint(model, diffusion, sampler, SHAPES, generator=torch.Generator().manual_seed(seed))
    return video, audio, model.calls


@pytest.mark.parametrize(
    "sampler",
    [
        SamplerConfig("ddpm", clip_denoised=False),
        SamplerConfig("ddim", 200, clip_denoised=False),
        SamplerConfig("ddim", 1000, eta=1.0, clip_denoised=False),
        SamplerConfig("dpm-solver++", 20, clip_denoised=False),
        SamplerConfig("dpm-solver++", 10, clip_denoised=False),
    ],
    ids=lambda s: f"{s.name}-{s.num_steps}-eta{s.eta}",
)
def test_sampler_draws_the_gaussian_data_distribution_with_one_network_call_per_step(diffusion, sampler):
    video, audio, calls = draw(diffusion, sampler)
    assert calls == sampler.num_steps
    for values, mu in ((video, MU_VIDEO), (audio, MU_AUDIO)):
        assert values.mean().item() == pytest.approx(mu, abs=TOLERANCE)
        assert values.std().item() == pytest.approx(SIGMA, abs=TOLERANCE)


def test_dpm_solver_in_20_steps_matches_the_1000_step_ddpm_distribution(diffusion):
    ddpm_video, ddpm_audio, _ = draw(diffusion, SamplerConfig("ddpm", 1000, clip_denoised=False), seed=1)
    dpm_video, dpm_audio, calls = draw(diffusion, SamplerConfig("dpm-solver++", 20, clip_denoised=False), seed=2)
    assert calls == 20
    for ddpm, dpm in ((ddpm_video, dpm_video), (ddpm_audio, dpm_audio)):
        result = ks_2samp(ddpm.flatten().numpy(), dpm.flatten().numpy())
        assert result.pvalue > 0.01, f"two-sample KS statistic {result.statistic:.3f}"
        assert dpm.std().item() == pytest.approx(ddpm.std().item(), rel=0.06)


def test_few_step_ddim_is_deterministic_and_converges_with_steps(diffusion):
    """DDIM (η = 0) follows the probability-flow ODE: same noise, same sample; its std error
    shrinks as steps grow (the discretisation, not the update rule, limits few-step DDIM)."""
    errors = []
    for steps in (10, 50, 250):
        first, _, _ = draw(diffusion, SamplerConfig("ddim", steps, clip_denoised=False), seed=3)
        again, _, _ = draw(diffusion, SamplerConfig("ddim", steps, clip_denoised=False), seed=3)
        assert torch.equal(first, again)
        errors.append(abs(first.std().item() - SIGMA))
    assert errors[0] > errors[1] > errors[2]


def probability_flow_error(diffusion: GaussianDiffusion, sampler: SamplerConfig) -> float:
    """Relative distance of a deterministic sampler's endpoint from the exact probability-flow ODE
    solution, on exact scores of N(MU_VIDEO, SIGMA²) data. For Gaussian data the ODE keeps
    (x_t − sqrt(ᾱ_t) μ) / sqrt(ᾱ_t σ² + 1 − ᾱ_t) constant, so x_T fixes x_0."""
    model = AnalyticJointDenoiser(diffusion, MU_VIDEO, MU_AUDIO, SIGMA)
    modality = ModalitySampler(sampler, diffusion, 1)
    x_start = torch.randn(4, 1, 1024, generator=torch.Generator().manual_seed(0))
    alpha_bar = diffusion.tables["alphas_cumprod"][modality.timesteps[0]].float()
    exact = MU_VIDEO + SIGMA * (x_start - alpha_bar.sqrt() * MU_VIDEO) / (alpha_bar * SIGMA**2 + 1 - alpha_bar).sqrt()
    x = x_start
    for t in modality.timesteps:
        eps, _ = model(x, x, torch.full((len(x),), t))
        x = modality.step(eps, t, x)
    return ((x - exact).norm() / (exact - MU_VIDEO).norm()).item()


def test_dpm_solver_follows_the_probability_flow_ode_far_closer_than_ddim(diffusion):
    """Measured: DPM-Solver++ 3.2 % / 1.5 % / 0.36 % off at 10 / 20 / 40 steps, DDIM 25 % / 13 % / 6.8 %."""
    dpm = {
        steps: probability_flow_error(diffusion, SamplerConfig("dpm-solver++", steps, clip_denoised=False))
        for steps in (10, 20, 40)
    }
    ddim = {
        steps: probability_flow_error(diffusion, SamplerConfig("ddim", steps, clip_denoised=False))
        for steps in (20, 40)
    }
    assert dpm[10] < 0.05 and dpm[20] < 0.025 and dpm[40] < 0.006
    assert dpm[40] < dpm[20] / 3  # second order: doubling the steps divides the error by about 4
    assert ddim[40] > ddim[20] / 2.5  # first order: by about 2
    assert ddim[20] > 5 * dpm[20]


def test_clipping_keeps_samples_in_the_data_range(diffusion):
    model = AnalyticJointDenoiser(diffusion, 0.9, 0.9, 0.5)
    video, audio = sample_joint(model, diffusion, SamplerConfig("ddim", 20), SHAPES, generator=torch.Generator())
    assert video.abs().max() <= 1.0 + 1e-5 and audio.abs().max() <= 1.0 + 1e-5


def test_samplers_share_the_diffusion_timesteps(diffusion):
    assert ModalitySampler(SamplerConfig("ddpm"), diffusion, 1).timesteps == list(range(999, -1, -1))
    # the released respacing of a plain count: both ends kept, strides of 999 / 49 = 20.4 rounded
    ddpm = ModalitySampler(SamplerConfig("ddpm", 50), diffusion, 1).timesteps
    assert ddpm[0] == 999 and ddpm[-1] == 0 and {a - b for a, b in itertools.pairwise(ddpm)} == {20, 21}
    # guided-diffusion's "ddim25" respacing: every 40th step from 960 down to 0
    assert ModalitySampler(SamplerConfig("ddim", 25), diffusion, 1).timesteps == list(range(960, -1, -40))
    dpm = ModalitySampler(SamplerConfig("dpm-solver++", 20), diffusion, 1).timesteps
    assert len(dpm) == 20 and dpm[0] == 999 and dpm[-1] == 0 and dpm == sorted(dpm, reverse=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "euler"}, "unknown sampler 'euler'"),
        ({"name": "ddim", "steps": 0}, "steps must be >= 1"),
        ({"name": "ddpm", "eta": 0.5}, "eta applies to the ddim sampler only"),
    ],
)
def test_bad_sampler_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerConfig(**kwargs)


def test_more_steps_than_the_diffusion_has_is_refused(diffusion):
    with pytest.raises(ValueError, match="only 1000"):
        ModalitySampler(SamplerConfig("ddim", 1001), diffusion, 1)
