"""A deliberately plain RS-MMA: a Python loop over frames and segments with explicit softmax.

It is the test oracle for the vectorised `mmdiffusion.attention.RSMMA` and the baseline of
`benchmarks/rsmma_speed.py`. It reuses the block's weights and follows the reference text
literally: the queries of video frame i see the audio segments (i + R + k) mod F, and the
queries of audio segment j see the video frames (j + R + k) mod F, k = 0..S-1.
"""

from __future__ import annotations

import torch

from mmdiffusion.attention import RSMMA


def _attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """queries [B, h, d, q], keys/values [B, h, d, k] -> [B, h, d, q]; q·k scaled by d^-1/4 each."""
    scale = queries.shape[2] ** -0.25
    weights = torch.einsum("bhdq,bhdk->bhqk", queries * scale, keys * scale)
    weights = torch.softmax(weights.float(), dim=-1).to(values.dtype)
    return torch.einsum("bhqk,bhdk->bhdq", weights, values)


def loop_rsmma(block: RSMMA, video: torch.Tensor, audio: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, frames, height, width = video.shape
    segment = audio.shape[-1] // frames
    heads, head_dim = block.heads, channels // block.heads
    video_qkv = block.v_qkv(block.v_norm(video).reshape(batch, channels, frames * height * width))
    audio_qkv = block.a_qkv(block.a_norm(audio))
    vq, vk, vv = (x.reshape(batch, heads, head_dim, frames, height * width) for x in video_qkv.chunk(3, dim=1))
    aq, ak, av = (x.reshape(batch, heads, head_dim, frames, segment) for x in audio_qkv.chunk(3, dim=1))
    video_out, audio_out = [], []
    for i in range(frames):
        seen = [(i + shift + k) % frames for k in range(block.window)]
        keys = torch.cat([ak[..., s, :] for s in seen], dim=-1)
        values = torch.cat([av[..., s, :] for s in seen], dim=-1)
        video_out.append(_attend(vq[..., i, :], keys, values))
    for j in range(frames):
        seen = [(j + shift + k) % frames for k in range(block.window)]
        keys = torch.cat([vk[..., s, :] for s in seen], dim=-1)
        values = torch.cat([vv[..., s, :] for s in seen], dim=-1)
        audio_out.append(_attend(aq[..., j, :], keys, values))
    video_h = torch.stack(video_out, dim=3).reshape(batch, channels, frames, height, width)
    audio_h = torch.stack(audio_out, dim=3).reshape(batch, channels, frames * segment)
    return video + block.video_proj_out(video_h), audio + block.audio_proj_out(audio_h)
