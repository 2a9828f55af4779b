"""The held-out split by source video: a function of each source's URI, with no source on both
sides, read by the loader and used by training."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from pipeline.shard_format import DataSplit, SampleSpec, list_shards, sample_key, source_position
from tests.training.synthetic_shards import clip_arrays, synthetic_key, write_shards
from training.loader import ClipLoader

FRAMES, SIZE, AUDIO = 16, 16, 2560
SPEC = SampleSpec(frames=FRAMES, image_size=SIZE, audio_length=AUDIO)
CLIPS, CLIPS_PER_SOURCE = 24, 3


def uris(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"s3://corpus/{rng.getrandbits(64):016x}/video.mp4" for _ in range(count)]


def test_the_held_out_share_of_many_sources_is_close_to_the_asked_share() -> None:
    keys = [sample_key(uri, 0) for uri in uris(20_000, seed=1)]
    held_out = sum(DataSplit("held_out", 0.05).keeps(key) for key in keys)
    # Binomial(20000, 0.05): standard deviation 31; 5 of them either side.
    assert abs(held_out - 1000) < 155


def test_a_source_stays_where_it_is_whatever_else_is_in_the_data() -> None:
    corpus = uris(500, seed=2)
    before = {uri: DataSplit("held_out", 0.1).keeps(sample_key(uri, 0)) for uri in corpus}
    grown = corpus + uris(500, seed=3)
    random.Random(4).shuffle(grown)
    after = {uri: DataSplit("held_out", 0.1).keeps(sample_key(uri, 0)) for uri in grown}
    assert all(after[uri] == held for uri, held in before.items())


def test_every_clip_of_a_source_is_on_the_same_side_and_each_clip_on_exactly_one() -> None:
    for uri in uris(200, seed=5):
        sides = {
            (
                DataSplit("train", 0.3).keeps(sample_key(uri, clip)),
                DataSplit("held_out", 0.3).keeps(sample_key(uri, clip)),
            )
            for clip in range(7)
        }
        assert len(sides) == 1 and sides.pop() in ((True, False), (False, True))


def test_a_larger_share_only_moves_sources_from_training_to_held_out() -> None:
    keys = [sample_key(uri, 0) for uri in uris(2000, seed=6)]
    small = {key for key in keys if DataSplit("held_out", 0.05).keeps(key)}
    large = {key for key in keys if DataSplit("held_out", 0.2).keeps(key)}
    assert small < large


@pytest.mark.parametrize(("part", "share"), [("validation", 0.1), ("train", 1.0), ("train", -0.1)])
def test_a_bad_split_is_refused_by_name(part: str, share: float) -> None:
    with pytest.raises(ValueError, match="split must be|held-out share"):
        DataSplit(part, share)  # type: ignore[arg-type]


def clip_index(video: torch.Tensor) -> int:
    for index in range(CLIPS):
        expected = torch.from_numpy(clip_arrays(index, FRAMES, SIZE, AUDIO)["video"]).permute(0, 3, 1, 2) / 127.5 - 1
        if torch.allclose(video, expected, atol=1e-5):
            return index
    raise AssertionError("not a clip of the shards")


def one_epoch(shards: list[str], split: DataSplit) -> list[int]:
    """The clip indices one epoch of `split` reads (batch 1, no flips)."""
    loader = ClipLoader(shards, SPEC, batch_size=1, flip=False, split=split)
    seen = []
    for batch in loader:
        if loader.position.epoch > 0:
            break
        seen.append(clip_index(batch["video"][0]))
    return seen


def test_the_loader_reads_exactly_its_part_and_the_parts_share_no_source(tmp_path: Path) -> None:
    write_shards(
        tmp_path, CLIPS, clips_per_shard=5, frames=FRAMES, image_size=SIZE, audio_length=AUDIO,
        clips_per_source=CLIPS_PER_SOURCE,
    )  # fmt: skip
    shards = list_shards(str(tmp_path))
    positions = sorted({source_position(synthetic_key(i, CLIPS_PER_SOURCE)) for i in range(CLIPS)})
    share = (positions[1] + positions[2]) / 2  # the two lowest of the 8 sources held out
    held_out_sources = {i // CLIPS_PER_SOURCE for i in range(CLIPS) if source_position(synthetic_key(i, 3)) < share}
    assert len(held_out_sources) == 2
    training = one_epoch(shards, DataSplit("train", share))
    held_out = one_epoch(shards, DataSplit("held_out", share))
    assert sorted(training + held_out) == list(range(CLIPS))
    assert {i // CLIPS_PER_SOURCE for i in held_out} == held_out_sources
    assert not {i // CLIPS_PER_SOURCE for i in training} & held_out_sources
