"""SR training batches: the frames are picked before decoding and stay uint8 until the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.shard_format import SampleSpec, jpeg_strip_to_frames, list_shards, read_samples, sr_member_name
from tests.training.synthetic_shards import write_shards
from training.loader import ClipLoader, DataPosition, frames_to_float

FRAMES, SIZE, SR_SIZE, KEPT, BATCH = 16, 8, 32, 2, 3
SPEC = SampleSpec(frames=FRAMES, image_size=SIZE, audio_length=0, sr_size=SR_SIZE, frames_kept=KEPT)


def sr_shards(tmp_path: Path) -> list[str]:
    write_shards(tmp_path, clips=6, clips_per_shard=6, frames=FRAMES, image_size=SIZE, audio_length=64, sr_size=SR_SIZE)
    return list_shards(str(tmp_path))


def all_frames_as_before(shard: str) -> list[torch.Tensor]:
    """Each clip's 16 SR frames as the loader gave them before: the whole strip decoded and
    scaled to float32 [F, 3, S, S] on the host."""
    clips = []
    for sample in read_samples(shard, on_error=pytest.fail):
        strip = torch.from_numpy(np.array(jpeg_strip_to_frames(sample[sr_member_name(SR_SIZE)], SR_SIZE)))
        clips.append(strip.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format))
    return [clip.mul_(1 / 127.5).sub_(1.0) for clip in clips]


def test_sr_batches_hold_the_picked_frames_as_uint8_with_the_same_values(tmp_path: Path) -> None:
    shards = sr_shards(tmp_path)
    # shuffle_buffer=1 keeps the shard's order: batch entry i is clip i.
    batch = next(iter(ClipLoader(shards, SPEC, batch_size=BATCH, flip=False, shuffle_buffer=1)))
    frames = batch["video_sr"]
    assert frames.dtype == torch.uint8 and frames.shape == (BATCH, KEPT, 3, SR_SIZE, SR_SIZE)
    full_float_bytes = BATCH * FRAMES * 3 * SR_SIZE * SR_SIZE * 4
    assert frames.numel() * frames.element_size() * FRAMES * 4 // KEPT == full_float_bytes
    before = all_frames_as_before(shards[0])
    picked_frames = set()
    for clip, kept in enumerate(frames_to_float(frames)):
        matches = [[i for i in range(FRAMES) if torch.equal(frame, before[clip][i])] for frame in kept]
        assert all(len(match) == 1 for match in matches), matches  # each kept frame is exactly one frame
        assert len({match[0] for match in matches}) == KEPT  # KEPT different frames of the clip
        picked_frames.update(match[0] for match in matches)
    assert len(picked_frames) > KEPT  # picked at random, not always the first ones


def test_a_resumed_sr_loader_picks_the_same_frames(tmp_path: Path) -> None:
    shards = sr_shards(tmp_path)
    loader = ClipLoader(shards, SPEC, batch_size=1, seed=5)
    batches = iter(loader)
    next(batches)
    position = DataPosition(**vars(loader.position))
    rest = [next(batches)["video_sr"] for _ in range(3)]
    resumed = iter(ClipLoader(shards, SPEC, batch_size=1, seed=5, position=position))
    assert all(np.array_equal(frames, next(resumed)["video_sr"]) for frames in rest)
