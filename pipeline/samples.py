"""One decoded clip as a WebDataset sample (the format itself: `pipeline.shard_format`)."""

from __future__ import annotations

from mmdiffusion.constants import CLIP_SECONDS, FPS, FRAMES, SAMPLE_RATE
from pipeline.decode import Clip, SourceInfo
from pipeline.frames import ResizeMode
from pipeline.shard_format import encode_members
from pipeline.signals import ClipSignals, compute_signals, picture_box


def clip_signals(clip: Clip, info: SourceInfo, resize: ResizeMode) -> ClipSignals:
    """The clip's curation signals, measured inside the source's picture (not the pipeline's padding)."""
    box = picture_box(info.width, info.height, int(clip.video.shape[1]), resize)
    return compute_signals(clip.video, clip.audio, box)


def clip_metadata(clip: Clip, info: SourceInfo, signals: ClipSignals | None = None) -> dict:
    """The `json` member of a clip's sample."""
    return {
        "source": info.uri,
        "clip_index": clip.index,
        "start_seconds": clip.start_seconds,
        "duration_seconds": CLIP_SECONDS,
        "frames": FRAMES,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "size": int(clip.video.shape[1]),
        "source_fps": info.fps,
        "source_sample_rate": info.sample_rate,
        "source_width": info.width,
        "source_height": info.height,
        "source_duration_seconds": info.duration_seconds,
        **(signals.as_json() if signals else {}),
    }


def encode_sample(clip: Clip, info: SourceInfo, signals: ClipSignals | None = None) -> dict[str, bytes]:
    """The members of the clip's sample, keyed by suffix, `__key__` excluded."""
    return encode_members(clip.video, clip.audio, clip_metadata(clip, info, signals), clip.video_sr)
