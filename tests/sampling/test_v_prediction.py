"""v-prediction (`DiffusionConfig(prediction="v")`): the training target, its inversions, and every
sampler and zero-shot method reading a v network as what it is.

The reference is the exact Gaussian ε-predictor: the same predictor written in v must give the
same samples, step for step and noise for noise, so a sampler that read v as ε (or got a sign
or scale of the conversion wrong) fails.
"""

from __future__ import annotations

import pytest
import torch

from mmdiffusion.diffusion import DiffusionConfig, GaussianDiffusion
from mmdiffusion.sampling import SamplerConfig, ZeroShotCondition, sample_joint
from tests.sampling.analytic import AnalyticJointDenoiser

SHAPES = {"video": (64, 1, 1, 4, 4), "audio": (64, 1, 16)}  # paired element by element
MU_VIDEO, MU_AUDIO, SIGMA, RHO = 0.2, -0.1, 0.5, 0.9
EPS_DIFFUSION = GaussianDiffusion()
V_DIFFUSION = GaussianDiffusion(DiffusionConfig(prediction="v"))


def as_v(eps: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = sqrt(ᾱ)·ε − sqrt(1 − ᾱ)·x0 with x0 from ε, in float64 (the high-noise end divides by
    sqrt(ᾱ) ≈ 0.006 here)."""
    alpha_bar = EPS_DIFFUSION.tables["alphas_cumprod"][t.long()].reshape(-1, *([1] * (x_t.ndim - 1)))
    eps, x_t = eps.double(), x_t.double()
    x0 = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    return (alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0).float()


class VDenoiser:
    """The exact ε-predictor's outputs written as v."""

    def __init__(self) -> None:
        self.eps_model = AnalyticJointDenoiser(EPS_DIFFUSION, MU_VIDEO, MU_AUDIO, SIGMA, rho=RHO)

    def __call__(self, video: torch.Tensor, audio: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        video_eps, audio_eps = self.eps_model(video, audio, t)
        return as_v(video_eps, video, t), as_v(audio_eps, audio, t)


def test_the_v_target_inverts_to_the_clean_sample_and_back() -> None:
    x_start, noise = torch.rand(4, 3, 8) * 2 - 1, torch.randn(4, 3, 8)
    t = torch.tensor([0, 300, 700, 999])
    x_t = V_DIFFUSION.q_sample(x_start, t, noise)
    target = V_DIFFUSION.training_target(x_start, t, noise)
    alpha_bar = V_DIFFUSION.extract("alphas_cumprod", t, x_start)
    torch.testing.assert_close(target, alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x_start)
    torch.testing.assert_close(V_DIFFUSION.x0_from_prediction(x_t, t, target), x_start, rtol=0, atol=1e-5)
    torch.testing.assert_close(V_DIFFUSION.prediction_from_x0(x_t, t, x_start), target, rtol=0, atol=1e-5)
    assert torch.equal(EPS_DIFFUSION.training_target(x_start, t, noise), noise)


def test_the_loss_is_zero_exactly_for_the_configured_target() -> None:
    x_start, noise = torch.rand(3, 2, 16) * 2 - 1, torch.randn(3, 2, 16)
    t = torch.tensor([200, 500, 990])  # at low t, v is close to ε
    x_t = V_DIFFUSION.q_sample(x_start, t, noise)
    v = V_DIFFUSION.training_target(x_start, t, noise)
    assert torch.all(V_DIFFUSION.loss_terms(v, x_start, x_t, t, noise)["loss"] == 0)
    assert torch.all(V_DIFFUSION.loss_terms(noise, x_start, x_t, t, noise)["loss"] > 1e-3)
    assert torch.all(EPS_DIFFUSION.loss_terms(v, x_start, x_t, t, noise)["loss"] > 1e-3)


def test_with_a_learned_variance_the_bound_reads_v_as_v() -> None:
    """The variational bound of the true v (and a variance) equals that of the true ε: the same
    reverse-step mean."""
    x_start, noise = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8)
    t = torch.tensor([1, 600])
    variance = torch.zeros_like(x_start)
    bounds = []
    for prediction in ("epsilon", "v"):
        diffusion = GaussianDiffusion(DiffusionConfig(learn_sigma=True, prediction=prediction))
        x_t = diffusion.q_sample(x_start, t, noise)
        target = diffusion.training_target(x_start, t, noise)
        bounds.append(diffusion.loss_terms(torch.cat([target, variance], 1), x_start, x_t, t, noise)["vb"])
    torch.testing.assert_close(bounds[1], bounds[0], rtol=1e-4, atol=1e-6)


SAMPLERS = [
    SamplerConfig("ddpm", 50),
    SamplerConfig("ddim", 20),
    SamplerConfig("ddim", 20, clip_denoised=False),
    SamplerConfig("ddim", 20, eta=1.0),
    SamplerConfig("dpm-solver++", 15),
]
CONDITIONS = [None, ("audio", "replacement"), ("video", "gradient")]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=lambda s: f"{s.name}-{s.num_steps}-eta{s.eta}-clip{s.clip_denoised}")
@pytest.mark.parametrize("condition", CONDITIONS, ids=lambda c: "joint" if c is None else f"{c[0]}-{c[1]}")
def test_a_v_network_samples_what_the_same_predictor_in_eps_samples(sampler, condition) -> None:
    samples = []
    for diffusion, model in (
        (EPS_DIFFUSION, AnalyticJointDenoiser(EPS_DIFFUSION, MU_VIDEO, MU_AUDIO, SIGMA, rho=RHO)),
        (V_DIFFUSION, VDenoiser()),
    ):
        zero_shot = None
        if condition is not None:
            modality, method = condition
            value = (MU_VIDEO if modality == "video" else MU_AUDIO) + SIGMA * torch.randn(
                SHAPES[modality], generator=torch.Generator().manual_seed(7)
            )
            zero_shot = ZeroShotCondition(
                modality, value, method, 1.0 if method == "gradient" else 0.0, torch.Generator().manual_seed(11)
            )
        samples.append(
            sample_joint(
                model, diffusion, sampler, SHAPES, condition=zero_shot, generator=torch.Generator().manual_seed(0)
            )
        )
    (eps_video, eps_audio), (v_video, v_audio) = samples
    torch.testing.assert_close(v_video, eps_video, rtol=0, atol=1e-4)
    torch.testing.assert_close(v_audio, eps_audio, rtol=0, atol=1e-4)
    assert eps_video.std() > 0.2  # samples, not a collapse both sides share


