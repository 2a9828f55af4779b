"""The diffusion process: schedules, the forward process and the training losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdiffusion import CoupledUNet, CoupledUNetConfig, DiffusionConfig, GaussianDiffusion
from mmdiffusion.diffusion import make_betas


def test_linear_schedule_is_the_released_one() -> None:
    betas = make_betas(DiffusionConfig())
    assert len(betas) == 1000
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.all(np.diff(betas) > 0)


def test_cosine_schedule_is_bounded_and_ends_near_pure_noise() -> None:
    diffusion = GaussianDiffusion(DiffusionConfig(schedule="cosine", steps=200))
    betas = diffusion.tables["betas"].numpy()
    assert np.all((betas > 0) & (betas <= 0.999))
    assert diffusion.tables["alphas_cumprod"][-1] < 1e-4


def test_q_sample_has_the_forward_process_moments() -> None:
    diffusion = GaussianDiffusion()
    x_start = torch.full((20_000, 1), 0.7)
    generator = torch.Generator().manual_seed(0)
    for step in (0, 250, 999):
        t = torch.full((20_000,), step)
        noise = torch.randn(x_start.shape, generator=generator)
        x_t = diffusion.q_sample(x_start, t, noise)
        alpha_bar = float(diffusion.tables["alphas_cumprod"][step])
        assert float(x_t.mean()) == pytest.approx(alpha_bar**0.5 * 0.7, abs=0.02)
        assert float(x_t.var()) == pytest.approx(1 - alpha_bar, abs=0.02 + 0.02 * (1 - alpha_bar))


def test_posterior_of_the_true_start_recovers_it_at_the_last_step() -> None:
    diffusion = GaussianDiffusion()
    x_start, noise = torch.randn(4, 3), torch.randn(4, 3)
    t = torch.full((4,), 1)
    x_t = diffusion.q_sample(x_start, t, noise)
    torch.testing.assert_close(diffusion.predict_x0_from_eps(x_t, t, noise), x_start, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(diffusion.predict_eps_from_x0(x_t, t, x_start), noise, rtol=1e-3, atol=1e-3)


def test_joint_loss_reports_each_modality_and_sums_them() -> None:
    diffusion = GaussianDiffusion()
    video, audio = torch.randn(3, 4, 3, 8, 8), torch.randn(3, 1, 64)

    def half_right(video_t: torch.Tensor, audio_t: torch.Tensor, t: torch.Tensor):
        return torch.zeros_like(video_t), audio_noise

    video_noise, audio_noise = torch.randn_like(video), torch.randn_like(audio)
    losses = diffusion.joint_loss(half_right, video, audio, torch.tensor([1, 500, 999]), (video_noise, audio_noise))
    torch.testing.assert_close(losses["video_loss"], video_noise.square().flatten(1).mean(1))
    assert torch.all(losses["audio_loss"] == 0)
    torch.testing.assert_close(losses["loss"], losses["video_loss"] + losses["audio_loss"])


def test_learned_variance_adds_a_bound_term_that_only_trains_the_variance() -> None:
    diffusion = GaussianDiffusion(DiffusionConfig(learn_sigma=True))
    x_start = torch.rand(2, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x_start)
    t = torch.tensor([0, 600])
    x_t = diffusion.q_sample(x_start, t, noise)
    eps = torch.randn_like(x_start, requires_grad=True)
    v = torch.zeros_like(x_start, requires_grad=True)
    terms = diffusion.loss_terms(torch.cat([eps, v], dim=1), x_start, x_t, t, noise)
    assert set(terms) == {"mse", "vb", "loss"} and torch.all(terms["vb"] >= 0)
    terms["vb"].sum().backward()
    assert eps.grad is None or torch.all(eps.grad == 0)
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_loss_falls_when_a_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    config = CoupledUNetConfig.named("tiny", frames=4, image_size=16, audio_length=256)
    model = CoupledUNet(config)
    diffusion = GaussianDiffusion()
    video = torch.rand(2, 4, 3, 16, 16) * 2 - 1
    audio = torch.sin(torch.linspace(0, 40, 256)).expand(2, 1, 256).contiguous()
    t = torch.tensor([300, 700])
    noise = (torch.randn_like(video), torch.randn_like(audio))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = diffusion.joint_loss(model, video, audio, t, noise)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
