"""Small building blocks of the coupled U-Net.

Inside the network video is laid out `[B, C, F, H, W]` (channels first, so that one group
norm spans all frames and pixels) and audio `[B, C, L]`. Module and parameter names follow the
released checkpoints (`video_conv_spatial`, `audio_conv`, `GroupNorm`, ...) so that their state
dicts load without a key mapping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmdiffusion.config import NORM_GROUPS


class GroupNorm32(nn.Module):
    """GroupNorm with 32 groups computed in float32 whatever the input dtype."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.GroupNorm = nn.GroupNorm(NORM_GROUPS, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.GroupNorm
        out = F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps)
        return out.to(x.dtype)


class VideoConv(nn.Module):
    """Factorised "2d+1d" video convolution: a k×k conv on every frame, then a size-k conv over
    the frames at every pixel, with no nonlinearity between.

    Both run as 3-D convolutions on `[B, C, F, H, W]` with the released 2-D and 1-D weights
    reshaped on the fly, which avoids two layout changes per call.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.video_conv_spatial = nn.Conv2d(in_channels, out_channels, kernel_size, padding=self.padding)
        self.video_conv_temporal = nn.Conv1d(out_channels, out_channels, kernel_size, padding=self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial, temporal = self.video_conv_spatial, self.video_conv_temporal
        x = F.conv3d(x, spatial.weight.unsqueeze(2), spatial.bias, padding=(0, self.padding, self.padding))
        return F.conv3d(x, temporal.weight[..., None, None], temporal.bias, padding=(self.padding, 0, 0))


class Video3dConv(nn.Module):
    """A plain Conv3d (pointwise projections and the output head)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.video_conv = nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.video_conv(x)


class AudioConv(nn.Module):
    """A "same"-padded, optionally dilated Conv1d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.audio_conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.audio_conv(x)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero every parameter: residual branches then start as the identity."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding `[cos, sin]` of (possibly fractional) timesteps, `[B] -> [B, dim]`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def video_downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool3d(x, kernel_size=(1, 2, 2), stride=(1, 2, 2))


def video_upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")


def audio_downsample(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool1d(x, kernel_size=4, stride=4)


def audio_upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=4, mode="nearest")
