"""Self-attention and random-shift multi-modal attention (RS-MMA).

RS-MMA lets each video frame attend to a window of S audio segments and each audio segment to
a window of S video frames, the windows starting R steps ahead and wrapping around the clip.
It is computed with one batched `scaled_dot_product_attention` per direction: the windows are
overlapping strided views over one gathered copy of F + S − 1 frames (not S copies of the keys
and values), so memory grows with (H·W) × (S·L/F) per frame rather than with (F·H·W) × L, and
there is no Python loop over frames.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmdiffusion.layers import AudioConv, GroupNorm32, Video3dConv, lean_input_conv, norm_act_conv, zero_init


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`[N, 3C, T]` laid out `[Q | K | V]`, each head-major, to three `[N, heads, T, d]`.

    The copy makes the head dimension the innermost one: the fused (flash) attention kernels
    need that, and without them the attention matrices are materialised for the backward pass.
    """
    q, k, v = rearrange(qkv, "n (three h d) t -> three n h t d", three=3, h=heads).contiguous().unbind(0)
    return q, k, v


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """`[N, heads, T, d]` attention outputs to `[N, heads·d, T]`."""
    return rearrange(out, "n h t d -> n (h d) t")


MAX_ATTENTION_BATCH = 65_535
"""The most batch × heads one `scaled_dot_product_attention` call is given. CUDA kernels put
the batch (or batch × heads) on a grid axis limited to 65,535 blocks, and temporal attention
has a batch of B·H·W (B·1024 at the paper config's first attention level)."""


def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, max_batch: int) -> torch.Tensor:
    """`scaled_dot_product_attention` of `[N, heads, T, d]` in slices of the batch axis, each
    at most `max_batch` × heads; the batch elements are independent, so the result is the same."""
    rows = max(1, max_batch // q.shape[1])
    if q.shape[0] <= rows:
        return F.scaled_dot_product_attention(q, k, v)
    chunks = [
        F.scaled_dot_product_attention(*parts)
        for parts in zip(q.split(rows), k.split(rows), v.split(rows), strict=True)
    ]
    return torch.cat(chunks)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the last axis of `[N, C, T]`, with a residual."""

    max_batch: int = MAX_ATTENTION_BATCH
    """batch × heads per attention call (see `MAX_ATTENTION_BATCH`); tests lower it."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = split_heads(norm_act_conv(self.norm, x, self.qkv, act=False), self.heads)
        out = chunked_attention(q, k, v, self.max_batch)
        return x + lean_input_conv(self.proj_out, out, layout=merge_heads)


def window_index(frames: int, window: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """`[frames, window]` indices: row i holds the segments `(i + shift + k) mod frames`."""
    offsets = torch.arange(frames, device=device)[:, None] + shift + torch.arange(window, device=device)[None, :]
    return offsets % frames


class RSMMA(nn.Module):
    """Random-shift multi-modal attention between video `[B, C, F, H, W]` and audio `[B, C, L]`.

    `shift` (R) is chosen by the caller (the U-Net draws it once per block per forward pass);
    `random_shift` only records whether this block takes part in that draw.
    """

    def __init__(self, channels: int, head_channels: int, frames: int, window: int, random_shift: bool) -> None:
        super().__init__()
        if not 1 <= window <= frames:
            raise ValueError(f"RS-MMA window {window} must lie in 1..{frames}")
        self.heads = channels // head_channels
        self.frames = frames
        self.window = window
        self.random_shift = random_shift
        self.block_name = ""
        self.v_norm = GroupNorm32(channels)
        self.a_norm = GroupNorm32(channels)
        self.v_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.a_qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.video_proj_out = zero_init(Video3dConv(channels, channels))
        self.audio_proj_out = zero_init(AudioConv(channels, channels))

    @property
    def max_shift(self) -> int:
        return self.frames - self.window

    def forward(self, video: torch.Tensor, audio: torch.Tensor, shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, frames, height, width = video.shape
        if frames != self.frames or audio.shape[-1] % frames:
            raise ValueError(
                f"RS-MMA {self.block_name or ''} expects {self.frames} frames and an audio length divisible by them, "
                f"got video {tuple(video.shape)} and audio {tuple(audio.shape)}"
            )
        # A video norm group spans all frames and pixels: normalising the tokens is the same.
        video_qkv = norm_act_conv(self.v_norm, rearrange(video, "b c f h w -> b c (f h w)"), self.v_qkv, act=False)
        audio_qkv = norm_act_conv(self.a_norm, audio, self.a_qkv, act=False)
        # Heads are merged into the batch axis and frames play the role of heads, so that
        # every attention call is a 4-D one, the layout the fused CPU and GPU kernels take.
        per_frame = "b h (f n) d -> (b h) f n d"
        vq, vk, vv = (rearrange(t, per_frame, f=frames) for t in split_heads(video_qkv, self.heads))
        aq, ak, av = (rearrange(t, per_frame, f=frames) for t in split_heads(audio_qkv, self.heads))
        window = self.window
        # Frame i's window starts at row i of these F + S - 1 frames (the windows' first
        # segments, then the last window's tail).
        index = window_index(frames, window, shift, device=video.device)
        extended = torch.cat([index[:, 0], index[-1, 1:]])

        def windowed(tokens: torch.Tensor) -> torch.Tensor:
            # [B·h, F, n, d] -> [B·h, F, S·n, d]: the S segments each frame (or segment) sees, as
            # overlapping windows over one copy of F + S - 1 frames (not S copies of each).
            rows = tokens[:, extended]
            _, _, n, d = tokens.shape
            return rows.as_strided((rows.shape[0], frames, window * n, d), (rows.stride(0), n * d, d, 1))

        video_out = F.scaled_dot_product_attention(vq, windowed(ak), windowed(av))
        audio_out = F.scaled_dot_product_attention(aq, windowed(vk), windowed(vv))
        # The projections keep the attention outputs, which the attention's backward keeps
        # anyway, rather than their merged-head copies.
        video_layout = partial(rearrange, pattern="(b h) f (y x) d -> b (h d) f y x", b=batch, y=height, x=width)
        audio_layout = partial(rearrange, pattern="(b h) f n d -> b (h d) (f n)", b=batch)
        return (
            video + lean_input_conv(self.video_proj_out, video_out, layout=video_layout),
            audio + lean_input_conv(self.audio_proj_out, audio_out, layout=audio_layout),
        )
