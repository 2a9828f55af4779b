"""Lost Ray workers and nodes: a decoding worker killed mid-unit, and a second Ray node of the
cluster killed mid-run; every clip still ends up in the shards exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from pipeline.run import PreprocessConfig, preprocess
from pipeline.storage import TEMPORARY_PREFIX
from tests.fixtures.media import MediaSet
from tests.pipeline.test_preprocess import CLIPS_BEFORE_DECODE_ERROR, CLIPS_PER_GOOD_FILE, read_shards


def expected_clips(media_set: MediaSet) -> int:
    return CLIPS_PER_GOOD_FILE * len(media_set.good) + CLIPS_BEFORE_DECODE_ERROR


def worker_writing_a_shard(shards: Path) -> psutil.Process | None:
    """The Ray worker process that has a shard of `shards` open for writing (mid-unit)."""
    if not shards.is_dir() or not any(path.name.startswith(TEMPORARY_PREFIX) for path in shards.iterdir()):
        return None
    for process in psutil.process_iter(["cmdline"]):
        if not any("ray::" in part or "default_worker" in part for part in process.info["cmdline"] or []):
            continue
        try:
            if any(Path(item.path).parent == shards for item in process.open_files()):
                return process
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def run_while(action: Callable[[], bool], timeout_s: float = 120.0) -> threading.Thread:
    """Call `action` every 20 ms in a thread until it returns True (or the timeout)."""

    def loop() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not action():
            time.sleep(0.02)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_worker_killed_mid_unit_is_retried_and_every_clip_is_written_once(
    ray_runtime, media_set: MediaSet, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    killed: list[int] = []

    def kill_the_worker_writing_a_shard() -> bool:
        worker = worker_writing_a_shard(output / "shards")
        if worker is None:
            return False
        os.kill(worker.pid, signal.SIGKILL)
        killed.append(worker.pid)
        return True

    watcher = run_while(kill_the_worker_writing_a_shard)
    config = PreprocessConfig(input=str(media_set.folder), output=str(output), workers=2, videos_per_shard=5)
    stats = preprocess(config)
    watcher.join()
    assert killed and not psutil.pid_exists(killed[0]), "a worker must have been killed mid-unit"
    assert stats.unfinished == () and stats.clips_total == expected_clips(media_set)
    keys = [sample["__key__"] for sample in read_shards(output)]
    assert len(keys) == len(set(keys)) == expected_clips(media_set)
    assert not [path for path in (output / "shards").iterdir() if path.name.startswith(TEMPORARY_PREFIX)]
