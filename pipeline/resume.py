"""Exactly-once bookkeeping: the plan of units, which are finished, which shards are orphans."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

import pyarrow.fs as pafs

from pipeline.shards import SHARD_FOLDER, shard_number
from pipeline.storage import TEMPORARY_PREFIX, join, read_bytes, resolve, write_atomically
from pipeline.task import PARTS_FOLDER, ShardRecord, ShardTask, record_from_json

PLAN_FILE = "_plan.json"
_READ_THREADS = 16


def _files(folder_uri: str) -> list[pafs.FileInfo]:
    fs, path = resolve(folder_uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return [info for info in fs.get_file_info(pafs.FileSelector(path)) if info.type == pafs.FileType.File]


def read_records(output_uri: str) -> list[ShardRecord]:
    """Every finished unit's record, in shard order (read in parallel: on S3 each is a request)."""
    names = [
        info.base_name
        for info in _files(join(output_uri, PARTS_FOLDER))
        if info.base_name.endswith(".json") and not info.base_name.startswith(TEMPORARY_PREFIX)
    ]
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
    for folder, unfinished in (
        (join(output_uri, SHARD_FOLDER), unfinished_shard),
        (join(output_uri, PARTS_FOLDER), lambda name: name.startswith(TEMPORARY_PREFIX)),
    ):
        fs, _ = resolve(folder)
        for info in _files(folder):
            if unfinished(info.base_name):
                fs.delete_file(info.path)
                removed.append(info.base_name)
    return removed


def read_plan(output_uri: str) -> list[ShardTask]:
    """The units every earlier run planned (empty for a new output)."""
    uri = join(output_uri, PLAN_FILE)
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    return [ShardTask(**unit) for unit in json.loads(read_bytes(uri))["units"]]


def extend_plan(
    plan: list[ShardTask], records: list[ShardRecord], inputs: list[str], videos_per_shard: int
) -> list[ShardTask]:
    """`plan` plus units for the inputs no planned or recorded unit holds, numbered after them.

    A planned unit keeps its number and sources for ever, so a rerun redoes an unfinished unit
    under the same shard name: even a task of a killed run that still finishes it writes the
    same shard and record, never a second copy of its clips."""
    known = {source for unit in plan for source in unit.sources} | {s for r in records for s in r.sources}
    new = [uri for uri in inputs if uri not in known]
    first = max([unit.number for unit in plan] + [record.number for record in records], default=-1) + 1
    return plan + [
        ShardTask(number=first + index, sources=new[start : start + videos_per_shard])
        for index, start in enumerate(range(0, len(new), videos_per_shard))
    ]


def write_plan(output_uri: str, plan: list[ShardTask]) -> None:
    write_atomically(
        join(output_uri, PLAN_FILE), json.dumps({"units": [asdict(unit) for unit in plan]}).encode("utf-8")
    )


def unfinished_units(plan: list[ShardTask], records: list[ShardRecord]) -> list[ShardTask]:
    finished = {record.number for record in records}
    return [unit for unit in plan if unit.number not in finished]
