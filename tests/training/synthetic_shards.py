"""Small WebDataset shards written straight from numpy, for tests that need exact control
over sizes and content (the pipeline's own shards are used where real sizes matter)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import webdataset as wds

from pipeline.shard_format import jpeg_bytes, sample_key, sr_members, sr_strip_member_name


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def clip_arrays(index: int, frames: int, image_size: int, audio_length: int, sr_size: int | None = None) -> dict:
    """A smooth, clip-specific pattern (learnable, unlike white noise)."""
    phase = index * 0.7
    _, x = np.mgrid[0:image_size, 0:image_size] / image_size
    video = np.stack(
        [
            np.stack([np.sin(2 * np.pi * (x + f / frames + c / 3) + phase) for c in range(3)], axis=-1)
            for f in range(frames)
        ]
    )
    time = np.arange(audio_length) / audio_length
    arrays = {
        "video": ((video + 1) * 127.5).round().astype(np.uint8),
        "audio": (np.sin(2 * np.pi * (8 + index) * time + phase) * 20000).astype(np.int16)[None],
    }
    if sr_size is not None:
        scale = sr_size // image_size
        arrays["video_sr"] = arrays["video"].repeat(scale, axis=1).repeat(scale, axis=2)
    return arrays


def synthetic_key(index: int, clips_per_source: int = 1) -> str:
    """The sample key of clip `index`, as preprocessing names clips: the id of its (made-up)
    source video, `clips_per_source` consecutive clips to a source, and the clip's number."""
    return sample_key(f"synthetic://source-{index // clips_per_source:05d}.mp4", index)


def write_shards(
    folder: Path,
    clips: int,
    clips_per_shard: int,
    *,
    frames: int,
    image_size: int,
    audio_length: int,
    sr_size: int | None = None,
    corrupt_keys: tuple[int, ...] = (),
    clips_per_source: int = 1,
    sr_strip: bool = False,
) -> list[Path]:
    """`folder/shards/shard-NNNNNN.tar` with `clips` samples; the clips in `corrupt_keys`
    get a video member that is not an npy file. `sr_strip` writes the SR frames as format 2
    did: one JPEG of the frames stacked top to bottom."""
    shard_dir = folder / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, first in enumerate(range(0, clips, clips_per_shard)):
        path = shard_dir / f"shard-{number:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for index in range(first, min(first + clips_per_shard, clips)):
                arrays = clip_arrays(index, frames, image_size, audio_length, sr_size)
                sample = {
                    "__key__": synthetic_key(index, clips_per_source),
                    "video.npy": b"not an npy file" if index in corrupt_keys else _npy(arrays["video"]),
                    "audio.npy": _npy(arrays["audio"]),
                    "json": b'{"clip_index": %d}' % index,
                }
                if sr_size is not None and sr_strip:
                    sample[sr_strip_member_name(sr_size)] = jpeg_bytes(np.concatenate(arrays["video_sr"]))
                elif sr_size is not None:
                    sample.update(sr_members(arrays["video_sr"]))
                writer.write(sample)
        paths.append(path)
    return paths
