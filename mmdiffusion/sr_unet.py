"""The 64→256 super-resolution U-Net of MM-Diffusion (the guided-diffusion upsampler).

A plain image U-Net run on single frames: the noisy high-resolution frame `[B, 3, H, W]` and
the low-resolution frame, upsampled bilinearly to `H × W`, are concatenated on the channel
axis; the output stacks the predicted noise and the variance interpolation `[B, 6, H, W]`.
Module names follow the released checkpoints so that their state dicts load as they are; the
released key lists and golden outputs in `tests/golden_data` check it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from mmdiffusion.config import NORM_GROUPS, PresetConfig
from mmdiffusion.constants import IMAGE_SIZE, SR_IMAGE_SIZE, VIDEO_CHANNELS
from mmdiffusion.layers import timestep_embedding, zero_init

TIME_EMBED_MULT = 4
"""The timestep embedding is 4 × `model_channels` wide, as in guided-diffusion."""


@dataclass(frozen=True)
class SuperResUNetConfig(PresetConfig):
    """Architecture of a super-resolution U-Net.

    `attention_rates` are downsample rates (1 at the input level, doubling per level).
    `num_head_channels=None` means `num_heads` heads everywhere.
    """

    image_size: int = SR_IMAGE_SIZE
    low_res_size: int = IMAGE_SIZE
    """Side of the frames it upsamples (the network itself accepts any; samplers check it)."""
    in_channels: int = VIDEO_CHANNELS
    model_channels: int = 192
    out_channels: int = 2 * VIDEO_CHANNELS
    num_res_blocks: int = 2
    attention_rates: tuple[int, ...] = (8, 16, 32)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_heads: int = 4
    num_head_channels: int | None = None
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.out_channels not in (self.in_channels, 2 * self.in_channels):
            problems.append(
                f"out_channels {self.out_channels} must be in_channels or 2 × in_channels (learned variance)"
            )
        if self.image_size % 2 ** (len(self.channel_mult) - 1):
            problems.append(f"image_size {self.image_size} is not divisible by {2 ** (len(self.channel_mult) - 1)}")
        for mult in self.channel_mult:
            channels = mult * self.model_channels
            if channels % NORM_GROUPS:
                problems.append(f"{channels} channels are not divisible into {NORM_GROUPS} norm groups")
            if channels % self.heads_for(channels):
                problems.append(f"{channels} channels do not split into {self.heads_for(channels)} heads")
        if problems:
            raise ValueError("invalid SuperResUNetConfig: " + "; ".join(problems))

    @property
    def learn_sigma(self) -> bool:
        """The model predicts the variance interpolation after the noise."""
        return self.out_channels == 2 * self.in_channels

    def heads_for(self, channels: int) -> int:
        return self.num_heads if self.num_head_channels is None else channels // self.num_head_channels

    # ------------------------------------------------------------------ constructors
    @classmethod
    def paper(cls, **overrides: Any) -> SuperResUNetConfig:
        """The released 64→256 upsampler (311,027,910 parameters)."""
        return cls(**overrides)

    @classmethod
    def from_reference(cls, kwargs: dict[str, Any]) -> SuperResUNetConfig:
        """Map the released code's constructor arguments (`SuperResModel(...)`) onto this config.

        The released `in_channels` counts the noisy frame only; the model doubles it for the
        concatenated low-resolution frame. `low_res_size` is not among those arguments: the
        released upsampler is 4× (64→256), which is assumed here.
        """
        unknown = set(kwargs) - _REFERENCE_KEYS
        if unknown:
            raise ValueError(f"unknown reference SR config keys: {sorted(unknown)}")
        if not kwargs.get("resblock_updown", True):
            raise ValueError(
                "resblock_updown=False is not supported: the released upsampler resamples in residual blocks"
            )
        if kwargs.get("num_classes") is not None:
            raise ValueError("class-conditional SR models are not supported (num_classes must be None)")
        heads = kwargs.get("num_heads", 4)
        if kwargs.get("num_heads_upsample", -1) not in (-1, heads):
            raise ValueError("num_heads_upsample must equal num_heads")
        head_channels = kwargs.get("num_head_channels", -1)
        image_size = kwargs["image_size"]
        mult = kwargs.get("channel_mult", (1, 1, 2, 2, 4, 4))
        if isinstance(mult, str):
            mult = tuple(int(m) for m in mult.split(","))
        return cls(
            image_size=image_size,
            low_res_size=image_size * IMAGE_SIZE // SR_IMAGE_SIZE,
            in_channels=kwargs.get("in_channels", VIDEO_CHANNELS),
            model_channels=kwargs["model_channels"],
            out_channels=kwargs.get("out_channels", 2 * VIDEO_CHANNELS),
            num_res_blocks=kwargs["num_res_blocks"],
            attention_rates=tuple(kwargs.get("attention_resolutions", (8, 16, 32))),
            channel_mult=tuple(mult),
            num_heads=heads,
            num_head_channels=None if head_channels == -1 else head_channels,
            dropout=float(kwargs.get("dropout", 0.0)),
            use_scale_shift_norm=bool(kwargs.get("use_scale_shift_norm", True)),
            gradient_checkpointing=bool(kwargs.get("use_checkpoint", False)),
        )


def _small() -> SuperResUNetConfig:
    return SuperResUNetConfig(
        image_size=IMAGE_SIZE,
        low_res_size=IMAGE_SIZE * IMAGE_SIZE // SR_IMAGE_SIZE,
        model_channels=32,
        num_res_blocks=1,
        attention_rates=(4, 8),
        channel_mult=(1, 2, 3, 4),
    )


def _tiny() -> SuperResUNetConfig:
    return SuperResUNetConfig(model_channels=32, num_res_blocks=1, attention_rates=(16,), channel_mult=(1, 1, 2, 2, 2))


SuperResUNetConfig.PRESETS = {"paper": SuperResUNetConfig.paper, "small": _small, "tiny": _tiny}

_REFERENCE_KEYS = {
    "image_size",
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "attention_resolutions",
    "dropout",
    "channel_mult",
    "num_classes",
    "use_checkpoint",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_scale_shift_norm",
    "resblock_updown",
    "use_fp16",
    "use_new_attention_order",
}


class FloatGroupNorm(nn.GroupNorm):
    """GroupNorm in float32 whatever the input dtype, named as a bare `GroupNorm` in state dicts
    (unlike the coupled U-Net's nested `GroupNorm32`)."""

    def __init__(self, channels: int) -> None:
        super().__init__(NORM_GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding; optionally halves or doubles the
    resolution between its first SiLU and convolution (and on the skip path)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        dropout: float,
        use_scale_shift_norm: bool,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        self.resample = resample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            FloatGroupNorm(in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            FloatGroupNorm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm, act, conv = self.in_layers
        h = conv(self._resample(act(norm(x))))
        x = self._resample(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention with the older interleaved qkv layout: the 3C channels are read
    as `[heads, (q|k|v), d]`, i.e. each head's q, k and v are adjacent."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = FloatGroupNorm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = x.reshape(batch, channels, height * width)
        qkv = self.qkv(self.norm(tokens)).reshape(batch, self.heads, 3 * channels // self.heads, height * width)
        q, k, v = qkv.chunk(3, dim=2)
        # The released code scales q and k by d^(-1/4) each before the product; doing the same
        # (and no scale inside) keeps its rounding. [B, heads, T, d] with d innermost is the
        # layout the fused attention kernels take.
        scale = q.shape[2] ** -0.25
        q, k, v = ((q * scale).mT.contiguous(), (k * scale).mT.contiguous(), v.mT.contiguous())
        # On the CPU the math kernel reproduces the released einsums bit for bit (the fused
        # CPU kernel differs in the last bits); elsewhere SDPA picks a fused kernel.
        kernels = sdpa_kernel(SDPBackend.MATH) if q.device.type == "cpu" else contextlib.nullcontext()
        with kernels:
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        out = out.mT.reshape(batch, channels, height * width)
        return (tokens + self.proj_out(out)).reshape(batch, channels, height, width)


class EmbedSequential(nn.Sequential):
    """Layers applied in order; residual blocks also get the timestep embedding."""

    gradient_checkpointing: bool = False

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            args = (x, emb) if isinstance(layer, ResBlock) else (x,)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return x


class SuperResUNet(nn.Module):
    """`eps_and_var = sr(x [B, 3, H, W], timesteps [B], low_res=[B, 3, h, w])` → `[B, 6, H, W]`."""

    def __init__(self, config: SuperResUNetConfig) -> None:
        super().__init__()
        self.config = c = config
        base = c.model_channels
        emb_channels = TIME_EMBED_MULT * base
        self.time_embed = nn.Sequential(nn.Linear(base, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))

        def res_block(in_ch: int, out_ch: int, resample: str | None = None) -> ResBlock:
            return ResBlock(
                in_ch,
                out_ch,
                emb_channels,
                dropout=c.dropout,
                use_scale_shift_norm=c.use_scale_shift_norm,
                resample=resample,
            )

        def with_attention(layers: list[nn.Module], channels: int, rate: int) -> list[nn.Module]:
            if rate in c.attention_rates:
                layers.append(AttentionBlock(channels, c.heads_for(channels)))
            return layers

        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(2 * c.in_channels, base, 3, padding=1))])
        skip_channels = [base]
        channels, rate = base, 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = with_attention([res_block(channels, mult * base)], mult * base, rate)
                channels = mult * base
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(channels)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(res_block(channels, channels, resample="down")))
                skip_channels.append(channels)
                rate *= 2

        self.middle_block = EmbedSequential(
            res_block(channels, channels),
            AttentionBlock(channels, c.heads_for(channels)),
            res_block(channels, channels),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = with_attention([res_block(channels + skip_channels.pop(), mult * base)], mult * base, rate)
                channels = mult * base
                if level and i == c.num_res_blocks:
                    layers.append(res_block(channels, channels, resample="up"))
                    rate //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            FloatGroupNorm(channels), nn.SiLU(), zero_init(nn.Conv2d(channels, c.out_channels, 3, padding=1))
        )
        self.set_gradient_checkpointing(c.gradient_checkpointing)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        for module in self.modules():
            if isinstance(module, EmbedSequential):
                module.gradient_checkpointing = enabled

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must be [B, {c.in_channels}, H, W], got {list(x.shape)}")
        if low_res.ndim != 4 or low_res.shape[:2] != x.shape[:2]:
            raise ValueError(f"low_res must be [{x.shape[0]}, {c.in_channels}, h, w], got {list(low_res.shape)}")
        timesteps = torch.as_tensor(timesteps, device=x.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        upsampled = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
        emb = self.time_embed(timestep_embedding(timesteps, c.model_channels).to(x.dtype))
        h = torch.cat([x, upsampled.to(x.dtype)], dim=1)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
