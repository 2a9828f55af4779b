"""Diffusion for the 64→256 super-resolution U-Net: its training loss and its sampler.

The SR model is a per-frame image model conditioned on the low-resolution frame, trained with
a learned variance (the hybrid loss of improved DDPM); its diffusion process is the one its
bundle records (`mmdiffusion.bundle`; the released one: 1000 linear steps). A video is
upsampled by running its frames as a batch through the reverse process, 25 DDIM steps by
default as released.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from tqdm.auto import tqdm

from mmdiffusion.diffusion import GaussianDiffusion
from mmdiffusion.sampling.schedulers import ModalitySampler, SamplerConfig

SR_SAMPLER = SamplerConfig("ddim", 25)
"""The released upsampler's sampler."""
IMAGE_CHANNEL_DIM = 1

SuperResModel = Callable[..., torch.Tensor]


def super_res_loss(
    model: SuperResModel,
    diffusion: GaussianDiffusion,
    high_res: torch.Tensor,
    low_res: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-frame `[B]` losses (`loss`, `mse`, and `vb` with a learned variance) of an SR model on
    frames `high_res [B, 3, H, W]` given `low_res [B, 3, h, w]`, both in [-1, 1]."""
    noise = torch.randn_like(high_res) if noise is None else noise
    x_t = diffusion.q_sample(high_res, t, noise)
    output = model(x_t, t, low_res=low_res)
    return diffusion.loss_terms(output, high_res, x_t, t, noise, channel_dim=IMAGE_CHANNEL_DIM)


@torch.no_grad()
def upsample_frames(
    model: SuperResModel,
    diffusion: GaussianDiffusion,
    low_res: torch.Tensor,
    size: int,
    *,
    sampler: SamplerConfig = SR_SAMPLER,
    batch_size: int = 16,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Frames `[N, C, h, w]` in [-1, 1] → `[N, C, size, size]`, `batch_size` frames per network call."""
    if batch_size < 1:
        raise ValueError(f"SR batch size must be >= 1, got {batch_size}")
    chunks = list(low_res.split(batch_size))
    bar = tqdm(total=len(chunks) * sampler.num_steps, desc="super-resolution", disable=not progress)
    upsampled = []
    for chunk in chunks:
        chunk = chunk.to(device)
        frame_sampler = ModalitySampler(sampler, diffusion, IMAGE_CHANNEL_DIM)
        x = torch.randn((len(chunk), chunk.shape[1], size, size), generator=generator).to(device)
        for t in frame_sampler.timesteps:
            output = model(x, torch.full((len(chunk),), t, dtype=torch.long, device=device), low_res=chunk)
            x = frame_sampler.step(output, t, x, generator)
            bar.update()
        upsampled.append(x.cpu())
    bar.close()
    return torch.cat(upsampled)


def upsample_video(
    model: SuperResModel, diffusion: GaussianDiffusion, video: torch.Tensor, size: int, **options
) -> torch.Tensor:
    """Videos `[B, F, C, h, w]` → `[B, F, C, size, size]`: all frames of all videos batched."""
    frames = upsample_frames(model, diffusion, rearrange(video, "b f c h w -> (b f) c h w"), size, **options)
    return rearrange(frames, "(b f) c h w -> b f c h w", b=video.shape[0])
