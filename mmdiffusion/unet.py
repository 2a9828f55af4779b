"""The coupled audio-video U-Net of MM-Diffusion.

Two sub-networks, one for video `[B, F, C, H, W]` and one for audio `[B, C, L]`, share a
timestep embedding and exchange information through RS-MMA blocks at the levels the config
names. It follows the released MM-Diffusion architecture, checked against the released key
lists and golden outputs in `tests/golden_data`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmdiffusion.attention import RSMMA, SelfAttention
from mmdiffusion.config import CoupledUNetConfig
from mmdiffusion.layers import (
    AudioConv,
    GroupNorm32,
    Layout,
    Video3dConv,
    VideoConv,
    audio_downsample,
    audio_upsample,
    lean_input_conv,
    norm_act_conv,
    timestep_embedding,
    video_downsample,
    video_upsample,
    zero_init,
)

Resample = Literal["up", "down"] | None


class CoupledResBlock(nn.Module):
    """Residual block over both modalities, conditioned on one timestep embedding.

    Where asked, it ends with video spatial then temporal self-attention and audio
    self-attention. A resampling block resamples after its first convolution (the released
    order), and its skip input separately.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        dropout: float,
        audio_dilation: int,
        num_heads: int,
        resample: Resample = None,
        video_attention: bool = False,
        audio_attention: bool = False,
        use_scale_shift_norm: bool = True,
    ) -> None:
        super().__init__()
        if resample is not None and in_channels != out_channels:
            raise ValueError("a resampling block keeps its channel count")
        self.resample = resample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.video_in_layers = nn.Sequential(GroupNorm32(in_channels), nn.SiLU(), VideoConv(in_channels, out_channels))
        self.audio_in_layers = nn.Sequential(
            GroupNorm32(in_channels), nn.SiLU(), AudioConv(in_channels, out_channels, 3, dilation=audio_dilation)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.video_out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_init(Video3dConv(out_channels, out_channels)),
        )
        self.audio_out_layers = nn.Sequential(
            GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout), zero_init(AudioConv(out_channels, out_channels))
        )
        same = in_channels == out_channels
        self.video_skip_connection = nn.Identity() if same else Video3dConv(in_channels, out_channels)
        self.audio_skip_connection = nn.Identity() if same else AudioConv(in_channels, out_channels)
        if video_attention:
            self.spatial_attention_block = SelfAttention(out_channels, num_heads)
            self.temporal_attention_block = SelfAttention(out_channels, num_heads)
        if audio_attention:
            self.audio_attention_block = SelfAttention(out_channels, num_heads)

    def _resamplers(self) -> tuple[Layout | None, Layout | None]:
        """The block's video and audio resampling, None without one."""
        if self.resample == "down":
            return video_downsample, audio_downsample
        if self.resample == "up":
            return video_upsample, audio_upsample
        return None, None

    def _modulate(
        self,
        out_layers: nn.Sequential,
        h: torch.Tensor,
        emb_out: torch.Tensor,
        temporal_first: VideoConv | None = None,
        resample: Layout | None = None,
    ) -> torch.Tensor:
        """The output layers on `h` (with `temporal_first`, `h` is that conv's spatial output;
        with `resample`, `h` before the resampling, which the backward pass then redoes instead
        of keeping the resampled `h`)."""
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.ndim - 2))).to(h.dtype)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            return norm_act_conv(
                out_layers[0],
                h,
                out_layers[3],
                scale,
                shift,
                dropout=out_layers[2],
                temporal_first=temporal_first,
                layout=resample,
            )
        h = h if resample is None else resample(h)
        return norm_act_conv(out_layers[0], h + emb_out, out_layers[3], dropout=out_layers[2])

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        emb: torch.Tensor,
        skip: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`skip`: a decoder block's skip input (video, audio), concatenated after `video` and
        `audio` along the channels; the concatenation is not kept for the backward pass."""
        if skip is not None and self.resample is not None:
            raise ValueError("a resampling block takes no skip input")
        skip_v, skip_a = (None, None) if skip is None else skip
        # Without resampling between them, the output layers start with the input layers'
        # temporal convolution: its output is then not kept for the backward pass.
        video_conv = self.video_in_layers[2]
        split = self.resample is None and self.use_scale_shift_norm
        hv = norm_act_conv(self.video_in_layers[0], video, video_conv, skip=skip_v, spatial_only=split)
        ha = norm_act_conv(self.audio_in_layers[0], audio, self.audio_in_layers[2], skip=skip_a)
        # An upsampled activation is four times its input, and nearest upsampling gives the
        # input's dtype under autocast too: the output layers redo it in their backward pass
        # instead of keeping it. A downsampled one is a quarter of its input (which the
        # pooling's backward keeps anyway) and is kept as it is.
        resample_video, resample_audio = self._resamplers()
        deferred = self.resample == "up"
        if resample_video is not None:
            video, audio = resample_video(video), resample_audio(audio)
            if not deferred:
                hv, ha = resample_video(hv), resample_audio(ha)
        emb_out = self.emb_layers(emb)
        video = lean_input_conv(self.video_skip_connection, video, skip_v) + self._modulate(
            self.video_out_layers,
            hv,
            emb_out,
            temporal_first=video_conv if split else None,
            resample=resample_video if deferred else None,
        )
        audio = lean_input_conv(self.audio_skip_connection, audio, skip_a) + self._modulate(
            self.audio_out_layers, ha, emb_out, resample=resample_audio if deferred else None
        )
        if hasattr(self, "spatial_attention_block"):
            _, _, frames, height, width = video.shape
            sizes = {"f": frames, "h": height, "w": width}
            video = rearrange(video, "b c f h w -> (b f) c (h w)")
            video = rearrange(self.spatial_attention_block(video), "(b f) c (h w) -> (b h w) c f", **sizes)
            video = rearrange(self.temporal_attention_block(video), "(b h w) c f -> b c f h w", **sizes)
        if hasattr(self, "audio_attention_block"):
            audio = self.audio_attention_block(audio)
        return video, audio


class InputStem(nn.Module):
    """Input block 0: a 2d+1d video conv and an audio conv to the base channel count."""

    def __init__(self, video_channels: int, audio_channels: int, channels: int) -> None:
        super().__init__()
        self.video_conv = VideoConv(video_channels, channels)
        self.audio_conv = AudioConv(audio_channels, channels, 3)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.video_conv(video), self.audio_conv(audio)


class CoupledSequential(nn.ModuleList):
    """One U-Net block: layers applied in order, each given what it needs."""

    gradient_checkpointing: bool = False

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        emb: torch.Tensor,
        shifts: Mapping[str, int],
        skip: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`skip`: a decoder block's skip input, given to its first layer (a `CoupledResBlock`)."""
        for index, layer in enumerate(self):
            if isinstance(layer, CoupledResBlock):
                args: tuple = (video, audio, emb, skip if index == 0 else None)
            elif isinstance(layer, RSMMA):
                args = (video, audio, shifts.get(layer.block_name, 0))
            else:
                args = (video, audio)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                video, audio = checkpoint(layer, *args, use_reentrant=False)
            else:
                video, audio = layer(*args)
        return video, audio


