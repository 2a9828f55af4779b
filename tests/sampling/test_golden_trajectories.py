"""DDIM samples what the released `ddim_sample_loop` samples, on the compact golden networks.

`tests/golden_data/ddim_golden.pt` holds the released implementation's trajectories (eta 0, x0
clipped to [-1, 1] and ε re-derived from the clipped x0 at every step) from stored noise. A
sampler that keeps the raw ε after clipping ends more than 100 % away from them.
"""

from __future__ import annotations

import pytest
import torch

from mmdiffusion import load_reference_checkpoint
from mmdiffusion.diffusion import DiffusionConfig, GaussianDiffusion
from mmdiffusion.sampling import SamplerConfig, sample_joint, upsample_frames
from mmdiffusion.sr_unet import SuperResUNetConfig
from tests import golden_data
from tests.golden_data import relative_error

TRAJECTORY_TOLERANCE = 1e-5
"""Measured: 1.3e-6 (video), 9.9e-7 (audio), 7.8e-7 (SR); keeping the raw ε gives 1.18, 1.20, 1.24."""


@pytest.fixture(scope="module")
def golden() -> dict:
    return golden_data.load("ddim_golden.pt")


def sampler_of(trajectory: dict) -> SamplerConfig:
    assert trajectory["sampler"] == "ddim"
    return SamplerConfig("ddim", trajectory["steps"], eta=trajectory["eta"], clip_denoised=trajectory["clip_denoised"])


def test_coupled_unet_ddim10_reproduces_the_released_trajectory(golden):
    trajectory = golden["coupled"]
    compact = golden_data.compact_golden("coupled_unet_compact_golden.pt")
    model = load_reference_checkpoint(compact["state_dict"], compact["config"])
    noise, expected = trajectory["noise"], trajectory["samples"]
    seen: list[tuple[int, dict[str, torch.Tensor]]] = []

    video, audio = sample_joint(
        model,
        GaussianDiffusion(),
        sampler_of(trajectory),
        {name: tuple(value.shape) for name, value in noise.items()},
        # The released noise was drawn with torch.manual_seed(77), video first: the loop's order.
        generator=torch.Generator().manual_seed(77),
        on_step=lambda index, t, inputs: seen.append((t, inputs)),
    )

    assert [t for t, _ in seen] == trajectory["timesteps"]
    assert all(torch.equal(seen[0][1][name], noise[name]) for name in ("video", "audio"))
    assert relative_error(video, expected["video"]) < TRAJECTORY_TOLERANCE
    assert relative_error(audio, expected["audio"]) < TRAJECTORY_TOLERANCE


def test_sr_unet_ddim5_reproduces_the_released_trajectory(golden):
    trajectory = golden["super_res"]
    compact = golden_data.compact_golden("sr_unet_compact_golden.pt")
    model = load_reference_checkpoint(compact["state_dict"], SuperResUNetConfig.from_reference(compact["config"]))
    assert model.config.learn_sigma == trajectory["learn_sigma"]
    diffusion = GaussianDiffusion(DiffusionConfig(learn_sigma=True))  # the released SR process
    sampler = sampler_of(trajectory)
    noise, low_res = trajectory["noise"], trajectory["low_res"]
    # `upsample_frames` draws each chunk's noise from the generator: seed 78 gives the stored noise.
    assert torch.equal(torch.randn(noise.shape, generator=torch.Generator().manual_seed(78)), noise)
    timesteps: list[int] = []

    def model_recording_timesteps(x: torch.Tensor, t: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
        timesteps.append(int(t[0]))
        return model(x, t, low_res=low_res)

    samples = upsample_frames(
        model_recording_timesteps,
        diffusion,
        low_res,
        noise.shape[-1],
        sampler=sampler,
        generator=torch.Generator().manual_seed(78),
    )

    assert timesteps == trajectory["timesteps"]
    assert relative_error(samples, trajectory["samples"]) < TRAJECTORY_TOLERANCE
