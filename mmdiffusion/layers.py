"""Small building blocks of the coupled U-Net.

Inside the network video is laid out `[B, C, F, H, W]` (channels first, so that one group
norm spans all frames and pixels) and audio `[B, C, L]`. Module and parameter names follow the
released checkpoints (`video_conv_spatial`, `audio_conv`, `GroupNorm`, ...) so that their state
dicts load without a key mapping.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import NamedTuple

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


def _norm_act(
    x: torch.Tensor,
    norm: nn.GroupNorm,
    weight: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    act: bool = True,
    in_place: bool = False,
) -> torch.Tensor:
    """The norm, scale-shift and SiLU; `in_place` (where no graph is recorded) runs the last two
    on the norm's output buffer, the same kernels without two more activations in memory."""
    h = F.group_norm(x.float(), norm.num_groups, weight.float(), bias.float(), norm.eps).to(x.dtype)
    if scale is not None:
        h = h.mul_(1 + scale).add_(shift) if in_place else h * (1 + scale) + shift
    return F.silu(h, inplace=in_place) if act else h


Layout = Callable[[torch.Tensor], torch.Tensor]
"""An op without parameters on a chain's input (a rearrange, a resampling), redone in the
backward pass."""


def _assemble(x: torch.Tensor, skip: torch.Tensor | None, layout: Layout | None) -> torch.Tensor:
    """A chain's convolution input before its norm: `x`, concatenated with `skip` along the
    channels, then through `layout`."""
    h = x if skip is None else torch.cat([x, skip], dim=1)
    return h if layout is None else layout(h)


class Temporal(NamedTuple):
    """A `VideoConv`'s temporal half at the head of a chain: its weight, bias and padding."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    padding: int


def _temporal_conv(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int) -> torch.Tensor:
    """A size-k convolution over the frames of `[B, C, F, H, W]` at every pixel."""
    return F.conv3d(h, weight[..., None, None], bias, padding=(padding, 0, 0))


def _chain_input(
    x: torch.Tensor,
    skip: torch.Tensor | None,
    layout: Layout | None,
    temporal: Temporal | None,
    conv_dtype: torch.dtype,
    norm: nn.GroupNorm | None,
    gn_weight: torch.Tensor | None,
    gn_bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    act: bool,
    in_place: bool = False,
) -> torch.Tensor:
    """A chain's steps before its dropout: the assembled input, then, in a chain that starts
    with a temporal convolution, that (in `conv_dtype`, as autocast would run it), then, in a
    chain with a norm, the norm, the scale-shift and the activation (see `_norm_act` for
    `in_place`)."""
    h = _assemble(x, skip, layout)
    if temporal is not None:
        weight, bias, padding = temporal
        h = _temporal_conv(
            h.to(conv_dtype), weight.to(conv_dtype), None if bias is None else bias.to(conv_dtype), padding
        )
    return h if norm is None else _norm_act(h, norm, gn_weight, gn_bias, scale, shift, act, in_place)


AutocastState = tuple[bool, torch.dtype] | None
"""Whether autocast is on for a device and its dtype; None on devices without autocast."""


def autocast_state(device: str) -> AutocastState:
    """The autocast state of `device`, for a backward pass to recompute its forward under (the
    backward pass runs without autocast)."""
    if not torch.amp.is_autocast_available(device):
        return None
    return torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def autocast_context(device: str, state: AutocastState) -> contextlib.AbstractContextManager:
    """Autocast as it was when `state` was read; nothing on devices without autocast."""
    return contextlib.nullcontext() if state is None else torch.autocast(device, dtype=state[1], enabled=state[0])


def _conv_dtype(h: torch.Tensor) -> torch.dtype:
    """The dtype a convolution of `h` runs in: the autocast dtype where autocast is on, else
    `h`'s own. Devices without autocast (`meta`, for counting) use the tensors' own dtype."""
    state = autocast_state(h.device.type)
    return state[1] if state is not None and state[0] else h.dtype


def _generator_state(device: torch.device) -> torch.Tensor | None:
    """The state of the default generator that draws on `device` (None on `meta`, which draws
    no numbers)."""
    if device.type == "meta":
        return None
    if device.type == "cpu":
        return torch.get_rng_state()
    return torch.get_device_module(device.type).get_rng_state(device)


def _keep_mask(like: torch.Tensor, keep: float) -> torch.Tensor:
    """A dropout's mask: True where an element is kept, with probability `keep`."""
    return torch.empty_like(like, dtype=torch.bool).bernoulli_(keep)


