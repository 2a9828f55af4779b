"""Dealing a dataset's shards out to workers, epoch by epoch (the shards themselves:
`pipeline.shard_format`)."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ShardAssignment:
    """What one worker reads in one epoch: its shards, and which samples of them.

    With at least as many shards as workers, each worker reads whole, disjoint shards
    (`sample_stride` 1). With fewer shards, every worker reads all of them and keeps every
    `sample_stride`-th sample starting at `sample_offset`: still disjoint, at more I/O.
    """

    shards: tuple[str, ...]
    sample_offset: int = 0
    sample_stride: int = 1


def assign_shards(shards: list[str], rank: int, world_size: int, epoch: int, seed: int) -> ShardAssignment:
    """Worker `rank`'s share of `shards` in `epoch`: one permutation per epoch, dealt round-robin."""
    order = list(shards)
    random.Random(f"{seed}-{epoch}").shuffle(order)
    if len(order) >= world_size:
        return ShardAssignment(tuple(order[rank::world_size]))
    return ShardAssignment(tuple(order), sample_offset=rank, sample_stride=world_size)