def with_variance(model):
    """The model's outputs with a learned-variance half stacked on (the interpolation 0.3)."""

    def predict(video: torch.Tensor, audio: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        video_out, audio_out = model(video, audio, t)
        return (
            torch.cat([video_out, torch.full_like(video_out, 0.3)], dim=2),
            torch.cat([audio_out, torch.full_like(audio_out, 0.3)], dim=1),
        )

    return predict


def test_ancestral_ddpm_with_a_learned_variance_reads_v_as_v() -> None:
    sampler = SamplerConfig("ddpm", 50)
    samples = []
    for prediction, model in (
        ("epsilon", AnalyticJointDenoiser(EPS_DIFFUSION, MU_VIDEO, MU_AUDIO, SIGMA, rho=RHO)),
        ("v", VDenoiser()),
    ):
        diffusion = GaussianDiffusion(DiffusionConfig(learn_sigma=True, prediction=prediction))
        samples.append(
            sample_joint(with_variance(model), diffusion, sampler, SHAPES, generator=torch.Generator().manual_seed(0))
        )
    (eps_video, eps_audio), (v_video, v_audio) = samples
    torch.testing.assert_close(v_video, eps_video, rtol=0, atol=1e-4)
    torch.testing.assert_close(v_audio, eps_audio, rtol=0, atol=1e-4)
    assert eps_video.std() > 0.2