def _redrawn_keep_mask(like: torch.Tensor, keep: float, state: torch.Tensor | None) -> torch.Tensor:
    """The `_keep_mask` the generator drew from `state`, drawn again; the generator's own
    position is left where it was (as `torch.utils.checkpoint` does for its recomputation)."""
    device = like.device
    if state is None:
        return _keep_mask(like, keep)
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(
        devices=[device] if accelerator else [], device_type=device.type if accelerator else None
    ):
        if accelerator:
            torch.get_device_module(device.type).set_rng_state(state, device)
        else:
            torch.set_rng_state(state)
        return _keep_mask(like, keep)


class _RecomputedChainConv(torch.autograd.Function):
    """[concatenation with a skip input | relayout or resampling] → [a `VideoConv`'s temporal half] →
    [GroupNorm → optional scale-shift → optional SiLU] → optional dropout → convolution,
    keeping only the chain's inputs for the backward pass, which recomputes the cheap steps
    (the dropout mask drawn again from the generator state it was drawn from) and hands their
    output to the convolution's backward.

    Left to autograd, a chain keeps the norm's output, the modulated tensor, the SiLU input, a
    float dropout mask and the convolution's input: up to four and a half activations where
    one suffices. The concatenation of a U-Net decoder input with its skip, and the relayout of
    an attention output before its projection, are copies of tensors that are kept anyway (the
    skip by the encoder's next layer, the attention output by the attention's backward), so
    keeping the parts instead costs nothing. A residual block's 2d+1d convolution hands the
    next chain its spatial output, which the temporal convolution's backward needs anyway, and
    the temporal convolution (a third of the spatial one's work) is redone here rather than its
    output kept. The forward ops are the plain ones and the backward runs the same kernels, so
    outputs and gradients are those of the unfused chain (for a given dropout mask)."""

    @staticmethod
    def forward(
        ctx,
        x,
        skip,
        layout,
        temporal_weight,
        temporal_bias,
        temporal_padding,
        norm,
        gn_weight,
        gn_bias,
        scale,
        shift,
        act,
        drop,
        weight,
        bias,
        padding,
        dilation,
    ):  # type: ignore[override]
        # Under autocast the convolutions run in the autocast dtype, as the plain chain's would;
        # the backward pass (which runs without autocast) uses the same dtype.
        ctx.conv_dtype = _conv_dtype(x)
        ctx.autocast = autocast_state(x.device.type)
        ctx.temporal_padding = temporal_padding
        temporal = None if temporal_weight is None else Temporal(temporal_weight, temporal_bias, temporal_padding)
        h = _chain_input(
            x, skip, layout, temporal, ctx.conv_dtype, norm, gn_weight, gn_bias, scale, shift, act, in_place=True
        )
        ctx.generator_state = None
        if drop > 0:
            ctx.generator_state = _generator_state(h.device)
            # Dropout follows a norm (`norm_act_conv`), so `h` is the chain's own buffer.
            h = h.mul_(_keep_mask(h, 1 - drop)).div_(1 - drop)
        ctx.layout, ctx.norm, ctx.act, ctx.drop, ctx.padding, ctx.dilation = layout, norm, act, drop, padding, dilation
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        ctx.save_for_backward(x, skip, temporal_weight, temporal_bias, gn_weight, gn_bias, scale, shift, weight)
        device = x.device.type
        has_autocast = torch.amp.is_autocast_available(device)
        with torch.autocast(device, enabled=False) if has_autocast else contextlib.nullcontext():
            return torch.ops.aten.convolution(
                h.to(ctx.conv_dtype),
                weight.to(ctx.conv_dtype),
                None if bias is None else bias.to(ctx.conv_dtype),
                [1] * len(padding),
                padding,
                dilation,
                False,
                [0] * len(padding),
                1,
            )

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, skip, temporal_weight, temporal_bias, gn_weight, gn_bias, scale, shift, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        chain_inputs = [x, skip, temporal_weight, temporal_bias, gn_weight, gn_bias, scale, shift]
        chain_needs = [needs[0], needs[1], needs[3], needs[4], *needs[7:11]]
        leaves = [
            None if t is None else t.detach().requires_grad_(n) for t, n in zip(chain_inputs, chain_needs, strict=True)
        ]
        x_leaf, skip_leaf, temporal_weight_leaf, temporal_bias_leaf, *norm_leaves = leaves
        temporal = None
        if temporal_weight is not None:
            temporal = Temporal(temporal_weight_leaf, temporal_bias_leaf, ctx.temporal_padding)
        dtype = ctx.conv_dtype
        with torch.enable_grad(), autocast_context(x.device.type, ctx.autocast):
            pre = _chain_input(x_leaf, skip_leaf, ctx.layout, temporal, dtype, ctx.norm, *norm_leaves, act=False)
        # The activation and the dropout run outside the recorded graph and their gradients in
        # place: the backward pass then holds neither their outputs nor their gradients'
        # intermediates beside the rest of the chain's (the same kernels autograd would run).
        activated = ctx.act and ctx.norm is not None
        h = F.silu(pre.detach()) if activated else pre.detach()
        mask = None
        if ctx.drop > 0:
            mask = _redrawn_keep_mask(h, 1 - ctx.drop, ctx.generator_state)
            h = h * mask / (1 - ctx.drop)
        grad_h, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad.to(dtype),
            h.to(dtype),
            weight.to(dtype),
            ctx.bias_sizes,
            [1] * len(ctx.padding),
            ctx.padding,
            ctx.dilation,
            False,
            [0] * len(ctx.padding),
            1,
            [any(chain_needs), needs[13], needs[14] and ctx.bias_sizes is not None],
        )
        del h
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(weight.dtype)
        wanted = [t for t, n in zip(leaves, chain_needs, strict=True) if n and t is not None]
        found = iter(())
        if wanted:
            grad_pre = grad_h.to(pre.dtype)
            del grad_h
            if mask is not None:
                grad_pre = grad_pre.div_(1 - ctx.drop).mul_(mask)
            if activated:
                grad_pre = torch.ops.aten.silu_backward.grad_input(grad_pre, pre.detach(), grad_input=grad_pre)
            if ctx.norm is not None:
                # `pre` is then the norm's (or scale-shift's) own output, which no node of the
                # recorded graph keeps: only its grad_fn and shape are needed from here on.
                pre.untyped_storage().resize_(0)
            found = iter(torch.autograd.grad(pre, wanted, grad_pre))
        grad_x, grad_skip, grad_temporal_weight, grad_temporal_bias, *grad_norm = [
            next(found) if n and t is not None else None for t, n in zip(leaves, chain_needs, strict=True)
        ]
        return (
            grad_x,
            grad_skip,
            None,
            grad_temporal_weight,
            grad_temporal_bias,
            None,
            None,
            *grad_norm,
            None,
            None,
            grad_weight,
            grad_bias,
            None,
            None,
        )


