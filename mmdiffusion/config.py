"""Configuration of the coupled audio-video U-Net.

`CoupledUNetConfig` is a plain dataclass. `paper()` gives the released flags,
`from_reference()` maps the released code's constructor arguments onto it, and `named()`
gives the small configurations used by the tests and the demo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from mmdiffusion.constants import AUDIO_CHANNELS, AUDIO_SAMPLES, FRAMES, IMAGE_SIZE, VIDEO_CHANNELS

NORM_GROUPS = 32
VIDEO_DOWNSAMPLE = 2
"""Each down-sampling halves the frame height and width (frames are never pooled)."""
AUDIO_DOWNSAMPLE = 4
"""Each down-sampling divides the audio length by four."""


ConfigT = TypeVar("ConfigT", bound="PresetConfig")
DataclassT = TypeVar("DataclassT")


def dataclass_from_dict(cls: type[DataclassT], values: dict[str, Any]) -> DataclassT:
    """`cls(**values)` for a dataclass, naming unknown fields; JSON lists become tuples."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


class PresetConfig:
    """Named presets and dict serialisation shared by the model config dataclasses."""

    PRESETS: ClassVar[dict[str, Callable[[], Any]]] = {}

    @classmethod
    def named(cls: type[ConfigT], name: str, **overrides: Any) -> ConfigT:
        """A preset by name (see `PRESETS`), with fields overridden."""
        try:
            base = cls.PRESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown {cls.__name__} preset {name!r}; known: {', '.join(sorted(cls.PRESETS))}"
            ) from None
        return dataclasses.replace(base(), **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[ConfigT], values: dict[str, Any]) -> ConfigT:
        return dataclass_from_dict(cls, values)


