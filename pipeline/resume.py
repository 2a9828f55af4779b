"""Exactly-once bookkeeping: which sources are finished, which shards are orphans, what to do next."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow.fs as pafs

from pipeline.shards import SHARD_FOLDER, shard_number
from pipeline.storage import TEMPORARY_PREFIX, join, read_bytes, resolve
from pipeline.task import PARTS_FOLDER, ShardRecord, ShardTask, record_from_json

_READ_THREADS = 16


def _files(folder_uri: str) -> list[pafs.FileInfo]:
    fs, path = resolve(folder_uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return [info for info in fs.get_file_info(pafs.FileSelector(path)) if info.type == pafs.FileType.File]


def read_records(output_uri: str) -> list[ShardRecord]:
    """Every finished unit's record, in shard order (read in parallel: on S3 each is a request)."""
    names = [info.base_name for info in _files(join(output_uri, PARTS_FOLDER))
             if info.base_name.endswith(".json") and not info.base_name.startswith(TEMPORARY_PREFIX)]
    with ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
        records = list(pool.map(lambda name: record_from_json(read_bytes(join(output_uri, PARTS_FOLDER, name))), names))
    return sorted(records, key=lambda record: record.number)


def remove_unfinished(output_uri: str, records: list[ShardRecord]) -> list[str]:
    """Delete shards without a record and leftover temporaries (a crash between committing a
    shard and recording it); their sources are redone. Returns the removed names."""
    finished = {record.number for record in records}

    def unfinished_shard(name: str) -> bool:
        number = shard_number(name)
        return name.startswith(TEMPORARY_PREFIX) or (number is not None and number not in finished)

    removed = []
    for folder, unfinished in ((join(output_uri, SHARD_FOLDER), unfinished_shard),
                               (join(output_uri, PARTS_FOLDER), lambda name: name.startswith(TEMPORARY_PREFIX))):
        fs, _ = resolve(folder)
        for info in _files(folder):
            if unfinished(info.base_name):
                fs.delete_file(info.path)
                removed.append(info.base_name)
    return removed


def plan_tasks(inputs: list[str], records: list[ShardRecord], videos_per_shard: int) -> list[ShardTask]:
    """Units for the sources no record covers, numbered after the last finished unit."""
    done = {source for record in records for source in record.sources}
    pending = [uri for uri in inputs if uri not in done]
    first = max((record.number for record in records), default=-1) + 1
    return [ShardTask(number=first + index, sources=pending[start: start + videos_per_shard])
            for index, start in enumerate(range(0, len(pending), videos_per_shard))]