class CoupledUNet(nn.Module):
    """`video_eps, audio_eps = model(video [B,F,C,H,W], audio [B,C,L], timesteps [B])`."""

    def __init__(self, config: CoupledUNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        base = c.model_channels
        self.time_embed = nn.Sequential(nn.Linear(base, base), nn.SiLU(), nn.Linear(base, base))

        def res_block(in_ch: int, out_ch: int, dilation_index: int, rate: int, **kwargs) -> CoupledResBlock:
            return CoupledResBlock(
                in_ch,
                out_ch,
                base,
                dropout=c.dropout,
                audio_dilation=2 ** (dilation_index % 10),
                num_heads=c.num_heads,
                use_scale_shift_norm=c.use_scale_shift_norm,
                video_attention=kwargs.pop("video_attention", rate in c.video_attention_rates),
                audio_attention=kwargs.pop("audio_attention", rate in c.audio_attention_rates),
                **kwargs,
            )

        def cross_block(channels: int, window: int, random_shift: bool = True) -> RSMMA:
            return RSMMA(channels, c.num_head_channels, c.frames, window, random_shift)

        self.input_blocks = nn.ModuleList([CoupledSequential([InputStem(c.video_channels, c.audio_channels, base)])])
        skip_channels = [base]
        channels, rate, encoder_blocks = base, 1, 0
        for level, mult in enumerate(c.channel_mult):
            window = c.cross_window_at(level)
            for _ in range(c.num_res_blocks):
                encoder_blocks += 1
                layers: list[nn.Module] = [res_block(channels, mult * base, encoder_blocks, rate)]
                channels = mult * base
                if window:
                    layers.append(cross_block(channels, window))
                self.input_blocks.append(CoupledSequential(layers))
                skip_channels.append(channels)
            if level != c.num_levels - 1:
                encoder_blocks += 1
                down = res_block(
                    channels,
                    channels,
                    encoder_blocks,
                    rate,
                    resample="down",
                    video_attention=False,
                    audio_attention=False,
                )
                self.input_blocks.append(CoupledSequential([down]))
                skip_channels.append(channels)
                rate *= 2

        n = encoder_blocks
        self.middle_blocks = CoupledSequential(
            [
                res_block(channels, channels, n + 1, rate, video_attention=True, audio_attention=True),
                cross_block(channels, c.frames, random_shift=False),
                res_block(channels, channels, n + 1, rate, video_attention=True, audio_attention=True),
            ]
        )

        self.output_blocks = nn.ModuleList()
        decoder_index = 0
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            window = c.cross_window_at(level)
            for j in range(c.num_res_blocks + 1):
                layers = [res_block(channels + skip_channels.pop(), mult * base, n - decoder_index, rate)]
                channels = mult * base
                if window:
                    layers.append(cross_block(channels, window))
                if level and j == c.num_res_blocks:
                    layers.append(
                        res_block(
                            channels,
                            channels,
                            n - decoder_index - 1,
                            rate,
                            resample="up",
                            video_attention=False,
                            audio_attention=False,
                        )
                    )
                    rate //= 2
                self.output_blocks.append(CoupledSequential(layers))
                decoder_index += 1

        self.video_out = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), zero_init(Video3dConv(channels, c.video_out_channels, kernel_size=3))
        )
        self.audio_out = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), zero_init(AudioConv(channels, c.audio_out_channels, 3))
        )

        self.cross_blocks: dict[str, RSMMA] = {}
        for name, module in self.named_modules():
            if isinstance(module, RSMMA):
                module.block_name = name
                self.cross_blocks[name] = module
        self.pinned_shifts: dict[str, int] = {}
        self.shift_generator: torch.Generator | None = None
        self.last_shifts: dict[str, int] = {}
        self.set_gradient_checkpointing(c.gradient_checkpointing)

    # ------------------------------------------------------------------ options
    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        for module in self.modules():
            if isinstance(module, CoupledSequential):
                module.gradient_checkpointing = enabled

    def pin_shifts(self, shifts: Mapping[str, int] | None) -> None:
        """Fix R for the named RS-MMA blocks (by state-dict prefix); `None` unpins all."""
        self.pinned_shifts = {} if shifts is None else self._checked_shifts(shifts)

    def _checked_shifts(self, shifts: Mapping[str, int]) -> dict[str, int]:
        unknown = set(shifts) - set(self.cross_blocks)
        if unknown:
            raise KeyError(f"no RS-MMA block named {sorted(unknown)}; blocks: {sorted(self.cross_blocks)}")
        for name, value in shifts.items():
            block = self.cross_blocks[name]
            if not 0 <= int(value) <= block.max_shift:
                raise ValueError(f"shift {value} for {name} outside 0..{block.max_shift} (window {block.window})")
        return {name: int(value) for name, value in shifts.items()}

    def draw_shifts(self) -> dict[str, int]:
        """One R per RS-MMA block, uniform in 0..F-S where random shift is on, else 0."""
        shifts = {}
        for name, block in self.cross_blocks.items():
            if self.config.cross_attention_shift and block.random_shift and block.max_shift > 0:
                shifts[name] = int(torch.randint(0, block.max_shift + 1, (1,), generator=self.shift_generator))
            else:
                shifts[name] = 0
        return shifts

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, video: torch.Tensor, audio: torch.Tensor, timesteps: torch.Tensor) -> None:
        c = self.config
        expected_video = (c.frames, c.video_channels, c.image_size, c.image_size)
        expected_audio = (c.audio_channels, c.audio_length)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected_video:
            raise ValueError(f"video must be [B, {', '.join(map(str, expected_video))}], got {list(video.shape)}")
        if audio.ndim != 3 or tuple(audio.shape[1:]) != expected_audio:
            raise ValueError(f"audio must be [B, {', '.join(map(str, expected_audio))}], got {list(audio.shape)}")
        if audio.shape[0] != video.shape[0]:
            raise ValueError(f"video batch {video.shape[0]} and audio batch {audio.shape[0]} differ")
        if timesteps.ndim != 1 or timesteps.shape[0] != video.shape[0]:
            raise ValueError(f"timesteps must be [B={video.shape[0]}], got {list(timesteps.shape)}")

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        timesteps: torch.Tensor,
        shifts: Mapping[str, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        timesteps = torch.as_tensor(timesteps, device=video.device)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(video.shape[0])
        self._check_inputs(video, audio, timesteps)
        resolved = self.draw_shifts()
        resolved.update(self.pinned_shifts)
        if shifts:
            resolved.update(self._checked_shifts(shifts))
        self.last_shifts = resolved

        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(video.dtype))
        v = rearrange(video, "b f c h w -> b c f h w")
        a = audio
        skips = []
        for block in self.input_blocks:
            v, a = block(v, a, emb, resolved)
            skips.append((v, a))
        v, a = self.middle_blocks(v, a, emb, resolved)
        for block in self.output_blocks:
            v, a = block(v, a, emb, resolved, skip=skips.pop())
        video_eps = rearrange(norm_act_conv(self.video_out[0], v, self.video_out[2]), "b c f h w -> b f c h w")
        return video_eps, norm_act_conv(self.audio_out[0], a, self.audio_out[2])
