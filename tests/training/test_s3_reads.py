"""Shards are read from object storage in blocks of megabytes, not tar records: the request
count, counted by the loopback SeaweedFS server itself, follows the shard's size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipeline.shard_format import READ_BLOCK_BYTES, SampleSpec, read_samples
from tests.fixtures.s3_server import S3Server
from tests.training.synthetic_shards import write_shards
from training.loader import ClipLoader

FRAMES, SIZE, AUDIO = 16, 64, 25600
"""The real clip geometry: about 250 KB a clip."""
CLIPS = 36
"""About 9 MB: more than one read block."""
REQUESTS_PER_SHARD = 2
"""Beyond the blocks: the size lookup when a stream opens, and the read that finds the end."""
GOAL_BYTES_PER_REQUEST = 4 * 2**20


@pytest.fixture
def s3_shard(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, int]:
    """One shard of real-size clips larger than a read block, in its own bucket."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    bucket = s3_server.make_bucket("block-reads")
    (path,) = write_shards(
        tmp_path, clips=CLIPS, clips_per_shard=CLIPS, frames=FRAMES, image_size=SIZE, audio_length=AUDIO
    )
    s3_server.client().upload_file(str(path), "block-reads", f"data/shards/{path.name}")
    return f"{bucket}/data/shards/{path.name}", path.stat().st_size


def allowed_requests(size: int) -> int:
    return math.ceil(size / GOAL_BYTES_PER_REQUEST) + REQUESTS_PER_SHARD


def test_reading_a_shard_costs_one_request_per_block(s3_server: S3Server, s3_shard: tuple[str, int]) -> None:
    uri, size = s3_shard
    assert size > READ_BLOCK_BYTES >= GOAL_BYTES_PER_REQUEST
    before = s3_server.requests("block-reads")
    samples = list(read_samples(uri, on_error=pytest.fail))
    requests = s3_server.requests("block-reads") - before
    assert len(samples) == CLIPS
    assert requests <= allowed_requests(size), f"{requests} requests to read {size} bytes"


def test_the_training_loader_reads_in_blocks_too(s3_server: S3Server, s3_shard: tuple[str, int]) -> None:
    uri, size = s3_shard
    before = s3_server.requests("block-reads")
    # Without prefetching, which would already be reading the next epoch when counted.
    loader = ClipLoader([uri], SampleSpec(FRAMES, SIZE, AUDIO), batch_size=CLIPS, flip=False, prefetch=0)
    batch = next(iter(loader))
    requests = s3_server.requests("block-reads") - before
    assert batch["video"].shape[0] == CLIPS
    assert requests <= allowed_requests(size), f"{requests} requests to read {size} bytes"
