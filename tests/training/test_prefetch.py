"""The prefetching loader: the same batches as without it, exact resume positions, errors that
reach the training thread, no thread left behind, and a slow store that no longer stalls the step."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from pipeline.shard_format import DataError, SampleSpec, list_shards
from tests.fixtures.slow_store import slow_filesystem
from tests.training.synthetic_shards import write_shards
from training.loader import ClipLoader, DataPosition
from training.prefetch import ordered_map

FRAMES, SIZE, AUDIO = 16, 16, 2560
SPEC = SampleSpec(frames=FRAMES, image_size=SIZE, audio_length=AUDIO)


def loader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("clip-loader", "clip-decode"))]


@pytest.fixture
def shards(tmp_path: Path) -> list[str]:
    write_shards(tmp_path, clips=12, clips_per_shard=3, frames=FRAMES, image_size=SIZE, audio_length=AUDIO)
    return list_shards(str(tmp_path))


def test_prefetching_gives_the_synchronous_batches_and_positions(shards: list[str]) -> None:
    """Three decoding threads, batches made three ahead, across an epoch boundary: the same
    batches (flips included) and after each the same position, from which a resume continues."""
    runs = {}
    for prefetch, threads in ((0, 1), (3, 3)):
        loader = ClipLoader(shards, SPEC, batch_size=2, seed=4, prefetch=prefetch, decode_threads=threads)
        batches = iter(loader)
        runs[prefetch] = [(next(batches)["video"], DataPosition(**vars(loader.position))) for _ in range(9)]
        loader.close()
    assert [position for _, position in runs[3]] == [position for _, position in runs[0]]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(runs[0], runs[3], strict=True))
    assert runs[3][-1][1].epoch == 1
    resumed = iter(ClipLoader(shards, SPEC, batch_size=2, seed=4, prefetch=3, position=runs[3][3][1]))
    assert all(torch.equal(next(resumed)["video"], video) for video, _ in runs[0][4:])


def test_a_background_error_reaches_the_training_thread_and_no_thread_is_left(shards: list[str]) -> None:
    loader = ClipLoader(shards, SPEC, batch_size=13, prefetch=2, decode_threads=2)  # 12 clips: no full batch
    with pytest.raises(DataError, match="gave no full batch of 13 clips"):
        next(iter(loader))
    assert not loader_threads()


def test_stopping_midway_leaves_no_thread(shards: list[str]) -> None:
    """The producer is blocked on a full queue when the consumer stops: a dropped iteration
    (the end of training) and `close()` (the loop's `finally`, on an exception) both end it."""
    loader = ClipLoader(shards, SPEC, batch_size=1, prefetch=1, decode_threads=2)
    batches = iter(loader)
    next(batches)
    time.sleep(0.2)
    assert loader_threads()
    del batches
    assert not loader_threads()
    batches = iter(loader)
    next(batches)
    loader.close()
    assert not loader_threads()
    with pytest.raises(StopIteration):  # a closed loader ends, it does not wait for batches
        next(batches)


def test_a_slow_store_no_longer_stalls_the_step(tmp_path: Path) -> None:
    """One clip per shard and one request per shard, as slow as a step: without prefetching a
    batch costs step + read, with it the read of the next batch hides behind the step."""
    batches, step_s = 8, 0.1
    write_shards(tmp_path, clips=batches, clips_per_shard=1, frames=FRAMES, image_size=SIZE, audio_length=AUDIO)
    slow_store = slow_filesystem(latency_s=step_s)
    walls = {}
    for prefetch in (0, 2):
        loader = ClipLoader(
            list_shards(str(tmp_path)), SPEC, batch_size=1, shuffle_buffer=1, prefetch=prefetch, filesystem=slow_store
        )
        stream = iter(loader)
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
            time.sleep(step_s)  # the training step
        walls[prefetch] = time.perf_counter() - start
        loader.close()
    serial, overlapped = batches * 2 * step_s, (batches + 1) * step_s
    assert walls[0] >= 0.95 * serial, walls  # the store is as slow as meant
    assert walls[2] <= (serial + overlapped) / 2, walls  # close to max(step, read) per batch, not their sum


def test_ordered_map_keeps_the_order_and_raises_where_the_error_was() -> None:
    def slow_square(n: int) -> int:
        time.sleep(0.01 * (n % 3))  # later items finish first
        if n == 7:
            raise RuntimeError("item 7")
        return n * n

    results = ordered_map(slow_square, range(10), threads=3)
    assert [next(results) for _ in range(7)] == [n * n for n in range(7)]
    with pytest.raises(RuntimeError, match="item 7"):
        next(results)
