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
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from einops import rearrange

from pipeline.shard_format import DataError, DataSplit, SampleSpec, decode_sample, read_samples
from training.shards import ShardAssignment, assign_shards

log = logging.getLogger(__name__)

AUDIO_SCALE = 32768.0
"""int16 full scale: samples map to [-1, 1)."""


@dataclass
class DataPosition:
    """How far one worker got: its epoch and the raw samples consumed in it (corrupt ones too)."""

    epoch: int = 0
    samples: int = 0


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
    """Endless batches for one worker, epoch after epoch; `position` is where the next starts."""

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
    ) -> None:
        if not shards:
            raise DataError("no shards to load")
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
        self.counters = LoaderCounters()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            batches = 0
            for batch in self._epoch_batches(self.position.epoch, skip=self.position.samples):
                batches += 1
                yield batch
            if batches == 0 and self.position.samples == 0:
                raise DataError(
                    f"worker {self.rank}/{self.world_size}: epoch {self.position.epoch} gave no full batch of "
                    f"{self.batch_size} clips of {self.split.describe()} from {len(self.shards)} shards "
                    f"({self.counters.corrupt_samples} corrupt samples, {self.counters.unreadable_shards} unreadable shards)"
                )
            self.position = DataPosition(epoch=self.position.epoch + 1)

    def _epoch_batches(self, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        assignment = assign_shards(self.shards, self.rank, self.world_size, epoch, self.seed)
        flips = random.Random(f"flip-{self.seed}-{epoch}-{self.rank}")
        picks = random.Random(f"frames-{self.seed}-{epoch}-{self.rank}")
        pending: list[dict[str, np.ndarray]] = []
        consumed = 0
        for sample in self._shuffled(self._raw_samples(assignment), epoch):
            consumed += 1
            # Drawn for skipped samples too: the same stream on resume.
            flip = self.flip and flips.random() < 0.5
            frames = (
                None if self.spec.frames_kept is None else picks.sample(range(self.spec.frames), self.spec.frames_kept)
            )
            if consumed <= skip:
                continue
            try:
                arrays = decode_sample(sample, self.spec, frames)
            except Exception as error:  # any undecodable member: skip the sample, keep going
                self.counters.record(f"corrupt sample: {error}")
                continue
            if flip:
                arrays = {name: array if name == "audio" else np.flip(array, axis=2) for name, array in arrays.items()}
            pending.append(arrays)
            if len(pending) == self.batch_size:
                batch = collate(pending)
                pending = []
                self.position = DataPosition(epoch=epoch, samples=consumed)
                yield batch

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
                if not self.split.keeps(sample["__key__"]):
                    continue
                if index % assignment.sample_stride == assignment.sample_offset:
                    yield sample
                index += 1

    def _shard_samples(self, shard: str) -> Iterator[dict[str, bytes]]:
        """The samples of one shard; a shard that cannot be read is skipped and counted."""
        yield from read_samples(
            shard, lambda error: self.counters.record(f"unreadable shard {shard}: {error}", shard=True)
        )