def _conv_parts(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, list[int], list[int]]:
    """The first convolution a chain feeds, as (weight, bias, padding, dilation)."""
    if isinstance(conv, VideoConv):
        spatial = conv.video_conv_spatial
        return spatial.weight.unsqueeze(2), spatial.bias, [0, conv.padding, conv.padding], [1, 1, 1]
    inner = conv.video_conv if isinstance(conv, Video3dConv) else getattr(conv, "audio_conv", conv)
    return inner.weight, inner.bias, list(inner.padding), list(inner.dilation)


def _chain_conv(
    conv: nn.Module,
    x: torch.Tensor,
    skip: torch.Tensor | None,
    layout: Layout | None,
    norm: GroupNorm32 | None,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    dropout: nn.Dropout | None,
    act: bool,
    temporal_first: VideoConv | None = None,
    spatial_only: bool = False,
) -> torch.Tensor:
    """The chain of `_RecomputedChainConv` (its plain ops when no gradient is recorded), with a
    `VideoConv`'s temporal half applied after it unless `spatial_only`."""
    drop = dropout.p if dropout is not None and dropout.training else 0.0
    gn = None if norm is None else norm.GroupNorm
    gn_weight, gn_bias = (None, None) if gn is None else (gn.weight, gn.bias)
    temporal = None if temporal_first is None else temporal_first.temporal_half()
    if not torch.is_grad_enabled():
        h = _chain_input(
            x, skip, layout, temporal, _conv_dtype(x), gn, gn_weight, gn_bias, scale, shift, act, in_place=True
        )
        h = F.dropout(h, drop, training=True) if drop else h
        return conv.spatial(h) if spatial_only else conv(h)
    out = _RecomputedChainConv.apply(
        x,
        skip,
        layout,
        *(temporal or (None, None, 0)),
        gn,
        gn_weight,
        gn_bias,
        scale,
        shift,
        act,
        drop,
        *_conv_parts(conv),  # weight, bias, padding, dilation
    )
    return conv.temporal(out) if isinstance(conv, VideoConv) and not spatial_only else out


