"""Streaming clips from WebDataset shards (local or s3://) into training batches.

Per worker and epoch: the worker's shards (`shards.assign_shards`) are read as tar streams,
grouped into samples, passed through a seeded shuffle buffer, decoded to float tensors in
[-1, 1], flipped horizontally at random and batched. Samples stay raw bytes until after the
shuffle buffer, so the buffer is cheap and resuming skips samples without decoding them: the
stream is a pure function of (seed, epoch, rank, world size), and `DataPosition` counts how
much of it a worker has consumed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Container, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs
import torch
from einops import rearrange

from pipeline.shard_format import DataError, DataSplit, SampleSpec, decode_sample, read_samples
from training.prefetch import Prefetcher, ordered_map
from training.shards import ShardAssignment, assign_shards

log = logging.getLogger(__name__)

AUDIO_SCALE = 32768.0
"""int16 full scale: samples map to [-1, 1)."""
DEFAULT_PREFETCH = 2
"""Batches made ahead of the training step (docs/training.md, "Prefetching")."""
DEFAULT_DECODE_THREADS = 1
"""Threads decoding samples for the prefetching thread."""


@dataclass
class DataPosition:
    """How far one worker got: its epoch and the raw samples consumed in it (corrupt ones too)."""

    epoch: int = 0
    samples: int = 0


@dataclass(frozen=True)
class DecodeJob:
    """One sample to decode and what was drawn for it."""

    consumed: int
    """The sample's count in the epoch (1-based): the position after it."""
    sample: dict[str, bytes]
    flip: bool
    frames: list[int] | None
    """SR frames to keep (`SampleSpec.frames_kept`), None for all."""


@dataclass
class LoaderCounters:
    corrupt_samples: int = 0
    unreadable_shards: int = 0
    problems: list[str] = field(default_factory=list)
    """The latest few problems, for the log."""

    def record(self, message: str, shard: bool = False) -> None:
        if shard:
            self.unreadable_shards += 1
        else:
            self.corrupt_samples += 1
        self.problems = [*self.problems[-9:], message]
        log.warning("skipped %s", message)


UINT8_MEMBERS = ("video_sr",)
"""Frames that stay uint8 until on the device (`frames_to_float` there): a quarter of the
bytes to copy, and the SR frames are the large ones (256², about 0.2 MB a frame as uint8)."""


