"""What differs between training the coupled U-Net and the SR U-Net: the model, the members a
batch needs, and the per-sample losses. Everything else (loop, loader, checkpoints) is shared."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmdiffusion.bundle import build_model
from mmdiffusion.config import CoupledUNetConfig
from mmdiffusion.constants import FRAMES
from mmdiffusion.diffusion import GaussianDiffusion
from mmdiffusion.sr_unet import SuperResUNetConfig
from pipeline.shard_format import SampleSpec
from training.config import TrainConfig
from training.loader import frames_to_float


class Task(Protocol):
    diffusion: GaussianDiffusion
    loss_names: tuple[str, ...]
    """The per-sample loss terms `losses` returns besides `loss` (logged as metrics)."""

    def build_model(self) -> nn.Module: ...

    def sample_spec(self) -> SampleSpec: ...

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-sample `[N]` losses (`loss` and `loss_names`) and the timesteps `[N]` drawn."""
        ...


class CoupledTask:
    """The joint audio-video ε-prediction loss of the coupled U-Net."""

    loss_names = ("video_loss", "audio_loss")

    def __init__(self, model_config: CoupledUNetConfig, diffusion: GaussianDiffusion) -> None:
        self.model_config = model_config
        self.diffusion = diffusion

    def build_model(self) -> nn.Module:
        return build_model(self.model_config)

    def sample_spec(self) -> SampleSpec:
        c = self.model_config
        return SampleSpec(frames=c.frames, image_size=c.image_size, audio_length=c.audio_length)

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        video, audio = batch["video"], batch["audio"]
        t = self.diffusion.sample_timesteps(video.shape[0], video.device, None)
        return self.diffusion.joint_loss(model, video, audio, t), t


class SuperResTask:
    """The SR U-Net on single frames: high-resolution frames from the shards, the low-resolution
    condition made by area downsampling, learned variance trained with the hybrid loss."""

    loss_names = ("mse", "vb")

    def __init__(
        self, model_config: SuperResUNetConfig, diffusion: GaussianDiffusion, frames_per_clip: int, frames: int = FRAMES
    ) -> None:
        if not diffusion.config.learn_sigma:
            raise ValueError("SR training needs a diffusion with learn_sigma=True (the hybrid loss)")
        if not 1 <= frames_per_clip <= frames:
            raise ValueError(f"sr_frames_per_clip must lie in 1..{frames}, got {frames_per_clip}")
        self.model_config = model_config
        self.diffusion = diffusion
        self.frames_per_clip = frames_per_clip
        self.frames = frames

    def build_model(self) -> nn.Module:
        return build_model(self.model_config)

    def sample_spec(self) -> SampleSpec:
        c = self.model_config
        return SampleSpec(
            frames=self.frames,
            image_size=c.low_res_size,
            audio_length=0,
            sr_size=c.image_size,
            frames_kept=self.frames_per_clip,
        )

    def losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """`video_sr` holds the loader's picked frames as uint8 [B, K, 3, S, S], scaled here, on the device."""
        high = frames_to_float(rearrange(batch["video_sr"], "b k c h w -> (b k) c h w"))
        low = F.interpolate(high, size=self.model_config.low_res_size, mode="area")
        t = self.diffusion.sample_timesteps(high.shape[0], high.device, None)
        noise = torch.randn_like(high)
        x_t = self.diffusion.q_sample(high, t, noise)
        output = model(x_t, t, low_res=low)
        return self.diffusion.loss_terms(output, high, x_t, t, noise, channel_dim=1), t


def make_task(config: TrainConfig) -> Task:
    diffusion = GaussianDiffusion(config.diffusion_config())
    model_config = config.model_config()
    if config.task == "coupled":
        return CoupledTask(model_config, diffusion)
    return SuperResTask(model_config, diffusion, config.sr_frames_per_clip)