def norm_act_conv(
    norm: GroupNorm32,
    x: torch.Tensor,
    conv: nn.Module,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    dropout: nn.Dropout | None = None,
    act: bool = True,
    skip: torch.Tensor | None = None,
    temporal_first: VideoConv | None = None,
    spatial_only: bool = False,
    layout: Layout | None = None,
) -> torch.Tensor:
    """`conv(dropout(silu(norm(x) * (1 + scale) + shift)))` (without scale-shift when they are
    None, without SiLU when not `act`; `x` concatenated with `skip` along the channels first
    when given, then passed through `layout`, a shape-changing op without parameters such as a
    resampling) with the concatenation, layout, norm and activation recomputed in the backward
    pass instead of stored (see `_RecomputedChainConv`). `conv` is a `VideoConv`, `Video3dConv`,
    `AudioConv` or a plain convolution.

    A residual block's two chains can split its `VideoConv` between them: the first with
    `spatial_only` stops after the spatial half, the second, given that conv as
    `temporal_first`, starts with the temporal half (recomputed in the backward pass, like the
    norm)."""
    return _chain_conv(conv, x, skip, layout, norm, scale, shift, dropout, act, temporal_first, spatial_only)


def lean_input_conv(
    conv: nn.Module, x: torch.Tensor, skip: torch.Tensor | None = None, layout: Layout | None = None
) -> torch.Tensor:
    """`conv(layout(cat([x, skip])))` (each step where given), keeping `x` and `skip` for the
    backward pass instead of the convolution's input, a copy of them (see
    `_RecomputedChainConv`). An `nn.Identity` "convolution" gives the input itself."""
    if isinstance(conv, nn.Identity):
        return _assemble(x, skip, layout)
    if skip is None and layout is None:
        return conv(x)
    return _chain_conv(conv, x, skip, layout, None, None, None, None, False)


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

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        spatial = self.video_conv_spatial
        return F.conv3d(x, spatial.weight.unsqueeze(2), spatial.bias, padding=(0, self.padding, self.padding))

    def temporal_half(self) -> Temporal:
        return Temporal(self.video_conv_temporal.weight, self.video_conv_temporal.bias, self.padding)

    def temporal(self, x: torch.Tensor) -> torch.Tensor:
        return _temporal_conv(x, *self.temporal_half())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(self.spatial(x))


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
