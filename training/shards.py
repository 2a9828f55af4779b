"""Finding the shards of a dataset and dealing them out to workers, epoch by epoch."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import pyarrow.fs as pafs

from pipeline.shards import SHARD_FOLDER, shard_number
from pipeline.storage import join, read_bytes, resolve

MANIFEST_FILE = "manifest.parquet"


class DataError(ValueError):
    """The training data cannot be used (missing path, no shards)."""


def exists(uri: str) -> bool:
    filesystem, path = resolve(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def shard_folder(data_uri: str) -> str:
    """The folder holding the shards: `DATA/shards` when it exists, else `DATA` itself."""
    if not exists(data_uri):
        raise DataError(f"training data {data_uri!r} does not exist")
    nested = join(data_uri, SHARD_FOLDER)
    return nested if exists(nested) else data_uri


def list_shards(data_uri: str) -> list[str]:
    """Every `shard-NNNNNN.tar` of the dataset, in shard order, as URIs; raises when none."""
    folder = shard_folder(data_uri)
    fs, path = resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(
        info.base_name for info in infos if info.type == pafs.FileType.File and shard_number(info.base_name) is not None
    )
    if not names:
        raise DataError(f"training data {data_uri!r}: no shard-NNNNNN.tar files in {folder!r}")
    return [join(folder, name) for name in names]


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


@dataclass(frozen=True)
class ManifestInfo:
    uri: str
    sha256: str
    """Hex digest of the manifest file, or "missing" when the dataset has none."""


def manifest_info(data_uri: str) -> ManifestInfo:
    """The dataset's manifest and its hash: which exact data a run trained on."""
    for candidate in (join(data_uri, MANIFEST_FILE), join(data_uri.rstrip("/").rsplit("/", 1)[0], MANIFEST_FILE)):
        if exists(candidate):
            return ManifestInfo(candidate, hashlib.sha256(read_bytes(candidate)).hexdigest())
    return ManifestInfo(join(data_uri, MANIFEST_FILE), "missing")
