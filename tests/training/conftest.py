"""Fixtures of the training tests: shards made by the real preprocessing pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmdiffusion.constants import SR_IMAGE_SIZE
from tests.fixtures.media import MediaSpec, write_media

CLIPS_PER_VIDEO = 2
VIDEOS = 2


@pytest.fixture(scope="session")
def pipeline_shards(ray_runtime, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mmdiff preprocess` output of two short synthetic videos, with the 256×256 SR frames:
    two shards (one video each) of two clips each, at the real clip sizes."""
    from pipeline.run import PreprocessConfig, preprocess

    corpus = tmp_path_factory.mktemp("training-corpus")
    for index in range(VIDEOS):
        write_media(corpus / f"video{index}.mp4", MediaSpec(f"video{index}", seconds=3.4, events=(0.5 + index, 2.4)))
    output = tmp_path_factory.mktemp("training-data") / "dataset"
    stats = preprocess(
        PreprocessConfig(input=str(corpus), output=str(output), workers=2, sr_size=SR_IMAGE_SIZE, videos_per_shard=1)
    )
    assert stats.clips == CLIPS_PER_VIDEO * VIDEOS and stats.shards == VIDEOS
    return output


@pytest.fixture(autouse=True)
def in_process_training_uses_one_thread(one_torch_thread) -> None:
    """In-process training uses one intra-op thread, as a Ray Train worker with one CPU does
    (`tests.fixtures.torch_threads`)."""
