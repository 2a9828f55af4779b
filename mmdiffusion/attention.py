"""Self-attention and random-shift multi-modal attention (RS-MMA).

RS-MMA lets each video frame attend to a window of S audio segments and each audio segment to
a window of S video frames, the windows starting R steps ahead and wrapping around the clip.
It is computed with one batched `scaled_dot_product_attention` per direction: the windows are
overlapping strided views over one gathered copy of F + S − 1 frames (not S copies of the keys
and values), so memory grows with (H·W) × (S·L/F) per frame rather than with (F·H·W) × L, and
there is no Python loop over frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mmdiffusion.layers import (
    AudioConv,
    GroupNorm32,
    Video3dConv,
    autocast_context,
    autocast_state,
    lean_input_conv,
    norm_act_conv,
    zero_init,
)


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


QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Projection = Callable[..., Sequence[QKV]]
"""The attention inputs `(q, k, v)` of one or more attention calls, each `[N, heads, T, d]`
and head-innermost, as a function of the tensors given to `RecomputedProjectionAttention`."""

LEAN_ATTENTION_DEVICES = ("cpu", "meta")
"""Where training attention keeps only its inputs and outputs: the CPU, whose fused (flash)
kernel's backward is called directly, and `meta`, so that counting traces see what the CPU
keeps. Elsewhere the attention is left to autograd (which keeps q, k and v)."""


class RecomputedProjectionAttention(torch.autograd.Function):
    """Attention calls whose q, k and v are recomputed in the backward pass from the
    projection's inputs instead of kept.

    Left to autograd, every attention keeps its q, k and v (three activations, and with RS-MMA
    also the gathered key and value windows) though they are a cheap function (a norm and a 1×1
    convolution) of an input that is kept anyway. Here each call keeps its output and the
    softmax's log-sum-exp, and the backward pass redoes the projection, hands the flash
    kernel's backward the same q, k and v and the kept statistics, and propagates their
    gradients through the redone projection. The forward ops are the plain ones and the
    backward runs the same kernel on the same inputs, so outputs and gradients are those of
    `scaled_dot_product_attention`'s flash path bit for bit.

    `apply(project, count, *tensors)`: `project(*tensors[:count])` gives the calls' q, k, v;
    the rest of `tensors` are the parameters `project` uses (through its modules), given so that
    their gradients flow out. Returns one output per call.
    """

    @staticmethod
    def forward(ctx, project: Projection, count: int, *tensors: torch.Tensor):  # type: ignore[override]
        inputs = tensors[:count]
        device = inputs[0].device.type
        ctx.project, ctx.count, ctx.autocast = project, count, autocast_state(device)
        results = [torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v) for q, k, v in project(*inputs)]
        outs = [out for out, _ in results]
        ctx.save_for_backward(*tensors, *outs, *(lse for _, lse in results))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        tensors, calls = saved[: len(ctx.needs_input_grad) - 2], len(grads)
        outs, lses = saved[len(tensors) : len(tensors) + calls], saved[len(tensors) + calls :]
        needs = ctx.needs_input_grad[2:]
        # The projection's inputs are redone from detached copies; the parameters are the
        # modules' own, so that the redone projection uses them (`autograd.grad` does not
        # accumulate into their `.grad`: their gradients leave through this function).
        leaves = [
            t.detach().requires_grad_(need) for t, need in zip(tensors[: ctx.count], needs[: ctx.count], strict=True)
        ]
        device = tensors[0].device.type
        with torch.enable_grad(), autocast_context(device, ctx.autocast):
            triples = ctx.project(*leaves)
        qkv_grads = []
        for (q, k, v), out, lse, grad in zip(triples, outs, lses, grads, strict=True):
            grad = torch.zeros_like(out) if grad is None else grad.to(out.dtype)
            qkv_grads.extend(
                torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(grad, q, k, v, out, lse, 0.0, False)
            )
        wanted = [t for t, need in zip([*leaves, *tensors[ctx.count :]], needs, strict=True) if need]
        found = iter(
            torch.autograd.grad([t for triple in triples for t in triple], wanted, qkv_grads, allow_unused=True)
        )
        return None, None, *(next(found) if need else None for need in needs)


def lean_attention_applies(x: torch.Tensor) -> bool:
    """Whether this forward pass records a gradient on a device where attention is recomputed
    (see `LEAN_ATTENTION_DEVICES`)."""
    return torch.is_grad_enabled() and x.device.type in LEAN_ATTENTION_DEVICES


class SelfAttention(nn.Module):
    """Multi-head self-attention over the last axis of `[N, C, T]`, with a residual."""

    max_batch: int = MAX_ATTENTION_BATCH
    """batch × heads per attention call (see `MAX_ATTENTION_BATCH`) where the attention is not
    recomputed (`LEAN_ATTENTION_DEVICES`: the CPU kernel has no such limit); tests lower it."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def _project(self, x: torch.Tensor) -> list[QKV]:
        return [split_heads(norm_act_conv(self.norm, x, self.qkv, act=False), self.heads)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if lean_attention_applies(x):
            parameters = (*self.norm.parameters(), *self.qkv.parameters())
            (out,) = RecomputedProjectionAttention.apply(self._project, 1, x, *parameters)
        else:
            ((q, k, v),) = self._project(x)
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

    def _project(self, video: torch.Tensor, audio: torch.Tensor, shift: int) -> list[QKV]:
        """The video queries with the audio windows' keys and values, and the audio queries with
        the video windows'."""
        frames = self.frames
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

        return [(vq, windowed(ak), windowed(av)), (aq, windowed(vk), windowed(vv))]

    def forward(self, video: torch.Tensor, audio: torch.Tensor, shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, frames, height, width = video.shape
        if frames != self.frames or audio.shape[-1] % frames:
            raise ValueError(
                f"RS-MMA {self.block_name or ''} expects {self.frames} frames and an audio length divisible by them, "
                f"got video {tuple(video.shape)} and audio {tuple(audio.shape)}"
            )
        project = partial(self._project, shift=shift)
        if lean_attention_applies(video):
            parameters = [p for m in (self.v_norm, self.a_norm, self.v_qkv, self.a_qkv) for p in m.parameters()]
            video_out, audio_out = RecomputedProjectionAttention.apply(project, 2, video, audio, *parameters)
        else:
            video_out, audio_out = (F.scaled_dot_product_attention(*qkv) for qkv in project(video, audio))
        # The projections keep the attention outputs, which the attention's backward keeps
        # anyway, rather than their merged-head copies.
        video_layout = partial(rearrange, pattern="(b h) f (y x) d -> b (h d) f y x", b=batch, y=height, x=width)
        audio_layout = partial(rearrange, pattern="(b h) f n d -> b (h d) (f n)", b=batch)
        return (
            video + lean_input_conv(self.video_proj_out, video_out, layout=video_layout),
            audio + lean_input_conv(self.audio_proj_out, audio_out, layout=audio_layout),
        )
