"""The shard loader on real WebDataset tars: values, layouts, sharding, resume, bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.shard_format import DataError, SampleSpec, list_shards
from tests.fixtures.s3_server import S3Server
from tests.training.synthetic_shards import clip_arrays, synthetic_key, write_shards
from training.loader import ClipLoader, DataPosition
from training.shards import assign_shards

FRAMES, SIZE, AUDIO = 16, 16, 2560
SPEC = SampleSpec(frames=FRAMES, image_size=SIZE, audio_length=AUDIO)


@pytest.fixture
def shards(tmp_path: Path) -> list[str]:
    write_shards(tmp_path, clips=12, clips_per_shard=3, frames=FRAMES, image_size=SIZE, audio_length=AUDIO)
    return list_shards(str(tmp_path))


def take(loader: ClipLoader, count: int) -> list[dict[str, torch.Tensor]]:
    batches = iter(loader)
    return [next(batches) for _ in range(count)]


def clip_index(video: torch.Tensor) -> int:
    """Which synthetic clip a decoded (possibly flipped) video is."""
    for index in range(12):
        expected = (
            torch.from_numpy(clip_arrays(index, FRAMES, SIZE, AUDIO)["video"]).permute(0, 3, 1, 2).float() / 127.5 - 1
        )
        if torch.allclose(video, expected, atol=1e-5) or torch.allclose(video, expected.flip(-1), atol=1e-5):
            return index
    raise AssertionError("not a clip of the shards")


def test_batches_are_float_in_model_layout_and_range(shards: list[str]) -> None:
    (batch,) = take(ClipLoader(shards, SPEC, batch_size=4, flip=False), 1)
    assert batch["video"].shape == (4, FRAMES, 3, SIZE, SIZE) and batch["video"].dtype == torch.float32
    assert batch["audio"].shape == (4, 1, AUDIO) and batch["audio"].dtype == torch.float32
    assert -1 <= batch["video"].min() < -0.99 and 0.99 < batch["video"].max() <= 1
    assert batch["audio"].abs().max() <= 1
    index = clip_index(batch["video"][0])
    expected_audio = clip_arrays(index, FRAMES, SIZE, AUDIO)["audio"] / 32768
    np.testing.assert_allclose(batch["audio"][0].numpy(), expected_audio, atol=1e-6)


def test_flip_mirrors_some_clips_horizontally_and_never_the_audio(shards: list[str]) -> None:
    batches = take(ClipLoader(shards, SPEC, batch_size=4, flip=True, shuffle_buffer=1), 3)
    flipped = 0
    for batch in batches:
        for video in batch["video"]:
            original = torch.from_numpy(clip_arrays(clip_index(video), FRAMES, SIZE, AUDIO)["video"]).permute(
                0, 3, 1, 2
            )
            flipped += not torch.allclose(video, original.float() / 127.5 - 1, atol=1e-5)
    assert 0 < flipped < 12


def test_workers_read_disjoint_shards_that_change_every_epoch(shards: list[str]) -> None:
    for epoch in range(3):
        parts = [assign_shards(shards, rank, 3, epoch, seed=0).shards for rank in range(3)]
        assert sorted(shard for part in parts for shard in part) == sorted(shards)
    assert [assign_shards(shards, 0, 2, epoch, seed=0).shards for epoch in range(4)] != [
        assign_shards(shards, 0, 2, 0, seed=0).shards
    ] * 4
    # Two workers over one epoch see every clip exactly once between them.
    seen = []
    for rank in range(2):
        for batch in take(ClipLoader(shards, SPEC, batch_size=2, rank=rank, world_size=2, flip=False), 3):
            seen += [clip_index(video) for video in batch["video"]]
    assert sorted(seen) == list(range(12))


def test_fewer_shards_than_workers_still_split_the_clips(shards: list[str]) -> None:
    single = shards[:1]
    seen = [
        clip_index(video)
        for rank in range(3)
        for batch in take(ClipLoader(single, SPEC, batch_size=1, rank=rank, world_size=3, flip=False), 1)
        for video in batch["video"]
    ]
    assert sorted(seen) == [0, 1, 2]


def test_a_resumed_loader_continues_the_same_stream(shards: list[str]) -> None:
    loader = ClipLoader(shards, SPEC, batch_size=2, seed=3)
    first = take(loader, 3)
    position = loader.position
    rest = take(loader, 4)  # crosses into the next epoch
    resumed = take(ClipLoader(shards, SPEC, batch_size=2, seed=3, position=DataPosition(**vars(position))), 4)
    assert first and all(torch.equal(a["video"], b["video"]) for a, b in zip(rest, resumed, strict=True))
    assert loader.position.epoch == 1


def test_corrupt_samples_and_unreadable_shards_are_skipped_and_counted(tmp_path: Path) -> None:
    write_shards(
        tmp_path, clips=6, clips_per_shard=3, frames=FRAMES, image_size=SIZE, audio_length=AUDIO, corrupt_keys=(1, 4)
    )
    truncated = tmp_path / "shards" / "shard-000002.tar"
    good = (tmp_path / "shards" / "shard-000000.tar").read_bytes()
    truncated.write_bytes(good[: len(good) // 2 + 100])
    (tmp_path / "shards" / "shard-000003.tar").write_bytes(b"this is not a tar file")
    loader = ClipLoader(list_shards(str(tmp_path)), SPEC, batch_size=1, flip=False)
    seen = [clip_index(batch["video"][0]) for batch in take(loader, 4)]
    assert sorted(seen) == [0, 2, 3, 5]
    assert loader.counters.corrupt_samples >= 2 and loader.counters.unreadable_shards >= 1
    assert any(synthetic_key(1) in problem for problem in loader.counters.problems)


def test_missing_data_and_empty_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list_shards(str(tmp_path / "nowhere"))
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "notes.txt").write_text("no shards here")
    with pytest.raises(DataError, match="no shard-NNNNNN.tar files"):
        list_shards(str(tmp_path))


def test_shards_stream_from_s3(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket("loader-test")
    for path in write_shards(tmp_path, clips=4, clips_per_shard=2, frames=FRAMES, image_size=SIZE, audio_length=AUDIO):
        s3_server.client().upload_file(str(path), "loader-test", f"data/shards/{path.name}")
    shards = list_shards(f"{bucket}/data")
    assert shards == [f"{bucket}/data/shards/shard-00000{n}.tar" for n in range(2)]
    batches = take(ClipLoader(shards, SPEC, batch_size=2, flip=False), 2)
    assert sorted(clip_index(video) for batch in batches for video in batch["video"]) == [0, 1, 2, 3]
