"""One clip as a WebDataset sample: member suffix -> bytes (see docs/data-format.md)."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
from PIL import Image

from mmdiffusion.constants import CLIP_SECONDS, FPS, FRAMES, SAMPLE_RATE
from pipeline.decode import Clip, SourceInfo

SR_JPEG_QUALITY = 90
"""JPEG quality (4:4:4 chroma) of the SR frames; measured quality and size in docs/data-format.md."""


def source_id(uri: str) -> str:
    """A stable 16-hex-digit name for a source (WebDataset keys may not contain dots)."""
    return hashlib.sha1(uri.encode("utf-8")).hexdigest()[:16]


def sample_key(uri: str, clip_index: int) -> str:
    return f"{source_id(uri)}-{clip_index:05d}"


def sr_member_name(size: int) -> str:
    return f"video{size}.jpg"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def frames_to_jpeg_strip(frames: np.ndarray, quality: int = SR_JPEG_QUALITY) -> bytes:
    """Frames (F, S, S, 3) as one JPEG of F frames stacked top to bottom, (F*S, S, 3)."""
    strip = frames.reshape(-1, *frames.shape[2:])
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def jpeg_strip_to_frames(data: bytes, size: int) -> np.ndarray:
    """The inverse of `frames_to_jpeg_strip`: uint8 (F, size, size, 3)."""
    strip = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return strip.reshape(-1, size, size, 3)


def clip_metadata(clip: Clip, info: SourceInfo) -> dict:
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
    }


def encode_sample(clip: Clip, info: SourceInfo) -> dict[str, bytes]:
    """The members of the clip's sample, keyed by suffix, `__key__` excluded."""
    members = {
        "video.npy": npy_bytes(clip.video),
        "audio.npy": npy_bytes(clip.audio),
        "json": json.dumps(clip_metadata(clip, info), sort_keys=True).encode("utf-8"),
    }
    if clip.video_sr is not None:
        members[sr_member_name(clip.video_sr.shape[1])] = frames_to_jpeg_strip(clip.video_sr)
    return members
