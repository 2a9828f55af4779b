"""The sampling pipeline: base model → optional zero-shot condition → optional super-resolution.

`MMDiffusionPipeline` holds the networks, each with the diffusion process of its bundle, and
the samplers (the diffusers pattern: networks and schedulers meet only here). Tensors in,
tensors out: no files, no Ray, no MLflow. One seed fixes every draw:

- the starting noise of both modalities and of the SR frames, and the ancestral noise of the
  samplers: one generator seeded with `seed`, used batch after batch (base, then SR);
- the forward noise of a zero-shot condition: a generator seeded with `seed + 1`;
- the RS-MMA random shifts: the base network's `shift_generator`, seeded with `seed + 2` for
  the call (and put back afterwards).

So the same seed, batch size and settings give the same samples, which is what `mmdiff sample`
writes (it runs this pipeline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mmdiffusion.bundle import KIND_NAMES, BundledModel
from mmdiffusion.sampling.conditioning import ZeroShotCondition
from mmdiffusion.sampling.joint import clip_shapes, sample_joint
from mmdiffusion.sampling.schedulers import SamplerConfig
from mmdiffusion.sampling.super_res import SR_SAMPLER, upsample_video

CONDITION_SEED_OFFSET = 1
SHIFT_SEED_OFFSET = 2


@dataclass(frozen=True)
class SampleBatch:
    """Samples `start .. start + len(video) - 1` of a call, in [-1, 1]: video `[B, F, C, H, W]`,
    audio `[B, C, L]`, and the upsampled video `[B, F, C, S, S]` when there is an SR model.
    With a condition, its modality is the clean condition itself."""

    start: int
    video: torch.Tensor
    audio: torch.Tensor
    video_sr: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.video)


class MMDiffusionPipeline:
    """A coupled U-Net, optionally an SR U-Net, and the samplers that draw from them."""

    def __init__(
        self,
        base: BundledModel,
        super_res: BundledModel | None = None,
        *,
        sampler: SamplerConfig | None = None,
        sr_sampler: SamplerConfig = SR_SAMPLER,
    ) -> None:
        for model, kind in ((base, "coupled_unet"), (super_res, "sr_unet")):
            if model is not None and model.bundle.kind != kind:
                raise ValueError(f"{model.source} is {KIND_NAMES[model.bundle.kind]}, expected {KIND_NAMES[kind]}")
        if super_res is not None and super_res.bundle.network.low_res_size != base.bundle.network.image_size:
            raise ValueError(
                f"SR model {super_res.source!r} upsamples {super_res.bundle.network.low_res_size}-pixel frames; "
                f"the base model makes {base.bundle.network.image_size}-pixel frames"
            )
        self.base = base
        self.super_res = super_res
        self.sampler = sampler or SamplerConfig()
        self.sr_sampler = sr_sampler

    @property
    def device(self) -> torch.device:
        return self.base.device

    def to(self, device: str | torch.device) -> MMDiffusionPipeline:
        self.base.to(device)
        if self.super_res is not None:
            self.super_res.to(device)
        return self

    def __call__(self, num: int, **options) -> SampleBatch:
        """All `num` samples at once (see `batches` for the options)."""
        batches = list(self.batches(num, **options))
        video_sr = None if self.super_res is None else torch.cat([b.video_sr for b in batches])  # type: ignore[misc]
        return SampleBatch(0, torch.cat([b.video for b in batches]), torch.cat([b.audio for b in batches]), video_sr)

    @torch.no_grad()
    def batches(
        self,
        num: int,
        *,
        seed: int = 0,
        batch_size: int = 4,
        condition: ZeroShotCondition | None = None,
        sr_batch_size: int = 16,
        progress: bool = False,
    ) -> Iterator[SampleBatch]:
        """`num` samples, `batch_size` per network batch, yielded batch by batch (so that many
        samples never sit in memory together).

        `condition.value` holds the clean condition of every sample (`[num, ...]`) or one for
        all (`[1, ...]`); its forward noise is drawn from the pipeline's condition generator.
        """
        if num < 1 or batch_size < 1:
            raise ValueError(f"num and batch_size must be >= 1, got {num} and {batch_size}")
        value = None if condition is None else self._condition_values(condition, num)
        device = self.device
        generator = torch.Generator().manual_seed(seed)
        condition_generator = torch.Generator().manual_seed(seed + CONDITION_SEED_OFFSET)
        network = self.base.network
        previous_shifts = network.shift_generator
        network.shift_generator = torch.Generator().manual_seed(seed + SHIFT_SEED_OFFSET)
        try:
            for start in range(0, num, batch_size):
                count = min(batch_size, num - start)
                batch_condition = None
                if condition is not None and value is not None:
                    batch_condition = dataclasses.replace(
                        condition, value=value[start : start + count].to(device), generator=condition_generator
                    )
                video, audio = sample_joint(
                    network,
                    self.base.diffusion,
                    self.sampler,
                    clip_shapes(self.base.bundle.network, count),
                    condition=batch_condition,
                    generator=generator,
                    device=device,
                    progress=progress,
                )
                video_sr = None
                if self.super_res is not None:
                    video_sr = upsample_video(
                        self.super_res.network,
                        self.super_res.diffusion,
                        video,
                        self.super_res.bundle.network.image_size,
                        sampler=self.sr_sampler,
                        batch_size=sr_batch_size,
                        generator=generator,
                        device=device,
                        progress=progress,
                    )
                yield SampleBatch(start, video, audio, video_sr)
        finally:
            network.shift_generator = previous_shifts

    def _condition_values(self, condition: ZeroShotCondition, num: int) -> torch.Tensor:
        expected = clip_shapes(self.base.bundle.network, 1)[condition.modality][1:]
        value = condition.value
        if tuple(value.shape[1:]) != expected or len(value) not in (1, num):
            raise ValueError(
                f"{condition.modality} condition has shape {list(value.shape)}; the model takes "
                f"[{num} or 1, {', '.join(map(str, expected))}]"
            )
        return value.expand(num, *expected) if len(value) == 1 else value
