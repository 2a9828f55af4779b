"""SR training batches: the frames are picked before decoding (only their JPEG members are
decoded) and stay uint8 until the device; samples of the format-2 strip still decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.shard_format import (
    SampleSpec,
    decode_sample,
    jpeg_bytes,
    list_shards,
    read_samples,
    sr_frame_member_name,
    sr_strip_member_name,
)
from tests.training.synthetic_shards import clip_arrays, write_shards
from training.loader import ClipLoader, DataPosition, frames_to_float

FRAMES, SIZE, SR_SIZE, KEPT, BATCH = 16, 8, 32, 2, 3
SPEC = SampleSpec(frames=FRAMES, image_size=SIZE, audio_length=0, sr_size=SR_SIZE, frames_kept=KEPT)


def sr_shards(folder: Path, sr_strip: bool = False) -> list[str]:
    write_shards(
        folder,
        clips=6,
        clips_per_shard=6,
        frames=FRAMES,
        image_size=SIZE,
        audio_length=64,
        sr_size=SR_SIZE,
        sr_strip=sr_strip,
    )
    return list_shards(str(folder))


def first_sample(shards: list[str]) -> dict[str, bytes]:
    return next(read_samples(shards[0], on_error=pytest.fail))


def all_frames_as_before(shard: str) -> list[torch.Tensor]:
    """Each clip's 16 SR frames as the loader gave them before: all decoded and scaled to
    float32 [F, 3, S, S] on the host."""
    clips = []
    for sample in read_samples(shard, on_error=pytest.fail):
        frames = torch.from_numpy(decode_sample(sample, SPEC)["video_sr"])
        clips.append(frames.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format))
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


def test_only_the_picked_frames_members_are_decoded(tmp_path: Path) -> None:
    sample = first_sample(sr_shards(tmp_path))
    everything = decode_sample(sample, SPEC)["video_sr"]
    assert everything.shape == (FRAMES, SR_SIZE, SR_SIZE, 3)
    kept, truncated = 5, 9
    broken = {name: b"not a jpeg" for name in sample if name.startswith(f"video{SR_SIZE}.")}
    broken[sr_frame_member_name(SR_SIZE, kept)] = sample[sr_frame_member_name(SR_SIZE, kept)]
    whole = sample[sr_frame_member_name(SR_SIZE, truncated)]
    broken[sr_frame_member_name(SR_SIZE, truncated)] = whole[: len(whole) // 2]
    assert len(broken) == FRAMES
    corrupt = {**sample, **broken}
    assert np.array_equal(decode_sample(corrupt, SPEC, [kept])["video_sr"], everything[[kept]])
    for index in (0, truncated):
        member = sr_frame_member_name(SR_SIZE, index)
        with pytest.raises(ValueError, match=rf"{sample['__key__']}: {member} is not a readable JPEG"):
            decode_sample(corrupt, SPEC, [kept, index])
    last = sr_frame_member_name(SR_SIZE, FRAMES - 1)
    missing = {name: data for name, data in sample.items() if name != last}
    with pytest.raises(ValueError, match=rf"no {last} member \(preprocess with --sr-size {SR_SIZE}\)"):
        decode_sample(missing, SPEC, [kept])


def test_each_frame_member_holds_its_own_frame(tmp_path: Path) -> None:
    sample = first_sample(sr_shards(tmp_path))
    originals = clip_arrays(0, FRAMES, SIZE, 64, SR_SIZE)["video_sr"].astype(np.float64)
    for index in range(FRAMES):
        alone = decode_sample(sample, SPEC, [index])["video_sr"][0]
        errors = [np.mean((alone - frame) ** 2) for frame in originals]
        # its own frame within JPEG tolerance (MSE 20: 35 dB), every other frame far off (about 1,200)
        assert errors[index] < 20 and min(errors[:index] + errors[index + 1 :]) > 500


def test_samples_of_the_format_2_strip_still_decode(tmp_path: Path) -> None:
    strip_shards = sr_shards(tmp_path / "strip", sr_strip=True)
    legacy = first_sample(strip_shards)
    assert sr_strip_member_name(SR_SIZE) in legacy and sr_frame_member_name(SR_SIZE, 0) not in legacy
    per_frame = decode_sample(first_sample(sr_shards(tmp_path / "frames")), SPEC)["video_sr"]
    # 8×8 blocks of a 4:4:4 JPEG never straddle two frames, so the strip decodes to the same pixels
    assert np.array_equal(decode_sample(legacy, SPEC)["video_sr"], per_frame)
    assert np.array_equal(decode_sample(legacy, SPEC, [7, 2])["video_sr"], per_frame[[7, 2]])
    short = {**legacy, sr_strip_member_name(SR_SIZE): jpeg_bytes(np.zeros((SR_SIZE, SR_SIZE, 3), np.uint8))}
    with pytest.raises(ValueError, match=rf"video{SR_SIZE}\.jpg is uint8\[{SR_SIZE}, {SR_SIZE}, 3\], expected"):
        decode_sample(short, SPEC, [0])
    batch = next(iter(ClipLoader(strip_shards, SPEC, batch_size=BATCH, flip=False)))
    assert batch["video_sr"].shape == (BATCH, KEPT, 3, SR_SIZE, SR_SIZE)
