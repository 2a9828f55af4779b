"""The joint sampling loop: both modalities share each timestep and one network call.

`sample_joint` composes the network (`video_eps, audio_eps = model(video, audio, t)`), one
`ModalitySampler` per generated modality, and optionally a `ZeroShotCondition`. The network
knows nothing of sampling and the samplers nothing of the network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from mmdiffusion.diffusion import GaussianDiffusion
from mmdiffusion.sampling.conditioning import CHANNEL_DIM, MODALITIES, JointOutputs, ZeroShotCondition
from mmdiffusion.sampling.schedulers import ModalitySampler, SamplerConfig

StepCallback = Callable[[int, int, dict[str, torch.Tensor]], None]
"""`on_step(index, timestep, network_inputs)`, called before each network evaluation."""


@dataclass(frozen=True)
class NoisedStart:
    """Clean clips to start the reverse process from, part-way: noised to the sampler's first
    timestep at or below `t` (as SDEdit does) instead of pure noise at its last timestep.

    A network that predicts x0 well only at low noise (one trained briefly) is tested on its
    sampler this way (`benchmarks/learning_check.py`)."""

    video: torch.Tensor
    audio: torch.Tensor
    t: int


def clip_shapes(config: Any, batch: int) -> dict[str, tuple[int, ...]]:
    """The video and audio shapes of a batch for a `CoupledUNetConfig`."""
    return {
        "video": (batch, config.frames, config.video_channels, config.image_size, config.image_size),
        "audio": (batch, config.audio_channels, config.audio_length),
    }


def _predictor(model: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Callable[..., JointOutputs]:
    def predict(inputs: dict[str, torch.Tensor], t: torch.Tensor) -> JointOutputs:
        video_out, audio_out = model(inputs["video"], inputs["audio"], t)
        return {"video": video_out, "audio": audio_out}

    return predict


@torch.no_grad()
def sample_joint(
    model: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    diffusion: GaussianDiffusion,
    sampler: SamplerConfig,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    condition: ZeroShotCondition | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
    on_step: StepCallback | None = None,
    start: NoisedStart | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a batch of (video, audio) in [-1, 1] (with clipping on) from `model`.

    `shapes` gives each modality's batch shape (see `clip_shapes`). Noise comes from
    `generator` (a CPU generator, so a seed gives the same samples on any device). With a
    condition, its modality is returned as the clean condition. With a `start`, the reverse
    process runs from the start's clips noised with the same draws as the pure noise.
    """
    generated = [m for m in MODALITIES if condition is None or m != condition.modality]
    samplers = {m: ModalitySampler(sampler, diffusion, CHANNEL_DIM[m]) for m in generated}
    timesteps = samplers[generated[0]].timesteps
    inputs = {m: torch.randn(shapes[m], generator=generator).to(device) for m in MODALITIES}
    batch = shapes["video"][0]
    if start is not None:
        timesteps = [t for t in timesteps if t <= start.t]
        if not timesteps:
            raise ValueError(f"a noised start needs a timestep >= 0 among the sampler's, got t = {start.t}")
        first = torch.full((batch,), timesteps[0], dtype=torch.long, device=device)
        for m in MODALITIES:
            clean = getattr(start, m)
            if tuple(clean.shape) != tuple(shapes[m]):
                raise ValueError(f"the {m} start has shape {list(clean.shape)}, the batch needs {list(shapes[m])}")
            inputs[m] = diffusion.q_sample(clean.to(device), first, inputs[m])
    if condition is not None and tuple(condition.value.shape) != tuple(shapes[condition.modality]):
        raise ValueError(
            f"{condition.modality} condition has shape {list(condition.value.shape)}, "
            f"the sampled batch needs {list(shapes[condition.modality])}"
        )
    predict = _predictor(model)
    for index, t in enumerate(tqdm(timesteps, desc=f"{sampler.name} sampling", disable=not progress)):
        t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
        if condition is not None:
            inputs[condition.modality] = condition.noised(diffusion, t_batch)
        if on_step is not None:
            on_step(index, t, dict(inputs))
        if condition is not None and condition.method == "gradient":
            outputs = condition.guide(predict, diffusion, inputs, t_batch)
        else:
            outputs = predict(inputs, t_batch)
        for m, modality_sampler in samplers.items():
            inputs[m] = modality_sampler.step(outputs[m], t, inputs[m], generator)
    if condition is not None:
        inputs[condition.modality] = condition.value
    return inputs["video"], inputs["audio"]