@dataclass(frozen=True)
class CoupledUNetConfig(PresetConfig):
    """Architecture of a coupled U-Net; field names follow the paper, not the released code.

    Rates (`*_attention_rates`) are downsample rates: 1 at the input level, doubling with each
    down-sampling.
    """

    frames: int = FRAMES
    video_channels: int = VIDEO_CHANNELS
    image_size: int = IMAGE_SIZE
    audio_channels: int = AUDIO_CHANNELS
    audio_length: int = AUDIO_SAMPLES
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    video_attention_rates: tuple[int, ...] = (2, 4, 8)
    audio_attention_rates: tuple[int, ...] = ()
    cross_attention_rates: tuple[int, ...] = (2, 4, 8)
    cross_attention_windows: tuple[int, ...] = (1, 4, 8)
    cross_attention_shift: bool = True
    num_heads: int = 4
    num_head_channels: int = 64
    dropout: float = 0.1
    use_scale_shift_norm: bool = True
    video_out_channels: int = VIDEO_CHANNELS
    audio_out_channels: int = AUDIO_CHANNELS
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def paper(cls, **overrides: Any) -> CoupledUNetConfig:
        """The released MM-Diffusion flags (133,675,524 parameters)."""
        return cls(**overrides)

    @classmethod
    def from_reference(cls, kwargs: dict[str, Any]) -> CoupledUNetConfig:
        """Map the released implementation's constructor arguments onto this config."""
        unknown = set(kwargs) - _REFERENCE_KEYS
        if unknown:
            raise ValueError(f"unknown reference config keys: {sorted(unknown)}")
        if not kwargs.get("resblock_updown", True):
            raise ValueError("resblock_updown=False is not supported: the released models resample in residual blocks")
        frames, video_channels, height, width = kwargs.get(
            "video_size", (FRAMES, VIDEO_CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
        )
        if height != width:
            raise ValueError(f"video_size {kwargs['video_size']} is not square")
        audio_channels, audio_length = kwargs.get("audio_size", (AUDIO_CHANNELS, AUDIO_SAMPLES))
        rates = lambda key, default: tuple(r for r in kwargs.get(key, default) if r > 0)  # noqa: E731
        return cls(
            frames=frames,
            video_channels=video_channels,
            image_size=height,
            audio_channels=audio_channels,
            audio_length=audio_length,
            model_channels=kwargs["model_channels"],
            channel_mult=tuple(kwargs.get("channel_mult", (1, 2, 3, 4))),
            num_res_blocks=kwargs["num_res_blocks"],
            video_attention_rates=rates("video_attention_resolutions", (2, 4, 8)),
            audio_attention_rates=rates("audio_attention_resolutions", ()),
            cross_attention_rates=rates("cross_attention_resolutions", (2, 4, 8)),
            cross_attention_windows=tuple(kwargs.get("cross_attention_windows", (1, 4, 8))),
            cross_attention_shift=bool(kwargs.get("cross_attention_shift", True)),
            num_heads=kwargs.get("num_heads", 4),
            num_head_channels=kwargs.get("num_head_channels", 64),
            dropout=float(kwargs.get("dropout", 0.0)),
            use_scale_shift_norm=bool(kwargs.get("use_scale_shift_norm", True)),
            video_out_channels=kwargs.get("video_out_channels", video_channels),
            audio_out_channels=kwargs.get("audio_out_channels", audio_channels),
            gradient_checkpointing=bool(kwargs.get("use_checkpoint", False)),
        )

    # ------------------------------------------------------------------ derived sizes
    @property
    def learn_sigma(self) -> bool:
        """Both heads predict a variance interpolation after the noise (twice the channels)."""
        return (self.video_out_channels, self.audio_out_channels) == (2 * self.video_channels, 2 * self.audio_channels)

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    def level_rate(self, level: int) -> int:
        return VIDEO_DOWNSAMPLE**level

    def audio_length_at(self, level: int) -> int:
        return self.audio_length // AUDIO_DOWNSAMPLE**level

    def image_size_at(self, level: int) -> int:
        return self.image_size // VIDEO_DOWNSAMPLE**level

    def cross_window_at(self, level: int) -> int | None:
        """The RS-MMA window at a level, or None where the level has no cross-attention."""
        rate = self.level_rate(level)
        if rate not in self.cross_attention_rates:
            return None
        return self.cross_attention_windows[self.cross_attention_rates.index(rate)]

    def validate(self) -> None:
        """Raise ValueError naming the sizes that make this configuration unbuildable."""
        problems: list[str] = []
        if len(self.cross_attention_windows) != len(self.cross_attention_rates):
            problems.append(
                f"cross_attention_windows {self.cross_attention_windows} must pair with "
                f"cross_attention_rates {self.cross_attention_rates}"
            )
        for window in self.cross_attention_windows:
            if not 1 <= window <= self.frames:
                problems.append(f"RS-MMA window {window} must lie in 1..frames={self.frames}")
        outputs = (self.video_out_channels, self.audio_out_channels)
        if outputs not in (
            (self.video_channels, self.audio_channels),
            (2 * self.video_channels, 2 * self.audio_channels),
        ):
            problems.append(
                f"video_out_channels {self.video_out_channels} and audio_out_channels {self.audio_out_channels} must "
                f"both be the input channels ({self.video_channels}, {self.audio_channels}) or both twice them "
                "(a learned variance)"
            )
        last = self.num_levels - 1
        if self.image_size % VIDEO_DOWNSAMPLE**last:
            problems.append(
                f"image_size {self.image_size} is not divisible by {VIDEO_DOWNSAMPLE**last} ({self.num_levels} levels)"
            )
        if self.audio_length % AUDIO_DOWNSAMPLE**last:
            problems.append(
                f"audio_length {self.audio_length} is not divisible by {AUDIO_DOWNSAMPLE**last} ({self.num_levels} levels)"
            )
        else:
            cross_levels = [lv for lv in range(self.num_levels) if self.cross_window_at(lv)] + [last]
            for level in cross_levels:
                length = self.audio_length_at(level)
                if length % self.frames:
                    problems.append(
                        f"audio length {length} at level {level} does not divide into frames={self.frames} segments"
                    )
        for mult in self.channel_mult:
            channels = self.model_channels * mult
            if channels % NORM_GROUPS:
                problems.append(f"{channels} channels are not divisible into {NORM_GROUPS} norm groups")
            if channels % self.num_heads:
                problems.append(f"{channels} channels are not divisible by num_heads={self.num_heads}")
            if channels % self.num_head_channels:
                problems.append(f"{channels} channels are not divisible by num_head_channels={self.num_head_channels}")
        if problems:
            raise ValueError("invalid CoupledUNetConfig: " + "; ".join(problems))


def _small() -> CoupledUNetConfig:
    return CoupledUNetConfig(model_channels=32, num_res_blocks=1, num_head_channels=32, dropout=0.0)


def _tiny() -> CoupledUNetConfig:
    return CoupledUNetConfig(
        model_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        video_attention_rates=(2, 4),
        cross_attention_rates=(2, 4),
        cross_attention_windows=(1, 4),
        num_head_channels=32,
        dropout=0.0,
    )


CoupledUNetConfig.PRESETS = {"paper": CoupledUNetConfig.paper, "small": _small, "tiny": _tiny}

_REFERENCE_KEYS = {
    "video_size",
    "audio_size",
    "model_channels",
    "video_out_channels",
    "audio_out_channels",
    "num_res_blocks",
    "cross_attention_resolutions",
    "cross_attention_windows",
    "cross_attention_shift",
    "video_attention_resolutions",
    "audio_attention_resolutions",
    "channel_mult",
    "num_head_channels",
    "use_scale_shift_norm",
    "dropout",
    "resblock_updown",
    "num_heads",
    "use_checkpoint",
    "use_fp16",
    "num_heads_upsample",
}
