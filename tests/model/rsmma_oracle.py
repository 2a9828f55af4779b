"""A deliberately plain RS-MMA: a Python loop over frames and segments with explicit softmax.

It is the test oracle for the vectorised `mmdiffusion.attention.RSMMA` and the baseline of
`benchmarks/rsmma_speed.py`. It reuses the block's weights and follows the reference text
literally: the queries of video frame i see the audio segments (i + R + k) mod F, and the
queries of audio segment j see the video frames (j + R + k) mod F, k = 0..S-1.

With `project_per_frame` the loop also projects each frame's queries and each window's keys
and values inside the loop, as a straightforward per-frame implementation does (it then
projects every token S times); without it the projections are shared, computed once.
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


def _split(qkv: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """[B, 3C, T] -> q, k, v as [B, h, d, T]."""
    batch, channels, tokens = qkv.shape
    return [part.reshape(batch, heads, channels // 3 // heads, tokens) for part in qkv.chunk(3, dim=1)]


def loop_rsmma(
    block: RSMMA, video: torch.Tensor, audio: torch.Tensor, shift: int, project_per_frame: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, frames, height, width = video.shape
    segment = audio.shape[-1] // frames
    heads = block.heads
    video_tokens = block.v_norm(video).reshape(batch, channels, frames, height * width)
    audio_tokens = block.a_norm(audio).reshape(batch, channels, frames, segment)

    def tokens_of(tokens: torch.Tensor, indices: list[int]) -> torch.Tensor:
        return torch.cat([tokens[:, :, i] for i in indices], dim=-1)

    if not project_per_frame:  # project once, then slice per frame
        video_qkv = _split(block.v_qkv(video_tokens.flatten(2)), heads)
        audio_qkv = _split(block.a_qkv(audio_tokens.flatten(2)), heads)
        video_tokens = torch.stack([t.unflatten(-1, (frames, -1)) for t in video_qkv])  # [3, B, h, d, F, n]
        audio_tokens = torch.stack([t.unflatten(-1, (frames, -1)) for t in audio_qkv])

    def project(tokens: torch.Tensor, conv: torch.nn.Conv1d, indices: list[int]) -> list[torch.Tensor]:
        if project_per_frame:
            return _split(conv(tokens_of(tokens, indices)), heads)
        return [torch.cat([part[..., i, :] for i in indices], dim=-1) for part in tokens]

    video_out, audio_out = [], []
    for i in range(frames):
        seen = [(i + shift + k) % frames for k in range(block.window)]
        queries = project(video_tokens, block.v_qkv, [i])[0]
        _, keys, values = project(audio_tokens, block.a_qkv, seen)
        video_out.append(_attend(queries, keys, values))
    for j in range(frames):
        seen = [(j + shift + k) % frames for k in range(block.window)]
        queries = project(audio_tokens, block.a_qkv, [j])[0]
        _, keys, values = project(video_tokens, block.v_qkv, seen)
        audio_out.append(_attend(queries, keys, values))
    video_h = torch.stack(video_out, dim=3).reshape(batch, channels, frames, height, width)
    audio_h = torch.stack(audio_out, dim=3).reshape(batch, channels, frames * segment)
    return video + block.video_proj_out(video_h), audio + block.audio_proj_out(audio_h)
