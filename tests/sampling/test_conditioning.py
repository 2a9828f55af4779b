"""Zero-shot conditioning on exact ε-predictors: replacement and gradient guidance, both ways."""

from __future__ import annotations

import pytest
import torch

from mmdiffusion.diffusion import GaussianDiffusion
from mmdiffusion.sampling import SamplerConfig, ZeroShotCondition, sample_joint
from tests.sampling.analytic import AnalyticJointDenoiser

BATCH = 128
SHAPES = {"video": (BATCH, 1, 1, 4, 4), "audio": (BATCH, 1, 16)}  # paired element by element
MU = {"video": 0.2, "audio": -0.1}
SIGMA, RHO = 0.5, 0.9


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion()


def correlated_model(diffusion: GaussianDiffusion) -> AnalyticJointDenoiser:
    return AnalyticJointDenoiser(diffusion, MU["video"], MU["audio"], SIGMA, rho=RHO)


def clean_condition(modality: str) -> torch.Tensor:
    return MU[modality] + SIGMA * torch.randn(SHAPES[modality], generator=torch.Generator().manual_seed(7))


def other(modality: str) -> str:
    return "audio" if modality == "video" else "video"


def conditioned_samples(
    diffusion, modality: str, sampler: SamplerConfig, method: str, on_step=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of the correlated model with the clean condition of `modality`, fixed noise."""
    condition = ZeroShotCondition(
        modality, clean_condition(modality), method, generator=torch.Generator().manual_seed(11)
    )
    return sample_joint(
        correlated_model(diffusion),
        diffusion,
        sampler,
        SHAPES,
        condition=condition,
        generator=torch.Generator().manual_seed(0),
        on_step=on_step,
    )


@pytest.mark.parametrize("modality", ["audio", "video"])
@pytest.mark.parametrize(
    "sampler", [SamplerConfig("ddim", 20), SamplerConfig("dpm-solver++", 15)], ids=lambda s: s.name
)
def test_replacement_feeds_the_forward_noised_condition_at_every_step(diffusion, modality, sampler):
    value = clean_condition(modality)
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    video, audio = conditioned_samples(
        diffusion,
        modality,
        sampler,
        "replacement",
        on_step=lambda index, t, inputs: seen.append((t, inputs[modality].clone(), inputs[other(modality)].clone())),
    )

    replay = torch.Generator().manual_seed(11)
    assert len(seen) == sampler.num_steps
    for t, given, generated in seen:
        t_batch = torch.full((BATCH,), t)
        expected = diffusion.q_sample(value, t_batch, torch.randn(value.shape, generator=replay))
        torch.testing.assert_close(given, expected)
        assert not torch.equal(generated, expected)
    result = {"video": video, "audio": audio}
    assert torch.equal(result[modality], value)
    assert result[other(modality)].shape == SHAPES[other(modality)]


def reconstruction_run(diffusion, modality: str, guidance: float) -> tuple[float, float]:
    """(mean over steps of the condition's x0 reconstruction error, mean squared distance of the
    generated modality from its exact conditional mean E[gen | condition])."""
    model = correlated_model(diffusion)
    value = clean_condition(modality)
    errors = []

    def on_step(index: int, t: int, inputs: dict[str, torch.Tensor]) -> None:
        t_batch = torch.full((BATCH,), t)
        outputs = dict(zip(("video", "audio"), model(inputs["video"], inputs["audio"], t_batch), strict=True))
        x0 = diffusion.predict_x0_from_eps(inputs[modality], t_batch, outputs[modality])
        errors.append((x0 - value).pow(2).mean().item())

    condition = ZeroShotCondition(modality, value, "gradient", guidance, torch.Generator().manual_seed(3))
    video, audio = sample_joint(
        model,
        diffusion,
        SamplerConfig("ddim", 50),
        SHAPES,
        condition=condition,
        generator=torch.Generator().manual_seed(0),
        on_step=on_step,
    )
    generated = {"video": video, "audio": audio}[other(modality)]
    target = MU[other(modality)] + RHO * (value - MU[modality]).reshape(generated.shape)
    return sum(errors) / len(errors), (generated - target).pow(2).mean().item()


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_gradient_guidance_lowers_the_condition_reconstruction_error(diffusion, modality):
    unguided_error, unguided_distance = reconstruction_run(diffusion, modality, guidance=0.0)
    guided_error, guided_distance = reconstruction_run(diffusion, modality, guidance=2.0)
    assert guided_error < unguided_error
    # and the generated modality moves towards what the condition implies, by a wide margin
    assert guided_distance < 0.6 * unguided_distance


@pytest.mark.parametrize("modality", ["audio", "video"])
@pytest.mark.parametrize(
    "sampler", [SamplerConfig("ddim", 20), SamplerConfig("dpm-solver++", 15)], ids=lambda s: s.name
)
def test_gradient_method_without_guidance_samples_what_replacement_samples(diffusion, modality, sampler):
    """The guided ε goes to x0 and back; with λ = 0 every sampler (DDIM clipping that x0 and
    re-deriving ε from it, DPM-Solver++ stepping on x0) must see the same prediction as without."""
    replaced_samples = conditioned_samples(diffusion, modality, sampler, "replacement")
    guided_samples = conditioned_samples(diffusion, modality, sampler, "gradient")
    for replaced, guided in zip(replaced_samples, guided_samples, strict=True):
        torch.testing.assert_close(guided, replaced, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modality": "text"}, "condition modality"),
        ({"method": "inpaint"}, "unknown conditioning method 'inpaint'"),
        ({"method": "replacement", "guidance": 1.0}, "gradient method only"),
        ({"method": "gradient", "guidance": -1.0}, ">= 0"),
    ],
)
def test_bad_condition_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ZeroShotCondition(**{"modality": "audio", "value": torch.zeros(1, 1, 4), **kwargs})


def test_a_condition_of_the_wrong_shape_is_refused(diffusion):
    condition = ZeroShotCondition("audio", torch.zeros(2, 1, 16))
    with pytest.raises(ValueError, match=r"audio condition has shape \[2, 1, 16\]"):
        sample_joint(correlated_model(diffusion), diffusion, SamplerConfig("ddim", 2), SHAPES, condition=condition)