def frames_to_float(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames to contiguous float32 in [-1, 1]: one pass converts and re-lays out, the
    in-place scaling allocates nothing more."""
    return frames.to(torch.float32, memory_format=torch.contiguous_format).mul_(1 / 127.5).sub_(1.0)


def collate(arrays: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack decoded samples in the model layouts: frames `[B, F, C, H, W]` as float32 in
    [-1, 1] (uint8 for `UINT8_MEMBERS`), audio `[B, 1, L]` as float32 in [-1, 1)."""
    batch = {}
    for name in arrays[0]:
        stacked = torch.from_numpy(np.stack([sample[name] for sample in arrays]))
        if name == "audio":
            batch[name] = stacked.to(torch.float32).div_(AUDIO_SCALE)
            continue
        frames = rearrange(stacked, "b f h w c -> b f c h w")
        batch[name] = frames.contiguous() if name in UINT8_MEMBERS else frames_to_float(frames)
    return batch


class ClipLoader:
    """Endless batches for one worker, epoch after epoch; `position` is where the next starts.

    With `prefetch` > 0 the batches are made in a background thread (`training.prefetch`), up
    to `prefetch` ahead of the consumer, their samples decoded by `decode_threads` threads;
    the order, the flips and the frame picks are those of the synchronous loader, and
    `position` follows the batches handed out, not the ones made ahead, so a checkpoint
    resumes exactly. `counters` run ahead by up to the prefetched batches. `close()` stops
    the background threads (they also stop when the iteration ends or is dropped).
    """

    def __init__(
        self,
        shards: list[str],
        spec: SampleSpec,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 64,
        flip: bool = True,
        seed: int = 0,
        position: DataPosition | None = None,
        split: DataSplit | None = None,
        selected: Container[str] | None = None,
        prefetch: int = DEFAULT_PREFETCH,
        decode_threads: int = DEFAULT_DECODE_THREADS,
        pin_memory: bool = False,
        filesystem: pafs.FileSystem | None = None,
    ) -> None:
        if not shards:
            raise DataError("no shards to load")
        if prefetch < 0 or decode_threads < 1:
            raise ValueError(f"prefetch must be >= 0 and decode_threads >= 1, got {prefetch} and {decode_threads}")
        self.shards = shards
        self.spec = spec
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.flip = flip
        self.seed = seed
        self.position = position or DataPosition()
        self.split = split or DataSplit("all")
        """Only the samples of this part are read (the training split, in training)."""
        self.selected = selected
        """When given, only the samples whose keys it contains (a `--filter` selection)."""
        self.prefetch = prefetch
        self.decode_threads = decode_threads
        self.pin_memory = pin_memory
        """Batches in page-locked memory (CUDA), so `.to(device, non_blocking=True)` is asynchronous."""
        self.filesystem = filesystem
        """Read the shard paths on this pyarrow filesystem instead of the one each URI names."""
        self.counters = LoaderCounters()
        self._prefetchers: list[Prefetcher] = []

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches: Iterator[tuple[dict[str, torch.Tensor], DataPosition]] = self._batches(self.position)
        prefetcher = None
        if self.prefetch:
            batches = prefetcher = Prefetcher(batches, self.prefetch, name=f"clip-loader-{self.rank}")
            self._prefetchers.append(prefetcher)
        try:
            for batch, position in batches:
                self.position = position
                yield batch
        finally:
            if prefetcher is not None:
                prefetcher.close()
                self._prefetchers.remove(prefetcher)

    def close(self) -> None:
        """Stop the background threads of every iteration still open."""
        for prefetcher in list(self._prefetchers):
            prefetcher.close()

    def _batches(self, start: DataPosition) -> Iterator[tuple[dict[str, torch.Tensor], DataPosition]]:
        """Every batch from `start` on, with the position after it."""
        position = start
        while True:
            batches = 0
            for batch in self._epoch_batches(position.epoch, skip=position.samples):
                batches += 1
                yield batch
            if batches == 0 and position.samples == 0:
                raise DataError(
                    f"worker {self.rank}/{self.world_size}: epoch {position.epoch} gave no full batch of "
                    f"{self.batch_size} clips of {self.split.describe()} from {len(self.shards)} shards "
                    f"({self.counters.corrupt_samples} corrupt samples, {self.counters.unreadable_shards} unreadable shards)"
                )
            position = DataPosition(epoch=position.epoch + 1)

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[tuple[dict[str, torch.Tensor], DataPosition]]:
        pending: list[dict[str, np.ndarray]] = []
        jobs = self._decode_jobs(epoch, skip)
        for consumed, arrays in ordered_map(self._decode, jobs, self.decode_threads, name=f"clip-decode-{self.rank}"):
            if isinstance(arrays, Exception):  # any undecodable member: skip the sample, keep going
                self.counters.record(f"corrupt sample: {arrays}")
                continue
            pending.append(arrays)
            if len(pending) == self.batch_size:
                batch = collate(pending)
                pending = []
                if self.pin_memory:
                    batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
                yield batch, DataPosition(epoch=epoch, samples=consumed)

    def _decode_jobs(self, epoch: int, skip: int) -> Iterator[DecodeJob]:
        """The epoch's samples after the first `skip`, each with its count in the epoch and
        its random choices; the choices are drawn for skipped samples too: the same stream on
        resume."""
        assignment = assign_shards(self.shards, self.rank, self.world_size, epoch, self.seed)
        flips = random.Random(f"flip-{self.seed}-{epoch}-{self.rank}")
        picks = random.Random(f"frames-{self.seed}-{epoch}-{self.rank}")
        kept = self.spec.frames_kept
        for consumed, sample in enumerate(self._shuffled(self._raw_samples(assignment), epoch), start=1):
            flip = self.flip and flips.random() < 0.5
            frames = None if kept is None else picks.sample(range(self.spec.frames), kept)
            if consumed > skip:
                yield DecodeJob(consumed, sample, flip, frames)

    def _decode(self, job: DecodeJob) -> tuple[int, dict[str, np.ndarray] | Exception]:
        """The job's arrays (flipped if drawn), or the error that made the sample unusable."""
        try:
            arrays = decode_sample(job.sample, self.spec, job.frames)
        except Exception as error:
            return job.consumed, error
        if job.flip:
            arrays = {name: array if name == "audio" else np.flip(array, axis=2) for name, array in arrays.items()}
        return job.consumed, arrays

    def _shuffled(self, samples: Iterator[dict], epoch: int) -> Iterator[dict]:
        rng = random.Random(f"shuffle-{self.seed}-{epoch}-{self.rank}")
        buffer: list[dict] = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                index = rng.randrange(len(buffer))
                buffer[index], buffer[-1] = buffer[-1], buffer[index]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _raw_samples(self, assignment: ShardAssignment) -> Iterator[dict[str, bytes]]:
        index = 0
        for shard in assignment.shards:
            for sample in self._shard_samples(shard):
                if not self.keeps(sample["__key__"]):
                    continue
                if index % assignment.sample_stride == assignment.sample_offset:
                    yield sample
                index += 1

    def keeps(self, key: str) -> bool:
        return self.split.keeps(key) and (self.selected is None or key in self.selected)

    def _shard_samples(self, shard: str) -> Iterator[dict[str, bytes]]:
        """The samples of one shard; a shard that cannot be read is skipped and counted."""
        yield from read_samples(
            shard,
            lambda error: self.counters.record(f"unreadable shard {shard}: {error}", shard=True),
            filesystem=self.filesystem,
        )
